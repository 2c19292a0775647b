//! The token endpoint (`POST /auth/token`): authorization_code (with PKCE S256, one use only:
//! a replayed code revokes what it issued), refresh_token (rotating: an old refresh token used
//! again revokes its grant), and client_credentials for backend services.

use std::collections::HashMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::Digest;

use super::authorize::{CodeGrant, CODE};
use super::client_auth::ClientIdentity;
use super::keys::{digest, random_token};
use super::proxy;
use super::records::{user, ClientRecord};
use super::scope::{parse_scopes, Scope, ScopeContext};
use super::tokens::{sign_access_token, sign_id_token, AccessClaims, IdTokenRequest, ACCESS_TOKEN_SECONDS};
use super::{in_seconds, now_seconds, AuthServer, Reply};
use crate::audit::{RequestTrail, SecurityEvent, Who};

/// Record kinds.
pub(super) const REFRESH: &str = "refresh";
const USED_CODE: &str = "code-used";
const USED_REFRESH: &str = "refresh-used";

/// How long an `offline_access` refresh token lives.
const OFFLINE_SECONDS: i64 = 90 * 24 * 3600;
/// How long a used code or rotated refresh token is remembered, to catch replays.
const REPLAY_MEMORY_SECONDS: i64 = 24 * 3600;

/// What a refresh token stands for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct RefreshGrant {
    pub client_id: String,
    pub scopes: Vec<String>,
    pub username: String,
    pub patient: Option<String>,
    pub encounter: Option<String>,
    pub patients: Vec<String>,
    /// For `online_access`: the login session the token lives with.
    pub session: Option<String>,
    pub grant: String,
    /// Unix seconds.
    pub expires: i64,
}

/// A credential that works once and belongs to a grant.
trait OneTime: serde::de::DeserializeOwned {
    fn grant(&self) -> &str;
}

impl OneTime for CodeGrant {
    fn grant(&self) -> &str {
        &self.grant
    }
}

impl OneTime for RefreshGrant {
    fn grant(&self) -> &str {
        &self.grant
    }
}

fn invalid_grant(description: &str) -> Reply {
    Reply::oauth_error(400, "invalid_grant", description)
}

fn server_error(error: impl std::fmt::Display) -> Reply {
    tracing::error!(%error, "token endpoint storage failure");
    Reply::oauth_error(500, "server_error", "the server could not complete the request")
}

/// What a successful grant issues tokens for.
struct Issue<'a> {
    client: &'a ClientRecord,
    scopes: Vec<String>,
    subject: String,
    username: Option<String>,
    patient: Option<String>,
    encounter: Option<String>,
    patients: Vec<String>,
    grant: String,
    nonce: Option<String>,
    /// The login session, for an `online_access` refresh token.
    session: Option<String>,
}

impl AuthServer {
    /// `POST /auth/token`.
    pub async fn token(&self, authorization: Option<&str>, form: &HashMap<String, String>) -> Reply {
        let grant_type = form.get("grant_type").map(String::as_str);
        if !matches!(grant_type, Some("authorization_code" | "refresh_token" | "client_credentials")) {
            return Reply::oauth_error(
                400,
                "unsupported_grant_type",
                "grant_type must be authorization_code, refresh_token or client_credentials",
            );
        }
        // The client it claims to be, until it has proven it.
        let claimed = form.get("client_id").filter(|id| id.len() <= 128).cloned();
        RequestTrail::note(|noted| noted.who.client_id = claimed);
        let client = match self.authenticate_client(authorization, form).await {
            Ok(client) => client,
            Err(reply) => return reply,
        };
        let client_id = Some(client.record().client_id.clone());
        RequestTrail::note(|noted| {
            noted.who.client_id = client_id;
            if grant_type == Some("refresh_token") {
                noted.event = Some(SecurityEvent::Refresh);
            }
        });
        match grant_type {
            Some("authorization_code") => self.code_grant(client.record(), form).await,
            Some("refresh_token") => self.refresh_grant(client.record(), form).await,
            _ => self.client_credentials(&client, form).await,
        }
    }

