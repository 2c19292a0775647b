//! AuditEvents shaped as IHE Basic Audit Log Patterns (BALP) say for RESTful activities
//! (`type` rest, `subtype` the interaction) and for the authorization server's security
//! events: the agents (the user with their `fhirUser` and the token's `jti`, the client app by
//! its `client_id`, the server), the server as the observer, the `X-Request-Id` entity, the
//! query of a search, the data touched, and one entity per patient whose data it concerns.
//! Tokens are never recorded, only their `jti`.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::auth::Access;
use crate::store::audit::NewAuditEvent;

const DCM: &str = "http://dicom.nema.org/resources/ontology/DCM";
const BALP_AGENT: &str = "https://profiles.ihe.net/ITI/BALP/CodeSystem/UserAgentTypes";
const BALP_ENTITY: &str = "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType";
const ENTITY_TYPE: &str = "http://terminology.hl7.org/CodeSystem/audit-entity-type";
const OBJECT_ROLE: &str = "http://terminology.hl7.org/CodeSystem/object-role";
const RESTFUL: &str = "http://hl7.org/fhir/restful-interaction";

/// The longest failure description an AuditEvent keeps.
const MAX_OUTCOME_DESC: usize = 500;

/// What kind of activity an event records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Activity {
    /// A RESTful interaction (`read`, `search-type`, `create`, `transaction`…).
    Rest(&'static str),
    /// An operation (`$everything`): subtype `operation` and the operation's name.
    Operation(String),
    /// An event of the authorization server.
    Security(SecurityEvent),
}

/// The authorization server's events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecurityEvent {
    Login,
    Logout,
    /// An access token issued for a code or to a backend service, or refused.
    Token,
    /// An access token issued for a refresh token, or refused.
    Refresh,
    Revoke,
    /// A user's decision on the consent page.
    Consent,
    Registration,
    PasswordReset,
    AccountDisabled,
    AccountEnabled,
    /// An EHR launch context created.
    Launch,
}

/// Hearth's codes of its security events (every one has one, beside the standard codes).
const SECURITY_EVENTS: &str = "urn:hearth:security-event";

impl SecurityEvent {
    const ALL: [SecurityEvent; 11] = [
        SecurityEvent::Login,
        SecurityEvent::Logout,
        SecurityEvent::Token,
        SecurityEvent::Refresh,
        SecurityEvent::Revoke,
        SecurityEvent::Consent,
        SecurityEvent::Registration,
        SecurityEvent::PasswordReset,
        SecurityEvent::AccountDisabled,
        SecurityEvent::AccountEnabled,
        SecurityEvent::Launch,
    ];

    /// The event of Hearth's `code`.
    fn from_code(code: &str) -> Option<SecurityEvent> {
        SecurityEvent::ALL.into_iter().find(|event| event.code() == code)
    }

    /// Hearth's code.
    pub fn code(self) -> &'static str {
        match self {
            SecurityEvent::Login => "login",
            SecurityEvent::Logout => "logout",
            SecurityEvent::Token => "token",
            SecurityEvent::Refresh => "refresh",
            SecurityEvent::Revoke => "revoke",
            SecurityEvent::Consent => "consent",
            SecurityEvent::Registration => "registration",
            SecurityEvent::PasswordReset => "password-reset",
            SecurityEvent::AccountDisabled => "account-disabled",
            SecurityEvent::AccountEnabled => "account-enabled",
            SecurityEvent::Launch => "launch",
        }
    }

    /// DICOM's event type: user authentication for sign-in and tokens, a security alert
    /// for changes to accounts and consents; the standard subtype where there is one.
    fn type_and_subtype(self) -> (Value, Vec<Value>) {
        let authentication = coding(DCM, "110114", "User Authentication");
        let alert = coding(DCM, "110113", "Security Alert");
        let (event_type, standard) = match self {
            SecurityEvent::Login => (authentication, Some(coding(DCM, "110122", "Login"))),
            SecurityEvent::Logout => (authentication, Some(coding(DCM, "110123", "Logout"))),
            SecurityEvent::Token | SecurityEvent::Refresh => {
                (authentication, Some(coding("urn:ihe:event-type-code", "ITI-71", "Get Access Token")))
            }
            SecurityEvent::Revoke | SecurityEvent::Launch => (authentication, None),
            _ => (alert, Some(coding(DCM, "110137", "User Security Attributes Changed"))),
        };
        let own = json!({"system": SECURITY_EVENTS, "code": self.code()});
        (event_type, standard.into_iter().chain([own]).collect())
    }
}

