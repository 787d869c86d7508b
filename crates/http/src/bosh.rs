//! BOSH (XEP-0124/0206) — placeholder until the transport lands.
//!
//! PLACEHOLDER: the WebSocket/BOSH engineer replaces this file. The contract with the
//! listener (`crate::router`): `routes` returns a router whose paths are relative to the
//! configured prefix (`/` is the prefix itself); it is nested under that prefix, and its
//! requests are counted per handler. Until then every request answers 404.

use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use starling_core::Server;

/// The routes of this transport, relative to its path prefix.
pub fn routes(server: Arc<Server>) -> Router {
    drop(server);
    Router::new().fallback(|| async { StatusCode::NOT_FOUND })
}
