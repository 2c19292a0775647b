//! `Subscription/[id]/$events` (Subscriptions Backport IG): a Subscription's events replayed by
//! number, as a notification Bundle of type `query-event`, for a client that found a gap. Each
//! event's resource is shown as the caller may read it now (else the event is listed without).

use async_trait::async_trait;

use super::inputs::bad_parameter;
use super::{Inputs, Level, Operation};
use crate::model::FhirError;
use crate::rest::{Body, FhirResponse, OperationContext};
use crate::subscriptions::notification::{bundle, Kind, Status};
use crate::subscriptions::{Payload, SubscriptionRequest};

/// Events returned by one call at most.
const MOST: usize = 100;

pub struct SubscriptionEvents;

#[async_trait]
impl Operation for SubscriptionEvents {
    async fn run(
        &self,
        context: &mut OperationContext<'_>,
        _level: &Level,
        inputs: &Inputs,
    ) -> Result<FhirResponse, FhirError> {
        let (subscription, resource) = context.required_instance()?;
        let number = |name: &str| -> Result<Option<i64>, FhirError> {
            inputs
                .text(name)
                .map(|text| text.parse::<i64>().ok().filter(|n| *n >= 1))
                .map(|parsed| parsed.ok_or_else(|| bad_parameter(name, "an event number is a whole number from 1")))
                .transpose()
        };
        let delivery = context.subscription_delivery(&subscription.id).await?;
        let newest = delivery.as_ref().map_or(0, |d| d.events);
        let first = number("eventsSinceNumber")?.unwrap_or(1);
        let last = number("eventsUntilNumber")?.unwrap_or(newest).min(newest);
        let payload = match inputs.text("content") {
            None => SubscriptionRequest::payload_of(&resource),
            Some("empty") => Payload::Empty,
            Some("id-only") => Payload::IdOnly,
            Some("full-resource") => Payload::FullResource,
            Some(other) => {
                return Err(bad_parameter("content", format!("'{other}' is not empty, id-only or full-resource")))
            }
        };
        let events = match first <= last {
            true => context.subscription_events(&subscription.id, (first, last), MOST, payload).await?,
            false => Vec::new(),
        };
        let status =
            Status::of_stored(context.base_url(), (&subscription.id, &resource), Kind::QueryEvent, newest, None);
        Ok(FhirResponse::new(200, Body::Json(bundle(&status, &events, payload))))
    }
}
