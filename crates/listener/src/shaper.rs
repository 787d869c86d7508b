//! Traffic shapers (ejabberd's `shaper`): a per-connection token bucket limiting how fast a
//! connection's bytes are read, applied by pausing reads so that TCP pushes back on the sender
//! instead of data being dropped or buffered.
//!
//! [`Shaper::consume`] is sans-I/O: it takes the bytes just read and `now`, and returns how
//! long to wait before the next read; [`Shaper::resume_at`] says until when. The read loop
//! calls [`Shaper::ready`] before each read and [`Shaper::record`] after it: waiting *before*
//! the read keeps the wait cancel-safe (the read loop is one branch of a `select!`, and a
//! cancelled wait is simply waited again, up to the same instant) and lets the bytes already
//! read be processed at once.
//! The bucket holds one second of traffic (`rate` bytes) and may go into debt: a read larger
//! than the tokens left is allowed (bytes already in our buffer are not thrown away) and paid
//! for by a longer pause, so the average rate over time is `rate` whatever the read size.

use std::time::{Duration, Instant};

/// A token bucket of `rate` bytes per second.
#[derive(Clone, Debug)]
pub struct Shaper {
    rate: f64,
    /// Bytes that may be read without waiting; negative while in debt.
    tokens: f64,
    refilled: Instant,
}

impl Shaper {
    /// A full bucket allowing `rate` bytes per second (at least 1).
    pub fn new(rate: u64, now: Instant) -> Self {
        // Rates are bytes per second, far below 2^52: the conversion is exact.
        #[allow(clippy::cast_precision_loss)]
        let rate = rate.max(1) as f64;
        Self {
            rate,
            tokens: rate,
            refilled: now,
        }
    }

    /// The rate in bytes per second.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// Accounts for `bytes` read at `now`; returns how long to wait before reading again.
    pub fn consume(&mut self, bytes: usize, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        // A read size fits in f64 exactly for any realistic buffer.
        #[allow(clippy::cast_precision_loss)]
        let bytes = bytes as f64;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate) - bytes;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }

    /// When the debt is paid and reading may resume; `None` if it may now.
    pub fn resume_at(&self) -> Option<Instant> {
        (self.tokens < 0.0)
            .then(|| self.refilled + Duration::from_secs_f64(-self.tokens / self.rate))
    }

    /// Accounts for `bytes` just read.
    pub fn record(&mut self, bytes: usize) {
        self.consume(bytes, Instant::now());
    }

    /// Waits until reading may resume.
    pub async fn ready(&self) {
        if let Some(at) = self.resume_at() {
            tokio::time::sleep_until(at.into()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_within_the_bucket_do_not_wait() {
        let t0 = Instant::now();
        let mut s = Shaper::new(1000, t0);
        assert_eq!(s.consume(600, t0), Duration::ZERO);
        assert_eq!(s.consume(400, t0), Duration::ZERO);
        assert_eq!(s.resume_at(), None);
        // Empty now: 500 more bytes cost half a second.
        assert_eq!(s.consume(500, t0), Duration::from_millis(500));
        assert_eq!(s.resume_at(), Some(t0 + Duration::from_millis(500)));
    }

    #[tokio::test]
    async fn ready_waits_out_the_debt() {
        let mut s = Shaper::new(100_000, Instant::now());
        s.record(100_000 + 5_000);
        let at = s.resume_at().unwrap();
        s.ready().await;
        assert!(Instant::now() >= at);
        s.record(0);
        assert_eq!(s.resume_at(), None);
    }

    #[test]
    fn debt_is_paid_by_waiting_and_refills_at_the_rate() {
        let t0 = Instant::now();
        let mut s = Shaper::new(1000, t0);
        // A 4 KiB read on a 1000 B/s shaper: 1000 bytes of credit, 3096 of debt.
        assert_eq!(s.consume(4096, t0), Duration::from_millis(3096));
        // After waiting that long the bucket is at zero: a second read waits its full cost.
        let t1 = t0 + Duration::from_millis(3096);
        let wait = s.consume(1000, t1);
        assert!((wait.as_secs_f64() - 1.0).abs() < 1e-6, "{wait:?}");
    }

    #[test]
    fn the_average_rate_holds_over_many_reads() {
        let t0 = Instant::now();
        let mut s = Shaper::new(1000, t0);
        let mut now = t0;
        for _ in 0..100 {
            now += s.consume(4096, now);
        }
        // 409,600 bytes at 1000 B/s, less the first second's credit.
        let secs = now.duration_since(t0).as_secs_f64();
        assert!((secs - 408.6).abs() < 0.01, "{secs}");
    }

    #[test]
    fn idle_time_refills_only_up_to_one_second() {
        let t0 = Instant::now();
        let mut s = Shaper::new(1000, t0);
        let later = t0 + Duration::from_secs(3600);
        assert_eq!(s.consume(1000, later), Duration::ZERO);
        assert!(s.consume(1, later) > Duration::ZERO);
        assert!((s.rate() - 1000.0).abs() < f64::EPSILON);
    }
}
