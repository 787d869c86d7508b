//! The shipped systemd unit is valid for systemd (`systemd-analyze verify`) and starts the
//! binaries with options they accept.

use std::path::Path;
use std::process::Command;

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

#[test]
fn the_systemd_unit_verifies_and_its_commands_parse() {
    let unit = std::fs::read_to_string(repo().join("packaging/starling.service")).unwrap();
    let bin = Path::new(env!("CARGO_BIN_EXE_starling"));
    let dir = bin.parent().unwrap();
    // The options of ExecStartPre (a config check) must be ones the binary accepts.
    let check_line = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStartPre="))
        .expect("ExecStartPre");
    assert!(check_line.contains("--check-config"), "{check_line}");
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("starling.yml");
    std::fs::write(&config, "hosts: [example.org]\n").unwrap();
    let local = check_line
        .replace("/usr/local/bin/starling", bin.to_str().unwrap())
        .replace("/etc/starling/starling.yml", config.to_str().unwrap())
        .replace(
            "/var/lib/starling",
            tmp.path().join("data").to_str().unwrap(),
        );
    let mut words = local.split_whitespace();
    let program = words.next().unwrap();
    let status = Command::new(program).args(words).status().unwrap();
    assert!(status.success(), "{local}");

    let Ok(analyze) = which("systemd-analyze") else {
        eprintln!("skipping systemd-analyze verify: not installed");
        return;
    };
    let unit_here = unit.replace("/usr/local/bin/", &format!("{}/", dir.display()));
    let path = tmp.path().join("starling.service");
    std::fs::write(&path, unit_here).unwrap();
    let out = Command::new(analyze)
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Only complaints about this unit count (the host's own units may be imperfect).
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("starling.service"))
        .collect();
    assert!(ours.is_empty(), "{}", ours.join("\n"));
}

fn which(name: &str) -> Result<std::path::PathBuf, ()> {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join(name))
                .find(|p| p.is_file())
        })
        .ok_or(())
}
