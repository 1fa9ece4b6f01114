//! IAM tokens for the Yandex provider, from one of two sources:
//!
//! - a service account's authorized key (JSON with `id`, `service_account_id`, `private_key`):
//!   a PS256 JWT signed with the key is exchanged at `POST {endpoint}/iam/v1/tokens`;
//! - the instance metadata service (`GET …/computeMetadata/v1/instance/service-accounts/default/token`
//!   with `Metadata-Flavor: Google`): the node's service account, or workload identity
//!   federation; no admin key in the cluster.
//!
//! The token is cached per provider instance (one per issuer) and refreshed an hour after it
//! was obtained (Yandex recommends hourly although tokens live up to 12 h, so that permission
//! changes take effect), shortly before it expires, and at once when an API call answers 401.
//!
//! The JWT is built here with `ring` (already linked for TLS), not a JWT crate: it is three
//! base64url segments, and the tests' fake verifies it with an independent implementation.

use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use jiff::Timestamp;
use reqwest::header::{HeaderValue, ACCEPT, CONTENT_TYPE};
use ring::rand::SystemRandom;
use ring::signature::{RsaKeyPair, RSA_PSS_SHA256};
use secrecy::zeroize::Zeroizing;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;
use url::Url;

use super::api::{CreateIamToken, IamToken, MetadataToken, TOKEN_AUDIENCE};
use super::classify;
use crate::providers::error::brief;
use crate::providers::http::{Http, Idempotency};
use crate::providers::{ErrorKind, ProviderError};

/// `exp - iat` of the JWT: the most Yandex accepts.
pub const JWT_LIFETIME_SECONDS: i64 = 3600;
/// A token is refreshed once it is this old, whatever its expiry.
pub const MAX_TOKEN_AGE: Duration = Duration::from_secs(3600);
/// … or when it has this little time left (capped at half its lifetime, for short-lived ones).
pub const EXPIRY_MARGIN: Duration = Duration::from_secs(5 * 60);

const CONFIGURE: &str = "configure";
const CREATE_TOKEN: &str = "create-iam-token";
const METADATA_TOKEN: &str = "get-metadata-token";

/// The fields of an authorized key JSON the operator needs; the rest (`public_key`,
/// `created_at`, `key_algorithm`) is ignored.
#[derive(Deserialize)]
struct AuthorizedKey {
    id: String,
    service_account_id: String,
    private_key: SecretString,
}

/// Signs the JWTs of one authorized key.
pub struct JwtSigner {
    key_id: String,
    service_account_id: String,
    key_pair: RsaKeyPair,
    rng: SystemRandom,
}

impl JwtSigner {
    /// Reads an authorized key JSON as `yc iam key create` writes it. Errors never quote the
    /// JSON (it holds the private key).
    pub fn from_authorized_key(json: &SecretString) -> Result<Self, ProviderError> {
        let key: AuthorizedKey = serde_json::from_str(json.expose_secret()).map_err(|e| key_json_error(&e))?;
        let bad = |what: &str| ProviderError::auth(CONFIGURE, format!("authorized key: {what}"));
        if key.id.trim().is_empty() {
            return Err(bad("`id` is empty"));
        }
        if key.service_account_id.trim().is_empty() {
            return Err(bad("`service_account_id` is empty"));
        }
        let key_pair = rsa_key_pair(key.private_key.expose_secret()).map_err(bad)?;
        Ok(Self {
            key_id: key.id.trim().to_string(),
            service_account_id: key.service_account_id.trim().to_string(),
            key_pair,
            rng: SystemRandom::new(),
        })
    }

    #[cfg(test)]
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    #[cfg(test)]
    pub fn service_account_id(&self) -> &str {
        &self.service_account_id
    }

    /// A JWT issued at `iat` (UNIX seconds), valid for [`JWT_LIFETIME_SECONDS`].
    pub fn jwt(&self, iat: i64) -> Result<SecretString, ProviderError> {
        let header = json!({"typ": "JWT", "alg": "PS256", "kid": self.key_id});
        let claims = json!({
            "iss": self.service_account_id,
            "aud": TOKEN_AUDIENCE,
            "iat": iat,
            "exp": iat + JWT_LIFETIME_SECONDS,
        });
        let mut jwt =
            format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
        let mut signature = vec![0u8; self.key_pair.public().modulus_len()];
        self.key_pair
            .sign(&RSA_PSS_SHA256, &self.rng, jwt.as_bytes(), &mut signature)
            .map_err(|_| ProviderError::auth(CREATE_TOKEN, "cannot sign the JWT with the key"))?;
        jwt.push('.');
        jwt.push_str(&URL_SAFE_NO_PAD.encode(&signature));
        Ok(SecretString::from(jwt))
    }
}

