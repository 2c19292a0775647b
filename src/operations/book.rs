//! `Appointment/$book` (IHE ITI-117): books a proposed Appointment (from `$find`) or a held one
//! (from `$hold`): it becomes `booked` and its Slots `busy`. With `cancelled-appt-id`
//! (Argonaut Scheduling) it reschedules: the new booking and the cancellation of the old
//! Appointment are one transaction, so the patient never ends with both or neither.

use async_trait::async_trait;
use serde_json::Value;

use super::appointments::{check_slots, given, searchset, stored_appointment, with_status};
use super::inputs::unprocessable;
use super::{Inputs, Level, Operation};
use crate::model::FhirError;
use crate::portal::scheduling::{cancelled, status_of, HOLDING_STATUSES};
use crate::rest::{FhirResponse, OperationContext, OperationTx};
use crate::store::ResourceVersion;

/// The cancellation reason of an appointment replaced by a rescheduled one.
const RESCHEDULED: &str = "Rescheduled";

pub struct Book;

#[async_trait]
impl Operation for Book {
    async fn run(
        &self,
        context: &mut OperationContext<'_>,
        _level: &Level,
        inputs: &Inputs,
    ) -> Result<FhirResponse, FhirError> {
        let mut tx = context.begin().await?;
        let booked = book(&mut tx, inputs).await;
        let versions = tx.finish(booked).await?;
        Ok(searchset(context, &versions, Vec::new()))
    }
}

/// Books the given Appointment and cancels the one it replaces; both versions written.
async fn book(tx: &mut OperationTx<'_>, inputs: &Inputs) -> Result<Vec<ResourceVersion>, FhirError> {
    let proposal = given(tx, inputs, &["proposed", "pending"]).await?;
    let held = proposal.stored.as_ref().filter(|_| status_of(&proposal.appointment) == "pending");
    check_slots(tx, &proposal.appointment, held.map(|v| v.id.as_str())).await?;
    let appointment = with_status(proposal.appointment, "booked");
    let booked = match &proposal.stored {
        Some(stored) => tx.update(stored, appointment).await?,
        None => tx.create("Appointment", appointment).await?,
    };
    let mut written = vec![booked];
    if let Some(reference) = inputs.text("cancelled-appt-id") {
        let old = stored_appointment(tx, reference, "cancelled-appt-id").await?;
        if old.id == written[0].id {
            return Err(unprocessable("an appointment cannot replace itself", "Parameters.parameter"));
        }
        let old_appointment: Value = serde_json::from_slice(&old.body).map_err(|_| FhirError::internal())?;
        let status = status_of(&old_appointment);
        if !HOLDING_STATUSES.contains(&status) || status == "fulfilled" {
            return Err(unprocessable(
                format!("Appointment/{} is {status}: only a pending or booked appointment can be rescheduled", old.id),
                "Parameters.parameter.where(name = 'cancelled-appt-id')",
            ));
        }
        written.push(tx.update(&old, cancelled(old_appointment, RESCHEDULED)).await?);
    }
    Ok(written)
}
