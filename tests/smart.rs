//! The SMART on FHIR authorization server end to end: discovery, the authorization code flow
//! through the login and consent forms, PKCE, refresh, client credentials with secrets and
//! signed assertions, introspection, revocation, EHR launch, and the negative cases.

mod common;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::smart::{query_value, smart_server, Authorization, Pkce, SignedIn, Smart};
use common::{body, Db};
use hearth::auth::records::ClientCredentials;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::Method;
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::traits::PublicKeyParts;
use serde_json::{json, Value};

const PATIENT_SCOPES: &str = "openid fhirUser launch/patient offline_access patient/*.rs";

async fn patient_app(db: Db) -> (common::TestServer, Smart, String, String) {
    let server = smart_server(db).await;
    let smart = Smart::new(&server).await;
    smart.add_secret_client("admin", "admin-secret").await;
    let admin = smart.system_token("admin", "admin-secret", "system/*.cruds").await;
    let patient = smart
        .create(&admin, &json!({"resourceType": "Patient", "name": [{"family": "Rivera", "given": ["Ana"]}]}))
        .await;
    smart.add_public_client("app").await;
    smart.add_user("ana", "ana-password", &format!("Patient/{patient}"), &[]).await;
    (server, smart, patient, admin)
}

async fn discovery_documents_agree(db: Db) {
    let server = smart_server(db).await;
    let smart = Smart::new(&server).await;
    let response = smart
        .http
        .get(format!("{}/.well-known/smart-configuration", smart.fhir))
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["access-control-allow-origin"], "*");
    let config: Value = response.json().await.unwrap();
    for (field, path) in [
        ("authorization_endpoint", "/auth/authorize"),
        ("token_endpoint", "/auth/token"),
        ("introspection_endpoint", "/auth/introspect"),
        ("revocation_endpoint", "/auth/revoke"),
        ("jwks_uri", "/auth/jwks"),
    ] {
        assert_eq!(config[field], smart.url(path), "{field}");
    }
    assert_eq!(config["issuer"], smart.fhir);
    assert_eq!(config["code_challenge_methods_supported"], json!(["S256"]));
    assert_eq!(config["token_endpoint_auth_signing_alg_values_supported"], json!(["RS384", "ES384"]));
    let capabilities: Vec<&str> =
        config["capabilities"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
    for wanted in [
        "launch-ehr",
        "launch-standalone",
        "client-confidential-asymmetric",
        "permission-v2",
        "authorize-post",
        "context-standalone-patient",
    ] {
        assert!(capabilities.contains(&wanted), "{wanted}");
    }
    // The CapabilityStatement is public and names the same endpoints.
    let statement: Value =
        smart.http.get(format!("{}/metadata", smart.fhir)).send().await.unwrap().json().await.unwrap();
    let security = &statement["rest"][0]["security"];
    assert_eq!(security["service"][0]["coding"][0]["code"], "SMART-on-FHIR");
    let uris = security["extension"][0]["extension"].as_array().unwrap();
    for (name, field) in [
        ("authorize", "authorization_endpoint"),
        ("token", "token_endpoint"),
        ("introspect", "introspection_endpoint"),
        ("revoke", "revocation_endpoint"),
    ] {
        let found = uris.iter().find(|u| u["url"] == name).unwrap();
        assert_eq!(found["valueUri"], config[field], "{name}");
    }
    let openid: Value = smart
        .http
        .get(format!("{}/.well-known/openid-configuration", smart.fhir))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(openid["issuer"], smart.fhir);
    assert_eq!(openid["id_token_signing_alg_values_supported"], json!(["RS256"]));
    let jwks: Value = smart.http.get(smart.url("/auth/jwks")).send().await.unwrap().json().await.unwrap();
    let key = &jwks["keys"][0];
    assert_eq!((key["kty"].as_str(), key["alg"].as_str()), (Some("RSA"), Some("RS256")));
    assert!(key["kid"].as_str().is_some_and(|k| !k.is_empty()));
    // The keys survive a restart.
    let server = server.restart().await;
    let again: Value = Smart::new(&server)
        .await
        .http
        .get(format!("{}/auth/jwks", server.base.trim_end_matches("/fhir")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(again["keys"][0]["kid"], key["kid"]);
}

async fn fhir_requests_need_a_valid_token(db: Db) {
    let (_server, smart, patient, _admin) = patient_app(db).await;
    let response = smart.http.get(format!("{}/Patient/{patient}", smart.fhir)).send().await.unwrap();
    assert_eq!(response.status(), 401);
    assert!(response.headers()["www-authenticate"].to_str().unwrap().starts_with("Bearer"));
    assert_eq!(body(response).await["resourceType"], "OperationOutcome");
    for token in ["garbage", "a.b.c", "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."] {
        let response = smart.get(&format!("Patient/{patient}"), token).await;
        assert_eq!(response.status(), 401, "{token}");
        assert!(response.headers()["www-authenticate"].to_str().unwrap().contains("invalid_token"));
    }
    let token = smart.launch(&Authorization::new("app", PATIENT_SCOPES, "ana", "ana-password")).await;
    let access = token["access_token"].as_str().unwrap();
    assert_eq!(smart.get(&format!("Patient/{patient}"), access).await.status(), 200);
    // One changed character in the payload breaks the signature.
    let mut parts: Vec<String> = access.split('.').map(str::to_string).collect();
    let mut claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&parts[1]).unwrap()).unwrap();
    claims["scope"] = json!("system/*.cruds");
    parts[1] = URL_SAFE_NO_PAD.encode(claims.to_string());
    assert_eq!(smart.get(&format!("Patient/{patient}"), &parts.join(".")).await.status(), 401, "tampered");
    // The same claims without a signature (alg none).
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
    assert_eq!(
        smart.get(&format!("Patient/{patient}"), &format!("{header}.{}.", parts[1])).await.status(),
        401,
        "alg none"
    );
    // An expired token signed with the server's own key.
    let (kid, secret) = server_key(&smart).await;
    let mut expired: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(access.split('.').nth(1).unwrap()).unwrap()).unwrap();
    expired["exp"] = json!(expired["iat"].as_i64().unwrap() - 10);
    let forged = jsonwebtoken::encode(
        &Header { kid: Some(kid), ..Header::new(Algorithm::HS256) },
        &expired,
        &EncodingKey::from_secret(&secret),
    )
    .unwrap();
    let response = smart.get(&format!("Patient/{patient}"), &forged).await;
    assert_eq!(response.status(), 401, "expired");
    assert!(response.headers()["www-authenticate"].to_str().unwrap().contains("expired"));
    // A scope the token lacks is 403.
    let response = smart.send(Method::POST, "Observation", access, &json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": {"reference": format!("Patient/{patient}")}})).await;
    assert_eq!(response.status(), 403);
    assert!(response.headers()["www-authenticate"].to_str().unwrap().contains("insufficient_scope"));
    assert_eq!(body(response).await["issue"][0]["code"], "forbidden");
}

