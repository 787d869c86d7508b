//! `listen:`: the ports we accept connections on.
//!
//! Each entry names a module with ejabberd's names or short aliases (`ejabberd_c2s`/`c2s`,
//! `ejabberd_http`/`http`, `ejabberd_s2s_in`/`s2s`, `ejabberd_service`/`service`/`component`).
//! STARTTLS is offered and required by default on c2s and s2s (RFC 6120 §5, Design §9); `tls`
//! is direct TLS on accept (XEP-0368).

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use crate::diagnostic::{Report, unknown};
use crate::ejabberd;
use crate::spec::{as_bool, is_infinity};
use crate::yaml::{Node, Value};

/// One listening socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listener {
    /// TCP port.
    pub port: u16,
    /// Address to bind; `0.0.0.0` by default (`::` accepted).
    pub ip: IpAddr,
    /// What speaks on it.
    pub module: ListenerModule,
    /// STARTTLS offered.
    pub starttls: bool,
    /// STARTTLS required before anything else.
    pub starttls_required: bool,
    /// TLS from the first byte (XEP-0368).
    pub tls: bool,
    /// Largest stanza in bytes (`infinity` is `usize::MAX`).
    pub max_stanza_size: usize,
    /// Access rule deciding who may connect (`access: c2s`).
    pub access: Option<String>,
    /// Shaper name (`shaper: c2s_shaper`).
    pub shaper: Option<String>,
    /// Our key: most connections open at once on this listener; beyond it new ones are
    /// refused; `None` is unlimited.
    pub max_connections: Option<usize>,
    /// Our key: most connections open at once from one IPv4 address or IPv6 /64.
    pub max_connections_per_ip: Option<u32>,
    /// Our key: most new connections per second from one IPv4 address or IPv6 /64 (also the
    /// burst allowed at once).
    pub max_connections_rate_per_ip: Option<u32>,
    /// Our key: accept SASL PLAIN without TLS (default false).
    pub allow_plain_without_tls: bool,
    /// Expect a PROXY v1/v2 header first.
    pub use_proxy_protocol: bool,
    /// HTTP only: path prefix and the handler module serving it, in file order.
    pub request_handlers: Vec<(String, String)>,
    /// Certificate for this listener instead of `certfiles`.
    pub certfile: Option<PathBuf>,
    /// Component secret for service listeners.
    pub password: Option<String>,
}

/// The protocol a listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ListenerModule {
    /// Client-to-server (`ejabberd_c2s`).
    C2s,
    /// HTTP: BOSH, WebSocket, API, upload (`ejabberd_http`).
    Http,
    /// Incoming server-to-server (`ejabberd_s2s_in`).
    S2s,
    /// External components, XEP-0114 (`ejabberd_service`).
    Service,
}

impl ListenerModule {
    /// ejabberd's name of the module.
    pub fn ejabberd_name(self) -> &'static str {
        match self {
            Self::C2s => "ejabberd_c2s",
            Self::Http => "ejabberd_http",
            Self::S2s => "ejabberd_s2s_in",
            Self::Service => "ejabberd_service",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        match name {
            "ejabberd_c2s" | "c2s" => Some(Self::C2s),
            "ejabberd_http" | "http" => Some(Self::Http),
            "ejabberd_s2s_in" | "s2s" => Some(Self::S2s),
            "ejabberd_service" | "service" | "component" => Some(Self::Service),
            _ => None,
        }
    }

    fn default_max_stanza_size(self) -> usize {
        match self {
            Self::S2s => 524_288,
            Self::C2s | Self::Http | Self::Service => 262_144,
        }
    }
}

const MODULE_NAMES: &[&str] = &[
    "ejabberd_c2s",
    "c2s",
    "ejabberd_http",
    "http",
    "ejabberd_s2s_in",
    "s2s",
    "ejabberd_service",
    "service",
    "component",
];

/// The `request_handlers` names an HTTP listener serves (`starling-http` mounts them).
pub const HTTP_HANDLERS: &[&str] = &[
    "ejabberd_http_ws",
    "websocket",
    "mod_bosh",
    "mod_http_bind",
    "bosh",
    "mod_http_api",
    "api",
    "mod_prometheus",
    "metrics",
    "health",
    "mod_http_upload",
];

