//! OSC API wire types (spec `outscale.yaml` v1.41, <https://docs.outscale.com/api.html>): PascalCase JSON, only the
//! fields the operator reads or writes. Request fields that are unset are left out, never sent
//! empty: an empty `ExpirationDate` is refused, and a missing one means "never expires".
//! Types holding a secret derive no `Debug` and keep it in a `SecretString` from the start.

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use crate::providers::listing::{Capped, MAX_LISTED};

/// `State` of a key that can no longer sign requests (the other one is `ACTIVE`).
pub const INACTIVE: &str = "INACTIVE";

/// `POST /CreateAccessKey`
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateAccessKey<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expiration_date: Option<&'a str>,
    /// The ownership marker (API ≥ 1.34.3).
    pub tag: &'a str,
}

/// `POST /CreateAccessKey` response: the only place the secret key ever appears.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AccessKeyCreated {
    pub access_key: Option<CreatedKey>,
    pub response_context: Option<ResponseContext>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreatedKey {
    pub access_key_id: Option<String>,
    pub secret_key: Option<SecretString>,
    pub expiration_date: Option<String>,
    pub tag: Option<String>,
}

/// `POST /ReadAccessKeys`. `UserName` and `Tag` sit beside `Filters`, not inside it.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ReadAccessKeys<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filters: Option<FiltersAccessKeys<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_name: Option<&'a str>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct FiltersAccessKeys<'a> {
    /// Never empty when sent: an empty list would be read as "no filter".
    pub access_key_ids: Vec<&'a str>,
}

/// `POST /ReadAccessKeys` response: unpaginated; one identity holds at most
/// [`KEYS_PER_USER`](super::KEYS_PER_USER) keys, so anything near [`MAX_LISTED`] is no real answer.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AccessKeyList {
    #[serde(default)]
    pub access_keys: Capped<AccessKey, MAX_LISTED>,
}

/// A key as `ReadAccessKeys` lists it (no secret).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AccessKey {
    pub access_key_id: Option<String>,
    pub state: Option<String>,
    pub expiration_date: Option<String>,
    pub tag: Option<String>,
}

/// `POST /UpdateAccessKey`. `ExpirationDate` must be re-sent with a state change, or the key
/// silently becomes non-expiring.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct UpdateAccessKey<'a> {
    pub access_key_id: &'a str,
    pub state: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expiration_date: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_name: Option<&'a str>,
}

/// `POST /DeleteAccessKey`
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DeleteAccessKey<'a> {
    pub access_key_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_name: Option<&'a str>,
}

/// `{ "Errors": [ {Code, Type, Details} ], "ResponseContext": {RequestId} }`
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ErrorResponse {
    #[serde(default)]
    pub errors: Vec<ApiError>,
    pub response_context: Option<ResponseContext>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ApiError {
    /// A string such as `"4078"` in the spec; a number is accepted too.
    #[serde(default, deserialize_with = "string_or_number")]
    pub code: Option<String>,
    #[serde(rename = "Type")]
    pub kind: Option<String>,
    pub details: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ResponseContext {
    pub request_id: Option<String>,
}

fn string_or_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Code {
        Text(String),
        Number(i64),
    }
    Ok(Option::<Code>::deserialize(d)?.map(|c| match c {
        Code::Text(t) => t,
        Code::Number(n) => n.to_string(),
    }))
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    #[test]
    fn unset_request_fields_are_left_out() {
        let body = CreateAccessKey { user_name: None, expiration_date: None, tag: "ck-x" };
        assert_eq!(serde_json::to_string(&body).expect("json"), r#"{"Tag":"ck-x"}"#);
        let body =
            CreateAccessKey { user_name: Some("bot"), expiration_date: Some("2030-01-01T00:00:00.000Z"), tag: "ck-x" };
        assert_eq!(
            serde_json::to_string(&body).expect("json"),
            r#"{"UserName":"bot","ExpirationDate":"2030-01-01T00:00:00.000Z","Tag":"ck-x"}"#
        );
        assert_eq!(serde_json::to_string(&ReadAccessKeys::default()).expect("json"), "{}");
        let read =
            ReadAccessKeys { filters: Some(FiltersAccessKeys { access_key_ids: vec!["AK"] }), user_name: Some("bot") };
        assert_eq!(
            serde_json::to_string(&read).expect("json"),
            r#"{"Filters":{"AccessKeyIds":["AK"]},"UserName":"bot"}"#
        );
        let update = UpdateAccessKey { access_key_id: "AK", state: INACTIVE, expiration_date: None, user_name: None };
        assert_eq!(serde_json::to_string(&update).expect("json"), r#"{"AccessKeyId":"AK","State":"INACTIVE"}"#);
    }

    #[test]
    fn the_spec_example_response_parses() {
        let created: AccessKeyCreated = serde_json::from_str(
            r#"{"ResponseContext":{"RequestId":"0475ca1e-d0c5-441d-712a-da55a4175157"},
                "AccessKey":{"State":"ACTIVE","AccessKeyId":"ABCDEFGHIJ0123456789",
                "CreationDate":"2010-10-01T12:34:56.789+0000","ExpirationDate":"2063-04-05T00:00:00.000+0000",
                "SecretKey":"XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX","LastModificationDate":"2010-10-01T12:34:56.789+0000","Tag":"Group1"}}"#,
        )
        .expect("parses");
        let key = created.access_key.expect("key");
        assert_eq!(key.access_key_id.as_deref(), Some("ABCDEFGHIJ0123456789"));
        assert_eq!(key.secret_key.expect("secret").expose_secret(), "XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX");
        assert_eq!(key.expiration_date.as_deref(), Some("2063-04-05T00:00:00.000+0000"));
        assert_eq!(key.tag.as_deref(), Some("Group1"));
    }

    #[test]
    fn error_codes_may_be_strings_or_numbers() {
        let e: ErrorResponse = serde_json::from_str(
            r#"{"Errors":[{"Code":"10005","Type":"TooManyResources (QuotaExceded)","Details":"x"},{"Code":4000}],
                "ResponseContext":{"RequestId":"r-1"}}"#,
        )
        .expect("parses");
        assert_eq!(e.errors[0].code.as_deref(), Some("10005"));
        assert_eq!(e.errors[1].code.as_deref(), Some("4000"));
        assert_eq!(e.response_context.and_then(|c| c.request_id).as_deref(), Some("r-1"));
    }
}
