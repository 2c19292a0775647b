//! Profiles beyond the carried ones: the packages an operator adds (`--profiles DIR`, `hearth
//! profiles add`) and the StructureDefinitions, ValueSets and CodeSystems stored on the server
//! are enforced on writes like US Core, on both databases and on every node.

mod common;

use std::io::Write;
use std::process::Command;
use std::time::Duration;

use common::{body, Db, TestServer};
use hearth::rest::profiles::ProfilePolicy;
use hearth::validation::packages::packages_in;
use serde_json::{json, Value};

const PROFILE: &str = "http://clinic.example/fhir/StructureDefinition/clinic-patient";
const GENDERS: &str = "http://clinic.example/fhir/ValueSet/clinic-genders";
const MARITAL_STATUSES: &str = "http://clinic.example/fhir/ValueSet/marital-statuses";

/// A profile of Patient (from the carried R4 core snapshot): a birth date is required and the gender
/// must be one of the clinic's value set; `birth_date_min` sets the first.
fn clinic_profile(birth_date_min: u32) -> Value {
    let core = include_str!("../profiles/hl7.fhir.r4.core-4.0.1/StructureDefinition.ndjson");
    let line = core.lines().find(|l| l.contains(r#""url":"http://hl7.org/fhir/StructureDefinition/Patient""#));
    let mut profile: Value = serde_json::from_str(line.expect("the core Patient")).unwrap();
    profile["url"] = json!(PROFILE);
    profile["name"] = json!("ClinicPatient");
    profile["status"] = json!("active");
    profile["derivation"] = json!("constraint");
    profile["baseDefinition"] = json!("http://hl7.org/fhir/StructureDefinition/Patient");
    for element in profile["snapshot"]["element"].as_array_mut().unwrap() {
        // The carried snapshot leaves out the prose; a published one has it (sdf-3).
        element["definition"] = json!(format!("The clinic's {}", element["path"].as_str().unwrap()));
        match element["id"].as_str() {
            Some("Patient.birthDate") => element["min"] = json!(birth_date_min),
            Some("Patient.gender") => element["binding"] = json!({"strength": "required", "valueSet": GENDERS}),
            Some("Patient.maritalStatus") => {
                element["binding"] = json!({"strength": "extensible", "valueSet": MARITAL_STATUSES})
            }
            _ => {}
        }
    }
    profile
}

/// The clinic's genders: female and male of the administrative genders, and its own code
/// system's concepts under `recorded`, less `recorded-unsure`; and its marital statuses (the
/// R4 ones, imported).
fn clinic_genders() -> Vec<Value> {
    vec![
        json!({"resourceType": "ValueSet", "url": MARITAL_STATUSES, "status": "active", "compose": {
            "include": [{"valueSet": ["http://hl7.org/fhir/ValueSet/marital-status"]}]}}),
        json!({"resourceType": "ValueSet", "url": GENDERS, "status": "active", "compose": {
            "include": [
                {"system": "http://hl7.org/fhir/administrative-gender", "concept": [{"code": "female"}, {"code": "male"}]},
                {"system": "http://clinic.example/fhir/CodeSystem/genders",
                 "filter": [{"property": "concept", "op": "is-a", "value": "recorded"}]}],
            "exclude": [{"system": "http://clinic.example/fhir/CodeSystem/genders", "concept": [{"code": "recorded-unsure"}]}]}}),
        json!({"resourceType": "CodeSystem", "url": "http://clinic.example/fhir/CodeSystem/genders", "status": "active",
            "content": "complete", "concept": [
                {"code": "recorded", "concept": [{"code": "recorded-sure"}, {"code": "recorded-unsure"}]},
                {"code": "other"}]}),
    ]
}

/// A FHIR package (`.tgz`) of `resources`, for `fhir_version`.
fn package(name: &str, fhir_version: &str, resources: &[Value]) -> Vec<u8> {
    let mut archive = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
    let manifest = json!({"name": name, "version": "1.0.0", "fhirVersions": [fhir_version],
        "dependencies": {"hl7.fhir.r4.core": "4.0.1", "clinic.example.base": "2.0.0"}});
    let files = std::iter::once(("package/package.json".to_string(), manifest)).chain(
        resources
            .iter()
            .enumerate()
            .map(|(i, r)| (format!("package/{}-{i}.json", r["resourceType"].as_str().unwrap()), r.clone())),
    );
    for (path, json) in files {
        let bytes = serde_json::to_vec(&json).unwrap();
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        archive.append_data(&mut header, path, bytes.as_slice()).unwrap();
    }
    let mut gz = archive.into_inner().unwrap();
    gz.flush().unwrap();
    gz.finish().unwrap()
}

fn clinic_package() -> Vec<u8> {
    let mut resources = vec![clinic_profile(1)];
    resources.extend(clinic_genders());
    package("clinic.example.profiles", "4.0.1", &resources)
}

fn patient(gender: &str, birth_date: Option<&str>) -> Value {
    let mut patient = json!({"resourceType": "Patient", "meta": {"profile": [PROFILE]}, "gender": gender});
    if let Some(date) = birth_date {
        patient["birthDate"] = json!(date);
    }
    patient
}

/// (expression, rule) of each issue.
fn issues_of(outcome: &Value) -> Vec<(String, String)> {
    let issues = outcome["issue"].as_array().cloned().unwrap_or_default();
    let text = |value: &Value| value.as_str().unwrap_or_default().to_string();
    issues.iter().map(|i| (text(&i["expression"][0]), text(&i["details"]["coding"][0]["code"]))).collect()
}

/// What the clinic profile enforces, wherever the server found it.
async fn writes_are_checked_against_the_clinic_profile(server: &TestServer) {
    let response = server.post("Patient", &patient("female", None)).await;
    assert_eq!(response.status(), 422);
    let outcome = body(response).await;
    assert!(issues_of(&outcome).contains(&("Patient.birthDate".into(), "cardinality".into())), "{outcome}");
    for gender in ["other", "unknown"] {
        let response = server.post("Patient", &patient(gender, Some("1980-02-01"))).await;
        assert_eq!(response.status(), 422, "{gender}");
        let outcome = body(response).await;
        assert!(issues_of(&outcome).contains(&("Patient.gender".into(), "binding".into())), "{outcome}");
    }
    assert_eq!(server.search_ids("Patient").await.len(), 0, "nothing refused was stored");
    assert_eq!(server.post("Patient", &patient("male", Some("1980-02-01"))).await.status(), 201);
}

async fn packages_in_the_folder_are_enforced(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("clinic.tgz"), clinic_package()).unwrap();
    let packages: Vec<Value> = packages_in(dir.path()).unwrap().into_iter().flat_map(|(_, p)| p.resources).collect();
    let policy = ProfilePolicy { packages: packages.into(), ..ProfilePolicy::default() };
    let server = TestServer::start_with(db, |s| hearth::server::Settings { profiles: policy, ..s }).await;
    writes_are_checked_against_the_clinic_profile(&server).await;

    // $validate names the profile, and the CapabilityStatement lists it.
    let parameters = json!({"resourceType": "Parameters", "parameter": [
        {"name": "resource", "resource": {"resourceType": "Patient", "gender": "female"}},
        {"name": "profile", "valueUri": PROFILE}]});
    let outcome = body(server.post("Patient/$validate", &parameters).await).await;
    assert!(issues_of(&outcome).contains(&("Patient.birthDate".into(), "cardinality".into())), "{outcome}");
    // An extensible binding warns, and the write is stored.
    let mut unmarried = patient("female", Some("1980-02-01"));
    unmarried["maritalStatus"] = json!({"coding": [{"system": "http://clinic.example/cs", "code": "single"}]});
    let parameters = json!({"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": unmarried}]});
    let outcome = body(server.post("Patient/$validate", &parameters).await).await;
    let warning = outcome["issue"].as_array().unwrap().iter().find(|i| i["expression"][0] == "Patient.maritalStatus");
    assert_eq!(warning.map(|w| w["severity"].clone()), Some(json!("warning")), "{outcome}");
    assert_eq!(server.post("Patient", &unmarried).await.status(), 201);
    let statement = body(server.get("metadata").await).await;
    let patients =
        statement["rest"][0]["resource"].as_array().unwrap().iter().find(|r| r["type"] == "Patient").cloned();
    assert!(patients.unwrap()["supportedProfile"].as_array().unwrap().contains(&json!(PROFILE)));
}

