//! Invoking a FHIR operation: the common steps in front of every operation of
//! [`crate::operations`], and the [`OperationContext`] through which an operation reaches data.

use std::sync::Arc;

use serde_json::Value;

use super::source::Source;
use super::view::{Lookup, ReadView};
use super::{Body, FhirRequest, FhirResponse, FhirService, Method};
use crate::model::validate::validate_resource;
use crate::model::FhirError;
use crate::operations::{self, inputs, Level, Needs, Registered};
use crate::search::criteria::{parse_criterion, Context, ValueSets};
use crate::search::params::Paging;
use crate::search::Registry;
use crate::store::{Condition, ResourceVersion, WriteMethod};

/// What an operation may use while it runs: the caller's guarded read view, the instance it
/// was invoked on (read through that view), and the few services operations share. There is
/// no way from here to the store that skips the caller's access.
pub struct OperationContext<'a> {
    /// Reads as the caller.
    pub view: ReadView<'a>,
    service: &'a FhirService,
    instance: Option<ResourceVersion>,
    cursor: Option<String>,
    read_only: bool,
}

impl OperationContext<'_> {
    /// The current version of the instance an instance-level operation that needs
    /// [`Needs::ReadInstance`] was invoked on.
    pub fn instance(&self) -> Option<&ResourceVersion> {
        self.instance.as_ref()
    }

    /// The `_cursor` of a paged operation's link, when the request follows one.
    pub fn cursor(&self) -> Option<&str> {
        self.cursor.as_deref()
    }

    /// Whether it was invoked with GET (or HEAD), which must change nothing.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// The public FHIR base URL.
    pub fn base_url(&self) -> &str {
        &self.service.config.base_url
    }

    /// The server's page sizes.
    pub fn paging(&self) -> Paging {
        self.service.config.paging
    }

    /// The search parameters in force.
    pub fn registry(&self) -> Arc<Registry> {
        self.service.registry()
    }

    /// The condition group of one search criterion (`name=value`) on `resource_type`.
    pub fn criterion(&self, resource_type: &str, name: &str, value: &str) -> Result<Vec<Condition>, FhirError> {
        let registry = self.registry();
        let value_sets = ValueSets::new();
        let search = Context { registry: &registry, base_url: self.base_url(), value_sets: &value_sets };
        parse_criterion(search, resource_type, name, value)
    }

    /// The absolute URL of a resource (a `fullUrl`).
    pub fn resource_url(&self, resource_type: &str, id: &str) -> String {
        self.service.resource_url(resource_type, id)
    }

    /// The checks a create or update of `resource` as a `resource_type` would make, storing
    /// nothing.
    pub fn check_content(&self, resource_type: &str, resource: &Value) -> Result<(), FhirError> {
        validate_resource(resource, resource_type)?;
        self.service.check_definition(resource_type, resource)
    }

    /// Queues a background job (202 with the status URL).
    pub async fn queue_job(&mut self, kind: &str, parameters: &str, what: &str) -> Result<FhirResponse, FhirError> {
        self.service.queue_job(kind, parameters, what).await
    }

    /// Creates `resource` (checked as a create would be) as the caller: in the transaction
    /// the operation runs in, or in one of its own.
    pub async fn create(&mut self, resource_type: &str, resource: Value) -> Result<ResourceVersion, FhirError> {
        if self.read_only {
            return Err(FhirError::method_not_allowed("this invocation stores data: use POST", "POST"));
        }
        self.check_content(resource_type, &resource)?;
        let id = crate::model::resource::new_id();
        if let Source::Tx(tx) = &mut self.view.source {
            return self.service.store_resource(*tx, resource_type, &id, 1, resource, WriteMethod::Create).await;
        }
        let mut tx = self.service.begin(self.view.access()).await?;
        match self.service.store_resource(tx.as_mut(), resource_type, &id, 1, resource, WriteMethod::Create).await {
            Ok(version) => {
                tx.commit().await.map_err(super::store_error)?;
                Ok(version)
            }
            Err(error) => {
                tx.rollback().await;
                Err(error)
            }
        }
    }
}

impl FhirService {
    /// Invokes operation `code` at `level`: finds it, checks the method, the inputs and the
    /// access it needs, then runs it with the caller's read view over `source`.
    pub(super) async fn invoke(
        &self,
        mut source: Source<'_>,
        level: Level,
        code: &str,
        request: FhirRequest,
    ) -> Result<FhirResponse, FhirError> {
        let Registered { operation, definition, needs, pages } = operations::find(code, &level)?;
        let allowed = if definition.affects_state { "POST" } else { "GET, HEAD, POST" };
        let get = match request.method {
            Method::Get | Method::Head if !definition.affects_state => true,
            Method::Post => false,
            method => {
                let why = match method {
                    Method::Get | Method::Head => " (it changes data, so FHIR allows only POST)",
                    _ => "",
                };
                return Err(FhirError::method_not_allowed(
                    format!("${code} cannot be invoked with {}{why}; allowed: {allowed}", method.as_str()),
                    allowed,
                ));
            }
        };
        let FhirRequest { mut query, body, access, .. } = request;
        let cursor = if pages { take_cursor(&mut query) } else { None };
        if needs == Needs::Administrator && !access.is_administrator() {
            return Err(FhirError::forbidden(format!("${code} needs full system access (system/*.cruds)")));
        }
        let inputs = inputs::read(definition, &query, if get { None } else { body })?;
        let mut view = ReadView::new(self, &access, source.reborrow());
        let instance = match (&level, needs) {
            (Level::Instance(t, id), Needs::ReadInstance) => match view.read(t, id).await? {
                Lookup::Found(version) => Some(version),
                Lookup::Deleted(deletion) => {
                    return Err(FhirError::gone(t, id, deletion.version));
                }
                Lookup::Unknown => return Err(FhirError::not_found(format!("{t}/{id} is not known"))),
            },
            _ => None,
        };
        let mut context = OperationContext { view, service: self, instance, cursor, read_only: get };
        operation.run(&mut context, &level, &inputs).await
    }

    /// `GET OperationDefinition/[id]` of an operation this server implements: its definition
    /// as published, with this server's base in the project's own canonical URLs.
    pub(super) fn operation_definition(&self, id: &str) -> Result<FhirResponse, FhirError> {
        let definition = operations::definition::by_id(id)
            .ok_or_else(|| FhirError::not_found(format!("OperationDefinition/{id} is not known")))?;
        Ok(FhirResponse::new(200, Body::Json(definition.published(&self.config.base_url))))
    }
}

/// Takes the paging `_cursor` out of an invocation's parameters.
fn take_cursor(query: &mut Vec<(String, String)>) -> Option<String> {
    let position = query.iter().position(|(name, _)| name == "_cursor")?;
    Some(query.remove(position).1)
}
