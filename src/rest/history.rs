//! History of an instance, a type or the whole system, newest first, paged by keyset cursor.

use serde_json::json;

use super::bundle_writer::BundleWriter;
use super::view::{Lookup, ReadView};
use super::{Body, FhirRequest, FhirResponse, FhirService};
use crate::auth::scope::Permission;
use crate::model::resource::{format_instant, parse_instant};
use crate::model::FhirError;
use crate::store::{HistoryQuery, HistoryScope};

impl FhirService {
    /// `GET …/_history` with `_count`, `_since` and the `_cursor` of `next` links.
    pub(super) async fn history(
        &self,
        view: &mut ReadView<'_>,
        scope: HistoryScope,
        request: &FhirRequest,
    ) -> Result<FhirResponse, FhirError> {
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
        match &scope {
            HistoryScope::Instance(t, id) => {
                if view.read(t, id).await? == Lookup::Unknown {
                    return Err(FhirError::not_found(format!("{t}/{id} is not known")));
                }
            }
            // 403 when the token grants no read of the type.
            HistoryScope::Type(t) => {
                self.rule(view.access(), Permission::Read, t)?;
            }
            HistoryScope::System => {}
        }
        // Versions the caller may not read are left out (a page may then hold fewer entries;
        // its `next` link still continues after the last version looked at).
        let (page, last_seq) = view.history(&query).await?;
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
