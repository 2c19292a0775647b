//! The server's signing keys, kept in the database so that every node signs and verifies with
//! the same ones and they survive restarts. Each key has an RSA key pair, which signs
//! `id_token`s (RS256, published at `/auth/jwks`), and an HMAC secret, which signs access
//! tokens (HS256: only this server verifies them, and it does so on every request, where RSA
//! would cost tens of microseconds). The newest key signs; `hearth key rotate` adds a new one,
//! and each older key retires (leaves the database, the JWKS and every node's ring) once the
//! last token it signed has expired.

use std::sync::RwLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use rsa::pkcs1::{DecodeRsaPrivateKey, EncodeRsaPrivateKey};
use rsa::traits::PublicKeyParts;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use time::OffsetDateTime;

use crate::store::{Store, StoreError, StoreResult};

/// The record kind of signing keys.
const KIND: &str = "signing-key";

/// A key as stored.
#[derive(Serialize, Deserialize)]
struct StoredKey {
    /// PKCS#1 PEM of the RSA private key.
    rsa_pem: String,
    /// base64url of the HMAC secret.
    hmac_secret: String,
    /// Microseconds since the Unix epoch (keys created in the same second still sort in order).
    created: i64,
    /// When a newer key took over signing, plus the lifetime of the tokens this one signed
    /// (Unix seconds): from then on it verifies nothing and its record expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    retires: Option<i64>,
}

/// How long a key still verifies after a newer one took over: the lifetime of the tokens it
/// signed, and a minute for every node to start signing with the new key.
const RETIRE_AFTER_SECONDS: i64 = super::tokens::ACCESS_TOKEN_SECONDS + 60;

/// A key ready to use.
pub struct SigningKey {
    pub kid: String,
    pub created: i64,
    /// When it stops verifying (Unix seconds), once a newer key has taken over.
    pub retires: Option<i64>,
    pub hmac_secret: Vec<u8>,
    pub rsa_pem: String,
    rsa_public: rsa::RsaPublicKey,
}

impl SigningKey {
    /// The public half as a JWK (RS256, for signatures).
    pub fn public_jwk(&self) -> Value {
        json!({
            "kty": "RSA",
            "kid": self.kid,
            "use": "sig",
            "alg": "RS256",
            "n": URL_SAFE_NO_PAD.encode(self.rsa_public.n().to_bytes_be()),
            "e": URL_SAFE_NO_PAD.encode(self.rsa_public.e().to_bytes_be()),
        })
    }
}

/// The keys this node knows, newest last.
pub struct KeyRing {
    keys: RwLock<Vec<std::sync::Arc<SigningKey>>>,
}

impl KeyRing {
    /// Loads the stored keys, creating the first one if there is none.
    pub async fn load(store: &dyn Store) -> StoreResult<KeyRing> {
        let mut keys = read_keys(store).await?;
        if keys.is_empty() {
            add_key(store).await?;
            keys = read_keys(store).await?;
        }
        Ok(KeyRing { keys: RwLock::new(keys) })
    }

    /// The key that signs new tokens.
    pub fn current(&self) -> std::sync::Arc<SigningKey> {
        self.keys.read().expect("key ring lock").last().cloned().expect("at least one key")
    }

    /// The key with this id, if this node knows it and it has not retired.
    pub fn find(&self, kid: &str) -> Option<std::sync::Arc<SigningKey>> {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let keys = self.keys.read().expect("key ring lock");
        keys.iter().find(|k| k.kid == kid && k.retires.is_none_or(|retires| retires > now)).cloned()
    }

    /// Every key's public JWK.
    pub fn jwks(&self) -> Value {
        let keys: Vec<Value> = self.keys.read().expect("key ring lock").iter().map(|k| k.public_jwk()).collect();
        json!({ "keys": keys })
    }