impl Activity {
    /// The BALP action: create, read, update, delete, or execute for the rest (searches,
    /// operations, bundles, security events).
    pub fn action(&self) -> &'static str {
        match self {
            Activity::Rest("read" | "vread" | "capabilities" | "history-instance") => "R",
            Activity::Rest("create") => "C",
            Activity::Rest("update" | "patch") => "U",
            Activity::Rest("delete") => "D",
            _ => "E",
        }
    }

    fn type_and_subtype(&self) -> (Value, Vec<Value>) {
        let rest = json!({"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest",
            "display": "Restful Operation"});
        match self {
            Activity::Rest(code) => (rest, vec![json!({"system": RESTFUL, "code": code})]),
            Activity::Operation(name) => (
                rest,
                vec![
                    json!({"system": RESTFUL, "code": "operation"}),
                    json!({"system": "urn:ietf:rfc:3986", "code": name}),
                ],
            ),
            Activity::Security(event) => event.type_and_subtype(),
        }
    }
}

/// How the activity ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// Refused or failed through the client's doing (4xx), with why.
    ClientFailure(String),
    /// The server failed (5xx); what failed is in the server's log, not here.
    ServerFailure,
}

impl Outcome {
    /// A refusal or failure through the client's doing, its description cut to
    /// [`MAX_OUTCOME_DESC`] bytes.
    pub fn client_failure(mut why: String) -> Outcome {
        why.truncate(why.floor_char_boundary(MAX_OUTCOME_DESC));
        Outcome::ClientFailure(why)
    }

    fn code(&self) -> &'static str {
        match self {
            Outcome::Success => "0",
            Outcome::ClientFailure(_) => "4",
            Outcome::ServerFailure => "8",
        }
    }
}

/// Who did it: the user (their `fhirUser`, their user name), the token (its `jti`) and the
/// client app; any may be unknown (a failed login knows the name tried and the app).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Who {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The user's name as their resource gives it ("Gregory House"), for a log a person reads.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
}

impl Who {
    /// Who a request's access says it is.
    pub fn of(access: &Access) -> Who {
        let Access::Token(grant) = access else { return Who::default() };
        let claims = grant.claims.as_deref();
        Who {
            user: grant.fhir_user.clone(),
            name: None,
            // A backend service's subject is its client id: no user.
            username: claims.filter(|_| grant.fhir_user.is_some()).map(|c| c.sub.clone()),
            jti: claims.map(|c| c.jti.clone()),
            client_id: Some(grant.client_id.clone()),
        }
    }

    /// What `other` knows in addition to (or instead of) this.
    pub fn merge(&mut self, other: Who) {
        self.user = other.user.or(self.user.take());
        self.name = other.name.or(self.name.take());
        self.username = other.username.or(self.username.take());
        self.jti = other.jti.or(self.jti.take());
        self.client_id = other.client_id.or(self.client_id.take());
    }
}

/// Everything one AuditEvent says.
#[derive(Debug, Clone)]
pub struct Occurrence<'a> {
    pub activity: Activity,
    pub outcome: Outcome,
    pub who: Who,
    pub request_id: Option<&'a str>,
    /// References (`Observation/1/_history/2`) of the resources read or changed.
    pub data: Vec<String>,
    /// The query of a search (`name=Smith&_count=10`).
    pub query: Option<String>,
    /// The patients (ids) whose data it disclosed or changed.
    pub patients: Vec<String>,
}

