//! The manifest of a finished export (Bulk Data Access IG 2.0, "Response - Complete Status").

use serde_json::{json, Value};

use super::{ExportRequest, List, OutputFile};

/// The manifest of `request`, whose finished files are `files`; `url` gives a file's absolute
/// URL from its name. `requires_token`: whether the files are read with a bearer token (the
/// server runs with authorization).
pub fn manifest(
    request: &ExportRequest,
    files: &[OutputFile],
    url: impl Fn(&str) -> String,
    requires_token: bool,
) -> Value {
    let list = |list: List| -> Vec<Value> {
        files
            .iter()
            .filter(|file| file.list == list)
            .map(|file| json!({"type": file.resource_type, "url": url(&file.name), "count": file.count}))
            .collect()
    };
    json!({
        "transactionTime": request.transaction_time,
        "request": request.request,
        "requiresAccessToken": requires_token,
        "output": list(List::Output),
        "deleted": list(List::Deleted),
        "error": list(List::Error),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::Level;

    #[test]
    fn files_go_to_their_lists_with_absolute_urls() {
        let request = ExportRequest {
            request: "http://h/fhir/$export".into(),
            claims: None,
            level: Level::System,
            types: vec!["Patient".into()],
            filters: Default::default(),
            since: None,
            elements: Vec::new(),
            mark: "seq:1".into(),
            transaction_time: "2026-12-08T00:00:00Z".into(),
            ignored: Vec::new(),
        };
        let file = |name: &str, list| OutputFile { resource_type: "Patient".into(), name: name.into(), count: 2, list };
        let files = [file("Patient-1.ndjson", List::Output), file("Patient-deleted-1.ndjson", List::Deleted)];
        let manifest = manifest(&request, &files, |name| format!("http://h/fhir/_jobs/1/{name}"), true);
        assert_eq!(manifest["transactionTime"], "2026-12-08T00:00:00Z");
        assert_eq!(manifest["requiresAccessToken"], true);
        assert_eq!(
            manifest["output"][0],
            json!({"type": "Patient", "url": "http://h/fhir/_jobs/1/Patient-1.ndjson", "count": 2})
        );
        assert_eq!(manifest["deleted"][0]["url"], "http://h/fhir/_jobs/1/Patient-deleted-1.ndjson");
        assert_eq!(manifest["error"], json!([]));
    }
}
