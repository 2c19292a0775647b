//! The `hearth` command line: parses arguments and hands over to the library.

use clap::Parser;
use hearth::auth::proxy::ProxyPolicy;
use hearth::auth::PasswordCost;
use hearth::config::{AuditCommand, AuditMode, AuthMode, Cli, Command, LogFormat};
use hearth::model::upload::UploadRules;
use hearth::portal::messaging::MessagingSettings;
use hearth::portal::scheduling::SchedulingSettings;
use hearth::rest::profiles::ProfilePolicy;
use hearth::rest::SubscriptionSettings;
use hearth::search::params::Paging;
use hearth::server::{Hearth, Settings};
use hearth::subscriptions::endpoint::EndpointPolicy;
use hearth::validation::Definitions;
use std::path::Path;
use tracing_subscriber::EnvFilter;

/// mimalloc instead of the system allocator: a request allocates many small JSON values and
/// index rows, and glibc's allocator spent about a fifth of ingest time (perf) on them.
/// Built without transparent huge pages (`no_thp`): with them, every page mimalloc purged and
/// reused was faulted back in as a 2 MiB page the kernel zeroed, a fifth of ingest CPU (perf),
/// and peak RSS was 25 MB higher.
/// With `override` it also serves the C code's `malloc` (SQLite's): glibc's allocator was a
/// seventh of the SQLite writer's time during ingest (`malloc_consolidate`, `_int_free`…).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    match cli.log_format {
        LogFormat::Text => tracing_subscriber::fmt().with_env_filter(filter).init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_env_filter(filter)
            .init(),
    }
    match cli.command {
        Command::Serve {
            listen,
            auth,
            max_body_bytes,
            default_count,
            max_count,
            hold_seconds,
            cancel_cutoff,
            publish_slots,
            max_upload_bytes,
            upload_types,
            message_recipients,
            static_dir,
            require_profile,
            accept_unknown_profiles,
            profiles,
            invite_ttl,
            smtp_url,
            mail_from,
            parent_access_until_age,
            allow_http_rest_hooks,
            allow_private_rest_hooks,
            appointment_reminder_hours,
            subscription_event_days,
            audit_retention_days,
            audit_spool_dir,
            export_dir,
            export_ttl,
            export_max_running,
            export_file_resources,
            export_workers,
            audit,
        } => {
            if default_count > max_count {
                anyhow::bail!("--default-count ({default_count}) cannot be larger than --max-count ({max_count})");
            }
            if audit == AuditMode::Off && !listen.ip().is_loopback() {
                anyhow::bail!("--audit off is for benchmarks and only listens on a loopback address, not {listen}");
            }
            if auth == AuthMode::Off && !listen.ip().is_loopback() {
                anyhow::bail!(
                    "--auth off is for local experiments and only listens on a loopback address, not {listen}"
                );
            }
            // DESIGN.md: the base URL defaults to http://localhost:8080 for the default listen address.
            let base_url = cli.base_url.unwrap_or_else(|| {
                if listen.ip().is_loopback() {
                    format!("http://localhost:{}", listen.port())
                } else {
                    format!("http://{listen}")
                }
            });
            let paging = Paging { default_count: default_count as usize, max_count: max_count as usize };
            let scheduling = SchedulingSettings {
                hold: time::Duration::seconds(i64::from(hold_seconds)),
                cancel_cutoff,
                publish_slots,
            };
            let settings = Settings {
                max_body_bytes,
                paging,
                smart: auth == AuthMode::Smart,
                scheduling,
                uploads: UploadRules {
                    max_bytes: max_upload_bytes,
                    types: upload_types.iter().map(|t| t.trim().to_ascii_lowercase()).collect(),
                },
                messaging: MessagingSettings {
                    recipients: message_recipients.iter().map(|r| r.trim().to_string()).collect(),
                },
                static_dir,
                profiles: profile_policy(profiles.as_deref(), &require_profile, accept_unknown_profiles)?,
                invite_ttl,
                mailer: mailer(smtp_url, mail_from)?,
                proxy: ProxyPolicy { parent_access_until_age: Some(parent_access_until_age).filter(|&age| age > 0) },
                subscriptions: SubscriptionSettings {
                    endpoints: EndpointPolicy {
                        allow_http: allow_http_rest_hooks,
                        allow_private: allow_private_rest_hooks,
                    },
                    appointment_reminder_lead: std::time::Duration::from_secs(appointment_reminder_hours * 3600),
                    event_retention: time::Duration::days(subscription_event_days.into()),
                    ..SubscriptionSettings::default()
                },
                audit: hearth::audit::AuditSettings {
                    record: audit == AuditMode::On,
                    retention: audit_retention_days.map(|days| time::Duration::days(days.into())),
                    spool_dir: audit_spool_dir,
                },
                export: hearth::export::ExportSettings {
                    dir: export_dir,
                    ttl: export_ttl,
                    max_running: export_max_running,
                    resources_per_file: export_file_resources,
                    workers: export_workers,
                },
                ..Settings::new(&base_url)
            };
            let hearth = Hearth::open(&cli.database, settings).await?;
            hearth.service().recorder().start().await.map_err(|error| anyhow::anyhow!("the audit spool: {error}"))?;
            let listener = tokio::net::TcpListener::bind(listen).await?;
            tracing::info!(%listen, fhir_base = %format!("{base_url}/fhir"), "Hearth is serving");
            hearth.serve(listener).await?;
        }
        Command::Import { paths, jobs } => {
            let base_url = cli.base_url.unwrap_or_else(|| "http://localhost:8080".to_string());
            let files = hearth::import::files_to_import(&paths)?;
            let hearth = Hearth::open(&cli.database, Settings::new(&base_url)).await?;
            let summary = hearth::import::import_files(hearth.service(), &files, usize::from(jobs)).await?;
            println!("{summary}");
            if summary.failed_entries > 0 {
                std::process::exit(1);
            }
        }
        Command::Export { out, types, since } => export(&cli.database, &out, types, since.as_deref()).await?,
        Command::Client { command } => {
            let store = hearth::store::open_shared(&cli.database).await?;
            println!("{}", hearth::admin::client(store.as_ref(), command).await?);
        }
        Command::User { command } => {
            let store = hearth::store::open_shared(&cli.database).await?;
            let base_url = cli.base_url.as_deref().unwrap_or("http://localhost:8080");
            println!("{}", hearth::admin::user(store.as_ref(), command, PasswordCost::Standard, base_url).await?);
        }
        Command::Key { command } => {
            let store = hearth::store::open_shared(&cli.database).await?;
            println!("{}", hearth::admin::key(store.as_ref(), command).await?);
        }
        Command::Audit { command: AuditCommand::Verify } => {
            let store = hearth::store::open_shared(&cli.database).await?;
            hearth::audit::chain::seal(store.as_ref()).await?;
            let verification = hearth::audit::chain::verify(store.as_ref()).await?;
            let ((anchor, anchor_hash), (head, head_hash)) = (&verification.anchor, &verification.head);
            println!("anchor: position {anchor}, hash {anchor_hash:?}");
            match verification.first_break {
                None => {
                    println!("head: position {head}, hash {head_hash}");
                    println!("audit chain intact: {} events checked", verification.checked)
                }
                Some((position, why)) => {
                    println!(
                        "audit chain broken at position {position}: {why} ({} events before it hold)",
                        verification.checked
                    );
                    std::process::exit(1);
                }
            }
        }
        Command::Profiles { command } => println!("{}", hearth::admin::profiles(command)?),
        Command::Synth { patients, seed, out } => {
            let today = time::OffsetDateTime::now_utc().date();
            let summary = hearth::synth::write_bundles(&out, patients, seed, today)?;
            println!("wrote {} bundles with {} resources to {}", summary.bundles, summary.resources, out.display());
        }
    }
    Ok(())
}

