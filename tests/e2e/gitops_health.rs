//! The Argo CD health checks and the `rotate` action of `gitops/argocd/`, run by Lua 5.1 (the
//! language Argo CD embeds) on the objects the operator wrote into a real apiserver: each object
//! is read back as JSON and handed to the script as the global `obj`, as Argo CD does.
//!
//! Needs `lua5.1` on PATH (`make lua`, scripts/lua.sh); without it these tests fail and say so.

use crate::{fakes, support};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use fakes::exoscale::ExoscaleFake;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::Client;
use serde_json::{json, Value};
use support::exoscale::{ADMIN_KEY, ADMIN_SECRET};
use support::keys;
use support::operator::Operator;

/// Where Argo CD keeps resource customizations of the group `cloudkeys.io`, in its own layout.
fn customizations() -> PathBuf {
    support::repo_root().join("gitops/argocd/resource_customizations/cloudkeys.io")
}

/// `s` as a Lua string literal: quotes, backslashes and control characters escaped (decimal
/// escapes, the only numeric ones Lua 5.1 knows); other bytes, UTF-8 included, as they are.
fn lua_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => out.push_str(&format!("\\{:03}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A JSON value as a Lua table constructor (Lua 5.1 has no JSON decoder): objects become tables
/// with string keys, arrays tables with keys 1..n, null an absent field.
fn lua_value(v: &Value) -> String {
    match v {
        Value::Null => "nil".to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => lua_string(s),
        Value::Array(items) => format!("{{{}}}", items.iter().map(lua_value).collect::<Vec<_>>().join(", ")),
        Value::Object(fields) => format!(
            "{{{}}}",
            fields
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| format!("[{}] = {}", lua_string(k), lua_value(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Runs a Lua 5.1 program and returns what it printed.
fn run_lua(program: &str) -> String {
    let mut child = match Command::new("lua5.1")
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => panic!("cannot run lua5.1 ({e}): `make lua` (scripts/lua.sh deps) installs it"),
    };
    child.stdin.take().expect("stdin").write_all(program.as_bytes()).expect("program written to lua5.1");
    let out = child.wait_with_output().expect("lua5.1 ran");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "lua5.1 failed: {stderr}\nprogram:\n{program}");
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// The script at `relative` (under the group's folder) run on `obj`; `then` reads its result
/// (`result`) and prints what the test checks.
fn run_script(relative: &str, obj: &Value, then: &str) -> String {
    let path = customizations().join(relative);
    assert!(path.is_file(), "{} is missing", path.display());
    let program =
        format!("obj = {}\nlocal result = dofile({})\n{then}\n", lua_value(obj), lua_string(&path.to_string_lossy()));
    run_lua(&program)
}

/// Argo CD's health of `obj`: (status, message).
fn health(obj: &Value) -> (String, String) {
    let kind = obj["kind"].as_str().expect("kind");
    let out = run_script(
        &format!("{kind}/health.lua"),
        obj,
        "io.write(tostring(result.status), '\\n', tostring(result.message))",
    );
    let (status, message) = out.split_once('\n').expect("status and message");
    assert!(
        ["Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"].contains(&status),
        "{kind}: {status:?} is not a health status Argo CD knows"
    );
    println!("health | {kind} {} | {status} | {message}", obj["metadata"]["name"].as_str().unwrap_or(""));
    (status.to_string(), message.to_string())
}

/// The object as the apiserver serves it.
async fn fetch(client: &Client, ns: &str, kind: &str, name: &str) -> Value {
    let resource = match kind {
        "AccessKey" => ApiResource::erase::<cloudkeys::api::AccessKey>(&()),
        "KeyIssuer" => ApiResource::erase::<cloudkeys::api::KeyIssuer>(&()),
        _ => ApiResource::erase::<cloudkeys::api::ClusterKeyIssuer>(&()),
    };
    let api: Api<DynamicObject> = match kind {
        "ClusterKeyIssuer" => Api::all_with(client.clone(), &resource),
        _ => Api::namespaced_with(client.clone(), ns, &resource),
    };
    let obj = api.get(name).await.unwrap_or_else(|e| panic!("{kind} {name}: {e}"));
    serde_json::to_value(obj).expect("JSON")
}

/// The condition `type_` of `obj`: (status, reason, message).
fn condition(obj: &Value, type_: &str) -> Option<(String, String, String)> {
    let c = obj["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == type_)?;
    let s = |f: &str| c[f].as_str().unwrap_or_default().to_string();
    Some((s("status"), s("reason"), s("message")))
}

/// Waits until `obj`'s condition `type_` has `reason` (for its current generation), and returns it.
async fn wait_condition(client: &Client, ns: &str, kind: &str, name: &str, type_: &str, reason: &str) -> Value {
    support::eventually_explained(&format!("{kind} {name}: {type_} with reason {reason}"), keys::WAIT, || async {
        let obj = fetch(client, ns, kind, name).await;
        let current = obj["status"]["observedGeneration"] == obj["metadata"]["generation"];
        match condition(&obj, type_) {
            Some((_, r, _)) if r == reason && current => Ok(obj),
            other => Err(format!("{other:?}, current generation: {current}")),
        }
    })
    .await
}

fn local_issuer(kind: &str, name: &str, policy: Value) -> Value {
    let mut spec = json!({"local": {}});
    if !policy.is_null() {
        spec["policy"] = policy;
    }
    json!({"apiVersion": "cloudkeys.io/v1alpha1", "kind": kind, "metadata": {"name": name}, "spec": spec})
}

fn assert_health(obj: &Value, status: &str, says: &str) {
    let (got, message) = health(obj);
    assert_eq!(got, status, "{}: {message}", obj["metadata"]["name"]);
    assert!(message.contains(says), "{}: {message:?} does not say {says:?}", obj["metadata"]["name"]);
}

/// Stalled=True with Ready's reason, and no Reconciling.
fn assert_stalled(obj: &Value, reason: &str) {
    let stalled = condition(obj, "Stalled").unwrap_or_else(|| panic!("no Stalled condition: {}", obj["status"]));
    assert_eq!((stalled.0.as_str(), stalled.1.as_str()), ("True", reason));
    assert_eq!(Some(stalled.2), condition(obj, "Ready").map(|c| c.2), "Stalled repeats Ready's message");
    assert_eq!(condition(obj, "Reconciling"), None);
}

/// Neither Stalled nor Reconciling left behind.
fn assert_settled(obj: &Value) {
    assert_eq!((condition(obj, "Stalled"), condition(obj, "Reconciling")), (None, None), "{}", obj["status"]);
}

#[test]
fn lua_literals_keep_every_character() {
    let tricky = "quote\" back\\slash\nnew line\ttab \u{1} ü ]] [[ end";
    let obj = json!({"s": tricky, "n": 3, "b": true, "list": ["a", "b"], "gone": null});
    let program = format!(
        "local o = {}\nio.write(o.s, '|', o.n + 1, '|', tostring(o.b), '|', #o.list, o.list[1], '|', tostring(o.gone))",
        lua_value(&obj)
    );
    assert_eq!(run_lua(&program), format!("{tricky}|4|true|2a|nil"));
}

#[test]
fn every_kind_has_a_health_check_in_argo_cds_layout() {
    for crd in cloudkeys::api::crds() {
        let kind = &crd.spec.names.kind;
        assert_eq!(crd.spec.group, "cloudkeys.io");
        let path = customizations().join(kind).join("health.lua");
        assert!(path.is_file(), "no health check for {kind}: {}", path.display());
    }
    for path in ["AccessKey/actions/discovery.lua", "AccessKey/actions/rotate/action.lua"] {
        assert!(customizations().join(path).is_file(), "{path} is missing");
    }
}

#[tokio::test]
async fn access_keys_and_issuers_as_argo_cd_sees_them() {
    let client = support::client().await;
    support::install_crds(&client).await;
    let ns = support::namespace(&client, "gitops-health").await;
    support::apply_json(&client, &ns, local_issuer("KeyIssuer", "local", Value::Null)).await;
    support::apply_json(
        &client,
        &ns,
        local_issuer("KeyIssuer", "delete-only", json!({"deletionPolicies": ["Delete"]})),
    )
    .await;
    // Cluster-scoped: named after the namespace, apart from other tests' on a shared apiserver.
    let cluster_issuer = format!("{ns}-local");
    support::apply_json(&client, &ns, local_issuer("ClusterKeyIssuer", &cluster_issuer, Value::Null)).await;
    support::create_secret(&client, &ns, "taken-credentials", json!({"mine": "do not touch"})).await;
    let mut op = Operator::start(&ns);
    let local = |name: &str, issuer: &str, extra: Value| keys::manifest(name, issuer, "local", json!({}), extra);
    for manifest in [
        local("ok", "local", json!({})),
        local("taken", "local", json!({})),
        local("bad-template", "local", json!({"secretTemplate": {"data": {"REGION": "{{ region }}"}}})),
        local("kept", "delete-only", json!({"deletionPolicy": "Retain"})),
        local("lost", "nowhere", json!({})),
    ] {
        support::apply_json(&client, &ns, manifest).await;
    }

    let issuer = wait_condition(&client, &ns, "KeyIssuer", "local", "Ready", "Ready").await;
    assert_health(&issuer, "Healthy", "credentials accepted by local");
    assert_settled(&issuer);
    let cluster = wait_condition(&client, &ns, "ClusterKeyIssuer", &cluster_issuer, "Ready", "Ready").await;
    assert_health(&cluster, "Healthy", "credentials accepted by local");
    assert_settled(&cluster);

    keys::wait_issued(&client, &ns, "ok").await;
    let ok = fetch(&client, &ns, "AccessKey", "ok").await;
    assert_health(&ok, "Healthy", "is in Secret ok-credentials");
    assert_settled(&ok);

    let taken = wait_condition(&client, &ns, "AccessKey", "taken", "Ready", "SecretConflict").await;
    assert_stalled(&taken, "SecretConflict");
    assert_health(&taken, "Degraded", "SecretConflict: Secret taken-credentials exists and is not controlled");

    let bad = wait_condition(&client, &ns, "AccessKey", "bad-template", "Ready", "InvalidSpec").await;
    assert_stalled(&bad, "InvalidSpec");
    assert_health(&bad, "Degraded", "InvalidSpec: ");
    assert_health(&bad, "Degraded", "unknown variable");

    let kept = wait_condition(&client, &ns, "AccessKey", "kept", "Ready", "PolicyDenied").await;
    assert_stalled(&kept, "PolicyDenied");
    assert_health(&kept, "Degraded", "PolicyDenied: ");
    assert_health(&kept, "Degraded", "Retain");

    // Its issuer may come in the same sync: waiting, not failed.
    let lost = wait_condition(&client, &ns, "AccessKey", "lost", "Ready", "IssuerNotFound").await;
    let reconciling = condition(&lost, "Reconciling").expect("Reconciling");
    assert_eq!((reconciling.0.as_str(), reconciling.1.as_str()), ("True", "WaitingForIssuer"));
    assert_eq!(condition(&lost, "Stalled"), None);
    assert_health(&lost, "Progressing", "KeyIssuer nowhere not found");

    // The action is offered once there is a key to replace.
    let discovered =
        |obj: &Value| run_script("AccessKey/actions/discovery.lua", obj, "io.write(tostring(result.rotate.disabled))");
    assert_eq!(discovered(&ok), "false");
    assert_eq!(discovered(&taken), "true");

    // A spec the operator has not seen yet (it is stopped): the status is the old generation's.
    op.kill();
    support::apply_json(&client, &ns, local("ok", "local", json!({"secretTemplate": {"labels": {"team": "a"}}}))).await;
    let changed = fetch(&client, &ns, "AccessKey", "ok").await;
    assert_eq!(
        (changed["metadata"]["generation"].as_i64(), changed["status"]["observedGeneration"].as_i64()),
        (Some(2), Some(1))
    );
    assert_health(&changed, "Progressing", "Waiting for the operator to observe generation 2");
    let denied = local("kept", "delete-only", json!({"deletionPolicy": "Delete"}));
    support::apply_json(&client, &ns, denied).await;
    let kept = fetch(&client, &ns, "AccessKey", "kept").await;
    assert_health(&kept, "Progressing", "observe generation 2");

    // Started again, it catches up: Healthy, and the denial lifted with Stalled gone.
    let _op = Operator::start(&ns);
    let kept = wait_condition(&client, &ns, "AccessKey", "kept", "Ready", "Issued").await;
    assert_settled(&kept);
    assert_health(&kept, "Healthy", "is in Secret kept-credentials");
    let ok = wait_condition(&client, &ns, "AccessKey", "ok", "Ready", "Issued").await;
    assert_health(&ok, "Healthy", "is in Secret ok-credentials");

    let api: Api<cloudkeys::api::ClusterKeyIssuer> = Api::all(client.clone());
    api.delete(&cluster_issuer, &Default::default()).await.expect("ClusterKeyIssuer deleted");
}

#[tokio::test]
async fn the_rotate_action_replaces_the_key_and_the_rollout_is_progressing() {
    let client = support::client().await;
    support::install_crds(&client).await;
    let ns = support::namespace(&client, "gitops-rotate").await;
    support::apply_json(&client, &ns, local_issuer("KeyIssuer", "local", Value::Null)).await;
    let _op = Operator::start(&ns);
    // One replica and no scheduler: the restart rolls out only once the test scales it to zero.
    let pod = json!({"containers": [{"name": "c", "image": "registry.invalid/app",
        "envFrom": [{"secretRef": {"name": "k-credentials"}}]}]});
    let deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "api"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "api"}},
            "template": {"metadata": {"labels": {"app": "api"}}, "spec": pod}}});
    support::apply_json(&client, &ns, deployment).await;
    let mut manifest = keys::manifest(
        "k",
        "local",
        "local",
        json!({}),
        json!({"consumers": {"targets": [{"kind": "Deployment", "name": "api"}]}}),
    );
    manifest["metadata"]["annotations"] = json!({"team": "a"});
    support::apply_json(&client, &ns, manifest).await;
    let first = keys::wait_issued(&client, &ns, "k").await.status.and_then(|s| s.access_key_id).expect("key");
    let obj = fetch(&client, &ns, "AccessKey", "k").await;
    assert_health(&obj, "Healthy", &first);

    // What the action returns is what Argo CD writes back: the annotation set, the rest kept.
    let out = run_script(
        "AccessKey/actions/rotate/action.lua",
        &obj,
        "io.write(result.metadata.annotations['cloudkeys.io/rotate'], '|', result.metadata.annotations['team'], \
         '|', result.metadata.name, '|', result.spec.secretName)",
    );
    let parts: Vec<&str> = out.split('|').collect();
    let [value, team, name, secret] = parts[..] else { panic!("action printed {out:?}") };
    assert_eq!((team, name, secret), ("a", "k", "k-credentials"));
    assert!(value.parse::<jiff::Timestamp>().is_ok(), "not a timestamp: {value:?}");
    let patch = json!({"metadata": {"annotations": {"cloudkeys.io/rotate": value}}});
    let api: Api<cloudkeys::api::AccessKey> = Api::namespaced(client.clone(), &ns);
    api.patch("k", &PatchParams::default(), &Patch::Merge(&patch)).await.expect("annotated");

    // Handled: a new key, echoed request, and the consumer's rollout awaited under Reconciling.
    let rolling = support::eventually_explained("the rotation to await the rollout", keys::WAIT, || async {
        let obj = fetch(&client, &ns, "AccessKey", "k").await;
        let handled = obj["status"]["lastRotateRequest"] == value;
        match condition(&obj, "Reconciling") {
            Some((s, r, _)) if handled && s == "True" && r == "RollingOut" => Ok(obj),
            other => Err(format!("handled {handled}, Reconciling {other:?}")),
        }
    })
    .await;
    assert_ne!(rolling["status"]["accessKeyId"].as_str(), Some(first.as_str()), "the key was not replaced");
    assert_health(&rolling, "Progressing", "rolling out");

    // Rolled out: the replaced key waits out its grace period, and the AccessKey is Healthy.
    let scale = json!({"spec": {"replicas": 0}});
    Api::<Deployment>::namespaced(client.clone(), &ns)
        .patch("api", &PatchParams::default(), &Patch::Merge(&scale))
        .await
        .expect("scaled");
    let graced = wait_condition(&client, &ns, "AccessKey", "k", "Rotating", "GracePeriod").await;
    assert_settled(&graced);
    assert_health(&graced, "Healthy", "is in Secret k-credentials");
}

#[tokio::test]
async fn an_issuer_whose_credentials_are_refused_is_degraded_and_its_keys_wait() {
    let fake = ExoscaleFake::start(ADMIN_KEY, ADMIN_SECRET);
    let client = support::client().await;
    support::install_crds(&client).await;
    let ns = support::namespace(&client, "gitops-refused").await;
    support::exoscale::issuer_with_credentials(
        &client,
        &ns,
        &fake.endpoint(),
        "wrongsecretwrongsecretwrongsecretwrongsecre",
    )
    .await;
    let _op = Operator::start(&ns);
    support::apply_json(
        &client,
        &ns,
        keys::manifest("k", "exoscale", "exoscale", json!({"roleId": fakes::exoscale::PREEXISTING_ROLE_ID}), json!({})),
    )
    .await;
    let issuer = wait_condition(&client, &ns, "KeyIssuer", "exoscale", "Ready", "InvalidCredentials").await;
    assert_stalled(&issuer, "InvalidCredentials");
    assert_health(&issuer, "Degraded", "InvalidCredentials: ");
    // The AccessKey needs no change itself: it waits for its issuer, which says what is wrong.
    let ak = wait_condition(&client, &ns, "AccessKey", "k", "Ready", "IssuerNotReady").await;
    assert_eq!(condition(&ak, "Reconciling").map(|c| c.1), Some("WaitingForIssuer".to_string()));
    assert_health(&ak, "Progressing", "exoscale");
}
