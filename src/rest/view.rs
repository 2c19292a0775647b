//! The guarded read view: the only way interactions and operations read resources. It carries
//! the caller's [`Access`] with the place it reads from (reads, versions and searches see a
//! transaction's own writes; gathering reads see committed data), and applies the access policy on every
//! read — searches get the caller's restriction in their SQL, reads and gathered resources are
//! checked one by one — so that no code path can read data and forget to ask whether the caller
//! may see it (the way Helios hands its tenant context to every storage call). What it returns
//! is shown with write-only secrets hidden (a Subscription's channel headers), and noted for the
//! request's AuditEvent, which names the patients whose data it let through.

use super::source::Source;
use super::{store_error, FhirService};
use crate::audit::{Disclosed, RequestTrail};
use crate::auth::scope::Permission;
use crate::auth::Access;
use crate::model::FhirError;
use crate::store::{HistoryPage, HistoryQuery, ResourceVersion, SearchPage, SearchQuery};
use crate::subscriptions::secrets::shown;

/// A resource as the caller may know it.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    /// The version asked for, which the caller may read.
    Found(ResourceVersion),
    /// A deletion of a resource the caller could read before it was deleted.
    Deleted(ResourceVersion),
    /// Nothing the caller may know of: never written, or outside what it reaches.
    Unknown,
}

/// Reads as one caller, from the store or from inside a write transaction.
pub struct ReadView<'a> {
    service: &'a FhirService,
    access: &'a Access,
    /// Where it reads from (an operation that writes uses the same transaction).
    pub(super) source: Source<'a>,
}

impl<'a> ReadView<'a> {
    pub(super) fn new(service: &'a FhirService, access: &'a Access, source: Source<'a>) -> Self {
        ReadView { service, access, source }
    }

    /// The caller whose access the view applies.
    pub fn access(&self) -> &Access {
        self.access
    }

    /// Whether the caller's token allows `permission` on `version` (to tell, say, whether an
    /// update it validates would be allowed).
    pub fn permits(&self, permission: Permission, version: &ResourceVersion) -> bool {
        self.service.visible(self.access, permission, version)
    }

    /// Whether the caller may do `permission` on every resource of `resource_type` (no
    /// compartment or filter restricts it).
    pub fn reaches_all(&self, permission: Permission, resource_type: &str) -> bool {
        self.service.reaches_all(self.access, permission, resource_type)
    }

    /// A version read from elsewhere than this view (an export's version as of its snapshot),
    /// as the caller may see it: `None` when its token does not let it read it; noted for the
    /// AuditEvent as every read is.
    pub fn disclose(&self, version: ResourceVersion) -> Option<ResourceVersion> {
        if !self.service.visible(self.access, Permission::Read, &version) {
            return None;
        }
        let version = shown(version);
        RequestTrail::note_disclosed([Disclosed::from(&version)]);
        Some(version)
    }

    /// Whether the caller's token grants a search of `resource_type` at all.
    pub fn may_search(&self, resource_type: &str) -> bool {
        self.service.rule(self.access, Permission::Search, resource_type).is_ok()
    }

    /// The public FHIR base URL (for `fullUrl`s and links).
    pub fn base_url(&self) -> &str {
        &self.service.config.base_url
    }

    /// The current version of a resource; 403 when the caller's token grants no read of the
    /// type at all. A resource the caller does not reach is [`Lookup::Unknown`], as is its
    /// deletion.
    pub async fn read(&mut self, resource_type: &str, id: &str) -> Result<Lookup, FhirError> {
        let rule = self.service.rule(self.access, Permission::Read, resource_type)?;
        let Some(current) = self.source.read(resource_type, id).await? else { return Ok(Lookup::Unknown) };
        self.judge(rule.as_deref(), current).await
    }

    /// One version of a resource, under the same rules as [`ReadView::read`].
    pub async fn vread(&mut self, resource_type: &str, id: &str, version: i64) -> Result<Lookup, FhirError> {
        let rule = self.service.rule(self.access, Permission::Read, resource_type)?;
        let Some(found) = self.source.vread(resource_type, id, version).await? else { return Ok(Lookup::Unknown) };
        self.judge(rule.as_deref(), found).await
    }

    async fn judge(&mut self, rule: Option<&crate::auth::Rule>, version: ResourceVersion) -> Result<Lookup, FhirError> {
        if !self.service.reaches_for_read(&mut self.source, self.access, rule, &version).await? {
            return Ok(Lookup::Unknown);
        }
        let version = shown(version);
        if version.deleted {
            return Ok(Lookup::Deleted(version));
        }
        RequestTrail::note_disclosed([Disclosed::from(&version)]);
        Ok(Lookup::Found(version))
    }

