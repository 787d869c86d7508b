//! `starling --check` / `starlingctl check`: looks over a configuration before it goes live,
//! the way `prosodyctl check` does — the config's own warnings, certificates (present, paired
//! with their key, naming every host, not expired or about to), DNS records of the hosts
//! (SRV for c2s and s2s, addresses), the listener ports and the data directory.
//!
//! Every finding is one line with its level; [`Report::failed`] is true when any is an error,
//! which the binaries turn into a non-zero exit code. Nothing here changes the system: ports
//! are probed by binding and releasing them, the data directory by creating a file in it.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::proto::rr::RData;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use starling_config::{Config, ListenerModule, SqlType};

/// Certificates expiring sooner than this are reported.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 24 * 3600);
/// Budget for each DNS lookup.
const DNS_TIMEOUT: Duration = Duration::from_secs(3);

/// How bad a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Checked and fine.
    Ok,
    /// Works, but probably not what the operator wants.
    Warning,
    /// Will not work.
    Error,
}

/// One line of the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// How bad.
    pub level: Level,
    /// What was checked (`config`, `certificate`, `dns`, `port`, `data_dir`, `cluster`).
    pub topic: &'static str,
    /// What was found, naming the host, file or address.
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.level {
            Level::Ok => "ok",
            Level::Warning => "warning",
            Level::Error => "error",
        };
        write!(f, "{level:<8}{:<12}{}", self.topic, self.message)
    }
}

/// Every finding, in the order checked.
#[derive(Debug, Default)]
pub struct Report {
    /// The findings.
    pub findings: Vec<Finding>,
}

impl Report {
    fn push(&mut self, level: Level, topic: &'static str, message: impl Into<String>) {
        self.findings.push(Finding {
            level,
            topic,
            message: message.into(),
        });
    }

    /// True if anything will not work.
    pub fn failed(&self) -> bool {
        self.findings.iter().any(|f| f.level == Level::Error)
    }

    /// Number of findings at `level`.
    pub fn count(&self, level: Level) -> usize {
        self.findings.iter().filter(|f| f.level == level).count()
    }
}

/// What to look at besides the configuration itself.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Query DNS (off for machines without a resolver).
    pub dns: bool,
    /// Probe the listener ports by binding them.
    pub ports: bool,
}

/// Checks `config` (already loaded: load errors never get here).
pub async fn run(config: &Config, options: Options) -> Report {
    let mut report = Report::default();
    let source = config.source.as_deref().map_or_else(
        || "embedded defaults".to_owned(),
        |p| p.display().to_string(),
    );
    report.push(Level::Ok, "config", format!("{source} loads"));
    for warning in &config.warnings {
        report.push(Level::Warning, "config", warning.to_string());
    }
    check_cluster(config, &mut report);
    check_certificates(config, std::time::SystemTime::now(), &mut report);
    check_data_dir(&config.data_dir, &mut report);
    if options.ports {
        check_ports(config, &mut report).await;
    }
    if options.dns {
        check_dns(config, &mut report).await;
    }
    report
}

fn check_cluster(config: &Config, report: &mut Report) {
    let Some(cluster) = &config.cluster else {
        return;
    };
    if config.sql.sql_type == SqlType::Sqlite {
        report.push(
            Level::Error,
            "cluster",
            format!(
                "node {} is clustered but uses the embedded database; set sql_type: pgsql (nodes must share one database)",
                cluster.node_name
            ),
        );
    } else {
        report.push(
            Level::Ok,
            "cluster",
            format!("node {} listens on {}", cluster.node_name, cluster.listen),
        );
    }
}

/// A certificate read from a file: the names it is valid for and when it expires.
struct CertInfo {
    file: String,
    names: Vec<String>,
    not_after: Option<std::time::SystemTime>,
}

fn read_certificates(path: &Path) -> Result<Vec<CertInfo>, String> {
    let ders: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| e.to_string())?
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for der in ders {
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(der.as_ref()) else {
            return Err("a certificate in the file cannot be parsed".to_owned());
        };
        let mut names: Vec<String> = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                    names.push(dns.to_ascii_lowercase());
                }
            }
        }
        if names.is_empty() {
            // Only certificates without SANs fall back to the subject CN (RFC 6125 §6.4.4).
            names.extend(
                cert.subject()
                    .iter_common_name()
                    .filter_map(|cn| cn.as_str().ok())
                    .map(str::to_ascii_lowercase),
            );
        }
        let secs = cert.validity().not_after.timestamp();
        let not_after = u64::try_from(secs)
            .ok()
            .map(|s| std::time::UNIX_EPOCH + Duration::from_secs(s));
        out.push(CertInfo {
            file: path.display().to_string(),
            names,
            not_after,
        });
    }
    Ok(out)
}