    async fn code_grant(&self, client: &ClientRecord, form: &HashMap<String, String>) -> Reply {
        let Some(code) = form.get("code") else {
            return Reply::oauth_error(400, "invalid_request", "code is missing");
        };
        let granted: CodeGrant = match self.take_once(CODE, USED_CODE, &digest(code)).await {
            Ok(Some(granted)) => granted,
            Ok(None) => return invalid_grant("the code is not valid, has expired or was used before"),
            Err(reply) => return reply,
        };
        if granted.client_id != client.client_id {
            return invalid_grant("the code was issued to another client");
        }
        if form.get("redirect_uri") != Some(&granted.redirect_uri) {
            return invalid_grant("redirect_uri differs from the authorization request's");
        }
        if let Err(reply) = check_pkce(&granted, form.get("code_verifier").map(String::as_str)) {
            return reply;
        }
        let offline = granted.scopes.iter().any(|s| s == "offline_access");
        let online = granted.scopes.iter().any(|s| s == "online_access");
        self.issue(Issue {
            client,
            scopes: granted.scopes,
            subject: granted.username.clone(),
            username: Some(granted.username),
            patient: granted.patient,
            encounter: granted.encounter,
            patients: granted.patients,
            grant: granted.grant,
            nonce: granted.nonce,
            session: (online && !offline).then_some(granted.session),
        })
        .await
    }

    async fn refresh_grant(&self, client: &ClientRecord, form: &HashMap<String, String>) -> Reply {
        let Some(token) = form.get("refresh_token") else {
            return Reply::oauth_error(400, "invalid_request", "refresh_token is missing");
        };
        let key = digest(token);
        // Another client's refresh token is refused before it is used up, so that a client
        // cannot burn (and so revoke) a grant that is not its own.
        if let Ok(Some(data)) = self.store.auth_get(REFRESH, &key).await {
            if serde_json::from_str::<RefreshGrant>(&data).is_ok_and(|r| r.client_id != client.client_id) {
                return invalid_grant("the refresh token was issued to another client");
            }
        }
        let refresh: RefreshGrant = match self.take_once(REFRESH, USED_REFRESH, &key).await {
            Ok(Some(refresh)) => refresh,
            Ok(None) => return invalid_grant("the refresh token is not valid"),
            Err(reply) => return reply,
        };
        if refresh.client_id != client.client_id {
            return invalid_grant("the refresh token was issued to another client");
        }
        if refresh.expires <= now_seconds() || self.is_revoked(&refresh.grant).await {
            return invalid_grant("the refresh token has expired or was revoked");
        }
        if let Some(session) = &refresh.session {
            if !self.session_alive(session).await {
                return invalid_grant("the sign-in session of this online_access token has ended");
            }
        }
        let scopes = match form.get("scope") {
            None => refresh.scopes.clone(),
            Some(asked) => {
                let asked: Vec<String> = asked.split_ascii_whitespace().map(str::to_string).collect();
                if let Some(extra) = asked.iter().find(|s| !refresh.scopes.contains(s)) {
                    return Reply::oauth_error(400, "invalid_scope", &format!("'{extra}' was not granted before"));
                }
                asked
            }
        };
        self.issue(Issue {
            client,
            scopes,
            subject: refresh.username.clone(),
            username: Some(refresh.username),
            patient: refresh.patient,
            encounter: refresh.encounter,
            patients: refresh.patients,
            grant: refresh.grant,
            nonce: None,
            session: refresh.session,
        })
        .await
    }

