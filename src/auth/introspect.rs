//! Token introspection (RFC 7662) and revocation (RFC 7009).

use std::collections::HashMap;

use serde_json::{json, Value};

use super::client_auth::ClientIdentity;
use super::keys::digest;
use super::token::{RefreshGrant, REFRESH};
use super::{now_seconds, AuthServer, BearerError, Reply};

impl AuthServer {
    /// `POST /auth/introspect`: the caller is an authenticated client or holds a valid access
    /// token; the answer says whether `token` is active and what it grants.
    pub async fn introspect(&self, authorization: Option<&str>, form: &HashMap<String, String>) -> Reply {
        let caller_ok = match authorization {
            Some(value) if super::credentials(value, "Bearer").is_some() => {
                self.authenticate(Some(value)).await.is_ok()
            }
            // A resource server or confidential client: a public client_id proves nothing.
            _ => matches!(self.authenticate_client(authorization, form).await, Ok(ClientIdentity::Confidential(_))),
        };
        if !caller_ok {
            return Reply::oauth_error(
                401,
                "invalid_client",
                "introspection needs client authentication or a bearer token",
            );
        }
        let Some(token) = form.get("token") else {
            return Reply::oauth_error(400, "invalid_request", "token is missing");
        };
        let mut body = match self.verify(token).await {
            Ok((claims, _)) => {
                let mut body = json!({
                    "active": true,
                    "scope": claims.scope,
                    "client_id": claims.client_id,
                    "sub": claims.sub,
                    "iss": claims.iss,
                    "aud": claims.aud,
                    "exp": claims.exp,
                    "iat": claims.iat,
                    "token_type": "Bearer",
                });
                if let Some(patient) = claims.patient {
                    body["patient"] = Value::from(patient);
                }
                if let Some(encounter) = claims.encounter {
                    body["encounter"] = Value::from(encounter);
                }
                if let Some(fhir_user) = claims.fhir_user {
                    body["fhirUser"] = Value::from(format!("{}/{fhir_user}", self.fhir_base()));
                }
                body
            }
            Err(BearerError::Missing | BearerError::Invalid(_)) => self.introspect_refresh(token).await,
        };
        if body.get("active") != Some(&Value::Bool(true)) {
            body = json!({"active": false});
        }
        Reply::Json { status: 200, body, no_store: true, www_authenticate: None }
    }

    async fn introspect_refresh(&self, token: &str) -> Value {
        let Ok(Some(data)) = self.store.auth_get(REFRESH, &digest(token)).await else {
            return json!({"active": false});
        };
        let Ok(refresh) = serde_json::from_str::<RefreshGrant>(&data) else { return json!({"active": false}) };
        if refresh.expires <= now_seconds() || self.is_revoked(&refresh.grant).await {
            return json!({"active": false});
        }
        let mut body = json!({
            "active": true,
            "scope": refresh.scopes.join(" "),
            "client_id": refresh.client_id,
            "sub": refresh.username,
            "iss": self.fhir_base(),
            "exp": refresh.expires,
            "token_type": "refresh_token",
        });
        if let Some(patient) = refresh.patient {
            body["patient"] = Value::from(patient);
        }
        body
    }

    /// `POST /auth/revoke`: revokes the grant of an access or refresh token (every token of
    /// that authorization stops working at once, on every node). Unknown tokens are not an
    /// error (RFC 7009 §2.2).
    pub async fn revoke(&self, authorization: Option<&str>, form: &HashMap<String, String>) -> Reply {
        let client = match self.authenticate_client(authorization, form).await {
            Ok(client) => client,
            Err(reply) => return reply,
        };
        let client_id = &client.record().client_id;
        let acting = crate::audit::Who { client_id: Some(client_id.clone()), ..Default::default() };
        crate::audit::RequestTrail::note_who(acting);
        let Some(token) = form.get("token") else {
            return Reply::oauth_error(400, "invalid_request", "token is missing");
        };
        let grant = match self.verify(token).await {
            Ok((claims, _)) if claims.client_id == *client_id => Some(claims.grant),
            Ok(_) => None,
            Err(_) => match self.store.auth_get(REFRESH, &digest(token)).await {
                Ok(Some(data)) => serde_json::from_str::<RefreshGrant>(&data)
                    .ok()
                    .filter(|refresh| refresh.client_id == *client_id)
                    .map(|refresh| refresh.grant),
                _ => None,
            },
        };
        if let Some(grant) = grant {
            if let Err(error) = self.revoke_grant(&grant).await {
                tracing::error!(%error, "cannot revoke");
                return Reply::oauth_error(503, "temporarily_unavailable", "the token could not be revoked; retry");
            }
        }
        Reply::Json { status: 200, body: json!({}), no_store: true, www_authenticate: None }
    }
}
