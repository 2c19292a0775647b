//! Where the access policy meets the interactions. Searches get the caller's restriction in
//! their query; reads, versions, history entries and included resources are checked one by
//! one; and every write transaction runs through [`GuardedTx`], which checks each version
//! written (and the one it replaces) and restricts the lookups of conditional interactions, so
//! that no write path (bundles included) can go around the policy.

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;
use time::OffsetDateTime;

use super::FhirService;
use crate::auth::scope::Permission;
use crate::auth::{Access, PolicyContext, Restriction, Rule};
use crate::model::FhirError;
use crate::search::index::index_selected;
use crate::search::matcher::params_of;
use crate::search::Registry;
use crate::store::{
    Condition, IndexRows, JobStep, ResourceVersion, SearchPage, SearchQuery, StoreError, StoreResult, StoreTx,
};

/// The index rows access checks needed, by the hash of an [`AccessRowsKey`] (checked on a hit,
/// so that a lookup allocates nothing).
pub(super) type AccessRows = crate::bounded::BoundedMap<u64, Arc<CachedRows>>;

/// What the rows of [`AccessRows`] belong to. The instant is part of it: a version number read
/// inside a transaction that rolled back may later be written again with other content, never
/// at the same microsecond.
pub(super) struct AccessRowsKey {
    resource_type: String,
    id: String,
    version: i64,
    instant: i128,
    params: String,
}

impl AccessRowsKey {
    fn of(version: &ResourceVersion, params: &str) -> AccessRowsKey {
        AccessRowsKey {
            resource_type: version.resource_type.clone(),
            id: version.id.clone(),
            version: version.version,
            instant: version.last_updated.unix_timestamp_nanos(),
            params: params.to_string(),
        }
    }

    /// The map key of a version's rows (computed without allocating).
    fn hash(version: &ResourceVersion, params: &str) -> u64 {
        use std::hash::BuildHasher;
        static HASHER: std::sync::OnceLock<foldhash::fast::RandomState> = std::sync::OnceLock::new();
        let instant = version.last_updated.unix_timestamp_nanos();
        HASHER.get_or_init(foldhash::fast::RandomState::default).hash_one((
            &version.resource_type,
            &version.id,
            version.version,
            instant,
            params,
        ))
    }

    fn is_for(&self, version: &ResourceVersion, params: &str) -> bool {
        self.resource_type == version.resource_type
            && self.id == version.id
            && self.version == version.version
            && self.instant == version.last_updated.unix_timestamp_nanos()
            && self.params == params
    }
}

/// Index rows with the key they were computed for.
pub(super) struct CachedRows {
    key: AccessRowsKey,
    rows: Arc<IndexRows>,
}

impl FhirService {
    /// Confines `query` to what `access` may reach with `permission`: types without a grant are
    /// left out (403 when none is left), the others get their restriction.
    pub(super) fn restrict(
        &self,
        access: &Access,
        permission: Permission,
        query: &mut SearchQuery,
    ) -> Result<(), FhirError> {
        let registry = self.registry();
        restrict_query(&policy(&registry, &self.config.base_url), access, permission, query)
    }

    /// The rule `access` applies to `permission` on `resource_type` (`None` when access is
    /// open); 403 when it grants nothing there.
    pub(super) fn rule(
        &self,
        access: &Access,
        permission: Permission,
        resource_type: &str,
    ) -> Result<Option<Arc<Rule>>, FhirError> {
        match access {
            Access::Open => Ok(None),
            Access::Token(_) => {
                let registry = self.registry();
                access.rule(policy(&registry, &self.config.base_url), permission, resource_type).map(Some)
            }
        }
    }

    /// Whether `access` may do `permission` on every resource of `resource_type` (no
    /// compartment or filter restricts it: staff, systems, the server).
    pub(super) fn reaches_all(&self, access: &Access, permission: Permission, resource_type: &str) -> bool {
        match self.rule(access, permission, resource_type) {
            Ok(None) => true,
            Ok(Some(rule)) => rule.restriction == Restriction::None,
            Err(_) => false,
        }
    }

