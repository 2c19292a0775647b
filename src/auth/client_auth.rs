//! Client authentication at the token, introspection and revocation endpoints: public clients
//! (`client_id` in the body), confidential symmetric ones (`client_secret_basic`) and
//! confidential asymmetric ones (`private_key_jwt` with RS384 or ES384, SMART Backend Services).

use std::collections::HashMap;
use std::sync::Arc;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use super::records::{client, ClientCredentials, ClientRecord};
use super::{in_seconds, now_seconds, AuthServer, Reply};

/// The only client assertion type there is (RFC 7523).
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// How far ahead a client assertion may expire (SMART Backend Services: five minutes).
const MAX_ASSERTION_SECONDS: i64 = 300;

/// Record kind of client assertion ids already used.
const USED_ASSERTION: &str = "assertion-jti";

/// How a request identified its client.
pub(super) enum ClientIdentity {
    /// Proven by a secret or a signed assertion.
    Confidential(ClientRecord),
    /// A public client, named by `client_id` only.
    Public(ClientRecord),
}

impl ClientIdentity {
    pub(super) fn record(&self) -> &ClientRecord {
        match self {
            ClientIdentity::Confidential(record) | ClientIdentity::Public(record) => record,
        }
    }
}

fn invalid_client(description: &str) -> Reply {
    Reply::oauth_error(401, "invalid_client", description)
}

