//! The CRDs on a current Kubernetes: a 1.36 CRD server (`apiextensions-apiserver`, built once per
//! machine by `scripts/crd-server.sh build`) beside the 1.20 control plane the other tests use.
//!
//! The CRDs are created on it with no `Warning` (every `format` one the server knows) and within
//! its CEL cost budget (a rule over it refuses the CRD). Then a table of AccessKeys, KeyIssuers and
//! ClusterKeyIssuers goes through raw REST: the examples of `examples/` accepted, objects at the
//! bounds accepted, and for every rule of the schema an object that breaks it, refused by the
//! server with the message the schema (and README) states. The rules are read from the CRDs
//! themselves: a rule, pattern or bound without a row that breaks it fails the test.
//!
//! `cargo test --test e2e -- crd_server:: --nocapture` shows the server's version and the table.

use crate::support;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use http::Request;
use kube::client::Body;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::{json, Value};

const GROUP_VERSION: &str = "cloudkeys.io/v1alpha1";
/// Namespaced objects go here; the CRD server serves no namespaces (NamespaceLifecycle is off).
const NS: &str = "cloudkeys-schema";
const KINDS: [&str; 3] = ["AccessKey", "KeyIssuer", "ClusterKeyIssuer"];

/// The schema keywords that refuse objects: each one the CRDs use needs a row that breaks it.
const RULE_KEYWORDS: [&str; 17] = [
    "x-kubernetes-validations",
    "pattern",
    "maximum",
    "minimum",
    "exclusiveMaximum",
    "exclusiveMinimum",
    "multipleOf",
    "maxLength",
    "minLength",
    "maxItems",
    "minItems",
    "uniqueItems",
    "maxProperties",
    "minProperties",
    "enum",
    "oneOf",
    "anyOf",
];

/// Starts a CRD server for this test process; it stops by itself when the process exits.
fn start_server() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cloudkeys-crd-server-{}", std::process::id()));
    let out = Command::new(support::repo_root().join("scripts/crd-server.sh"))
        .arg("start")
        .arg(&dir)
        .arg(std::process::id().to_string())
        .output()
        .expect("cannot run scripts/crd-server.sh");
    if !out.status.success() {
        panic!(
            "the Kubernetes 1.36 CRD server did not start:\n{}\n\
             If its binary is missing, build it once with `make crd-server` \
             (or `scripts/crd-server.sh deps && scripts/crd-server.sh build`).",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    dir
}

async fn client(dir: &std::path::Path) -> Client {
    let kubeconfig = Kubeconfig::read_from(dir.join("kubeconfig")).expect("kubeconfig readable");
    let config =
        Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await.expect("kubeconfig valid");
    Client::try_from(config).expect("client builds")
}

/// One answer of the server: status code, body, and the `Warning` headers.
struct Answer {
    code: u16,
    body: Value,
    warnings: Vec<String>,
}

async fn call(client: &Client, method: &str, path: &str, content_type: &str, body: Option<&Value>) -> Answer {
    let bytes = body.map(|b| serde_json::to_vec(b).expect("JSON body")).unwrap_or_default();
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("Content-Type", content_type)
        .header("Accept", "application/json")
        .body(Body::from(bytes))
        .expect("request builds");
    let response = client.send(request).await.unwrap_or_else(|e| panic!("{method} {path}: no answer: {e}"));
    let code = response.status().as_u16();
    let warnings = response
        .headers()
        .get_all("warning")
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    let bytes = response.into_body().collect_bytes().await.expect("answer readable");
    let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    Answer { code, body, warnings }
}

fn collection(kind: &str) -> String {
    let plural = format!("{}s", kind.to_ascii_lowercase());
    if kind == "ClusterKeyIssuer" {
        format!("/apis/{GROUP_VERSION}/{plural}")
    } else {
        format!("/apis/{GROUP_VERSION}/namespaces/{NS}/{plural}")
    }
}

// ---------------------------------------------------------------------------------------------
// The schema's rules, read from the CRDs.

/// Every (schema path, keyword) of a CRD's schema that can refuse an object: `spec.rotation.every`,
/// `[]` for list items, `{}` for map values; rules of `x-kubernetes-validations` by index.
fn schema_rules(schema: &Value) -> BTreeMap<(String, String), Value> {
    fn walk(node: &Value, path: &str, out: &mut BTreeMap<(String, String), Value>) {
        let Some(obj) = node.as_object() else { return };
        for keyword in RULE_KEYWORDS {
            let Some(value) = obj.get(keyword) else { continue };
            if keyword == "x-kubernetes-validations" {
                for (i, rule) in value.as_array().expect("validations are a list").iter().enumerate() {
                    out.insert((path.to_string(), format!("{keyword}[{i}]")), rule.clone());
                }
            } else {
                out.insert((path.to_string(), keyword.to_string()), value.clone());
            }
        }
        // Branches of oneOf/anyOf constrain the same object (the Exoscale modes' anyOf).
        for branches in ["oneOf", "anyOf", "allOf"] {
            for branch in obj.get(branches).and_then(Value::as_array).into_iter().flatten() {
                walk(branch, path, out);
            }
        }
        for (name, sub) in obj.get("properties").and_then(Value::as_object).into_iter().flatten() {
            let p = if path.is_empty() { name.clone() } else { format!("{path}.{name}") };
            walk(sub, &p, out);
        }
        if let Some(items) = obj.get("items") {
            walk(items, &format!("{path}[]"), out);
        }
        if let Some(values) = obj.get("additionalProperties").filter(|v| v.is_object()) {
            walk(values, &format!("{path}{{}}"), out);
        }
    }
    let mut out = BTreeMap::new();
    walk(schema, "", &mut out);
    out
}

/// The schema path and node of a field as the server names it (`spec.consumers.targets[0].kind`,
/// `spec.exoscale.role.policy.services.sos.type`).
fn resolve<'a>(schema: &'a Value, field: &str) -> (String, &'a Value) {
    let mut node = schema;
    let mut path = String::new();
    for segment in field.split('.') {
        let (name, indexes) = match segment.find('[') {
            Some(i) => (&segment[..i], segment[i..].matches('[').count()),
            None => (segment, 0),
        };
        if let Some(sub) = node.get("properties").and_then(|p| p.get(name)) {
            node = sub;
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(name);
        } else if let Some(values) = node.get("additionalProperties").filter(|v| v.is_object()) {
            node = values;
            path.push_str("{}");
        } else {
            panic!("{field}: no field {name:?} in the schema");
        }
        for _ in 0..indexes {
            node = node.get("items").unwrap_or_else(|| panic!("{field}: {name} is not a list"));
            path.push_str("[]");
        }
    }
    (path, node)
}

