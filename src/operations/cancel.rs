//! `Appointment/[id]/$cancel` (Hearth's own): cancels an Appointment and frees its Slots, with
//! an optional `reason`. It is the same change as an update to `status=cancelled`, and the
//! write transaction treats both alike (freed Slots, the patients' cut-off).

use async_trait::async_trait;

use super::inputs::unprocessable;
use super::{Inputs, Level, Operation};
use crate::model::FhirError;
use crate::portal::scheduling::{cancelled, is_cancellable, status_of};
use crate::rest::{version_response, FhirResponse, OperationContext};

/// The reason recorded when none is given.
const NO_REASON: &str = "Cancelled";

pub struct Cancel;

#[async_trait]
impl Operation for Cancel {
    async fn run(
        &self,
        context: &mut OperationContext<'_>,
        _level: &Level,
        inputs: &Inputs,
    ) -> Result<FhirResponse, FhirError> {
        let (instance, appointment) = context.required_instance()?;
        let status = status_of(&appointment);
        if !is_cancellable(status) {
            return Err(unprocessable(
                format!("Appointment/{} is {status}: it can no longer be cancelled", instance.id),
                "Appointment.status",
            ));
        }
        let reason = inputs.text("reason").unwrap_or(NO_REASON).to_string();
        let mut tx = context.begin().await?;
        let written = match tx.read("Appointment", &instance.id).await {
            Ok(Some(current)) if current.version == instance.version => {
                tx.update(&current, cancelled(appointment, &reason)).await
            }
            Ok(_) => Err(FhirError::new(
                crate::model::ErrorKind::WriteConflict,
                crate::model::IssueCode::Conflict,
                "the appointment changed while it was being cancelled",
            )),
            Err(error) => Err(error),
        };
        let version = tx.finish(written).await?;
        Ok(version_response(200, &version))
    }
}
