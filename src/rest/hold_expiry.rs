//! The job that ends a hold ($hold): when it runs out, an Appointment still `pending` is
//! cancelled, and the write transaction frees its Slots. Queued by $hold in the transaction
//! that stored the hold, with the hold's end as the time before which no worker claims it.

use serde_json::Value;

use super::jobs::JobEnd;
use super::FhirService;
use crate::auth::Access;
use crate::model::FhirError;
use crate::portal::scheduling::{cancelled, status_of, HoldExpiry, HOLD_EXPIRED};
use crate::store::{Job, WriteMethod};

impl FhirService {
    pub(super) async fn hold_expiry_job(&self, job: &Job) -> Result<JobEnd, String> {
        let expiry: HoldExpiry =
            serde_json::from_str(&job.parameters).map_err(|error| format!("unreadable parameters: {error}"))?;
        match super::retrying(|| self.expire_hold(&expiry)).await {
            Ok(message) => Ok(JobEnd::Finished(message)),
            Err(error) => Err(error.to_string()),
        }
    }

    /// Cancels the held Appointment if it is still pending; says what it did.
    async fn expire_hold(&self, expiry: &HoldExpiry) -> Result<String, FhirError> {
        let id = &expiry.appointment;
        let mut tx = self.begin(&Access::Open).await?;
        let current = tx.current("Appointment", id).await.map_err(super::store_error)?.filter(|v| !v.deleted);
        let Some(current) = current else {
            tx.rollback().await;
            return Ok(format!("Appointment/{id} no longer exists"));
        };
        let appointment: Value = serde_json::from_slice(&current.body).map_err(|_| FhirError::internal())?;
        if status_of(&appointment) != "pending" {
            tx.rollback().await;
            return Ok(format!("Appointment/{id} is no longer held (it was booked or cancelled)"));
        }
        let written = self
            .store_resource(
                tx.as_mut(),
                "Appointment",
                id,
                current.version + 1,
                cancelled(appointment, HOLD_EXPIRED),
                WriteMethod::Update,
            )
            .await;
        match written {
            Ok(_) => {
                tx.commit().await.map_err(super::store_error)?;
                Ok(format!("the hold of Appointment/{id} expired: it is cancelled and its slots are free"))
            }
            Err(error) => {
                tx.rollback().await;
                Err(error)
            }
        }
    }
}
