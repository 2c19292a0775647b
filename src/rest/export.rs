//! Bulk export jobs (ADR 22): queueing an export for its client, the workers that write its
//! files as that client, its status and manifest, its files, its cancellation and expiry.
//!
//! A job reads type by type in id order through the caller's guarded view, as of the mark
//! taken at the kick-off: first the current rows the mark sees, then, for the rows written
//! after it, the version it saw; then (for `_since`) the deletions. Lines go to part files of
//! at most `--export-file-resources` resources; each finished file is recorded with the
//! position after its last line, so a job taken over by another node resumes there.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use time::OffsetDateTime;

use super::jobs::{lease_until, JobEnd, LEASE};
use super::source::Source;
use super::view::ReadView;
use super::{store_error, Body, FhirResponse, FhirService};
use crate::auth::scope::Permission;
use crate::auth::Access;
use crate::export::files::{JobDir, PartFile};
use crate::export::manifest::manifest;
use crate::export::{
    elements_of, ExportRequest, Level, List, OutputFile, Position, Progress, SinceText, Stage, EXPIRY_JOB, JOB_KIND,
};
use crate::model::outcome::operation_outcome;
use crate::model::{ErrorKind, FhirError, Issue, IssueCode};
use crate::store::{
    AsOf, Condition, Cursor, Job, JobKinds, JobStatus, JobStep, Mark, ResourceVersion, SearchQuery, Since,
};

/// Resources read per query.
const PAGE: usize = 1000;

/// How often a running job extends its lease when no file finishes.
const HEARTBEAT: Duration = Duration::from_secs(10);

/// What a client polling a status is told to wait, and the least time between two polls.
const RETRY_AFTER_SECONDS: u32 = 2;
const POLL_SPACING: Duration = Duration::from_millis(500);

/// Why an export failed when its client's token was revoked (or its user signed out
/// everywhere) before it was written: its status says so (403), not a server failure.
const AUTHORIZATION_ENDED: &str = "the authorization the export was started with has ended (its token was revoked)";

/// How long the marks under `transactionTime`s are kept for exports `_since` them.
const MARKS_KEPT: time::Duration = time::Duration::days(30);

/// The node's export state: where files go, who polled when, and the workers' wake-up.
#[derive(Default)]
pub(super) struct Exports {
    /// The database's own directory under the export directory (found once).
    root: tokio::sync::OnceCell<PathBuf>,
    /// When each running job's status was last asked for here.
    polls: Mutex<HashMap<i64, Instant>>,
    /// Wakes this node's export workers when an export is queued here.
    queued: tokio::sync::Notify,
}

/// What an export job's parameters say of the expiry job.
#[derive(serde::Serialize, serde::Deserialize)]
struct Expiry {
    job: i64,
}

/// Who an export belongs to ([`crate::export::owner_key`]): the token's client and user, or
/// nobody's when the server runs without authorization.
fn owner_of(access: &Access) -> String {
    match access {
        Access::Token(grant) => {
            let subject = grant.claims.as_ref().map_or(grant.client_id.as_str(), |claims| claims.sub.as_str());
            crate::export::owner_key(&grant.client_id, subject)
        }
        Access::Open => String::new(),
    }
}

/// Where an export job stands, as it recorded (nothing yet when it has not started).
fn progress_of(job: &Job) -> Result<Progress, serde_json::Error> {
    Ok(job.progress.as_deref().map(serde_json::from_str).transpose()?.unwrap_or_default())
}