/// A serde error about the key JSON, without the values serde may quote.
fn key_json_error(e: &serde_json::Error) -> ProviderError {
    use serde_json::error::Category;
    let text = e.to_string();
    let what = match e.classify() {
        Category::Syntax | Category::Eof | Category::Io => {
            format!("not valid JSON (line {}, column {})", e.line(), e.column())
        }
        // `missing field `id`` names only the field; other data errors may quote a value.
        Category::Data if text.starts_with("missing field") => {
            text.split(" at line").next().unwrap_or(&text).to_string()
        }
        Category::Data => "not an authorized key JSON object with string fields `id`, `service_account_id` \
             and `private_key`"
            .to_string(),
    };
    ProviderError::auth(CONFIGURE, format!("authorized key: {what}"))
}

/// The RSA key of a `private_key` field: PKCS#8 (`BEGIN PRIVATE KEY`, what Yandex issues) or
/// PKCS#1 (`BEGIN RSA PRIVATE KEY`). Text before the PEM block is skipped: newer keys start
/// with a line `PLEASE DO NOT REMOVE THIS LINE! Yandex.Cloud SA Key ID <id>`.
pub fn rsa_key_pair(pem: &str) -> Result<RsaKeyPair, &'static str> {
    let (label, der) = pem_block(pem)?;
    let parsed = match label {
        "PRIVATE KEY" => RsaKeyPair::from_pkcs8(&der),
        "RSA PRIVATE KEY" => RsaKeyPair::from_der(&der),
        _ => return Err("`private_key` is not an RSA private key (PEM PRIVATE KEY expected)"),
    };
    parsed.map_err(|_| "`private_key` is not a usable RSA key (2048 to 8192 bits)")
}

/// The label and decoded body of the first PEM block in `text`.
fn pem_block(text: &str) -> Result<(&str, Zeroizing<Vec<u8>>), &'static str> {
    const NO_BLOCK: &str = "`private_key` holds no PEM block (-----BEGIN PRIVATE KEY-----)";
    let mut lines = text.lines().map(str::trim);
    let label = lines.by_ref().find_map(|l| l.strip_prefix("-----BEGIN ")?.strip_suffix("-----")).ok_or(NO_BLOCK)?;
    let mut body = Zeroizing::new(String::new());
    let mut ended = false;
    for line in lines {
        if let Some(end) = line.strip_prefix("-----END ").and_then(|l| l.strip_suffix("-----")) {
            if end != label {
                return Err("`private_key`'s PEM block ends with another label");
            }
            ended = true;
            break;
        }
        body.push_str(line);
    }
    if !ended {
        return Err("`private_key`'s PEM block has no END line");
    }
    let der = STANDARD.decode(body.as_bytes()).map_err(|_| "`private_key`'s PEM block is not base64")?;
    Ok((label, Zeroizing::new(der)))
}

/// When a token must be replaced: an hour after it was obtained, or once it is within
/// [`EXPIRY_MARGIN`] (at most half its lifetime) of expiring.
pub fn needs_refresh(obtained_at: Timestamp, expires_at: Timestamp, now: Timestamp) -> bool {
    let lifetime = expires_at.duration_since(obtained_at).unsigned_abs();
    let margin = EXPIRY_MARGIN.min(lifetime / 2);
    let age = now.duration_since(obtained_at);
    let left = expires_at.duration_since(now);
    age.is_negative() // the clock went back: start afresh
        || age.unsigned_abs() >= MAX_TOKEN_AGE
        || left.is_negative()
        || left.unsigned_abs() <= margin
}

/// Where tokens come from.
pub enum TokenSource {
    /// Boxed: the key pair is large, and the enum lives once per issuer anyway.
    AuthorizedKey {
        signer: Box<JwtSigner>,
        token_url: Url,
    },
    Metadata {
        token_url: Url,
    },
}

