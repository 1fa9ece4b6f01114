//! Fake cloud provider APIs for the integration tests: real HTTP servers on loopback that speak
//! the provider's wire protocol and check request signatures with their own verifier.

#![allow(dead_code)] // each test binary uses a different part of this module

pub mod exoscale;
pub mod outscale;
pub mod yandex;

use std::net::SocketAddr;
use std::sync::Mutex;

use axum::http::{header::CONTENT_TYPE, request::Parts, StatusCode};
use axum::response::{IntoResponse, Response};

/// Credential material echoed by any fake in this process: the signature or bearer token of
/// every Authorization header, and every `jwt` in a body.
static ECHOED: Mutex<Vec<String>> = Mutex::new(Vec::new());

pub fn echoed_credentials() -> Vec<String> {
    ECHOED.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Checks what a provider error shows against the credentials echoed since `since` (how many
/// had been echoed before the call that failed): there must be some, and none may show.
pub fn assert_no_echoed_credential(shown: &str, since: usize) {
    let echoed = echoed_credentials();
    assert!(echoed.len() > since, "the fake echoed the request");
    for secret in &echoed[since..] {
        assert!(!shown.contains(secret.as_str()), "{shown:?} shows {secret:?}");
    }
}

fn remember_credentials(parts: &Parts, body: &[u8]) {
    let mut found: Vec<String> = Vec::new();
    if let Some(value) = parts.headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let value = value.trim();
        match value.strip_prefix("Bearer ") {
            Some(token) => found.push(token.to_owned()),
            None => {
                let lower = value.to_ascii_lowercase();
                if let Some(at) = lower.find("signature=") {
                    let rest = &value[at + "signature=".len()..];
                    found.push(rest.split([',', ' ']).next().unwrap_or(rest).to_owned());
                }
            }
        }
    }
    if let Ok(serde_json::Value::Object(fields)) = serde_json::from_slice::<serde_json::Value>(body) {
        found.extend(fields.get("jwt").and_then(|j| j.as_str()).map(String::from));
    }
    ECHOED.lock().unwrap_or_else(|p| p.into_inner()).extend(found);
}

/// How an error page of a misconfigured proxy in front of the API echoes the request it got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Echo {
    /// A plain-text page: request line, every header (Authorization included), then the body.
    Text,
    /// The same text as the `message` of a JSON error body shaped like the provider's own
    /// (`{"code": 3, "message": …}` for Yandex, `{"message": …}` elsewhere).
    Json,
}

/// A 400 whose body holds the whole request, as [`Echo`] says. Clients must never show any of
/// it to users.
pub fn echoed_request(echo: Echo, parts: &Parts, body: &[u8]) -> Response {
    remember_credentials(parts, body);
    let mut text = format!("proxy refused the request\n{} {}\n", parts.method, parts.uri);
    for (name, value) in &parts.headers {
        text.push_str(&format!("{name}: {}\n", String::from_utf8_lossy(value.as_bytes())));
    }
    text.push('\n');
    text.push_str(&String::from_utf8_lossy(body));
    match echo {
        Echo::Text => (StatusCode::BAD_REQUEST, [(CONTENT_TYPE, "text/plain")], text).into_response(),
        Echo::Json => {
            let body = serde_json::json!({"code": 3, "message": text, "error": text}).to_string();
            (StatusCode::BAD_REQUEST, [(CONTENT_TYPE, "application/json")], body).into_response()
        }
    }
}

/// A fake's HTTP server on `127.0.0.1:<free port>`, on an OS thread with a runtime of its own,
/// so that it outlives any one `#[tokio::test]` runtime and keeps serving while operator
/// processes come and go. Dropping it stops the server.
pub struct Server {
    pub addr: SocketAddr,
    shutdown: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
}

impl Server {
    pub fn start(name: &str, app: axum::Router) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        listener.set_nonblocking(true).expect("non-blocking listener");
        let addr = listener.local_addr().expect("listener address");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let label = format!("{name} fake");
        std::thread::Builder::new()
            .name(format!("{name}-fake-{}", addr.port()))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("fake runtime");
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                    tokio::select! {
                        result = axum::serve(listener, app) => {
                            if let Err(e) = result {
                                eprintln!("{label} stopped: {e}");
                            }
                        }
                        _ = rx => {}
                    }
                });
                // Requests held open on purpose (unanswered creates) are dropped with the runtime.
                runtime.shutdown_background();
            })
            .expect("spawn the fake's thread");
        Self { addr, shutdown: Mutex::new(Some(tx)) }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let sender = self.shutdown.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(tx) = sender {
            let _ = tx.send(());
        }
    }
}
