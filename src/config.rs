//! The command line (every flag also read from `HEARTH_<FLAG>`).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// Hearth: a FHIR R4 server.
#[derive(Debug, Parser)]
#[command(name = "hearth", version, about)]
pub struct Cli {
    /// Database URL: `sqlite://FILE` (created if missing) or `postgres://…`.
    #[arg(long, global = true, env = "HEARTH_DATABASE", default_value = "sqlite://hearth.db")]
    pub database: String,
    /// Public base URL of the server; the FHIR base is this plus `/fhir`. Defaults to
    /// `http://localhost:<port>` on a loopback listen address, else `http://<listen address>`.
    #[arg(long, global = true, env = "HEARTH_BASE_URL")]
    pub base_url: Option<String>,
    /// How log lines are written: `text` for people, `json` for log collectors (one object
    /// per line). `RUST_LOG` chooses what is logged (`info` by default).
    #[arg(long, global = true, env = "HEARTH_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line: timestamp, level, message, the request's id, method, route,
    /// client id, status and latency.
    Json,
}

/// How requests are authorised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuthMode {
    /// SMART on FHIR bearer tokens from the built-in authorization server.
    Smart,
    /// No authorisation: loopback listen addresses only, for local experiments.
    Off,
}

/// Whether AuditEvents are recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuditMode {
    On,
    /// Nothing recorded: loopback listen addresses only, for benchmarks.
    Off,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server.
    Serve {
        /// Address to listen on.
        #[arg(long, env = "HEARTH_LISTEN", default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Authorisation mode.
        #[arg(long, env = "HEARTH_AUTH", value_enum, default_value = "smart")]
        auth: AuthMode,
        /// Largest accepted request body, in bytes.
        #[arg(long, env = "HEARTH_MAX_BODY_BYTES", default_value_t = 32 * 1024 * 1024)]
        max_body_bytes: usize,
        /// Page size of searches and histories that give no `_count`.
        #[arg(long, env = "HEARTH_DEFAULT_COUNT", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
        default_count: u32,
        /// Largest page size a `_count` may ask for (larger ones are cut to it).
        #[arg(long, env = "HEARTH_MAX_COUNT", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
        max_count: u32,
        /// How many seconds `$hold` keeps a slot for a patient before the hold expires by itself.
        #[arg(long, env = "HEARTH_HOLD_SECONDS", default_value_t = 600, value_parser = clap::value_parser!(u32).range(1..))]
        hold_seconds: u32,
        /// How close to its start a patient may no longer cancel an appointment online
        /// (`24h`, `90m`, `1h 30m`); patients may cancel until the start when not given.
        #[arg(long, env = "HEARTH_CANCEL_CUTOFF", value_parser = parse_duration)]
        cancel_cutoff: Option<time::Duration>,
        /// Serve `$bulk-publish` (slot availability, SMART Scheduling Links) without a token.
        #[arg(long, env = "HEARTH_PUBLISH_SLOTS")]
        publish_slots: bool,
        /// Largest raw upload to Binary (a patient's PDF or photo), in bytes.
        #[arg(long, env = "HEARTH_MAX_UPLOAD_BYTES", default_value_t = crate::model::upload::DEFAULT_MAX_UPLOAD_BYTES)]
        max_upload_bytes: usize,
        /// Media types a raw upload to Binary may have, comma-separated.
        #[arg(long, env = "HEARTH_UPLOAD_TYPES", value_delimiter = ',',
              default_value = crate::model::upload::DEFAULT_UPLOAD_TYPES)]
        upload_types: Vec<String>,
        /// Whom every patient may message besides their care team, comma-separated
        /// references (`Organization/front-desk`).
        #[arg(long, env = "HEARTH_MESSAGE_RECIPIENTS", value_delimiter = ',')]
        message_recipients: Vec<String>,
        /// A directory whose files are served at /static/ (a portal web app on the API's
        /// origin).
        #[arg(long, env = "HEARTH_STATIC_DIR")]
        static_dir: Option<PathBuf>,
        /// Profiles every resource of a type must claim and conform to, comma-separated
        /// `Type=canonical-url` (`Patient=http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient`).
        #[arg(long, env = "HEARTH_REQUIRE_PROFILE", value_delimiter = ',')]
        require_profile: Vec<String>,
        /// Accept resources claiming a profile the server does not carry (unchecked) instead
        /// of refusing them.
        #[arg(long, env = "HEARTH_ACCEPT_UNKNOWN_PROFILES")]
        accept_unknown_profiles: bool,
        /// A folder of FHIR packages (`.tgz`, as `hearth profiles add` puts them there) whose
        /// profiles, value sets and code systems are used besides the carried ones.
        #[arg(long, env = "HEARTH_PROFILES")]
        profiles: Option<PathBuf>,
        /// How long the registration link of an invitation (`$invite`) is valid (`7d`, `48h`).
        #[arg(long, env = "HEARTH_INVITE_TTL", default_value = "7d", value_parser = parse_duration)]
        invite_ttl: time::Duration,
        /// The SMTP server e-mail goes through: `smtp://host:port` (`?tls=required` for
        /// STARTTLS) or `smtps://host:port`; credentials in the URL or from
        /// `HEARTH_SMTP_USERNAME` and `HEARTH_SMTP_PASSWORD`. Without it no e-mail is sent.
        #[arg(long, env = "HEARTH_SMTP_URL")]
        smtp_url: Option<String>,
        /// The sender of e-mail.
        #[arg(long, env = "HEARTH_MAIL_FROM", default_value = "Hearth <no-reply@localhost>")]
        mail_from: String,
        /// The age at which a parent's or guardian's proxy access (a RelatedPerson whose
        /// relationship is a parent or guardian code) ends, unless the RelatedPerson's period
        /// starts on or after that birthday; 0 for never.
        #[arg(long, env = "HEARTH_PARENT_ACCESS_UNTIL_AGE", default_value_t = 18)]
        parent_access_until_age: u8,
        /// Accept rest-hook subscription endpoints on plain http (not only https) on hosts other
        /// than loopback: for a private network only, since notifications carry health data.
        #[arg(long, env = "HEARTH_ALLOW_HTTP_REST_HOOKS")]
        allow_http_rest_hooks: bool,
        /// Accept rest-hook endpoints on loopback, private-network and link-local addresses
        /// (by default only public addresses, checked on the URL and on every address its host
        /// resolves to): for receivers on the server's own network, which then any subscriber
        /// can make the server post to.
        #[arg(long, env = "HEARTH_ALLOW_PRIVATE_REST_HOOKS")]
        allow_private_rest_hooks: bool,
        /// How many hours before a booked appointment starts its reminder is sent to
        /// subscriptions of the appointment-reminder topic that do not set their own
        /// (extension reminder-hours-before), 1 to 336.
        #[arg(long, env = "HEARTH_APPOINTMENT_REMINDER_HOURS", default_value_t = 24,
              value_parser = clap::value_parser!(u64).range(1..=336))]
        appointment_reminder_hours: u64,
        /// How many days subscription events are kept (for `$events` and for delivery to a
        /// receiver that is down), delivered or not.
        #[arg(long, env = "HEARTH_SUBSCRIPTION_EVENT_DAYS", default_value_t = 30,
              value_parser = clap::value_parser!(u32).range(1..))]
        subscription_event_days: u32,
        /// Days AuditEvents are kept; older ones are removed hourly, the hash of the last one
        /// removed kept as the chain's anchor. Without it, they are kept forever.
        #[arg(long, env = "HEARTH_AUDIT_RETENTION_DAYS", value_parser = clap::value_parser!(u32).range(1..))]
        audit_retention_days: Option<u32>,
        /// Where this node appends the AuditEvents of reads before answering them, until they
        /// are committed (ADR 21). Local, persistent storage; nodes may share it (each holds a
        /// file of its own, and takes over the files of its database's stopped nodes). Default:
        /// beside an SQLite file (`hearth.db.audit-spool`); for PostgreSQL, `hearth-audit-spool`
        /// in the system's temporary directory.
        #[arg(long, env = "HEARTH_AUDIT_SPOOL_DIR")]
        audit_spool_dir: Option<PathBuf>,
        /// Where bulk exports (`$export`) write their files. Nodes that share a database must
        /// share it (a shared volume). Default: beside an SQLite file (`hearth.db.exports`);
        /// for PostgreSQL, `hearth/exports` in the user's state directory.
        #[arg(long, env = "HEARTH_EXPORT_DIR")]
        export_dir: Option<PathBuf>,
        /// How long a finished export's files are kept (`1h`, `2d`).
        #[arg(long, env = "HEARTH_EXPORT_TTL", default_value = "1h", value_parser = parse_duration)]
        export_ttl: time::Duration,
        /// How many exports one client may have queued or running at once (429 beyond).
        #[arg(long, env = "HEARTH_EXPORT_MAX_RUNNING", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
        export_max_running: u32,
        /// The most resources one export file holds.
        #[arg(long, env = "HEARTH_EXPORT_FILE_RESOURCES", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
        export_file_resources: u64,
        /// How many exports this node writes at once; 0 for none (a node that only serves).
        #[arg(long, env = "HEARTH_EXPORT_WORKERS", default_value_t = 2)]
        export_workers: usize,
        /// `off` records no AuditEvents: only to measure what recording costs (`cargo bench
        /// --bench audit`); like `--auth off`, it refuses a non-loopback listen address.
        #[arg(long, env = "HEARTH_AUDIT", value_enum, default_value = "on")]
        audit: AuditMode,
    },
    /// Load transaction, batch or collection Bundles (`.json`) and `.ndjson` files.
    Import {
        /// Files, or directories searched for .json and .ndjson files; all imported in the
        /// sorted order of their paths.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Files imported at a time. Files that depend on one another need 1, which keeps
        /// their order: a conditional reference, or an ifNoneExist create, that must find
        /// what an earlier file creates.
        #[arg(long, env = "HEARTH_JOBS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
        jobs: u16,
    },
    /// Write every resource (of `--type`, changed `--since`) as NDJSON files into a new
    /// directory, as a bulk export does, from a local database (beside a running server too);
    /// `hearth import DIR` reads them back.
    Export {
        /// The directory to write (new or empty): `Type-N.ndjson` files, and
        /// `Type-deleted-N.ndjson` for deletions since `--since`.
        #[arg(long)]
        out: PathBuf,
        /// Resource types to export (all when not given).
        #[arg(long = "type", value_delimiter = ',')]
        types: Vec<String>,
        /// Only resources changed after this instant (`2026-01-01T00:00:00Z`; a transactionTime
        /// of an earlier export gives exactly what it did not see, and the deletions since).
        #[arg(long)]
        since: Option<String>,
    },
    /// Register, list and remove SMART clients.
    Client {
        #[command(subcommand)]
        command: ClientCommand,
    },
    /// Add, list, remove portal users and change their passwords.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Manage the signing keys of tokens.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Add FHIR packages (profiles and their value sets) to the folder `serve --profiles` reads.
    Profiles {
        #[command(subcommand)]
        command: ProfilesCommand,
    },
    /// Check the audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Write deterministic synthetic patients as transaction Bundles.
    Synth {
        #[arg(long, default_value_t = 10)]
        patients: usize,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        #[arg(long)]
        out: PathBuf,
    },
}

