//! What one node tells the others that share its database: which resources it wrote (so that
//! their version caches evict them) and which authorization records it published (revoked
//! grants, so that every node refuses their tokens without asking the database per request).
//!
//! On PostgreSQL the feed is `NOTIFY`/`LISTEN`: a writer sends its notifications inside the
//! transaction that writes, so they are delivered exactly when the write commits. Each node
//! keeps one listening connection. While it is connected the node's caches and mirrored key
//! sets serve; when it drops, they switch off (reads and checks go to the database again) until
//! it is back, the sets reloaded and the caches emptied. A SQLite store is its database's only
//! process: its sets are loaded once and kept by its own publications.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use tokio::sync::oneshot;

use super::cache::VersionCache;
use super::{StoreError, StoreResult};

/// The channel of resource writes: a `node number` line, then one `Type/id/version` line per
/// resource.
pub(super) const RESOURCES: &str = "hearth_resources";
/// The channel of published authorization records: `node number`, `kind` and `key` lines.
pub(super) const AUTH: &str = "hearth_auth";

/// The channel of each node's heartbeats to itself, proof that its feed still delivers.
const HEARTBEAT: &str = "hearth_heartbeat";

/// How often a node sends itself a heartbeat; one not back by the next is a lost feed (a
/// half-open connection, or a pooler that drops notifications, never fails by itself).
const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);

/// The largest payload sent in one notification (PostgreSQL allows just under 8000 bytes).
const PAYLOAD_BYTES: usize = 7_000;

/// The `application_name` of the listening connection (in `pg_stat_activity`).
pub const APPLICATION_NAME: &str = "hearth-feed";

/// How long a lost feed waits before connecting again.
const RECONNECT_AFTER: Duration = Duration::from_secs(1);

/// The keys of one kind of authorization record, mirrored in memory.
#[derive(Default)]
pub struct KeySet {
    keys: RwLock<HashSet<String>>,
    live: AtomicBool,
}

impl KeySet {
    /// Whether `key` is in the set; `None` while the mirror may be incomplete (the feed is not
    /// connected), when the caller must ask the database.
    pub fn contains(&self, key: &str) -> Option<bool> {
        if !self.live.load(Ordering::Acquire) {
            return None;
        }
        Some(self.keys.read().ok()?.contains(key))
    }

    fn insert(&self, keys: impl IntoIterator<Item = String>) {
        if let Ok(mut set) = self.keys.write() {
            set.extend(keys);
        }
    }
}

/// The mirrored key sets of a store, and whether what they mirror is complete.
#[derive(Default)]
pub(super) struct Watched {
    state: Mutex<WatchState>,
}

#[derive(Default)]
struct WatchState {
    sets: HashMap<String, Arc<KeySet>>,
    /// Counts every connect and disconnect of the feed.
    generation: u64,
    online: bool,
}

impl Watched {
    /// A store whose own publications are all there is (SQLite): online from the start.
    pub(super) fn exclusive() -> Self {
        let watched = Watched::default();
        watched.went_online();
        watched
    }

    /// The set of `kind`, and whether it is new (then the caller loads it).
    pub(super) fn register(&self, kind: &str) -> (Arc<KeySet>, bool) {
        let mut state = self.state.lock().expect("watch lock");
        if let Some(set) = state.sets.get(kind) {
            return (set.clone(), false);
        }
        let set = Arc::new(KeySet::default());
        state.sets.insert(kind.to_string(), set.clone());
        (set, true)
    }

    /// The generation while the feed is connected.
    pub(super) fn online(&self) -> Option<u64> {
        let state = self.state.lock().expect("watch lock");
        state.online.then_some(state.generation)
    }

    /// Adds loaded keys to a set and lets it answer, unless the feed dropped since `generation`
    /// (then a reconnect loads it again).
    pub(super) fn loaded(&self, set: &KeySet, keys: Vec<String>, generation: u64) {
        set.insert(keys);
        let state = self.state.lock().expect("watch lock");
        if state.online && state.generation == generation {
            set.live.store(true, Ordering::Release);
        }
    }

    /// The kinds mirrored.
    pub(super) fn kinds(&self) -> Vec<String> {
        self.state.lock().expect("watch lock").sets.keys().cloned().collect()
    }

    /// A record was published (here or on another node).
    pub(super) fn published(&self, kind: &str, key: &str) {
        let set = self.state.lock().expect("watch lock").sets.get(kind).cloned();
        if let Some(set) = set {
            set.insert([key.to_string()]);
        }
    }

