//! Connection limits applied at accept, before TLS and before any byte is read (DESIGN §2.3
//! step 1): `max_connections` per listener, concurrent connections per address
//! (`max_connections_per_ip`) and new connections per second per address
//! (`max_connections_rate_per_ip`).
//!
//! An address is an IPv4 address (IPv4-mapped IPv6 included) or an IPv6 /64: one IPv6 host
//! usually holds a whole /64 and could otherwise rotate addresses past the limits.
//!
//! [`ConnLimits::admit_at`] is sans-I/O (time passed in); [`ConnLimits::admit`] reads the clock.
//! An admitted connection holds a [`ConnGuard`] until it ends, which gives its slots back. Memory
//! is bounded: an address is tracked only while it has open connections or its rate bucket is
//! not full again, so idle addresses are forgotten within a second or so.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The limits of one listener; `None` is unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LimitSettings {
    /// Concurrent connections on the listener.
    pub max_connections: Option<usize>,
    /// Concurrent connections from one address.
    pub max_connections_per_ip: Option<u32>,
    /// New connections per second from one address (the burst is the same number).
    pub max_connections_rate_per_ip: Option<f64>,
}

impl LimitSettings {
    /// True if no limit is set.
    pub fn is_unlimited(&self) -> bool {
        self.max_connections.is_none()
            && self.max_connections_per_ip.is_none()
            && self.max_connections_rate_per_ip.is_none()
    }
}

/// Why a connection was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refused {
    /// The listener has `max_connections` open.
    MaxConnections,
    /// The address has `max_connections_per_ip` open.
    PerIp,
    /// The address opens connections faster than `max_connections_rate_per_ip`.
    Rate,
}

impl Refused {
    /// The text sent with the refusal.
    pub fn text(self) -> &'static str {
        match self {
            Self::MaxConnections => "too many connections to this server",
            Self::PerIp => "too many connections from this IP address",
            Self::Rate => "connecting too fast from this IP address",
        }
    }
}

/// The unit the per-address limits count: an IPv4 address or an IPv6 /64.
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !u128::from(u64::MAX);
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
        v4 => v4,
    }
}

#[derive(Debug)]
struct PerAddress {
    open: u32,
    /// Rate bucket: tokens left and when it was last refilled.
    tokens: f64,
    refilled: Instant,
}

#[derive(Debug, Default)]
struct State {
    total: usize,
    addresses: HashMap<IpAddr, PerAddress>,
    next_sweep: Option<Instant>,
}

/// The counters of one listener.
#[derive(Debug)]
pub struct ConnLimits {
    settings: LimitSettings,
    state: Mutex<State>,
}

/// Holds an admitted connection's slots until dropped.
#[derive(Debug)]
pub struct ConnGuard {
    limits: Arc<ConnLimits>,
    key: IpAddr,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.limits.release(self.key);
    }
}

impl ConnLimits {
    /// Limits for one listener.
    pub fn new(settings: LimitSettings) -> Arc<Self> {
        Arc::new(Self {
            settings,
            state: Mutex::new(State::default()),
        })
    }

