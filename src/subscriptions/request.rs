//! A `Subscription` resource (R4, the Backport IG's profile) read into what the server acts on,
//! and checked: a topic in force, filters the topic allows on parameters the server can decide
//! for one resource, a channel it can deliver to safely. Every problem names where it is.

use serde_json::Value;

use super::topic::Topic;
use crate::search::Registry;
use crate::store::Condition;

const BACKPORT: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/";
/// `Subscription._criteria` extension: `Observation?patient=Patient/1`.
pub const FILTER_CRITERIA: &str =
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-filter-criteria";

/// Subscription extension: how many hours before an appointment starts its reminder is sent
/// (a topic that raises `appointment-start`); without it, the server's setting.
pub const REMINDER_HOURS: &str = "http://hearth.dev/fhir/StructureDefinition/reminder-hours-before";
/// The longest reminder lead a subscription may ask for: two weeks.
pub const MAX_REMINDER_HOURS: u64 = 14 * 24;

/// Request headers a subscriber may not set on its notifications: the server decides them.
const RESERVED_HEADERS: &[&str] =
    &["host", "content-length", "content-type", "transfer-encoding", "connection", "upgrade", "te", "trailer"];

/// The longest timeout per delivery attempt, and the default one (seconds).
const MAX_TIMEOUT: u64 = 60;
const DEFAULT_TIMEOUT: u64 = 10;
/// The most events one notification carries, and the default.
const MAX_COUNT: usize = 100;
const DEFAULT_COUNT: usize = 20;

/// What a notification carries of each event's resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload {
    Empty,
    IdOnly,
    FullResource,
}

impl Payload {
    fn parse(code: &str) -> Option<Payload> {
        match code {
            "empty" => Some(Payload::Empty),
            "id-only" => Some(Payload::IdOnly),
            "full-resource" => Some(Payload::FullResource),
            _ => None,
        }
    }
}

/// Where notifications go.
#[derive(Debug, Clone, PartialEq)]
pub enum Channel {
    /// POSTed to `endpoint` with the subscriber's extra headers.
    RestHook { endpoint: url::Url, headers: Vec<(String, String)> },
    /// An e-mail without health data to this address.
    Email { to: String },
    /// Sent to the websocket clients bound to the subscription with a binding token.
    Websocket,
}

impl Channel {
    /// The channel type's code.
    pub fn code(&self) -> &'static str {
        match self {
            Channel::RestHook { .. } => "rest-hook",
            Channel::Email { .. } => "email",
            Channel::Websocket => "websocket",
        }
    }
}

/// One filter: events of `resource_type` must meet `condition`.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    pub resource_type: String,
    pub condition: Condition,
}

/// A Subscription as the server acts on it.
#[derive(Debug, Clone, PartialEq)]
pub struct SubscriptionRequest {
    pub status: String,
    /// The topic's canonical URL.
    pub topic: String,
    /// When given, only events of the types they name, meeting every filter of their type.
    pub filters: Vec<Filter>,
    pub channel: Channel,
    pub payload: Payload,
    /// `application/fhir+json` or `application/fhir+xml`.
    pub content_type: String,
    /// Seconds between heartbeats (0: none).
    pub heartbeat: u64,
    /// Seconds one delivery attempt may take.
    pub timeout: u64,
    /// The most events in one notification.
    pub max_count: usize,
    /// Hours before an appointment's start its reminder is due, when the subscription says.
    pub reminder_hours: Option<u64>,
    /// When the server turns it off (`Subscription.end`).
    pub end: Option<time::OffsetDateTime>,
}

/// What is wrong with a Subscription, and where (a FHIRPath location).
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub message: String,
    pub expression: String,
}

fn problem(expression: &str, message: impl Into<String>) -> Problem {
    Problem { message: message.into(), expression: expression.to_string() }
}

/// How the server checks what it is given.
pub struct Checks<'a> {
    pub registry: &'a Registry,
    pub base_url: &'a str,
    /// The topics in force.
    pub topics: &'a [std::sync::Arc<Topic>],
    /// Where rest-hook notifications may go.
    pub endpoints: super::endpoint::EndpointPolicy,
}

/// The value of the first extension with `url` in `element`'s `extension` array.
fn extension_value<'a>(element: &'a Value, url: &str) -> Option<&'a Value> {
    element["extension"]
        .as_array()?
        .iter()
        .find(|e| e["url"] == url)
        .and_then(|e| e.as_object()?.iter().find(|(k, _)| k.starts_with("value")).map(|(_, v)| v))
}

