//! Bearer-token authentication of the admin API.
//!
//! Both the configured token and the presented one are hashed (SHA-256) before a
//! constant-time comparison, so neither the token's bytes nor its length leak through
//! timing. Tokens are never logged.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::status;

/// Accepts calls carrying `authorization: Bearer <token>` with the configured token.
#[derive(Clone)]
pub struct BearerAuth {
    expected: [u8; 32],
}

impl BearerAuth {
    /// Accepts `token`; an empty token would accept an empty header, so it is refused.
    pub fn new(token: &str) -> Option<Self> {
        (!token.is_empty()).then(|| Self {
            expected: Sha256::digest(token.as_bytes()).into(),
        })
    }

    /// Whether `header` (the `authorization` value) carries the configured token.
    fn check(&self, header: Option<&[u8]>) -> Result<(), Status> {
        let presented = header
            .and_then(|h| h.strip_prefix(b"Bearer ".as_slice()))
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                status::unauthenticated(
                    "the admin API needs `authorization: Bearer <token>` (admin.token)",
                )
            })?;
        let digest: [u8; 32] = Sha256::digest(presented).into();
        if bool::from(digest.ct_eq(&self.expected)) {
            Ok(())
        } else {
            Err(status::permission_denied(
                "the bearer token is not accepted by this host",
            ))
        }
    }
}

impl Interceptor for BearerAuth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let header = request
            .metadata()
            .get("authorization")
            .map(|v| v.as_bytes());
        self.check(header)?;
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::BearerAuth;
    use tonic::Code;

    #[test]
    fn only_the_configured_token_passes() {
        let auth = BearerAuth::new("s3cret").unwrap_or_else(|| unreachable!());
        assert!(auth.check(Some(b"Bearer s3cret")).is_ok());
        let code = |h: Option<&[u8]>| auth.check(h).map_err(|s| s.code()).err();
        assert_eq!(code(None), Some(Code::Unauthenticated));
        assert_eq!(code(Some(b"s3cret")), Some(Code::Unauthenticated));
        assert_eq!(code(Some(b"Bearer ")), Some(Code::Unauthenticated));
        assert_eq!(code(Some(b"Bearer s3cre")), Some(Code::PermissionDenied));
        assert_eq!(code(Some(b"Bearer s3cret ")), Some(Code::PermissionDenied));
        assert_eq!(code(Some(b"bearer s3cret")), Some(Code::Unauthenticated));
        assert!(BearerAuth::new("").is_none());
    }
}
