//! Documents end to end through HTTP, on both databases: a Binary's content downloaded in its
//! own media type, raw uploads with `X-Security-Context`, and what patients may upload.

mod common;

use common::smart::{smart_server, smart_server_with, Smart};
use common::{body, outcome, Db, TestServer};
use reqwest::Method;
use serde_json::{json, Value};

/// A small but real PDF.
const PDF: &[u8] = b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n<< /Root 1 0 R >>\n%%EOF\n";

/// A 1x1 PNG.
const PNG: &[u8] = &[
    0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A, 0x00, 0x00, 0x00, 0x0D, 0x49, 0x48, 0x44, 0x52, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1F, 0x15, 0xC4, 0x89, 0x00, 0x00, 0x00, 0x0A, 0x49,
    0x44, 0x41, 0x54, 0x78, 0x9C, 0x63, 0x00, 0x01, 0x00, 0x00, 0x05, 0x00, 0x01, 0x0D, 0x0A, 0x2D, 0xB4, 0x00, 0x00,
    0x00, 0x00, 0x49, 0x45, 0x4E, 0x44, 0xAE, 0x42, 0x60, 0x82,
];

/// Uploads `bytes` as `content_type` into `context` (when given) with `token`.
async fn upload(
    smart: &Smart,
    token: &str,
    content_type: &str,
    bytes: &[u8],
    context: Option<&str>,
) -> reqwest::Response {
    let mut request =
        smart.fhir_request(Method::POST, "Binary", token).header("content-type", content_type).body(bytes.to_vec());
    if let Some(context) = context {
        request = request.header("x-security-context", context);
    }
    request.send().await.unwrap()
}

async fn download(smart: &Smart, token: &str, id: &str, accept: &str) -> reqwest::Response {
    smart.fhir_request(Method::GET, &format!("Binary/{id}"), token).header("accept", accept).send().await.unwrap()
}

fn created_id(response: &Value) -> String {
    response["id"].as_str().unwrap().to_string()
}

