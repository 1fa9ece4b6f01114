//! The rules the CRD schema enforces at admission, checked again in Rust.
//!
//! Clusters older than 1.25 ignore `x-kubernetes-validations`, and the controller must never act
//! on a spec that a newer apiserver would have refused. The patterns here are the ones the schema
//! carries, so both paths accept exactly the same values.

use std::sync::LazyLock;

use regex::Regex;

use super::{AccessKeySpec, ExoscaleKey, IssuerProvider, KeyProvider};

pub const DNS1123_SUBDOMAIN_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// What the schema and the controller say of an endpoint that is not `https://` (or loopback).
pub(crate) const API_ENDPOINT_MESSAGE: &str =
    "endpoint must be an https:// URL; http:// is allowed only for loopback hosts (127.0.0.0/8, ::1, localhost)";
pub(crate) const METADATA_ENDPOINT_MESSAGE: &str = "endpoint must be an https:// URL; http:// is allowed only for loopback hosts and the metadata service 169.254.169.254";

pub const API_ENDPOINT_PATTERN: &str =
    r"^(https://[^\s/?#@]+|http://(localhost|127(\.[0-9]{1,3}){3}|\[::1\])(:[0-9]{1,5})?)(/[^\s?#]*)?$";
pub const METADATA_ENDPOINT_PATTERN: &str = r"^(https://[^\s/?#@]+|http://(localhost|127(\.[0-9]{1,3}){3}|\[::1\]|169\.254\.169\.254)(:[0-9]{1,5})?)(/[^\s?#]*)?$";
/// Hours, minutes and seconds in that order, each at most a few digits: the largest value
/// (about 165 years) fits every type a duration is held in, Go's and CEL's nanoseconds included,
/// so the CEL rule that refuses more than [`MAX_DURATION_TEXT`] never overflows on its way.
pub const DURATION_PATTERN: &str = r"^([0-9]{1,6}h)?([0-9]{1,7}m)?([0-9]{1,9}s)?$";
/// The longest duration any field accepts (100 years, as `parse_duration` refuses beyond).
pub const MAX_DURATION_TEXT: &str = "876000h";
pub const EXOSCALE_RESOURCE_PATTERN: &str = r"^[^/:\s]+/[^/:\s]+:\S+$";
pub const SECRET_DATA_KEY_PATTERN: &str = r"^[-._a-zA-Z0-9]+$";

/// A spec the controller refuses: the field (a JSON path below `spec`) and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("spec.{field}: {message}")]
pub struct InvalidSpec {
    pub field: String,
    pub message: String,
}

impl InvalidSpec {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }
}

fn regex(pattern: &'static str) -> Regex {
    // The patterns are constants covered by unit tests; failing here is a programming error.
    Regex::new(pattern).expect("built-in pattern compiles")
}

static API_ENDPOINT: LazyLock<Regex> = LazyLock::new(|| regex(API_ENDPOINT_PATTERN));
static METADATA_ENDPOINT: LazyLock<Regex> = LazyLock::new(|| regex(METADATA_ENDPOINT_PATTERN));
static DNS1123_SUBDOMAIN: LazyLock<Regex> = LazyLock::new(|| regex(DNS1123_SUBDOMAIN_PATTERN));
static SECRET_DATA_KEY: LazyLock<Regex> = LazyLock::new(|| regex(SECRET_DATA_KEY_PATTERN));

fn check_endpoint(field: &str, value: Option<&str>) -> Result<(), InvalidSpec> {
    match value {
        Some(v) if !API_ENDPOINT.is_match(v) => {
            Err(InvalidSpec::new(field, format!("{} (got {v:?})", API_ENDPOINT_MESSAGE)))
        }
        _ => Ok(()),
    }
}

/// Checks an issuer's provider block.
pub fn validate_issuer(provider: &IssuerProvider) -> Result<(), InvalidSpec> {
    match provider {
        IssuerProvider::Exoscale(e) => check_endpoint("exoscale.endpoint", e.endpoint.as_deref()),
        IssuerProvider::Yandex(y) => {
            match (&y.service_account_key_secret_ref, &y.metadata_service) {
                (Some(_), None) => {}
                (None, Some(m)) => {
                    if !METADATA_ENDPOINT.is_match(&m.endpoint) {
                        return Err(InvalidSpec::new(
                            "yandex.metadataService.endpoint",
                            format!("{} (got {:?})", METADATA_ENDPOINT_MESSAGE, m.endpoint),
                        ));
                    }
                }
                _ => {
                    return Err(InvalidSpec::new(
                        "yandex",
                        "set exactly one of serviceAccountKeySecretRef and metadataService",
                    ))
                }
            }
            check_endpoint("yandex.endpoint", y.endpoint.as_deref())?;
            check_endpoint("yandex.operationEndpoint", y.operation_endpoint.as_deref())
        }
        IssuerProvider::Outscale(o) => check_endpoint("outscale.endpoint", o.endpoint.as_deref()),
        IssuerProvider::Local(_) => Ok(()),
    }
}