    /// The settings in force.
    pub fn settings(&self) -> &LimitSettings {
        &self.settings
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Counts only: a panic elsewhere cannot leave them worse than slightly off.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Admits a connection from `ip` now, or says why not.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<ConnGuard, Refused> {
        self.admit_at(ip, Instant::now())
    }

    /// Admits a connection from `ip` at `now`, or says why not.
    pub fn admit_at(self: &Arc<Self>, ip: IpAddr, now: Instant) -> Result<ConnGuard, Refused> {
        let key = address_key(ip);
        let s = &self.settings;
        let mut state = self.lock();
        if state.next_sweep.is_none_or(|t| now >= t) {
            sweep(&mut state, s, now);
        }
        if s.max_connections.is_some_and(|max| state.total >= max) {
            return Err(Refused::MaxConnections);
        }
        let burst = s.max_connections_rate_per_ip.map_or(0.0, |r| r.max(1.0));
        let entry = state.addresses.entry(key).or_insert(PerAddress {
            open: 0,
            tokens: burst,
            refilled: now,
        });
        if s.max_connections_per_ip
            .is_some_and(|max| entry.open >= max)
        {
            return Err(Refused::PerIp);
        }
        if let Some(rate) = s.max_connections_rate_per_ip {
            let elapsed = now.saturating_duration_since(entry.refilled).as_secs_f64();
            entry.tokens = (entry.tokens + elapsed * rate).min(burst);
            entry.refilled = now;
            if entry.tokens < 1.0 {
                return Err(Refused::Rate);
            }
            entry.tokens -= 1.0;
        }
        entry.open += 1;
        state.total += 1;
        Ok(ConnGuard {
            limits: self.clone(),
            key,
        })
    }

    fn release(&self, key: IpAddr) {
        let mut state = self.lock();
        state.total = state.total.saturating_sub(1);
        if let Some(entry) = state.addresses.get_mut(&key) {
            entry.open = entry.open.saturating_sub(1);
            if entry.open == 0 && self.settings.max_connections_rate_per_ip.is_none() {
                state.addresses.remove(&key);
            }
        }
    }

    /// Open connections on the listener.
    pub fn open(&self) -> usize {
        self.lock().total
    }

    /// Addresses tracked (for tests and the memory bound).
    pub fn tracked(&self) -> usize {
        self.lock().addresses.len()
    }
}

/// Forgets addresses with no open connection whose rate bucket is full again.
fn sweep(state: &mut State, s: &LimitSettings, now: Instant) {
    let rate = s.max_connections_rate_per_ip;
    state.addresses.retain(|_, e| {
        if e.open > 0 {
            return true;
        }
        rate.is_some_and(|rate| {
            let burst = rate.max(1.0);
            let elapsed = now.saturating_duration_since(e.refilled).as_secs_f64();
            e.tokens + elapsed * rate < burst
        })
    });
    state.next_sweep = Some(now + Duration::from_secs(1));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn per_ip_concurrency_is_capped_and_released() {
        let l = ConnLimits::new(LimitSettings {
            max_connections_per_ip: Some(2),
            ..LimitSettings::default()
        });
        let a = ip("192.0.2.1");
        let g1 = l.admit(a).unwrap();
        let _g2 = l.admit(a).unwrap();
        assert_eq!(l.admit(a).unwrap_err(), Refused::PerIp);
        // Another address is not affected.
        let _g3 = l.admit(ip("192.0.2.2")).unwrap();
        drop(g1);
        let _g4 = l.admit(a).unwrap();
        assert_eq!(l.open(), 3);
    }

    #[test]
    fn listener_total_is_capped() {
        let l = ConnLimits::new(LimitSettings {
            max_connections: Some(1),
            ..LimitSettings::default()
        });
        let g = l.admit(ip("192.0.2.1")).unwrap();
        assert_eq!(
            l.admit(ip("192.0.2.2")).unwrap_err(),
            Refused::MaxConnections
        );
        drop(g);
        assert!(l.admit(ip("192.0.2.2")).is_ok());
        assert_eq!(l.open(), 0, "the guard was dropped at once");
        assert_eq!(l.tracked(), 0);
    }

    #[test]
    fn rate_per_ip_refills_over_time() {
        let l = ConnLimits::new(LimitSettings {
            max_connections_rate_per_ip: Some(2.0),
            ..LimitSettings::default()
        });
        let a = ip("192.0.2.1");
        let t0 = Instant::now();
        assert!(l.admit_at(a, t0).is_ok());
        assert!(l.admit_at(a, t0).is_ok());
        assert_eq!(l.admit_at(a, t0).unwrap_err(), Refused::Rate);
        // Half a second at 2/s gives one connection back.
        let t1 = t0 + Duration::from_millis(500);
        assert!(l.admit_at(a, t1).is_ok());
        assert_eq!(l.admit_at(a, t1).unwrap_err(), Refused::Rate);
        // Once the bucket is full again the address is forgotten.
        l.admit_at(ip("192.0.2.9"), t0 + Duration::from_secs(10))
            .map(drop)
            .unwrap();
        assert_eq!(l.tracked(), 1, "only the address just seen is tracked");
    }

    #[test]
    fn ipv6_counts_per_64() {
        let l = ConnLimits::new(LimitSettings {
            max_connections_per_ip: Some(1),
            ..LimitSettings::default()
        });
        let _g = l.admit(ip("2001:db8:0:1::1")).unwrap();
        assert_eq!(l.admit(ip("2001:db8:0:1::2")).unwrap_err(), Refused::PerIp);
        assert!(l.admit(ip("2001:db8:0:2::1")).is_ok());
        let _v4 = l.admit(ip("::ffff:192.0.2.1")).unwrap();
        assert_eq!(l.admit(ip("192.0.2.1")).unwrap_err(), Refused::PerIp);
    }

    #[test]
    fn unlimited_admits_everything() {
        let l = ConnLimits::new(LimitSettings::default());
        assert!(l.settings().is_unlimited());
        let guards: Vec<_> = (0..100)
            .map(|_| l.admit(ip("192.0.2.1")).unwrap())
            .collect();
        assert_eq!(l.open(), 100);
        drop(guards);
        assert_eq!(l.open(), 0);
    }
}