fn number(v: &Value) -> String {
    match v.as_f64() {
        Some(f) if f.fract() == 0.0 => format!("{}", f as i64),
        _ => v.to_string(),
    }
}

/// What the server says when `field` breaks `keyword` of its schema `node`: the text one of the
/// refusal's causes holds, taken from the schema (a CEL rule's own message). `field` is named as
/// the text names it: through the status subresource, relative to `status`.
fn expected_text(field: &str, keyword: &str, node: &Value) -> String {
    let bound = |k: &str| number(&node[k]);
    match keyword {
        "maximum" => format!("{field} in body should be less than or equal to {}", bound("maximum")),
        "minimum" => format!("{field} in body should be greater than or equal to {}", bound("minimum")),
        "pattern" => format!("{field} in body should match '{}'", node["pattern"].as_str().expect("pattern")),
        "maxLength" => format!("Too long: may not be more than {} bytes", bound("maxLength")),
        "minLength" => format!("{field} in body should be at least {} chars long", bound("minLength")),
        "maxItems" => format!("must have at most {} items", bound("maxItems")),
        "minItems" => format!("{field} in body should have at least {} items", bound("minItems")),
        "enum" => {
            let values: Vec<String> = node["enum"].as_array().expect("enum").iter().map(|v| v.to_string()).collect();
            format!("supported values: {}", values.join(", "))
        }
        "oneOf" => format!("\"{field}\" must validate one and only one schema (oneOf)"),
        "anyOf" => format!("\"{field}\" must validate at least one schema (anyOf)"),
        k if k.starts_with("x-kubernetes-validations[") => {
            let i: usize = k["x-kubernetes-validations[".len()..k.len() - 1].parse().expect("rule index");
            node["x-kubernetes-validations"][i]["message"].as_str().expect("every rule has a message").to_string()
        }
        other => panic!("no expected message known for {other}: add it to expected_text"),
    }
}

// ---------------------------------------------------------------------------------------------
// The table.

#[derive(Clone, Copy, PartialEq)]
enum Via {
    /// POST the object.
    Create,
    /// POST the object without its status, then merge-patch the status subresource.
    Status,
}

struct Row {
    kind: &'static str,
    what: String,
    object: Value,
    via: Via,
    /// Empty: accepted. Otherwise the (field, keyword) pairs the object breaks.
    breaks: Vec<(String, String)>,
}

/// JSON merge patch: `patch` over `base` (null removes a key).
fn merged(base: &Value, patch: &Value) -> Value {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            let mut out = b.clone();
            for (k, v) in p {
                if v.is_null() {
                    out.remove(k);
                } else {
                    let next = merged(out.get(k).unwrap_or(&Value::Null), v);
                    out.insert(k.clone(), next);
                }
            }
            Value::Object(out)
        }
        (_, p) => p.clone(),
    }
}

/// `{"a": {"b": value}}` from "a.b" (plain names only).
fn at(path: &str, value: Value) -> Value {
    path.rsplit('.').fold(value, |inner, name| json!({ name: inner }))
}

struct Table {
    rows: Vec<Row>,
}

impl Table {
    fn object(kind: &'static str, spec: Value) -> Value {
        json!({"apiVersion": GROUP_VERSION, "kind": kind, "metadata": {"name": "row"}, "spec": spec})
    }

    /// A row whose spec is `base` merged with `patch`.
    fn spec(&mut self, kind: &'static str, what: &str, base: &Value, patch: Value, breaks: &[(&str, &str)]) {
        self.rows.push(Row {
            kind,
            what: what.to_string(),
            object: Self::object(kind, merged(base, &patch)),
            via: Via::Create,
            breaks: breaks.iter().map(|(f, k)| (f.to_string(), k.to_string())).collect(),
        });
    }

