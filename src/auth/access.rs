//! The access policy: what the caller of a FHIR interaction may do, and the conditions that
//! confine it to the data its token reaches. Searches get those conditions in their SQL (so
//! paging, `_count` and `_total` are exact); everything else (reads, versions, history
//! entries, included resources, writes) is checked against them in memory.
//!
//! - `patient/` scopes reach the Patient compartments of the token's patients (for a proxy:
//!   the patients the token was bound to).
//! - `user/` scopes reach what the signed-in user may see: a Patient user their own
//!   compartment, a RelatedPerson user the compartments of their patients, anyone else (a
//!   practitioner) everything.
//! - `system/` scopes reach everything.
//!
//! Resource types that are never in a Patient compartment (Practitioner, Organization,
//! Medication…) hold no patient's data: a scope on them reaches all of them.
//! A v2 filter (`patient/Observation.rs?category=laboratory`) adds its criteria to its scope.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::scope::{Permission, ResourceScope, ScopeContext};
use crate::model::FhirError;
use crate::search::compartment::membership;
use crate::search::matcher::{matches, Candidate};
use crate::search::Registry;
use crate::store::{Condition, IndexRows};

/// Who is calling, and what they may do. There is no default: every request says which.
#[derive(Debug, Clone)]
pub enum Access {
    /// No authorisation (`--auth off`, and the server's own work such as `hearth import`).
    Open,
    /// A bearer token's grant.
    Token(Arc<Grant>),
}

/// What a validated access token grants.
#[derive(Debug, Clone, PartialEq)]
pub struct Grant {
    pub client_id: String,
    /// The resource scopes granted.
    pub scopes: Vec<ResourceScope>,
    /// The patients `patient/` scopes reach (ids).
    pub patients: Vec<String>,
    /// The patients `user/` scopes reach; `None` for every patient.
    pub user_patients: Option<Vec<String>>,
    /// Whether the token may create EHR launch contexts (`system/launch`).
    pub may_launch: bool,
    /// The user's own resource (`Patient/1`, `RelatedPerson/2`, `Practitioner/3`), when a user
    /// signed in.
    pub fhir_user: Option<String>,
    /// The RelatedPersons (ids) a proxy's access comes from, which it may not change.
    pub acts_through: Vec<String>,
    /// The token's claims (without its signature, so no credential): what a Subscription
    /// keeps to deliver under this same access later, checked again then (ADR 16).
    pub claims: Option<Arc<super::tokens::AccessClaims>>,
    /// The rules worked out so far for this grant (a token is used many times).
    pub memo: RuleMemo,
}

/// The rules a grant has needed, by resource type and permission.
#[derive(Default)]
pub struct RuleMemo(Mutex<HashMap<String, [Option<RuleOutcome>; 5]>>);

/// A worked-out rule, or why nothing is granted.
type RuleOutcome = Result<Arc<Rule>, FhirError>;

/// A restriction with what deciding it on one resource needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub restriction: Restriction,
    /// The search parameters whose index rows it looks at, comma-separated (empty: none).
    pub params: String,
}

impl Rule {
    fn new(restriction: Restriction) -> Rule {
        let params = match &restriction {
            Restriction::None => String::new(),
            Restriction::Only(condition) => crate::search::matcher::params_of(condition).join(","),
        };
        Rule { restriction, params }
    }

    /// Whether the rule needs the index rows of parameter `code`.
    pub fn needs_param(&self, code: &str) -> bool {
        self.params.split(',').any(|p| p == code)
    }
}

impl Clone for RuleMemo {
    /// A copy starts empty: it fills again on use.
    fn clone(&self) -> Self {
        RuleMemo::default()
    }
}

impl PartialEq for RuleMemo {
    /// What a grant means does not depend on what it has cached.
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl std::fmt::Debug for RuleMemo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RuleMemo")
    }
}

/// Rules kept per grant at most (a grant touches a handful of types).
const MEMO_RULES: usize = 256;

/// Which resources of one type an interaction may touch.
#[derive(Debug, Clone, PartialEq)]
pub enum Restriction {
    /// All of them.
    None,
    /// Those meeting this condition.
    Only(Condition),
}

/// What building a restriction needs from the search layer.
#[derive(Clone, Copy)]
pub struct PolicyContext<'a> {
    pub registry: &'a Registry,
    pub base_url: &'a str,
}

