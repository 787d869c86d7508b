//! Figures of one benchmark run and their two renderings: a one-line JSON summary (for scripts
//! such as `bench/compare.sh`) and a human-readable table.

use std::fmt::Write as _;

/// Latency distribution of delivered messages, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Latency {
    pub(crate) p50: u64,
    pub(crate) p90: u64,
    pub(crate) p99: u64,
    pub(crate) max: u64,
}

impl Latency {
    /// Nearest-rank percentiles of `samples` (sorted in place); `None` when there are none.
    pub(crate) fn from_samples(samples: &mut [u32]) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        let at = |p: u64| {
            let len = samples.len() as u64;
            // Nearest rank: ceil(p/100 * len), 1-based.
            let rank = (p * len).div_ceil(100).clamp(1, len);
            let index = usize::try_from(rank - 1).unwrap_or(0);
            samples.get(index).copied().map_or(0, u64::from)
        };
        Some(Self {
            p50: at(50),
            p90: at(90),
            p99: at(99),
            max: samples.last().copied().map_or(0, u64::from),
        })
    }
}

/// Everything measured in one run. `None` means "not measured" (no `--server-pid`, or no
/// message phase) and renders as JSON `null`.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Summary {
    pub(crate) label: String,
    pub(crate) users: u64,
    pub(crate) connected: u64,
    pub(crate) login_failures: u64,
    pub(crate) login_secs: f64,
    pub(crate) logins_per_sec: f64,
    pub(crate) rss_before_kib: Option<u64>,
    pub(crate) rss_after_kib: Option<u64>,
    pub(crate) kib_per_conn: Option<f64>,
    pub(crate) idle_disconnects: u64,
    /// Server CPU use while the connections were idle, percent of one core.
    pub(crate) idle_cpu_pct: Option<f64>,
    pub(crate) pairs: u64,
    pub(crate) target_rate: f64,
    pub(crate) duration_secs: f64,
    pub(crate) sent: u64,
    pub(crate) received: u64,
    pub(crate) lost: u64,
    pub(crate) not_sent: u64,
    pub(crate) achieved_rate: f64,
    pub(crate) latency: Option<Latency>,
    pub(crate) server_cpu_us: Option<u64>,
    pub(crate) cpu_us_per_msg: Option<f64>,
    pub(crate) bench_cpu_us: u64,
    pub(crate) bench_rss_kib: u64,
    pub(crate) load_avg: String,
}

impl Summary {
    /// The one-line JSON summary.
    pub(crate) fn to_json(&self) -> String {
        let lat = self.latency;
        let fields: Vec<(&str, String)> = vec![
            ("label", json_string(&self.label)),
            ("users", self.users.to_string()),
            ("connected", self.connected.to_string()),
            ("login_failures", self.login_failures.to_string()),
            ("login_secs", num(self.login_secs)),
            ("logins_per_sec", num(self.logins_per_sec)),
            ("rss_before_kib", opt(self.rss_before_kib)),
            ("rss_after_kib", opt(self.rss_after_kib)),
            ("kib_per_conn", self.kib_per_conn.map_or("null".into(), num)),
            ("idle_disconnects", self.idle_disconnects.to_string()),
            ("idle_cpu_pct", self.idle_cpu_pct.map_or("null".into(), num)),
            ("pairs", self.pairs.to_string()),
            ("target_rate", num(self.target_rate)),
            ("duration_secs", num(self.duration_secs)),
            ("sent", self.sent.to_string()),
            ("received", self.received.to_string()),
            ("lost", self.lost.to_string()),
            ("not_sent", self.not_sent.to_string()),
            ("achieved_rate", num(self.achieved_rate)),
            ("p50_us", opt(lat.map(|l| l.p50))),
            ("p90_us", opt(lat.map(|l| l.p90))),
            ("p99_us", opt(lat.map(|l| l.p99))),
            ("max_us", opt(lat.map(|l| l.max))),
            ("server_cpu_us", opt(self.server_cpu_us)),
            (
                "cpu_us_per_msg",
                self.cpu_us_per_msg.map_or("null".into(), num),
            ),
            ("bench_cpu_us", self.bench_cpu_us.to_string()),
            ("bench_rss_kib", self.bench_rss_kib.to_string()),
            ("load_avg", json_string(&self.load_avg)),
        ];
        let body: Vec<String> = fields
            .into_iter()
            .map(|(k, v)| format!("\"{k}\":{v}"))
            .collect();
        format!("{{{}}}", body.join(","))
    }