/// RFC 3339, as `transactionTime` is written and `_since` read back.
fn instant_text(at: OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

impl FhirService {
    /// Takes the snapshot of `request`, keeps it under its `transactionTime` and queues the
    /// export for the caller's client: 202 with the status URL, or 429 when the client has
    /// `--export-max-running` exports queued or running.
    pub(super) async fn queue_export(
        &self,
        access: &Access,
        mut request: ExportRequest,
    ) -> Result<FhirResponse, FhirError> {
        let settings = &self.config.export;
        // The instant before the mark: every version stamped up to it was written before the
        // mark, or is caught by an export `_since` it (by the mark kept under it).
        let at = crate::store::from_micros(crate::store::to_micros(OffsetDateTime::now_utc()));
        let mark = self.store.take_mark().await.map_err(store_error)?;
        request.mark = mark.to_string();
        request.transaction_time = instant_text(at);
        let parameters = serde_json::to_string(&request).map_err(|_| FhirError::internal())?;
        let owner = owner_of(access);
        let queued = self.store.enqueue_client_job(JOB_KIND, &parameters, &owner, settings.max_running).await;
        let Some(job) = queued.map_err(store_error)? else {
            let message = format!(
                "this client has {} exports queued or running, as many as it may; retry when one has finished",
                settings.max_running
            );
            return Err(FhirError::new(ErrorKind::TooManyRequests(RETRY_AFTER_SECONDS), IssueCode::Throttled, message));
        };
        // Kept once the job is: a refused kick-off keeps nothing.
        self.store.keep_mark(at, &mark).await.map_err(store_error)?;
        self.exports.queued.notify_one();
        let url = self.job_url(job.id);
        let message = format!("export queued as job {}; its status is at {url}", job.id);
        let mut response = FhirResponse::new(202, Body::Json(operation_outcome(&[Issue::information(message)])));
        response.headers.push(("content-location", url));
        Ok(response)
    }

    /// This node's export workers, until the process ends.
    pub(super) async fn run_export_workers(self) {
        let workers = (0..self.config.export.workers).map(|_| self.clone().run_exports());
        futures::future::join_all(workers).await;
    }

    async fn run_exports(self) {
        let owner = crate::model::resource::new_id();
        loop {
            match self.store.claim_job(&owner, lease_until(), JobKinds::Only(JOB_KIND)).await {
                Ok(Some(job)) => self.run_export(&owner, job).await,
                Ok(None) => {
                    let _ = tokio::time::timeout(Duration::from_secs(2), self.exports.queued.notified()).await;
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot claim an export");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
        }
    }

    async fn run_export(&self, owner: &str, job: Job) {
        tracing::info!(job = job.id, "export started");
        let ended = match self.write_export(owner, &job).await {
            Ok(JobEnd::Finished(message)) => Some((JobStatus::Done, message)),
            Ok(JobEnd::Abandoned) => None,
            Err(message) => Some((JobStatus::Failed, message)),
        };
        let Some((status, message)) = ended else {
            // Cancelled (its files go now) or taken over by another worker (they stay its).
            if let Ok(Some(current)) = self.store.job(job.id).await {
                if current.status == JobStatus::Cancelled {
                    self.remove_export_files(job.id).await;
                }
            }
            return;
        };
        tracing::info!(job = job.id, status = status.as_str(), %message, "export ended");
        // Only while it still holds the job: another worker may be carrying on with its files.
        match self.store.finish_job(job.id, owner, status, &message).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(error) => {
                tracing::warn!(job = job.id, %error, "cannot record the end of an export");
                return;
            }
        }
        if status == JobStatus::Failed {
            self.remove_export_files(job.id).await;
        }
        // The files, and then the job, go when the export expires (a failed one's at once).
        let expires = OffsetDateTime::now_utc() + self.config.export.ttl;
        let expiry = serde_json::to_string(&Expiry { job: job.id }).unwrap_or_default();
        let queued = async {
            let mut tx = self.store.begin().await?;
            tx.enqueue_job(EXPIRY_JOB, &expiry, expires).await?;
            tx.commit().await
        };
        if let Err(error) = queued.await {
            tracing::warn!(job = job.id, %error, "cannot queue the expiry of an export");
        }
    }

    /// Writes (or carries on writing) an export's files.
    async fn write_export(&self, owner: &str, job: &Job) -> Result<JobEnd, String> {
        let request: ExportRequest = serde_json::from_str(&job.parameters).map_err(|e| e.to_string())?;
        let access = match &request.claims {
            None => Access::Open,
            Some(claims) => match crate::auth::kept_access(self.store.as_ref(), claims).await {
                Ok(Some(access)) => access,
                Ok(None) => return Err(AUTHORIZATION_ENDED.into()),
                Err(error) => return Err(error.to_string()),
            },
        };
        let mut progress = progress_of(job).map_err(|e| e.to_string())?;
        let dir = JobDir::new(&self.export_root().await?, job.id);
        dir.prepare().await.map_err(|e| format!("the export directory: {e}"))?;
        // Files recorded by a node that does not share this one's export directory: start again.
        if progress.files.iter().any(|f| dir.file(&f.name).is_none_or(|path| !path.exists())) {
            tracing::warn!(
                job = job.id,
                "an export's recorded files are not in this node's export directory; it starts again"
            );
            progress = Progress::default();
        }
        let mut writer = Writer::new(self, Some((job.id, owner)), dir, progress);
        if !self.write_files(&request, &access, &mut writer).await? {
            return Ok(JobEnd::Abandoned);
        }
        let files = writer.progress.files.iter().filter(|f| f.list != List::Error).count();
        Ok(JobEnd::Finished(format!("exported {} resources in {files} files", writer.progress.written())))
    }

    /// Writes the files of `request` as `access` from where `writer` stands, to the end;
    /// `false` when the job was cancelled or taken over.
    async fn write_files(
        &self,
        request: &ExportRequest,
        access: &Access,
        writer: &mut Writer<'_>,
    ) -> Result<bool, String> {
        let mark = Mark::parse(&request.mark).ok_or("the export's snapshot is unreadable")?;
        if !request.ignored.is_empty() && !writer.progress.files.iter().any(|f| f.list == List::Error) {
            let position = writer.progress.position.clone().unwrap_or(Position::start_of(0));
            for why in &request.ignored {
                let issue = Issue::warning(IssueCode::NotSupported, why.clone());
                let line = serde_json::to_vec(&operation_outcome(&[issue])).map_err(|e| e.to_string())?;
                writer.write("OperationOutcome", List::Error, &line, position.clone()).await?;
            }
            if !writer.finish_part(position).await? {
                return Ok(false);
            }
        }
        let start = writer.progress.position.clone().unwrap_or(Position::start_of(0));
        let mut view = ReadView::new(self, access, Source::Store(self.store.as_ref()));
        let export = Export { service: self, request, mark };
        for type_index in start.type_index..request.types.len() {
            let from = if type_index == start.type_index { start.clone() } else { Position::start_of(type_index) };
            if !export.write_type(&mut view, writer, from).await? {
                return Ok(false);
            }
        }
        writer.finish_part(Position::start_of(request.types.len())).await
    }

    /// `hearth export`: the resources of `types` (every type when empty) as of now, changed
    /// since `since` when given, written into the new or empty directory `out` as an export
    /// job writes them; its manifest names the files relative to `out`. No job: the files are
    /// the caller's. `on_written` hears how many resources are written so far.
    pub async fn export_to(
        &self,
        out: &std::path::Path,
        types: Vec<String>,
        since: Option<OffsetDateTime>,
        on_written: &(dyn Fn(u64) + Sync),
    ) -> Result<Value, String> {
        let listed = match std::fs::read_dir(out) {
            Ok(mut entries) => entries.next().is_some(),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => false,
            Err(error) => return Err(format!("{}: {error}", out.display())),
        };
        if listed {
            return Err(format!("{} is not empty: an export goes into a new or empty directory", out.display()));
        }
        let at = crate::store::from_micros(crate::store::to_micros(OffsetDateTime::now_utc()));
        let mark = self.store.take_mark().await.map_err(|e| e.to_string())?;
        self.store.keep_mark(at, &mark).await.map_err(|e| e.to_string())?;
        let since = match since {
            None => None,
            Some(at) => Some(match self.store.mark_at(at).await.map_err(|e| e.to_string())? {
                Some(earlier) => SinceText::Mark(earlier.to_string()),
                None => SinceText::time(at),
            }),
        };
        let types = if types.is_empty() {
            crate::model::validate::resource_types().into_iter().map(str::to_string).collect()
        } else {
            types
        };
        let request = ExportRequest {
            request: "hearth export".to_string(),
            claims: None,
            level: Level::System,
            types,
            filters: Default::default(),
            since,
            elements: Vec::new(),
            mark: mark.to_string(),
            transaction_time: instant_text(at),
            ignored: Vec::new(),
        };
        let dir = JobDir::at(out);
        dir.prepare().await.map_err(|e| format!("{}: {e}", out.display()))?;
        let mut writer = Writer::new(self, None, dir, Progress::default());
        writer.on_written = Some(on_written);
        self.write_files(&request, &Access::Open, &mut writer).await?;
        Ok(manifest(&request, &writer.progress.files, |name| name.to_string(), false))
    }

    /// The database's directory under the export directory: several databases may share one
    /// (a PostgreSQL default in the user's state directory), each job's files under its id.
    async fn export_root(&self) -> Result<PathBuf, String> {
        let root = self
            .exports
            .root
            .get_or_try_init(|| async {
                let database = self.store.audit_database_id().await.map_err(|e| e.to_string())?;
                let base = self.config.export.dir.clone().unwrap_or_else(|| crate::store::state_dir("exports"));
                Ok::<_, String>(base.join(database))
            })
            .await?;
        Ok(root.clone())
    }

    async fn remove_export_files(&self, job: i64) {
        match self.export_root().await {
            Ok(root) => {
                if let Err(error) = JobDir::new(&root, job).remove().await {
                    tracing::warn!(job, %error, "cannot remove an export's files");
                }
            }
            Err(error) => tracing::warn!(job, %error, "cannot find the export directory"),
        }
    }

    /// The expiry job of an export: its files and its job go, and marks past keeping.
    pub(super) async fn export_expiry_job(&self, job: &Job) -> Result<JobEnd, String> {
        let expiry: Expiry = serde_json::from_str(&job.parameters).map_err(|e| e.to_string())?;
        self.remove_export_files(expiry.job).await;
        self.store.delete_job(expiry.job).await.map_err(|e| e.to_string())?;
        let forgotten =
            self.store.forget_marks(OffsetDateTime::now_utc() - MARKS_KEPT).await.map_err(|e| e.to_string())?;
        Ok(JobEnd::Finished(format!("export {} expired; {forgotten} old snapshots forgotten", expiry.job)))
    }

    /// An export job the caller may see: its own client's (404 for anyone else's, as if it did
    /// not exist). `None` for a job that is no export.
    async fn own_export(&self, access: &Access, id: i64) -> Result<Option<Job>, FhirError> {
        let job = self.store.job(id).await.map_err(store_error)?;
        let job = job.ok_or_else(|| FhirError::not_found(format!("there is no job {id}")))?;
        match &job.client {
            None => Ok(None),
            Some(client) if *client == owner_of(access) && job.kind == JOB_KIND => Ok(Some(job)),
            Some(_) => Err(FhirError::not_found(format!("there is no job {id}"))),
        }
    }

    /// `GET _jobs/{id}` of an export: 202 with `X-Progress` while it runs (429 when polled
    /// more often than every half second), 200 with the manifest and `Expires` when done.
    pub(super) async fn export_status(&self, access: &Access, id: i64) -> Result<Option<FhirResponse>, FhirError> {
        let Some(job) = self.own_export(access, id).await? else { return Ok(None) };
        match job.status {
            JobStatus::Queued | JobStatus::Running => {
                if self.polled_too_soon(id) {
                    return Err(FhirError::new(
                        ErrorKind::TooManyRequests(RETRY_AFTER_SECONDS),
                        IssueCode::Throttled,
                        format!("export {id} is polled too often; wait as Retry-After says"),
                    ));
                }
                let progress = format!("{}: {} resources written", job.status.as_str(), job.processed);
                let body = Body::Json(operation_outcome(&[Issue::information(format!("export {id} is {progress}"))]));
                let mut response = FhirResponse::new(202, body);
                response.headers.push(("x-progress", progress));
                response.headers.push(("retry-after", RETRY_AFTER_SECONDS.to_string()));
                Ok(Some(response))
            }
            JobStatus::Done => {
                self.exports.polls.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
                let request: ExportRequest =
                    serde_json::from_str(&job.parameters).map_err(|_| FhirError::internal())?;
                let progress = progress_of(&job).map_err(|_| FhirError::internal())?;
                let url = |name: &str| format!("{}/{name}", self.job_url(id));
                let requires_token = self.config.security.is_some();
                let body = manifest(&request, &progress.files, url, requires_token);
                let bytes = serde_json::to_vec(&body).map_err(|_| FhirError::internal())?;
                let mut response =
                    FhirResponse::new(200, Body::Document { content_type: "application/json", bytes: bytes.into() });
                let expires = job.updated + self.config.export.ttl;
                response.headers.push(("expires", httpdate::fmt_http_date(expires.into())));
                Ok(Some(response))
            }
            JobStatus::Failed if job.message.as_deref() == Some(AUTHORIZATION_ENDED) => {
                Err(FhirError::forbidden(format!("export {id} failed: {AUTHORIZATION_ENDED}")))
            }
            JobStatus::Failed => Err(FhirError::new(
                ErrorKind::Internal,
                IssueCode::Exception,
                format!("export {id} failed: {}", job.message.unwrap_or_default()),
            )),
            JobStatus::Cancelled => Err(FhirError::not_found(format!("export {id} was cancelled"))),
        }
    }

    /// Whether this status poll comes less than [`POLL_SPACING`] after the last one here.
    fn polled_too_soon(&self, id: i64) -> bool {
        let now = Instant::now();
        let mut polls = self.exports.polls.lock().unwrap_or_else(|e| e.into_inner());
        if polls.len() > 10_000 {
            polls.retain(|_, at| now.duration_since(*at) < Duration::from_secs(60));
        }
        match polls.insert(id, now) {
            Some(last) => now.duration_since(last) < POLL_SPACING,
            None => false,
        }
    }

    /// `DELETE _jobs/{id}` of an export: cancels it, or deletes a finished one; its files go
    /// and its status answers 404 from then on.
    pub(super) async fn delete_export(&self, access: &Access, id: i64) -> Result<Option<FhirResponse>, FhirError> {
        let Some(job) = self.own_export(access, id).await? else { return Ok(None) };
        let done = match job.status {
            JobStatus::Queued | JobStatus::Running => self.store.cancel_job(id).await.map_err(store_error)?,
            JobStatus::Done | JobStatus::Failed => self.store.delete_job(id).await.map_err(store_error)?,
            JobStatus::Cancelled => false,
        };
        if !done {
            return Err(FhirError::not_found(format!("export {id} has ended already")));
        }
        self.remove_export_files(id).await;
        let message = format!("export {id} was cancelled and its files deleted");
        Ok(Some(FhirResponse::new(202, Body::Json(operation_outcome(&[Issue::information(message)])))))
    }

    /// `GET _jobs/{id}/{file}`: a file of a finished export of the caller's client, streamed.
    pub(super) async fn export_file(&self, access: &Access, id: i64, name: &str) -> Result<FhirResponse, FhirError> {
        let unknown = || FhirError::not_found(format!("export {id} has no file '{name}'"));
        let job = self.own_export(access, id).await?.ok_or_else(unknown)?;
        if job.status != JobStatus::Done {
            return Err(unknown());
        }
        let progress = progress_of(&job).map_err(|_| FhirError::internal())?;
        if !progress.files.iter().any(|f| f.name == name) {
            return Err(unknown());
        }
        let root = self.export_root().await.map_err(|error| {
            tracing::error!(%error, "cannot find the export directory");
            FhirError::internal()
        })?;
        let path = JobDir::new(&root, id).file(name).ok_or_else(unknown)?;
        Ok(FhirResponse::new(200, Body::File { content_type: "application/fhir+ndjson", path }))
    }
}

/// One export as it runs: what to read and as of which snapshot.
struct Export<'a> {
    service: &'a FhirService,
    request: &'a ExportRequest,
    mark: Mark,
}

impl Export<'_> {
    /// Writes one type from `from` on; `false` when the job was cancelled or taken over.
    async fn write_type(
        &self,
        view: &mut ReadView<'_>,
        writer: &mut Writer<'_>,
        from: Position,
    ) -> Result<bool, String> {
        let resource_type = &self.request.types[from.type_index];
        let filters = self.filters(resource_type).await?;
        if from.stage == Stage::Resources {
            for n in from.filter..filters.len() {
                let mut after = if n == from.filter { from.after.clone() } else { None };
                loop {
                    let page = self.page(view, &filters, n, after.as_deref()).await?;
                    let Some(last) = page.last_id else { break };
                    for version in page.versions {
                        let position = Position {
                            type_index: from.type_index,
                            stage: Stage::Resources,
                            filter: n,
                            after: Some(version.id.clone()),
                        };
                        let line = self.line(&version)?;
                        if !writer.write(resource_type, List::Output, &line, position).await? {
                            return Ok(false);
                        }
                    }
                    if !writer.keep_alive().await? {
                        return Ok(false);
                    }
                    after = Some(last);
                }
            }
        }
        if !self.lists_deletions(view, resource_type) {
            return Ok(true);
        }
        let Some(since) = self.request.since.as_ref().and_then(SinceText::since) else { return Ok(true) };
        let mut after = if from.stage == Stage::Deleted { from.after.clone() } else { None };
        loop {
            let deletions = self
                .service
                .store
                .deletions(resource_type, &self.mark, &since, after.as_deref(), PAGE)
                .await
                .map_err(|e| e.to_string())?;
            let Some(last) = deletions.last().map(|d| d.id.clone()) else { break };
            for deletion in &deletions {
                let position = Position {
                    type_index: from.type_index,
                    stage: Stage::Deleted,
                    filter: 0,
                    after: Some(deletion.id.clone()),
                };
                let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
                    {"request": {"method": "DELETE", "url": format!("{resource_type}/{}", deletion.id)}}]});
                let line = serde_json::to_vec(&bundle).map_err(|e| e.to_string())?;
                if !writer.write(resource_type, List::Deleted, &line, position).await? {
                    return Ok(false);
                }
            }
            if !writer.keep_alive().await? {
                return Ok(false);
            }
            after = Some(last);
        }
        Ok(true)
    }

    /// Whether the export lists the deletions of `resource_type`: with `_since`, at system
    /// level, unfiltered, for a client that reads every resource of the type (a deleted
    /// resource keeps no index rows to judge a compartment or a filter by, so the list would
    /// otherwise tell of resources the client never reached).
    fn lists_deletions(&self, view: &ReadView<'_>, resource_type: &str) -> bool {
        self.request.since.is_some()
            && self.request.level == Level::System
            && !self.request.filters.contains_key(resource_type)
            && view.reaches_all(Permission::Read, resource_type)
    }

    /// The queries of a type, one per `_typeFilter` query (one unfiltered when it has none),
    /// each with the level's patients, as of the export's mark: a plain search of the current
    /// rows when nothing of the type was written since the mark and `_since` asks for nothing
    /// older (the common case; it spares every row a look at its history).
    async fn filters(&self, resource_type: &str) -> Result<Vec<SearchQuery>, String> {
        let written = self.service.store.written_since(resource_type, &self.mark).await.map_err(|e| e.to_string())?;
        let queries: Vec<String> = match self.request.filters.get(resource_type) {
            Some(queries) => queries.clone(),
            None => vec![String::new()],
        };
        let since = self.request.since.as_ref().and_then(SinceText::since);
        queries
            .iter()
            .map(|query| {
                let parameters: Vec<(String, String)> =
                    url::form_urlencoded::parse(query.as_bytes()).into_owned().collect();
                let mut search = self.service.search_query(resource_type, &parameters).map_err(|e| e.to_string())?;
                if let Level::Patients(patients) = &self.request.level {
                    search.all_of.push(in_compartments(resource_type, patients.as_deref()));
                }
                search.count = PAGE;
                if written || since.is_some() {
                    search.as_of = Some(AsOf { mark: self.mark.clone(), since: since.clone() });
                }
                Ok(search)
            })
            .collect()
    }

    /// One page of filter `n`'s query: the versions to write (as the mark saw them, and not
    /// matched by an earlier filter), and the last id read.
    async fn page(
        &self,
        view: &mut ReadView<'_>,
        filters: &[SearchQuery],
        n: usize,
        after: Option<&str>,
    ) -> Result<Page, String> {
        let mut query = filters[n].clone();
        query.cursor = after.map(|id| Cursor {
            values: Vec::new(),
            resource_type: query.resource_types[0].clone(),
            id: id.to_string(),
            backward: false,
        });
        let page = view.search(&mut query).await.map_err(|e| e.to_string())?;
        let last_id = page.resources.last().map(|v| v.id.clone());
        // A plain search (nothing written since the mark): every row as the mark saw it.
        let marked = match query.as_of {
            Some(_) => page.marked,
            None => page.resources.iter().map(|v| Some(v.version)).collect(),
        };
        let found: Vec<(ResourceVersion, Option<i64>)> = page.resources.into_iter().zip(marked).collect();
        let found = self.not_matched_before(view, filters, n, found).await?;
        let mut versions = Vec::with_capacity(found.len());
        for (current, marked) in found {
            match marked {
                // Created after the mark.
                None => {}
                // As the mark saw it: alive, or deleted before the mark.
                Some(marked) if marked == current.version && !current.deleted => versions.push(current),
                Some(marked) if marked == current.version => {}
                Some(_) => versions.extend(self.as_marked(view, &current).await?),
            }
        }
        Ok(Page { versions, last_id })
    }

    /// `found` without what an earlier `_typeFilter` query of the type matched (and wrote).
    async fn not_matched_before(
        &self,
        view: &mut ReadView<'_>,
        filters: &[SearchQuery],
        n: usize,
        mut found: Vec<(ResourceVersion, Option<i64>)>,
    ) -> Result<Vec<(ResourceVersion, Option<i64>)>, String> {
        for earlier in &filters[..n] {
            if found.is_empty() {
                break;
            }
            let mut query = earlier.clone();
            query.all_of.push(vec![Condition::AnyOf(found.iter().map(|(v, _)| Condition::Id(v.id.clone())).collect())]);
            let matched = view.search(&mut query).await.map_err(|e| e.to_string())?.resources;
            found.retain(|(v, _)| !matched.iter().any(|m| m.id == v.id));
        }
        Ok(found)
    }

    /// For a row written after the mark: the version the mark saw, as the caller may see it
    /// (none when that was a deletion, when the caller may not read it, or when it had not
    /// changed since `_since`).
    async fn as_marked(
        &self,
        view: &mut ReadView<'_>,
        current: &ResourceVersion,
    ) -> Result<Option<ResourceVersion>, String> {
        let store = &self.service.store;
        let (resource_type, id) = (&current.resource_type, &current.id);
        let marked = store.version_as_of(resource_type, id, &self.mark).await.map_err(|e| e.to_string())?;
        let Some(version) = marked.filter(|v| !v.deleted) else { return Ok(None) };
        let unchanged = match self.request.since.as_ref().and_then(SinceText::since) {
            Some(Since::Mark(earlier)) => store
                .version_as_of(resource_type, id, &earlier)
                .await
                .map_err(|e| e.to_string())?
                .is_some_and(|before| before.version == version.version),
            Some(Since::Time(at)) => version.last_updated <= at,
            None => false,
        };
        Ok(if unchanged { None } else { view.disclose(version) })
    }

    /// The line of a version: as stored, or trimmed to `_elements`; a DocumentReference's
    /// attachments that name a local Binary get its absolute URL (the IG: resolvable with the
    /// same token).
    fn line<'v>(&self, version: &'v ResourceVersion) -> Result<std::borrow::Cow<'v, [u8]>, String> {
        let kept = elements_of(&self.request.elements, &version.resource_type);
        let binary_links =
            version.resource_type == "DocumentReference" && version.body.windows(9).any(|w| w == b"\"Binary/");
        if kept.is_none() && !binary_links {
            return Ok(std::borrow::Cow::Borrowed(&version.body));
        }
        let mut resource: Value = serde_json::from_slice(&version.body).map_err(|e| e.to_string())?;
        if binary_links {
            absolute_attachment_urls(&mut resource, &self.service.config.base_url);
        }
        if let Some(kept) = kept {
            let names: Vec<String> = kept.iter().map(|e| e.to_string()).collect();
            resource = crate::model::subset::elements(&resource, &names);
        }
        serde_json::to_vec(&resource).map(std::borrow::Cow::Owned).map_err(|e| e.to_string())
    }
}