/// A token handed to one API call; `generation` says which cached token it was, so that a 401
/// drops that token and not a fresher one another call fetched meanwhile.
pub struct Token {
    pub value: SecretString,
    pub generation: u64,
}

struct Cached {
    value: SecretString,
    obtained_at: Timestamp,
    expires_at: Timestamp,
    generation: u64,
}

#[derive(Default)]
struct CacheState {
    token: Option<Cached>,
    generations: u64,
}

pub struct TokenCache {
    source: TokenSource,
    /// A tokio mutex: held across the token request, so concurrent calls wait for one refresh
    /// instead of each minting a token.
    state: tokio::sync::Mutex<CacheState>,
}

impl TokenCache {
    pub fn new(source: TokenSource) -> Self {
        Self { source, state: tokio::sync::Mutex::new(CacheState::default()) }
    }

    #[cfg(test)]
    pub fn source(&self) -> &TokenSource {
        &self.source
    }

    /// The cached token, or a new one when it is due for refresh.
    pub async fn token(&self, http: &Http) -> Result<Token, ProviderError> {
        let mut state = self.state.lock().await;
        if let Some(t) = &state.token {
            if !needs_refresh(t.obtained_at, t.expires_at, Timestamp::now()) {
                return Ok(Token { value: t.value.clone(), generation: t.generation });
            }
        }
        let obtained_at = Timestamp::now();
        let (value, expires_at) = self.fetch(http, obtained_at).await?;
        state.generations += 1;
        let generation = state.generations;
        tracing::debug!(
            generation,
            expires_at = %expires_at,
            source = self.source_name(),
            "obtained a Yandex IAM token"
        );
        // A token that is due for refresh at once (a very short lifetime, a skewed clock) is
        // still used for this call: refusing it would only loop.
        state.token = Some(Cached { value: value.clone(), obtained_at, expires_at, generation });
        Ok(Token { value, generation })
    }

    /// Forgets the token of `generation` (refused with 401), unless it was replaced already.
    pub async fn invalidate(&self, generation: u64) {
        let mut state = self.state.lock().await;
        if state.token.as_ref().map(|t| t.generation) == Some(generation) {
            state.token = None;
        }
    }

    fn source_name(&self) -> &'static str {
        match self.source {
            TokenSource::AuthorizedKey { .. } => "authorized-key",
            TokenSource::Metadata { .. } => "metadata-service",
        }
    }

    async fn fetch(&self, http: &Http, now: Timestamp) -> Result<(SecretString, Timestamp), ProviderError> {
        match &self.source {
            TokenSource::AuthorizedKey { signer, token_url } => {
                let jwt = signer.jwt(now.as_second())?;
                let body = Zeroizing::new(
                    serde_json::to_vec(&CreateIamToken { jwt: jwt.expose_secret() })
                        .map_err(|e| ProviderError::permanent(CREATE_TOKEN, format!("cannot encode: {e}")))?,
                );
                // Minting a token twice is harmless, so the exchange is retried like a read.
                let response = http
                    .send(
                        CREATE_TOKEN,
                        Idempotency::Idempotent,
                        |client| {
                            client
                                .post(token_url.clone())
                                .header(CONTENT_TYPE, "application/json")
                                .header(ACCEPT, "application/json")
                                .body(body.to_vec())
                                .build()
                                .map_err(|e| build_error(CREATE_TOKEN, &e))
                        },
                        |r| token_refused(classify(CREATE_TOKEN, r), "the authorized key"),
                    )
                    .await?;
                let token: IamToken = response.json(CREATE_TOKEN)?;
                let expires_at = token.expires_at.parse::<Timestamp>().map_err(|_| {
                    ProviderError::retryable(
                        CREATE_TOKEN,
                        format!("unreadable expiresAt \"{}\"", brief(&token.expires_at)),
                    )
                })?;
                Ok((token.iam_token, expires_at))
            }
            TokenSource::Metadata { token_url } => {
                let flavor = HeaderValue::from_static("Google");
                let response = http
                    .send(
                        METADATA_TOKEN,
                        Idempotency::Idempotent,
                        |client| {
                            client
                                .get(token_url.clone())
                                .header("Metadata-Flavor", flavor.clone())
                                .header(ACCEPT, "application/json")
                                .build()
                                .map_err(|e| build_error(METADATA_TOKEN, &e))
                        },
                        |r| token_refused(classify(METADATA_TOKEN, r), "the metadata service"),
                    )
                    .await?;
                let token: MetadataToken = response.json(METADATA_TOKEN)?;
                let left = jiff::SignedDuration::from_secs(token.expires_in.max(0));
                let expires_at = now.checked_add(left).map_err(|_| {
                    ProviderError::retryable(METADATA_TOKEN, format!("unusable expires_in {}", token.expires_in))
                })?;
                Ok((token.access_token, expires_at))
            }
        }
    }
}

