//! A SMART Backend Services client for Hearth: the `client_credentials` grant with
//! `private_key_jwt` client authentication, then a system-level FHIR search.
//!
//! It discovers the token endpoint from `{fhir-base}/.well-known/smart-configuration`, signs a
//! client assertion (a JWT, RS384, `kid` header; `iss` = `sub` = the client id, `aud` = the token
//! endpoint, a short `exp`, a fresh `jti`), exchanges it for an access token, and lists
//! patients with `GET {fhir-base}/Patient?_count=10`.
//!
//! # Running it
//!
//! Make a key pair once; this writes `DIR/private-key.pem` (keep it secret) and `DIR/jwks.json`
//! (the public key, `kid` = its RFC 7638 thumbprint unless `--kid` is given):
//!
//! ```text
//! cargo run --example backend_service -- --generate-key ./backend-keys
//! ```
//!
//! Register the client with the public key, and start the server (`cargo run --release -- serve`,
//! in its own terminal):
//!
//! ```text
//! cargo run --release -- client add --client-id backend-service --name "Backend service" \
//!     --jwks-file ./backend-keys/jwks.json --scope "system/*.rs"
//! ```
//!
//! Then fetch a token and search (the `kid` is printed by `--generate-key`; without `--kid` the
//! key's thumbprint is used, which is what `--generate-key` names the key by default):
//!
//! ```text
//! cargo run --example backend_service -- --fhir-base http://localhost:8080/fhir \
//!     --client-id backend-service --key ./backend-keys/private-key.pem --scope "system/*.rs"
//! ```
//!
//! `--key` takes an RSA private key in PKCS#1 (`BEGIN RSA PRIVATE KEY`) or PKCS#8
//! (`BEGIN PRIVATE KEY`) PEM, so a key made with `openssl genpkey -algorithm RSA -pkeyopt
//! rsa_keygen_bits:2048` works too (give its `kid` with `--kid`).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use clap::Parser;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use oauth2::basic::{BasicClient, BasicErrorResponse};
use oauth2::{ClientId, RequestTokenError, Scope, TokenResponse, TokenUrl};
use rand::RngCore;
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use rsa::traits::PublicKeyParts;
use rsa::{RsaPrivateKey, RsaPublicKey};
use serde::Serialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// RFC 7523 client assertions.
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// How far ahead the assertion expires. SMART allows at most five minutes; staying under that
/// leaves room for the client's clock being a little ahead of the server's.
const ASSERTION_LIFETIME_SECONDS: u64 = 240;

const PRIVATE_KEY_FILE: &str = "private-key.pem";
const JWKS_FILE: &str = "jwks.json";

#[derive(Parser)]
#[command(about = "A SMART Backend Services client (client_credentials + private_key_jwt) for Hearth")]
struct Args {
    /// The server's FHIR base URL.
    #[arg(long, default_value = "http://localhost:8080/fhir")]
    fhir_base: String,
    /// The client id the service is registered under.
    #[arg(long, default_value = "backend-service")]
    client_id: String,
    /// The RSA private key (PKCS#1 or PKCS#8 PEM) that signs the client assertion.
    #[arg(long, value_name = "PEM", required_unless_present = "generate_key")]
    key: Option<PathBuf>,
    /// The id of the key, as registered in the client's JWKS (default: the key's RFC 7638
    /// thumbprint, as `--generate-key` names it).
    #[arg(long)]
    kid: Option<String>,
    /// The scopes to ask for.
    #[arg(long, default_value = "system/*.rs")]
    scope: String,
    /// Instead of fetching a token: write a new RSA 2048 key (DIR/private-key.pem) and its
    /// public JWKS (DIR/jwks.json) for `hearth client add --jwks-file`.
    #[arg(long, value_name = "DIR", conflicts_with = "key")]
    generate_key: Option<PathBuf>,
}