/// The AuditEvent row for `occurrence`. What is stored is its [`Record`]: the BALP JSON, four
/// fifths of it the same codes and words in every event, is rendered when the event is read
/// ([`render`]), which keeps the log, its spool and its commits small (ADR 21).
pub fn audit_event(occurrence: &Occurrence<'_>) -> NewAuditEvent {
    let mut patients = occurrence.patients.clone();
    patients.sort_unstable();
    patients.dedup();
    let id = crate::model::resource::new_id();
    // To the millisecond, as the event says it: the `recorded` column must agree with it.
    let recorded = crate::model::resource::now();
    let record = Record {
        id: &id,
        recorded: crate::model::resource::format_instant(recorded),
        activity: match &occurrence.activity {
            Activity::Rest(code) => ActivityRecord::Rest(Cow::Borrowed(code)),
            Activity::Operation(name) => ActivityRecord::Operation(Cow::Borrowed(name)),
            Activity::Security(event) => ActivityRecord::Security(Cow::Borrowed(event.code())),
        },
        outcome: occurrence.outcome.code(),
        outcome_desc: match &occurrence.outcome {
            Outcome::ClientFailure(why) => Some(why),
            _ => None,
        },
        who: &occurrence.who,
        request_id: occurrence.request_id,
        data: &occurrence.data,
        query: occurrence.query.as_deref(),
        patients: &patients,
    };
    NewAuditEvent {
        body: serde_json::to_vec(&record).unwrap_or_default(),
        id: id.clone(),
        recorded,
        action: occurrence.activity.action().to_string(),
        outcome: occurrence.outcome.code().to_string(),
        agent: occurrence.who.user.clone(),
        client_id: occurrence.who.client_id.clone(),
        request_id: occurrence.request_id.map(str::to_string),
        patients,
    }
}

/// What is stored of an AuditEvent: the facts of its [`Occurrence`], its id and its time.
#[derive(Serialize)]
struct Record<'a> {
    id: &'a str,
    recorded: String,
    activity: ActivityRecord<'a>,
    outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    outcome_desc: Option<&'a str>,
    who: &'a Who,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<&'a str>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    data: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    query: Option<&'a str>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    patients: &'a [String],
}

/// A [`Record`] read back.
#[derive(Deserialize)]
struct StoredRecord {
    id: String,
    recorded: String,
    activity: ActivityRecord<'static>,
    outcome: String,
    #[serde(default)]
    outcome_desc: Option<String>,
    who: Who,
    #[serde(default)]
    request_id: Option<String>,
    #[serde(default)]
    data: Vec<String>,
    #[serde(default)]
    query: Option<String>,
    #[serde(default)]
    patients: Vec<String>,
}

/// An [`Activity`] as stored.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum ActivityRecord<'a> {
    Rest(Cow<'a, str>),
    Operation(Cow<'a, str>),
    Security(Cow<'a, str>),
}

/// The R4 restful-interaction codes an event's subtype may be.
const REST_CODES: [&str; 17] = [
    "read",
    "vread",
    "update",
    "patch",
    "delete",
    "history",
    "history-instance",
    "history-type",
    "history-system",
    "create",
    "search",
    "search-type",
    "search-system",
    "capabilities",
    "transaction",
    "batch",
    "operation",
];

impl ActivityRecord<'_> {
    fn activity(&self) -> Option<Activity> {
        Some(match self {
            ActivityRecord::Rest(code) => Activity::Rest(REST_CODES.into_iter().find(|known| known == code)?),
            ActivityRecord::Operation(name) => Activity::Operation(name.to_string()),
            ActivityRecord::Security(code) => Activity::Security(SecurityEvent::from_code(code)?),
        })
    }
}

/// The AuditEvent JSON (BALP) of a stored event, observed by the server at `base_url` (its
/// FHIR base); `None` if it is not one. An event stored as JSON before records were (the
/// first form of the log) is that JSON.
pub fn render(stored: &[u8], base_url: &str) -> Option<Value> {
    if stored.starts_with(b"{\"resourceType\"") {
        return serde_json::from_slice(stored).ok();
    }
    let record: StoredRecord = serde_json::from_slice(stored).ok()?;
    let outcome = match record.outcome.as_str() {
        "0" => Outcome::Success,
        "4" => Outcome::ClientFailure(record.outcome_desc.unwrap_or_default()),
        _ => Outcome::ServerFailure,
    };
    let occurrence = Occurrence {
        activity: record.activity.activity()?,
        outcome,
        who: record.who,
        request_id: record.request_id.as_deref(),
        data: record.data,
        query: record.query,
        patients: record.patients,
    };
    Some(balp_json(&occurrence, &record.id, &record.recorded, base_url))
}

/// The BALP JSON of `occurrence` (whose patients are distinct), recorded at `recorded`.
fn balp_json(occurrence: &Occurrence<'_>, id: &str, recorded: &str, base_url: &str) -> Value {
    let (event_type, subtype) = occurrence.activity.type_and_subtype();
    let mut event = json!({
        "resourceType": "AuditEvent",
        "id": id,
        "meta": {"versionId": "1", "lastUpdated": recorded},
        "type": event_type,
        "subtype": subtype,
        "action": occurrence.activity.action(),
        "recorded": recorded,
        "outcome": occurrence.outcome.code(),
        "agent": agents(&occurrence.who, base_url),
        "source": {
            "observer": {"display": base_url},
            "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4",
                "display": "Application Server"}]
        },
    });
    if let Outcome::ClientFailure(why) = &occurrence.outcome {
        event["outcomeDesc"] = json!(why);
    }
    let entities = entities(occurrence, &occurrence.patients);
    if !entities.is_empty() {
        event["entity"] = Value::Array(entities);
    }
    event
}