/// RFC 6125 §6.4.3: `*.example.org` covers exactly one label.
fn name_matches(pattern: &str, host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(suffix) => host
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
        None => pattern == host,
    }
}

fn check_certificates(config: &Config, now: std::time::SystemTime, report: &mut Report) {
    if config.certfiles.is_empty() {
        report.push(
            Level::Warning,
            "certificate",
            format!(
                "no certfiles: a self-signed certificate is generated in {}; clients and other servers will not trust it",
                config.data_dir.join("certs").display()
            ),
        );
        return;
    }
    let mut certs = Vec::new();
    for path in &config.certfiles {
        match read_certificates(path) {
            Ok(found) if found.is_empty() => report.push(
                Level::Warning,
                "certificate",
                format!(
                    "{}: no certificate in the file (a key only?)",
                    path.display()
                ),
            ),
            Ok(found) => certs.extend(found),
            Err(e) => report.push(
                Level::Error,
                "certificate",
                format!("{}: {e}", path.display()),
            ),
        }
    }
    // Keys paired with certificates, as the listeners will load them.
    if let Err(e) = starling_listener::tls::Certificates::load(
        &config.certfiles,
        &config.hosts,
        &config.data_dir,
    ) {
        report.push(Level::Error, "certificate", e.to_string());
    }
    for host in &config.hosts {
        let covering = certs
            .iter()
            .filter(|c| c.names.iter().any(|n| name_matches(n, host)))
            .max_by_key(|c| c.not_after);
        let Some(cert) = covering else {
            report.push(
                Level::Error,
                "certificate",
                format!("no certificate names {host} (clients will refuse the connection)"),
            );
            continue;
        };
        let until = cert.not_after.map(httpdate);
        match cert.not_after.map(|t| t.duration_since(now)) {
            Some(Err(_)) => report.push(
                Level::Error,
                "certificate",
                format!(
                    "{host}: the certificate in {} expired on {}",
                    cert.file,
                    until.unwrap_or_default()
                ),
            ),
            Some(Ok(left)) if left < EXPIRY_WARNING => report.push(
                Level::Warning,
                "certificate",
                format!(
                    "{host}: the certificate in {} expires in {} days ({})",
                    cert.file,
                    left.as_secs() / 86_400,
                    until.unwrap_or_default()
                ),
            ),
            _ => report.push(
                Level::Ok,
                "certificate",
                format!(
                    "{host}: {} valid until {}",
                    cert.file,
                    until.unwrap_or_default()
                ),
            ),
        }
    }
}

/// A date for humans (`2026-11-23`), from a system time.
fn httpdate(t: std::time::SystemTime) -> String {
    let days = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400);
    let (y, m, d) = civil_from_days(i64::try_from(days).unwrap_or(0));
    format!("{y:04}-{m:02}-{d:02}")
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let m = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn check_data_dir(dir: &Path, report: &mut Report) {
    if let Err(e) = std::fs::create_dir_all(dir) {
        report.push(
            Level::Error,
            "data_dir",
            format!("{}: cannot create: {e}", dir.display()),
        );
        return;
    }
    let probe = dir.join(".starling-check");
    match std::fs::write(&probe, b"") {
        Ok(()) => {
            let _ = std::fs::remove_file(&probe);
            report.push(
                Level::Ok,
                "data_dir",
                format!("{} is writable", dir.display()),
            );
        }
        Err(e) => report.push(
            Level::Error,
            "data_dir",
            format!("{}: not writable: {e}", dir.display()),
        ),
    }
}

