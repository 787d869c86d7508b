//! The HTTP(S) listener (`module: ejabberd_http`): one axum router per listener, built from
//! its `request_handlers` (ejabberd's path → handler mapping), served over plain TCP or TLS.
//!
//! | handler names | what | module |
//! |---|---|---|
//! | `ejabberd_http_ws`, `websocket` | XMPP over WebSocket (RFC 7395) | [`ws`] |
//! | `mod_bosh`, `mod_http_bind`, `bosh` | BOSH (XEP-0124/0206) | [`bosh`] |
//! | `mod_http_api`, `api` | admin API, `POST PATH/<command>` | [`api`] |
//! | `mod_prometheus`, `metrics` | Prometheus metrics, `GET PATH` | [`metrics`] |
//! | `health` | load-balancer health, `GET PATH` | [`health`] |
//! | `mod_http_upload` | XEP-0363 file upload, `PUT`/`GET PATH/...` | [`upload`] |
//!
//! The names are `starling_config::HTTP_HANDLERS` (the config loader warns about any
//! other). Each handler is mounted under its path prefix and counted in
//! `starling_http_requests_total{handler,code}`. Unknown paths get a JSON 404.
//!
//! This crate never parses XMPP itself and never makes routing decisions: the API runs the
//! shared command registry (`starling_commands::exec`), WebSocket and BOSH hand stanzas to the
//! c2s session code.

#![forbid(unsafe_code)]

pub mod api;
pub mod bosh;
pub mod health;
pub mod metrics;
mod serve;
pub mod upload;
pub mod ws;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use starling_config::Listener;
use starling_core::Server;
use starling_metrics::Metrics;

pub use serve::{PeerAddr, serve};

/// What every HTTP listener of a node shares.
#[derive(Clone)]
pub struct HttpContext {
    /// The routing core.
    pub server: Arc<Server>,
    /// The node's metric families.
    pub metrics: Arc<Metrics>,
    /// Set once the node has started every listener: `/health` says `starting` until then.
    pub ready: Arc<AtomicBool>,
}

impl HttpContext {
    /// A context for `server`, not yet ready.
    pub fn new(server: Arc<Server>, metrics: Arc<Metrics>) -> Self {
        Self {
            server,
            metrics,
            ready: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Marks the node ready (called at the end of start-up).
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// Whether start-up is complete.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

/// What a handler name in `request_handlers` designates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handler {
    /// XMPP over WebSocket.
    WebSocket,
    /// BOSH.
    Bosh,
    /// The admin API.
    Api,
    /// Prometheus metrics.
    Metrics,
    /// Health for load balancers.
    Health,
    /// XEP-0363 file upload and download.
    Upload,
}

impl Handler {
    /// The handler a configured name designates; `None` for names served nowhere (yet).
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "ejabberd_http_ws" | "websocket" => Some(Self::WebSocket),
            "mod_bosh" | "mod_http_bind" | "bosh" => Some(Self::Bosh),
            "mod_http_api" | "api" => Some(Self::Api),
            "mod_prometheus" | "metrics" => Some(Self::Metrics),
            "health" => Some(Self::Health),
            "mod_http_upload" => Some(Self::Upload),
            _ => None,
        }
    }
}

/// Builds the router of `listener`: each configured handler mounted under its path.
///
/// Paths the router cannot take (characters outside `[A-Za-z0-9/._~-]`, or a prefix of
/// another handler's path, which would make the routes ambiguous) are skipped with a warning
/// rather than panicking in axum's route table.
pub fn router(ctx: &HttpContext, listener: &Listener) -> Router {
    let mut app = Router::new();
    let paths: Vec<String> = listener
        .request_handlers
        .iter()
        .map(|(p, _)| normalise(p))
        .collect();
    for ((raw, name), path) in listener.request_handlers.iter().zip(&paths) {
        if let Err(why) = check_path(path, &paths) {
            tracing::warn!(path = %raw, handler = %name, "{why}; handler not mounted");
            continue;
        }
        let Some(handler) = Handler::from_name(name) else {
            tracing::warn!(path = %raw, handler = %name, "HTTP handler not supported; path not served");
            continue;
        };
        let routes = match handler {
            Handler::WebSocket => mount(ws::routes(ctx.server.clone(), listener), path),
            Handler::Bosh => mount(bosh::routes(ctx.server.clone(), listener), path),
            Handler::Api => api::routes(ctx.server.clone(), path),
            Handler::Metrics => metrics::routes(ctx.metrics.clone(), path),
            Handler::Health => health::routes(ctx.clone(), path),
            Handler::Upload => mount(upload::routes(ctx.server.clone()), path),
        };
        let label = Label {
            metrics: ctx.metrics.clone(),
            handler: name.clone(),
        };
        app = app.merge(routes.layer(middleware::from_fn_with_state(label, count)));
    }
    app.fallback(not_found)
        .layer(tower_http::trace::TraceLayer::new_for_http())
}

