//! ACLs and access rules with ejabberd's semantics, as pure functions.
//!
//! `acl:` names sets of users, servers, resources and networks; `access_rules:` are ordered
//! lists of `allow`/`deny` clauses over ACLs where the first match wins and no match denies.
//! `all`, `none` (and the rule names `allow`, `deny`) are built in. Regular expressions and
//! globs are not implemented (no regex dependency): they are warnings and never match, except
//! the empty regexp `""`, which matches everything, as ejabberd's default `local` ACL uses.

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::diagnostic::{Report, unknown};
use crate::yaml::{Node, Value};

/// The named ACLs of a configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Acl {
    lists: BTreeMap<String, Vec<AclEntry>>,
    /// Our hosts: `user: admin` (no domain) matches `admin` on any of them.
    hosts: Vec<String>,
}

/// One condition of an ACL.
#[derive(Clone, Debug, PartialEq, Eq)]
enum AclEntry {
    /// `user: node` (any of our hosts) or `user: node@domain`.
    User {
        node: String,
        domain: Option<String>,
    },
    /// `server: domain`.
    Server(String),
    /// `resource: res`.
    Resource(String),
    /// `ip: 10.0.0.0/8`.
    Network(Network),
    /// `user_regexp: ""`: any user of our hosts.
    AnyLocalUser,
    /// `server_regexp: ""`: any authenticated user.
    AnyUser,
    /// Unsupported kinds (warned about at load).
    Never,
    /// A reference to another ACL (inline rules: `- acl: admin`).
    Named(String),
    /// `all` inline.
    All,
}

/// An IPv4 or IPv6 prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Network {
    addr: IpAddr,
    prefix: u8,
}

impl Network {
    fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4-mapped IPv6 peer (::ffff:a.b.c.d on a dual-stack socket) is the IPv4 peer.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// What is asking: the user (node, domain) if authenticated, the resource, the peer address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AccessRequest<'a> {
    /// Localpart and domain, already normalised.
    pub user: Option<(&'a str, &'a str)>,
    /// Resource, if bound.
    pub resource: Option<&'a str>,
    /// Peer address.
    pub ip: Option<IpAddr>,
}

/// The outcome of an access rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AccessDecision {
    /// Permitted.
    Allow,
    /// Refused.
    Deny,
}

/// The access rules of a configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccessRules {
    rules: BTreeMap<String, Vec<(AccessDecision, Vec<AclEntry>)>>,
}

/// Rule names ejabberd has without defining them.
const BUILTIN_RULES: &[&str] = &["all", "none", "allow", "deny"];

impl Acl {
    /// Whether the named ACL matches the request. `all` matches everything, `none` and
    /// undefined names nothing.
    pub fn matches(&self, name: &str, req: &AccessRequest<'_>) -> bool {
        self.matches_depth(name, req, 0)
    }

    /// Whether an ACL of this name is defined (or built in).
    pub fn is_defined(&self, name: &str) -> bool {
        matches!(name, "all" | "none") || self.lists.contains_key(name)
    }

    fn matches_depth(&self, name: &str, req: &AccessRequest<'_>, depth: u8) -> bool {
        match name {
            "all" => true,
            "none" => false,
            _ => self
                .lists
                .get(name)
                .is_some_and(|entries| entries.iter().any(|e| self.entry_matches(e, req, depth))),
        }
    }

    fn entry_matches(&self, entry: &AclEntry, req: &AccessRequest<'_>, depth: u8) -> bool {
        match entry {
            AclEntry::User { node, domain } => req.user.is_some_and(|(n, d)| {
                n == node
                    && match domain {
                        Some(domain) => d == domain,
                        None => self.hosts.iter().any(|h| h == d),
                    }
            }),
            AclEntry::Server(s) => req.user.is_some_and(|(_, d)| d == s),
            AclEntry::Resource(r) => req.resource == Some(r.as_str()),
            AclEntry::Network(net) => req.ip.is_some_and(|ip| net.contains(ip)),
            AclEntry::AnyLocalUser => req
                .user
                .is_some_and(|(_, d)| self.hosts.iter().any(|h| h == d)),
            AclEntry::AnyUser => req.user.is_some(),
            AclEntry::Never => false,
            // Inline rules may name ACLs; a depth cap keeps a self-referencing ACL finite.
            AclEntry::Named(n) => depth < 8 && self.matches_depth(n, req, depth + 1),
            AclEntry::All => true,
        }
    }
}