async fn check_ports(config: &Config, report: &mut Report) {
    let mut addrs: Vec<(SocketAddr, &'static str)> = config
        .listen
        .iter()
        .map(|l| (SocketAddr::new(l.ip, l.port), l.module.ejabberd_name()))
        .collect();
    if let Some(cluster) = &config.cluster {
        addrs.push((cluster.listen, "cluster"));
    }
    for (addr, what) in addrs {
        if addr.port() == 0 {
            continue;
        }
        match tokio::net::TcpListener::bind(addr).await {
            Ok(socket) => {
                drop(socket);
                report.push(Level::Ok, "port", format!("{addr} ({what}) is free"));
            }
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => report.push(
                Level::Warning,
                "port",
                format!("{addr} ({what}) is in use: by a running node, or another server"),
            ),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => report.push(
                Level::Error,
                "port",
                format!("{addr} ({what}): permission denied (ports below 1024 need CAP_NET_BIND_SERVICE)"),
            ),
            Err(e) => report.push(Level::Error, "port", format!("{addr} ({what}): {e}")),
        }
    }
}

/// Hosts that no public DNS will ever have.
fn is_local_name(host: &str) -> bool {
    host == "localhost"
        || [
            ".localhost",
            ".local",
            ".test",
            ".invalid",
            ".example",
            ".internal",
        ]
        .iter()
        .any(|s| host.ends_with(s))
        || host.parse::<std::net::IpAddr>().is_ok()
}

async fn check_dns(config: &Config, report: &mut Report) {
    let resolver = match TokioResolver::builder_tokio().and_then(|mut b| {
        b.options_mut().timeout = DNS_TIMEOUT;
        b.options_mut().attempts = 1;
        b.build()
    }) {
        Ok(r) => r,
        Err(e) => {
            report.push(Level::Warning, "dns", format!("no DNS resolver: {e}"));
            return;
        }
    };
    let s2s = config
        .listen
        .iter()
        .any(|l| l.module == ListenerModule::S2s);
    for host in &config.hosts {
        if is_local_name(host) {
            report.push(
                Level::Ok,
                "dns",
                format!("{host}: a local name, not looked up"),
            );
            continue;
        }
        let mut services = vec![("_xmpp-client._tcp", 5222)];
        if s2s {
            services.push(("_xmpp-server._tcp", 5269));
        }
        for (service, default_port) in services {
            let name = format!("{service}.{host}.");
            let lookup =
                tokio::time::timeout(DNS_TIMEOUT * 2, resolver.srv_lookup(name.as_str())).await;
            match lookup {
                Ok(Ok(found)) => {
                    let targets: Vec<String> = found
                        .answers()
                        .iter()
                        .filter_map(|r| match &r.data {
                            RData::SRV(srv) => Some(format!(
                                "{}:{}",
                                srv.target.to_ascii().trim_end_matches('.'),
                                srv.port
                            )),
                            _ => None,
                        })
                        .collect();
                    report.push(
                        Level::Ok,
                        "dns",
                        format!("{}: {}", name.trim_end_matches('.'), targets.join(", ")),
                    );
                }
                Ok(Err(e)) if e.is_no_records_found() || e.is_nx_domain() => report.push(
                    Level::Warning,
                    "dns",
                    format!(
                        "no SRV record {}: peers will try {host}:{default_port}",
                        name.trim_end_matches('.')
                    ),
                ),
                Ok(Err(e)) => report.push(
                    Level::Warning,
                    "dns",
                    format!("{}: lookup failed: {e}", name.trim_end_matches('.')),
                ),
                Err(_) => report.push(
                    Level::Warning,
                    "dns",
                    format!("{}: lookup timed out", name.trim_end_matches('.')),
                ),
            }
        }
        match tokio::time::timeout(DNS_TIMEOUT * 2, resolver.lookup_ip(format!("{host}."))).await {
            Ok(Ok(ips)) => {
                let ips: Vec<String> = ips.iter().map(|ip| ip.to_string()).collect();
                report.push(Level::Ok, "dns", format!("{host}: {}", ips.join(", ")));
            }
            Ok(Err(e)) => report.push(
                Level::Warning,
                "dns",
                format!("{host}: no address ({e}); clients need an SRV record or an A/AAAA record"),
            ),
            Err(_) => report.push(Level::Warning, "dns", format!("{host}: lookup timed out")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_cover_one_label() {
        assert!(name_matches("example.org", "Example.org"));
        assert!(name_matches("*.example.org", "conference.example.org"));
        assert!(!name_matches("*.example.org", "example.org"));
        assert!(!name_matches("*.example.org", "a.b.example.org"));
        assert!(!name_matches("example.org", "other.org"));
    }

    #[test]
    fn dates_are_civil() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_415), (2025, 11, 23));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn local_names_are_not_looked_up() {
        assert!(is_local_name("localhost"));
        assert!(is_local_name("starling.test"));
        assert!(is_local_name("127.0.0.1"));
        assert!(!is_local_name("example.org"));
    }
}
