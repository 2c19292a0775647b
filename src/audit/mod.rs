//! The audit log (issue 21, ADR 19): every interaction, operation and bundle entry, and the
//! authorization server's security events, recorded as BALP AuditEvents in tables of their
//! own; a hash chain over them ([`chain`]); and what a patient may see of the events about
//! them ([`balp::shown_to_patient`]).
//!
//! Writes record their events in their own transaction (the `rest` layer's audit trail, a
//! workflow every write transaction passes). Everything else is recorded by the [`Recorder`]
//! before the response leaves: it appends the event to the node's spool, which is committed
//! in large batches (ADR 21).

pub mod balp;
pub mod chain;
pub mod patients;
mod recorder;
mod spool;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub use balp::{Activity, Occurrence, Outcome, SecurityEvent, Who};
pub use recorder::{default_spool_dir, state_spool_dir, Recorder};

/// What the audit needs to know of the request being served, for whatever records events
/// while serving it (the write transactions deep below): its id and activity, and whether its
/// writes were recorded.
#[derive(Debug)]
pub struct RequestTrail {
    pub request_id: Option<String>,
    pub activity: Activity,
    written: AtomicBool,
    /// What the authorization server learnt while serving the request.
    noted: std::sync::Mutex<Noted>,
    /// The stored resources the caller's read view let through (whose patients the event
    /// names): as stored, before `_elements` or `_summary` trimmed what the response shows.
    disclosed: std::sync::Mutex<Vec<Disclosed>>,
}

/// A stored resource a request's read view let through: what its AuditEvent needs to tell
/// whose data it was, without parsing a resource whose type already says (a Patient, a type
/// outside the Patient compartment).
#[derive(Debug, Clone)]
pub struct Disclosed {
    pub resource_type: String,
    pub id: String,
    /// As stored (a clone of `Bytes` shares it).
    pub body: bytes::Bytes,
}

impl From<&crate::store::ResourceVersion> for Disclosed {
    fn from(version: &crate::store::ResourceVersion) -> Disclosed {
        Disclosed { resource_type: version.resource_type.clone(), id: version.id.clone(), body: version.body.clone() }
    }
}

/// What the authorization server tells the audit of a request as it learns it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Noted {
    /// Who acts: the user who signed in, the name tried, the app, the token.
    pub who: Who,
    /// Why the request was refused, when it was.
    pub refusal: Option<String>,
    /// The account the request was about (its `fhirUser`), when not the actor's own.
    pub subject: Option<String>,
    /// What the request turned out to be, when its route does not say (a refresh).
    pub event: Option<SecurityEvent>,
}

tokio::task_local! {
    static TRAIL: Arc<RequestTrail>;
}

impl RequestTrail {
    pub fn new(request_id: Option<String>, activity: Activity) -> Arc<RequestTrail> {
        Arc::new(RequestTrail {
            request_id,
            activity,
            written: AtomicBool::new(false),
            noted: Default::default(),
            disclosed: Default::default(),
        })
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

    /// Tells the audit of the request being served what `change` says (who acts, why it was
    /// refused…); nothing outside a request.
    pub fn note(change: impl FnOnce(&mut Noted)) {
        let _ =
            TRAIL.try_with(|trail| change(&mut trail.noted.lock().unwrap_or_else(std::sync::PoisonError::into_inner)));
    }

    /// Tells the audit who acts in the request being served (see [`RequestTrail::note`]).
    pub fn note_who(who: Who) {
        RequestTrail::note(|noted| noted.who.merge(who));
    }

    /// Notes resources the caller's read view let through in the request being served;
    /// nothing outside a request.
    pub fn note_disclosed(resources: impl IntoIterator<Item = Disclosed>) {
        let _ = TRAIL.try_with(|trail| {
            let mut disclosed = trail.disclosed.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            disclosed.extend(resources);
        });
    }

    /// The resources noted by [`RequestTrail::note_disclosed`], taken.
    pub fn take_disclosed(&self) -> Vec<Disclosed> {
        std::mem::take(&mut *self.disclosed.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// What [`RequestTrail::note`] gathered.
    pub fn noted(&self) -> Noted {
        self.noted.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
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
    /// Where this node spools the events of requests that write nothing (`--audit-spool-dir`;
    /// `None`: [`default_spool_dir`] of the database).
    pub spool_dir: Option<std::path::PathBuf>,
}

impl Default for AuditSettings {
    fn default() -> Self {
        AuditSettings { record: true, retention: None, spool_dir: None }
    }
}
