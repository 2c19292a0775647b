//! OperationOutcome issues and the error type every FHIR interaction returns.

use serde_json::{json, Value};

/// The `OperationOutcome.issue.code` values Hearth uses (FHIR R4 `issue-type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssueCode {
    Invalid,
    Structure,
    Required,
    Value,
    Invariant,
    Security,
    Login,
    Forbidden,
    NotSupported,
    Duplicate,
    Multiple,
    NotFound,
    Deleted,
    TooLong,
    Conflict,
    Exception,
    Processing,
    /// A workflow rule of the server refused the change (`business-rule`).
    BusinessRule,
    Informational,
    TooCostly,
    Throttled,
}

impl IssueCode {
    /// The code as written in FHIR.
    pub fn as_str(self) -> &'static str {
        match self {
            IssueCode::Invalid => "invalid",
            IssueCode::Structure => "structure",
            IssueCode::Required => "required",
            IssueCode::Value => "value",
            IssueCode::Invariant => "invariant",
            IssueCode::Security => "security",
            IssueCode::Login => "login",
            IssueCode::Forbidden => "forbidden",
            IssueCode::NotSupported => "not-supported",
            IssueCode::Duplicate => "duplicate",
            IssueCode::Multiple => "multiple-matches",
            IssueCode::NotFound => "not-found",
            IssueCode::Deleted => "deleted",
            IssueCode::TooLong => "too-long",
            IssueCode::Conflict => "conflict",
            IssueCode::Exception => "exception",
            IssueCode::Processing => "processing",
            IssueCode::BusinessRule => "business-rule",
            IssueCode::Informational => "informational",
            IssueCode::TooCostly => "too-costly",
            IssueCode::Throttled => "throttled",
        }
    }
}

/// The code system of the rules validation names in `issue.details` (invariant keys such as
/// `ref-1`, and `cardinality`, `value`, `binding`).
pub const VALIDATION_RULES: &str = "http://hearth.dev/fhir/CodeSystem/validation-rule";

/// One `OperationOutcome.issue`.
#[derive(Debug, Clone, PartialEq)]
pub struct Issue {
    /// `error`, `warning` or `information`.
    pub severity: &'static str,
    pub code: IssueCode,
    /// Human-readable explanation.
    pub diagnostics: String,
    /// FHIRPath location of the problem, when there is one.
    pub expression: Option<String>,
    /// The rule broken, when validation found it (an invariant's key such as `ref-1`).
    pub rule: Option<String>,
}

impl Issue {
    /// An error-severity issue without a location.
    pub fn error(code: IssueCode, diagnostics: impl Into<String>) -> Self {
        Issue { severity: "error", code, diagnostics: diagnostics.into(), expression: None, rule: None }
    }

    /// An information-severity issue (used for successful `Prefer: return=OperationOutcome`).
    pub fn information(diagnostics: impl Into<String>) -> Self {
        Issue {
            severity: "information",
            code: IssueCode::Informational,
            diagnostics: diagnostics.into(),
            expression: None,
            rule: None,
        }
    }

    /// A warning-severity issue.
    pub fn warning(code: IssueCode, diagnostics: impl Into<String>) -> Self {
        Issue { severity: "warning", ..Issue::error(code, diagnostics) }
    }

    /// Names the rule broken (`details.coding` in the OperationOutcome).
    pub fn rule(mut self, rule: impl Into<String>) -> Self {
        self.rule = Some(rule.into());
        self
    }

    /// Attaches the FHIRPath location of the problem.
    pub fn at(mut self, expression: impl Into<String>) -> Self {
        self.expression = Some(expression.into());
        self
    }

    fn to_json(&self) -> Value {
        let mut issue = json!({
            "severity": self.severity,
            "code": self.code.as_str(),
            "diagnostics": self.diagnostics,
        });
        if let Some(expression) = &self.expression {
            issue["expression"] = json!([expression]);
        }
        if let Some(rule) = &self.rule {
            issue["details"] = json!({"coding": [{"system": VALIDATION_RULES, "code": rule}]});
        }
        issue
    }
}

/// Builds an OperationOutcome resource from issues.
pub fn operation_outcome(issues: &[Issue]) -> Value {
    json!({
        "resourceType": "OperationOutcome",
        "issue": issues.iter().map(Issue::to_json).collect::<Vec<_>>(),
    })
}

/// What kind of failure an error is. Its HTTP status is decided here, in [`ErrorKind::status`],
/// and nowhere else; code that must tell failures apart (a write conflict to retry) matches
/// the kind, never a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is malformed or names what the server does not support.
    BadRequest,
    /// No valid credentials.
    Unauthorized,
    /// The caller's token does not grant this.
    Forbidden,
    /// Nothing there, or nothing the caller may know of.
    NotFound,
    MethodNotAllowed,
    /// No acceptable response format.
    NotAcceptable,
    /// A concurrent write to the same resource won; the write may be retried from the start.
    WriteConflict,
    /// The request conflicts with the state of what it names (a job that already ended).
    Conflict,
    /// The resource was deleted.
    Gone,
    /// A version precondition (`If-Match`, conditional criteria) does not hold.
    PreconditionFailed,
    PayloadTooLarge,
    UnsupportedMediaType,
    /// Well-formed, but against a business rule or a validation rule.
    Unprocessable,
    /// Too many requests of this kind: retry after this many seconds (`Retry-After`).
    TooManyRequests(u32),
    /// A failure of the server; details stay in the log.
    Internal,
}

