//! Who a connection is. Verifying a token is computation, not I/O, so it happens in the hub
//! through this trait; the auth issue plugs JWT verification in here.

use converge_proto::{DocId, ErrorCode, UserId};

/// An authenticated identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: UserId,
    /// Shared: the hub keeps one copy of each distinct set for all its sessions.
    pub roles: std::sync::Arc<[String]>,
    /// When the credential stops being valid (server time, ms), if it does.
    pub expires_at_ms: Option<u64>,
    /// Per-document grants (document, role), on top of `roles`.
    pub grants: Vec<(DocId, String)>,
}

/// Why a credential was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct AuthError {
    pub code: ErrorCode,
    pub message: String,
}

/// Turns the token of a `Hello` into an identity.
pub trait Authenticator: Send + std::fmt::Debug {
    fn authenticate(&self, token: Option<&str>, now_ms: u64) -> Result<Identity, AuthError>;
}

/// One authenticator shared by the hub and the shell (the HTTP API checks tokens too).
impl<T: Authenticator + Sync + ?Sized> Authenticator for std::sync::Arc<T> {
    fn authenticate(&self, token: Option<&str>, now_ms: u64) -> Result<Identity, AuthError> {
        (**self).authenticate(token, now_ms)
    }
}

/// Development identity: the token *is* the user id (no token: `anonymous`). It trusts
/// whoever connects, so it is only for tests, the demo and local development until JWT auth
/// lands; it is the only authenticator this build has.
#[derive(Debug, Clone, Default)]
pub struct DevAuthenticator;

impl Authenticator for DevAuthenticator {
    fn authenticate(&self, token: Option<&str>, _now_ms: u64) -> Result<Identity, AuthError> {
        if token == Some(UserId::SERVER) {
            return Err(AuthError {
                code: ErrorCode::Unauthorized,
                message: format!("{:?} is reserved for the server", UserId::SERVER),
            });
        }
        let user =
            UserId::new(token.filter(|t| !t.is_empty()).unwrap_or("anonymous")).map_err(|e| {
                AuthError {
                    code: ErrorCode::Unauthorized,
                    message: e.to_string(),
                }
            })?;
        Ok(Identity {
            user,
            roles: ["editor".to_string()].into(),
            expires_at_ms: None,
            grants: Vec::new(),
        })
    }
}
