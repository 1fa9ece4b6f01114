use serde_json::json;

use super::*;
use crate::api::{MetadataService, SecretKeyRef, YandexKey};
use crate::providers::error::MAX_MESSAGE_CHARS;

const UID: &str = "0f8c2d7e-1b2a-4c3d-9e8f-0123456789ab";
const OTHER: &str = "11111111-2222-4333-8444-555555555555";
const TEST_KEY: &str = include_str!("../../../tests/fixtures/yandex/admin_key.pem");

fn key_json() -> SecretString {
    SecretString::from(
        json!({
            "id": "ajek1aaaaaaaaaaaaaaa",
            "service_account_id": "aje1aaaaaaaaaaaaaaaa",
            "private_key": format!("PLEASE DO NOT REMOVE THIS LINE! Yandex.Cloud SA Key ID ajek1\n{TEST_KEY}"),
        })
        .to_string(),
    )
}

fn issuer(endpoint: Option<&str>, default_sa: Option<&str>) -> YandexIssuer {
    YandexIssuer {
        service_account_key_secret_ref: Some(SecretKeyRef { name: "yc-admin".into(), key: "key.json".into() }),
        metadata_service: None,
        service_account_id: default_sa.map(String::from),
        endpoint: endpoint.map(String::from),
        operation_endpoint: None,
    }
}

fn provider(issuer: &YandexIssuer) -> YandexProvider {
    YandexProvider::new(issuer, Some(key_json()), HttpConfig::default())
        .unwrap_or_else(|e| panic!("provider builds: {e}"))
}

fn error(status: u16, body: &str, request_id: Option<&str>) -> ProviderError {
    let mut headers = HeaderMap::new();
    if let Some(id) = request_id {
        headers.insert("x-request-id", HeaderValue::from_str(id).expect("header"));
    }
    classify("create-access-key", ErrorResponse { status, headers: &headers, body: body.as_bytes() })
}

fn yandex(sa: Option<&str>, description: Option<&str>) -> KeyProvider {
    KeyProvider::Yandex(YandexKey {
        service_account_id: sa.map(String::from),
        description: description.map(String::from),
    })
}

#[test]
fn grpc_codes_decide_the_kind_of_error() {
    let cases = [
        (400, 3, ErrorKind::Permanent, "INVALID_ARGUMENT"),
        (404, 5, ErrorKind::Permanent, "NOT_FOUND"),
        (409, 6, ErrorKind::Permanent, "ALREADY_EXISTS"),
        (403, 7, ErrorKind::Auth, "PERMISSION_DENIED"),
        (429, 8, ErrorKind::Retryable, "RESOURCE_EXHAUSTED"),
        (400, 9, ErrorKind::Permanent, "FAILED_PRECONDITION"),
        (409, 10, ErrorKind::Retryable, "ABORTED"),
        (500, 13, ErrorKind::Retryable, "INTERNAL"),
        (503, 14, ErrorKind::Retryable, "UNAVAILABLE"),
        (504, 4, ErrorKind::Retryable, "DEADLINE_EXCEEDED"),
        (401, 16, ErrorKind::Auth, "UNAUTHENTICATED"),
    ];
    for (http, grpc, kind, name) in cases {
        let body = json!({"code": grpc, "message": "Something happened", "details": []});
        let e = error(http, &body.to_string(), None);
        assert_eq!(e.kind, kind, "{name}");
        assert_eq!(e.message, format!("{name}: Something happened"));
        assert_eq!(e.status, Some(http));
        assert_eq!(e.operation, "create-access-key");
    }
}

#[test]
fn the_request_id_comes_from_the_header_or_else_the_details() {
    let body = json!({"code": 16, "message": "Token is invalid or has expired.",
            "details": [{"@type": "type.googleapis.com/google.rpc.RequestInfo", "requestId": "from-body"}]});
    let e = error(401, &body.to_string(), Some("from-header"));
    assert_eq!(e.request_id.as_deref(), Some("from-header"));
    assert_eq!(e.kind, ErrorKind::Auth);
    assert!(e.to_string().contains("[request id from-header]"), "{e}");
    let e = error(401, &body.to_string(), None);
    assert_eq!(e.request_id.as_deref(), Some("from-body"));

    let mut headers = HeaderMap::new();
    headers.insert("x-server-trace-id", HeaderValue::from_static("trace-1"));
    assert_eq!(header_request_id(&headers).as_deref(), Some("trace-1"));
}

