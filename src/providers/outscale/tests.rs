use reqwest::header::HeaderMap;

use super::errors::LOCKOUT;
use super::*;
use crate::providers::error::MAX_MESSAGE_CHARS;
use crate::providers::http::ErrorResponse as HttpError;
use crate::providers::ErrorKind;

const UID: &str = "0f8c2d7e-1b2a-4c3d-9e8f-0123456789ab";
const OTHER: &str = "11111111-2222-4333-8444-555555555555";

fn issuer(region: &str, endpoint: Option<&str>) -> OutscaleIssuer {
    OutscaleIssuer {
        region: region.into(),
        endpoint: endpoint.map(String::from),
        credentials_secret_ref: crate::api::SecretRef { name: "s".into() },
    }
}

fn provider(endpoint: Option<&str>) -> OutscaleProvider {
    OutscaleProvider::new(
        &issuer("eu-west-2", endpoint),
        "AKIDEXAMPLE012345678".into(),
        SecretString::from("S".repeat(40)),
        HttpConfig::default(),
    )
    .unwrap_or_else(|e| panic!("provider builds: {e}"))
}

fn error(status: u16, body: &str) -> ProviderError {
    classify_codes(status, body).0
}

fn classify_codes(status: u16, body: &str) -> (ProviderError, Vec<String>) {
    let headers = HeaderMap::new();
    classify("CreateAccessKey", HttpError { status, headers: &headers, body: body.as_bytes() })
}

fn body(code: &str, kind: &str, details: &str) -> String {
    serde_json::json!({
        "Errors": [{"Code": code, "Type": kind, "Details": details}],
        "ResponseContext": {"RequestId": "0475ca1e-d0c5-441d-712a-da55a4175157"}
    })
    .to_string()
}

#[test]
fn key_refs_round_trip() {
    for text in
        ["ABCDEFGHIJ0123456789", "ABCDEFGHIJ0123456789;user=backup-bot", "ABCDEFGHIJ0123456789;user=a+b=c,d.e@f_g-h"]
    {
        let parsed = KeyRef::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(parsed.to_string(), text);
    }
    assert_eq!(KeyRef::parse("AK1;user=bot").expect("parses"), KeyRef { id: "AK1".into(), user: Some("bot".into()) });
    assert_eq!(KeyRef::parse("AK1").expect("parses").user, None);
}

#[test]
fn malformed_key_refs_are_permanent_errors() {
    for text in [
        "",
        ";user=bot",
        "AK1;",
        "AK1;user=",
        "AK1;bot",
        "AK1;user=bot;user=other",
        "AK 1",
        "AK1;user=b ot",
        "api-key:AK1",
    ] {
        let e = KeyRef::parse(text).expect_err(text);
        assert_eq!(e.kind, ErrorKind::Permanent, "{text}");
    }
}

#[test]
fn regions_are_validated_and_make_the_default_endpoint() {
    for good in ["eu-west-2", "us-east-2", "ap-northeast-1", "cloudgouv-eu-west-1"] {
        assert!(is_region(good), "{good}");
    }
    for bad in
        ["", "eu", "eu-west", "eu--2", "-west-2", "eu-west-", "EU-west-2", "eu-west-2a", "eu_west-2", "eu-west-2 "]
    {
        assert!(!is_region(bad), "{bad:?}");
    }
    let p = provider(None);
    assert_eq!(p.endpoint, "https://api.eu-west-2.outscale.com/api/v1");
    assert_eq!(p.host, "api.eu-west-2.outscale.com");
    assert_eq!(
        p.template_vars(),
        TemplateVars::from([
            ("region", "eu-west-2".to_string()),
            ("endpoint", "https://api.eu-west-2.outscale.com/api/v1".to_string()),
        ])
    );
    let typo = OutscaleProvider::new(&issuer("", None), "AK".into(), SecretString::from("S"), HttpConfig::default());
    assert!(matches!(typo, Err(e) if e.kind == ErrorKind::Permanent && e.message.contains("region")));
}

#[test]
fn an_endpoint_override_keeps_its_port_in_the_signed_host() {
    let p = provider(Some("http://127.0.0.1:8080/api/v1/"));
    assert_eq!(p.endpoint, "http://127.0.0.1:8080/api/v1");
    assert_eq!(p.host, "127.0.0.1:8080");
    let url = p.url("CreateAccessKey").unwrap_or_else(|_| panic!("url"));
    assert_eq!(url.as_str(), "http://127.0.0.1:8080/api/v1/CreateAccessKey");
    // A default port is not part of the Host header, so it is not signed either.
    assert_eq!(provider(Some("https://api.example.com:443/api/v1")).host, "api.example.com");
}

