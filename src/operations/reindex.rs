//! `$reindex` (`POST /fhir/$reindex`, `POST /fhir/[type]/$reindex`): queues a job that
//! recomputes the search index of stored resources with the parameters now in force, so that
//! custom SearchParameters cover data written before them. The job itself runs in the
//! background worker (`rest/reindex.rs`), one batch per transaction.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::{Inputs, Level, Operation};
use crate::model::FhirError;
use crate::rest::{FhirResponse, OperationContext};

/// The job kind in the queue.
pub const JOB_KIND: &str = "reindex";

/// What a reindex job covers.
#[derive(Serialize, Deserialize)]
pub struct JobParameters {
    /// Resource types; empty for all.
    pub types: Vec<String>,
}

pub struct Reindex;

#[async_trait]
impl Operation for Reindex {
    async fn run(
        &self,
        context: &mut OperationContext<'_>,
        level: &Level,
        _inputs: &Inputs,
    ) -> Result<FhirResponse, FhirError> {
        let types: Vec<String> = level.resource_type().map(str::to_string).into_iter().collect();
        let what = match types.as_slice() {
            [] => "reindex of all resources".to_string(),
            types => format!("reindex of {}", types.join(", ")),
        };
        let parameters = serde_json::to_string(&JobParameters { types }).map_err(|_| FhirError::internal())?;
        context.queue_job(JOB_KIND, &parameters, &what).await
    }
}