    async fn client_credentials(&self, client: &ClientIdentity, form: &HashMap<String, String>) -> Reply {
        let ClientIdentity::Confidential(record) = client else {
            return Reply::oauth_error(400, "unauthorized_client", "client_credentials needs a confidential client");
        };
        // A backend service gets only the system scopes it was registered for (none when it
        // was registered without --scope): client_credentials never falls back to "anything".
        let requested = parse_scopes(form.get("scope").map(String::as_str).unwrap_or(""));
        let registered = parse_scopes(record.scope.as_deref().unwrap_or(""));
        let scopes: Vec<String> = requested
            .into_iter()
            .filter(|(_, scope)| match scope {
                Scope::Resource(wanted) => {
                    wanted.context == ScopeContext::System
                        && registered.iter().any(|(_, r)| matches!(r, Scope::Resource(wider) if wanted.within(wider)))
                }
                Scope::SystemLaunch => registered.iter().any(|(_, r)| *r == Scope::SystemLaunch),
                _ => false,
            })
            .map(|(text, _)| text)
            .collect();
        if scopes.is_empty() {
            return Reply::oauth_error(400, "invalid_scope", "none of the requested system scopes can be granted");
        }
        self.issue(Issue {
            client: record,
            scopes,
            subject: record.client_id.clone(),
            username: None,
            patient: None,
            encounter: None,
            patients: Vec::new(),
            grant: random_token(16),
            nonce: None,
            session: None,
        })
        .await
    }

    /// Takes a one-time credential (a code, a refresh token) by the digest `key`, so that it
    /// works once, and remembers it was used. Used again, it revokes the grant it issued
    /// (RFC 6749 §4.1.2; a rotated refresh token seen again may have been stolen).
    async fn take_once<T: OneTime>(&self, kind: &str, used_kind: &str, key: &str) -> Result<Option<T>, Reply> {
        let taken = match self.store.auth_take(kind, key).await {
            Ok(Some(data)) => serde_json::from_str::<T>(&data).ok(),
            Ok(None) => None,
            Err(error) => return Err(server_error(error)),
        };
        let Some(taken) = taken else {
            if let Ok(Some(grant)) = self.store.auth_get(used_kind, key).await {
                self.revoke_grant(&grant).await.map_err(server_error)?;
                let why = "a code or refresh token used before was presented again: its grant is revoked";
                RequestTrail::note(|noted| noted.refusal = Some(why.to_string()));
            }
            return Ok(None);
        };
        let remembered = in_seconds(REPLAY_MEMORY_SECONDS);
        self.store.auth_upsert(used_kind, key, taken.grant(), remembered).await.map_err(server_error)?;
        Ok(Some(taken))
    }

