//! The PROXY protocol against a real HAProxy (Debian's `haproxy` package; `scripts/test.sh`
//! installs it): `docs/haproxy.cfg` itself, with its addresses, ports and certificate path
//! replaced by this test's, runs in front of a node whose listeners have
//! `use_proxy_protocol: true`. Clients connect to HAProxy from their own loopback address
//! (127.0.0.7x) and the node must see that address, not HAProxy's; the HTTP backend's
//! `/health` check (itself sent with a PROXY header) must mark the node up.
//!
//! Each HAProxy runs in the foreground (`-db`) as a child of the test, on free ports, and is
//! killed by its own pid when the test ends. The config's node2 and node3 point at closed
//! ports, so they must be seen down.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use starling_testkit::Client;
use starling_xmpp::scram::Credentials;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The configuration under test, shipped to operators as is.
const HAPROXY_CFG: &str = include_str!("../../../docs/haproxy.cfg");

/// The balancer's address in `docs/haproxy.cfg`.
const BALANCER: &str = "192.0.2.10";

/// The nodes' addresses in `docs/haproxy.cfg`.
const NODES: [&str; 3] = ["192.0.2.11", "192.0.2.12", "192.0.2.13"];

/// How long HAProxy may take to see the node up (checks run every 2 s).
const CHECK_DEADLINE: Duration = Duration::from_secs(20);

/// Everything the node logs, for the assertions on the addresses it saw.
fn logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = buf.clone();
        let _ = tracing_subscriber::fmt()
            .with_env_filter("info")
            .with_ansi(false)
            .with_writer(move || LogWriter(sink.clone()))
            .try_init();
        buf
    })
    .clone()
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut b) = self.0.lock() {
            b.extend_from_slice(data);
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The log line recording `user`'s login, if any.
fn login_line(user: &str) -> Option<String> {
    let logs = logs();
    let text = String::from_utf8_lossy(&logs.lock().ok()?).into_owned();
    text.lines()
        .find(|l| l.contains(" authenticated ") && l.contains(&format!("user={user}@")))
        .map(str::to_owned)
}

/// A free TCP port on 127.0.0.1 (bound, then released for HAProxy or to stay closed).
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A Starling node whose c2s and HTTP listeners expect the PROXY protocol.
struct ProxiedNode {
    node: starling_server::Node,
    starttls: SocketAddr,
    direct_tls: SocketAddr,
    http: SocketAddr,
    _dir: tempfile::TempDir,
}

impl ProxiedNode {
    async fn start() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let yaml = format!(
            "hosts: [localhost]\n\
             data_dir: {data}\n\
             listen:\n  \
               - {{port: 0, ip: 127.0.0.1, module: ejabberd_c2s, starttls_required: true, use_proxy_protocol: true}}\n  \
               - {{port: 0, ip: 127.0.0.1, module: ejabberd_c2s, tls: true, use_proxy_protocol: true}}\n  \
               - {{port: 0, ip: 127.0.0.1, module: ejabberd_http, use_proxy_protocol: true, request_handlers: {{/health: health}}}}\n\
             modules:\n  mod_disco: {{}}\n  mod_roster: {{}}\n",
            data = dir.path().join("data").display(),
        );
        let specs = starling_modules::specs();
        let config = starling_config::load_str(&yaml, "haproxy-test.yml", &specs)
            .map_err(|d| anyhow!("test config rejected:\n{d}"))?;
        let node = starling_server::start(config, &starling_modules::catalogue()).await?;
        let find = |tls: bool| {
            node.c2s
                .iter()
                .find(|(_, t)| *t == tls)
                .map(|(a, _)| *a)
                .context("c2s listener missing")
        };
        let (starttls, direct_tls) = (find(false)?, find(true)?);
        let http = node.http.first().map(|(a, _)| *a).context("no HTTP")?;
        Ok(Self {
            node,
            starttls,
            direct_tls,
            http,
            _dir: dir,
        })
    }

    async fn register(&self, user: &str, password: &str) -> anyhow::Result<()> {
        let jid = starling_xmpp::jid::BareJid::new(Some(user), "localhost")?;
        let password = password.to_owned();
        let creds = tokio::task::spawn_blocking(move || Credentials::new(&password, 4096))
            .await?
            .map_err(|e| anyhow!("{e}"))?;
        self.node
            .server
            .stores()
            .create(&jid, &creds)
            .await
            .map_err(|e| anyhow!("{e}"))
    }
}

/// A private HAProxy, killed (by its own pid) on drop.
struct HaProxy {
    child: Child,
    log: PathBuf,
    /// The balancer's frontends, by their port in `docs/haproxy.cfg`.
    front: HashMap<u16, SocketAddr>,
    /// The certificate HTTPS clients must trust.
    cert: rustls_pki_types::CertificateDer<'static>,
    _dir: tempfile::TempDir,
}

