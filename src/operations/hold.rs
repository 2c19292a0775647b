//! `Appointment/$hold` (IHE ITI-116): keeps the Slots of a proposed Appointment for the patient
//! while they complete the booking. The Appointment is stored `pending`; the write transaction
//! makes its Slots `busy-tentative` and queues, in the same transaction, the job that cancels it
//! when the hold runs out (`--hold-seconds`) unless it was booked by then: any node's worker
//! runs it, and a restart does not lose it.

use async_trait::async_trait;

use super::appointments::{check_slots, given, searchset, with_status};
use super::{Inputs, Level, Operation};
use crate::model::resource::{format_instant, now};
use crate::model::{FhirError, Issue};
use crate::rest::{FhirResponse, OperationContext};

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
            Ok::<_, FhirError>((version, now() + hold_for))
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