    /// Whether `rule` (from [`FhirService::rule`]) admits `version`. The index rows it needs
    /// are kept per version and parameter set: a resource read again is not parsed again.
    pub(super) fn admitted(&self, rule: Option<&Rule>, version: &ResourceVersion) -> bool {
        let Some(rule) = rule else { return true };
        if rule.restriction == Restriction::None {
            return true;
        }
        if rule.params.is_empty() {
            return rule.restriction.admits(&version.resource_type, &version.id, &IndexRows::default());
        }
        let hash = AccessRowsKey::hash(version, &rule.params);
        let rows = match self.access_rows.get(&hash).filter(|cached| cached.key.is_for(version, &rule.params)) {
            Some(cached) => cached.rows.clone(),
            None => {
                let key = AccessRowsKey::of(version, &rule.params);
                let Some(resource) = serde_json::from_slice::<Value>(&version.body).ok() else { return false };
                let registry = self.registry();
                let rows = Arc::new(index_selected(&registry, &resource, &self.config.base_url, |code| {
                    rule.needs_param(code)
                }));
                self.access_rows.insert(hash, Arc::new(CachedRows { key, rows: rows.clone() }));
                rows
            }
        };
        rule.restriction.admits(&version.resource_type, &version.id, &rows)
    }

    /// Whether `rule` admits `version`, and for a deletion (which has no body) the version it
    /// deleted: the caller learns nothing, not even that something was deleted, of records it
    /// does not reach.
    pub(super) async fn reaches(
        &self,
        source: &mut super::source::Source<'_>,
        rule: Option<&Rule>,
        version: &ResourceVersion,
    ) -> Result<bool, FhirError> {
        let restricted = rule.is_some_and(|r| r.restriction != Restriction::None);
        if !version.deleted || !restricted {
            return Ok(self.admitted(rule, version));
        }
        if version.version <= 1 {
            return Ok(false);
        }
        let before = source.vread(&version.resource_type, &version.id, version.version - 1).await?;
        Ok(before.is_some_and(|before| !before.deleted && self.admitted(rule, &before)))
    }

    /// Whether a read or vread by `access` (its read `rule`) reaches `version`: by the rule
    /// itself, or for a Binary through its `securityContext`.
    pub(super) async fn reaches_for_read(
        &self,
        source: &mut super::source::Source<'_>,
        access: &Access,
        rule: Option<&Rule>,
        version: &ResourceVersion,
    ) -> Result<bool, FhirError> {
        Ok(self.reaches(source, rule, version).await?
            || self.reaches_by_security_context(source, access, version).await?
            || self.reaches_by_query(source, access, rule, version).await?)
    }

    /// Whether a rule that the version alone cannot decide (it follows a reference: a payment
    /// is a patient's through the Invoice it settles) admits it, asked of the store as a
    /// search by `_id` would be. Only the current version is judged so: an older one may have
    /// pointed elsewhere.
    pub(super) async fn reaches_by_query(
        &self,
        source: &mut super::source::Source<'_>,
        access: &Access,
        rule: Option<&Rule>,
        version: &ResourceVersion,
    ) -> Result<bool, FhirError> {
        if version.deleted || !rule.is_some_and(|rule| rule.restriction.follows_references()) {
            return Ok(false);
        }
        let current = source.read(&version.resource_type, &version.id).await?;
        if current.is_none_or(|current| current.version != version.version) {
            return Ok(false);
        }
        let mut query = SearchQuery::new(&version.resource_type, 1);
        query.all_of.push(vec![Condition::Id(version.id.clone())]);
        self.restrict(access, Permission::Read, &mut query)?;
        Ok(!source.search(&query).await?.resources.is_empty())
    }