/// The filter criteria strings of a Subscription (`Observation?patient=Patient/1`).
pub fn filter_criteria(subscription: &Value) -> Vec<&str> {
    subscription["_criteria"]["extension"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["url"] == FILTER_CRITERIA)
        .filter_map(|e| e["valueString"].as_str())
        .collect()
}

/// The patients a Subscription's filter criteria name: the values that are Patient references,
/// of any parameter (`Observation?patient=Patient/1`, `Communication?recipient=Patient/1`).
pub fn filter_patients(subscription: &Value) -> Vec<String> {
    let mut patients = Vec::new();
    for criteria in filter_criteria(subscription) {
        let query = criteria.split_once('?').map_or("", |(_, query)| query);
        for (_, value) in url::form_urlencoded::parse(query.as_bytes()) {
            patients.extend(value.split(',').filter(|v| v.starts_with("Patient/")).map(str::to_string));
        }
    }
    patients
}

/// The heartbeat period (seconds, 0: none) a Subscription asks for.
pub fn heartbeat_of(subscription: &Value) -> i64 {
    channel_number(&subscription["channel"], "heartbeat-period").ok().flatten().unwrap_or(0) as i64
}

/// A whole-number extension of the channel (`backport-timeout`…).
fn channel_number(channel: &Value, name: &str) -> Result<Option<u64>, Problem> {
    match extension_value(channel, &format!("{BACKPORT}backport-{name}")) {
        None => Ok(None),
        Some(value) => value.as_u64().map(Some).ok_or_else(|| {
            problem(&format!("Subscription.channel.extension('{name}')"), format!("{name} is a whole number"))
        }),
    }
}

/// The payload content a channel asks for: its extension, else `id-only` when it names a
/// payload type and `empty` when it names none.
fn payload_content(channel: &Value) -> Result<Payload, Problem> {
    let code =
        extension_value(&channel["_payload"], &format!("{BACKPORT}backport-payload-content")).and_then(Value::as_str);
    match code {
        None if channel["payload"].as_str().is_none_or(str::is_empty) => Ok(Payload::Empty),
        None => Ok(Payload::IdOnly),
        Some(code) => Payload::parse(code).ok_or_else(|| {
            problem(
                "Subscription.channel.payload.extension",
                format!("'{code}': the payload content is empty, id-only or full-resource"),
            )
        }),
    }
}

impl SubscriptionRequest {
    /// The payload content a Subscription asks for (stored ones were checked when written).
    pub fn payload_of(subscription: &Value) -> Payload {
        payload_content(&subscription["channel"]).unwrap_or(Payload::IdOnly)
    }

    /// Reads and checks a Subscription.
    pub fn parse(subscription: &Value, checks: &Checks<'_>) -> Result<SubscriptionRequest, Problem> {
        let status = subscription["status"].as_str().unwrap_or_default().to_string();
        let topic_url = subscription["criteria"].as_str().unwrap_or_default();
        let topic = checks.topics.iter().find(|t| t.url == topic_url).ok_or_else(|| {
            problem(
                "Subscription.criteria",
                format!(
                    "'{topic_url}' is not a SubscriptionTopic of this server (they are listed at Basic?code=SubscriptionTopic)"
                ),
            )
        })?;
        let mut filters = Vec::new();
        for (index, criteria) in filter_criteria(subscription).into_iter().enumerate() {
            let at = format!("Subscription.criteria.extension[{index}]");
            filters.push(parse_filter(criteria, topic, checks).map_err(|message| problem(&at, message))?);
        }
        let channel_element = &subscription["channel"];
        let channel = parse_channel(channel_element, &checks.endpoints)?;
        let content_type = channel_element["payload"].as_str().unwrap_or_default().to_string();
        let payload = payload_content(channel_element)?;
        let content_type = match content_type.as_str() {
            "" | "application/fhir+json" | "application/json" => "application/fhir+json".to_string(),
            "application/fhir+xml" | "application/xml" => "application/fhir+xml".to_string(),
            other => {
                return Err(problem(
                    "Subscription.channel.payload",
                    format!("'{other}': notifications are application/fhir+json or application/fhir+xml"),
                ))
            }
        };
        let number = |name: &str| channel_number(channel_element, name);
        let heartbeat = number("heartbeat-period")?.unwrap_or(0);
        let timeout = number("timeout")?.unwrap_or(DEFAULT_TIMEOUT);
        if timeout == 0 || timeout > MAX_TIMEOUT {
            return Err(problem(
                "Subscription.channel.extension('timeout')",
                format!("the timeout is 1 to {MAX_TIMEOUT} seconds"),
            ));
        }
        let max_count = number("max-count")?.map_or(DEFAULT_COUNT, |n| n as usize);
        if max_count == 0 || max_count > MAX_COUNT {
            return Err(problem(
                "Subscription.channel.extension('max-count')",
                format!("max-count is 1 to {MAX_COUNT}"),
            ));
        }
        let reminder_hours = reminder_hours(subscription, topic)?;
        let end = match subscription["end"].as_str() {
            None => None,
            Some(end) => Some(
                crate::model::resource::parse_instant(end)
                    .ok_or_else(|| problem("Subscription.end", format!("'{end}' is not an instant")))?,
            ),
        };
        Ok(SubscriptionRequest {
            status,
            topic: topic.url.clone(),
            filters,
            channel,
            payload,
            content_type,
            heartbeat,
            timeout,
            max_count,
            reminder_hours,
            end,
        })
    }