impl Access {
    /// Whether the caller may do anything at all to the whole server (operations such as
    /// `$reindex`, job status): no authorisation, or a `system/` scope on every type with every
    /// permission.
    pub fn is_administrator(&self) -> bool {
        match self {
            Access::Open => true,
            Access::Token(grant) => grant.scopes.iter().any(|s| {
                s.context == ScopeContext::System
                    && s.resource_type.is_none()
                    && s.filter.is_none()
                    && s.permissions.to_string() == "cruds"
            }),
        }
    }

    /// The resources of `resource_type` on which `permission` is granted; 403 when none.
    pub fn restriction(
        &self,
        context: PolicyContext<'_>,
        permission: Permission,
        resource_type: &str,
    ) -> Result<Restriction, FhirError> {
        let Access::Token(grant) = self else { return Ok(Restriction::None) };
        let scopes: Vec<&ResourceScope> = grant.scopes.iter().filter(|s| s.grants(permission, resource_type)).collect();
        if scopes.is_empty() {
            return Err(FhirError::forbidden(format!(
                "the access token grants no scope to {} {resource_type} resources",
                verb(permission)
            )));
        }
        let mut clauses = Vec::with_capacity(scopes.len());
        for scope in scopes {
            let patients = match scope.context {
                ScopeContext::Patient => Some(grant.patients.as_slice()),
                ScopeContext::User => grant.user_patients.as_deref(),
                ScopeContext::System => None,
            };
            let mut parts = Vec::new();
            if let Some(patients) = patients {
                if let Some(member) = compartment_condition(patients, resource_type, permission) {
                    parts.push(member);
                }
            }
            if let Some(filter) = &scope.filter {
                parts.push(filter_condition(context, resource_type, filter));
            }
            match parts.len() {
                0 => return Ok(Restriction::None),
                1 => clauses.push(parts.pop().expect("one part")),
                _ => clauses.push(Condition::AllOf(parts)),
            }
        }
        Ok(Restriction::Only(match clauses.len() {
            1 => clauses.pop().expect("one clause"),
            _ => Condition::AnyOf(clauses),
        }))
    }

    /// [`Access::restriction`], worked out once per grant, permission and type (the read path
    /// asks it for every request).
    pub fn rule(
        &self,
        context: PolicyContext<'_>,
        permission: Permission,
        resource_type: &str,
    ) -> Result<Arc<Rule>, FhirError> {
        let Access::Token(grant) = self else { return Ok(Arc::new(Rule::new(Restriction::None))) };
        let slot = permission as usize;
        if let Some(Some(known)) = grant.memo.0.lock().expect("rule memo lock").get(resource_type).map(|r| &r[slot]) {
            return known.clone();
        }
        let rule = self.restriction(context, permission, resource_type).map(|r| Arc::new(Rule::new(r)));
        let mut memo = grant.memo.0.lock().expect("rule memo lock");
        if memo.len() < MEMO_RULES {
            memo.entry(resource_type.to_string()).or_default()[slot] = Some(rule.clone());
        }
        rule
    }

    /// Like [`Access::restriction`], but `None` instead of an error when nothing is granted.
    pub fn granted(
        &self,
        context: PolicyContext<'_>,
        permission: Permission,
        resource_type: &str,
    ) -> Option<Restriction> {
        self.restriction(context, permission, resource_type).ok()
    }
}

impl Access {
    /// Whether the caller acts for particular patients only when it does `permission` on
    /// `resource_type`: a patient or a proxy (`patient/` scopes, or `user/` scopes of a
    /// patient's user), not staff or a system. Some workflow rules hold only for them.
    /// (False when no scope grants it at all.)
    pub fn is_patient_bound(&self, permission: Permission, resource_type: &str) -> bool {
        let Access::Token(grant) = self else { return false };
        let mut granting = grant.scopes.iter().filter(|s| s.grants(permission, resource_type)).peekable();
        granting.peek().is_some()
            && granting.all(|scope| match scope.context {
                ScopeContext::Patient => true,
                ScopeContext::User => grant.user_patients.is_some(),
                ScopeContext::System => false,
            })
    }

    /// Whether the caller may do `permission` on `resource_type` as staff or a system: a scope
    /// grants it, not only for particular patients (everyone, without authorisation).
    pub fn acts_as_staff(&self, permission: Permission, resource_type: &str) -> bool {
        match self {
            Access::Open => true,
            Access::Token(grant) => {
                grant.scopes.iter().any(|s| s.grants(permission, resource_type))
                    && !self.is_patient_bound(permission, resource_type)
            }
        }
    }