    /// The feed is connected: returns the new generation and the sets to reload.
    fn went_online(&self) -> (u64, Vec<(String, Arc<KeySet>)>) {
        let mut state = self.state.lock().expect("watch lock");
        state.generation += 1;
        state.online = true;
        let sets = state.sets.iter().map(|(kind, set)| (kind.clone(), set.clone())).collect();
        (state.generation, sets)
    }

    fn went_offline(&self) {
        let mut state = self.state.lock().expect("watch lock");
        state.generation += 1;
        state.online = false;
        for set in state.sets.values() {
            set.live.store(false, Ordering::Release);
        }
    }
}

/// How long a commit waits at most to hear its own notifications back.
const ECHO_WAIT: Duration = Duration::from_secs(1);

/// This node's end of the PostgreSQL feed, as its store holds it. The listening runs on a
/// thread of its own, so that a notification is applied as soon as it arrives rather than
/// after the requests queued on the server's workers; dropping the store stops it.
pub(super) struct Feed {
    shared: Arc<Shared>,
    _stop: oneshot::Sender<()>,
}

/// What the listening thread and the store's transactions share.
struct Shared {
    /// Tells this node's notifications from the others'.
    node: String,
    cache: Arc<VersionCache>,
    watched: Arc<Watched>,
    /// Numbers this node's notifications.
    sent: AtomicU64,
    /// The commits waiting to hear a notification of theirs back, by its number.
    waiting: Mutex<HashMap<u64, oneshot::Sender<()>>>,
    /// Told when a commit did not hear its notification back in time: the feed reconnects.
    suspect: tokio::sync::Notify,
}

/// The notifications of one transaction: send them in it, then [`Announcement::heard_back`]
/// after it commits.
pub(super) struct Announcement<'a> {
    feed: &'a Shared,
    /// The payloads, each at most [`PAYLOAD_BYTES`]; the first line of each is `node number`.
    pub(super) payloads: Vec<String>,
    /// The number of the last payload and where its echo arrives.
    echo: Option<(u64, oneshot::Receiver<()>)>,
}

impl Announcement<'_> {
    /// Waits (at most [`ECHO_WAIT`], and not while the feed is down) until this node has heard
    /// the last notification back. The database hands a commit's notifications to every
    /// listening node together, so by then the other nodes have them too, or will within
    /// moments, and apply them on their feed threads: the caller's next request, to any node,
    /// sees the change unless it overtakes that (microseconds; a few milliseconds on a
    /// saturated machine).
    pub(super) async fn heard_back(mut self) {
        if let Some((_, echo)) = &mut self.echo {
            if self.feed.watched.online().is_some()
                && tokio::time::timeout(ECHO_WAIT, echo).await.is_err()
                && self.feed.watched.online().is_some()
            {
                tracing::warn!("a commit's notification did not come back; reconnecting the change feed");
                self.feed.suspect.notify_one();
            }
        }
    }
}

impl Drop for Announcement<'_> {
    fn drop(&mut self) {
        if let Some((number, _)) = &self.echo {
            self.feed.waiting.lock().expect("echo lock").remove(number);
        }
    }
}

impl Feed {
    /// Starts listening on `url` (one connection of its own) for the cache and the sets, and
    /// returns once the first connection is up or has failed. When it fails (a database
    /// without `LISTEN`, say) the store still works, its caches off, and the feed keeps trying.
    pub(super) async fn start(url: &str, cache: Arc<VersionCache>, watched: Arc<Watched>) -> StoreResult<Feed> {
        let options = PgConnectOptions::from_str(url)?.application_name(APPLICATION_NAME);
        let node = format!("{:016x}", rand::random::<u64>());
        let shared = Arc::new(Shared {
            node,
            cache,
            watched,
            sent: AtomicU64::new(0),
            waiting: Mutex::default(),
            suspect: tokio::sync::Notify::new(),
        });
        let (stop, stopped) = oneshot::channel();
        let (first_attempt, first_attempted) = oneshot::channel();
        let listening = shared.clone();
        std::thread::Builder::new()
            .name("hearth-feed".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
                match runtime {
                    Ok(runtime) => runtime.block_on(listening.run(options, stopped, first_attempt)),
                    Err(error) => tracing::error!(%error, "cannot run the change feed; caches off"),
                }
            })
            .map_err(|error| StoreError::Busy(format!("cannot start the change feed: {error}")))?;
        let _ = first_attempted.await;
        Ok(Feed { shared, _stop: stop })
    }

    /// Announces that `written` were committed: `Type/id/version` lines.
    pub(super) fn resources(&self, written: &[super::ResourceVersion]) -> Announcement<'_> {
        self.shared.announcement(written.iter().map(|v| format!("{}/{}/{}", v.resource_type, v.id, v.version)))
    }

    /// Announces a published authorization record: `kind` and `key` lines.
    pub(super) fn auth_record(&self, kind: &str, key: &str) -> Announcement<'_> {
        self.shared.announcement([kind.to_string(), key.to_string()].into_iter())
    }
}

