//! Discovery documents: `/.well-known/smart-configuration` (SMART App Launch 2.2),
//! `/.well-known/openid-configuration` (OpenID Connect Discovery), the styles of
//! `smart_style_url`, and the CapabilityStatement's `rest.security`.

use serde_json::{json, Value};

use super::{AuthServer, Reply};

/// The scopes a client may ask for, as advertised.
const SCOPES: &[&str] = &[
    "openid",
    "fhirUser",
    "profile",
    "launch",
    "launch/patient",
    "launch/encounter",
    "offline_access",
    "online_access",
    "patient/*.cruds",
    "patient/*.rs",
    "user/*.cruds",
    "user/*.rs",
    "system/*.cruds",
    "system/*.rs",
    "patient/*.read",
    "patient/*.write",
    "user/*.read",
    "user/*.write",
    "system/*.read",
    "system/*.write",
];

const CAPABILITIES: &[&str] = &[
    "launch-ehr",
    "launch-standalone",
    "client-public",
    "client-confidential-symmetric",
    "client-confidential-asymmetric",
    "sso-openid-connect",
    "context-banner",
    "context-style",
    "context-ehr-patient",
    "context-ehr-encounter",
    "context-standalone-patient",
    "permission-offline",
    "permission-online",
    "permission-patient",
    "permission-user",
    "permission-v1",
    "permission-v2",
    "authorize-post",
];

impl AuthServer {
    /// `GET /fhir/.well-known/smart-configuration`.
    pub fn smart_configuration(&self) -> Reply {
        Reply::json(
            200,
            json!({
                "issuer": self.fhir_base(),
                "jwks_uri": self.url("/auth/jwks"),
                "authorization_endpoint": self.url("/auth/authorize"),
                "token_endpoint": self.url("/auth/token"),
                "introspection_endpoint": self.url("/auth/introspect"),
                "revocation_endpoint": self.url("/auth/revoke"),
                "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
                "token_endpoint_auth_methods_supported": ["client_secret_basic", "private_key_jwt", "none"],
                "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
                "scopes_supported": SCOPES,
                "response_types_supported": ["code"],
                "code_challenge_methods_supported": ["S256"],
                "capabilities": CAPABILITIES,
            }),
        )
    }

    /// `GET /fhir/.well-known/openid-configuration` (the issuer is the FHIR base URL).
    pub fn openid_configuration(&self) -> Reply {
        Reply::json(
            200,
            json!({
                "issuer": self.fhir_base(),
                "authorization_endpoint": self.url("/auth/authorize"),
                "token_endpoint": self.url("/auth/token"),
                "jwks_uri": self.url("/auth/jwks"),
                "introspection_endpoint": self.url("/auth/introspect"),
                "revocation_endpoint": self.url("/auth/revoke"),
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "scopes_supported": SCOPES,
                "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
                "token_endpoint_auth_methods_supported": ["client_secret_basic", "private_key_jwt", "none"],
                "code_challenge_methods_supported": ["S256"],
                "claims_supported": ["iss", "sub", "aud", "exp", "iat", "nonce", "fhirUser"],
            }),
        )
    }

    /// The styles `smart_style_url` points at (SMART App Launch "styling").
    pub fn smart_style(&self) -> Reply {
        Reply::json(
            200,
            json!({
                "color_background": "#f6f4ef",
                "color_error": "#9e2a2b",
                "color_highlight": "#b85c38",
                "color_modal_backdrop": "",
                "color_success": "#2d6a4f",
                "color_text": "#1f1f1f",
                "dim_border_radius": "6px",
                "dim_font_size": "14px",
                "dim_spacing_size": "16px",
                "font_family_body": "Georgia, serif",
                "font_family_heading": "Georgia, serif"
            }),
        )
    }

    /// The CapabilityStatement's `rest.security`: SMART on FHIR with the oauth-uris extension.
    pub fn capability_security(&self) -> Value {
        let uri = |name: &str, path: &str| json!({"url": name, "valueUri": self.url(path)});
        json!({
            "cors": true,
            "service": [{
                "coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                    "code": "SMART-on-FHIR"
                }],
                "text": "OAuth2 using SMART-on-FHIR profile (see http://docs.smarthealthit.org)"
            }],
            "extension": [{
                "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                "extension": [
                    uri("authorize", "/auth/authorize"),
                    uri("token", "/auth/token"),
                    uri("introspect", "/auth/introspect"),
                    uri("revoke", "/auth/revoke"),
                ]
            }]
        })
    }
}
