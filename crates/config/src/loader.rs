//! Loading: read, expand `include_config_file` and `define_macro`, validate every key, build.
//!
//! The steps (Design §5): parse each file into a spanned tree; splice included files' top-level
//! options in place (relative paths are relative to the including file, and their findings
//! name the included file); substitute macros in values; merge repeated top-level keys
//! (mappings and lists concatenate, anything else is an error); then validate every key,
//! collecting all findings. Only a load without errors becomes a [`Config`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::acl::{self, AccessRules, Acl};
use crate::diagnostic::{Diagnostic, Diagnostics, Report, Severity, unknown};
use crate::listen::parse_listen;
use crate::spec::{self, ModuleSpec, is_infinity};
use crate::yaml::{self, Mark, Node, Value};
use crate::{
    AuthMethod, ClusterConfig, ClusterDiscovery, Config, LogLevel, ModuleConfig, SqlType, ejabberd,
};

/// Top-level keys this loader implements.
const SUPPORTED: &[&str] = &[
    "hosts",
    "loglevel",
    "data_dir",
    "certfiles",
    "listen",
    "auth_method",
    "acl",
    "access_rules",
    "modules",
    "host_config",
    "define_macro",
    "include_config_file",
    "sql_type",
    "sql_server",
    "sql_port",
    "sql_database",
    "sql_username",
    "sql_password",
    "sql_pool_size",
    "negotiation_timeout",
    "registration_timeout",
    "cluster",
    "auth_password_format",
    "shaper",
    "shaper_rules",
];

/// Nested includes deeper than this are refused (a loop the path check missed, or abuse).
const MAX_INCLUDE_DEPTH: usize = 8;

/// Loads and validates a file. Findings in included files name those files.
pub fn load_file(path: &Path, modules: &[ModuleSpec]) -> Result<Config, Diagnostics> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        Diagnostics(vec![Diagnostic {
            severity: Severity::Error,
            file: origin.clone(),
            line: 0,
            column: 0,
            key: String::new(),
            message: format!("cannot read the file: {e}"),
        }])
    })?;
    let mut config = load(&text, &origin, path.parent(), modules)?;
    config.source = Some(path.to_path_buf());
    Ok(config)
}

/// Loads and validates text; `origin` names it in findings and anchors relative includes.
pub fn load_str(text: &str, origin: &str, modules: &[ModuleSpec]) -> Result<Config, Diagnostics> {
    load(text, origin, Path::new(origin).parent(), modules)
}

fn load(
    text: &str,
    origin: &str,
    dir: Option<&Path>,
    modules: &[ModuleSpec],
) -> Result<Config, Diagnostics> {
    let mut report = Report::default();
    let file: Arc<str> = Arc::from(origin);
    let root = match yaml::parse(text, &file) {
        Ok(root) => root,
        Err(e) => {
            report.error(
                &Mark {
                    file,
                    line: e.line,
                    column: e.column,
                },
                "",
                e.message,
            );
            return Err(Diagnostics(report.items));
        }
    };
    let mut entries = Vec::new();
    let mut stack = vec![PathBuf::from(origin)];
    collect(&root, dir, None, &mut stack, &mut entries, &mut report);
    let macros = collect_macros(&entries, &mut report);
    let entries: Vec<(Node, Node)> = entries
        .into_iter()
        .filter(|(k, _)| k.as_str() != Some("define_macro"))
        .map(|(k, v)| {
            let v = substitute(v, &macros, 0);
            (k, v)
        })
        .collect();
    let top = merge(entries, &mut report);
    let config = build(&top, modules, &mut report);
    // Validation walks key by key; operators read top to bottom, file by file.
    report
        .items
        .sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
    if report.has_errors() {
        return Err(Diagnostics(report.items));
    }
    Ok(Config {
        warnings: report.items,
        ..config
    })
}

/// Keys kept from an included file: `allow_only` (if given) minus `disallow`.
struct IncludeFilter {
    allow_only: Option<Vec<String>>,
    disallow: Vec<String>,
}

impl IncludeFilter {
    fn keeps(&self, key: &str) -> bool {
        !self.disallow.iter().any(|d| d == key)
            && self
                .allow_only
                .as_ref()
                .is_none_or(|a| a.iter().any(|k| k == key))
    }
}

/// Appends the top-level entries of `root` (and of the files it includes) to `out`.
fn collect(
    root: &Node,
    dir: Option<&Path>,
    filter: Option<&IncludeFilter>,
    stack: &mut Vec<PathBuf>,
    out: &mut Vec<(Node, Node)>,
    report: &mut Report,
) {
    let entries = match &root.value {
        Value::Map(entries) => entries,
        Value::Null => return,
        _ => {
            report.error(
                &root.mark,
                "",
                format!("expected a mapping of options, got {}", root.describe()),
            );
            return;
        }
    };
    for (k, v) in entries {
        let Some(name) = k.as_str() else {
            report.error(
                &k.mark,
                "",
                format!("option names are words, got {}", k.describe()),
            );
            continue;
        };
        if filter.is_some_and(|f| !f.keeps(name)) {
            continue;
        }
        if name == "include_config_file" {
            for (path_node, path, sub_filter) in include_targets(v, report) {
                include(&path_node, &path, sub_filter, dir, stack, out, report);
            }
        } else {
            out.push((k.clone(), v.clone()));
        }
    }
}