impl ErrorKind {
    /// The HTTP status of this kind of failure.
    pub fn status(self) -> u16 {
        match self {
            ErrorKind::BadRequest => 400,
            ErrorKind::Unauthorized => 401,
            ErrorKind::Forbidden => 403,
            ErrorKind::NotFound => 404,
            ErrorKind::MethodNotAllowed => 405,
            ErrorKind::NotAcceptable => 406,
            ErrorKind::WriteConflict | ErrorKind::Conflict => 409,
            ErrorKind::Gone => 410,
            ErrorKind::PreconditionFailed => 412,
            ErrorKind::PayloadTooLarge => 413,
            ErrorKind::UnsupportedMediaType => 415,
            ErrorKind::Unprocessable => 422,
            ErrorKind::TooManyRequests(_) => 429,
            ErrorKind::Internal => 500,
        }
    }
}

/// A failed FHIR interaction: what kind of failure, and the issues that explain it.
#[derive(Debug, Clone, PartialEq)]
pub struct FhirError {
    pub kind: ErrorKind,
    pub issues: Vec<Issue>,
    /// For 405: the methods the resource does allow (the `Allow` header).
    pub allow: Option<&'static str>,
    /// For 401: the `WWW-Authenticate` challenge.
    pub challenge: Option<String>,
}

impl FhirError {
    /// An error with one issue.
    pub fn new(kind: ErrorKind, code: IssueCode, diagnostics: impl Into<String>) -> Self {
        FhirError { kind, issues: vec![Issue::error(code, diagnostics)], allow: None, challenge: None }
    }

    /// The HTTP status the error is answered with.
    pub fn status(&self) -> u16 {
        self.kind.status()
    }

    /// 400 Bad Request.
    pub fn bad_request(diagnostics: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadRequest, IssueCode::Invalid, diagnostics)
    }

    /// Adds the `WWW-Authenticate` challenge of a 401.
    pub fn with_challenge(mut self, challenge: String) -> Self {
        self.challenge = Some(challenge);
        self
    }

    /// 403 Forbidden: the caller's token does not grant this.
    pub fn forbidden(diagnostics: impl Into<String>) -> Self {
        Self::new(ErrorKind::Forbidden, IssueCode::Forbidden, diagnostics)
    }

    /// 404 Not Found.
    pub fn not_found(diagnostics: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, IssueCode::NotFound, diagnostics)
    }

    /// 410 Gone: the resource was deleted (in `version`).
    pub fn gone(resource_type: &str, id: &str, version: i64) -> Self {
        Self::new(ErrorKind::Gone, IssueCode::Deleted, format!("{resource_type}/{id} was deleted (version {version})"))
    }

    /// 422 Unprocessable Entity with validation issues.
    pub fn unprocessable(issues: Vec<Issue>) -> Self {
        FhirError { kind: ErrorKind::Unprocessable, issues, allow: None, challenge: None }
    }

    /// An error with several issues.
    pub fn with_issues(kind: ErrorKind, issues: Vec<Issue>) -> Self {
        FhirError { kind, issues, allow: None, challenge: None }
    }

    /// 405 Method Not Allowed, naming the methods that are allowed.
    pub fn method_not_allowed(diagnostics: impl Into<String>, allow: &'static str) -> Self {
        FhirError { allow: Some(allow), ..Self::new(ErrorKind::MethodNotAllowed, IssueCode::NotSupported, diagnostics) }
    }

    /// 412 Precondition Failed.
    pub fn precondition_failed(diagnostics: impl Into<String>) -> Self {
        Self::new(ErrorKind::PreconditionFailed, IssueCode::Conflict, diagnostics)
    }

    /// 500: details stay in the log, the client learns only that something failed.
    pub fn internal() -> Self {
        Self::new(ErrorKind::Internal, IssueCode::Exception, "internal server error (details are in the server log)")
    }

    /// The OperationOutcome resource describing this error.
    pub fn outcome(&self) -> Value {
        operation_outcome(&self.issues)
    }

    /// Prefixes every diagnostics text, e.g. with the bundle entry that failed.
    pub fn within(mut self, context: &str) -> Self {
        for issue in &mut self.issues {
            issue.diagnostics = format!("{context}: {}", issue.diagnostics);
        }
        self
    }

    /// Places the error inside entry `index` of a Bundle: diagnostics name the entry, and
    /// locations such as `Patient.birthDate` become `Bundle.entry[1].resource.birthDate`.
    pub fn in_bundle_entry(mut self, index: usize) -> Self {
        let entry = format!("Bundle.entry[{index}]");
        for issue in &mut self.issues {
            issue.diagnostics = format!("{entry}: {}", issue.diagnostics);
            issue.expression = Some(match issue.expression.take() {
                Some(path) if !path.starts_with("Bundle.") => match path.split_once('.') {
                    Some((_, rest)) => format!("{entry}.resource.{rest}"),
                    None => format!("{entry}.resource"),
                },
                Some(path) => path,
                None => entry.clone(),
            });
        }
        self
    }
}

impl std::fmt::Display for FhirError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let texts: Vec<&str> = self.issues.iter().map(|i| i.diagnostics.as_str()).collect();
        write!(f, "{} {}", self.status(), texts.join("; "))
    }
}

impl std::error::Error for FhirError {}
