//! Yandex Cloud REST wire types: the gRPC-JSON transcoding of `AccessKeyService`,
//! `IamTokenService` and `OperationService` (lowerCamelCase proto fields), plus the metadata
//! service's token. Only the fields the operator reads or writes. Types holding a secret derive
//! no `Debug` and keep it in a `SecretString` from the start.

use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::providers::listing::Capped;

/// The `aud` claim of every JWT: the public token URL, even when the issuer overrides the
/// endpoint (a proxy or a fake in front of IAM still checks against this audience).
pub const TOKEN_AUDIENCE: &str = "https://iam.api.cloud.yandex.net/iam/v1/tokens";

/// `POST /iam/v1/tokens`
#[derive(Serialize)]
pub struct CreateIamToken<'a> {
    pub jwt: &'a str,
}

/// `POST /iam/v1/tokens` response.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IamToken {
    pub iam_token: SecretString,
    /// RFC 3339.
    pub expires_at: String,
}

/// `GET /computeMetadata/v1/instance/service-accounts/default/token` response.
#[derive(Deserialize)]
pub struct MetadataToken {
    pub access_token: SecretString,
    /// Seconds the token has left.
    pub expires_in: i64,
}

/// `POST /iam/aws-compatibility/v1/accessKeys`
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateAccessKey<'a> {
    pub service_account_id: &'a str,
    pub description: &'a str,
}

/// `POST /iam/aws-compatibility/v1/accessKeys` response, the only place the secret appears.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AccessKeyCreated {
    pub access_key: AccessKey,
    pub secret: SecretString,
}

/// An `AccessKey` resource. `id` names the resource (Get/Delete); `keyId` is the AWS-style
/// access key id that S3 clients use.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AccessKey {
    pub id: String,
    #[serde(default)]
    pub service_account_id: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub key_id: String,
    /// The last authentication with the key (RFC 3339), when there was one.
    #[serde(default)]
    pub last_used_at: Option<String>,
}

/// The most keys one list page may hold (`pageSize`, 0–1000).
pub const MAX_PAGE_SIZE: u32 = 1000;

/// `GET /iam/aws-compatibility/v1/accessKeys`; proto3 JSON leaves out empty fields, so both
/// may be missing.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AccessKeyList {
    #[serde(default)]
    pub access_keys: Capped<AccessKey, { MAX_PAGE_SIZE as usize }>,
    #[serde(default)]
    pub next_page_token: Option<String>,
}

/// A long-running operation (`DELETE …/accessKeys/{id}`, `GET /operations/{id}`).
#[derive(Debug, Deserialize)]
pub struct Operation {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub done: bool,
    /// Set when the operation failed (possibly before `done`, while it rolls back).
    #[serde(default)]
    pub error: Option<Status>,
}

impl crate::providers::poll::Operation for Operation {
    fn running(&self) -> Option<Option<&str>> {
        (!self.done).then_some(Some(self.id.as_str()))
    }
}

/// `google.rpc.Status`: the body of every error, and `Operation.error`.
#[derive(Debug, Default, Deserialize)]
pub struct Status {
    #[serde(default)]
    pub code: i32,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub details: Vec<Value>,
}

impl Status {
    /// The `requestId` of a `google.rpc.RequestInfo` detail, if the service sent one.
    pub fn request_id(&self) -> Option<String> {
        self.details
            .iter()
            .find_map(|d| d.get("requestId").and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_string))
    }
}

/// gRPC status codes (google.rpc.Code) that the operator tells apart.
pub mod code {
    pub const CANCELLED: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const INVALID_ARGUMENT: i32 = 3;
    pub const DEADLINE_EXCEEDED: i32 = 4;
    pub const NOT_FOUND: i32 = 5;
    pub const ALREADY_EXISTS: i32 = 6;
    pub const PERMISSION_DENIED: i32 = 7;
    pub const RESOURCE_EXHAUSTED: i32 = 8;
    pub const FAILED_PRECONDITION: i32 = 9;
    pub const ABORTED: i32 = 10;
    pub const OUT_OF_RANGE: i32 = 11;
    pub const UNIMPLEMENTED: i32 = 12;
    pub const INTERNAL: i32 = 13;
    pub const UNAVAILABLE: i32 = 14;
    pub const DATA_LOSS: i32 = 15;
    pub const UNAUTHENTICATED: i32 = 16;