    fn status(&mut self, kind: &'static str, what: &str, spec: &Value, status: Value, breaks: &[(&str, &str)]) {
        let mut object = Self::object(kind, spec.clone());
        object["status"] = status;
        self.rows.push(Row {
            kind,
            what: what.to_string(),
            object,
            via: Via::Status,
            breaks: breaks.iter().map(|(f, k)| (f.to_string(), k.to_string())).collect(),
        });
    }

    /// A duration field (`spec.rotation.every`): at the bound, and past each of its rules.
    fn duration(&mut self, kind: &'static str, base: &Value, field: &str) {
        let path = field.strip_prefix("spec.").expect("a spec field");
        self.duration_set(kind, base, field, &|v| at(path, json!(v)));
    }

    /// A duration `field` as the server names it, put into the spec by `set`.
    fn duration_set(&mut self, kind: &'static str, base: &Value, field: &str, set: &dyn Fn(&str) -> Value) {
        self.spec(kind, &format!("{field}: 876000h"), base, set("876000h"), &[]);
        self.spec(kind, &format!("{field}: 1h30m15s"), base, set("1h30m15s"), &[]);
        self.spec(kind, &format!("{field}: 876001h"), base, set("876001h"), &[(field, "x-kubernetes-validations[0]")]);
        self.spec(
            kind,
            &format!("{field}: 99999999999999999999h"),
            base,
            set("99999999999999999999h"),
            &[(field, "pattern")],
        );
        self.spec(kind, &format!("{field}: 10d"), base, set("10d"), &[(field, "pattern")]);
        self.spec(kind, &format!("{field}: \"\""), base, set(""), &[(field, "minLength")]);
        // 25 characters the pattern allows, one more than maxLength.
        self.spec(
            kind,
            &format!("{field}: 000001h0000001m000000001s"),
            base,
            set("000001h0000001m000000001s"),
            &[(field, "maxLength")],
        );
    }

    /// A list of rotation windows at `field` (`spec.rotation.windows`): its length, and each rule
    /// of a window's fields, broken in the first window.
    fn windows(&mut self, kind: &'static str, base: &Value, field: &str) {
        let path = field.strip_prefix("spec.").expect("a spec field");
        let window = |patch: Value| merged(&json!({"schedule": "0 2 * * 1-5", "duration": "2h"}), &patch);
        let set = |w: Value| at(path, json!([w]));
        let first = |name: &str| format!("{field}[0].{name}");
        self.spec(
            kind,
            &format!("{field}: 20 windows in Europe/Zurich"),
            base,
            at(path, json!(vec![window(json!({"timeZone": "Europe/Zurich"})); 20])),
            &[],
        );
        self.spec(
            kind,
            &format!("{field}: 21 windows"),
            base,
            at(path, json!(vec![window(json!({})); 21])),
            &[(field, "maxItems")],
        );
        for (name, max, fill) in [("schedule", 128, "*"), ("timeZone", 64, "z")] {
            self.length_set(kind, base, &first(name), max, fill, &|v| set(window(json!({name: v}))));
        }
        let duration = first("duration");
        self.duration_set(kind, base, &duration, &|v| set(window(json!({"duration": v}))));
        self.spec(kind, &format!("{duration}: 1m"), base, set(window(json!({"duration": "1m"}))), &[]);
        self.spec(
            kind,
            &format!("{duration}: 59s"),
            base,
            set(window(json!({"duration": "59s"}))),
            &[(&duration, "x-kubernetes-validations[1]")],
        );
    }

    /// A provider endpoint: loopback http:// accepted, other http:// and too long refused.
    fn endpoint(&mut self, kind: &'static str, base: &Value, field: &str, metadata_service: bool) {
        let path = field.strip_prefix("spec.").expect("a spec field");
        let set = |v: &str| at(path, json!(v));
        self.spec(kind, &format!("{field}: http://127.0.0.1:8080/x"), base, set("http://127.0.0.1:8080/x"), &[]);
        self.spec(kind, &format!("{field}: https://api.example.com/v2"), base, set("https://api.example.com/v2"), &[]);
        if metadata_service {
            self.spec(kind, &format!("{field}: http://169.254.169.254"), base, set("http://169.254.169.254"), &[]);
        }
        self.spec(
            kind,
            &format!("{field}: http://10.0.0.1"),
            base,
            set("http://10.0.0.1"),
            &[(field, "pattern"), (field, "x-kubernetes-validations[0]")],
        );
        let long = format!("https://example.com/{}", "a".repeat(2048));
        self.spec(
            kind,
            &format!("{field}: https://example.com/ + 2048 × a"),
            base,
            set(&long),
            &[(field, "maxLength")],
        );
    }

    /// A string of at least 1 and at most `max` characters (`fill` repeated must suit its pattern).
    fn length(&mut self, kind: &'static str, base: &Value, field: &str, max: usize, fill: &str) {
        let path = field.strip_prefix("spec.").expect("a spec field");
        self.length_set(kind, base, field, max, fill, &|v| at(path, json!(v)));
    }

