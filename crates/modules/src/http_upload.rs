//! `mod_http_upload`: XEP-0363 HTTP file upload, the XMPP side; the files are served by the
//! `mod_http_upload` handler of `starling-http` (`crates/http/src/upload.rs`).
//!
//! The module registers a service on `upload.@HOST@` (option `host`) that answers disco#info
//! (identity `store/file`, the `urn:xmpp:http:upload:0` feature and the §3 form with
//! `max-file-size`) and slot requests (§4): `<request filename size content-type/>` gets a
//! `<slot>` with a signed PUT URL and a GET URL ([`slot`] holds the signing and path rules
//! both sides share, sans I/O; [`disk`] the directory layout). Refusals: over `max_size`,
//! `<not-acceptable/>` with `<file-too-large><max-file-size/>` (§4.1); over the user's
//! `quota`, `<resource-constraint/>` with `<file-too-large/>`; denied by `access`,
//! `<forbidden/>`; a bad file name or size, `<bad-request/>`.
//!
//! Options are ejabberd's (`mod_http_upload`, and `max_days` of `mod_http_upload_quota`) plus
//! our `quota` (bytes per user, default 1 GiB; ejabberd's `mod_http_upload_quota` expresses it
//! with access rules) and `slot_timeout` (how long a PUT URL is valid, default 300 s).
//!
//! Why the crates split this way: `starling-http` depends on this crate for [`UploadSettings`]
//! and [`slot`], so the key, the paths and the limits are computed by one piece of code; the
//! dependency points from a transport to a module, as `starling-http` already reads
//! `mod_bosh`'s and `mod_http_api`'s options. Settings need the node's config (`data_dir`,
//! listeners, cluster), which a module's `start` does not see, so both sides resolve them
//! from `Server::config()` on first use and keep them for that config snapshot.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use starling_config::{
    AccessDecision, AccessRequest, Config, ListenerModule, ModuleOptions, ModuleSpec, OptionKind,
    OptionSpec, OptionValue,
};
use starling_core::BoxFuture;
use starling_core::Server;
use starling_core::hooks::{Hook, HookResult, RemoveUser};
use starling_core::module::{HostContext, Module, ModuleError, Registrations, Service};
use starling_xmpp::Element;
use starling_xmpp::error::{StanzaError, StanzaErrorCondition};
use starling_xmpp::jid::{BareJid, Jid};
use starling_xmpp::ns;
use starling_xmpp::stanza::{IqType, Kind, Stanza, element, text_element};

use crate::dataform;

pub mod disk;
pub mod slot;

use slot::{FilePath, NS, PutClaim, SigningKey};

/// The module's name, also the HTTP handler's name in `request_handlers`.
pub const MODULE: &str = "mod_http_upload";
/// Default `host`.
pub const DEFAULT_HOST: &str = "upload.@HOST@";
/// Default `name`.
pub const DEFAULT_NAME: &str = "HTTP File Upload";
/// Default `max_size`: 100 MiB (ejabberd's).
pub const DEFAULT_MAX_SIZE: u64 = 104_857_600;
/// Default `quota`: 1 GiB per user.
pub const DEFAULT_QUOTA: u64 = 1 << 30;
/// Default `slot_timeout`.
pub const DEFAULT_SLOT_TIMEOUT: Duration = Duration::from_secs(300);
/// File holding the generated secret, under `data_dir`.
pub const SECRET_FILE: &str = "upload.secret";

