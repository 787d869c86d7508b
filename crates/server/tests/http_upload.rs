//! XEP-0363 end to end: slots over XMPP, PUT/GET/HEAD/Range over HTTP, and every refusal
//! (quota, expired slot, bad signature, too large, traversal, conflict), disco, CORS, and the
//! files going with the account.
//!
//! The HTTP client is written by hand (one request per connection, `Connection: close`) so the
//! test sees exactly what goes over the wire; slot URLs name `put_url`'s host, so requests go
//! to the bound listener with the URL's path and query.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use anyhow::{Context, bail};
use starling_server::Node;
use starling_testkit::{Client, TIMEOUT, error_condition};
use starling_xmpp::Element;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const NS: &str = "urn:xmpp:http:upload:0";
const HOST: &str = "localhost";

struct UploadNode {
    node: Option<Node>,
    http: SocketAddr,
    c2s: SocketAddr,
    dir: tempfile::TempDir,
}

impl UploadNode {
    async fn start(module_options: &str) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let yaml = format!(
            "hosts: [{HOST}]\n\
             data_dir: {data}\n\
             loglevel: warning\n\
             listen:\n  \
               - {{port: 0, ip: 127.0.0.1, module: ejabberd_c2s, starttls_required: true}}\n  \
               - port: 0\n    ip: 127.0.0.1\n    module: ejabberd_http\n    \
                 request_handlers: {{/upload: mod_http_upload, /health: health}}\n\
             modules:\n  mod_disco: {{}}\n  mod_http_upload: {module_options}\n",
            data = dir.path().join("data").display(),
        );
        let specs = starling_modules::specs();
        let config = starling_config::load_str(&yaml, "test.yml", &specs)
            .map_err(|d| anyhow::anyhow!("config rejected:\n{d}"))?;
        let node = starling_server::start(config, &starling_modules::catalogue()).await?;
        let http = node.http.first().context("http")?.0;
        let c2s = node.c2s.first().context("c2s")?.0;
        Ok(Self {
            node: Some(node),
            http,
            c2s,
            dir,
        })
    }

    fn server(&self) -> &std::sync::Arc<starling_core::Server> {
        &self.node.as_ref().expect("running").server
    }

    async fn register(&self, user: &str) -> anyhow::Result<()> {
        let jid = starling_xmpp::jid::BareJid::new(Some(user), HOST)?;
        let creds =
            tokio::task::spawn_blocking(|| starling_xmpp::scram::Credentials::new("secret", 4096))
                .await?
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        self.server()
            .stores()
            .create(&jid, &creds)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))
    }

    async fn login(&self, user: &str) -> anyhow::Result<Client> {
        self.register(user).await?;
        let mut c = Client::connect(self.c2s).await?;
        c.open().await?;
        c.starttls().await?;
        c.auth_plain(user, "secret").await?;
        c.bind("test").await?;
        Ok(c)
    }

    fn docroot(&self) -> std::path::PathBuf {
        self.dir.path().join("data/upload")
    }

    async fn stop(mut self) {
        if let Some(node) = self.node.take() {
            node.stop().await;
        }
    }
}

/// The slot's PUT and GET URLs, or the error IQ.
async fn request_slot(
    c: &mut Client,
    id: &str,
    filename: &str,
    size: u64,
    content_type: Option<&str>,
) -> anyhow::Result<Result<(String, String), Element>> {
    let ct = content_type.map_or(String::new(), |t| format!(" content-type='{t}'"));
    let reply = c
        .iq(
            &format!(
                "<iq type='get' id='{id}' to='upload.{HOST}'>\
                 <request xmlns='{NS}' filename='{filename}' size='{size}'{ct}/></iq>"
            ),
            id,
        )
        .await?;
    if reply.attr("type") == Some("error") {
        return Ok(Err(reply));
    }
    let slot = reply.get_child("slot", NS).context("no slot")?;
    let put = slot
        .get_child("put", NS)
        .and_then(|p| p.attr("url"))
        .context("no put url")?;
    let get = slot
        .get_child("get", NS)
        .and_then(|g| g.attr("url"))
        .context("no get url")?;
    Ok(Ok((put.to_owned(), get.to_owned())))
}

/// The path and query of a URL (`http://host:port/path?q` → `/path?q`).
fn path_of(url: &str) -> anyhow::Result<String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .context("not http")?;
    let slash = rest.find('/').context("no path")?;
    Ok(rest[slash..].to_owned())
}

