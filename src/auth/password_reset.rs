//! Password reset: a one-time link (an hour, only its digest stored) to choose a new password,
//! e-mailed to the address of the account's FHIR resource when someone asks at
//! `/auth/forgot` (which answers the same whether or not the account exists), or printed by
//! `hearth user reset`. A new password ends every session and token of the account.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::authorize::{error_page, param, server_error, Params};
use super::keys::digest;
use super::one_time::{link, mint, new_csrf, LinkPages};
use super::password_policy::password_problem;
use super::records::{user, users, UserRecord};
use super::{in_seconds, pages, AuthServer, Reply};
use crate::mail::{telecom_email, Purpose, Queued};
use crate::store::{Store, StoreResult};

/// Record kind of reset links (keyed by the token's digest).
const RESET: &str = "password-reset";

/// Record kind of reset requests per account, to keep `/auth/forgot` from flooding a mailbox.
const RESET_REQUESTS: &str = "reset-requests";

/// How long a reset link works.
pub const RESET_SECONDS: i64 = 3600;

/// How many e-mails one account may be sent per [`RESET_SECONDS`].
const MAX_RESET_REQUESTS: i64 = 3;

const GONE: &str = "This link has expired or was already used. Ask for a new one.";

const PAGES: LinkPages = LinkPages {
    kind: RESET,
    gone: GONE,
    foreign: "A password is only reset from this server's own pages.",
    stale: "The form has expired. Open the link from the e-mail again.",
};

#[derive(Serialize, Deserialize)]
struct ResetLink {
    username: String,
    csrf: String,
}

/// A reset link's token for `username`, which is not stored (its digest is).
pub async fn reset_token(store: &dyn Store, username: &str) -> StoreResult<String> {
    let link = ResetLink { username: username.to_string(), csrf: new_csrf() };
    mint(store, RESET, &link, in_seconds(RESET_SECONDS)).await
}

/// The link a reset token opens, under the server's public base URL.
pub fn reset_link(base_url: &str, token: &str) -> String {
    link(base_url, "/auth/reset", token)
}

/// The enabled account `account` names (its username, or the e-mail address of its resource)
/// and the address to e-mail it at; `None` when there is no such account or it has no address.
pub async fn account_to_email(store: &dyn Store, account: &str) -> StoreResult<Option<(String, String)>> {
    if let Some(found) = user(store, account).await?.filter(|found| !found.disabled) {
        return Ok(email_of(store, &found).await?.map(|email| (found.username, email)));
    }
    if !account.contains('@') {
        return Ok(None);
    }
    for found in users(store).await?.into_iter().filter(|found| !found.disabled) {
        if let Some(email) = email_of(store, &found).await? {
            if email.eq_ignore_ascii_case(account.trim()) {
                return Ok(Some((found.username, email)));
            }
        }
    }
    Ok(None)
}

/// The first e-mail address of a user's FHIR resource.
async fn email_of(store: &dyn Store, user: &UserRecord) -> StoreResult<Option<String>> {
    let Some((resource_type, id)) = user.fhir_user.split_once('/') else { return Ok(None) };
    let Some(stored) = store.read(resource_type, id).await?.filter(|v| !v.deleted) else { return Ok(None) };
    let resource: Value = serde_json::from_slice(&stored.body).unwrap_or_default();
    Ok(telecom_email(&resource))
}

impl AuthServer {
    /// `GET /auth/forgot`: where a person asks for a reset link.
    pub fn forgot_page(&self) -> Reply {
        Reply::Page { status: 200, html: pages::forgot(self.settings.sends_email, None), set_cookie: None }
    }

    /// `POST /auth/forgot`: queues the reset e-mail (the job finds the account and its address,
    /// so that this answer, and how long it takes, is the same whether or not one exists).
    pub async fn forgot(&self, form: &Params, origin: Option<&str>) -> Reply {
        if !self.is_own_origin(origin) {
            return error_page(403, "A password reset is only asked for from this server's own pages.");
        }
        if !self.settings.sends_email {
            return Reply::Page { status: 200, html: pages::forgot(false, None), set_cookie: None };
        }
        let account = param(form, "account").unwrap_or("").trim();
        if account.is_empty() || account.len() > 254 || account.contains(['\r', '\n']) {
            let message = "Give your username or your e-mail address.";
            return Reply::Page { status: 400, html: pages::forgot(true, Some(message)), set_cookie: None };
        }
        let key = account.to_lowercase();
        let requests = match self.store.auth_increment(RESET_REQUESTS, &key, in_seconds(RESET_SECONDS)).await {
            Ok(requests) => requests,
            Err(error) => return server_error(error),
        };
        if requests <= MAX_RESET_REQUESTS {
            let queued = Queued::new(Purpose::PasswordReset { account: account.to_string() });
            if let Err(error) = crate::mail::queue(self.store.as_ref(), &queued).await {
                return server_error(error);
            }
        }
        Reply::Page { status: 200, html: pages::reset_asked(), set_cookie: None }
    }

    /// `GET /auth/reset?token=…`: the form for a new password.
    pub async fn reset_page(&self, params: &Params) -> Reply {
        self.link_page(&PAGES, params, |token, link: &ResetLink, error| pages::reset(token, &link.csrf, error)).await
    }

    /// `POST /auth/reset`: sets the new password, uses the link up, and ends every session and
    /// token of the account.
    pub async fn reset(&self, form: &Params, origin: Option<&str>) -> Reply {
        let (token, link) = match self.posted_link(&PAGES, form, origin, |l: &ResetLink| &l.csrf).await {
            Ok(posted) => posted,
            Err(reply) => return reply,
        };
        let token = token.as_str();
        let password = param(form, "password").unwrap_or("");
        if let Some(problem) = password_problem(password, &link.username, &[]) {
            return Reply::Page {
                status: 400,
                html: pages::reset(token, &link.csrf, Some(&problem)),
                set_cookie: None,
            };
        }
        match self.store.auth_take(RESET, &digest(token)).await {
            Ok(Some(_)) => {}
            Ok(None) => return error_page(410, GONE),
            Err(error) => return server_error(error),
        }
        let Ok(Some(mut account)) = user(self.store.as_ref(), &link.username).await else {
            return error_page(410, GONE);
        };
        account.note_acting(None);
        account.password_hash = match self.hash_new_password(password).await {
            Ok(hash) => hash,
            Err(reply) => return reply,
        };
        if let Err(error) = super::sign_out_everywhere(self.store.as_ref(), account).await {
            return server_error(error);
        }
        Reply::Page { status: 200, html: pages::password_changed(), set_cookie: None }
    }
}