const OPTIONS: &[OptionSpec] = &[
    OptionSpec {
        name: "host",
        kind: OptionKind::String,
        doc: "Domain of the upload service (default upload.@HOST@).",
    },
    OptionSpec {
        name: "hosts",
        kind: OptionKind::StringList,
        doc: "ejabberd's list form of host; the first entry is used.",
    },
    OptionSpec {
        name: "name",
        kind: OptionKind::String,
        doc: "Name of the service in disco (default \"HTTP File Upload\").",
    },
    OptionSpec {
        name: "access",
        kind: OptionKind::AccessRule,
        doc: "Who may request slots (default: accounts of this server's hosts, like \
              ejabberd's `local` rule).",
    },
    OptionSpec {
        name: "max_size",
        kind: OptionKind::IntOrInfinity { min: 1 },
        doc: "Largest file in bytes (default 104857600).",
    },
    OptionSpec {
        name: "docroot",
        kind: OptionKind::String,
        doc: "Directory of the files (default <data_dir>/upload); shared storage in a cluster.",
    },
    OptionSpec {
        name: "put_url",
        kind: OptionKind::String,
        doc: "Base URL of uploads (default http(s)://@HOST@:PORT/PATH of the first HTTP \
              listener mounting mod_http_upload).",
    },
    OptionSpec {
        name: "get_url",
        kind: OptionKind::String,
        doc: "Base URL of downloads (default put_url).",
    },
    OptionSpec {
        name: "secret",
        kind: OptionKind::String,
        doc: "Key of the URL signatures (default: derived from the cluster cookie when \
              clustered, else random, kept in <data_dir>/upload.secret).",
    },
    OptionSpec {
        name: "custom_headers",
        kind: OptionKind::Any,
        doc: "Extra HTTP response headers, a mapping of name to value.",
    },
    OptionSpec {
        name: "rm_on_unregister",
        kind: OptionKind::Bool,
        doc: "Delete a user's files with the account (default true).",
    },
    OptionSpec {
        name: "max_days",
        kind: OptionKind::IntOrInfinity { min: 1 },
        doc: "Delete files older than this many days, swept hourly (default infinity).",
    },
    OptionSpec {
        name: "quota",
        kind: OptionKind::IntOrInfinity { min: 0 },
        doc: "Most bytes one user may store (default 1073741824).",
    },
    OptionSpec {
        name: "slot_timeout",
        kind: OptionKind::Duration,
        doc: "How long a PUT URL stays valid (default 300 s).",
    },
];

/// `mod_http_upload`.
pub struct HttpUpload;

impl Module for HttpUpload {
    fn spec(&self) -> ModuleSpec {
        ModuleSpec {
            name: MODULE,
            aliases: &[],
            options: OPTIONS,
        }
    }

    fn start(
        &self,
        host: &HostContext<'_>,
        options: &ModuleOptions,
    ) -> Result<Registrations, ModuleError> {
        let domain = service_domain(host.host, options).map_err(module_error)?;
        for key in ["put_url", "get_url"] {
            if let Some(url) = options.string(key) {
                check_base_url(url).map_err(|e| module_error(format!("{key}: {e}")))?;
            }
        }
        custom_headers(options).map_err(module_error)?;
        let name = options.string("name").unwrap_or(DEFAULT_NAME).to_owned();
        let service = Arc::new(UploadService {
            host: host.host.to_owned(),
            options: options.clone(),
            settings: OnceLock::new(),
        });
        let mut registrations =
            Registrations::default().service(domain, name, service.clone() as Arc<dyn Service>);
        registrations
            .hooks
            .remove_user
            .add(50, Arc::new(RemoveFiles(service)));
        Ok(registrations)
    }
}

fn module_error(message: String) -> ModuleError {
    ModuleError {
        module: MODULE,
        message,
    }
}

/// The service domain from `host`/`hosts` (already `@HOST@`-expanded by the loader).
fn service_domain(host: &str, options: &ModuleOptions) -> Result<String, String> {
    let domain = options
        .string("host")
        .map(str::to_owned)
        .or_else(|| options.strings("hosts").and_then(|h| h.into_iter().next()))
        .unwrap_or_else(|| Config::expand_host(DEFAULT_HOST, host));
    let domain = Config::expand_host(&domain, host);
    if BareJid::domain_only(&domain).is_err() {
        return Err(format!("host: not a domain: {domain}"));
    }
    if domain == host {
        return Err(format!(
            "host: the upload service needs its own domain, not {host}"
        ));
    }
    Ok(domain)
}

/// A base URL must be absolute http(s), without query or fragment (we append path and query).
fn check_base_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or("must start with http:// or https://")?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err("has no host".to_owned());
    }
    if url.contains(['?', '#']) || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain a query, a fragment or spaces".to_owned());
    }
    Ok(())
}