    /// A string `field` as the server names it, put into the spec by `set`.
    fn length_set(
        &mut self,
        kind: &'static str,
        base: &Value,
        field: &str,
        max: usize,
        fill: &str,
        set: &dyn Fn(&str) -> Value,
    ) {
        let long: String = fill.repeat(max + 1).chars().take(max + 1).collect();
        let at_max: String = long.chars().take(max).collect();
        self.spec(kind, &format!("{field}: {max} × {fill}"), base, set(&at_max), &[]);
        self.spec(kind, &format!("{field}: \"\""), base, set(""), &[(field, "minLength")]);
        self.spec(kind, &format!("{field}: {} × {fill}", max + 1), base, set(&long), &[(field, "maxLength")]);
    }
}

const ROLE_ID: &str = "7b1e0000-0000-4000-8000-000000000001";

/// Puts an issuer reference where a status holds one.
type Wrap = fn(Value) -> Value;

fn issuer_ref(kind: &str) -> Value {
    json!({"name": "local", "kind": kind})
}

/// A pending replacement of an AccessKey's status, `patch` over the required fields.
fn pending(patch: Value) -> Value {
    merged(&json!({"attempt": "a", "issuer": issuer_ref("KeyIssuer"), "startedAt": "2026-01-01T00:00:00Z"}), &patch)
}

/// A retired key of an AccessKey's status, `patch` over the required fields.
fn retired(patch: Value) -> Value {
    merged(&json!({"accessKeyId": "a", "keyRef": "r", "issuer": issuer_ref("KeyIssuer")}), &patch)
}

