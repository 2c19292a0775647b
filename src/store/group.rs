//! Group commit for SQLite's single writer.
//!
//! Write transactions take turns on the one writer connection, as before, but a turn no longer
//! ends with its own `COMMIT`: each is a member of a group transaction, and the group commits
//! when no other transaction is waiting for the writer (or it has had [`MAX_MEMBERS`] turns).
//! Every member answers only after that `COMMIT`, so what a client is told is stored is stored.
//! The gain: a page that several members change (the tail of an index, an interior B-tree
//! page) goes to the write-ahead log once per group instead of once per transaction, and
//! concurrent small writes share one commit (ADR 8).
//!
//! A member that fails undoes its own writes and leaves the others be. Writes the transaction
//! may still fail after go inside a `SAVEPOINT` of the member; its last write (at commit) does
//! not need one, and neither do the writes of a group's first member, whose undo is the
//! group's `ROLLBACK`. A savepoint copies every page its member changes into a journal in
//! memory, which cost 15% of the writer's time during ingest (ADR 8). Should a last write itself
//! fail partway (a database error, not bad input: input is checked before it is written), the
//! group is rolled back and every member of it fails.
//!
//! A member sees the writes of the members before it in its group, as it would after their
//! commits. When the group's `COMMIT` itself fails, every member of it fails with it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use futures::future::BoxFuture;
use sqlx::pool::PoolConnection;
use sqlx::{Sqlite, SqliteConnection, SqlitePool};
use tokio::sync::{watch, Mutex, OwnedMutexGuard};

use super::{StoreError, StoreResult};

/// The most turns one group takes: a member waits for the later ones.
const MAX_MEMBERS: usize = 16;

/// How a group ended: `None` while it is open, then its `COMMIT`'s result.
type Outcome = Option<Result<(), String>>;

/// The way to the writer connection, shared by all write transactions of one store.
#[derive(Clone)]
pub struct WriterGate {
    pool: SqlitePool,
    turn: Arc<Mutex<Group>>,
    /// Transactions waiting for their turn: while there are any, the group stays open.
    waiting: Arc<AtomicUsize>,
}

/// The open group transaction, if any.
#[derive(Default)]
struct Group {
    /// The writer connection, in a transaction, while the group is open.
    conn: Option<PoolConnection<Sqlite>>,
    /// Turns taken in the group, rolled back ones included: what bounds how long it stays open.
    turns: usize,
    /// Where the members hear the group's outcome.
    outcome: Option<watch::Sender<Outcome>>,
}

/// One write transaction's turn on the writer: it holds the writer until [`Member::commit`] or
/// until it is dropped (which rolls back its own writes only).
pub struct Member {
    turn: Option<OwnedMutexGuard<Group>>,
    waiting: Arc<AtomicUsize>,
    /// Whether the member opened the group: nothing of others to keep if it fails.
    first: bool,
    writes: Writes,
}

/// What a member has written, and how it would be undone.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Writes {
    Nothing,
    /// Inside the member's savepoint: undone by rolling back to it.
    InSavepoint,
    /// Outside a savepoint: undone only by rolling back the whole group.
    Bare,
}

/// Tells a background task of the store whether the store (its gate) still exists.
pub struct GateAlive(Weak<Mutex<Group>>);

impl GateAlive {
    /// Whether the gate, and so the store, is still in use.
    pub fn is_alive(&self) -> bool {
        self.0.strong_count() > 0
    }
}

impl WriterGate {
    /// A gate to the writer connection of `pool` (a pool of one).
    pub fn new(pool: SqlitePool) -> Self {
        WriterGate { pool, turn: Arc::new(Mutex::new(Group::default())), waiting: Arc::new(AtomicUsize::new(0)) }
    }

    /// What a background task of the store checks to end with it.
    pub fn alive(&self) -> GateAlive {
        GateAlive(Arc::downgrade(&self.turn))
    }

    /// Waits for the writer, opening a group transaction when none is open. The wait runs in a
    /// task of its own: a caller that stops waiting (a client hung up) would otherwise leave a
    /// half-begun transaction on the connection, or stop counting as waiting after a member
    /// handed the writer to it.
    pub async fn join(&self) -> StoreResult<Member> {
        let gate = self.clone();
        tokio::spawn(async move { gate.take_turn().await }).await.map_err(|_| abandoned())?
    }