impl AuthServer {
    /// Authenticates the client of a token-endpoint style request.
    pub(super) async fn authenticate_client(
        &self,
        authorization: Option<&str>,
        form: &HashMap<String, String>,
    ) -> Result<ClientIdentity, Reply> {
        if let Some(basic) = authorization.and_then(|value| super::credentials(value, "Basic")) {
            return self.basic_client(basic, form.get("client_id")).await;
        }
        if let Some(kind) = form.get("client_assertion_type") {
            if kind != JWT_BEARER {
                return Err(Reply::oauth_error(
                    400,
                    "invalid_request",
                    "client_assertion_type must be urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                ));
            }
            let assertion = form
                .get("client_assertion")
                .ok_or_else(|| Reply::oauth_error(400, "invalid_request", "client_assertion is missing"))?;
            return self.asserted_client(assertion).await.map(ClientIdentity::Confidential);
        }
        let client_id = form.get("client_id").ok_or_else(|| invalid_client("the client did not identify itself"))?;
        let record = self.registered(client_id).await?;
        if record.is_confidential() {
            return Err(invalid_client("this client must authenticate"));
        }
        Ok(ClientIdentity::Public(record))
    }

    async fn registered(&self, client_id: &str) -> Result<ClientRecord, Reply> {
        match client(self.store.as_ref(), client_id).await {
            Ok(Some(record)) => Ok(record),
            Ok(None) => Err(invalid_client("unknown client")),
            Err(error) => {
                tracing::error!(%error, "cannot read clients");
                Err(Reply::oauth_error(500, "server_error", "the server could not check the client"))
            }
        }
    }

    /// `client_secret_basic`: `Authorization: Basic base64(urlencode(id):urlencode(secret))`.
    async fn basic_client(&self, encoded: &str, body_client_id: Option<&String>) -> Result<ClientIdentity, Reply> {
        let decoded = STANDARD.decode(encoded).ok().and_then(|bytes| String::from_utf8(bytes).ok());
        let Some((id, secret)) = decoded.as_deref().and_then(|text| text.split_once(':')) else {
            return Err(invalid_client("malformed Basic credentials"));
        };
        let unescape =
            |text: &str| percent_encoding::percent_decode_str(&text.replace('+', " ")).decode_utf8_lossy().into_owned();
        let record = self.registered(&unescape(id)).await?;
        if body_client_id.is_some_and(|other| *other != record.client_id) {
            return Err(invalid_client("client_id in the body differs from the Basic credentials"));
        }
        if !record.secret_matches(&unescape(secret)) {
            return Err(invalid_client("wrong client credentials"));
        }
        Ok(ClientIdentity::Confidential(record))
    }

    /// `private_key_jwt`: a JWT signed with one of the client's registered keys.
    async fn asserted_client(&self, assertion: &str) -> Result<ClientRecord, Reply> {
        let header =
            jsonwebtoken::decode_header(assertion).map_err(|_| invalid_client("malformed client assertion"))?;
        if !matches!(header.alg, Algorithm::RS384 | Algorithm::ES384) {
            return Err(invalid_client("client assertions must be signed with RS384 or ES384"));
        }
        let kid = header.kid.ok_or_else(|| invalid_client("the client assertion names no key (kid)"))?;
        let unverified = unverified_claims(assertion).ok_or_else(|| invalid_client("malformed client assertion"))?;
        let issuer =
            unverified.get("iss").and_then(Value::as_str).ok_or_else(|| invalid_client("the assertion has no iss"))?;
        let record = self.registered(issuer).await?;
        let jwks = self.client_keys(&record, &kid).await?;
        let jwk =
            jwks.find(&kid).ok_or_else(|| invalid_client("the assertion's kid is not one of the client's keys"))?;
        let key = DecodingKey::from_jwk(jwk).map_err(|_| invalid_client("the client's key is not usable"))?;
        let mut validation = Validation::new(header.alg);
        validation.validate_exp = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        let claims = jsonwebtoken::decode::<Value>(assertion, &key, &validation)
            .map_err(|_| invalid_client("the client assertion's signature does not verify"))?
            .claims;
        let text = |name: &str| claims.get(name).and_then(Value::as_str);
        if text("sub") != Some(&record.client_id) || text("iss") != Some(&record.client_id) {
            return Err(invalid_client("the assertion's iss and sub must both be the client id"));
        }
        let token_endpoint = self.url("/auth/token");
        let audience_ok = match claims.get("aud") {
            Some(Value::String(aud)) => *aud == token_endpoint,
            Some(Value::Array(auds)) => auds.iter().any(|a| a.as_str() == Some(&token_endpoint)),
            _ => false,
        };
        if !audience_ok {
            return Err(invalid_client("the assertion's aud must be the token endpoint"));
        }
        let now = now_seconds();
        let exp =
            claims.get("exp").and_then(Value::as_i64).ok_or_else(|| invalid_client("the assertion has no exp"))?;
        if exp <= now {
            return Err(invalid_client("the client assertion has expired"));
        }
        if exp > now + MAX_ASSERTION_SECONDS {
            return Err(invalid_client("the client assertion may expire at most five minutes ahead"));
        }
        let jti = text("jti").filter(|j| !j.is_empty()).ok_or_else(|| invalid_client("the assertion has no jti"))?;
        let first_use = self
            .store
            .auth_insert(USED_ASSERTION, &format!("{}:{jti}", record.client_id), "", in_seconds(exp - now + 60))
            .await
            .map_err(|error| {
                tracing::error!(%error, "cannot record a client assertion");
                Reply::oauth_error(500, "server_error", "the server could not check the assertion")
            })?;
        if !first_use {
            return Err(invalid_client("this client assertion (jti) was used before"));
        }
        Ok(record)
    }

    /// The client's public keys (one of which should be `kid`): registered inline, or from its
    /// JWKS URL.
    async fn client_keys(&self, record: &ClientRecord, kid: &str) -> Result<Arc<JwkSet>, Reply> {
        match &record.credentials {
            ClientCredentials::Jwks { jwks } => {
                serde_json::from_str(jwks).map(Arc::new).map_err(|_| invalid_client("the client's JWKS is not valid"))
            }
            ClientCredentials::JwksUri { uri } => self.client_jwks.keys(uri, kid).await.map_err(|error| {
                tracing::warn!(%error, client = %record.client_id, "cannot use the client's JWKS URL");
                invalid_client("the client's JWKS could not be fetched")
            }),
            _ => Err(invalid_client("this client has no registered keys")),
        }
    }
}

/// The payload of a JWT, not yet verified (to learn which client's keys verify it).
fn unverified_claims(token: &str) -> Option<Value> {
    let payload = token.split('.').nth(1)?;
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()
}
