//! `starling-bench`: the load benchmark for Starling and ejabberd (see `docs/PERFORMANCE.md`).
//!
//! One run has three phases against one c2s listener on loopback:
//! 1. **Connect**: N clients log in (STARTTLS or direct TLS, SASL PLAIN, bind, initial presence),
//!    ramped at a fixed rate with a bounded number of logins in flight.
//! 2. **Idle**: the clients stay connected; the server's RSS before and after gives KiB per idle
//!    connection.
//! 3. **Messages**: K pairs exchange chat messages at a total target rate; each body carries a
//!    run id, a sequence number and the send time, so the receiving client measures delivery
//!    latency. The server's CPU time over the phase gives CPU µs per delivered message.
//!
//! `--register` instead creates the accounts with XEP-0077 in-band registration.
//!
//! The tool keeps its own footprint small (one runtime, one task per connection, 4 KiB read
//! buffers) and refuses non-loopback targets: it is a benchmark, not a load generator for
//! other people's servers.

mod client;
mod proc_stats;
mod report;
mod scan;

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, anyhow, bail};
use clap::Parser;
use tokio::{
    sync::{Semaphore, mpsc, oneshot},
    time::{MissedTickBehavior, interval, sleep, sleep_until, timeout, timeout_at},
};

use crate::{
    client::{Registered, Session, Target, TlsMode},
    proc_stats::Pid,
    report::{Latency, Summary},
    scan::{Frame, attr, child_text, element_name},
};

/// Commands queued per connection; a sender this far behind is counted as "not sent".
const CMD_QUEUE: usize = 256;
/// Resource bound by every benchmark client.
const RESOURCE: &str = "bench";
/// First word of every benchmark message body.
const BODY_TAG: &str = "sb";

/// Load benchmark for XMPP servers: idle-connection memory, message latency and CPU cost.
#[derive(Debug, Parser)]
#[command(name = "starling-bench", version)]
struct Args {
    /// Server address; must resolve to loopback only.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// c2s port.
    #[arg(long, default_value_t = 5222)]
    port: u16,
    /// XMPP domain the users live on.
    #[arg(long)]
    domain: String,
    /// Number of client connections (users PREFIX0..PREFIX{N-1}).
    #[arg(long, default_value_t = 1000)]
    users: u32,
    /// Pairs of users exchanging messages.
    #[arg(long, default_value_t = 100)]
    pairs: u32,
    /// Total target message rate, messages per second.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Length of the message phase in seconds.
    #[arg(long, default_value_t = 30.0)]
    duration: f64,
    /// Connection attempts started per second.
    #[arg(long, default_value_t = 500.0)]
    ramp: f64,
    /// Logins (or registrations) in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Localpart prefix; user i is PREFIXi.
    #[arg(long, default_value = "bench")]
    user_prefix: String,
    /// Password of every user (with --password-per-user, user i has PASSWORD_PREFIXi).
    #[arg(long, default_value = "pass")]
    password_prefix: String,
    /// Append the user index to the password.
    #[arg(long)]
    password_per_user: bool,
    /// PID of the server process, for RSS and CPU sampling.
    #[arg(long)]
    server_pid: Option<u32>,
    /// c2s port of a second cluster node on the same host: odd-numbered users log in there,
    /// so every pair has one user on each node (cross-node messages).
    #[arg(long)]
    port_b: Option<u16>,
    /// PID of the second node: RSS and CPU are summed over both processes.
    #[arg(long)]
    server_pid_b: Option<u32>,
    /// How TLS is established.
    #[arg(long, value_enum, default_value_t = TlsMode::Starttls)]
    tls: TlsMode,
    /// Seconds to hold the connections idle before sampling RSS.
    #[arg(long, default_value_t = 10.0)]
    idle: f64,
    /// Seconds to wait for in-flight messages after the message phase.
    #[arg(long, default_value_t = 5.0)]
    grace: f64,
    /// Seconds one login may take.
    #[arg(long, default_value_t = 30.0)]
    login_timeout: f64,
    /// Seconds the whole connect phase may take (default: users/ramp + 60).
    #[arg(long)]
    connect_deadline: Option<f64>,
    /// Register the users with XEP-0077 in-band registration, then exit.
    #[arg(long)]
    register: bool,
    /// Name of the server in the report.
    #[arg(long, default_value = "server")]
    label: String,
    /// Tokio worker threads; 1 (the default) leaves the other cores to the server.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

/// Counters shared by all connection tasks.
#[derive(Debug)]
struct Shared {
    run_id: u64,
    origin: Instant,
    sent: AtomicU64,
    received: AtomicU64,
    errors: AtomicU64,
    disconnects: AtomicU64,
    latencies_us: Mutex<Vec<u32>>,
}

impl Shared {
    fn now_us(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// Records a benchmark message if `body` belongs to this run.
    fn record(&self, body: &str) {
        let Some(sent_us) = parse_body(body, self.run_id) else {
            return;
        };
        let latency = self.now_us().saturating_sub(sent_us);
        self.received.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut samples) = self.latencies_us.lock() {
            samples.push(u32::try_from(latency).unwrap_or(u32::MAX));
        }
    }
}

/// What the scheduler asks a connection to do.
#[derive(Debug)]
enum Command {
    /// Send one benchmark message to `to` (a bare JID).
    Send { to: Arc<str>, seq: u64 },
}

/// A logged-in client as the main task sees it.
#[derive(Debug)]
struct Connection {
    index: u32,
    commands: mpsc::Sender<Command>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    validate(&args)?;
    let runtime = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()?
    };
    runtime.block_on(run(args))
}