/// The claims of the client assertion (SMART Backend Services, RFC 7523).
#[derive(Serialize)]
struct AssertionClaims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    exp: u64,
    iat: u64,
    jti: String,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(dir) = &args.generate_key {
        return generate_key(dir, args.kid.as_deref(), &args.client_id);
    }
    let key_path = args.key.as_deref().context("--key is required (or --generate-key DIR)")?;
    let fhir_base = args.fhir_base.trim_end_matches('/');

    let pem = fs::read_to_string(key_path).with_context(|| format!("cannot read {}", key_path.display()))?;
    let private_key =
        parse_private_key(&pem).with_context(|| format!("{} is not an RSA private key", key_path.display()))?;
    let kid = match &args.kid {
        Some(kid) => kid.clone(),
        None => thumbprint(&private_key.to_public_key()),
    };
    let signing_key = EncodingKey::from_rsa_pem(pem.as_bytes())
        .with_context(|| format!("jsonwebtoken cannot use the key in {}", key_path.display()))?;

    // No redirects: the token request must not be sent on elsewhere.
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .context("cannot build the HTTP client")?;

    let token_endpoint = discover_token_endpoint(&http, fhir_base).await?;
    println!("Token endpoint: {token_endpoint}");

    let assertion = sign_assertion(&args.client_id, &token_endpoint, &kid, &signing_key)?;

    // oauth2 has no private_key_jwt support (no client authentication beyond client secrets), so
    // the assertion goes into the client_credentials request as extra form parameters (RFC 7523
    // section 2.2). Without a client secret oauth2 also sends client_id in the body, which
    // RFC 7523 allows. oauth2 still builds the request and parses the token and error responses.
    let client = BasicClient::new(ClientId::new(args.client_id.clone()))
        .set_token_uri(TokenUrl::new(token_endpoint.clone()).context("bad token_endpoint")?);
    let token = client
        .exchange_client_credentials()
        .add_scopes(args.scope.split_whitespace().map(|scope| Scope::new(scope.to_string())))
        .add_extra_param("client_assertion_type", JWT_BEARER)
        .add_extra_param("client_assertion", assertion)
        .request_async(&http)
        .await
        .map_err(|error| token_error(error, &token_endpoint))?;

    let granted = token.scopes().map(|scopes| scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" "));
    println!("Granted scopes: {}", granted.as_deref().unwrap_or("(as requested)"));
    if let Some(expires_in) = token.expires_in() {
        println!("Access token expires in {} s", expires_in.as_secs());
    }

    let url = format!("{fhir_base}/Patient");
    let response = http
        .get(&url)
        .query(&[("_count", "10")])
        .bearer_auth(token.access_token().secret())
        .header(reqwest::header::ACCEPT, "application/fhir+json")
        .send()
        .await
        .with_context(|| format!("GET {url} failed"))?;
    let status = response.status();
    let text = response.text().await.with_context(|| format!("GET {url}: cannot read the response"))?;
    let bundle: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    if !status.is_success() {
        bail!("GET {url}: HTTP {status}: {}", outcome_text(&bundle));
    }

    let patients: Vec<&Value> = bundle
        .get("entry")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.get("resource"))
        .filter(|resource| resource.get("resourceType").and_then(Value::as_str) == Some("Patient"))
        .collect();
    println!();
    match bundle.get("total") {
        Some(total) => println!("{} patients on this page ({total} in all):", patients.len()),
        None => println!("{} patients on this page:", patients.len()),
    }
    for patient in patients {
        let id = patient.get("id").and_then(Value::as_str).unwrap_or("(no id)");
        println!("  Patient/{id}  {}", person_name(patient));
    }
    Ok(())
}

/// The token endpoint advertised in smart-configuration.
async fn discover_token_endpoint(http: &reqwest::Client, fhir_base: &str) -> Result<String> {
    let url = format!("{fhir_base}/.well-known/smart-configuration");
    let response = http
        .get(&url)
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .with_context(|| format!("cannot reach {url} (is the server running?)"))?;
    if !response.status().is_success() {
        bail!("GET {url}: HTTP {}", response.status());
    }
    let config: Value = response.json().await.with_context(|| format!("{url} is not JSON"))?;
    let advertised = |name: &str, wanted: &str| {
        config
            .get(name)
            .and_then(Value::as_array)
            .is_some_and(|values| values.iter().any(|v| v.as_str() == Some(wanted)))
    };
    if !advertised("token_endpoint_auth_methods_supported", "private_key_jwt") {
        eprintln!("warning: the server does not advertise private_key_jwt; trying anyway");
    }
    if !advertised("token_endpoint_auth_signing_alg_values_supported", "RS384") {
        eprintln!("warning: the server does not advertise RS384 client assertions; trying anyway");
    }
    config
        .get("token_endpoint")
        .and_then(Value::as_str)
        .map(str::to_string)
        .with_context(|| format!("{url} has no token_endpoint"))
}

/// Signs the client assertion: RS384 with the key's id in the header.
fn sign_assertion(client_id: &str, token_endpoint: &str, kid: &str, key: &EncodingKey) -> Result<String> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).context("the clock is before 1970")?.as_secs();
    let mut jti = [0u8; 16];
    rand::rng().fill_bytes(&mut jti);
    let claims = AssertionClaims {
        iss: client_id,
        sub: client_id,
        aud: token_endpoint,
        exp: now + ASSERTION_LIFETIME_SECONDS,
        iat: now,
        jti: URL_SAFE_NO_PAD.encode(jti),
    };
    let header = Header { kid: Some(kid.to_string()), ..Header::new(Algorithm::RS384) };
    jsonwebtoken::encode(&header, &claims, key).context("cannot sign the client assertion")
}

/// Reads an RSA private key from PKCS#8 or PKCS#1 PEM.
fn parse_private_key(pem: &str) -> Result<RsaPrivateKey> {
    match RsaPrivateKey::from_pkcs8_pem(pem) {
        Ok(key) => Ok(key),
        Err(pkcs8) => RsaPrivateKey::from_pkcs1_pem(pem)
            .map_err(|pkcs1| anyhow!("neither PKCS#8 ({pkcs8}) nor PKCS#1 ({pkcs1}) PEM")),
    }
}

