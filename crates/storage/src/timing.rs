//! Latency histograms in atomics, and the per-operation timings of storage calls
//! (`starling_storage_query_duration_seconds{op}`).
//!
//! The histogram lives here, the lowest crate that needs one, so that storage backends can
//! time their calls without depending on the core or a metrics library; the core re-exports
//! it for routing latency, and `starling-metrics` reads both at scrape time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds: 25 µs to 1 s, so both the 20 µs routing
/// budget of DESIGN.md §8 and a slow storage call are visible.
pub const ROUTING_BUCKETS: [f64; 12] = [
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.05, 0.25, 1.0,
];

/// A latency histogram with fixed buckets, in atomics. Bucket `i` counts observations no larger
/// than `ROUTING_BUCKETS[i]` and larger than the previous bound; the last slot is `+Inf`.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    buckets: [AtomicU64; ROUTING_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
    count: AtomicU64,
}

/// A point-in-time copy of a [`LatencyHistogram`].
#[derive(Clone, Debug, PartialEq)]
pub struct HistogramSnapshot {
    /// `(upper bound in seconds, observations in this bucket only)`, ending with `+Inf`.
    pub buckets: Vec<(f64, u64)>,
    /// Sum of observations, in seconds.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
}

impl LatencyHistogram {
    /// Records one observation.
    pub fn observe(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let slot = ROUTING_BUCKETS
            .iter()
            .position(|bound| secs <= *bound)
            .unwrap_or(ROUTING_BUCKETS.len());
        if let Some(bucket) = self.buckets.get(slot) {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// The current values. Reads are not atomic as a whole; a scrape racing an observation may
    /// see the count one off from the buckets, which Prometheus tolerates.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let buckets = ROUTING_BUCKETS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(&self.buckets)
            .map(|(bound, n)| (bound, n.load(Ordering::Relaxed)))
            .collect();
        // Nanoseconds to seconds: the precision lost in the cast is far below a bucket width.
        #[allow(clippy::cast_precision_loss)]
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        HistogramSnapshot {
            buckets,
            sum,
            count: self.count.load(Ordering::Relaxed),
        }
    }
}

/// Per-operation latency of a backend's calls. Operations are the store methods' names
/// (`push_offline`, `roster`, ...): a bounded set fixed by the code, never by input.
#[derive(Debug, Default)]
pub struct QueryTimings {
    by_op: RwLock<Vec<(&'static str, Arc<LatencyHistogram>)>>,
}

impl QueryTimings {
    /// Records one call of `op` that took `elapsed`.
    pub fn observe(&self, op: &'static str, elapsed: Duration) {
        let found = self
            .by_op
            .read()
            .ok()
            .and_then(|ops| ops.iter().find(|(o, _)| *o == op).map(|(_, h)| h.clone()));
        let histogram = match found {
            Some(h) => h,
            None => {
                let Ok(mut ops) = self.by_op.write() else {
                    return;
                };
                match ops.iter().find(|(o, _)| *o == op) {
                    Some((_, h)) => h.clone(),
                    None => {
                        let h = Arc::new(LatencyHistogram::default());
                        ops.push((op, h.clone()));
                        h
                    }
                }
            }
        };
        histogram.observe(elapsed);
    }

    /// Every operation seen so far with its histogram, sorted by name.
    pub fn snapshot(&self) -> Vec<(&'static str, HistogramSnapshot)> {
        let mut out: Vec<_> = self
            .by_op
            .read()
            .map(|ops| ops.iter().map(|(op, h)| (*op, h.snapshot())).collect())
            .unwrap_or_default();
        out.sort_by_key(|(op, _)| *op);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_are_timed_separately() {
        let t = QueryTimings::default();
        t.observe("roster", Duration::from_micros(40));
        t.observe("roster", Duration::from_millis(3));
        t.observe("push_offline", Duration::from_secs(2));
        let snap = t.snapshot();
        assert_eq!(snap.len(), 2);
        let (op, offline) = &snap[0];
        assert_eq!(*op, "push_offline");
        assert_eq!(offline.count, 1);
        assert_eq!(
            offline.buckets.last().map(|b| b.1),
            Some(1),
            "over 1 s lands in +Inf"
        );
        assert_eq!(snap[1].1.count, 2);
    }
}
