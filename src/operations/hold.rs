//! `Appointment/$hold` (IHE ITI-116): keeps the Slots of a proposed Appointment for the patient
//! while they complete the booking. The Appointment is stored `pending`, its Slots become
//! `busy-tentative` (the write transaction sees to that), and a job queued in the same
//! transaction cancels it when the hold runs out (`--hold-seconds`) unless it was booked by
//! then: any node's worker runs it, and a restart does not lose it.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::appointments::{check_slots, given, searchset, with_status};
use super::{Inputs, Level, Operation};
use crate::model::resource::{format_instant, now};
use crate::model::{FhirError, Issue};
use crate::rest::{FhirResponse, OperationContext};

/// The job kind that ends a hold.
pub const EXPIRY_JOB: &str = "appointment-hold-expiry";

/// Which hold an expiry job ends: the Appointment, if it is still `pending` by then (a
/// booking or a cancellation ended the hold already; editing it does not extend it).
#[derive(Serialize, Deserialize)]
pub struct Expiry {
    pub appointment: String,
}

/// What an expired hold's Appointment says about why it was cancelled.
pub const EXPIRED: &str = "The hold expired before the appointment was booked";

pub struct Hold;

#[async_trait]
impl Operation for Hold {
    async fn run(
        &self,
        context: &mut OperationContext<'_>,
        _level: &Level,
        inputs: &Inputs,
    ) -> Result<FhirResponse, FhirError> {
        let hold_for = context.scheduling().hold;
        let mut tx = context.begin().await?;
        let held = async {
            let proposal = given(&mut tx, inputs, &["proposed"]).await?;
            check_slots(&mut tx, &proposal.appointment, None).await?;
            let appointment = with_status(proposal.appointment, "pending");
            let version = match &proposal.stored {
                Some(stored) => tx.update(stored, appointment).await?,
                None => tx.create("Appointment", appointment).await?,
            };
            let expiry = Expiry { appointment: version.id.clone() };
            let parameters = serde_json::to_string(&expiry).map_err(|_| FhirError::internal())?;
            let until = now() + hold_for;
            tx.enqueue_job(EXPIRY_JOB, &parameters, until).await?;
            Ok::<_, FhirError>((version, until))
        }
        .await;
        let (version, until) = tx.finish(held).await?;
        let note = Issue::information(format!(
            "Appointment/{} is held until {}: book it with $book before then",
            version.id,
            format_instant(until)
        ));
        Ok(searchset(context, &[version], vec![note]))
    }
}

/// Whether an Appointment a hold stored is still that hold.
pub fn still_held(appointment: &Value) -> bool {
    crate::portal::scheduling::status_of(appointment) == "pending"
}
