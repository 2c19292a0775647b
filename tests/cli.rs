//! The command line tools: `hearth synth` writes bundles that `hearth import` loads.

use std::process::Command;

use hearth::server::{Hearth, Settings};
use hearth::store::{SearchQuery, Store};

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
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 3 + 1, "the patients and the clinic's availability");
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
    assert!(summary.contains("from 5 files") && summary.contains("0 entries failed"), "{summary}");

    let server = Hearth::open(&database, Settings::new("http://localhost:8080")).await.unwrap();
    let store = server.service().store().clone();
    assert_eq!(count(store.as_ref(), "Patient").await, 5);
    assert!(count(store.as_ref(), "Observation").await > 10);
    assert!(count(store.as_ref(), "Appointment").await >= 3);
    assert!(count(store.as_ref(), "Slot").await > 20 * 28, "a month of office hours");
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

/// The lines of every NDJSON file in `dir`, each without `meta.versionId` and
/// `meta.lastUpdated` (which an import writes anew), sorted.
fn exported_lines(dir: &std::path::Path) -> Vec<String> {
    let mut lines = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for line in text.lines() {
            let mut resource: serde_json::Value = serde_json::from_str(line).unwrap();
            let meta = resource["meta"].as_object_mut().unwrap();
            meta.remove("versionId");
            meta.remove("lastUpdated");
            if meta.is_empty() {
                resource.as_object_mut().unwrap().remove("meta");
            }
            lines.push(resource.to_string());
        }
    }
    lines.sort();
    lines
}

/// `hearth export` writes what `hearth import` reads back into an empty database, the same
/// resources byte for byte but for their versions.
#[tokio::test]
async fn an_export_imports_into_an_empty_database_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let (first, second) = (format!("sqlite://{}", path("first.db")), format!("sqlite://{}", path("second.db")));
    let synth = run_hearth(&["synth", "--patients", "2", "--seed", "3", "--out", &path("bundles")]);
    assert!(synth.status.success());
    assert!(run_hearth(&["import", "--database", &first, &path("bundles")]).status.success());

    let export = run_hearth(&["export", "--database", &first, "--out", &path("one")]);
    let said = String::from_utf8_lossy(&export.stdout);
    assert!(export.status.success(), "{said}{}", String::from_utf8_lossy(&export.stderr));
    assert!(said.contains("exported") && said.contains("transactionTime"), "{said}");
    let counts = stored_counts(&first, &["Patient", "Observation"]).await;
    let lines = exported_lines(&dir.path().join("one"));
    let of_type = |t: &str| lines.iter().filter(|l| l.contains(&format!("\"resourceType\":\"{t}\""))).count() as u64;
    assert_eq!(vec![of_type("Patient"), of_type("Observation")], counts);

    let import = run_hearth(&["import", "--database", &second, &path("one")]);
    assert!(import.status.success(), "{}", String::from_utf8_lossy(&import.stdout));
    assert!(run_hearth(&["export", "--database", &second, "--out", &path("two")]).status.success());
    let again = exported_lines(&dir.path().join("two"));
    let only = |a: &Vec<String>, b: &Vec<String>| -> Vec<String> {
        a.iter().filter(|l| !b.contains(l)).map(|l| l.chars().take(300).collect()).take(3).collect()
    };
    assert!(
        again == lines,
        "the round trip keeps every resource: lost {:?}, gained {:?}",
        only(&lines, &again),
        only(&again, &lines)
    );

    // Only some types; a directory that holds files already, or a type that is none, is refused.
    let patients = run_hearth(&["export", "--database", &first, "--out", &path("three"), "--type", "Patient"]);
    assert!(patients.status.success());
    let names: Vec<String> = std::fs::read_dir(dir.path().join("three"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["Patient-1.ndjson".to_string()]);
    let again = run_hearth(&["export", "--database", &first, "--out", &path("one")]);
    assert!(!again.status.success() && String::from_utf8_lossy(&again.stderr).contains("not empty"));
    let nonsense = run_hearth(&["export", "--database", &first, "--out", &path("four"), "--type", "Nonsense"]);
    assert!(!nonsense.status.success() && String::from_utf8_lossy(&nonsense.stderr).contains("Nonsense"));
}

