//! Server resource sampling from Linux procfs (`proc(5)`): resident memory from
//! `/proc/PID/status` (`VmRSS`) and CPU time from `/proc/PID/stat` (`utime` + `stime`, all
//! threads of the process). The benchmark reads these for the server under test and for itself.

use std::{fs, process::Command};

use anyhow::{Context as _, Result, bail};

/// Which process to sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pid {
    /// `/proc/self`: the load tool itself.
    Current,
    /// Another process, normally the server under test.
    Other(u32),
}

impl Pid {
    fn dir(self) -> String {
        match self {
            Self::Current => "/proc/self".to_owned(),
            Self::Other(pid) => format!("/proc/{pid}"),
        }
    }
}

/// Resident set size in KiB.
pub(crate) fn rss_kib(pid: Pid) -> Result<u64> {
    let path = format!("{}/status", pid.dir());
    let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_vm_rss(&text).with_context(|| format!("no VmRSS in {path}"))
}

/// User plus system CPU time consumed so far, in microseconds.
pub(crate) fn cpu_us(pid: Pid, ticks_per_sec: u64) -> Result<u64> {
    let path = format!("{}/stat", pid.dir());
    let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let ticks = parse_cpu_ticks(&text).with_context(|| format!("malformed {path}"))?;
    Ok(ticks_to_us(ticks, ticks_per_sec))
}

/// The kernel's `USER_HZ`, as `getconf CLK_TCK` reports it; 100 on every mainstream Linux
/// architecture, which is the fallback when `getconf` is unavailable.
pub(crate) fn clock_ticks_per_sec() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

/// Fails unless `/proc/PID` exists, so a wrong `--server-pid` is caught before the run.
pub(crate) fn check_alive(pid: u32) -> Result<()> {
    if fs::metadata(format!("/proc/{pid}")).is_err() {
        bail!("no process with pid {pid}");
    }
    Ok(())
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.trim_start_matches("VmRSS:")
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `utime` and `stime` are fields 14 and 15 of `stat`; the command name (field 2) may contain
/// spaces and parentheses, so fields are counted after its last `)`.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let after_comm = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = after_comm.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn ticks_to_us(ticks: u64, ticks_per_sec: u64) -> u64 {
    ticks.saturating_mul(1_000_000) / ticks_per_sec.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_vm_rss() {
        let status = "Name:\tbeam.smp\nVmPeak:\t  999 kB\nVmRSS:\t   123456 kB\nThreads:\t9\n";
        assert_eq!(parse_vm_rss(status), Some(123_456));
        assert_eq!(parse_vm_rss("Name: x\n"), None);
    }

    #[test]
    fn parses_utime_and_stime_after_a_tricky_comm() {
        let stat = "4242 (we ird) name)) S 1 4242 4242 0 -1 4194560 1 2 3 4 250 75 0 0 20 0 \
                    9 0 100 1000 10";
        assert_eq!(parse_cpu_ticks(stat), Some(325));
        assert_eq!(parse_cpu_ticks("1 (x) S 1 2"), None);
    }

    #[test]
    fn converts_ticks() {
        assert_eq!(ticks_to_us(325, 100), 3_250_000);
        assert_eq!(ticks_to_us(1, 0), 1_000_000);
    }

    #[test]
    fn samples_this_process() {
        assert!(rss_kib(Pid::Current).unwrap() > 0);
        assert!(cpu_us(Pid::Current, clock_ticks_per_sec()).is_ok());
        assert!(check_alive(std::process::id()).is_ok());
        assert!(check_alive(u32::MAX).is_err());
    }
}