    /// The human-readable table.
    pub(crate) fn to_table(&self) -> String {
        let mut out = String::new();
        let mut row = |name: &str, value: String| {
            let _ = writeln!(out, "  {name:<28} {value}");
        };
        let or_na = |v: Option<String>| v.unwrap_or_else(|| "n/a".into());
        row("server", self.label.clone());
        row(
            "connections",
            format!(
                "{} of {} ({} failed)",
                self.connected, self.users, self.login_failures
            ),
        );
        row(
            "logins",
            format!("{:.1}/s over {:.1} s", self.logins_per_sec, self.login_secs),
        );
        row(
            "server RSS before/after",
            or_na(
                self.rss_before_kib
                    .zip(self.rss_after_kib)
                    .map(|(b, a)| format!("{b} KiB / {a} KiB")),
            ),
        );
        row(
            "KiB per idle connection",
            or_na(self.kib_per_conn.map(|k| format!("{k:.1}"))),
        );
        row("disconnects while idle", self.idle_disconnects.to_string());
        row(
            "server CPU while idle",
            or_na(self.idle_cpu_pct.map(|p| format!("{p:.1} % of a core"))),
        );
        row(
            "messages",
            format!(
                "{} pairs, target {:.0}/s for {:.0} s, achieved {:.0}/s",
                self.pairs, self.target_rate, self.duration_secs, self.achieved_rate
            ),
        );
        row(
            "sent / received / lost",
            format!(
                "{} / {} / {} (not sent: {})",
                self.sent, self.received, self.lost, self.not_sent
            ),
        );
        row(
            "latency p50/p90/p99/max",
            or_na(self.latency.map(|l| {
                format!(
                    "{:.2} / {:.2} / {:.2} / {:.2} ms",
                    ms(l.p50),
                    ms(l.p90),
                    ms(l.p99),
                    ms(l.max)
                )
            })),
        );
        row(
            "server CPU in phase",
            or_na(self.server_cpu_us.map(|c| format!("{:.2} s", secs(c)))),
        );
        row(
            "CPU µs per delivered msg",
            or_na(self.cpu_us_per_msg.map(|c| format!("{c:.1}"))),
        );
        row(
            "load tool CPU / RSS",
            format!(
                "{:.2} s / {} KiB",
                secs(self.bench_cpu_us),
                self.bench_rss_kib
            ),
        );
        row("load average (1/5/15)", self.load_avg.clone());
        out
    }
}

#[allow(clippy::cast_precision_loss)] // display only
fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

#[allow(clippy::cast_precision_loss)] // display only
fn secs(us: u64) -> f64 {
    us as f64 / 1_000_000.0
}

fn opt(v: Option<u64>) -> String {
    v.map_or_else(|| "null".into(), |v| v.to_string())
}

/// A finite JSON number with at most three decimals (JSON has no NaN or infinity).
fn num(v: f64) -> String {
    if v.is_finite() {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        "null".into()
    }
}

fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut samples: Vec<u32> = (1..=100).rev().collect();
        let l = Latency::from_samples(&mut samples).unwrap();
        assert_eq!((l.p50, l.p90, l.p99, l.max), (50, 90, 99, 100));
        let mut one = vec![7];
        let l = Latency::from_samples(&mut one).unwrap();
        assert_eq!((l.p50, l.p99, l.max), (7, 7, 7));
        assert_eq!(Latency::from_samples(&mut []), None);
    }

    #[test]
    fn json_is_one_line_with_nulls_and_escapes() {
        let s = Summary {
            label: "star\"ling\n".into(),
            users: 10,
            kib_per_conn: Some(12.5),
            cpu_us_per_msg: Some(f64::NAN),
            latency: Some(Latency {
                p50: 1,
                p90: 2,
                p99: 3,
                max: 4,
            }),
            ..Summary::default()
        };
        let json = s.to_json();
        assert!(!json.contains('\n'));
        assert!(json.starts_with("{\"label\":\"star\\\"ling\\u000a\","));
        assert!(json.contains("\"kib_per_conn\":12.5,"));
        assert!(json.contains("\"rss_before_kib\":null,"));
        assert!(json.contains("\"cpu_us_per_msg\":null,"));
        assert!(json.contains("\"p99_us\":3,"));
        assert!(json.ends_with('}'));
    }

    #[test]
    fn numbers_are_trimmed() {
        assert_eq!(num(3.0), "3");
        assert_eq!(num(2.25), "2.25");
        assert_eq!(num(f64::INFINITY), "null");
    }

    #[test]
    fn table_mentions_every_headline_figure() {
        let s = Summary {
            label: "ejabberd".into(),
            kib_per_conn: Some(40.0),
            cpu_us_per_msg: Some(55.5),
            ..Summary::default()
        };
        let t = s.to_table();
        assert!(t.contains("KiB per idle connection      40.0"));
        assert!(t.contains("CPU µs per delivered msg     55.5"));
        assert!(t.contains("latency p50/p90/p99/max      n/a"));
    }
}
