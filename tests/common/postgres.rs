//! A throwaway PostgreSQL cluster for the tests of one test binary.
//!
//! Set `HEARTH_TEST_POSTGRES` to an admin URL (`postgres://user@host:port/postgres`) to use an
//! existing server. Otherwise the first test that needs PostgreSQL runs `initdb` in a temporary
//! directory, starts `postgres` on a free loopback port, and spawns a watchdog that stops the
//! cluster and removes the directory as soon as the test process is gone (pass or fail).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use sqlx::Connection;
use tokio::sync::OnceCell;

static ADMIN_URL: OnceCell<String> = OnceCell::const_new();
static NEXT_DATABASE: AtomicUsize = AtomicUsize::new(0);

/// Creates an empty database and returns its URL.
pub async fn fresh_database() -> String {
    let admin = ADMIN_URL
        .get_or_init(|| async { std::env::var("HEARTH_TEST_POSTGRES").unwrap_or_else(|_| start_cluster()) })
        .await;
    let name = format!("hearth_test_{}_{}", std::process::id(), NEXT_DATABASE.fetch_add(1, Ordering::SeqCst));
    let mut connection = sqlx::PgConnection::connect(admin).await.expect("connect to the PostgreSQL test cluster");
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut connection).await.expect("create a test database");
    let (server, _) = admin.rsplit_once('/').expect("admin URL ends with a database name");
    format!("{server}/{name}")
}

fn binaries() -> PathBuf {
    let mut candidates: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries.filter_map(Result::ok).map(|e| e.path().join("bin")).filter(|p| p.join("initdb").exists()).collect()
        })
        .unwrap_or_default();
    candidates.sort();
    candidates
        .pop()
        .expect("PostgreSQL server binaries not found under /usr/lib/postgresql (apt-get install postgresql)")
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0\n")).unwrap_or(false)
}

/// Runs a PostgreSQL binary, as the `postgres` user when we are root (PostgreSQL refuses root).
fn run_pg(binary: &Path, args: &[&str]) {
    let status = if is_root() {
        Command::new("runuser").args(["-u", "postgres", "--"]).arg(binary).args(args).stdout(Stdio::null()).status()
    } else {
        Command::new(binary).args(args).stdout(Stdio::null()).status()
    }
    .expect("run a PostgreSQL binary");
    assert!(status.success(), "{} {args:?} failed", binary.display());
}

fn start_cluster() -> String {
    let bin = binaries();
    let dir = std::env::temp_dir().join(format!("hearth-pg-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the cluster directory");
    if is_root() {
        let status =
            Command::new("chown").args(["-R", "postgres", &dir.display().to_string()]).status().expect("chown");
        assert!(status.success(), "chown the cluster directory to postgres");
    }
    let data = dir.join("data");
    let data_text = data.display().to_string();
    run_pg(&bin.join("initdb"), &["-D", &data_text, "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"]);
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
    let options = format!(
        "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300",
        dir.display()
    );
    let log = dir.join("postgres.log").display().to_string();
    run_pg(&bin.join("pg_ctl"), &["-D", &data_text, "-o", &options, "-l", &log, "-w", "start"]);
    spawn_watchdog(&bin, &dir, &data_text);
    format!("postgres://postgres@127.0.0.1:{port}/postgres")
}

/// Stops the cluster and removes its directory once this process has exited.
fn spawn_watchdog(bin: &Path, dir: &Path, data: &str) {
    let pg_ctl = bin.join("pg_ctl").display().to_string();
    let stop = if is_root() {
        format!("runuser -u postgres -- {pg_ctl} -D {data} -m immediate stop")
    } else {
        format!("{pg_ctl} -D {data} -m immediate stop")
    };
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; {stop} >/dev/null 2>&1; rm -rf {dir}",
        pid = std::process::id(),
        dir = dir.display()
    );
    // The watchdog must outlive this process, so it is deliberately never waited for.
    #[allow(clippy::zombie_processes)]
    Command::new("setsid").args(["sh", "-c", &script]).spawn().expect("spawn the cluster watchdog");
}