/// ejabberd's request handlers we do not serve yet: a warning, the path is not served.
const IGNORED_HTTP_HANDLERS: &[&str] = &[
    "ejabberd_web_admin",
    "ejabberd_captcha",
    "ejabberd_oauth",
    "ejabberd_xmlrpc",
    "mod_conversejs",
    "mod_http_fileserver",
    "mod_mqtt",
    "mod_register_web",
];

const OPTIONS: &[&str] = &[
    "port",
    "ip",
    "module",
    "transport",
    "starttls",
    "starttls_required",
    "tls",
    "max_stanza_size",
    "access",
    "shaper",
    "certfile",
    "password",
    "use_proxy_protocol",
    "request_handlers",
    "allow_plain_without_tls",
    "max_connections",
    "max_connections_per_ip",
    "max_connections_rate_per_ip",
];

impl Listener {
    /// A listener of `module` on `port` with the defaults.
    pub fn new(module: ListenerModule, port: u16) -> Self {
        let encrypted_stream = matches!(module, ListenerModule::C2s | ListenerModule::S2s);
        Self {
            port,
            ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            module,
            starttls: encrypted_stream,
            starttls_required: encrypted_stream,
            tls: false,
            max_stanza_size: module.default_max_stanza_size(),
            access: None,
            shaper: None,
            max_connections: None,
            max_connections_per_ip: None,
            max_connections_rate_per_ip: None,
            allow_plain_without_tls: false,
            use_proxy_protocol: false,
            request_handlers: Vec::new(),
            certfile: None,
            password: None,
        }
    }

    /// The listeners used when `listen` is absent: c2s on 5222 (STARTTLS required) and on
    /// 5223 (direct TLS).
    pub fn defaults() -> Vec<Self> {
        let mut direct = Self::new(ListenerModule::C2s, 5223);
        direct.tls = true;
        direct.starttls = false;
        direct.starttls_required = false;
        vec![Self::new(ListenerModule::C2s, 5222), direct]
    }
}