    /// The code's name as the gRPC spec spells it, for messages.
    pub fn name(code: i32) -> Option<&'static str> {
        Some(match code {
            CANCELLED => "CANCELLED",
            UNKNOWN => "UNKNOWN",
            INVALID_ARGUMENT => "INVALID_ARGUMENT",
            DEADLINE_EXCEEDED => "DEADLINE_EXCEEDED",
            NOT_FOUND => "NOT_FOUND",
            ALREADY_EXISTS => "ALREADY_EXISTS",
            PERMISSION_DENIED => "PERMISSION_DENIED",
            RESOURCE_EXHAUSTED => "RESOURCE_EXHAUSTED",
            FAILED_PRECONDITION => "FAILED_PRECONDITION",
            ABORTED => "ABORTED",
            OUT_OF_RANGE => "OUT_OF_RANGE",
            UNIMPLEMENTED => "UNIMPLEMENTED",
            INTERNAL => "INTERNAL",
            UNAVAILABLE => "UNAVAILABLE",
            DATA_LOSS => "DATA_LOSS",
            UNAUTHENTICATED => "UNAUTHENTICATED",
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;
    use serde_json::json;

    use super::*;

    #[test]
    fn create_body_is_service_account_and_description() {
        let body = CreateAccessKey { service_account_id: "aje0000000000000000", description: "backups ck-x" };
        assert_eq!(
            serde_json::to_value(&body).expect("serializes"),
            json!({"serviceAccountId": "aje0000000000000000", "description": "backups ck-x"})
        );
    }

    #[test]
    fn created_key_parses_with_the_secret_in_a_secret_string() {
        let created: AccessKeyCreated = serde_json::from_value(json!({
            "accessKey": {
                "id": "ajeabc",
                "serviceAccountId": "aje0",
                "createdAt": "2026-11-22T12:00:00Z",
                "description": "d",
                "keyId": "YCchbYEDdcsYFBnxSWbcjDJDn",
            },
            "secret": "YCVdheub7w9bImcGAnd3dZnf08FRbvjeUFvehGvc",
        }))
        .expect("deserializes");
        assert_eq!(created.access_key.id, "ajeabc");
        assert_eq!(created.access_key.key_id, "YCchbYEDdcsYFBnxSWbcjDJDn");
        assert_eq!(created.secret.expose_secret(), "YCVdheub7w9bImcGAnd3dZnf08FRbvjeUFvehGvc");
    }

    #[test]
    fn lists_parse_without_the_fields_proto3_leaves_out() {
        let list: AccessKeyList = serde_json::from_str("{}").expect("deserializes");
        assert_eq!(list.next_page_token, None);
        assert!(list.access_keys.within("list", 1, "keys").expect("kept").is_empty());
        let list: AccessKeyList =
            serde_json::from_str(r#"{"accessKeys":[{"id":"a"}],"nextPageToken":"p2"}"#).expect("deserializes");
        assert_eq!(list.next_page_token.as_deref(), Some("p2"));
        assert_eq!(list.access_keys.within("list", 1, "keys").expect("kept")[0].description, "");
    }

    #[test]
    fn operations_and_statuses_parse() {
        let op: Operation = serde_json::from_value(json!({
            "id": "aje9op", "done": true,
            "metadata": {"@type": "type.googleapis.com/yandex.cloud.iam.v1.awscompatibility.DeleteAccessKeyMetadata"},
            "error": {"code": 5, "message": "gone", "details": []},
        }))
        .expect("deserializes");
        assert!(op.done);
        assert_eq!(op.error.as_ref().map(|e| e.code), Some(code::NOT_FOUND));
        let op: Operation = serde_json::from_str(r#"{"id":"x"}"#).expect("deserializes");
        assert!(!op.done);

        let status: Status = serde_json::from_value(json!({
            "code": 16, "message": "Token is invalid or has expired.",
            "details": [{"@type": "type.googleapis.com/google.rpc.RequestInfo", "requestId": "e38e71c3"}],
        }))
        .expect("deserializes");
        assert_eq!(status.request_id().as_deref(), Some("e38e71c3"));
        assert_eq!(code::name(status.code), Some("UNAUTHENTICATED"));
        assert_eq!(code::name(99), None);
    }

    #[test]
    fn tokens_parse_into_secret_strings() {
        let t: IamToken =
            serde_json::from_str(r#"{"iamToken":"t1.abc","expiresAt":"2026-11-22T12:00:00Z"}"#).expect("deserializes");
        assert_eq!(t.iam_token.expose_secret(), "t1.abc");
        let m: MetadataToken =
            serde_json::from_str(r#"{"access_token":"CggVAgAAA","expires_in":39944,"token_type":"Bearer"}"#)
                .expect("deserializes");
        assert_eq!(m.expires_in, 39944);
    }
}