    /// Whether a caller whose rule does not reach a Binary reaches it through its
    /// `securityContext`: a Binary belongs to no compartment, and FHIR R4 reads it under the
    /// access rules of the resource it names (a patient downloads the document their
    /// DocumentReference points to). A deleted Binary is judged by the version it deleted.
    async fn reaches_by_security_context(
        &self,
        source: &mut super::source::Source<'_>,
        access: &Access,
        version: &ResourceVersion,
    ) -> Result<bool, FhirError> {
        if version.resource_type != "Binary" {
            return Ok(false);
        }
        let judged = match version.deleted {
            false => Some(version.clone()),
            true if version.version > 1 => source.vread("Binary", &version.id, version.version - 1).await?,
            true => None,
        };
        let Some((target_type, target_id)) = judged.as_ref().and_then(|v| self.security_context(&v.body)) else {
            return Ok(false);
        };
        let Ok(rule) = self.rule(access, Permission::Read, &target_type) else { return Ok(false) };
        let target = source.read(&target_type, &target_id).await?;
        Ok(target.is_some_and(|target| !target.deleted && self.admitted(rule.as_deref(), &target)))
    }

    /// The local resource a Binary's `securityContext` names (`Type/id`, or this server's
    /// absolute URL of it; not a version of it); never another Binary.
    fn security_context(&self, body: &[u8]) -> Option<(String, String)> {
        let binary: Value = serde_json::from_slice(body).ok()?;
        let reference = binary.get("securityContext")?.get("reference")?.as_str()?;
        if reference.contains("/_history/") {
            return None;
        }
        let (resource_type, id) = crate::search::index::parse_local_reference(reference, &self.config.base_url)?;
        (resource_type != "Binary").then(|| (resource_type.to_string(), id.to_string()))
    }

    /// Whether `access` may see `version` with `permission` (history entries, includes).
    pub(super) fn visible(&self, access: &Access, permission: Permission, version: &ResourceVersion) -> bool {
        match self.rule(access, permission, &version.resource_type) {
            Ok(rule) => self.admitted(rule.as_deref(), version),
            Err(_) => false,
        }
    }

    /// Whether a history entry may be shown: a version the caller may read, or a deletion
    /// (which has no body) of a type whose rule decides without the body (no restriction, or an
    /// `_id` check).
    pub(super) fn history_visible(&self, access: &Access, version: &ResourceVersion) -> bool {
        if !version.deleted || matches!(access, Access::Open) {
            return self.visible(access, Permission::Read, version);
        }
        let registry = self.registry();
        access.granted(policy(&registry, &self.config.base_url), Permission::Read, &version.resource_type).is_some_and(
            |rule| !rule.needs_index() && rule.admits(&version.resource_type, &version.id, &IndexRows::default()),
        )
    }

    /// A write transaction that enforces `access` (no check when access is open), records the
    /// events of subscriptions ([`super::subscriptions::SubscriptionTx`]) and, for everyone,
    /// keeps the workflow rules of [`super::scheduling::SchedulingTx`],
    /// [`super::refills::RefillTx`], [`super::messaging::MessagingTx`] and
    /// [`super::billing::BillingTx`].
    pub(super) async fn begin(&self, access: &Access) -> Result<Box<dyn StoreTx>, FhirError> {
        self.begin_with(access, false).await
    }

    /// A write transaction for the server's own work (a subscription's handshake outcome):
    /// open access, and statuses only the server sets.
    pub(super) async fn begin_server_work(&self) -> Result<Box<dyn StoreTx>, FhirError> {
        self.begin_with(&Access::Open, true).await
    }

    async fn begin_with(&self, access: &Access, server_work: bool) -> Result<Box<dyn StoreTx>, FhirError> {
        let raw = self.store.begin().await.map_err(super::store_error)?;
        use super::workflow::WorkflowTx;
        // Innermost: it notes every write, the workflows' own included, and records last.
        let raw: Box<dyn StoreTx> =
            Box::new(WorkflowTx(super::audit_trail::AuditTrailTx::new(raw, self.clone(), access.clone())));
        let raw: Box<dyn StoreTx> = Box::new(WorkflowTx(super::subscriptions::SubscriptionTx::new(
            raw,
            self.clone(),
            access.clone(),
            server_work,
        )));
        let tx: Box<dyn StoreTx> =
            Box::new(WorkflowTx(super::scheduling::SchedulingTx::new(raw, self.clone(), access.clone())));
        let tx: Box<dyn StoreTx> =
            Box::new(WorkflowTx(super::refills::RefillTx::new(tx, self.clone(), access.clone())));
        let tx: Box<dyn StoreTx> =
            Box::new(WorkflowTx(super::messaging::MessagingTx::new(tx, self.clone(), access.clone())));
        let tx: Box<dyn StoreTx> =
            Box::new(WorkflowTx(super::billing::BillingTx::new(tx, self.clone(), access.clone())));
        Ok(match access {
            Access::Open => tx,
            Access::Token(_) => Box::new(GuardedTx {
                inner: tx,
                access: access.clone(),
                registry: self.registry(),
                base_url: self.config.base_url.clone(),
            }),
        })
    }
}

