//! Loading whole files: diagnostics text, macros, includes, host_config, defaults, and
//! ejabberd-style files (ours, and Debian's when installed).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use starling_config::{
    AccessDecision, AccessRequest, Config, ListenerModule, LogLevel, ModuleSpec, OptionKind,
    OptionSpec, OptionValue, Severity, SqlType, load_file, load_str,
};

const CATALOGUE: &[ModuleSpec] = &[
    ModuleSpec {
        name: "mod_roster",
        aliases: &["roster"],
        options: &[
            OptionSpec {
                name: "versioning",
                kind: OptionKind::Bool,
                doc: "",
            },
            OptionSpec {
                name: "store_current_id",
                kind: OptionKind::Bool,
                doc: "",
            },
            OptionSpec {
                name: "access",
                kind: OptionKind::AccessRule,
                doc: "",
            },
        ],
    },
    ModuleSpec {
        name: "mod_disco",
        aliases: &[],
        options: &[],
    },
    ModuleSpec {
        name: "mod_ping",
        aliases: &[],
        options: &[
            OptionSpec {
                name: "send_pings",
                kind: OptionKind::Bool,
                doc: "",
            },
            OptionSpec {
                name: "ping_interval",
                kind: OptionKind::Duration,
                doc: "",
            },
            OptionSpec {
                name: "timeout_action",
                kind: OptionKind::Enum(&["none", "kill"]),
                doc: "",
            },
        ],
    },
    ModuleSpec {
        name: "mod_register",
        aliases: &[],
        options: &[
            OptionSpec {
                name: "access",
                kind: OptionKind::AccessRule,
                doc: "",
            },
            OptionSpec {
                name: "ip_access",
                kind: OptionKind::AccessRule,
                doc: "",
            },
            OptionSpec {
                name: "password_strength",
                kind: OptionKind::Int { min: 0, max: 1000 },
                doc: "",
            },
            OptionSpec {
                name: "welcome_message",
                kind: OptionKind::Any,
                doc: "",
            },
            OptionSpec {
                name: "registration_watchers",
                kind: OptionKind::StringList,
                doc: "",
            },
            OptionSpec {
                name: "redirect_url",
                kind: OptionKind::String,
                doc: "",
            },
        ],
    },
    ModuleSpec {
        name: "mod_version",
        aliases: &[],
        options: &[OptionSpec {
            name: "show_os",
            kind: OptionKind::Bool,
            doc: "",
        }],
    },
    ModuleSpec {
        name: "mod_time",
        aliases: &[],
        options: &[],
    },
    ModuleSpec {
        name: "mod_last",
        aliases: &[],
        options: &[],
    },
    ModuleSpec {
        name: "mod_offline",
        aliases: &[],
        options: &[OptionSpec {
            name: "access_max_user_messages",
            kind: OptionKind::String,
            doc: "",
        }],
    },
    ModuleSpec {
        name: "mod_muc",
        aliases: &[],
        options: &[
            OptionSpec {
                name: "host",
                kind: OptionKind::String,
                doc: "",
            },
            OptionSpec {
                name: "access",
                kind: OptionKind::AccessRule,
                doc: "",
            },
            OptionSpec {
                name: "access_admin",
                kind: OptionKind::AccessRule,
                doc: "",
            },
            OptionSpec {
                name: "access_create",
                kind: OptionKind::AccessRule,
                doc: "",
            },
            OptionSpec {
                name: "history_size",
                kind: OptionKind::IntOrInfinity { min: 0 },
                doc: "",
            },
        ],
    },
];

fn errors(text: &str) -> Vec<String> {
    match load_str(text, "starling.yml", CATALOGUE) {
        Ok(c) => panic!("expected errors, loaded with warnings {:?}", c.warnings),
        Err(d) => d.errors().map(ToString::to_string).collect(),
    }
}

fn load(text: &str) -> Config {
    match load_str(text, "starling.yml", CATALOGUE) {
        Ok(c) => c,
        Err(d) => panic!("{d}"),
    }
}

fn warnings(config: &Config) -> Vec<String> {
    config.warnings.iter().map(ToString::to_string).collect()
}