    /// Whether its end has passed at `now`: it has no more events, and the server turns it off.
    pub fn ended(&self, now: time::OffsetDateTime) -> bool {
        self.end.is_some_and(|end| end <= now)
    }

    /// Whether an event of `resource_type` with these index rows passes the filters.
    pub fn admits(&self, judged: &super::topic::Judged<'_>) -> bool {
        if self.filters.is_empty() {
            return true;
        }
        let mut of_type = self.filters.iter().filter(|f| f.resource_type == judged.resource_type).peekable();
        of_type.peek().is_some() && of_type.all(|f| judged.meets(&f.condition))
    }
}

/// The reminder lead a Subscription asks for: on a topic of appointment reminders only, 1 to
/// [`MAX_REMINDER_HOURS`] hours.
fn reminder_hours(subscription: &Value, topic: &Topic) -> Result<Option<u64>, Problem> {
    let Some(value) = extension_value(subscription, REMINDER_HOURS) else { return Ok(None) };
    let at = "Subscription.extension('reminder-hours-before')";
    if !topic.raises(super::topic::TimedEvent::AppointmentStart, "Appointment") {
        return Err(problem(at, format!("topic {} sends no appointment reminders", topic.url)));
    }
    match value.as_u64() {
        Some(hours @ 1..=MAX_REMINDER_HOURS) => Ok(Some(hours)),
        _ => Err(problem(at, format!("the reminder lead is 1 to {MAX_REMINDER_HOURS} hours (valuePositiveInt)"))),
    }
}

/// `Observation?patient=Patient/1` on `topic`.
fn parse_filter(criteria: &str, topic: &Topic, checks: &Checks<'_>) -> Result<Filter, String> {
    let (resource_type, query) = criteria.split_once('?').unwrap_or((criteria, ""));
    if !crate::model::validate::is_resource_type(resource_type) {
        return Err(format!("'{criteria}': a filter is a resource type, '?', and search criteria"));
    }
    if !topic.covers(resource_type) {
        return Err(format!("topic {} has no events of {resource_type}", topic.url));
    }
    for (name, _) in url::form_urlencoded::parse(query.as_bytes()) {
        let parameter = name.split(':').next().unwrap_or_default();
        if !topic.can_filter(resource_type, parameter) {
            return Err(format!("topic {} does not allow filtering {resource_type} on '{parameter}'", topic.url));
        }
    }
    let condition = crate::search::matcher::memory_condition(checks.registry, checks.base_url, resource_type, query)
        .map_err(|error| format!("'{criteria}': {error}"))?;
    Ok(Filter { resource_type: resource_type.to_string(), condition })
}

