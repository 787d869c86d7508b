//! Starling's configuration: YAML shaped like ejabberd.yml in, one validated, immutable
//! [`Config`] out (Design §5).
//!
//! This crate owns parsing (serde-saphyr into a spanned tree), the expansion of
//! `define_macro` and `include_config_file`, validation against ejabberd's vocabulary and the
//! modules' [`OptionSpec`] tables, and the pure ACL/access-rule evaluation ([`acl`]). It
//! collects *every* finding as a [`Diagnostic`] reading `FILE:LINE:COL: key.path: message`;
//! only an error-free load becomes a `Config`. ejabberd features we ignore are warnings, values
//! that would be unsafe to ignore (`auth_method: ldap`, `sql_type: mysql`) are errors.
//!
//! It never starts anything and never logs: the server logs [`Config::warnings`] at start.

#![forbid(unsafe_code)]

pub mod acl;
mod diagnostic;
mod ejabberd;
mod listen;
mod loader;
mod s2s;
mod spec;
mod yaml;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use acl::{AccessDecision, AccessRequest, AccessRules, Acl};
pub use diagnostic::{Diagnostic, Diagnostics, Severity};
pub use listen::{HTTP_HANDLERS, Listener, ListenerModule};
pub use loader::{load_file, load_str};
pub use s2s::{S2sConfig, S2sTls};
pub use spec::{ModuleOptions, ModuleSpec, OptionKind, OptionSpec, OptionValue};

/// A validated configuration snapshot.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Served domains, normalised, at least one; default `[localhost]`.
    pub hosts: Vec<String>,
    /// Log verbosity.
    pub loglevel: LogLevel,
    /// Our key: where node state lives (SQLite file, node name); default `data`.
    pub data_dir: PathBuf,
    /// PEM files (certificate chains and keys), globs expanded.
    pub certfiles: Vec<PathBuf>,
    /// Listening sockets.
    pub listen: Vec<Listener>,
    /// How users authenticate.
    pub auth_method: AuthMethod,
    /// Named ACLs.
    pub acl: Acl,
    /// Access rules, including inline rules given in module options.
    pub access_rules: AccessRules,
    /// Global module list in file order, canonical names, options as written.
    pub modules: Vec<ModuleConfig>,
    /// Per host: the global list merged with `host_config` modules, `@HOST@` expanded.
    pub host_modules: BTreeMap<String, Vec<ModuleConfig>>,
    /// Database settings.
    pub sql: SqlConfig,
    /// Deadline for stream negotiation (our key and ejabberd's); default 30 s.
    pub negotiation_timeout: Duration,
    /// Sessions per user, from `shaper_rules: max_user_sessions`; `None` is unlimited.
    pub max_user_sessions: Option<u32>,
    /// Named traffic shapers (`shaper: {normal: 1000}`), in bytes per second.
    pub shapers: BTreeMap<String, u64>,
    /// `shaper_rules` whose value names a shaper (or `none`), by rule name; of per-ACL values
    /// the one for `all` applies.
    pub shaper_rules: BTreeMap<String, String>,
    /// Minimum time between two registrations from one IP; default 600 s, zero disables.
    pub registration_timeout: Duration,
    /// Cluster identity (our `cluster` key), if clustered.
    pub cluster: Option<ClusterConfig>,
    /// Server-to-server settings (`s2s_*`).
    pub s2s: S2sConfig,
    /// Non-fatal findings, to be logged at start.
    pub warnings: Vec<Diagnostic>,
    /// The file this was loaded from.
    pub source: Option<PathBuf>,
}

/// Log verbosity with ejabberd's names (`none` … `debug`, or 0–5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogLevel {
    /// No logs (`none`, 0).
    None,
    /// `emergency`, `alert`, `critical` (1).
    Critical,
    /// `error` (2).
    Error,
    /// `warning` (3).
    Warning,
    /// `notice`.
    Notice,
    /// `info` (4), the default.
    Info,
    /// `debug` (5).
    Debug,
}

