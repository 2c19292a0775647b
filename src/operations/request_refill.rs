//! `MedicationRequest/[id]/$request-refill` (Hearth's own): a patient asks for a refill of one
//! of their prescriptions. It writes the Task a client could write itself
//! ([`request_for`]: `requested`, for and by the patient, owned by the prescriber, focus the
//! prescription), so the same rules apply to both (`rest/refills.rs`): 422 for a stopped or
//! completed prescription, or while a request for it is open.

use async_trait::async_trait;

use super::{Inputs, Level, Operation};
use crate::model::resource::{format_instant, now};
use crate::model::FhirError;
use crate::portal::refills::request_for;
use crate::rest::{FhirResponse, OperationContext};

pub struct RequestRefill;

#[async_trait]
impl Operation for RequestRefill {
    async fn run(
        &self,
        context: &mut OperationContext<'_>,
        _level: &Level,
        inputs: &Inputs,
    ) -> Result<FhirResponse, FhirError> {
        let (prescription, resource) = context.required_instance()?;
        let task = request_for(&prescription.id, &resource, inputs.text("note"), &format_instant(now()));
        let mut tx = context.begin().await?;
        let created = tx.create("Task", task).await;
        let version = tx.finish(created).await?;
        Ok(context.created(&version))
    }
}
