//! One-time links (a registration invitation, a password reset): a record keyed by the digest
//! of the link's token, with the CSRF token of the form the link opens. Shared by the pages
//! such links open, which refuse a post from another site, a link that has expired or was
//! used, and a form that is not the link's own.

use serde::de::DeserializeOwned;
use serde::Serialize;
use time::OffsetDateTime;

use super::authorize::{error_page, param, server_error, Params};
use super::keys::{digest, random_token};
use super::{AuthServer, Reply};
use crate::store::{Store, StoreResult};

/// Stores `record` under the digest of a new 256-bit token until `expires`; answers the token,
/// which is not stored.
pub(super) async fn mint<T: Serialize>(
    store: &dyn Store,
    kind: &str,
    record: &T,
    expires: OffsetDateTime,
) -> StoreResult<String> {
    let token = random_token(32);
    let data = serde_json::to_string(record).expect("a one-time link's record serialises");
    store.auth_upsert(kind, &digest(&token), &data, expires).await?;
    Ok(token)
}

/// A new CSRF token for the form a link opens.
pub(super) fn new_csrf() -> String {
    random_token(24)
}

/// The link to the page at `path` (`/auth/register`) for `token`, under the server's public
/// base URL.
pub(super) fn link(base_url: &str, path: &str, token: &str) -> String {
    format!("{}{path}?token={token}", base_url.trim_end_matches('/'))
}

/// What the pages of one kind of link say when it cannot be used.
pub(super) struct LinkPages {
    /// Record kind.
    pub kind: &'static str,
    /// A link that has expired, was used, or never was.
    pub gone: &'static str,
    /// A post from another site.
    pub foreign: &'static str,
    /// A form that is not the link's (a stale or forged CSRF token).
    pub stale: &'static str,
}

impl AuthServer {
    /// The live record of a link's `token`.
    pub(super) async fn one_time_record<T: DeserializeOwned>(&self, kind: &str, token: &str) -> StoreResult<Option<T>> {
        if token.is_empty() {
            return Ok(None);
        }
        let data = self.store.auth_get(kind, &digest(token)).await?;
        Ok(data.and_then(|data| serde_json::from_str(&data).ok()))
    }

    /// The page a link opens (`?token=…`): its form, rendered by `form` with the token and the
    /// link's record, or 410 for a dead link.
    pub(super) async fn link_page<T: DeserializeOwned>(
        &self,
        pages: &LinkPages,
        params: &Params,
        form: fn(&str, &T, Option<&str>) -> String,
    ) -> Reply {
        let token = param(params, "token").unwrap_or("");
        match self.one_time_record::<T>(pages.kind, token).await {
            Ok(Some(record)) => Reply::Page { status: 200, html: form(token, &record, None), set_cookie: None },
            Ok(None) => error_page(410, pages.gone),
            Err(error) => server_error(error),
        }
    }

    /// The link's token and record of a form posted from a link's page, or the page to answer
    /// instead (403 from another site or with another form's CSRF token, 410 for a dead link).
    pub(super) async fn posted_link<T: DeserializeOwned>(
        &self,
        pages: &LinkPages,
        form: &Params,
        origin: Option<&str>,
        csrf_of: fn(&T) -> &str,
    ) -> Result<(String, T), Reply> {
        if !self.is_own_origin(origin) {
            return Err(error_page(403, pages.foreign));
        }
        let token = param(form, "token").unwrap_or("").to_string();
        let record = match self.one_time_record::<T>(pages.kind, &token).await {
            Ok(Some(record)) => record,
            Ok(None) => return Err(error_page(410, pages.gone)),
            Err(error) => return Err(server_error(error)),
        };
        if param(form, "csrf") != Some(csrf_of(&record)) {
            return Err(error_page(403, pages.stale));
        }
        Ok((token, record))
    }
}
