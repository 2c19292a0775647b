//! `hearth import`: loads Bundles (transaction, batch, collection…) and NDJSON files through the
//! same FHIR service the server uses, so everything imported is validated and indexed.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use futures::stream::{self, StreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};

use crate::model::FhirError;
use crate::rest::{Body, FhirRequest, FhirService, Method};

/// NDJSON lines sent per batch.
const NDJSON_CHUNK: usize = 1000;
/// The most error lines kept for the summary.
const MAX_ERRORS_SHOWN: usize = 20;
/// The most entries of one transaction of entries retried together (the server's default
/// bundle limit).
const RETRY_CHUNK: usize = 10_000;

/// What an import did.
#[derive(Debug, Default)]
pub struct ImportSummary {
    pub files: usize,
    pub resources: usize,
    pub failed_entries: usize,
    pub seconds: f64,
    /// `file: entry n: message`, the first few.
    pub errors: Vec<String>,
    /// Errors beyond those listed.
    pub unlisted_errors: usize,
    /// Batch entries a workflow rule refused alone (422), retried together at the end: a
    /// booked Slot and its Appointment need each other, and an export has them in two files.
    deferred: Vec<Deferred>,
}

/// A batch entry retried at the end of an import.
#[derive(Debug)]
struct Deferred {
    file: PathBuf,
    entry: usize,
    /// The bundle entry (resource and request).
    bundle_entry: Value,
    /// Why it was refused alone.
    message: String,
}

impl ImportSummary {
    /// Adds what the import of one file did.
    fn absorb(&mut self, file: ImportSummary) {
        self.resources += file.resources;
        self.failed_entries += file.failed_entries;
        let room = MAX_ERRORS_SHOWN.saturating_sub(self.errors.len());
        self.unlisted_errors += file.unlisted_errors + file.errors.len().saturating_sub(room);
        self.errors.extend(file.errors.into_iter().take(room));
        self.deferred.extend(file.deferred);
    }
}

impl fmt::Display for ImportSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rate = if self.seconds > 0.0 { self.resources as f64 / self.seconds } else { 0.0 };
        writeln!(
            f,
            "imported {} resources from {} files in {:.2} s ({:.0} resources/s); {} entries failed",
            self.resources, self.files, self.seconds, rate, self.failed_entries
        )?;
        for error in &self.errors {
            writeln!(f, "  {error}")?;
        }
        if self.unlisted_errors > 0 {
            writeln!(f, "  … and {} more errors", self.unlisted_errors)?;
        }
        Ok(())
    }
}

/// The files an import of `paths` reads: each file named (whatever its extension) and every
/// `.json` and `.ndjson` file found under each directory named, sorted, each once. Found before
/// anything is opened, so that a mistyped path changes nothing.
pub fn files_to_import(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for path in paths {
        let metadata = std::fs::metadata(path).map_err(at(path))?;
        if metadata.is_dir() {
            collect_files(path, &mut files)?;
        } else {
            files.push(path.clone());
        }
    }
    files.sort();
    files.dedup();
    anyhow::ensure!(!files.is_empty(), "no .json or .ndjson files in {}", describe(paths));
    Ok(files)
}

/// Names `path` in an I/O error that happened there.
fn at(path: &Path) -> impl Fn(std::io::Error) -> anyhow::Error + '_ {
    move |error| anyhow::anyhow!("{}: {error}", path.display())
}

fn describe(paths: &[PathBuf]) -> String {
    paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
}