    /// A page of search results among the resources the caller may search: the caller's
    /// restriction is added to `query` (in place: a search's links still read its count and
    /// cursor), so pages and totals stay exact. 403 when it may search none of its types.
    pub async fn search(&mut self, query: &mut SearchQuery) -> Result<SearchPage, FhirError> {
        self.service.restrict(self.access, Permission::Search, query)?;
        let mut page = self.source.search(query).await?;
        page.resources = page.resources.into_iter().map(shown).collect();
        RequestTrail::note_disclosed(page.resources.iter().map(Disclosed::from));
        Ok(page)
    }

    /// [`ReadView::search`], leaving out the types the caller may not search at all instead of
    /// refusing the query: an empty page when none is left.
    pub async fn search_readable(&mut self, query: &mut SearchQuery) -> Result<SearchPage, FhirError> {
        let searchable = |t: &String| self.service.rule(self.access, Permission::Search, t).is_ok();
        query.resource_types.retain(searchable);
        if query.resource_types.is_empty() {
            return Ok(SearchPage {
                resources: Vec::new(),
                total: Some(0),
                next: None,
                previous: None,
                marked: Vec::new(),
            });
        }
        self.search(query).await
    }

    /// The current resources with these keys that the caller may read; the others are left out.
    /// Like the reference lookups and history below, it reads committed data from the store,
    /// not a transaction's own writes (`_include` of a bundle entry sees what was committed).
    pub async fn read_many(&mut self, keys: &[(String, String)]) -> Result<Vec<ResourceVersion>, FhirError> {
        let resources = self.service.store.read_many(keys).await.map_err(store_error)?;
        let mut readable = Vec::with_capacity(resources.len());
        for resource in resources {
            if self.service.visible(self.access, Permission::Read, &resource) {
                readable.push(shown(resource));
                continue;
            }
            // A rule the resource alone cannot decide (a payment is a patient's through its Invoice).
            let rule = self.service.rule(self.access, Permission::Read, &resource.resource_type).ok().flatten();
            if self.service.reaches_by_query(&mut self.source, self.access, rule.as_deref(), &resource).await? {
                readable.push(shown(resource));
            }
        }
        RequestTrail::note_disclosed(readable.iter().map(Disclosed::from));
        Ok(readable)
    }

    /// The local resources that `sources` reference and the caller may read (committed data,
    /// as [`ReadView::read_many`]).
    pub async fn referenced(&mut self, sources: &[(String, String)]) -> Result<Vec<ResourceVersion>, FhirError> {
        let keys = self.references_from(sources, None, None).await?;
        self.read_many(&keys).await
    }

    /// The types of the resources that reference `target_type/target_id` (committed data).
    /// Types only, and not the caller's to see: they tell an operation which searches are
    /// worth running; what it returns comes from those searches, under the caller's access.
    pub async fn types_referring_to(&mut self, target_type: &str, target_id: &str) -> Result<Vec<String>, FhirError> {
        self.service.store.referring_types(target_type, target_id).await.map_err(store_error)
    }

    /// The keys of the local resources `sources` reference. Keys only, for this module's
    /// include walk: what they name is read through [`ReadView::read_many`].
    pub(super) async fn references_from(
        &mut self,
        sources: &[(String, String)],
        param: Option<&str>,
        target_type: Option<&str>,
    ) -> Result<Vec<(String, String)>, FhirError> {
        self.service.store.references_from(sources, param, target_type).await.map_err(store_error)
    }

    /// The keys of the `source_type` resources that reference `targets` (through `param` when
    /// given). Keys only, as for [`ReadView::references_from`].
    pub(super) async fn references_to(
        &mut self,
        targets: &[(String, String)],
        source_type: &str,
        param: Option<&str>,
    ) -> Result<Vec<(String, String)>, FhirError> {
        self.service.store.references_to(targets, source_type, param).await.map_err(store_error)
    }

    /// A page of history with the versions the caller may not see left out (the page may then
    /// hold fewer entries), and the sequence number of the last version looked at, where the
    /// next page starts.
    pub(super) async fn history(&mut self, query: &HistoryQuery) -> Result<(HistoryPage, Option<i64>), FhirError> {
        let mut page = self.service.store.history(query).await.map_err(store_error)?;
        let last_seq = page.entries.last().map(|(seq, _)| *seq);
        page.entries.retain(|(_, version)| self.service.history_visible(self.access, version));
        page.entries = page.entries.into_iter().map(|(seq, version)| (seq, shown(version))).collect();
        RequestTrail::note_disclosed(page.entries.iter().map(|(_, version)| Disclosed::from(version)));
        Ok((page, last_seq))
    }
}
