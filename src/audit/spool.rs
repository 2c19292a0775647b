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
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt};
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
    /// The event's record JSON, byte for byte: written after the other fields by [`line_of`]
    /// (the record was serialised by us a moment before; checking it again as a `RawValue`
    /// would parse every event once more).
    #[serde(borrow, skip_serializing)]
    body: Option<&'a RawValue>,
}

/// `event` as a spool line, newline included; an error for a record that is not a JSON object
/// (which a reader could not take back).
fn line_of(event: &NewAuditEvent) -> std::io::Result<Vec<u8>> {
    if !(event.body.starts_with(b"{") && event.body.ends_with(b"}")) {
        return Err(std::io::Error::other("an AuditEvent's record is not a JSON object"));
    }
    let line = Line {
        id: Cow::Borrowed(&event.id),
        recorded: (event.recorded.unix_timestamp_nanos() / 1_000) as i64,
        action: Cow::Borrowed(&event.action),
        outcome: Cow::Borrowed(&event.outcome),
        agent: event.agent.as_deref().map(Cow::Borrowed),
        client_id: event.client_id.as_deref().map(Cow::Borrowed),
        request_id: event.request_id.as_deref().map(Cow::Borrowed),
        patients: Cow::Borrowed(&event.patients),
        body: None,
    };
    let mut bytes = serde_json::to_vec(&line)?;
    if bytes.pop() != Some(b'}') {
        return Err(std::io::Error::other("a spool line does not end as an object"));
    }
    bytes.extend_from_slice(b",\"body\":");
    bytes.extend_from_slice(&event.body);
    bytes.extend_from_slice(b"}\n");
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
            Ok(Line { body: None, .. }) => {
                tracing::error!(file = %file.display(), "an AuditEvent in a spool has no record")
            }
            Ok(line @ Line { body: Some(body), .. }) => events.push(NewAuditEvent {
                id: line.id.into_owned(),
                recorded: time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(line.recorded) * 1_000)
                    .unwrap_or(time::OffsetDateTime::UNIX_EPOCH),
                action: line.action.into_owned(),
                outcome: line.outcome.into_owned(),
                agent: line.agent.map(Cow::into_owned),
                client_id: line.client_id.map(Cow::into_owned),
                request_id: line.request_id.map(Cow::into_owned),
                patients: line.patients.into_owned(),
                body: body.get().as_bytes().to_vec(),
            }),
            Err(error) => tracing::error!(%error, file = %file.display(), "an AuditEvent in a spool is unreadable"),
        }
    }
    (events, end)
}

/// Commits `events` (already on record ones skipped), sealed into the hash chain as they are
/// inserted (no second write of each row to seal it), a transaction per [`EVENTS_PER_COMMIT`].
async fn commit(store: &dyn Store, events: &[NewAuditEvent]) -> crate::store::StoreResult<()> {
    for events in events.chunks(EVENTS_PER_COMMIT) {
        store.record_sealed_audit(events, super::chain::link_hash).await?;
    }
    Ok(())
}