fn custom_headers(options: &ModuleOptions) -> Result<Vec<(String, String)>, String> {
    let Some(value) = options.value("custom_headers") else {
        return Ok(Vec::new());
    };
    let OptionValue::Map(entries) = value else {
        return Err("custom_headers: expected a mapping of header name to value".to_owned());
    };
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    entries
        .iter()
        .map(|(name, v)| {
            let value = match v {
                OptionValue::String(s) => s.clone(),
                OptionValue::Int(i) => i.to_string(),
                OptionValue::Bool(b) => b.to_string(),
                _ => return Err(format!("custom_headers.{name}: expected a string")),
            };
            if !token(name) {
                return Err(format!("custom_headers.{name}: not a header name"));
            }
            if value.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
                return Err(format!("custom_headers.{name}: control characters"));
            }
            Ok((name.clone(), value))
        })
        .collect()
}

/// Everything both sides need for one host, resolved against the node's config.
#[derive(Clone, Debug)]
pub struct UploadSettings {
    /// The XMPP host.
    pub host: String,
    /// The service's domain (`upload.HOST`).
    pub domain: String,
    /// Access rule for slots; `None`: accounts of our hosts.
    pub access: Option<String>,
    /// Largest file in bytes.
    pub max_size: u64,
    /// Most bytes per user; `None` is unlimited.
    pub quota: Option<u64>,
    /// Files older than this are swept; `None` keeps them.
    pub max_age: Option<Duration>,
    /// How long a PUT URL is valid.
    pub slot_timeout: Duration,
    /// Where files live.
    pub docroot: PathBuf,
    /// Base of PUT URLs, no trailing slash.
    pub put_url: String,
    /// Base of GET URLs, no trailing slash.
    pub get_url: String,
    /// Extra response headers.
    pub custom_headers: Vec<(String, String)>,
    /// Delete files with the account.
    pub rm_on_unregister: bool,
    /// Signature and user-directory key.
    pub key: SigningKey,
}

impl UploadSettings {
    /// The settings of `host` if it runs `mod_http_upload` (`None` if it does not).
    pub fn for_host(config: &Config, host: &str) -> Option<Result<Self, String>> {
        let module = config
            .modules_for_host(host)
            .iter()
            .find(|m| m.name == MODULE)?;
        Some(Self::resolve(config, host, &module.options))
    }

    /// Resolves `options` of `host`: defaults from the config, the secret read (or created).
    pub fn resolve(config: &Config, host: &str, options: &ModuleOptions) -> Result<Self, String> {
        let domain = service_domain(host, options)?;
        let bytes = |key: &str, default: u64| match options.int(key) {
            Some(i64::MAX) => None,
            Some(n) => Some(u64::try_from(n).unwrap_or(0)),
            None => Some(default),
        };
        let put_url = match options.string("put_url") {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => default_put_url(config, host)?,
        };
        check_base_url(&put_url).map_err(|e| format!("put_url {put_url}: {e}"))?;
        let get_url = options
            .string("get_url")
            .map_or_else(|| put_url.clone(), |u| u.trim_end_matches('/').to_owned());
        let docroot = options.string("docroot").map_or_else(
            || config.data_dir.join("upload"),
            |d| PathBuf::from(Config::expand_host(d, host)),
        );
        let secret = match options.string("secret") {
            Some(secret) => secret.as_bytes().to_vec(),
            // In a cluster every node must sign and check alike: the cookie is the shared
            // secret all nodes already hold (written at start, before any request).
            None if config.cluster.is_some() => {
                std::fs::read_to_string(config.data_dir.join("cookie"))
                    .map(|c| c.trim().as_bytes().to_vec())
                    .map_err(|e| format!("cannot read the cluster cookie: {e}"))?
            }
            None => disk::load_or_create_secret(&config.data_dir.join(SECRET_FILE))
                .map_err(|e| format!("cannot read or create {SECRET_FILE}: {e}"))?,
        };
        // Per host, so one host's key never signs for another.
        let mut material = secret;
        material.push(0);
        material.extend_from_slice(host.as_bytes());
        Ok(Self {
            host: host.to_owned(),
            domain,
            access: options.string("access").map(str::to_owned),
            max_size: bytes("max_size", DEFAULT_MAX_SIZE).unwrap_or(u64::MAX),
            quota: bytes("quota", DEFAULT_QUOTA),
            max_age: match options.int("max_days") {
                None | Some(i64::MAX) => None,
                Some(days) => Some(Duration::from_secs(
                    u64::try_from(days).unwrap_or(0).saturating_mul(86_400),
                )),
            },
            slot_timeout: options
                .duration("slot_timeout")
                .unwrap_or(DEFAULT_SLOT_TIMEOUT),
            docroot,
            put_url,
            get_url,
            custom_headers: custom_headers(options)?,
            rm_on_unregister: options.bool("rm_on_unregister").unwrap_or(true),
            key: SigningKey::derive(&material),
        })
    }