/// Parses `listen:`. Listeners for ejabberd modules we do not serve are dropped with a warning.
/// `check_access` validates `access:` rule names.
pub(crate) fn parse_listen(
    node: &Node,
    report: &mut Report,
    check_access: &mut dyn FnMut(&str, &Node, &str, &mut Report),
) -> Vec<Listener> {
    let items = match &node.value {
        Value::Seq(items) => items.as_slice(),
        Value::Null => &[],
        _ => {
            report.error(
                &node.mark,
                "listen",
                format!("expected a list of listeners, got {}", node.describe()),
            );
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let path = format!("listen[{i}]");
        if let Some(l) = parse_listener(item, &path, report, check_access) {
            out.push(l);
        }
    }
    out
}

fn parse_listener(
    node: &Node,
    path: &str,
    report: &mut Report,
    check_access: &mut dyn FnMut(&str, &Node, &str, &mut Report),
) -> Option<Listener> {
    let Value::Map(entries) = &node.value else {
        report.error(
            &node.mark,
            path,
            format!(
                "expected a mapping with port and module, got {}",
                node.describe()
            ),
        );
        return None;
    };
    let find = |key: &str| {
        entries
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v)
    };

    // The module decides the defaults, so read it first.
    let Some(module_node) = find("module") else {
        report.error(&node.mark, path, "missing `module` (e.g. ejabberd_c2s)");
        return None;
    };
    let module_name = module_node.scalar_text().unwrap_or_default();
    let module = match ListenerModule::from_name(&module_name) {
        Some(m) => m,
        None if ejabberd::IGNORED_LISTENERS.contains(&module_name.as_str()) => {
            report.warning(
                &module_node.mark,
                &format!("{path}.module"),
                format!(
                    "listener module {module_name} is not supported yet; this listener is ignored"
                ),
            );
            return None;
        }
        None => {
            report.error(
                &module_node.mark,
                &format!("{path}.module"),
                unknown(
                    "listener module",
                    &module_name,
                    MODULE_NAMES.iter().copied(),
                ),
            );
            return None;
        }
    };

    let mut l = Listener::new(module, 0);
    let mut port_seen = false;
    let mut explicit_required = None;
    let mut explicit_starttls = None;
    let errors_before = report.items.iter().filter(|d| d.is_error()).count();
    let mut seen: Vec<String> = Vec::new();
    for (k, v) in entries {
        let name = k.scalar_text().unwrap_or_default();
        let key = format!("{path}.{name}");
        if seen.contains(&name) {
            report.error(&k.mark, &key, "set more than once");
            continue;
        }
        seen.push(name.clone());
        let bool_of = |report: &mut Report| {
            let b = as_bool(v);
            if b.is_none() {
                report.error(
                    &v.mark,
                    &key,
                    format!("expected true or false, got {}", v.describe()),
                );
            }
            b
        };
        let string_of = |report: &mut Report| match v.scalar_text() {
            Some(s) if !matches!(v.value, Value::Bool(_)) => Some(s),
            _ => {
                report.error(
                    &v.mark,
                    &key,
                    format!("expected a string, got {}", v.describe()),
                );
                None
            }
        };
        match name.as_str() {
            "module" => {}
            "port" => match v.value {
                Value::Int(p) if (0..=65535).contains(&p) => {
                    l.port = u16::try_from(p).unwrap_or_default();
                    port_seen = true;
                }
                _ => {
                    report.error(
                        &v.mark,
                        &key,
                        format!(
                            "expected an integer from 0 to 65535 (0: any free port), got {}",
                            v.describe()
                        ),
                    );
                    port_seen = true;
                }
            },
            "ip" => match v.as_str().and_then(|s| s.parse::<IpAddr>().ok()) {
                Some(ip) => l.ip = ip,
                None => report.error(
                    &v.mark,
                    &key,
                    format!(
                        "expected an IP address such as 0.0.0.0 or ::, got {}",
                        v.describe()
                    ),
                ),
            },
            "transport" => match v.as_str() {
                Some("tcp") => {}
                _ => report.error(
                    &v.mark,
                    &key,
                    format!(
                        "only tcp is supported for {module_name}, got {}",
                        v.describe()
                    ),
                ),
            },
            "starttls" => explicit_starttls = bool_of(report),
            "starttls_required" => explicit_required = bool_of(report),
            "tls" => l.tls = bool_of(report).unwrap_or(false),
            "use_proxy_protocol" => l.use_proxy_protocol = bool_of(report).unwrap_or(false),
            "allow_plain_without_tls" => {
                l.allow_plain_without_tls = bool_of(report).unwrap_or(false)
            }
            "max_stanza_size" => match &v.value {
                Value::Int(n) if *n >= 1024 => {
                    l.max_stanza_size = usize::try_from(*n).unwrap_or(usize::MAX)
                }
                Value::Str(s) if is_infinity(s) => l.max_stanza_size = usize::MAX,
                _ => report.error(
                    &v.mark,
                    &key,
                    format!(
                        "expected a size in bytes of at least 1024 or infinity, got {}",
                        v.describe()
                    ),
                ),
            },
            "access" => {
                if let Some(s) = string_of(report) {
                    check_access(&s, v, &key, report);
                    l.access = Some(s);
                }
            }
            "shaper" => l.shaper = string_of(report),
            "max_connections" => {
                l.max_connections = positive_or_infinity(v, &key, report)
                    .map(|n| usize::try_from(n).unwrap_or(usize::MAX));
            }
            "max_connections_per_ip" => {
                l.max_connections_per_ip = positive_or_infinity(v, &key, report);
            }
            "max_connections_rate_per_ip" => {
                l.max_connections_rate_per_ip = positive_or_infinity(v, &key, report);
            }
            "certfile" => l.certfile = string_of(report).map(PathBuf::from),
            "password" => l.password = string_of(report),
            "request_handlers" => l.request_handlers = parse_handlers(v, &key, report),
            _ if ejabberd::IGNORED_LISTENER_OPTIONS.contains(&name.as_str()) => {
                report.warning(
                    &k.mark,
                    &key,
                    "this ejabberd listener option is not supported yet, ignored",
                );
            }
            _ => report.error(
                &k.mark,
                &key,
                unknown("listener option", &name, OPTIONS.iter().copied()),
            ),
        }
    }
    if !port_seen {
        report.error(&node.mark, path, "missing `port`");
    }

    // STARTTLS: required unless said otherwise; pointless on a direct-TLS port.
    if l.tls {
        l.starttls = false;
        l.starttls_required = false;
    } else if matches!(module, ListenerModule::C2s | ListenerModule::S2s) {
        match (explicit_starttls, explicit_required) {
            (Some(false), Some(true)) => report.error(
                &node.mark,
                path,
                "starttls: false contradicts starttls_required: true",
            ),
            (_, Some(req)) => {
                l.starttls_required = req;
                l.starttls = explicit_starttls.unwrap_or(true);
            }
            (Some(st), None) => {
                // ejabberd's `starttls: true` alone means offered, not required.
                l.starttls = st;
                l.starttls_required = false;
            }
            (None, None) => {}
        }
        if !l.starttls {
            report.warning(
                &node.mark,
                path,
                "this listener accepts unencrypted streams",
            );
        }
    } else if explicit_starttls.is_some() || explicit_required.is_some() {
        report.warning(
            &node.mark,
            path,
            format!("STARTTLS does not apply to {module_name}; ignored"),
        );
    }
    if module != ListenerModule::Http && !l.request_handlers.is_empty() {
        report.error(
            &node.mark,
            &format!("{path}.request_handlers"),
            "request_handlers apply to ejabberd_http listeners only",
        );
    }
    let errors_after = report.items.iter().filter(|d| d.is_error()).count();
    (errors_after == errors_before).then_some(l)
}