    /// Whether the caller's access comes from RelatedPerson `id` (a proxy may not extend or
    /// change its own access by editing that resource).
    pub fn acts_through(&self, id: &str) -> bool {
        let Access::Token(grant) = self else { return false };
        grant.acts_through.iter().any(|through| through == id)
            || grant.fhir_user.as_deref().and_then(|user| user.strip_prefix("RelatedPerson/")) == Some(id)
    }

    /// Whether the caller writes `resource_type` only for particular patients (a patient app, a
    /// proxy): whatever it may write of that type, create, update or delete, is patient-bound.
    pub fn writes_for_patients(&self, resource_type: &str) -> bool {
        [Permission::Create, Permission::Update, Permission::Delete]
            .into_iter()
            .any(|permission| self.is_patient_bound(permission, resource_type))
    }

    /// Whether every Patient reference of a resource about to be written, through the
    /// parameters that put `resource_type` into Patient compartments, points at a patient the
    /// caller may write for: a patient app cannot file data into another patient's record by
    /// naming itself in one reference and the other patient in another.
    pub fn writes_only_own_patients(&self, permission: Permission, resource_type: &str, rows: &IndexRows) -> bool {
        let Access::Token(grant) = self else { return true };
        let mut allowed: Vec<&String> = Vec::new();
        for scope in grant.scopes.iter().filter(|s| s.grants(permission, resource_type)) {
            match scope.context {
                ScopeContext::Patient => allowed.extend(&grant.patients),
                ScopeContext::User => match &grant.user_patients {
                    Some(patients) => allowed.extend(patients),
                    None => return true,
                },
                ScopeContext::System => return true,
            }
        }
        let Some(params) = patient_params(resource_type) else { return true };
        rows.references
            .iter()
            .filter(|r| r.target_type.as_deref() == Some("Patient") && params.contains(&r.param))
            .all(|r| r.target_id.as_ref().is_some_and(|id| allowed.contains(&id)))
    }
}

impl Restriction {
    /// Whether the resource with these index rows is reachable (conditions the in-memory
    /// evaluator cannot decide count as not reachable).
    pub fn admits(&self, resource_type: &str, id: &str, rows: &IndexRows) -> bool {
        match self {
            Restriction::None => true,
            Restriction::Only(condition) => matches(condition, &Candidate { resource_type, id, rows }).unwrap_or(false),
        }
    }

    /// Whether deciding it needs other resources than the one judged (a chain: a payment is a
    /// patient's through its Invoice), which [`Restriction::admits`] alone answers `false`.
    pub fn follows_references(&self) -> bool {
        fn follows(condition: &Condition) -> bool {
            match condition {
                Condition::Chain { .. } | Condition::Has { .. } => true,
                Condition::AnyOf(inner) | Condition::AllOf(inner) => inner.iter().any(follows),
                Condition::Not(inner) => follows(inner),
                _ => false,
            }
        }
        matches!(self, Restriction::Only(condition) if follows(condition))
    }

    /// Whether deciding [`Restriction::admits`] needs the resource's index rows (an `_id`
    /// check alone does not).
    pub fn needs_index(&self) -> bool {
        fn needs(condition: &Condition) -> bool {
            match condition {
                Condition::Id(_) | Condition::Type(_) => false,
                Condition::AnyOf(inner) | Condition::AllOf(inner) => inner.iter().any(needs),
                Condition::Not(inner) => needs(inner),
                _ => true,
            }
        }
        matches!(self, Restriction::Only(condition) if needs(condition))
    }
}

/// "In the Patient compartment of one of `patients`". Types that are never in a Patient
/// compartment are either shared directory or definition data ([`SHARED_TYPES`]), which
/// patient-bound scopes may read in full (`None`), or may hold some patient's data without the
/// compartment saying whose (Task, Device, Binary…): those they do not reach at all.
fn compartment_condition(patients: &[String], resource_type: &str, permission: Permission) -> Option<Condition> {
    let nothing = Condition::AnyOf(Vec::new());
    if membership("Patient", "", resource_type).is_none() && reach_beyond_compartment(resource_type).is_none() {
        let reads = matches!(permission, Permission::Read | Permission::Search);
        return (!(reads && SHARED_TYPES.contains(&resource_type))).then_some(nothing);
    }
    let mut any = Vec::new();
    for patient in patients {
        any.extend(patient_reach(patient, resource_type));
    }
    Some(match any.len() {
        1 => any.pop().expect("one condition"),
        _ => Condition::AnyOf(any),
    })
}