/// `include_config_file: PATH`, `[PATH, ...]` or `{PATH: {disallow: [..], allow_only: [..]}}`.
fn include_targets(node: &Node, report: &mut Report) -> Vec<(Node, String, IncludeFilter)> {
    let key = "include_config_file";
    let none = || IncludeFilter {
        allow_only: None,
        disallow: Vec::new(),
    };
    match &node.value {
        Value::Str(s) => vec![(node.clone(), s.clone(), none())],
        Value::Seq(items) => items
            .iter()
            .filter_map(|i| match i.as_str() {
                Some(s) => Some((i.clone(), s.to_owned(), none())),
                None => {
                    report.error(
                        &i.mark,
                        key,
                        format!("expected a file name, got {}", i.describe()),
                    );
                    None
                }
            })
            .collect(),
        Value::Map(entries) => {
            let mut out = Vec::new();
            for (k, v) in entries {
                let Some(path) = k.as_str() else {
                    report.error(
                        &k.mark,
                        key,
                        format!("expected a file name, got {}", k.describe()),
                    );
                    continue;
                };
                let mut filter = none();
                if let Value::Map(opts) = &v.value {
                    for (ok, ov) in opts {
                        let words = || match &ov.value {
                            Value::Seq(items) => {
                                items.iter().filter_map(Node::scalar_text).collect()
                            }
                            _ => ov.scalar_text().into_iter().collect(),
                        };
                        match ok.as_str() {
                            Some("disallow") => filter.disallow = words(),
                            Some("allow_only") => filter.allow_only = Some(words()),
                            other => report.error(
                                &ok.mark,
                                &format!("{key}.{path}"),
                                unknown(
                                    "include option",
                                    other.unwrap_or(""),
                                    ["disallow", "allow_only"],
                                ),
                            ),
                        }
                    }
                } else if v.value != Value::Null {
                    report.error(
                        &v.mark,
                        &format!("{key}.{path}"),
                        "expected {disallow: [..]} or {allow_only: [..]}",
                    );
                }
                out.push((k.clone(), path.to_owned(), filter));
            }
            out
        }
        _ => {
            report.error(
                &node.mark,
                key,
                format!(
                    "expected a file name or a list of them, got {}",
                    node.describe()
                ),
            );
            Vec::new()
        }
    }
}

fn include(
    at: &Node,
    path: &str,
    filter: IncludeFilter,
    dir: Option<&Path>,
    stack: &mut Vec<PathBuf>,
    out: &mut Vec<(Node, Node)>,
    report: &mut Report,
) {
    let key = "include_config_file";
    let resolved = match dir {
        Some(d) if Path::new(path).is_relative() => d.join(path),
        _ => PathBuf::from(path),
    };
    if stack.len() > MAX_INCLUDE_DEPTH || stack.contains(&resolved) {
        report.error(
            &at.mark,
            key,
            format!("{} includes itself", resolved.display()),
        );
        return;
    }
    let text = match std::fs::read_to_string(&resolved) {
        Ok(t) => t,
        Err(e) => {
            report.error(
                &at.mark,
                key,
                format!("cannot read {}: {e}", resolved.display()),
            );
            return;
        }
    };
    let file: Arc<str> = Arc::from(resolved.display().to_string());
    let root = match yaml::parse(&text, &file) {
        Ok(root) => root,
        Err(e) => {
            report.error(
                &Mark {
                    file,
                    line: e.line,
                    column: e.column,
                },
                "",
                e.message,
            );
            return;
        }
    };
    stack.push(resolved.clone());
    collect(&root, resolved.parent(), Some(&filter), stack, out, report);
    stack.pop();
}

/// `define_macro` entries from every file, checked.
fn collect_macros(entries: &[(Node, Node)], report: &mut Report) -> Vec<(String, Node)> {
    let mut macros: Vec<(String, Node)> = Vec::new();
    for (k, v) in entries
        .iter()
        .filter(|(k, _)| k.as_str() == Some("define_macro"))
    {
        let _ = k;
        let Value::Map(defs) = &v.value else {
            report.error(
                &v.mark,
                "define_macro",
                format!("expected a mapping of NAME: value, got {}", v.describe()),
            );
            continue;
        };
        for (name_node, value) in defs {
            let name = name_node.scalar_text().unwrap_or_default();
            let path = format!("define_macro.{name}");
            // ejabberd's macro names are capitals: substituting any string equal to a lowercase
            // word (an ACL name, a module) would silently change meaning.
            let valid = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
            if !valid {
                report.error(
                    &name_node.mark,
                    &path,
                    "macro names are written in capitals, digits and _",
                );
            } else if macros.iter().any(|(n, _)| *n == name) {
                report.error(&name_node.mark, &path, "macro defined more than once");
            } else {
                macros.push((name, value.clone()));
            }
        }
    }
    macros
}