/// Reads `len` bytes of `file` from `from`, off the async threads.
async fn read_chunk(file: Arc<File>, from: u64, len: u64) -> std::io::Result<Vec<u8>> {
    tokio::task::spawn_blocking(move || {
        let mut bytes = vec![0; len as usize];
        file.read_exact_at(&mut bytes, from)?;
        Ok(bytes)
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Commits the events of the whole lines of `file` between `from` and `until`, a chunk at a
/// time (a longer one for a line longer than a chunk); where the last whole line ends (before
/// a last line cut short), and how many events there were.
async fn commit_lines(
    store: &dyn Store,
    file: &Arc<File>,
    path: &Path,
    mut from: u64,
    until: u64,
) -> anyhow::Result<(u64, usize)> {
    let (mut chunk, mut committed) = (CHUNK_BYTES, 0);
    while from < until {
        let bytes = read_chunk(file.clone(), from, (until - from).min(chunk)).await.context("reading a spool")?;
        let (events, used) = events_in(&bytes, path);
        if used == 0 {
            if from + bytes.len() as u64 >= until {
                break;
            }
            chunk *= 2;
            continue;
        }
        commit(store, &events).await?;
        committed += events.len();
        from += used as u64;
        chunk = CHUNK_BYTES;
    }
    Ok((from, committed))
}

/// What has been appended to a spool file.
struct Appended {
    /// The file's length.
    len: u64,
    /// Bytes appended before the file was last emptied.
    emptied: u64,
    /// No more appends: the node is stopping, or a failed append could not be undone.
    closed: bool,
}

impl Appended {
    /// Bytes ever appended (the count `committed` is kept in).
    fn total(&self) -> u64 {
        self.emptied + self.len
    }
}

/// This node's spool file.
pub struct Spool {
    path: PathBuf,
    file: Arc<File>,
    appended: Mutex<Appended>,
    /// Bytes ever appended that are committed (counted like [`Appended::total`]); none before the
    /// mover's first round (which commits the spools of stopped nodes first).
    committed: tokio::sync::watch::Sender<Option<u64>>,
    /// Asks the mover to commit now rather than at its next round.
    urgent: tokio::sync::Notify,
}

impl Spool {
    /// Creates this node's spool for `database` in `dir`, locked: first under a name that no
    /// other node takes for a stopped node's spool, renamed once locked. The directory (made
    /// if missing) must be writable by the server's user alone and the file is readable by it
    /// alone: the events name patients, and a spool planted by someone else would be committed
    /// as the server's own record.
    pub fn create(dir: &Path, database: &str) -> std::io::Result<Spool> {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        let name = format!("{database}-{}", uuid::Uuid::now_v7());
        let new = dir.join(format!("{name}.new"));
        let file = OpenOptions::new().read(true).append(true).create_new(true).mode(0o600).open(&new)?;
        let directory = std::fs::metadata(dir)?;
        if directory.uid() != file.metadata()?.uid() || directory.mode() & 0o022 != 0 {
            let _ = std::fs::remove_file(&new);
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!("{} must belong to the server's user and be writable by it alone", dir.display()),
            ));
        }
        file.try_lock().map_err(std::io::Error::other)?;
        let path = dir.join(format!("{name}.spool"));
        std::fs::rename(&new, &path)?;
        Ok(Spool {
            path,
            file: Arc::new(file),
            appended: Mutex::new(Appended { len: 0, emptied: 0, closed: false }),
            committed: tokio::sync::watch::Sender::new(None),
            urgent: tokio::sync::Notify::new(),
        })
    }

    /// Appends `event`; once this returns, the event is the node's to commit, whatever happens
    /// to the process.
    pub fn append(&self, event: &NewAuditEvent) -> std::io::Result<()> {
        let line = line_of(event)?;
        let mut appended = self.appended.lock().unwrap_or_else(PoisonError::into_inner);
        if appended.closed {
            return Err(std::io::Error::other("the audit spool is closed"));
        }
        if let Err(error) = (&*self.file).write_all(&line) {
            // A line cut short (a full disk) would be read as part of the next.
            if self.file.set_len(appended.len).is_err() {
                appended.closed = true;
            }
            return Err(error);
        }
        appended.len += line.len() as u64;
        Ok(())
    }

    /// Waits until everything appended so far is committed (and the spools of stopped nodes
    /// found at start-up).
    pub async fn flush(&self) {
        let target = self.appended.lock().unwrap_or_else(PoisonError::into_inner).total();
        let mut committed = self.committed.subscribe();
        self.urgent.notify_one();
        let _ = committed.wait_for(|committed| committed.is_some_and(|committed| committed >= target)).await;
    }

    /// Commits what was appended since `from` (a position in the file, advanced here); empties
    /// the file once everything in it is committed.
    async fn commit_appended(&self, store: &dyn Store, from: &mut u64) -> anyhow::Result<()> {
        let until = self.appended.lock().unwrap_or_else(PoisonError::into_inner).len;
        // Appends are whole lines: all of them up to `until` are committed.
        (*from, _) = commit_lines(store, &self.file, &self.path, *from, until).await?;
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

    /// Bytes appended and not yet committed.
    pub fn backlog(&self) -> u64 {
        let appended = self.appended.lock().unwrap_or_else(PoisonError::into_inner).total();
        appended.saturating_sub(self.committed.borrow().unwrap_or(0))
    }

    /// Takes no more appends (a node stopping), and removes the file if everything in it is
    /// committed; else it is left to the next node.
    pub fn close(&self) {
        let mut appended = self.appended.lock().unwrap_or_else(PoisonError::into_inner);
        appended.closed = true;
        if appended.len == 0 {
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

/// How old a file being created must be to be taken for one a node crashed while creating.
const CREATION_ABANDONED: std::time::Duration = std::time::Duration::from_secs(60);

/// Commits and removes the spools of `database` in `dir` that no node holds; one that fails is
/// logged and left for the next scan.
async fn take_over_stopped(store: &dyn Store, dir: &Path, database: &str) -> anyhow::Result<()> {
    let prefix = format!("{database}-");
    for entry in std::fs::read_dir(dir)?.flatten() {
        let path = entry.path();
        let name = path.file_name().and_then(|name| name.to_str()).unwrap_or_default();
        if !name.starts_with(&prefix) || !entry.file_type().is_ok_and(|kind| kind.is_file()) {
            continue;
        }
        let outcome = if name.ends_with(".spool") {
            take_over(store, &path).await
        } else if name.ends_with(".new") {
            remove_abandoned(&path)
        } else {
            continue;
        };
        if let Err(error) = outcome {
            tracing::warn!(error = format!("{error:#}"), file = %path.display(), "cannot commit the audit spool of a stopped node");
        }
    }
    Ok(())
}

/// Commits and removes the spool at `path` unless a node holds it.
async fn take_over(store: &dyn Store, path: &Path) -> anyhow::Result<()> {
    // Gone already (another node took it), or held by its node.
    let Ok(file) = OpenOptions::new().read(true).write(true).open(path) else { return Ok(()) };
    if file.try_lock().is_err() {
        return Ok(());
    }
    let file = Arc::new(file);
    let len = file.metadata()?.len();
    // A last line cut short was never acknowledged.
    let (_, events) = commit_lines(store, &file, path, 0, len).await?;
    match std::fs::remove_file(path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error.into()),
        _ => {}
    }
    tracing::info!(events, file = %path.display(), "committed the audit spool of a stopped node");
    Ok(())
}

/// Removes a spool a node crashed while creating (never appended to: it is renamed first).
fn remove_abandoned(path: &Path) -> anyhow::Result<()> {
    let age = std::fs::metadata(path)?.modified()?.elapsed().unwrap_or_default();
    if age >= CREATION_ABANDONED {
        std::fs::remove_file(path)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

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
    fn lines_with_the_record_in_the_middle_read_back_and_lines_without_one_are_skipped() {
        let earlier = concat!(
            r#"{"id":"1","recorded":1,"action":"R","outcome":"0","agent":null,"client_id":null,"#,
            r#""request_id":null,"body":{"resourceType":"AuditEvent"},"patients":["a"]}"#,
            "\n",
            r#"{"id":"2","recorded":1,"action":"R","outcome":"0","patients":[]}"#,
            "\n"
        );
        let (events, used) = events_in(earlier.as_bytes(), Path::new("test"));
        assert_eq!(used, earlier.len());
        assert_eq!(events.len(), 1, "the line without a record is skipped");
        assert_eq!((events[0].id.as_str(), events[0].body.as_slice()), ("1", &br#"{"resourceType":"AuditEvent"}"#[..]));
        assert_eq!(events[0].patients, ["a"]);
    }

    #[test]
    fn a_record_that_is_not_an_object_is_not_spooled() {
        for body in [&b""[..], b"null", b"{\"a\":1"] {
            let event = NewAuditEvent { body: body.to_vec(), ..event("1") };
            assert!(line_of(&event).is_err(), "{:?}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn a_directory_others_may_write_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let refused = Spool::create(dir.path(), "db").err().expect("refused");
        assert_eq!(refused.kind(), std::io::ErrorKind::PermissionDenied);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "nothing left behind");
    }

    #[test]
    fn a_closed_spool_takes_no_append_and_an_empty_one_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::create(&dir.path().join("spool"), "db").unwrap();
        let mode = std::fs::metadata(&spool.path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "readable by the server's user alone");
        spool.close();
        assert!(!spool.path.exists());
        assert!(spool.append(&event("1")).is_err());
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