struct Reply {
    status: u16,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> anyhow::Result<Reply> {
    let mut tcp = tokio::time::timeout(TIMEOUT, TcpStream::connect(addr)).await??;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n");
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        && (method == "PUT" || !body.is_empty())
    {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    tcp.write_all(head.as_bytes()).await?;
    // The server may answer (and close) before reading a refused body.
    let _ = tcp.write_all(body).await;
    let _ = tcp.flush().await;
    let mut raw = Vec::new();
    tokio::time::timeout(TIMEOUT, tcp.read_to_end(&mut raw)).await??;
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no header end")?;
    let head = String::from_utf8(raw[..end].to_vec())?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .context("no status line")?
        .split(' ')
        .nth(1)
        .context("no status")?
        .parse()?;
    let headers: BTreeMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    if headers.get("transfer-encoding").map(String::as_str) == Some("chunked") {
        body = dechunk(&body)?;
    }
    Ok(Reply {
        status,
        headers,
        body,
    })
}

fn dechunk(mut body: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("chunk size")?;
        let size = usize::from_str_radix(std::str::from_utf8(&body[..line])?.trim(), 16)?;
        if size == 0 {
            return Ok(out);
        }
        let start = line + 2;
        out.extend_from_slice(body.get(start..start + size).context("short chunk")?);
        body = body.get(start + size + 2..).context("chunk end")?;
    }
}

fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 256) as u8).collect()
}

