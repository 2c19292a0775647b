//! A node's audit spool (ADR 21): the AuditEvents of requests that write nothing are appended
//! to a file of the node's own before the request is answered, and committed to the database
//! from there in large batches. An append is one `write` into the kernel's file cache: it
//! survives a killed process, as SQLite's own commits at `synchronous=NORMAL` do.
//!
//! Each node appends to a file of its own, `<database id>-<uuid>.spool`, which it holds locked
//! while it lives; a file nobody holds is the spool of a node that stopped before it had
//! committed everything, and the next node of the same database to look commits and removes
//! it. Committing is idempotent (an event whose id is on record is skipped), so a crash
//! between a commit and the truncation of what it committed costs nothing.

use std::borrow::Cow;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::store::audit::NewAuditEvent;
use anyhow::Context;

use crate::store::Store;

/// The most of a spool read (and committed) at once.
const CHUNK_BYTES: u64 = 4 * 1024 * 1024;

/// Events committed in one transaction at most.
const EVENTS_PER_COMMIT: usize = 2_000;

/// One spooled event: a line of JSON.
#[derive(Serialize, Deserialize)]
struct Line<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    /// µs since the epoch.
    recorded: i64,
    #[serde(borrow)]
    action: Cow<'a, str>,
    #[serde(borrow)]
    outcome: Cow<'a, str>,
    #[serde(borrow)]
    agent: Option<Cow<'a, str>>,
    #[serde(borrow)]
    client_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    request_id: Option<Cow<'a, str>>,
    patients: Cow<'a, [String]>,
    /// The AuditEvent JSON, byte for byte.
    #[serde(borrow)]
    body: &'a RawValue,
}

/// `event` as a spool line, newline included.
fn line_of(event: &NewAuditEvent) -> serde_json::Result<Vec<u8>> {
    let line = Line {
        id: Cow::Borrowed(&event.id),
        recorded: (event.recorded.unix_timestamp_nanos() / 1_000) as i64,
        action: Cow::Borrowed(&event.action),
        outcome: Cow::Borrowed(&event.outcome),
        agent: event.agent.as_deref().map(Cow::Borrowed),
        client_id: event.client_id.as_deref().map(Cow::Borrowed),
        request_id: event.request_id.as_deref().map(Cow::Borrowed),
        patients: Cow::Borrowed(&event.patients),
        body: serde_json::from_slice(&event.body)?,
    };
    let mut bytes = serde_json::to_vec(&line)?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// The events of the whole lines in `bytes`, and how many bytes those lines take (a last line
/// without its newline was cut short: it is left for later, or, at the end of a file, was never
/// acknowledged). A line that does not parse is logged and skipped.
fn events_in(bytes: &[u8], file: &Path) -> (Vec<NewAuditEvent>, usize) {
    let Some(end) = bytes.iter().rposition(|&b| b == b'\n').map(|at| at + 1) else { return (Vec::new(), 0) };
    let mut events = Vec::new();
    for text in bytes[..end].split(|&b| b == b'\n').filter(|text| !text.is_empty()) {
        match serde_json::from_slice::<Line>(text) {
            Ok(line) => events.push(NewAuditEvent {
                id: line.id.into_owned(),
                recorded: time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(line.recorded) * 1_000)
                    .unwrap_or(time::OffsetDateTime::UNIX_EPOCH),
                action: line.action.into_owned(),
                outcome: line.outcome.into_owned(),
                agent: line.agent.map(Cow::into_owned),
                client_id: line.client_id.map(Cow::into_owned),
                request_id: line.request_id.map(Cow::into_owned),
                patients: line.patients.into_owned(),
                body: line.body.get().as_bytes().to_vec(),
            }),
            Err(error) => tracing::error!(%error, file = %file.display(), "an AuditEvent in a spool is unreadable"),
        }
    }
    (events, end)
}

/// Commits `events` (already on record ones skipped), a transaction per [`EVENTS_PER_COMMIT`].
async fn commit(store: &dyn Store, events: &[NewAuditEvent]) -> crate::store::StoreResult<()> {
    for events in events.chunks(EVENTS_PER_COMMIT) {
        let mut tx = store.begin().await?;
        tx.record_audit(events).await?;
        tx.commit().await?;
    }
    Ok(())
}

