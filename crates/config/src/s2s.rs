//! Server-to-server options (`s2s_*`, ejabberd's names) and our `s2s_static_routes`.
//!
//! These only describe policy; the s2s crate applies them (RFC 6120 §5 STARTTLS, §6 SASL
//! EXTERNAL, §13.7 certificates; XEP-0220 dialback).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::diagnostic::Report;
use crate::spec;
use crate::yaml::{Node, Value};

/// How s2s streams use TLS (`s2s_use_starttls`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum S2sTls {
    /// `false`: never offer nor use STARTTLS; dialback only.
    Disabled,
    /// `optional` (or `true`), the default: offer and use STARTTLS when the peer does.
    Optional,
    /// `required`: refuse streams without TLS; dialback over TLS is allowed.
    Required,
    /// `required_trusted`: TLS with a certificate that validates (SASL EXTERNAL); no dialback.
    RequiredTrusted,
}

/// Settings of the s2s manager.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S2sConfig {
    /// `s2s_use_starttls`; default `optional`.
    pub use_starttls: S2sTls,
    /// `s2s_certfile`: our certificate for s2s instead of `certfiles`.
    pub certfile: Option<PathBuf>,
    /// `s2s_cafile`: extra trust anchors (PEM) added to the system's.
    pub cafile: Option<PathBuf>,
    /// `s2s_access`: access rule evaluated on the remote server (its domain and IP).
    pub access: Option<String>,
    /// `s2s_dns_timeout`: DNS lookups longer than this fail; default 10 s.
    pub dns_timeout: Duration,
    /// `s2s_max_retry_delay`: after a failed connection, stanzas for that domain bounce at once
    /// for an interval doubling from 1 s up to this; default 300 s.
    pub max_retry_delay: Duration,
    /// `s2s_timeout`: idle connections close after this; default 600 s.
    pub timeout: Duration,
    /// Our `s2s_static_routes: {domain: "ip:port"}`: skips DNS for those domains.
    pub static_routes: BTreeMap<String, SocketAddr>,
}

impl Default for S2sConfig {
    fn default() -> Self {
        Self {
            use_starttls: S2sTls::Optional,
            certfile: None,
            cafile: None,
            access: None,
            dns_timeout: Duration::from_secs(10),
            max_retry_delay: Duration::from_secs(300),
            timeout: Duration::from_secs(600),
            static_routes: BTreeMap::new(),
        }
    }
}

/// Top-level keys handled here.
pub(crate) const KEYS: &[&str] = &[
    "s2s_use_starttls",
    "s2s_certfile",
    "s2s_cafile",
    "s2s_access",
    "s2s_dns_timeout",
    "s2s_max_retry_delay",
    "s2s_timeout",
    "s2s_static_routes",
];