impl AccessRules {
    /// Evaluates a rule: the first clause whose ACLs match decides; no match denies.
    /// `all`/`allow` allow and `none`/`deny` deny; an unknown rule denies.
    pub fn evaluate(&self, acl: &Acl, rule: &str, req: &AccessRequest<'_>) -> AccessDecision {
        if let Some(clauses) = self.rules.get(rule) {
            for (decision, entries) in clauses {
                if entries.iter().any(|e| acl.entry_matches(e, req, 0)) {
                    return *decision;
                }
            }
            return AccessDecision::Deny;
        }
        match rule {
            "all" | "allow" => AccessDecision::Allow,
            _ => AccessDecision::Deny,
        }
    }

    /// Whether a rule of this name is defined (or built in).
    pub fn is_defined(&self, name: &str) -> bool {
        BUILTIN_RULES.contains(&name) || self.rules.contains_key(name)
    }

    /// The names of the defined rules.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.rules.keys().map(String::as_str)
    }
}

/// The ACL kinds ejabberd accepts.
const ACL_KINDS: &[&str] = &[
    "user",
    "server",
    "resource",
    "ip",
    "user_regexp",
    "server_regexp",
    "resource_regexp",
    "node_regexp",
    "user_glob",
    "server_glob",
    "resource_glob",
    "node_glob",
    "shared_group",
];

/// Parses `acl:`. `hosts` are the normalised hosts, for domain-less `user` entries.
pub(crate) fn parse_acl(node: Option<&Node>, hosts: &[String], report: &mut Report) -> Acl {
    let mut acl = Acl {
        lists: BTreeMap::new(),
        hosts: hosts.to_vec(),
    };
    let Some(node) = node else { return acl };
    let Some(entries) = mapping(node, "acl", report) else {
        return acl;
    };
    for (k, v) in entries {
        let Some(name) = k.scalar_text() else {
            report.error(&k.mark, "acl", "ACL names must be plain words");
            continue;
        };
        let path = format!("acl.{name}");
        if matches!(name.as_str(), "all" | "none") {
            report.error(
                &k.mark,
                &path,
                "`all` and `none` are built in and cannot be redefined",
            );
            continue;
        }
        if acl.lists.contains_key(&name) {
            report.error(&k.mark, &path, "ACL defined more than once");
            continue;
        }
        let list = parse_acl_spec(v, &path, report);
        acl.lists.insert(name, list);
    }
    acl
}

/// An ACL body: `{kind: value(s), ...}` or a list of such mappings.
fn parse_acl_spec(node: &Node, path: &str, report: &mut Report) -> Vec<AclEntry> {
    let mut out = Vec::new();
    match &node.value {
        Value::Map(entries) => {
            for (k, v) in entries {
                parse_acl_kind(k, v, path, &mut out, report);
            }
        }
        Value::Seq(items) => {
            for (i, item) in items.iter().enumerate() {
                let item_path = format!("{path}[{i}]");
                match &item.value {
                    Value::Map(entries) => {
                        for (k, v) in entries {
                            parse_acl_kind(k, v, &item_path, &mut out, report);
                        }
                    }
                    _ => report.error(
                        &item.mark,
                        &item_path,
                        format!(
                            "expected a mapping such as {{user: admin}}, got {}",
                            item.describe()
                        ),
                    ),
                }
            }
        }
        _ => report.error(
            &node.mark,
            path,
            format!(
                "expected a mapping such as {{user: [admin]}}, got {}",
                node.describe()
            ),
        ),
    }
    out
}