/// Replaces every string value equal to a macro name with the macro's value. Keys are left
/// alone. Macros may use macros, up to a small depth (which also stops self-reference).
fn substitute(node: Node, macros: &[(String, Node)], depth: usize) -> Node {
    if macros.is_empty() {
        return node;
    }
    let Node { value, mark } = node;
    let value = match value {
        Value::Str(s) => match macros.iter().find(|(n, _)| *n == s) {
            Some((_, m)) if depth < 8 => substitute(m.clone(), macros, depth + 1).value,
            _ => Value::Str(s),
        },
        Value::Seq(items) => Value::Seq(
            items
                .into_iter()
                .map(|n| substitute(n, macros, depth))
                .collect(),
        ),
        Value::Map(entries) => Value::Map(
            entries
                .into_iter()
                .map(|(k, v)| (k, substitute(v, macros, depth)))
                .collect(),
        ),
        other => other,
    };
    Node { value, mark }
}

/// One top-level key with its (merged) value.
struct Top {
    name: String,
    key: Node,
    value: Node,
}

/// Merges repeated top-level keys: mappings and lists concatenate (an included file adding
/// modules or listeners), anything else set twice is an error.
fn merge(entries: Vec<(Node, Node)>, report: &mut Report) -> Vec<Top> {
    let mut out: Vec<Top> = Vec::new();
    for (k, v) in entries {
        let name = k.as_str().unwrap_or_default().to_owned();
        let Some(existing) = out.iter_mut().find(|t| t.name == name) else {
            out.push(Top {
                name,
                key: k,
                value: v,
            });
            continue;
        };
        match (&mut existing.value.value, v.value) {
            (Value::Map(a), Value::Map(b)) => a.extend(b),
            (Value::Seq(a), Value::Seq(b)) => a.extend(b),
            (Value::Null, value) => existing.value.value = value,
            (_, Value::Null) => {}
            _ => {
                let first = &existing.key.mark;
                report.error(
                    &k.mark,
                    &name,
                    format!(
                        "set more than once (first at {}:{}:{})",
                        first.file, first.line, first.column
                    ),
                );
            }
        }
    }
    out
}

/// Reads the known keys into a `Config`, reporting everything else.
fn build(top: &[Top], modules: &[ModuleSpec], report: &mut Report) -> Config {
    let mut config = Config::base();
    let get = |name: &str| top.iter().find(|t| t.name == name).map(|t| &t.value);

    if let Some(v) = get("hosts") {
        config.hosts = parse_hosts(v, report);
    }
    if let Some(v) = get("loglevel") {
        config.loglevel = parse_loglevel(v, report).unwrap_or(LogLevel::Info);
    }
    if let Some(v) = get("data_dir")
        && let Some(s) = string(v, "data_dir", report)
    {
        config.data_dir = PathBuf::from(s);
    }
    if let Some(v) = get("certfiles") {
        config.certfiles = parse_certfiles(v, report);
    }
    if let Some(v) = get("auth_method") {
        check_auth_method(v, "auth_method", report);
    }
    if let Some(v) = get("auth_password_format") {
        match v.as_str() {
            Some("scram") => {}
            Some("plain") => report.warning(
                &v.mark,
                "auth_password_format",
                "passwords are always stored as salted SCRAM keys; plain is ignored",
            ),
            _ => report.error(
                &v.mark,
                "auth_password_format",
                format!("expected scram or plain, got {}", v.describe()),
            ),
        }
    }
    for t in top {
        if t.name.starts_with("sql_") && SUPPORTED.contains(&t.name.as_str()) {
            parse_sql_key(&t.name, &t.value, &mut config, report);
        }
    }
    if let Some(v) = get("negotiation_timeout")
        && let Some(d) = duration(v, "negotiation_timeout", false, report)
    {
        config.negotiation_timeout = d;
    }
    if let Some(v) = get("registration_timeout")
        && let Some(d) = duration(v, "registration_timeout", true, report)
    {
        config.registration_timeout = d;
    }
    if let Some(v) = get("cluster") {
        config.cluster = parse_cluster(v, report);
    }

    config.acl = acl::parse_acl(get("acl"), &config.hosts, report);
    config.access_rules = acl::parse_access_rules(get("access_rules"), &config.acl, report);

    if let Some(v) = get("listen") {
        let rules = &config.access_rules;
        let mut check = |name: &str, node: &Node, path: &str, report: &mut Report| {
            acl::check_rule_name(rules, name, node, path, report);
        };
        config.listen = parse_listen(v, report, &mut check);
    }

    let mut ctx = ModuleContext {
        catalogue: modules,
        acl: &config.acl,
        rules: &mut config.access_rules,
    };
    if let Some(v) = get("modules") {
        config.modules = ctx.parse_modules(v, "modules", report);
    }
    let mut host_overrides: BTreeMap<String, Vec<ModuleConfig>> = BTreeMap::new();
    if let Some(v) = get("host_config") {
        host_overrides = parse_host_config(v, &config.hosts, &mut ctx, report);
    }
    config.host_modules = config
        .hosts
        .iter()
        .map(|h| {
            let mut list = config.modules.clone();
            for m in host_overrides.get(h).into_iter().flatten() {
                match list.iter_mut().find(|g| g.name == m.name) {
                    Some(existing) => *existing = m.clone(),
                    None => list.push(m.clone()),
                }
            }
            let list = list
                .into_iter()
                .map(|m| ModuleConfig {
                    options: m.options.expand_host(h),
                    name: m.name,
                })
                .collect();
            (h.clone(), list)
        })
        .collect();

    if let Some(v) = get("shaper_rules") {
        config.max_user_sessions = max_user_sessions(v, report);
    }
    if let Some(v) = get("shaper") {
        config.shapers = parse_shapers(v, report);
    }
    if let Some(v) = get("shaper_rules") {
        config.shaper_rules = parse_shaper_rules(v, report);
    }
    check_listener_shapers(&config, get("listen"), report);

    for t in top {
        if crate::s2s::KEYS.contains(&t.name.as_str()) {
            crate::s2s::parse_key(&t.name, &t.value, &mut config.s2s, report);
            if t.name == "s2s_access"
                && let Some(rule) = t.value.as_str()
            {
                acl::check_rule_name(&config.access_rules, rule, &t.value, "s2s_access", report);
            }
        }
    }

    for t in top {
        let name = t.name.as_str();
        if SUPPORTED.contains(&name) || crate::s2s::KEYS.contains(&name) {
            continue;
        }
        if ejabberd::IGNORED_TOP_LEVEL.contains(&name) || name.starts_with("ldap_") {
            report.warning(
                &t.key.mark,
                name,
                "this ejabberd option is not supported yet, ignored",
            );
        } else {
            let candidates = SUPPORTED
                .iter()
                .chain(crate::s2s::KEYS)
                .chain(ejabberd::IGNORED_TOP_LEVEL)
                .copied();
            report.error(&t.key.mark, name, unknown("option", name, candidates));
        }
    }
    config
}