impl Shared {
    fn announcement(&self, lines: impl Iterator<Item = String>) -> Announcement<'_> {
        let mut payloads = Vec::new();
        for body in chunk(lines) {
            let number = self.sent.fetch_add(1, Ordering::AcqRel) + 1;
            payloads.push((number, format!("{} {number}\n{body}", self.node)));
        }
        let echo = payloads.last().map(|(number, _)| {
            let (sender, receiver) = oneshot::channel();
            self.waiting.lock().expect("echo lock").insert(*number, sender);
            (*number, receiver)
        });
        Announcement { feed: self, payloads: payloads.into_iter().map(|(_, payload)| payload).collect(), echo }
    }

    /// The listening thread: applies what arrives; when the connection drops, switches the
    /// caches off and connects again; ends when the store is dropped.
    async fn run(
        self: Arc<Self>,
        options: PgConnectOptions,
        mut stopped: oneshot::Receiver<()>,
        first_attempt: oneshot::Sender<()>,
    ) {
        let pool = PgPoolOptions::new().max_connections(1).connect_lazy_with(options);
        let mut opened = self.open(&pool).await;
        let _ = first_attempt.send(());
        loop {
            match opened {
                Ok(mut listener) => {
                    tracing::debug!("change feed connected");
                    let mut heartbeats = tokio::time::interval(HEARTBEAT_EVERY);
                    let (mut sent, mut heard) = (0u64, 0u64);
                    loop {
                        tokio::select! {
                            _ = &mut stopped => return,
                            _ = self.suspect.notified() => break,
                            _ = heartbeats.tick() => {
                                if heard < sent || !self.send_heartbeat(&mut listener, sent + 1).await {
                                    break;
                                }
                                sent += 1;
                            }
                            received = listener.try_recv() => match received {
                                Ok(Some(notification)) if notification.channel() == HEARTBEAT => {
                                    if let Some(number) = self.own_heartbeat(notification.payload()) {
                                        heard = heard.max(number);
                                    }
                                }
                                Ok(Some(notification)) => self.received(notification.channel(), notification.payload()),
                                _ => break,
                            },
                        }
                    }
                    tracing::warn!("change feed lost; caches off until it is back");
                }
                Err(error) => tracing::warn!(%error, "cannot connect the change feed; caches off"),
            }
            self.watched.went_offline();
            self.cache.go_offline();
            // Nobody waits for an echo that may never come.
            self.waiting.lock().expect("echo lock").clear();
            tokio::select! {
                _ = &mut stopped => return,
                _ = tokio::time::sleep(RECONNECT_AFTER) => {}
            }
            opened = self.open(&pool).await;
        }
    }

    /// Sends heartbeat `number` on the listening connection; `false` when that fails or hangs.
    async fn send_heartbeat(&self, listener: &mut PgListener, number: u64) -> bool {
        let send = sqlx::query("SELECT pg_notify($1, $2)")
            .bind(HEARTBEAT)
            .bind(format!("{} {number}", self.node))
            .execute(&mut *listener);
        matches!(tokio::time::timeout(HEARTBEAT_EVERY, send).await, Ok(Ok(_)))
    }

    /// The number of a heartbeat of this node's.
    fn own_heartbeat(&self, payload: &str) -> Option<u64> {
        let (node, number) = payload.split_once(' ')?;
        (node == self.node).then(|| number.parse().ok()).flatten()
    }

    /// Connects and listens; then, every change being announced from now on, reloads the sets
    /// and starts the cache empty.
    async fn open(&self, pool: &PgPool) -> StoreResult<PgListener> {
        let mut listener = PgListener::connect_with(pool).await?;
        // A lost connection must end the loop of `listen` (so that the caches switch off), not
        // be mended quietly with the notifications sent meanwhile lost.
        listener.eager_reconnect(false);
        listener.listen_all([RESOURCES, AUTH, HEARTBEAT]).await?;
        let (generation, sets) = self.watched.went_online();
        for (kind, set) in sets {
            let keys = live_keys(&mut listener, &kind).await?;
            self.watched.loaded(&set, keys, generation);
        }
        self.cache.go_live();
        Ok(listener)
    }

    fn received(&self, channel: &str, payload: &str) {
        let mut lines = payload.lines();
        let Some((node, number)) = lines.next().and_then(|header| header.split_once(' ')) else { return };
        let from_here = node == self.node;
        match channel {
            // This node's own writes too: it evicted them when they committed, unless the
            // commit's answer was lost (eviction is by version, so twice does no harm).
            RESOURCES => {
                for line in lines {
                    if let Some((resource_type, id, version)) = parse_resource_line(line) {
                        self.cache.invalidate(resource_type, id, version);
                    }
                }
            }
            AUTH => {
                if let (Some(kind), Some(key)) = (lines.next(), lines.next()) {
                    self.watched.published(kind, key);
                }
            }
            _ => {}
        }
        if from_here {
            let waiter = number.parse().ok().and_then(|number| self.waiting.lock().expect("echo lock").remove(&number));
            if let Some(waiter) = waiter {
                let _ = waiter.send(());
            }
        }
    }
}