#[tokio::test]
async fn round_trip_range_head_and_refusals() -> anyhow::Result<()> {
    let node =
        UploadNode::start("{max_size: 100000, put_url: \"http://files.test/upload\"}").await?;
    let mut alice = node.login("alice").await?;

    // Disco: identity, feature and the max-file-size form.
    let info = alice
        .iq(
            &format!(
                "<iq type='get' id='d1' to='upload.{HOST}'>\
                 <query xmlns='http://jabber.org/protocol/disco#info'/></iq>"
            ),
            "d1",
        )
        .await?;
    let query = info.children().next().context("no query")?;
    let identity = query
        .children()
        .find(|c| c.name() == "identity")
        .context("identity")?;
    assert_eq!(identity.attr("category"), Some("store"));
    assert_eq!(identity.attr("type"), Some("file"));
    assert!(
        query
            .children()
            .any(|c| c.name() == "feature" && c.attr("var") == Some(NS))
    );
    let form = query.children().find(|c| c.name() == "x").context("form")?;
    let max = form
        .children()
        .find(|f| f.attr("var") == Some("max-file-size"))
        .context("max-file-size")?;
    assert_eq!(
        max.children().next().map(Element::text).as_deref(),
        Some("100000")
    );
    // The host lists the service.
    let items = alice
        .iq(
            &format!(
                "<iq type='get' id='d2' to='{HOST}'>\
                 <query xmlns='http://jabber.org/protocol/disco#items'/></iq>"
            ),
            "d2",
        )
        .await?;
    let listed = format!("upload.{HOST}");
    assert!(
        items
            .children()
            .flat_map(Element::children)
            .any(|i| i.attr("jid") == Some(listed.as_str())),
        "upload service in disco#items"
    );

    // Slot, PUT, GET back identical bytes.
    let data = payload(5000);
    let (put, get) = request_slot(
        &mut alice,
        "s1",
        "../My photo.jpg",
        5000,
        Some("image/jpeg"),
    )
    .await?
    .map_err(|e| anyhow::anyhow!("slot refused: {e:?}"))?;
    assert!(
        put.starts_with("http://files.test/upload/localhost/"),
        "{put}"
    );
    assert!(get.ends_with("/My_photo.jpg"), "sanitised name: {get}");
    let put_path = path_of(&put)?;
    let get_path = path_of(&get)?;

    // Preflight for browsers.
    let pre = http(node.http, "OPTIONS", &put_path, &[], b"").await?;
    assert!(pre.status == 204 || pre.status == 200, "{}", pre.status);
    assert_eq!(
        pre.headers
            .get("access-control-allow-origin")
            .map(String::as_str),
        Some("*")
    );
    assert!(pre.headers["access-control-allow-methods"].contains("PUT"));

    // Before the PUT: nothing to GET.
    assert_eq!(
        http(node.http, "GET", &get_path, &[], b"").await?.status,
        404
    );
    // Tampered signature, wrong content type, no signature: 403.
    let tampered = put_path.replace("sig=", "sig=00");
    let r = http(
        node.http,
        "PUT",
        &tampered,
        &[("Content-Type", "image/jpeg")],
        &data,
    )
    .await?;
    assert_eq!(r.status, 403);
    let r = http(
        node.http,
        "PUT",
        &put_path,
        &[("Content-Type", "text/html")],
        &data,
    )
    .await?;
    assert_eq!(r.status, 403, "content type is signed");
    let r = http(
        node.http,
        "PUT",
        &get_path,
        &[("Content-Type", "image/jpeg")],
        &data,
    )
    .await?;
    assert_eq!(r.status, 403, "GET URL has no signature");
    // Larger than the slot: 413; smaller: 400.
    let r = http(
        node.http,
        "PUT",
        &put_path,
        &[("Content-Type", "image/jpeg")],
        &payload(5001),
    )
    .await?;
    assert_eq!(r.status, 413);
    let r = http(
        node.http,
        "PUT",
        &put_path,
        &[("Content-Type", "image/jpeg")],
        &payload(10),
    )
    .await?;
    assert_eq!(r.status, 400);
    // The real thing.
    let r = http(
        node.http,
        "PUT",
        &put_path,
        &[("Content-Type", "image/jpeg")],
        &data,
    )
    .await?;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.headers
            .get("access-control-allow-origin")
            .map(String::as_str),
        Some("*")
    );
    // Again: 409.
    let r = http(
        node.http,
        "PUT",
        &put_path,
        &[("Content-Type", "image/jpeg")],
        &data,
    )
    .await?;
    assert_eq!(r.status, 409);

    let r = http(node.http, "GET", &get_path, &[], b"").await?;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, data, "identical bytes");
    assert_eq!(r.headers["content-type"], "image/jpeg");
    assert_eq!(r.headers["x-content-type-options"], "nosniff");
    assert!(r.headers["content-disposition"].starts_with("inline"));
    assert_eq!(r.headers["accept-ranges"], "bytes");

    let r = http(node.http, "HEAD", &get_path, &[], b"").await?;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["content-length"], "5000");
    assert!(r.body.is_empty());

    let r = http(
        node.http,
        "GET",
        &get_path,
        &[("Range", "bytes=100-199")],
        b"",
    )
    .await?;
    assert_eq!(r.status, 206);
    assert_eq!(r.headers["content-range"], "bytes 100-199/5000");
    assert_eq!(r.body, data[100..200]);
    let r = http(node.http, "GET", &get_path, &[("Range", "bytes=-10")], b"").await?;
    assert_eq!(r.status, 206);
    assert_eq!(r.body, data[4990..]);
    let r = http(
        node.http,
        "GET",
        &get_path,
        &[("Range", "bytes=6000-")],
        b"",
    )
    .await?;
    assert_eq!(r.status, 416);
    assert_eq!(r.headers["content-range"], "bytes */5000");

    // Non-inline types go out as attachments.
    let (put2, get2) = request_slot(&mut alice, "s2", "page.html", 3, Some("text/html"))
        .await?
        .map_err(|e| anyhow::anyhow!("slot refused: {e:?}"))?;
    let r = http(
        node.http,
        "PUT",
        &path_of(&put2)?,
        &[("Content-Type", "text/html")],
        b"<b>",
    )
    .await?;
    assert_eq!(r.status, 201);
    let r = http(node.http, "GET", &path_of(&get2)?, &[], b"").await?;
    assert_eq!(r.headers["content-type"], "text/html");
    assert!(r.headers["content-disposition"].starts_with("attachment"));
    assert!(r.headers["content-security-policy"].contains("default-src 'none'"));

    // A slot without a content type takes any.
    let (put3, _) = request_slot(&mut alice, "s3", "notes", 2, None)
        .await?
        .map_err(|e| anyhow::anyhow!("slot refused: {e:?}"))?;
    let r = http(
        node.http,
        "PUT",
        &path_of(&put3)?,
        &[("Content-Type", "x/y")],
        b"hi",
    )
    .await?;
    assert_eq!(r.status, 201);

    // Traversal and unknown files: 404.
    let prefix = get_path.rsplit_once('/').context("slash")?.0.to_owned();
    for path in [
        format!("{prefix}/..%2F..%2Fupload.secret"),
        format!("{prefix}/.."),
        "/upload/localhost/../../upload.secret".to_owned(),
        "/upload/../data/upload.secret".to_owned(),
        format!("{prefix}/missing.jpg"),
        "/upload/elsewhere.test/0123456789abcdef0123456789abcdef/0123456789abcdef0123456789abcdef/a.jpg".to_owned(),
        "/upload/localhost".to_owned(),
    ] {
        let r = http(node.http, "GET", &path, &[], b"").await?;
        assert_eq!(r.status, 404, "{path}");
    }

    // Too large for max_size: refused over XMPP with the limit.
    let err = request_slot(&mut alice, "s4", "big.bin", 100_001, None)
        .await?
        .err()
        .context("slot granted")?;
    assert_eq!(error_condition(&err).as_deref(), Some("not-acceptable"));
    let max = err
        .get_child("error", "jabber:client")
        .and_then(|e| e.get_child("file-too-large", NS))
        .and_then(|f| f.get_child("max-file-size", NS))
        .context("no max-file-size")?;
    assert_eq!(max.text(), "100000");
    // Bad requests.
    for (id, filename, size) in [("b1", "", "5"), ("b2", "a.txt", "-1"), ("b3", "a.txt", "x")] {
        let reply = alice
            .iq(
                &format!(
                    "<iq type='get' id='{id}' to='upload.{HOST}'>\
                     <request xmlns='{NS}' filename='{filename}' size='{size}'/></iq>"
                ),
                id,
            )
            .await?;
        assert_eq!(
            error_condition(&reply).as_deref(),
            Some("bad-request"),
            "{id}"
        );
    }

    // rm_on_unregister: the account's files go with it.
    let user_dir = get_path.split('/').nth(3).context("user dir")?.to_owned();
    assert!(node.docroot().join(&user_dir).exists());
    let jid = starling_xmpp::jid::BareJid::new(Some("alice"), HOST)?;
    assert!(node.server().remove_user(&jid, "bye").await?);
    assert!(!node.docroot().join(&user_dir).exists());
    assert_eq!(
        http(node.http, "GET", &get_path, &[], b"").await?.status,
        404
    );
    node.stop().await;
    Ok(())
}