#[test]
fn bodies_without_a_grpc_status_fall_back_to_the_http_status() {
    let e = error(502, "<html>Bad Gateway</html>\n", Some("r1"));
    assert_eq!(e.kind, ErrorKind::Retryable);
    assert_eq!(e.message, "Bad Gateway", "markup is dropped");
    assert_eq!(e.request_id.as_deref(), Some("r1"));
    let e = error(403, "", None);
    assert_eq!(e.kind, ErrorKind::Auth);
    assert_eq!(e.message, "no error message");
    let e = error(404, r#"{"code":0}"#, None);
    assert!(e.is_not_found());
    assert_eq!(error(400, "x", None).kind, ErrorKind::Permanent);
}

#[test]
fn not_found_is_detected_from_the_grpc_code() {
    let e = error(400, r#"{"code":5,"message":"Access key not found"}"#, None);
    assert!(e.is_not_found());
    let e = error(500, r#"{"code":99,"message":""}"#, None);
    assert_eq!(e.kind, ErrorKind::Permanent);
    assert_eq!(e.message, "code 99");
}

#[test]
fn long_messages_are_cut() {
    let body = json!({"code": 3, "message": "é".repeat(1000)});
    let e = error(400, &body.to_string(), None);
    assert!(e.message.ends_with('…'));
    assert_eq!(e.message.chars().count(), "INVALID_ARGUMENT: ".len() + MAX_MESSAGE_CHARS + 1);
}

#[test]
fn the_description_is_the_users_then_the_marker() {
    let marker = Marker::of(UID, "abc0123456");
    assert_eq!(
        description_with_marker(Some("backups of team a"), &marker).expect("fits"),
        format!("backups of team a {marker}")
    );
    assert_eq!(description_with_marker(None, &marker).expect("fits"), marker.to_string());
    assert_eq!(description_with_marker(Some("  "), &marker).expect("fits"), marker.to_string());
}

#[test]
fn a_description_that_leaves_no_room_for_the_marker_is_refused() {
    let marker = Marker::of(UID, "abc0123456");
    let room = MAX_DESCRIPTION_CHARS - marker.to_string().len() - 1;
    assert_eq!(room, 205);
    let fits = "é".repeat(room);
    let d = description_with_marker(Some(&fits), &marker).expect("fits exactly");
    assert_eq!(d.chars().count(), MAX_DESCRIPTION_CHARS);
    let e = description_with_marker(Some(&"é".repeat(room + 1)), &marker).expect_err("one too many");
    assert_eq!(e.kind, ErrorKind::Permanent);
    assert_eq!(
        e.message,
        "spec.yandex.description is 206 characters long; Yandex allows 256 and the \
             operator appends a 51-character ownership marker, so keep it to 205"
    );
}

#[test]
fn keys_are_ours_by_the_marker_in_their_description() {
    let a1 = Marker::of(UID, "aaaaaaaaaa");
    let key = |id: &str, description: String| api::AccessKey {
        id: id.into(),
        service_account_id: "aje0".into(),
        description,
        key_id: format!("YC{id}"),
        last_used_at: None,
    };
    let keys = vec![
        key("k1", format!("rack backups {a1}")),
        key("k2", "someone else's".into()),
        key("k3", format!("ck-{OTHER}-aaaaaaaaaa")),
        key("k4", Marker::of(UID, "bbbbbbbbbb").to_string()),
    ];
    assert_eq!(
        owned_keys(UID, keys),
        vec![
            OwnedKey { access_key_id: Some("YCk1".into()), key_ref: "k1".into(), marker: a1 },
            OwnedKey {
                access_key_id: Some("YCk4".into()),
                key_ref: "k4".into(),
                marker: Marker::of(UID, "bbbbbbbbbb"),
            },
        ]
    );
}

#[test]
fn endpoints_default_to_yandex_and_paths_escape_ids() {
    let p = provider(&issuer(None, None));
    assert_eq!(p.endpoint, "https://iam.api.cloud.yandex.net");
    assert_eq!(p.template_vars(), TemplateVars::from([("endpoint", DEFAULT_ENDPOINT.to_string())]));
    assert_eq!(
        p.access_keys_url(&["aje1"]).expect("url").as_str(),
        "https://iam.api.cloud.yandex.net/iam/aws-compatibility/v1/accessKeys/aje1"
    );
    assert_eq!(p.access_keys_url(&["a/../b"]).expect("url").path(), "/iam/aws-compatibility/v1/accessKeys/a%2F..%2Fb");
    assert!(p.access_keys_url(&[".."]).is_err());
    assert_eq!(
        crate::providers::endpoint::join("test", &p.operation_base, &["operations", "op1"]).expect("url").as_str(),
        "https://operation.api.cloud.yandex.net/operations/op1"
    );
    match p.tokens.source() {
        TokenSource::AuthorizedKey { token_url, .. } => {
            assert_eq!(token_url.as_str(), "https://iam.api.cloud.yandex.net/iam/v1/tokens")
        }
        TokenSource::Metadata { .. } => panic!("authorized key expected"),
    }

    let p = provider(&issuer(Some("http://127.0.0.1:8080/prefix/"), None));
    assert_eq!(p.endpoint, "http://127.0.0.1:8080/prefix");
    assert_eq!(p.access_keys_url(&[]).expect("url").path(), "/prefix/iam/aws-compatibility/v1/accessKeys");
}

#[test]
fn the_metadata_mode_needs_no_key() {
    let mut settings = issuer(None, None);
    settings.service_account_key_secret_ref = None;
    settings.metadata_service = Some(MetadataService { endpoint: "http://169.254.169.254".into() });
    let p =
        YandexProvider::new(&settings, None, HttpConfig::default()).unwrap_or_else(|e| panic!("provider builds: {e}"));
    match p.tokens.source() {
        TokenSource::Metadata { token_url } => assert_eq!(
            token_url.as_str(),
            "http://169.254.169.254/computeMetadata/v1/instance/service-accounts/default/token"
        ),
        TokenSource::AuthorizedKey { .. } => panic!("metadata expected"),
    }
    settings.metadata_service = None;
    let e = YandexProvider::new(&settings, None, HttpConfig::default()).err().expect("no token source");
    assert_eq!(e.kind, ErrorKind::Permanent);
}

#[test]
fn bad_settings_are_refused_at_construction() {
    let e = YandexProvider::new(&issuer(Some("not a url"), None), Some(key_json()), HttpConfig::default())
        .err()
        .expect("bad endpoint");
    assert_eq!(e.kind, ErrorKind::Permanent);
    let e = YandexProvider::new(&issuer(None, None), Some(SecretString::from("{}")), HttpConfig::default())
        .err()
        .expect("bad key");
    assert_eq!(e.kind, ErrorKind::Auth);
}

#[test]
fn the_service_account_comes_from_the_key_else_the_issuer() {
    let p = provider(&issuer(None, Some("aje-default")));
    assert_eq!(p.service_account(&yandex(Some("aje-spec"), None)), Some("aje-spec"));
    assert_eq!(p.service_account(&yandex(None, None)), Some("aje-default"));
    assert_eq!(p.service_account(&yandex(Some(" "), None)), Some("aje-default"));
    let p = provider(&issuer(None, None));
    assert_eq!(p.service_account(&yandex(None, None)), None);
}

#[tokio::test]
async fn creating_without_a_service_account_is_refused_before_any_call() {
    let p = provider(&issuer(Some("http://127.0.0.1:9"), None));
    let marker = Marker::of(UID, "abc0123456");
    let spec = yandex(None, Some("d"));
    let e = p
        .create_key(&KeyRequest {
            marker: &marker,
            display_name: "team-a-backups".into(),
            spec: &spec,
            now: jiff::Timestamp::now(),
        })
        .await
        .expect_err("no service account");
    assert_eq!(e.kind, ErrorKind::Permanent);
    assert_eq!(e.message, "spec.yandex.serviceAccountId: set it, or set serviceAccountId on the issuer");
    assert_eq!(p.find_keys(UID, &spec).await.expect("nothing to list"), vec![]);
}

#[test]
fn failed_operations_report_their_status() {
    let status: Status = serde_json::from_str(r#"{"code":7,"message":"Permission denied"}"#).expect("parses");
    assert_eq!(from_status(&status), (ErrorKind::Auth, "PERMISSION_DENIED: Permission denied".to_string()));
}

/// The token exchange answered as Yandex does, anything else by `rest`.
fn hostile_yandex(rest: impl Fn(&str) -> Vec<u8> + Send + Sync + 'static) -> crate::providers::http::hostile::Answer {
    std::sync::Arc::new(move |line: &str| {
        if line.starts_with("POST /iam/v1/tokens") {
            crate::providers::http::hostile::json(200, r#"{"iamToken":"t1.abc","expiresAt":"2099-01-01T00:00:00Z"}"#)
        } else {
            rest(line)
        }
    })
}

// Each 11-byte `{"id":"a"},` would become a 120-byte `AccessKey` plus its heap strings: one
// 8 MiB page is ~760,000 keys, ~100 MB, and a listing follows up to 100 pages. A hostile or
// broken endpoint answering every drift sweep with such pages would take the operator down for
// every tenant.
#[tokio::test]
async fn a_listing_page_holds_no_more_keys_than_asked_for() {
    let entries = 200_000; // ~2 MiB of answer, a quarter of what BODY_LIMIT admits per page
    let page = format!(r#"{{"accessKeys":[{}]}}"#, vec![r#"{"id":"a"}"#; entries].join(","));
    let answer = hostile_yandex(move |_| crate::providers::http::hostile::json(200, &page));
    let base = crate::providers::http::hostile::serve(answer, 1 << 16, std::time::Duration::ZERO).await;
    let p = provider(&issuer(Some(&base), None));
    let keys = p.list_keys("aje1aaaaaaaaaaaaaaaa", PAGE_SIZE, true).await.map(|k| k.len());
    assert!(
        !matches!(keys, Ok(n) if n > PAGE_SIZE as usize),
        "one page of {keys:?} keys accepted and held in memory (pageSize {PAGE_SIZE})"
    );
    // A smaller page asked for is held to as well.
    let e = p.list_keys("aje1aaaaaaaaaaaaaaaa", 1, false).await.expect_err("a page of 200,000");
    assert_eq!(e.kind, ErrorKind::Retryable);
    assert!(e.message.contains("more than 1 access keys"), "{}", e.message);
}

// A successful answer is as much the provider's to write as an error body: its text reaches
// `status.conditions[].message`, Events and logs. Uncut, a string of up to 8 MiB would make the
// status write fail on its size, so the condition would never be updated.
#[tokio::test]
async fn text_of_a_successful_answer_is_excerpted_in_error_messages() {
    let answer: crate::providers::http::hostile::Answer = std::sync::Arc::new(|_: &str| {
        let junk = format!("authorization: Bearer s3cr3t-token {}", "x".repeat(100_000));
        crate::providers::http::hostile::json(
            200,
            &serde_json::json!({"iamToken": "t1.abc", "expiresAt": junk}).to_string(),
        )
    });
    let base = crate::providers::http::hostile::serve(answer, 1 << 16, std::time::Duration::ZERO).await;
    let p = provider(&issuer(Some(&base), None));
    let e = p.check_credentials().await.expect_err("unreadable expiresAt");
    assert!(e.message.chars().count() <= MAX_MESSAGE_CHARS + 100, "message of {} chars", e.message.chars().count());
    assert!(!e.message.contains("s3cr3t-token"), "{}", &e.message[..200]);
}

// The same through a key id other than the one asked for.
#[tokio::test]
async fn a_key_id_from_the_answer_is_excerpted_in_error_messages() {
    let answer = hostile_yandex(|_| {
        let id = format!("password=hunter2 {}", "y".repeat(100_000));
        crate::providers::http::hostile::json(200, &serde_json::json!({"id": id}).to_string())
    });
    let base = crate::providers::http::hostile::serve(answer, 1 << 16, std::time::Duration::ZERO).await;
    let p = provider(&issuer(Some(&base), None));
    let e = p.revoke_key("aje0aaaaaaaaaaaaaaaa", UID).await.expect_err("another id");
    assert!(e.message.chars().count() <= MAX_MESSAGE_CHARS + 100, "message of {} chars", e.message.chars().count());
    assert!(!e.message.contains("hunter2"), "{}", &e.message[..200]);
}

#[test]
fn a_last_use_reads_only_as_a_time() {
    let key = |at: serde_json::Value| -> api::AccessKey {
        serde_json::from_value(json!({"id": "aje1", "lastUsedAt": at})).expect("AccessKey")
    };
    assert_eq!(last_used(&key(json!("2026-12-01T10:00:00Z"))), "2026-12-01T10:00:00Z".parse().ok());
    assert_eq!(last_used(&key(json!("yesterday"))), None);
    assert_eq!(last_used(&key(json!(format!("2026-12-01T10:00:00.{}Z", "1".repeat(100))))), None);
    assert_eq!(last_used(&key(serde_json::Value::Null)), None);
}
