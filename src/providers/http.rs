//! The one HTTP layer every provider uses: rustls, timeouts, a per-issuer rate limit, and
//! retries with jittered exponential backoff that honour `Retry-After`.
//!
//! A tenant's KeyIssuer may point the operator at any server its endpoint guard admits, so every
//! answer is treated as hostile: a delay it asks for is clamped to [`MAX_PROVIDER_DELAY`], and
//! at most [`ERROR_BODY_LIMIT`] of an error answer and [`BODY_LIMIT`] of any other is read.
//!
//! Requests are rebuilt (and so re-signed) for every attempt, because signatures carry
//! timestamps. A request that may create something is retried only when the provider cannot
//! have acted on it (connection refused, 429); otherwise the error goes back to the controller,
//! which finds what was created by its ownership marker.

use std::num::NonZeroU32;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use rand::Rng;
use reqwest::header::{HeaderMap, RETRY_AFTER};

use super::error::{ErrorKind, ProviderError};

/// The most of an error answer that is read. Every provider's error document fits many times
/// over; what comes after is never downloaded, so an endless body costs nothing.
pub const ERROR_BODY_LIMIT: usize = 64 * 1024;
/// The most of a successful answer that is read: a listing of every key of a large account fits
/// many times over. A longer answer is an error, and is not read further.
pub const BODY_LIMIT: usize = 8 * 1024 * 1024;
/// The longest wait a provider may ask for (`Retry-After`, a body's `retry-after`): the
/// controller's backoff ceiling for provider errors. Asking for more waits this long.
pub const MAX_PROVIDER_DELAY: Duration = Duration::from_secs(300);

/// A delay in seconds as a provider states it, clamped to [`MAX_PROVIDER_DELAY`]; `None` for a
/// value that is no delay at all (negative, not a number).
pub fn provider_delay(seconds: f64) -> Option<Duration> {
    if seconds.is_nan() || seconds < 0.0 {
        return None;
    }
    let clamped = seconds.min(MAX_PROVIDER_DELAY.as_secs_f64());
    Some(Duration::try_from_secs_f64(clamped).unwrap_or(MAX_PROVIDER_DELAY))
}

#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// The provider's name, for metrics.
    pub provider: &'static str,
    /// Sustained requests per second to one issuer's account (`spec.rateLimit`).
    pub requests_per_second: u32,
    /// Requests that may go at once after a quiet spell.
    pub burst: u32,
    /// Retries after the first attempt, for retryable failures.
    pub max_retries: u32,
    pub base_backoff: Duration,
    pub max_backoff: Duration,
    /// Whole-request timeout.
    pub timeout: Duration,
    pub connect_timeout: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            provider: "unknown",
            requests_per_second: 5,
            burst: 5,
            max_retries: 3,
            base_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(10),
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// Whether repeating a request can create a second resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idempotency {
    Idempotent,
    /// Creates something: repeated only when the provider surely did not act on it.
    Creates,
}

/// A response with a 2xx status (other statuses become `ProviderError`s). Its body may hold a
/// fresh secret, so `Debug` leaves the body out.
pub struct Response {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Response").field("status", &self.status).field("body_bytes", &self.body.len()).finish()
    }
}

impl Response {
    pub fn json<T: serde::de::DeserializeOwned>(&self, operation: &str) -> Result<T, ProviderError> {
        serde_json::from_slice(&self.body).map_err(|e| {
            // The body may hold a secret, and serde's message may quote the value it did not
            // expect: only the kind of error and its position are shown.
            let what = match e.classify() {
                serde_json::error::Category::Io => "unreadable",
                serde_json::error::Category::Syntax | serde_json::error::Category::Eof => "not valid JSON",
                serde_json::error::Category::Data => "not of the expected shape",
            };
            let message = format!("unexpected response body: {what} (line {}, column {})", e.line(), e.column());
            ProviderError::retryable(operation, message).with_status(self.status)
        })
    }
}

/// A non-2xx answer, handed to the provider's classifier.
pub struct ErrorResponse<'a> {
    pub status: u16,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
}

