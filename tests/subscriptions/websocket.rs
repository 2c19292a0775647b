//! The websocket channel: a binding token from `$get-ws-binding-token`, `bind-with-token`, then
//! the handshake, the events recorded since and heartbeats as text frames, as the binder may
//! read them.

use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use super::*;

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A websocket Subscription to a built-in topic, with a heartbeat period (0: none).
fn websocket_subscription(topic: &str, filters: &[&str], content: &str, heartbeat: u32) -> Value {
    let mut resource = subscription(topic, filters, "", content);
    let channel = resource["channel"].as_object_mut().unwrap();
    channel.insert("type".into(), json!("websocket"));
    channel.remove("endpoint");
    channel.remove("header");
    if heartbeat > 0 {
        channel.insert(
            "extension".into(),
            json!([{"url": format!("{BACKPORT}backport-heartbeat-period"), "valueUnsignedInt": heartbeat}]),
        );
    }
    resource
}

/// The value of an output parameter.
fn output<'a>(parameters: &'a Value, name: &str) -> Vec<&'a Value> {
    parameters["parameter"].as_array().unwrap().iter().filter(|p| p["name"] == name).collect()
}

/// Connects to the binding's websocket URL and binds with its token.
async fn bind(binding: &Value) -> Socket {
    let url = output(binding, "websocket-url")[0]["valueUrl"].as_str().unwrap();
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.expect("the websocket connects");
    let token = output(binding, "token")[0]["valueString"].as_str().unwrap();
    socket.send(Message::text(format!("bind-with-token: {token}"))).await.unwrap();
    socket
}

