//! The embedded defaults (no configuration file) and loading ejabberd's own config file.

use starling_config::Config;

#[test]
fn embedded_defaults_are_clean_and_safe() {
    let specs = starling_modules::specs();
    let config = Config::embedded_default(&specs);
    assert!(
        config.warnings.is_empty(),
        "embedded defaults must load without findings: {:?}",
        config
            .warnings
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
    );
    assert_eq!(config.hosts, vec!["localhost".to_owned()]);
    let ports: Vec<(u16, bool, bool)> = config
        .listen
        .iter()
        .map(|l| (l.port, l.starttls_required, l.tls))
        .collect();
    assert_eq!(ports, vec![(5222, true, false), (5223, false, true)]);
    // Every module of this build runs (but mod_http_upload, which needs an HTTP listener the
    // defaults do not have), and registration is open only from loopback.
    assert!(!config.modules.iter().any(|m| m.name == "mod_http_upload"));
    for spec in specs.iter().filter(|s| s.name != "mod_http_upload") {
        assert!(
            config.modules.iter().any(|m| m.name == spec.name),
            "{} missing",
            spec.name
        );
    }
    let register = config
        .modules
        .iter()
        .find(|m| m.name == "mod_register")
        .unwrap();
    assert_eq!(
        register.options.string("ip_access"),
        Some("trusted_network")
    );
    use starling_config::{AccessDecision, AccessRequest};
    let from = |ip: &str| AccessRequest {
        user: None,
        resource: None,
        ip: Some(ip.parse().unwrap()),
    };
    assert_eq!(
        config.access("trusted_network", &from("127.0.0.1")),
        AccessDecision::Allow
    );
    assert_eq!(
        config.access("trusted_network", &from("192.0.2.7")),
        AccessDecision::Deny
    );
}

#[test]
fn the_example_config_loads_without_errors() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../starling.example.yml");
    let config = starling_config::load_file(&path, &starling_modules::specs());
    if let Err(d) = &config {
        panic!("starling.example.yml does not load:\n{d}");
    }
}

/// ejabberd's own default file (Debian's package installs it; `scripts/test.sh` installs the
/// package) starts a node: supported parts run, the rest are warnings. Ports are moved to
/// ephemeral ones and data to a temporary directory so the test does not touch the system.
#[tokio::test]
async fn ejabberds_default_file_starts_a_node() {
    let path = std::env::var_os("STARLING_EJABBERD_YML")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/etc/ejabberd/ejabberd.yml".into());
    if !path.exists() {
        eprintln!(
            "skipped: {} not found (install Debian's ejabberd package)",
            path.display()
        );
        return;
    }
    let mut config = match starling_config::load_file(&path, &starling_modules::specs()) {
        Ok(c) => c,
        Err(d) => panic!("ejabberd's default file must load:\n{d}"),
    };
    assert!(
        !config.warnings.is_empty(),
        "unsupported parts are reported"
    );
    let dir = tempfile::tempdir().unwrap();
    config.data_dir = dir.path().to_path_buf();
    for listener in &mut config.listen {
        listener.port = 0;
        listener.ip = "127.0.0.1".parse().unwrap();
    }
    // The certificate may be readable only by the ejabberd user; fall back to a generated one.
    if config.certfiles.iter().any(|f| std::fs::read(f).is_err()) {
        config.certfiles.clear();
    }
    let node = starling_server::start(config, &starling_modules::catalogue())
        .await
        .expect("node starts with ejabberd's default configuration");
    assert!(!node.c2s.is_empty(), "the c2s listener runs");
    node.stop().await;
}