    /// The directory of `user`'s files.
    pub fn user_dir(&self, user: &BareJid) -> PathBuf {
        self.docroot.join(self.key.user_dir(user.as_str()))
    }

    /// Where a file lives on disk.
    pub fn file_on_disk(&self, file: &FilePath) -> PathBuf {
        self.docroot
            .join(&file.user_dir)
            .join(&file.random)
            .join(&file.filename)
    }

    /// True if `from` may request slots.
    pub fn may_upload(&self, config: &Config, from: &Jid) -> bool {
        let Some(node) = from.node() else {
            return false;
        };
        match &self.access {
            None => config.hosts.iter().any(|h| h == from.domain()),
            Some(rule) => {
                let request = AccessRequest {
                    user: Some((node, from.domain())),
                    resource: from.resource(),
                    ip: None,
                };
                config.access(rule, &request) == AccessDecision::Allow
            }
        }
    }

    /// Makes a slot for `user` (sans I/O: the random part and the clock are given).
    pub fn make_slot(
        &self,
        user: &BareJid,
        filename: &str,
        size: u64,
        content_type: &str,
        random: [u8; 16],
        now_ms: i64,
    ) -> Slot {
        let file = FilePath {
            host: self.host.clone(),
            user_dir: self.key.user_dir(user.as_str()),
            random: slot::hex(&random),
            filename: filename.to_owned(),
        };
        let timeout = i64::try_from(self.slot_timeout.as_millis()).unwrap_or(i64::MAX);
        let expires_ms = now_ms.saturating_add(timeout);
        let signed_path = file.signed_path();
        let sig = self.key.sign(&PutClaim {
            path: &signed_path,
            size,
            content_type,
            expires_ms,
        });
        let url_path = file.url_path();
        Slot {
            put: format!(
                "{}{url_path}?{}",
                self.put_url,
                slot::put_query(size, expires_ms, &sig)
            ),
            get: format!("{}{url_path}", self.get_url),
        }
    }
}

/// A slot's URLs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slot {
    /// Signed PUT URL.
    pub put: String,
    /// GET URL.
    pub get: String,
}

/// `http(s)://HOST:PORT/PATH` of the first HTTP listener mounting the handler.
fn default_put_url(config: &Config, host: &str) -> Result<String, String> {
    config
        .listen
        .iter()
        .filter(|l| l.module == ListenerModule::Http)
        .find_map(|l| {
            let (path, _) = l
                .request_handlers
                .iter()
                .find(|(_, handler)| handler == MODULE)?;
            let scheme = if l.tls { "https" } else { "http" };
            let path = path.trim_end_matches('/');
            Some(format!("{scheme}://{host}:{}{path}", l.port))
        })
        .ok_or_else(|| {
            "put_url is not set and no HTTP listener has mod_http_upload in request_handlers"
                .to_owned()
        })
}

/// Unix time in milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The service on `upload.HOST`.
struct UploadService {
    host: String,
    options: ModuleOptions,
    /// Resolved on first use for this module instance (one config snapshot).
    settings: OnceLock<Result<Arc<UploadSettings>, String>>,
}

/// A refused slot: a stanza error, possibly with XEP-0363's `<file-too-large/>`.
struct Refusal {
    error: StanzaError,
    /// `Some(max)` adds `<file-too-large/>`, with `<max-file-size/>` when `max` is `Some`.
    too_large: Option<Option<u64>>,
}

