//! The HTTP listener end to end: `/health` states, `/metrics` parsed by a strict OpenMetrics
//! text parser, the admin API with and without credentials (bearer token, Basic with an admin
//! account and a non-admin one), unknown commands and bad arguments, and the same over TLS.
//!
//! The HTTP client is written by hand (one request per connection, `Connection: close`) so
//! the test sees exactly what goes over the wire.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, bail};
use base64::Engine;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use starling_server::Node;
use starling_testkit::{Client, TIMEOUT};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

const TOKEN: &str = "test-token-0123456789abcdef";

struct HttpNode {
    node: Option<Node>,
    plain: SocketAddr,
    tls: SocketAddr,
    c2s: SocketAddr,
    dir: tempfile::TempDir,
}

impl HttpNode {
    async fn start() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let yaml = format!(
            "hosts: [localhost]\n\
             data_dir: {data}\n\
             loglevel: warning\n\
             acl:\n  admin:\n    user: [admin@localhost]\n\
             listen:\n  \
               - {{port: 0, ip: 127.0.0.1, module: ejabberd_c2s, starttls_required: true}}\n  \
               - port: 0\n    ip: 127.0.0.1\n    module: ejabberd_http\n    \
                 request_handlers: {{/api: mod_http_api, /metrics: mod_prometheus, /health: health, /ws: ejabberd_http_ws}}\n  \
               - port: 0\n    ip: 127.0.0.1\n    module: ejabberd_http\n    tls: true\n    \
                 request_handlers: {{/api/: mod_http_api, /health: health}}\n\
             modules:\n  mod_roster: {{}}\n  mod_http_api: {{tokens: [{TOKEN}]}}\n",
            data = dir.path().join("data").display(),
        );
        let specs = starling_modules::specs();
        let config = starling_config::load_str(&yaml, "test.yml", &specs)
            .map_err(|d| anyhow::anyhow!("config rejected:\n{d}"))?;
        let node = starling_server::start(config, &starling_modules::catalogue()).await?;
        let plain = node.http.iter().find(|(_, tls)| !tls).context("plain")?.0;
        let tls = node.http.iter().find(|(_, tls)| *tls).context("tls")?.0;
        let c2s = node.c2s.first().context("c2s")?.0;
        Ok(Self {
            node: Some(node),
            plain,
            tls,
            c2s,
            dir,
        })
    }

    fn server(&self) -> &Arc<starling_core::Server> {
        &self.node.as_ref().expect("running").server
    }

    async fn stop(mut self) {
        if let Some(node) = self.node.take() {
            node.stop().await;
        }
    }
}

/// A response: status, lower-cased headers, body.
struct Reply {
    status: u16,
    headers: BTreeMap<String, String>,
    body: String,
}

impl Reply {
    fn json(&self) -> anyhow::Result<Value> {
        serde_json::from_str(&self.body).with_context(|| format!("not JSON: {:?}", self.body))
    }
}

async fn request(
    addr: SocketAddr,
    tls: Option<&std::path::Path>,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: &str,
) -> anyhow::Result<Reply> {
    let tcp = tokio::time::timeout(TIMEOUT, TcpStream::connect(addr)).await??;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        head.push_str("Content-Type: application/json\r\n");
    }
    if let Some(auth) = auth {
        head.push_str(&format!("Authorization: {auth}\r\n"));
    }
    head.push_str("\r\n");
    head.push_str(body);
    match tls {
        None => exchange(tcp, &head).await,
        Some(data_dir) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(data_dir.join("certs/self-signed.pem"))? {
                roots.add(cert?)?;
            }
            let config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
            let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
            let stream = tokio::time::timeout(
                TIMEOUT,
                connector.connect(ServerName::try_from("localhost")?, tcp),
            )
            .await??;
            let alpn = stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
            assert_eq!(alpn, None, "we offered no ALPN");
            exchange(stream, &head).await
        }
    }
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut io: S,
    request: &str,
) -> anyhow::Result<Reply> {
    io.write_all(request.as_bytes()).await?;
    io.flush().await?;
    let mut raw = Vec::new();
    tokio::time::timeout(TIMEOUT, io.read_to_end(&mut raw)).await??;
    let text = String::from_utf8(raw)?;
    let (head, body) = text.split_once("\r\n\r\n").context("no header end")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().context("no status line")?;
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .context("no status")?
        .parse()?;
    let headers: BTreeMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let body = if headers.get("transfer-encoding").map(String::as_str) == Some("chunked") {
        dechunk(body)?
    } else {
        body.to_owned()
    };
    Ok(Reply {
        status,
        headers,
        body,
    })
}

