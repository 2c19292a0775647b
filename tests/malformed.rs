//! A battery of malformed requests, sent to a real server on both databases.
//!
//! Every case must be refused with its exact 4xx status (never a 5xx) and an OperationOutcome
//! that carries at least one `error` issue with diagnostics; validation cases must also name the
//! offending element in `issue.expression`. No case is meant to store anything: at the end the
//! server still answers `metadata` and its system history is empty (which also proves that a
//! failing transaction leaves nothing of its earlier entries behind).
//!
//! All cases run before anything is asserted, so one run reports every failing case;
//! `MALFORMED_DUMP=1 cargo test --test malformed -- --nocapture` prints every response.

mod common;

use common::{Db, TestServer};
use hearth::server::Settings;
use reqwest::Method;
use serde_json::{json, Value};

const FHIR_JSON: &str = "application/fhir+json";
const FHIR_XML: &str = "application/fhir+xml";
const JSON_PATCH: &str = "application/json-patch+json";
const STRICT: (&str, &str) = ("prefer", "handling=strict");
/// Identifier system carried by resources inside transactions that must be rolled back.
const MARKER: &str = "urn:hearth:malformed";

/// Where the OperationOutcome must say the problem is.
#[derive(Debug, Clone)]
enum Location {
    /// Some error issue has exactly this expression.
    Exact(&'static str),
    /// This expression, or (for unknown or missing elements, which a schema reports on the
    /// enclosing object) the parent expression with diagnostics naming the last step.
    ElementOrParent(&'static str),
}

/// One malformed request and how it must be refused.
#[derive(Debug, Clone)]
struct Case {
    name: &'static str,
    method: Method,
    /// Path and query relative to the FHIR base (`Patient/1?x=y`).
    path: String,
    headers: Vec<(&'static str, String)>,
    /// Raw body; sent as `application/fhir+json` unless the case sets a Content-Type.
    body: Vec<u8>,
    status: u16,
    location: Option<Location>,
    /// Text some error issue's diagnostics must contain.
    mention: Option<&'static str>,
}

impl Case {
    fn new(name: &'static str, method: Method, path: impl Into<String>, status: u16) -> Case {
        Case {
            name,
            method,
            path: path.into(),
            headers: Vec::new(),
            body: Vec::new(),
            status,
            location: None,
            mention: None,
        }
    }

    fn json(mut self, body: Value) -> Case {
        self.body = body.to_string().into_bytes();
        self
    }

    fn raw(mut self, body: impl Into<Vec<u8>>) -> Case {
        self.body = body.into();
        self
    }

    fn header(mut self, name: &'static str, value: impl Into<String>) -> Case {
        self.headers.push((name, value.into()));
        self
    }

    fn content_type(self, value: &str) -> Case {
        self.header("content-type", value)
    }

    fn strict(self) -> Case {
        self.header(STRICT.0, STRICT.1)
    }

    /// The issue's expression must be exactly `expression`.
    fn at(mut self, expression: &'static str) -> Case {
        self.location = Some(Location::Exact(expression));
        self
    }

    /// The issue must point at `expression` or at its parent while naming the element.
    fn naming(mut self, expression: &'static str) -> Case {
        self.location = Some(Location::ElementOrParent(expression));
        self
    }

    fn mentioning(mut self, text: &'static str) -> Case {
        self.mention = Some(text);
        self
    }
}

fn get(name: &'static str, path: impl Into<String>, status: u16) -> Case {
    Case::new(name, Method::GET, path, status)
}

fn post(name: &'static str, path: impl Into<String>, body: Value, status: u16) -> Case {
    Case::new(name, Method::POST, path, status).json(body)
}

fn put(name: &'static str, path: impl Into<String>, body: Value, status: u16) -> Case {
    Case::new(name, Method::PUT, path, status).json(body)
}

fn raw(name: &'static str, method: Method, path: &str, body: &[u8], status: u16) -> Case {
    Case::new(name, method, path, status).raw(body.to_vec())
}

/// `POST [type]` of an invalid resource: 400 naming `expression`.
fn invalid(name: &'static str, resource: Value, expression: &'static str) -> Case {
    let resource_type = resource["resourceType"].as_str().unwrap_or("Patient").to_string();
    post(name, resource_type, resource, 400).at(expression)
}

/// As [`invalid`], for unknown or missing elements (reported on the parent object by a schema).
fn unknown(name: &'static str, resource: Value, expression: &'static str) -> Case {
    let resource_type = resource["resourceType"].as_str().unwrap_or("Patient").to_string();
    post(name, resource_type, resource, 400).naming(expression)
}

/// `{"resourceType": kind}` plus `extra` members.
fn resource(kind: &str, extra: Value) -> Value {
    let mut value = json!({ "resourceType": kind });
    if let (Some(target), Value::Object(members)) = (value.as_object_mut(), extra) {
        target.extend(members);
    }
    value
}

fn patient(extra: Value) -> Value {
    resource("Patient", extra)
}

/// A valid Observation (status and code present) plus `extra`.
fn observation(extra: Value) -> Value {
    let mut members = json!({"status": "final", "code": {"text": "body weight"}});
    if let (Some(target), Value::Object(extra)) = (members.as_object_mut(), extra) {
        target.extend(extra);
    }
    resource("Observation", members)
}

fn transaction(entries: Value) -> Value {
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
}

/// A transaction entry that would create a (valid) marked Patient.
fn marked_patient_entry(value: &str) -> Value {
    json!({
        "fullUrl": "urn:uuid:6f1c1a8e-0d7e-4bb7-9d59-2f8a5f0e6c01",
        "resource": {"resourceType": "Patient", "identifier": [{"system": MARKER, "value": value}]},
        "request": {"method": "POST", "url": "Patient"}
    })
}

fn fhirpath_patch(kind: &str, path: &str) -> Value {
    json!({"resourceType": "Parameters", "parameter": [{"name": "operation", "part": [
        {"name": "type", "valueCode": kind},
        {"name": "path", "valueString": path}
    ]}]})
}

fn cases() -> Vec<Case> {
    let long_id = "a".repeat(65);
    let deep_json = format!("{{\"resourceType\":\"Patient\",\"x\":{}{}}}", "[".repeat(300), "]".repeat(300));
    vec![
        // --- Unparseable bodies -------------------------------------------------------------
        raw("json-invalid", Method::POST, "Patient", br#"{"resourceType": "Patient", active: true}"#, 400),
        raw("json-truncated", Method::POST, "Patient", br#"{"resourceType": "Patient", "name": [{"family": "Cha"#, 400),
        raw("json-array", Method::POST, "Patient", br#"[{"resourceType": "Patient"}]"#, 400),
        raw("json-number", Method::POST, "Patient", b"42", 400),
        raw("json-string", Method::POST, "Patient", br#""Patient""#, 400),
        raw("json-true", Method::POST, "Patient", b"true", 400),
        raw("json-null", Method::POST, "Patient", b"null", 400),
        raw("json-empty-object", Method::POST, "Patient", b"{}", 400),
        raw("json-whitespace-only", Method::POST, "Patient", b"  \n ", 400),
        raw("json-no-body", Method::POST, "Patient", b"", 400),
        raw(
            "json-invalid-utf8",
            Method::POST,
            "Patient",
            b"{\"resourceType\":\"Patient\",\"name\":[{\"family\":\"M\xfcller\xff\"}]}",
            400,
        ),
        raw("json-trailing-garbage", Method::POST, "Patient", br#"{"resourceType":"Patient"} {"x":1}"#, 400),
        raw("json-trailing-comma", Method::POST, "Patient", br#"{"resourceType":"Patient","active":true,}"#, 400),
        raw("json-single-quotes", Method::POST, "Patient", b"{'resourceType':'Patient'}", 400),
        raw("json-comment", Method::POST, "Patient", b"{\"resourceType\":\"Patient\" /* hi */}", 400),
        raw(
            "json-lone-surrogate",
            Method::POST,
            "Patient",
            br#"{"resourceType":"Patient","name":[{"family":"\ud800"}]}"#,
            400,
        ),
        raw(
            "json-nan",
            Method::POST,
            "Observation",
            br#"{"resourceType":"Observation","status":"final","code":{"text":"w"},"valueQuantity":{"value":NaN}}"#,
            400,
        ),
        raw("json-nested-300-deep", Method::POST, "Patient", deep_json.as_bytes(), 400),
        // --- XML ----------------------------------------------------------------------------
        raw(
            "xml-mismatched-tags",
            Method::POST,
            "Patient",
            br#"<Patient xmlns="http://hl7.org/fhir"><active value="true"></Patient>"#,
            400,
        )
        .content_type(FHIR_XML),
        raw("xml-truncated", Method::POST, "Patient", br#"<Patient xmlns="http://hl7.org/fhir"><active value="true"/>"#, 400)
            .content_type(FHIR_XML),
        raw("xml-not-xml", Method::POST, "Patient", br#"{"resourceType":"Patient"}"#, 400).content_type(FHIR_XML),
        raw(
            "xml-unknown-root",
            Method::POST,
            "Patient",
            br#"<Spaceship xmlns="http://hl7.org/fhir"><id value="1"/></Spaceship>"#,
            400,
        )
        .content_type(FHIR_XML),
        raw(
            "xml-unknown-child",
            Method::POST,
            "Patient",
            br#"<Patient xmlns="http://hl7.org/fhir"><nickname value="Pete"/></Patient>"#,
            400,
        )
        .content_type(FHIR_XML),
        raw("xml-no-namespace", Method::POST, "Patient", br#"<Patient><active value="true"/></Patient>"#, 400)
            .content_type(FHIR_XML),
        raw(
            "xml-doctype-entity",
            Method::POST,
            "Patient",
            br#"<?xml version="1.0"?><!DOCTYPE Patient [<!ENTITY e "x">]><Patient xmlns="http://hl7.org/fhir"><active value="true"/></Patient>"#,
            400,
        )
        .content_type(FHIR_XML),
        raw(
            "xml-bad-boolean",
            Method::POST,
            "Patient",
            br#"<Patient xmlns="http://hl7.org/fhir"><active value="yes"/></Patient>"#,
            400,
        )
        .content_type(FHIR_XML),
        raw(
            "xml-bad-date",
            Method::POST,
            "Patient",
            br#"<Patient xmlns="http://hl7.org/fhir"><birthDate value="1974-13-01"/></Patient>"#,
            400,
        )
        .content_type(FHIR_XML)
        .at("Patient.birthDate"),
        raw(
            "xml-invalid-utf8",
            Method::POST,
            "Patient",
            b"<Patient xmlns=\"http://hl7.org/fhir\"><gender value=\"m\xe4le\"/></Patient>",
            400,
        )
        .content_type(FHIR_XML),
        raw(
            "xml-type-differs-from-url",
            Method::POST,
            "Patient",
            br#"<Observation xmlns="http://hl7.org/fhir"><status value="final"/><code><text value="w"/></code></Observation>"#,
            400,
        )
        .content_type(FHIR_XML)
        .at("resourceType"),
        // --- resourceType -------------------------------------------------------------------
        post("type-missing", "Patient", json!({"active": true}), 400),
        post("type-number", "Patient", json!({"resourceType": 5}), 400),
        post("type-null", "Patient", json!({"resourceType": null}), 400),
        post("type-array", "Patient", json!({"resourceType": ["Patient"]}), 400),
        post("type-empty", "Patient", json!({"resourceType": ""}), 400),
        post("type-unknown", "Patient", json!({"resourceType": "Spaceship"}), 400).at("resourceType"),
        post("type-differs-from-url", "Patient", observation(json!({})), 400).at("resourceType"),
        post("type-lowercase", "Patient", json!({"resourceType": "patient"}), 400).at("resourceType"),
        post("type-unknown-in-url", "Spaceship", json!({"resourceType": "Spaceship"}), 404),
        invalid("type-unknown-contained", patient(json!({"contained": [{"resourceType": "Spaceship"}]})), "Patient.contained[0].resourceType"),
        // --- Unknown elements ---------------------------------------------------------------
        unknown("unknown-top-level", patient(json!({"favouriteColour": "blue"})), "Patient.favouriteColour"),
        unknown("unknown-nested", patient(json!({"name": [{"family": "Chalmers", "nickname": "Pete"}]})), "Patient.name[0].nickname"),
        unknown(
            "unknown-deeply-nested",
            patient(json!({"contact": [{"name": {"family": "Doe", "nick": "J"}}]})),
            "Patient.contact[0].name.nick",
        ),
        unknown("unknown-choice-type", observation(json!({"valueFoo": "x"})), "Observation.valueFoo"),
        unknown("unknown-choice-for-element", patient(json!({"deceasedString": "yes"})), "Patient.deceasedString"),
        unknown(
            "unknown-underscore-twin",
            patient(json!({"_nickname": {"extension": [{"url": "http://example.org/x", "valueString": "y"}]}})),
            "Patient._nickname",
        ),
        unknown("unknown-in-meta", patient(json!({"meta": {"owner": "me"}})), "Patient.meta.owner"),
        unknown("required-element-missing", resource("Observation", json!({"code": {"text": "w"}})), "Observation.status"),
        post(
            "choice-given-twice",
            "Patient",
            patient(json!({"deceasedBoolean": true, "deceasedDateTime": "2020-01-01"})),
            400,
        ),
        unknown("required-complex-element-missing", resource("Observation", json!({"status": "final"})), "Observation.code"),
        // The official JSON schema gives complex datatypes no `"type": "object"`, so these need
        // a check of their own.
        raw(
            "json-duplicate-key",
            Method::POST,
            "Patient",
            br#"{"resourceType":"Patient","gender":"male","gender":"female"}"#,
            400,
        ),
        raw(
            "json-duplicate-key-nested",
            Method::POST,
            "",
            br#"{"resourceType":"Bundle","type":"transaction","entry":[{"resource":{"resourceType":"Patient","active":true,"active":false},"request":{"method":"POST","url":"Patient"}}]}"#,
            400,
        ),
        // What the R4 StructureDefinitions say beyond the JSON schema.
        invalid("date-not-in-calendar", patient(json!({"birthDate": "2023-02-30"})), "Patient.birthDate"),
        invalid(
            "datetime-not-in-calendar",
            observation(json!({"effectiveDateTime": "2023-04-31T10:00:00Z"})),
            "Observation.effectiveDateTime",
        ),
        invalid("integer-beyond-32-bits", patient(json!({"multipleBirthInteger": 2147483648u64})), "Patient.multipleBirthInteger"),
        invalid(
            "base64-that-does-not-decode",
            resource("DocumentReference", json!({"status": "current", "content": [{"attachment": {"data": "A==="}}]})),
            "DocumentReference.content[0].attachment.data",
        ),
        invalid("extension-without-value", patient(json!({"extension": [{"url": "http://example.org/x"}]})), "Patient.extension[0]"),
        invalid(
            "extension-with-value-and-extensions",
            patient(json!({"extension": [{"url": "http://example.org/x", "valueString": "a",
                "extension": [{"url": "y", "valueString": "b"}]}]})),
            "Patient.extension[0]",
        ),
        invalid(
            "narrative-with-script",
            patient(json!({"text": {"status": "generated",
                "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Hi<script>alert(1)</script></div>"}})),
            "Patient.text.div",
        ),
        invalid(
            "narrative-with-event-handler",
            patient(json!({"text": {"status": "generated",
                "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\"><p onmouseover=\"steal()\">Hi</p></div>"}})),
            "Patient.text.div",
        ),
        invalid(
            "narrative-not-xhtml",
            patient(json!({"text": {"status": "generated", "div": "<div>Hi</div>"}})),
            "Patient.text.div",
        ),
        invalid(
            "narrative-without-content",
            patient(json!({"text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\"> </div>"}})),
            "Patient.text.div",
        ),
        invalid(
            "contained-inside-contained",
            patient(json!({"managingOrganization": {"reference": "#o"}, "contained": [{"resourceType": "Organization",
                "id": "o", "contained": [{"resourceType": "Organization", "id": "p"}]}]})),
            "Patient.contained[0]",
        ),
        invalid(
            "contained-not-referenced",
            patient(json!({"contained": [{"resourceType": "Organization", "id": "o"}]})),
            "Patient.contained[0]",
        ),
        invalid(
            "contained-with-version",
            patient(json!({"managingOrganization": {"reference": "#o"}, "contained": [{"resourceType": "Organization",
                "id": "o", "meta": {"versionId": "3"}}]})),
            "Patient.contained[0]",
        ),
        invalid(
            "local-reference-to-nothing",
            patient(json!({"managingOrganization": {"reference": "#nowhere"}})),
            "Patient.managingOrganization",
        ),
        invalid(
            "reference-to-a-type-not-allowed",
            patient(json!({"generalPractitioner": [{"reference": "Observation/1"}]})),
            "Patient.generalPractitioner[0]",
        ),
        invalid(
            "reference-to-a-contained-type-not-allowed",
            patient(json!({"managingOrganization": {"reference": "#o"}, "contained": [{"resourceType": "Device", "id": "o"}]})),
            "Patient.managingOrganization",
        ),
        invalid(
            "reference-type-not-allowed",
            patient(json!({"managingOrganization": {"type": "Patient", "display": "me"}})),
            "Patient.managingOrganization",
        ),
        invalid(
            "code-outside-required-binding",
            resource("Condition", json!({"subject": {"reference": "Patient/1"}, "clinicalStatus": {"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "sleeping"}]}})),
            "Condition.clinicalStatus",
        ),
        invalid(
            "extension-not-as-its-definition-says",
            patient(json!({"extension": [{"url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-birthsex",
                "valueString": "F"}]})),
            "Patient.extension[0].value",
        ),
        // Each resource's own invariants, evaluated as FHIRPath.
        invalid(
            "invariant-period-ends-before-it-starts",
            patient(json!({"name": [{"family": "x", "period": {"start": "2020-01-01", "end": "2019-01-01"}}]})),
            "Patient.name[0].period",
        ),
        invalid("invariant-contact-with-no-details", patient(json!({"contact": [{"gender": "male"}]})), "Patient.contact[0]"),
        invalid(
            "invariant-value-and-absent-reason",
            observation(json!({"valueString": "x", "dataAbsentReason": {"text": "not asked"}})),
            "Observation",
        ),
        invalid(
            "invariant-quantity-code-without-system",
            observation(json!({"valueQuantity": {"value": 1, "code": "kg"}})),
            "Observation.valueQuantity",
        ),
        unknown("backbone-without-required-element", patient(json!({"link": [{"type": "seealso"}]})), "Patient.link[0].other"),
        invalid("string-where-object-required", observation(json!({"code": "abc"})), "Observation.code"),
        invalid("string-where-reference-required", observation(json!({"subject": "Patient/1"})), "Observation.subject"),
        invalid("number-where-object-required", observation(json!({"valueQuantity": 5})), "Observation.valueQuantity"),
        invalid("string-in-array-of-objects", patient(json!({"name": ["Chalmers"]})), "Patient.name[0]"),
        invalid("string-where-meta-required", patient(json!({"meta": "v1"})), "Patient.meta"),
        // --- Primitive formats --------------------------------------------------------------
        invalid("id-with-space", patient(json!({"id": "a b"})), "Patient.id"),
        invalid("id-65-chars", patient(json!({"id": long_id})), "Patient.id"),
        invalid("id-path-traversal", patient(json!({"id": "../x"})), "Patient.id"),
        invalid("id-number", patient(json!({"id": 5})), "Patient.id"),
        invalid("date-month-13", patient(json!({"birthDate": "1974-13-01"})), "Patient.birthDate"),
        invalid("date-two-digit-year", patient(json!({"birthDate": "74-01-01"})), "Patient.birthDate"),
        invalid("date-slashes", patient(json!({"birthDate": "1974/01/01"})), "Patient.birthDate"),
        invalid("date-with-time", patient(json!({"birthDate": "1974-01-01T10:00:00Z"})), "Patient.birthDate"),
        invalid("date-number", patient(json!({"birthDate": 19740101})), "Patient.birthDate"),
        invalid(
            "datetime-time-without-zone",
            observation(json!({"effectiveDateTime": "2020-01-01T10:00:00"})),
            "Observation.effectiveDateTime",
        ),
        invalid("datetime-hour-25", observation(json!({"effectiveDateTime": "2020-01-01T25:00:00Z"})), "Observation.effectiveDateTime"),
        invalid("instant-date-only", observation(json!({"issued": "2020-01-01"})), "Observation.issued"),
        invalid("instant-without-zone", patient(json!({"meta": {"lastUpdated": "2020-01-01T10:00:00"}})), "Patient.meta.lastUpdated"),
        invalid("decimal-as-string", observation(json!({"valueQuantity": {"value": "1.5"}})), "Observation.valueQuantity.value"),
        invalid("boolean-as-string", patient(json!({"active": "true"})), "Patient.active"),
        invalid("boolean-as-number", patient(json!({"active": 1})), "Patient.active"),
        invalid("integer-with-fraction", patient(json!({"multipleBirthInteger": 1.5})), "Patient.multipleBirthInteger"),
        invalid("integer-as-string", patient(json!({"multipleBirthInteger": "2"})), "Patient.multipleBirthInteger"),
        invalid(
            "positiveint-zero",
            resource(
                "Appointment",
                json!({"status": "proposed", "minutesDuration": 0, "participant": [{"status": "needs-action"}]}),
            ),
            "Appointment.minutesDuration",
        ),
        invalid(
            "unsignedint-negative",
            patient(json!({"photo": [{"contentType": "image/png", "size": -1}]})),
            "Patient.photo[0].size",
        ),
        invalid("code-leading-space", patient(json!({"gender": " male"})), "Patient.gender"),
        invalid("code-not-in-required-binding", patient(json!({"gender": "yes"})), "Patient.gender"),
        invalid("uri-with-space", patient(json!({"identifier": [{"system": "http://example.org/a b", "value": "1"}]})), "Patient.identifier[0].system"),
        invalid("object-where-array-required", patient(json!({"name": {"family": "Chalmers"}})), "Patient.name"),
        invalid("string-where-array-required", patient(json!({"name": [{"given": "Peter"}]})), "Patient.name[0].given"),
        invalid("array-where-single-required", patient(json!({"gender": ["male"]})), "Patient.gender"),
        invalid("number-where-string-required", patient(json!({"name": [{"family": 5}]})), "Patient.name[0].family"),
        // --- Empty values -------------------------------------------------------------------
        invalid("empty-string", patient(json!({"name": [{"family": ""}]})), "Patient.name[0].family"),
        invalid("empty-code", patient(json!({"gender": ""})), "Patient.gender"),
        invalid("empty-array", patient(json!({"name": []})), "Patient.name"),
        invalid("empty-nested-array", patient(json!({"name": [{"given": []}]})), "Patient.name[0].given"),
        invalid("empty-object-in-array", patient(json!({"name": [{}]})), "Patient.name[0]"),
        invalid("empty-object", observation(json!({"code": {}})), "Observation.code"),
        invalid("empty-meta", patient(json!({"meta": {}})), "Patient.meta"),
        invalid("null-top-level", patient(json!({"active": null})), "Patient.active"),
        invalid("null-in-array", patient(json!({"name": [{"given": ["A", null]}]})), "Patient.name[0].given[1]"),
        // --- Update rules -------------------------------------------------------------------
        put("update-id-differs", "Patient/p1", patient(json!({"id": "p2"})), 400).at("Patient.id"),
        put("update-without-id", "Patient/p1", patient(json!({"active": true})), 400).at("Patient.id"),
        put("update-type-differs", "Patient/p1", observation(json!({"id": "p1"})), 400).at("resourceType"),
        put("update-invalid-body", "Patient/p1", patient(json!({"id": "p1", "birthDate": "1974-13-01"})), 400)
            .at("Patient.birthDate"),
        put("update-invalid-body-id", "Patient/p1", patient(json!({"id": "p 1"})), 400).at("Patient.id"),
        put("update-bad-id-in-url", "Patient/a_b", patient(json!({"id": "a_b"})), 400),
        put("update-unknown-type", "Spaceship/1", json!({"resourceType": "Spaceship", "id": "1"}), 404),
        Case::new("update-no-body", Method::PUT, "Patient/p1", 400),
        put("update-without-id-or-criteria", "Patient", patient(json!({"active": true})), 400),
        put("conditional-update-unknown-parameter", "Patient?favourite=blue", patient(json!({"active": true})), 400),
        put(
            "conditional-update-invalid-body",
            "Patient?identifier=urn:hearth:malformed%7Cnone",
            patient(json!({"birthDate": "1974-13-01"})),
            400,
        )
        .at("Patient.birthDate"),
        // --- Bad URLs and methods -----------------------------------------------------------
        get("url-unknown-type-read", "Spaceship/1", 404),
        get("url-unknown-type-search", "Spaceship?name=x", 404),
        get("url-lowercase-type", "patient/1", 404),
        get("url-bad-id", "Patient/a_b", 400),
        get("url-percent-encoded-id", "Patient/a%20b", 400),
        get("url-id-65-chars", format!("Patient/{}", "a".repeat(65)), 400),
        get("url-version-not-a-number", "Patient/1/_history/x", 404),
        get("url-version-zero", "Patient/1/_history/0", 404),
        get("url-version-negative", "Patient/1/_history/-1", 404),
        get("url-version-overflow", "Patient/1/_history/99999999999999999999", 404),
        get("url-too-many-segments", "Patient/1/2/3/4", 404),
        get("url-after-version", "Patient/1/_history/1/more", 404),
        get("read-unknown-id", "Patient/does-not-exist", 404),
        get("vread-unknown-id", "Patient/does-not-exist/_history/1", 404),
        get("history-unknown-id", "Patient/does-not-exist/_history", 404),
        Case::new("head-unknown-id", Method::HEAD, "Patient/does-not-exist", 404),
        Case::new("head-unknown-type", Method::HEAD, "Spaceship", 404),
        post("post-to-instance", "Patient/p1", patient(json!({"id": "p1"})), 405),
        Case::new("post-to-metadata", Method::POST, "metadata", 405),
        Case::new("delete-metadata", Method::DELETE, "metadata", 405),
        Case::new("patch-metadata", Method::PATCH, "metadata", 405),
        Case::new("put-system-history", Method::PUT, "_history", 405),
        Case::new("post-type-history", Method::POST, "Patient/_history", 405),
        Case::new("delete-instance-history", Method::DELETE, "Patient/p1/_history", 405),
        Case::new("method-options", Method::OPTIONS, "Patient", 405),
        Case::new("method-unknown", Method::from_bytes(b"BREW").expect("method"), "Patient", 405),
        Case::new("delete-type-without-criteria", Method::DELETE, "Patient", 400),
        Case::new("delete-bad-id", Method::DELETE, "Patient/a_b", 400),
        Case::new("conditional-delete-unknown-parameter", Method::DELETE, "Patient?favourite=blue", 400),
        // --- Headers ------------------------------------------------------------------------
        put("if-match-nonsense", "Patient/p1", patient(json!({"id": "p1"})), 400).header("if-match", "nonsense"),
        put("if-match-not-a-number", "Patient/p1", patient(json!({"id": "p1"})), 400).header("if-match", "W/\"abc\""),
        put("if-match-missing-resource", "Patient/p1", patient(json!({"id": "p1"})), 412).header("if-match", "W/\"5\""),
        Case::new("if-match-delete-missing-resource", Method::DELETE, "Patient/p1", 412).header("if-match", "W/\"1\""),
        get("if-modified-since-not-a-date", "Patient/p1", 400).header("if-modified-since", "not-a-date"),
        post("content-type-text-plain", "Patient", patient(json!({})), 415).content_type("text/plain"),
        post("content-type-octet-stream", "Patient", patient(json!({})), 415).content_type("application/octet-stream"),
        post("content-type-multipart", "Patient", patient(json!({})), 415).content_type("multipart/form-data; boundary=x"),
        post("content-type-on-bundle", "", transaction(json!([])), 415).content_type("text/plain"),
        raw("form-body-on-create", Method::POST, "Patient", b"active=true", 400)
            .content_type("application/x-www-form-urlencoded"),
        get("accept-html-only", "metadata", 406).header("accept", "text/html"),
        get("accept-image-only", "Patient/p1", 406).header("accept", "image/png"),
        get("accept-json-refused", "metadata", 406).header("accept", "application/fhir+json;q=0"),
        get("format-yaml", "metadata?_format=yaml", 406),
        get("format-html", "Patient?_format=text/html", 406),
        post("if-none-exist-unknown-parameter", "Patient", patient(json!({})), 400).header("if-none-exist", "favourite=blue"),
        post("if-none-exist-empty-value", "Patient", patient(json!({})), 400).header("if-none-exist", "identifier="),
        // --- Search and history -------------------------------------------------------------
        get("search-unknown-parameter-strict", "Patient?favourite=blue", 400).strict(),
        get("search-count-not-a-number-strict", "Patient?_count=abc", 400).strict(),
        get("search-count-negative-strict", "Patient?_count=-1", 400).strict(),
        get("search-empty-value-strict", "Patient?name=", 400).strict(),
        get("search-empty-or-value-strict", "Patient?name=a,", 400).strict(),
        get("search-unknown-modifier-strict", "Patient?name:sounds-like=x", 400).strict(),
        get("search-id-modifier-strict", "Patient?_id:exact=1", 400).strict(),
        get("search-missing-modifier-bad-value-strict", "Patient?gender:missing=maybe", 400).strict(),
        get("search-reference-unknown-type-strict", "Observation?subject:Spaceship=1", 400).strict(),
        raw("search-post-unknown-parameter-strict", Method::POST, "Patient/_search", b"favourite=blue", 400)
            .content_type("application/x-www-form-urlencoded")
            .strict(),
        get("history-since-not-an-instant", "_history?_since=yesterday", 400),
        get("history-since-bad-month", "Patient/_history?_since=2020-13-01T00:00:00Z", 400),
        get("history-count-not-a-number", "_history?_count=abc", 400),
        get("history-cursor-not-a-number", "_history?_cursor=abc", 400),
        get("history-unknown-parameter-strict", "Patient/_history?favourite=blue", 400).strict(),
        // --- Patch (targets never exist, so nothing can be stored) ----------------------------
        Case::new("json-patch-not-an-array", Method::PATCH, "Patient/p1", 400)
            .json(json!({"op": "replace", "path": "/active", "value": false}))
            .content_type(JSON_PATCH),
        Case::new("json-patch-unknown-op", Method::PATCH, "Patient/p1", 400)
            .json(json!([{"op": "explode", "path": "/active"}]))
            .content_type(JSON_PATCH),
        Case::new("json-patch-unparseable", Method::PATCH, "Patient/p1", 400)
            .raw(br#"[{"op": "remove", "path": "/active"}"#.to_vec())
            .content_type(JSON_PATCH),
        Case::new("json-patch-missing-resource", Method::PATCH, "Patient/p1", 404)
            .json(json!([{"op": "remove", "path": "/nothing/there"}]))
            .content_type(JSON_PATCH),
        Case::new("fhirpath-patch-unknown-op", Method::PATCH, "Patient/p1", 400)
            .json(fhirpath_patch("explode", "Patient.active")),
        Case::new("fhirpath-patch-not-parameters", Method::PATCH, "Patient/p1", 400).json(patient(json!({"active": true}))),
        Case::new("fhirpath-patch-missing-resource", Method::PATCH, "Patient/p1", 404)
            .json(fhirpath_patch("delete", "Patient.active")),
        Case::new("patch-text-plain", Method::PATCH, "Patient/p1", 415).raw(b"active=false".to_vec()).content_type("text/plain"),
        Case::new("patch-no-body", Method::PATCH, "Patient/p1", 400),
        Case::new("patch-if-match-missing-resource", Method::PATCH, "Patient/p1", 412)
            .json(json!([{"op": "replace", "path": "/active", "value": false}]))
            .content_type(JSON_PATCH)
            .header("if-match", "W/\"1\""),
        Case::new("conditional-patch-no-match", Method::PATCH, "Patient?identifier=urn:hearth:malformed%7Cnone", 404)
            .json(json!([{"op": "replace", "path": "/active", "value": false}]))
            .content_type(JSON_PATCH),
        Case::new("conditional-patch-no-criteria", Method::PATCH, "Patient", 400)
            .json(json!([{"op": "replace", "path": "/active", "value": false}]))
            .content_type(JSON_PATCH),
        Case::new("patch-unknown-type", Method::PATCH, "Spaceship/1", 404)
            .json(json!([{"op": "replace", "path": "/active", "value": false}]))
            .content_type(JSON_PATCH),
        // --- Bundles at the base ------------------------------------------------------------
        post("bundle-not-a-bundle", "", patient(json!({})), 400),
        Case::new("bundle-no-body", Method::POST, "", 400),
        post("bundle-collection", "", json!({"resourceType": "Bundle", "type": "collection"}), 400),
        post("bundle-searchset", "", json!({"resourceType": "Bundle", "type": "searchset"}), 400),
        post("bundle-without-type", "", json!({"resourceType": "Bundle", "entry": [{"request": {"method": "GET", "url": "metadata"}}]}), 400),
        post("bundle-type-not-a-string", "", json!({"resourceType": "Bundle", "type": 7}), 400),
        post("bundle-unknown-element", "", json!({"resourceType": "Bundle", "type": "transaction", "colour": "blue"}), 400),
        post("bundle-entry-not-an-array", "", json!({"resourceType": "Bundle", "type": "transaction", "entry": {"request": {"method": "GET", "url": "metadata"}}}), 400),
        post("batch-entry-not-an-array", "", json!({"resourceType": "Bundle", "type": "batch", "entry": {"request": {"method": "GET", "url": "metadata"}}}), 400),
        post("transaction-entry-without-request", "", transaction(json!([{"resource": patient(json!({}))}])), 400),
        post(
            "transaction-unknown-method",
            "",
            transaction(json!([{"resource": patient(json!({})), "request": {"method": "FETCH", "url": "Patient"}}])),
            400,
        ),
        post("transaction-method-not-a-string", "", transaction(json!([{"request": {"method": 5, "url": "Patient"}}])), 400),
        post("transaction-entry-without-url", "", transaction(json!([{"resource": patient(json!({})), "request": {"method": "POST"}}])), 400),
        post("transaction-post-without-resource", "", transaction(json!([{"request": {"method": "POST", "url": "Patient"}}])), 400),
        post(
            "transaction-put-without-id",
            "",
            transaction(json!([{"resource": patient(json!({})), "request": {"method": "PUT", "url": "Patient"}}])),
            400,
        ),
        post(
            "transaction-unknown-type",
            "",
            transaction(json!([{"resource": {"resourceType": "Spaceship"}, "request": {"method": "POST", "url": "Spaceship"}}])),
            404,
        ),
        post(
            "transaction-nested-bundle",
            "",
            transaction(json!([{"resource": transaction(json!([])), "request": {"method": "POST", "url": ""}}])),
            400,
        ),
        post(
            "transaction-patch-not-parameters",
            "",
            transaction(json!([{"resource": patient(json!({})), "request": {"method": "PATCH", "url": "Patient/p1"}}])),
            400,
        ),
        post(
            "transaction-second-entry-invalid",
            "",
            transaction(json!([
                marked_patient_entry("second-entry-invalid"),
                {"resource": patient(json!({"birthDate": "1974-13-01"})), "request": {"method": "POST", "url": "Patient"}}
            ])),
            400,
        )
        .mentioning("Bundle.entry[1]"),
        post(
            "transaction-second-entry-unknown-element",
            "",
            transaction(json!([
                marked_patient_entry("second-entry-unknown-element"),
                {"resource": patient(json!({"favouriteColour": "blue"})), "request": {"method": "POST", "url": "Patient"}}
            ])),
            400,
        )
        .mentioning("Bundle.entry[1]"),
        post(
            "transaction-put-after-post-id-differs",
            "",
            transaction(json!([
                marked_patient_entry("put-after-post"),
                {"resource": patient(json!({"id": "other"})), "request": {"method": "PUT", "url": "Patient/tx-put"}}
            ])),
            400,
        )
        .mentioning("Bundle.entry[1]"),
        post(
            "transaction-get-unknown-after-post",
            "",
            transaction(json!([
                marked_patient_entry("get-after-post"),
                {"request": {"method": "GET", "url": "Patient/does-not-exist"}}
            ])),
            404,
        )
        .mentioning("Bundle.entry[1]"),
        post(
            "transaction-delete-if-match-missing",
            "",
            transaction(json!([
                marked_patient_entry("delete-if-match"),
                {"request": {"method": "DELETE", "url": "Patient/does-not-exist", "ifMatch": "W/\"3\""}}
            ])),
            412,
        ),
        post(
            "transaction-conditional-reference-matches-nothing",
            "",
            transaction(json!([
                marked_patient_entry("conditional-reference"),
                {"resource": observation(json!({"subject": {"reference": "Patient?identifier=none|none"}})),
                 "request": {"method": "POST", "url": "Observation"}}
            ])),
            404,
        ),
        post(
            "transaction-full-url-twice",
            "",
            transaction(json!([marked_patient_entry("full-url-1"), marked_patient_entry("full-url-2")])),
            400,
        )
        .at("Bundle.entry[1].fullUrl"),
        post(
            "transaction-reference-to-no-entry",
            "",
            transaction(json!([
                marked_patient_entry("dangling"),
                {"resource": observation(json!({"subject": {"reference": "urn:uuid:0e4b0e70-0000-4000-8000-000000000000"}})),
                 "request": {"method": "POST", "url": "Observation"}}
            ])),
            400,
        ),
        post(
            "transaction-changes-one-resource-twice",
            "",
            transaction(json!([
                marked_patient_entry("twice"),
                {"resource": patient(json!({"id": "twice", "identifier": [{"system": MARKER, "value": "a"}]})),
                 "request": {"method": "PUT", "url": "Patient/twice"}},
                {"request": {"method": "DELETE", "url": "Patient/twice"}}
            ])),
            400,
        ),
        post(
            "transaction-type-differs-from-url",
            "",
            transaction(json!([
                marked_patient_entry("type-differs"),
                {"resource": observation(json!({})), "request": {"method": "POST", "url": "Patient"}}
            ])),
            400,
        ),
    ]
}

/// Cases for a server with `max_body_bytes = 1024` and `max_bundle_entries = 2`.
fn limit_cases() -> Vec<Case> {
    let big_patient = patient(json!({"name": [{"family": "x".repeat(2000)}]}));
    let big_entry = json!({"resource": big_patient.clone(), "request": {"method": "POST", "url": "Patient"}});
    let small_entry = json!({"resource": patient(json!({})), "request": {"method": "POST", "url": "Patient"}});
    vec![
        post("body-too-large-create", "Patient", big_patient.clone(), 413),
        put(
            "body-too-large-update",
            "Patient/p1",
            resource("Patient", json!({"id": "p1", "name": big_patient["name"]})),
            413,
        ),
        post("body-too-large-transaction", "", transaction(json!([big_entry])), 413),
        raw("body-too-large-garbage", Method::POST, "Patient", &[b'x'; 4096], 413),
        post("bundle-too-many-entries", "", transaction(json!([small_entry, small_entry, small_entry])), 413),
    ]
}

async fn send(server: &TestServer, case: &Case) -> Result<reqwest::Response, reqwest::Error> {
    let mut request = server.request(case.method.clone(), &case.path);
    let has_content_type = case.headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("content-type"));
    if !case.body.is_empty() && !has_content_type {
        request = request.header("content-type", FHIR_JSON);
    }
    for (name, value) in &case.headers {
        request = request.header(*name, value);
    }
    if !case.body.is_empty() {
        request = request.body(case.body.clone());
    }
    request.send().await
}

fn shorten(text: &str) -> String {
    const LIMIT: usize = 400;
    if text.chars().count() > LIMIT {
        text.chars().take(LIMIT).collect::<String>() + "…"
    } else {
        text.to_string()
    }
}

/// Whether some error issue names `location`.
fn names_location(errors: &[&Value], location: &Location) -> bool {
    let expressions = |issue: &Value| -> Vec<String> {
        issue["expression"]
            .as_array()
            .map(|list| list.iter().filter_map(Value::as_str).map(str::to_string).collect())
            .unwrap_or_default()
    };
    let diagnostics = |issue: &Value| issue["diagnostics"].as_str().unwrap_or("").to_string();
    match location {
        Location::Exact(expected) => errors.iter().any(|issue| expressions(issue).iter().any(|e| e == expected)),
        Location::ElementOrParent(expected) => errors.iter().any(|issue| {
            let found = expressions(issue);
            found.iter().any(|e| e == expected)
                || expected.rsplit_once('.').is_some_and(|(parent, element)| {
                    found.iter().any(|e| e == parent) && diagnostics(issue).contains(element)
                })
        }),
    }
}

/// Sends one case and checks the refusal; `Err` explains what was wrong.
async fn check(server: &TestServer, case: &Case) -> Result<(), String> {
    let response = send(server, case).await.map_err(|e| format!("the request failed: {e}"))?;
    let status = response.status().as_u16();
    let content_type = response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let allow = response.headers().get("allow").map(|v| v.to_str().unwrap_or("").to_string());
    let text = response.text().await.map_err(|e| format!("status {status}, body unreadable: {e}"))?;
    let fail = |problem: String| Err(format!("{problem}\n      status {status}, body: {}", shorten(&text)));
    if std::env::var_os("MALFORMED_DUMP").is_some() {
        eprintln!("DUMP [{}] {status} {}", case.name, text.replace('\n', " "));
    }
    if status != case.status {
        return fail(format!("expected status {}, got {status}", case.status));
    }
    if status == 405 && allow.is_none() {
        return fail("a 405 response must list the allowed methods in an Allow header (RFC 9110 §15.5.6)".into());
    }
    if case.method == Method::HEAD {
        return if text.is_empty() { Ok(()) } else { fail("a HEAD response has a body".into()) };
    }
    if !content_type.starts_with(FHIR_JSON) {
        return fail(format!("Content-Type is '{content_type}', not {FHIR_JSON}"));
    }
    let outcome: Value = match serde_json::from_str(&text) {
        Ok(value) => value,
        Err(e) => return fail(format!("the body is not JSON: {e}")),
    };
    if outcome["resourceType"] != "OperationOutcome" {
        return fail("the body is not an OperationOutcome".into());
    }
    let errors: Vec<&Value> = outcome["issue"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|issue| issue["severity"] == "error")
        .filter(|issue| issue["diagnostics"].as_str().is_some_and(|d| !d.trim().is_empty()))
        .collect();
    if errors.is_empty() {
        return fail("no issue with severity 'error' and diagnostics".into());
    }
    if let Some(location) = &case.location {
        if !names_location(&errors, location) {
            return fail(format!("no error issue names the location {location:?}"));
        }
    }
    if let Some(mention) = case.mention {
        if !errors.iter().any(|issue| issue["diagnostics"].as_str().unwrap_or("").contains(mention)) {
            return fail(format!("no error diagnostics mention '{mention}'"));
        }
    }
    Ok(())
}

/// Runs `cases` against `server`, returning one line per failing case.
async fn run_cases(server: &TestServer, cases: &[Case]) -> Vec<String> {
    let mut failures = Vec::new();
    for case in cases {
        if let Err(problem) = check(server, case).await {
            let path = if case.path.is_empty() { String::new() } else { format!("/{}", case.path) };
            failures.push(format!("[{}] {} /fhir{path}: {problem}", case.name, case.method));
        }
    }
    failures
}

/// The server still answers `metadata`, and its system history holds nothing.
async fn check_still_serving_and_empty(server: &TestServer, label: &str) -> Vec<String> {
    let mut failures = Vec::new();
    match server.request(Method::GET, "metadata").send().await {
        Ok(response) if response.status() == 200 => {}
        Ok(response) => failures.push(format!("[{label}] GET /fhir/metadata answered {}", response.status())),
        Err(e) => failures.push(format!("[{label}] GET /fhir/metadata failed: {e}")),
    }
    let response = match server.request(Method::GET, "_history?_count=1000").send().await {
        Ok(response) => response,
        Err(e) => {
            failures.push(format!("[{label}] GET /fhir/_history failed: {e}"));
            return failures;
        }
    };
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    let bundle: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    if status != 200 || bundle["resourceType"] != "Bundle" {
        failures.push(format!("[{label}] GET /fhir/_history answered {status}: {}", shorten(&text)));
        return failures;
    }
    let entries = bundle["entry"].as_array().cloned().unwrap_or_default();
    // A fresh server holds its built-in SubscriptionTopics (Basic/topic-…), nothing else.
    let built_in = |entry: &&Value| entry["fullUrl"].as_str().is_some_and(|url| url.contains("/Basic/topic-"));
    for entry in entries.iter().filter(|e| !built_in(e)) {
        let resource = shorten(&entry["resource"].to_string());
        failures.push(format!(
            "[{label}] something was stored: {} {} {resource}",
            entry["request"]["method"].as_str().unwrap_or("?"),
            entry["fullUrl"].as_str().unwrap_or("?")
        ));
    }
    if text.contains(MARKER) {
        failures.push(format!("[{label}] an entry of a failed transaction was stored (history mentions {MARKER})"));
    }
    failures
}

async fn malformed_requests_are_rejected_cleanly(db: Db) {
    let server = TestServer::start(db).await;
    let limited = TestServer::start_with(db, |s| Settings { max_body_bytes: 1024, max_bundle_entries: 2, ..s }).await;
    let (cases, limit_cases) = (cases(), limit_cases());
    let total = cases.len() + limit_cases.len();

    let mut failures = run_cases(&server, &cases).await;
    failures.extend(run_cases(&limited, &limit_cases).await);
    let failed_cases = failures.len();
    eprintln!("{db:?}: {} of {total} malformed requests refused as expected", total - failed_cases);

    failures.extend(check_still_serving_and_empty(&server, "after all cases").await);
    failures.extend(check_still_serving_and_empty(&limited, "after the size-limit cases").await);
    assert!(
        failures.is_empty(),
        "{db:?}: {failed_cases} of {total} malformed requests were not refused cleanly; {} problems in all:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

on_both_databases!(malformed_requests_are_rejected_cleanly);

#[test]
fn the_battery_is_large_and_names_are_unique() {
    let mut names: Vec<&str> = cases().iter().chain(limit_cases().iter()).map(|case| case.name).collect();
    assert!(names.len() >= 80, "only {} cases", names.len());
    names.sort_unstable();
    let before = names.len();
    names.dedup();
    assert_eq!(before, names.len(), "case names must be unique");
}