/// The HMAC key of the server's newest signing key, read from its database.
async fn server_key(smart: &Smart) -> (String, Vec<u8>) {
    let keys = smart.store.auth_list("signing-key").await.unwrap();
    let (kid, data) = keys.last().unwrap();
    let data: Value = serde_json::from_str(data).unwrap();
    (kid.clone(), URL_SAFE_NO_PAD.decode(data["hmac_secret"].as_str().unwrap()).unwrap())
}

async fn standalone_launch_issues_tokens(db: Db) {
    let (_server, smart, patient, _admin) = patient_app(db).await;
    let token = smart.launch(&Authorization::new("app", PATIENT_SCOPES, "ana", "ana-password")).await;
    assert_eq!(token["token_type"], "Bearer");
    assert_eq!(token["patient"], patient.as_str());
    assert_eq!(token["need_patient_banner"], true);
    assert!(token["expires_in"].as_i64().unwrap() > 0);
    assert!(token["refresh_token"].as_str().is_some());
    assert_eq!(token["scope"], PATIENT_SCOPES);
    // The id_token verifies with the published key and names the user.
    let id_token = token["id_token"].as_str().unwrap();
    let jwks: jsonwebtoken::jwk::JwkSet =
        smart.http.get(smart.url("/auth/jwks")).send().await.unwrap().json().await.unwrap();
    let header = jsonwebtoken::decode_header(id_token).unwrap();
    assert_eq!(header.alg, Algorithm::RS256);
    let key = jsonwebtoken::DecodingKey::from_jwk(jwks.find(&header.kid.unwrap()).unwrap()).unwrap();
    let mut validation = jsonwebtoken::Validation::new(Algorithm::RS256);
    validation.set_audience(&["app"]);
    validation.validate_exp = false;
    let claims = jsonwebtoken::decode::<Value>(id_token, &key, &validation).unwrap().claims;
    assert_eq!(claims["iss"], smart.fhir);
    assert_eq!(claims["sub"], "ana");
    assert_eq!(claims["fhirUser"], format!("{}/Patient/{patient}", smart.fhir));
    // Unticked scopes are not granted.
    let narrow = Authorization {
        ticked: Some(vec!["launch/patient", "patient/*.rs"]),
        ..Authorization::new("app", PATIENT_SCOPES, "ana", "ana-password")
    };
    let token = smart.launch(&narrow).await;
    assert_eq!(token["scope"], "launch/patient patient/*.rs");
    assert!(token.get("id_token").is_none() && token.get("refresh_token").is_none());
    // Deny sends the user back with access_denied.
    let location = smart
        .consent_redirect(&Authorization::new("app", PATIENT_SCOPES, "ana", "ana-password"), &Pkce::new(), "deny")
        .await;
    assert_eq!(query_value(&location, "error").as_deref(), Some("access_denied"));
    assert_eq!(query_value(&location, "state").as_deref(), Some("st-123"));
    assert!(query_value(&location, "code").is_none());
}