fn string(node: &Node, key: &str, report: &mut Report) -> Option<String> {
    match &node.value {
        Value::Str(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => {
            report.error(
                &node.mark,
                key,
                format!("expected a string, got {}", node.describe()),
            );
            None
        }
    }
}

fn duration(
    node: &Node,
    key: &str,
    zero_for_infinity: bool,
    report: &mut Report,
) -> Option<Duration> {
    match spec::parse_duration(node) {
        Ok(spec::OptionValue::Duration(d)) => Some(d),
        Ok(_) if zero_for_infinity => Some(Duration::ZERO),
        _ => {
            report.error(
                &node.mark,
                key,
                format!(
                    "expected a duration such as 30, \"30 s\" or \"5 min\", got {}",
                    node.describe()
                ),
            );
            None
        }
    }
}

fn parse_hosts(node: &Node, report: &mut Report) -> Vec<String> {
    let Value::Seq(items) = &node.value else {
        report.error(
            &node.mark,
            "hosts",
            format!("expected a list of domains, got {}", node.describe()),
        );
        return vec!["localhost".to_owned()];
    };
    if items.is_empty() {
        report.error(&node.mark, "hosts", "at least one host is required");
    }
    let mut hosts: Vec<String> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let key = format!("hosts[{i}]");
        let Some(raw) = item.as_str() else {
            report.error(
                &item.mark,
                &key,
                format!("expected a domain, got {}", item.describe()),
            );
            continue;
        };
        let host = acl::normalise_domain(raw);
        let valid = acl::valid_domain(raw);
        if !valid {
            report.error(&item.mark, &key, format!("{raw:?} is not a valid domain"));
        } else if hosts.contains(&host) {
            report.error(&item.mark, &key, format!("{host} is listed more than once"));
        } else {
            hosts.push(host);
        }
    }
    hosts
}

fn parse_loglevel(node: &Node, report: &mut Report) -> Option<LogLevel> {
    const NAMES: &[&str] = &[
        "none",
        "emergency",
        "alert",
        "critical",
        "error",
        "warning",
        "notice",
        "info",
        "debug",
    ];
    let level = match &node.value {
        Value::Int(0) => Some(LogLevel::None),
        Value::Int(1) => Some(LogLevel::Critical),
        Value::Int(2) => Some(LogLevel::Error),
        Value::Int(3) => Some(LogLevel::Warning),
        Value::Int(4) => Some(LogLevel::Info),
        Value::Int(5) => Some(LogLevel::Debug),
        Value::Str(s) => match s.as_str() {
            "none" => Some(LogLevel::None),
            "emergency" | "alert" | "critical" => Some(LogLevel::Critical),
            "error" => Some(LogLevel::Error),
            "warning" => Some(LogLevel::Warning),
            "notice" => Some(LogLevel::Notice),
            "info" => Some(LogLevel::Info),
            "debug" => Some(LogLevel::Debug),
            other => {
                report.error(
                    &node.mark,
                    "loglevel",
                    unknown("log level", other, NAMES.iter().copied()),
                );
                return None;
            }
        },
        _ => None,
    };
    if level.is_none() {
        report.error(
            &node.mark,
            "loglevel",
            format!(
                "expected one of {} or 0 to 5, got {}",
                NAMES.join(", "),
                node.describe()
            ),
        );
    }
    level
}

