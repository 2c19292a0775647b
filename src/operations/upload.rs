//! `DocumentReference/$upload` (Hearth's own): a file and the DocumentReference that describes
//! it, stored in one transaction as the caller. The file is a Binary input (its `contentType`
//! and base64 `data`), checked as every upload is ([`UploadRules::check`]); the Binary's
//! security context is the patient, and the DocumentReference is `current`/`preliminary` with
//! an attachment giving the Binary's URL, size and SHA-1 (R4 `Attachment.hash`), so that what
//! was stored can be told from what was sent.

use async_trait::async_trait;
use base64::Engine;
use serde_json::{json, Value};
use sha1::{Digest, Sha1};

use super::inputs::bad_parameter;
use super::{Inputs, Level, Operation};
use crate::model::resource::{format_instant, now};
use crate::model::FhirError;
use crate::rest::{FhirResponse, OperationContext};
use crate::search::index::parse_local_reference;

pub struct Upload;

#[async_trait]
impl Operation for Upload {
    async fn run(
        &self,
        context: &mut OperationContext<'_>,
        _level: &Level,
        inputs: &Inputs,
    ) -> Result<FhirResponse, FhirError> {
        let file = inputs.resource("file").ok_or_else(FhirError::internal)?;
        let content_type = file.get("contentType").and_then(Value::as_str).map(str::to_ascii_lowercase);
        let content_type = content_type.ok_or_else(|| bad_parameter("file", "the Binary has no contentType"))?;
        let data = file.get("data").and_then(Value::as_str).unwrap_or("");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data)
            .map_err(|_| bad_parameter("file", "the Binary's data is not base64"))?;
        if bytes.is_empty() {
            return Err(bad_parameter("file", "the file is empty"));
        }
        context.uploads().check(&content_type, &bytes)?;
        let patient = patient(context, inputs)?;
        let binary = json!({"resourceType": "Binary", "contentType": content_type, "data": data,
            "securityContext": {"reference": patient}});
        let document = |binary_id: &str| document(inputs, &patient, binary_id, &content_type, &bytes);
        let mut tx = context.begin().await?;
        let stored = async {
            let binary = tx.create("Binary", binary).await?;
            tx.create("DocumentReference", document(&binary.id)?).await
        }
        .await;
        let version = tx.finish(stored).await?;
        Ok(context.created(&version))
    }
}

/// `Patient/[id]` of the document: the input, or a patient-launched token's patient.
fn patient(context: &OperationContext<'_>, inputs: &Inputs) -> Result<String, FhirError> {
    if let Some(reference) = inputs.text("patient") {
        return match parse_local_reference(reference, context.base_url()) {
            Some(("Patient", id)) => Ok(format!("Patient/{id}")),
            _ => Err(bad_parameter("patient", "not a reference to a Patient here")),
        };
    }
    match context.access() {
        crate::auth::Access::Token(grant) if grant.patients.len() == 1 => Ok(format!("Patient/{}", grant.patients[0])),
        _ => Err(bad_parameter("patient", "name the patient the document is about")),
    }
}

/// The DocumentReference of an uploaded file.
fn document(
    inputs: &Inputs,
    patient: &str,
    binary_id: &str,
    content_type: &str,
    bytes: &[u8],
) -> Result<Value, FhirError> {
    let hash = base64::engine::general_purpose::STANDARD.encode(Sha1::digest(bytes));
    let created = format_instant(now());
    let mut attachment = json!({"contentType": content_type, "url": format!("Binary/{binary_id}"),
        "size": bytes.len(), "hash": hash, "creation": created});
    let mut document = json!({"resourceType": "DocumentReference", "status": "current", "docStatus": "preliminary",
        "subject": {"reference": patient}, "date": created});
    if let Some(title) = inputs.text("title") {
        attachment["title"] = json!(title);
        document["description"] = json!(title);
    }
    document["content"] = json!([{"attachment": attachment}]);
    for (name, element) in [("type", "type"), ("category", "category")] {
        if let Some(token) = inputs.text(name) {
            let coding = match token.split_once('|') {
                Some((system, code)) if !system.is_empty() && !code.is_empty() => {
                    json!({"system": system, "code": code})
                }
                None if !token.is_empty() => json!({"code": token}),
                _ => return Err(bad_parameter(name, "a token is system|code")),
            };
            let concept = json!({"coding": [coding]});
            document[element] = if element == "category" { json!([concept]) } else { concept };
        }
    }
    Ok(document)
}