fn user<'a>(node: &'a str, domain: &'a str) -> AccessRequest<'a> {
    AccessRequest {
        user: Some((node, domain)),
        ..AccessRequest::default()
    }
}

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

#[test]
fn empty_file_gives_the_defaults() {
    let c = load("# nothing here\n");
    assert_eq!(c.hosts, vec!["localhost"]);
    assert_eq!(c.loglevel, LogLevel::Info);
    assert_eq!(c.data_dir, PathBuf::from("data"));
    assert_eq!(c.listen.len(), 2);
    assert!(c.listen[0].starttls_required && c.listen[0].port == 5222);
    assert!(c.listen[1].tls && c.listen[1].port == 5223);
    assert_eq!(c.sql.sql_type, SqlType::Sqlite);
    assert_eq!(c.negotiation_timeout, Duration::from_secs(30));
    assert_eq!(c.registration_timeout, Duration::from_secs(600));
    assert_eq!(c.max_user_sessions, None);
    assert!(c.modules.is_empty());
    assert!(c.warnings.is_empty());
    assert_eq!(c.host_modules.keys().collect::<Vec<_>>(), vec!["localhost"]);
}

#[test]
fn every_error_is_reported_at_once() {
    let text = "\
hsots: [example.org]
loglevel: loud
listen:
  - port: abc
    module: ejabberd_c2s
  - port: 5280
    module: ejabberd_htp
auth_method: ldap
sql_type: mysql
modules:
  mod_roster:
    versioning: maybe
    versionin: true
  mod_pnig: {}
  mod_ping:
    timeout_action: explode
    ping_interval: soon
";
    assert_eq!(
        errors(text),
        vec![
            "starling.yml:1:1: hsots: unknown option \"hsots\"; did you mean \"hosts\"?",
            "starling.yml:2:11: loglevel: unknown log level \"loud\"",
            "starling.yml:4:11: listen[0].port: expected an integer from 0 to 65535 (0: any free port), got \"abc\"",
            "starling.yml:7:13: listen[1].module: unknown listener module \"ejabberd_htp\"; did you mean \"ejabberd_http\"?",
            "starling.yml:8:14: auth_method: auth_method ldap is not supported; ignoring it would authenticate the wrong users (use internal or sql)",
            "starling.yml:9:11: sql_type: sql_type mysql is not supported (sqlite or pgsql); the data would not be where you expect it",
            "starling.yml:12:17: modules.mod_roster.versioning: expected true or false, got \"maybe\"",
            "starling.yml:13:5: modules.mod_roster.versionin: unknown option \"versionin\"; did you mean \"versioning\"?",
            "starling.yml:14:3: modules.mod_pnig: unknown module \"mod_pnig\"; did you mean \"mod_ping\"?",
            "starling.yml:16:21: modules.mod_ping.timeout_action: expected one of none, kill, got \"explode\"",
            "starling.yml:17:20: modules.mod_ping.ping_interval: expected a duration such as 30, \"30 s\", \"5 min\" or infinity, got \"soon\"",
        ]
    );
}

#[test]
fn display_ends_with_a_count() {
    let Err(d) = load_str("acme: {}\nhosts: 5\n", "s.yml", CATALOGUE) else {
        panic!()
    };
    assert_eq!(
        d.to_string(),
        "s.yml:1:1: warning: acme: this ejabberd option is not supported yet, ignored\n\
         s.yml:2:8: hosts: expected a list of domains, got 5\n\
         1 error, 1 warning"
    );
}

#[test]
fn yaml_syntax_error_has_a_position() {
    let e = errors("hosts: [a\nloglevel: info\n");
    assert_eq!(e.len(), 1);
    assert!(e[0].starts_with("starling.yml:"), "{e:?}");
    assert!(!e[0].starts_with("starling.yml:0:"), "{e:?}");
}

