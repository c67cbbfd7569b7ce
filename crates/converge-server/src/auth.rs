//! JWT authentication (jsonwebtoken): who a connection or an HTTP caller is.
//!
//! One algorithm is configured (HS256 with a shared secret by default; EdDSA or RS256 with a
//! public key); a token signed any other way is refused before its signature is looked at,
//! so `alg: none` and algorithm confusion (an HS256 token "signed" with the RS256 public key)
//! never pass. `exp` is required; `nbf`, `aud` and `iss` are checked when configured or
//! present. Time comes from the caller (the hub's clock), so expiry is decided where sessions
//! are. Every refusal has its own code (docs/protocol.md section 14).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use base64::Engine;
use converge_core::{AuthError, Authenticator, DevAuthenticator, Identity};
use converge_proto::{DocId, ErrorCode, UserId};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// The claims converge reads (and `converge token` writes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// Expiry, seconds since the Unix epoch (required).
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Role names (see the permissions in docs/protocol.md).
    #[serde(default)]
    pub roles: Vec<String>,
    /// Per-document grants: document id -> role, on top of `roles`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub docs: BTreeMap<String, String>,
}

/// The key tokens are checked with.
#[derive(Clone)]
pub enum JwtKey {
    /// HS256 with a shared secret.
    Hs256(Vec<u8>),
    /// EdDSA (Ed25519) with a PEM public key.
    EdDsa(Vec<u8>),
    /// RS256 with a PEM public key.
    Rs256(Vec<u8>),
}

impl fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print a secret.
        f.write_str(match self {
            JwtKey::Hs256(_) => "Hs256(..)",
            JwtKey::EdDsa(_) => "EdDsa(..)",
            JwtKey::Rs256(_) => "Rs256(..)",
        })
    }
}

/// JWT settings.
#[derive(Debug, Clone)]
pub struct JwtConfig {
    pub key: JwtKey,
    /// Required `aud`, if set.
    pub audience: Option<String>,
    /// Required `iss`, if set.
    pub issuer: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    pub leeway_secs: u64,
}

impl JwtConfig {
    /// HS256 with this secret, no audience or issuer, 30 s leeway.
    pub fn hs256(secret: impl Into<Vec<u8>>) -> Self {
        JwtConfig {
            key: JwtKey::Hs256(secret.into()),
            audience: None,
            issuer: None,
            leeway_secs: 30,
        }
    }
}

/// How the server knows who connects.
#[derive(Debug, Clone, Default)]
pub enum AuthConfig {
    /// The token *is* the user id, unverified: only for tests and local development. This is
    /// the library default; `converge serve` always runs [`AuthConfig::Jwt`].
    #[default]
    Dev,
    Jwt(JwtConfig),
}

/// Why a JWT configuration cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("JWT key: {0}")]
pub struct KeyError(String);

impl AuthConfig {
    /// The authenticator for this configuration, shared by the hub and the HTTP API.
    pub fn authenticator(&self) -> Result<Arc<dyn Authenticator + Sync>, KeyError> {
        Ok(match self {
            AuthConfig::Dev => Arc::new(DevAuthenticator),
            AuthConfig::Jwt(c) => Arc::new(JwtAuthenticator::new(c)?),
        })
    }
}

/// Checks JWTs against one key.
pub struct JwtAuthenticator {
    algorithm: Algorithm,
    key: DecodingKey,
    validation: Validation,
    leeway_secs: u64,
}

