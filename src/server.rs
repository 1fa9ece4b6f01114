//! The operator's own HTTP endpoints, on a port of their own: `/healthz` (the process serves),
//! `/readyz` (caches synced and leading, or a standby waiting for the lease), `/metrics`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::registry::Registry;

/// What `/readyz` reports.
#[derive(Debug, Default)]
pub struct Health {
    /// The controllers' caches are synced (this replica is the leader, or runs alone).
    pub synced: AtomicBool,
    /// This replica waits for the lease: ready to take over.
    pub standby: AtomicBool,
}

impl Health {
    pub fn is_ready(&self) -> bool {
        self.synced.load(Ordering::Relaxed) || self.standby.load(Ordering::Relaxed)
    }
}

struct AppState {
    health: Arc<Health>,
    registry: Registry,
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    if state.health.is_ready() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
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