impl LogLevel {
    /// The `tracing` filter directive for this level (`off`, `error`, `warn`, `info`,
    /// `debug`); critical maps to error and notice to info.
    pub fn tracing_directive(self) -> &'static str {
        match self {
            Self::None => "off",
            Self::Critical | Self::Error => "error",
            Self::Warning => "warn",
            Self::Notice | Self::Info => "info",
            Self::Debug => "debug",
        }
    }
}

/// How users authenticate. `internal` and `sql` both mean our database.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AuthMethod {
    /// Accounts and SCRAM keys in our database.
    Internal,
}

/// A module enabled for a host.
#[derive(Clone, Debug, PartialEq)]
pub struct ModuleConfig {
    /// Canonical name, e.g. `mod_roster`.
    pub name: String,
    /// Validated options.
    pub options: ModuleOptions,
}

/// The database back-end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SqlType {
    /// SQLite in `data_dir` (the default).
    Sqlite,
    /// PostgreSQL (required for clusters).
    Pgsql,
}

/// `sql_*` settings. Unset values keep ejabberd's defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SqlConfig {
    /// `sql_type`; default SQLite.
    pub sql_type: SqlType,
    /// `sql_server`; default `localhost`.
    pub server: String,
    /// `sql_port`; default 5432 for PostgreSQL.
    pub port: Option<u16>,
    /// `sql_database`: database name, or the SQLite file; `None` lets storage choose
    /// (`data_dir/starling.db` for SQLite, `ejabberd` for PostgreSQL).
    pub database: Option<String>,
    /// `sql_username`; default `ejabberd`.
    pub username: String,
    /// `sql_password`; default empty.
    pub password: String,
    /// `sql_pool_size`; default 10.
    pub pool_size: u32,
}

impl Default for SqlConfig {
    fn default() -> Self {
        Self {
            sql_type: SqlType::Sqlite,
            server: "localhost".to_owned(),
            port: None,
            database: None,
            username: "ejabberd".to_owned(),
            password: String::new(),
            pool_size: 10,
        }
    }
}

/// Our `cluster` section (Design §7).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    /// This node's name, e.g. `starling@n1`.
    pub node_name: String,
    /// Address the mesh listens on.
    pub listen: SocketAddr,
    /// `sql` to find peers through the shared database.
    pub discovery: ClusterDiscovery,
}

/// How nodes find each other.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClusterDiscovery {
    /// Only through `join_cluster` and the persisted member list.
    None,
    /// Nodes register in the shared database and dial fresh rows.
    Sql,
}

/// The configuration used when no file is given; every catalogue module is appended under
/// `modules:` with the options of [`EMBEDDED_MODULE_OPTIONS`] (or none).
const EMBEDDED_DEFAULT: &str = "\
hosts: [localhost]
loglevel: info
data_dir: data
listen:
  - {port: 5222, module: ejabberd_c2s, starttls_required: true}
  - {port: 5223, module: ejabberd_c2s, tls: true}
