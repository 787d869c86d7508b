//! Built-in fail2ban: addresses that fail to authenticate too often are refused for a while
//! (ejabberd's `mod_fail2ban`, with its option names and defaults).
//!
//! [`BanTable`] is sans-I/O: every call takes `now`, so the counting, the ban, its expiry and
//! the size bound are unit-tested without sleeping. [`Bans`] is the thread-safe shell the
//! [`Server`] owns; connections report failed SASL exchanges ([`Server::auth_failed`]) and
//! are checked at accept ([`Server::banned`]); `list_bans` and `unban_ip` read and edit it.
//!
//! As in ejabberd, each failure extends the address's record to `now + c2s_auth_ban_lifetime`,
//! and the address is banned while it holds at least `c2s_max_auth_failures` failures. Unlike
//! ejabberd, an IPv6 client is counted per /64 (one host usually holds a whole /64, so
//! counting single addresses would let it rotate past the ban), an IPv4-mapped IPv6 address
//! counts as its IPv4 address, and the table is bounded ([`DEFAULT_CAPACITY`] records): when
//! full, expired records go first, then the unbanned record closest to expiry; bans are never
//! evicted to make room for mere failures.
//!
//! Addresses allowed by the `access` rule of `mod_fail2ban` are never counted (ejabberd's
//! whitelist). The table is per node: in a cluster each node bans what it sees.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use starling_config::{AccessDecision, AccessRequest, Config};

use crate::Server;

/// The module whose options configure banning; without it nobody is banned.
pub const MODULE: &str = "mod_fail2ban";
/// ejabberd's default `c2s_auth_ban_lifetime`: one hour.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);
/// ejabberd's default `c2s_max_auth_failures`.
pub const DEFAULT_MAX_FAILURES: u32 = 20;
/// Most addresses tracked at once (failures and bans); about 48 bytes each.
pub const DEFAULT_CAPACITY: usize = 100_000;
/// How often expired records are swept at most.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// What `mod_fail2ban` asks for, resolved from the config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BanPolicy {
    /// Failures that ban an address (`c2s_max_auth_failures`).
    pub max_failures: u32,
    /// How long failures are remembered and a ban lasts (`c2s_auth_ban_lifetime`).
    pub lifetime: Duration,
    /// Access rule whose `allow` exempts an address (`access`); `None` exempts nobody.
    pub exempt: Option<String>,
}

impl BanPolicy {
    /// The policy of `mod_fail2ban` in the global module list, else of the first host that
    /// enables it; `None` when no host does (banning is off).
    pub fn from_config(config: &Config) -> Option<Self> {
        let module = config
            .modules
            .iter()
            .chain(config.host_modules.values().flatten())
            .find(|m| m.name == MODULE)?;
        let o = &module.options;
        Some(Self {
            max_failures: o
                .int("c2s_max_auth_failures")
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(DEFAULT_MAX_FAILURES)
                .max(1),
            lifetime: o
                .duration("c2s_auth_ban_lifetime")
                .unwrap_or(DEFAULT_LIFETIME),
            exempt: o.string("access").map(str::to_owned),
        })
    }
}

/// The unit counted and banned: an IPv4 address (IPv4-mapped IPv6 included) or an IPv6 /64.
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !u128::from(u64::MAX);
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
        v4 => v4,
    }
}

/// Renders an address key: IPv6 keys as their /64.
pub fn key_label(key: IpAddr) -> String {
    match key {
        IpAddr::V6(v6) => format!("{v6}/64"),
        v4 => v4.to_string(),
    }
}

/// One banned address, as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ban {
    /// The address key (IPv6: the /64's first address).
    pub key: IpAddr,
    /// Failures counted.
    pub failures: u32,
    /// Time left until the ban lifts.
    pub remaining: Duration,
}

impl Ban {
    /// The text of the `<policy-violation/>` a banned client gets.
    pub fn refusal_text(&self) -> String {
        let minutes = self.remaining.as_secs().div_ceil(60).max(1);
        format!(
            "Too many ({}) failed authentications from this IP address ({}). The address is \
             blocked for {minutes} more minute(s)",
            self.failures,
            key_label(self.key)
        )
    }
}

