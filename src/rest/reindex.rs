//! The reindex job queued by `$reindex` (`crate::operations`): recomputes the search index of
//! stored resources with the parameters now in force, one batch per transaction, carrying on
//! after the last (type, id) it recorded when another worker takes it over.

use serde::{Deserialize, Serialize};

use super::jobs::{lease_until, JobEnd};
use super::FhirService;
use crate::operations::reindex::JobParameters;
use crate::search::index::index_resource;
use crate::store::{IndexRows, Job, JobStep, ResourceVersion};

/// Resources per batch (and per transaction).
const BATCH: usize = 500;

/// Where a reindex job carries on: after this (type, id).
#[derive(Serialize, Deserialize)]
struct Progress {
    after: (String, String),
}

impl FhirService {
    /// Runs (or resumes) a reindex job.
    pub(super) async fn reindex_job(&self, owner: &str, job: &Job) -> Result<JobEnd, String> {
        let parameters: JobParameters = serde_json::from_str(&job.parameters).map_err(|e| e.to_string())?;
        let progress: Option<Progress> =
            job.progress.as_deref().map(serde_json::from_str).transpose().map_err(|e| e.to_string())?;
        let mut after = progress.map(|p| p.after);
        let mut processed = job.processed;
        loop {
            let batch = self.store.scan(&parameters.types, after.as_ref(), BATCH).await.map_err(|e| e.to_string())?;
            let Some(last) = batch.last() else {
                return Ok(JobEnd::Finished(format!("reindexed {processed} resources")));
            };
            after = Some((last.resource_type.clone(), last.id.clone()));
            processed += batch.len() as i64;
            let registry = self.registry();
            let base_url = self.config.base_url.clone();
            let rows = tokio::task::spawn_blocking(move || index_batch(&registry, batch, &base_url))
                .await
                .map_err(|e| e.to_string())?;
            let progress = serde_json::to_string(&Progress { after: after.clone().unwrap_or_default() })
                .map_err(|e| e.to_string())?;
            let step = JobStep { id: job.id, owner, progress: &progress, processed, lease_until: lease_until() };
            let mut tx = self.store.begin().await.map_err(|e| e.to_string())?;
            tx.reindex(&rows).await.map_err(|e| e.to_string())?;
            if !tx.job_step(&step).await.map_err(|e| e.to_string())? {
                return Ok(JobEnd::Abandoned);
            }
            tx.commit().await.map_err(|e| e.to_string())?;
        }
    }
}

/// The index rows of each stored version (bodies that do not parse keep no rows).
fn index_batch(
    registry: &crate::search::Registry,
    batch: Vec<ResourceVersion>,
    base_url: &str,
) -> Vec<(ResourceVersion, IndexRows)> {
    batch
        .into_iter()
        .map(|version| {
            let rows = serde_json::from_slice(&version.body)
                .map(|resource| index_resource(registry, &resource, base_url))
                .unwrap_or_default();
            (version, rows)
        })
        .collect()
}