fn dechunk(mut body: &str) -> anyhow::Result<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").context("chunk size")?;
        let size = usize::from_str_radix(size.trim(), 16)?;
        if size == 0 {
            return Ok(out);
        }
        out.push_str(rest.get(..size).context("short chunk")?);
        body = rest.get(size + 2..).context("chunk end")?;
    }
}

fn basic(user: &str, password: &str) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {encoded}")
}

fn bearer() -> String {
    format!("Bearer {TOKEN}")
}

/// One sample of an OpenMetrics exposition: family-qualified name and labels.
type Samples = BTreeMap<(String, Vec<(String, String)>), f64>;

/// A strict parser of the OpenMetrics text format (the subset an exporter produces): every
/// sample must belong to a family declared by `# TYPE` before it, with the suffixes its type
/// allows; label values are quoted with escapes; the exposition ends with `# EOF`.
fn parse_openmetrics(text: &str) -> anyhow::Result<(BTreeMap<String, String>, Samples)> {
    let valid_name = |n: &str| {
        let mut chars = n.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = Samples::new();
    let mut saw_eof = false;
    for line in text.lines() {
        if saw_eof {
            bail!("content after # EOF: {line:?}");
        }
        if line == "# EOF" {
            saw_eof = true;
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kind, name) = (parts.next(), parts.next().context("name")?);
            if !valid_name(name) {
                bail!("bad family name {name:?}");
            }
            match kind {
                Some("TYPE") => {
                    let t = parts.next().context("type")?;
                    if !["counter", "gauge", "histogram", "info", "unknown"].contains(&t) {
                        bail!("bad type {t:?}");
                    }
                    if types.insert(name.to_owned(), t.to_owned()).is_some() {
                        bail!("family {name} declared twice");
                    }
                }
                Some("HELP" | "UNIT") => {}
                _ => bail!("bad comment {line:?}"),
            }
            continue;
        }
        // name{label="value",...} value
        let (name, rest) = match line.find(['{', ' ']) {
            Some(i) => line.split_at(i),
            None => bail!("no value: {line:?}"),
        };
        if !valid_name(name) {
            bail!("bad metric name {name:?}");
        }
        let mut labels = Vec::new();
        let mut rest = rest;
        if let Some(mut inner) = rest.strip_prefix('{') {
            loop {
                if let Some(after) = inner.strip_prefix('}') {
                    rest = after;
                    break;
                }
                let (key, after) = inner.split_once("=\"").context("label =\"")?;
                if !valid_name(key) {
                    bail!("bad label name {key:?}");
                }
                let mut value = String::new();
                let mut chars = after.char_indices();
                let end = loop {
                    match chars.next() {
                        Some((i, '"')) => break i,
                        Some((_, '\\')) => match chars.next() {
                            Some((_, 'n')) => value.push('\n'),
                            Some((_, c @ ('\\' | '"'))) => value.push(c),
                            _ => bail!("bad escape in {line:?}"),
                        },
                        Some((_, c)) => value.push(c),
                        None => bail!("unterminated label value in {line:?}"),
                    }
                };
                labels.push((key.to_owned(), value));
                inner = after.get(end + 1..).context("label end")?;
                inner = inner.strip_prefix(',').unwrap_or(inner);
            }
        }
        let value = rest.strip_prefix(' ').context("space before value")?;
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .with_context(|| format!("bad value in {line:?}"))?,
        };
        let family = types
            .iter()
            .find(|(f, t)| {
                let suffixes: &[&str] = match t.as_str() {
                    "counter" => &["_total", "_created"],
                    "histogram" => &["_bucket", "_sum", "_count", "_created"],
                    "info" => &["_info"],
                    _ => &[""],
                };
                suffixes
                    .iter()
                    .any(|s| name.strip_suffix(s) == Some(f.as_str()))
            })
            .with_context(|| format!("sample {name} has no declared family"))?;
        if family.1 == "histogram"
            && name.ends_with("_bucket")
            && !labels.iter().any(|(k, _)| k == "le")
        {
            bail!("bucket without le: {line:?}");
        }
        if samples.insert((name.to_owned(), labels), value).is_some() {
            bail!("duplicate sample {line:?}");
        }
    }
    if !saw_eof {
        bail!("no # EOF");
    }
    Ok((types, samples))
}

