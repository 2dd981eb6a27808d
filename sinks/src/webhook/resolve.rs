//! A reqwest DNS resolver that applies the SSRF guard to what a name resolves to.
//!
//! reqwest connects to the addresses its resolver returns, so checking them here and returning
//! only checked ones means the connection goes to an address that was judged: there is no second
//! lookup that a rebinding DNS server could answer differently.

use std::collections::HashSet;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use super::ssrf::{Refusal, SsrfPolicy};

/// Most addresses handed to reqwest for one name (all are checked; reqwest tries them in turn).
const MAX_ADDRS: usize = 16;

/// Resolves with the system resolver (`getaddrinfo` through tokio) and refuses the whole name
/// when any address it resolves to is refused by the policy.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    policy: Arc<SsrfPolicy>,
}

impl GuardedResolver {
    /// A resolver applying `policy`.
    pub fn new(policy: Arc<SsrfPolicy>) -> Self {
        Self { policy }
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = Arc::clone(&self.policy);
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs = resolve_checked(&host, &policy).await?;
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// Why a name did not resolve to usable addresses.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The lookup failed (no such name, resolver unreachable).
    #[error("cannot resolve {host}: {source}")]
    Lookup {
        /// The host name.
        host: String,
        /// The system resolver's error.
        #[source]
        source: io::Error,
    },
    /// The name resolved to no address.
    #[error("{host} resolves to no address")]
    NoAddress {
        /// The host name.
        host: String,
    },
    /// An address is refused by the SSRF guard.
    #[error(transparent)]
    Refused(#[from] Refusal),
}

/// Resolves `host` and checks every address against `policy`. Port 0 is returned: reqwest puts
/// the URL's port in.
pub async fn resolve_checked(
    host: &str,
    policy: &SsrfPolicy,
) -> Result<Vec<SocketAddr>, ResolveError> {
    let resolved =
        tokio::net::lookup_host((host, 0))
            .await
            .map_err(|source| ResolveError::Lookup {
                host: host.to_owned(),
                source,
            })?;
    let mut seen = HashSet::new();
    let mut addrs = Vec::new();
    for addr in resolved {
        // Every address is judged, even those past MAX_ADDRS: one refused address refuses the
        // name, so a mixed answer cannot smuggle an internal address in.
        if let Some(reason) = policy.is_refused(addr.ip()) {
            return Err(Refusal::Resolved {
                host: host.to_owned(),
                ip: addr.ip(),
                reason,
            }
            .into());
        }
        if seen.insert(addr.ip()) && addrs.len() < MAX_ADDRS {
            addrs.push(addr);
        }
    }
    if addrs.is_empty() {
        return Err(ResolveError::NoAddress {
            host: host.to_owned(),
        });
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhook::ssrf::{parse_cidr, Reason};

    #[tokio::test]
    async fn localhost_is_refused_unless_allowed() {
        let err = resolve_checked("localhost", &SsrfPolicy::strict())
            .await
            .expect_err("loopback");
        match err {
            ResolveError::Refused(Refusal::Resolved { host, reason, .. }) => {
                assert_eq!(host, "localhost");
                assert_eq!(reason, Reason::Loopback);
            }
            other => panic!("unexpected {other:?}"),
        }
        let addrs = resolve_checked("localhost", &SsrfPolicy::allow_all())
            .await
            .expect("allowed");
        assert!(addrs.iter().all(|a| a.ip().is_loopback()));
        let loopback = SsrfPolicy::new(
            false,
            vec![
                parse_cidr("127.0.0.0/8").expect("cidr"),
                parse_cidr("::1").expect("cidr"),
            ],
        );
        assert!(resolve_checked("localhost", &loopback).await.is_ok());
    }

    #[tokio::test]
    async fn ip_text_is_judged_too() {
        let err = resolve_checked("169.254.169.254", &SsrfPolicy::strict())
            .await
            .expect_err("link-local");
        assert!(err.to_string().contains("a link-local address"), "{err}");
    }
}
