//! Maps a FHIR REST path (relative to the base) to the thing it names.

use super::Method;
use crate::model::resource::is_valid_id;
use crate::model::validate::is_resource_type;
use crate::model::FhirError;

/// What a request path names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `""`: the base (bundles, system search).
    System,
    /// `metadata`.
    Metadata,
    /// `_history`.
    SystemHistory,
    /// `Patient`.
    Type(String),
    /// `Patient/_search`.
    TypeSearch(String),
    /// `Patient/_history`.
    TypeHistory(String),
    /// `Patient/1`.
    Instance(String, String),
    /// `Patient/1/_history`.
    InstanceHistory(String, String),
    /// `Patient/1/_history/2`.
    Version(String, String, i64),
    /// `Patient/1/Observation`: a search within a compartment.
    Compartment(String, String, String),
    /// `$reindex`: an operation on the whole server.
    SystemOperation(String),
    /// `Patient/$reindex`: an operation on one type.
    TypeOperation(String, String),
    /// `Patient/1/$everything`: an operation on one resource.
    InstanceOperation(String, String, String),
    /// `_jobs/7`: the status of an asynchronous request (FHIR async pattern).
    Job(i64),
    /// `_jobs/7/Patient-1.ndjson`: a file of a finished bulk export.
    JobFile(i64, String),
}

/// The id in a job's path.
fn job_id(text: &str) -> Result<i64, FhirError> {
    text.parse::<i64>().map_err(|_| FhirError::not_found(format!("there is no job '{text}'")))
}

impl Route {
    /// Parses a path such as `Patient/1/_history/2` (no leading slash, no query).
    pub fn parse(path: &str) -> Result<Route, FhirError> {
        let path = path.trim_matches('/');
        let segments: Vec<&str> = if path.is_empty() { Vec::new() } else { path.split('/').collect() };
        let resource_type = |name: &str| -> Result<String, FhirError> {
            if is_resource_type(name) {
                Ok(name.to_string())
            } else {
                Err(FhirError::not_found(format!("'{name}' is not a FHIR R4 resource type")))
            }
        };
        let id = |id: &str| -> Result<String, FhirError> {
            if is_valid_id(id) {
                Ok(id.to_string())
            } else {
                Err(FhirError::bad_request(format!("'{id}' is not a valid resource id (1-64 of A-Z a-z 0-9 - .)")))
            }
        };
        match segments.as_slice() {
            [] => Ok(Route::System),
            ["metadata"] => Ok(Route::Metadata),
            ["_history"] => Ok(Route::SystemHistory),
            [operation] if operation.starts_with('$') => Ok(Route::SystemOperation(operation[1..].to_string())),
            [t, operation] if operation.starts_with('$') => {
                Ok(Route::TypeOperation(resource_type(t)?, operation[1..].to_string()))
            }
            ["_jobs", job] => job_id(job).map(Route::Job),
            ["_jobs", job, file] => Ok(Route::JobFile(job_id(job)?, file.to_string())),
            [t, i, operation] if operation.starts_with('$') => {
                Ok(Route::InstanceOperation(resource_type(t)?, id(i)?, operation[1..].to_string()))
            }
            [t] => Ok(Route::Type(resource_type(t)?)),
            [t, "_search"] => Ok(Route::TypeSearch(resource_type(t)?)),
            [t, "_history"] => Ok(Route::TypeHistory(resource_type(t)?)),
            [t, i] => Ok(Route::Instance(resource_type(t)?, id(i)?)),
            [t, i, "_history"] => Ok(Route::InstanceHistory(resource_type(t)?, id(i)?)),
            [c, i, t] if crate::search::compartment::is_compartment(c) => {
                Ok(Route::Compartment(c.to_string(), id(i)?, resource_type(t)?))
            }
            [t, i, "_history", v] => {
                let version = v
                    .parse::<i64>()
                    .ok()
                    .filter(|v| *v > 0)
                    .ok_or_else(|| FhirError::not_found(format!("'{v}' is not a version of this resource")))?;
                Ok(Route::Version(resource_type(t)?, id(i)?, version))
            }
            _ => Err(FhirError::not_found(format!("no FHIR endpoint at '{path}'"))),
        }
    }
}