/// How a type outside the R4 Patient compartment is nonetheless a patient's.
enum Reach {
    /// A reference parameter of its own names the patient: R4 leaves Task out (its `for` may be
    /// anything), but a refill request for a patient (`Task.for` that patient) is theirs to
    /// make and to follow.
    Own(&'static str),
    /// It references, through `param`, a resource of `target` that is the patient's: a payment
    /// is the patient's whose Invoice it settles (R4 names no patient on PaymentNotice or
    /// PaymentReconciliation). Deciding it reads the other resource, so it is a chain.
    Through { param: &'static str, target: &'static str },
}

const REACH_BEYOND_COMPARTMENT: &[(&str, Reach)] = &[
    ("Task", Reach::Own("patient")),
    // A Subscription is about the patients its filter criteria name (a derived parameter).
    ("Subscription", Reach::Own("patient")),
    ("PaymentNotice", Reach::Through { param: "request", target: "Invoice" }),
    ("PaymentReconciliation", Reach::Through { param: "detail-request", target: "Invoice" }),
];

fn reach_beyond_compartment(resource_type: &str) -> Option<&'static Reach> {
    REACH_BEYOND_COMPARTMENT.iter().find(|(t, _)| *t == resource_type).map(|(_, reach)| reach)
}

/// The conditions "`resource_type` resources of `patient`": its Patient compartment, or the
/// reach beyond it ([`REACH_BEYOND_COMPARTMENT`]).
fn patient_reach(patient: &str, resource_type: &str) -> Vec<Condition> {
    match reach_beyond_compartment(resource_type) {
        Some(Reach::Own(param)) => vec![Condition::Reference {
            param: param.to_string(),
            target_type: Some("Patient".to_string()),
            target_id: patient.to_string(),
        }],
        Some(Reach::Through { param, target }) => vec![Condition::Chain {
            param: param.to_string(),
            target_types: vec![target.to_string()],
            condition: Box::new(Condition::AnyOf(patient_reach(patient, target))),
        }],
        None => membership("Patient", patient, resource_type).unwrap_or_default(),
    }
}

/// The reference parameters that say whose `resource_type` resources are (none of its own
/// for a type reached through another).
fn patient_params(resource_type: &str) -> Option<Vec<String>> {
    match reach_beyond_compartment(resource_type) {
        Some(Reach::Own(param)) => Some(vec![param.to_string()]),
        Some(Reach::Through { .. }) => Some(Vec::new()),
        None => crate::search::compartment::params("Patient", resource_type).map(<[String]>::to_vec),
    }
}

/// Types outside every Patient compartment that hold no patient's data: who and where care is
/// given, what can be prescribed and booked, and the definitions the server works with.
/// Patient-bound scopes read them in full, and write none of them.
pub const SHARED_TYPES: &[&str] = &[
    "ActivityDefinition",
    "CapabilityStatement",
    "ChargeItemDefinition",
    "CodeSystem",
    "CompartmentDefinition",
    "ConceptMap",
    "DeviceDefinition",
    "Endpoint",
    "EventDefinition",
    "GraphDefinition",
    "HealthcareService",
    "ImplementationGuide",
    "InsurancePlan",
    "Library",
    "Location",
    "Measure",
    "Medication",
    "MedicationKnowledge",
    "MessageDefinition",
    "NamingSystem",
    "ObservationDefinition",
    "OperationDefinition",
    "Organization",
    "OrganizationAffiliation",
    "PlanDefinition",
    "Practitioner",
    "PractitionerRole",
    "Questionnaire",
    "SearchParameter",
    "Slot",
    "SpecimenDefinition",
    "StructureDefinition",
    "StructureMap",
    "Substance",
    "TerminologyCapabilities",
    "ValueSet",
];

/// A v2 scope filter as a condition. A filter that is not a valid search, or uses criteria the
/// policy cannot check outside SQL, grants nothing (fail closed).
fn filter_condition(context: PolicyContext<'_>, resource_type: &str, filter: &str) -> Condition {
    crate::search::matcher::memory_condition(context.registry, context.base_url, resource_type, filter)
        .unwrap_or_else(|_| Condition::AnyOf(Vec::new()))
}