    async fn take_turn(self) -> StoreResult<Member> {
        let waiter = Waiter::count(&self.waiting);
        let mut turn = self.turn.clone().lock_owned().await;
        drop(waiter);
        let first = turn.conn.is_none();
        if first {
            let mut conn = self.pool.acquire().await?;
            // IMMEDIATE: the write lock now, so another process's writer (administration)
            // cannot make a later statement of the group fail as busy.
            run(&mut conn, "BEGIN IMMEDIATE").await?;
            turn.conn = Some(conn);
            turn.outcome = Some(watch::channel(None).0);
        }
        Ok(Member { turn: Some(turn), waiting: self.waiting.clone(), first, writes: Writes::Nothing })
    }
}

impl Member {
    /// The writer connection, for reads.
    pub fn conn(&mut self) -> &mut SqliteConnection {
        self.turn
            .as_mut()
            .and_then(|turn| turn.conn.as_deref_mut())
            .expect("a member holds the open group's connection")
    }

    /// The writer connection, for a write. Unless it is the member's `last` write (nothing
    /// after it can fail the transaction but the write itself), it goes inside the member's
    /// savepoint, begun here, so that a later failure can undo it alone.
    pub async fn writing(&mut self, last: bool) -> StoreResult<&mut SqliteConnection> {
        if self.writes == Writes::Nothing {
            if last || self.first {
                self.writes = Writes::Bare;
            } else {
                // Counted as begun before it is: a caller that stops waiting here leaves a
                // savepoint that may exist, and a rollback to one that does not fails the group
                // (as safe as it gets). On failure the dropped member ends its turn like any
                // other that did not commit.
                self.writes = Writes::InSavepoint;
                run(self.conn(), "SAVEPOINT member").await?;
            }
        }
        Ok(self.conn())
    }

    /// Keeps this member's writes in the group and waits until the group has committed.
    pub async fn commit(mut self) -> StoreResult<()> {
        let turn = self.turn.take().expect("a member ends once");
        let outcome = end(turn, true, self.writes, self.waiting.clone()).await?;
        outcome.expect("waited for an outcome").map_err(StoreError::CommitFailed)
    }

    /// Rolls back this member's writes and waits until its group has ended: what the caller
    /// answers may rest on the writes of the members before it.
    pub async fn rollback(mut self) {
        let turn = self.turn.take().expect("a member ends once");
        let _ = end(turn, false, self.writes, self.waiting.clone()).await;
    }
}

/// Ends a member's turn in a task of its own (a caller that stops waiting must not leave the
/// group open, nor the members before it waiting) and waits for the group's outcome.
async fn end(
    turn: OwnedMutexGuard<Group>,
    keep: bool,
    writes: Writes,
    waiting: Arc<AtomicUsize>,
) -> StoreResult<Outcome> {
    let ended = tokio::spawn(end_turn(turn, keep, writes, waiting));
    let mut outcome = ended.await.map_err(|_| abandoned())??;
    let settled = outcome.wait_for(Option::is_some).await.map_err(|_| abandoned())?.clone();
    Ok(settled)
}

impl Drop for Member {
    /// Rolls back this member's writes (a transaction dropped without commit).
    fn drop(&mut self) {
        let Some(mut turn) = self.turn.take() else { return };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(end_turn(turn, false, self.writes, self.waiting.clone()));
            }
            // No runtime to roll back on (the process is ending): close the connection, which
            // rolls the whole group back, rather than let anyone write on in it.
            Err(_) => {
                if let Some(conn) = turn.conn.take() {
                    drop(conn.detach());
                }
                *turn = Group::default();
            }
        }
    }
}

/// Ends a member's turn, keeping or rolling back its writes, and commits the group when
/// nobody else is waiting for the writer or it is full. Returns where the member hears the
/// group's outcome, or why its own writes could not be kept.
fn end_turn(
    mut turn: OwnedMutexGuard<Group>,
    keep: bool,
    writes: Writes,
    waiting: Arc<AtomicUsize>,
) -> BoxFuture<'static, StoreResult<watch::Receiver<Outcome>>> {
    Box::pin(async move {
        let outcome = turn.outcome.as_ref().expect("an open group has an outcome").subscribe();
        let conn = turn.conn.as_deref_mut().expect("an open group has a connection");
        let in_savepoint = writes == Writes::InSavepoint;
        let kept = if keep && in_savepoint { run(conn, "RELEASE member").await } else { Ok(()) };
        if in_savepoint && (!keep || kept.is_err()) {
            let rolled_back = rollback_member(conn).await;
            if let Err(error) = rolled_back {
                // The savepoint's state is unknown: nothing of the group can be trusted.
                finish(&mut turn, "ROLLBACK", Err(format!("a member's rollback failed: {error}"))).await;
            }
        }
        if !keep && writes == Writes::Bare {
            let reason = "a transaction of the group failed partway through writing".to_string();
            finish(&mut turn, "ROLLBACK", Err(reason)).await;
        }
        if turn.conn.is_some() {
            turn.turns += 1;
            if waiting.load(Ordering::Acquire) == 0 || turn.turns >= MAX_MEMBERS {
                finish(&mut turn, "COMMIT", Ok(())).await;
            }
        }
        kept?;
        Ok(outcome)
    })
}

