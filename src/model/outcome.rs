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
    Informational,
    TooCostly,
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
            IssueCode::Informational => "informational",
            IssueCode::TooCostly => "too-costly",
        }
    }
}

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
}

impl Issue {
    /// An error-severity issue without a location.
    pub fn error(code: IssueCode, diagnostics: impl Into<String>) -> Self {
        Issue { severity: "error", code, diagnostics: diagnostics.into(), expression: None }
    }

    /// An information-severity issue (used for successful `Prefer: return=OperationOutcome`).
    pub fn information(diagnostics: impl Into<String>) -> Self {
        Issue {
            severity: "information",
            code: IssueCode::Informational,
            diagnostics: diagnostics.into(),
            expression: None,
        }
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

/// A failed FHIR interaction: an HTTP status and the issues that explain it.
#[derive(Debug, Clone, PartialEq)]
pub struct FhirError {
    pub status: u16,
    pub issues: Vec<Issue>,
    /// For 405: the methods the resource does allow (the `Allow` header).
    pub allow: Option<&'static str>,
    /// For 401: the `WWW-Authenticate` challenge.
    pub challenge: Option<String>,
}

impl FhirError {
    /// An error with one issue.
    pub fn new(status: u16, code: IssueCode, diagnostics: impl Into<String>) -> Self {
        FhirError { status, issues: vec![Issue::error(code, diagnostics)], allow: None, challenge: None }
    }

    /// 400 Bad Request.
    pub fn bad_request(diagnostics: impl Into<String>) -> Self {
        Self::new(400, IssueCode::Invalid, diagnostics)
    }

    /// Adds the `WWW-Authenticate` challenge of a 401.
    pub fn with_challenge(mut self, challenge: String) -> Self {
        self.challenge = Some(challenge);
        self
    }

    /// 403 Forbidden: the caller's token does not grant this.
    pub fn forbidden(diagnostics: impl Into<String>) -> Self {
        Self::new(403, IssueCode::Forbidden, diagnostics)
    }

    /// 404 Not Found.
    pub fn not_found(diagnostics: impl Into<String>) -> Self {
        Self::new(404, IssueCode::NotFound, diagnostics)
    }

    /// 422 Unprocessable Entity with validation issues.
    pub fn unprocessable(issues: Vec<Issue>) -> Self {
        FhirError { status: 422, issues, allow: None, challenge: None }
    }

    /// 400 (or another status) with several issues.
    pub fn with_issues(status: u16, issues: Vec<Issue>) -> Self {
        FhirError { status, issues, allow: None, challenge: None }
    }

    /// 405 Method Not Allowed, naming the methods that are allowed.
    pub fn method_not_allowed(diagnostics: impl Into<String>, allow: &'static str) -> Self {
        FhirError { allow: Some(allow), ..Self::new(405, IssueCode::NotSupported, diagnostics) }
    }

    /// 412 Precondition Failed.
    pub fn precondition_failed(diagnostics: impl Into<String>) -> Self {
        Self::new(412, IssueCode::Conflict, diagnostics)
    }

    /// 500: details stay in the log, the client learns only that something failed.
    pub fn internal() -> Self {
        Self::new(500, IssueCode::Exception, "internal server error (details are in the server log)")
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
        write!(f, "{} {}", self.status, texts.join("; "))
    }
}

impl std::error::Error for FhirError {}
