//! Bulk Data export (`$export`, Bulk Data Access IG 2.0; ADR 22): what the kick-off
//! (`operations/export.rs`), the job that writes the files (`rest/export.rs`) and
//! `hearth export` share: the settings, an export as queued, where a job stands, the manifest,
//! and the NDJSON part files.

pub mod files;
pub mod manifest;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::auth::tokens::AccessClaims;
use crate::store::{Mark, Since};

/// The job kind of an export in the queue; exports have workers of their own, so that a long
/// one never delays e-mail or a reindex.
pub const JOB_KIND: &str = "export";

/// The job that removes an export's files and its job when they expire.
pub const EXPIRY_JOB: &str = "export-expiry";

/// How exports run (`--export-dir`, `--export-ttl`, `--export-max-running`,
/// `--export-file-resources`, `--export-workers`).
#[derive(Debug, Clone)]
pub struct ExportSettings {
    /// Where the files are written; nodes that share a database share it (a shared volume).
    /// `None`: [`default_dir`] of the database.
    pub dir: Option<PathBuf>,
    /// How long a finished export's files are kept (its manifest's `Expires`).
    pub ttl: time::Duration,
    /// How many exports one client may have queued or running at once.
    pub max_running: u32,
    /// The most resources one file holds.
    pub resources_per_file: u64,
    /// How many exports this node writes at once (0: none; a node that only serves).
    pub workers: usize,
}

impl Default for ExportSettings {
    fn default() -> Self {
        ExportSettings {
            dir: None,
            ttl: time::Duration::hours(1),
            max_running: 2,
            resources_per_file: 100_000,
            workers: 2,
        }
    }
}

/// Who an export belongs to (`jobs.client`): a client and the user it acts for (a backend
/// service is its own user). A portal app's users share its client id; each sees its own
/// exports only, and each has its own `--export-max-running`.
pub fn owner_key(client_id: &str, subject: &str) -> String {
    serde_json::json!([client_id, subject]).to_string()
}

/// Where exports are written by default: beside an SQLite database file
/// (`hearth.db.exports`), else the user's state directory ([`crate::store::local_dir`]).
pub fn default_dir(database_url: &str) -> PathBuf {
    crate::store::local_dir(database_url, "exports")
}

/// The level an export was started at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Level {
    /// `/$export`: every resource of the types asked for.
    System,
    /// `/Patient/$export` and `/Group/[id]/$export`: the Patient compartments of the patients
    /// listed, or of every patient when `None`.
    Patients(Option<Vec<String>>),
}

/// Since when an export lists changes, as stored with the job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SinceText {
    /// The `transactionTime` of an earlier export of this server: exactly what its mark did not
    /// see.
    Mark(String),
    /// Any other instant: `meta.lastUpdated` after it (microseconds since the Unix epoch).
    Time(i64),
}

impl SinceText {
    /// An instant that is no export's `transactionTime`.
    pub fn time(at: OffsetDateTime) -> SinceText {
        SinceText::Time((at.unix_timestamp_nanos() / 1000) as i64)
    }

    /// The store's form.
    pub fn since(&self) -> Option<Since> {
        match self {
            SinceText::Mark(text) => Mark::parse(text).map(Since::Mark),
            SinceText::Time(micros) => {
                OffsetDateTime::from_unix_timestamp_nanos(i128::from(*micros) * 1000).ok().map(Since::Time)
            }
        }
    }
}

/// An export as queued: everything the job needs was decided at the kick-off, so that a job
/// taken over by another node writes the same files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportRequest {
    /// The kick-off URL (the manifest's `request`).
    pub request: String,
    /// Whose access the export reads with (the token's claims, checked again when the job
    /// runs); `None` when the server runs without authorization.
    pub claims: Option<AccessClaims>,
    pub level: Level,
    /// The types exported, in order.
    pub types: Vec<String>,
    /// `_typeFilter`: per type, search queries of which a resource must match one.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub filters: BTreeMap<String, Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<SinceText>,
    /// `_elements`: `Type.element` or `element`; empty for whole resources.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub elements: Vec<String>,
    /// The snapshot the export reads (ADR 22).
    pub mark: String,
    /// When the mark was taken (RFC 3339): the manifest's `transactionTime`.
    pub transaction_time: String,
    /// What the kick-off ignored (`Prefer: handling=lenient`) or does not apply: warnings in
    /// the manifest's error file.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignored: Vec<String>,
}

