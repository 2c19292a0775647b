//! History of an instance, a type or the whole system, newest first, paged by keyset cursor.

use serde_json::json;

use super::bundle_writer::BundleWriter;
use super::{store_error, Body, FhirRequest, FhirResponse, FhirService};
use crate::auth::scope::Permission;
use crate::model::resource::{format_instant, parse_instant};
use crate::model::FhirError;
use crate::store::{HistoryQuery, HistoryScope};

impl FhirService {
    /// `GET …/_history` with `_count`, `_since` and the `_cursor` of `next` links.
    pub(super) async fn history(&self, scope: HistoryScope, request: &FhirRequest) -> Result<FhirResponse, FhirError> {
        let mut query = HistoryQuery {
            scope: scope.clone(),
            since: None,
            before_seq: None,
            count: self.config.paging.default_count,
        };
        let mut applied = Vec::new();
        for (name, value) in &request.query {
            match name.as_str() {
                "_count" => {
                    let count: usize = value.parse().map_err(|_| {
                        FhirError::bad_request(format!("_count must be a non-negative integer, not '{value}'"))
                    })?;
                    query.count = count.min(self.config.paging.max_count);
                    applied.push((name.as_str(), value.clone()));
                }
                "_since" => {
                    let since = parse_instant(value).ok_or_else(|| {
                        FhirError::bad_request(format!(
                            "_since must be an instant such as 2026-01-31T12:00:00Z, not '{value}'"
                        ))
                    })?;
                    query.since = Some(since);
                    applied.push((name.as_str(), value.clone()));
                }
                "_cursor" => {
                    query.before_seq = Some(value.parse().map_err(|_| FhirError::bad_request("invalid _cursor"))?);
                }
                _ if request.conditions.strict && !matches!(name.as_str(), "_format" | "_pretty") => {
                    return Err(FhirError::bad_request(format!("history does not support the parameter '{name}'")));
                }
                _ => {}
            }
        }
        let rule = match &scope {
            HistoryScope::Instance(t, _) | HistoryScope::Type(t) => self.rule(&request.access, Permission::Read, t)?,
            HistoryScope::System => None,
        };
        if let HistoryScope::Instance(t, id) = &scope {
            let unknown = || FhirError::not_found(format!("{t}/{id} is not known"));
            let current = self.store.read(t, id).await.map_err(store_error)?.ok_or_else(unknown)?;
            let mut source = super::source::Source::Store(self.store.as_ref());
            if !self.reaches(&mut source, rule.as_deref(), &current).await? {
                return Err(unknown());
            }
        }
        let mut page = self.store.history(&query).await.map_err(store_error)?;
        // Versions the caller may not read are left out (a page may then hold fewer entries;
        // its `next` link still continues after the last version looked at).
        let last_seq = page.entries.last().map(|(seq, _)| *seq);
        page.entries.retain(|(_, version)| self.history_visible(&request.access, version));
        let base = match &scope {
            HistoryScope::System => format!("{}/_history", self.config.base_url),
            HistoryScope::Type(t) => format!("{}/{t}/_history", self.config.base_url),
            HistoryScope::Instance(t, id) => format!("{}/{t}/{id}/_history", self.config.base_url),
        };
        let link = |cursor: Option<i64>| {
            let mut pairs = url::form_urlencoded::Serializer::new(String::new());
            for (name, value) in &applied {
                pairs.append_pair(name, value);
            }
            if let Some(cursor) = cursor {
                pairs.append_pair("_cursor", &cursor.to_string());
            }
            let query = pairs.finish();
            if query.is_empty() {
                base.clone()
            } else {
                format!("{base}?{query}")
            }
        };
        let mut links = vec![("self", link(query.before_seq))];
        if page.has_more {
            if let Some(seq) = last_seq {
                links.push(("next", link(Some(seq))));
            }
        }
        let mut bundle = BundleWriter::new("history", None, &links);
        for (_, version) in &page.entries {
            let url = match version.method {
                crate::store::WriteMethod::Create => version.resource_type.clone(),
                _ => format!("{}/{}", version.resource_type, version.id),
            };
            let status = match version.method {
                crate::store::WriteMethod::Create => "201 Created",
                crate::store::WriteMethod::Delete => "204 No Content",
                _ => "200 OK",
            };
            let entry = json!({
                "fullUrl": self.resource_url(&version.resource_type, &version.id),
                "request": {"method": version.method.as_str(), "url": url},
                "response": {"status": status, "etag": format!("W/\"{}\"", version.version), "lastModified": format_instant(version.last_updated)},
            });
            bundle.entry(&entry, (!version.deleted).then_some(&version.body[..]));
        }
        Ok(FhirResponse::new(200, Body::Raw(bundle.finish())))
    }
}