impl Route {
    /// The methods this endpoint answers (the `Allow` header of a 405).
    pub fn allowed_methods(&self) -> &'static str {
        match self {
            Route::System => "GET, HEAD, POST",
            Route::Metadata
            | Route::SystemHistory
            | Route::TypeHistory(_)
            | Route::InstanceHistory(..)
            | Route::Version(..) => "GET, HEAD",
            Route::Type(_) => "GET, HEAD, POST, PUT, PATCH, DELETE",
            Route::TypeSearch(_) => "POST",
            Route::Instance(..) => "GET, HEAD, PUT, PATCH, DELETE",
            Route::Compartment(..) => "GET, HEAD",
            Route::SystemOperation(_) | Route::TypeOperation(..) | Route::InstanceOperation(..) => "GET, HEAD, POST",
            Route::Job(_) => "GET, HEAD, DELETE",
            Route::JobFile(..) => "GET, HEAD",
        }
    }

    /// The endpoint as a path, for messages.
    pub fn describe(&self) -> String {
        match self {
            Route::System => "the base URL".to_string(),
            _ => self.path(&|id| id.to_string(), &|version| version.to_string(), &|name| name.to_string()),
        }
    }

    /// The endpoint as a template for logs (`Patient/{id}/_history/{vid}`; `""` for the
    /// base): resource types and operation names stay, ids and versions do not, and an
    /// operation name that is not plain (letters, digits, `-`) is `{operation}`.
    pub fn template(&self) -> String {
        let operation = |name: &str| {
            let plain = name.len() <= 48 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
            if plain {
                name.to_string()
            } else {
                "{operation}".to_string()
            }
        };
        self.path(&|_| "{id}".to_string(), &|_| "{vid}".to_string(), &operation)
    }

    /// The path, with ids, versions and operation names as `id`, `version` and `operation`
    /// show them.
    fn path(
        &self,
        id: &dyn Fn(&str) -> String,
        version: &dyn Fn(i64) -> String,
        operation: &dyn Fn(&str) -> String,
    ) -> String {
        match self {
            Route::System => String::new(),
            Route::Metadata => "metadata".to_string(),
            Route::SystemHistory => "_history".to_string(),
            Route::Type(t) => t.clone(),
            Route::TypeSearch(t) => format!("{t}/_search"),
            Route::TypeHistory(t) => format!("{t}/_history"),
            Route::Instance(t, i) => format!("{t}/{}", id(i)),
            Route::InstanceHistory(t, i) => format!("{t}/{}/_history", id(i)),
            Route::Version(t, i, v) => format!("{t}/{}/_history/{}", id(i), version(*v)),
            Route::Compartment(c, i, t) => format!("{c}/{}/{t}", id(i)),
            Route::SystemOperation(name) => format!("${}", operation(name)),
            Route::TypeOperation(t, name) => format!("{t}/${}", operation(name)),
            Route::InstanceOperation(t, i, name) => format!("{t}/{}/${}", id(i), operation(name)),
            Route::Job(job) => format!("_jobs/{}", id(&job.to_string())),
            Route::JobFile(job, file) => format!("_jobs/{}/{}", id(&job.to_string()), id(file)),
        }
    }

    /// The interaction a request with `method` is on this endpoint (a fixed list of names,
    /// for metrics).
    pub fn interaction(&self, method: Method) -> &'static str {
        match (method, self) {
            (_, Route::Metadata) => "capabilities",
            (Method::Post, Route::System) => "batch-transaction",
            (_, Route::System) => "search-system",
            (_, Route::SystemHistory) => "history-system",
            (Method::Post, Route::Type(_)) => "create",
            (Method::Put, Route::Type(_) | Route::Instance(..)) => "update",
            (Method::Patch, Route::Type(_) | Route::Instance(..)) => "patch",
            (Method::Delete, Route::Type(_) | Route::Instance(..)) => "delete",
            (_, Route::Type(_) | Route::TypeSearch(_)) => "search-type",
            (_, Route::Compartment(..)) => "search-compartment",
            (_, Route::TypeHistory(_)) => "history-type",
            (_, Route::Instance(..)) => "read",
            (_, Route::InstanceHistory(..)) => "history-instance",
            (_, Route::Version(..)) => "vread",
            (_, Route::SystemOperation(_) | Route::TypeOperation(..) | Route::InstanceOperation(..)) => "operation",
            (_, Route::Job(_)) => "job-status",
            (_, Route::JobFile(..)) => "job-file",
        }
    }

    /// The resource type the endpoint names (a compartment's, for a compartment search).
    pub fn resource_type(&self) -> Option<&str> {
        match self {
            Route::Type(t)
            | Route::TypeSearch(t)
            | Route::TypeHistory(t)
            | Route::Instance(t, _)
            | Route::InstanceHistory(t, _)
            | Route::Version(t, _, _)
            | Route::Compartment(t, _, _)
            | Route::TypeOperation(t, _)
            | Route::InstanceOperation(t, _, _) => Some(t),
            Route::System | Route::Metadata | Route::SystemHistory | Route::SystemOperation(_) | Route::Job(_) => None,
            Route::JobFile(..) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_shape() {
        assert_eq!(Route::parse("").unwrap(), Route::System);
        assert_eq!(Route::parse("metadata").unwrap(), Route::Metadata);
        assert_eq!(Route::parse("_history").unwrap(), Route::SystemHistory);
        assert_eq!(Route::parse("Patient").unwrap(), Route::Type("Patient".into()));
        assert_eq!(Route::parse("Patient/_search").unwrap(), Route::TypeSearch("Patient".into()));
        assert_eq!(Route::parse("Patient/_history").unwrap(), Route::TypeHistory("Patient".into()));
        assert_eq!(Route::parse("Patient/a.1").unwrap(), Route::Instance("Patient".into(), "a.1".into()));
        assert_eq!(Route::parse("Patient/1/_history").unwrap(), Route::InstanceHistory("Patient".into(), "1".into()));
        assert_eq!(Route::parse("Patient/1/_history/3").unwrap(), Route::Version("Patient".into(), "1".into(), 3));
        assert_eq!(
            Route::parse("Patient/1/Observation").unwrap(),
            Route::Compartment("Patient".into(), "1".into(), "Observation".into())
        );
        assert_eq!(Route::parse("$reindex").unwrap(), Route::SystemOperation("reindex".into()));
        assert_eq!(Route::parse("Patient/$reindex").unwrap(), Route::TypeOperation("Patient".into(), "reindex".into()));
        assert_eq!(
            Route::parse("Patient/1/$everything").unwrap(),
            Route::InstanceOperation("Patient".into(), "1".into(), "everything".into())
        );
        assert_eq!(Route::parse("_jobs/7").unwrap(), Route::Job(7));
        assert_eq!(Route::parse("_jobs/7/Patient-1.ndjson").unwrap(), Route::JobFile(7, "Patient-1.ndjson".into()));
    }

    #[test]
    fn rejects_bad_paths() {
        assert_eq!(Route::parse("Spaceship/1").unwrap_err().status(), 404);
        assert_eq!(Route::parse("Patient/a_b").unwrap_err().status(), 400);
        assert_eq!(Route::parse("Patient/1/_history/x").unwrap_err().status(), 404);
        assert_eq!(Route::parse("_jobs/x").unwrap_err().status(), 404);
        assert_eq!(Route::parse("Patient/1/2/3/4").unwrap_err().status(), 404);
        assert_eq!(Route::parse("Observation/1/Patient").unwrap_err().status(), 404, "Observation is no compartment");
    }
}
