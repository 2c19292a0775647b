//! The audit of writes (ADR 19): a workflow every write transaction passes, which notes each
//! version written (and whose data it is: the patients of the version and of the one it
//! replaces) and, before the transaction commits, records one AuditEvent per change in it. A
//! write and its AuditEvent commit together or not at all, whatever the path (REST, bundles,
//! operations, jobs). An operation's changes make one event, named after the operation.

use std::sync::Arc;

use async_trait::async_trait;

use super::workflow::{Wake, Workflow};
use super::FhirService;
use crate::audit::{balp, patients, Activity, Occurrence, Outcome, RequestTrail, Who};
use crate::auth::Access;
use crate::store::{IndexRows, ResourceVersion, StoreResult, StoreTx};

/// One version written.
struct Change {
    /// `create`, `update` or `delete`.
    interaction: &'static str,
    reference: String,
    patients: Vec<String>,
}

/// A write transaction that records the AuditEvents of its writes.
pub(super) struct AuditTrailTx {
    inner: Box<dyn StoreTx>,
    service: FhirService,
    access: Access,
    /// The request being served (`None` for the server's own work).
    trail: Option<Arc<RequestTrail>>,
    changes: Vec<Change>,
}

impl AuditTrailTx {
    pub(super) fn new(inner: Box<dyn StoreTx>, service: FhirService, access: Access) -> Self {
        AuditTrailTx { inner, service, access, trail: RequestTrail::current(), changes: Vec::new() }
    }

    /// The patients of the version a write replaces (an Observation moved to another patient
    /// concerns both).
    async fn patients_before(&mut self, version: &ResourceVersion) -> StoreResult<Vec<String>> {
        if version.version <= 1 {
            return Ok(Vec::new());
        }
        let before = self.inner.current(&version.resource_type, &version.id).await?.filter(|before| !before.deleted);
        Ok(before.map_or_else(Vec::new, |before| {
            patients::of_stored(
                &self.service.registry(),
                &self.service.config.base_url,
                &before.resource_type,
                &before.id,
                &before.body,
            )
        }))
    }

    fn occurrence(&self, who: &Who, activity: Activity, changes: &[&Change]) -> Occurrence<'_> {
        Occurrence {
            activity,
            outcome: Outcome::Success,
            who: who.clone(),
            request_id: self.trail.as_ref().and_then(|trail| trail.request_id.as_deref()),
            data: changes.iter().map(|change| change.reference.clone()).collect(),
            query: None,
            patients: changes.iter().flat_map(|change| change.patients.iter().cloned()).collect(),
        }
    }
}

#[async_trait]
impl Workflow for AuditTrailTx {
    fn inner(&mut self) -> &mut dyn StoreTx {
        self.inner.as_mut()
    }

    fn into_inner(self) -> Box<dyn StoreTx> {
        self.inner
    }

    async fn note(&mut self, version: &ResourceVersion, rows: &IndexRows) -> StoreResult<()> {
        let mut patients = self.patients_before(version).await?;
        patients.extend(patients::in_rows(&version.resource_type, &version.id, rows));
        let interaction = match (version.deleted, version.version) {
            (true, _) => "delete",
            (false, 1) => "create",
            (false, _) => "update",
        };
        let reference = format!("{}/{}/_history/{}", version.resource_type, version.id, version.version);
        self.changes.push(Change { interaction, reference, patients });
        Ok(())
    }

    async fn settle(&mut self) -> StoreResult<()> {
        if self.changes.is_empty() || !self.service.config.audit.record {
            return Ok(());
        }
        let who = self.service.named(Who::of(&self.access)).await;
        let requested = self.trail.as_ref().map(|trail| trail.activity.clone());
        let events = match requested {
            Some(operation @ Activity::Operation(_)) => {
                let changes: Vec<&Change> = self.changes.iter().collect();
                vec![balp::audit_event(&self.occurrence(&who, operation, &changes))]
            }
            requested => self
                .changes
                .iter()
                .map(|change| {
                    // A PATCH writes an update; the event says it was a patch.
                    let interaction = match (&requested, change.interaction) {
                        (Some(Activity::Rest("patch")), "update") => "patch",
                        (_, interaction) => interaction,
                    };
                    balp::audit_event(&self.occurrence(&who, Activity::Rest(interaction), &[change]))
                })
                .collect(),
        };
        self.inner.record_audit(&events).await
    }

    fn wake_after_commit(&mut self) -> Option<Arc<dyn Wake>> {
        let trail = self.trail.clone().filter(|_| !self.changes.is_empty())?;
        Some(Arc::new(WrittenNote(trail)))
    }
}

/// Tells the request, once its transaction has committed, that its writes are on record.
struct WrittenNote(Arc<RequestTrail>);

impl Wake for WrittenNote {
    fn wake(&self) {
        self.0.note_written();
    }
}