async fn authorize_refuses_bad_requests(db: Db) {
    let (_server, smart, _patient, _admin) = patient_app(db).await;
    let pkce = Pkce::new();
    // Unknown client and unregistered redirect: an error page, never a redirect.
    for extra in
        [vec![("client_id", "nobody")], vec![("redirect_uri", "https://evil.example/cb")], vec![("redirect_uri", "")]]
    {
        let response = smart.authorize("app", PATIENT_SCOPES, &pkce, &extra).await;
        assert_eq!(response.status(), 400, "{extra:?}");
        assert!(response.headers().get("location").is_none());
        assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    }
    // Wrong aud or response type: back to the app with an error and no code.
    for (extra, error) in [
        (vec![("aud", "https://other.example/fhir")], "invalid_request"),
        (vec![("aud", "")], "invalid_request"),
        (vec![("response_type", "token")], "unsupported_response_type"),
    ] {
        let response = smart.authorize("app", PATIENT_SCOPES, &pkce, &extra).await;
        assert_eq!(response.status(), 303, "{extra:?}");
        let location = response.headers()["location"].to_str().unwrap().to_string();
        assert!(location.starts_with(common::smart::REDIRECT));
        assert_eq!(query_value(&location, "error").as_deref(), Some(error));
        assert_eq!(query_value(&location, "state").as_deref(), Some("st-123"));
        assert!(query_value(&location, "code").is_none());
    }
    // POST works like GET.
    let response = smart
        .http
        .post(smart.url("/auth/authorize"))
        .form(&[
            ("response_type", "code"),
            ("client_id", "app"),
            ("redirect_uri", common::smart::REDIRECT),
            ("scope", PATIENT_SCOPES),
            ("state", "s"),
            ("aud", &smart.fhir),
            ("code_challenge", &pkce.challenge),
            ("code_challenge_method", "S256"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.text().await.unwrap().contains("name=\"password\""));
}

async fn login_is_throttled_without_telling_who_exists(db: Db) {
    let (_server, smart, patient, _admin) = patient_app(db).await;
    let page = smart.authorize("app", PATIENT_SCOPES, &Pkce::new(), &[]).await.text().await.unwrap();
    let wrong_password = smart.login(&page, "ana", "nope").await;
    assert_eq!(wrong_password.status(), 401);
    let wrong_password = wrong_password.text().await.unwrap();
    let unknown_user = smart.login(&page, "nobody", "nope").await.text().await.unwrap();
    let message = |html: &str| html.split("role=\"alert\">").nth(1).unwrap().split('<').next().unwrap().to_string();
    assert_eq!(message(&wrong_password), message(&unknown_user), "the same message for both");
    // A bad CSRF token is refused.
    let forged = page.replace(&common::smart::input_value(&page, "csrf").unwrap(), "forged");
    assert_eq!(smart.login(&forged, "ana", "ana-password").await.status(), 403);
    for _ in 0..4 {
        smart.login(&page, "ana", "nope").await;
    }
    // After five failures even the right password is refused for a while.
    let response = smart.login(&page, "ana", "ana-password").await;
    assert_eq!(response.status(), 401);
    assert!(response.text().await.unwrap().contains("Too many"));
    // Attempts in parallel each count: of 20 at once at most five get the password checked.
    smart.add_user("bob", "bob-password", &format!("Patient/{patient}"), &[]).await;
    let attempts = (0..20).map(|n| {
        let (smart, page) = (&smart, page.clone());
        async move { smart.login(&page, "bob", &format!("guess-{n}")).await.text().await.unwrap() }
    });
    let pages = futures::future::join_all(attempts).await;
    let checked = pages.iter().filter(|html| html.contains("incorrect")).count();
    assert!(checked <= 5, "{checked} attempts were checked");
    assert!(pages.iter().filter(|html| html.contains("Too many")).count() >= 15);
}

async fn pkce_and_codes_are_checked(db: Db) {
    let (_server, smart, patient, _admin) = patient_app(db).await;
    let auth = Authorization::new("app", PATIENT_SCOPES, "ana", "ana-password");
    for (verifier, case) in [("wrong-verifier-0123456789-0123456789-0123456789", "wrong"), ("", "empty")] {
        let pkce = Pkce::new();
        let code = smart.code(&auth, &pkce).await;
        let response = smart.exchange("app", &code, verifier).await;
        assert_eq!(response.status(), 400, "{case} verifier");
        assert_eq!(body(response).await["error"], "invalid_grant");
    }
    // No code_challenge, or a plain one: the code cannot be exchanged.
    for extra in [vec![("code_challenge", ""), ("code_challenge_method", "")], vec![("code_challenge_method", "plain")]]
    {
        let pkce = Pkce::new();
        let page = smart.authorize("app", PATIENT_SCOPES, &pkce, &extra).await.text().await.unwrap();
        let SignedIn { cookie, consent, .. } = smart.sign_in(&page, "ana", "ana-password").await;
        let form = [
            ("request", common::smart::input_value(&consent, "request").unwrap()),
            ("csrf", common::smart::input_value(&consent, "csrf").unwrap()),
            ("decision", "allow".into()),
            ("scope", "patient/*.rs".into()),
        ];
        let location = smart
            .http
            .post(smart.url("/auth/consent"))
            .header("cookie", &cookie)
            .form(&form)
            .send()
            .await
            .unwrap()
            .headers()["location"]
            .to_str()
            .unwrap()
            .to_string();
        let code = query_value(&location, "code").unwrap();
        let plain_verifier = pkce.challenge.clone();
        let response = smart.exchange("app", &code, &plain_verifier).await;
        assert_eq!(response.status(), 400, "{extra:?}");
    }
    // An unknown code; a code used twice revokes what the first use issued.
    assert_eq!(smart.exchange("app", "no-such-code", "x").await.status(), 400);
    let pkce = Pkce::new();
    let code = smart.code(&auth, &pkce).await;
    let first = smart.exchange("app", &code, &pkce.verifier).await;
    assert_eq!(first.status(), 200);
    let first: Value = first.json().await.unwrap();
    let access = first["access_token"].as_str().unwrap();
    assert_eq!(smart.get(&format!("Patient/{patient}"), access).await.status(), 200);
    let replay = smart.exchange("app", &code, &pkce.verifier).await;
    assert_eq!(replay.status(), 400);
    assert_eq!(body(replay).await["error"], "invalid_grant");
    assert_eq!(smart.get(&format!("Patient/{patient}"), access).await.status(), 401, "revoked after replay");
    let refresh = smart.refresh("app", first["refresh_token"].as_str().unwrap(), None).await;
    assert_eq!(refresh.status(), 400, "its refresh token is revoked too");
    // Unsupported grant types.
    let response = smart.token_request(&[("grant_type", "password"), ("client_id", "app")], None).await;
    assert_eq!(response.status(), 400);
    assert_eq!(body(response).await["error"], "unsupported_grant_type");
}

async fn refresh_tokens_rotate(db: Db) {
    let (_server, smart, patient, _admin) = patient_app(db).await;
    let token = smart.launch(&Authorization::new("app", PATIENT_SCOPES, "ana", "ana-password")).await;
    let first_refresh = token["refresh_token"].as_str().unwrap().to_string();
    let response = smart.refresh("app", &first_refresh, Some("patient/*.rs offline_access")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["cache-control"], "no-store");
    assert_eq!(response.headers()["pragma"], "no-cache");
    let refreshed: Value = response.json().await.unwrap();
    assert_eq!(refreshed["scope"], "patient/*.rs offline_access");
    assert_eq!(refreshed["patient"], patient.as_str());
    let second_refresh = refreshed["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(second_refresh, first_refresh);
    assert_eq!(
        smart.get(&format!("Patient/{patient}"), refreshed["access_token"].as_str().unwrap()).await.status(),
        200
    );
    // A wider scope than granted is refused.
    let response = smart.refresh("app", &second_refresh, Some("patient/*.cruds")).await;
    assert_eq!(response.status(), 400);
    assert_eq!(body(response).await["error"], "invalid_scope");
    // The rotated-away token used again revokes the grant.
    assert_eq!(smart.refresh("app", &first_refresh, None).await.status(), 400);
    assert_eq!(
        smart.get(&format!("Patient/{patient}"), refreshed["access_token"].as_str().unwrap()).await.status(),
        401
    );
    assert_eq!(smart.refresh("app", "invalid", None).await.status(), 400);
}

async fn introspection_and_revocation(db: Db) {
    let (server, smart, patient, admin) = patient_app(db).await;
    let token = smart.launch(&Authorization::new("app", PATIENT_SCOPES, "ana", "ana-password")).await;
    let access = token["access_token"].as_str().unwrap();
    let introspect = |token: String| {
        let http = smart.http.clone();
        let url = smart.url("/auth/introspect");
        let admin = admin.clone();
        async move { http.post(url).bearer_auth(admin).form(&[("token", token)]).send().await.unwrap() }
    };
    let active: Value = introspect(access.to_string()).await.json().await.unwrap();
    assert_eq!(active["active"], true);
    assert_eq!(active["client_id"], "app");
    assert_eq!(active["patient"], patient.as_str());
    assert_eq!(active["scope"], PATIENT_SCOPES);
    assert_eq!(active["fhirUser"], format!("{}/Patient/{patient}", smart.fhir));
    assert!(active["exp"].as_i64().is_some());
    let refresh: Value = introspect(token["refresh_token"].as_str().unwrap().to_string()).await.json().await.unwrap();
    assert_eq!(refresh["active"], true);
    let inactive: Value = introspect("nonsense".into()).await.json().await.unwrap();
    assert_eq!(inactive, json!({"active": false}));
    // Introspection needs an authenticated caller.
    assert_eq!(
        smart.http.post(smart.url("/auth/introspect")).form(&[("token", access)]).send().await.unwrap().status(),
        401
    );
    // Revoking the refresh token stops the access token at once (on a second node too).
    let response = smart.revoke("app", token["refresh_token"].as_str().unwrap()).await;
    assert_eq!(response.status(), 200);
    assert_eq!(smart.get(&format!("Patient/{patient}"), access).await.status(), 401);
    let gone: Value = introspect(access.to_string()).await.json().await.unwrap();
    assert_eq!(gone["active"], false);
    if db == Db::Postgres {
        let second = server.second_node().await;
        let second_smart = Smart::new(&second).await;
        let other = smart.launch(&Authorization::new("app", PATIENT_SCOPES, "ana", "ana-password")).await;
        let other_access = other["access_token"].as_str().unwrap();
        assert_eq!(second_smart.get(&format!("Patient/{patient}"), other_access).await.status(), 200);
        smart.revoke("app", other_access).await;
        let read = || async { second_smart.get(&format!("Patient/{patient}"), other_access).await.status() };
        assert_eq!(common::after_the_feed(read, |s| *s == 401).await, 401, "revoked on every node");
    }
}

/// An RSA key pair for `private_key_jwt`: the PEM of the private key and the public JWKS.
fn client_key(kid: &str) -> (Vec<u8>, String) {
    let private = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
    let pem = private.to_pkcs1_pem(rsa::pkcs8::LineEnding::LF).unwrap().as_bytes().to_vec();
    let public = private.to_public_key();
    let jwks = json!({"keys": [{"kty": "RSA", "kid": kid, "alg": "RS384", "use": "sig",
        "n": URL_SAFE_NO_PAD.encode(public.n().to_bytes_be()), "e": URL_SAFE_NO_PAD.encode(public.e().to_bytes_be())}]});
    (pem, jwks.to_string())
}

fn assertion(pem: &[u8], kid: &str, claims: &Value) -> String {
    let header = Header { kid: Some(kid.into()), ..Header::new(Algorithm::RS384) };
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_rsa_pem(pem).unwrap()).unwrap()
}

async fn backend_services_authenticate_with_signed_assertions(db: Db) {
    let (_server, smart, patient, _admin) = patient_app(db).await;
    let (pem, jwks) = client_key("k1");
    smart.add_client("backend", ClientCredentials::Jwks { jwks }, Some("system/*.rs")).await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let token_url = smart.url("/auth/token");
    let claims = |jti: &str, aud: &str, exp: i64| json!({"iss": "backend", "sub": "backend", "aud": aud, "exp": exp, "jti": jti});
    let request = |signed: String, scope: &'static str| {
        let http = smart.http.clone();
        let url = token_url.clone();
        async move {
            http.post(url)
                .form(&[
                    ("grant_type", "client_credentials"),
                    ("scope", scope),
                    ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
                    ("client_assertion", &signed),
                ])
                .send()
                .await
                .unwrap()
        }
    };
    let good = assertion(&pem, "k1", &claims("j1", &token_url, now + 120));
    let response = request(good.clone(), "system/Patient.rs system/Observation.cruds").await;
    assert_eq!(response.status(), 200);
    let token: Value = response.json().await.unwrap();
    assert_eq!(token["scope"], "system/Patient.rs", "only what the client is registered for");
    assert!(token.get("refresh_token").is_none());
    let access = token["access_token"].as_str().unwrap();
    let bundle = body(smart.get("Patient", access).await).await;
    assert_eq!(bundle["entry"][0]["resource"]["id"], patient.as_str());
    // Replayed jti, unknown kid, wrong audience, too long a lifetime, expired, wrong signer.
    let (other_pem, _) = client_key("k1");
    for (signed, case) in [
        (good, "replayed jti"),
        (assertion(&pem, "k2", &claims("j2", &token_url, now + 120)), "unknown kid"),
        (assertion(&pem, "k1", &claims("j3", "https://other.example/token", now + 120)), "wrong aud"),
        (assertion(&pem, "k1", &claims("j4", &token_url, now + 3600)), "exp too far"),
        (assertion(&pem, "k1", &claims("j5", &token_url, now - 10)), "expired"),
        (assertion(&other_pem, "k1", &claims("j6", &token_url, now + 120)), "another key"),
    ] {
        let response = request(signed, "system/Patient.rs").await;
        assert_eq!(response.status(), 401, "{case}");
        assert_eq!(body(response).await["error"], "invalid_client", "{case}");
    }
    let response = smart
        .token_request(
            &[("grant_type", "client_credentials"), ("client_assertion_type", "urn:x"), ("client_assertion", "y")],
            None,
        )
        .await;
    assert_eq!(response.status(), 400, "bad assertion type");
    assert_eq!(body(response).await["error"], "invalid_request");
    // A secret client: wrong secret, no scope it may have, and a public client cannot do it.
    smart.add_secret_client("reporting", "s3cret").await;
    assert_eq!(
        smart
            .token_request(
                &[("grant_type", "client_credentials"), ("scope", "system/*.rs")],
                Some(("reporting", "wrong"))
            )
            .await
            .status(),
        401
    );
    let response = smart
        .token_request(
            &[("grant_type", "client_credentials"), ("scope", "patient/*.rs")],
            Some(("reporting", "s3cret")),
        )
        .await;
    assert_eq!(body(response).await["error"], "invalid_scope");
    let public = smart
        .token_request(&[("grant_type", "client_credentials"), ("scope", "system/*.rs"), ("client_id", "app")], None)
        .await;
    assert_eq!(public.status(), 400);
    assert_eq!(body(public).await["error"], "unauthorized_client");
    // A confidential client registered without scopes gets no system scope at all.
    smart.add_client("unscoped", ClientCredentials::Secret { digest: hearth::auth::keys::digest("pw") }, None).await;
    let response = smart
        .token_request(&[("grant_type", "client_credentials"), ("scope", "system/*.cruds")], Some(("unscoped", "pw")))
        .await;
    assert_eq!(body(response).await["error"], "invalid_scope");
}

async fn users_never_get_system_scopes_or_foreign_launches(db: Db) {
    let (_server, smart, patient, admin) = patient_app(db).await;
    // system/ scopes through a user's authorization are dropped, whatever the client asks.
    let token = smart
        .launch(&Authorization::new("app", "launch/patient patient/*.rs system/*.cruds", "ana", "ana-password"))
        .await;
    assert_eq!(token["scope"], "launch/patient patient/*.rs");
    let response = smart.authorize("app", "system/*.cruds system/launch", &Pkce::new(), &[]).await;
    assert_eq!(response.status(), 303);
    assert_eq!(
        query_value(response.headers()["location"].to_str().unwrap(), "error").as_deref(),
        Some("invalid_scope")
    );
    // A launch for another patient is refused to a patient user.
    let other = smart.create(&admin, &json!({"resourceType": "Patient", "name": [{"family": "Other"}]})).await;
    let launch: Value = smart
        .http
        .post(smart.url("/auth/launch"))
        .bearer_auth(&admin)
        .json(&json!({"patient": other}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let auth = Authorization {
        launch: launch["launch"].as_str(),
        ..Authorization::new("app", "launch patient/*.rs", "ana", "ana-password")
    };
    let location = smart.consent_redirect(&auth, &Pkce::new(), "allow").await;
    assert_eq!(query_value(&location, "error").as_deref(), Some("invalid_request"), "{location}");
    assert!(query_value(&location, "code").is_none());
    let _ = patient;
}

async fn patient_scopes_reach_shared_data_but_no_other_record(db: Db) {
    let (_server, smart, patient, admin) = patient_app(db).await;
    let (smart, admin) = (&smart, &admin);
    let create = |resource: Value| async move { smart.create(admin, &resource).await };
    let practitioner = create(json!({"resourceType": "Practitioner", "name": [{"family": "House"}]})).await;
    let task = create(json!({"resourceType": "Task", "status": "requested", "intent": "order", "for": {"reference": "Patient/someone-else"}})).await;
    let device = create(json!({"resourceType": "Device", "patient": {"reference": "Patient/someone-else"}})).await;
    let token = smart.launch(&Authorization::new("app", "launch/patient patient/*.cruds", "ana", "ana-password")).await;
    let access = token["access_token"].as_str().unwrap();
    assert_eq!(smart.get(&format!("Practitioner/{practitioner}"), access).await.status(), 200, "directory data");
    for path in [format!("Task/{task}"), format!("Device/{device}")] {
        assert_eq!(smart.get(&path, access).await.status(), 404, "{path}");
    }
    assert_eq!(body(smart.get("Task", access).await).await["entry"].as_array().map_or(0, Vec::len), 0);
    // Patient scopes write nothing outside the patient's record.
    let response = smart
        .send(
            Method::POST,
            "Practitioner",
            access,
            &json!({"resourceType": "Practitioner", "name": [{"family": "Fake"}]}),
        )
        .await;
    assert_eq!(response.status(), 403);
    // Nor does a patch tell anything of a resource outside it (the answer does not depend on a guess).
    let foreign = create(json!({"resourceType": "Observation", "status": "final", "code": {"text": "secret"}, "subject": {"reference": "Patient/someone-else"}})).await;
    for guess in ["secret", "other"] {
        let patch = json!([{"op": "test", "path": "/code/text", "value": guess}]);
        let response = smart
            .send_as(Method::PATCH, &format!("Observation/{foreign}"), access, "application/json-patch+json", &patch)
            .await;
        assert_eq!(response.status(), 404, "guess {guess}");
    }
    // Filing data into another record beside one's own is refused.
    let mixed = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
        "subject": {"reference": format!("Patient/{patient}")}, "performer": [{"reference": "Patient/someone-else"}]});
    let response = smart.send(Method::POST, "Observation", access, &mixed).await;
    assert_eq!(response.status(), 403);
}

async fn ehr_launch_brings_its_context(db: Db) {
    let (_server, smart, patient, admin) = patient_app(db).await;
    smart.add_secret_client("ehr", "ehr-secret").await;
    let ehr = smart.system_token("ehr", "ehr-secret", "system/launch").await;
    let launch = |token: String, body: Value| {
        let http = smart.http.clone();
        let url = smart.url("/auth/launch");
        async move { http.post(url).bearer_auth(token).json(&body).send().await.unwrap() }
    };
    assert_eq!(launch(admin.clone(), json!({"patient": "unknown-patient"})).await.status(), 404);
    let response = launch(ehr, json!({"patient": patient})).await;
    assert_eq!(response.status(), 201);
    let id = body(response).await["launch"].as_str().unwrap().to_string();
    let patient_token = smart.launch(&Authorization::new("app", PATIENT_SCOPES, "ana", "ana-password")).await;
    let forbidden =
        launch(patient_token["access_token"].as_str().unwrap().to_string(), json!({"patient": patient})).await;
    assert_eq!(forbidden.status(), 403, "a patient app cannot create launches");
    smart.add_user("dr", "dr-password", "Practitioner/dr1", &[]).await;
    let auth = Authorization {
        launch: Some(&id),
        ..Authorization::new("app", "launch openid fhirUser user/*.rs", "dr", "dr-password")
    };
    let token = smart.launch(&auth).await;
    assert_eq!(token["patient"], patient.as_str());
    assert_eq!(token["smart_style_url"], smart.url("/auth/smart-style.json"));
    assert_eq!(smart.http.get(smart.url("/auth/smart-style.json")).send().await.unwrap().status(), 200);
    let response = smart.authorize("app", "launch user/*.rs", &Pkce::new(), &[("launch", "no-such-launch")]).await;
    assert_eq!(response.status(), 303);
    assert_eq!(
        query_value(response.headers()["location"].to_str().unwrap(), "error").as_deref(),
        Some("invalid_request")
    );
    // A launch made for one app is refused to another.
    smart.add_public_client("other-app").await;
    let for_app = launch(admin.clone(), json!({"patient": patient, "client_id": "app"})).await;
    assert_eq!(for_app.status(), 201);
    let bound = body(for_app).await["launch"].as_str().unwrap().to_string();
    let response = smart.authorize("other-app", "launch user/*.rs", &Pkce::new(), &[("launch", &bound)]).await;
    let location = response.headers()["location"].to_str().unwrap().to_string();
    assert_eq!(query_value(&location, "error").as_deref(), Some("invalid_request"), "{location}");
    let auth =
        Authorization { launch: Some(&bound), ..Authorization::new("app", "launch user/*.rs", "dr", "dr-password") };
    assert_eq!(smart.launch(&auth).await["patient"], patient.as_str(), "the app it was made for uses it");
    assert_eq!(launch(admin.clone(), json!({"patient": patient, "client_id": "nobody"})).await.status(), 404);
}

/// A Binary is read under the rules of the resource its `securityContext` names: a patient
/// downloads their own document's content, nobody else's, and nothing without a context.
async fn binaries_follow_their_security_context(db: Db) {
    let (_server, smart, patient, admin) = patient_app(db).await;
    let other = smart.create(&admin, &json!({"resourceType": "Patient", "name": [{"family": "Other"}]})).await;
    let document = |subject: &str| {
        json!({"resourceType": "DocumentReference", "status": "current", "subject": {"reference": format!("Patient/{subject}")},
            "content": [{"attachment": {"contentType": "text/plain", "title": "Visit summary"}}]})
    };
    let own_document = smart.create(&admin, &document(&patient)).await;
    let other_document = smart.create(&admin, &document(&other)).await;
    let binary = |context: Option<String>| {
        let mut binary = json!({"resourceType": "Binary", "contentType": "text/plain", "data": "aGVsbG8="});
        if let Some(reference) = context {
            binary["securityContext"] = json!({"reference": reference});
        }
        binary
    };
    let own = smart.create(&admin, &binary(Some(format!("DocumentReference/{own_document}")))).await;
    let absolute =
        smart.create(&admin, &binary(Some(format!("{}/DocumentReference/{own_document}", smart.fhir)))).await;
    let foreign = smart.create(&admin, &binary(Some(format!("DocumentReference/{other_document}")))).await;
    let unbound = smart.create(&admin, &binary(None)).await;
    let chained = smart.create(&admin, &binary(Some(format!("Binary/{own}")))).await;
    let token = smart.launch(&Authorization::new("app", PATIENT_SCOPES, "ana", "ana-password")).await;
    let access = token["access_token"].as_str().unwrap();
    let smart = &smart;
    let status = |path: String| async move { smart.get(&path, access).await.status() };
    assert_eq!(status(format!("Binary/{own}")).await, 200);
    assert_eq!(status(format!("Binary/{own}/_history/1")).await, 200);
    assert_eq!(status(format!("Binary/{absolute}")).await, 200, "an absolute URL of this server");
    assert_eq!(status(format!("Binary/{foreign}")).await, 404, "another patient's document");
    assert_eq!(status(format!("Binary/{unbound}")).await, 404, "no security context");
    assert_eq!(status(format!("Binary/{chained}")).await, 404, "a Binary is no security context");
    // The context's own scope is needed too.
    let narrow =
        smart.launch(&Authorization::new("app", "launch/patient patient/Binary.rs", "ana", "ana-password")).await;
    let narrow = narrow["access_token"].as_str().unwrap();
    assert_eq!(smart.get(&format!("Binary/{own}"), narrow).await.status(), 404, "no scope on DocumentReference");
}

/// A clinician's standalone launch with `launch/patient` names the patient on the consent page;
/// an unknown id keeps the page open with the reason.
async fn a_clinician_picks_the_patient_in_a_standalone_launch(db: Db) {
    let (_server, smart, patient, _admin) = patient_app(db).await;
    smart.add_user("dr-lee", "dr-password", "Practitioner/pr-lee", &[]).await;
    let scope = "launch/patient patient/*.rs";
    let pkce = Pkce::new();
    let page = smart.authorize("app", scope, &pkce, &[]).await.text().await.unwrap();
    let SignedIn { cookie, consent, .. } = smart.sign_in(&page, "dr-lee", "dr-password").await;
    assert!(consent.contains("type=\"text\" name=\"patient\""), "a patient id field");
    let answer = |picked: &str| {
        let form = vec![
            ("request", common::smart::input_value(&consent, "request").unwrap()),
            ("csrf", common::smart::input_value(&consent, "csrf").unwrap()),
            ("decision", "allow".to_string()),
            ("scope", "launch/patient".to_string()),
            ("scope", "patient/*.rs".to_string()),
            ("patient", picked.to_string()),
        ];
        smart.http.post(smart.url("/auth/consent")).header("cookie", &cookie).form(&form).send()
    };
    let response = answer("no-such-patient").await.unwrap();
    assert_eq!(response.status(), 400);
    assert!(response.text().await.unwrap().contains("No patient has that id"));
    let response = answer(&patient).await.unwrap();
    assert_eq!(response.status(), 303, "the request stayed open for a second try");
    let code = query_value(response.headers()["location"].to_str().unwrap(), "code").expect("a code");
    let token: Value = smart.exchange("app", &code, &pkce.verifier).await.json().await.unwrap();
    assert_eq!(token["patient"], patient.as_str());
    let access = token["access_token"].as_str().unwrap();
    assert_eq!(smart.get(&format!("Patient/{patient}"), access).await.status(), 200);
}

async fn a_proxy_chooses_among_their_patients(db: Db) {
    let (_server, smart, first, admin) = patient_app(db).await;
    let second = smart
        .create(&admin, &json!({"resourceType": "Patient", "name": [{"family": "Rivera", "given": ["Luis"]}]}))
        .await;
    smart.add_user("mum", "mum-password", "RelatedPerson/rp1", &[&first, &second]).await;
    let pkce = Pkce::new();
    let page = smart.authorize("app", "launch/patient patient/*.rs", &pkce, &[]).await.text().await.unwrap();
    let SignedIn { set_cookie, consent, .. } = smart.sign_in(&page, "mum", "mum-password").await;
    assert!(set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Lax"), "{set_cookie}");
    assert!(consent.contains("Luis Rivera") && consent.contains("Ana Rivera"), "both patients offered");
    let auth = Authorization {
        patient: Some(&second),
        ..Authorization::new("app", "launch/patient patient/*.rs", "mum", "mum-password")
    };
    let token = smart.launch(&auth).await;
    assert_eq!(token["patient"], second.as_str());
    let access = token["access_token"].as_str().unwrap();
    assert_eq!(smart.get(&format!("Patient/{second}"), access).await.status(), 200);
    assert_eq!(smart.get(&format!("Patient/{first}"), access).await.status(), 404, "bound to the chosen patient");
}

/// An ES384 key pair: the PEM of the private key and its public JWK.
fn ec_key(kid: &str) -> (String, Value) {
    use p384::pkcs8::EncodePrivateKey;
    let secret = p384::SecretKey::random(&mut rsa::rand_core::OsRng);
    let point = p384::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(&secret.public_key(), false);
    let jwk = json!({"kty": "EC", "crv": "P-384", "kid": kid, "alg": "ES384", "use": "sig",
        "x": URL_SAFE_NO_PAD.encode(point.x().unwrap()), "y": URL_SAFE_NO_PAD.encode(point.y().unwrap())});
    (secret.to_pkcs8_pem(p384::pkcs8::LineEnding::LF).unwrap().to_string(), jwk)
}

/// Backend services whose keys live at their own JWKS URL: ES384 assertions verify, the key
/// set is fetched once for many tokens, a rotated key is fetched when first used, and RS256
/// is refused.
async fn jwks_uri_and_es384_clients(db: Db) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    let (_server, smart, _patient, _admin) = patient_app(db).await;
    let (pem, jwk) = ec_key("ec1");
    let published = Arc::new(Mutex::new(json!({"keys": [jwk]})));
    let fetches = Arc::new(AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let jwks_url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    let app = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get({
            let (published, fetches) = (published.clone(), fetches.clone());
            move || {
                fetches.fetch_add(1, Ordering::SeqCst);
                let jwks = published.lock().unwrap().clone();
                async move { axum::Json(jwks) }
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    smart.add_client("ec-backend", ClientCredentials::JwksUri { uri: jwks_url }, Some("system/*.rs")).await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let assertion = |kid: &str, key: &EncodingKey, algorithm: Algorithm, jti: &str| {
        let claims = json!({"iss": "ec-backend", "sub": "ec-backend", "aud": smart.url("/auth/token"), "exp": now + 60, "jti": jti});
        jsonwebtoken::encode(&Header { kid: Some(kid.into()), ..Header::new(algorithm) }, &claims, key).unwrap()
    };
    let smart = &smart;
    let request_token = |signed: String| async move {
        let form = [
            ("grant_type", "client_credentials"),
            ("scope", "system/Patient.rs"),
            ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
            ("client_assertion", signed.as_str()),
        ];
        smart.token_request(&form, None).await
    };
    let key = EncodingKey::from_ec_pem(pem.as_bytes()).unwrap();
    // The client's first requests arrive together: they wait for one fetch of its key set.
    let first = (1..9).map(|n| request_token(assertion("ec1", &key, Algorithm::ES384, &format!("ec-first-{n}"))));
    let responses = futures::future::join_all(first).await;
    assert!(responses.iter().all(|r| r.status() == 200));
    assert_eq!(fetches.load(Ordering::SeqCst), 1, "concurrent first requests share one fetch");
    let response = request_token(assertion("ec1", &key, Algorithm::ES384, "ec-1")).await;
    assert_eq!(response.status(), 200);
    let token: Value = response.json().await.unwrap();
    assert_eq!(smart.get("Patient", token["access_token"].as_str().unwrap()).await.status(), 200);
    for n in 2..6 {
        assert_eq!(request_token(assertion("ec1", &key, Algorithm::ES384, &format!("ec-{n}"))).await.status(), 200);
    }
    assert_eq!(fetches.load(Ordering::SeqCst), 1, "one fetch serves many tokens");
    assert_eq!(request_token(assertion("made-up", &key, Algorithm::ES384, "ec-6")).await.status(), 401);
    assert_eq!(fetches.load(Ordering::SeqCst), 1, "unknown key ids right after a fetch do not fetch again");
    // The client rotates its key; the first assertion with the new key (a second later) fetches it.
    let (new_pem, new_jwk) = ec_key("ec2");
    *published.lock().unwrap() = json!({"keys": [new_jwk]});
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    let new_key = EncodingKey::from_ec_pem(new_pem.as_bytes()).unwrap();
    assert_eq!(request_token(assertion("ec2", &new_key, Algorithm::ES384, "ec-7")).await.status(), 200);
    assert_eq!(fetches.load(Ordering::SeqCst), 2);
    assert_eq!(
        request_token(assertion("ec1", &key, Algorithm::ES384, "ec-8")).await.status(),
        401,
        "the withdrawn key no longer verifies"
    );
    // An RS256 assertion is not accepted (RS384 and ES384 only).
    let (rsa_pem, _) = client_key("ec2");
    let weak = assertion("ec2", &EncodingKey::from_rsa_pem(&rsa_pem).unwrap(), Algorithm::RS256, "ec-9");
    assert_eq!(request_token(weak).await.status(), 401);
}

async fn online_access_ends_with_the_session(db: Db) {
    let (_server, smart, _patient, _admin) = patient_app(db).await;
    let token = smart
        .launch(&Authorization::new("app", "launch/patient patient/*.rs online_access", "ana", "ana-password"))
        .await;
    let refresh = token["refresh_token"].as_str().unwrap().to_string();
    let response = smart.refresh("app", &refresh, None).await;
    assert_eq!(response.status(), 200, "while the session lives");
    let refresh = response.json::<Value>().await.unwrap()["refresh_token"].as_str().unwrap().to_string();
    // The user's login session ends (expires or is removed).
    for (key, _) in smart.store.auth_list("session").await.unwrap() {
        smart.store.auth_delete("session", &key).await.unwrap();
    }
    let response = smart.refresh("app", &refresh, None).await;
    assert_eq!(response.status(), 400);
    assert_eq!(body(response).await["error"], "invalid_grant");
}

async fn rotated_keys_reach_every_node(db: Db) {
    if db == Db::Sqlite {
        return; // one SQLite process per database: nothing to share between nodes
    }
    let (server, smart, patient, _admin) = patient_app(db).await;
    let before = smart.launch(&Authorization::new("app", PATIENT_SCOPES, "ana", "ana-password")).await;
    let new_kid = hearth::auth::keys::add_key(smart.store.as_ref()).await.unwrap();
    // A node started after the rotation signs with the new key; the first node learns it on sight.
    let second = server.second_node().await;
    let mut second_smart = Smart::new(&second).await;
    second_smart.aud = smart.fhir.clone();
    let after = second_smart.launch(&Authorization::new("app", PATIENT_SCOPES, "ana", "ana-password")).await;
    let access = after["access_token"].as_str().unwrap();
    assert_eq!(jsonwebtoken::decode_header(access).unwrap().kid.as_deref(), Some(new_kid.as_str()));
    assert_eq!(smart.get(&format!("Patient/{patient}"), access).await.status(), 200);
    assert_eq!(
        smart.get(&format!("Patient/{patient}"), before["access_token"].as_str().unwrap()).await.status(),
        200,
        "old keys still verify"
    );
    let jwks: Value = smart.http.get(smart.url("/auth/jwks")).send().await.unwrap().json().await.unwrap();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 2);
}

/// After a rotation the replaced key still verifies the tokens it signed, and retires when
/// the last of them has expired: it then leaves the key ring and the JWKS.
async fn replaced_keys_retire_when_their_tokens_expire(db: Db) {
    use hearth::auth::keys::{add_key, far_future, KeyRing};
    let (_server, smart, patient, _admin) = patient_app(db).await;
    let store = smart.store.as_ref();
    let old_kid = KeyRing::load(store).await.unwrap().current().kid.clone();
    let before = smart.launch(&Authorization::new("app", PATIENT_SCOPES, "ana", "ana-password")).await;
    let before = before["access_token"].as_str().unwrap().to_string();
    assert_eq!(smart.get(&format!("Patient/{patient}"), &before).await.status(), 200, "verified and remembered");
    let new_kid = add_key(store).await.unwrap();
    let records = store.auth_list("signing-key").await.unwrap();
    let record = |kid: &str| -> Value {
        serde_json::from_str(&records.iter().find(|(key, _)| key == kid).expect("stored key").1).unwrap()
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let retires = record(&old_kid)["retires"].as_i64().expect("the replaced key has a retirement");
    assert!((retires - (now + 3600 + 60)).abs() < 30, "an access token's lifetime and a minute: {}", retires - now);
    assert!(record(&new_kid).get("retires").is_none(), "the signing key does not retire");
    let ring = KeyRing::load(store).await.unwrap();
    assert!(ring.find(&old_kid).is_some(), "still verifies its tokens");
    // The hour has passed.
    let mut aged = record(&old_kid);
    aged["retires"] = json!(now - 1);
    store.auth_upsert("signing-key", &old_kid, &aged.to_string(), far_future()).await.unwrap();
    let ring = KeyRing::load(store).await.unwrap();
    assert!(ring.find(&old_kid).is_none());
    assert_eq!(ring.current().kid, new_kid);
    assert_eq!(ring.jwks()["keys"].as_array().unwrap().len(), 1);
    // The server reloads its keys (a token with a key id it does not know makes it look), and
    // the remembered token of the retired key stops too.
    let unknown = jsonwebtoken::encode(
        &Header { kid: Some("unknown-kid".into()), ..Header::new(Algorithm::HS256) },
        &json!({"sub": "x"}),
        &EncodingKey::from_secret(b"not the server's"),
    )
    .unwrap();
    assert_eq!(smart.get("Patient", &unknown).await.status(), 401);
    assert_eq!(smart.get(&format!("Patient/{patient}"), &before).await.status(), 401, "its key retired");
}

/// A signed-in browser skips the login page, unless the app asks for `prompt=login`; with
/// `prompt=none` no page is shown at all (an error goes back to the app). Signing out ends the
/// session for good, and from the consent page leads back to signing in.
async fn sessions_end_with_sign_out_and_prompts_are_honoured(db: Db) {
    let (_server, smart, _patient, _admin) = patient_app(db).await;
    let pkce = Pkce::new();
    let scope = "launch/patient patient/*.rs openid fhirUser";
    let page = smart.authorize("app", scope, &pkce, &[]).await.text().await.unwrap();
    let SignedIn { cookie, .. } = smart.sign_in(&page, "ana", "ana-password").await;
    let authorize_with_cookie = |extra: Vec<(&'static str, &'static str)>| {
        let mut params: Vec<(&str, String)> = vec![
            ("response_type", "code".into()),
            ("client_id", "app".into()),
            ("redirect_uri", common::smart::REDIRECT.into()),
            ("scope", scope.into()),
            ("state", "st-9".into()),
            ("aud", smart.aud.clone()),
            ("code_challenge", pkce.challenge.clone()),
            ("code_challenge_method", "S256".into()),
        ];
        params.extend(extra.into_iter().map(|(name, value)| (name, value.to_string())));
        smart.http.get(smart.url("/auth/authorize")).query(&params).header("cookie", cookie.clone()).send()
    };
    let consent = authorize_with_cookie(vec![]).await.unwrap().text().await.unwrap();
    assert!(consent.contains("name=\"decision\""), "a live session goes straight to consent");
    let again = authorize_with_cookie(vec![("prompt", "login")]).await.unwrap().text().await.unwrap();
    assert!(again.contains("name=\"password\""), "prompt=login asks to sign in again");
    let silent = authorize_with_cookie(vec![("prompt", "none")]).await.unwrap();
    assert_eq!(silent.status(), 303);
    let location = silent.headers()["location"].to_str().unwrap().to_string();
    assert_eq!(query_value(&location, "error").as_deref(), Some("consent_required"), "{location}");
    assert_eq!(query_value(&location, "state").as_deref(), Some("st-9"));

    // Another site cannot sign the browser out.
    let response = smart
        .http
        .post(smart.url("/auth/logout"))
        .header("cookie", &cookie)
        .header("origin", "https://elsewhere.example")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    assert_eq!(smart.store.auth_list("session").await.unwrap().len(), 1, "the session stays");
    // Sign out from the consent page.
    let form = [
        ("request", common::smart::input_value(&consent, "request").unwrap()),
        ("csrf", common::smart::input_value(&consent, "csrf").unwrap()),
    ];
    let own_origin = url::Url::parse(&smart.url("/")).unwrap().origin().ascii_serialization();
    let response = smart
        .http
        .post(smart.url("/auth/logout"))
        .header("cookie", &cookie)
        .header("origin", own_origin)
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let cleared = response.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(cleared.starts_with("hearth_session=;") && cleared.contains("Max-Age=0"), "{cleared}");
    assert!(response.text().await.unwrap().contains("name=\"password\""), "back to signing in");
    assert!(smart.store.auth_list("session").await.unwrap().is_empty(), "the session is gone");
    let after = authorize_with_cookie(vec![]).await.unwrap().text().await.unwrap();
    assert!(after.contains("name=\"password\""), "the old cookie no longer signs in");
    let silent = authorize_with_cookie(vec![("prompt", "none")]).await.unwrap();
    let location = silent.headers()["location"].to_str().unwrap().to_string();
    assert_eq!(query_value(&location, "error").as_deref(), Some("login_required"), "{location}");
    // Signing out without a session or a form is harmless.
    let response = smart.http.post(smart.url("/auth/logout")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.text().await.unwrap().contains("signed out"));
}

/// Signing in again in a browser that has a session (`prompt=login`, or the next person at a
/// shared computer) replaces that session: the earlier one ends for good.
async fn signing_in_again_replaces_the_browsers_session(db: Db) {
    let (_server, smart, _patient, _admin) = patient_app(db).await;
    let pkce = Pkce::new();
    let scope = "launch/patient patient/*.rs openid fhirUser";
    let page = smart.authorize("app", scope, &pkce, &[]).await.text().await.unwrap();
    let SignedIn { cookie: first, .. } = smart.sign_in(&page, "ana", "ana-password").await;
    let again = smart.authorize("app", scope, &pkce, &[("prompt", "login")]).await.text().await.unwrap();
    let sign_in_again = || smart.login_request(&again, "ana", "ana-password").header("cookie", &first);
    let cross_site = sign_in_again().header("origin", "https://elsewhere.example").send().await.unwrap();
    assert_eq!(cross_site.status(), 403, "a sign-in form posted from another site");
    let response = sign_in_again().send().await.unwrap();
    assert_eq!(response.status(), 303);
    let second = response.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_string();
    assert_ne!(second, first);
    assert_eq!(smart.store.auth_list("session").await.unwrap().len(), 1, "one session per browser");
    let consent_with = |cookie: String| {
        let request = common::smart::input_value(&again, "request").unwrap();
        smart.http.get(smart.url("/auth/consent")).query(&[("request", request)]).header("cookie", cookie).send()
    };
    let with_first = consent_with(first).await.unwrap().text().await.unwrap();
    assert!(with_first.contains("name=\"password\""), "the earlier session has ended: sign in again");
    let with_second = consent_with(second).await.unwrap().text().await.unwrap();
    assert!(with_second.contains("name=\"decision\""), "the new session goes on to consent");
}

on_both_databases!(
    binaries_follow_their_security_context,
    a_clinician_picks_the_patient_in_a_standalone_launch,
    sessions_end_with_sign_out_and_prompts_are_honoured,
    signing_in_again_replaces_the_browsers_session,
    replaced_keys_retire_when_their_tokens_expire,
    users_never_get_system_scopes_or_foreign_launches,
    patient_scopes_reach_shared_data_but_no_other_record,
    jwks_uri_and_es384_clients,
    online_access_ends_with_the_session,
    rotated_keys_reach_every_node,
    discovery_documents_agree,
    fhir_requests_need_a_valid_token,
    standalone_launch_issues_tokens,
    authorize_refuses_bad_requests,
    login_is_throttled_without_telling_who_exists,
    pkce_and_codes_are_checked,
    refresh_tokens_rotate,
    introspection_and_revocation,
    backend_services_authenticate_with_signed_assertions,
    ehr_launch_brings_its_context,
    a_proxy_chooses_among_their_patients,
);
