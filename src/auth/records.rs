//! Registered clients and portal users, and how they are stored (`auth_objects` kinds `client`
//! and `user`). Client secrets are high-entropy and stored as SHA-256 digests; user passwords
//! are low-entropy and stored as argon2id hashes.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::keys::{digest, far_future};
use crate::store::{Store, StoreResult};

const CLIENT: &str = "client";
const USER: &str = "user";

/// How a client authenticates at the token endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientCredentials {
    /// A public client (a browser or mobile app): `client_id` only, PKCE protects the code.
    Public,
    /// `client_secret_basic`, the secret stored as its SHA-256 digest.
    Secret { digest: String },
    /// `private_key_jwt` with keys from a JWKS registered inline (JSON text).
    Jwks { jwks: String },
    /// `private_key_jwt` with keys fetched from the client's JWKS URL.
    JwksUri { uri: String },
}

/// A registered SMART client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientRecord {
    pub client_id: String,
    pub name: Option<String>,
    pub credentials: ClientCredentials,
    pub redirect_uris: Vec<String>,
    /// The scopes the client may be granted; `None` for any.
    pub scope: Option<String>,
    pub launch_uri: Option<String>,
}

impl ClientRecord {
    /// Whether the client is confidential (authenticates with a secret or a key).
    pub fn is_confidential(&self) -> bool {
        self.credentials != ClientCredentials::Public
    }

    /// Whether `secret` is this client's secret.
    pub fn secret_matches(&self, secret: &str) -> bool {
        matches!(&self.credentials, ClientCredentials::Secret { digest: stored } if constant_time_eq(stored, &digest(secret)))
    }
}

/// A portal user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    pub username: String,
    pub password_hash: String,
    /// The user's FHIR resource: `Patient/1`, `Practitioner/7`, `RelatedPerson/3`.
    pub fhir_user: String,
    /// Patients (ids) the operator linked the account to (`hearth user add --patient`); they
    /// do not follow the data. A Patient user's own id may be among them.
    pub patients: Vec<String>,
    /// RelatedPersons (ids) the account acts through besides its `fhir_user` (a caregiver of
    /// several patients); see [`super::proxy`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub related: Vec<String>,
    /// A disabled account signs in to nothing, and its tokens stop.
    #[serde(default)]
    pub disabled: bool,
    /// Which generation of the account's tokens is live: its access tokens carry it, and
    /// signing the account out everywhere ends the generation ([`super::sign_out_everywhere`]).
    #[serde(default)]
    pub epoch: u32,
}

impl UserRecord {
    /// A new, enabled account. Its token generation starts at random, so that an account
    /// added again under a name used before does not start with a generation that was ended.
    pub fn new(username: &str, password_hash: String, fhir_user: String, patients: Vec<String>) -> Self {
        let epoch = rand::random::<u32>() / 2;
        UserRecord {
            username: username.to_string(),
            password_hash,
            fhir_user,
            patients,
            related: Vec::new(),
            disabled: false,
            epoch,
        }
    }

    /// The RelatedPersons (ids) the account acts through: its own resource if it is one, and
    /// those linked since.
    pub fn related_persons(&self) -> Vec<String> {
        let own = self.fhir_user.strip_prefix("RelatedPerson/").map(str::to_string);
        own.into_iter().chain(self.related.iter().cloned()).collect()
    }

    /// Whether the user is a clinician, who reaches every patient.
    pub fn is_clinician(&self) -> bool {
        matches!(self.fhir_user.split_once('/'), Some(("Practitioner" | "PractitionerRole", _)))
    }
}

/// How expensive password hashes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasswordCost {
    /// argon2id with m = 19 MiB, t = 2, p = 1 (OWASP's recommendation).
    Standard,
    /// The smallest argon2id parameters, for tests only.
    Cheap,
}

/// Hashes a password with argon2id and a random salt.
pub fn hash_password(password: &str, cost: PasswordCost) -> String {
    let params = match cost {
        PasswordCost::Standard => Params::new(19_456, 2, 1, None),
        PasswordCost::Cheap => Params::new(Params::MIN_M_COST, 1, 1, None),
    }
    .expect("valid argon2 parameters");
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 hashing")
        .to_string()
}

