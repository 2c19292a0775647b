//! Registration by invitation. Staff invite the person a Patient or RelatedPerson resource
//! describes; the invitation is a one-time link (`/auth/register?token=…`) with a random
//! 256-bit token of which only the digest is stored, valid for a set time. The person confirms
//! their birth date against the resource, chooses a username and a password, and is signed
//! in. Wrong birth dates count like failed sign-ins: after five the link is locked.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::authorize::{error_page, param, server_error, Params, MAX_LOGIN_ATTEMPTS, THROTTLE_SECONDS};
use super::keys::digest;
use super::one_time::{link, mint, new_csrf, LinkPages};
use super::password_policy::password_problem;
use super::records::{insert_user, remove_user, save_user, UserRecord};
use super::{in_seconds, pages, AuthServer, Reply};
use crate::store::{Store, StoreResult};

/// Record kind of invitations (keyed by the token's digest).
const INVITATION: &str = "invitation";

/// Record kind of failed registration attempts per invitation.
const REGISTER_ATTEMPTS: &str = "register-attempts";

const GONE: &str = "This link has expired or was already used. Ask your clinic for a new invitation.";

const PAGES: LinkPages = LinkPages {
    kind: INVITATION,
    gone: GONE,
    foreign: "Registering is only possible from this server's own pages.",
    stale: "The form has expired. Open the link from your invitation again.",
};
const LOCKED: &str = "This link is locked after too many attempts. Ask your clinic for a new invitation.";
const WRONG_BIRTH_DATE: &str = "The date of birth does not match our records.";

/// A pending invitation.
#[derive(Debug, Serialize, Deserialize)]
struct Invitation {
    /// `Patient/1` or `RelatedPerson/3`: who registers.
    fhir_user: String,
    /// The birth date the person must confirm.
    birth_date: String,
    /// Ties the form to the invitation.
    csrf: String,
}

impl Invitation {
    /// The RelatedPerson id of a caregiver's invitation, which may be added to an account the
    /// caregiver has (for another patient).
    fn related_person(&self) -> Option<&str> {
        self.fhir_user.strip_prefix("RelatedPerson/")
    }

    /// The registration form for this invitation.
    fn form(token: &str, invitation: &Invitation, error: Option<&str>) -> String {
        pages::register(token, &invitation.csrf, invitation.related_person().is_some(), error)
    }
}

/// Why a resource cannot be invited.
#[derive(Debug, thiserror::Error)]
pub enum InviteError {
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// The birth date on record of the person an invitation for `fhir_user` (`Patient/id` or
/// `RelatedPerson/id`) registers; refused when the resource does not exist or has no birth date
/// (or the RelatedPerson names no patient). Which patients the account reaches is not stored
/// with the invitation: it follows the resource ([`super::proxy`]).
async fn invitee(store: &dyn Store, fhir_user: &str) -> Result<String, InviteError> {
    let refused = |message: String| InviteError::Refused(message);
    let (resource_type, id) = fhir_user
        .split_once('/')
        .filter(|(t, _)| matches!(*t, "Patient" | "RelatedPerson"))
        .ok_or_else(|| refused(format!("only a Patient or a RelatedPerson is invited, not '{fhir_user}'")))?;
    let stored = store.read(resource_type, id).await?.filter(|v| !v.deleted);
    let resource: Value = stored
        .and_then(|v| serde_json::from_slice(&v.body).ok())
        .ok_or_else(|| refused(format!("there is no {fhir_user}")))?;
    let birth_date = resource["birthDate"]
        .as_str()
        .ok_or_else(|| refused(format!("{fhir_user} has no birthDate for the person to confirm")))?;
    let names_patient =
        resource.pointer("/patient/reference").and_then(Value::as_str).is_some_and(|r| r.starts_with("Patient/"));
    if resource_type == "RelatedPerson" && !names_patient {
        return Err(refused(format!("{fhir_user} names no Patient")));
    }
    Ok(birth_date.to_string())
}

/// Whether `fhir_user` can be invited (see [`invite`]), without inviting.
pub async fn check_invitable(store: &dyn Store, fhir_user: &str) -> Result<(), InviteError> {
    invitee(store, fhir_user).await.map(|_| ())
}

/// Invites the person `fhir_user` (`Patient/id` or `RelatedPerson/id`, with a birth date on
/// record) for `ttl`; answers the token of the link, which is not stored.
pub async fn invite(store: &dyn Store, fhir_user: &str, ttl: time::Duration) -> Result<String, InviteError> {
    let birth_date = invitee(store, fhir_user).await?;
    let invitation = Invitation { fhir_user: fhir_user.to_string(), birth_date, csrf: new_csrf() };
    Ok(mint(store, INVITATION, &invitation, time::OffsetDateTime::now_utc() + ttl).await?)
}

/// The link an invitation's token opens, under the server's public base URL.
pub fn registration_link(base_url: &str, token: &str) -> String {
    link(base_url, "/auth/register", token)
}

impl AuthServer {
    /// `GET /auth/register?token=…`: the registration form, or why the link cannot be used.
    pub async fn register_page(&self, params: &Params) -> Reply {
        self.link_page(&PAGES, params, Invitation::form).await
    }

