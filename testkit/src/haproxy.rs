//! A private HAProxy (Debian's `haproxy` package, which `scripts/test.sh` installs) for tests
//! that put a load balancer in front of nodes: found on `PATH` or in `/usr/sbin`, run in the
//! foreground as a child of the test, and killed by its own pid when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::Context;

/// The `haproxy` binary, if installed.
pub fn bin() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|d| d.join("haproxy"))
        .find(|p| Path::new(p).is_file())
}

/// True if HAProxy is installed; otherwise prints why `test` is skipped, and panics in CI
/// (where `scripts/test.sh` always installs it).
pub fn available(test: &str) -> bool {
    if bin().is_some() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: haproxy not found; scripts/test.sh installs Debian's haproxy package"
    );
    eprintln!("\n*** SKIPPED {test}: haproxy not found (install Debian's haproxy package) ***\n");
    false
}

/// An HAProxy process running one configuration; killed on drop.
pub struct HaProxy {
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl HaProxy {
    /// Checks `config` (`haproxy -c`) and starts HAProxy on it in the foreground.
    pub fn start(config: &str) -> anyhow::Result<Self> {
        let bin = bin().context("haproxy not found: install Debian's haproxy package")?;
        let dir = tempfile::tempdir()?;
        let cfg = dir.path().join("haproxy.cfg");
        std::fs::write(&cfg, config)?;
        let check = Command::new(&bin).arg("-c").arg("-f").arg(&cfg).output()?;
        anyhow::ensure!(
            check.status.success(),
            "haproxy rejects the configuration: {}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        let log = dir.path().join("haproxy.log");
        let out = std::fs::File::create(&log)?;
        let child = Command::new(&bin)
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("cannot start haproxy")?;
        Ok(Self {
            child,
            log,
            _dir: dir,
        })
    }

    /// What HAProxy printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