impl HaProxy {
    /// Runs `docs/haproxy.cfg` with node1 replaced by `node`, node2 and node3 by closed
    /// ports, and `send-proxy-v2` replaced by `send_proxy`.
    fn start(node: &ProxiedNode, send_proxy: &str) -> anyhow::Result<Self> {
        let bin = starling_testkit::haproxy::bin().context(
            "haproxy not found: install Debian's haproxy package (scripts/test.sh does)",
        )?;
        let dir = tempfile::tempdir()?;
        let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])?;
        let pem = dir.path().join("xmpp.pem");
        std::fs::write(
            &pem,
            format!(
                "{}{}",
                generated.cert.pem(),
                generated.signing_key.serialize_pem()
            ),
        )?;

        let mut replace: Vec<(String, String)> = Vec::new();
        let mut front = HashMap::new();
        for port in [5222, 5223, 443, 8404] {
            let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
            front.insert(port, addr);
            replace.push((format!("{BALANCER}:{port}"), addr.to_string()));
        }
        let [node1, others @ ..] = NODES;
        for (port, addr) in [
            (5222, node.starttls),
            (5223, node.direct_tls),
            (5280, node.http),
        ] {
            replace.push((format!("{node1}:{port}"), addr.to_string()));
        }
        for other in others {
            for port in [5222, 5223, 5280] {
                replace.push((
                    format!("{other}:{port}"),
                    format!("127.0.0.1:{}", free_port()?),
                ));
            }
        }
        replace.push((
            "/etc/haproxy/xmpp.pem".to_owned(),
            pem.display().to_string(),
        ));
        replace.push(("send-proxy-v2".to_owned(), send_proxy.to_owned()));

        let mut cfg = HAPROXY_CFG.to_owned();
        for (from, to) in &replace {
            // The doc and this test must not drift apart: every address the test knows is in
            // the file.
            if !cfg.contains(from.as_str()) {
                bail!("docs/haproxy.cfg no longer contains {from}");
            }
            cfg = cfg.replace(from.as_str(), to);
        }
        if let Some(line) = cfg
            .lines()
            .find(|l| !l.trim_start().starts_with('#') && l.contains("192.0.2."))
        {
            bail!("docs/haproxy.cfg has an address the test does not replace: {line}");
        }
        let cfg_path = dir.path().join("haproxy.cfg");
        std::fs::write(&cfg_path, cfg)?;
        let log = dir.path().join("haproxy.log");
        let out = std::fs::File::create(&log)?;
        let child = Command::new(bin)
            .arg("-db")
            .arg("-f")
            .arg(&cfg_path)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("cannot start haproxy")?;
        Ok(Self {
            child,
            log,
            front,
            cert: generated.cert.der().clone(),
            _dir: dir,
        })
    }

    fn front(&self, port: u16) -> anyhow::Result<SocketAddr> {
        self.front.get(&port).copied().context("no such frontend")
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `check` holds for the statistics (`/stats;csv`, as rows by proxy and server
    /// name), failing with the last statistics and HAProxy's output after the deadline.
    async fn wait_for_stats(
        &mut self,
        what: &str,
        check: impl Fn(&Stats) -> bool,
    ) -> anyhow::Result<Stats> {
        let started = Instant::now();
        let mut last;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("haproxy exited ({status}):\n{}", self.log_text());
            }
            match http_get(self.front(8404)?, "/stats;csv").await {
                Ok(text) => {
                    let stats = Stats::parse(&text);
                    if check(&stats) {
                        return Ok(stats);
                    }
                    last = text;
                }
                Err(e) => last = e.to_string(),
            }
            if started.elapsed() > CHECK_DEADLINE {
                bail!(
                    "haproxy never saw {what}; last stats:\n{last}\nhaproxy output:\n{}",
                    self.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// HAProxy's CSV statistics: (proxy, server) → column → value.
struct Stats(HashMap<(String, String), HashMap<String, String>>);

impl Stats {
    fn parse(csv: &str) -> Self {
        // The body may come chunked: skip to the header row.
        let mut lines = csv.lines().skip_while(|l| !l.starts_with("# pxname"));
        let header: Vec<String> = lines
            .next()
            .unwrap_or_default()
            .trim_start_matches("# ")
            .split(',')
            .map(str::to_owned)
            .collect();
        let mut rows = HashMap::new();
        for line in lines {
            let row: HashMap<String, String> = header
                .iter()
                .cloned()
                .zip(line.split(',').map(str::to_owned))
                .collect();
            if let (Some(px), Some(sv)) = (row.get("pxname"), row.get("svname")) {
                rows.insert((px.clone(), sv.clone()), row);
            }
        }
        Self(rows)
    }

    fn get(&self, proxy: &str, server: &str, column: &str) -> &str {
        self.0
            .get(&(proxy.to_owned(), server.to_owned()))
            .and_then(|r| r.get(column))
            .map_or("", String::as_str)
    }

    /// The server is up and its last check passed with `check_status` (`L4OK`, `L7OK`).
    fn up(&self, proxy: &str, server: &str, check_status: &str) -> bool {
        self.get(proxy, server, "status") == "UP"
            && self.get(proxy, server, "check_status") == check_status
    }
}

/// A plain HTTP/1.0 GET; the whole response.
async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .await?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut out)).await??;
    let text = String::from_utf8_lossy(&out);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    if !text.starts_with("HTTP/1.0 200") && !text.starts_with("HTTP/1.1 200") {
        bail!("GET {path}: {text}");
    }
    Ok(body.to_owned())
}

/// `GET /health` over HTTPS through the balancer; the whole response.
async fn https_health(
    addr: SocketAddr,
    cert: &rustls_pki_types::CertificateDer<'static>,
) -> anyhow::Result<String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await?;
    let name = rustls_pki_types::ServerName::try_from("localhost")?;
    let mut tls = connector.connect(name, tcp).await?;
    tls.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut out)).await??;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Logs `user` in through the balancer from `from`, STARTTLS or direct TLS.