/// Applies one `s2s_*` key to `config`. `access` names are checked by the caller.
pub(crate) fn parse_key(name: &str, node: &Node, config: &mut S2sConfig, report: &mut Report) {
    match name {
        "s2s_use_starttls" => {
            let value = match &node.value {
                Value::Bool(true) => Some(S2sTls::Optional),
                Value::Bool(false) => Some(S2sTls::Disabled),
                Value::Str(s) => match s.as_str() {
                    "false" => Some(S2sTls::Disabled),
                    "true" | "optional" => Some(S2sTls::Optional),
                    "required" => Some(S2sTls::Required),
                    "required_trusted" => Some(S2sTls::RequiredTrusted),
                    _ => None,
                },
                _ => None,
            };
            match value {
                Some(v) => config.use_starttls = v,
                None => report.error(
                    &node.mark,
                    name,
                    format!(
                        "expected false, optional, required or required_trusted, got {}",
                        node.describe()
                    ),
                ),
            }
        }
        "s2s_certfile" | "s2s_cafile" => match node.as_str() {
            Some(path) => {
                let path = Some(PathBuf::from(path));
                if name == "s2s_certfile" {
                    config.certfile = path;
                } else {
                    config.cafile = path;
                }
            }
            None => report.error(
                &node.mark,
                name,
                format!("expected a file path, got {}", node.describe()),
            ),
        },
        "s2s_access" => match node.as_str() {
            Some(rule) => config.access = Some(rule.to_owned()),
            None => report.error(
                &node.mark,
                name,
                format!("expected an access rule name, got {}", node.describe()),
            ),
        },
        "s2s_dns_timeout" | "s2s_max_retry_delay" | "s2s_timeout" => {
            match spec::parse_duration(node) {
                Ok(spec::OptionValue::Duration(d)) if !d.is_zero() => match name {
                    "s2s_dns_timeout" => config.dns_timeout = d,
                    "s2s_max_retry_delay" => config.max_retry_delay = d,
                    _ => config.timeout = d,
                },
                // `infinity`: never give up on DNS / never retry early / never idle-close.
                Ok(spec::OptionValue::Infinity) => {
                    let forever = Duration::from_secs(100 * 365 * 24 * 3600);
                    match name {
                        "s2s_dns_timeout" => config.dns_timeout = forever,
                        "s2s_max_retry_delay" => config.max_retry_delay = forever,
                        _ => config.timeout = forever,
                    }
                }
                _ => report.error(
                    &node.mark,
                    name,
                    format!(
                        "expected a positive duration such as 30, \"30 s\" or \"5 min\", got {}",
                        node.describe()
                    ),
                ),
            }
        }
        "s2s_static_routes" => {
            let Value::Map(entries) = &node.value else {
                report.error(
                    &node.mark,
                    name,
                    format!(
                        "expected a mapping of domain to \"ip:port\", got {}",
                        node.describe()
                    ),
                );
                return;
            };
            for (k, v) in entries {
                let domain = k.scalar_text().unwrap_or_default().to_lowercase();
                let key = format!("s2s_static_routes.{domain}");
                match v.as_str().and_then(|s| s.parse::<SocketAddr>().ok()) {
                    Some(addr) if !domain.is_empty() => {
                        config.static_routes.insert(domain, addr);
                    }
                    _ => report.error(
                        &v.mark,
                        &key,
                        format!(
                            "expected an address such as \"192.0.2.7:5269\", got {}",
                            v.describe()
                        ),
                    ),
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load_str;

    #[test]
    fn defaults_and_values() {
        let c = load_str("hosts: [a.test]\n", "t.yml", &[]).map_err(|e| e.0);
        let Ok(c) = c else {
            panic!("load failed: {c:?}");
        };
        assert_eq!(c.s2s, S2sConfig::default());
        let text = "hosts: [a.test]\ns2s_use_starttls: required_trusted\ns2s_dns_timeout: 3\n\
                    s2s_timeout: \"5 min\"\ns2s_max_retry_delay: infinity\ns2s_cafile: /x/ca.pem\n\
                    s2s_access: all\ns2s_static_routes: {B.test: \"127.0.0.2:5269\"}\n";
        let c = load_str(text, "t.yml", &[]).map_err(|e| e.0);
        let Ok(c) = c else {
            panic!("load failed: {c:?}");
        };
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        assert_eq!(c.s2s.use_starttls, S2sTls::RequiredTrusted);
        assert_eq!(c.s2s.dns_timeout, Duration::from_secs(3));
        assert_eq!(c.s2s.timeout, Duration::from_secs(300));
        assert!(c.s2s.max_retry_delay > Duration::from_secs(1_000_000));
        assert_eq!(c.s2s.cafile, Some(PathBuf::from("/x/ca.pem")));
        assert_eq!(c.s2s.access.as_deref(), Some("all"));
        assert_eq!(
            c.s2s.static_routes.get("b.test"),
            Some(&"127.0.0.2:5269".parse().unwrap_or_else(|_| unreachable!()))
        );
    }

    #[test]
    fn bad_values_are_errors() {
        let text = "s2s_use_starttls: maybe\ns2s_timeout: 0\ns2s_static_routes: {b.test: nowhere}\n\
                    s2s_access: no_such_rule\n";
        let Err(e) = load_str(text, "t.yml", &[]) else {
            panic!("accepted");
        };
        let keys: Vec<&str> = e.0.iter().map(|d| d.key.as_str()).collect();
        assert!(keys.contains(&"s2s_use_starttls"), "{keys:?}");
        assert!(keys.contains(&"s2s_timeout"), "{keys:?}");
        assert!(keys.contains(&"s2s_static_routes.b.test"), "{keys:?}");
        assert!(keys.contains(&"s2s_access"), "{keys:?}");
    }
}
