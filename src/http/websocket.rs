//! The websocket endpoint of subscriptions ([`WEBSOCKET_PATH`]): the client binds with
//! `bind-with-token: <token>` (from `$get-ws-binding-token`), as often as it likes, and
//! receives notification Bundles as text frames. Browsers cannot put an Authorization header
//! on a websocket, so the binding token is the credential; a connection that binds nothing
//! within [`BIND_WITHIN`] is closed.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;

use super::AppState;
use crate::rest::websocket::WebsocketSession;
pub use crate::rest::websocket::WEBSOCKET_PATH;

/// How long a new connection may take to bind.
const BIND_WITHIN: Duration = Duration::from_secs(30);

/// The largest message a client sends (a binding line).
const MAX_MESSAGE: usize = 4096;

/// Close codes of RFC 6455.
const NORMAL: u16 = 1000;
const UNSUPPORTED: u16 = 1003;
const POLICY: u16 = 1008;

pub(super) async fn upgrade(State(state): State<Arc<AppState>>, upgrade: WebSocketUpgrade) -> Response {
    let session = state.service.websocket_session();
    upgrade.max_message_size(MAX_MESSAGE).on_upgrade(move |socket| serve(socket, session))
}

async fn serve(mut socket: WebSocket, mut session: WebsocketSession) {
    let bind_deadline = tokio::time::Instant::now() + BIND_WITHIN;
    let mut was_bound = false;
    loop {
        let frames = tokio::select! {
            message = socket.recv() => match message {
                Some(Ok(Message::Text(text))) => match bind_token(&text) {
                    Some(token) => match session.bind(token).await {
                        Ok(frames) => frames,
                        Err(reason) => return close(socket, POLICY, &reason).await,
                    },
                    None => return close(socket, UNSUPPORTED, "expected 'bind-with-token: <token>'").await,
                },
                Some(Ok(Message::Binary(_))) => {
                    return close(socket, UNSUPPORTED, "expected 'bind-with-token: <token>'").await
                }
                // Pings are answered by the library; pongs need nothing.
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(Message::Close(_)) | Err(_)) | None => return,
            },
            _ = session.wait(), if !session.is_empty() => session.frames().await,
            _ = tokio::time::sleep_until(bind_deadline), if !was_bound => {
                return close(socket, POLICY, "nothing was bound in time").await
            }
        };
        was_bound |= !session.is_empty();
        for frame in frames {
            if socket.send(Message::Text(frame.into())).await.is_err() {
                return;
            }
        }
        if was_bound && session.is_empty() {
            return close(socket, NORMAL, "the bound subscriptions ended").await;
        }
    }
}

/// The token of a `bind-with-token: <token>` message.
fn bind_token(message: &str) -> Option<&str> {
    let token = message.trim().strip_prefix("bind-with-token")?.trim_start().strip_prefix(':')?.trim();
    (!token.is_empty()).then_some(token)
}

async fn close(mut socket: WebSocket, code: u16, reason: &str) {
    let frame = CloseFrame { code, reason: reason.into() };
    let _ = socket.send(Message::Close(Some(frame))).await;
}

#[cfg(test)]
mod tests {
    use super::bind_token;

    #[test]
    fn reads_the_binding_line() {
        assert_eq!(bind_token("bind-with-token: abc"), Some("abc"));
        assert_eq!(bind_token("bind-with-token:abc\n"), Some("abc"));
        assert_eq!(bind_token("bind-with-token: "), None);
        assert_eq!(bind_token("bind abc"), None);
    }
}
