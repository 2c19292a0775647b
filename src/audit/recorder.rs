//! The node's writer of AuditEvents for requests that write nothing (reads, searches, refused
//! writes): the events of concurrent requests go into one transaction (on SQLite, one member of
//! the group commit), and each request is answered once that has committed (ADR 19).

use std::sync::{Arc, OnceLock};

use tokio::sync::{mpsc, oneshot};

use crate::store::audit::NewAuditEvent;
use crate::store::{Store, StoreError, StoreResult};

/// Events written in one transaction at most.
const BATCH: usize = 256;

/// Transactions of events in flight at once: a request need not wait for the batch before
/// its own to commit (SQLite's group commit joins them into one commit; PostgreSQL commits
/// them on connections of their own).
const IN_FLIGHT: usize = 4;

/// Requests waiting for the writer at most, before the next waits for room.
const QUEUE: usize = 4096;

type Waiting = (NewAuditEvent, oneshot::Sender<Result<(), String>>);

/// Hands events to the node's audit writer (clones share it).
#[derive(Clone)]
pub struct Recorder {
    store: Arc<dyn Store>,
    queue: Arc<OnceLock<mpsc::Sender<Waiting>>>,
}

impl Recorder {
    /// A recorder for `store`; its writer starts with the first event, on the runtime that
    /// records it, and ends when the last clone is dropped.
    pub fn new(store: Arc<dyn Store>) -> Recorder {
        Recorder { store, queue: Arc::default() }
    }

    /// Records `event`; returns once it has committed.
    pub async fn record(&self, event: NewAuditEvent) -> StoreResult<()> {
        let queue = self.queue.get_or_init(|| {
            let (queue, waiting) = mpsc::channel(QUEUE);
            tokio::spawn(write_batches(self.store.clone(), waiting));
            queue
        });
        let (done, committed) = oneshot::channel();
        let stopped = || StoreError::CommitFailed("the audit writer stopped".into());
        queue.send((event, done)).await.map_err(|_| stopped())?;
        committed.await.map_err(|_| stopped())?.map_err(StoreError::CommitFailed)
    }
}

async fn write_batches(store: Arc<dyn Store>, mut waiting: mpsc::Receiver<Waiting>) {
    let in_flight = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    while let Some(first) = waiting.recv().await {
        // While every transaction is in flight, the next batch grows.
        let Ok(permit) = in_flight.clone().acquire_owned().await else { return };
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match waiting.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let store = store.clone();
        tokio::spawn(async move {
            let (events, done): (Vec<NewAuditEvent>, Vec<_>) = batch.into_iter().unzip();
            let outcome = write(store.as_ref(), &events).await.map_err(|error| {
                tracing::error!(%error, events = events.len(), "AuditEvents could not be recorded");
                error.to_string()
            });
            for waiter in done {
                let _ = waiter.send(outcome.clone());
            }
            drop(permit);
        });
    }
}

async fn write(store: &dyn Store, events: &[NewAuditEvent]) -> StoreResult<()> {
    let mut tx = store.begin().await?;
    tx.record_audit(events).await?;
    tx.commit().await
}