/// Reads `file` from `from` up to `until` (at most [`CHUNK_BYTES`]), off the async threads.
async fn read_chunk(file: Arc<File>, from: u64, until: u64) -> std::io::Result<Vec<u8>> {
    tokio::task::spawn_blocking(move || {
        let mut bytes = vec![0; (until - from).min(CHUNK_BYTES) as usize];
        file.read_exact_at(&mut bytes, from)?;
        Ok(bytes)
    })
    .await
    .map_err(std::io::Error::other)?
}

/// What has been appended to a spool file.
struct Appended {
    /// The file's length.
    len: u64,
    /// Bytes appended before the file was last emptied.
    emptied: u64,
}

/// This node's spool file.
pub struct Spool {
    path: PathBuf,
    file: Arc<File>,
    appended: Mutex<Appended>,
    /// Bytes ever appended that are committed (counted like `emptied + len`); none before the
    /// mover's first round (which commits the spools of stopped nodes first).
    committed: tokio::sync::watch::Sender<Option<u64>>,
    /// Asks the mover to commit now rather than at its next round.
    urgent: tokio::sync::Notify,
}

impl Spool {
    /// Creates this node's spool for `database` in `dir`, locked: first under a name that no
    /// other node looks at, so that none takes it for a stopped node's before it is locked.
    pub fn create(dir: &Path, database: &str) -> std::io::Result<Spool> {
        std::fs::create_dir_all(dir)?;
        let name = format!("{database}-{}", uuid::Uuid::now_v7());
        let new = dir.join(format!("{name}.new"));
        let file = OpenOptions::new().read(true).append(true).create_new(true).open(&new)?;
        file.try_lock().map_err(std::io::Error::other)?;
        let path = dir.join(format!("{name}.spool"));
        std::fs::rename(&new, &path)?;
        Ok(Spool {
            path,
            file: Arc::new(file),
            appended: Mutex::new(Appended { len: 0, emptied: 0 }),
            committed: tokio::sync::watch::Sender::new(None),
            urgent: tokio::sync::Notify::new(),
        })
    }

    /// Appends `event`; once this returns, the event is the node's to commit, whatever happens
    /// to the process.
    pub fn append(&self, event: &NewAuditEvent) -> std::io::Result<()> {
        let line = line_of(event)?;
        let mut appended = self.appended.lock().unwrap_or_else(PoisonError::into_inner);
        if let Err(error) = (&*self.file).write_all(&line) {
            // A line cut short (a full disk) would be read as part of the next.
            let _ = self.file.set_len(appended.len);
            return Err(error);
        }
        appended.len += line.len() as u64;
        Ok(())
    }

    /// Waits until everything appended so far is committed (and the spools of stopped nodes
    /// found at start-up).
    pub async fn flush(&self) {
        let target = {
            let appended = self.appended.lock().unwrap_or_else(PoisonError::into_inner);
            appended.emptied + appended.len
        };
        let mut committed = self.committed.subscribe();
        self.urgent.notify_one();
        let _ = committed.wait_for(|committed| committed.is_some_and(|committed| committed >= target)).await;
    }

    /// Commits what was appended since `from` (a position in the file, advanced here); empties
    /// the file once everything in it is committed.
    async fn commit_appended(&self, store: &dyn Store, from: &mut u64) -> anyhow::Result<()> {
        let until = self.appended.lock().unwrap_or_else(PoisonError::into_inner).len;
        while *from < until {
            let bytes = read_chunk(self.file.clone(), *from, until).await.context("reading the spool")?;
            let (events, used) = events_in(&bytes, &self.path);
            anyhow::ensure!(used > 0, "a line of {} is too long", self.path.display());
            commit(store, &events).await?;
            *from += used as u64;
        }
        let mut appended = self.appended.lock().unwrap_or_else(PoisonError::into_inner);
        let committed = appended.emptied + *from;
        if *from > 0 && appended.len == *from {
            self.file.set_len(0).context("emptying the spool")?;
            appended.emptied += appended.len;
            appended.len = 0;
            *from = 0;
        }
        drop(appended);
        self.committed.send_replace(Some(committed));
        Ok(())
    }