fn parse_handlers(node: &Node, path: &str, report: &mut Report) -> Vec<(String, String)> {
    let Value::Map(entries) = &node.value else {
        report.error(
            &node.mark,
            path,
            format!(
                "expected a mapping of path: handler, got {}",
                node.describe()
            ),
        );
        return Vec::new();
    };
    let mut out: Vec<(String, String)> = Vec::new();
    for (k, v) in entries {
        let Some(p) = k.scalar_text().filter(|p| p.starts_with('/')) else {
            report.error(
                &k.mark,
                path,
                format!("expected a path starting with /, got {}", k.describe()),
            );
            continue;
        };
        let key = format!("{path}.{p}");
        if out.iter().any(|(existing, _)| *existing == p) {
            report.error(&k.mark, &key, "path listed more than once");
            continue;
        }
        match v.as_str() {
            Some(h) => {
                if IGNORED_HTTP_HANDLERS.contains(&h) {
                    report.warning(
                        &v.mark,
                        &key,
                        format!("HTTP handler {h} is not supported yet; this path is not served"),
                    );
                } else if !HTTP_HANDLERS.contains(&h) {
                    report.warning(
                        &v.mark,
                        &key,
                        format!(
                            "{} (this path is not served)",
                            unknown("HTTP handler", h, HTTP_HANDLERS.iter().copied())
                        ),
                    );
                }
                out.push((p, h.to_owned()));
            }
            None => report.error(
                &v.mark,
                &key,
                format!("expected a handler module name, got {}", v.describe()),
            ),
        }
    }
    out
}