fn access_key_rows(t: &mut Table) {
    const K: &str = "AccessKey";
    let base = json!({"issuerRef": {"name": "local"}, "secretName": "s", "local": {}});
    let exo = json!({"issuerRef": {"name": "exoscale"}, "secretName": "s", "exoscale": {"roleId": ROLE_ID}});
    let osc = json!({"issuerRef": {"name": "outscale"}, "secretName": "s", "outscale": {"userName": "bot"}});
    let ydx = json!({"issuerRef": {"name": "yandex"}, "secretName": "s", "yandex": {}});

    t.spec(K, "no provider block", &base, json!({"local": null}), &[("spec", "oneOf")]);
    t.spec(K, "two provider blocks", &base, json!({"yandex": {}}), &[("spec", "oneOf")]);
    t.spec(
        K,
        "consumers target of kind Pod",
        &base,
        json!({"consumers": {"targets": [{"kind": "Pod", "name": "web"}]}}),
        &[("spec.consumers.targets[0].kind", "enum")],
    );
    for (what, name, breaks) in [
        ("consumers target name \"\"", String::new(), "minLength"),
        ("consumers target name 254 × a", "a".repeat(254), "maxLength"),
    ] {
        t.spec(
            K,
            what,
            &base,
            json!({"consumers": {"targets": [{"kind": "Deployment", "name": name}]}}),
            &[("spec.consumers.targets[0].name", breaks)],
        );
    }
    t.spec(
        K,
        "consumers target name 253 × a",
        &base,
        json!({"consumers": {"targets": [{"kind": "Deployment", "name": "a".repeat(253)}]}}),
        &[],
    );
    t.spec(K, "deletionPolicy: Keep", &base, json!({"deletionPolicy": "Keep"}), &[("spec.deletionPolicy", "enum")]);
    t.spec(K, "deletionPolicy: Retain", &base, json!({"deletionPolicy": "Retain"}), &[]);

    // Exoscale: exactly one of the three modes, as CEL and as oneOf/anyOf.
    t.spec(
        K,
        "exoscale roleId and tags",
        &exo,
        json!({"exoscale": {"tags": ["compute"]}}),
        &[("spec.exoscale", "x-kubernetes-validations[0]"), ("spec.exoscale", "oneOf")],
    );
    t.spec(K, "exoscale: {}", &exo, json!({"exoscale": {"roleId": null}}), &[("spec.exoscale", "anyOf")]);
    t.length(K, &exo, "spec.exoscale.name", 128, "k");
    for list in ["operations", "tags", "resources"] {
        t.spec(
            K,
            &format!("exoscale {list}: []"),
            &exo,
            json!({"exoscale": {"roleId": null, list: []}}),
            &[(&format!("spec.exoscale.{list}"), "minItems")],
        );
    }
    t.spec(
        K,
        "exoscale resources: [sos/bucket:backups]",
        &exo,
        json!({"exoscale": {"roleId": null, "resources": ["sos/bucket:backups"]}}),
        &[],
    );
    t.spec(
        K,
        "exoscale resources: [backups]",
        &exo,
        json!({"exoscale": {"roleId": null, "resources": ["backups"]}}),
        &[("spec.exoscale.resources[0]", "pattern")],
    );
    let role = json!({"issuerRef": {"name": "exoscale"}, "secretName": "s", "exoscale": {"role": {
        "description": "d",
        "policy": {"defaultServiceStrategy": "deny", "services": {"sos": {"type": "rules", "rules": [
            {"action": "allow", "expression": "resources.bucket == 'backups'"}]}}}}}});
    t.length(K, &role, "spec.exoscale.role.description", 255, "d");
    t.spec(
        K,
        "exoscale role defaultServiceStrategy: maybe",
        &role,
        json!({"exoscale": {"role": {"policy": {"defaultServiceStrategy": "maybe"}}}}),
        &[("spec.exoscale.role.policy.defaultServiceStrategy", "enum")],
    );
    t.spec(
        K,
        "exoscale role service type: sometimes",
        &role,
        json!({"exoscale": {"role": {"policy": {"services": {"sos": {"type": "sometimes"}}}}}}),
        &[("spec.exoscale.role.policy.services.sos.type", "enum")],
    );
    t.spec(
        K,
        "exoscale role rule action: permit",
        &role,
        json!({"exoscale": {"role": {"policy": {"services": {"sos": {"rules": [
            {"action": "permit", "expression": "true"}]}}}}}}),
        &[("spec.exoscale.role.policy.services.sos.rules[0].action", "enum")],
    );
    t.spec(
        K,
        "exoscale role rule expression: \"\"",
        &role,
        json!({"exoscale": {"role": {"policy": {"services": {"sos": {"rules": [
            {"action": "allow", "expression": ""}]}}}}}}),
        &[("spec.exoscale.role.policy.services.sos.rules[0].expression", "minLength")],
    );
    t.spec(
        K,
        "exoscale roleId: not-a-uuid",
        &exo,
        json!({"exoscale": {"roleId": "not-a-uuid"}}),
        &[("spec.exoscale.roleId", "pattern")],
    );

    t.spec(
        K,
        "issuerRef kind: Issuer",
        &base,
        json!({"issuerRef": {"kind": "Issuer"}}),
        &[("spec.issuerRef.kind", "enum")],
    );
    t.spec(K, "issuerRef kind: ClusterKeyIssuer", &base, json!({"issuerRef": {"kind": "ClusterKeyIssuer"}}), &[]);
    t.length(K, &base, "spec.issuerRef.name", 253, "i");

    t.duration(K, &osc, "spec.outscale.expiresAfter");
    t.length(K, &osc, "spec.outscale.userName", 64, "u");
    t.spec(
        K,
        "outscale userName: \"bot name\"",
        &osc,
        json!({"outscale": {"userName": "bot name"}}),
        &[("spec.outscale.userName", "pattern")],
    );
    for field in [
        "spec.rotation.every",
        "spec.rotation.gracePeriod",
        "spec.rotation.rolloutTimeout",
        "spec.rotation.maxUsageHold",
    ] {
        t.duration(K, &base, field);
    }
    t.windows(K, &base, "spec.rotation.windows");

    t.length(K, &base, "spec.secretName", 253, "s");
    t.spec(K, "secretName: Not_A_Name", &base, json!({"secretName": "Not_A_Name"}), &[("spec.secretName", "pattern")]);
    t.spec(
        K,
        "secretTemplate data key a/b",
        &base,
        json!({"secretTemplate": {"data": {"a/b": "x"}}}),
        &[("spec.secretTemplate.data", "x-kubernetes-validations[0]")],
    );
    t.spec(
        K,
        "secretTemplate data key AWS_ACCESS-key.1",
        &base,
        json!({"secretTemplate": {"data": {"AWS_ACCESS-key.1": "{{ accessKeyId }}"}}}),
        &[],
    );

    t.spec(K, "yandex description 256 × d", &ydx, json!({"yandex": {"description": "d".repeat(256)}}), &[]);
    t.spec(
        K,
        "yandex description 257 × d",
        &ydx,
        json!({"yandex": {"description": "d".repeat(257)}}),
        &[("spec.yandex.description", "maxLength")],
    );
    t.length(K, &ydx, "spec.yandex.serviceAccountId", 50, "a");

    // The status, as the operator writes it through the status subresource.
    t.status(
        K,
        "status at its bounds",
        &base,
        json!({
            "forcedReplacements": 4294967295u64,
            "requestedReplacements": 4294967295u64,
            "issuedBy": issuer_ref("ClusterKeyIssuer"),
            "consumers": [{"keyId": "k", "kind": "DaemonSet", "name": "d", "rolledOut": true}],
            "pending": pending(json!({"gracePeriodSeconds": 3153600000u64})),
            "retired": [retired(json!({"gracePeriodSeconds": 0}))],
        }),
        &[],
    );
    t.status(
        K,
        "status consumer of kind Job",
        &base,
        json!({"consumers": [{"keyId": "k", "kind": "Job", "name": "j", "rolledOut": false}]}),
        &[("status.consumers[0].kind", "enum")],
    );
    for field in ["forcedReplacements", "requestedReplacements"] {
        for (value, breaks) in [(json!(4294967296u64), "maximum"), (json!(-1), "minimum")] {
            t.status(
                K,
                &format!("status {field}: {value}"),
                &base,
                json!({ field: value }),
                &[(&format!("status.{field}"), breaks)],
            );
        }
    }
    let wraps: [(&str, Wrap); 3] = [
        ("issuedBy", |issuer| json!({"issuedBy": issuer})),
        ("pending.issuer", |issuer| json!({"pending": pending(json!({"issuer": issuer}))})),
        ("retired[0].issuer", |issuer| json!({"retired": [retired(json!({"issuer": issuer}))]})),
    ];
    for (name, wrap) in wraps {
        let field = format!("status.{name}");
        t.status(
            K,
            &format!("{field} kind: Issuer"),
            &base,
            wrap(json!({"name": "i", "kind": "Issuer"})),
            &[(&format!("{field}.kind"), "enum")],
        );
        t.status(
            K,
            &format!("{field} name: \"\""),
            &base,
            wrap(json!({"name": ""})),
            &[(&format!("{field}.name"), "minLength")],
        );
        t.status(
            K,
            &format!("{field} name: 254 × i"),
            &base,
            wrap(json!({"name": "i".repeat(254)})),
            &[(&format!("{field}.name"), "maxLength")],
        );
    }
    for (value, breaks) in [(json!(3153600001u64), "maximum"), (json!(-1), "minimum")] {
        t.status(
            K,
            &format!("status.pending gracePeriodSeconds: {value}"),
            &base,
            json!({"pending": pending(json!({"gracePeriodSeconds": value}))}),
            &[("status.pending.gracePeriodSeconds", breaks)],
        );
        t.status(
            K,
            &format!("status.retired[0] gracePeriodSeconds: {value}"),
            &base,
            json!({"retired": [retired(json!({"gracePeriodSeconds": value}))]}),
            &[("status.retired[0].gracePeriodSeconds", breaks)],
        );
    }
}

