//! `GET /metrics`: the node's families in the OpenMetrics text format, which Prometheus
//! scrapes natively (the families themselves are defined in `starling-metrics`).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use starling_metrics::{CONTENT_TYPE, Metrics};

/// The routes of a metrics handler mounted at `path`.
pub fn routes(metrics: Arc<Metrics>, path: &str) -> Router {
    Router::new().route(path, get(scrape)).with_state(metrics)
}

async fn scrape(State(metrics): State<Arc<Metrics>>) -> Response {
    match metrics.encode() {
        Ok(text) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Err(_) => {
            tracing::error!("cannot encode metrics");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}
