//! SMART App Launch scopes, v1 (`patient/*.read`, `user/Observation.write`, `system/*.*`) and v2
//! (`patient/Observation.rs`, `.cruds` subsets, granular `?category=…` filters), and the
//! non-resource scopes (`openid`, `fhirUser`, `launch`, `launch/patient`, `offline_access`…).

use std::fmt;

use crate::model::validate::is_resource_type;

/// Whose data a resource scope reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScopeContext {
    /// The patient (or patients) in the token's context.
    Patient,
    /// What the signed-in user may see.
    User,
    /// A backend service: no user, no patient.
    System,
}

/// One of the SMART v2 interactions `c r u d s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    Create,
    Read,
    Update,
    Delete,
    Search,
}

impl Permission {
    const ALL: [Permission; 5] =
        [Permission::Create, Permission::Read, Permission::Update, Permission::Delete, Permission::Search];

    fn letter(self) -> char {
        match self {
            Permission::Create => 'c',
            Permission::Read => 'r',
            Permission::Update => 'u',
            Permission::Delete => 'd',
            Permission::Search => 's',
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// A set of permissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Permissions(u8);

impl Permissions {
    /// Whether the set holds `permission`.
    pub fn allows(self, permission: Permission) -> bool {
        self.0 & permission.bit() != 0
    }

    /// Whether every permission of `other` is in this set.
    pub fn covers(self, other: Permissions) -> bool {
        self.0 & other.0 == other.0
    }

    fn of(permissions: &[Permission]) -> Self {
        Permissions(permissions.iter().fold(0, |bits, p| bits | p.bit()))
    }
}

/// A scope that grants access to resources: `patient/Observation.rs?category=laboratory`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResourceScope {
    pub context: ScopeContext,
    /// The resource type, `None` for `*`.
    pub resource_type: Option<String>,
    pub permissions: Permissions,
    /// A granular v2 filter: search parameters (`category=…`) the resources must match.
    pub filter: Option<String>,
}

impl ResourceScope {
    /// Whether this scope covers `permission` on resources of `resource_type`.
    pub fn grants(&self, permission: Permission, resource_type: &str) -> bool {
        self.permissions.allows(permission) && self.resource_type.as_deref().is_none_or(|t| t == resource_type)
    }

    /// Whether every access this scope grants is also granted by `wider`.
    pub fn within(&self, wider: &ResourceScope) -> bool {
        self.context == wider.context
            && (wider.resource_type.is_none() || wider.resource_type == self.resource_type)
            && wider.permissions.covers(self.permissions)
            && (wider.filter.is_none() || wider.filter == self.filter)
    }
}

/// One scope.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    Resource(ResourceScope),
    OpenId,
    FhirUser,
    Profile,
    /// EHR launch: the `launch` parameter gives the context.
    Launch,
    /// Standalone launch: the patient is chosen at authorization.
    LaunchPatient,
    LaunchEncounter,
    OfflineAccess,
    OnlineAccess,
    /// Creating EHR launch contexts (`POST /auth/launch`).
    SystemLaunch,
}

impl Scope {
    /// Parses one scope; `None` when it is not a scope this server knows.
    pub fn parse(text: &str) -> Option<Scope> {
        Some(match text {
            "openid" => Scope::OpenId,
            "fhirUser" => Scope::FhirUser,
            "profile" => Scope::Profile,
            "launch" => Scope::Launch,
            "launch/patient" => Scope::LaunchPatient,
            "launch/encounter" => Scope::LaunchEncounter,
            "offline_access" => Scope::OfflineAccess,
            "online_access" => Scope::OnlineAccess,
            "system/launch" => Scope::SystemLaunch,
            _ => return parse_resource_scope(text).map(Scope::Resource),
        })
    }
}

fn parse_resource_scope(text: &str) -> Option<ResourceScope> {
    let (context, rest) = text.split_once('/')?;
    let context = match context {
        "patient" => ScopeContext::Patient,
        "user" => ScopeContext::User,
        "system" => ScopeContext::System,
        _ => return None,
    };
    let (rest, filter) = match rest.split_once('?') {
        Some((rest, filter)) if !filter.is_empty() => (rest, Some(filter.to_string())),
        Some(_) => return None,
        None => (rest, None),
    };
    let (resource_type, access) = rest.split_once('.')?;
    let resource_type = match resource_type {
        "*" => None,
        t if is_resource_type(t) => Some(t.to_string()),
        _ => return None,
    };
    use Permission::*;
    let permissions = match access {
        // SMART v1: read is v2's `rs`, write is `cud`.
        "read" => Permissions::of(&[Read, Search]),
        "write" => Permissions::of(&[Create, Update, Delete]),
        "*" => Permissions::of(&Permission::ALL),
        letters => parse_v2_permissions(letters)?,
    };
    // Filters are a v2 feature.
    if filter.is_some() && matches!(access, "read" | "write" | "*") {
        return None;
    }
    Some(ResourceScope { context, resource_type, permissions, filter })
}

/// `cruds` or an in-order subset of it, each letter at most once.
fn parse_v2_permissions(letters: &str) -> Option<Permissions> {
    let mut remaining = Permission::ALL.iter().peekable();
    let mut chosen = Vec::new();
    for letter in letters.chars() {
        loop {
            let next = remaining.next()?;
            if next.letter() == letter {
                chosen.push(*next);
                break;
            }
        }
    }
    (!chosen.is_empty()).then(|| Permissions::of(&chosen))
}

impl fmt::Display for Permissions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Permission::ALL.iter().filter(|p| self.allows(**p)).try_for_each(|p| write!(f, "{}", p.letter()))
    }
}