/// Imports `files`, `jobs` at a time, each in a task of its own (a file's bundles one after
/// another). While one bundle is written, others are parsed, validated and indexed: with one
/// file at a time, preparing a bundle and writing it take turns. The summary lists errors in
/// the files' order, as one file at a time would.
pub async fn import_files(service: &FhirService, files: &[PathBuf], jobs: usize) -> anyhow::Result<ImportSummary> {
    let progress = ProgressBar::new(files.len() as u64);
    progress
        .set_style(ProgressStyle::with_template("{bar:40} {pos}/{len} files {msg} [{elapsed_precise}, eta {eta}]")?);
    let started = Instant::now();
    // Unordered, so that one long file does not hold up the others; put in order below.
    let tasks = files.iter().enumerate().map(|(n, file)| {
        let task = tokio::spawn(import_file(service.clone(), file.clone()));
        async move { (n, task.await) }
    });
    let mut imported = stream::iter(tasks).buffer_unordered(jobs.max(1));
    let mut by_file: Vec<ImportSummary> = files.iter().map(|_| ImportSummary::default()).collect();
    let mut resources = 0;
    while let Some((n, outcome)) = imported.next().await {
        let file_summary = outcome.unwrap_or_else(|failure| {
            let mut failed = ImportSummary::default();
            record(&mut failed, &files[n], None, &format!("the import of this file failed: {failure}"), 1);
            failed
        });
        resources += file_summary.resources;
        by_file[n] = file_summary;
        progress.inc(1);
        progress.set_message(format!("{resources} resources"));
    }
    progress.finish_and_clear();
    let mut summary = ImportSummary { files: files.len(), ..ImportSummary::default() };
    for file_summary in by_file {
        summary.absorb(file_summary);
    }
    retry_together(service, &mut summary).await;
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// Imports one file, its bundles in order. A file that cannot be read counts as one failed
/// entry, and the import goes on with the others.
async fn import_file(service: FhirService, file: PathBuf) -> ImportSummary {
    let mut summary = ImportSummary::default();
    let text = match tokio::fs::read_to_string(&file).await {
        Ok(text) => text,
        Err(error) => {
            record(&mut summary, &file, None, &format!("cannot be read: {error}"), 1);
            return summary;
        }
    };
    let bundles = if has_extension(&file, "ndjson") { ndjson_batches(&text) } else { vec![as_processable(&text)] };
    for bundle in bundles {
        match bundle {
            Ok(bundle) => post_bundle(&service, bundle, &file, &mut summary).await,
            Err(error) => record(&mut summary, &file, None, &error.to_string(), 1),
        }
    }
    summary
}

fn collect_files(path: &Path, files: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    if path.is_dir() {
        for entry in std::fs::read_dir(path).map_err(at(path))? {
            let entry = entry.map_err(at(path))?;
            collect_files(&entry.path(), files)?;
        }
    } else if has_extension(path, "json") || has_extension(path, "ndjson") {
        files.push(path.to_path_buf());
    }
    Ok(())
}

/// Whether `path` ends in `.extension`, in any case.
fn has_extension(path: &Path, extension: &str) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case(extension))
}

/// A Bundle ready for `POST /`: transactions and batches as they are, anything else (collection,
/// searchset, a single resource) as a batch that PUTs resources with ids and POSTs the others.
fn as_processable(text: &str) -> Result<Value, FhirError> {
    let value: Value = crate::model::json::parse_str(text)?;
    let value = with_resource_type(value)?;
    let is_bundle = value.get("resourceType").and_then(Value::as_str) == Some("Bundle");
    let kind = value.get("type").and_then(Value::as_str).unwrap_or("");
    if is_bundle && (kind == "transaction" || kind == "batch") {
        return Ok(value);
    }
    // Entries keep their fullUrl: the batch resolves references between them by it.
    let resources: Vec<(Option<Value>, Value)> = if is_bundle {
        value
            .get("entry")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|e| Some((e.get("fullUrl").cloned(), e.get("resource")?.clone())))
            .collect()
    } else {
        vec![(None, value)]
    };
    Ok(batch_of(resources))
}

fn ndjson_batches(text: &str) -> Vec<Result<Value, FhirError>> {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines
        .chunks(NDJSON_CHUNK)
        .map(|chunk| {
            chunk
                .iter()
                .map(|line| crate::model::json::parse_str(line).and_then(with_resource_type).map(|r| (None, r)))
                .collect::<Result<Vec<_>, _>>()
                .map(batch_of)
        })
        .collect()
}