/// The keys of the live records of `kind`.
async fn live_keys(listener: &mut PgListener, kind: &str) -> StoreResult<Vec<String>> {
    let now = super::sql::to_micros(time::OffsetDateTime::now_utc());
    Ok(sqlx::query_scalar("SELECT key FROM auth_objects WHERE kind = $1 AND expires > $2")
        .bind(kind)
        .bind(now)
        .fetch_all(listener)
        .await?)
}

/// Packs `lines` into bodies that leave room for a header within [`PAYLOAD_BYTES`].
fn chunk(lines: impl Iterator<Item = String>) -> Vec<String> {
    const BODY_BYTES: usize = PAYLOAD_BYTES - 64;
    let mut bodies = Vec::new();
    let mut current = String::new();
    for line in lines {
        if !current.is_empty() && current.len() + 1 + line.len() > BODY_BYTES {
            bodies.push(std::mem::take(&mut current));
        }
        if !current.is_empty() {
            current.push('\n');
        }
        current.push_str(&line);
    }
    if !current.is_empty() {
        bodies.push(current);
    }
    bodies
}

/// `Type/id/version` (neither a type nor a FHIR id contains `/`).
fn parse_resource_line(line: &str) -> Option<(&str, &str, i64)> {
    let mut parts = line.splitn(3, '/');
    Some((parts.next()?, parts.next()?, parts.next()?.parse().ok()?))
}

/// The record kind under which a process without a change feed (an administration command
/// beside a server on SQLite) announces what it publishes of `kind`, for the server to mirror.
pub(super) fn announced(kind: &str) -> String {
    format!("published:{kind}")
}

/// How long such an announcement is kept (the server reads it within a second or two).
pub(super) const ANNOUNCEMENT_SECONDS: i64 = 3600;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_stay_under_the_limit_and_keep_every_line() {
        let lines: Vec<String> = (0..2_000).map(|n| format!("Observation/obs-{n}/1")).collect();
        let bodies = chunk(lines.clone().into_iter());
        assert!(bodies.len() > 1);
        assert!(bodies.iter().all(|body| body.len() + 40 <= PAYLOAD_BYTES));
        let seen: Vec<String> = bodies.iter().flat_map(|body| body.lines().map(str::to_string)).collect();
        assert_eq!(seen, lines);
        assert!(chunk(std::iter::empty()).is_empty());
    }

    #[test]
    fn resource_lines_parse() {
        assert_eq!(parse_resource_line("Patient/a.b-1/12"), Some(("Patient", "a.b-1", 12)));
        assert_eq!(parse_resource_line("Patient/a"), None);
        assert_eq!(parse_resource_line("Patient/a/x"), None);
    }

    #[test]
    fn a_set_answers_only_while_complete() {
        let watched = Watched::default();
        let (set, new) = watched.register("revoked");
        assert!(new);
        assert_eq!(set.contains("g"), None, "not loaded yet");
        let (generation, sets) = watched.went_online();
        assert_eq!(sets.len(), 1);
        watched.loaded(&set, vec!["g".into()], generation);
        assert_eq!(set.contains("g"), Some(true));
        watched.published("revoked", "h");
        assert_eq!(set.contains("h"), Some(true));
        assert_eq!(set.contains("i"), Some(false));
        watched.went_offline();
        assert_eq!(set.contains("g"), None);
        watched.loaded(&set, Vec::new(), generation);
        assert_eq!(set.contains("g"), None, "a load from before the drop does not count");
    }
}