/// `hearth audit …`.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Seal what is recorded, then walk the hash chain of the AuditEvents from its anchor and
    /// report the first position that does not follow (exit status 1), or how many links hold.
    Verify,
}

/// `hearth profiles …`.
#[derive(Debug, Subcommand)]
pub enum ProfilesCommand {
    /// Check a package (`.tgz` from a FHIR package registry) and copy it into the folder.
    Add {
        /// The package file.
        package: PathBuf,
        /// The folder (created if missing).
        #[arg(long, env = "HEARTH_PROFILES")]
        profiles: PathBuf,
    },
    /// List the packages in the folder and what the server uses of them.
    List {
        #[arg(long, env = "HEARTH_PROFILES")]
        profiles: PathBuf,
    },
}

/// `hearth client …`.
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Register a client (or replace the one with the same id).
    #[command(group(clap::ArgGroup::new("credentials").required(true).args(["public", "secret_stdin", "jwks_file", "jwks_uri"])))]
    Add {
        #[arg(long)]
        client_id: String,
        /// A name shown on the login and consent pages.
        #[arg(long)]
        name: Option<String>,
        /// Redirect URIs the client may use (exact match).
        #[arg(long, num_args = 1..)]
        redirect_uri: Vec<String>,
        /// A public client (no secret; PKCE protects its codes).
        #[arg(long)]
        public: bool,
        /// Read the client secret (client_secret_basic) from standard input.
        #[arg(long)]
        secret_stdin: bool,
        /// A JWKS file with the client's public keys (private_key_jwt).
        #[arg(long)]
        jwks_file: Option<PathBuf>,
        /// The URL of the client's JWKS (private_key_jwt).
        #[arg(long)]
        jwks_uri: Option<String>,
        /// The scopes the client may be granted (space separated); any when left out.
        #[arg(long)]
        scope: Option<String>,
        /// The client's EHR launch URL.
        #[arg(long)]
        launch_uri: Option<String>,
    },
    /// List the registered clients.
    List,
    /// Remove a client.
    Remove { client_id: String },
}

