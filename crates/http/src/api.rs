//! The admin HTTP API (`mod_http_api`): `POST PATH/<command>` runs a command of the shared
//! registry (`starling_commands`), the same ones `starlingctl` runs (STYLE.md item 10).
//!
//! As in ejabberd's `mod_http_api`, the body is a JSON object whose keys are the command's
//! argument names (`{"user": "alice", "host": "example.org", "password": "s3cret"}`). A
//! successful call answers 200 with the result as JSON: `0` for commands without output, a
//! string, an array of strings or a number. Failures answer a JSON object
//! `{"status": "error", "code": CODE, "message": TEXT}` (plus `"argument"` when one argument is
//! to blame):
//!
//! | status | code | when |
//! |---|---|---|
//! | 401 | `unauthorized` | no or wrong credentials |
//! | 403 | `forbidden` | authenticated, but the access rule denies |
//! | 400 | `unknown_command`, `bad_argument`, `bad_request` | no such command; an argument missing, unknown or of the wrong type; a body that is not a JSON object |
//! | 404 | `not_found` | the account, host or session named does not exist |
//! | 409 | `failed` | the command ran and failed (conflict, invalid value, node stopping) |
//! | 500 | `internal` | storage down, internal error |
//!
//! **Authentication**, from the `Authorization` header:
//! - `Bearer TOKEN`, where TOKEN is one of `mod_http_api`'s `tokens` (compared in constant
//!   time). A token may call every command.
//! - `Basic` with an account's bare JID and password, verified against the stored SCRAM keys
//!   (PBKDF2 on the blocking pool). The account must then pass `mod_http_api`'s `access`
//!   rule, or, without one, belong to the `admin` ACL.
//!
//! Credentials are checked before the command name, so an anonymous caller learns nothing
//! about the registry. Options are read from the current config snapshot on each call, so a
//! reload takes effect at once.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use serde_json::{Map, Value, json};
use starling_commands::{ArgKind, CommandSpec, ErrorKind, Output, Request};
use starling_config::{AccessDecision, AccessRequest, Config, ModuleOptions};
use starling_core::Server;
use starling_xmpp::jid::BareJid;
use subtle::ConstantTimeEq;
use tower_http::limit::RequestBodyLimitLayer;

use crate::PeerAddr;

/// The module whose options configure the API.
pub const MODULE: &str = "mod_http_api";

/// Largest request body: commands take a few short strings.
pub const MAX_BODY: usize = 64 * 1024;

/// The routes of an API handler mounted at `path`.
pub fn routes(server: Arc<Server>, path: &str) -> Router {
    let route = if path == "/" {
        "/{command}".to_owned()
    } else {
        format!("{path}/{{command}}")
    };
    Router::new()
        .route(&route, post(call))
        .layer(RequestBodyLimitLayer::new(MAX_BODY))
        .with_state(server)
}

/// A JSON error response.
pub fn error(status: StatusCode, code: &str, message: impl Into<String>) -> ApiError {
    ApiError {
        status,
        code: code.to_owned(),
        message: message.into(),
        argument: None,
    }
}

/// A refused or failed call, rendered as a JSON error object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Machine-readable code (`unauthorized`, `bad_argument`...).
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
    /// The argument to blame, if any.
    pub argument: Option<String>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({"status": "error", "code": self.code, "message": self.message});
        if let (Some(arg), Some(obj)) = (self.argument, body.as_object_mut()) {
            obj.insert("argument".into(), Value::String(arg));
        }
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"starling\", Bearer realm=\"starling\""),
            );
        }
        response
    }
}

async fn call(
    State(server): State<Arc<Server>>,
    Path(command): Path<String>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match run(&server, &command, peer, &headers, &body).await {
        Ok(output) => (StatusCode::OK, Json(output_json(output))).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn run(
    server: &Arc<Server>,
    command: &str,
    peer: SocketAddr,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Output, ApiError> {
    let config = server.config();
    let caller = authenticate(server, &config, headers).await?;
    if let Caller::Account(user) = &caller
        && !authorised(&config, user, peer)
    {
        tracing::info!(%peer, %user, command, "API call refused by the access rule");
        return Err(error(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("{user} may not use the API"),
        ));
    }
    let Some(spec) = starling_commands::find(command) else {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "unknown_command",
            starling_commands::spec::unknown_command_message(command),
        ));
    };
    let args = arguments(spec, body)?;
    tracing::info!(%peer, caller = %caller, command = spec.name, "API call");
    let request = Request {
        command: spec.name.to_owned(),
        args,
    };
    match starling_commands::exec::execute(server, &request).await {
        starling_commands::Response::Ok(output) => Ok(output),
        starling_commands::Response::Err { kind, message } => {
            let (status, code) = match kind {
                ErrorKind::UnknownCommand => (StatusCode::BAD_REQUEST, "unknown_command"),
                ErrorKind::Usage => (StatusCode::BAD_REQUEST, "bad_argument"),
                ErrorKind::NotFound => (StatusCode::NOT_FOUND, "not_found"),
                ErrorKind::Failed => (StatusCode::CONFLICT, "failed"),
                ErrorKind::Denied => (StatusCode::FORBIDDEN, "forbidden"),
                _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            };
            Err(error(status, code, message))
        }
    }
}

/// Who is calling.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Caller {
    /// A configured bearer token.
    Token,
    /// An account that proved its password.
    Account(BareJid),
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Token => f.write_str("bearer token"),
            Self::Account(jid) => write!(f, "{jid}"),
        }
    }
}

