//! Queued e-mail (see [`crate::mail`]): queued by the request that asks for it, sent by the job
//! worker of any node, tried again with growing delays when the SMTP server does not take it.

use super::jobs::JobEnd;
use super::{store_error, FhirService};
use crate::auth::password_reset::{account_to_email, reset_link, reset_token};
use crate::auth::registration::{invite, registration_link};
use crate::mail::{invitation_text, password_reset_text, retry_delay, Purpose, Queued, MAIL_JOB, MAX_ATTEMPTS};
use crate::model::FhirError;
use crate::store::Job;

impl FhirService {
    /// Queues `queued` for the job worker (of this node at once, or of any node).
    pub(crate) async fn queue_mail(&self, queued: &Queued) -> Result<(), FhirError> {
        crate::mail::queue(self.store.as_ref(), queued).await.map_err(store_error)?;
        self.jobs_queued.notify_one();
        Ok(())
    }

    /// Renders and sends one queued e-mail; when the server does not take it, queues the next
    /// try (the job ends, so that no worker holds a lease while it waits).
    pub(super) async fn mail_job(&self, job: &Job) -> Result<JobEnd, String> {
        let queued: Queued =
            serde_json::from_str(&job.parameters).map_err(|error| format!("unreadable parameters: {error}"))?;
        let server = self.config.server_url();
        let (to, (subject, text)) = match &queued.purpose {
            Purpose::Invitation { fhir_user, to } => {
                let ttl = self.config.invite_ttl;
                let token = invite(self.store.as_ref(), fhir_user, ttl).await.map_err(|error| error.to_string())?;
                (to.clone(), invitation_text(&registration_link(server, &token), ttl))
            }
            Purpose::PasswordReset { account } => {
                let found = account_to_email(self.store.as_ref(), account).await.map_err(|error| error.to_string())?;
                let Some((username, to)) = found else {
                    return Ok(JobEnd::Finished("no account with an e-mail address matches: nothing sent".into()));
                };
                let token = reset_token(self.store.as_ref(), &username).await.map_err(|error| error.to_string())?;
                (to, password_reset_text(&reset_link(server, &token)))
            }
        };
        let error = match self.config.mailer.send(&to, &subject, text).await {
            Ok(()) => return Ok(JobEnd::Finished(format!("e-mail sent (try {})", queued.attempt))),
            Err(error) => error,
        };
        if queued.attempt >= MAX_ATTEMPTS {
            return Err(format!("not sent after {MAX_ATTEMPTS} tries: {error}"));
        }
        let next = Queued { attempt: queued.attempt + 1, ..queued };
        let parameters = serde_json::to_string(&next).map_err(|error| error.to_string())?;
        let not_before = time::OffsetDateTime::now_utc() + retry_delay(next.attempt);
        let mut tx = self.store.begin().await.map_err(|error| error.to_string())?;
        let id = tx.enqueue_job(MAIL_JOB, &parameters, not_before).await.map_err(|error| error.to_string())?;
        tx.commit().await.map_err(|error| error.to_string())?;
        Ok(JobEnd::Finished(format!("not sent ({error}); try {} queued as job {id}", next.attempt)))
    }
}
