//! `starling --check` and `starlingctl check` on good and broken configurations: one line per
//! finding, exit 1 when something is an error.

use std::path::Path;
use std::process::Command;

fn write_cert(dir: &Path, name: &str, hosts: &[&str], expired: bool) -> std::path::PathBuf {
    let mut params =
        rcgen::CertificateParams::new(hosts.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>())
            .unwrap();
    if expired {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    } else {
        params.not_before = rcgen::date_time_ymd(2024, 1, 1);
        params.not_after = rcgen::date_time_ymd(2099, 1, 1);
    }
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, format!("{}{}", cert.pem(), key.serialize_pem())).unwrap();
    path
}

fn config(dir: &Path, hosts: &str, certfile: Option<&Path>, port: u16) -> std::path::PathBuf {
    let certfiles = certfile.map_or(String::new(), |c| {
        format!("certfiles:\n  - {}\n", c.display())
    });
    let text = format!(
        "hosts: [{hosts}]\ndata_dir: {}\n{certfiles}listen:\n  - {{port: {port}, ip: 127.0.0.1, module: ejabberd_c2s}}\n",
        dir.join("data").display()
    );
    let path = dir.join("starling.yml");
    std::fs::write(&path, text).unwrap();
    path
}

fn run_check(config: &Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_starling"))
        .args(["--check", "--no-dns", "--config"])
        .arg(config)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.code().unwrap_or(-1), text)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn a_good_configuration_passes() {
    let dir = tempfile::tempdir().unwrap();
    let cert = write_cert(
        dir.path(),
        "cert.pem",
        &["example.org", "*.example.org"],
        false,
    );
    let cfg = config(dir.path(), "example.org", Some(&cert), free_port());
    let (code, out) = run_check(&cfg);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ok      certificate example.org:"), "{out}");
    assert!(out.contains("valid until 2099-01-01"), "{out}");
    assert!(out.contains("is free"), "{out}");
    assert!(out.contains("is writable"), "{out}");
    assert!(out.contains("0 errors"), "{out}");
}

#[test]
fn expired_and_wrong_name_certificates_fail() {
    let dir = tempfile::tempdir().unwrap();
    let cert = write_cert(dir.path(), "old.pem", &["example.org"], true);
    let cfg = config(
        dir.path(),
        "example.org, other.org",
        Some(&cert),
        free_port(),
    );
    let (code, out) = run_check(&cfg);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("expired on 2021-01-01"), "{out}");
    assert!(
        out.contains("error   certificate no certificate names other.org"),
        "{out}"
    );
}

#[test]
fn busy_ports_and_missing_certificates_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let cfg = config(dir.path(), "localhost", None, port);
    let (code, out) = run_check(&cfg);
    // Warnings only: a self-signed certificate and a port held by someone else.
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("self-signed"), "{out}");
    assert!(
        out.contains(&format!("127.0.0.1:{port} (ejabberd_c2s) is in use")),
        "{out}"
    );
}

#[test]
fn starlingctl_check_runs_the_same_check() {
    let dir = tempfile::tempdir().unwrap();
    let cert = write_cert(dir.path(), "old.pem", &["example.org"], true);
    let cfg = config(dir.path(), "example.org", Some(&cert), free_port());
    let ctl = Path::new(env!("CARGO_BIN_EXE_starling")).with_file_name("starlingctl");
    if !ctl.is_file() {
        // Built by the same `cargo build --workspace`; a lone `-p starling-server` build
        // does not have it.
        eprintln!("skipping: {} not built", ctl.display());
        return;
    }
    let out = Command::new(&ctl)
        .arg("--config")
        .arg(&cfg)
        .args(["check", "--no-dns"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("expired"), "{text}");
    let bad = Command::new(&ctl)
        .args(["check", "--bogus"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
}
