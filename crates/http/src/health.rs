//! `/health` for load balancers (DESIGN.md §10): `200 ready` while the node serves,
//! `503 starting` until start-up has finished, `503 draining` once it is stopping, so a
//! balancer stops sending new clients before sessions are closed.

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use starling_core::server::NodeState;

use crate::HttpContext;

/// The routes of a `health` handler mounted at `path`.
pub fn routes(ctx: HttpContext, path: &str) -> Router {
    Router::new().route(path, get(health)).with_state(ctx)
}

/// The answer for a node in `state`, `ready` once start-up has finished.
pub fn status(state: NodeState, ready: bool) -> (StatusCode, &'static str) {
    match state {
        NodeState::Stopping => (StatusCode::SERVICE_UNAVAILABLE, "draining"),
        NodeState::Running if !ready => (StatusCode::SERVICE_UNAVAILABLE, "starting"),
        NodeState::Running => (StatusCode::OK, "ready"),
    }
}

async fn health(State(ctx): State<HttpContext>) -> impl IntoResponse {
    let (code, body) = status(ctx.server.state(), ctx.is_ready());
    (
        code,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states() {
        assert_eq!(status(NodeState::Running, true), (StatusCode::OK, "ready"));
        assert_eq!(
            status(NodeState::Running, false),
            (StatusCode::SERVICE_UNAVAILABLE, "starting")
        );
        assert_eq!(
            status(NodeState::Stopping, true),
            (StatusCode::SERVICE_UNAVAILABLE, "draining")
        );
        assert_eq!(
            status(NodeState::Stopping, false),
            (StatusCode::SERVICE_UNAVAILABLE, "draining")
        );
    }
}