/// A page of an export's read.
struct Page {
    versions: Vec<ResourceVersion>,
    /// The last id the query returned (whether written or not): where the next page starts.
    last_id: Option<String>,
}

/// The condition "in the Patient compartment of one of `patients`" (of any patient when
/// `None`) for `resource_type`.
fn in_compartments(resource_type: &str, patients: Option<&[String]>) -> Vec<Condition> {
    use crate::search::compartment::{membership, params};
    match patients {
        Some(patients) => patients.iter().filter_map(|id| membership("Patient", id, resource_type)).flatten().collect(),
        None if resource_type == "Patient" => vec![Condition::AllOf(Vec::new())],
        None => params("Patient", resource_type)
            .unwrap_or_default()
            .iter()
            .filter(|param| param.as_str() != "{def}")
            .map(|param| Condition::Chain {
                param: param.clone(),
                target_types: vec!["Patient".to_string()],
                condition: Box::new(Condition::AllOf(Vec::new())),
            })
            .collect(),
    }
}

/// Makes `content.attachment.url`s that name a local Binary (`Binary/1`) absolute.
fn absolute_attachment_urls(document: &mut Value, base_url: &str) {
    let contents = document.get_mut("content").and_then(Value::as_array_mut).into_iter().flatten();
    for content in contents {
        if let Some(url) = content.pointer_mut("/attachment/url") {
            if let Some(relative) = url.as_str().filter(|u| u.starts_with("Binary/")) {
                *url = Value::String(format!("{base_url}/{relative}"));
            }
        }
    }
}

