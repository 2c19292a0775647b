//! Keeping the search registry in step with the `SearchParameter` resources in the store: on
//! start-up, after a write on this node that touches one, and (for writes on other nodes) when
//! the newest `SearchParameter` version in the shared history changes.

use std::time::Duration;

use serde_json::Value;

use super::{FhirRequest, FhirService};
use crate::search::Registry;
use crate::store::{HistoryQuery, HistoryScope, StoreError};

/// The resource type that defines search parameters.
const TYPE: &str = "SearchParameter";

/// How many `SearchParameter` resources one page of the registry's load reads.
const PAGE: usize = 500;

/// How often a node looks for `SearchParameter` writes made by other nodes.
const WATCH_INTERVAL: Duration = Duration::from_secs(2);

impl FhirService {
    /// The search parameters in force now: the standard ones and the active custom ones.
    pub fn registry(&self) -> std::sync::Arc<Registry> {
        self.registry.current()
    }

    /// Rebuilds the registry from the standard parameters and the active `SearchParameter`
    /// resources in the store. Definitions the server cannot use are logged and left out.
    pub async fn load_search_parameters(&self) -> Result<(), StoreError> {
        // Taken first: a write that lands during the scan makes the watcher load again.
        let newest = self.newest_search_parameter_write().await?;
        let types = [TYPE.to_string()];
        let mut stored = Vec::new();
        let mut after = None;
        loop {
            let page = self.store.scan(&types, after.as_ref(), PAGE).await?;
            let full = page.len() == PAGE;
            after = page.last().map(|v| (v.resource_type.clone(), v.id.clone()));
            stored.extend(page.iter().filter_map(|v| serde_json::from_slice::<Value>(&v.body).ok()));
            if !full {
                break;
            }
        }
        let (registry, problems) = Registry::standard().with_custom(&stored);
        for problem in problems {
            tracing::warn!(%problem, "a stored SearchParameter is not in force");
        }
        self.registry.replace(registry, newest);
        Ok(())
    }

    /// Reloads the registry whenever another node has written a `SearchParameter`, until the
    /// process ends.
    pub async fn watch_search_parameters(self) {
        loop {
            tokio::time::sleep(WATCH_INTERVAL).await;
            let changed = match self.newest_search_parameter_write().await {
                Ok(newest) => newest != self.registry.source(),
                Err(error) => {
                    tracing::warn!(%error, "cannot check for new SearchParameters");
                    false
                }
            };
            if changed {
                if let Err(error) = self.load_search_parameters().await {
                    tracing::warn!(%error, "cannot reload the SearchParameters");
                }
            }
        }
    }

    /// The history sequence number of the newest `SearchParameter` version (0 when none).
    async fn newest_search_parameter_write(&self) -> Result<i64, StoreError> {
        let query =
            HistoryQuery { scope: HistoryScope::Type(TYPE.to_string()), since: None, before_seq: None, count: 1 };
        let page = self.store.history(&query).await?;
        Ok(page.entries.first().map_or(0, |(seq, _)| *seq))
    }
}

/// Whether `request` may have written a `SearchParameter` resource (directly or as an entry of
/// a transaction), so that the registry must be rebuilt.
pub(super) fn writes_search_parameters(request: &FhirRequest) -> bool {
    if !request.method.writes() {
        return false;
    }
    if request.path.trim_matches('/').split('/').next() == Some(TYPE) {
        return true;
    }
    let entries = request.body.as_ref().and_then(|b| b.get("entry")).and_then(Value::as_array);
    entries.into_iter().flatten().any(|entry| {
        let request = entry.get("request");
        let method = request.and_then(|r| r.get("method")).and_then(Value::as_str);
        let url = request.and_then(|r| r.get("url")).and_then(Value::as_str).unwrap_or("");
        method != Some("GET") && method != Some("HEAD") && url.trim_start_matches('/').starts_with(TYPE)
    })
}