impl From<StanzaError> for Refusal {
    fn from(error: StanzaError) -> Self {
        Self {
            error,
            too_large: None,
        }
    }
}

impl UploadService {
    fn settings(&self, server: &Server) -> Result<Arc<UploadSettings>, StanzaError> {
        let resolved = self.settings.get_or_init(|| {
            UploadSettings::resolve(&server.config(), &self.host, &self.options).map(Arc::new)
        });
        resolved.clone().map_err(|e| {
            tracing::error!(host = %self.host, error = %e, "mod_http_upload cannot serve");
            StanzaError::new(StanzaErrorCondition::InternalServerError)
        })
    }

    async fn route_stanza(&self, server: &Server, stanza: Stanza) {
        if stanza.kind() != Kind::Iq {
            if stanza.kind() == Kind::Message {
                reply(
                    server,
                    &stanza,
                    Err(bare_error(StanzaErrorCondition::ServiceUnavailable)),
                )
                .await;
            }
            return;
        }
        let Some(kind) = IqType::parse(stanza.type_attr()) else {
            return;
        };
        if !kind.is_request() {
            return;
        }
        let Some(payload) = stanza.payload() else {
            reply(
                server,
                &stanza,
                Err(bare_error(StanzaErrorCondition::BadRequest)),
            )
            .await;
            return;
        };
        let answer = if stanza.to().node().is_some() {
            Err(bare_error(StanzaErrorCondition::ServiceUnavailable))
        } else {
            match (kind, payload.ns().as_str(), payload.name()) {
                (IqType::Get, ns::DISCO_INFO, "query") if payload.attr("node").is_none() => {
                    self.disco_info(server).map(Some).map_err(Refusal::from)
                }
                (IqType::Get, ns::DISCO_ITEMS, "query") => {
                    Ok(Some(Element::bare("query", ns::DISCO_ITEMS)))
                }
                (IqType::Get, ns::PING, "ping") => Ok(None),
                (IqType::Get, NS, "request") => {
                    self.request_slot(server, &stanza, payload).await.map(Some)
                }
                _ => Err(bare_error(StanzaErrorCondition::ServiceUnavailable)),
            }
        };
        reply(server, &stanza, answer).await;
    }

    /// §3: the identity, the feature and the form with `max-file-size`.
    fn disco_info(&self, server: &Server) -> Result<Element, StanzaError> {
        let settings = self.settings(server)?;
        let mut q = Element::bare("query", ns::DISCO_INFO);
        let name = self.options.string("name").unwrap_or(DEFAULT_NAME);
        q.append_child(element(
            "identity",
            ns::DISCO_INFO,
            &[("category", "store"), ("type", "file"), ("name", name)],
        ));
        for var in [NS, ns::DISCO_INFO, ns::DISCO_ITEMS, ns::PING] {
            q.append_child(element("feature", ns::DISCO_INFO, &[("var", var)]));
        }
        let mut form = dataform::form("result", None, Some(NS));
        if settings.max_size != u64::MAX {
            let max = settings.max_size.to_string();
            form.append_child(dataform::field(
                "max-file-size",
                "text-single",
                None,
                &[&max],
            ));
        }
        q.append_child(form);
        Ok(q)
    }