fn issuer_rows(t: &mut Table, k: &'static str) {
    let base = json!({"local": {}});
    let exo = json!({"exoscale": {"zone": "ch-gva-2", "credentialsSecretRef": {"name": "exo"}}});
    let osc = json!({"outscale": {"region": "eu-west-2", "credentialsSecretRef": {"name": "osc"}}});
    let ydx = json!({"yandex": {"serviceAccountKeySecretRef": {"name": "yc"}}});
    let ydx_meta = json!({"yandex": {"metadataService": {}}});

    t.spec(k, "spec: {}", &base, json!({"local": null}), &[("spec", "oneOf")]);
    t.spec(k, "local and exoscale", &base, exo.clone(), &[("spec", "oneOf")]);

    t.length(k, &exo, "spec.exoscale.credentialsSecretRef.name", 253, "e");
    t.endpoint(k, &exo, "spec.exoscale.endpoint", false);
    t.spec(
        k,
        "exoscale zone: CH-GVA-2",
        &exo,
        json!({"exoscale": {"zone": "CH-GVA-2"}}),
        &[("spec.exoscale.zone", "pattern")],
    );

    t.length(k, &osc, "spec.outscale.credentialsSecretRef.name", 253, "o");
    t.endpoint(k, &osc, "spec.outscale.endpoint", false);
    t.spec(
        k,
        "outscale region: eu_west_2",
        &osc,
        json!({"outscale": {"region": "eu_west_2"}}),
        &[("spec.outscale.region", "pattern")],
    );
    let region = |n: usize| format!("{}-west-2", "e".repeat(n - "-west-2".len()));
    t.spec(k, "outscale region of 63 characters", &osc, json!({"outscale": {"region": region(63)}}), &[]);
    t.spec(
        k,
        "outscale region of 64 characters",
        &osc,
        json!({"outscale": {"region": region(64)}}),
        &[("spec.outscale.region", "maxLength")],
    );

    t.spec(
        k,
        "policy deletionPolicies: []",
        &base,
        json!({"policy": {"deletionPolicies": []}}),
        &[("spec.policy.deletionPolicies", "minItems")],
    );
    t.spec(
        k,
        "policy deletionPolicies: [Keep]",
        &base,
        json!({"policy": {"deletionPolicies": ["Keep"]}}),
        &[("spec.policy.deletionPolicies[0]", "enum")],
    );
    t.spec(
        k,
        "policy deletionPolicies: [Delete, Retain]",
        &base,
        json!({"policy": {"deletionPolicies": ["Delete", "Retain"]}}),
        &[],
    );
    t.spec(k, "policy maxKeysPerNamespace: 10000", &base, json!({"policy": {"maxKeysPerNamespace": 10000}}), &[]);
    t.spec(k, "policy maxKeysPerNamespace: 0", &base, json!({"policy": {"maxKeysPerNamespace": 0}}), &[]);
    t.spec(
        k,
        "policy maxKeysPerNamespace: 4294967296",
        &base,
        json!({"policy": {"maxKeysPerNamespace": 4294967296u64}}),
        &[("spec.policy.maxKeysPerNamespace", "maximum")],
    );
    t.spec(
        k,
        "policy maxKeysPerNamespace: -1",
        &base,
        json!({"policy": {"maxKeysPerNamespace": -1}}),
        &[("spec.policy.maxKeysPerNamespace", "minimum")],
    );
    t.duration(k, &base, "spec.policy.outscale.maxExpiresAfter");
    t.windows(k, &base, "spec.rotationDefaults.windows");
    for field in ["burst", "requestsPerSecond"] {
        t.spec(k, &format!("rateLimit {field}: 10000"), &base, json!({"rateLimit": {field: 10000}}), &[]);
        t.spec(
            k,
            &format!("rateLimit {field}: 10001"),
            &base,
            json!({"rateLimit": {field: 10001}}),
            &[(&format!("spec.rateLimit.{field}"), "maximum")],
        );
        t.spec(
            k,
            &format!("rateLimit {field}: 0"),
            &base,
            json!({"rateLimit": {field: 0}}),
            &[(&format!("spec.rateLimit.{field}"), "minimum")],
        );
    }

    t.spec(
        k,
        "yandex with neither key nor metadata service",
        &ydx,
        json!({"yandex": {"serviceAccountKeySecretRef": null, "serviceAccountId": "aje1"}}),
        &[("spec.yandex", "oneOf")],
    );
    t.spec(
        k,
        "yandex with key and metadata service",
        &ydx,
        json!({"yandex": {"metadataService": {}}}),
        &[("spec.yandex", "oneOf")],
    );
    t.endpoint(k, &ydx, "spec.yandex.endpoint", false);
    t.endpoint(k, &ydx, "spec.yandex.operationEndpoint", false);
    t.endpoint(k, &ydx_meta, "spec.yandex.metadataService.endpoint", true);
    t.length(k, &ydx, "spec.yandex.serviceAccountId", 50, "a");
    t.length(k, &ydx, "spec.yandex.serviceAccountKeySecretRef.key", 253, "k");
    t.length(k, &ydx, "spec.yandex.serviceAccountKeySecretRef.name", 253, "n");

    let retained = |patch: Value| {
        merged(
            &json!({"accessKeyId": "AK", "namespace": "ns", "owner": "uid", "retainedAt": "2026-01-01T00:00:00Z",
                "secretName": "s"}),
            &patch,
        )
    };
    let many: Vec<Value> = (0..1000).map(|i| retained(json!({"accessKeyId": format!("AK{i}")}))).collect();
    t.status(
        k,
        "status at its bounds (1000 retained keys)",
        &base,
        json!({"orphanedKeys": 4294967295u64, "retainedKeys": many}),
        &[],
    );
    let too_many: Vec<Value> = (0..1001).map(|i| retained(json!({"accessKeyId": format!("AK{i}")}))).collect();
    t.status(
        k,
        "status with 1001 retained keys",
        &base,
        json!({"retainedKeys": too_many}),
        &[("status.retainedKeys", "maxItems")],
    );
    for (value, breaks) in [(json!(4294967296u64), "maximum"), (json!(-1), "minimum")] {
        t.status(
            k,
            &format!("status orphanedKeys: {value}"),
            &base,
            json!({"orphanedKeys": value}),
            &[("status.orphanedKeys", breaks)],
        );
    }
    for (field, max) in [
        ("accessKey", 253),
        ("accessKeyId", 512),
        ("keyRef", 512),
        ("namespace", 63),
        ("owner", 64),
        ("scope", 253),
        ("secretName", 253),
    ] {
        t.status(
            k,
            &format!("status retainedKeys[0] {field}: {} × x", max + 1),
            &base,
            json!({"retainedKeys": [retained(json!({field: "x".repeat(max + 1)}))]}),
            &[(&format!("status.retainedKeys[0].{field}"), "maxLength")],
        );
    }
}