/// A token request that failed for a reason other than the network or the service's health
/// (bad JWT, unknown key, deleted service account, no service account on the node…) is about
/// the credentials: the user must fix them, so it is an `Auth` error.
fn token_refused(e: ProviderError, who: &str) -> ProviderError {
    if e.kind == ErrorKind::Retryable {
        return e;
    }
    ProviderError { kind: ErrorKind::Auth, message: format!("{who} got no IAM token: {}", e.message), ..e }
}

fn build_error(operation: &str, e: &reqwest::Error) -> ProviderError {
    ProviderError::permanent(operation, format!("cannot build the request: {e}"))
}

#[cfg(test)]
mod tests {
    use ring::signature::{KeyPair as _, UnparsedPublicKey, RSA_PSS_2048_8192_SHA256};
    use serde_json::Value;

    use super::*;

    /// A test-only key (tests/fixtures/yandex/README.md).
    const TEST_KEY: &str = include_str!("../../../tests/fixtures/yandex/admin_key.pem");
    const PREAMBLE: &str = "PLEASE DO NOT REMOVE THIS LINE! Yandex.Cloud SA Key ID ajek1\n";

    fn key_json(private_key: &str) -> SecretString {
        SecretString::from(
            json!({
                "id": "ajek1aaaaaaaaaaaaaaa",
                "service_account_id": "aje1aaaaaaaaaaaaaaaa",
                "created_at": "2026-11-22T12:00:00Z",
                "key_algorithm": "RSA_2048",
                "public_key": "-----BEGIN PUBLIC KEY-----\n…",
                "private_key": private_key,
            })
            .to_string(),
        )
    }

    fn signer() -> JwtSigner {
        JwtSigner::from_authorized_key(&key_json(&format!("{PREAMBLE}{TEST_KEY}")))
            .unwrap_or_else(|e| panic!("key loads: {e}"))
    }

    fn segment(part: &str) -> Value {
        let bytes = URL_SAFE_NO_PAD.decode(part).expect("base64url without padding");
        serde_json::from_slice(&bytes).expect("JSON segment")
    }

    #[test]
    fn a_private_key_with_the_do_not_remove_line_is_accepted() {
        let s = signer();
        assert_eq!(s.key_id(), "ajek1aaaaaaaaaaaaaaa");
        assert_eq!(s.service_account_id(), "aje1aaaaaaaaaaaaaaaa");
        // Also without the line, and with CRLF line ends.
        assert!(JwtSigner::from_authorized_key(&key_json(TEST_KEY)).is_ok());
        assert!(JwtSigner::from_authorized_key(&key_json(&TEST_KEY.replace('\n', "\r\n"))).is_ok());
    }