acl:
  local: {user_regexp: \"\"}
  loopback: {ip: [127.0.0.0/8, \"::1/128\"]}
access_rules:
  local: {allow: local}
  trusted_network: {allow: loopback}
modules:
";

/// Module options of the embedded defaults that differ from the modules' own: as in
/// ejabberd's default file, in-band registration is open only from this machine.
const EMBEDDED_MODULE_OPTIONS: &[(&str, &str)] = &[
    ("mod_register", "{ip_access: trusted_network}"),
    ("mod_roster", "{versioning: true}"),
];

/// Catalogue modules left out of the embedded defaults: `mod_http_upload` needs an HTTP
/// listener for its URLs, and the embedded defaults have none.
const EMBEDDED_EXCLUDED: &[&str] = &["mod_http_upload"];

impl Config {
    /// The configuration used when no file is given: `localhost`, the default listeners and
    /// every catalogue module with default options.
    pub fn embedded_default(modules: &[ModuleSpec]) -> Self {
        let mut text = String::from(EMBEDDED_DEFAULT);
        for m in modules
            .iter()
            .filter(|m| !EMBEDDED_EXCLUDED.contains(&m.name))
        {
            let options = EMBEDDED_MODULE_OPTIONS
                .iter()
                .find(|(name, _)| *name == m.name)
                .map_or("{}", |(_, o)| o);
            text.push_str(&format!("  {}: {options}\n", m.name));
        }
        match load_str(&text, "<embedded defaults>", modules) {
            Ok(config) => config,
            Err(diagnostics) => {
                // Only a module whose own defaults are invalid can get here; serve without
                // modules rather than not at all, and say why.
                let mut config = Self::base();
                config.warnings = diagnostics.0;
                config
            }
        }
    }

    /// The defaults every load starts from.
    fn base() -> Self {
        Self {
            hosts: vec!["localhost".to_owned()],
            loglevel: LogLevel::Info,
            data_dir: PathBuf::from("data"),
            certfiles: Vec::new(),
            listen: Listener::defaults(),
            auth_method: AuthMethod::Internal,
            acl: Acl::default(),
            access_rules: AccessRules::default(),
            modules: Vec::new(),
            host_modules: BTreeMap::new(),
            sql: SqlConfig::default(),
            negotiation_timeout: Duration::from_secs(30),
            max_user_sessions: None,
            shapers: BTreeMap::new(),
            shaper_rules: BTreeMap::new(),
            registration_timeout: Duration::from_secs(600),
            cluster: None,
            s2s: S2sConfig::default(),
            warnings: Vec::new(),
            source: None,
        }
    }

    /// Replaces `@HOST@` with `host` (module options such as `host: "conference.@HOST@"`).
    pub fn expand_host(value: &str, host: &str) -> String {
        value.replace("@HOST@", host)
    }

    /// The modules enabled for `host` (empty for a host we do not serve).
    pub fn modules_for_host(&self, host: &str) -> &[ModuleConfig] {
        self.host_modules.get(host).map_or(&[], Vec::as_slice)
    }

    /// The read rate in bytes per second that a listener's `shaper` names: a rule of
    /// `shaper_rules` or a shaper itself; `None` for `none` or a name that resolves to nothing.
    pub fn shaper_rate(&self, name: &str) -> Option<u64> {
        let shaper = self.shaper_rules.get(name).map_or(name, String::as_str);
        self.shapers.get(shaper).copied()
    }

    /// Evaluates an access rule: first match wins, no match denies, an unknown rule denies;
    /// `all` and `none` are built in.
    pub fn access(&self, rule: &str, req: &AccessRequest<'_>) -> AccessDecision {
        self.access_rules.evaluate(&self.acl, rule, req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CATALOGUE: &[ModuleSpec] = &[
        ModuleSpec {
            name: "mod_roster",
            aliases: &[],
            options: &[],
        },
        ModuleSpec {
            name: "mod_ping",
            aliases: &[],
            options: &[],
        },
    ];

    #[test]
    fn embedded_default() {
        let c = Config::embedded_default(CATALOGUE);
        assert_eq!(c.hosts, vec!["localhost"]);
        assert_eq!(c.listen, Listener::defaults());
        assert_eq!(c.modules.len(), 2);
        assert_eq!(c.modules_for_host("localhost").len(), 2);
        assert!(c.modules_for_host("example.org").is_empty());
        assert_eq!(c.negotiation_timeout, Duration::from_secs(30));
        assert_eq!(
            c.access("all", &AccessRequest::default()),
            AccessDecision::Allow
        );
        assert_eq!(
            c.access("none", &AccessRequest::default()),
            AccessDecision::Deny
        );
        assert_eq!(
            c.access("c2s", &AccessRequest::default()),
            AccessDecision::Deny
        );
    }

    #[test]
    fn host_expansion_and_levels() {
        assert_eq!(
            Config::expand_host("conference.@HOST@", "a.org"),
            "conference.a.org"
        );
        assert_eq!(LogLevel::Warning.tracing_directive(), "warn");
        assert_eq!(LogLevel::None.tracing_directive(), "off");
    }
}
