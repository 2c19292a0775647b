//! The command line tools: `hearth synth` writes bundles that `hearth import` loads.

use std::process::Command;

use hearth::server::{Hearth, Settings};
use hearth::store::SearchQuery;

fn run_hearth(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_hearth")).args(args).output().expect("run hearth")
}

#[tokio::test]
async fn synth_bundles_import_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bundles");
    let database = format!("sqlite://{}", dir.path().join("import.db").display());

    let synth = run_hearth(&["synth", "--patients", "3", "--seed", "7", "--out", out.to_str().unwrap()]);
    assert!(synth.status.success(), "{}", String::from_utf8_lossy(&synth.stderr));
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 3);
    let again = dir.path().join("again");
    run_hearth(&["synth", "--patients", "3", "--seed", "7", "--out", again.to_str().unwrap()]);
    assert_eq!(
        std::fs::read(out.join("patient-00001.json")).unwrap(),
        std::fs::read(again.join("patient-00001.json")).unwrap()
    );

    let ndjson = dir.path().join("extra.ndjson");
    std::fs::write(
        &ndjson,
        "{\"resourceType\":\"Patient\",\"id\":\"nd-1\",\"gender\":\"male\"}\n{\"resourceType\":\"Patient\",\"id\":\"nd-2\"}\n\n",
    )
    .unwrap();
    let import = run_hearth(&["import", "--database", &database, out.to_str().unwrap(), ndjson.to_str().unwrap()]);
    let summary = String::from_utf8_lossy(&import.stdout);
    assert!(import.status.success(), "{summary}\n{}", String::from_utf8_lossy(&import.stderr));
    assert!(summary.contains("from 4 files") && summary.contains("0 entries failed"), "{summary}");

    let server = Hearth::open(&database, Settings::new("http://localhost:8080")).await.unwrap();
    let store = server.service().store().clone();
    let count = |resource_type: &'static str| {
        let store = store.clone();
        async move {
            let mut query = SearchQuery::new(resource_type, 0);
            query.with_total = true;
            store.search(&query).await.unwrap().total.unwrap()
        }
    };
    assert_eq!(count("Patient").await, 5);
    assert!(count("Observation").await > 10);
    assert!(count("Appointment").await >= 3);
    assert!(store.read("Patient", "nd-1").await.unwrap().is_some());

    // While a server has the SQLite database open, another process may not write to it.
    let busy = run_hearth(&["import", "--database", &database, ndjson.to_str().unwrap()]);
    assert!(!busy.status.success());
    assert!(
        String::from_utf8_lossy(&busy.stderr).contains("another Hearth process"),
        "{}",
        String::from_utf8_lossy(&busy.stderr)
    );
    drop(store);
    drop(server);

    // A file that is not FHIR is reported, and the exit status says so.
    let broken = dir.path().join("broken.json");
    std::fs::write(&broken, "{not json").unwrap();
    let failed = run_hearth(&["import", "--database", &database, broken.to_str().unwrap()]);
    assert!(!failed.status.success());
    assert!(String::from_utf8_lossy(&failed.stdout).contains("broken.json"));
}