/// What a counted failure did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counted {
    /// The address now has this many failures, below the limit.
    Failures(u32),
    /// This failure banned the address.
    Banned,
    /// The address was already banned (its ban is extended).
    AlreadyBanned,
    /// The table is full of bans: the failure was not recorded.
    Full,
}

#[derive(Clone, Copy, Debug)]
struct Record {
    failures: u32,
    expires: Instant,
}

/// Failure counts and bans by address key, with time passed in.
#[derive(Debug)]
pub struct BanTable {
    records: HashMap<IpAddr, Record>,
    capacity: usize,
    next_sweep: Option<Instant>,
}

impl BanTable {
    /// An empty table holding at most `capacity` addresses.
    pub fn new(capacity: usize) -> Self {
        Self {
            records: HashMap::new(),
            capacity: capacity.max(1),
            next_sweep: None,
        }
    }

    /// Counts one failed authentication from `ip` under `policy`.
    pub fn record_failure(&mut self, ip: IpAddr, policy: &BanPolicy, now: Instant) -> Counted {
        self.maybe_sweep(now);
        let key = address_key(ip);
        let expires = now + policy.lifetime;
        if let Some(r) = self.records.get_mut(&key) {
            if r.expires <= now {
                // Stale record: start over.
                r.failures = 0;
            }
            let was_banned = r.failures >= policy.max_failures;
            r.failures = r.failures.saturating_add(1);
            r.expires = expires;
            return match (was_banned, r.failures >= policy.max_failures) {
                (true, _) => Counted::AlreadyBanned,
                (false, true) => Counted::Banned,
                (false, false) => Counted::Failures(r.failures),
            };
        }
        if self.records.len() >= self.capacity && !self.make_room(policy, now) {
            return Counted::Full;
        }
        self.records.insert(
            key,
            Record {
                failures: 1,
                expires,
            },
        );
        if policy.max_failures <= 1 {
            Counted::Banned
        } else {
            Counted::Failures(1)
        }
    }

    /// The ban on `ip`, if it is banned at `now` under a limit of `max_failures`.
    pub fn banned(&self, ip: IpAddr, max_failures: u32, now: Instant) -> Option<Ban> {
        let key = address_key(ip);
        let r = self.records.get(&key)?;
        (r.failures >= max_failures && r.expires > now).then(|| Ban {
            key,
            failures: r.failures,
            remaining: r.expires - now,
        })
    }

    /// Every active ban, soonest to lift first.
    pub fn bans(&self, max_failures: u32, now: Instant) -> Vec<Ban> {
        let mut bans: Vec<Ban> = self
            .records
            .iter()
            .filter(|(_, r)| r.failures >= max_failures && r.expires > now)
            .map(|(key, r)| Ban {
                key: *key,
                failures: r.failures,
                remaining: r.expires - now,
            })
            .collect();
        bans.sort_by_key(|b| (b.remaining, b.key));
        bans
    }

    /// Forgets every record whose key lies in `network` (an address, or `address/prefix`):
    /// failures and bans alike. Returns how many records were removed.
    pub fn unban(&mut self, network: &Network) -> usize {
        let before = self.records.len();
        self.records.retain(|key, _| !network.contains_key(*key));
        before - self.records.len()
    }

    /// Drops expired records; returns how many.
    pub fn sweep(&mut self, now: Instant) -> usize {
        let before = self.records.len();
        self.records.retain(|_, r| r.expires > now);
        self.next_sweep = Some(now + SWEEP_INTERVAL);
        before - self.records.len()
    }

    /// Sweeps if the last sweep is more than a second old.
    pub fn maybe_sweep(&mut self, now: Instant) {
        if self.next_sweep.is_none_or(|t| now >= t) {
            self.sweep(now);
        }
    }

