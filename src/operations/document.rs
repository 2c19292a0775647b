//! `Composition/[id]/$document` (FHIR R4 `Composition-document`): the `document` Bundle of a
//! stored Composition — the Composition first, then the resources it references (subject,
//! authors, attesters, custodian, encounter, section entries) and those they reference in
//! turn, as far as the caller may read them. `persist=true` (with POST: it changes data) also
//! stores the Bundle as a `Bundle` resource (the answer then carries its `Location`).

use async_trait::async_trait;

use super::documents::{document_bundle, local_references, with_references, Entry};
use super::inputs::parameter_path;
use super::{Inputs, Level, Operation};
use crate::model::FhirError;
use crate::rest::{Body, FhirResponse, Lookup, OperationContext};
use crate::store::ResourceVersion;

pub struct Document;

#[async_trait]
impl Operation for Document {
    async fn run(
        &self,
        context: &mut OperationContext<'_>,
        level: &Level,
        inputs: &Inputs,
    ) -> Result<FhirResponse, FhirError> {
        if inputs.text("graph").is_some() {
            return Err(FhirError::bad_request("the parameter 'graph' (a GraphDefinition) is not supported")
                .with_expression(&parameter_path("graph")));
        }
        let stored = match (context.instance().cloned(), level) {
            (Some(stored), _) => stored,
            (None, _) => composition_named(context, inputs.text("id")).await?,
        };
        let composition = Entry::of(&stored)?.resource;
        let url = context.resource_url("Composition", &stored.id);
        let mut entries = with_references(context, Vec::new(), &composition).await?;
        entries.retain(|e| !(e.resource_type == "Composition" && e.id == stored.id));
        let bundle = document_bundle(context, &url, composition, entries, None);
        if !inputs.flag("persist") {
            return Ok(FhirResponse::new(200, Body::Json(bundle)));
        }
        if context.read_only() {
            return Err(FhirError::method_not_allowed("persist=true stores the document: use POST", "POST"));
        }
        let version = context.create("Bundle", bundle).await?;
        Ok(FhirResponse {
            location: Some(format!("{}/_history/{}", context.resource_url("Bundle", &version.id), version.version)),
            version: Some(version.version),
            last_modified: Some(version.last_updated),
            ..FhirResponse::new(200, Body::Raw(version.body))
        })
    }
}

/// The Composition the type-level form names with `id` (an id, or this server's URL of one).
async fn composition_named(context: &mut OperationContext<'_>, id: Option<&str>) -> Result<ResourceVersion, FhirError> {
    let id = id.ok_or_else(|| {
        FhirError::bad_request("Composition/$document needs the parameter 'id', or use Composition/[id]/$document")
    })?;
    let named = match local_references(context.base_url(), &serde_json::json!({"reference": id})).pop() {
        Some((resource_type, named)) if resource_type == "Composition" => named,
        _ if crate::model::resource::is_valid_id(id) => id.to_string(),
        _ => return Err(FhirError::bad_request(format!("'{id}' names no Composition of this server"))),
    };
    match context.view.read("Composition", &named).await? {
        Lookup::Found(found) => Ok(found),
        Lookup::Deleted(deletion) => Err(FhirError::gone("Composition", &named, deletion.version)),
        Lookup::Unknown => Err(FhirError::not_found(format!("Composition/{named} is not known"))),
    }
}