/// Ends the open group with `statement` (`COMMIT` or `ROLLBACK`) and tells its members how it
/// went: `Ok` only when `intended` was and the statement succeeded.
async fn finish(turn: &mut Group, statement: &'static str, intended: Result<(), String>) {
    let Some(mut conn) = turn.conn.take() else { return };
    let ended = run(&mut conn, statement).await;
    if ended.is_err() && run(&mut conn, "ROLLBACK").await.is_err() {
        // Still in a transaction it cannot end: the connection must not go back to the pool.
        drop(conn.detach());
    }
    let result = match (intended, ended) {
        (Ok(()), Ok(())) => Ok(()),
        (Err(reason), _) => Err(reason),
        (Ok(()), Err(error)) => Err(error.to_string()),
    };
    if let Some(outcome) = turn.outcome.take() {
        outcome.send_replace(Some(result));
    }
    turn.turns = 0;
}

/// One transaction counted as waiting for its turn, for as long as this lives (a caller that
/// stops waiting must not keep the group open).
struct Waiter<'a>(&'a AtomicUsize);

impl<'a> Waiter<'a> {
    fn count(waiting: &'a AtomicUsize) -> Self {
        waiting.fetch_add(1, Ordering::AcqRel);
        Waiter(waiting)
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Runs a statement without parameters on the writer connection.
async fn run(conn: &mut SqliteConnection, sql: &'static str) -> Result<(), sqlx::Error> {
    sqlx::query(sql).execute(conn).await.map(drop)
}

/// Undoes a member's writes and ends its savepoint.
async fn rollback_member(conn: &mut SqliteConnection) -> Result<(), sqlx::Error> {
    run(conn, "ROLLBACK TO member").await?;
    run(conn, "RELEASE member").await
}

fn abandoned() -> StoreError {
    StoreError::CommitFailed("the group commit was abandoned".into())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};

    use super::*;

    /// A gate on a fresh database with one table, and a reader pool beside it.
    async fn gate() -> (WriterGate, SqlitePool, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temp dir");
        let options = SqliteConnectOptions::new()
            .filename(dir.path().join("group.db"))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal);
        let writers = SqlitePoolOptions::new().max_connections(1).connect_with(options.clone()).await.expect("writer");
        sqlx::query("CREATE TABLE t (name TEXT NOT NULL)").execute(&writers).await.expect("table");
        let readers = SqlitePoolOptions::new().connect_with(options.read_only(true)).await.expect("readers");
        (WriterGate::new(writers), readers, dir)
    }

    /// Inserts `name` as a write the member may still fail after.
    async fn insert(member: &mut Member, name: &str) {
        write(member, name, false).await;
    }

    async fn write(member: &mut Member, name: &str, last: bool) {
        let conn = member.writing(last).await.expect("writer");
        sqlx::query("INSERT INTO t (name) VALUES ($1)").bind(name).execute(conn).await.expect("insert");
    }

    async fn stored(readers: &SqlitePool) -> Vec<String> {
        sqlx::query_scalar("SELECT name FROM t ORDER BY name").fetch_all(readers).await.expect("select")
    }

    /// Joins the gate in a task of its own, returning once that task waits for its turn.
    async fn queue_member(gate: &WriterGate) -> tokio::task::JoinHandle<Member> {
        let waiting_before = gate.waiting.load(Ordering::Acquire);
        let queued = gate.clone();
        let joined = tokio::spawn(async move { queued.join().await.expect("join") });
        while gate.waiting.load(Ordering::Acquire) == waiting_before {
            tokio::task::yield_now().await;
        }
        joined
    }

    /// A group's first member, having inserted "first", and the next transaction queued.
    async fn first_and_next(gate: &WriterGate) -> (Member, tokio::task::JoinHandle<Member>) {
        let mut first = gate.join().await.expect("join");
        insert(&mut first, "first").await;
        (first, queue_member(gate).await)
    }

    /// A group of three turns: the first member inserted "first" and committed (it waits for
    /// the group), the second holds the writer having inserted "second", a third waits.
    async fn three_turns(
        gate: &WriterGate,
    ) -> (tokio::task::JoinHandle<StoreResult<()>>, Member, tokio::task::JoinHandle<Member>) {
        let (first, second) = first_and_next(gate).await;
        // Someone waits, so the first member's commit hands the writer on and waits itself.
        let first_commit = tokio::spawn(first.commit());
        let mut second = second.await.expect("second joins");
        insert(&mut second, "second").await;
        let third = queue_member(gate).await;
        (first_commit, second, third)
    }