fn sample(samples: &Samples, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let key = (
        name.to_owned(),
        labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    );
    samples.get(&key).copied()
}

#[tokio::test]
async fn health_metrics_and_api() -> anyhow::Result<()> {
    let n = HttpNode::start().await?;
    let plain = n.plain;

    // Health: ready once started.
    let r = request(plain, None, "GET", "/health", None, "").await?;
    assert_eq!((r.status, r.body.as_str()), (200, "ready"));

    // Unknown path: JSON 404. The WebSocket placeholder (or the real handler) does not 500.
    let r = request(plain, None, "GET", "/nothing-here", None, "").await?;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()?["code"], "not_found");

    // API without credentials, with a wrong token, with a malformed header.
    let r = request(plain, None, "POST", "/api/status", None, "").await?;
    assert_eq!(r.status, 401);
    assert!(r.headers.contains_key("www-authenticate"));
    assert_eq!(r.json()?["status"], "error");
    let r = request(plain, None, "POST", "/api/status", Some("Bearer nope"), "").await?;
    assert_eq!(r.status, 401);
    let r = request(plain, None, "POST", "/api/status", Some("Basic !!!"), "").await?;
    assert_eq!(r.status, 401);
    // An unauthenticated caller cannot tell commands apart.
    let r = request(plain, None, "POST", "/api/no_such_command", None, "").await?;
    assert_eq!(r.status, 401);

    // Bearer token: register two accounts.
    let auth = bearer();
    let body = json!({"user": "admin", "host": "localhost", "password": "adminpw"}).to_string();
    let r = request(plain, None, "POST", "/api/register", Some(&auth), &body).await?;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.json()?.is_string());
    let body = json!({"host": "localhost", "user": "bob", "password": "bobpw"}).to_string();
    let r = request(plain, None, "POST", "/api/register", Some(&auth), &body).await?;
    assert_eq!(r.status, 200, "{}", r.body);
    // Again: the command fails (conflict).
    let r = request(plain, None, "POST", "/api/register", Some(&auth), &body).await?;
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(r.json()?["code"], "failed");

    let body = json!({"host": "localhost"}).to_string();
    let r = request(
        plain,
        None,
        "POST",
        "/api/registered_users",
        Some(&auth),
        &body,
    )
    .await?;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()?, json!(["admin", "bob"]));

    // Unknown command and bad arguments: 400 naming the culprit.
    let r = request(plain, None, "POST", "/api/registerr", Some(&auth), "{}").await?;
    assert_eq!(r.status, 400);
    let v = r.json()?;
    assert_eq!(v["code"], "unknown_command");
    assert!(
        v["message"].as_str().unwrap_or("").contains("register"),
        "{v}"
    );
    let body = json!({"user": "carol", "host": "localhost"}).to_string();
    let r = request(plain, None, "POST", "/api/register", Some(&auth), &body).await?;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()?["argument"], "password");
    let body = json!({"user": "carol", "hots": "localhost", "password": "x"}).to_string();
    let r = request(plain, None, "POST", "/api/register", Some(&auth), &body).await?;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()?["argument"], "hots");
    let body = json!({"user": ["carol"], "host": "localhost", "password": "x"}).to_string();
    let r = request(plain, None, "POST", "/api/register", Some(&auth), &body).await?;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()?["argument"], "user");
    let r = request(plain, None, "POST", "/api/status", Some(&auth), "[1, 2]").await?;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()?["code"], "bad_request");
    // Not found: 404 from the command itself.
    let body = json!({"user": "nobody", "host": "localhost"}).to_string();
    let r = request(plain, None, "POST", "/api/unregister", Some(&auth), &body).await?;
    assert_eq!(r.status, 404, "{}", r.body);
    // GET is not the API's method.
    let r = request(plain, None, "GET", "/api/status", Some(&auth), "").await?;
    assert_eq!(r.status, 405);

    // Basic: the admin ACL member may, bob may not, a wrong password is 401.
    let admin = basic("admin@localhost", "adminpw");
    let r = request(
        plain,
        None,
        "POST",
        "/api/connected_users_number",
        Some(&admin),
        "",
    )
    .await?;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()?, json!(0));
    let bob = basic("bob@localhost", "bobpw");
    let r = request(plain, None, "POST", "/api/status", Some(&bob), "").await?;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()?["code"], "forbidden");
    let wrong = basic("admin@localhost", "nope");
    let r = request(plain, None, "POST", "/api/status", Some(&wrong), "").await?;
    assert_eq!(r.status, 401);
    let foreign = basic("admin@elsewhere.example", "adminpw");
    let r = request(plain, None, "POST", "/api/status", Some(&foreign), "").await?;
    assert_eq!(r.status, 401);

    // Traffic for the metrics: bob logs in over c2s and pings the server; one failed login.
    let mut c = Client::connect(n.c2s).await?;
    c.open().await?;
    c.starttls().await?;
    c.auth_plain("bob", "bobpw").await?;
    c.bind("phone").await?;
    c.iq(
        "<iq type='get' id='p1' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>",
        "p1",
    )
    .await?;
    let mut f = Client::connect(n.c2s).await?;
    f.open().await?;
    f.starttls().await?;
    assert_eq!(
        f.try_auth_plain("bob", "wrong").await?,
        Err("not-authorized".to_owned())
    );
    drop(f);

    let r = request(plain, None, "GET", "/metrics", None, "").await?;
    assert_eq!(r.status, 200);
    assert!(
        r.headers
            .get("content-type")
            .is_some_and(|t| t.starts_with("application/openmetrics-text")),
        "{:?}",
        r.headers
    );
    let (types, samples) =
        parse_openmetrics(&r.body).map_err(|e| anyhow::anyhow!("{e}\n{}", r.body))?;
    assert_eq!(
        types.get("starling_c2s_sessions").map(String::as_str),
        Some("gauge")
    );
    assert_eq!(
        types.get("starling_stanzas_routed").map(String::as_str),
        Some("counter")
    );
    assert_eq!(
        types
            .get("starling_routing_duration_seconds")
            .map(String::as_str),
        Some("histogram")
    );
    assert_eq!(
        sample(&samples, "starling_c2s_sessions", &[("transport", "tcp")]),
        Some(1.0)
    );
    assert_eq!(
        sample(&samples, "starling_c2s_sessions", &[("transport", "bosh")]),
        Some(0.0)
    );
    assert!(
        sample(&samples, "starling_stanzas_routed_total", &[("kind", "iq")]).unwrap_or(0.0) >= 1.0
    );
    assert_eq!(
        sample(
            &samples,
            "starling_c2s_auth_total",
            &[("mechanism", "PLAIN"), ("result", "success")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &samples,
            "starling_c2s_auth_total",
            &[("mechanism", "PLAIN"), ("result", "failure")]
        ),
        Some(1.0)
    );
    let routed = sample(&samples, "starling_routing_duration_seconds_count", &[]).unwrap_or(0.0);
    assert!(routed >= 1.0, "{routed}");
    assert_eq!(
        sample(
            &samples,
            "starling_routing_duration_seconds_bucket",
            &[("le", "+Inf")]
        ),
        Some(routed)
    );
    // The ping result was written to the client.
    assert!(
        sample(
            &samples,
            "starling_stanzas_delivered_total",
            &[("kind", "iq")]
        )
        .unwrap_or(0.0)
            >= 1.0
    );
    // Storage calls are timed per operation (the logins read credentials).
    assert_eq!(
        types
            .get("starling_storage_query_duration_seconds")
            .map(String::as_str),
        Some("histogram")
    );
    assert!(
        sample(
            &samples,
            "starling_storage_query_duration_seconds_count",
            &[("op", "account.credentials")]
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{}",
        r.body
    );
    assert_eq!(
        types.get("starling_offline_messages").map(String::as_str),
        Some("counter")
    );
    assert!(
        sample(
            &samples,
            "starling_offline_messages_total",
            &[("event", "stored")]
        )
        .is_some()
    );
    // The API calls above were counted per handler and code.
    assert_eq!(
        sample(
            &samples,
            "starling_http_requests_total",
            &[("handler", "mod_http_api"), ("code", "403")]
        ),
        Some(1.0)
    );
    assert!(
        sample(
            &samples,
            "starling_http_requests_total",
            &[("handler", "mod_http_api"), ("code", "401")]
        )
        .unwrap_or(0.0)
            >= 5.0
    );

    // Over TLS: the same API, with the node's certificate.
    let data = n.dir.path().join("data");
    let r = request(n.tls, Some(&data), "GET", "/health", None, "").await?;
    assert_eq!((r.status, r.body.as_str()), (200, "ready"));
    let r = request(n.tls, Some(&data), "POST", "/api/status", None, "").await?;
    assert_eq!(r.status, 401);
    let r = request(
        n.tls,
        Some(&data),
        "POST",
        "/api/connected_users",
        Some(&admin),
        "",
    )
    .await?;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()?, json!(["bob@localhost/phone"]));
    // Metrics are not mounted on the TLS listener.
    let r = request(n.tls, Some(&data), "GET", "/metrics", None, "").await?;
    assert_eq!(r.status, 404);

    // Draining: while the node stops, /health answers 503 until the listener closes.
    n.server().begin_shutdown();
    let r = request(plain, None, "GET", "/health", None, "").await?;
    assert_eq!((r.status, r.body.as_str()), (503, "draining"));
    drop(c);
    n.stop().await;
    Ok(())
}

#[test]
fn the_parser_is_strict() {
    assert!(parse_openmetrics("# TYPE a counter\na_total 1\n# EOF\n").is_ok());
    assert!(
        parse_openmetrics("# TYPE a counter\na_total 1\n").is_err(),
        "no EOF"
    );
    assert!(
        parse_openmetrics("a_total 1\n# EOF\n").is_err(),
        "undeclared"
    );
    assert!(
        parse_openmetrics("# TYPE a counter\na 1\n# EOF\n").is_err(),
        "suffix"
    );
    assert!(parse_openmetrics("# TYPE a gauge\na{b=\"x} 1\n# EOF\n").is_err());
    assert!(parse_openmetrics("# TYPE a gauge\na{b=\"x\"} one\n# EOF\n").is_err());
    assert!(parse_openmetrics("# TYPE a histogram\na_bucket 1\n# EOF\n").is_err());
    let (_, s) = parse_openmetrics("# TYPE a gauge\na{b=\"x\\\"y\",c=\"z\"} 2\n# EOF\n").unwrap();
    assert_eq!(sample(&s, "a", &[("b", "x\"y"), ("c", "z")]), Some(2.0));
}
