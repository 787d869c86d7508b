//! A rolling restart of a three-node cluster behind a real HAProxy while two clients chat
//! (issue 4): no message the cluster accepted is lost.
//!
//! Three `starling` processes on 127.0.0.1/.2/.3 share one PostgreSQL database; HAProxy (TCP
//! mode, round robin, health checks) is the clients' only address. Alice sends numbered chat
//! messages to Bob's bare JID without pause, both with stream management (XEP-0198) and
//! resumption enabled. Each node in turn is stopped with `starlingctl stop` and started again,
//! and re-attaches to the cluster by itself. A client whose connection drops reconnects
//! through HAProxy and resumes; if its session is gone with its node, it binds a new one:
//! Alice resends what the server had not acknowledged, Bob gets from offline storage what his
//! old session had not acknowledged.
//!
//! Asserted: every message the server acknowledged to Alice reaches Bob. Duplicates are
//! counted and allowed only where XEP-0198 cannot avoid them (a message resent after a failed
//! resumption, or delivered again because its acknowledgement and the node's stop crossed).
//!
//! Without PostgreSQL, HAProxy or a built `starlingctl` the test prints a loud note and
//! passes, unless `CI` is set.

mod cluster_support;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use cluster_support::{Db, NodeSpec, PASSWORD, ProcNode, all_up, eventually, have_ctl};
use minidom::Element;
use starling_testkit::Client;
use starling_testkit::haproxy::HaProxy;
use starling_testkit::postgres::start_or_skip;
use tokio::sync::watch;

const SM: &str = "urn:xmpp:sm:3";
const TEST: &str = "rolling_restart_behind_haproxy_loses_no_acknowledged_message";
/// Time between two of Alice's messages.
const PACE: Duration = Duration::from_millis(40);
/// How long anything may take to settle at the end.
const SETTLE: Duration = Duration::from_secs(30);

/// How a (re)connection went.
enum Session {
    /// The old session came back; the server had handled `h` of our stanzas.
    Resumed { h: u32 },
    /// A new session (stream management enabled, initial presence sent).
    Fresh { previd: String },
}

/// Connects through the balancer, authenticates, and resumes `previd` if given, else binds.
async fn connect(
    lb: SocketAddr,
    user: &str,
    previd: Option<&str>,
    h_in: u32,
) -> anyhow::Result<(Client, Session)> {
    let mut c = Client::connect(lb).await?;
    c.open().await?;
    c.starttls().await?;
    c.auth_plain(user, PASSWORD).await?;
    if let Some(previd) = previd {
        c.send(&format!(
            "<resume xmlns='{SM}' previd='{previd}' h='{h_in}'/>"
        ))
        .await?;
        let answer = c.element().await?;
        if answer.is("resumed", SM) {
            let h = answer
                .attr("h")
                .and_then(|h| h.parse().ok())
                .context("resumed without h")?;
            return Ok((c, Session::Resumed { h }));
        }
        if !answer.is("failed", SM) {
            bail!("unexpected answer to resume: {answer:?}");
        }
    }
    c.bind("r").await?;
    c.send(&format!("<enable xmlns='{SM}' resume='true'/>"))
        .await?;
    let enabled = c.element().await?;
    if !enabled.is("enabled", SM) {
        bail!("stream management not enabled: {enabled:?}");
    }
    let previd = enabled.attr("id").context("no resumption id")?.to_owned();
    c.send("<presence/>").await?;
    Ok((c, Session::Fresh { previd }))
}

