//! The public keys of clients registered with a `jwks_uri`, fetched when first needed and kept
//! for a few minutes: a backend service asking for a token every second must not cost a fetch
//! of its key set each time. An assertion naming a key the kept set lacks (the client rotated
//! its keys) fetches again, at most once a second per URL, so that made-up key ids cannot turn
//! this server into a stream of requests to the client; a failed fetch is not repeated within
//! that second either. Concurrent requests that need a fetch of one URL wait for a single one.
//! Redirects are not followed and sets over 64 KiB are refused.

use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;

use crate::bounded::BoundedMap;

/// How long a fetched key set is used before it is fetched again.
const MAX_AGE: Duration = Duration::from_secs(300);

/// The least time between two fetches of one URL for an unknown key id.
const REFETCH_GAP: Duration = Duration::from_secs(1);

/// How long a fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// How many clients' key sets are kept.
const KEPT: usize = 1_000;

/// The largest key set accepted.
const MAX_BYTES: usize = 64 * 1024;

/// Why a client's keys are not available.
#[derive(Debug, thiserror::Error)]
pub(super) enum JwksError {
    #[error("cannot fetch the client's JWKS: {0}")]
    Fetch(#[from] reqwest::Error),
    #[error("the client's JWKS is not a valid JWK Set")]
    Invalid,
    #[error("the client's JWKS is larger than 64 KiB")]
    TooLarge,
    #[error("the client's JWKS could not be fetched a moment ago")]
    RecentlyFailed,
}

/// The outcome of the last fetch of a URL: a key set, or a failure (not fetched again for a
/// moment, so that failing URLs cannot be made to take a fetch per request).
struct Fetched {
    keys: Option<Arc<JwkSet>>,
    at: Instant,
}

/// Fetched key sets by URL.
pub(super) struct ClientJwks {
    http: reqwest::Client,
    kept: BoundedMap<String, Arc<Fetched>>,
    /// Held while a URL is fetched.
    fetching: BoundedMap<String, Arc<tokio::sync::Mutex<()>>>,
}

impl ClientJwks {
    pub(super) fn new() -> Self {
        let http = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        ClientJwks { http, kept: BoundedMap::new(KEPT), fetching: BoundedMap::new(KEPT) }
    }

    /// The key set at `uri` that should hold key `kid`: the kept one while it is fresh and has
    /// the key, else a new fetch (throttled for unknown keys).
    pub(super) async fn keys(&self, uri: &str, kid: &str) -> Result<Arc<JwkSet>, JwksError> {
        if let Some(answer) = self.kept_answer(uri, kid) {
            return answer;
        }
        let fetching = self.fetching.get_or_insert_with(uri.to_string(), Default::default);
        let _only_fetch = fetching.lock().await;
        // A fetch that finished while this one waited answers it too.
        if let Some(answer) = self.kept_answer(uri, kid) {
            return answer;
        }
        let fetched = self.fetch(uri).await;
        let keys = fetched.as_ref().ok().cloned();
        self.kept.insert(uri.to_string(), Arc::new(Fetched { keys, at: Instant::now() }));
        fetched
    }

    /// What the kept outcome of the last fetch answers, unless `uri` needs fetching.
    fn kept_answer(&self, uri: &str, kid: &str) -> Option<Result<Arc<JwkSet>, JwksError>> {
        let kept = self.kept.get(uri)?;
        let age = kept.at.elapsed();
        match &kept.keys {
            Some(keys) if age < MAX_AGE && (keys.find(kid).is_some() || age < REFETCH_GAP) => Some(Ok(keys.clone())),
            None if age < REFETCH_GAP => Some(Err(JwksError::RecentlyFailed)),
            _ => None,
        }
    }

    async fn fetch(&self, uri: &str) -> Result<Arc<JwkSet>, JwksError> {
        let mut response = self.http.get(uri).send().await?.error_for_status()?;
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await? {
            if body.len() + chunk.len() > MAX_BYTES {
                return Err(JwksError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Arc::new(serde_json::from_slice(&body).map_err(|_| JwksError::Invalid)?))
    }
}
