//! Type-level search: parse the parameters, ask the store, page with keyset cursors.

use serde_json::json;

use super::bundle_writer::BundleWriter;
use super::source::Source;
use super::{Body, FhirRequest, FhirResponse, FhirService};
use crate::model::FhirError;
use crate::search::params::parse_search;

impl FhirService {
    /// `GET [type]?…` and `POST [type]/_search`: a `searchset` Bundle ordered by id, with
    /// `self` (only the parameters applied) and `next` links.
    pub(super) async fn search(
        &self,
        source: &mut Source<'_>,
        resource_type: &str,
        request: &FhirRequest,
    ) -> Result<FhirResponse, FhirError> {
        let parsed = parse_search(
            self.registry,
            resource_type,
            &request.query,
            &self.config.base_url,
            request.conditions.strict,
            self.config.paging,
        )?;
        let mut query = parsed.query;
        if query.count == 0 {
            query.with_total = true;
        }
        let page = source.search(&query).await?;
        let type_url = format!("{}/{resource_type}", self.config.base_url);
        let link = |extra: Option<(&str, &str)>| {
            let mut pairs = url::form_urlencoded::Serializer::new(String::new());
            for (name, value) in &parsed.applied {
                pairs.append_pair(name, value);
            }
            if !parsed.applied.iter().any(|(name, _)| name == "_count") {
                pairs.append_pair("_count", &query.count.to_string());
            }
            if let Some((name, value)) = extra {
                pairs.append_pair(name, value);
            }
            format!("{type_url}?{}", pairs.finish())
        };
        let mut links = vec![("self", link(query.after_id.as_deref().map(|cursor| ("_cursor", cursor))))];
        if page.has_more {
            if let Some(last) = page.resources.last() {
                links.push(("next", link(Some(("_cursor", &last.id)))));
            }
        }
        let mut bundle = BundleWriter::new("searchset", page.total, &links);
        for found in &page.resources {
            let entry =
                json!({"fullUrl": self.resource_url(&found.resource_type, &found.id), "search": {"mode": "match"}});
            bundle.entry(&entry, Some(&found.body));
        }
        Ok(FhirResponse::new(200, Body::Raw(bundle.finish())))
    }
}