fn policy<'a>(registry: &'a Registry, base_url: &'a str) -> PolicyContext<'a> {
    PolicyContext { registry, base_url }
}

fn restrict_query(
    context: &PolicyContext<'_>,
    access: &Access,
    permission: Permission,
    query: &mut SearchQuery,
) -> Result<(), FhirError> {
    if matches!(access, Access::Open) {
        return Ok(());
    }
    // Chains and `_has` look at other resources: only at those the caller may read, or the
    // answer would tell something of the others (which practitioners saw patient B).
    for group in &mut query.all_of {
        for condition in group.iter_mut() {
            confine_nested(context, access, condition);
        }
    }
    if let [only] = query.resource_types.as_slice() {
        if let Restriction::Only(condition) = access.restriction(*context, permission, only)? {
            query.all_of.push(match condition {
                Condition::AnyOf(any) => any,
                other => vec![other],
            });
        }
        return Ok(());
    }
    let mut types = Vec::new();
    let mut clauses = Vec::new();
    let mut restricted = false;
    for resource_type in &query.resource_types {
        match access.granted(*context, permission, resource_type) {
            None => continue,
            Some(Restriction::None) => clauses.push(Condition::Type(resource_type.clone())),
            Some(Restriction::Only(condition)) => {
                restricted = true;
                clauses.push(Condition::AllOf(vec![Condition::Type(resource_type.clone()), condition]));
            }
        }
        types.push(resource_type.clone());
    }
    if types.is_empty() {
        return Err(FhirError::forbidden("the access token grants no scope to search these resource types"));
    }
    query.resource_types = types;
    if restricted {
        query.all_of.push(clauses);
    }
    Ok(())
}

/// Adds the caller's read restriction to the resources that the chains and `_has` criteria
/// inside `condition` look at (nothing of a type the caller may not read matches).
fn confine_nested(context: &PolicyContext<'_>, access: &Access, condition: &mut Condition) {
    match condition {
        Condition::Chain { target_types, condition: inner, .. } => {
            confine_nested(context, access, inner);
            let mut clauses = Vec::new();
            let mut restricted = false;
            for target_type in target_types.iter() {
                match access.granted(*context, Permission::Read, target_type) {
                    None => restricted = true,
                    Some(Restriction::None) => clauses.push(Condition::Type(target_type.clone())),
                    Some(Restriction::Only(rule)) => {
                        restricted = true;
                        clauses.push(Condition::AllOf(vec![Condition::Type(target_type.clone()), rule]));
                    }
                }
            }
            if restricted {
                let original = std::mem::replace(inner.as_mut(), Condition::AnyOf(Vec::new()));
                **inner = Condition::AllOf(vec![original, Condition::AnyOf(clauses)]);
            }
        }
        Condition::Has { source_type, condition: inner, .. } => {
            confine_nested(context, access, inner);
            let rule = match access.granted(*context, Permission::Read, source_type) {
                None => Condition::AnyOf(Vec::new()),
                Some(Restriction::None) => return,
                Some(Restriction::Only(rule)) => rule,
            };
            let original = std::mem::replace(inner.as_mut(), Condition::AnyOf(Vec::new()));
            **inner = Condition::AllOf(vec![original, rule]);
        }
        Condition::AnyOf(inner) | Condition::AllOf(inner) => {
            inner.iter_mut().for_each(|c| confine_nested(context, access, c));
        }
        Condition::Not(inner) => confine_nested(context, access, inner),
        _ => {}
    }
}