/// A connection limit: an integer of at least 1, or `infinity` (`None`).
fn positive_or_infinity(v: &Node, key: &str, report: &mut Report) -> Option<u32> {
    match &v.value {
        Value::Int(n) if *n >= 1 => Some(u32::try_from(*n).unwrap_or(u32::MAX)),
        Value::Str(s) if is_infinity(s) => None,
        _ => {
            report.error(
                &v.mark,
                key,
                format!(
                    "expected an integer of at least 1 or infinity, got {}",
                    v.describe()
                ),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::yaml::parse;

    fn listen(text: &str) -> (Vec<Listener>, Vec<String>) {
        let mut report = Report::default();
        let node = parse(text, &Arc::from("t.yml")).unwrap();
        let mut check = |_: &str, _: &Node, _: &str, _: &mut Report| {};
        let l = parse_listen(&node, &mut report, &mut check);
        (l, report.items.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn c2s_defaults_and_aliases() {
        let (l, d) = listen(
            "- {port: 5222, module: c2s}\n- {port: 5223, module: ejabberd_c2s, tls: true, ip: \"::\"}\n- {port: 5347, module: component, password: s}\n",
        );
        assert!(d.is_empty(), "{d:?}");
        assert_eq!(l[0], Listener::new(ListenerModule::C2s, 5222));
        assert!(l[0].starttls && l[0].starttls_required && !l[0].tls);
        assert_eq!(l[0].max_stanza_size, 262_144);
        assert!(l[1].tls && !l[1].starttls_required);
        assert_eq!(l[1].ip, "::".parse::<IpAddr>().unwrap());
        assert_eq!(l[2].module, ListenerModule::Service);
        assert_eq!(l[2].password.as_deref(), Some("s"));
        assert_eq!(Listener::defaults()[1].port, 5223);
    }

    #[test]
    fn connection_limits() {
        let (l, d) = listen(
            "- {port: 5222, module: c2s, max_connections: 500, max_connections_per_ip: 10, max_connections_rate_per_ip: infinity}\n",
        );
        assert!(d.is_empty(), "{d:?}");
        assert_eq!(l[0].max_connections, Some(500));
        assert_eq!(l[0].max_connections_per_ip, Some(10));
        assert_eq!(l[0].max_connections_rate_per_ip, None);
        assert_eq!(Listener::new(ListenerModule::C2s, 1).max_connections, None);
        let (_, d) = listen("- {port: 5222, module: c2s, max_connections_per_ip: 0}\n");
        assert_eq!(d.len(), 1, "{d:?}");
        assert!(d[0].contains("at least 1"), "{d:?}");
    }

    #[test]
    fn http_handlers() {
        let (l, d) = listen(
            "- port: 5443\n  module: http\n  tls: true\n  request_handlers:\n    /ws: ejabberd_http_ws\n    /bosh: mod_bosh\n",
        );
        assert!(d.is_empty(), "{d:?}");
        assert_eq!(
            l[0].request_handlers,
            vec![
                ("/ws".into(), "ejabberd_http_ws".into()),
                ("/bosh".into(), "mod_bosh".into())
            ]
        );
        let (_, d) = listen(
            "- port: 80\n  module: http\n  request_handlers:\n    /admin: ejabberd_web_admin\n    /api: mod_http_apj\n",
        );
        assert_eq!(
            d,
            vec![
                "t.yml:4:13: warning: listen[0].request_handlers./admin: HTTP handler ejabberd_web_admin is not supported yet; this path is not served",
                "t.yml:5:11: warning: listen[0].request_handlers./api: unknown HTTP handler \"mod_http_apj\"; did you mean \"mod_http_api\"? (this path is not served)",
            ]
        );
    }

    #[test]
    fn starttls_spellings() {
        let (l, _) = listen(
            "- {port: 1, module: c2s, starttls: true}\n- {port: 2, module: s2s, starttls_required: false}\n",
        );
        assert!(l[0].starttls && !l[0].starttls_required);
        assert!(l[1].starttls && !l[1].starttls_required);
    }

    #[test]
    fn errors_and_warnings() {
        let (l, d) = listen(
            "- {port: abc, module: c2s}\n- {port: 3478, module: ejabberd_stun, transport: udp}\n- {port: 1, module: ejabberd_c2z}\n- {port: 2, module: c2s, max_stanzza_size: 1, backlog: 5}\n- {module: c2s}\n",
        );
        assert!(l.is_empty());
        assert_eq!(
            d,
            vec![
                "t.yml:1:10: listen[0].port: expected an integer from 0 to 65535 (0: any free port), got \"abc\"",
                "t.yml:2:24: warning: listen[1].module: listener module ejabberd_stun is not supported yet; this listener is ignored",
                "t.yml:3:21: listen[2].module: unknown listener module \"ejabberd_c2z\"; did you mean \"ejabberd_c2s\"?",
                "t.yml:4:26: listen[3].max_stanzza_size: unknown listener option \"max_stanzza_size\"; did you mean \"max_stanza_size\"?",
                "t.yml:4:47: warning: listen[3].backlog: this ejabberd listener option is not supported yet, ignored",
                "t.yml:5:3: listen[4]: missing `port`",
            ]
        );
    }
}