#[test]
fn bad_settings_are_refused_at_construction() {
    let bad_key = OutscaleProvider::new(
        &issuer("eu-west-2", None),
        "AK1\n".into(),
        SecretString::from("s"),
        HttpConfig::default(),
    );
    assert!(matches!(bad_key, Err(e) if e.kind == ErrorKind::Auth));
    let no_secret =
        OutscaleProvider::new(&issuer("eu-west-2", None), "AK1".into(), SecretString::from(" "), HttpConfig::default());
    assert!(matches!(no_secret, Err(e) if e.kind == ErrorKind::Auth));
    let bad_endpoint = OutscaleProvider::new(
        &issuer("eu-west-2", Some("not a url")),
        "AK1".into(),
        SecretString::from("s"),
        HttpConfig::default(),
    );
    assert!(matches!(bad_endpoint, Err(e) if e.kind == ErrorKind::Permanent));
}

#[test]
fn requests_are_signed_over_the_exact_body_and_host() {
    let p = provider(Some("http://127.0.0.1:8080/api/v1"));
    let url = p.url("ReadAccessKeys").unwrap_or_else(|_| panic!("url"));
    let body = Bytes::from_static(br#"{"UserName":"bot"}"#);
    let request = p.build(&reqwest::Client::new(), "ReadAccessKeys", &url, &body).expect("request builds");
    let headers = request.headers();
    assert_eq!(headers[CONTENT_TYPE], "application/json; charset=utf-8");
    let date = headers["x-osc-date"].to_str().expect("ascii");
    assert_eq!(date.len(), 16);
    let authorization = headers[AUTHORIZATION].to_str().expect("ascii");
    assert!(authorization.starts_with(&format!(
            "OSC4-HMAC-SHA256 Credential=AKIDEXAMPLE012345678/{}/eu-west-2/api/osc4_request, SignedHeaders=content-type;host;x-osc-date, Signature=",
            &date[..8]
        )));
    assert!(headers[AUTHORIZATION].is_sensitive());
    assert_eq!(request.body().and_then(|b| b.as_bytes()), Some(&body[..]));
    let now: Timestamp = jiff::fmt::strtime::parse("%Y%m%dT%H%M%SZ", date)
        .and_then(|t| t.to_datetime())
        .and_then(|d| d.to_zoned(jiff::tz::TimeZone::UTC))
        .map(|z| z.timestamp())
        .expect("date parses");
    let expected = sign::sign(
        "AKIDEXAMPLE012345678",
        &SecretString::from("S".repeat(40)),
        "eu-west-2",
        &sign::Request { host: "127.0.0.1:8080", path: "/api/v1/ReadAccessKeys", body: &body },
        now,
    );
    assert_eq!(authorization, expected.authorization);
}

#[test]
fn throttling_is_retryable() {
    let e = error(429, &body("24", "AccessDenied", "ErrorOperationThrottledPerAccount: Request rate exceeded."));
    assert_eq!(e.kind, ErrorKind::Retryable);
    assert!(e.message.starts_with("throttled by Outscale: Outscale error 24 AccessDenied"));
    assert_eq!(error(429, &body("25", "AccessDenied", "x")).kind, ErrorKind::Retryable);
    let e = error(503, &body("6", "AccessDenied", "ErrorOperationThrottled"));
    assert_eq!(e.kind, ErrorKind::Retryable);
    // The code decides even under another status.
    assert_eq!(error(400, &body("24", "AccessDenied", "x")).kind, ErrorKind::Retryable);
    assert_eq!(error(503, "").kind, ErrorKind::Retryable);
}

#[test]
fn auth_failures_are_auth_and_name_code_type_details_and_request_id() {
    let e = error(401, &body("1", "AccessDenied", "ErrorAuthenticationFailed"));
    assert_eq!(e.kind, ErrorKind::Auth);
    assert_eq!(e.status, Some(401));
    assert_eq!(e.request_id.as_deref(), Some("0475ca1e-d0c5-441d-712a-da55a4175157"));
    assert!(e.message.starts_with("Outscale error 1 AccessDenied: ErrorAuthenticationFailed ("));
    assert!(e.message.contains("four bad signatures"));
    let shown = e.to_string();
    assert!(shown.contains("(HTTP 401)"), "{shown}");
    assert!(shown.contains("[request id 0475ca1e-"), "{shown}");
    assert_eq!(e.retry_after, None);

    let locked = error(401, &body("13", "AccessDenied", "x"));
    assert_eq!(locked.kind, ErrorKind::Auth);
    assert_eq!(locked.retry_after, Some(LOCKOUT));
    let forever = error(401, &body("11", "AccessDenied", "x"));
    assert!(forever.message.contains("contact Outscale support"));
    // An EIM identity without the permission.
    assert_eq!(error(401, &body("5", "AccessDenied", "ErrorNotAuthorized")).kind, ErrorKind::Auth);
    assert_eq!(error(403, "").kind, ErrorKind::Auth);
}

#[test]
fn the_key_quota_is_permanent_and_says_so() {
    let e = error(400, &body("10005", "TooManyResources (QuotaExceded)", "too-many-accesskeys"));
    assert_eq!(e.kind, ErrorKind::Permanent);
    assert!(e
        .message
        .starts_with("Outscale error 10005 TooManyResources (QuotaExceded): too-many-accesskeys. Quota exceeded"));
    assert!(e.message.contains("at most 10 access keys"));
    // Any code of the range, whatever the status.
    assert_eq!(error(409, &body("10999", "X", "y")).kind, ErrorKind::Permanent);
}

#[test]
fn other_codes_and_statuses() {
    let (e, codes) = classify_codes(400, &body("4000", "InvalidParameterValue", "access-keys-not-found"));
    assert_eq!(e.kind, ErrorKind::Permanent);
    assert_eq!(codes, vec!["4000".to_string()]);
    let f = Failure { error: e, codes };
    assert!(!f.is_gone(), "4000 may be an invalid parameter: never taken for \"already gone\"");
    assert!(f.refused());
    assert_eq!(error(424, &body("1000", "DependencyProblem", "x")).kind, ErrorKind::Retryable);
    let (e, codes) = classify_codes(409, &body("6003", "InvalidState", "x"));
    assert_eq!(e.kind, ErrorKind::Permanent);
    assert!(Failure { error: e, codes }.refused());
    assert_eq!(error(400, &body("9002", "ResourceConflict", "busy")).kind, ErrorKind::Retryable);
    assert_eq!(error(500, "<html>oops</html>").kind, ErrorKind::Retryable);
    assert_eq!(error(500, "<html>oops</html>").message, "oops");
    assert_eq!(error(404, "").message, "no error message");
    let e = error(
        400,
        r#"{"Errors":[{"Code":"4108","Type":"InvalidParameterType","Details":"The parameter type of ExpirationDate is unknown."},{"Code":"7000","Type":"MissingParameter"}],"ResponseContext":{"RequestId":"r"}}"#,
    );
    assert_eq!(e.kind, ErrorKind::Permanent);
    assert_eq!(
            e.message,
            "Outscale error 4108 InvalidParameterType: The parameter type of ExpirationDate is unknown.; Outscale error 7000 MissingParameter"
        );
    let throttled = Failure { error: error(429, &body("24", "AccessDenied", "x")), codes: vec![] };
    assert!(!throttled.refused());
    let denied = Failure { error: error(401, &body("1", "AccessDenied", "x")), codes: vec![] };
    assert!(!denied.refused());
}

#[test]
fn long_error_bodies_are_cut() {
    let e = error(500, &"é".repeat(1000));
    assert_eq!(e.message.chars().count(), MAX_MESSAGE_CHARS + 1);
    assert!(e.message.ends_with('…'));
}

#[test]
fn timestamps_parse_leniently() {
    let expected: Timestamp = "2010-10-01T12:34:56.789Z".parse().expect("ts");
    for text in [
        "2010-10-01T12:34:56.789+0000",
        "2010-10-01T12:34:56.789Z",
        "2010-10-01T12:34:56.789+00:00",
        "2010-10-01T14:34:56.789+0200",
        "2010-10-01T10:34:56.789-02:00",
        " 2010-10-01T12:34:56.789+0000 ",
        "2010-10-01T12:34:56.789",
    ] {
        assert_eq!(parse_timestamp(text), Some(expected), "{text}");
    }
    let midnight: Timestamp = "2063-04-05T00:00:00Z".parse().expect("ts");
    for text in ["2063-04-05T00:00:00.000+0000", "2063-04-05T00:00:00+0000", "2063-04-05T00:00:00Z", "2063-04-05"] {
        assert_eq!(parse_timestamp(text), Some(midnight), "{text}");
    }
    for bad in ["", "soon", "2063-13-05", "2063-04-05T00:00:00+99", "12:00"] {
        assert_eq!(parse_timestamp(bad), None, "{bad}");
    }
}

#[test]
fn dates_are_sent_in_the_spec_form_and_resent_from_the_live_value() {
    let at: Timestamp = "2026-11-22T12:00:00.123456Z".parse().expect("ts");
    assert_eq!(api_date(at), "2026-11-22T12:00:00.123Z");
    let now: Timestamp = "2026-11-22T12:00:00.987Z".parse().expect("ts");
    assert_eq!(resend_date("2063-04-05T00:00:00.000+0000", now).as_deref(), Some("2063-04-05T00:00:00.000Z"));
    assert_eq!(resend_date("whenever", now).as_deref(), Some("whenever"));
    // Past, or about to pass: not re-sent.
    assert_eq!(resend_date("2026-11-22T12:00:30.000+0000", now), None);
    assert_eq!(resend_date("2020-01-01", now), None);
    let exp = expiration(now, Duration::from_secs(2160 * 3600)).expect("in range");
    assert_eq!(api_date(exp), "2027-02-20T12:00:00.000Z");
    assert_eq!(expiration(now, Duration::from_secs(u64::MAX / 4)), None);
}

fn parse_lifetime(text: &str) -> Result<Duration, String> {
    let key = OutscaleKey { expires_after: Some(text.into()), ..Default::default() };
    lifetime_of(&key).map(|lifetime| lifetime.expect("expiresAfter is set"))
}

#[test]
fn lifetimes_parse_and_have_a_minimum() {
    for (text, secs) in
        [("2160h", 2160 * 3600), ("1h30m", 5400), ("90m", 5400), ("60s", 60), ("1m", 60), ("1h1h", 7200), ("0h61s", 61)]
    {
        assert_eq!(parse_lifetime(text), Ok(Duration::from_secs(secs)), "{text}");
    }
    for bad in ["", "h", "10", "10d", "1h 30m", "-1h", "1.5h", "m10", "1H"] {
        let e = parse_lifetime(bad).expect_err(bad);
        assert!(e.contains("not a duration"), "{bad}: {e}");
    }
    for short in ["0h", "0s", "59s", "0h0m0s"] {
        let e = parse_lifetime(short).expect_err(short);
        assert!(e.contains("minimum"), "{short}: {e}");
    }
    assert!(parse_lifetime("99999999999999999999h").is_err());
    assert!(parse_lifetime("9999999999999999h").is_err());
    assert_eq!(lifetime_of(&OutscaleKey::default()), Ok(None));
}

fn listed(id: &str, tag: Option<String>) -> AccessKey {
    AccessKey { access_key_id: Some(id.into()), state: Some("ACTIVE".into()), expiration_date: None, tag }
}

#[test]
fn only_this_owners_markers_are_found() {
    let mine = Marker::of(UID, "abc0123456");
    let keys = vec![
        listed("AK1", Some(mine.to_string())),
        listed("AK2", Some(format!("ck-{OTHER}-abc0123456"))),
        listed("AK3", None),
        listed("AK4", Some("Group1".into())),
        AccessKey { access_key_id: None, ..listed("", Some(mine.to_string())) },
    ];
    assert_eq!(
        owned_keys(UID, Some("bot"), keys.clone()),
        vec![OwnedKey { access_key_id: Some("AK1".into()), key_ref: "AK1;user=bot".into(), marker: mine.clone() }]
    );
    assert_eq!(owned_keys(UID, None, keys)[0].key_ref, "AK1");
}

// ReadAccessKeys is not paginated and one identity holds at most ten keys: a listing far
// longer is no real answer, and would be held in memory whole.
#[tokio::test]
async fn a_listing_longer_than_any_identity_holds_is_refused() {
    use crate::providers::http::hostile;
    use crate::providers::listing::MAX_LISTED;
    let serve = |n: usize| {
        let body = format!(r#"{{"AccessKeys":[{}]}}"#, vec![r#"{"AccessKeyId":"AK"}"#; n].join(","));
        let answer: hostile::Answer = std::sync::Arc::new(move |_: &str| hostile::json(200, &body));
        hostile::serve(answer, 1 << 16, std::time::Duration::ZERO)
    };
    let spec = KeyProvider::Local(Default::default());
    let p = provider(Some(&serve(KEYS_PER_USER).await));
    assert_eq!(p.list_marked(&spec).await.expect("a short listing is read").len(), KEYS_PER_USER);
    let p = provider(Some(&serve(MAX_LISTED + 1).await));
    let e = p.find_keys(UID, &spec).await.expect_err("refused");
    assert_eq!(e.kind, ErrorKind::Retryable);
    assert!(e.message.contains(&format!("more than {MAX_LISTED} access keys")), "{}", e.message);
}
