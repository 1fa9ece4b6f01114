use std::time::Duration;

use reqwest::header::HeaderMap;

use super::*;
use crate::providers::error::MAX_MESSAGE_CHARS;
use crate::providers::http::ErrorResponse;
use crate::providers::ErrorKind;

const UID: &str = "0f8c2d7e-1b2a-4c3d-9e8f-0123456789ab";
const OTHER: &str = "11111111-2222-4333-8444-555555555555";

fn issuer(endpoint: Option<&str>) -> ExoscaleIssuer {
    ExoscaleIssuer {
        zone: "de-fra-1".into(),
        endpoint: endpoint.map(String::from),
        credentials_secret_ref: crate::api::SecretRef { name: "s".into() },
    }
}

fn provider(endpoint: Option<&str>) -> ExoscaleProvider {
    ExoscaleProvider::new(
        &issuer(endpoint),
        "EXOxxxxxxxxxxxxxxxxxxxxxxxx".into(),
        SecretString::from("X".repeat(43)),
        HttpConfig::default(),
    )
    .unwrap_or_else(|e| panic!("provider builds: {e}"))
}

fn error(status: u16, body: &str) -> ProviderError {
    let headers = HeaderMap::new();
    classify("create-api-key", ErrorResponse { status, headers: &headers, body: body.as_bytes() })
}

fn op(json: &str) -> Operation {
    serde_json::from_str(json).expect("operation parses")
}

#[test]
fn key_refs_round_trip() {
    for text in [
        "api-key:EXO19c207e5f483f2d85f99b709",
        "api-key:EXO19c207e5f483f2d85f99b709;role:7b1e0000-0000-4000-8000-000000000001",
        "access-key:EXOabc",
        "role:7b1e0000-0000-4000-8000-000000000001",
    ] {
        let parsed = KeyRef::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(parsed.to_string(), text);
    }
    assert_eq!(
        KeyRef::parse("api-key:K;role:R").expect("parses"),
        KeyRef::ApiKey { key: "K".into(), role: Some("R".into()) }
    );
}

#[test]
fn malformed_key_refs_are_permanent_errors() {
    for text in [
        "",
        "EXO19c207e5f483f2d85f99b709",
        "api-key:",
        "api-key:K;",
        "api-key:K;role:",
        "role:R;api-key:K",
        "access-key:K;role:R",
        "api-key:K;role:R;role:S",
        "bucket:K",
    ] {
        let e = KeyRef::parse(text).expect_err(text);
        assert_eq!(e.kind, ErrorKind::Permanent, "{text}");
    }
}

#[test]
fn endpoint_defaults_to_the_zone_and_loses_a_trailing_slash() {
    let p = provider(None);
    assert_eq!(p.endpoint, "https://api-de-fra-1.exoscale.com/v2");
    assert_eq!(
        p.template_vars(),
        TemplateVars::from([
            ("zone", "de-fra-1".to_string()),
            ("endpoint", "https://api-de-fra-1.exoscale.com/v2".to_string()),
        ])
    );
    assert_eq!(provider(Some("http://127.0.0.1:8080/v2/")).endpoint, "http://127.0.0.1:8080/v2");
}

#[test]
fn request_paths_extend_the_endpoint_and_escape_ids() {
    let p = provider(Some("http://127.0.0.1:8080/v2/"));
    let url = p.url("t", &["api-key", "EXO1"]).expect("url");
    assert_eq!(url.as_str(), "http://127.0.0.1:8080/v2/api-key/EXO1");
    assert_eq!(url.path(), "/v2/api-key/EXO1");
    let url = p.url("t", &["api-key", "a/../b c"]).expect("url");
    assert_eq!(url.path(), "/v2/api-key/a%2F..%2Fb%20c");
    for bad in ["", ".", ".."] {
        assert_eq!(p.url("t", &["api-key", bad]).expect_err(bad).kind, ErrorKind::Permanent);
    }
}