    /// Waits for `task`, failing the test when it takes seconds (a hung group).
    async fn settled<T>(task: tokio::task::JoinHandle<T>) -> T {
        tokio::time::timeout(Duration::from_secs(5), task).await.expect("the group settles").expect("task")
    }

    #[tokio::test]
    async fn a_lone_member_commits_at_once() {
        let (gate, readers, _dir) = gate().await;
        let mut member = gate.join().await.expect("join");
        insert(&mut member, "alone").await;
        member.commit().await.expect("commit");
        assert_eq!(stored(&readers).await, ["alone"]);
    }

    #[tokio::test]
    async fn members_answer_after_the_group_commit_and_a_rolled_back_one_leaves_the_others() {
        let (gate, readers, _dir) = gate().await;
        let (first_commit, second, third) = three_turns(&gate).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!first_commit.is_finished(), "the first member answered before its group committed");
        assert!(stored(&readers).await.is_empty(), "readers saw writes of an open group");
        drop(second); // rolls back its own insert only
        let mut third = third.await.expect("third joins");
        insert(&mut third, "third").await;
        third.commit().await.expect("the group commits");
        settled(first_commit).await.expect("commit");
        assert_eq!(stored(&readers).await, ["first", "third"]);
    }

    #[tokio::test]
    async fn a_member_that_fails_after_its_last_write_fails_its_group() {
        let (gate, readers, _dir) = gate().await;
        let (first, second) = first_and_next(&gate).await;
        let first_commit = tokio::spawn(first.commit());
        let mut second = second.await.expect("second joins");
        write(&mut second, "second", true).await; // no savepoint to undo it alone
        let third = queue_member(&gate).await;
        second.rollback().await;
        let failed = settled(first_commit).await;
        assert!(matches!(failed, Err(StoreError::CommitFailed(_))), "{failed:?}");
        let mut third = third.await.expect("third joins a new group");
        assert!(third.first, "the member after a rolled-back group opens the next one");
        insert(&mut third, "third").await;
        third.commit().await.expect("the new group commits");
        assert_eq!(stored(&readers).await, ["third"]);
    }

    #[tokio::test]
    async fn a_first_member_that_fails_leaves_nothing() {
        let (gate, readers, _dir) = gate().await;
        let (first, second) = first_and_next(&gate).await;
        assert_eq!(first.writes, Writes::Bare, "the group's first member needs no savepoint");
        first.rollback().await;
        let mut second = second.await.expect("second joins");
        write(&mut second, "second", true).await;
        second.commit().await.expect("commit");
        assert_eq!(stored(&readers).await, ["second"]);
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_does_not_keep_the_group_open() {
        let (gate, readers, _dir) = gate().await;
        let (first, gave_up) = first_and_next(&gate).await;
        let first_commit = tokio::spawn(first.commit());
        gave_up.abort(); // its client hung up while it waited for the writer
        settled(first_commit).await.expect("commit");
        assert_eq!(stored(&readers).await, ["first"]);
    }

    #[tokio::test]
    async fn a_rollback_waits_for_its_group() {
        let (gate, readers, _dir) = gate().await;
        let (first_commit, second, third) = three_turns(&gate).await;
        let second_rollback = tokio::spawn(second.rollback());
        let mut third = third.await.expect("third joins");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!second_rollback.is_finished(), "a rollback answered before its group ended");
        insert(&mut third, "third").await;
        third.commit().await.expect("the group commits");
        settled(second_rollback).await;
        settled(first_commit).await.expect("commit");
        assert_eq!(stored(&readers).await, ["first", "third"]);
    }

    #[tokio::test]
    async fn a_group_closes_when_full() {
        let (gate, readers, _dir) = gate().await;
        let mut commits = Vec::new();
        let mut next = gate.join().await.expect("join");
        for n in 0..MAX_MEMBERS {
            insert(&mut next, &format!("member {n:02}")).await;
            let queued = queue_member(&gate).await;
            commits.push(tokio::spawn(next.commit()));
            next = queued.await.expect("next joins");
        }
        // The group closed with its last member although one more waits for the writer.
        for commit in commits {
            let answered = tokio::time::timeout(Duration::from_secs(5), commit).await;
            answered
                .expect("a full group commits without waiting for the next member")
                .expect("member")
                .expect("commit");
        }
        assert_eq!(stored(&readers).await.len(), MAX_MEMBERS);
        drop(next);
    }
}
