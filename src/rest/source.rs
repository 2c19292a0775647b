//! Where an interaction reads from: the store directly, or a write transaction (so that entries
//! of a transaction bundle see what earlier entries wrote).

use crate::model::FhirError;
use crate::store::{ResourceVersion, SearchPage, SearchQuery, Store, StoreTx};

use super::store_error;

/// The store, or an open transaction on it.
pub(super) enum Source<'a> {
    Store(&'a dyn Store),
    /// The store, a Binary read as stored: its content named, not inlined (for a download of
    /// the raw content, which streams it; ADR 11).
    Stored(&'a dyn Store),
    Tx(&'a mut dyn StoreTx),
}

impl Source<'_> {
    /// The current version of a resource.
    pub(super) async fn read(&mut self, resource_type: &str, id: &str) -> Result<Option<ResourceVersion>, FhirError> {
        match self {
            Source::Store(store) => store.read(resource_type, id).await,
            Source::Stored(store) if resource_type == "Binary" => store.binary_as_stored(id, None).await,
            Source::Stored(store) => store.read(resource_type, id).await,
            Source::Tx(tx) => tx.current(resource_type, id).await,
        }
        .map_err(store_error)
    }

    /// One version of a resource.
    pub(super) async fn vread(
        &mut self,
        resource_type: &str,
        id: &str,
        version: i64,
    ) -> Result<Option<ResourceVersion>, FhirError> {
        match self {
            Source::Store(store) => store.vread(resource_type, id, version).await,
            Source::Stored(store) if resource_type == "Binary" => store.binary_as_stored(id, Some(version)).await,
            Source::Stored(store) => store.vread(resource_type, id, version).await,
            Source::Tx(tx) => tx.vread(resource_type, id, version).await,
        }
        .map_err(store_error)
    }

    /// A page of search results.
    pub(super) async fn search(&mut self, query: &SearchQuery) -> Result<SearchPage, FhirError> {
        match self {
            Source::Store(store) | Source::Stored(store) => store.search(query).await,
            Source::Tx(tx) => tx.search(query).await,
        }
        .map_err(store_error)
    }

    /// A shorter-lived copy that reads from the same place.
    pub(super) fn reborrow(&mut self) -> Source<'_> {
        match self {
            Source::Store(store) => Source::Store(*store),
            Source::Stored(store) => Source::Stored(*store),
            Source::Tx(tx) => Source::Tx(&mut **tx),
        }
    }

    /// The transaction, for interactions that write.
    pub(super) fn tx(&mut self) -> Result<&mut dyn StoreTx, FhirError> {
        match self {
            Source::Tx(tx) => Ok(&mut **tx),
            Source::Store(_) | Source::Stored(_) => Err(FhirError::internal()),
        }
    }
}
