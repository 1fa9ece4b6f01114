//! The operator's own HTTP endpoints, on a port of their own: `/healthz` (liveness: nothing is
//! stuck), `/readyz` (leading with caches synced and watches working, or a standby waiting for
//! the lease), `/metrics`. What they mean is decided in `health`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::registry::Registry;

pub use crate::health::Health;

struct AppState {
    health: Arc<Health>,
    registry: Registry,
}

async fn healthz(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    match state.health.stalled() {
        None => (StatusCode::OK, "ok".to_string()),
        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("stalled: {why}")),
    }
}

async fn readyz(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    match state.health.not_ready() {
        None => (StatusCode::OK, "ready".to_string()),
        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}")),
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let body = crate::metrics::encode(&state.registry);
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body)
}

/// Binds `address` and serves until the process ends. Returns the bound address (port 0 picks one).
pub async fn serve(address: SocketAddr, health: Arc<Health>, registry: Registry) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(address).await?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(Arc::new(AppState { health, registry }));
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics server stopped");
        }
    });
    Ok(bound)
}