/// `value`, if it names its resourceType (anything else is not a FHIR resource).
fn with_resource_type(value: Value) -> Result<Value, FhirError> {
    match value.get("resourceType").and_then(Value::as_str) {
        Some(_) => Ok(value),
        None => Err(FhirError::bad_request("not a FHIR resource: it has no resourceType")),
    }
}

/// A batch that PUTs the resources with ids and POSTs the others, each entry with its `fullUrl`
/// when given.
fn batch_of(resources: Vec<(Option<Value>, Value)>) -> Value {
    let entries: Vec<Value> = resources
        .into_iter()
        .map(|(full_url, resource)| {
            let resource_type = resource.get("resourceType").and_then(Value::as_str).unwrap_or("").to_string();
            let request = match resource.get("id").and_then(Value::as_str) {
                Some(id) => json!({"method": "PUT", "url": format!("{resource_type}/{id}")}),
                None => json!({"method": "POST", "url": resource_type}),
            };
            let mut entry = json!({"resource": resource, "request": request});
            if let Some(full_url) = full_url {
                entry["fullUrl"] = full_url;
            }
            entry
        })
        .collect();
    json!({"resourceType": "Bundle", "type": "batch", "entry": entries})
}

async fn post_bundle(service: &FhirService, bundle: Value, file: &Path, summary: &mut ImportSummary) {
    let entries = bundle.get("entry").and_then(Value::as_array).map_or(0, Vec::len);
    let batch = bundle.get("type").and_then(Value::as_str) == Some("batch");
    let sent: Vec<Value> = if batch { bundle["entry"].as_array().cloned().unwrap_or_default() } else { Vec::new() };
    let mut request = FhirRequest::new(Method::Post, "", Vec::new());
    request.conditions.prefer_return = crate::rest::PreferReturn::Minimal;
    request.body = Some(bundle);
    match service.handle(request).await {
        Ok(response) => {
            let Body::Json(result) = response.body else { return };
            for (n, entry) in result.get("entry").and_then(Value::as_array).into_iter().flatten().enumerate() {
                let status = entry["response"]["status"].as_str().unwrap_or("");
                let message = entry["response"]["outcome"]["issue"][0]["diagnostics"].as_str().unwrap_or(status);
                match sent.get(n) {
                    _ if status.starts_with('2') => summary.resources += 1,
                    Some(bundle_entry) if status.starts_with("422") => summary.deferred.push(Deferred {
                        file: file.to_path_buf(),
                        entry: n,
                        bundle_entry: bundle_entry.clone(),
                        message: message.to_string(),
                    }),
                    _ => record(summary, file, Some(n), message, 1),
                }
            }
        }
        Err(error) => record(summary, file, None, &error.to_string(), entries.max(1)),
    }
}

/// Retries the deferred entries together, in transactions of at most [`RETRY_CHUNK`]: what
/// needed another entry written in the same transaction is stored now; what still fails is
/// reported with the reason it was refused alone.
async fn retry_together(service: &FhirService, summary: &mut ImportSummary) {
    let deferred = std::mem::take(&mut summary.deferred);
    for chunk in deferred.chunks(RETRY_CHUNK) {
        let entries: Vec<Value> = chunk.iter().map(|d| d.bundle_entry.clone()).collect();
        let mut request = FhirRequest::new(Method::Post, "", Vec::new());
        request.conditions.prefer_return = crate::rest::PreferReturn::Minimal;
        request.body = Some(json!({"resourceType": "Bundle", "type": "transaction", "entry": entries}));
        match service.handle(request).await {
            Ok(response) if response.status < 300 => summary.resources += chunk.len(),
            _ => {
                for failed in chunk {
                    record(summary, &failed.file, Some(failed.entry), &failed.message, 1);
                }
            }
        }
    }
}

fn record(summary: &mut ImportSummary, file: &Path, entry: Option<usize>, message: &str, failed: usize) {
    summary.failed_entries += failed;
    if summary.errors.len() < MAX_ERRORS_SHOWN {
        let at = entry.map(|n| format!(" entry {n}")).unwrap_or_default();
        summary.errors.push(format!("{}{at}: {message}", file.display()));
    } else {
        summary.unlisted_errors += 1;
    }
}