fn coding(system: &str, code: &str, display: &str) -> Value {
    json!({"system": system, "code": code, "display": display})
}

/// The user (their `fhirUser`, user name and the token's `jti`), the client app, and the
/// server; an unknown caller when neither user nor app is known (authorization off, the
/// server's own work).
fn agents(who: &Who, base_url: &str) -> Vec<Value> {
    let mut agents = Vec::new();
    let has_user = who.user.is_some() || who.username.is_some();
    if has_user {
        let mut agent = json!({
            "type": {"coding": [coding(BALP_AGENT, "UserOauthAgent", "User OAuth Agent participant")]},
            "requestor": true,
        });
        agent["who"] = match (&who.user, &who.username) {
            (Some(user), _) => json!({"reference": user}),
            (None, username) => json!({"display": username}),
        };
        if let Some(name) = who.name.as_ref().filter(|_| who.user.is_some()) {
            agent["who"]["display"] = json!(name);
        }
        if let Some(role) = who.user.as_deref().and_then(user_role) {
            agent["role"] = json!([{"text": role}]);
        }
        if let Some(username) = &who.username {
            agent["altId"] = json!(username);
        }
        if let Some(jti) = &who.jti {
            agent["policy"] = json!([jti]);
        }
        agents.push(agent);
    }
    match &who.client_id {
        Some(client_id) => {
            let mut agent = json!({
                "type": {"coding": [coding(DCM, "110153", "Source Role ID")]},
                "who": {"identifier": {"system": format!("{base_url}/client"), "value": client_id}},
                "requestor": !has_user,
            });
            // A backend service's own token.
            if let Some(jti) = who.jti.as_ref().filter(|_| !has_user) {
                agent["policy"] = json!([jti]);
            }
            agents.push(agent);
        }
        None if !has_user => agents.push(json!({
            "type": {"coding": [coding(DCM, "110153", "Source Role ID")]},
            "who": {"display": "unauthenticated caller (authorization is off) or the server's own work"},
            "requestor": true,
        })),
        None => {}
    }
    agents.push(json!({
        "type": {"coding": [coding(DCM, "110152", "Destination Role ID")]},
        "who": {"display": base_url},
        "requestor": false,
        "network": {"address": base_url, "type": "5"},
    }));
    agents
}

/// What kind of user a `fhirUser` is, in words a person reading the log understands.
fn user_role(user: &str) -> Option<&'static str> {
    match user.split('/').next()? {
        "Practitioner" | "PractitionerRole" => Some("clinician"),
        "Patient" => Some("patient"),
        "RelatedPerson" => Some("caregiver"),
        "Person" => Some("person"),
        _ => None,
    }
}