    /// Addresses tracked (failures and bans).
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// True if nothing is tracked.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Frees one slot: expired records first, else the unbanned record closest to expiry.
    fn make_room(&mut self, policy: &BanPolicy, now: Instant) -> bool {
        if self.sweep(now) > 0 {
            return true;
        }
        let victim = self
            .records
            .iter()
            .filter(|(_, r)| r.failures < policy.max_failures)
            .min_by_key(|(_, r)| r.expires)
            .map(|(k, _)| *k);
        victim.is_some_and(|k| self.records.remove(&k).is_some())
    }
}

/// An address or a CIDR network given to `unban_ip`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Network {
    addr: IpAddr,
    prefix: u8,
}

impl Network {
    /// Parses `ADDRESS` or `ADDRESS/PREFIX`; `None` if malformed.
    pub fn parse(s: &str) -> Option<Self> {
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => (a.parse::<IpAddr>().ok()?, Some(p.parse::<u8>().ok()?)),
            None => (s.trim().parse::<IpAddr>().ok()?, None),
        };
        let addr = addr.to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(Self { addr, prefix })
    }

    /// True if the record `key` belongs to this network. A key stands for a whole IPv6 /64,
    /// so a network narrower than /64 matches the /64 holding it.
    fn contains_key(&self, key: IpAddr) -> bool {
        match (self.addr, key) {
            (IpAddr::V4(net), IpAddr::V4(k)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(k) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(k)) => {
                let prefix = self.prefix.min(64);
                let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
                u128::from(net) & mask == u128::from(k) & mask
            }
            _ => false,
        }
    }
}

/// Counters of refused connections and bans, read by the metrics exporter.
#[derive(Debug, Default)]
pub struct AbuseCounters {
    bans: AtomicU64,
    active: AtomicI64,
    refused: [AtomicU64; Refusal::ALL.len()],
}

impl AbuseCounters {
    /// Bans started since the node started (`starling_bans_total`).
    pub fn bans_total(&self) -> u64 {
        self.bans.load(Ordering::Relaxed)
    }

    /// Bans in force at the last table change or sweep (`starling_bans_active`).
    pub fn bans_active(&self) -> i64 {
        self.active.load(Ordering::Relaxed)
    }

    /// Counts a connection refused for `reason`.
    pub fn refused(&self, reason: Refusal) {
        if let Some(c) = self.refused.get(reason as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Connections refused so far for `reason`.
    pub fn refused_total(&self, reason: Refusal) -> u64 {
        self.refused
            .get(reason as usize)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }
}

/// Why a connection was refused at accept; the `reason` label of
/// `starling_connections_refused_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// The address is banned (fail2ban).
    Banned = 0,
    /// The listener's `max_connections` is reached.
    MaxConnections = 1,
    /// The address's concurrent-connection limit is reached.
    PerIp = 2,
    /// The address opens connections too fast.
    Rate = 3,
}

impl Refusal {
    /// Every reason, in label order.
    pub const ALL: [Self; 4] = [Self::Banned, Self::MaxConnections, Self::PerIp, Self::Rate];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Self::Banned => "banned",
            Self::MaxConnections => "max_connections",
            Self::PerIp => "per_ip",
            Self::Rate => "rate",
        }
    }
}

/// The node's ban table, shared by every listener.
#[derive(Debug)]
pub struct Bans {
    table: Mutex<BanTable>,
}

impl Default for Bans {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY)
    }
}