fn parse_acl_kind(k: &Node, v: &Node, path: &str, out: &mut Vec<AclEntry>, report: &mut Report) {
    let kind = k.scalar_text().unwrap_or_default();
    let path = format!("{path}.{kind}");
    if !ACL_KINDS.contains(&kind.as_str()) && kind != "acl" {
        report.error(
            &k.mark,
            &path,
            unknown("ACL kind", &kind, ACL_KINDS.iter().copied()),
        );
        return;
    }
    let values: Vec<&Node> = match &v.value {
        Value::Seq(items) => items.iter().collect(),
        _ => vec![v],
    };
    for value in values {
        if let Some(entry) = parse_acl_value(&kind, value, &path, report) {
            out.push(entry);
        }
    }
}

fn parse_acl_value(kind: &str, v: &Node, path: &str, report: &mut Report) -> Option<AclEntry> {
    // `user: {admin: example.org}` is ejabberd's older spelling of admin@example.org.
    if kind == "user"
        && let Value::Map(pairs) = &v.value
        && let [(n, d)] = pairs.as_slice()
        && let (Some(n), Some(d)) = (n.scalar_text(), d.scalar_text())
    {
        return Some(user_entry(&format!("{n}@{d}"), v, path, report));
    }
    let Some(text) = v.scalar_text() else {
        report.error(
            &v.mark,
            path,
            format!("expected a string, got {}", v.describe()),
        );
        return None;
    };
    match kind {
        "user" => Some(user_entry(&text, v, path, report)),
        "server" => Some(AclEntry::Server(normalise_domain(&text))),
        "resource" => Some(AclEntry::Resource(text)),
        "acl" => Some(AclEntry::Named(text)),
        "ip" => {
            match parse_network(&text) {
                Some(net) => Some(AclEntry::Network(net)),
                None => {
                    report.error(
                    &v.mark,
                    path,
                    format!("expected an address or network such as 10.0.0.0/8 or ::1/128, got {text:?}"),
                );
                    None
                }
            }
        }
        "user_regexp" if text.is_empty() => Some(AclEntry::AnyLocalUser),
        "server_regexp" if text.is_empty() => Some(AclEntry::AnyUser),
        _ => {
            report.warning(
                &v.mark,
                path,
                format!("`{kind}` ACLs are not supported yet; this entry never matches"),
            );
            Some(AclEntry::Never)
        }
    }
}

fn user_entry(text: &str, v: &Node, path: &str, report: &mut Report) -> AclEntry {
    // Nodeprep lowercases; so do we, so `Admin` in the file matches the normalised JID.
    let (node, domain) = match text.split_once('@') {
        Some((n, d)) => (n.to_lowercase(), Some(normalise_domain(d))),
        None => (text.to_lowercase(), None),
    };
    if node.is_empty() {
        report.warning(&v.mark, path, "an empty user name matches nobody");
    }
    AclEntry::User { node, domain }
}

/// Normalises a domain for comparison (RFC 7622 §3.2 via the JID code); a domain that does
/// not normalise is lowercased so it still compares, and `hosts` reports it.
pub(crate) fn normalise_domain(domain: &str) -> String {
    starling_xmpp::jid::nameprep(domain).unwrap_or_else(|_| domain.to_lowercase())
}

/// Whether `domain` is a valid domainpart.
pub(crate) fn valid_domain(domain: &str) -> bool {
    starling_xmpp::jid::nameprep(domain).is_ok()
}

/// `a.b.c.d`, `a.b.c.d/n`, `x::y`, `x::y/n`.
fn parse_network(text: &str) -> Option<Network> {
    let (addr, prefix) = match text.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (text, None),
    };
    let addr: IpAddr = addr.trim().parse().ok()?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        Some(p) => p.trim().parse::<u8>().ok().filter(|p| *p <= max)?,
        None => max,
    };
    Some(Network { addr, prefix })
}

fn mapping<'a>(node: &'a Node, path: &str, report: &mut Report) -> Option<&'a [(Node, Node)]> {
    match &node.value {
        Value::Map(entries) => Some(entries),
        Value::Null => Some(&[]),
        _ => {
            report.error(
                &node.mark,
                path,
                format!("expected a mapping, got {}", node.describe()),
            );
            None
        }
    }
}

