//! The operator's own HTTP endpoints, on a port of their own: `/healthz` (liveness: nothing is
//! stuck), `/readyz` (leading with caches synced and watches working, or a standby waiting for
//! the lease), `/metrics`, and `/local/keys`: the key ids the built-in `local` provider minted,
//! live and revoked (never a secret), since its keys exist nowhere else. What the health
//! endpoints mean is decided in `health`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::registry::Registry;

pub use crate::health::Health;
use crate::providers::local::LocalStore;

struct AppState {
    health: Arc<Health>,
    registry: Registry,
    local: LocalStore,
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

async fn local_keys(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    axum::Json(state.local.key_ids())
}

/// Binds `address` and serves until the process ends. Returns the bound address (port 0 picks one).
pub async fn serve(
    address: SocketAddr,
    health: Arc<Health>,
    registry: Registry,
    local: LocalStore,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(address).await?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/local/keys", get(local_keys))
        .with_state(Arc::new(AppState { health, registry, local }));
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics server stopped");
        }
    });
    Ok(bound)
}
