//! FHIR packages an operator adds (`--profiles DIR`, `hearth profiles add`): the npm-style
//! `.tgz` the registries publish (`package/package.json` and one JSON file per resource), of
//! which validation reads the StructureDefinitions, ValueSets and CodeSystems.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// The resource types validation reads from a package.
const READ: &[&str] = &["StructureDefinition", "ValueSet", "CodeSystem"];

/// Packages whose definitions the server carries in `profiles/` (a dependency on them is met).
pub const CARRIED: &[&str] = &["hl7.fhir.r4.core", "hl7.fhir.us.core", "hl7.fhir.uv.ips", "hl7.terminology.r4"];

/// One package as read.
#[derive(Debug)]
pub struct Package {
    pub name: String,
    pub version: String,
    /// The packages it depends on, as `name` and version.
    pub dependencies: Vec<(String, String)>,
    /// Its StructureDefinitions, ValueSets and CodeSystems.
    pub resources: Vec<Value>,
}

/// Reads a package from the bytes of its `.tgz`; refuses one that is not for FHIR R4.
pub fn read_package(tgz: &[u8]) -> Result<Package, String> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(tgz));
    let mut manifest = None;
    let mut resources = Vec::new();
    let entries = archive.entries().map_err(|e| format!("not a .tgz package: {e}"))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("not a .tgz package: {e}"))?;
        let name = entry.path().map_err(|e| e.to_string())?.to_string_lossy().into_owned();
        let Some(file) = name.strip_prefix("package/").filter(|f| f.ends_with(".json") && !f.contains('/')) else {
            continue;
        };
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).map_err(|e| format!("{name}: {e}"))?;
        let Ok(json) = serde_json::from_slice::<Value>(&bytes) else { continue };
        if file == "package.json" {
            manifest = Some(json);
        } else if READ.iter().any(|t| json["resourceType"] == *t) {
            resources.push(json);
        }
    }
    let manifest = manifest.ok_or("not a FHIR package: it has no package/package.json")?;
    let text = |key: &str| manifest[key].as_str().unwrap_or_default().to_string();
    let (name, version) = (text("name"), text("version"));
    let fhir_versions: Vec<&str> =
        manifest["fhirVersions"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    if !fhir_versions.is_empty() && !fhir_versions.iter().any(|v| v.starts_with("4.0")) {
        return Err(format!(
            "{name} {version} is for FHIR {}; this server is FHIR R4 (4.0.1)",
            fhir_versions.join(", ")
        ));
    }
    let dependencies = manifest["dependencies"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(name, version)| (name.clone(), version.as_str().unwrap_or_default().to_string()))
        .collect();
    Ok(Package { name, version, dependencies, resources })
}

/// The packages (`*.tgz`) in `dir`, by file name.
pub fn packages_in(dir: &Path) -> Result<Vec<(PathBuf, Package)>, String> {
    let listing = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut paths: Vec<PathBuf> = listing
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|e| e == "tgz"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let package = read_package(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
            Ok((path, package))
        })
        .collect()
}

/// The dependencies of `packages` that neither they nor the carried packages meet, as
/// `name#version`.
pub fn unmet_dependencies<'p>(packages: impl IntoIterator<Item = &'p Package> + Clone) -> Vec<String> {
    let present: Vec<&str> = packages.clone().into_iter().map(|p| p.name.as_str()).collect();
    let mut unmet: Vec<String> = packages
        .into_iter()
        .flat_map(|p| &p.dependencies)
        .filter(|(name, _)| !present.contains(&name.as_str()) && !CARRIED.contains(&name.as_str()))
        .map(|(name, version)| format!("{name}#{version}"))
        .collect();
    unmet.sort();
    unmet.dedup();
    unmet
}