/// Parses `access_rules:` against the parsed ACLs.
pub(crate) fn parse_access_rules(
    node: Option<&Node>,
    acl: &Acl,
    report: &mut Report,
) -> AccessRules {
    let mut rules = AccessRules::default();
    let Some(node) = node else { return rules };
    let Some(entries) = mapping(node, "access_rules", report) else {
        return rules;
    };
    for (k, v) in entries {
        let Some(name) = k.scalar_text() else {
            report.error(&k.mark, "access_rules", "rule names must be plain words");
            continue;
        };
        let path = format!("access_rules.{name}");
        if BUILTIN_RULES.contains(&name.as_str()) {
            report.error(
                &k.mark,
                &path,
                "this rule is built in and cannot be redefined",
            );
            continue;
        }
        if rules.rules.contains_key(&name) {
            report.error(&k.mark, &path, "rule defined more than once");
            continue;
        }
        let clauses = parse_rule_body(v, &path, acl, report);
        rules.rules.insert(name, clauses);
    }
    rules
}

/// Adds an inline rule (a module option such as `access: [{allow: admin}]`) under `name`.
pub(crate) fn add_inline_rule(
    rules: &mut AccessRules,
    name: &str,
    node: &Node,
    path: &str,
    acl: &Acl,
    report: &mut Report,
) {
    let clauses = parse_rule_body(node, path, acl, report);
    rules.rules.insert(name.to_owned(), clauses);
}

/// A rule body: a list of clauses (`- allow: x`, `- deny`), or the mapping shortcut.
fn parse_rule_body(
    node: &Node,
    path: &str,
    acl: &Acl,
    report: &mut Report,
) -> Vec<(AccessDecision, Vec<AclEntry>)> {
    let mut clauses = Vec::new();
    match &node.value {
        Value::Map(entries) => {
            for (k, v) in entries {
                if let Some(c) = parse_clause(k, Some(v), path, acl, report) {
                    clauses.push(c);
                }
            }
        }
        Value::Seq(items) => {
            for (i, item) in items.iter().enumerate() {
                let item_path = format!("{path}[{i}]");
                match &item.value {
                    Value::Map(entries) if entries.len() == 1 => {
                        for (k, v) in entries {
                            if let Some(c) = parse_clause(k, Some(v), &item_path, acl, report) {
                                clauses.push(c);
                            }
                        }
                    }
                    Value::Str(_) => {
                        if let Some(c) = parse_clause(item, None, &item_path, acl, report) {
                            clauses.push(c);
                        }
                    }
                    _ => report.error(
                        &item.mark,
                        &item_path,
                        format!(
                            "expected `allow: ACL` or `deny: ACL`, got {}",
                            item.describe()
                        ),
                    ),
                }
            }
        }
        Value::Str(_) => {
            if let Some(c) = parse_clause(node, None, path, acl, report) {
                clauses.push(c);
            }
        }
        _ => report.error(
            &node.mark,
            path,
            format!(
                "expected a list of `allow: ACL` / `deny: ACL`, got {}",
                node.describe()
            ),
        ),
    }
    clauses
}

/// One clause; `value` is `None` for a bare `allow`/`deny` (which matches everyone).
fn parse_clause(
    key: &Node,
    value: Option<&Node>,
    path: &str,
    acl: &Acl,
    report: &mut Report,
) -> Option<(AccessDecision, Vec<AclEntry>)> {
    let word = key.scalar_text().unwrap_or_default();
    let decision = match word.as_str() {
        "allow" => AccessDecision::Allow,
        "deny" => AccessDecision::Deny,
        _ => {
            report.error(
                &key.mark,
                path,
                unknown("access clause", &word, ["allow", "deny"]),
            );
            return None;
        }
    };
    let path = format!("{path}.{word}");
    let Some(value) = value else {
        return Some((decision, vec![AclEntry::All]));
    };
    let mut entries = Vec::new();
    let items: Vec<&Node> = match &value.value {
        Value::Seq(items) => items.iter().collect(),
        _ => vec![value],
    };
    for item in items {
        match &item.value {
            Value::Str(name) => {
                if let Some(e) = acl_reference(name, item, &path, acl, report) {
                    entries.push(e);
                }
            }
            Value::Map(pairs) => {
                for (k, v) in pairs {
                    parse_acl_kind(k, v, &path, &mut entries, report);
                }
            }
            _ => report.error(
                &item.mark,
                &path,
                format!("expected an ACL name, got {}", item.describe()),
            ),
        }
    }
    Some((decision, entries))
}

