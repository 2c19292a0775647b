//! `Subscription/$get-ws-binding-token` and `Subscription/[id]/$get-ws-binding-token`
//! (Subscriptions Backport IG): a token that binds a websocket connection to websocket
//! Subscriptions the caller reads (see `crate::rest::websocket`).

use async_trait::async_trait;
use serde_json::{json, Value};

use super::{Inputs, Level, Operation};
use crate::model::{FhirError, Issue, IssueCode};
use crate::rest::{Body, FhirResponse, OperationContext};

/// Subscriptions one token binds at most.
const MOST: usize = 100;

pub struct WsBindingToken;

#[async_trait]
impl Operation for WsBindingToken {
    async fn run(
        &self,
        context: &mut OperationContext<'_>,
        level: &Level,
        inputs: &Inputs,
    ) -> Result<FhirResponse, FhirError> {
        let subscriptions = match level {
            Level::Instance(..) => vec![context.required_instance()?],
            _ => {
                let ids: Vec<&str> = inputs.texts("id").collect();
                let mut parameters = vec![("_count".to_string(), MOST.to_string())];
                match ids.is_empty() {
                    true => parameters.push(("type".to_string(), "websocket".to_string())),
                    false => parameters.push(("_id".to_string(), ids.join(","))),
                }
                let mut query = context.search_query("Subscription", &parameters)?;
                let found = context.view.search(&mut query).await?.resources;
                // An id the caller cannot read is as unknown as one that does not exist.
                if let Some(missing) = ids.iter().find(|id| !found.iter().any(|f| f.id == **id)) {
                    return Err(FhirError::not_found(format!("Subscription/{missing} is not known")));
                }
                let mut read = Vec::with_capacity(found.len());
                for version in found {
                    let resource: Value = serde_json::from_slice(&version.body).map_err(|_| FhirError::internal())?;
                    read.push((version, resource));
                }
                read
            }
        };
        if subscriptions.is_empty() {
            return Err(FhirError::unprocessable(vec![Issue::error(
                IssueCode::BusinessRule,
                "there is no websocket Subscription to bind",
            )]));
        }
        let subscriptions: Vec<(String, Value)> =
            subscriptions.into_iter().map(|(version, resource)| (version.id, resource)).collect();
        let binding = context.ws_binding_token(&subscriptions).await?;
        let mut parameter = vec![
            json!({"name": "token", "valueString": binding.token}),
            json!({"name": "expiration", "valueDateTime": crate::model::resource::format_instant(binding.expires)}),
        ];
        for (id, _) in &subscriptions {
            parameter.push(json!({"name": "subscription", "valueString": format!("Subscription/{id}")}));
        }
        parameter.push(json!({"name": "websocket-url", "valueUrl": binding.websocket_url}));
        Ok(FhirResponse::new(200, Body::Json(json!({"resourceType": "Parameters", "parameter": parameter}))))
    }
}