/// `--generate-key DIR`: writes a new private key and its public JWKS.
fn generate_key(dir: &Path, kid: Option<&str>, client_id: &str) -> Result<()> {
    println!("Generating an RSA 2048 key …");
    let private_key = RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).context("cannot generate an RSA key")?;
    let public_key = private_key.to_public_key();
    let kid = kid.map(str::to_string).unwrap_or_else(|| thumbprint(&public_key));
    let pem = private_key.to_pkcs8_pem(LineEnding::LF).context("cannot encode the private key")?;
    let jwks = json!({ "keys": [public_jwk(&public_key, &kid)] });

    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let key_path = dir.join(PRIVATE_KEY_FILE);
    let jwks_path = dir.join(JWKS_FILE);
    write_new_file(&key_path, pem.as_bytes(), true)?;
    let jwks_text = serde_json::to_string_pretty(&jwks).expect("a JWKS serialises") + "\n";
    write_new_file(&jwks_path, jwks_text.as_bytes(), false)?;

    println!("Wrote the private key to {} (keep it secret)", key_path.display());
    println!("Wrote the public JWKS to {} (kid {kid})", jwks_path.display());
    println!();
    println!("Register the client:");
    println!(
        "  cargo run --release -- client add --client-id {client_id} --jwks-file {} --scope \"system/*.rs\"",
        jwks_path.display()
    );
    println!("Then fetch a token and search:");
    println!(
        "  cargo run --example backend_service -- --client-id {client_id} --key {} --kid {kid}",
        key_path.display()
    );
    Ok(())
}

/// The public key as a JWK for RS384 signatures.
fn public_jwk(key: &RsaPublicKey, kid: &str) -> Value {
    json!({
        "kty": "RSA",
        "kid": kid,
        "use": "sig",
        "alg": "RS384",
        "n": URL_SAFE_NO_PAD.encode(key.n().to_bytes_be()),
        "e": URL_SAFE_NO_PAD.encode(key.e().to_bytes_be()),
    })
}

/// The RFC 7638 JWK thumbprint (SHA-256, base64url) of an RSA public key.
fn thumbprint(key: &RsaPublicKey) -> String {
    // The required members in lexicographic order, without whitespace.
    let canonical = format!(
        r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#,
        URL_SAFE_NO_PAD.encode(key.e().to_bytes_be()),
        URL_SAFE_NO_PAD.encode(key.n().to_bytes_be())
    );
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}

/// Writes a file that must not exist yet (so that a key is never overwritten); `secret` files
/// are readable by their owner only (on Unix).
fn write_new_file(path: &Path, contents: &[u8], secret: bool) -> Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut file = options.open(path).with_context(|| {
        format!("cannot create {} (it must not exist already; remove it to make a new key)", path.display())
    })?;
    file.write_all(contents).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Turns a failed token request into a readable error.
fn token_error<E: std::error::Error + 'static>(
    error: RequestTokenError<E, BasicErrorResponse>,
    endpoint: &str,
) -> anyhow::Error {
    match error {
        RequestTokenError::ServerResponse(response) => {
            let description = response.error_description().map(|d| format!(": {d}")).unwrap_or_default();
            anyhow!("the token endpoint refused the request: {}{description}", response.error())
        }
        RequestTokenError::Parse(error, body) => {
            anyhow!("unreadable token response from {endpoint} ({error}): {}", String::from_utf8_lossy(&body))
        }
        RequestTokenError::Request(error) => anyhow!("cannot reach {endpoint}: {}", error_chain(&error)),
        RequestTokenError::Other(message) => anyhow!("token request to {endpoint} failed: {message}"),
    }
}

/// An error and its sources, on one line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The diagnostics of an OperationOutcome, or the body as it is.
fn outcome_text(body: &Value) -> String {
    let issues: Vec<&str> = body
        .get("issue")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|issue| issue.get("diagnostics").and_then(Value::as_str))
        .collect();
    match (issues.is_empty(), body) {
        (false, _) => issues.join("; "),
        (true, Value::String(text)) => text.chars().take(500).collect(),
        (true, other) => other.to_string().chars().take(500).collect(),
    }
}

/// A person's name: the official (or first) HumanName's text, or its given and family names.
fn person_name(resource: &Value) -> String {
    let names = resource.get("name").and_then(Value::as_array);
    let Some(name) = names.and_then(|names| {
        names.iter().find(|n| n.get("use").and_then(Value::as_str) == Some("official")).or_else(|| names.first())
    }) else {
        return "(no name)".to_string();
    };
    if let Some(text) = name.get("text").and_then(Value::as_str) {
        return text.to_string();
    }
    let mut parts: Vec<&str> =
        name.get("given").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
    parts.extend(name.get("family").and_then(Value::as_str));
    if parts.is_empty() {
        "(no name)".to_string()
    } else {
        parts.join(" ")
    }
}
