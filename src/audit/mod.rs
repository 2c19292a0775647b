//! The audit log (issue 21, ADR 19): every interaction, operation and bundle entry, and the
//! authorization server's security events, recorded as BALP AuditEvents in tables of their
//! own; a hash chain over them ([`chain`]); and what a patient may see of the events about
//! them ([`balp::shown_to_patient`]).
//!
//! Writes record their events in their own transaction (the `rest` layer's audit trail, a
//! workflow every write transaction passes). Everything else is recorded by the [`Recorder`]
//! before the response leaves: it gathers the events of concurrent requests into one
//! transaction and answers each request once that has committed.

pub mod balp;
pub mod chain;
pub mod patients;
mod recorder;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub use balp::{Activity, Occurrence, Outcome};
pub use recorder::Recorder;

/// What the audit needs to know of the request being served, for whatever records events
/// while serving it (the write transactions deep below): its id and activity, and whether its
/// writes were recorded.
#[derive(Debug)]
pub struct RequestTrail {
    pub request_id: Option<String>,
    pub activity: Activity,
    written: AtomicBool,
}

tokio::task_local! {
    static TRAIL: Arc<RequestTrail>;
}

impl RequestTrail {
    pub fn new(request_id: Option<String>, activity: Activity) -> Arc<RequestTrail> {
        Arc::new(RequestTrail { request_id, activity, written: AtomicBool::new(false) })
    }

    /// Runs `serve` as the request this trail describes.
    pub async fn serving<F: std::future::Future>(self: Arc<Self>, serve: F) -> F::Output {
        TRAIL.scope(self, serve).await
    }

    /// The trail of the request being served on this task, if any (none for the server's own
    /// work: jobs, scans, imports).
    pub fn current() -> Option<Arc<RequestTrail>> {
        TRAIL.try_with(Arc::clone).ok()
    }

    /// Notes that a write transaction of the request committed with its AuditEvents.
    pub fn note_written(&self) {
        self.written.store(true, Ordering::Release);
    }

    /// Whether a write transaction of the request committed with its AuditEvents.
    pub fn written(&self) -> bool {
        self.written.load(Ordering::Acquire)
    }
}

/// How the audit log is kept.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditSettings {
    /// Whether events are recorded at all (only benchmarks turn it off, to measure its cost;
    /// the command line has no way to).
    pub record: bool,
    /// How long events are kept (`--audit-retention-days`; `None`: forever).
    pub retention: Option<time::Duration>,
}

impl Default for AuditSettings {
    fn default() -> Self {
        AuditSettings { record: true, retention: None }
    }
}