/// Whether `password` matches an argon2 hash (its parameters come from the hash).
pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|parsed| Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
}

fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Stores a record that does not expire (replacing one with the same key).
async fn save<T: Serialize>(store: &dyn Store, kind: &str, key: &str, record: &T) -> StoreResult<()> {
    let data = serde_json::to_string(record).expect("records serialise");
    store.auth_upsert(kind, key, &data, far_future()).await
}

/// The record under `key`, if there is a readable one.
async fn load<T: DeserializeOwned>(store: &dyn Store, kind: &str, key: &str) -> StoreResult<Option<T>> {
    Ok(store.auth_get(kind, key).await?.and_then(|data| serde_json::from_str(&data).ok()))
}

/// Every readable record of a kind.
async fn load_all<T: DeserializeOwned>(store: &dyn Store, kind: &str) -> StoreResult<Vec<T>> {
    Ok(store.auth_list(kind).await?.iter().filter_map(|(_, data)| serde_json::from_str(data).ok()).collect())
}

/// Stores a client (replacing one with the same id).
pub async fn save_client(store: &dyn Store, client: &ClientRecord) -> StoreResult<()> {
    save(store, CLIENT, &client.client_id, client).await
}

/// A registered client.
pub async fn client(store: &dyn Store, client_id: &str) -> StoreResult<Option<ClientRecord>> {
    load(store, CLIENT, client_id).await
}

/// Every registered client.
pub async fn clients(store: &dyn Store) -> StoreResult<Vec<ClientRecord>> {
    load_all(store, CLIENT).await
}

/// Removes a client; `false` when there was none.
pub async fn remove_client(store: &dyn Store, client_id: &str) -> StoreResult<bool> {
    store.auth_delete(CLIENT, client_id).await
}

/// Stores a user (replacing one with the same name).
pub async fn save_user(store: &dyn Store, user: &UserRecord) -> StoreResult<()> {
    save(store, USER, &user.username, user).await
}

/// Stores a new user; `false` (nothing stored) when the name is taken, also by a user stored
/// at the same moment.
pub async fn insert_user(store: &dyn Store, user: &UserRecord) -> StoreResult<bool> {
    let data = serde_json::to_string(user).expect("records serialise");
    store.auth_insert(USER, &user.username, &data, far_future()).await
}

/// A user by name.
pub async fn user(store: &dyn Store, username: &str) -> StoreResult<Option<UserRecord>> {
    load(store, USER, username).await
}

/// Every user.
pub async fn users(store: &dyn Store) -> StoreResult<Vec<UserRecord>> {
    load_all(store, USER).await
}

/// Removes a user; `false` when there was none.
pub async fn remove_user(store: &dyn Store, username: &str) -> StoreResult<bool> {
    store.auth_delete(USER, username).await
}

impl UserRecord {
    /// Tells the audit of the request being served that this user acts in it (through
    /// `client_id`'s app, when known).
    pub(super) fn note_acting(&self, client_id: Option<&str>) {
        crate::audit::RequestTrail::note_who(crate::audit::Who {
            user: Some(self.fhir_user.clone()),
            username: Some(self.username.clone()),
            client_id: client_id.map(str::to_string),
            ..Default::default()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_and_verify() {
        let hash = hash_password("correct horse", PasswordCost::Cheap);
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &hash));
        assert!(!verify_password("wrong horse", &hash));
        assert!(!verify_password("correct horse", "not a hash"));
    }

    #[test]
    fn secrets_compare_by_digest() {
        let client = ClientRecord {
            client_id: "c".into(),
            name: None,
            credentials: ClientCredentials::Secret { digest: digest("s3cret") },
            redirect_uris: vec![],
            scope: None,
            launch_uri: None,
        };
        assert!(client.secret_matches("s3cret") && !client.secret_matches("s3cre") && client.is_confidential());
        let round_trip: ClientRecord = serde_json::from_str(&serde_json::to_string(&client).unwrap()).unwrap();
        assert_eq!(round_trip, client);
    }
}