/// Connects, retrying while the balancer has no healthy node to offer.
async fn reconnect(
    lb: SocketAddr,
    user: &str,
    previd: Option<&str>,
    h_in: u32,
) -> (Client, Session) {
    let deadline = tokio::time::Instant::now() + SETTLE;
    loop {
        match connect(lb, user, previd, h_in).await {
            Ok(done) => return done,
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{user} cannot reconnect through HAProxy: {e:#}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

fn is_stanza(el: &Element) -> bool {
    matches!(el.name(), "message" | "presence" | "iq")
}

/// What the sender and the receiver report.
#[derive(Default)]
struct Log {
    /// Sequence numbers the server acknowledged to Alice.
    acked: BTreeSet<u32>,
    /// Sequence numbers Alice sent again after a failed resumption.
    resent: BTreeSet<u32>,
    /// Alice's messages not acknowledged yet.
    pending: usize,
    /// Sequence numbers Bob received, in order, with repeats.
    received: Vec<u32>,
    /// Reconnections: (user, resumed).
    reconnections: Vec<(&'static str, bool)>,
}

/// Alice: sends message after message until told to stop, then until all are acknowledged.
async fn alice(lb: SocketAddr, log: Arc<Mutex<Log>>, mut stop: watch::Receiver<bool>) {
    let (mut c, first) = reconnect(lb, "alice", None, 0).await;
    let Session::Fresh { previd } = first else {
        panic!("a first connection cannot resume");
    };
    let mut previd = previd;
    // Stanzas sent in this session (the initial presence is the first), and the unacked
    // messages with their stanza number.
    let mut out: u32 = 1;
    let mut h_in: u32 = 0;
    let mut unacked: VecDeque<(u32, u32)> = VecDeque::new();
    let mut next: u32 = 0;
    let mut tick = tokio::time::interval(PACE);
    let send = |seq: u32| {
        format!("<message to='bob@localhost' type='chat' id='m{seq}'><body>{seq}</body></message>")
    };
    loop {
        let stopping = *stop.borrow();
        if stopping && unacked.is_empty() {
            break;
        }
        let event = tokio::select! {
            el = c.element() => Some(el),
            _ = tick.tick() => None,
            _ = stop.changed(), if !stopping => continue,
        };
        let failed = match event {
            None if !stopping => {
                out += 1;
                unacked.push_back((out, next));
                let sent = c.send(&send(next)).await;
                next += 1;
                match sent {
                    Ok(()) if next.is_multiple_of(4) => {
                        c.send(&format!("<r xmlns='{SM}'/>")).await.is_err()
                    }
                    Ok(()) => false,
                    Err(_) => true,
                }
            }
            None => c.send(&format!("<r xmlns='{SM}'/>")).await.is_err(),
            Some(Ok(el)) if el.is("a", SM) => {
                let h: u32 = el.attr("h").and_then(|h| h.parse().ok()).unwrap_or(0);
                let mut log = log.lock().unwrap();
                while unacked.front().is_some_and(|(n, _)| *n <= h) {
                    if let Some((_, seq)) = unacked.pop_front() {
                        log.acked.insert(seq);
                    }
                }
                log.pending = unacked.len();
                false
            }
            Some(Ok(el)) if el.is("r", SM) => c
                .send(&format!("<a xmlns='{SM}' h='{h_in}'/>"))
                .await
                .is_err(),
            Some(Ok(el)) => {
                if is_stanza(&el) {
                    h_in += 1;
                }
                false
            }
            Some(Err(_)) => true,
        };
        if !failed {
            continue;
        }
        let (again, session) = reconnect(lb, "alice", Some(&previd), h_in).await;
        c = again;
        let resend: Vec<u32>;
        match session {
            Session::Resumed { h } => {
                let mut log = log.lock().unwrap();
                while unacked.front().is_some_and(|(n, _)| *n <= h) {
                    if let Some((_, seq)) = unacked.pop_front() {
                        log.acked.insert(seq);
                    }
                }
                log.reconnections.push(("alice", true));
                out = h;
                resend = unacked.drain(..).map(|(_, seq)| seq).collect();
            }
            Session::Fresh { previd: id } => {
                previd = id;
                out = 1;
                h_in = 0;
                resend = unacked.drain(..).map(|(_, seq)| seq).collect();
                let mut log = log.lock().unwrap();
                log.reconnections.push(("alice", false));
                log.resent.extend(resend.iter().copied());
            }
        }
        for seq in resend {
            out += 1;
            unacked.push_back((out, seq));
            // A failure here is seen on the next read, which reconnects again.
            let _ = c.send(&send(seq)).await;
        }
        let _ = c.send(&format!("<r xmlns='{SM}'/>")).await;
    }
}

/// Bob: acknowledges every stanza at once and records Alice's messages until told to stop.
async fn bob(lb: SocketAddr, log: Arc<Mutex<Log>>, mut stop: watch::Receiver<bool>) {
    let (mut c, first) = reconnect(lb, "bob", None, 0).await;
    let Session::Fresh { previd } = first else {
        panic!("a first connection cannot resume");
    };
    let mut previd = previd;
    let mut h_in: u32 = 0;
    loop {
        let event = tokio::select! {
            el = c.element() => el,
            _ = stop.changed() => break,
        };
        let failed = match event {
            Ok(el) if el.is("r", SM) => c
                .send(&format!("<a xmlns='{SM}' h='{h_in}'/>"))
                .await
                .is_err(),
            Ok(el) if is_stanza(&el) => {
                h_in += 1;
                if el.name() == "message"
                    && el.attr("from").is_some_and(|f| f.starts_with("alice@"))
                    && el.attr("type") != Some("error")
                    && let Some(seq) = el
                        .children()
                        .find(|b| b.name() == "body")
                        .and_then(|b| b.text().parse().ok())
                {
                    log.lock().unwrap().received.push(seq);
                }
                c.send(&format!("<a xmlns='{SM}' h='{h_in}'/>"))
                    .await
                    .is_err()
            }
            Ok(_) => false,
            Err(_) => true,
        };
        if !failed {
            continue;
        }
        let (again, session) = reconnect(lb, "bob", Some(&previd), h_in).await;
        c = again;
        let resumed = match session {
            Session::Resumed { .. } => true,
            Session::Fresh { previd: id } => {
                previd = id;
                h_in = 0;
                false
            }
        };
        log.lock().unwrap().reconnections.push(("bob", resumed));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_behind_haproxy_loses_no_acknowledged_message() {
    if !have_ctl(TEST) || !starling_testkit::haproxy::available(TEST) {
        return;
    }
    let Some(pg) = start_or_skip(TEST).await.expect("start PostgreSQL") else {
        return;
    };
    let db = pg.database().await.expect("database");
    let base = tempfile::tempdir().expect("tempdir");
    let cookie = starling_cluster::cookie::Cookie::generate().to_hex();
    let spec = |name, ip| NodeSpec {
        name,
        ip,
        cookie: &cookie,
        hosts: "[localhost]",
        db: Db::Postgres(&db),
        http: false,
    };
    let mut nodes = [
        ProcNode::new(base.path(), &spec("n1", "127.0.0.1")),
        ProcNode::new(base.path(), &spec("n2", "127.0.0.2")),
        ProcNode::new(base.path(), &spec("n3", "127.0.0.3")),
    ];
    for n in &mut nodes {
        n.start();
    }
    for i in 1..3 {
        let (code, out, err) = nodes[i].ctl(&["join_cluster", &nodes[0].cluster_address()]);
        assert_eq!(code, 0, "join_cluster: {out}{err}");
    }
    eventually(Duration::from_secs(10), "all three linked", || {
        all_up(&[&nodes[0], &nodes[1], &nodes[2]])
    })
    .await;
    for user in ["alice", "bob"] {
        let (code, out, err) = nodes[0].ctl(&["register", user, "localhost", PASSWORD]);
        assert_eq!(code, 0, "register: {out}{err}");
    }

    let front = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let servers: String = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| format!("  server n{i} {}:{} check\n", n.ip, n.c2s))
        .collect();
    let haproxy = HaProxy::start(&format!(
        "defaults\n  mode tcp\n  timeout connect 1s\n  timeout client 60s\n  timeout server 60s\n  \
         retries 3\n  option redispatch\n\
         frontend xmpp\n  bind {front}\n  default_backend starling\n\
         backend starling\n  balance roundrobin\n  default-server inter 200ms fall 1 rise 2\n\
         {servers}"
    ))
    .expect("HAProxy starts");

    let log = Arc::new(Mutex::new(Log::default()));
    let (stop_alice, alice_stop) = watch::channel(false);
    let (stop_bob, bob_stop) = watch::channel(false);
    let bob_task = tokio::spawn(bob(front, log.clone(), bob_stop));
    // Bob is online before Alice starts, so the first messages are not all offline ones.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let alice_task = tokio::spawn(alice(front, log.clone(), alice_stop));

    for i in 0..nodes.len() {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let before = log.lock().unwrap().acked.len();
        nodes[i].stop();
        tokio::time::sleep(Duration::from_millis(300)).await;
        nodes[i].start();
        eventually(SETTLE, "the restarted node re-attached", || {
            all_up(&[&nodes[0], &nodes[1], &nodes[2]])
        })
        .await;
        let after = log.lock().unwrap().acked.len();
        eprintln!(
            "restarted {}: {before} -> {after} acknowledged",
            nodes[i].node_name
        );
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop_alice.send_replace(true);
    tokio::time::timeout(SETTLE, alice_task)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "Alice's messages not all acknowledged ({} pending)",
                log.lock().unwrap().pending
            )
        })
        .expect("alice");
    let acked = log.lock().unwrap().acked.clone();
    let deadline = tokio::time::Instant::now() + SETTLE;
    loop {
        let missing: Vec<u32> = {
            let log = log.lock().unwrap();
            let got: BTreeSet<u32> = log.received.iter().copied().collect();
            acked.difference(&got).copied().collect()
        };
        if missing.is_empty() {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            let logs: String = nodes.iter().map(|n| n.log()).collect();
            panic!(
                "{} acknowledged messages never reached Bob: {missing:?}\nHAProxy:\n{}\nnodes:\n{logs}",
                missing.len(),
                haproxy.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop_bob.send_replace(true);
    let _ = tokio::time::timeout(SETTLE, bob_task).await;

    let log = log.lock().unwrap();
    let mut counts: BTreeMap<u32, usize> = BTreeMap::new();
    for seq in &log.received {
        *counts.entry(*seq).or_default() += 1;
    }
    let duplicates: Vec<u32> = counts
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(seq, _)| *seq)
        .collect();
    eprintln!(
        "{} messages acknowledged, {} received, duplicates {duplicates:?}, resent {:?}, \
         reconnections {:?}",
        acked.len(),
        log.received.len(),
        log.resent,
        log.reconnections
    );
    assert!(acked.len() > 50, "too little traffic to mean anything");
    assert!(
        log.reconnections.iter().any(|(who, _)| *who == "alice")
            && log.reconnections.iter().any(|(who, _)| *who == "bob"),
        "every node restarted, so both clients must have reconnected: {:?}",
        log.reconnections
    );
    // At-least-once is all XEP-0198 promises across a lost session; beyond resent messages,
    // only the few in flight when a node stopped may come twice.
    let unexplained: Vec<&u32> = duplicates
        .iter()
        .filter(|seq| !log.resent.contains(seq))
        .collect();
    assert!(
        unexplained.len() <= 3 * nodes.len(),
        "too many duplicates: {unexplained:?}"
    );
}