fn parse_certfiles(node: &Node, report: &mut Report) -> Vec<PathBuf> {
    let items: Vec<&Node> = match &node.value {
        Value::Seq(items) => items.iter().collect(),
        Value::Str(_) => vec![node],
        _ => {
            report.error(
                &node.mark,
                "certfiles",
                format!("expected a list of PEM files, got {}", node.describe()),
            );
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let key = format!("certfiles[{i}]");
        let Some(pattern) = item.as_str() else {
            report.error(
                &item.mark,
                &key,
                format!("expected a file name, got {}", item.describe()),
            );
            continue;
        };
        let found = expand_glob(pattern);
        if found.is_empty() {
            report.warning(&item.mark, &key, format!("no file matches {pattern}"));
        }
        out.extend(found);
    }
    out
}

/// Expands `*` and `?` in the last path component; a plain path is returned if it exists.
fn expand_glob(pattern: &str) -> Vec<PathBuf> {
    let path = Path::new(pattern);
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    if !name.contains(['*', '?']) {
        return if path.exists() {
            vec![path.to_path_buf()]
        } else {
            Vec::new()
        };
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let Ok(read) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = read
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_str().is_some_and(|n| glob_match(name, n)))
        .map(|e| dir.join(e.file_name()))
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    out
}

/// `*` (any run) and `?` (one character) matching, iterative with backtracking.
fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ni));
                pi += 1;
            }
            Some(c) if *c == '?' || Some(c) == n.get(ni) => {
                pi += 1;
                ni += 1;
            }
            _ => match star {
                Some((sp, sn)) => {
                    pi = sp + 1;
                    ni = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    p.get(pi..)
        .is_some_and(|rest| rest.iter().all(|c| *c == '*'))
}

fn check_auth_method(node: &Node, key: &str, report: &mut Report) -> Option<AuthMethod> {
    const OURS: &[&str] = &["internal", "sql"];
    const UNSAFE: &[&str] = &["ldap", "external", "anonymous", "pam", "jwt", "mnesia"];
    let items: Vec<&Node> = match &node.value {
        Value::Seq(items) if !items.is_empty() => items.iter().collect(),
        _ => vec![node],
    };
    let mut ok = true;
    for item in items {
        match item.as_str() {
            Some(m) if OURS.contains(&m) => {}
            Some(m) if UNSAFE.contains(&m) => {
                ok = false;
                report.error(
                    &item.mark,
                    key,
                    format!("auth_method {m} is not supported; ignoring it would authenticate the wrong users (use internal or sql)"),
                );
            }
            Some(m) => {
                ok = false;
                report.error(
                    &item.mark,
                    key,
                    unknown("auth_method", m, OURS.iter().chain(UNSAFE).copied()),
                );
            }
            None => {
                ok = false;
                report.error(
                    &item.mark,
                    key,
                    format!("expected internal or sql, got {}", item.describe()),
                );
            }
        }
    }
    ok.then_some(AuthMethod::Internal)
}

fn parse_sql_key(name: &str, v: &Node, config: &mut Config, report: &mut Report) {
    let sql = &mut config.sql;
    match name {
        "sql_type" => match v.as_str() {
            Some("sqlite") => sql.sql_type = SqlType::Sqlite,
            Some("pgsql") => sql.sql_type = SqlType::Pgsql,
            Some(t @ ("mysql" | "mssql" | "odbc")) => report.error(
                &v.mark,
                name,
                format!("sql_type {t} is not supported (sqlite or pgsql); the data would not be where you expect it"),
            ),
            Some(t) => report.error(&v.mark, name, unknown("sql_type", t, ["sqlite", "pgsql"])),
            None => report.error(&v.mark, name, format!("expected sqlite or pgsql, got {}", v.describe())),
        },
        "sql_server" => {
            if let Some(s) = string(v, name, report) {
                sql.server = s;
            }
        }
        "sql_database" => sql.database = string(v, name, report),
        "sql_username" => {
            if let Some(s) = string(v, name, report) {
                sql.username = s;
            }
        }
        "sql_password" => {
            if let Some(s) = string(v, name, report) {
                sql.password = s;
            }
        }
        "sql_port" => match v.value {
            Value::Int(p) if (1..=65535).contains(&p) => sql.port = u16::try_from(p).ok(),
            _ => report.error(&v.mark, name, format!("expected an integer from 1 to 65535, got {}", v.describe())),
        },
        "sql_pool_size" => match v.value {
            Value::Int(n) if (1..=1000).contains(&n) => sql.pool_size = u32::try_from(n).unwrap_or(10),
            _ => report.error(&v.mark, name, format!("expected an integer from 1 to 1000, got {}", v.describe())),
        },
        _ => {}
    }
}

fn parse_cluster(node: &Node, report: &mut Report) -> Option<ClusterConfig> {
    const KEYS: &[&str] = &["node_name", "listen", "discovery"];
    let Value::Map(entries) = &node.value else {
        report.error(
            &node.mark,
            "cluster",
            format!(
                "expected a mapping with node_name and listen, got {}",
                node.describe()
            ),
        );
        return None;
    };
    let mut node_name = None;
    let mut listen = None;
    let mut discovery = ClusterDiscovery::None;
    let errors_before = report.items.iter().filter(|d| d.is_error()).count();
    for (k, v) in entries {
        let name = k.scalar_text().unwrap_or_default();
        let key = format!("cluster.{name}");
        match name.as_str() {
            "node_name" => match v.as_str() {
                Some(s) if s.contains('@') && !s.starts_with('@') => node_name = Some(s.to_owned()),
                _ => report.error(
                    &v.mark,
                    &key,
                    format!("expected a name such as starling@n1, got {}", v.describe()),
                ),
            },
            "listen" => match v.as_str().and_then(|s| s.parse().ok()) {
                Some(addr) => listen = Some(addr),
                None => report.error(
                    &v.mark,
                    &key,
                    format!(
                        "expected an address such as \"10.0.0.1:5370\", got {}",
                        v.describe()
                    ),
                ),
            },
            "discovery" => match v.as_str() {
                Some("sql") => discovery = ClusterDiscovery::Sql,
                Some("none") => discovery = ClusterDiscovery::None,
                _ => report.error(
                    &v.mark,
                    &key,
                    format!("expected none or sql, got {}", v.describe()),
                ),
            },
            _ => report.error(
                &k.mark,
                &key,
                unknown("cluster option", &name, KEYS.iter().copied()),
            ),
        }
    }
    match (node_name, listen) {
        (Some(node_name), Some(listen)) => Some(ClusterConfig {
            node_name,
            listen,
            discovery,
        }),
        (n, l) => {
            // A present but invalid value was reported already; only report what is absent.
            let clean = report.items.iter().filter(|d| d.is_error()).count() == errors_before;
            if n.is_none() && clean {
                report.error(&node.mark, "cluster", "missing node_name");
            }
            if l.is_none() && clean {
                report.error(&node.mark, "cluster", "missing listen");
            }
            None
        }
    }
}

/// `shaper_rules: max_user_sessions`: a number, `infinity`, or per-ACL values of which the one
/// for `all` (or the unconditional one) applies.
fn max_user_sessions(node: &Node, report: &mut Report) -> Option<u32> {
    let Value::Map(entries) = &node.value else {
        return None;
    };
    let (k, v) = entries
        .iter()
        .find(|(k, _)| k.as_str() == Some("max_user_sessions"))?;
    let _ = k;
    let key = "shaper_rules.max_user_sessions";
    let number = |n: &Node| match &n.value {
        Value::Int(i) => u32::try_from(*i).ok().map(Some),
        Value::Str(s) if is_infinity(s) => Some(None),
        _ => None,
    };
    let unconditional = |n: &Node| -> Option<Option<u32>> {
        match &n.value {
            Value::Int(_) | Value::Str(_) => number(n),
            Value::Map(pairs) => pairs
                .iter()
                .find(|(_, acl)| acl.as_str() == Some("all"))
                .and_then(|(num, _)| number(num)),
            _ => None,
        }
    };
    let found = match &v.value {
        Value::Seq(items) => items.iter().find_map(unconditional),
        _ => unconditional(v),
    };
    match found {
        Some(limit) => {
            if !matches!(v.value, Value::Int(_) | Value::Str(_)) {
                report.warning(&v.mark, key, "per-ACL session limits are not supported yet; the value for `all` applies to everyone");
            }
            limit
        }
        None => {
            report.error(
                &v.mark,
                key,
                format!(
                    "expected a number, infinity, or a value for `all`, got {}",
                    v.describe()
                ),
            );
            None
        }
    }
}

/// `shaper: {NAME: RATE}` or `{NAME: {rate: RATE, burst_size: N}}`: bytes per second.
fn parse_shapers(node: &Node, report: &mut Report) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let Value::Map(entries) = &node.value else {
        report.error(
            &node.mark,
            "shaper",
            format!(
                "expected a map of shaper names to rates, got {}",
                node.describe()
            ),
        );
        return out;
    };
    for (k, v) in entries {
        let Some(name) = k.scalar_text() else {
            continue;
        };
        let key = format!("shaper.{name}");
        let rate = match &v.value {
            Value::Map(fields) => {
                for (f, _) in fields {
                    if f.as_str() == Some("burst_size") {
                        report.warning(
                            &f.mark,
                            &key,
                            "burst_size is not supported; the burst is one second of rate",
                        );
                    }
                }
                fields
                    .iter()
                    .find(|(f, _)| f.as_str() == Some("rate"))
                    .map(|(_, r)| r)
            }
            _ => Some(v),
        };
        match rate.map(|r| &r.value) {
            Some(Value::Int(n)) if *n >= 1 => {
                out.insert(name, u64::try_from(*n).unwrap_or(u64::MAX));
            }
            _ => report.error(
                &v.mark,
                &key,
                format!(
                    "expected a rate in bytes per second (at least 1), got {}",
                    v.describe()
                ),
            ),
        }
    }
    out
}