/// Whether `rule` admits the stored `version` (indexed in memory when the rule needs it).
fn admits(rule: &Restriction, registry: &Registry, base_url: &str, version: &ResourceVersion) -> bool {
    let Restriction::Only(condition) = rule else { return true };
    let params = params_of(condition);
    match rows_for(registry, base_url, version, &params) {
        Some(rows) => rule.admits(&version.resource_type, &version.id, &rows),
        None => false,
    }
}

/// The index rows of `params` of a stored version (`None` when its body does not parse).
fn rows_for(registry: &Registry, base_url: &str, version: &ResourceVersion, params: &[&str]) -> Option<IndexRows> {
    if params.is_empty() {
        return Some(IndexRows::default());
    }
    let resource = serde_json::from_slice::<Value>(&version.body).ok()?;
    Some(index_selected(registry, &resource, base_url, |code| params.contains(&code)))
}

/// A write transaction that enforces an access token's grant.
struct GuardedTx {
    inner: Box<dyn StoreTx>,
    access: Access,
    registry: Arc<Registry>,
    base_url: String,
}

impl GuardedTx {
    fn context(&self) -> PolicyContext<'_> {
        policy(&self.registry, &self.base_url)
    }

    fn rule(&self, permission: Permission, resource_type: &str) -> StoreResult<Restriction> {
        self.access
            .restriction(self.context(), permission, resource_type)
            .map_err(|error| StoreError::Forbidden(error.to_string()))
    }
}

impl GuardedTx {
    /// A write of a Binary by a caller whose scope on Binary is restricted (a patient's): a
    /// Binary belongs to no compartment, so, as for reads, it is judged by its
    /// `securityContext`: the version written and the one it replaces must each name a
    /// resource the caller may read (a patient uploads into their own record, nowhere else).
    async fn write_binary(
        &mut self,
        version: ResourceVersion,
        index: IndexRows,
        previous: Option<ResourceVersion>,
        verb: &str,
    ) -> StoreResult<()> {
        if let Some(previous) = &previous {
            if !self.context_in_reach(&previous.body).await? {
                return Err(outside(verb, previous));
            }
        }
        if !version.deleted && !self.context_in_reach(&version.body).await? {
            return Err(StoreError::Forbidden(format!(
                "the access token does not allow to {verb} Binary/{}: its securityContext must name a resource of \
                 the records the token reaches (X-Security-Context on a raw upload)",
                version.id
            )));
        }
        self.inner.write(version, index).await
    }

    /// Whether a Binary's `securityContext` names a local resource (not a Binary) that the
    /// caller may read.
    async fn context_in_reach(&mut self, body: &[u8]) -> StoreResult<bool> {
        let Ok(binary) = serde_json::from_slice::<Value>(body) else { return Ok(false) };
        let Some(reference) = binary.pointer("/securityContext/reference").and_then(Value::as_str) else {
            return Ok(false);
        };
        let Some((target_type, target_id)) = crate::search::index::parse_local_reference(reference, &self.base_url)
        else {
            return Ok(false);
        };
        if target_type == "Binary" || reference.contains("/_history/") {
            return Ok(false);
        }
        let Ok(rule) = self.rule(Permission::Read, target_type) else { return Ok(false) };
        let target = self.inner.current(target_type, target_id).await?.filter(|t| !t.deleted);
        Ok(target.is_some_and(|target| admits(&rule, &self.registry, &self.base_url, &target)))
    }
}

fn outside(permission: &str, version: &ResourceVersion) -> StoreError {
    StoreError::Forbidden(format!(
        "the access token does not allow to {permission} {}/{}: it is outside the records the token reaches",
        version.resource_type, version.id
    ))
}