async fn stored_profiles_are_enforced_and_follow_their_updates(db: Db) {
    let server = TestServer::start(db).await;
    let response = server.post("Patient", &patient("female", None)).await;
    assert_eq!(response.status(), 422, "unknown before it is stored");
    let entries: Vec<Value> = std::iter::once(clinic_profile(1))
        .chain(clinic_genders())
        .map(|resource| {
            let url = resource["resourceType"].clone();
            json!({"resource": resource, "request": {"method": "POST", "url": url}})
        })
        .collect();
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
    let response = server.post("", &bundle).await;
    assert_eq!(response.status(), 200, "{}", body(response).await);
    writes_are_checked_against_the_clinic_profile(&server).await;

    // An update of the profile is in force for the next write.
    let id = server.search_ids(&format!("StructureDefinition?url={PROFILE}")).await.remove(0);
    let mut relaxed = clinic_profile(0);
    relaxed["id"] = json!(id);
    assert_eq!(server.put(&format!("StructureDefinition/{id}"), &relaxed).await.status(), 200);
    assert_eq!(server.post("Patient", &patient("female", None)).await.status(), 201);

    // A profile stored without a snapshot is refused, with the reason.
    let mut differential = clinic_profile(1);
    differential["url"] = json!("http://clinic.example/fhir/StructureDefinition/differential-only");
    differential.as_object_mut().unwrap().remove("snapshot");
    differential["differential"] =
        json!({"element": [{"id": "Patient.birthDate", "path": "Patient.birthDate", "min": 1}]});
    assert_eq!(server.post("StructureDefinition", &differential).await.status(), 201);
    let mut claiming = patient("female", Some("1980-02-01"));
    claiming["meta"]["profile"] = json!([differential["url"]]);
    let response = server.post("Patient", &claiming).await;
    assert_eq!(response.status(), 422);
    let outcome = body(response).await;
    assert!(outcome.to_string().contains("snapshot"), "{outcome}");
}