    /// §4: a slot, or why not.
    async fn request_slot(
        &self,
        server: &Server,
        iq: &Stanza,
        request: &Element,
    ) -> Result<Element, Refusal> {
        let settings = self.settings(server)?;
        let config = server.config();
        if !settings.may_upload(&config, iq.from()) {
            return Err(StanzaError::new(StanzaErrorCondition::Forbidden)
                .with_text("uploads are not allowed for this account")
                .into());
        }
        let bad = |text: &str| -> Refusal {
            StanzaError::new(StanzaErrorCondition::BadRequest)
                .with_text(text)
                .into()
        };
        let filename = request
            .attr("filename")
            .ok_or_else(|| bad("missing filename"))?;
        let filename = slot::sanitise_filename(filename).map_err(|_| bad("unusable file name"))?;
        let size: u64 = request
            .attr("size")
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| bad("missing or invalid size"))?;
        let content_type = request.attr("content-type").unwrap_or("").trim();
        if content_type.len() > 255
            || content_type
                .bytes()
                .any(|b| b.is_ascii_control() || !b.is_ascii())
        {
            return Err(bad("invalid content-type"));
        }
        if size > settings.max_size {
            return Err(Refusal {
                error: StanzaError::new(StanzaErrorCondition::NotAcceptable).with_text(format!(
                    "file too large: the limit is {} bytes",
                    settings.max_size
                )),
                too_large: Some(Some(settings.max_size)),
            });
        }
        let user = iq.from().to_bare();
        if let Some(quota) = settings.quota {
            let dir = settings.user_dir(&user);
            let used = tokio::task::spawn_blocking(move || disk::usage(&dir))
                .await
                .map_err(|_| bare_error(StanzaErrorCondition::InternalServerError))?
                .map_err(|e| {
                    tracing::error!(%user, error = %e, "cannot read upload usage");
                    bare_error(StanzaErrorCondition::InternalServerError)
                })?;
            if used.saturating_add(size) > quota {
                return Err(Refusal {
                    error: StanzaError::new(StanzaErrorCondition::ResourceConstraint).with_text(
                        format!("quota exceeded: {used} of {quota} bytes used, {size} more asked"),
                    ),
                    too_large: Some(None),
                });
            }
        }
        let made = settings.make_slot(
            &user,
            &filename,
            size,
            content_type,
            rand::random(),
            now_ms(),
        );
        tracing::debug!(%user, size, "upload slot granted");
        // No <header/> to send along: the signature is in the URL.
        let put = element("put", NS, &[("url", &made.put)]);
        let mut slot = Element::bare("slot", NS);
        slot.append_child(put);
        slot.append_child(element("get", NS, &[("url", &made.get)]));
        Ok(slot)
    }
}

fn bare_error(condition: StanzaErrorCondition) -> Refusal {
    StanzaError::new(condition).into()
}

/// Routes the answer to `request`.
async fn reply(server: &Server, request: &Stanza, answer: Result<Option<Element>, Refusal>) {
    let stanza = match answer {
        Ok(payload) => Some(request.iq_result(payload)),
        Err(refusal) => error_reply(request, &refusal),
    };
    if let Some(stanza) = stanza {
        server.route(stanza).await;
    }
}

/// `error_reply` with XEP-0363's application condition, which carries a child element
/// (`StanzaError`'s application conditions are empty elements).
fn error_reply(request: &Stanza, refusal: &Refusal) -> Option<Stanza> {
    let mut reply = request.error_reply(&refusal.error)?;
    let Some(too_large) = refusal.too_large else {
        return Some(reply);
    };
    let mut el = Element::bare("file-too-large", NS);
    if let Some(max) = too_large {
        el.append_child(text_element("max-file-size", NS, &max.to_string()));
    }
    let (from, to) = (reply.from().clone(), reply.to().clone());
    let mut element = reply.into_element();
    let ns = element.ns();
    let error = element
        .children_mut()
        .find(|c| c.is("error", ns.as_str()))?;
    error.append_child(el);
    reply = Stanza::new(element, from, to).ok()?;
    Some(reply)
}

impl Service for UploadService {
    fn route<'a>(&'a self, server: &'a Server, stanza: Stanza) -> BoxFuture<'a, ()> {
        Box::pin(self.route_stanza(server, stanza))
    }
}

/// `remove_user`: with `rm_on_unregister`, the files go with the account.
struct RemoveFiles(Arc<UploadService>);