#[async_trait]
impl StoreTx for GuardedTx {
    /// A resource the caller reaches by none of its rules does not exist for it: updates,
    /// patches and deletes of it answer 404 before they look at its content or version.
    async fn current(&mut self, resource_type: &str, id: &str) -> StoreResult<Option<ResourceVersion>> {
        let Some(current) = self.inner.current(resource_type, id).await? else { return Ok(None) };
        // A deletion has no body: whose it was, its last version tells.
        let judged = match current.deleted {
            false => Some(current.clone()),
            true if current.version > 1 => self.inner.vread(resource_type, id, current.version - 1).await?,
            true => None,
        };
        let reachable = judged.is_some_and(|version| {
            [Permission::Read, Permission::Update, Permission::Delete].into_iter().any(|permission| {
                self.access
                    .granted(self.context(), permission, resource_type)
                    .is_some_and(|rule| admits(&rule, &self.registry, &self.base_url, &version))
            })
        });
        if !reachable {
            return Err(StoreError::Hidden(format!("{resource_type}/{id} is not known")));
        }
        Ok(Some(current))
    }

    async fn vread(&mut self, resource_type: &str, id: &str, version: i64) -> StoreResult<Option<ResourceVersion>> {
        self.inner.vread(resource_type, id, version).await
    }

    async fn search(&mut self, query: &SearchQuery) -> StoreResult<SearchPage> {
        let mut query = query.clone();
        restrict_query(&self.context(), &self.access, Permission::Search, &mut query)
            .map_err(|error| StoreError::Forbidden(error.to_string()))?;
        self.inner.search(&query).await
    }

    async fn write(&mut self, version: ResourceVersion, index: IndexRows) -> StoreResult<()> {
        let previous = self.inner.current(&version.resource_type, &version.id).await?.filter(|p| !p.deleted);
        let (permission, verb) = match (&previous, version.deleted) {
            (_, true) => (Permission::Delete, "delete"),
            (Some(_), false) => (Permission::Update, "update"),
            (None, false) => (Permission::Create, "create"),
        };
        let rule = self.rule(permission, &version.resource_type)?;
        if version.resource_type == "Binary" && rule != Restriction::None {
            return self.write_binary(version, index, previous, verb).await;
        }
        if let Some(previous) = &previous {
            if !admits(&rule, &self.registry, &self.base_url, previous) {
                return Err(outside(verb, previous));
            }
            if previous.resource_type == "RelatedPerson" && self.access.acts_through(&previous.id) {
                return Err(StoreError::Forbidden(format!(
                    "RelatedPerson/{} is where this token's access comes from: the clinic changes it, not the proxy",
                    previous.id
                )));
            }
        }
        let written_for_reachable_patients = version.deleted
            || (self.access.writes_only_own_patients(permission, &version.resource_type, &index)
                && rule.admits(&version.resource_type, &version.id, &index));
        if !written_for_reachable_patients {
            return Err(outside(verb, &version));
        }
        self.inner.write(version, index).await
    }

    async fn reindex(&mut self, batch: &[(ResourceVersion, IndexRows)]) -> StoreResult<usize> {
        self.inner.reindex(batch).await
    }

    async fn job_step(&mut self, step: &JobStep<'_>) -> StoreResult<bool> {
        self.inner.job_step(step).await
    }

    async fn enqueue_job(&mut self, kind: &str, parameters: &str, not_before: OffsetDateTime) -> StoreResult<i64> {
        self.inner.enqueue_job(kind, parameters, not_before).await
    }

    async fn register_subscription(
        &mut self,
        id: &str,
        registration: Option<&crate::store::subscription::Registration>,
    ) -> StoreResult<()> {
        self.inner.register_subscription(id, registration).await
    }

    async fn record_events(&mut self, events: &[crate::store::subscription::NewEvent]) -> StoreResult<usize> {
        self.inner.record_events(events).await
    }

    async fn record_reminders(&mut self, reminders: &[crate::store::subscription::Reminder]) -> StoreResult<usize> {
        self.inner.record_reminders(reminders).await
    }

    async fn record_audit(&mut self, events: &[crate::store::audit::NewAuditEvent]) -> StoreResult<()> {
        self.inner.record_audit(events).await
    }

    async fn commit(self: Box<Self>) -> StoreResult<()> {
        self.inner.commit().await
    }

    async fn rollback(self: Box<Self>) {
        self.inner.rollback().await
    }
}