    /// Signs the access token (and the id_token and refresh token where granted).
    async fn issue(&self, mut issue: Issue<'_>) -> Reply {
        let now = now_seconds();
        let user = match &issue.username {
            Some(name) => match user(self.store.as_ref(), name).await {
                Ok(Some(user)) if user.disabled => return invalid_grant("the account of this grant is disabled"),
                Ok(Some(user)) => Some(user),
                Ok(None) => return invalid_grant("the user of this grant no longer exists"),
                Err(error) => return server_error(error),
            },
            None => None,
        };
        let fhir_user = user.as_ref().map(|u| u.fhir_user.clone());
        let reach = match &user {
            Some(user) => match self.reach(user).await {
                Ok(reach) => reach,
                Err(error) => return server_error(error),
            },
            None => proxy::Reach { patients: None, links: Vec::new() },
        };
        // A refreshed grant reaches no patient the user has lost since (a RelatedPerson ended,
        // a link removed).
        if let Some(reachable) = &reach.patients {
            issue.patients.retain(|p| reachable.contains(p));
            if issue.patient.as_ref().is_some_and(|p| !reachable.contains(p)) {
                return invalid_grant("the patient of this grant is no longer one the user may see");
            }
        }
        let has = |name: &str| issue.scopes.iter().any(|s| s == name);
        let claims = AccessClaims {
            iss: self.fhir_base(),
            sub: issue.subject.clone(),
            aud: self.fhir_base(),
            exp: now + ACCESS_TOKEN_SECONDS,
            iat: now,
            jti: random_token(16),
            client_id: issue.client.client_id.clone(),
            scope: issue.scopes.join(" "),
            grant: issue.grant.clone(),
            patient: issue.patient.clone(),
            encounter: issue.encounter.clone(),
            fhir_user: fhir_user.clone(),
            epoch: user.as_ref().map(|u| u.epoch),
            patients: issue.patients.clone(),
            user_patients: reach.patients,
            links: links_used(reach.links, &issue.scopes, &issue.patients),
        };
        let mut body = json!({
            "access_token": sign_access_token(&self.keys, &claims),
            "token_type": "Bearer",
            "expires_in": ACCESS_TOKEN_SECONDS,
            "scope": claims.scope,
        });
        if let Some(patient) = &issue.patient {
            body["patient"] = Value::from(patient.clone());
            body["need_patient_banner"] = Value::Bool(true);
            body["smart_style_url"] = Value::from(self.url("/auth/smart-style.json"));
        }
        if let Some(encounter) = &issue.encounter {
            body["encounter"] = Value::from(encounter.clone());
        }
        if has("openid") && user.is_some() {
            let request = IdTokenRequest {
                issuer: &claims.iss,
                subject: &issue.subject,
                client_id: &issue.client.client_id,
                fhir_user: fhir_user.filter(|_| has("fhirUser")).map(|f| format!("{}/{f}", self.fhir_base())),
                nonce: issue.nonce.clone(),
                now,
            };
            match sign_id_token(&self.keys, request) {
                Ok(id_token) => body["id_token"] = Value::from(id_token),
                Err(error) => return server_error(error),
            }
        }
        if has("offline_access") || has("online_access") {
            let refresh_token = random_token(32);
            let expires = match &issue.session {
                Some(_) => now + 12 * 3600,
                None => now + OFFLINE_SECONDS,
            };
            let record = RefreshGrant {
                client_id: issue.client.client_id.clone(),
                scopes: issue.scopes.clone(),
                username: issue.username.clone().unwrap_or_default(),
                patient: issue.patient.clone(),
                encounter: issue.encounter.clone(),
                patients: issue.patients.clone(),
                session: issue.session.clone(),
                grant: issue.grant.clone(),
                expires,
            };
            let data = serde_json::to_string(&record).expect("refresh serialises");
            if let Err(error) =
                self.store.auth_upsert(REFRESH, &digest(&refresh_token), &data, in_seconds(expires - now)).await
            {
                return server_error(error);
            }
            body["refresh_token"] = Value::from(refresh_token);
        }
        RequestTrail::note_who(Who {
            user: claims.fhir_user.clone(),
            username: issue.username.clone(),
            jti: Some(claims.jti.clone()),
            client_id: Some(claims.client_id.clone()),
            ..Who::default()
        });
        Reply::Json { status: 200, body, no_store: true, www_authenticate: None }
    }
}

/// The links a token reaches patients through, which stop it when they end: all of the
/// user's with a `user/` scope, else those of the patients its `patient/` scopes reach (a
/// caregiver's token for one child does not stop when access to another ends).
fn links_used(links: Vec<proxy::Link>, scopes: &[String], patients: &[String]) -> Vec<proxy::Link> {
    if scopes.iter().any(|scope| scope.starts_with("user/")) {
        return links;
    }
    links.into_iter().filter(|link| patients.contains(&link.patient)).collect()
}

/// PKCE (RFC 7636) with S256 only: the verifier must hash to the challenge of the request.
fn check_pkce(granted: &CodeGrant, verifier: Option<&str>) -> Result<(), Reply> {
    let Some(challenge) = granted.code_challenge.as_deref() else {
        return Err(invalid_grant("the authorization request had no PKCE code_challenge; S256 is required"));
    };
    if granted.code_challenge_method.as_deref() != Some("S256") {
        return Err(invalid_grant("PKCE code_challenge_method must be S256"));
    }
    let verifier = verifier.filter(|v| !v.is_empty()).ok_or_else(|| invalid_grant("code_verifier is missing"))?;
    let computed = URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier.as_bytes()));
    if computed != challenge {
        return Err(invalid_grant("code_verifier does not match the code_challenge"));
    }
    Ok(())
}
