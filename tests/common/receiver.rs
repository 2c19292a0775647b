//! A rest-hook receiver on 127.0.0.1: records every notification POSTed to it (headers and
//! body), and answers with a status the test chooses (to play an endpoint that is down).

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::Value;

/// One notification as received.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: Value,
}

impl Received {
    /// The SubscriptionStatus parameter `name`'s value (valueString, valueCode…).
    pub fn status(&self, name: &str) -> Value {
        let parameters = self.body["entry"][0]["resource"]["parameter"].as_array().cloned().unwrap_or_default();
        let parameter = parameters.into_iter().find(|p| p["name"] == name).unwrap_or(Value::Null);
        parameter
            .as_object()
            .and_then(|p| p.iter().find(|(k, _)| k.starts_with("value")).map(|(_, v)| v.clone()))
            .unwrap_or(Value::Null)
    }

    /// The notification type (`handshake`, `event-notification`…).
    pub fn kind(&self) -> String {
        self.status("type").as_str().unwrap_or_default().to_string()
    }

    /// The `notification-event` parameters.
    pub fn events(&self) -> Vec<Value> {
        let parameters = self.body["entry"][0]["resource"]["parameter"].as_array().cloned().unwrap_or_default();
        parameters.into_iter().filter(|p| p["name"] == "notification-event").collect()
    }
}

#[derive(Clone)]
struct Shared {
    received: Arc<Mutex<Vec<Received>>>,
    answer: Arc<AtomicU16>,
    refused: Arc<std::sync::atomic::AtomicUsize>,
}

/// A running receiver.
pub struct Receiver {
    /// Where to send notifications.
    pub url: String,
    shared: Shared,
}

async fn receive(State(shared): State<Shared>, headers: HeaderMap, body: String) -> StatusCode {
    let status = StatusCode::from_u16(shared.answer.load(Ordering::SeqCst)).unwrap_or(StatusCode::OK);
    if status.is_success() {
        let body = serde_json::from_str(&body).unwrap_or(Value::String(body));
        shared.received.lock().unwrap().push(Received { headers, body });
    } else {
        shared.refused.fetch_add(1, Ordering::SeqCst);
    }
    status
}

impl Receiver {
    pub async fn start() -> Receiver {
        let shared =
            Shared { received: Arc::default(), answer: Arc::new(AtomicU16::new(200)), refused: Arc::default() };
        let app = axum::Router::new().route("/hook", axum::routing::post(receive)).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver { url, shared }
    }

    /// Answers every notification from now on with `status` (and records only successes).
    pub fn answer(&self, status: u16) {
        self.shared.answer.store(status, Ordering::SeqCst);
    }

    /// How many notifications were answered with a failure.
    pub fn refused(&self) -> usize {
        self.shared.refused.load(Ordering::SeqCst)
    }

    /// What was received so far.
    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().unwrap().clone()
    }

    /// Waits until the notifications received carry `count` events in all (however the server
    /// batched them); answers every notification received.
    pub async fn wait_for_events(&self, count: usize, within: Duration) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let received = self.received();
            if received.iter().map(|r| r.events().len()).sum::<usize>() >= count {
                return received;
            }
            assert!(tokio::time::Instant::now() < deadline, "fewer than {count} events: {received:#?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until `count` notifications were received (panics after `within`).
    pub async fn wait_for(&self, count: usize, within: Duration) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let received = self.received();
            if received.len() >= count {
                return received;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} notifications, not {count}: {received:#?}",
                received.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