#[test]
fn unsafe_and_unsupported_values() {
    let e = errors("auth_method: [internal, external]\nsql_type: pgsq\nsql_port: 70000\n");
    assert_eq!(
        e,
        vec![
            "starling.yml:1:25: auth_method: auth_method external is not supported; ignoring it would authenticate the wrong users (use internal or sql)",
            "starling.yml:2:11: sql_type: unknown sql_type \"pgsq\"; did you mean \"pgsql\"?",
            "starling.yml:3:11: sql_port: expected an integer from 1 to 65535, got 70000",
        ]
    );
    let c = load(
        "auth_method: [internal, sql]\nsql_type: pgsql\nsql_server: db\nsql_port: 5433\nsql_pool_size: 4\nsql_database: xmpp\nsql_username: u\nsql_password: p\nsql_ssl: true\n",
    );
    assert_eq!(c.sql.sql_type, SqlType::Pgsql);
    assert_eq!(
        (c.sql.server.as_str(), c.sql.port, c.sql.pool_size),
        ("db", Some(5433), 4)
    );
    assert_eq!(c.sql.database.as_deref(), Some("xmpp"));
    assert_eq!(
        warnings(&c),
        vec![
            "starling.yml:9:1: warning: sql_ssl: this ejabberd option is not supported yet, ignored"
        ]
    );
}

#[test]
fn ignored_ejabberd_modules_and_options_are_warnings() {
    let c = load(
        "modules:\n  mod_mam: {}\n  mod_roster:\n    db_type: sql\n  mod_last:\n    cache_size: 10\n  mod_disco:\n    extra_domains: [a]\n",
    );
    assert_eq!(
        warnings(&c),
        vec![
            "starling.yml:2:3: warning: modules.mod_mam: module mod_mam is not supported yet, ignored",
            "starling.yml:4:5: warning: modules.mod_roster.db_type: this ejabberd option is not supported yet, ignored",
            "starling.yml:6:5: warning: modules.mod_last.cache_size: this ejabberd option is not supported yet, ignored",
            "starling.yml:8:5: warning: modules.mod_disco.extra_domains: this ejabberd option is not supported yet, ignored",
        ]
    );
    assert_eq!(
        c.modules
            .iter()
            .map(|m| m.name.as_str())
            .collect::<Vec<_>>(),
        vec!["mod_roster", "mod_last", "mod_disco"]
    );
}

#[test]
fn module_aliases_and_typed_options() {
    let c = load(
        "modules:\n  roster: {versioning: true}\n  mod_ping: {ping_interval: 5 min, send_pings: yes}\n  mod_register:\n    password_strength: 32\n    registration_watchers: admin@localhost\n    welcome_message: {subject: Hi, body: Welcome}\n",
    );
    assert_eq!(c.modules[0].name, "mod_roster");
    assert_eq!(c.modules[0].options.bool("versioning"), Some(true));
    assert_eq!(
        c.modules[1].options.duration("ping_interval"),
        Some(Duration::from_secs(300))
    );
    assert_eq!(c.modules[1].options.bool("send_pings"), Some(true));
    let reg = &c.modules[2].options;
    assert_eq!(reg.int("password_strength"), Some(32));
    assert_eq!(
        reg.strings("registration_watchers"),
        Some(vec!["admin@localhost".to_owned()])
    );
    assert_eq!(
        reg.value("welcome_message"),
        Some(&OptionValue::Map(vec![
            ("subject".into(), OptionValue::String("Hi".into())),
            ("body".into(), OptionValue::String("Welcome".into())),
        ]))
    );
    assert_eq!(
        errors("modules:\n  mod_roster: {}\n  roster: {}\n"),
        vec!["starling.yml:3:3: modules.roster: module listed more than once"]
    );
}

#[test]
fn access_rule_options_are_checked_and_inline_rules_work() {
    assert_eq!(
        errors("access_rules:\n  register: [allow]\nmodules:\n  mod_register: {access: registr}\n"),
        vec![
            "starling.yml:4:26: modules.mod_register.access: undefined access rule \"registr\"; did you mean \"register\"?"
        ]
    );
    let c = load(
        "hosts: [a.org]\nacl:\n  admin: {user: boss}\nmodules:\n  mod_muc:\n    access_admin:\n      - allow: admin\n    access: all\n",
    );
    let muc = &c.modules[0].options;
    let rule = muc.string("access_admin").unwrap();
    assert_eq!(
        c.access(rule, &user("boss", "a.org")),
        AccessDecision::Allow
    );
    assert_eq!(
        c.access(rule, &user("other", "a.org")),
        AccessDecision::Deny
    );
    assert_eq!(muc.string("access"), Some("all"));
}

