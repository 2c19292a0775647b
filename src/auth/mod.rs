//! The SMART on FHIR authorization server (discovery, authorize with login and consent pages,
//! token, introspect, revoke, JWKS, EHR launch contexts) and the access policy that every FHIR
//! interaction goes through.
//!
//! Nothing here knows about axum: endpoints take the decoded parameters of a request and
//! answer with a [`Reply`], which `http::auth` turns into a response. All state lives in the
//! database (`auth_objects`), so any node can serve any step of a flow.

pub mod access;
mod accounts;
mod authorize;
mod client_auth;
mod client_jwks;
mod discovery;
mod introspect;
pub mod keys;
mod launch;
mod one_time;
mod pages;
pub mod password_policy;
pub mod password_reset;
pub mod proxy;
pub mod records;
pub mod registration;
pub mod scope;
mod token;
pub mod tokens;

use std::sync::Arc;

use serde_json::Value;
use time::OffsetDateTime;

use crate::bounded::BoundedMap;
use crate::store::feed::KeySet;
use crate::store::{Store, StoreResult};
pub use access::{Access, Grant, PolicyContext, Restriction, Rule};
pub use authorize::SESSION_COOKIE;
use keys::KeyRing;
pub use records::PasswordCost;
use scope::{parse_scopes, Scope};
use tokens::{verify_access_token, AccessClaims};

/// Record kind of revoked grants, and of ended generations of a user's tokens.
const REVOKED: &str = "revoked";

/// The revocation key of generation `epoch` of `username`'s tokens.
fn signed_out(username: &str, epoch: u32) -> String {
    format!("user:{epoch}:{username}")
}

/// What revokes a token: its grant, and the generation of its account's tokens.
fn revocation_keys(claims: &AccessClaims) -> Vec<String> {
    let mut keys = vec![claims.grant.clone()];
    keys.extend(claims.epoch.map(|epoch| signed_out(&claims.sub, epoch)));
    keys
}

/// Signs `account` out everywhere and stores it: its live access tokens stop at their next use
/// on every node (their generation ends), its refresh tokens' grants are revoked, and its login
/// sessions end. For a new password, or a disabled account; `account` is stored as given, with
/// the next generation.
pub async fn sign_out_everywhere(store: &dyn Store, mut account: records::UserRecord) -> StoreResult<()> {
    let ended = account.epoch;
    account.epoch += 1;
    records::save_user(store, &account).await?;
    store.auth_publish(REVOKED, &signed_out(&account.username, ended), "", keys::far_future()).await?;
    for (key, data) in store.auth_list(authorize::SESSION).await? {
        let session = serde_json::from_str::<authorize::Session>(&data);
        if session.is_ok_and(|session| session.username == account.username) {
            store.auth_delete(authorize::SESSION, &key).await?;
        }
    }
    for (key, data) in store.auth_list(token::REFRESH).await? {
        let Ok(refresh) = serde_json::from_str::<token::RefreshGrant>(&data) else { continue };
        if refresh.username == account.username {
            store.auth_publish(REVOKED, &refresh.grant, "", keys::far_future()).await?;
            store.auth_delete(token::REFRESH, &key).await?;
        }
    }
    Ok(())
}

/// Settings of the authorization server.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// The public base URL without `/fhir` (`http://localhost:8080`).
    pub base_url: String,
    /// How expensive new password hashes are.
    pub password_cost: PasswordCost,
    /// Whether the server sends e-mail (password reset links go by e-mail).
    pub sends_email: bool,
    /// When a parent's proxy access ends.
    pub proxy: proxy::ProxyPolicy,
}

/// What an endpoint answers.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// An HTML page.
    Page { status: u16, html: String, set_cookie: Option<String> },
    /// `303 See Other` to `location`.
    Redirect { location: String, set_cookie: Option<String> },
    /// A JSON document; token responses carry `Cache-Control: no-store`.
    Json { status: u16, body: Value, no_store: bool, www_authenticate: Option<String> },
}

impl Reply {
    fn json(status: u16, body: Value) -> Reply {
        Reply::Json { status, body, no_store: false, www_authenticate: None }
    }

    /// An OAuth error document (RFC 6749 §5.2).
    fn oauth_error(status: u16, error: &str, description: &str) -> Reply {
        let body = serde_json::json!({ "error": error, "error_description": description });
        Reply::Json {
            status,
            body,
            no_store: true,
            www_authenticate: (status == 401).then(|| "Basic realm=\"hearth\"".to_string()),
        }
    }
}

/// Why a bearer token was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BearerError {
    /// No `Authorization: Bearer` header.
    Missing,
    /// Malformed, forged, expired, revoked or for another server.
    Invalid(&'static str),
}

