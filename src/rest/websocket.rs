//! The websocket channel of topic-based subscriptions (Subscriptions Backport IG, ADR 16).
//! `$get-ws-binding-token` gives a caller who may read websocket Subscriptions a short-lived,
//! single-use token (stored only as its digest, with the caller's token claims); a client
//! connects to [`WEBSOCKET_PATH`] and sends `bind-with-token: <token>`. From then on the
//! session sends each bound subscription's handshake, its events recorded after the binding
//! (`$events` replays older ones), and its heartbeats, each as a notification Bundle in one
//! text frame.
//!
//! Delivery workers never send a websocket subscription's events: the node a client is
//! connected to reads them, as the binder may read them now (the same policy as a read), and
//! a binder whose authorization has ended gets nothing more.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;

use super::notify::notification_body;
use super::FhirService;
use crate::auth::keys::{digest, random_token};
use crate::auth::tokens::AccessClaims;
use crate::auth::Access;
use crate::model::{FhirError, Issue, IssueCode};
use crate::subscriptions::notification::{Kind, Status};
use crate::subscriptions::{Channel, SubscriptionRequest};

/// Where websocket clients connect, under the server URL.
pub const WEBSOCKET_PATH: &str = "/subscriptions/websocket";

/// The kind of the binding tokens' records in the auth store.
const BINDING: &str = "ws-binding";

/// How long a binding token may wait for its connection.
const TOKEN_LIFE: time::Duration = time::Duration::minutes(2);

/// How often a session looks for events recorded by other nodes (this node's writes wake it).
const POLL: Duration = Duration::from_millis(500);

/// A binding token, as `$get-ws-binding-token` returns it.
pub struct BindingToken {
    pub token: String,
    pub expires: OffsetDateTime,
    pub websocket_url: String,
}

/// What a binding token stands for.
#[derive(Serialize, Deserialize)]
struct Binding {
    subscriptions: Vec<String>,
    /// Whose access the frames pass: the claims of the token that asked for it (`None`
    /// without authorization).
    claims: Option<AccessClaims>,
}

/// One subscription bound to a session.
struct Bound {
    id: String,
    claims: Option<Arc<AccessClaims>>,
    /// The number of the newest event sent (or recorded before the binding).
    sent: i64,
    last_frame: Instant,
    heartbeat: Option<Duration>,
    /// Whether its handshake is still to be sent (it is bound while `requested`).
    handshake_due: bool,
}

/// The subscriptions bound to one websocket connection.
pub struct WebsocketSession {
    service: FhirService,
    bound: Vec<Bound>,
    woken: tokio::sync::watch::Receiver<u64>,
}

impl FhirService {
    /// A single-use token that binds a websocket connection to `subscriptions`, which the
    /// caller has read (422 for one that is not a websocket subscription or is off).
    pub(crate) async fn ws_binding_token(
        &self,
        access: &Access,
        subscriptions: &[(String, Value)],
    ) -> Result<BindingToken, FhirError> {
        let refused = |message: String| FhirError::unprocessable(vec![Issue::error(IssueCode::BusinessRule, message)]);
        for (id, resource) in subscriptions {
            let channel = resource["channel"]["type"].as_str().unwrap_or_default();
            if channel != "websocket" {
                return Err(refused(format!(
                    "Subscription/{id} has channel type '{channel}': a binding token is for websocket subscriptions"
                )));
            }
            if resource["status"] == "off" {
                return Err(refused(format!("Subscription/{id} is off")));
            }
        }
        let claims = match access {
            // A grant always carries its claims; one without them must not bind as no one.
            Access::Token(grant) => Some(grant.claims.as_deref().cloned().ok_or_else(FhirError::internal)?),
            Access::Open => None,
        };
        let binding = Binding { subscriptions: subscriptions.iter().map(|(id, _)| id.clone()).collect(), claims };
        let token = random_token(32);
        let expires = OffsetDateTime::now_utc() + TOKEN_LIFE;
        let data = serde_json::to_string(&binding).map_err(|_| FhirError::internal())?;
        self.store.auth_insert(BINDING, &digest(&token), &data, expires).await.map_err(super::store_error)?;
        Ok(BindingToken { token, expires, websocket_url: self.websocket_url() })
    }

    /// The URL websocket clients connect to: the server's, ws or wss.
    fn websocket_url(&self) -> String {
        let server = self.config.server_url();
        let server = match server.strip_prefix("https://") {
            Some(rest) => format!("wss://{rest}"),
            None => format!("ws://{}", server.strip_prefix("http://").unwrap_or(server)),
        };
        format!("{server}{WEBSOCKET_PATH}")
    }

    /// A session for a new websocket connection, bound to nothing yet.
    pub fn websocket_session(&self) -> WebsocketSession {
        WebsocketSession { service: self.clone(), bound: Vec::new(), woken: self.deliveries_due.sessions.subscribe() }
    }
}