    /// `POST /auth/register`: checks the birth date, the username and the password; creates
    /// the account, uses up the invitation, and signs the person in.
    pub async fn register(&self, form: &Params, origin: Option<&str>) -> Reply {
        let (token, invitation) = match self.posted_link(&PAGES, form, origin, |i: &Invitation| &i.csrf).await {
            Ok(posted) => posted,
            Err(reply) => return reply,
        };
        let token = token.as_str();
        let again = |status: u16, message: &str| Reply::Page {
            status,
            html: Invitation::form(token, &invitation, Some(message)),
            set_cookie: None,
        };
        if param(form, "birth_date").map(str::trim) != Some(invitation.birth_date.as_str()) {
            return match self.count_failure(token).await {
                Ok(true) => error_page(429, LOCKED),
                Ok(false) => again(401, WRONG_BIRTH_DATE),
                Err(error) => server_error(error),
            };
        }
        if param(form, "existing") == Some("1") {
            return self.add_to_account(token, &invitation, form).await;
        }
        let username = param(form, "username").unwrap_or("").trim();
        if !is_username(username) {
            return again(400, "A username has 3 to 64 letters, digits, dots, dashes, underscores or @.");
        }
        let password = param(form, "password").unwrap_or("");
        if let Some(problem) = password_problem(password, username, &[&invitation.birth_date]) {
            return again(400, &problem);
        }
        let password_hash = match self.hash_new_password(password).await {
            Ok(hash) => hash,
            Err(reply) => return reply,
        };
        let record = UserRecord::new(username, password_hash, invitation.fhir_user.clone(), Vec::new());
        // Inserted, not replaced: a name taken by anyone, even by a registration at this very
        // moment, stays theirs.
        match insert_user(self.store.as_ref(), &record).await {
            Ok(true) => record.note_acting(None),
            Ok(false) => return again(409, "This username is taken. Choose another."),
            Err(error) => return server_error(error),
        }
        // Taking the invitation is what makes it one use: of two posts at once, one gets it;
        // the other's account is removed again.
        match self.store.auth_take(INVITATION, &digest(token)).await {
            Ok(Some(_)) => {}
            Ok(None) => {
                return match remove_user(self.store.as_ref(), username).await {
                    Ok(_) => error_page(410, GONE),
                    Err(error) => server_error(error),
                }
            }
            Err(error) => return server_error(error),
        }
        self.signed_in_page(username, 201, pages::registered(username)).await
    }

    /// A caregiver's invitation added to the account they have (the birth date was confirmed):
    /// the account's username and password are checked as a sign-in is (and throttled alike),
    /// the invitation is used up, and the account acts through this RelatedPerson too.
    async fn add_to_account(&self, token: &str, invitation: &Invitation, form: &Params) -> Reply {
        let again = |status: u16, message: &str| Reply::Page {
            status,
            html: Invitation::form(token, invitation, Some(message)),
            set_cookie: None,
        };
        let Some(related_person) = invitation.related_person() else {
            return again(400, "This invitation is for your own record: create an account for it.");
        };
        let (username, password) =
            (param(form, "username").unwrap_or("").trim(), param(form, "password").unwrap_or(""));
        let mut account = match self.check_credentials(username, password).await {
            Ok(Ok(account)) => {
                account.note_acting(None);
                let subject = invitation.fhir_user.clone();
                crate::audit::RequestTrail::note(|noted| noted.subject = Some(subject));
                account
            }
            Ok(Err(message)) => {
                return match self.count_failure(token).await {
                    Ok(true) => error_page(429, LOCKED),
                    Ok(false) => again(401, message),
                    Err(error) => server_error(error),
                }
            }
            Err(error) => return server_error(error),
        };
        if account.is_clinician() {
            return again(400, "A clinician's account cannot act for patients. Create an account for this.");
        }
        match self.store.auth_take(INVITATION, &digest(token)).await {
            Ok(Some(_)) => {}
            Ok(None) => return error_page(410, GONE),
            Err(error) => return server_error(error),
        }
        if !account.related_persons().iter().any(|id| id == related_person) {
            account.related.push(related_person.to_string());
            if let Err(error) = save_user(self.store.as_ref(), &account).await {
                return server_error(error);
            }
        }
        self.signed_in_page(&account.username, 200, pages::linked(&account.username)).await
    }

    /// `html`, with a new login session for `username`.
    async fn signed_in_page(&self, username: &str, status: u16, html: String) -> Reply {
        match self.start_session(username).await {
            Ok(set_cookie) => Reply::Page { status, html, set_cookie: Some(set_cookie) },
            Err(error) => server_error(error),
        }
    }

    /// Counts a failed attempt on an invitation; `true` when that locked it (removed).
    async fn count_failure(&self, token: &str) -> StoreResult<bool> {
        let key = digest(token);
        let failures = self.store.auth_increment(REGISTER_ATTEMPTS, &key, in_seconds(THROTTLE_SECONDS)).await?;
        if failures < MAX_LOGIN_ATTEMPTS {
            return Ok(false);
        }
        self.store.auth_delete(INVITATION, &key).await?;
        Ok(true)
    }
}

/// A username people can type: 3 to 64 letters, digits and `._-@`.
fn is_username(name: &str) -> bool {
    (3..=64).contains(&name.len()) && name.chars().all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c))
}