/// The authorization server.
pub struct AuthServer {
    store: Arc<dyn Store>,
    keys: KeyRing,
    settings: AuthSettings,
    /// The browser origin of `settings.base_url` (`scheme://host[:port]`).
    origin: Option<String>,
    /// Revoked grants, mirrored in memory by the store (on PostgreSQL kept by its change feed,
    /// so that a revocation on one node reaches every node as it commits). While the mirror
    /// is incomplete (the feed reconnecting) every check asks the database.
    revoked: Arc<KeySet>,
    /// Tokens verified before, with what they grant: a token used again is not decoded again
    /// (its grant is still checked for revocation on every use).
    verified: BoundedMap<String, Arc<Verified>>,
    /// When an unknown key id last made this node reload its keys (Unix seconds).
    last_key_reload: std::sync::atomic::AtomicI64,
    /// Key sets of clients registered with a JWKS URL.
    client_jwks: client_jwks::ClientJwks,
}

/// The least time between two key reloads caused by unknown key ids.
const KEY_RELOAD_SECONDS: i64 = 5;

/// A verified access token.
struct Verified {
    access: Access,
    /// What revokes it (see [`revocation_keys`]).
    revocations: Vec<String>,
    expires: i64,
    /// The key that signed it: the token stops when the key retires.
    kid: String,
    /// The RelatedPersons it acts through: the token stops when one of them ends.
    links: Vec<proxy::Link>,
}

/// How many verified tokens are remembered.
const VERIFIED_TOKENS: usize = 10_000;

impl AuthServer {
    /// Loads (or creates) the signing keys and the revocation list.
    pub async fn open(store: Arc<dyn Store>, settings: AuthSettings) -> StoreResult<Arc<AuthServer>> {
        let keys = KeyRing::load(store.as_ref()).await?;
        let revoked = store.auth_watch(REVOKED).await?;
        let origin = url::Url::parse(&settings.base_url).ok().map(|url| url.origin().ascii_serialization());
        Ok(Arc::new(AuthServer {
            store,
            keys,
            origin,
            settings,
            revoked,
            verified: BoundedMap::new(VERIFIED_TOKENS),
            last_key_reload: std::sync::atomic::AtomicI64::new(0),
            client_jwks: client_jwks::ClientJwks::new(),
        }))
    }

    /// The FHIR base URL: the issuer and the audience of tokens.
    pub fn fhir_base(&self) -> String {
        format!("{}/fhir", self.settings.base_url)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.settings.base_url)
    }

    /// Whether a browser's `Origin` header names this server (or is absent: not a browser, or
    /// a same-origin request of an older one). A form posted from another site names that site.
    fn is_own_origin(&self, origin: Option<&str>) -> bool {
        origin.is_none_or(|origin| self.origin.as_deref() == Some(origin))
    }

    /// Whether cookies must be `Secure` (the server is reached over https).
    fn secure_cookies(&self) -> bool {
        self.settings.base_url.starts_with("https://")
    }

    /// Checks a bearer token and returns what it grants.
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<Access, BearerError> {
        let token = authorization.and_then(|value| credentials(value, "Bearer")).ok_or(BearerError::Missing)?;
        if let Some(known) = self.verified.get(token) {
            if known.expires <= now_seconds() {
                return Err(BearerError::Invalid("the access token has expired"));
            }
            if self.keys.find(&known.kid).is_none() {
                return Err(BearerError::Invalid("the access token is not valid"));
            }
            if self.any_revoked(&known.revocations).await {
                return Err(BearerError::Invalid("the access token has been revoked"));
            }
            self.check_links(&known.links).await?;
            return Ok(known.access.clone());
        }
        let (claims, kid) = self.verify(token).await?;
        let access = Access::Token(Arc::new(grant_of(&claims)));
        let verified = Verified {
            access: access.clone(),
            revocations: revocation_keys(&claims),
            expires: claims.exp,
            kid,
            links: claims.links,
        };
        self.verified.insert(token.to_string(), Arc::new(verified));
        Ok(access)
    }

    /// Refuses a proxy's token once a RelatedPerson it acts through no longer grants access.
    async fn check_links(&self, links: &[proxy::Link]) -> Result<(), BearerError> {
        if links.is_empty() {
            return Ok(());
        }
        match proxy::all_live(self.store.as_ref(), links).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(BearerError::Invalid("the proxy access of this token has ended")),
            Err(error) => {
                tracing::error!(%error, "cannot check a proxy's access; refusing the token");
                Err(BearerError::Invalid("the proxy access of this token cannot be checked"))
            }
        }
    }

    /// The patients `account` reaches now (see [`proxy`]).
    async fn reach(&self, account: &records::UserRecord) -> StoreResult<proxy::Reach> {
        proxy::reach(self.store.as_ref(), self.settings.proxy, account).await
    }

    /// Verifies an access token: signature, expiry, audience, that its grant is not revoked,
    /// and that the RelatedPersons a proxy's token acts through still grant access.
    async fn verify(&self, token: &str) -> Result<(AccessClaims, String), BearerError> {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let base = self.fhir_base();
        let (claims, kid) = match verify_access_token(&self.keys, token, &base, now) {
            Err(None) => {
                // A key this node has not seen: another node or a rotation may have added it.
                // At most one reload per few seconds, or a stream of made-up key ids would
                // keep the database busy.
                let last = self.last_key_reload.load(std::sync::atomic::Ordering::Relaxed);
                let due = now - last >= KEY_RELOAD_SECONDS;
                if due
                    && self
                        .last_key_reload
                        .compare_exchange(
                            last,
                            now,
                            std::sync::atomic::Ordering::Relaxed,
                            std::sync::atomic::Ordering::Relaxed,
                        )
                        .is_ok()
                {
                    if let Err(error) = self.keys.reload(self.store.as_ref()).await {
                        tracing::warn!(%error, "cannot reload signing keys");
                    }
                }
                verify_access_token(&self.keys, token, &base, now)
            }
            other => other,
        }
        .map_err(|error| match error {
            Some(tokens::TokenError::Expired) => BearerError::Invalid("the access token has expired"),
            Some(tokens::TokenError::WrongAudience) => BearerError::Invalid("the access token is for another server"),
            _ => BearerError::Invalid("the access token is not valid"),
        })?;
        if self.any_revoked(&revocation_keys(&claims)).await {
            return Err(BearerError::Invalid("the access token has been revoked"));
        }
        self.check_links(&claims.links).await?;
        Ok((claims, kid))
    }

    async fn any_revoked(&self, keys: &[String]) -> bool {
        for key in keys {
            if self.is_revoked(key).await {
                return true;
            }
        }
        false
    }

    async fn is_revoked(&self, grant: &str) -> bool {
        if let Some(revoked) = self.revoked.contains(grant) {
            return revoked;
        }
        match self.store.auth_get(REVOKED, grant).await {
            Ok(found) => found.is_some(),
            Err(error) => {
                tracing::error!(%error, "cannot check revocations; refusing the token");
                true
            }
        }
    }

    /// Revokes every token of a grant, on every node.
    async fn revoke_grant(&self, grant: &str) -> StoreResult<()> {
        self.store.auth_publish(REVOKED, grant, "", keys::far_future()).await
    }

    /// The published signing keys.
    pub fn jwks(&self) -> Reply {
        Reply::json(200, self.keys.jwks())
    }

    /// Every minute: reads the signing keys again (so that a rotation reaches every node) and
    /// deletes expired records (codes, sessions, used assertion ids…).
    pub async fn run_background(self: Arc<Self>) {
        let mut ticks = tokio::time::interval(std::time::Duration::from_secs(60));
        loop {
            ticks.tick().await;
            if let Err(error) = self.keys.reload(self.store.as_ref()).await {
                tracing::warn!(%error, "cannot reload signing keys");
            }
            if let Err(error) = self.store.auth_purge().await {
                tracing::warn!(%error, "cannot purge expired authorization records");
            }
        }
    }
}

