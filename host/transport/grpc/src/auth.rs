//! Bearer-token authentication, for the admin API (one token) and, when configured, the
//! public API (a token per caller), and the public API's per-connection call rate.
//!
//! The configured tokens and the presented one are hashed (SHA-256) and compared in constant
//! time, against every configured token whatever matched before, so neither a token's bytes,
//! its length nor its position leak through timing. Tokens are never logged; the caller id
//! a token maps to is put in the request's extensions ([`Caller`]).

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};
use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::status;

/// Who made a call, as authenticated: the public API scopes idempotency keys by it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller(pub String);

/// Accepts calls carrying `authorization: Bearer <token>` with one of the configured tokens.
#[derive(Clone)]
pub struct BearerAuth {
    /// (token digest, caller id).
    tokens: Arc<[([u8; 32], String)]>,
}

impl BearerAuth {
    /// Accepts the single `token` (the admin API); `None` when it is empty, which would
    /// accept an empty header.
    pub fn new(token: &str) -> Option<Self> {
        Self::for_callers([("admin", token)])
    }

    /// Accepts each caller's token, naming the caller; `None` when there is none (or one is
    /// empty: a misconfiguration, not an open door).
    pub fn for_callers<'a>(callers: impl IntoIterator<Item = (&'a str, &'a str)>) -> Option<Self> {
        let mut tokens = Vec::new();
        for (caller, token) in callers {
            if token.is_empty() {
                return None;
            }
            tokens.push((Sha256::digest(token.as_bytes()).into(), caller.to_owned()));
        }
        (!tokens.is_empty()).then(|| Self {
            tokens: tokens.into(),
        })
    }

    /// The caller whose token `header` (the `authorization` value) carries.
    fn check(&self, header: Option<&[u8]>) -> Result<Caller, Status> {
        let presented = header
            .and_then(|h| h.strip_prefix(b"Bearer ".as_slice()))
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                status::unauthenticated("this API needs `authorization: Bearer <token>`")
            })?;
        let digest: [u8; 32] = Sha256::digest(presented).into();
        // Every token is compared; the index of a match is selected without branching.
        let mut found = subtle::CtOption::new(0u32, 0.into());
        for (i, (expected, _)) in self.tokens.iter().enumerate() {
            let index = u32::try_from(i).unwrap_or(u32::MAX);
            let hit = digest.ct_eq(expected);
            found = subtle::CtOption::new(
                u32::conditional_select(&found.unwrap_or(0), &index, hit),
                found.is_some() | hit,
            );
        }
        let index = Option::<u32>::from(found).ok_or_else(|| {
            status::permission_denied("the bearer token is not accepted by this host")
        })?;
        let caller = usize::try_from(index)
            .ok()
            .and_then(|i| self.tokens.get(i))
            .map(|(_, caller)| caller.clone())
            .ok_or_else(|| {
                status::permission_denied("the bearer token is not accepted by this host")
            })?;
        Ok(Caller(caller))
    }
}

impl Interceptor for BearerAuth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let header = request
            .metadata()
            .get("authorization")
            .map(|v| v.as_bytes());
        let caller = self.check(header)?;
        request.extensions_mut().insert(caller);
        Ok(request)
    }
}

/// The public API's admission: the callers' tokens when configured (open otherwise), then
/// the per-connection call rate when limited.
#[derive(Clone, Default)]
pub struct CallerAuth {
    auth: Option<BearerAuth>,
    rate: Option<Arc<ConnectionRate>>,
}

impl CallerAuth {
    /// Open to every caller (no tokens configured).
    pub fn open() -> Self {
        Self::default()
    }

    pub fn tokens(auth: BearerAuth) -> Self {
        Self {
            auth: Some(auth),
            rate: None,
        }
    }

    /// At most `per_sec` calls per second per connection (bursts up to as many); more are
    /// `RESOURCE_EXHAUSTED` (`RATE_LIMITED`) with when to retry. `0` leaves it unlimited.
    #[must_use]
    pub fn with_rate_limit(mut self, per_sec: u32) -> Self {
        self.rate = NonZeroU32::new(per_sec).map(|n| {
            Arc::new(ConnectionRate {
                limit: n,
                limiter: RateLimiter::keyed(Quota::per_second(n)),
                checks: AtomicU64::new(0),
            })
        });
        self
    }
}

/// Calls per second per connection (keyed by the peer's address and port, which name one
/// TCP connection), with the state of connections long idle dropped now and then.
struct ConnectionRate {
    limit: NonZeroU32,
    limiter: DefaultKeyedRateLimiter<SocketAddr>,
    checks: AtomicU64,
}

/// Checks between two sweeps of idle connections' rate state.
const SWEEP_EVERY: u64 = 4096;

impl ConnectionRate {
    fn admit(&self, peer: Option<SocketAddr>) -> Result<(), Status> {
        let Some(peer) = peer else {
            return Ok(());
        };
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.limiter.retain_recent();
        }
        self.limiter.check_key(&peer).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            status::rate_limited(self.limit.get(), wait)
        })
    }
}

impl Interceptor for CallerAuth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let request = match &mut self.auth {
            Some(auth) => auth.call(request)?,
            None => request,
        };
        if let Some(rate) = &self.rate {
            rate.admit(request.remote_addr())?;
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::{BearerAuth, Caller};
    use tonic::Code;

    #[test]
    fn only_a_configured_token_passes_and_names_its_caller() {
        let auth = BearerAuth::for_callers([("shop", "s3cret"), ("pos", "t0ken")])
            .unwrap_or_else(|| unreachable!());
        assert_eq!(
            auth.check(Some(b"Bearer s3cret")).ok(),
            Some(Caller("shop".into()))
        );
        assert_eq!(
            auth.check(Some(b"Bearer t0ken")).ok(),
            Some(Caller("pos".into()))
        );
        let code = |h: Option<&[u8]>| auth.check(h).map_err(|s| s.code()).err();
        assert_eq!(code(None), Some(Code::Unauthenticated));
        assert_eq!(code(Some(b"s3cret")), Some(Code::Unauthenticated));
        assert_eq!(code(Some(b"Bearer ")), Some(Code::Unauthenticated));
        assert_eq!(code(Some(b"Bearer s3cre")), Some(Code::PermissionDenied));
        assert_eq!(code(Some(b"Bearer s3cret ")), Some(Code::PermissionDenied));
        assert_eq!(code(Some(b"bearer s3cret")), Some(Code::Unauthenticated));
        assert!(BearerAuth::new("").is_none());
        assert!(BearerAuth::for_callers([("shop", "x"), ("pos", "")]).is_none());
        assert!(BearerAuth::for_callers(std::iter::empty()).is_none());
    }
}