/// The three ways an Exoscale key can be scoped.
#[derive(Debug, Clone, PartialEq)]
pub enum ExoscaleMode<'a> {
    /// (a) An API key bound to an existing role.
    ExistingRole(&'a str),
    /// (b) An API key bound to a role created for it.
    OwnRole(&'a super::ExoscaleRole),
    /// (c) A legacy access key.
    Legacy { operations: &'a [String], tags: &'a [String], resources: Vec<ExoscaleResource> },
}

/// A legacy access key resource, `domain/resource-type:resource-name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExoscaleResource {
    pub domain: String,
    pub resource_type: String,
    pub resource_name: String,
}

/// Parses `domain/resource-type:resource-name` as the exo CLI does: split once on `:`, then the
/// left part once on `/`; all three parts must be non-empty.
pub fn parse_exoscale_resource(s: &str) -> Result<ExoscaleResource, String> {
    let invalid =
        || format!("invalid resource {s:?}: expected domain/resource-type:resource-name, e.g. sos/bucket:my-bucket");
    let (left, name) = s.split_once(':').ok_or_else(invalid)?;
    let (domain, resource_type) = left.split_once('/').ok_or_else(invalid)?;
    let bad = |p: &str| p.is_empty() || p.chars().any(char::is_whitespace);
    if bad(domain) || bad(resource_type) || bad(name) || resource_type.contains('/') {
        return Err(invalid());
    }
    Ok(ExoscaleResource {
        domain: domain.to_string(),
        resource_type: resource_type.to_string(),
        resource_name: name.to_string(),
    })
}

