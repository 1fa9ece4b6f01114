//! The Kubernetes client the controllers share, with a client-side rate limit
//! (`--kube-api-qps` / `--kube-api-burst`): a storm of reconciles queues here instead of
//! overloading a small control plane.

use std::future::Future;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use kube::client::ClientBuilder;
use kube::Client;
use tower::{Layer, Service};

use crate::reconcile::error::Error;

/// A client from KUBECONFIG or the in-cluster configuration, sending at most `qps` requests per
/// second after a burst of `burst`. Connecting gives up after a few seconds (kube's default is
/// 30): a watch retries sooner, and `/readyz` learns sooner, when the apiserver is unreachable.
pub async fn client(qps: u32, burst: u32) -> Result<Client, Error> {
    let mut config = kube::Config::infer().await.map_err(|e| Error::Startup(e.to_string()))?;
    config.connect_timeout = Some(crate::health::CONNECT_TIMEOUT);
    // The apiserver names the field manager of a write that names none (the finalizer patches of
    // kube's `finalizer` helper) after the user agent: `cloudkeys`, rather than `unknown`.
    config.headers.push((
        axum::http::header::USER_AGENT,
        axum::http::HeaderValue::from_static(concat!("cloudkeys/", env!("CARGO_PKG_VERSION"))),
    ));
    let builder = ClientBuilder::try_from(config).map_err(|e| Error::Startup(e.to_string()))?;
    Ok(builder.with_layer(&ApiRateLimit::new(qps, burst)).build())
}

/// A token bucket shared by every request of the client (watches count once, when they start).
#[derive(Clone)]
pub struct ApiRateLimit {
    limiter: Arc<DefaultDirectRateLimiter>,
}

impl ApiRateLimit {
    pub fn new(qps: u32, burst: u32) -> Self {
        let qps = NonZeroU32::new(qps).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        Self { limiter: Arc::new(RateLimiter::direct(Quota::per_second(qps).allow_burst(burst))) }
    }
}

impl<S> Layer<S> for ApiRateLimit {
    type Service = RateLimited<S>;

    fn layer(&self, inner: S) -> RateLimited<S> {
        RateLimited { inner, limiter: self.limiter.clone(), waiting: None, permitted: false }
    }
}

type Wait = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Ready only once the bucket has a token for the next request: kube's client queues requests
/// in front of its service, so waiting here delays them in order without holding a thread.
pub struct RateLimited<S> {
    inner: S,
    limiter: Arc<DefaultDirectRateLimiter>,
    waiting: Option<Wait>,
    permitted: bool,
}

impl<S, R> Service<R> for RateLimited<S>
where
    S: Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        if !self.permitted {
            let limiter = self.limiter.clone();
            let wait = self.waiting.get_or_insert_with(|| Box::pin(async move { limiter.until_ready().await }));
            match wait.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    self.waiting = None;
                    self.permitted = true;
                }
                Poll::Pending => return Poll::Pending,
            }
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> S::Future {
        self.permitted = false;
        self.inner.call(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Counts calls and answers at once.
    struct Echo(Arc<std::sync::atomic::AtomicU32>);

    impl Service<()> for Echo {
        type Response = ();
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<(), Self::Error>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: ()) -> Self::Future {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            std::future::ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn requests_past_the_burst_go_at_the_sustained_rate() {
        use tower::ServiceExt;
        let calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let mut service = ApiRateLimit::new(10, 5).layer(Echo(calls.clone()));
        // (The limiter keeps real time, so this takes about a second.)
        let started = std::time::Instant::now();
        for _ in 0..15 {
            service.ready().await.expect("ready").call(()).await.expect("answered");
        }
        assert_eq!(calls.load(std::sync::atomic::Ordering::Relaxed), 15);
        // Five at once, then ten at 10/s: the last cannot go before about a second.
        assert!(started.elapsed() >= Duration::from_millis(900), "{:?}", started.elapsed());
    }
}