/// `mod_http_api`'s options: the top-level module list first, then any host's.
fn options(config: &Config) -> Option<&ModuleOptions> {
    config
        .modules
        .iter()
        .chain(config.host_modules.values().flatten())
        .find(|m| m.name == MODULE)
        .map(|m| &m.options)
}

fn unauthorized(message: &str) -> ApiError {
    error(StatusCode::UNAUTHORIZED, "unauthorized", message)
}

async fn authenticate(
    server: &Server,
    config: &Config,
    headers: &HeaderMap,
) -> Result<Caller, ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(unauthorized("credentials required"));
    };
    let value = value
        .to_str()
        .map_err(|_| unauthorized("malformed Authorization header"))?;
    let (scheme, credentials) = value.trim().split_once(' ').unwrap_or((value, ""));
    let credentials = credentials.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        let tokens = options(config)
            .and_then(|o| o.strings("tokens"))
            .unwrap_or_default();
        // Check every token so the time taken does not tell which one came close.
        let matched = tokens.iter().fold(false, |found, t| {
            found | bool::from(t.as_bytes().ct_eq(credentials.as_bytes()))
        });
        return if matched && !credentials.is_empty() {
            Ok(Caller::Token)
        } else {
            Err(unauthorized("invalid token"))
        };
    }
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(unauthorized("use Basic or Bearer authentication"));
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(credentials)
        .ok()
        .and_then(|d| String::from_utf8(d).ok())
        .ok_or_else(|| unauthorized("malformed Basic credentials"))?;
    let (jid, password) = decoded
        .split_once(':')
        .ok_or_else(|| unauthorized("malformed Basic credentials"))?;
    let wrong = || unauthorized("wrong JID or password");
    let user = BareJid::parse(jid).map_err(|_| wrong())?;
    if user.node().is_none() || !server.is_local(user.domain()) {
        return Err(wrong());
    }
    let stored = match server.stores().credentials(&user).await {
        Ok(Some(c)) => c,
        Ok(None) => return Err(wrong()),
        Err(e) => {
            tracing::error!(error = %e, "cannot load credentials");
            return Err(error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "cannot check credentials",
            ));
        }
    };
    // PBKDF2 is deliberately slow: keep it off the async workers.
    let password = password.to_owned();
    let ok = tokio::task::spawn_blocking(move || stored.verify_plain(&password))
        .await
        .unwrap_or(false);
    if ok {
        Ok(Caller::Account(user))
    } else {
        tracing::info!(%user, "API authentication failed");
        Err(wrong())
    }
}

/// Whether `user`, calling from `peer`, passes `mod_http_api`'s access rule (by default,
/// membership of the `admin` ACL).
fn authorised(config: &Config, user: &BareJid, peer: SocketAddr) -> bool {
    let req = AccessRequest {
        user: user.node().map(|node| (node, user.domain())),
        resource: None,
        ip: Some(peer.ip()),
    };
    match options(config).and_then(|o| o.string("access")) {
        Some(rule) => config.access(rule, &req) == AccessDecision::Allow,
        None => config.acl.matches("admin", &req),
    }
}

fn bad_argument(arg: &str, message: impl Into<String>) -> ApiError {
    ApiError {
        argument: Some(arg.to_owned()),
        ..error(StatusCode::BAD_REQUEST, "bad_argument", message)
    }
}