/// Counts of the resources of `types` in the SQLite database `database`.
async fn stored_counts(database: &str, types: &[&str]) -> Vec<u64> {
    let server = Hearth::open(database, Settings::new("http://localhost:8080")).await.unwrap();
    let mut counts = Vec::new();
    for resource_type in types {
        counts.push(count(server.service().store().as_ref(), resource_type).await);
    }
    counts
}

async fn count(store: &dyn Store, resource_type: &str) -> u64 {
    let mut query = SearchQuery::new(resource_type, 0);
    query.with_total = true;
    store.search(&query).await.unwrap().total.unwrap()
}

#[cfg(unix)]
#[tokio::test]
async fn an_import_of_several_files_at_a_time_stores_what_one_at_a_time_does() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bundles");
    let synth = run_hearth(&["synth", "--patients", "6", "--seed", "11", "--out", out.to_str().unwrap()]);
    assert!(synth.status.success(), "{}", String::from_utf8_lossy(&synth.stderr));
    // Files that fail, listed in the summary in the files' order whatever finishes first: the
    // first one fails last, after a thousand patients.
    let patients: String = (0..1000).map(|n| format!("{{\"resourceType\":\"Patient\",\"id\":\"nd-{n}\"}}\n")).collect();
    std::fs::write(out.join("a-slow.ndjson"), patients + "{\"id\":\"no-type\"}\n").unwrap();
    std::fs::write(out.join("b-broken.json"), "{not json").unwrap();
    std::os::unix::fs::symlink(dir.path().join("nowhere.json"), out.join("m-unreadable.json")).unwrap();
    std::fs::write(out.join("z-broken.json"), "[]").unwrap();

    let import = |name: &str, jobs: &str| {
        let database = format!("sqlite://{}", dir.path().join(name).display());
        let run = run_hearth(&["import", "--jobs", jobs, "--database", &database, out.to_str().unwrap()]);
        assert!(!run.status.success(), "the broken files fail the import");
        (database, String::from_utf8_lossy(&run.stdout).into_owned())
    };
    let (one_at_a_time, sequential) = import("one.db", "1");
    let (four_at_a_time, parallel) = import("four.db", "4");
    assert!(parallel.contains("from 11 files") && parallel.contains("4 entries failed"), "{parallel}");
    let errors =
        |summary: &str| summary.lines().skip(1).filter(|line| !line.is_empty()).map(str::to_string).collect::<Vec<_>>();
    assert_eq!(errors(&parallel), errors(&sequential));
    let [slow, broken, unreadable, empty] = &errors(&parallel)[..] else { panic!("{parallel}") };
    assert!(slow.contains("a-slow.ndjson: 400 not a FHIR resource"), "{parallel}");
    assert!(broken.contains("b-broken.json: 400 invalid JSON"), "{parallel}");
    assert!(unreadable.contains("m-unreadable.json: cannot be read"), "{parallel}");
    assert!(empty.contains("z-broken.json: 400 not a FHIR resource"), "{parallel}");

    let types = ["Patient", "Observation", "Encounter", "Appointment", "Practitioner", "Organization", "Schedule"];
    let sequential_counts = stored_counts(&one_at_a_time, &types).await;
    // The slow file's first thousand lines are one batch, stored; its bad line is the next.
    assert_eq!(sequential_counts[0], 6 + 1000, "{sequential_counts:?}");
    assert_eq!(stored_counts(&four_at_a_time, &types).await, sequential_counts);
}

#[tokio::test]
async fn an_import_refuses_paths_it_cannot_import_before_opening_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let database_file = dir.path().join("refused.db");
    let database = format!("sqlite://{}", database_file.display());
    let import = |args: &[&str]| run_hearth(&[&["import", "--database", &database][..], args].concat());

    let missing = import(&[dir.path().join("missing").to_str().unwrap()]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("No such file"), "{missing:?}");
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let nothing = import(&[empty.to_str().unwrap()]);
    assert!(!nothing.status.success());
    assert!(String::from_utf8_lossy(&nothing.stderr).contains("no .json or .ndjson files"), "{nothing:?}");
    let refused = import(&["--jobs", "0", empty.to_str().unwrap()]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--jobs"), "{refused:?}");
    assert!(!database_file.exists(), "a refused import created the database");

    // A file named on the command line is imported whatever its extension.
    let named = dir.path().join("patient.txt");
    std::fs::write(&named, "{\"resourceType\":\"Patient\",\"id\":\"named\"}").unwrap();
    let imported = import(&[named.to_str().unwrap()]);
    let summary = String::from_utf8_lossy(&imported.stdout);
    assert!(imported.status.success() && summary.contains("imported 1 resources from 1 files"), "{summary}");
}

