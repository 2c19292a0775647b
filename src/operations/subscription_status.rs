//! `Subscription/$status` and `Subscription/[id]/$status` (Subscriptions Backport IG): each
//! Subscription's SubscriptionStatus (type `query-status`) in a searchset Bundle. The
//! Subscriptions are read as the caller, so a patient sees only its own.

use async_trait::async_trait;
use serde_json::{json, Value};

use super::{Inputs, Level, Operation};
use crate::model::FhirError;
use crate::rest::{Body, FhirResponse, OperationContext};
use crate::store::ResourceVersion;
use crate::subscriptions::notification::{status_parameters, Kind, Status};
use crate::subscriptions::Payload;

/// Subscriptions listed at type level at most.
const MOST: usize = 1000;

pub struct SubscriptionStatus;

#[async_trait]
impl Operation for SubscriptionStatus {
    async fn run(
        &self,
        context: &mut OperationContext<'_>,
        level: &Level,
        inputs: &Inputs,
    ) -> Result<FhirResponse, FhirError> {
        let subscriptions = match level {
            Level::Instance(..) => vec![context.required_instance()?.0],
            _ => {
                let mut parameters = vec![("_count".to_string(), MOST.to_string())];
                let ids: Vec<&str> = inputs.texts("id").collect();
                if !ids.is_empty() {
                    parameters.push(("_id".to_string(), ids.join(",")));
                }
                let statuses: Vec<&str> = inputs.texts("status").collect();
                if !statuses.is_empty() {
                    parameters.push(("status".to_string(), statuses.join(",")));
                }
                let mut query = context.search_query("Subscription", &parameters)?;
                context.view.search(&mut query).await?.resources
            }
        };
        let mut entries = Vec::new();
        for subscription in &subscriptions {
            entries.push(json!({
                "fullUrl": format!("urn:uuid:{}", uuid::Uuid::now_v7()),
                "resource": status_of(context, subscription).await?,
                "search": {"mode": "match"},
            }));
        }
        let bundle = json!({
            "resourceType": "Bundle",
            "id": crate::model::resource::new_id(),
            "type": "searchset",
            "total": entries.len(),
            "entry": entries,
        });
        Ok(FhirResponse::new(200, Body::Json(bundle)))
    }
}

/// The SubscriptionStatus of one Subscription.
async fn status_of(context: &mut OperationContext<'_>, subscription: &ResourceVersion) -> Result<Value, FhirError> {
    let resource: Value = serde_json::from_slice(&subscription.body).map_err(|_| FhirError::internal())?;
    let delivery = context.subscription_delivery(&subscription.id).await?;
    let status = Status::of_stored(
        context.base_url(),
        (&subscription.id, &resource),
        Kind::QueryStatus,
        delivery.as_ref().map_or(0, |d| d.events),
        delivery.as_ref().filter(|d| d.status == "error").and_then(|d| d.last_error.as_deref()),
    );
    Ok(status_parameters(&status, &[], Payload::Empty))
}