/// Every manifest under examples/, as JSON.
fn examples() -> Vec<(String, Value)> {
    let root = support::repo_root().join("examples");
    let files = support::example_files();
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("example readable");
        let name = file.strip_prefix(&root).expect("under examples/").display().to_string();
        for doc in serde_norway::Deserializer::from_str(&text) {
            let manifest: Value = serde::Deserialize::deserialize(doc).expect("example is YAML");
            out.push((format!("examples/{name}"), manifest));
        }
    }
    out
}

/// Sends one row; the server's answer.
async fn send_row(client: &Client, row: &Row, name: &str) -> Answer {
    let mut object = row.object.clone();
    object["metadata"]["name"] = json!(name);
    let path = collection(row.kind);
    match row.via {
        Via::Create => call(client, "POST", &path, "application/json", Some(&object)).await,
        Via::Status => {
            let status = object.as_object_mut().expect("object").remove("status").expect("a status row has a status");
            let created = call(client, "POST", &path, "application/json", Some(&object)).await;
            assert_eq!(created.code, 201, "{} {name} (before its status) not created: {}", row.kind, created.body);
            let status_path = format!("{path}/{name}/status");
            call(client, "PATCH", &status_path, "application/merge-patch+json", Some(&json!({"status": status}))).await
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn crds_and_every_schema_rule_on_kubernetes_1_36() {
    let dir = start_server();
    let client = client(&dir).await;

    // The server's version.
    let version = call(&client, "GET", "/version", "application/json", None).await;
    let (major, minor) = (version.body["major"].as_str().unwrap_or(""), version.body["minor"].as_str().unwrap_or(""));
    println!(
        "CRD server: apiextensions-apiserver {major}.{minor} ({}, {})",
        version.body["goVersion"].as_str().unwrap_or("?"),
        version.body["platform"].as_str().unwrap_or("?")
    );
    assert_eq!((major, minor), ("1", "36"), "the CRD server is not Kubernetes 1.36: {}", version.body);

    // The CRDs: created without a warning (formats it knows) and within the CEL cost budget.
    let crds = cloudkeys::api::crds();
    let mut schemas = BTreeMap::new();
    for crd in &crds {
        let name = crd.metadata.name.clone().expect("CRD has a name");
        let body = serde_json::to_value(crd).expect("CRD serializes");
        let created = call(
            &client,
            "POST",
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
            "application/json",
            Some(&body),
        )
        .await;
        assert_eq!(created.code, 201, "CRD {name} refused: {}", created.body);
        assert!(created.warnings.is_empty(), "CRD {name} created with warnings: {:?}", created.warnings);
        println!("CRD {name}: created, warnings: none");
        schemas.insert(crd.spec.names.kind.clone(), body["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone());
    }
    for crd in &crds {
        let name = crd.metadata.name.clone().expect("CRD has a name");
        let path = format!("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}");
        let conditions =
            support::eventually_explained(&format!("CRD {name} established"), Duration::from_secs(60), || {
                let (client, path) = (client.clone(), path.clone());
                async move {
                    let got = call(&client, "GET", &path, "application/json", None).await;
                    let conditions = got.body["status"]["conditions"].as_array().cloned().unwrap_or_default();
                    let established = conditions.iter().any(|c| c["type"] == "Established" && c["status"] == "True");
                    if established {
                        Ok(conditions)
                    } else {
                        Err(format!("{conditions:?}"))
                    }
                }
            })
            .await;
        for c in &conditions {
            let (kind, status) = (c["type"].as_str().unwrap_or(""), c["status"].as_str().unwrap_or(""));
            let healthy = matches!((kind, status), ("Established" | "NamesAccepted", "True")) || status == "False";
            assert!(healthy, "CRD {name} has condition {c}");
        }
    }

    // The rules of the schema, and the table.
    let mut rules = BTreeSet::new();
    for kind in KINDS {
        for (path, keyword) in schema_rules(&schemas[kind]).into_keys() {
            rules.insert((kind.to_string(), path, keyword));
        }
    }
    let mut table = Table { rows: Vec::new() };
    for (file, manifest) in examples() {
        let kind = KINDS.into_iter().find(|k| manifest["kind"] == *k).expect("an example of a cloudkeys kind");
        table.rows.push(Row { kind, what: file, object: manifest, via: Via::Create, breaks: Vec::new() });
    }
    let examples_count = table.rows.len();
    assert!(examples_count >= 10, "expected the examples of every provider, found {examples_count}");
    access_key_rows(&mut table);
    issuer_rows(&mut table, "KeyIssuer");
    issuer_rows(&mut table, "ClusterKeyIssuer");

    let mut covered = BTreeSet::new();
    let mut failures = Vec::new();
    println!("\n{:<17} {:<64} {:<8} server's message", "kind", "object", "answer");
    for (i, row) in table.rows.iter().enumerate() {
        let name = if i < examples_count {
            row.object["metadata"]["name"].as_str().expect("example has a name").to_string()
        } else {
            format!("row-{i}")
        };
        let answer = send_row(&client, row, &name).await;
        let message = answer.body["message"].as_str().unwrap_or("").to_string();
        let verdict = match answer.code {
            200 | 201 => "accepted",
            422 => "refused",
            _ => "ERROR",
        };
        println!(
            "{:<17} {:<64} {:<8} {}",
            row.kind,
            row.what,
            verdict,
            if message.is_empty() { "-" } else { &message }
        );
        if !answer.warnings.is_empty() {
            failures.push(format!("{} {}: warnings {:?}", row.kind, row.what, answer.warnings));
        }
        if row.breaks.is_empty() {
            if !matches!(answer.code, 200 | 201) {
                failures.push(format!("{} {} was refused ({}): {}", row.kind, row.what, answer.code, answer.body));
            }
            continue;
        }
        if answer.code != 422 {
            failures.push(format!(
                "{} {} was not refused as invalid ({}): {}",
                row.kind, row.what, answer.code, answer.body
            ));
            continue;
        }
        let causes = answer.body["details"]["causes"].as_array().cloned().unwrap_or_default();
        for (field, keyword) in &row.breaks {
            let (path, node) = resolve(&schemas[row.kind], field);
            let in_body = match row.via {
                Via::Create => field.as_str(),
                Via::Status => field.strip_prefix("status.").unwrap_or(field),
            };
            let expected = expected_text(in_body, keyword, node);
            // oneOf/anyOf causes name no field; the others name the field the row breaks.
            let named = |c: &Value| keyword == "oneOf" || keyword == "anyOf" || c["field"] == field.as_str();
            let found = causes.iter().any(|c| named(c) && c["message"].as_str().is_some_and(|m| m.contains(&expected)));
            if found && message.contains(&expected) {
                covered.insert((row.kind.to_string(), path, keyword.clone()));
            } else {
                failures
                    .push(format!("{} {}: no refusal of {field} saying {expected:?}: {message}", row.kind, row.what));
            }
        }
    }

    // Every rule broken by a row; every row's rule in the schema.
    let unknown: Vec<_> = covered.difference(&rules).collect();
    assert!(unknown.is_empty(), "rows break rules the schema does not have: {unknown:?}");
    let uncovered: Vec<_> = rules.difference(&covered).collect();
    println!(
        "\n{} rows ({} examples), {} rules of the schema each refused by a row",
        table.rows.len(),
        examples_count,
        covered.len()
    );
    assert!(failures.is_empty(), "{} rows answered otherwise than expected:\n{}", failures.len(), failures.join("\n"));
    assert!(uncovered.is_empty(), "rules of the schema no row of the table breaks (add rows): {uncovered:#?}");
}