/// Runs `hearth` with `input` on its standard input.
fn run_with_input(args: &[&str], input: &str) -> std::process::Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run hearth");
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

fn stdout(output: &std::process::Output) -> String {
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn clients_users_and_keys_are_administered_beside_a_running_server() {
    use hearth::auth::records::{client, user, verify_password, ClientCredentials};
    let dir = tempfile::tempdir().unwrap();
    let database = format!("sqlite://{}", dir.path().join("auth.db").display());
    // A server holds the database (and its single-writer lock) meanwhile.
    let settings = Settings { smart: true, ..Settings::new("http://localhost:8080") };
    let server = Hearth::open(&database, settings).await.unwrap();
    let store = server.service().store().clone();
    let db = ["--database", database.as_str()];

    let add = [
        &["client", "add", "--client-id", "portal", "--name", "Portal", "--public"][..],
        &["--redirect-uri", "https://app.example/cb", "https://app.example/cb2"],
        &db,
    ]
    .concat();
    stdout(&run_hearth(&add));
    stdout(&run_with_input(
        &[&["client", "add", "--client-id", "svc", "--secret-stdin", "--scope", "system/*.rs"][..], &db].concat(),
        "s3cret\n",
    ));
    let listed = stdout(&run_hearth(&[&["client", "list"][..], &db].concat()));
    assert!(listed.contains("portal\tpublic\tPortal\thttps://app.example/cb https://app.example/cb2"), "{listed}");
    assert!(listed.contains("svc\tsecret"), "{listed}");
    let portal = client(store.as_ref(), "portal").await.unwrap().unwrap();
    assert_eq!(portal.credentials, ClientCredentials::Public);
    assert!(client(store.as_ref(), "svc").await.unwrap().unwrap().secret_matches("s3cret"));
    // Exactly one kind of credentials.
    assert!(!run_hearth(
        &[&["client", "add", "--client-id", "x", "--public", "--jwks-uri", "https://k.example/jwks"][..], &db].concat()
    )
    .status
    .success());
    assert!(!run_hearth(&[&["client", "add", "--client-id", "x"][..], &db].concat()).status.success());

    let add_user =
        [&["user", "add", "--username", "ana", "--password-stdin", "--fhir-user", "Patient/p1"][..], &db].concat();
    stdout(&run_with_input(&add_user, "first password\n"));
    let proxy = [
        &[
            "user",
            "add",
            "--username",
            "mum",
            "--password-stdin",
            "--fhir-user",
            "RelatedPerson/r1",
            "--patient",
            "Patient/p1",
            "--patient",
            "Patient/p2",
        ][..],
        &db,
    ]
    .concat();
    stdout(&run_with_input(&proxy, "mum password\n"));
    assert!(!run_with_input(
        &[&["user", "add", "--username", "bad", "--password-stdin", "--fhir-user", "Observation/1"][..], &db].concat(),
        "pw\n"
    )
    .status
    .success());
    let users = stdout(&run_hearth(&[&["user", "list"][..], &db].concat()));
    assert!(users.contains("ana\tPatient/p1\tp1") && users.contains("mum\tRelatedPerson/r1\tp1 p2"), "{users}");
    stdout(&run_with_input(&[&["user", "passwd", "ana", "--password-stdin"][..], &db].concat(), "second password\n"));
    let ana = user(store.as_ref(), "ana").await.unwrap().unwrap();
    assert!(ana.password_hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{}", ana.password_hash);
    assert!(
        verify_password("second password", &ana.password_hash)
            && !verify_password("first password", &ana.password_hash)
    );

    let keys_before = store.auth_list("signing-key").await.unwrap().len();
    assert!(stdout(&run_hearth(&[&["key", "rotate"][..], &db].concat())).starts_with("new signing key"));
    assert_eq!(store.auth_list("signing-key").await.unwrap().len(), keys_before + 1);

    stdout(&run_hearth(&[&["user", "remove", "mum"][..], &db].concat()));
    stdout(&run_hearth(&[&["client", "remove", "svc"][..], &db].concat()));
    assert!(
        user(store.as_ref(), "mum").await.unwrap().is_none() && client(store.as_ref(), "svc").await.unwrap().is_none()
    );
    assert!(!run_hearth(&[&["client", "remove", "svc"][..], &db].concat()).status.success(), "removing twice fails");
}

#[tokio::test]
async fn user_invite_prints_a_one_time_registration_link() {
    let dir = tempfile::tempdir().unwrap();
    let database = format!("sqlite://{}", dir.path().join("invite.db").display());
    let patient = dir.path().join("patient.json");
    std::fs::write(&patient, r#"{"resourceType":"Patient","id":"p1","birthDate":"1980-02-01"}"#).unwrap();
    assert!(run_hearth(&["import", "--database", &database, patient.to_str().unwrap()]).status.success());
    let invite = |fhir_user: &str| {
        let base = ["--database", &database, "--base-url", "https://portal.example", "user", "invite", "--fhir-user"];
        run_hearth(&[&base[..], &[fhir_user]].concat())
    };
    let printed = invite("Patient/p1");
    let link = String::from_utf8_lossy(&printed.stdout).trim().to_string();
    assert!(printed.status.success(), "{printed:?}");
    let token = link.strip_prefix("https://portal.example/auth/register?token=").expect("a registration link");
    assert!(token.len() >= 43, "{link}");
    // Only the token's digest is stored.
    let file = std::fs::read(dir.path().join("invite.db")).unwrap();
    assert!(!file.windows(token.len()).any(|w| w == token.as_bytes()), "the token is not in the database");
    let refused = invite("Patient/nobody");
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("there is no Patient/nobody"), "{refused:?}");

    // A password reset link for an account, and none for who has no account.
    let add =
        ["--database", &database, "user", "add", "--username", "ana", "--password-stdin", "--fhir-user", "Patient/p1"];
    assert!(run_with_input(&add, "ana-password\n").status.success());
    let reset = |username: &str| {
        run_hearth(&["--database", &database, "--base-url", "https://portal.example", "user", "reset", username])
    };
    let printed = reset("ana");
    assert!(
        String::from_utf8_lossy(&printed.stdout).starts_with("https://portal.example/auth/reset?token="),
        "{printed:?}"
    );
    assert!(!reset("nobody").status.success());

    // Disabling and enabling an account shows in the list.
    let user = |args: &[&str]| run_hearth(&[&["--database", database.as_str(), "user"][..], args].concat());
    assert!(user(&["disable", "ana"]).status.success());
    assert!(String::from_utf8_lossy(&user(&["list"]).stdout).contains("Patient/p1\tp1\t\tdisabled"));
    assert!(user(&["enable", "ana"]).status.success());
    assert!(String::from_utf8_lossy(&user(&["list"]).stdout).contains("Patient/p1\tp1\t\tenabled"));
    assert!(!user(&["disable", "nobody"]).status.success());

    // A parent who is a patient too acts through the RelatedPerson of their child.
    assert!(user(&["link", "ana", "RelatedPerson/child-1"]).status.success());
    assert!(String::from_utf8_lossy(&user(&["list"]).stdout).contains("Patient/p1\tp1\tchild-1\tenabled"));
    assert!(!user(&["link", "ana", "Patient/child-1"]).status.success(), "a RelatedPerson is linked");
    assert!(!user(&["unlink", "ana", "RelatedPerson/other"]).status.success());
    let unlinked = user(&["unlink", "ana", "RelatedPerson/child-1"]);
    assert!(String::from_utf8_lossy(&unlinked.stdout).contains("sessions and tokens have ended"));
    assert!(String::from_utf8_lossy(&user(&["list"]).stdout).contains("Patient/p1\tp1\t\tenabled"));
}
