//! Schema fragments shared by several fields: patterns and CEL rules that the apiserver enforces
//! at admission. `validation.rs` checks the same rules again in the controller, for clusters
//! older than 1.25 where `x-kubernetes-validations` is ignored.

use schemars::{json_schema, Schema, SchemaGenerator};

use super::validation::{
    API_ENDPOINT_MESSAGE, API_ENDPOINT_PATTERN, DNS1123_SUBDOMAIN_PATTERN, DURATION_PATTERN, MAX_DURATION_TEXT,
    METADATA_ENDPOINT_MESSAGE, METADATA_ENDPOINT_PATTERN,
};

fn endpoint(pattern: &str, message: &str, description: &str) -> Schema {
    let rule = format!("self.matches('{}')", pattern.replace('\\', "\\\\"));
    json_schema!({
        "type": "string",
        "description": description,
        "maxLength": 2048,
        "pattern": pattern,
        "x-kubernetes-validations": [{"rule": rule, "message": message}],
    })
}

pub(crate) fn api_endpoint(_: &mut SchemaGenerator) -> Schema {
    endpoint(
        API_ENDPOINT_PATTERN,
        API_ENDPOINT_MESSAGE,
        "Base URL of the provider's API; default derived from the zone or region.",
    )
}

pub(crate) fn metadata_endpoint(_: &mut SchemaGenerator) -> Schema {
    endpoint(METADATA_ENDPOINT_PATTERN, METADATA_ENDPOINT_MESSAGE, "Base URL of the instance metadata service.")
}

pub(crate) fn secret_name(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "description": "Name of the Secret the key is written to, in the AccessKey's namespace (a DNS-1123 subdomain).",
        "minLength": 1,
        "maxLength": 253,
        "pattern": DNS1123_SUBDOMAIN_PATTERN,
    })
}

/// An object kept as written (a snapshot of another part of the spec).
pub(crate) fn preserve_unknown(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": "object", "x-kubernetes-preserve-unknown-fields": true})
}

pub(crate) fn duration(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "description": "A duration such as 2160h, 90m or 1h30m (units h, m, s, in that order); at most 876000h.",
        "minLength": 2,
        "maxLength": 24,
        "pattern": DURATION_PATTERN,
        "x-kubernetes-validations": [{
            "rule": format!("duration(self) <= duration('{MAX_DURATION_TEXT}')"),
            "message": format!("must be at most {MAX_DURATION_TEXT} (100 years)"),
        }],
    })
}

/// A rotation window's duration: a duration of at least a minute (the operator checks the same).
pub(crate) fn window_duration(generator: &mut SchemaGenerator) -> Schema {
    let mut schema = duration(generator);
    if let Some(rules) = schema.get_mut("x-kubernetes-validations").and_then(|r| r.as_array_mut()) {
        rules.push(serde_json::json!({"rule": "duration(self) >= duration('1m')", "message": "must be at least 1m"}));
    }
    schema
}
