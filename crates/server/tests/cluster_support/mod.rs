//! Shared by the `cluster_*` tests: Starling nodes as separate processes (the `starling`
//! binary), each with its own config, data directory and log file, driven with the real
//! `starlingctl`, and clients from the testkit.
//!
//! Every wait has a deadline; every process a test starts is killed (by its own pid) when its
//! handle drops, so a failing assertion leaves nothing running.

#![allow(dead_code, unreachable_pub)]

pub mod in_process;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use starling_config::SqlConfig;
use starling_testkit::Client;

/// How long a node may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The password of every test account.
pub const PASSWORD: &str = "secret";

/// A free TCP port on `ip` (bound, then released for the node to take).
pub fn free_port(ip: IpAddr) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The database a node uses.
pub enum Db<'a> {
    /// The shared PostgreSQL database.
    Postgres(&'a SqlConfig),
    /// The embedded SQLite file in the data directory.
    Sqlite,
}

/// What differs between nodes.
pub struct NodeSpec<'a> {
    /// Node name suffix: `starling@<name>`; also the directory name.
    pub name: &'a str,
    /// The loopback address the node's listeners bind.
    pub ip: &'a str,
    /// The cluster cookie written to `data_dir/cookie`.
    pub cookie: &'a str,
    /// The `hosts` list, YAML flow style.
    pub hosts: &'a str,
    /// The database.
    pub db: Db<'a>,
    /// Also serve `/metrics` over plain HTTP.
    pub http: bool,
}

/// One `starling` process and its files.
pub struct ProcNode {
    /// `starling@<name>`.
    pub node_name: String,
    /// The listeners' address.
    pub ip: IpAddr,
    /// The client port (STARTTLS).
    pub c2s: u16,
    /// The cluster listener's port.
    pub cluster: u16,
    /// The `/metrics` port, if any.
    pub http: Option<u16>,
    /// The data directory.
    pub data_dir: PathBuf,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl ProcNode {
    /// Writes the config, data directory and cookie under `base/<name>`; does not start.
    pub fn new(base: &Path, spec: &NodeSpec<'_>) -> Self {
        let ip: IpAddr = spec.ip.parse().expect("ip");
        let dir = base.join(spec.name);
        let data_dir = dir.join("data");
        std::fs::create_dir_all(&data_dir).expect("data dir");
        std::fs::write(data_dir.join("cookie"), spec.cookie).expect("cookie");
        let c2s = free_port(ip);
        let cluster = free_port(ip);
        let http = spec.http.then(|| free_port(ip));
        let node_name = format!("starling@{}", spec.name);
        let sql = match &spec.db {
            Db::Postgres(db) => format!(
                "sql_type: pgsql\nsql_server: {server}\nsql_port: {port}\nsql_database: {database}\n\
                 sql_username: {user}\nsql_pool_size: 3\n",
                server = db.server,
                port = db.port.unwrap_or(5432),
                database = db.database.as_deref().unwrap_or("ejabberd"),
                user = db.username,
            ),
            Db::Sqlite => String::new(),
        };
        let http_listener = http.map_or_else(String::new, |port| {
            format!(
                "  - {{port: {port}, ip: {ip}, module: ejabberd_http, \
                 request_handlers: {{/metrics: mod_prometheus, /health: health}}}}\n"
            )
        });
        let yaml = format!(
            "hosts: {hosts}\n\
             data_dir: {data}\n\
             loglevel: info\n\
             listen:\n  \
               - {{port: {c2s}, ip: {ip}, module: ejabberd_c2s, starttls_required: true}}\n\
             {http_listener}\
             modules:\n  \
               mod_disco: {{}}\n  mod_roster: {{versioning: true}}\n  mod_offline: {{}}\n  \
               mod_stream_mgmt: {{}}\n\
             {sql}\
             cluster: {{node_name: \"{node_name}\", listen: \"{ip}:{cluster}\"}}\n",
            hosts = spec.hosts,
            data = data_dir.display(),
        );
        let config = dir.join("starling.yml");
        std::fs::write(&config, yaml).expect("config");
        Self {
            node_name,
            ip,
            c2s,
            cluster,
            http,
            data_dir,
            config,
            log: dir.join("starling.log"),
            child: None,
        }
    }

    /// `ip:port` of the cluster listener (what `join_cluster` takes).
    pub fn cluster_address(&self) -> String {
        format!("{}:{}", self.ip, self.cluster)
    }

    /// Starts the process (appending to its log) and waits until its client port answers.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} already running", self.node_name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let err = log.try_clone().expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_starling"))
            .arg("-c")
            .arg(&self.config)
            .env_remove("STARLING_CONFIG")
            .env_remove("STARLING_DATA_DIR")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .expect("spawn starling");
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        let addr = SocketAddr::new(self.ip, self.c2s);
        loop {
            if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            if let Some(status) = self.exited() {
                panic!(
                    "{} exited during startup ({status}):\n{}",
                    self.node_name,
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} not listening within {START_TIMEOUT:?}:\n{}",
                self.node_name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `kill -9`: no goodbye, no unbinds, sockets closed by the kernel.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `starlingctl stop` (a graceful stop, as an operator does it) and waits for the exit.
    pub fn stop(&mut self) {
        let (code, out, err) = self.ctl(&["stop"]);
        assert_eq!(code, 0, "{} stop: {out}{err}", self.node_name);
        assert!(
            self.wait_exit(Duration::from_secs(20)).is_some(),
            "{} did not stop:\n{}",
            self.node_name,
            self.log()
        );
    }

    /// The exit status if the process has ended (and forgets it).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        Some(status)
    }

    /// Waits up to `limit` for the process to exit by itself.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            if self.child.is_none() || Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// True while the process runs.
    pub fn running(&mut self) -> bool {
        self.child.is_some() && self.exited().is_none()
    }

    /// Everything the node logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs `starlingctl --data-dir DATA ARGS...`: (exit code, stdout, stderr).
    pub fn ctl(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(ctl_path())
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(args)
            .env_remove("STARLING_DATA_DIR")
            .output()
            .expect("run starlingctl");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `cluster_status` as (name, up, sessions) rows; empty if the command fails.
    pub fn status(&self) -> Vec<(String, bool, usize)> {
        let (code, out, _) = self.ctl(&["cluster_status"]);
        if code != 0 {
            return Vec::new();
        }
        out.lines()
            .filter_map(|l| {
                let mut f = l.split('\t');
                let name = f.next()?.to_owned();
                let _address = f.next()?;
                let up = f.next()? == "up";
                let sessions = f.next()?.parse().ok()?;
                Some((name, up, sessions))
            })
            .collect()
    }

    /// Logs in `user` with `resource` over STARTTLS + PLAIN.
    pub async fn login(&self, user: &str, resource: &str) -> Client {
        let addr = SocketAddr::new(self.ip, self.c2s);
        let mut c = Client::connect(addr).await.expect("connect");
        c.open().await.expect("open");
        c.starttls().await.expect("starttls");
        c.auth_plain(user, PASSWORD).await.expect("auth");
        c.bind(resource).await.expect("bind");
        c
    }

    /// Fetches `/metrics`.
    pub async fn metrics(&self) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let port = self.http.expect("node has an HTTP listener");
        let mut s = tokio::net::TcpStream::connect((self.ip, port))
            .await
            .expect("connect /metrics");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .expect("request");
        let mut body = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut body))
            .await
            .expect("metrics in time")
            .expect("read");
        String::from_utf8_lossy(&body).into_owned()
    }
}