    /// Removes the file once everything in it is committed (a node stopping).
    pub fn remove_if_empty(&self) {
        if self.appended.lock().unwrap_or_else(PoisonError::into_inner).len == 0 {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Commits `spool` every `every` (or when a flush asks) until the spool is dropped, and the
/// spools of `database` nobody holds in its directory at start and every `scan_every`.
pub async fn move_spooled(
    store: Arc<dyn Store>,
    spool: std::sync::Weak<Spool>,
    database: String,
    every: std::time::Duration,
    scan_every: std::time::Duration,
) {
    let mut from = 0;
    let mut scanned: Option<tokio::time::Instant> = None;
    loop {
        let Some(spool) = spool.upgrade() else { return };
        if scanned.is_none_or(|at| at.elapsed() >= scan_every) {
            scanned = Some(tokio::time::Instant::now());
            let dir = spool.path.parent().unwrap_or(Path::new("."));
            if let Err(error) = take_over_stopped(store.as_ref(), dir, &database).await {
                tracing::warn!(%error, dir = %dir.display(), "cannot commit the audit spools of stopped nodes");
            }
        }
        if let Err(error) = spool.commit_appended(store.as_ref(), &mut from).await {
            tracing::error!(%error, "cannot commit the AuditEvents spooled; will try again");
        }
        let _ = tokio::time::timeout(every, spool.urgent.notified()).await;
    }
}

/// Commits and removes the spools of `database` in `dir` that no node holds.
async fn take_over_stopped(store: &dyn Store, dir: &Path, database: &str) -> anyhow::Result<()> {
    let prefix = format!("{database}-");
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|name| name.to_str()).unwrap_or_default();
        if !name.starts_with(&prefix) || !name.ends_with(".spool") {
            continue;
        }
        // Gone already (another node took it), or held by its node.
        let Ok(file) = OpenOptions::new().read(true).write(true).open(&path) else { continue };
        if file.try_lock().is_err() {
            continue;
        }
        let file = Arc::new(file);
        let len = file.metadata()?.len();
        let (mut from, mut events_committed) = (0, 0);
        while from < len {
            let bytes = read_chunk(file.clone(), from, len).await?;
            let (events, used) = events_in(&bytes, &path);
            commit(store, &events).await?;
            events_committed += events.len();
            if used == 0 {
                break; // a last line cut short: never acknowledged
            }
            from += used as u64;
        }
        std::fs::remove_file(&path)?;
        tracing::info!(events = events_committed, file = %path.display(), "committed the audit spool of a stopped node");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str) -> NewAuditEvent {
        NewAuditEvent {
            id: id.into(),
            recorded: time::macros::datetime!(2026-12-07 10:00:00.123456 UTC),
            action: "R".into(),
            outcome: "0".into(),
            agent: Some("Practitioner/\"quoted\"".into()),
            client_id: None,
            request_id: Some("r-1".into()),
            patients: vec!["a".into(), "b".into()],
            body: br#"{"resourceType":"AuditEvent","id":"x","note":"line\nbreak"}"#.to_vec(),
        }
    }

    #[test]
    fn a_line_reads_back_as_the_event_it_was() {
        let mut bytes = line_of(&event("1")).unwrap();
        assert_eq!(bytes.iter().filter(|&&b| b == b'\n').count(), 1, "one line");
        bytes.extend(line_of(&event("2")).unwrap());
        let (events, used) = events_in(&bytes, Path::new("test"));
        assert_eq!(used, bytes.len());
        assert_eq!(events, vec![event("1"), event("2")]);
    }

    #[test]
    fn a_line_cut_short_is_left_for_later() {
        let whole = line_of(&event("1")).unwrap();
        let mut bytes = whole.clone();
        bytes.extend(&line_of(&event("2")).unwrap()[..20]);
        let (events, used) = events_in(&bytes, Path::new("test"));
        assert_eq!((events.len(), used), (1, whole.len()));
    }
}