#[tokio::test]
async fn quota_is_checked_at_slot_and_put_time() -> anyhow::Result<()> {
    let node = UploadNode::start("{quota: 1000}").await?;
    let mut bob = node.login("bob").await?;

    // Default put_url: derived from the listener.
    let (put, _) = request_slot(&mut bob, "q1", "a.txt", 600, Some("text/plain"))
        .await?
        .map_err(|e| anyhow::anyhow!("slot refused: {e:?}"))?;
    assert!(
        put.starts_with(&format!("http://{HOST}:{}/upload/", node.http.port()))
            || put.starts_with(&format!("http://{HOST}:0/upload/")),
        "{put}"
    );
    let r = http(
        node.http,
        "PUT",
        &path_of(&put)?,
        &[("Content-Type", "text/plain")],
        &payload(600),
    )
    .await?;
    assert_eq!(r.status, 201);

    // 600 stored + 600 asked > 1000: refused with resource-constraint and file-too-large.
    let err = request_slot(&mut bob, "q2", "b.txt", 600, None)
        .await?
        .err()
        .context("slot over quota granted")?;
    assert_eq!(
        error_condition(&err).as_deref(),
        Some("resource-constraint")
    );
    assert!(
        err.get_child("error", "jabber:client")
            .and_then(|e| e.get_child("file-too-large", NS))
            .is_some()
    );
    // Two slots taken before either PUT: the second PUT is checked against the quota too.
    let (p3, _) = request_slot(&mut bob, "q3", "c.txt", 300, None)
        .await?
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let (p4, _) = request_slot(&mut bob, "q4", "d.txt", 300, None)
        .await?
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    assert_eq!(
        http(node.http, "PUT", &path_of(&p3)?, &[], &payload(300))
            .await?
            .status,
        201
    );
    assert_eq!(
        http(node.http, "PUT", &path_of(&p4)?, &[], &payload(300))
            .await?
            .status,
        413
    );

    // The secret was generated and kept for restarts.
    assert!(node.dir.path().join("data/upload.secret").exists());
    node.stop().await;
    Ok(())
}

#[tokio::test]
async fn expired_slot_is_refused() -> anyhow::Result<()> {
    let node = UploadNode::start("{slot_timeout: \"200 ms\"}").await?;
    let mut bob = node.login("bob").await?;
    // Expired slot: 403.
    let (p5, _) = request_slot(&mut bob, "q5", "e.txt", 10, None)
        .await?
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let r = http(node.http, "PUT", &path_of(&p5)?, &[], &payload(10)).await?;
    assert_eq!(r.status, 403);
    assert!(String::from_utf8_lossy(&r.body).contains("expired"));

    node.stop().await;
    Ok(())
}

#[tokio::test]
async fn access_rule_refuses_with_forbidden() -> anyhow::Result<()> {
    let node = UploadNode::start("{access: none}").await?;
    let mut carol = node.login("carol").await?;
    let err = request_slot(&mut carol, "f1", "a.txt", 10, None)
        .await?
        .err()
        .context("slot granted")?;
    assert_eq!(error_condition(&err).as_deref(), Some("forbidden"));
    node.stop().await;
    Ok(())
}

#[test]
fn path_of_urls() -> anyhow::Result<()> {
    assert_eq!(path_of("http://a:1/x/y?q=1")?, "/x/y?q=1");
    if path_of("ftp://a/x").is_ok() {
        bail!("ftp accepted");
    }
    Ok(())
}