/// What an export writes of a type, in order: its resources as the mark saw them, then the
/// deletions since `_since`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Stage {
    Resources,
    Deleted,
}

/// Where a job carries on: the type (an index into [`ExportRequest::types`]), the stage, the
/// `_typeFilter` query (an index into the type's filters) and the last id written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Position {
    pub type_index: usize,
    pub stage: Stage,
    pub filter: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
}

impl Position {
    /// The start of the type at `type_index`.
    pub fn start_of(type_index: usize) -> Position {
        Position { type_index, stage: Stage::Resources, filter: 0, after: None }
    }
}

/// A finished file of an export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutputFile {
    /// The type of its resources (`Bundle` for deletions, `OperationOutcome` for errors).
    #[serde(rename = "type")]
    pub resource_type: String,
    /// Its name in the job's directory, which is also the last segment of its URL.
    pub name: String,
    pub count: u64,
    /// Which list of the manifest it is in.
    pub list: List,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum List {
    Output,
    Deleted,
    Error,
}

/// Where a job stands: the files it has finished, and where it carries on (`None` when it has
/// not started; a finished job has no position).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    pub files: Vec<OutputFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<Position>,
}

impl Progress {
    /// How many resources the finished files hold.
    pub fn written(&self) -> u64 {
        self.files.iter().filter(|f| f.list != List::Error).map(|f| f.count).sum()
    }
}

/// The top-level elements `_elements` keeps of a `resource_type` (`Type.element` entries of
/// that type and bare `element` entries); `None` when it keeps them all.
pub fn elements_of<'a>(elements: &'a [String], resource_type: &str) -> Option<Vec<&'a str>> {
    if elements.is_empty() {
        return None;
    }
    let kept: Vec<&str> = elements
        .iter()
        .filter_map(|entry| match entry.split_once('.') {
            Some((of, element)) => (of == resource_type).then_some(element),
            None => Some(entry.as_str()),
        })
        .collect();
    // Entries all of other types: this type is not trimmed at all (the IG lets a client name
    // elements per type).
    let typed_elsewhere = elements.iter().all(|e| e.split_once('.').is_some_and(|(of, _)| of != resource_type));
    (!typed_elsewhere).then_some(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elements_apply_per_type() {
        let elements: Vec<String> = ["id", "Patient.name", "Observation.status"].map(String::from).to_vec();
        assert_eq!(elements_of(&elements, "Patient"), Some(vec!["id", "name"]));
        assert_eq!(elements_of(&elements, "Encounter"), Some(vec!["id"]));
        let typed: Vec<String> = vec!["Patient.name".into()];
        assert_eq!(elements_of(&typed, "Observation"), None);
        assert_eq!(elements_of(&[], "Patient"), None);
    }

    #[test]
    fn requests_and_progress_round_trip() {
        let progress = Progress {
            files: vec![OutputFile {
                resource_type: "Patient".into(),
                name: "Patient-1.ndjson".into(),
                count: 3,
                list: List::Output,
            }],
            position: Some(Position { type_index: 1, stage: Stage::Deleted, filter: 0, after: Some("x".into()) }),
        };
        let text = serde_json::to_string(&progress).unwrap();
        assert_eq!(serde_json::from_str::<Progress>(&text).unwrap(), progress);
        assert_eq!(progress.written(), 3);
        assert_eq!(SinceText::Mark("seq:5".into()).since(), Some(Since::Mark(Mark::Seq(5))));
        assert!(matches!(SinceText::Time(1_000_000).since(), Some(Since::Time(_))));
    }
}