/// The `shaper_rules` whose value is a name (a shaper or `none`): `RULE: NAME`, or per-ACL
/// `RULE: {NAME: ACL}` / `[{NAME: ACL}]`, of which the value for `all` applies. Numeric rules
/// (`max_user_sessions`, `max_user_offline_messages`) are read elsewhere.
fn parse_shaper_rules(node: &Node, report: &mut Report) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Value::Map(entries) = &node.value else {
        return out;
    };
    let name_for_all = |n: &Node| -> Option<String> {
        match &n.value {
            Value::Str(s) => Some(s.clone()),
            Value::Map(pairs) => pairs
                .iter()
                .find(|(_, acl)| acl.as_str() == Some("all"))
                .and_then(|(name, _)| name.as_str().map(str::to_owned)),
            _ => None,
        }
    };
    for (k, v) in entries {
        let Some(rule) = k.scalar_text() else {
            continue;
        };
        let found = match &v.value {
            Value::Seq(items) => items.iter().find_map(name_for_all),
            _ => name_for_all(v),
        };
        // Numeric rules (`max_user_sessions: 10`, `5000: admin`) are not shaper names.
        let Some(name) = found.filter(|n| n.parse::<i64>().is_err() && !is_infinity(n)) else {
            continue;
        };
        if !matches!(v.value, Value::Str(_)) {
            report.warning(
                &v.mark,
                &format!("shaper_rules.{rule}"),
                "per-ACL shapers are not supported yet; the value for `all` applies to everyone",
            );
        }
        out.insert(rule, name);
    }
    out
}