fn verb(permission: Permission) -> &'static str {
    match permission {
        Permission::Create => "create",
        Permission::Read => "read",
        Permission::Update => "update",
        Permission::Delete => "delete",
        Permission::Search => "search",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::scope::Scope;
    use crate::store::{ReferenceRow, TokenRow};

    fn grant(scopes: &[&str], patients: &[&str]) -> Access {
        let scopes = scopes
            .iter()
            .map(|s| match Scope::parse(s) {
                Some(Scope::Resource(scope)) => scope,
                other => panic!("{s}: {other:?}"),
            })
            .collect();
        Access::Token(Arc::new(Grant {
            client_id: "app".into(),
            scopes,
            patients: patients.iter().map(|p| p.to_string()).collect(),
            user_patients: Some(patients.iter().map(|p| p.to_string()).collect()),
            acts_through: Vec::new(),
            may_launch: false,
            fhir_user: None,
            claims: None,
            memo: RuleMemo::default(),
        }))
    }

    fn context() -> PolicyContext<'static> {
        PolicyContext { registry: Registry::standard(), base_url: "http://h/fhir" }
    }

    fn observation(patient: &str, category: &str) -> IndexRows {
        IndexRows {
            tokens: vec![TokenRow {
                param: "category".into(),
                system: Some("http://terminology.hl7.org/CodeSystem/observation-category".into()),
                code: category.into(),
            }],
            references: ["subject", "patient"]
                .iter()
                .map(|param| ReferenceRow {
                    param: param.to_string(),
                    target_type: Some("Patient".into()),
                    target_id: Some(patient.into()),
                    target_url: None,
                })
                .collect(),
            ..IndexRows::default()
        }
    }

    #[test]
    fn patient_scopes_confine_to_the_compartment() {
        let access = grant(&["patient/*.rs"], &["a"]);
        let rule = access.restriction(context(), Permission::Read, "Observation").unwrap();
        assert!(rule.admits("Observation", "o1", &observation("a", "laboratory")));
        assert!(!rule.admits("Observation", "o2", &observation("b", "laboratory")));
        let patients = access.restriction(context(), Permission::Read, "Patient").unwrap();
        assert!(patients.admits("Patient", "a", &IndexRows::default()));
        assert!(!patients.admits("Patient", "b", &IndexRows::default()));
        assert!(!patients.needs_index() || matches!(patients, Restriction::Only(_)));
        // Practitioners are nobody's patient data.
        assert_eq!(access.restriction(context(), Permission::Read, "Practitioner").unwrap(), Restriction::None);
        assert_eq!(access.restriction(context(), Permission::Create, "Observation").unwrap_err().status(), 403);
    }

    #[test]
    fn granular_filters_narrow_their_scope() {
        let access = grant(
            &["patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory"],
            &["a"],
        );
        let rule = access.restriction(context(), Permission::Search, "Observation").unwrap();
        assert!(rule.admits("Observation", "o1", &observation("a", "laboratory")));
        assert!(!rule.admits("Observation", "o2", &observation("a", "vital-signs")));
        assert!(!rule.admits("Observation", "o3", &observation("b", "laboratory")));
        // A second, wider scope on the same type widens the union.
        let wider = grant(&["patient/Observation.rs?category=laboratory", "patient/Observation.rs"], &["a"]);
        let rule = wider.restriction(context(), Permission::Search, "Observation").unwrap();
        assert!(rule.admits("Observation", "o2", &observation("a", "vital-signs")));
    }

    #[test]
    fn filters_that_cannot_be_checked_grant_nothing() {
        for filter in ["date=ge2020", "nonsense=1", "_sort=date", "subject.name=x"] {
            let access = grant(&[&format!("system/Observation.rs?{filter}")], &[]);
            let rule = access.restriction(context(), Permission::Search, "Observation").unwrap();
            assert!(!rule.admits("Observation", "o1", &observation("a", "laboratory")), "{filter}");
        }
    }

    #[test]
    fn system_scopes_reach_everything_and_administer() {
        let access = grant(&["system/*.cruds"], &[]);
        assert_eq!(access.restriction(context(), Permission::Delete, "Observation").unwrap(), Restriction::None);
        assert!(access.is_administrator());
        assert!(!grant(&["system/*.rs"], &[]).is_administrator());
        assert!(Access::Open.is_administrator());
    }

    #[test]
    fn a_proxy_reaches_each_linked_patient() {
        let access = grant(&["user/*.rs"], &["a", "c"]);
        let rule = access.restriction(context(), Permission::Read, "Observation").unwrap();
        assert!(rule.admits("Observation", "o1", &observation("a", "x")));
        assert!(rule.admits("Observation", "o1", &observation("c", "x")));
        assert!(!rule.admits("Observation", "o1", &observation("b", "x")));
    }
}
