//! Background jobs as the store keeps them: a queue row per job that any node may claim.

use time::OffsetDateTime;

/// Where a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStatus {
    /// Waiting for a worker.
    Queued,
    /// Claimed by a worker whose lease has not run out.
    Running,
    Done,
    Failed,
    Cancelled,
}

impl JobStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Done => "done",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }

    pub(super) fn parse(text: &str) -> Self {
        match text {
            "queued" => JobStatus::Queued,
            "running" => JobStatus::Running,
            "done" => JobStatus::Done,
            "cancelled" => JobStatus::Cancelled,
            _ => JobStatus::Failed,
        }
    }

    /// Whether the job will not change any more.
    pub fn is_finished(self) -> bool {
        matches!(self, JobStatus::Done | JobStatus::Failed | JobStatus::Cancelled)
    }
}

/// One background job.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub id: i64,
    /// What to do (`reindex`).
    pub kind: String,
    /// The job's input, JSON owned by its kind.
    pub parameters: String,
    pub status: JobStatus,
    /// Where a resumed job carries on, JSON owned by its kind.
    pub progress: Option<String>,
    /// How many items are done.
    pub processed: i64,
    /// The outcome of a finished job, or why it failed.
    pub message: Option<String>,
    pub created: OffsetDateTime,
    pub updated: OffsetDateTime,
    /// The client that queued it, for jobs that are a client's own (exports).
    pub client: Option<String>,
}

/// Which jobs a worker takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKinds<'a> {
    Only(&'a str),
    /// Every kind but these (which have workers of their own).
    Except(&'a [&'a str]),
}

/// A running job's step, recorded in the transaction that did the work.
#[derive(Debug, Clone, PartialEq)]
pub struct JobStep<'a> {
    pub id: i64,
    /// The worker that holds the job; the step is refused when another one took it over.
    pub owner: &'a str,
    pub progress: &'a str,
    pub processed: i64,
    /// The lease is extended to this instant.
    pub lease_until: OffsetDateTime,
}