/// A listener's `shaper` must name a rule of `shaper_rules`, a shaper, or `none`.
fn check_listener_shapers(config: &Config, listen: Option<&Node>, report: &mut Report) {
    let Some(listen) = listen else {
        return;
    };
    for l in &config.listen {
        let Some(name) = l.shaper.as_deref() else {
            continue;
        };
        let target = config.shaper_rules.get(name).map_or(name, String::as_str);
        if target != "none" && !config.shapers.contains_key(target) {
            report.error(
                &listen.mark,
                &format!("listen.{}.shaper", l.port),
                format!("{name} is neither a shaper nor a rule of shaper_rules naming one"),
            );
        }
    }
}

/// What module validation needs: the catalogue, and the ACLs/rules for `AccessRule` options.
struct ModuleContext<'a> {
    catalogue: &'a [ModuleSpec],
    acl: &'a Acl,
    rules: &'a mut AccessRules,
}

impl ModuleContext<'_> {
    fn parse_modules(&mut self, node: &Node, path: &str, report: &mut Report) -> Vec<ModuleConfig> {
        let entries = match &node.value {
            Value::Map(entries) => entries.as_slice(),
            Value::Null => &[],
            _ => {
                report.error(
                    &node.mark,
                    path,
                    format!(
                        "expected a mapping of module: options, got {}",
                        node.describe()
                    ),
                );
                return Vec::new();
            }
        };
        let mut out: Vec<ModuleConfig> = Vec::new();
        for (k, v) in entries {
            let Some(written) = k.as_str() else {
                report.error(
                    &k.mark,
                    path,
                    format!("expected a module name, got {}", k.describe()),
                );
                continue;
            };
            let key = format!("{path}.{written}");
            let spec = self
                .catalogue
                .iter()
                .find(|m| m.name == written || m.aliases.contains(&written));
            let Some(spec) = spec else {
                if ejabberd::module_options(written).is_some() {
                    report.warning(
                        &k.mark,
                        &key,
                        format!("module {written} is not supported yet, ignored"),
                    );
                } else {
                    let names = self
                        .catalogue
                        .iter()
                        .map(|m| m.name)
                        .chain(ejabberd::MODULES.iter().map(|(n, _)| *n));
                    report.error(&k.mark, &key, unknown("module", written, names));
                }
                continue;
            };
            if out.iter().any(|m| m.name == spec.name) {
                report.error(&k.mark, &key, "module listed more than once");
                continue;
            }
            let ejabberd_options = ejabberd::module_options(spec.name).unwrap_or(&[]);
            let (acl, rules) = (self.acl, &mut *self.rules);
            let mut resolve = |n: &Node, option_path: &str, report: &mut Report| match &n.value {
                Value::Str(name) => {
                    acl::check_rule_name(rules, name, n, option_path, report).then(|| name.clone())
                }
                Value::Seq(_) | Value::Map(_) => {
                    // Inline rules get a name nobody can write in `access_rules` (it has a dot),
                    // so `Config::access` finds them like any other rule.
                    acl::add_inline_rule(rules, option_path, n, option_path, acl, report);
                    Some(option_path.to_owned())
                }
                _ => {
                    report.error(
                        &n.mark,
                        option_path,
                        format!("expected an access rule name, got {}", n.describe()),
                    );
                    None
                }
            };
            let options =
                spec::check_module_options(spec, v, &key, ejabberd_options, report, &mut resolve);
            out.push(ModuleConfig {
                name: spec.name.to_owned(),
                options,
            });
        }
        out
    }
}