/// `hearth export`: the database's resources into `out`, with a running count, then what was
/// written and how fast.
async fn export(database: &str, out: &Path, types: Vec<String>, since: Option<&str>) -> anyhow::Result<()> {
    if let Some(unknown) = types.iter().find(|t| !hearth::model::validate::is_resource_type(t)) {
        anyhow::bail!("--type: '{unknown}' is not a FHIR R4 resource type");
    }
    let since = since
        .map(|text| {
            hearth::model::resource::parse_instant(text)
                .ok_or_else(|| anyhow::anyhow!("--since: '{text}' is not an instant (2026-01-01T00:00:00Z)"))
        })
        .transpose()?;
    let store = hearth::store::open_shared(database).await?;
    let hearth = Hearth::with_store(store, None, Settings::new("http://localhost:8080"));
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(indicatif::ProgressStyle::with_template("{spinner} {pos} resources [{elapsed_precise}, {per_sec}]")?);
    let started = std::time::Instant::now();
    let manifest =
        hearth.service().export_to(out, types, since, &|n| bar.set_position(n)).await.map_err(anyhow::Error::msg)?;
    bar.finish_and_clear();
    let files = manifest["output"].as_array().map(Vec::len).unwrap_or(0)
        + manifest["deleted"].as_array().map(Vec::len).unwrap_or(0);
    let resources: u64 = manifest["output"].as_array().into_iter().flatten().filter_map(|f| f["count"].as_u64()).sum();
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "exported {resources} resources in {files} files to {} in {seconds:.1} s ({:.0} resources/s); transactionTime {}",
        out.display(),
        resources as f64 / seconds.max(1e-9),
        manifest["transactionTime"].as_str().unwrap_or_default()
    );
    Ok(())
}

/// The mailer of `--smtp-url` and `--mail-from`; says at start-up when no e-mail is sent.
fn mailer(smtp_url: Option<String>, from: String) -> anyhow::Result<hearth::mail::Mailer> {
    let mailer =
        hearth::mail::Mailer::new(&hearth::mail::MailSettings { smtp_url, from }).map_err(anyhow::Error::msg)?;
    if !mailer.sends() {
        tracing::info!("no --smtp-url: no e-mail is sent; $invite answers registration links to hand over");
    }
    Ok(mailer)
}

/// What the operator asks of profiles: the packages of `--profiles DIR`, and
/// `--require-profile Type=url,…` as (type, url) pairs, each a profile of that type the server
/// knows from `profiles/` or those packages.
fn profile_policy(dir: Option<&Path>, required: &[String], accept_unknown: bool) -> anyhow::Result<ProfilePolicy> {
    let packages = match dir {
        Some(dir) => hearth::validation::packages::packages_in(dir).map_err(anyhow::Error::msg)?,
        None => Vec::new(),
    };
    let resources: Vec<serde_json::Value> = packages.into_iter().flat_map(|(_, p)| p.resources).collect();
    let definitions = Definitions::with(&resources.iter().collect::<Vec<_>>());
    let required = required
        .iter()
        .map(|value| {
            let Some((resource_type, url)) = value.trim().split_once('=') else {
                anyhow::bail!("--require-profile takes Type=canonical-url, not '{value}'");
            };
            if !definitions.profiles_of(resource_type).contains(&url) {
                anyhow::bail!("--require-profile: {url} is no profile of {resource_type} this server knows");
            }
            Ok((resource_type.to_string(), url.to_string()))
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(ProfilePolicy { required, accept_unknown, packages: resources.into() })
}