/// A reference to a named ACL from a rule.
///
/// An undefined name that is close to a defined one is an error (a typo would silently
/// change who gets in); one that is not is a warning and matches nobody, because ejabberd's
/// own default file refers to ACLs it leaves undefined (`blocked`, `admin`).
fn acl_reference(
    name: &str,
    node: &Node,
    path: &str,
    acl: &Acl,
    report: &mut Report,
) -> Option<AclEntry> {
    if name == "all" {
        return Some(AclEntry::All);
    }
    if acl.is_defined(name) {
        return Some(AclEntry::Named(name.to_owned()));
    }
    let names = acl.lists.keys().map(String::as_str).chain(["all", "none"]);
    match crate::diagnostic::did_you_mean(name, names) {
        Some(s) => {
            report.error(
                &node.mark,
                path,
                format!("undefined ACL \"{name}\"; did you mean \"{s}\"?"),
            );
            None
        }
        None => {
            report.warning(
                &node.mark,
                path,
                format!("ACL \"{name}\" is not defined; it matches nobody"),
            );
            Some(AclEntry::Named(name.to_owned()))
        }
    }
}

/// Checks an access rule reference; suggests a defined name for typos.
pub(crate) fn check_rule_name(
    rules: &AccessRules,
    name: &str,
    node: &Node,
    path: &str,
    report: &mut Report,
) -> bool {
    if rules.is_defined(name) {
        return true;
    }
    let names = rules.names().chain(BUILTIN_RULES.iter().copied());
    report.error(
        &node.mark,
        path,
        unknown("access rule", name, names).replacen("unknown", "undefined", 1),
    );
    false
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::yaml::parse;

    fn load(acl: &str, rules: &str) -> (Acl, AccessRules, Vec<String>) {
        let f: Arc<str> = Arc::from("t.yml");
        let mut report = Report::default();
        let acl_node = parse(acl, &f).unwrap();
        let acl = parse_acl(
            Some(&acl_node),
            &["example.org".into(), "localhost".into()],
            &mut report,
        );
        let rules_node = parse(rules, &f).unwrap();
        let rules = parse_access_rules(Some(&rules_node), &acl, &mut report);
        (
            acl,
            rules,
            report.items.iter().map(ToString::to_string).collect(),
        )
    }

    fn user<'a>(node: &'a str, domain: &'a str) -> AccessRequest<'a> {
        AccessRequest {
            user: Some((node, domain)),
            ..AccessRequest::default()
        }
    }

    fn ip(addr: &str) -> AccessRequest<'static> {
        AccessRequest {
            ip: addr.parse().ok(),
            ..AccessRequest::default()
        }
    }

    const ACL: &str = "