fn validate(args: &Args) -> Result<()> {
    let simple = |s: &str, extra: &[char]| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || extra.contains(&c))
    };
    if !simple(&args.domain, &['.', '-']) {
        bail!("--domain must be a plain ASCII domain name");
    }
    if !simple(&args.user_prefix, &['-', '_', '.']) {
        bail!("--user-prefix must be ASCII letters, digits, '-', '_' or '.'");
    }
    if args.password_prefix.is_empty()
        || args
            .password_prefix
            .chars()
            .any(|c| matches!(c, '<' | '>' | '&' | '\'' | '"') || c.is_control())
    {
        bail!("--password-prefix must be non-empty and free of XML special characters");
    }
    if args.users == 0 || args.users > 100_000 {
        bail!("--users must be between 1 and 100000");
    }
    let positive = |v: f64| v.is_finite() && v > 0.0;
    if !positive(args.ramp) || !positive(args.rate) || args.rate > 1_000_000.0 {
        bail!("--ramp and --rate must be positive (rate at most 1e6/s)");
    }
    if !(args.duration.is_finite() && (0.0..=3600.0).contains(&args.duration)) {
        bail!("--duration must be between 0 and 3600 seconds");
    }
    for (name, v) in [
        ("--idle", args.idle),
        ("--grace", args.grace),
        ("--login-timeout", args.login_timeout),
    ] {
        if !(v.is_finite() && (0.0..=3600.0).contains(&v)) {
            bail!("{name} must be between 0 and 3600 seconds");
        }
    }
    if args.concurrency == 0 || args.threads == 0 {
        bail!("--concurrency and --threads must be at least 1");
    }
    Ok(())
}

/// Resolves `host` and insists that every address is loopback.
async fn loopback_addr(host: &str, port: u16) -> Result<SocketAddr> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .with_context(|| format!("resolving {host}"))?
        .collect();
    check_loopback(host, &addrs)
}

fn check_loopback(host: &str, addrs: &[SocketAddr]) -> Result<SocketAddr> {
    let first = addrs
        .first()
        .copied()
        .ok_or_else(|| anyhow!("{host} has no address"))?;
    if addrs.iter().any(|a| !a.ip().is_loopback()) {
        bail!("refusing to load {host}: only loopback targets are allowed");
    }
    Ok(first)
}