#[test]
fn macros_replace_values() {
    let c = load(
        "define_macro:\n  PORT: 5333\n  HOSTS: [a.org, b.org]\nhosts: HOSTS\nlisten:\n  - {port: PORT, module: c2s}\n",
    );
    assert_eq!(c.hosts, vec!["a.org", "b.org"]);
    assert_eq!(c.listen[0].port, 5333);
    assert_eq!(
        errors("define_macro:\n  port: 1\n"),
        vec![
            "starling.yml:2:3: define_macro.port: macro names are written in capitals, digits and _"
        ]
    );
}

#[test]
fn includes_are_relative_and_named_in_diagnostics() {
    let dir = std::env::temp_dir().join(format!("starling-config-include-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("conf.d")).unwrap();
    std::fs::write(
        dir.join("main.yml"),
        "hosts: [a.org]\ninclude_config_file: [conf.d/modules.yml]\nmodules:\n  mod_disco: {}\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("conf.d/modules.yml"),
        "modules:\n  mod_roster: {versioning: true}\nloglevel: debug\n",
    )
    .unwrap();
    let c = load_file(&dir.join("main.yml"), CATALOGUE).unwrap();
    assert_eq!(c.loglevel, LogLevel::Debug);
    assert_eq!(
        c.modules
            .iter()
            .map(|m| m.name.as_str())
            .collect::<Vec<_>>(),
        vec!["mod_roster", "mod_disco"]
    );
    assert_eq!(c.source.as_deref(), Some(dir.join("main.yml").as_path()));

    // A bad value in the included file is reported against that file; filters apply.
    std::fs::write(
        dir.join("conf.d/bad.yml"),
        "loglevel: debug\nlisten:\n  - {port: 70000, module: c2s}\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("main2.yml"),
        "include_config_file:\n  conf.d/bad.yml: {disallow: [loglevel]}\nloglevel: info\n",
    )
    .unwrap();
    let Err(d) = load_file(&dir.join("main2.yml"), CATALOGUE) else {
        panic!()
    };
    let bad = dir.join("conf.d/bad.yml");
    assert_eq!(
        d.errors().map(ToString::to_string).collect::<Vec<_>>(),
        vec![format!(
            "{}:3:12: listen[0].port: expected an integer from 0 to 65535 (0: any free port), got 70000",
            bad.display()
        )]
    );

    // Missing files and self-inclusion are errors at the include.
    std::fs::write(dir.join("loop.yml"), "include_config_file: loop.yml\n").unwrap();
    let Err(d) = load_file(&dir.join("loop.yml"), CATALOGUE) else {
        panic!()
    };
    assert!(d.to_string().contains("includes itself"), "{d}");
    let Err(d) = load_str(
        "include_config_file: /nonexistent/x.yml\n",
        "m.yml",
        CATALOGUE,
    ) else {
        panic!()
    };
    assert!(
        d.to_string()
            .starts_with("m.yml:1:22: include_config_file: cannot read /nonexistent/x.yml"),
        "{d}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn host_config_merges_modules_per_host() {
    let c = load(
        "hosts: [a.org, B.org]\nmodules:\n  mod_version: {show_os: false}\n  mod_muc: {host: \"conference.@HOST@\"}\nhost_config:\n  b.org:\n    modules:\n      mod_version: {show_os: true}\n      mod_time: {}\n    language: de\n",
    );
    assert_eq!(c.hosts, vec!["a.org", "b.org"]);
    let a = c.modules_for_host("a.org");
    let b = c.modules_for_host("b.org");
    assert_eq!(a.len(), 2);
    assert_eq!(a[0].options.bool("show_os"), Some(false));
    assert_eq!(a[1].options.string("host"), Some("conference.a.org"));
    assert_eq!(
        b.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(),
        vec!["mod_version", "mod_muc", "mod_time"]
    );
    assert_eq!(b[0].options.bool("show_os"), Some(true));
    assert_eq!(b[1].options.string("host"), Some("conference.b.org"));
    // The global list keeps @HOST@ for the caller to expand.
    assert_eq!(
        c.modules[1].options.string("host"),
        Some("conference.@HOST@")
    );
    assert_eq!(
        warnings(&c),
        vec![
            "starling.yml:10:5: warning: host_config.\"b.org\".language: this ejabberd option is not supported yet, ignored"
        ]
    );
    assert_eq!(
        errors(
            "hosts: [a.org]\nhost_config:\n  a.orgg: {}\n  a.org:\n    access_rules: {}\n    listen: []\n"
        ),
        vec![
            "starling.yml:3:3: host_config.\"a.orgg\": host_config for a host not in `hosts`: \"a.orgg\"; did you mean \"a.org\"?",
            "starling.yml:5:5: host_config.\"a.org\".access_rules: per-host access control is not supported yet; ignoring it could let the wrong users in, so move it to the top level",
            "starling.yml:6:5: host_config.\"a.org\".listen: this option cannot be set per host",
        ]
    );
}

#[test]
fn top_level_keys_and_duplicates() {
    let c = load(
        "loglevel: 5\nnegotiation_timeout: 10 s\nregistration_timeout: infinity\ndata_dir: /var/lib/starling\ncluster: {node_name: starling@n1, listen: \"10.0.0.1:5370\", discovery: sql}\nshaper_rules:\n  max_user_sessions: 10\n",
    );
    assert_eq!(c.loglevel, LogLevel::Debug);
    assert_eq!(c.negotiation_timeout, Duration::from_secs(10));
    assert_eq!(c.registration_timeout, Duration::ZERO);
    assert_eq!(c.data_dir, PathBuf::from("/var/lib/starling"));
    assert_eq!(
        c.cluster.as_ref().map(|x| x.node_name.as_str()),
        Some("starling@n1")
    );
    assert_eq!(c.max_user_sessions, Some(10));
    assert_eq!(
        errors("loglevel: info\nloglevel: debug\nhosts: [a.org, A.org]\n"),
        vec![
            "starling.yml:2:1: loglevel: set more than once (first at starling.yml:1:1)",
            "starling.yml:3:16: hosts[1]: a.org is listed more than once",
        ]
    );
}

#[test]
fn realistic_ejabberd_style_file_loads_with_warnings() {
    let c = match load_file(&data("ejabberd-style.yml"), CATALOGUE) {
        Ok(c) => c,
        Err(d) => panic!("{d}"),
    };
    assert_eq!(c.hosts, vec!["example.org", "chat.example.org"]);
    assert_eq!(c.listen.len(), 4, "the STUN listener is dropped");
    assert_eq!(c.listen[0].port, 5222);
    assert_eq!(c.listen[0].ip, "::".parse::<IpAddr>().unwrap());
    assert_eq!(c.listen[0].access.as_deref(), Some("c2s"));
    assert_eq!(c.listen[2].module, ListenerModule::S2s);
    assert_eq!(c.listen[3].request_handlers.len(), 4);
    assert_eq!(c.max_user_sessions, Some(10));
    // Shapers are applied now: c2s_shaper resolves to `normal` (the value for `all`).
    assert_eq!(c.shapers.get("normal"), Some(&3000));
    assert_eq!(c.shaper_rate("c2s_shaper"), Some(3000));
    assert_eq!(c.shaper_rate("s2s_shaper"), Some(100_000));
    assert!(!c.shaper_rules.contains_key("max_user_offline_messages"));
    assert!(c.certfiles.is_empty());
    assert!(c.warnings.iter().all(|w| w.severity == Severity::Warning));
    // s2s_use_starttls is supported now (issue 8).
    assert_eq!(c.s2s.use_starttls, starling_config::S2sTls::Optional);
    let text = warnings(&c).join("\n");
    assert!(!text.contains("s2s_use_starttls"), "{text}");
    for expected in [
        "api_permissions: this ejabberd option",
        "acme: this ejabberd option",
        "modules.mod_mam: module mod_mam is not supported yet",
        "modules.mod_vcard: module mod_vcard is not supported yet",
        "listen[4].module: listener module ejabberd_stun",
        "access_rules.c2s.deny: ACL \"blocked\" is not defined",
        "certfiles[0]: no file matches",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }
    // ACLs and rules behave as in ejabberd.
    assert_eq!(
        c.access("c2s", &user("anyone", "example.org")),
        AccessDecision::Allow
    );
    assert_eq!(
        c.access("configure", &user("admin", "example.org")),
        AccessDecision::Allow
    );
    assert_eq!(
        c.access("configure", &user("admin", "chat.example.org")),
        AccessDecision::Deny
    );
    assert_eq!(
        c.access("local", &user("bob", "chat.example.org")),
        AccessDecision::Allow
    );
    assert_eq!(
        c.access("local", &user("bob", "jabber.org")),
        AccessDecision::Deny
    );
    let lo = AccessRequest {
        ip: "::1".parse().ok(),
        ..AccessRequest::default()
    };
    assert_eq!(c.access("trusted_network", &lo), AccessDecision::Allow);
    let far = AccessRequest {
        ip: "192.0.2.1".parse().ok(),
        ..AccessRequest::default()
    };
    assert_eq!(c.access("trusted_network", &far), AccessDecision::Deny);
    // Per-host modules.
    let chat = c.modules_for_host("chat.example.org");
    let version = chat.iter().find(|m| m.name == "mod_version").unwrap();
    assert_eq!(version.options.bool("show_os"), Some(true));
    let muc = c
        .modules_for_host("example.org")
        .iter()
        .find(|m| m.name == "mod_muc")
        .unwrap();
    assert_eq!(muc.options.string("host"), Some("conference.example.org"));
}

#[test]
fn debian_ejabberd_default_file_loads_with_warnings() {
    // STARLING_EJABBERD_YML points at another copy (e.g. extracted from the .deb).
    let path = std::env::var_os("STARLING_EJABBERD_YML").map_or_else(
        || PathBuf::from("/etc/ejabberd/ejabberd.yml"),
        PathBuf::from,
    );
    let path = path.as_path();
    if !path.exists() {
        println!(
            "note: {} is absent (install Debian's ejabberd package); skipped",
            path.display()
        );
        return;
    }
    match load_file(path, CATALOGUE) {
        Ok(c) => {
            for w in &c.warnings {
                println!("{w}");
            }
            assert!(!c.warnings.is_empty());
            assert!(!c.hosts.is_empty());
        }
        Err(d) => panic!("{d}"),
    }
}

#[test]
fn the_example_file_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../starling.example.yml");
    let c = match load_file(&path, CATALOGUE) {
        Ok(c) => c,
        Err(d) => panic!("{d}"),
    };
    assert_eq!(c.hosts, vec!["example.org"]);
    assert_eq!(c.listen.len(), 4);
    assert_eq!(c.max_user_sessions, Some(10));
    assert_eq!(
        c.access("announce", &user("admin", "example.org")),
        AccessDecision::Allow
    );
    assert_eq!(
        c.acl.matches("admin", &user("admin", "example.org")),
        c.acl.is_defined("admin")
    );
}

#[test]
fn invalid_hosts_are_errors() {
    assert_eq!(
        errors("hosts: [\"bad host\", \"\"]\n"),
        vec![
            "starling.yml:1:9: hosts[0]: \"bad host\" is not a valid domain",
            "starling.yml:1:21: hosts[1]: \"\" is not a valid domain",
        ]
    );
}

#[test]
fn embedded_default_has_every_catalogue_module() {
    let c = Config::embedded_default(CATALOGUE);
    assert_eq!(c.modules.len(), CATALOGUE.len());
    assert_eq!(c.modules_for_host("localhost").len(), CATALOGUE.len());
}