/// The request id, the data, the query and the `patients` (distinct).
fn entities(occurrence: &Occurrence<'_>, patients: &[String]) -> Vec<Value> {
    let mut entities = Vec::new();
    if let Some(request_id) = occurrence.request_id {
        entities.push(json!({
            "type": coding(BALP_ENTITY, "XrequestId", "X-Request-Id"),
            "what": {"identifier": {"value": request_id}},
        }));
    }
    for reference in &occurrence.data {
        entities.push(json!({
            "what": {"reference": reference},
            "type": coding(ENTITY_TYPE, "2", "System Object"),
            "role": coding(OBJECT_ROLE, "4", "Domain Resource"),
        }));
    }
    if let Some(query) = &occurrence.query {
        use base64::Engine;
        entities.push(json!({
            "type": coding(ENTITY_TYPE, "2", "System Object"),
            "role": coding(OBJECT_ROLE, "24", "Query"),
            "query": base64::engine::general_purpose::STANDARD.encode(query),
        }));
    }
    for patient in patients {
        entities.push(json!({
            "what": {"reference": format!("Patient/{patient}")},
            "type": coding(ENTITY_TYPE, "1", "Person"),
            "role": coding(OBJECT_ROLE, "1", "Patient"),
        }));
    }
    entities
}

/// An AuditEvent as a caller whose access is limited to some patients (`patients`; `viewer`
/// its own `fhirUser`) may see it: what concerns them, and nothing about anyone else. Left
/// out: the query (it may name anyone), other patients' entities, the data of an event that
/// also concerns other patients, and of the agents, every user name and token id but the
/// viewer's own, and the identity of another patient or caregiver (they read as such).
pub fn shown_to_patient(mut event: Value, patients: &[String], viewer: Option<&str>) -> Value {
    let theirs = |reference: &str| {
        let id = reference.strip_prefix("Patient/").map(|rest| rest.split('/').next().unwrap_or(rest));
        id.is_some_and(|id| patients.iter().any(|p| p == id))
    };
    let role = |entity: &Value| entity.pointer("/role/code").and_then(Value::as_str).map(str::to_string);
    let reference = |entity: &Value| entity.pointer("/what/reference").and_then(Value::as_str).map(str::to_string);
    if let Some(Value::Array(entities)) = event.get_mut("entity") {
        let others_concerned =
            entities.iter().any(|e| role(e).as_deref() == Some("1") && !reference(e).is_some_and(|r| theirs(&r)));
        entities.retain(|entity| match (role(entity).as_deref(), reference(entity)) {
            (Some("24"), _) => false,
            (Some("1"), reference) => reference.is_some_and(|r| theirs(&r)),
            (Some("4"), Some(reference)) if reference.starts_with("Patient/") => theirs(&reference),
            (Some("4"), _) => !others_concerned,
            _ => true,
        });
    }
    if let Some(Value::Array(agents)) = event.get_mut("agent") {
        for agent in agents {
            let who = agent.pointer("/who/reference").and_then(Value::as_str).map(str::to_string);
            if who.is_some() && who.as_deref() == viewer {
                continue;
            }
            if let Some(fields) = agent.as_object_mut() {
                fields.remove("altId");
                fields.remove("policy");
            }
            let stranger = match who.as_deref() {
                Some(reference) if reference.starts_with("Patient/") && !theirs(reference) => Some("another patient"),
                Some(reference) if reference.starts_with("RelatedPerson/") => Some("a caregiver (related person)"),
                Some(reference) if reference.starts_with("Person/") => Some("another person"),
                Some(_) => None,
                None if agent.pointer("/who/display").is_some()
                    && agent.pointer("/type/coding/0/code") != Some(&json!("110152")) =>
                {
                    Some("a user")
                }
                None => None,
            };
            if let Some(display) = stranger {
                agent["who"] = json!({"display": display});
            }
        }
    }
    event
}

#[cfg(test)]
mod tests {
    use super::*;