async fn run(args: Args) -> Result<()> {
    let addr = loopback_addr(&args.host, args.port).await?;
    let target = Arc::new(Target {
        addr,
        domain: args.domain.clone(),
        tls: args.tls,
        connector: client::tls_connector()?,
    });
    if args.register {
        return register_all(&args, &target).await;
    }
    let target_b = match args.port_b {
        Some(port) => Some(Arc::new(Target {
            addr: loopback_addr(&args.host, port).await?,
            domain: args.domain.clone(),
            tls: args.tls,
            connector: client::tls_connector()?,
        })),
        None => None,
    };
    let ticks = proc_stats::clock_ticks_per_sec();
    let mut servers = Vec::new();
    for pid in args.server_pid.iter().chain(args.server_pid_b.iter()) {
        proc_stats::check_alive(*pid)?;
        servers.push(Pid::Other(*pid));
    }
    // Summed over the node processes (one, or both nodes of a cross-node run).
    let rss = || -> Result<Option<u64>> {
        if servers.is_empty() {
            return Ok(None);
        }
        servers
            .iter()
            .map(|p| proc_stats::rss_kib(*p))
            .sum::<Result<u64>>()
            .map(Some)
    };
    let cpu = || -> Result<Option<u64>> {
        if servers.is_empty() {
            return Ok(None);
        }
        servers
            .iter()
            .map(|p| proc_stats::cpu_us(*p, ticks))
            .sum::<Result<u64>>()
            .map(Some)
    };
    let shared = Arc::new(Shared {
        run_id: run_id(),
        origin: Instant::now(),
        sent: AtomicU64::new(0),
        received: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        disconnects: AtomicU64::new(0),
        latencies_us: Mutex::new(Vec::new()),
    });
    let mut summary = Summary {
        label: args.label.clone(),
        users: u64::from(args.users),
        target_rate: args.rate,
        duration_secs: args.duration,
        ..Summary::default()
    };

    // Phase 1: connect.
    summary.rss_before_kib = rss()?;
    eprintln!(
        "connecting {} users to {addr} ({:?}, ramp {}/s)...",
        args.users, args.tls, args.ramp
    );
    let (connections, login_secs) = connect_all(&args, &target, target_b.as_ref(), &shared).await;
    summary.connected = connections.len() as u64;
    summary.login_failures = summary.users - summary.connected;
    summary.login_secs = login_secs;
    summary.logins_per_sec = per_sec(summary.connected, login_secs);
    eprintln!(
        "{} connected, {} failed, in {login_secs:.1} s",
        summary.connected, summary.login_failures
    );

    // Phase 2: idle. The server's CPU use while idle is reported too: it is the baseline the
    // per-message figure sits on (timers, keepalives, a busy accept loop would show here).
    let idle_cpu_before = cpu()?;
    let idle_start = Instant::now();
    sleep(Duration::from_secs_f64(args.idle)).await;
    let idle_cpu_after = cpu()?;
    let idle_us = u64::try_from(idle_start.elapsed().as_micros()).unwrap_or(u64::MAX);
    summary.idle_cpu_pct = idle_cpu_before
        .zip(idle_cpu_after)
        .map(|(b, a)| 100.0 * ratio(a.saturating_sub(b), idle_us));
    summary.rss_after_kib = rss()?;
    summary.idle_disconnects = shared.disconnects.load(Ordering::Relaxed);
    if let (Some(before), Some(after)) = (summary.rss_before_kib, summary.rss_after_kib)
        && summary.connected > 0
    {
        // Signed: a garbage-collected runtime may shrink while connections are added.
        #[allow(clippy::cast_precision_loss)]
        let grown = after as f64 - before as f64;
        summary.kib_per_conn = Some(grown / ratio(summary.connected, 1));
    }
    summary.bench_rss_kib = proc_stats::rss_kib(Pid::Current).unwrap_or(0);

    // Phase 3: messages.
    let pairs = args
        .pairs
        .min(u32::try_from(connections.len() / 2).unwrap_or(u32::MAX));
    summary.pairs = u64::from(pairs);
    if pairs > 0 && args.duration > 0.0 {
        eprintln!(
            "message phase: {pairs} pairs, {}/s for {} s...",
            args.rate, args.duration
        );
        let cpu_before = cpu()?;
        let phase = message_phase(&args, &shared, &connections, pairs).await;
        let cpu_after = cpu()?;
        summary.not_sent = phase.not_sent;
        summary.sent = shared.sent.load(Ordering::Relaxed);
        summary.received = shared.received.load(Ordering::Relaxed);
        summary.lost = summary.sent.saturating_sub(summary.received);
        summary.achieved_rate = per_sec(summary.received, phase.send_secs);
        summary.server_cpu_us = cpu_before.zip(cpu_after).map(|(b, a)| a.saturating_sub(b));
        if summary.received > 0 {
            summary.cpu_us_per_msg = summary.server_cpu_us.map(|c| ratio(c, summary.received));
        }
        let mut samples = shared
            .latencies_us
            .lock()
            .map(|mut s| std::mem::take(&mut *s))
            .unwrap_or_default();
        summary.latency = Latency::from_samples(&mut samples);
        let errors = shared.errors.load(Ordering::Relaxed);
        if errors > 0 {
            eprintln!("{errors} message errors received");
        }
    }
    summary.load_avg = std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    summary.bench_cpu_us = proc_stats::cpu_us(Pid::Current, ticks).unwrap_or(0);

    // Close every stream politely, with a bound on how long that may take.
    drop(connections);
    sleep(Duration::from_millis(500)).await;

    println!("{}", summary.to_json());
    print!("{}", summary.to_table());
    Ok(())
}

