//! Finding a remote server (RFC 6120 §3.2, XEP-0368): SRV `_xmpps-server._tcp` (direct TLS)
//! and `_xmpp-server._tcp`, ordered by priority then weight, each target's A/AAAA records; the
//! domain itself on 5269 when there is no SRV record. A `.` target means the service is
//! decidedly not available (RFC 2782). Behind a trait so tests and static routes need no DNS.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::proto::rr::RData;
use starling_core::BoxFuture;

/// Default s2s port (RFC 6120 §14.7).
pub const DEFAULT_PORT: u16 = 5269;

/// One address to try.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Where to connect.
    pub addr: SocketAddr,
    /// TLS from the first byte (XEP-0368) instead of STARTTLS.
    pub direct_tls: bool,
}

/// Why a domain could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResolveError {
    /// No address found (or the SRV record says there is no service).
    #[error("no address for {0}")]
    NotFound(String),
    /// The lookups took longer than `s2s_dns_timeout`.
    #[error("DNS lookup for {0} timed out")]
    Timeout(String),
}

/// Resolves a domain to the addresses to try, in order.
pub trait Resolver: Send + Sync {
    /// The targets for `domain`, best first.
    fn resolve<'a>(&'a self, domain: &'a str) -> BoxFuture<'a, Result<Vec<Target>, ResolveError>>;
}

/// DNS through hickory, with the system's resolver configuration.
pub struct DnsResolver {
    inner: TokioResolver,
    timeout: Duration,
}

impl DnsResolver {
    /// Reads `/etc/resolv.conf` (or the platform's equivalent); every lookup of one
    /// [`Resolver::resolve`] call shares the `timeout` budget.
    pub fn system(timeout: Duration) -> Result<Self, String> {
        let mut builder = TokioResolver::builder_tokio().map_err(|e| e.to_string())?;
        builder.options_mut().timeout = timeout.min(Duration::from_secs(5));
        let inner = builder.build().map_err(|e| e.to_string())?;
        Ok(Self { inner, timeout })
    }

    async fn srv(&self, name: &str) -> Option<Vec<(u16, u16, String, u16)>> {
        let lookup = self.inner.srv_lookup(name).await.ok()?;
        let records = lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::SRV(srv) => Some((
                    srv.priority,
                    srv.weight,
                    srv.target.to_ascii().trim_end_matches('.').to_owned(),
                    srv.port,
                )),
                _ => None,
            })
            .collect();
        Some(records)
    }

    async fn addresses(&self, host: &str, port: u16, direct_tls: bool, out: &mut Vec<Target>) {
        // A trailing dot: the SRV target is already fully qualified, no search domains.
        let Ok(ips) = self.inner.lookup_ip(format!("{host}.")).await else {
            return;
        };
        for ip in ips.iter() {
            let target = Target {
                addr: SocketAddr::new(ip, port),
                direct_tls,
            };
            if !out.contains(&target) {
                out.push(target);
            }
        }
    }

    async fn lookup(&self, domain: &str) -> Result<Vec<Target>, ResolveError> {
        let mut srv: Vec<(u16, u16, String, u16, bool)> = Vec::new();
        for (prefix, direct_tls) in [("_xmpps-server._tcp", true), ("_xmpp-server._tcp", false)] {
            if let Some(records) = self.srv(&format!("{prefix}.{domain}.")).await {
                srv.extend(
                    records
                        .into_iter()
                        .map(|(p, w, t, port)| (p, w, t, port, direct_tls)),
                );
            }
        }
        let mut out = Vec::new();
        if srv.is_empty() {
            self.addresses(domain, DEFAULT_PORT, false, &mut out).await;
        } else {
            if srv.len() == 1 && srv.first().is_some_and(|r| r.2.is_empty()) {
                return Err(ResolveError::NotFound(domain.to_owned()));
            }
            order_srv(&mut srv);
            for (_, _, host, port, direct_tls) in srv {
                if !host.is_empty() {
                    self.addresses(&host, port, direct_tls, &mut out).await;
                }
            }
        }
        if out.is_empty() {
            Err(ResolveError::NotFound(domain.to_owned()))
        } else {
            Ok(out)
        }
    }
}

impl Resolver for DnsResolver {
    fn resolve<'a>(&'a self, domain: &'a str) -> BoxFuture<'a, Result<Vec<Target>, ResolveError>> {
        Box::pin(async move {
            tokio::time::timeout(self.timeout, self.lookup(domain))
                .await
                .unwrap_or_else(|_| Err(ResolveError::Timeout(domain.to_owned())))
        })
    }
}

/// Orders SRV records: lower priority first; within a priority, higher weight first, and direct
/// TLS before STARTTLS at equal weight (XEP-0368 §3 lets the client prefer either). Weighted
/// random selection (RFC 2782) is traded for a deterministic order: with one connection per
/// domain pair, spreading load across targets matters little.
pub fn order_srv(records: &mut [(u16, u16, String, u16, bool)]) {
    records.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)).then(b.4.cmp(&a.4)));
}

/// No DNS: only the static routes (for tests and closed networks).
pub struct NoDns;

impl Resolver for NoDns {
    fn resolve<'a>(&'a self, domain: &'a str) -> BoxFuture<'a, Result<Vec<Target>, ResolveError>> {
        Box::pin(async move { Err(ResolveError::NotFound(domain.to_owned())) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn srv_order() {
        let mut r = vec![
            (20, 0, "c".to_owned(), 5269, false),
            (10, 5, "b".to_owned(), 5269, false),
            (10, 50, "a".to_owned(), 5269, false),
            (10, 5, "d".to_owned(), 5270, true),
        ];
        order_srv(&mut r);
        let hosts: Vec<&str> = r.iter().map(|x| x.2.as_str()).collect();
        assert_eq!(hosts, ["a", "d", "b", "c"]);
    }

    #[tokio::test]
    async fn no_dns_finds_nothing() {
        assert_eq!(
            NoDns.resolve("x.test").await,
            Err(ResolveError::NotFound("x.test".into()))
        );
    }
}