impl Drop for ProcNode {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// `starlingctl`, next to the `starling` binary (built with the workspace).
pub fn ctl_path() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_starling")).with_file_name("starlingctl")
}

/// True if `starlingctl` is built; otherwise prints why the test is skipped (and fails in CI,
/// where the workspace build always has it).
pub fn have_ctl(test: &str) -> bool {
    if ctl_path().is_file() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: {} is not built",
        ctl_path().display()
    );
    eprintln!(
        "\n*** SKIPPED {test}: {} is not built; run `cargo build -p starling-ctl` first ***\n",
        ctl_path().display()
    );
    false
}

/// Polls `check` every 100 ms until it holds; panics with `what` after `limit`.
pub async fn eventually(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every node's `cluster_status` shows every member up.
pub fn all_up(nodes: &[&ProcNode]) -> bool {
    nodes.iter().all(|n| {
        let rows = n.status();
        rows.len() == nodes.len() && rows.iter().all(|r| r.1)
    })
}

/// The session count `viewer` reports for `of`.
pub fn sessions_seen(viewer: &ProcNode, of: &str) -> Option<usize> {
    viewer.status().into_iter().find(|r| r.0 == of).map(|r| r.2)
}

/// A roster round trip: everything sent before it has been processed by the server.
pub async fn sync(c: &mut Client, id: &str) {
    let r = c
        .iq(
            &format!("<iq type='get' id='{id}'><query xmlns='jabber:iq:roster'/></iq>"),
            id,
        )
        .await
        .expect("roster");
    assert_eq!(r.attr("type"), Some("result"));
}

/// Mutual presence subscription between two logged-in, available users.
pub async fn befriend(a: &mut Client, a_jid: &str, b: &mut Client, b_jid: &str) {
    subscribe(a, a_jid, b, b_jid).await;
    subscribe(b, b_jid, a, a_jid).await;
}

/// `x` subscribes to `y`'s presence and `y` approves; `x` then sees `y` available.
async fn subscribe(x: &mut Client, x_jid: &str, y: &mut Client, y_jid: &str) {
    x.send(&format!("<presence to='{y_jid}' type='subscribe'/>"))
        .await
        .expect("subscribe");
    y.wait_for(|e| e.name() == "presence" && e.attr("type") == Some("subscribe"))
        .await
        .expect("subscription request arrives");
    y.send(&format!("<presence to='{x_jid}' type='subscribed'/>"))
        .await
        .expect("subscribed");
    let prefix = format!("{y_jid}/");
    x.wait_for(|e| {
        e.name() == "presence"
            && e.attr("type").is_none()
            && e.attr("from").is_some_and(|f| f.starts_with(&prefix))
    })
    .await
    .expect("contact's presence arrives after approval");
}

/// Waits for presence from `from` (a full JID) with type `kind` (`None`: available).
pub async fn presence_from(c: &mut Client, from: &str, kind: Option<&str>) {
    c.wait_for(|e| {
        e.name() == "presence" && e.attr("from") == Some(from) && e.attr("type") == kind
    })
    .await
    .unwrap_or_else(|e| panic!("presence {kind:?} from {from}: {e}"));
}

/// Sends a chat message and waits for the recipient to get it.
pub async fn chat(from: &mut Client, to: &mut Client, to_jid: &str, id: &str) {
    from.send(&format!(
        "<message to='{to_jid}' type='chat' id='{id}'><body>{id}</body></message>"
    ))
    .await
    .expect("send");
    to.wait_for(|e| e.name() == "message" && e.attr("id") == Some(id))
        .await
        .unwrap_or_else(|e| panic!("message {id} to {to_jid}: {e}"));
}