impl Hook<RemoveUser> for RemoveFiles {
    fn call<'a>(
        &'a self,
        server: &'a Server,
        arg: &'a mut RemoveUser,
    ) -> BoxFuture<'a, HookResult> {
        Box::pin(async move {
            let Ok(settings) = self.0.settings(server) else {
                return HookResult::Continue;
            };
            if settings.rm_on_unregister {
                let dir = settings.user_dir(&arg.user);
                let done = tokio::task::spawn_blocking(move || disk::remove_user(&dir)).await;
                if let Ok(Err(e)) = done {
                    tracing::error!(user = %arg.user, error = %e, "cannot remove uploaded files");
                }
            }
            HookResult::Continue
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(pairs: &[(&str, OptionValue)]) -> ModuleOptions {
        let mut o = ModuleOptions::new();
        for (k, v) in pairs {
            o.insert(*k, v.clone());
        }
        o
    }

    fn config_with_listener(data_dir: &std::path::Path) -> Config {
        let yaml = format!(
            "hosts: [example.org]\n\
             data_dir: {}\n\
             listen:\n  \
               - port: 5443\n    module: ejabberd_http\n    tls: true\n    \
                 request_handlers: {{/ws: ejabberd_http_ws, /upload/: mod_http_upload}}\n\
             modules:\n  mod_http_upload: {{}}\n",
            data_dir.display()
        );
        starling_config::load_str(&yaml, "t.yml", &crate::specs()).expect("valid config")
    }

    #[test]
    fn settings_default_from_the_listener_and_a_persistent_secret() {
        let dir = tempfile::tempdir().unwrap();
        let config = config_with_listener(dir.path());
        let s = UploadSettings::for_host(&config, "example.org")
            .expect("module enabled")
            .expect("resolves");
        assert_eq!(s.domain, "upload.example.org");
        assert_eq!(s.put_url, "https://example.org:5443/upload");
        assert_eq!(s.get_url, s.put_url);
        assert_eq!(s.docroot, dir.path().join("upload"));
        assert_eq!(s.max_size, DEFAULT_MAX_SIZE);
        assert_eq!(s.quota, Some(DEFAULT_QUOTA));
        assert_eq!(s.max_age, None);
        assert!(s.rm_on_unregister);
        assert!(dir.path().join(SECRET_FILE).exists());
        let again = UploadSettings::for_host(&config, "example.org")
            .unwrap()
            .unwrap();
        assert_eq!(again.key, s.key, "same secret after a restart");
        assert!(UploadSettings::for_host(&config, "other.org").is_none());
    }

    #[test]
    fn explicit_options() {
        let dir = tempfile::tempdir().unwrap();
        let config = config_with_listener(dir.path());
        let opts = options(&[
            ("host", OptionValue::String("files.example.org".into())),
            (
                "put_url",
                OptionValue::String("https://up.example.org/u/".into()),
            ),
            (
                "get_url",
                OptionValue::String("https://cdn.example.org/u".into()),
            ),
            ("secret", OptionValue::String("0123456789abcdef".into())),
            ("max_size", OptionValue::Int(1000)),
            ("quota", OptionValue::Infinity),
            ("max_days", OptionValue::Int(2)),
            ("docroot", OptionValue::String("/srv/@HOST@".into())),
            (
                "custom_headers",
                OptionValue::Map(vec![("X-Test".into(), OptionValue::String("1".into()))]),
            ),
        ]);
        let s = UploadSettings::resolve(&config, "example.org", &opts).unwrap();
        assert_eq!(s.domain, "files.example.org");
        assert_eq!(s.put_url, "https://up.example.org/u");
        assert_eq!(s.get_url, "https://cdn.example.org/u");
        assert_eq!(s.docroot, PathBuf::from("/srv/example.org"));
        assert_eq!(s.max_size, 1000);
        assert_eq!(s.quota, None);
        assert_eq!(s.max_age, Some(Duration::from_secs(2 * 86_400)));
        assert_eq!(s.custom_headers, vec![("X-Test".into(), "1".into())]);
        assert!(!dir.path().join(SECRET_FILE).exists(), "secret given");
        let other = UploadSettings::resolve(&config, "other.org", &opts).unwrap();
        assert_ne!(other.key, s.key, "one key per host");
    }

    #[test]
    fn bad_options_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let config = config_with_listener(dir.path());
        for (key, value) in [
            ("put_url", OptionValue::String("ftp://x".into())),
            ("put_url", OptionValue::String("https://x/?a=b".into())),
            ("host", OptionValue::String("example.org".into())),
            (
                "custom_headers",
                OptionValue::Map(vec![("Bad Name".into(), OptionValue::String("1".into()))]),
            ),
        ] {
            let opts = options(&[(key, value)]);
            assert!(
                UploadSettings::resolve(&config, "example.org", &opts).is_err(),
                "{key}"
            );
            assert!(
                HttpUpload
                    .start(
                        &HostContext {
                            host: "example.org"
                        },
                        &opts
                    )
                    .is_err(),
                "{key}"
            );
        }
        let no_listener = Config::embedded_default(&crate::specs());
        assert!(
            UploadSettings::resolve(&no_listener, "localhost", &ModuleOptions::new())
                .unwrap_err()
                .contains("put_url")
        );
    }

    #[test]
    fn slots_verify_only_as_issued() {
        let dir = tempfile::tempdir().unwrap();
        let config = config_with_listener(dir.path());
        let s = UploadSettings::for_host(&config, "example.org")
            .unwrap()
            .unwrap();
        let user = BareJid::new(Some("alice"), "example.org").unwrap();
        let made = s.make_slot(&user, "ä.jpg", 42, "image/jpeg", [7; 16], 1_000);
        let prefix = format!(
            "https://example.org:5443/upload/example.org/{}/{}/",
            s.key.user_dir("alice@example.org"),
            "07".repeat(16)
        );
        assert_eq!(made.get, format!("{prefix}%C3%A4.jpg"));
        let (put_path, query) = made.put.split_once('?').unwrap();
        assert_eq!(put_path, made.get);
        let q = slot::parse_put_query(query).unwrap();
        assert_eq!(q.size, 42);
        assert_eq!(q.expires_ms, 1_000 + 300_000);
        let path = format!(
            "/example.org/{}/{}/ä.jpg",
            s.key.user_dir("alice@example.org"),
            "07".repeat(16)
        );
        let claim = PutClaim {
            path: &path,
            size: 42,
            content_type: "image/jpeg",
            expires_ms: q.expires_ms,
        };
        assert!(s.key.verify(&claim, &q.sig));
        for tampered in [
            PutClaim { size: 43, ..claim },
            PutClaim {
                content_type: "text/html",
                ..claim
            },
            PutClaim {
                expires_ms: q.expires_ms + 1,
                ..claim
            },
            PutClaim {
                path: "/example.org/x",
                ..claim
            },
        ] {
            assert!(!s.key.verify(&tampered, &q.sig), "{tampered:?}");
        }
        assert!(!s.key.verify(&claim, "zz"));
        assert!(!s.key.verify(&claim, ""));
    }

    #[test]
    fn access_defaults_to_local_accounts() {
        let dir = tempfile::tempdir().unwrap();
        let config = config_with_listener(dir.path());
        let s = UploadSettings::for_host(&config, "example.org")
            .unwrap()
            .unwrap();
        let jid = |s: &str| Jid::parse(s).unwrap();
        assert!(s.may_upload(&config, &jid("alice@example.org/phone")));
        assert!(!s.may_upload(&config, &jid("mallory@elsewhere.net/x")));
        assert!(!s.may_upload(&config, &jid("example.org")));
        let denied = UploadSettings {
            access: Some("none".into()),
            ..s
        };
        assert!(!denied.may_upload(&config, &jid("alice@example.org/phone")));
    }

    #[test]
    fn too_large_error_carries_the_limit() {
        let iq = Stanza::new(
            element("iq", "jabber:client", &[("type", "get"), ("id", "1")]),
            Jid::parse("alice@example.org/r").unwrap(),
            Jid::parse("upload.example.org").unwrap(),
        )
        .unwrap();
        let refusal = Refusal {
            error: StanzaError::new(StanzaErrorCondition::NotAcceptable),
            too_large: Some(Some(10)),
        };
        let reply = error_reply(&iq, &refusal).unwrap();
        let error = reply
            .element()
            .children()
            .find(|c| c.name() == "error")
            .unwrap();
        assert!(error.has_child("not-acceptable", ns::STANZAS));
        let too_large = error.get_child("file-too-large", NS).unwrap();
        assert_eq!(
            too_large.get_child("max-file-size", NS).unwrap().text(),
            "10"
        );
    }
}
