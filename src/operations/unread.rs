//! `Communication/$unread` (Hearth's own): how many messages of each of a patient's threads
//! the patient has not read (addressed to them, without `received`), for a portal's badges.
//! Read through the caller's view: a patient counts their own threads only.

use async_trait::async_trait;
use serde_json::{json, Value};

use super::inputs::bad_parameter;
use super::{Inputs, Level, Operation};
use crate::model::FhirError;
use crate::rest::{Body, FhirResponse, OperationContext};
use crate::search::index::parse_local_reference;

/// Threads read per page.
const PAGE: usize = 100;

pub struct Unread;

#[async_trait]
impl Operation for Unread {
    async fn run(
        &self,
        context: &mut OperationContext<'_>,
        _level: &Level,
        inputs: &Inputs,
    ) -> Result<FhirResponse, FhirError> {
        let patient = patient(context, inputs)?;
        let threads_of_patient = [
            ("part-of:missing".to_string(), "true".to_string()),
            ("subject".to_string(), patient.clone()),
            ("_count".to_string(), PAGE.to_string()),
        ];
        let mut threads = context.search_query("Communication", &threads_of_patient)?;
        let mut parameters = Vec::new();
        let mut total = 0;
        loop {
            let page = context.view.search(&mut threads).await?;
            for thread in &page.resources {
                let unread_in_thread = [
                    ("part-of".to_string(), format!("Communication/{}", thread.id)),
                    ("recipient".to_string(), patient.clone()),
                    ("received:missing".to_string(), "true".to_string()),
                ];
                let mut unread = context.search_query("Communication", &unread_in_thread)?;
                (unread.count, unread.with_total) = (0, true);
                let count = context.view.search(&mut unread).await?.total.unwrap_or(0);
                total += count;
                let topic = serde_json::from_slice::<Value>(&thread.body)
                    .ok()
                    .and_then(|t| t["topic"]["text"].as_str().map(str::to_string));
                let mut part = vec![
                    json!({"name": "thread", "valueReference": {"reference": format!("Communication/{}", thread.id)}}),
                ];
                part.extend(topic.map(|topic| json!({"name": "topic", "valueString": topic})));
                part.push(json!({"name": "unread", "valueInteger": count}));
                parameters.push(json!({"name": "thread", "part": part}));
            }
            match page.next {
                Some(next) => threads.cursor = Some(next),
                None => break,
            }
        }
        parameters.push(json!({"name": "total", "valueInteger": total}));
        Ok(FhirResponse::new(200, Body::Json(json!({"resourceType": "Parameters", "parameter": parameters}))))
    }
}

/// `Patient/[id]` whose threads are counted: the input, or the token's one patient.
fn patient(context: &OperationContext<'_>, inputs: &Inputs) -> Result<String, FhirError> {
    let bad = |message: &str| bad_parameter("patient", message);
    if let Some(reference) = inputs.text("patient") {
        return match parse_local_reference(reference, context.base_url()) {
            Some(("Patient", id)) => Ok(format!("Patient/{id}")),
            _ => Err(bad("not a reference to a Patient here")),
        };
    }
    let crate::auth::Access::Token(grant) = context.access() else { return Err(bad("name the patient")) };
    let mut patients: Vec<&String> = grant.patients.iter().chain(grant.user_patients.iter().flatten()).collect();
    patients.dedup();
    match patients.as_slice() {
        [only] => Ok(format!("Patient/{only}")),
        _ => Err(bad("name the patient")),
    }
}