admin:
  user: [\"Admin@Example.org\", root]
local:
  user_regexp: \"\"
remote:
  server: jabber.org
loopback:
  ip: [127.0.0.0/8, \"::1/128\"]
lan6:
  ip: \"2001:db8::/32\"
mobile:
  resource: phone
";

    #[test]
    fn user_server_resource() {
        let (acl, _, diags) = load(ACL, "{}");
        assert!(diags.is_empty(), "{diags:?}");
        assert!(acl.matches("admin", &user("admin", "example.org")));
        assert!(!acl.matches("admin", &user("admin", "localhost")));
        assert!(acl.matches("admin", &user("root", "localhost")));
        assert!(!acl.matches("admin", &user("root", "jabber.org")));
        assert!(acl.matches("local", &user("anyone", "localhost")));
        assert!(!acl.matches("local", &user("anyone", "jabber.org")));
        assert!(acl.matches("remote", &user("x", "jabber.org")));
        let phone = AccessRequest {
            resource: Some("phone"),
            ..user("a", "b")
        };
        assert!(acl.matches("mobile", &phone));
        assert!(acl.matches("all", &AccessRequest::default()));
        assert!(!acl.matches("none", &user("admin", "example.org")));
        assert!(!acl.matches("undefined", &user("admin", "example.org")));
    }

    #[test]
    fn networks() {
        let (acl, _, _) = load(ACL, "{}");
        assert!(acl.matches("loopback", &ip("127.1.2.3")));
        assert!(!acl.matches("loopback", &ip("128.0.0.1")));
        assert!(acl.matches("loopback", &ip("::1")));
        assert!(!acl.matches("loopback", &ip("::2")));
        assert!(acl.matches("loopback", &ip("::ffff:127.0.0.1")));
        assert!(acl.matches("lan6", &ip("2001:db8:ffff::1")));
        assert!(!acl.matches("lan6", &ip("2001:db9::1")));
        assert!(!acl.matches("loopback", &AccessRequest::default()));
        assert!(
            Network {
                addr: "0.0.0.0".parse().unwrap(),
                prefix: 0
            }
            .contains("8.8.8.8".parse().unwrap())
        );
    }

    #[test]
    fn rules_first_match_wins() {
        let rules = "
c2s:
  - deny: blocked
  - allow
register:
  allow: loopback
configure: [{allow: admin}]
mixed:
  - allow: [{user: bob@jabber.org}, {acl: admin}]
";
        let (acl, rules, diags) = load(&format!("{ACL}blocked:\n  user: eve\n"), rules);
        assert!(diags.is_empty(), "{diags:?}");
        let eval = |rule: &str, req: &AccessRequest<'_>| rules.evaluate(&acl, rule, req);
        assert_eq!(eval("c2s", &user("eve", "localhost")), AccessDecision::Deny);
        assert_eq!(
            eval("c2s", &user("bob", "localhost")),
            AccessDecision::Allow
        );
        assert_eq!(eval("register", &ip("127.0.0.1")), AccessDecision::Allow);
        assert_eq!(eval("register", &ip("10.0.0.1")), AccessDecision::Deny);
        assert_eq!(
            eval("configure", &user("root", "example.org")),
            AccessDecision::Allow
        );
        assert_eq!(
            eval("mixed", &user("bob", "jabber.org")),
            AccessDecision::Allow
        );
        assert_eq!(
            eval("mixed", &user("root", "localhost")),
            AccessDecision::Allow
        );
        assert_eq!(
            eval("mixed", &user("bob", "localhost")),
            AccessDecision::Deny
        );
        assert_eq!(
            eval("all", &AccessRequest::default()),
            AccessDecision::Allow
        );
        assert_eq!(
            eval("none", &user("root", "example.org")),
            AccessDecision::Deny
        );
        assert_eq!(
            eval("nosuchrule", &user("root", "example.org")),
            AccessDecision::Deny
        );
    }

    #[test]
    fn diagnostics() {
        let (_, _, diags) = load(
            "admin:\n  usr: x\nnet:\n  ip: 300.0.0.1\nre:\n  user_regexp: \"^a\"\n",
            "a:\n  - allow: admn\nb:\n  - allow: blocked\nc:\n  - permit: admin\n",
        );
        assert_eq!(
            diags,
            vec![
                "t.yml:2:3: acl.admin.usr: unknown ACL kind \"usr\"; did you mean \"user\"?",
                "t.yml:4:7: acl.net.ip: expected an address or network such as 10.0.0.0/8 or ::1/128, got \"300.0.0.1\"",
                "t.yml:6:16: warning: acl.re.user_regexp: `user_regexp` ACLs are not supported yet; this entry never matches",
                "t.yml:2:12: access_rules.a[0].allow: undefined ACL \"admn\"; did you mean \"admin\"?",
                "t.yml:4:12: warning: access_rules.b[0].allow: ACL \"blocked\" is not defined; it matches nobody",
                "t.yml:6:5: access_rules.c[0]: unknown access clause \"permit\"",
            ]
        );
    }
}