impl ExoscaleKey {
    /// Which of the three modes this block asks for; exactly one must be set.
    pub fn mode(&self) -> Result<ExoscaleMode<'_>, InvalidSpec> {
        let legacy = self.operations.is_some() || self.tags.is_some() || self.resources.is_some();
        match (&self.role_id, &self.role, legacy) {
            (Some(id), None, false) => Ok(ExoscaleMode::ExistingRole(id)),
            (None, Some(role), false) => Ok(ExoscaleMode::OwnRole(role)),
            (None, None, true) => {
                let resources = self
                    .resources
                    .iter()
                    .flatten()
                    .enumerate()
                    .map(|(i, r)| {
                        parse_exoscale_resource(r).map_err(|m| InvalidSpec::new(format!("exoscale.resources[{i}]"), m))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(ExoscaleMode::Legacy {
                    operations: self.operations.as_deref().unwrap_or_default(),
                    tags: self.tags.as_deref().unwrap_or_default(),
                    resources,
                })
            }
            _ => Err(InvalidSpec::new(
                "exoscale",
                "exactly one of roleId, role, or operations/tags/resources (legacy access key) must be set",
            )),
        }
    }
}

/// Checks an issuer's `spec.policy` beyond what the schema enforces.
pub fn validate_policy(policy: Option<&crate::api::IssuerPolicy>, cluster_scoped: bool) -> Result<(), InvalidSpec> {
    let Some(policy) = policy else {
        return Ok(());
    };
    if let Some(ns) = &policy.namespaces {
        if !cluster_scoped {
            return Err(InvalidSpec::new(
                "policy.namespaces",
                "applies to ClusterKeyIssuers only: a KeyIssuer serves its own namespace",
            ));
        }
        if let Some(selector) = &ns.selector {
            kube::core::Selector::try_from(selector.clone())
                .map_err(|e| InvalidSpec::new("policy.namespaces.selector", e.to_string()))?;
        }
    }
    if let Some(max) = policy.outscale.as_ref().and_then(|o| o.max_expires_after.as_ref()) {
        max.get().map_err(|e| InvalidSpec::new("policy.outscale.maxExpiresAfter", e))?;
    }
    Ok(())
}

/// Checks an AccessKey spec beyond what serde already enforces.
pub fn validate_access_key(spec: &AccessKeySpec) -> Result<(), InvalidSpec> {
    if spec.secret_name.len() > 253 || !DNS1123_SUBDOMAIN.is_match(&spec.secret_name) {
        return Err(InvalidSpec::new(
            "secretName",
            format!(
                "{:?} is not a valid Secret name (a DNS-1123 subdomain: lower-case letters, digits, '-' and '.')",
                spec.secret_name
            ),
        ));
    }
    if let Some(data) = spec.secret_template.as_ref().and_then(|t| t.data.as_ref()) {
        if let Some(bad) = data.keys().find(|k| !SECRET_DATA_KEY.is_match(k)) {
            return Err(InvalidSpec::new(
                "secretTemplate.data",
                format!("{bad:?} is not a valid Secret key: use letters, digits, '-', '_' and '.'"),
            ));
        }
    }
    if let KeyProvider::Exoscale(e) = &spec.provider {
        e.mode()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! Each case runs through the CEL rules exactly as a ≥ 1.25 apiserver evaluates them (kube's
    //! client-side CEL engine over the generated schema) and through the Rust checks the
    //! controller uses; both must agree.
    use serde_json::{json, Value};

    use super::*;
    use crate::api::{AccessKey, KeyIssuer};

    fn access_key(spec: Value) -> AccessKey {
        serde_json::from_value(json!({
            "apiVersion": "cloudkeys.io/v1alpha1", "kind": "AccessKey",
            "metadata": {"name": "k", "namespace": "ns"}, "spec": spec,
        }))
        .expect("test spec deserializes")
    }

    fn issuer(spec: Value) -> KeyIssuer {
        serde_json::from_value(json!({
            "apiVersion": "cloudkeys.io/v1alpha1", "kind": "KeyIssuer",
            "metadata": {"name": "i", "namespace": "ns"}, "spec": spec,
        }))
        .expect("test spec deserializes")
    }

    fn exoscale(block: Value) -> AccessKey {
        access_key(json!({"issuerRef": {"name": "i"}, "secretName": "s", "exoscale": block}))
    }

    fn check_key(key: &AccessKey, valid: bool, message: &str) {
        let cel = key.validate_cel();
        let rust = validate_access_key(&key.spec);
        assert_eq!(cel.is_ok(), valid, "CEL on {:?}: {cel:?}", key.spec);
        assert_eq!(rust.is_ok(), valid, "Rust on {:?}: {rust:?}", key.spec);
        if !valid {
            let cel = format!("{:?}", cel.expect_err("invalid"));
            assert!(cel.contains(message), "CEL error {cel} lacks {message:?}");
            assert!(rust.expect_err("invalid").to_string().contains(message));
        }
    }

    fn check_issuer(spec: Value, valid: bool, message: &str) {
        let i = issuer(spec);
        let cel = i.validate_cel();
        let rust = validate_issuer(&i.spec.provider);
        assert_eq!(cel.is_ok(), valid, "CEL on {:?}: {cel:?}", i.spec);
        assert_eq!(rust.is_ok(), valid, "Rust on {:?}: {rust:?}", i.spec);
        if !valid {
            let cel = format!("{:?}", cel.expect_err("invalid"));
            assert!(cel.contains(message), "CEL error {cel} lacks {message:?}");
            assert!(rust.expect_err("invalid").to_string().contains(message));
        }
    }

    const ONE_MODE: &str = "exactly one of roleId, role, or operations/tags/resources";

    #[test]
    fn exoscale_key_accepts_each_mode_alone() {
        check_key(&exoscale(json!({"roleId": "7b1e0000-0000-4000-8000-000000000001"})), true, "");
        check_key(&exoscale(json!({"role": {"policy": {"defaultServiceStrategy": "deny", "services": {}}}})), true, "");
        check_key(&exoscale(json!({"operations": ["get-sos-object"]})), true, "");
        check_key(&exoscale(json!({"tags": ["compute"]})), true, "");
        check_key(
            &exoscale(json!({"operations": ["get-sos-object"], "tags": ["sos"], "resources": ["sos/bucket:b"]})),
            true,
            "",
        );
    }

    #[test]
    fn exoscale_key_refuses_no_mode_or_two_modes() {
        check_key(&exoscale(json!({"name": "only-a-name"})), false, ONE_MODE);
        check_key(
            &exoscale(json!({"roleId": "7b1e0000-0000-4000-8000-000000000001", "operations": ["list-zones"]})),
            false,
            ONE_MODE,
        );
        check_key(
            &exoscale(json!({"roleId": "7b1e0000-0000-4000-8000-000000000001",
                "role": {"policy": {"defaultServiceStrategy": "deny"}}})),
            false,
            ONE_MODE,
        );
        check_key(
            &exoscale(json!({"role": {"policy": {"defaultServiceStrategy": "allow"}}, "resources": ["sos/bucket:b"]})),
            false,
            ONE_MODE,
        );
    }

    #[test]
    fn secret_template_data_keys_must_be_secret_keys() {
        let with_data = |data: Value| {
            access_key(json!({"issuerRef": {"name": "i"}, "secretName": "s", "local": {},
                "secretTemplate": {"data": data}}))
        };
        check_key(&with_data(json!({"AWS_ACCESS_KEY_ID": "{{ accessKeyId }}", "config.ini": "x"})), true, "");
        check_key(&with_data(json!({"bad key": "x"})), false, "valid Secret key");
        check_key(&with_data(json!({"a/b": "x"})), false, "valid Secret key");
    }

    #[test]
    fn endpoints_must_be_https_except_on_loopback() {
        let exo = |endpoint: &str| json!({"exoscale": {"endpoint": endpoint, "credentialsSecretRef": {"name": "a"}}});
        for ok in [
            "https://api-ch-gva-2.exoscale.com/v2",
            "https://proxy.internal:8443",
            "http://127.0.0.1:8080/v2",
            "http://127.10.0.3",
            "http://localhost:9000/v2",
            "http://[::1]:9000",
        ] {
            check_issuer(exo(ok), true, "");
        }
        for bad in [
            "http://api.example.com/v2",
            "http://10.0.0.1/v2",
            "http://169.254.169.254",
            "ftp://127.0.0.1/",
            "https://user@host/",
            "api.example.com",
            "http://localhost.evil.com/",
        ] {
            check_issuer(exo(bad), false, "endpoint must be an https:// URL");
        }
        let osc = json!({"outscale": {"region": "eu-west-2", "endpoint": "http://example.com",
            "credentialsSecretRef": {"name": "a"}}});
        check_issuer(osc, false, "endpoint must be an https:// URL");
        let yc = |field: &str, endpoint: &str| {
            let mut spec = json!({"yandex": {"serviceAccountKeySecretRef": {"name": "a"}}});
            spec["yandex"][field] = json!(endpoint);
            spec
        };
        check_issuer(yc("endpoint", "http://127.0.0.1:1"), true, "");
        check_issuer(yc("endpoint", "http://iam.example.com"), false, "endpoint must be an https:// URL");
        check_issuer(
            yc("operationEndpoint", "http://operation.example.com"),
            false,
            "endpoint must be an https:// URL",
        );
    }

    #[test]
    fn metadata_service_may_use_the_link_local_address() {
        let md = |endpoint: &str| json!({"yandex": {"metadataService": {"endpoint": endpoint}}});
        check_issuer(md("http://169.254.169.254"), true, "");
        check_issuer(md("http://127.0.0.1:8080"), true, "");
        check_issuer(md("http://169.254.169.253"), false, "metadata service 169.254.169.254");
        check_issuer(md("http://metadata.example.com"), false, "metadata service 169.254.169.254");
    }

    #[test]
    fn exoscale_resources_parse_as_the_exo_cli_does() {
        assert_eq!(
            parse_exoscale_resource("sos/bucket:my-bucket"),
            Ok(ExoscaleResource {
                domain: "sos".into(),
                resource_type: "bucket".into(),
                resource_name: "my-bucket".into()
            })
        );
        assert_eq!(parse_exoscale_resource("sos/bucket:a:b").map(|r| r.resource_name), Ok("a:b".into()));
        for bad in
            ["sos-bucket", "sos/bucket:", "/bucket:b", "sos/:b", "sos:bucket/b", "sos/bu/cket:b", "sos/bucket: b"]
        {
            let err = parse_exoscale_resource(bad).expect_err(bad);
            assert!(err.contains("domain/resource-type:resource-name"), "{err}");
            let schema = regex(EXOSCALE_RESOURCE_PATTERN);
            assert!(!schema.is_match(bad) || bad == "sos/bucket:a", "schema pattern accepts {bad:?}");
        }
    }

    #[test]
    fn secret_names_are_dns1123_subdomains() {
        let named = |name: &str| access_key(json!({"issuerRef": {"name": "i"}, "secretName": name, "local": {}}));
        assert!(validate_access_key(&named("backups-credentials").spec).is_ok());
        assert!(validate_access_key(&named("a.b-c").spec).is_ok());
        for bad in ["Backups", "a_b", "-a", "a-", &"a".repeat(254)] {
            let err = validate_access_key(&named(bad).spec).expect_err(bad);
            assert_eq!(err.field, "secretName");
        }
    }
}