/// Starts the logins at the ramp rate with at most `--concurrency` in flight and waits for
/// them; returns the connected clients and the connect phase's length in seconds.
async fn connect_all(
    args: &Args,
    target: &Arc<Target>,
    target_b: Option<&Arc<Target>>,
    shared: &Arc<Shared>,
) -> (Vec<Connection>, f64) {
    let start = Instant::now();
    let deadline_secs = args
        .connect_deadline
        .unwrap_or(f64::from(args.users) / args.ramp + 60.0);
    let deadline = tokio::time::Instant::from_std(start + Duration::from_secs_f64(deadline_secs));
    let in_flight = Arc::new(Semaphore::new(args.concurrency));
    let login_timeout = Duration::from_secs_f64(args.login_timeout);
    let mut pending = Vec::with_capacity(args.users as usize);
    for index in 0..args.users {
        let due = start + Duration::from_secs_f64(f64::from(index) / args.ramp);
        sleep_until(tokio::time::Instant::from_std(due)).await;
        let Ok(Ok(permit)) = timeout_at(deadline, in_flight.clone().acquire_owned()).await else {
            eprintln!("connect deadline reached after starting {index} logins");
            break;
        };
        let (ready_tx, ready_rx) = oneshot::channel();
        let (commands, command_rx) = mpsc::channel(CMD_QUEUE);
        // Pairs are (2p, 2p+1): with a second node, each pair spans both.
        let target = match target_b {
            Some(b) if index % 2 == 1 => b.clone(),
            _ => target.clone(),
        };
        let shared = shared.clone();
        let user = format!("{}{index}", args.user_prefix);
        let password = password(args, index);
        tokio::spawn(async move {
            let login = timeout(
                login_timeout,
                client::login(&target, &user, &password, RESOURCE),
            )
            .await;
            drop(permit);
            let session = match login {
                Ok(Ok(session)) => session,
                Ok(Err(e)) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
                Err(_) => {
                    let _ = ready_tx.send(Err(anyhow!("login of {user} timed out")));
                    return;
                }
            };
            if ready_tx.send(Ok(())).is_ok() {
                serve(session, &shared, command_rx).await;
            }
        });
        pending.push((index, ready_rx, commands));
    }
    let mut connections = Vec::with_capacity(pending.len());
    let mut reported = 0;
    for (index, ready, commands) in pending {
        match timeout_at(deadline, ready).await {
            Ok(Ok(Ok(()))) => connections.push(Connection { index, commands }),
            Ok(Ok(Err(e))) if reported < 5 => {
                reported += 1;
                eprintln!("login failed: {e:#}");
            }
            Err(_) if reported < 5 => {
                reported += 1;
                eprintln!("connect deadline reached waiting for user {index}");
            }
            _ => {}
        }
    }
    (connections, start.elapsed().as_secs_f64())
}

