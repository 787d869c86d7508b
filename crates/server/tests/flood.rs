//! A flood from one machine: thousands of connection attempts plus clients that connect and
//! never negotiate, while two logged-in users keep chatting. Every message must arrive, the
//! half-open connections must be closed by the negotiation timeout, and memory must stay
//! bounded. Bounds are counts and generous deadlines, never timings.

use std::time::Duration;

use starling_testkit::TestNode;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Connections opened and dropped at once.
const CHURN: usize = 3000;
/// Connections that stay open without sending a byte.
const SILENT: usize = 300;
/// Messages exchanged during the flood.
const MESSAGES: usize = 60;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flooding_does_not_stop_service_and_memory_stays_bounded() {
    let node = TestNode::start_with("negotiation_timeout: 2\n")
        .await
        .unwrap();
    node.register("alice", "pw").await.unwrap();
    node.register("bob", "pw").await.unwrap();
    let mut alice = node.login("alice", "pw", "a").await.unwrap();
    let mut bob = node.login("bob", "pw", "b").await.unwrap();
    let addr = node.starttls;
    let before = rss_kib();

    // Clients that connect and then say nothing.
    let mut silent = Vec::with_capacity(SILENT);
    for _ in 0..SILENT {
        if let Ok(s) = TcpStream::connect(addr).await {
            silent.push(s);
        }
    }
    // Churn: connect and drop as fast as possible, from another task.
    let churn = tokio::spawn(async move {
        let mut opened = 0usize;
        for _ in 0..CHURN {
            if TcpStream::connect(addr).await.is_ok() {
                opened += 1;
            }
        }
        opened
    });

    // Meanwhile the two users chat.
    for i in 0..MESSAGES {
        alice
            .send(&format!(
                "<message to='bob@localhost/b' type='chat' id='m{i}'><body>flood {i}</body></message>"
            ))
            .await
            .unwrap();
    }
    for i in 0..MESSAGES {
        let want = format!("flood {i}");
        let got = bob
            .wait_for(|e| {
                e.name() == "message"
                    && e.get_child("body", "jabber:client")
                        .is_some_and(|b| b.text() == want)
            })
            .await;
        assert!(got.is_ok(), "message {i} lost during the flood");
    }
    let opened = churn.await.unwrap();
    assert!(
        opened > CHURN / 2,
        "the listener kept accepting ({opened} of {CHURN})"
    );

    // The silent connections are closed by the negotiation timeout (2 s; deadline 20 s).
    let mut closed = 0;
    for mut s in silent {
        let mut buf = [0u8; 4096];
        let outcome = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return true,
                    Ok(_) => {}
                }
            }
        })
        .await;
        if outcome == Ok(true) {
            closed += 1;
        }
    }
    assert_eq!(closed, SILENT, "every half-open connection was closed");

    // Still serving afterwards.
    bob.send("<message to='alice@localhost/a' type='chat'><body>still here</body></message>")
        .await
        .unwrap();
    alice
        .wait_for(|e| {
            e.name() == "message"
                && e.get_child("body", "jabber:client")
                    .is_some_and(|b| b.text() == "still here")
        })
        .await
        .unwrap();
    // Generous: the point is "bounded", not a figure (the benchmarks measure memory).
    let grown_mib = rss_kib().saturating_sub(before) / 1024;
    assert!(
        grown_mib < 256,
        "memory grew by {grown_mib} MiB during the flood"
    );
}