/// `hearth user …`.
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a user (or replace the one with the same name).
    Add {
        #[arg(long)]
        username: String,
        /// Read the password from standard input.
        #[arg(long, required = true)]
        password_stdin: bool,
        /// The user's FHIR resource: Patient/id, Practitioner/id or RelatedPerson/id.
        #[arg(long)]
        fhir_user: String,
        /// A patient this user acts for whatever the FHIR data say (an operator's link, as
        /// Patient/id); a RelatedPerson account follows its resource without it.
        #[arg(long)]
        patient: Vec<String>,
    },
    /// List the users.
    List,
    /// Remove a user.
    Remove { username: String },
    /// Invite the person of a Patient or RelatedPerson (with a birthDate on record) to
    /// register: prints a one-time registration link.
    Invite {
        /// `Patient/id` or `RelatedPerson/id`.
        #[arg(long)]
        fhir_user: String,
        /// How long the link stays valid (`7d`, `48h`).
        #[arg(long, env = "HEARTH_INVITE_TTL", default_value = "7d", value_parser = parse_duration)]
        invite_ttl: time::Duration,
    },
    /// Print a one-time link (valid an hour) for the user to choose a new password; using it
    /// ends every session and token of the account.
    Reset { username: String },
    /// Disable an account: it signs in to nothing, and its sessions and tokens stop at once
    /// on every node.
    Disable { username: String },
    /// Enable a disabled account again (its earlier tokens stay ended).
    Enable { username: String },
    /// Let an account act through another RelatedPerson (a caregiver of several patients): it
    /// reaches that RelatedPerson's patient while the resource is active and in its period.
    Link {
        username: String,
        /// `RelatedPerson/id`.
        related_person: String,
    },
    /// Stop an account acting through a RelatedPerson; its sessions and tokens end.
    Unlink {
        username: String,
        /// `RelatedPerson/id`.
        related_person: String,
    },
    /// Change a user's password (read from standard input).
    Passwd {
        username: String,
        #[arg(long, required = true)]
        password_stdin: bool,
    },
}