/// Mounts a sub-router (its routes relative to the prefix) at `path`.
fn mount(routes: Router, path: &str) -> Router {
    if path == "/" {
        // axum refuses to nest at the root; there the routes are already absolute.
        routes
    } else {
        Router::new().nest(path, routes)
    }
}

/// `/api/` → `/api`; the root stays `/`.
fn normalise(path: &str) -> String {
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() {
        "/".to_owned()
    } else {
        trimmed.to_owned()
    }
}

fn check_path(path: &str, all: &[String]) -> Result<(), String> {
    let safe = |c: char| c.is_ascii_alphanumeric() || "/._~-".contains(c);
    if !path.starts_with('/') || !path.chars().all(safe) || path.contains("//") {
        return Err(format!(
            "path {path:?} may contain only letters, digits and / . _ ~ -"
        ));
    }
    let nested_in = |outer: &str| outer == "/" || path.starts_with(&format!("{outer}/"));
    if let Some(outer) = all.iter().find(|o| o.as_str() != path && nested_in(o)) {
        return Err(format!("path {path:?} lies under {outer:?}"));
    }
    if all.iter().filter(|o| o.as_str() == path).count() > 1 {
        return Err(format!("path {path:?} is listed more than once"));
    }
    Ok(())
}

#[derive(Clone)]
struct Label {
    metrics: Arc<Metrics>,
    handler: String,
}

async fn count(State(label): State<Label>, request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    label
        .metrics
        .http_request(&label.handler, response.status().as_u16());
    response
}

async fn not_found() -> Response {
    api::error(
        StatusCode::NOT_FOUND,
        "not_found",
        "no handler at this path",
    )
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handler_names() {
        assert_eq!(
            Handler::from_name("ejabberd_http_ws"),
            Some(Handler::WebSocket)
        );
        assert_eq!(Handler::from_name("mod_bosh"), Some(Handler::Bosh));
        assert_eq!(Handler::from_name("mod_http_api"), Some(Handler::Api));
        assert_eq!(Handler::from_name("mod_prometheus"), Some(Handler::Metrics));
        assert_eq!(Handler::from_name("health"), Some(Handler::Health));
        assert_eq!(Handler::from_name("mod_http_upload"), Some(Handler::Upload));
        assert_eq!(Handler::from_name("mod_http_fileserver"), None);
        for name in starling_config::HTTP_HANDLERS {
            // Every name the config accepts without a warning is served.
            assert!(Handler::from_name(name).is_some(), "{name}");
        }
    }

    #[test]
    fn paths_are_checked_before_axum_sees_them() {
        let all: Vec<String> = ["/api", "/api/v2", "/ws", "/"]
            .iter()
            .map(|p| normalise(p))
            .collect();
        assert_eq!(normalise("/api/"), "/api");
        assert_eq!(normalise("/"), "/");
        assert!(check_path("/ws", &["/ws".into(), "/bosh".into()]).is_ok());
        assert!(check_path("/api/v2", &all).is_err());
        assert!(check_path("/ws", &all).is_err(), "under the root handler");
        assert!(check_path("/a{b}", &["/a{b}".into()]).is_err());
        assert!(check_path("/a//b", &["/a//b".into()]).is_err());
        assert!(check_path("/x", &["/x".into(), "/x".into()]).is_err());
        assert!(check_path("/apix", &["/api".into(), "/apix".into()]).is_ok());
    }
}