async fn binaries_are_served_as_themselves(db: Db) {
    let server = smart_server(db).await;
    let smart = Smart::new(&server).await;
    let admin = smart.admin_token().await;
    let patient = smart.create(&admin, &json!({"resourceType": "Patient"})).await;
    let response = upload(&smart, &admin, "application/pdf", PDF, Some(&format!("Patient/{patient}"))).await;
    assert_eq!(response.status(), 201);
    let binary = body(response).await;
    assert_eq!(binary["contentType"], "application/pdf");
    assert_eq!(binary["securityContext"]["reference"], format!("Patient/{patient}"));
    let id = created_id(&binary);

    for accept in ["application/pdf", "*/*", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"] {
        let response = download(&smart, &admin, &id, accept).await;
        assert_eq!(response.status(), 200, "{accept}");
        assert_eq!(response.headers()["content-type"], "application/pdf", "{accept}");
        assert_eq!(response.headers()["content-disposition"], format!("inline; filename=\"Binary-{id}\""));
        assert_eq!(response.headers()["x-content-type-options"], "nosniff");
        assert_eq!(response.headers()["etag"], "W/\"1\"");
        assert_eq!(response.bytes().await.unwrap().as_ref(), PDF, "the bytes exactly as sent");
    }
    let resource = download(&smart, &admin, &id, "application/fhir+json").await;
    assert_eq!(resource.status(), 200);
    assert_eq!(body(resource).await["resourceType"], "Binary", "a FHIR Accept gets the resource");
    assert_eq!(download(&smart, &admin, &id, "image/png").await.status(), 406);
    let versioned = smart
        .fhir_request(Method::GET, &format!("Binary/{id}/_history/1"), &admin)
        .header("accept", "application/pdf")
        .send()
        .await
        .unwrap();
    assert_eq!(versioned.bytes().await.unwrap().as_ref(), PDF);
    let head = smart.fhir_request(Method::HEAD, &format!("Binary/{id}"), &admin).header("accept", "*/*").send();
    let head = head.await.unwrap();
    assert_eq!((head.status().as_u16(), head.headers()["content-type"].to_str().unwrap()), (200, "application/pdf"));
    assert_eq!(download(&smart, &admin, "missing", "application/pdf").await.status(), 404);

    // A raw PUT replaces the content.
    let put = smart
        .fhir_request(Method::PUT, &format!("Binary/{id}"), &admin)
        .header("content-type", "image/png")
        .header("x-security-context", format!("Patient/{patient}"))
        .body(PNG.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    let png = download(&smart, &admin, &id, "image/*").await;
    assert_eq!(png.headers()["content-type"], "image/png");
    assert_eq!(png.bytes().await.unwrap().as_ref(), PNG);
}

/// (distinct contents, chunks) in the content table, and the largest Binary row.
async fn stored_contents(server: &TestServer) -> (i64, i64, i64) {
    use sqlx::{Connection, Row};
    let counts = "SELECT COUNT(DISTINCT sha256) AS contents, COUNT(*) AS chunks FROM binary_content";
    let rows = "SELECT MAX(LENGTH(body)) AS longest FROM resource_history WHERE resource_type = 'Binary'";
    let (counts, rows) = match server.db {
        Db::Sqlite => {
            let mut conn = sqlx::SqliteConnection::connect(&server.database_url).await.unwrap();
            let counts = sqlx::query(counts).fetch_one(&mut conn).await.unwrap();
            let longest: i64 = sqlx::query(rows).fetch_one(&mut conn).await.unwrap().get("longest");
            ((counts.get("contents"), counts.get("chunks")), longest)
        }
        Db::Postgres => {
            let mut conn = sqlx::PgConnection::connect(&server.database_url).await.unwrap();
            let counts = sqlx::query(counts).fetch_one(&mut conn).await.unwrap();
            let longest: i32 = sqlx::query(rows).fetch_one(&mut conn).await.unwrap().get("longest");
            ((counts.get("contents"), counts.get("chunks")), i64::from(longest))
        }
    };
    (counts.0, counts.1, rows)
}

/// A large file is stored once, apart from its Binary's JSON, and every way of reading the
/// Binary gives it back: raw (streamed), as a resource, by version, in history and searches.
async fn large_files_are_stored_once_and_read_back_everywhere(db: Db) {
    use base64::Engine;
    let server = smart_server(db).await;
    let smart = Smart::new(&server).await;
    let admin = smart.admin_token().await;
    let patient = smart.create(&admin, &json!({"resourceType": "Patient"})).await;
    let mut pdf = PDF.to_vec();
    pdf.extend((0..3 * 1024 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
    let context = format!("Patient/{patient}");
    let created = body(upload(&smart, &admin, "application/pdf", &pdf, Some(&context)).await).await;
    let id = created_id(&created);
    let encoded = base64::engine::general_purpose::STANDARD.encode(&pdf);
    assert_eq!(created["data"], encoded.as_str());

    let raw = download(&smart, &admin, &id, "application/pdf").await;
    assert_eq!(raw.headers()["content-length"], pdf.len().to_string().as_str());
    assert!(raw.bytes().await.unwrap() == pdf, "the streamed bytes are the bytes sent");
    let resource = body(download(&smart, &admin, &id, "application/fhir+json").await).await;
    assert_eq!(resource["data"], encoded.as_str());

    // A second version with the same content (its context changed): the content is stored once.
    let mut moved = resource.clone();
    moved["securityContext"] = json!({"reference": format!("Patient/{patient}"), "display": "moved"});
    assert_eq!(smart.send(Method::PUT, &format!("Binary/{id}"), &admin, &moved).await.status(), 200);
    let history = body(smart.get(&format!("Binary/{id}/_history"), &admin).await).await;
    let entries = history["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    assert!(entries.iter().all(|e| e["resource"]["data"] == encoded.as_str()), "every version has its data");
    let first = smart.fhir_request(Method::GET, &format!("Binary/{id}/_history/1"), &admin);
    let first = body(first.header("accept", "application/fhir+json").send().await.unwrap()).await;
    assert_eq!(first["data"], encoded.as_str());
    let found = body(smart.get(&format!("Binary?_id={id}"), &admin).await).await;
    assert_eq!(found["entry"][0]["resource"]["data"], encoded.as_str());
    let (contents, chunks, longest) = stored_contents(&server).await;
    assert_eq!((contents, chunks), (1, pdf.len().div_ceil(256 * 1024) as i64), "one copy, in 256 KiB chunks");
    assert!(longest < 1024, "the Binary rows hold no data ({longest} bytes)");

    // data that is not base64 cannot be stored as bytes.
    let forged = json!({"resourceType": "Binary", "contentType": "text/plain", "data": "hearth:content"});
    let response = smart.send(Method::POST, "Binary", &admin, &forged).await;
    assert_eq!(response.status(), 400);
    assert!(outcome(response).await.contains("not valid base64"));
}

async fn uploads_are_checked_and_nothing_refused_is_stored(db: Db) {
    let server = smart_server_with(db, |mut settings| {
        settings.uploads.max_bytes = 1024;
        settings
    })
    .await;
    let smart = Smart::new(&server).await;
    let admin = smart.admin_token().await;
    let big = [PDF, &vec![b' '; 2048][..]].concat();
    for (content_type, bytes, status, says) in [
        ("application/pdf", &big[..], 413, "at most 1024 bytes"),
        ("text/html", &b"<html><script>alert(1)</script></html>"[..], 415, "not accepted"),
        ("application/pdf", PNG, 415, "not application/pdf"),
        ("image/png", PDF, 415, "not image/png"),
    ] {
        let response = upload(&smart, &admin, content_type, bytes, Some("Patient/p1")).await;
        assert_eq!(response.status(), status, "{content_type}");
        assert!(outcome(response).await.contains(says), "{content_type}");
    }
    let stored = body(smart.get("Binary?_summary=count", &admin).await).await;
    assert_eq!(stored["total"], 0, "nothing stored");
    let other = smart.fhir_request(Method::POST, "Observation", &admin).header("content-type", "application/pdf");
    assert_eq!(other.body(PDF.to_vec()).send().await.unwrap().status(), 415, "only Binary takes raw bodies");
}

async fn patients_upload_only_into_their_own_record(db: Db) {
    let server = smart_server(db).await;
    let smart = Smart::new(&server).await;
    let admin = smart.admin_token().await;
    let ana = smart.create(&admin, &json!({"resourceType": "Patient"})).await;
    let luis = smart.create(&admin, &json!({"resourceType": "Patient"})).await;
    let scope = "launch/patient patient/Binary.cr patient/DocumentReference.cr patient/Patient.r";
    let ana_token = smart.user_token("ana", &format!("Patient/{ana}"), &[], scope).await;

    let response = upload(&smart, &ana_token, "image/png", PNG, Some(&format!("Patient/{ana}"))).await;
    assert_eq!(response.status(), 201, "into her own record");
    let own = created_id(&body(response).await);
    assert_eq!(download(&smart, &ana_token, &own, "image/png").await.bytes().await.unwrap().as_ref(), PNG);
    for context in [Some(format!("Patient/{luis}")), None, Some("Binary/x".to_string())] {
        let response = upload(&smart, &ana_token, "image/png", PNG, context.as_deref()).await;
        assert_eq!(response.status(), 403, "{context:?}");
    }
    let luiss = upload(&smart, &admin, "application/pdf", PDF, Some(&format!("Patient/{luis}"))).await;
    let luiss = created_id(&body(luiss).await);
    assert_eq!(download(&smart, &ana_token, &luiss, "application/pdf").await.status(), 404, "another's file");
    let moved = smart
        .fhir_request(Method::PUT, &format!("Binary/{luiss}"), &ana_token)
        .header("content-type", "image/png")
        .header("x-security-context", format!("Patient/{ana}"))
        .body(PNG.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(moved.status(), 404, "nor can she overwrite it");
    let count = body(smart.get("Binary?_summary=count", &admin).await).await;
    assert_eq!(count["total"], 2, "her upload and his file, nothing else");
}

async fn patients_upload_a_document_in_one_step(db: Db) {
    use base64::Engine;
    use sha1::Digest;
    let server = smart_server(db).await;
    let smart = Smart::new(&server).await;
    let admin = smart.admin_token().await;
    let ana = smart.create(&admin, &json!({"resourceType": "Patient"})).await;
    let luis = smart.create(&admin, &json!({"resourceType": "Patient"})).await;
    let scope = "launch/patient patient/Binary.cr patient/DocumentReference.crs patient/Patient.r";
    let ana_token = smart.user_token("ana", &format!("Patient/{ana}"), &[], scope).await;
    let encoded = base64::engine::general_purpose::STANDARD.encode(PDF);
    let parameters = |file: Value, patient: Option<&str>| {
        let mut parameter = vec![
            json!({"name": "file", "resource": file}),
            json!({"name": "title", "valueString": "Insurance card, front"}),
            json!({"name": "type", "valueString": "http://loinc.org|64290-0"}),
        ];
        if let Some(patient) = patient {
            parameter.push(json!({"name": "patient", "valueReference": {"reference": patient}}));
        }
        json!({"resourceType": "Parameters", "parameter": parameter})
    };
    let pdf = json!({"resourceType": "Binary", "contentType": "application/pdf", "data": encoded});
    let response =
        smart.send(Method::POST, "DocumentReference/$upload", &ana_token, &parameters(pdf.clone(), None)).await;
    assert_eq!(response.status(), 201);
    assert!(response.headers()["location"].to_str().unwrap().contains("/DocumentReference/"));
    let document = body(response).await;
    assert_eq!((document["status"].as_str(), document["docStatus"].as_str()), (Some("current"), Some("preliminary")));
    assert_eq!(document["subject"]["reference"], format!("Patient/{ana}"));
    assert_eq!(document["type"]["coding"][0]["code"], "64290-0");
    let attachment = &document["content"][0]["attachment"];
    assert_eq!(attachment["size"], PDF.len());
    assert_eq!(attachment["hash"], base64::engine::general_purpose::STANDARD.encode(sha1::Sha1::digest(PDF)));
    assert_eq!(attachment["title"], "Insurance card, front");
    let url = attachment["url"].as_str().unwrap();
    let content = smart.fhir_request(Method::GET, url, &ana_token).header("accept", "application/pdf").send();
    assert_eq!(content.await.unwrap().bytes().await.unwrap().as_ref(), PDF, "stored exactly as sent");
    let listed = body(smart.get(&format!("DocumentReference?patient={ana}&_sort=-date"), &ana_token).await).await;
    assert_eq!(listed["entry"][0]["resource"]["id"], document["id"]);

    let for_luis = parameters(pdf.clone(), Some(&format!("Patient/{luis}")));
    let response = smart.send(Method::POST, "DocumentReference/$upload", &ana_token, &for_luis).await;
    assert_eq!(response.status(), 403, "not into another patient's record");
    let lying = json!({"resourceType": "Binary", "contentType": "image/png", "data": encoded});
    let response = smart.send(Method::POST, "DocumentReference/$upload", &ana_token, &parameters(lying, None)).await;
    assert_eq!(response.status(), 415);
    let count = |t: &'static str| {
        let (smart, admin) = (&smart, &admin);
        async move { body(smart.get(&format!("{t}?_summary=count"), admin).await).await["total"].clone() }
    };
    assert_eq!((count("Binary").await, count("DocumentReference").await), (json!(1), json!(1)), "nothing else stored");
    let response = smart.send(Method::POST, "DocumentReference/$upload", &admin, &parameters(pdf, None)).await;
    assert_eq!(response.status(), 400, "a system names the patient");
}

async fn without_authorization_uploads_work_too(db: Db) {
    let server = TestServer::start(db).await;
    let response = server
        .request(Method::POST, "Binary")
        .header("content-type", "application/pdf")
        .header("x-security-context", "Patient/p1")
        .body(PDF.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let id = created_id(&body(response).await);
    let content = server.request(Method::GET, &format!("Binary/{id}")).header("accept", "application/pdf").send();
    assert_eq!(content.await.unwrap().bytes().await.unwrap().as_ref(), PDF);
}

/// `--static-dir`: the operator's files at `/static/`, nothing outside the directory.
async fn static_files_are_served_from_the_operators_directory(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("portal.html"), b"<!doctype html><title>Portal</title>").unwrap();
    let static_dir = Some(dir.path().to_path_buf());
    let server = TestServer::start_with(db, |s| hearth::server::Settings { static_dir, ..s }).await;
    let root = server.url("").trim_end_matches("/fhir").to_string();
    let client = reqwest::Client::new();
    let page = client.get(format!("{root}/static/portal.html")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["content-type"], "text/html");
    assert_eq!(page.headers()["x-content-type-options"], "nosniff");
    assert_eq!(page.text().await.unwrap(), "<!doctype html><title>Portal</title>");
    assert_eq!(client.get(format!("{root}/static/missing.html")).send().await.unwrap().status(), 404);
    let outside = client.get(format!("{root}/static/..%2f..%2fetc%2fpasswd")).send().await.unwrap();
    assert!(outside.status().is_client_error(), "{}", outside.status());
}

on_both_databases!(
    static_files_are_served_from_the_operators_directory,
    large_files_are_stored_once_and_read_back_everywhere,
    binaries_are_served_as_themselves,
    uploads_are_checked_and_nothing_refused_is_stored,
    patients_upload_only_into_their_own_record,
    patients_upload_a_document_in_one_step,
    without_authorization_uploads_work_too,
);