/// `hearth key …`.
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Add a new signing key: new tokens are signed with it, older keys still verify.
    Rotate,
}

/// A duration such as `7d` (days of 24 hours), `24h`, `90m` or `1h 30m` (jiff's friendly format;
/// ISO 8601 `PT24H` too).
fn parse_duration(text: &str) -> Result<time::Duration, String> {
    let not_a_duration = |error: jiff::Error| format!("'{text}' is not a duration: {error}");
    // A span, so that days (`7d`) are accepted, each of 24 hours.
    let span: jiff::Span = text.parse().map_err(not_a_duration)?;
    let duration = span.to_duration(jiff::SpanRelativeTo::days_are_24_hours()).map_err(not_a_duration)?;
    if duration.is_negative() {
        return Err(format!("'{text}' is negative"));
    }
    Ok(time::Duration::new(duration.as_secs(), duration.subsec_nanos()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_sizes_are_flags() {
        let cli = Cli::try_parse_from(["hearth", "serve", "--default-count", "50", "--max-count", "200"]).unwrap();
        let Command::Serve { default_count, max_count, .. } = cli.command else { panic!("serve") };
        assert_eq!((default_count, max_count), (50, 200));
        assert!(Cli::try_parse_from(["hearth", "serve", "--max-count", "0"]).is_err());
    }

    #[test]
    fn scheduling_flags() {
        let cli = Cli::try_parse_from(["hearth", "serve", "--cancel-cutoff", "1h 30m", "--publish-slots"]).unwrap();
        let Command::Serve { cancel_cutoff, publish_slots, hold_seconds, .. } = cli.command else { panic!("serve") };
        assert_eq!(cancel_cutoff, Some(time::Duration::minutes(90)));
        assert!(publish_slots);
        assert_eq!(hold_seconds, 600);
        assert!(Cli::try_parse_from(["hearth", "serve", "--cancel-cutoff", "soon"]).is_err());
        assert!(Cli::try_parse_from(["hearth", "serve", "--cancel-cutoff", "-2h"]).is_err());
    }
}