    fn occurrence(activity: Activity) -> Occurrence<'static> {
        Occurrence {
            activity,
            outcome: Outcome::Success,
            who: Who::default(),
            request_id: Some("req-1"),
            data: vec!["Observation/1/_history/2".into()],
            query: None,
            patients: vec!["p2".into(), "p1".into(), "p2".into()],
        }
    }

    #[test]
    fn every_kind_of_activity_renders_from_its_record() {
        let activities = [
            Activity::Rest("search-type"),
            Activity::Operation("$everything".into()),
            Activity::Security(SecurityEvent::PasswordReset),
        ];
        for activity in activities {
            let mut occurred = occurrence(activity.clone());
            occurred.outcome = Outcome::client_failure("refused".into());
            let row = audit_event(&occurred);
            let event: Value = render(&row.body, "http://h/fhir").unwrap();
            let (event_type, subtype) = activity.type_and_subtype();
            assert_eq!((&event["type"], &event["subtype"]), (&event_type, &json!(subtype)));
            assert_eq!((event["id"].as_str(), event["outcomeDesc"].as_str()), (Some(row.id.as_str()), Some("refused")));
            assert_eq!(event["action"], activity.action());
        }
        assert!(render(br#"{"id":"x","activity":{"rest":"nonsense"}}"#, "http://h/fhir").is_none());
    }

    #[test]
    fn actions_follow_the_interaction() {
        assert_eq!(Activity::Rest("read").action(), "R");
        assert_eq!(Activity::Rest("create").action(), "C");
        assert_eq!(Activity::Rest("patch").action(), "U");
        assert_eq!(Activity::Rest("delete").action(), "D");
        assert_eq!(Activity::Rest("search-type").action(), "E");
        assert_eq!(Activity::Operation("$everything".into()).action(), "E");
    }

    #[test]
    fn an_event_names_its_patients_once_and_its_request() {
        let row = audit_event(&occurrence(Activity::Rest("read")));
        let event: Value = render(&row.body, "http://h/fhir").unwrap();
        assert_eq!(event["subtype"][0]["code"], "read");
        assert_eq!(event["action"], "R");
        let entities = event["entity"].as_array().unwrap();
        assert_eq!(entities[0]["what"]["identifier"]["value"], "req-1");
        let patients: Vec<&str> = entities
            .iter()
            .filter_map(|e| e["what"]["reference"].as_str())
            .filter(|r| r.starts_with("Patient/"))
            .collect();
        assert_eq!(patients, ["Patient/p1", "Patient/p2"]);
        let shown = shown_to_patient(event.clone(), &["p1".into(), "p2".into()], Some("Patient/p1"));
        let references: Vec<&str> =
            shown["entity"].as_array().unwrap().iter().filter_map(|e| e["what"]["reference"].as_str()).collect();
        assert_eq!(references, ["Observation/1/_history/2", "Patient/p1", "Patient/p2"]);
        let shown = shown_to_patient(event, &["p1".into()], Some("Patient/p1"));
        let references: Vec<&str> =
            shown["entity"].as_array().unwrap().iter().filter_map(|e| e["what"]["reference"].as_str()).collect();
        assert_eq!(references, ["Patient/p1"], "the data of an event that concerns another patient too is left out");
    }

    #[test]
    fn a_patient_sees_other_users_without_their_names_or_tokens() {
        let mut stranger = occurrence(Activity::Rest("read"));
        stranger.who = Who {
            user: Some("Patient/p2".into()),
            name: Some("Bob Stranger".into()),
            username: Some("bob".into()),
            jti: Some("jti-of-bob".into()),
            client_id: Some("app".into()),
        };
        stranger.patients = vec!["p1".into()];
        let event: Value = render(&audit_event(&stranger).body, "http://h/fhir").unwrap();
        let shown = shown_to_patient(event, &["p1".into()], Some("Patient/p1")).to_string();
        for hidden in ["Patient/p2", "bob", "Bob Stranger", "jti-of-bob"] {
            assert!(!shown.contains(hidden), "{hidden} in {shown}");
        }
        assert!(shown.contains("another patient"));
        let mut doctor = occurrence(Activity::Rest("read"));
        doctor.who = Who {
            user: Some("Practitioner/d".into()),
            name: Some("Gregory House".into()),
            username: Some("house".into()),
            ..Who::default()
        };
        let event: Value = render(&audit_event(&doctor).body, "http://h/fhir").unwrap();
        let shown = shown_to_patient(event, &["p1".into(), "p2".into()], Some("Patient/p1"));
        assert_eq!(shown["agent"][0]["who"]["reference"], "Practitioner/d", "staff are named");
        assert_eq!(shown["agent"][0]["who"]["display"], "Gregory House");
        assert_eq!(shown["agent"][0]["role"][0]["text"], "clinician");
        assert!(shown["agent"][0].get("altId").is_none());
    }
}