fn parse_channel(channel: &Value, policy: &super::endpoint::EndpointPolicy) -> Result<Channel, Problem> {
    let endpoint = channel["endpoint"].as_str().unwrap_or_default();
    match channel["type"].as_str().unwrap_or_default() {
        "rest-hook" => {
            let url = url::Url::parse(endpoint).map_err(|_| {
                problem("Subscription.channel.endpoint", format!("'{endpoint}' is not an absolute URL"))
            })?;
            let ip = match url.host() {
                Some(url::Host::Ipv4(ip)) => Some(std::net::IpAddr::V4(ip)),
                Some(url::Host::Ipv6(ip)) => Some(std::net::IpAddr::V6(ip)),
                Some(url::Host::Domain(name)) if is_localhost(name) => Some(std::net::Ipv4Addr::LOCALHOST.into()),
                _ => None,
            };
            let loopback = ip.is_some_and(|ip| ip.is_loopback());
            let secure = url.scheme() == "https" || (url.scheme() == "http" && (loopback || policy.allow_http));
            if !secure || !url.username().is_empty() || url.password().is_some() {
                return Err(problem(
                    "Subscription.channel.endpoint",
                    format!("'{endpoint}': a rest-hook endpoint is https (plain http only on loopback), without credentials in the URL"),
                ));
            }
            if ip.is_some_and(|ip| !policy.admits(ip)) {
                return Err(problem(
                    "Subscription.channel.endpoint",
                    format!("'{endpoint}': a rest-hook endpoint is on a public address (this server is not set to send to loopback or private networks)"),
                ));
            }
            let mut headers = Vec::new();
            for (index, header) in channel["header"].as_array().into_iter().flatten().enumerate() {
                let at = format!("Subscription.channel.header[{index}]");
                headers
                    .push(parse_header(header.as_str().unwrap_or_default()).map_err(|message| problem(&at, message))?);
            }
            Ok(Channel::RestHook { endpoint: url, headers })
        }
        "email" => {
            let to = endpoint.strip_prefix("mailto:").unwrap_or_default();
            if !to.contains('@') || to.chars().any(|c| c.is_whitespace() || c.is_control() || c == ',') {
                return Err(problem(
                    "Subscription.channel.endpoint",
                    format!("'{endpoint}': an email endpoint is mailto: and one address"),
                ));
            }
            Ok(Channel::Email { to: to.to_string() })
        }
        "websocket" if !endpoint.is_empty() => Err(problem(
            "Subscription.channel.endpoint",
            "a websocket subscription has no endpoint: clients bind to it with $get-ws-binding-token",
        )),
        "websocket" => Ok(Channel::Websocket),
        other => Err(problem(
            "Subscription.channel.type",
            format!("'{other}': this server delivers over rest-hook, websocket and email"),
        )),
    }
}

/// Whether a host name is the local machine's (`localhost`, `*.localhost`, RFC 6761).
fn is_localhost(name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost" || name.ends_with(".localhost")
}

/// `Name: value`, a header the server may send for the subscriber. Problems never repeat the
/// value: it is often a secret.
fn parse_header(header: &str) -> Result<(String, String), String> {
    let (name, value) = header.split_once(':').ok_or("a header is 'Name: value'")?;
    let value = value.trim();
    if http::HeaderName::from_bytes(name.as_bytes()).is_err()
        || http::HeaderValue::from_str(value).is_err()
        || value.chars().any(|c| c.is_control())
    {
        return Err("a header is a valid name, ':', and a value of visible characters (no line breaks)".into());
    }
    if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
        return Err(format!("'{name}' is set by the server"));
    }
    Ok((name.to_string(), value.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_checked_for_injection() {
        assert_eq!(parse_header("Authorization: Bearer x").unwrap(), ("Authorization".into(), "Bearer x".into()));
        assert!(parse_header("X-A: 1\r\nX-B: 2").is_err());
        assert!(parse_header("Bad Name: 1").is_err());
        assert!(parse_header("Host: evil").is_err());
        assert!(parse_header("no colon").is_err());
    }

    #[test]
    fn endpoints_are_https_except_loopback_and_public_unless_allowed() {
        use super::super::endpoint::EndpointPolicy;
        let channel = |endpoint: &str| serde_json::json!({"type": "rest-hook", "endpoint": endpoint});
        let strict = EndpointPolicy::default();
        let private = EndpointPolicy { allow_private: true, ..strict };
        let http = EndpointPolicy { allow_http: true, ..strict };
        assert!(parse_channel(&channel("https://example.org/hook"), &strict).is_ok());
        assert!(parse_channel(&channel("http://127.0.0.1:9/hook"), &private).is_ok());
        assert!(parse_channel(&channel("http://localhost/hook"), &private).is_ok());
        for refused in [
            "http://127.0.0.1:9/hook",
            "http://localhost/hook",
            "https://169.254.169.254/",
            "https://[fd00::1]/",
            "https://10.0.0.1/",
        ] {
            let problem = parse_channel(&channel(refused), &strict).unwrap_err();
            assert!(problem.message.contains("public address"), "{refused}: {problem:?}");
        }
        assert!(parse_channel(&channel("http://example.org/hook"), &private).is_err());
        assert!(parse_channel(&channel("http://example.org/hook"), &http).is_ok());
        assert!(parse_channel(&channel("https://u:p@example.org/hook"), &strict).is_err());
        assert!(parse_channel(&channel("ftp://example.org/"), &http).is_err());
        assert!(parse_channel(&serde_json::json!({"type": "sms", "endpoint": "tel:1"}), &strict).is_err());
    }
}