/// The next notification Bundle on the socket.
async fn next_bundle(socket: &mut Socket) -> Value {
    loop {
        let message = tokio::time::timeout(WAIT, socket.next()).await.expect("a frame in time");
        match message.expect("the socket is open").expect("a frame") {
            Message::Text(text) => return serde_json::from_str(text.as_str()).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// How the server closed the socket.
async fn closed_with(socket: &mut Socket) -> CloseCode {
    let message = tokio::time::timeout(WAIT, socket.next()).await.expect("closed in time");
    match message {
        Some(Ok(Message::Close(Some(frame)))) => frame.code,
        other => panic!("expected a close frame, got {other:?}"),
    }
}

/// A notification's SubscriptionStatus value.
fn status_value(bundle: &Value, name: &str) -> Value {
    let parameters = bundle["entry"][0]["resource"]["parameter"].as_array().unwrap();
    let parameter = parameters.iter().find(|p| p["name"] == name).unwrap();
    parameter.as_object().unwrap().iter().find(|(k, _)| k.starts_with("value")).unwrap().1.clone()
}

/// The event numbers of a notification.
fn event_numbers(bundle: &Value) -> Vec<String> {
    let parameters = bundle["entry"][0]["resource"]["parameter"].as_array().unwrap();
    parameters
        .iter()
        .filter(|p| p["name"] == "notification-event")
        .map(|e| e["part"][0]["valueString"].as_str().unwrap().to_string())
        .collect()
}

async fn websockets_get_the_handshake_events_and_heartbeats(db: Db) {
    let server = TestServer::start(db).await;
    let patient = server.create(&json!({"resourceType": "Patient"})).await;
    let filter = format!("Observation?patient=Patient/{patient}");
    let resource = websocket_subscription("result-final", &[&filter], "full-resource", 1);
    let response = server.post("Subscription", &resource).await;
    assert_eq!(response.status(), 201);
    let id = body(response).await["id"].as_str().unwrap().to_string();
    wait_status(&server, &id, "active").await;
    let before = server.create(&observation(&patient, "final")).await;

    let response =
        server.post(&format!("Subscription/{id}/$get-ws-binding-token"), &json!({"resourceType": "Parameters"})).await;
    assert_eq!(response.status(), 200);
    let binding = body(response).await;
    assert_eq!(output(&binding, "subscription")[0]["valueString"], format!("Subscription/{id}"));
    assert!(output(&binding, "websocket-url")[0]["valueUrl"].as_str().unwrap().starts_with("ws://127.0.0.1:"));
    assert!(output(&binding, "expiration")[0]["valueDateTime"].is_string());
    let mut socket = bind(&binding).await;
    let handshake = next_bundle(&mut socket).await;
    assert_eq!(handshake["type"], "history");
    assert_eq!(status_value(&handshake, "type"), "handshake");
    assert_eq!(status_value(&handshake, "events-since-subscription-start"), "1", "the result before counts");

    let after = server.create(&observation(&patient, "final")).await;
    let mut notification = next_bundle(&mut socket).await;
    while status_value(&notification, "type") == "heartbeat" {
        notification = next_bundle(&mut socket).await;
    }
    assert_eq!(status_value(&notification, "type"), "event-notification");
    assert_eq!(event_numbers(&notification), ["2"], "the events since the binding: {notification}");
    assert_eq!(notification["entry"][1]["resource"]["id"], after, "full-resource");
    assert!(!notification.to_string().contains(&before), "older events are for $events");
    let heartbeat = next_bundle(&mut socket).await;
    assert_eq!(status_value(&heartbeat, "type"), "heartbeat");

    // The token was used up; a second connection with it binds nothing.
    let mut again = bind(&binding).await;
    assert_eq!(closed_with(&mut again).await, CloseCode::Policy);
    let (mut garbage, _) =
        tokio_tungstenite::connect_async(output(&binding, "websocket-url")[0]["valueUrl"].as_str().unwrap())
            .await
            .unwrap();
    garbage.send(Message::text("subscribe me")).await.unwrap();
    assert_eq!(closed_with(&mut garbage).await, CloseCode::Unsupported);

    // Turning it off ends the binding.
    let mut off = wait_status(&server, &id, "active").await;
    off["status"] = json!("off");
    let response = server.put(&format!("Subscription/{id}"), &off).await;
    assert_eq!(response.status(), 200, "{}", body(response).await);
    loop {
        match tokio::time::timeout(WAIT, socket.next()).await.expect("closed in time") {
            Some(Ok(Message::Close(Some(frame)))) => break assert_eq!(frame.code, CloseCode::Normal),
            Some(Ok(Message::Text(_) | Message::Ping(_))) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

async fn websocket_frames_pass_the_binders_access(db: Db) {
    let server = smart_server(db).await;
    let smart = Smart::new(&server).await;
    let admin = smart.admin_token().await;
    let Patients { ana, luis, ana_token, luis_token } = two_patients(&smart, &admin).await;
    let mut ids = Vec::new();
    for (patient, token) in [(&ana, &ana_token), (&luis, &luis_token)] {
        let filter = format!("Observation?patient=Patient/{patient}");
        let resource = websocket_subscription("result-final", &[&filter], "full-resource", 0);
        let response = smart.send(Method::POST, "Subscription", token, &resource).await;
        assert_eq!(response.status(), 201);
        ids.push(body(response).await["id"].as_str().unwrap().to_string());
    }
    let rest_hook = subscription(
        "result-final",
        &[&format!("Observation?patient=Patient/{ana}")],
        "http://127.0.0.1:9/hook",
        "id-only",
    );
    let rest_hook = body(smart.send(Method::POST, "Subscription", &ana_token, &rest_hook).await).await;

    let bind_luis = format!("Subscription/{}/$get-ws-binding-token", ids[1]);
    let response = smart.send(Method::POST, &bind_luis, &ana_token, &json!({"resourceType": "Parameters"})).await;
    assert_eq!(response.status(), 404, "luis's subscription does not exist for ana");
    let by_id = json!({"resourceType": "Parameters", "parameter": [{"name": "id", "valueId": ids[1]}]});
    let response = smart.send(Method::POST, "Subscription/$get-ws-binding-token", &ana_token, &by_id).await;
    assert_eq!(response.status(), 404, "nor by id at type level");
    let bind_hook = format!("Subscription/{}/$get-ws-binding-token", rest_hook["id"].as_str().unwrap());
    let response = smart.send(Method::POST, &bind_hook, &ana_token, &json!({"resourceType": "Parameters"})).await;
    assert_eq!(response.status(), 422, "a rest-hook subscription has no websocket");
    outcome(response).await;

    let response = smart
        .send(Method::POST, "Subscription/$get-ws-binding-token", &ana_token, &json!({"resourceType": "Parameters"}))
        .await;
    assert_eq!(response.status(), 200);
    let binding = body(response).await;
    let bound: Vec<&Value> = output(&binding, "subscription").into_iter().map(|p| &p["valueString"]).collect();
    assert_eq!(bound, [&json!(format!("Subscription/{}", ids[0]))], "every websocket subscription of ana's");
    let mut socket = bind(&binding).await;
    let handshake = next_bundle(&mut socket).await;
    assert_eq!(status_value(&handshake, "type"), "handshake");

    let luis_result = smart.create(&admin, &observation(&luis, "final")).await;
    let ana_result = smart.create(&admin, &observation(&ana, "final")).await;
    let notification = next_bundle(&mut socket).await;
    assert_eq!(status_value(&notification, "type"), "event-notification");
    let text = notification.to_string();
    assert!(text.contains(&ana_result) && !text.contains(&luis_result), "{text}");
    tokio::time::sleep(Duration::from_millis(700)).await;
    let nothing = tokio::time::timeout(Duration::from_millis(100), socket.next()).await;
    assert!(nothing.is_err(), "nothing else: {nothing:?}");
}

on_both_databases!(websockets_get_the_handshake_events_and_heartbeats, websocket_frames_pass_the_binders_access);