async fn login_from(
    from: IpAddr,
    front: SocketAddr,
    direct_tls: bool,
    user: &str,
) -> anyhow::Result<Client> {
    let mut c = if direct_tls {
        Client::connect_tls_from(from, front).await?
    } else {
        let mut c = Client::connect_from(from, front).await?;
        c.open().await?;
        c.starttls().await?;
        c
    };
    if direct_tls {
        c.open().await?;
    }
    c.auth_plain(user, "secret").await?;
    c.bind("proxied").await?;
    Ok(c)
}

/// The whole scenario for one PROXY protocol version (`send-proxy-v2` or `send-proxy`), with
/// client addresses `ips` (one per c2s frontend, distinct per test: the logs are shared).
async fn scenario(send_proxy: &str, ips: [&str; 2], users: [&str; 2]) -> anyhow::Result<()> {
    logs();
    let node = ProxiedNode::start().await?;
    for user in users {
        node.register(user, "secret").await?;
    }
    let mut haproxy = HaProxy::start(&node, send_proxy)?;

    // The checks themselves go through the PROXY protocol: TCP checks on c2s, GET /health on
    // HTTP. node2 and node3 have nothing listening.
    haproxy
        .wait_for_stats("node1 up and node2 down", |s| {
            s.up("c2s_starttls", "node1", "L4OK")
                && s.up("c2s_direct_tls", "node1", "L4OK")
                && s.up("starling_http", "node1", "L7OK")
                && s.get("starling_http", "node1", "check_code") == "200"
                && s.get("starling_http", "node2", "status") == "DOWN"
                && s.get("c2s_starttls", "node3", "status") == "DOWN"
        })
        .await?;

    // Clients log in through the balancer; the node records their own address.
    for ((ip, user), (front, direct_tls)) in
        ips.iter().zip(users).zip([(5222, false), (5223, true)])
    {
        let from: IpAddr = ip.parse()?;
        let c = login_from(from, haproxy.front(front)?, direct_tls, user)
            .await
            .with_context(|| {
                format!(
                    "login through port {front}; haproxy:\n{}",
                    haproxy.log_text()
                )
            })?;
        assert_eq!(
            c.jid.as_deref(),
            Some(format!("{user}@localhost/proxied").as_str())
        );
        let line = login_line(user).context("no login line logged")?;
        assert!(
            line.contains(&format!("peer={ip}:")),
            "node did not see the client's address {ip}: {line}"
        );
    }

    // HTTP through the balancer: HTTPS ends at HAProxy, which pins the client to node1.
    let response = https_health(haproxy.front(443)?, &haproxy.cert).await?;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("ready"), "{response}");
    assert!(
        response
            .to_ascii_lowercase()
            .contains("set-cookie: starling=node1"),
        "{response}"
    );

    // A connection straight to the node, without a PROXY header, is closed unanswered.
    let mut direct = Client::connect(node.starttls).await?;
    assert!(
        direct.open().await.is_err(),
        "a header-less connection got an answer"
    );

    drop(haproxy);
    node.node.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_v2_through_haproxy() -> anyhow::Result<()> {
    scenario(
        "send-proxy-v2",
        ["127.0.0.71", "127.0.0.72"],
        ["v2starttls", "v2directtls"],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_v1_through_haproxy() -> anyhow::Result<()> {
    scenario(
        "send-proxy",
        ["127.0.0.73", "127.0.0.74"],
        ["v1starttls", "v1directtls"],
    )
    .await
}