/// The credentials of an `Authorization` header value with the given scheme (the scheme's
/// case does not matter, RFC 7235).
pub(crate) fn credentials<'a>(value: &'a str, scheme: &str) -> Option<&'a str> {
    let (given, credentials) = value.trim().split_once(' ')?;
    let credentials = credentials.trim();
    (given.eq_ignore_ascii_case(scheme) && !credentials.is_empty()).then_some(credentials)
}

/// What a token's claims grant.
fn grant_of(claims: &AccessClaims) -> Grant {
    let scopes = parse_scopes(&claims.scope);
    Grant {
        client_id: claims.client_id.clone(),
        may_launch: scopes.iter().any(|(_, s)| *s == Scope::SystemLaunch),
        scopes: scopes
            .into_iter()
            .filter_map(|(_, scope)| match scope {
                Scope::Resource(resource) => Some(resource),
                _ => None,
            })
            .collect(),
        patients: claims.patients.clone(),
        user_patients: claims.user_patients.clone(),
        fhir_user: claims.fhir_user.clone(),
        acts_through: claims.links.iter().map(|link| link.related_person.clone()).collect(),
        claims: Some(Arc::new(claims.clone())),
        memo: access::RuleMemo::default(),
    }
}

/// The access of a token's claims kept by a Subscription (ADR 16), if they are still in force:
/// its grant not revoked, its user not signed out everywhere since, a proxy's RelatedPersons
/// still granting their patients. `None` when the access has ended.
pub async fn kept_access(store: &dyn Store, claims: &AccessClaims) -> StoreResult<Option<Access>> {
    for key in revocation_keys(claims) {
        if store.auth_get(REVOKED, &key).await?.is_some() {
            return Ok(None);
        }
    }
    if !claims.links.is_empty() && !proxy::all_live(store, &claims.links).await? {
        return Ok(None);
    }
    Ok(Some(Access::Token(Arc::new(grant_of(claims)))))
}

/// The access of a token's claims kept by a Subscription, as it was granted (not checked
/// against revocations: what matching a write uses, the delivery checks again).
pub fn granted_access(claims: &AccessClaims) -> Access {
    Access::Token(Arc::new(grant_of(claims)))
}

/// Seconds since the Unix epoch.
fn now_seconds() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

/// An instant `seconds` from now.
fn in_seconds(seconds: i64) -> OffsetDateTime {
    OffsetDateTime::now_utc() + time::Duration::seconds(seconds)
}