/// The part files of a running export, and the job steps that record them.
struct Writer<'a> {
    service: &'a FhirService,
    /// The job and the worker that holds it; `None` for `hearth export`, which records nothing.
    job: Option<(i64, &'a str)>,
    dir: JobDir,
    /// What is recorded: finished files, and where to carry on.
    progress: Progress,
    /// The file being written: its type and list, and the position after its last line.
    part: Option<(String, List, PartFile, Position)>,
    /// Resources written, finished files and the one being written.
    written: u64,
    last_step: Instant,
    /// Told how many resources are written, now and then (a progress bar).
    on_written: Option<&'a (dyn Fn(u64) + Sync)>,
}

impl<'a> Writer<'a> {
    fn new(service: &'a FhirService, job: Option<(i64, &'a str)>, dir: JobDir, progress: Progress) -> Self {
        let written = progress.written();
        Writer { service, job, dir, progress, part: None, written, last_step: Instant::now(), on_written: None }
    }

    /// Appends a line for `resource_type` to `list`; `position` is where the export carries
    /// on after it. `false` when the job was cancelled or taken over.
    async fn write(
        &mut self,
        resource_type: &str,
        list: List,
        line: &[u8],
        position: Position,
    ) -> Result<bool, String> {
        let switching = self.part.as_ref().is_some_and(|(t, l, ..)| t != resource_type || *l != list);
        if switching {
            let after = self.part.as_ref().map(|(.., p)| p.clone()).unwrap_or(position.clone());
            if !self.finish_part(after).await? {
                return Ok(false);
            }
        }
        if self.part.is_none() {
            let n = 1 + self
                .progress
                .files
                .iter()
                .filter(|f| f.list == list && (list == List::Error || f.name.starts_with(&format!("{resource_type}-"))))
                .count();
            let file = self.dir.start(resource_type, list, n).await.map_err(|e| format!("an export file: {e}"))?;
            self.part = Some((resource_type.to_string(), list, file, position.clone()));
        }
        let Some((_, _, file, at)) = self.part.as_mut() else { return Err("no export file".into()) };
        file.write(line).await.map_err(|e| format!("an export file: {e}"))?;
        *at = position.clone();
        self.written += u64::from(list != List::Error);
        if let Some(on_written) = self.on_written.filter(|_| self.written.is_multiple_of(1000)) {
            on_written(self.written);
        }
        if file.count() >= self.service.config.export.resources_per_file {
            return self.finish_part(position).await;
        }
        self.keep_alive().await
    }

    /// Extends the lease when [`HEARTBEAT`] has passed since the last step (a long stretch
    /// that writes nothing: a `_since` export's scan, a type the caller reads little of);
    /// `false` when the job was cancelled or taken over.
    async fn keep_alive(&mut self) -> Result<bool, String> {
        if self.last_step.elapsed() < HEARTBEAT {
            return Ok(true);
        }
        self.step().await
    }

    /// Finishes the file being written (if any) and records it, with `position` as where the
    /// export carries on; `false` when the job was cancelled or taken over.
    async fn finish_part(&mut self, position: Position) -> Result<bool, String> {
        if let Some((resource_type, list, file, _)) = self.part.take() {
            let (name, count) = file.finish().await.map_err(|e| format!("an export file: {e}"))?;
            let shown_type = match list {
                List::Deleted => "Bundle".to_string(),
                _ => resource_type,
            };
            self.progress.files.push(OutputFile { resource_type: shown_type, name, count, list });
        }
        self.progress.position = Some(position);
        self.step().await
    }

    /// Records the progress and extends the lease; `false` when the job was cancelled or
    /// taken over (the file being written is dropped).
    async fn step(&mut self) -> Result<bool, String> {
        if let Some(on_written) = self.on_written {
            on_written(self.written);
        }
        let Some((id, owner)) = self.job else {
            self.last_step = Instant::now();
            return Ok(true);
        };
        let progress = serde_json::to_string(&self.progress).map_err(|e| e.to_string())?;
        let step =
            JobStep { id, owner, progress: &progress, processed: self.written as i64, lease_until: lease_until() };
        let recorded = async {
            let mut tx = self.service.store.begin().await?;
            let held = tx.job_step(&step).await?;
            tx.commit().await?;
            Ok::<_, crate::store::StoreError>(held)
        };
        let held = recorded.await.map_err(|e| e.to_string())?;
        self.last_step = Instant::now();
        if !held {
            if let Some((.., file, _)) = self.part.take() {
                file.abandon().await;
            }
        }
        debug_assert!(HEARTBEAT < LEASE);
        Ok(held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_binary_links_become_absolute() {
        let mut document = json!({"resourceType": "DocumentReference", "content": [
            {"attachment": {"url": "Binary/b1", "contentType": "application/pdf"}},
            {"attachment": {"url": "https://elsewhere/x"}}]});
        absolute_attachment_urls(&mut document, "http://h/fhir");
        assert_eq!(document["content"][0]["attachment"]["url"], "http://h/fhir/Binary/b1");
        assert_eq!(document["content"][1]["attachment"]["url"], "https://elsewhere/x");
    }

    #[test]
    fn compartments_of_named_patients_or_of_any() {
        let named = in_compartments("Observation", Some(&["a".to_string(), "b".to_string()]));
        assert!(named.contains(&Condition::Reference {
            param: "subject".into(),
            target_type: Some("Patient".into()),
            target_id: "b".into()
        }));
        let any = in_compartments("Observation", None);
        assert!(any.iter().all(|c| matches!(c, Condition::Chain { target_types, .. } if target_types == &["Patient"])));
        assert_eq!(in_compartments("Patient", None), vec![Condition::AllOf(Vec::new())]);
    }
}
