//! Background jobs: the worker that claims queued jobs from the store and runs them, and the
//! status endpoint of the FHIR asynchronous request pattern (`GET`/`DELETE /fhir/_jobs/{id}`).
//!
//! The queue lives in the database: any node may claim a job, and a job whose worker died is
//! taken over when its lease runs out, carrying on from the progress it last recorded.

use std::time::Duration;

use time::OffsetDateTime;

use super::{store_error, Body, FhirResponse, FhirService};
use crate::auth::Access;
use crate::model::outcome::operation_outcome;
use crate::model::resource::new_id;
use crate::model::{ErrorKind, FhirError, Issue, IssueCode};
use crate::store::{Job, JobKinds, JobStatus};

/// How long a claimed job stays with its worker without a recorded step.
pub(super) const LEASE: Duration = Duration::from_secs(60);

/// How often an idle worker looks for jobs queued by other nodes (this node's wake it at once).
const POLL: Duration = Duration::from_secs(2);

/// How a job run ended.
pub(super) enum JobEnd {
    /// Finished, with the message its status shows.
    Finished(String),
    /// Cancelled, or taken over by another worker: nothing more to record.
    Abandoned,
}

/// The end of a lease that starts now.
pub(super) fn lease_until() -> OffsetDateTime {
    OffsetDateTime::now_utc() + LEASE
}

impl FhirService {
    /// This node's background work until the process ends: the job worker, a second worker for
    /// hold expiries only (a long job such as a reindex must not keep held Slots from freeing
    /// themselves on time), the export workers (an export must not delay e-mail), the subscription delivery workers, the reminder scan, the audit spool and its sealing, and the watch for definitions
    /// (search parameters, profiles, subscriptions) written by other nodes.
    pub async fn run_background(self) {
        let recorder = self.recorder.clone();
        tokio::join!(
            self.clone().run_jobs(JobKinds::Except(&[crate::export::JOB_KIND])),
            self.clone().run_jobs(JobKinds::Only(crate::portal::scheduling::HOLD_EXPIRY_JOB)),
            self.clone().run_export_workers(),
            self.clone().run_delivery_workers(),
            self.clone().run_reminders(),
            self.clone().run_audit_chain(),
            async {
                if let Err(error) = recorder.start().await {
                    tracing::error!(%error, "cannot start the audit spool");
                }
            },
            self.watch_stored_definitions()
        );
    }

    /// Claims and runs queued jobs of `kinds`, one at a time, until the process ends.
    async fn run_jobs(self, kinds: JobKinds<'static>) {
        let owner = new_id();
        loop {
            match self.store.claim_job(&owner, lease_until(), kinds).await {
                Ok(Some(job)) => self.run_job(&owner, job).await,
                Ok(None) => {
                    let _ = tokio::time::timeout(POLL, self.jobs_queued.notified()).await;
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot claim a job");
                    tokio::time::sleep(POLL).await;
                }
            }
        }
    }

    async fn run_job(&self, owner: &str, job: Job) {
        tracing::info!(job = job.id, kind = %job.kind, "job started");
        let end = match job.kind.as_str() {
            crate::operations::reindex::JOB_KIND => self.reindex_job(owner, &job).await,
            crate::portal::scheduling::HOLD_EXPIRY_JOB => self.hold_expiry_job(&job).await,
            crate::mail::MAIL_JOB => self.mail_job(&job).await,
            crate::export::EXPIRY_JOB => self.export_expiry_job(&job).await,
            other => Err(format!("unknown job kind '{other}'")),
        };
        let (status, message) = match end {
            Ok(JobEnd::Finished(message)) => (JobStatus::Done, message),
            Ok(JobEnd::Abandoned) => return,
            Err(message) => (JobStatus::Failed, message),
        };
        tracing::info!(job = job.id, status = status.as_str(), %message, "job ended");
        if let Err(error) = self.store.finish_job(job.id, owner, status, &message).await {
            tracing::warn!(job = job.id, %error, "cannot record the end of a job");
        }
    }

    /// Queues a job and answers `202 Accepted` with the job's status URL (`Content-Location`).
    pub(super) async fn queue_job(&self, kind: &str, parameters: &str, what: &str) -> Result<FhirResponse, FhirError> {
        let job = self.store.enqueue_job(kind, parameters).await.map_err(store_error)?;
        self.jobs_queued.notify_one();
        let url = self.job_url(job.id);
        let message = format!("{what} queued as job {}; its status is at {url}", job.id);
        let mut response = FhirResponse::new(202, Body::Json(operation_outcome(&[Issue::information(message)])));
        response.headers.push(("content-location", url));
        Ok(response)
    }

    /// `GET _jobs/{id}` of a job that is no client's own (a reindex): 202 with `X-Progress`
    /// while the job runs, 200 with its outcome when done. Such jobs need full system access.
    pub(super) async fn job_status(&self, access: &Access, id: i64) -> Result<FhirResponse, FhirError> {
        need_administrator(access)?;
        let job = self.store.job(id).await.map_err(store_error)?;
        let job = job.ok_or_else(|| FhirError::not_found(format!("there is no job {id}")))?;
        let information = |message: String| Body::Json(operation_outcome(&[Issue::information(message)]));
        match job.status {
            JobStatus::Queued | JobStatus::Running => {
                let progress = format!("{}: {} done", job.status.as_str(), job.processed);
                let mut response = FhirResponse::new(202, information(format!("job {id} is {progress}")));
                response.headers.push(("x-progress", progress));
                response.headers.push(("retry-after", "1".to_string()));
                Ok(response)
            }
            JobStatus::Done => Ok(FhirResponse::new(200, information(job.message.unwrap_or_default()))),
            JobStatus::Failed => Err(FhirError::new(
                ErrorKind::Internal,
                IssueCode::Exception,
                format!("job {id} failed: {}", job.message.unwrap_or_default()),
            )),
            JobStatus::Cancelled => Err(FhirError::not_found(format!("job {id} was cancelled"))),
        }
    }

    /// `DELETE _jobs/{id}` of a job that is no client's own: cancels it if it has not finished.
    pub(super) async fn cancel_job(&self, access: &Access, id: i64) -> Result<FhirResponse, FhirError> {
        need_administrator(access)?;
        if self.store.cancel_job(id).await.map_err(store_error)? {
            return Ok(FhirResponse::new(202, Body::None));
        }
        match self.store.job(id).await.map_err(store_error)? {
            Some(job) => Err(FhirError::new(
                ErrorKind::Conflict,
                IssueCode::Conflict,
                format!("job {id} has already ended ({})", job.status.as_str()),
            )),
            None => Err(FhirError::not_found(format!("there is no job {id}"))),
        }
    }

    pub(super) fn job_url(&self, id: i64) -> String {
        format!("{}/_jobs/{id}", self.config.base_url)
    }
}

/// 403 unless the caller has full system access (what jobs that are no client's own need).
fn need_administrator(access: &Access) -> Result<(), FhirError> {
    if access.is_administrator() {
        return Ok(());
    }
    Err(FhirError::forbidden("jobs need full system access (system/*.cruds)"))
}