    /// Reads the stored keys again (another node or `hearth key rotate` may have added one).
    pub async fn reload(&self, store: &dyn Store) -> StoreResult<()> {
        let keys = read_keys(store).await?;
        if !keys.is_empty() {
            *self.keys.write().expect("key ring lock") = keys;
        }
        Ok(())
    }
}

/// Creates and stores a new key, which becomes the signing key, and sets the retirement of the
/// keys it replaces; returns its id.
pub async fn add_key(store: &dyn Store) -> StoreResult<String> {
    let generated = tokio::task::spawn_blocking(generate).await.map_err(|e| StoreError::Busy(e.to_string()))??;
    let (kid, stored) = generated;
    let data = serde_json::to_string(&stored).expect("key serialises");
    store.auth_insert(KIND, &kid, &data, far_future()).await?;
    let retires = OffsetDateTime::now_utc() + time::Duration::seconds(RETIRE_AFTER_SECONDS);
    // Only keys created before this one: two nodes creating their first keys at once must not
    // retire each other's (the later one takes over).
    for (older, data) in store.auth_list(KIND).await? {
        let Ok(mut key) = serde_json::from_str::<StoredKey>(&data) else { continue };
        if (key.created, older.as_str()) < (stored.created, kid.as_str()) && key.retires.is_none() {
            key.retires = Some(retires.unix_timestamp());
            let data = serde_json::to_string(&key).expect("key serialises");
            store.auth_upsert(KIND, &older, &data, retires).await?;
        }
    }
    Ok(kid)
}

fn generate() -> StoreResult<(String, StoredKey)> {
    let private = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048)
        .map_err(|e| StoreError::Busy(format!("cannot generate an RSA key: {e}")))?;
    let rsa_pem = private
        .to_pkcs1_pem(rsa::pkcs8::LineEnding::LF)
        .map_err(|e| StoreError::Busy(format!("cannot encode the RSA key: {e}")))?
        .to_string();
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    let created = (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000) as i64;
    // Ids sort by creation time, so the newest key is the last in key order.
    let kid = format!("{created:014x}-{}", &random_token(6));
    Ok((kid, StoredKey { rsa_pem, hmac_secret: URL_SAFE_NO_PAD.encode(secret), created, retires: None }))
}

/// The keys that have not retired.
async fn read_keys(store: &dyn Store) -> StoreResult<Vec<std::sync::Arc<SigningKey>>> {
    let mut keys = Vec::new();
    for (kid, data) in store.auth_list(KIND).await? {
        let Ok(stored) = serde_json::from_str::<StoredKey>(&data) else {
            tracing::warn!(%kid, "unreadable signing key skipped");
            continue;
        };
        if stored.retires.is_some_and(|retires| retires <= OffsetDateTime::now_utc().unix_timestamp()) {
            continue;
        }
        let (Ok(private), Ok(hmac_secret)) =
            (rsa::RsaPrivateKey::from_pkcs1_pem(&stored.rsa_pem), URL_SAFE_NO_PAD.decode(&stored.hmac_secret))
        else {
            tracing::warn!(%kid, "unreadable signing key skipped");
            continue;
        };
        keys.push(std::sync::Arc::new(SigningKey {
            kid,
            created: stored.created,
            retires: stored.retires,
            hmac_secret,
            rsa_pem: stored.rsa_pem,
            rsa_public: private.to_public_key(),
        }));
    }
    keys.sort_by(|a, b| (a.created, &a.kid).cmp(&(b.created, &b.kid)));
    Ok(keys)
}

/// The expiry of records that do not expire.
pub fn far_future() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(253_402_300_799).expect("year 9999")
}

/// A random URL-safe token of `bytes` random bytes.
pub fn random_token(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buffer);
    URL_SAFE_NO_PAD.encode(buffer)
}

/// The SHA-256 of a secret, base64url: how codes, refresh tokens, sessions and client secrets
/// are looked up without storing them.
pub fn digest(secret: &str) -> String {
    use sha2::Digest;
    URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(secret.as_bytes()))
}
