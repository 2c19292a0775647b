//! The real `hearth` binary as a process of its own, for what only a process shows: a
//! `kill -9`, its log lines.

use std::process::{Child, Command};
use std::time::Duration;

/// A running `hearth serve` on a free port of 127.0.0.1.
pub struct Process {
    pub child: Child,
    /// `127.0.0.1:<port>`.
    pub listen: String,
}

impl Process {
    /// Starts `hearth [global] serve --listen … --database URL [flags]`, with `configure`
    /// setting what else the command needs (environment, output), and waits until it is ready.
    pub async fn serve(
        database_url: &str,
        global: &[&str],
        flags: &[&str],
        configure: impl FnOnce(&mut Command),
    ) -> Process {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let listen = format!("127.0.0.1:{port}");
        let mut command = Command::new(env!("CARGO_BIN_EXE_hearth"));
        command.args(global).args(["serve", "--listen", &listen, "--database", database_url]).args(flags);
        // A PostgreSQL node's spool not in the user's state directory: those a killed test
        // leaves are of databases gone with it (a flag overrides this).
        if database_url.starts_with("postgres") {
            command.env("HEARTH_AUDIT_SPOOL_DIR", std::env::temp_dir().join("hearth-test-audit-spool"));
        }
        configure(&mut command);
        let child = command.spawn().expect("start hearth");
        let client = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !client.get(format!("http://{listen}/readyz")).send().await.is_ok_and(|r| r.status() == 200) {
            assert!(tokio::time::Instant::now() < deadline, "hearth did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Process { child, listen }
    }

    /// The FHIR base.
    pub fn base(&self) -> String {
        format!("http://{}/fhir", self.listen)
    }

    /// SIGKILL, then what it wrote to its piped stdout and stderr.
    pub fn kill_and_collect(&mut self) -> std::process::Output {
        use std::io::Read;
        self.kill();
        let mut output =
            std::process::Output { status: self.child.wait().expect("reaped"), stdout: Vec::new(), stderr: Vec::new() };
        if let Some(mut stdout) = self.child.stdout.take() {
            stdout.read_to_end(&mut output.stdout).expect("stdout");
        }
        if let Some(mut stderr) = self.child.stderr.take() {
            stderr.read_to_end(&mut output.stderr).expect("stderr");
        }
        output
    }

    /// SIGKILL: no shutdown, nothing flushed.
    pub fn kill(&mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("reaped");
    }
}

impl Drop for Process {
    /// A test that ends (or fails) leaves no server behind.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