#[tokio::test]
async fn other_nodes_pick_up_stored_profiles() {
    let first = TestServer::start(Db::Postgres).await;
    let second = first.second_node().await;
    let without_birth_date = || async { body(second.post("Patient", &patient("female", None)).await).await };
    assert!(issues_of(&without_birth_date().await).iter().any(|(_, rule)| rule == "unknown-profile"));
    assert_eq!(first.post("StructureDefinition", &clinic_profile(1)).await.status(), 201);
    for _ in 0..60 {
        if issues_of(&without_birth_date().await).contains(&("Patient.birthDate".into(), "cardinality".into())) {
            let conforming = second.post("Patient", &patient("female", Some("1980-02-01"))).await;
            assert_eq!(conforming.status(), 201);
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the second node never picked up the stored profile");
}

fn run_hearth(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_hearth")).args(args).output().expect("run hearth")
}

#[test]
fn profiles_add_checks_a_package_and_puts_it_in_the_folder() {
    let work = tempfile::tempdir().unwrap();
    let folder = work.path().join("profiles");
    let folder_arg = folder.to_str().unwrap();
    let file = work.path().join("clinic.tgz");
    std::fs::write(&file, clinic_package()).unwrap();
    let output = run_hearth(&["profiles", "add", file.to_str().unwrap(), "--profiles", folder_arg]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout} {}", String::from_utf8_lossy(&output.stderr));
    assert!(
        stdout.contains("clinic.example.profiles 1.0.0: 1 StructureDefinitions used, 2 bound value sets expanded"),
        "{stdout}"
    );
    assert!(stdout.contains("depends on clinic.example.base#2.0.0"), "{stdout}");
    assert!(folder.join("clinic.example.profiles-1.0.0.tgz").exists());
    let listed = run_hearth(&["profiles", "list", "--profiles", folder_arg]);
    assert!(String::from_utf8_lossy(&listed.stdout).contains("clinic.example.profiles 1.0.0"));

    let r5 = work.path().join("r5.tgz");
    std::fs::write(&r5, package("clinic.example.r5", "5.0.0", &[clinic_profile(1)])).unwrap();
    let output = run_hearth(&["profiles", "add", r5.to_str().unwrap(), "--profiles", folder_arg]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("this server is FHIR R4"));
    let not_a_package = work.path().join("notes.tgz");
    std::fs::write(&not_a_package, b"not gzip").unwrap();
    let output = run_hearth(&["profiles", "add", not_a_package.to_str().unwrap(), "--profiles", folder_arg]);
    assert!(!output.status.success());
    assert_eq!(std::fs::read_dir(&folder).unwrap().count(), 1, "only the R4 package is in the folder");

    // A server refuses to start requiring a profile it does not know, and knows the folder's.
    let database = format!("sqlite://{}", work.path().join("hearth.db").display());
    let required = format!("Patient={PROFILE}");
    let output = run_hearth(&["--database", &database, "serve", "--auth", "off", "--require-profile", &required]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("is no profile of Patient this server knows"));
}

on_both_databases!(packages_in_the_folder_are_enforced, stored_profiles_are_enforced_and_follow_their_updates);
