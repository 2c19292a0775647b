//! Keeping what the server builds from stored definitions in step with them: the search
//! registry with the `SearchParameter` resources, the profiles with the `StructureDefinition`,
//! `ValueSet` and `CodeSystem` resources (over the carried ones and the operator's packages).
//! Each is rebuilt on start-up, after a write on this node that touches its types, and (for
//! writes on other nodes) when the newest version of its types in the shared history changes.

use std::time::Duration;

use serde_json::Value;

use super::subscriptions::SUBSCRIPTION_TYPES;
use super::{FhirRequest, FhirService};
use crate::search::Registry;
use crate::store::{HistoryQuery, HistoryScope, StoreError};
use crate::validation::Definitions;

/// The resource types that define search parameters.
pub(super) const SEARCH_PARAMETER_TYPES: &[&str] = &["SearchParameter"];

/// The resource types that define profiles and the value sets they bind.
pub(super) const PROFILE_TYPES: &[&str] = &["StructureDefinition", "ValueSet", "CodeSystem"];

/// How many resources one page of a load reads.
const PAGE: usize = 500;

/// How often a node looks for definitions written by other nodes.
const WATCH_INTERVAL: Duration = Duration::from_secs(2);

impl FhirService {
    /// The search parameters in force now: the standard ones and the active custom ones.
    pub fn registry(&self) -> std::sync::Arc<Registry> {
        self.registry.current()
    }

    /// The profiles in force now: the carried ones, the operator's packages' and the stored ones.
    pub fn definitions(&self) -> std::sync::Arc<Definitions> {
        self.definitions.current()
    }

    /// Rebuilds the registry from the standard parameters and the active `SearchParameter`
    /// resources in the store. Definitions the server cannot use are logged and left out.
    pub async fn load_search_parameters(&self) -> Result<(), StoreError> {
        // Taken first: a write that lands during the scan makes the watcher load again.
        let newest = self.newest_write(SEARCH_PARAMETER_TYPES).await?;
        let stored = self.stored(SEARCH_PARAMETER_TYPES).await?;
        let (registry, problems) = Registry::standard().with_custom(&stored);
        for problem in problems {
            tracing::warn!(%problem, "a stored SearchParameter is not in force");
        }
        self.registry.replace(registry, newest);
        Ok(())
    }

    /// Rebuilds the profiles from the carried ones, the operator's packages and the stored
    /// StructureDefinitions, ValueSets and CodeSystems.
    pub async fn load_profiles(&self) -> Result<(), StoreError> {
        let newest = self.newest_write(PROFILE_TYPES).await?;
        let stored = self.stored(PROFILE_TYPES).await?;
        let resources: Vec<&Value> = self.config.profiles.packages.iter().chain(&stored).collect();
        let definitions = Definitions::with(&resources);
        self.definitions.replace(definitions, newest);
        Ok(())
    }

    /// Rebuilds whatever another node's writes have changed, until the process ends.
    pub async fn watch_stored_definitions(self) {
        loop {
            tokio::time::sleep(WATCH_INTERVAL).await;
            if self.changed(SEARCH_PARAMETER_TYPES, self.registry.source()).await {
                if let Err(error) = self.load_search_parameters().await {
                    tracing::warn!(%error, "cannot reload the SearchParameters");
                }
            }
            if self.changed(PROFILE_TYPES, self.definitions.source()).await {
                if let Err(error) = self.load_profiles().await {
                    tracing::warn!(%error, "cannot reload the profiles");
                }
            }
            if self.changed(SUBSCRIPTION_TYPES, self.subscriptions.source()).await {
                if let Err(error) = self.load_subscriptions().await {
                    tracing::warn!(%error, "cannot reload the subscriptions");
                }
            }
        }
    }

    /// Rebuilds what a successful `request` may have changed on this node.
    pub(super) async fn reload_after(&self, request: &FhirRequest) -> Result<(), StoreError> {
        if writes_any(request, SEARCH_PARAMETER_TYPES) {
            self.load_search_parameters().await?;
        }
        if writes_any(request, PROFILE_TYPES) {
            self.load_profiles().await?;
        }
        if writes_any(request, SUBSCRIPTION_TYPES) {
            self.load_subscriptions().await?;
        }
        Ok(())
    }

    /// Whether the newest stored version of `types` is another than the one of `source`.
    async fn changed(&self, types: &[&str], source: i64) -> bool {
        match self.newest_write(types).await {
            Ok(newest) => newest != source,
            Err(error) => {
                tracing::warn!(%error, ?types, "cannot check for new definitions");
                false
            }
        }
    }

    /// The current versions of every resource of `types`.
    async fn stored(&self, types: &[&str]) -> Result<Vec<Value>, StoreError> {
        let types: Vec<String> = types.iter().map(|t| t.to_string()).collect();
        let mut stored = Vec::new();
        let mut after = None;
        loop {
            let page = self.store.scan(&types, after.as_ref(), PAGE).await?;
            let full = page.len() == PAGE;
            after = page.last().map(|v| (v.resource_type.clone(), v.id.clone()));
            stored.extend(page.iter().filter_map(|v| serde_json::from_slice::<Value>(&v.body).ok()));
            if !full {
                return Ok(stored);
            }
        }
    }

    /// The history sequence number of the newest version of any of `types` (0 when none).
    pub(super) async fn newest_write(&self, types: &[&str]) -> Result<i64, StoreError> {
        let mut newest = 0;
        for resource_type in types {
            let scope = HistoryScope::Type(resource_type.to_string());
            let query = HistoryQuery { scope, since: None, before_seq: None, count: 1 };
            let page = self.store.history(&query).await?;
            newest = newest.max(page.entries.first().map_or(0, |(seq, _)| *seq));
        }
        Ok(newest)
    }
}

/// Whether `request` may have written a resource of one of `types` (directly or as an entry of
/// a bundle).
fn writes_any(request: &FhirRequest, types: &[&str]) -> bool {
    if !request.method.writes() {
        return false;
    }
    let of_types = |path: &str| types.contains(&path.trim_matches('/').split(['/', '?']).next().unwrap_or(""));
    if of_types(&request.path) {
        return true;
    }
    let entries = request.body.as_ref().and_then(|b| b.get("entry")).and_then(Value::as_array);
    entries.into_iter().flatten().any(|entry| {
        let request = entry.get("request");
        let method = request.and_then(|r| r.get("method")).and_then(Value::as_str);
        let url = request.and_then(|r| r.get("url")).and_then(Value::as_str).unwrap_or("");
        method != Some("GET") && method != Some("HEAD") && of_types(url)
    })
}
