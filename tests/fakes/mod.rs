//! Fake cloud provider APIs for the integration tests: real HTTP servers on loopback that speak
//! the provider's wire protocol and check request signatures with their own verifier.

#![allow(dead_code)] // each test binary uses a different part of this module

pub mod exoscale;
pub mod outscale;
pub mod yandex;

use std::net::SocketAddr;
use std::sync::Mutex;

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