/// `host_config: {HOST: {modules: .., auth_method: .., ...}}`; returns per-host modules.
fn parse_host_config(
    node: &Node,
    hosts: &[String],
    ctx: &mut ModuleContext<'_>,
    report: &mut Report,
) -> BTreeMap<String, Vec<ModuleConfig>> {
    let mut out = BTreeMap::new();
    let Value::Map(entries) = &node.value else {
        report.error(
            &node.mark,
            "host_config",
            format!(
                "expected a mapping of host: options, got {}",
                node.describe()
            ),
        );
        return out;
    };
    for (k, v) in entries {
        let raw = k.scalar_text().unwrap_or_default();
        let host = acl::normalise_domain(&raw);
        let path = format!("host_config.\"{raw}\"");
        if !hosts.contains(&host) {
            report.error(
                &k.mark,
                &path,
                unknown("host", &raw, hosts.iter().map(String::as_str)).replacen(
                    "unknown host",
                    "host_config for a host not in `hosts`:",
                    1,
                ),
            );
            continue;
        }
        if out.contains_key(&host) {
            report.error(&k.mark, &path, "host configured more than once");
            continue;
        }
        let Value::Map(opts) = &v.value else {
            report.error(
                &v.mark,
                &path,
                format!("expected a mapping of options, got {}", v.describe()),
            );
            continue;
        };
        let mut modules = Vec::new();
        for (ok, ov) in opts {
            let name = ok.scalar_text().unwrap_or_default();
            let key = format!("{path}.{name}");
            match name.as_str() {
                "modules" => modules = ctx.parse_modules(ov, &key, report),
                "auth_method" => {
                    check_auth_method(ov, &key, report);
                }
                "acl" | "access_rules" | "access" | "shaper_rules" => report.error(
                    &ok.mark,
                    &key,
                    "per-host access control is not supported yet; ignoring it could let the wrong users in, so move it to the top level",
                ),
                n if SUPPORTED.contains(&n) => {
                    report.error(&ok.mark, &key, "this option cannot be set per host");
                }
                n if ejabberd::IGNORED_TOP_LEVEL.contains(&n) || n.starts_with("ldap_") => {
                    report.warning(&ok.mark, &key, "this ejabberd option is not supported yet, ignored");
                }
                n => {
                    let candidates = ["modules", "auth_method"].into_iter().chain(ejabberd::IGNORED_TOP_LEVEL.iter().copied());
                    report.error(&ok.mark, &key, unknown("per-host option", n, candidates));
                }
            }
        }
        out.insert(host, modules);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapers_resolve_through_rules_and_unknown_names_are_errors() {
        let ok = "listen:\n  - {port: 5222, module: c2s, shaper: c2s_shaper}\n\
                  shaper:\n  normal: 1000\n  fast: {rate: 50000}\n\
                  shaper_rules:\n  c2s_shaper: [{none: admin}, {normal: all}]\n  \
                  s2s_shaper: fast\n  max_user_sessions: 3\n";
        let c = load_str(ok, "t.yml", &[]).unwrap();
        assert_eq!(c.shaper_rate("c2s_shaper"), Some(1000));
        assert_eq!(c.shaper_rate("fast"), Some(50_000));
        assert_eq!(c.shaper_rate("none"), None);
        assert_eq!(c.max_user_sessions, Some(3));
        assert!(!c.shaper_rules.contains_key("max_user_sessions"));
        let bad = "listen:\n  - {port: 5222, module: c2s, shaper: slow}\nshaper: {normal: 0}\n";
        let d = load_str(bad, "t.yml", &[]).unwrap_err().to_string();
        assert!(d.contains("listen.5222.shaper"), "{d}");
        assert!(d.contains("shaper.normal"), "{d}");
    }

    #[test]
    fn globs() {
        assert!(glob_match("*.pem", "a.pem"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a?c*", "abcdef"));
        assert!(!glob_match("*.pem", "a.key"));
        assert!(glob_match("*a*b", "xxaxxb"));
        assert!(!glob_match("a", "ab"));
    }

    #[test]
    fn glob_expansion_reads_the_directory() {
        let dir = std::env::temp_dir().join(format!("starling-config-glob-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("b.pem"), "").unwrap();
        std::fs::write(dir.join("a.pem"), "").unwrap();
        std::fs::write(dir.join("c.key"), "").unwrap();
        let found = expand_glob(&format!("{}/*.pem", dir.display()));
        assert_eq!(found, vec![dir.join("a.pem"), dir.join("b.pem")]);
        assert_eq!(
            expand_glob(&format!("{}/c.key", dir.display())),
            vec![dir.join("c.key")]
        );
        assert!(expand_glob(&format!("{}/none", dir.display())).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn macros_substitute_values_not_keys() {
        let f: Arc<str> = Arc::from("t");
        let node = yaml::parse("a: PORT\nPORT: x\nb: [PORT, y]\n", &f).unwrap();
        let macros = vec![("PORT".to_owned(), yaml::parse("5222", &f).unwrap())];
        let out = substitute(node, &macros, 0);
        let Value::Map(entries) = out.value else {
            panic!()
        };
        assert_eq!(entries[0].1.value, Value::Int(5222));
        assert_eq!(entries[1].0.as_str(), Some("PORT"));
        assert_eq!(entries[1].1.as_str(), Some("x"));
        let Value::Seq(items) = &entries[2].1.value else {
            panic!()
        };
        assert_eq!(items[0].value, Value::Int(5222));
    }

    #[test]
    fn self_referencing_macro_terminates() {
        let f: Arc<str> = Arc::from("t");
        let macros = vec![("A".to_owned(), yaml::parse("[A]", &f).unwrap())];
        let out = substitute(yaml::parse("x: A", &f).unwrap(), &macros, 0);
        assert!(matches!(out.value, Value::Map(_)));
    }
}