impl fmt::Debug for JwtAuthenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtAuthenticator")
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl JwtAuthenticator {
    pub fn new(c: &JwtConfig) -> Result<Self, KeyError> {
        let (algorithm, key) = match &c.key {
            JwtKey::Hs256(secret) => {
                if secret.len() < 16 {
                    return Err(KeyError("an HS256 secret needs at least 16 bytes".into()));
                }
                (Algorithm::HS256, DecodingKey::from_secret(secret))
            }
            JwtKey::EdDsa(pem) => (
                Algorithm::EdDSA,
                DecodingKey::from_ed_pem(pem).map_err(|e| KeyError(e.to_string()))?,
            ),
            JwtKey::Rs256(pem) => (
                Algorithm::RS256,
                DecodingKey::from_rsa_pem(pem).map_err(|e| KeyError(e.to_string()))?,
            ),
        };
        let mut validation = Validation::new(algorithm);
        // Time is checked below against the caller's clock.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        let mut required = vec!["exp", "sub"];
        validation.validate_aud = c.audience.is_some();
        if let Some(aud) = &c.audience {
            validation.set_audience(&[aud]);
            required.push("aud");
        }
        if let Some(iss) = &c.issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        Ok(JwtAuthenticator {
            algorithm,
            key,
            validation,
            leeway_secs: c.leeway_secs,
        })
    }

    /// The claims of a valid token, or why it is refused.
    pub fn verify(&self, token: &str, now_ms: u64) -> Result<Claims, AuthError> {
        let refuse = |code: ErrorCode, message: String| AuthError { code, message };
        // The header first, to name the refusal: `alg: none` or another algorithm.
        let header_b64 = token.split('.').next().unwrap_or_default();
        let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header_b64.trim_end_matches('='))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .ok_or_else(|| refuse(ErrorCode::MalformedToken, "the token is not a JWT".into()))?;
        let alg = header.get("alg").and_then(|a| a.as_str()).unwrap_or("");
        let expected = format!("{:?}", self.algorithm);
        if !alg.eq_ignore_ascii_case(&expected) {
            return Err(refuse(
                ErrorCode::AlgorithmNotAllowed,
                format!("tokens must be signed with {expected}, not {alg:?}"),
            ));
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(
            |e| match e.kind() {
                ErrorKind::InvalidSignature => refuse(
                    ErrorCode::BadSignature,
                    "the signature does not verify".into(),
                ),
                ErrorKind::InvalidAudience => refuse(
                    ErrorCode::WrongAudience,
                    "the token's aud is not this server's".into(),
                ),
                ErrorKind::InvalidIssuer => refuse(
                    ErrorCode::WrongIssuer,
                    "the token's iss is not the configured issuer".into(),
                ),
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => refuse(
                    ErrorCode::AlgorithmNotAllowed,
                    format!("tokens must be signed with {expected}"),
                ),
                other => refuse(
                    ErrorCode::MalformedToken,
                    format!("the token is not valid: {other:?}"),
                ),
            },
        )?;
        let claims = data.claims;
        let now = now_ms / 1000;
        if claims.exp.saturating_add(self.leeway_secs) <= now {
            return Err(refuse(
                ErrorCode::TokenExpired,
                "the token has expired".into(),
            ));
        }
        if let Some(nbf) = claims.nbf
            && now.saturating_add(self.leeway_secs) < nbf
        {
            return Err(refuse(
                ErrorCode::TokenNotYetValid,
                "the token is not valid yet (nbf)".into(),
            ));
        }
        Ok(claims)
    }
}

impl Authenticator for JwtAuthenticator {
    fn authenticate(&self, token: Option<&str>, now_ms: u64) -> Result<Identity, AuthError> {
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            return Err(AuthError {
                code: ErrorCode::Unauthorized,
                message: "a token is required (Hello.token or Authorization: Bearer)".into(),
            });
        };
        let claims = self.verify(token, now_ms)?;
        if claims.sub == UserId::SERVER {
            return Err(AuthError {
                code: ErrorCode::Unauthorized,
                message: format!("{:?} is reserved for the server", UserId::SERVER),
            });
        }
        let user = UserId::new(claims.sub).map_err(|e| AuthError {
            code: ErrorCode::MalformedToken,
            message: e.to_string(),
        })?;
        let mut grants = Vec::new();
        for (doc, role) in claims.docs {
            let doc: DocId = doc.parse().map_err(|_| AuthError {
                code: ErrorCode::MalformedToken,
                message: format!("the grant {doc:?} does not name a document"),
            })?;
            grants.push((doc, role));
        }
        Ok(Identity {
            user,
            roles: claims.roles.into(),
            // The same leeway as the check above, or a token accepted within it would end
            // its session at the next tick.
            expires_at_ms: Some(
                claims
                    .exp
                    .saturating_add(self.leeway_secs)
                    .saturating_mul(1000),
            ),
            grants,
        })
    }
}

/// Signs claims with an HS256 secret (`converge token`, tests, backends).
pub fn mint_hs256(secret: &[u8], claims: &Claims) -> Result<String, KeyError> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .map_err(|e| KeyError(e.to_string()))
}

/// Claims for `user` with `roles`, valid from `now_secs` for `ttl_secs`.
pub fn claims(user: &str, roles: &[&str], now_secs: u64, ttl_secs: u64) -> Claims {
    Claims {
        sub: user.to_string(),
        exp: now_secs.saturating_add(ttl_secs),
        nbf: None,
        iat: Some(now_secs),
        aud: None,
        iss: None,
        roles: roles.iter().map(|r| r.to_string()).collect(),
        docs: BTreeMap::new(),
    }
}
