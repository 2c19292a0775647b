//! Access tokens (HS256 JWTs that only this server reads) and OpenID Connect `id_token`s
//! (RS256, verifiable with `/auth/jwks`).

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use openidconnect::core::{
    CoreGenderClaim, CoreJweContentEncryptionAlgorithm, CoreJwsSigningAlgorithm, CoreRsaPrivateSigningKey,
};
use openidconnect::{
    AdditionalClaims, Audience, IdToken, IdTokenClaims, IssuerUrl, JsonWebKeyId, StandardClaims, SubjectIdentifier,
};
use serde::{Deserialize, Serialize};

use super::keys::KeyRing;

/// How long access tokens live, in seconds.
pub const ACCESS_TOKEN_SECONDS: i64 = 3600;

/// The claims of an access token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccessClaims {
    /// The FHIR base URL.
    pub iss: String,
    /// The user's name, or the client id of a backend service.
    pub sub: String,
    /// The FHIR base URL.
    pub aud: String,
    pub exp: i64,
    pub iat: i64,
    pub jti: String,
    pub client_id: String,
    pub scope: String,
    /// The authorization grant the token belongs to; revoking it revokes every token of it.
    pub grant: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encounter: Option<String>,
    /// The user's FHIR resource (`Patient/1`), when there is a user.
    #[serde(default, rename = "fhirUser", skip_serializing_if = "Option::is_none")]
    pub fhir_user: Option<String>,
    /// The generation of the user's tokens this one belongs to (see `UserRecord::epoch`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u32>,
    /// The patients `patient/` scopes reach.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub patients: Vec<String>,
    /// The patients `user/` scopes reach; absent for every patient.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_patients: Option<Vec<String>>,
    /// The RelatedPersons through which a proxy reaches patients (checked on every use).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<super::proxy::Link>,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    Malformed,
    Expired,
    WrongAudience,
}

/// Signs access tokens with the current key.
pub fn sign_access_token(keys: &KeyRing, claims: &AccessClaims) -> String {
    let key = keys.current();
    let header = Header { kid: Some(key.kid.clone()), ..Header::new(Algorithm::HS256) };
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(&key.hmac_secret))
        .expect("HS256 signing cannot fail")
}

/// Checks an access token's signature, algorithm, expiry, issuer and audience; returns its
/// claims and the id of the key that signed it. Returns `Err(None)` when the token names a key
/// this node does not know (it may be new: reload).
pub fn verify_access_token(
    keys: &KeyRing,
    token: &str,
    base_url: &str,
    now: i64,
) -> Result<(AccessClaims, String), Option<TokenError>> {
    let header = jsonwebtoken::decode_header(token).map_err(|_| Some(TokenError::Malformed))?;
    if header.alg != Algorithm::HS256 {
        return Err(Some(TokenError::Malformed));
    }
    let kid = header.kid.ok_or(Some(TokenError::Malformed))?;
    let key = keys.find(&kid).ok_or(None)?;
    // Expiry, issuer and audience are checked below on the typed claims (jsonwebtoken's own
    // checks read numbers in a way serde_json's arbitrary_precision breaks).
    let mut validation = Validation::new(Algorithm::HS256);
    validation.validate_exp = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let claims = jsonwebtoken::decode::<AccessClaims>(token, &DecodingKey::from_secret(&key.hmac_secret), &validation)
        .map_err(|_| Some(TokenError::Malformed))?
        .claims;
    if claims.exp <= now {
        return Err(Some(TokenError::Expired));
    }
    if claims.iss != base_url || claims.aud != base_url {
        return Err(Some(TokenError::WrongAudience));
    }
    Ok((claims, kid))
}

/// The SMART claim of an `id_token`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SmartClaims {
    #[serde(rename = "fhirUser", skip_serializing_if = "Option::is_none")]
    fhir_user: Option<String>,
}

impl AdditionalClaims for SmartClaims {}

/// What goes into an `id_token`.
pub struct IdTokenRequest<'a> {
    pub issuer: &'a str,
    pub subject: &'a str,
    pub client_id: &'a str,
    /// Absolute URL of the user's FHIR resource, when `fhirUser` was granted.
    pub fhir_user: Option<String>,
    pub nonce: Option<String>,
    pub now: i64,
}

/// Signs an `id_token` (RS256) with the current key.
pub fn sign_id_token(keys: &KeyRing, request: IdTokenRequest<'_>) -> Result<String, String> {
    let key = keys.current();
    let signer = CoreRsaPrivateSigningKey::from_pem(&key.rsa_pem, Some(JsonWebKeyId::new(key.kid.clone())))?;
    let at = |seconds: i64| chrono::DateTime::from_timestamp(seconds, 0).ok_or("time out of range");
    let issuer = IssuerUrl::new(request.issuer.to_string()).map_err(|e| e.to_string())?;
    let mut claims = IdTokenClaims::new(
        issuer,
        vec![Audience::new(request.client_id.to_string())],
        at(request.now + ACCESS_TOKEN_SECONDS)?,
        at(request.now)?,
        StandardClaims::new(SubjectIdentifier::new(request.subject.to_string())),
        SmartClaims { fhir_user: request.fhir_user },
    );
    if let Some(nonce) = request.nonce {
        claims = claims.set_nonce(Some(openidconnect::Nonce::new(nonce)));
    }
    let token: IdToken<SmartClaims, CoreGenderClaim, CoreJweContentEncryptionAlgorithm, CoreJwsSigningAlgorithm> =
        IdToken::new(claims, &signer, CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256, None, None)
            .map_err(|e| e.to_string())?;
    Ok(token.to_string())
}