/// The positional arguments of `spec` from a JSON object body keyed by argument name. An empty
/// body is an empty object (commands without arguments).
pub fn arguments(spec: &CommandSpec, body: &[u8]) -> Result<Vec<String>, ApiError> {
    let object = if body.iter().all(u8::is_ascii_whitespace) {
        Map::new()
    } else {
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(o)) => o,
            Ok(_) => {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "the body must be a JSON object of argument names to values",
                ));
            }
            Err(e) => {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!("the body is not valid JSON: {e}"),
                ));
            }
        }
    };
    if let Some(unknown) = object
        .keys()
        .find(|k| !spec.args.iter().any(|a| a.name == k.as_str()))
    {
        let expected: Vec<&str> = spec.args.iter().map(|a| a.name).collect();
        return Err(bad_argument(
            unknown,
            format!(
                "{} has no argument {unknown:?} (arguments: {})",
                spec.name,
                if expected.is_empty() {
                    "none".to_owned()
                } else {
                    expected.join(", ")
                }
            ),
        ));
    }
    let mut args = Vec::with_capacity(spec.args.len());
    let mut skipped: Option<&str> = None;
    for arg in spec.args {
        let Some(value) = object.get(arg.name) else {
            if !arg.optional {
                return Err(bad_argument(
                    arg.name,
                    format!("{} needs the argument {:?}", spec.name, arg.name),
                ));
            }
            skipped.get_or_insert(arg.name);
            continue;
        };
        if let Some(gap) = skipped {
            // Arguments are positional underneath: a later optional one needs the earlier.
            return Err(bad_argument(
                gap,
                format!("{:?} is needed when {:?} is given", gap, arg.name),
            ));
        }
        let text = match (arg.kind, value) {
            (ArgKind::String, Value::String(s)) => s.clone(),
            (ArgKind::Integer, Value::Number(n)) if n.is_i64() => n.to_string(),
            (ArgKind::Integer, Value::String(s)) if s.trim().parse::<i64>().is_ok() => {
                s.trim().to_owned()
            }
            (ArgKind::String, _) => {
                return Err(bad_argument(
                    arg.name,
                    format!("argument {:?} must be a string", arg.name),
                ));
            }
            (ArgKind::Integer, _) => {
                return Err(bad_argument(
                    arg.name,
                    format!("argument {:?} must be an integer", arg.name),
                ));
            }
        };
        args.push(text);
    }
    Ok(args)
}

/// A command's output as JSON, as ejabberd's API renders it.
pub fn output_json(output: Output) -> Value {
    match output {
        Output::Nothing => json!(0),
        Output::Text(t) => Value::String(t),
        Output::List(items) => Value::Array(items.into_iter().map(Value::String).collect()),
        Output::Number(n) => json!(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str) -> &'static CommandSpec {
        starling_commands::find(name).unwrap()
    }

    #[test]
    fn arguments_by_name_in_spec_order() {
        let args = arguments(
            spec("register"),
            br#"{"password": "p", "host": "example.org", "user": "alice"}"#,
        )
        .unwrap();
        assert_eq!(args, vec!["alice", "example.org", "p"]);
        assert_eq!(
            arguments(spec("status"), b"").unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(
            arguments(spec("status"), b" {} ").unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(
            arguments(spec("help"), b"{}").unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(
            arguments(spec("help"), br#"{"command": "stop"}"#).unwrap(),
            vec!["stop"]
        );
    }

    #[test]
    fn bad_arguments_are_named() {
        let e = arguments(spec("register"), br#"{"user": "a", "host": "h"}"#).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.code, "bad_argument");
        assert_eq!(e.argument.as_deref(), Some("password"));

        let e = arguments(
            spec("register"),
            br#"{"user": "a", "host": "h", "password": "p", "pasword": "p"}"#,
        )
        .unwrap_err();
        assert_eq!(e.argument.as_deref(), Some("pasword"));
        assert!(e.message.contains("user, host, password"), "{}", e.message);

        let e = arguments(
            spec("register"),
            br#"{"user": 5, "host": "h", "password": "p"}"#,
        )
        .unwrap_err();
        assert_eq!(e.argument.as_deref(), Some("user"));

        let e = arguments(spec("status"), br#"{"x": 1}"#).unwrap_err();
        assert_eq!(e.argument.as_deref(), Some("x"));
        assert!(e.message.contains("none"), "{}", e.message);
    }

    #[test]
    fn bodies_that_are_not_objects() {
        for body in [&b"[1]"[..], b"\"x\"", b"{", b"\xff"] {
            let e = arguments(spec("status"), body).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
            assert_eq!(e.code, "bad_request");
            assert_eq!(e.argument, None);
        }
    }

    #[test]
    fn outputs_as_json() {
        assert_eq!(output_json(Output::Nothing), json!(0));
        assert_eq!(output_json(Output::Text("hi".into())), json!("hi"));
        assert_eq!(
            output_json(Output::List(vec!["a".into(), "b".into()])),
            json!(["a", "b"])
        );
        assert_eq!(output_json(Output::Number(3)), json!(3));
    }

    #[test]
    fn errors_render_as_json_with_a_challenge_on_401() {
        let response = unauthorized("credentials required").into_response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert!(response.headers().contains_key(header::WWW_AUTHENTICATE));
        let response = bad_argument("user", "x").into_response();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert!(!response.headers().contains_key(header::WWW_AUTHENTICATE));
    }
}
