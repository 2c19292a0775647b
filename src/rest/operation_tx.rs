//! The write transaction of an operation that changes data ($hold, $book, $cancel,
//! $generate-slots): guarded by the caller's access and the workflow rules exactly as REST
//! writes are (see [`FhirService::begin`]), and the transaction of the bundle when the
//! operation runs as one of its entries.

use serde_json::Value;

use super::{store_error, FhirService};
use crate::model::resource::new_id;
use crate::model::FhirError;
use crate::store::{ResourceVersion, SearchPage, SearchQuery, StoreTx, WriteMethod};

/// The transaction an operation writes in.
enum Handle<'a> {
    /// Its own: committed by [`OperationTx::commit`].
    Owned(Box<dyn StoreTx>),
    /// The enclosing bundle's: committed (or not) with the bundle.
    Borrowed(&'a mut dyn StoreTx),
}

/// Reads and writes of an operation, in one transaction, as the caller.
pub struct OperationTx<'a> {
    handle: Handle<'a>,
    service: &'a FhirService,
}

impl<'a> OperationTx<'a> {
    pub(super) fn owned(service: &'a FhirService, tx: Box<dyn StoreTx>) -> Self {
        OperationTx { handle: Handle::Owned(tx), service }
    }

    pub(super) fn borrowed(service: &'a FhirService, tx: &'a mut dyn StoreTx) -> Self {
        OperationTx { handle: Handle::Borrowed(tx), service }
    }

    /// The public FHIR base URL.
    pub fn base_url(&self) -> &str {
        &self.service.config.base_url
    }

    fn tx(&mut self) -> &mut dyn StoreTx {
        match &mut self.handle {
            Handle::Owned(tx) => tx.as_mut(),
            Handle::Borrowed(tx) => &mut **tx,
        }
    }

    /// The current version of a resource the caller reaches, locked until the transaction
    /// ends; `None` when there is none or it is deleted (404 for one the caller does not reach).
    pub async fn read(&mut self, resource_type: &str, id: &str) -> Result<Option<ResourceVersion>, FhirError> {
        let current = self.tx().current(resource_type, id).await.map_err(store_error)?;
        Ok(current.filter(|version| !version.deleted))
    }

    /// Whether a resource was ever written under this id (deleted ones included).
    pub async fn exists(&mut self, resource_type: &str, id: &str) -> Result<bool, FhirError> {
        Ok(self.tx().current(resource_type, id).await.map_err(store_error)?.is_some())
    }

    /// A search query from search parameters (see [`FhirService::search_query`]).
    pub fn search_query(&self, resource_type: &str, parameters: &[(String, String)]) -> Result<SearchQuery, FhirError> {
        self.service.search_query(resource_type, parameters)
    }

    /// A search as the transaction sees it (for the checks of the operation itself; what the
    /// caller is shown comes from its read view).
    pub async fn search(&mut self, query: &SearchQuery) -> Result<SearchPage, FhirError> {
        self.tx().search(query).await.map_err(store_error)
    }

    /// Creates `resource` with a new id, checked as a REST create is.
    pub async fn create(&mut self, resource_type: &str, resource: Value) -> Result<ResourceVersion, FhirError> {
        self.put(resource_type, &new_id(), 1, resource, WriteMethod::Create).await
    }

    /// Creates `resource` under `id` (which must be free), checked as a REST create is.
    pub async fn create_as(
        &mut self,
        resource_type: &str,
        id: &str,
        resource: Value,
    ) -> Result<ResourceVersion, FhirError> {
        self.put(resource_type, id, 1, resource, WriteMethod::Create).await
    }

    /// Writes `resource` as the version after `previous`, checked as a REST update is.
    pub async fn update(&mut self, previous: &ResourceVersion, resource: Value) -> Result<ResourceVersion, FhirError> {
        let (resource_type, id) = (previous.resource_type.clone(), previous.id.clone());
        self.put(&resource_type, &id, previous.version + 1, resource, WriteMethod::Update).await
    }

    async fn put(
        &mut self,
        resource_type: &str,
        id: &str,
        version: i64,
        resource: Value,
        method: WriteMethod,
    ) -> Result<ResourceVersion, FhirError> {
        crate::model::validate::validate_resource(&resource, resource_type)?;
        let service = self.service;
        service.store_resource(self.tx(), resource_type, id, version, resource, method).await
    }

    /// Ends the transaction with the outcome of the work done in it: commits when it succeeded
    /// (the commit's own refusal, such as a Slot taken meanwhile, is then the outcome), rolls
    /// back when it failed.
    pub async fn finish<T>(self, outcome: Result<T, FhirError>) -> Result<T, FhirError> {
        match outcome {
            Ok(value) => self.commit().await.map(|()| value),
            Err(error) => {
                self.rollback().await;
                Err(error)
            }
        }
    }

    /// Commits a transaction of its own (a bundle's commits with the bundle). Nothing is stored
    /// when it fails, and the workflow rules checked at commit answer with their own status.
    pub async fn commit(self) -> Result<(), FhirError> {
        match self.handle {
            Handle::Owned(tx) => tx.commit().await.map_err(store_error),
            Handle::Borrowed(_) => Ok(()),
        }
    }

    /// Undoes a transaction of its own; a bundle's is undone by the bundle's failure.
    pub async fn rollback(self) {
        if let Handle::Owned(tx) = self.handle {
            tx.rollback().await;
        }
    }
}