#[test]
fn bad_settings_are_refused_at_construction() {
    let bad_key = ExoscaleProvider::new(&issuer(None), "EXO1\n".into(), SecretString::from("s"), HttpConfig::default());
    assert!(matches!(bad_key, Err(e) if e.kind == ErrorKind::Auth));
    let bad_endpoint = ExoscaleProvider::new(
        &issuer(Some("not a url")),
        "EXO1".into(),
        SecretString::from("s"),
        HttpConfig::default(),
    );
    assert!(matches!(bad_endpoint, Err(e) if e.kind == ErrorKind::Permanent));
}

#[test]
fn error_messages_come_from_the_body_in_each_known_shape() {
    let e = error(400, r#"{"message":"invalid request: Cannot generate IAMv2 `Access Key` using a IAMv3 `Api Key`"}"#);
    assert_eq!(e.kind, ErrorKind::Permanent);
    assert_eq!(e.message, "invalid request: Cannot generate IAMv2 `Access Key` using a IAMv3 `Api Key`");
    assert_eq!(e.status, Some(400));
    assert_eq!(e.operation, "create-api-key");

    let e = error(403, r#"{"message":"Invalid request signature"}"#);
    assert_eq!(e.kind, ErrorKind::Auth);

    let e = error(429, r#"{"error":"rate limited","retry_after":2.5}"#);
    assert_eq!(e.kind, ErrorKind::Retryable);
    assert_eq!(e.message, "rate limited");
    assert_eq!(e.retry_after, Some(Duration::from_millis(2500)));

    let e = error(422, r#"{"type":"about:blank","title":"Unprocessable","detail":"bad policy"}"#);
    assert_eq!(e.message, "Unprocessable: bad policy");

    let e = error(502, "<html>Bad Gateway</html>\n");
    assert_eq!(e.kind, ErrorKind::Retryable);
    assert_eq!(e.message, "Bad Gateway", "markup is dropped");

    assert_eq!(error(404, "").message, "no error message");
    assert!(error(404, "").is_not_found());
}

#[test]
fn long_error_bodies_are_cut() {
    let e = error(500, &"é".repeat(1000));
    assert_eq!(e.message.chars().count(), MAX_MESSAGE_CHARS + 1);
    assert!(e.message.ends_with('…'));
}

#[test]
fn failed_operations_are_permanent_only_for_refused_requests() {
    let e = succeeded(
        "create-iam-role",
        op(r#"{"id":"o1","state":"failure","reason":"incorrect","message":"bad expression"}"#),
    )
    .expect_err("failure");
    assert_eq!(e.kind, ErrorKind::Permanent);
    assert_eq!(e.message, "operation o1 failed (incorrect): bad expression");

    for json in [
        r#"{"id":"o1","state":"failure","reason":"busy"}"#,
        r#"{"id":"o1","state":"timeout"}"#,
        r#"{"id":"o1","state":"something-new"}"#,
    ] {
        let e = succeeded("create-iam-role", op(json)).expect_err(json);
        assert_eq!(e.kind, ErrorKind::Retryable, "{json}");
    }
    assert!(succeeded("x", op(r#"{"id":"o1","state":"success"}"#)).is_ok());
}

#[test]
fn markers_are_found_behind_display_names_that_contain_ck() {
    let marker = Marker::of(UID, "abc0123456");
    let name = format!("rack-backups.{marker}");
    assert_eq!(marker_in(&name, UID), Some(marker));
    assert_eq!(marker_in(&name, OTHER), None);
    assert_eq!(marker_in("backups", UID), None);
}

fn api_key(name: &str, key: &str, role: &str) -> api::ApiKey {
    api::ApiKey { name: name.into(), key: key.into(), role_id: Some(role.into()) }
}

fn role(id: &str, owner: &str, attempt: Option<&str>) -> api::Role {
    let mut labels = BTreeMap::from([(LABEL_OWNER.to_string(), owner.to_string())]);
    if let Some(a) = attempt {
        labels.insert(LABEL_ATTEMPT.to_string(), a.to_string());
    }
    let name = format!("n.ck-{owner}-{}", attempt.unwrap_or("zzzzzzzzzz"));
    api::Role { id: id.into(), name, labels: Some(labels), policy: None, permissions: None }
}

#[test]
fn keys_pair_with_their_own_roles_and_orphan_roles_stand_alone() {
    let a1 = Marker::of(UID, "aaaaaaaaaa");
    let a2 = Marker::of(UID, "bbbbbbbbbb");
    let a3 = Marker::of(UID, "cccccccccc");
    let keys = vec![
        api_key(&format!("ns-k.{a1}"), "EXO1", "R1"),
        api_key(&format!("ns-k.{a2}"), "EXO2", "shared-role"),
        api_key("someone-else", "EXO3", "R1"),
        api_key(&format!("ns-k.ck-{OTHER}-aaaaaaaaaa"), "EXO4", "R9"),
    ];
    let roles = vec![
        role("R1", UID, Some("aaaaaaaaaa")),
        role("R3", UID, Some("cccccccccc")),
        role("R9", OTHER, Some("aaaaaaaaaa")),
        api::Role { id: "unlabelled".into(), name: format!("x.{a3}"), labels: None, policy: None, permissions: None },
    ];
    let access = vec![
        api::AccessKey { name: format!("legacy.{a3}"), key: "EXO5".into() },
        api::AccessKey { name: "legacy".into(), key: "EXO6".into() },
    ];
    assert_eq!(
        owned_keys(UID, keys, roles, access),
        vec![
            OwnedKey { access_key_id: Some("EXO1".into()), key_ref: "api-key:EXO1;role:R1".into(), marker: a1 },
            OwnedKey { access_key_id: Some("EXO2".into()), key_ref: "api-key:EXO2".into(), marker: a2 },
            OwnedKey { access_key_id: None, key_ref: "role:R3".into(), marker: a3.clone() },
            OwnedKey { access_key_id: Some("EXO5".into()), key_ref: "access-key:EXO5".into(), marker: a3 },
        ]
    );
}

#[test]
fn a_role_without_the_attempt_label_is_still_reported() {
    let found = owned_keys(UID, vec![], vec![role("R", UID, None)], vec![]);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].key_ref, "role:R");
    assert_eq!(found[0].marker, Marker::of(UID, "zzzzzzzzzz"));
}

/// A loopback endpoint listing `api_keys` API keys and `roles` IAM roles.
async fn listing(api_keys: usize, roles: usize) -> String {
    use crate::providers::http::hostile;
    let answer: hostile::Answer = std::sync::Arc::new(move |line: &str| {
        let body = if line.contains("/iam-role") {
            format!(r#"{{"iam-roles":[{}]}}"#, vec![r#"{"id":"r"}"#; roles].join(","))
        } else {
            format!(r#"{{"api-keys":[{}]}}"#, vec![r#"{"key":"k"}"#; api_keys].join(","))
        };
        hostile::json(200, &body)
    });
    hostile::serve(answer, 1 << 16, Duration::ZERO).await
}

// The listings are not paginated, so nothing was asked for: more entries than any organisation
// holds is no real answer, and would be held in memory whole.
#[tokio::test]
async fn a_listing_longer_than_any_organisation_holds_is_refused() {
    use crate::providers::listing::MAX_LISTED;
    let spec = KeyProvider::Local(Default::default());
    let p = provider(Some(&listing(2, 2).await));
    assert!(p.find_keys(UID, &spec).await.expect("a short listing is read").is_empty());
    for (api_keys, roles, what) in [(MAX_LISTED + 1, 1, "API keys"), (1, MAX_LISTED + 1, "IAM roles")] {
        let p = provider(Some(&listing(api_keys, roles).await));
        let e = p.find_keys(UID, &spec).await.expect_err("refused");
        assert_eq!(e.kind, ErrorKind::Retryable);
        assert!(e.message.contains(&format!("more than {MAX_LISTED} {what}")), "{}", e.message);
    }
}

// An operation's id and reason come from a successful answer, and go into the condition as
// much as an error body would.
#[test]
fn an_operations_id_and_reason_are_excerpted_in_error_messages() {
    let junk = format!("password=hunter2 {}", "y".repeat(100_000));
    let json = serde_json::json!({"id": junk, "state": "failure", "reason": junk}).to_string();
    let e = succeeded("create-iam-role", op(&json)).expect_err("failed");
    assert!(e.message.chars().count() <= MAX_MESSAGE_CHARS, "message of {} chars", e.message.chars().count());
    assert!(!e.message.contains("hunter2"), "{}", e.message);
}