/// A connected client's task: reads and times incoming messages, writes what it is told.
async fn serve(mut session: Session, shared: &Shared, mut commands: mpsc::Receiver<Command>) {
    loop {
        tokio::select! {
            frame = session.next_frame() => match frame {
                Ok(Frame::Element(e)) => on_element(&e, shared),
                Ok(Frame::StreamOpen(_)) => {}
                Ok(Frame::StreamClose) | Err(_) => {
                    shared.disconnects.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            },
            command = commands.recv() => match command {
                Some(Command::Send { to, seq }) => {
                    let body = format!("{BODY_TAG} {} {seq} {}", shared.run_id, shared.now_us());
                    if session.send(&client::chat_message(&to, &body)).await.is_err() {
                        shared.disconnects.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    shared.sent.fetch_add(1, Ordering::Relaxed);
                }
                None => {
                    let _ = timeout(Duration::from_secs(1), session.send("</stream:stream>")).await;
                    return;
                }
            },
        }
    }
}

fn on_element(element: &str, shared: &Shared) {
    if element_name(element) != "message" {
        return;
    }
    if attr(element, "type") == Some("error") {
        shared.errors.fetch_add(1, Ordering::Relaxed);
        return;
    }
    if let Some(body) = child_text(element, "body") {
        shared.record(body);
    }
}

/// Results of the message phase the summary needs besides the shared counters.
#[derive(Debug)]
struct Phase {
    not_sent: u64,
    send_secs: f64,
}

/// Issues `rate × duration` messages round-robin over the pairs, alternating direction, then
/// waits up to `--grace` for the last ones to arrive.
async fn message_phase(
    args: &Args,
    shared: &Shared,
    connections: &[Connection],
    pairs: u32,
) -> Phase {
    let jids: Vec<Arc<str>> = connections
        .iter()
        .map(|c| Arc::from(format!("{}{}@{}", args.user_prefix, c.index, args.domain)))
        .collect();
    let total = (args.rate * args.duration).round() as u64;
    let mut issued = 0u64;
    let mut not_sent = 0u64;
    let start = Instant::now();
    // Ticks of 1 ms with catch-up: the timer cannot fire every 1/rate seconds at high rates.
    let mut tick = interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    while issued < total {
        tick.tick().await;
        let due = ((start.elapsed().as_secs_f64() * args.rate) as u64).min(total);
        while issued < due {
            let (from, to) = pair_for(issued, pairs);
            let sender = connections.get(from);
            let recipient = jids.get(to);
            let queued = match (sender, recipient) {
                (Some(sender), Some(to)) => sender
                    .commands
                    .try_send(Command::Send {
                        to: to.clone(),
                        seq: issued,
                    })
                    .is_ok(),
                _ => false,
            };
            if !queued {
                not_sent += 1;
            }
            issued += 1;
        }
    }
    let send_secs = start.elapsed().as_secs_f64();
    let expected = issued - not_sent;
    let grace_end = Instant::now() + Duration::from_secs_f64(args.grace);
    while Instant::now() < grace_end {
        let sent = shared.sent.load(Ordering::Relaxed);
        if sent >= expected && shared.received.load(Ordering::Relaxed) >= sent {
            break;
        }
        sleep(Duration::from_millis(5)).await;
    }
    Phase {
        not_sent,
        send_secs,
    }
}

/// Connection indices (sender, recipient) of message `seq`: pair `seq mod pairs`, direction
/// flipping on every pass over the pairs so both sides of each pair send.
fn pair_for(seq: u64, pairs: u32) -> (usize, usize) {
    let pairs = u64::from(pairs.max(1));
    let pair = seq % pairs;
    let flip = (seq / pairs) % 2;
    let a = usize::try_from(2 * pair + flip).unwrap_or(usize::MAX);
    let b = usize::try_from(2 * pair + 1 - flip).unwrap_or(usize::MAX);
    (a, b)
}

/// Registers every user with XEP-0077, bounded like the logins.
async fn register_all(args: &Args, target: &Arc<Target>) -> Result<()> {
    let start = Instant::now();
    let in_flight = Arc::new(Semaphore::new(args.concurrency));
    let login_timeout = Duration::from_secs_f64(args.login_timeout);
    let mut tasks = Vec::with_capacity(args.users as usize);
    for index in 0..args.users {
        let due = start + Duration::from_secs_f64(f64::from(index) / args.ramp);
        sleep_until(tokio::time::Instant::from_std(due)).await;
        let permit = in_flight.clone().acquire_owned().await?;
        let target = target.clone();
        let user = format!("{}{index}", args.user_prefix);
        let password = password(args, index);
        tasks.push(tokio::spawn(async move {
            let outcome = timeout(login_timeout, client::register(&target, &user, &password))
                .await
                .map_err(|_| anyhow!("registration of {user} timed out"))
                .and_then(|r| r);
            drop(permit);
            outcome
        }));
    }
    let (mut created, mut existed, mut failed) = (0u64, 0u64, 0u64);
    for task in tasks {
        match task.await {
            Ok(Ok(Registered::Created)) => created += 1,
            Ok(Ok(Registered::Existed)) => existed += 1,
            Ok(Err(e)) => {
                if failed < 5 {
                    eprintln!("{e:#}");
                }
                failed += 1;
            }
            Err(e) => {
                eprintln!("registration task failed: {e}");
                failed += 1;
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{{\"registered\":{created},\"existed\":{existed},\"failed\":{failed},\"secs\":{secs:.1}}}"
    );
    if failed > 0 {
        bail!("{failed} registrations failed");
    }
    Ok(())
}

fn password(args: &Args, index: u32) -> String {
    if args.password_per_user {
        format!("{}{index}", args.password_prefix)
    } else {
        args.password_prefix.clone()
    }
}

/// Parses `sb RUN SEQ SENT_US`, returning the send time if RUN is this run.
fn parse_body(body: &str, run_id: u64) -> Option<u64> {
    let mut words = body.split(' ');
    if words.next()? != BODY_TAG || words.next()?.parse::<u64>().ok()? != run_id {
        return None;
    }
    let _seq: u64 = words.next()?.parse().ok()?;
    words.next()?.parse().ok()
}

/// A run id that differs between runs, so late messages of an earlier run are not counted.
fn run_id() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() ^ u64::from(d.subsec_nanos()) << 20 ^ u64::from(std::process::id()))
        .unwrap_or(u64::from(std::process::id()))
}

#[allow(clippy::cast_precision_loss)] // figures for humans; far below 2^52
fn ratio(numerator: u64, denominator: u64) -> f64 {
    numerator as f64 / denominator.max(1) as f64
}

#[allow(clippy::cast_precision_loss)]
fn per_sec(count: u64, secs: f64) -> f64 {
    if secs > 0.0 { count as f64 / secs } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared() -> Shared {
        Shared {
            run_id: 42,
            origin: Instant::now(),
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            disconnects: AtomicU64::new(0),
            latencies_us: Mutex::new(Vec::new()),
        }
    }

    #[test]
    fn bodies_round_trip_and_foreign_runs_are_ignored() {
        assert_eq!(parse_body("sb 42 7 1234", 42), Some(1234));
        assert_eq!(parse_body("sb 41 7 1234", 42), None);
        assert_eq!(parse_body("hello", 42), None);
        assert_eq!(parse_body("sb 42 x 1", 42), None);
        assert_eq!(parse_body("sb 42 1", 42), None);
    }

    #[test]
    fn received_messages_are_timed() {
        let s = shared();
        on_element(
            "<message from='a@b/c' type='chat'><body>sb 42 0 0</body></message>",
            &s,
        );
        on_element("<message type='chat'><body>sb 9 0 0</body></message>", &s);
        on_element("<message type='error'><body>sb 42 1 0</body></message>", &s);
        on_element("<presence/>", &s);
        assert_eq!(s.received.load(Ordering::Relaxed), 1);
        assert_eq!(s.errors.load(Ordering::Relaxed), 1);
        assert_eq!(s.latencies_us.lock().unwrap().len(), 1);
    }

    #[test]
    fn pairs_alternate_direction() {
        assert_eq!(pair_for(0, 3), (0, 1));
        assert_eq!(pair_for(1, 3), (2, 3));
        assert_eq!(pair_for(2, 3), (4, 5));
        assert_eq!(pair_for(3, 3), (1, 0));
        assert_eq!(pair_for(5, 3), (5, 4));
        assert_eq!(pair_for(6, 3), (0, 1));
        assert_eq!(pair_for(9, 0), (1, 0));
    }

    #[test]
    fn only_loopback_is_accepted() {
        let lo: SocketAddr = "127.0.0.1:5222".parse().unwrap();
        let lo6: SocketAddr = "[::1]:5222".parse().unwrap();
        let remote: SocketAddr = "192.0.2.1:5222".parse().unwrap();
        assert_eq!(check_loopback("h", &[lo, lo6]).unwrap(), lo);
        assert!(check_loopback("h", &[lo, remote]).is_err());
        assert!(check_loopback("h", &[]).is_err());
    }

    #[test]
    fn arguments_are_validated() {
        let base = ["starling-bench", "--domain", "bench.test"];
        let parse = |extra: &[&str]| {
            let args = Args::try_parse_from(base.iter().chain(extra)).unwrap();
            validate(&args)
        };
        assert!(parse(&[]).is_ok());
        let bad_domain = Args::try_parse_from(["b", "--domain", "a'b"]).unwrap();
        assert!(validate(&bad_domain).is_err());
        assert!(parse(&["--password-prefix", "p<"]).is_err());
        assert!(parse(&["--rate", "0"]).is_err());
        assert!(parse(&["--users", "0"]).is_err());
        assert!(parse(&["--duration", "NaN"]).is_err());
        assert!(parse(&["--tls", "direct", "--users", "5"]).is_ok());
    }

    #[test]
    fn passwords_and_ratios() {
        let args = Args::try_parse_from(["b", "--domain", "d", "--password-per-user"]).unwrap();
        assert_eq!(password(&args, 3), "pass3");
        assert!((ratio(10, 4) - 2.5).abs() < f64::EPSILON);
        assert!((ratio(1, 0) - 1.0).abs() < f64::EPSILON);
        assert!((per_sec(0, 0.0)).abs() < f64::EPSILON);
    }
}
