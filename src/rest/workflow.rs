//! The write transaction's workflow rules: each workflow (scheduling, refills, messaging) sees
//! every write as it passes and checks what the transaction did when it commits, inside it, so
//! that no write path (REST, bundles, operations, jobs) can go around it. [`WorkflowTx`] is the
//! one [`StoreTx`] they all share; a workflow only says what it notes and how it settles.

use async_trait::async_trait;
use serde_json::Value;
use time::OffsetDateTime;

use crate::model::{ErrorKind, FhirError, Issue, IssueCode};
use crate::store::{IndexRows, JobStep, ResourceVersion, SearchPage, SearchQuery, StoreError, StoreResult, StoreTx};

/// The current, not deleted version of a resource as `tx` sees it, with its content.
pub(super) async fn live_version(
    tx: &mut dyn StoreTx,
    resource_type: &str,
    id: &str,
) -> StoreResult<Option<(ResourceVersion, Value)>> {
    let Some(version) = tx.current(resource_type, id).await?.filter(|v| !v.deleted) else { return Ok(None) };
    let content = serde_json::from_slice(&version.body).unwrap_or(Value::Null);
    Ok(Some((version, content)))
}

/// The content of the current, not deleted version of a resource as `tx` sees it.
pub(super) async fn live(tx: &mut dyn StoreTx, resource_type: &str, id: &str) -> StoreResult<Option<Value>> {
    Ok(live_version(tx, resource_type, id).await?.map(|(_, content)| content))
}

/// A workflow rule's refusal: a 4xx with one issue, answered as it is.
pub(super) fn refused(kind: ErrorKind, code: IssueCode, message: String) -> StoreError {
    StoreError::Refused(Box::new(FhirError::with_issues(kind, vec![Issue::error(code, message)])))
}

/// A business rule's refusal (422), the usual one.
pub(super) fn unprocessable(message: String) -> StoreError {
    refused(ErrorKind::Unprocessable, IssueCode::BusinessRule, message)
}

/// The rules of one workflow over the transaction it wraps.
#[async_trait]
pub(super) trait Workflow: Send {
    /// The transaction it wraps.
    fn inner(&mut self) -> &mut dyn StoreTx;

    /// The transaction it wraps, to end it.
    fn into_inner(self) -> Box<dyn StoreTx>;

    /// Notes a write about to pass, with its index rows (reads through [`Workflow::inner`]
    /// still see what it replaces).
    async fn note(&mut self, version: &ResourceVersion, rows: &IndexRows) -> StoreResult<()>;

    /// Checks, and completes, what the transaction did, before it commits; an error rolls it
    /// back.
    async fn settle(&mut self) -> StoreResult<()>;

    /// What to wake once the transaction has committed (a worker with new work), if anything.
    fn wake_after_commit(&mut self) -> Option<std::sync::Arc<dyn Wake>> {
        None
    }
}

/// Something waiting for work that a committed transaction made.
pub(super) trait Wake: Send + Sync {
    fn wake(&self);
}

/// A transaction that keeps a workflow's rules.
pub(super) struct WorkflowTx<W>(pub W);

#[async_trait]
impl<W: Workflow> StoreTx for WorkflowTx<W> {
    async fn current(&mut self, resource_type: &str, id: &str) -> StoreResult<Option<ResourceVersion>> {
        self.0.inner().current(resource_type, id).await
    }

    async fn vread(&mut self, resource_type: &str, id: &str, version: i64) -> StoreResult<Option<ResourceVersion>> {
        self.0.inner().vread(resource_type, id, version).await
    }

    async fn search(&mut self, query: &SearchQuery) -> StoreResult<SearchPage> {
        self.0.inner().search(query).await
    }

    async fn write(&mut self, version: ResourceVersion, index: IndexRows) -> StoreResult<()> {
        self.0.note(&version, &index).await?;
        self.0.inner().write(version, index).await
    }

    async fn reindex(&mut self, batch: &[(ResourceVersion, IndexRows)]) -> StoreResult<usize> {
        self.0.inner().reindex(batch).await
    }

    async fn job_step(&mut self, step: &JobStep<'_>) -> StoreResult<bool> {
        self.0.inner().job_step(step).await
    }

    async fn enqueue_job(&mut self, kind: &str, parameters: &str, not_before: OffsetDateTime) -> StoreResult<i64> {
        self.0.inner().enqueue_job(kind, parameters, not_before).await
    }

    async fn register_subscription(
        &mut self,
        id: &str,
        registration: Option<&crate::store::subscription::Registration>,
    ) -> StoreResult<()> {
        self.0.inner().register_subscription(id, registration).await
    }

    async fn record_events(&mut self, events: &[crate::store::subscription::NewEvent]) -> StoreResult<usize> {
        self.0.inner().record_events(events).await
    }

    async fn record_reminders(&mut self, reminders: &[crate::store::subscription::Reminder]) -> StoreResult<usize> {
        self.0.inner().record_reminders(reminders).await
    }

    async fn record_audit(&mut self, events: &[crate::store::audit::NewAuditEvent]) -> StoreResult<()> {
        self.0.inner().record_audit(events).await
    }

    async fn commit(mut self: Box<Self>) -> StoreResult<()> {
        let settled = self.0.settle().await;
        let wake = self.0.wake_after_commit();
        let inner = self.0.into_inner();
        match settled {
            Ok(()) => {
                inner.commit().await?;
                if let Some(waiting) = wake {
                    waiting.wake();
                }
                Ok(())
            }
            Err(error) => {
                inner.rollback().await;
                Err(error)
            }
        }
    }

    async fn rollback(self: Box<Self>) {
        self.0.into_inner().rollback().await
    }
}