    #[test]
    fn broken_keys_are_auth_errors_that_quote_nothing() {
        let cases = [
            SecretString::from("not json {secret-material"),
            SecretString::from(r#""secret-material""#),
            SecretString::from(r#"{"id":"a","private_key":"secret-material"}"#),
            key_json("secret-material"),
            key_json("-----BEGIN PRIVATE KEY-----\nc2VjcmV0LW1hdGVyaWFs\n-----END PRIVATE KEY-----\n"),
            key_json("-----BEGIN PRIVATE KEY-----\n!!!\n-----END PRIVATE KEY-----\n"),
            key_json("-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n"),
            key_json("-----BEGIN CERTIFICATE-----\nc2VjcmV0\n-----END CERTIFICATE-----\n"),
        ];
        for json in cases {
            let e = JwtSigner::from_authorized_key(&json).err().expect("refused");
            assert_eq!(e.kind, ErrorKind::Auth, "{e}");
            assert!(e.message.starts_with("authorized key: "), "{e}");
            assert!(!e.to_string().contains("secret-material"), "{e}");
        }
        let e = JwtSigner::from_authorized_key(&SecretString::from(r#"{"id":"a","private_key":"x"}"#))
            .err()
            .expect("refused");
        assert_eq!(e.message, "authorized key: missing field `service_account_id`");
    }

    #[test]
    fn the_jwt_has_the_header_and_claims_yandex_asks_for_and_a_valid_pss_signature() {
        let s = signer();
        let jwt = s.jwt(1_800_000_000).expect("signs");
        let parts: Vec<&str> = jwt.expose_secret().split('.').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(segment(parts[0]), json!({"typ": "JWT", "alg": "PS256", "kid": "ajek1aaaaaaaaaaaaaaa"}));
        assert_eq!(
            segment(parts[1]),
            json!({
                "iss": "aje1aaaaaaaaaaaaaaaa",
                "aud": "https://iam.api.cloud.yandex.net/iam/v1/tokens",
                "iat": 1_800_000_000,
                "exp": 1_800_003_600,
            })
        );
        let signature = URL_SAFE_NO_PAD.decode(parts[2]).expect("base64url");
        assert_eq!(signature.len(), 256);
        let public = UnparsedPublicKey::new(&RSA_PSS_2048_8192_SHA256, s.key_pair.public_key().as_ref());
        let signed = format!("{}.{}", parts[0], parts[1]);
        assert!(public.verify(signed.as_bytes(), &signature).is_ok());
        assert!(public.verify(b"other", &signature).is_err());
    }

    fn ts(seconds: i64) -> Timestamp {
        Timestamp::from_second(seconds).expect("valid timestamp")
    }

    #[test]
    fn a_twelve_hour_token_is_refreshed_after_an_hour() {
        let obtained = ts(1_800_000_000);
        let expires = ts(1_800_000_000 + 12 * 3600);
        assert!(!needs_refresh(obtained, expires, obtained));
        assert!(!needs_refresh(obtained, expires, ts(1_800_000_000 + 3599)));
        assert!(needs_refresh(obtained, expires, ts(1_800_000_000 + 3600)));
    }

    #[test]
    fn a_token_is_refreshed_five_minutes_before_it_expires() {
        let obtained = ts(1_800_000_000);
        let expires = ts(1_800_000_000 + 1800);
        assert!(!needs_refresh(obtained, expires, ts(1_800_000_000 + 1499)));
        assert!(needs_refresh(obtained, expires, ts(1_800_000_000 + 1500)));
        assert!(needs_refresh(obtained, expires, ts(1_800_000_000 + 1800)));
        assert!(needs_refresh(obtained, expires, ts(1_800_000_000 + 9999)));
    }

    #[test]
    fn a_short_lived_token_is_used_for_half_its_life() {
        let obtained = ts(1_800_000_000);
        let expires = ts(1_800_000_010);
        assert!(!needs_refresh(obtained, expires, ts(1_800_000_004)));
        assert!(needs_refresh(obtained, expires, ts(1_800_000_005)));
    }

    #[test]
    fn a_clock_that_went_back_or_an_expired_token_forces_a_refresh() {
        let obtained = ts(1_800_000_000);
        assert!(needs_refresh(obtained, ts(1_800_043_200), ts(1_799_999_000)));
        assert!(needs_refresh(obtained, ts(1_799_999_999), obtained));
    }

    #[test]
    fn refused_token_requests_become_auth_errors_but_outages_stay_retryable() {
        let e = token_refused(
            ProviderError::permanent(CREATE_TOKEN, "INVALID_ARGUMENT: bad jwt").with_status(400),
            "the authorized key",
        );
        assert_eq!(e.kind, ErrorKind::Auth);
        assert_eq!(e.message, "the authorized key got no IAM token: INVALID_ARGUMENT: bad jwt");
        assert_eq!(e.status, Some(400));
        let e = token_refused(ProviderError::retryable(CREATE_TOKEN, "UNAVAILABLE"), "the authorized key");
        assert_eq!(e.kind, ErrorKind::Retryable);
    }
}