impl WebsocketSession {
    /// Binds the subscriptions of a binding token (used up by this); the handshakes of those
    /// already active. An error says why the token binds nothing.
    pub async fn bind(&mut self, token: &str) -> Result<Vec<String>, String> {
        const UNKNOWN: &str = "the binding token is unknown, used or expired";
        let store = self.service.store.as_ref();
        let data = store.auth_take(BINDING, &digest(token)).await.map_err(|_| "the server cannot bind now")?;
        let binding: Binding = serde_json::from_str(&data.ok_or(UNKNOWN)?).map_err(|_| UNKNOWN)?;
        let claims = binding.claims.map(Arc::new);
        if self.access(&claims).await?.is_none() {
            return Err(UNKNOWN.into());
        }
        for id in binding.subscriptions {
            let delivery = store.delivery(&id).await.map_err(|_| "the server cannot bind now")?;
            let sent = delivery.map_or(0, |d| d.events);
            self.bound.retain(|bound| bound.id != id);
            let bound = Bound {
                id,
                claims: claims.clone(),
                sent,
                last_frame: Instant::now(),
                heartbeat: None,
                handshake_due: true,
            };
            self.bound.push(bound);
        }
        Ok(self.frames().await)
    }

    /// Whether anything is bound.
    pub fn is_empty(&self) -> bool {
        self.bound.is_empty()
    }

    /// Waits until there may be something to send: this node recorded events, the poll for
    /// other nodes' events, or a heartbeat due.
    pub async fn wait(&mut self) {
        let now = Instant::now();
        let heartbeat_due = self
            .bound
            .iter()
            .filter_map(|b| b.heartbeat.map(|period| b.last_frame + period))
            .min()
            .unwrap_or(now + POLL);
        let until = heartbeat_due.min(now + POLL);
        let _ = tokio::time::timeout_at(until.into(), self.woken.changed()).await;
    }

    /// The frames due now: handshakes, events, heartbeats. A subscription that is gone or
    /// off, or whose binder's authorization ended, is unbound.
    pub async fn frames(&mut self) -> Vec<String> {
        let mut frames = Vec::new();
        let mut bound = std::mem::take(&mut self.bound);
        let mut kept = Vec::with_capacity(bound.len());
        for mut subscription in bound.drain(..) {
            match self.frames_of(&mut subscription).await {
                Ok(Some(mut due)) => {
                    if !due.is_empty() {
                        subscription.last_frame = Instant::now();
                    }
                    frames.append(&mut due);
                    kept.push(subscription);
                }
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(%error, subscription = %subscription.id, "cannot read a websocket subscription's events");
                    kept.push(subscription);
                }
            }
        }
        self.bound = kept;
        frames
    }

    /// The frames due for one subscription; `None` when it is to be unbound.
    async fn frames_of(&self, bound: &mut Bound) -> Result<Option<Vec<String>>, String> {
        let service = &self.service;
        let Some(delivery) = service.store.delivery(&bound.id).await.map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        let status = match delivery.status.as_str() {
            "off" => return Ok(None),
            // Activated by a delivery worker in a moment; its handshake waits for it.
            "requested" => return Ok(Some(Vec::new())),
            "error" => "error",
            _ => "active",
        };
        let heartbeat_due = bound.heartbeat.is_some_and(|period| bound.last_frame.elapsed() >= period);
        if !bound.handshake_due && delivery.events <= bound.sent && !heartbeat_due {
            return Ok(Some(Vec::new()));
        }
        let Some(access) = self.access(&bound.claims).await? else {
            return Ok(None);
        };
        let stored = service.store.read("Subscription", &bound.id).await.map_err(|e| e.to_string())?;
        let Some(resource) = stored.filter(|s| !s.deleted).and_then(|s| serde_json::from_slice::<Value>(&s.body).ok())
        else {
            return Ok(None);
        };
        let request = match service.subscription_request(&resource) {
            Ok(request) if request.channel == Channel::Websocket => request,
            _ => return Ok(None),
        };
        bound.heartbeat = (request.heartbeat > 0).then(|| Duration::from_secs(request.heartbeat));
        let status = |kind, events_since_start| Status {
            base_url: &service.config.base_url,
            subscription_id: &bound.id,
            topic: &request.topic,
            status,
            kind,
            events_since_start,
            error: None,
        };
        let mut frames = Vec::new();
        if bound.handshake_due {
            frames.push(frame(&request, &status(Kind::Handshake, bound.sent), &[])?);
            bound.handshake_due = false;
        }
        while delivery.events > bound.sent {
            let last = delivery.events.min(bound.sent + request.max_count as i64);
            let stored = service
                .store
                .subscription_events(&bound.id, bound.sent + 1, last, request.max_count)
                .await
                .map_err(|e| e.to_string())?;
            let events = service.shown_events(&access, &stored, request.payload).await.map_err(|e| e.to_string())?;
            frames.push(frame(&request, &status(Kind::EventNotification, last), &events)?);
            bound.sent = last;
        }
        if frames.is_empty() && heartbeat_due {
            frames.push(frame(&request, &status(Kind::Heartbeat, delivery.events), &[])?);
        }
        Ok(Some(frames))
    }

    /// The access of a binder's claims as it stands now; `None` when it has ended.
    async fn access(&self, claims: &Option<Arc<AccessClaims>>) -> Result<Option<Access>, String> {
        match claims {
            None => Ok(Some(Access::Open)),
            Some(claims) => {
                crate::auth::kept_access(self.service.store.as_ref(), claims).await.map_err(|e| e.to_string())
            }
        }
    }
}

/// One notification as a text frame.
fn frame(
    request: &SubscriptionRequest,
    status: &Status<'_>,
    events: &[crate::subscriptions::notification::Event],
) -> Result<String, String> {
    String::from_utf8(notification_body(request, status, events)?).map_err(|e| e.to_string())
}