/// A space-separated scope list as sent by clients, parsed; unknown scopes are left out.
pub fn parse_scopes(text: &str) -> Vec<(String, Scope)> {
    let mut scopes: Vec<(String, Scope)> = Vec::new();
    for word in text.split_ascii_whitespace() {
        if scopes.iter().any(|(seen, _)| seen == word) {
            continue;
        }
        if let Some(scope) = Scope::parse(word) {
            scopes.push((word.to_string(), scope));
        }
    }
    scopes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource(text: &str) -> ResourceScope {
        match Scope::parse(text) {
            Some(Scope::Resource(scope)) => scope,
            other => panic!("{text}: {other:?}"),
        }
    }

    #[test]
    fn v1_scopes() {
        let read = resource("patient/*.read");
        assert_eq!((read.context, read.resource_type.as_deref()), (ScopeContext::Patient, None));
        assert_eq!(read.permissions.to_string(), "rs");
        assert_eq!(resource("user/Observation.write").permissions.to_string(), "cud");
        assert_eq!(resource("system/*.*").permissions.to_string(), "cruds");
    }

    #[test]
    fn v2_scopes_and_filters() {
        assert_eq!(resource("patient/Observation.rs").permissions.to_string(), "rs");
        assert_eq!(resource("user/Patient.cruds").permissions.to_string(), "cruds");
        assert_eq!(resource("system/Condition.cd").permissions.to_string(), "cd");
        let granular = resource(
            "patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory",
        );
        assert_eq!(
            granular.filter.as_deref(),
            Some("category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory")
        );
        assert!(granular.grants(Permission::Search, "Observation"));
        assert!(!granular.grants(Permission::Create, "Observation"));
        assert!(!granular.grants(Permission::Read, "Condition"));
    }

    #[test]
    fn malformed_scopes_are_not_scopes() {
        for text in [
            "patient/Observation.sr",
            "patient/Observation.rr",
            "patient/Observation.",
            "patient/Observation.x",
            "patient/Spaceship.rs",
            "clinic/Observation.rs",
            "patient/*.read?code=1",
            "patient/Observation.rs?",
            "patient/Observation",
            "",
        ] {
            assert_eq!(Scope::parse(text), None, "{text}");
        }
    }

    #[test]
    fn special_scopes_and_lists() {
        let scopes = parse_scopes("openid fhirUser launch/patient offline_access bogus patient/*.rs openid");
        let parsed: Vec<&Scope> = scopes.iter().map(|(_, s)| s).collect();
        assert_eq!(parsed.len(), 5);
        assert_eq!(parsed[..4], [&Scope::OpenId, &Scope::FhirUser, &Scope::LaunchPatient, &Scope::OfflineAccess]);
    }

    #[test]
    fn narrower_scopes() {
        assert!(resource("patient/Observation.rs").within(&resource("patient/*.read")));
        assert!(resource("patient/Observation.r?code=x").within(&resource("patient/Observation.rs")));
        assert!(!resource("patient/Observation.rs").within(&resource("patient/Observation.rs?code=x")));
        assert!(!resource("user/Observation.rs").within(&resource("patient/*.rs")));
        assert!(!resource("patient/Observation.crs").within(&resource("patient/*.read")));
    }
}