pub struct Http {
    client: reqwest::Client,
    limiter: DefaultDirectRateLimiter,
    config: HttpConfig,
}

impl Http {
    pub fn new(config: HttpConfig) -> Result<Self, ProviderError> {
        let client = reqwest::Client::builder()
            .user_agent(concat!("cloudkeys/", env!("CARGO_PKG_VERSION")))
            .timeout(config.timeout)
            .connect_timeout(config.connect_timeout)
            // A redirect would carry signed headers to another host.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| ProviderError::permanent("http-client", format!("cannot build HTTP client: {e}")))?;
        let rps = NonZeroU32::new(config.requests_per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(config.burst).unwrap_or(NonZeroU32::MIN);
        let limiter = RateLimiter::direct(Quota::per_second(rps).allow_burst(burst));
        Ok(Self { client, limiter, config })
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// Sends a request built by `build` (called again for each attempt), mapping non-2xx
    /// answers through `classify` into the provider's own error type (which may carry more than
    /// a [`ProviderError`], such as the codes of the answer).
    pub async fn send<B, C, E>(
        &self,
        operation: &str,
        idempotency: Idempotency,
        build: B,
        classify: C,
    ) -> Result<Response, E>
    where
        B: Fn(&reqwest::Client) -> Result<reqwest::Request, ProviderError>,
        C: Fn(ErrorResponse<'_>) -> E,
        E: CallError,
    {
        let mut attempt = 0u32;
        loop {
            self.limiter.until_ready().await;
            let request = build(&self.client)?;
            let started = std::time::Instant::now();
            let result = self.client.execute(request).await;
            let status = result.as_ref().ok().map(|r| r.status().as_u16());
            crate::metrics::global().provider_call(self.config.provider, operation, status, started.elapsed());
            let (error, provider_did_not_act) = match result {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let headers = resp.headers().clone();
                    let success = (200..300).contains(&status);
                    let limit = if success { BODY_LIMIT } else { ERROR_BODY_LIMIT };
                    let body = read_prefix(resp, limit).await.map_err(|e| E::from(transport_error(operation, &e)))?;
                    if success {
                        return match body {
                            Prefix::Whole(body) => Ok(Response { status, headers, body }),
                            // Like an answer that does not parse: whatever it created is found
                            // again by its marker.
                            Prefix::Cut(_) => Err(E::from(
                                ProviderError::retryable(
                                    operation,
                                    format!("the answer is larger than {} MiB; not read", BODY_LIMIT >> 20),
                                )
                                .with_status(status),
                            )),
                        };
                    }
                    let body = body.into_bytes();
                    let mut err = classify(ErrorResponse { status, headers: &headers, body: &body });
                    let common = err.provider_error_mut();
                    if common.retry_after.is_none() {
                        common.retry_after = retry_after(&headers);
                    }
                    (err, status == 429)
                }
                Err(e) => (E::from(transport_error(operation, &e)), e.is_connect()),
            };
            let common = error.provider_error();
            let may_retry = common.kind == ErrorKind::Retryable
                && attempt < self.config.max_retries
                && (idempotency == Idempotency::Idempotent || provider_did_not_act);
            let wait = self.backoff(attempt).max(common.retry_after.unwrap_or_default());
            if !may_retry || wait > self.config.max_backoff {
                return Err(error);
            }
            tracing::debug!(operation, attempt, wait_ms = wait.as_millis() as u64, error = %error, "retrying provider call");
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }

    /// Full jitter: uniform in [0, min(max, base · 2^attempt)].
    fn backoff(&self, attempt: u32) -> Duration {
        let cap = self
            .config
            .base_backoff
            .saturating_mul(1u32.checked_shl(attempt).unwrap_or(u32::MAX))
            .min(self.config.max_backoff);
        let millis = cap.as_millis().min(u64::MAX as u128) as u64;
        Duration::from_millis(rand::rng().random_range(0..=millis))
    }
}

/// What [`Http::send`] needs of a provider's error type: the [`ProviderError`] in it (its kind
/// decides on retries, its `retry_after` on the wait).
pub trait CallError: From<ProviderError> + std::fmt::Display {
    fn provider_error(&self) -> &ProviderError;
    fn provider_error_mut(&mut self) -> &mut ProviderError;
}

impl CallError for ProviderError {
    fn provider_error(&self) -> &ProviderError {
        self
    }
    fn provider_error_mut(&mut self) -> &mut ProviderError {
        self
    }
}

fn transport_error(operation: &str, e: &reqwest::Error) -> ProviderError {
    // reqwest's Display includes the URL, never headers or bodies.
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "transport error"
    };
    ProviderError::retryable(operation, format!("{what}: {}", error_chain(e)))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// `Retry-After` in seconds, clamped to [`MAX_PROVIDER_DELAY`] (the HTTP-date form is rare for
/// APIs and ignored).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse::<f64>().ok().and_then(provider_delay)
}

/// A body as far as it was read.
enum Prefix {
    Whole(Bytes),
    /// The first `limit` bytes of a longer body; the rest was not downloaded.
    Cut(Bytes),
}

impl Prefix {
    fn into_bytes(self) -> Bytes {
        match self {
            Self::Whole(b) | Self::Cut(b) => b,
        }
    }
}

/// Reads at most `limit` bytes of a body, chunk by chunk: a longer body is cut there and the
/// connection dropped, whatever its `Content-Length` says.
async fn read_prefix(mut resp: reqwest::Response, limit: usize) -> Result<Prefix, reqwest::Error> {
    if resp.content_length().is_some_and(|n| n > limit as u64) && (200..300).contains(&resp.status().as_u16()) {
        return Ok(Prefix::Cut(Bytes::new()));
    }
    let mut body = BytesMut::new();
    while let Some(chunk) = resp.chunk().await? {
        let room = limit - body.len();
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            return Ok(Prefix::Cut(body.freeze()));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Prefix::Whole(body.freeze()))
}

/// A loopback HTTP/1.1 server that answers as a hostile endpoint would, byte for byte (no HTTP
/// library in between to tidy the answer up): `answer` gets the request line and returns the
/// raw response bytes, written in pieces of `chunk` bytes `pause` apart.
#[cfg(test)]
pub(crate) mod hostile {
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    pub type Answer = Arc<dyn Fn(&str) -> Vec<u8> + Send + Sync>;

    /// Serves until the test ends; returns `http://127.0.0.1:port`.
    pub async fn serve(answer: Answer, chunk: usize, pause: Duration) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let answer = answer.clone();
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 8192];
                    // Headers, then as much body as Content-Length says.
                    loop {
                        let Ok(n) = stream.read(&mut buf).await else { return };
                        if n == 0 {
                            return;
                        }
                        request.extend_from_slice(&buf[..n]);
                        let text = String::from_utf8_lossy(&request).to_string();
                        if let Some(end) = text.find("\r\n\r\n") {
                            let length = text[..end]
                                .lines()
                                .find_map(|l| {
                                    let (k, v) = l.split_once(':')?;
                                    k.eq_ignore_ascii_case("content-length").then(|| v.trim().parse::<usize>().ok())?
                                })
                                .unwrap_or(0);
                            if request.len() >= end + 4 + length {
                                break;
                            }
                        }
                    }
                    let text = String::from_utf8_lossy(&request).to_string();
                    let line = text.lines().next().unwrap_or_default().to_string();
                    let response = answer(&line);
                    for piece in response.chunks(chunk.max(1)) {
                        if stream.write_all(piece).await.is_err() {
                            return;
                        }
                        let _ = stream.flush().await;
                        if !pause.is_zero() {
                            tokio::time::sleep(pause).await;
                        }
                    }
                    let _ = stream.shutdown().await;
                });
            }
        });
        format!("http://{address}")
    }

    /// A whole response with `status` and a JSON `body`.
    pub fn json(status: u16, body: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_stays_within_the_cap() {
        let http = Http::new(HttpConfig::default()).expect("client builds");
        for attempt in 0..40 {
            assert!(http.backoff(attempt) <= HttpConfig::default().max_backoff);
        }
    }

    #[test]
    fn a_body_of_the_wrong_shape_is_reported_without_its_values() {
        #[derive(Debug, serde::Deserialize)]
        struct Created {
            #[allow(dead_code)]
            secret: u32,
        }
        let response = Response {
            status: 200,
            headers: HeaderMap::new(),
            body: Bytes::from_static(br#"{"secret":"s3cr3t-value"}"#),
        };
        let e = response.json::<Created>("create").expect_err("wrong type");
        assert!(!e.to_string().contains("s3cr3t"), "{e}");
        assert!(e.message.contains("not of the expected shape"), "{e}");
    }

    #[test]
    fn provider_delays_are_clamped_to_the_backoff_ceiling() {
        assert_eq!(provider_delay(1.5), Some(Duration::from_millis(1500)));
        assert_eq!(provider_delay(0.0), Some(Duration::ZERO));
        for huge in [301.0, 1e20, f64::MAX, f64::INFINITY] {
            assert_eq!(provider_delay(huge), Some(MAX_PROVIDER_DELAY), "{huge}");
        }
        for nonsense in [-1.0, f64::NEG_INFINITY, f64::NAN] {
            assert_eq!(provider_delay(nonsense), None, "{nonsense}");
        }
        let mut h = HeaderMap::new();
        for huge in ["1e20", "99999999999999999999999", "1e400"] {
            h.insert(RETRY_AFTER, huge.parse().expect("header value"));
            assert_eq!(retry_after(&h), Some(MAX_PROVIDER_DELAY), "{huge}");
        }
    }

    /// One GET of `{base}/x`, no retries.
    async fn get(config: HttpConfig, base: &str) -> Result<Response, ProviderError> {
        let http = Http::new(HttpConfig { max_retries: 0, ..config }).expect("client");
        http.send(
            "get",
            Idempotency::Idempotent,
            |c| c.get(format!("{base}/x")).build().map_err(|e| ProviderError::permanent("get", e.to_string())),
            |r| ProviderError::from_status("get", r.status, ""),
        )
        .await
    }

    // A body dripped a byte at a time, each byte well within any per-read timeout, would hold a
    // reconcile forever if only reads were timed; the whole-request timeout covers it. (The
    // answer is valid JSON: read whole, it would succeed.)
    #[tokio::test]
    async fn a_slow_drip_body_ends_at_the_request_timeout() {
        let body = "{".to_string() + &" ".repeat(200) + "}";
        let answer: hostile::Answer = std::sync::Arc::new(move |_: &str| hostile::json(200, &body));
        let base = hostile::serve(answer, 1, Duration::from_millis(20)).await;
        let config = HttpConfig { timeout: Duration::from_millis(500), ..HttpConfig::default() };
        let e = get(config, &base).await.expect_err("the drip outlasts the timeout");
        assert!(e.message.starts_with("timed out"), "{e}");
        assert_eq!(e.kind, ErrorKind::Retryable, "{e}");
    }

    // An answer with thousands of headers, or one header of a megabyte, is a transport error
    // (hyper's limits), not a crash, a stall or memory held. (Each is otherwise a valid answer.)
    #[tokio::test]
    async fn many_or_huge_headers_are_refused() {
        for head in [
            (0..5000).map(|i| format!("x-h{i}: v\r\n")).collect::<String>(),
            format!("x-big: {}\r\n", "v".repeat(1 << 20)),
        ] {
            let answer: hostile::Answer = std::sync::Arc::new(move |_: &str| {
                format!("HTTP/1.1 200 OK\r\n{head}content-length: 2\r\n\r\n{{}}").into_bytes()
            });
            let base = hostile::serve(answer, 1 << 16, Duration::ZERO).await;
            let e = get(HttpConfig::default(), &base).await.expect_err("refused");
            assert!(e.message.starts_with("transport error"), "{e}");
        }
    }

    #[test]
    fn retry_after_reads_seconds() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, "2".parse().expect("header value"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert(RETRY_AFTER, "Wed, 21 Oct 2015 07:28:00 GMT".parse().expect("header value"));
        assert_eq!(retry_after(&h), None);
    }
}