impl Bans {
    /// An empty table of at most `capacity` addresses.
    pub fn new(capacity: usize) -> Self {
        Self {
            table: Mutex::new(BanTable::new(capacity)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BanTable> {
        // A panic while holding the lock leaves at worst a stale count: keep serving.
        self.table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn update_gauge(table: &BanTable, max_failures: u32, now: Instant, counters: &AbuseCounters) {
        let active = table.bans(max_failures, now).len();
        counters
            .active
            .store(i64::try_from(active).unwrap_or(i64::MAX), Ordering::Relaxed);
    }
}

impl Server {
    /// Counts a failed authentication from `ip` (an abort is not a failure). Returns true if
    /// the address is banned now, so the caller can close the stream at once.
    pub fn auth_failed(&self, ip: IpAddr) -> bool {
        let config = self.config();
        let Some(policy) = BanPolicy::from_config(&config) else {
            return false;
        };
        if let Some(rule) = &policy.exempt {
            let req = AccessRequest {
                ip: Some(ip),
                ..AccessRequest::default()
            };
            if config.access(rule, &req) == AccessDecision::Allow {
                return false;
            }
        }
        let now = Instant::now();
        let abuse = self.counters().abuse();
        let mut table = self.bans().lock();
        let counted = table.record_failure(ip, &policy, now);
        match counted {
            Counted::Banned => {
                abuse.bans.fetch_add(1, Ordering::Relaxed);
                Bans::update_gauge(&table, policy.max_failures, now, abuse);
                tracing::warn!(
                    address = %key_label(address_key(ip)),
                    failures = policy.max_failures,
                    lifetime_s = policy.lifetime.as_secs(),
                    "address banned after repeated authentication failures"
                );
                true
            }
            Counted::AlreadyBanned => true,
            Counted::Full => {
                tracing::warn!(address = %ip, "ban table full of bans; failure not counted");
                false
            }
            Counted::Failures(_) => false,
        }
    }

    /// The ban on `ip`, if banning is configured and the address is banned now.
    pub fn banned(&self, ip: IpAddr) -> Option<Ban> {
        let policy = BanPolicy::from_config(&self.config())?;
        let now = Instant::now();
        let mut table = self.bans().lock();
        let before = table.len();
        table.maybe_sweep(now);
        if table.len() != before {
            Bans::update_gauge(&table, policy.max_failures, now, self.counters().abuse());
        }
        table.banned(ip, policy.max_failures, now)
    }

    /// Every ban in force (`list_bans`).
    pub fn list_bans(&self) -> Vec<Ban> {
        let Some(policy) = BanPolicy::from_config(&self.config()) else {
            return Vec::new();
        };
        let now = Instant::now();
        let mut table = self.bans().lock();
        table.sweep(now);
        Bans::update_gauge(&table, policy.max_failures, now, self.counters().abuse());
        table.bans(policy.max_failures, now)
    }

    /// Lifts bans and forgets failures in `network` (`unban_ip`); returns the records removed.
    pub fn unban(&self, network: &Network) -> usize {
        let now = Instant::now();
        let mut table = self.bans().lock();
        let removed = table.unban(network);
        let max = BanPolicy::from_config(&self.config()).map_or(u32::MAX, |p| p.max_failures);
        Bans::update_gauge(&table, max, now, self.counters().abuse());
        if removed > 0 {
            tracing::info!(network = ?network, removed, "addresses unbanned by an administrator");
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max: u32, secs: u64) -> BanPolicy {
        BanPolicy {
            max_failures: max,
            lifetime: Duration::from_secs(secs),
            exempt: None,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn bans_after_max_failures_and_lifts_after_lifetime() {
        let p = policy(3, 60);
        let mut t = BanTable::new(10);
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        assert_eq!(t.record_failure(a, &p, t0), Counted::Failures(1));
        assert_eq!(t.record_failure(a, &p, t0), Counted::Failures(2));
        assert!(t.banned(a, 3, t0).is_none());
        assert_eq!(t.record_failure(a, &p, t0), Counted::Banned);
        let ban = t.banned(a, 3, t0 + Duration::from_secs(10)).unwrap();
        assert_eq!(ban.failures, 3);
        assert_eq!(ban.remaining, Duration::from_secs(50));
        assert!(ban.refusal_text().contains("192.0.2.1"));
        assert!(t.banned(ip("192.0.2.2"), 3, t0).is_none());
        assert_eq!(t.bans(3, t0).len(), 1);
        // Expired: not banned, and swept.
        let later = t0 + Duration::from_secs(61);
        assert!(t.banned(a, 3, later).is_none());
        assert_eq!(t.sweep(later), 1);
        assert!(t.is_empty());
    }

    #[test]
    fn failures_expire_when_not_repeated() {
        let p = policy(2, 60);
        let mut t = BanTable::new(10);
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        assert_eq!(t.record_failure(a, &p, t0), Counted::Failures(1));
        // After the lifetime the count starts over.
        let later = t0 + Duration::from_secs(120);
        assert_eq!(t.record_failure(a, &p, later), Counted::Failures(1));
        assert_eq!(t.record_failure(a, &p, later), Counted::Banned);
        assert_eq!(t.record_failure(a, &p, later), Counted::AlreadyBanned);
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_v4_as_v4() {
        let p = policy(2, 60);
        let mut t = BanTable::new(10);
        let t0 = Instant::now();
        t.record_failure(ip("2001:db8:1:2::1"), &p, t0);
        assert_eq!(
            t.record_failure(ip("2001:db8:1:2:ffff::9"), &p, t0),
            Counted::Banned
        );
        assert!(t.banned(ip("2001:db8:1:2::77"), 2, t0).is_some());
        assert!(t.banned(ip("2001:db8:1:3::1"), 2, t0).is_none());
        let ban = &t.bans(2, t0)[0];
        assert_eq!(key_label(ban.key), "2001:db8:1:2::/64");

        t.record_failure(ip("::ffff:192.0.2.9"), &p, t0);
        t.record_failure(ip("192.0.2.9"), &p, t0);
        assert!(t.banned(ip("192.0.2.9"), 2, t0).is_some());
    }

    #[test]
    fn bounded_and_never_evicts_bans() {
        let p = policy(2, 60);
        let mut t = BanTable::new(2);
        let t0 = Instant::now();
        let banned = ip("192.0.2.1");
        t.record_failure(banned, &p, t0);
        t.record_failure(banned, &p, t0);
        t.record_failure(ip("192.0.2.2"), &p, t0);
        // Full: the unbanned record makes room, the ban stays.
        assert_eq!(
            t.record_failure(ip("192.0.2.3"), &p, t0 + Duration::from_secs(1)),
            Counted::Failures(1)
        );
        assert_eq!(t.len(), 2);
        assert!(t.banned(banned, 2, t0).is_some());
        // Full of bans: new failures are not recorded.
        t.record_failure(ip("192.0.2.3"), &p, t0 + Duration::from_secs(1));
        assert_eq!(
            t.record_failure(ip("192.0.2.4"), &p, t0 + Duration::from_secs(1)),
            Counted::Full
        );
        // Expired records are swept to make room.
        assert_eq!(
            t.record_failure(ip("192.0.2.4"), &p, t0 + Duration::from_secs(100)),
            Counted::Failures(1)
        );
    }

    #[test]
    fn unban_by_address_and_network() {
        let p = policy(1, 60);
        let mut t = BanTable::new(10);
        let t0 = Instant::now();
        for a in ["192.0.2.1", "192.0.2.200", "198.51.100.1", "2001:db8::1"] {
            assert_eq!(t.record_failure(ip(a), &p, t0), Counted::Banned);
        }
        assert_eq!(t.unban(&Network::parse("198.51.100.1").unwrap()), 1);
        assert_eq!(t.unban(&Network::parse("192.0.2.0/24").unwrap()), 2);
        // An address inside the banned /64 lifts the /64.
        assert_eq!(t.unban(&Network::parse("2001:db8::abcd").unwrap()), 1);
        assert!(t.is_empty());
        assert!(Network::parse("192.0.2.1/33").is_none());
        assert!(Network::parse("nonsense").is_none());
        assert!(
            Network::parse("0.0.0.0/0")
                .unwrap()
                .contains_key(ip("10.1.2.3"))
        );
        assert!(!Network::parse("::/0").unwrap().contains_key(ip("10.1.2.3")));
    }

    #[test]
    fn policy_defaults_follow_ejabberd() {
        let p = BanPolicy {
            max_failures: DEFAULT_MAX_FAILURES,
            lifetime: DEFAULT_LIFETIME,
            exempt: None,
        };
        assert_eq!(p.max_failures, 20);
        assert_eq!(p.lifetime, Duration::from_secs(3600));
        let counters = AbuseCounters::default();
        counters.refused(Refusal::Rate);
        assert_eq!(counters.refused_total(Refusal::Rate), 1);
        assert_eq!(counters.refused_total(Refusal::Banned), 0);
        assert_eq!(Refusal::PerIp.label(), "per_ip");
    }
}
