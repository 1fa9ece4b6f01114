//! The `local` provider end to end: the operator process against the real apiserver.

use crate::support;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams};
use serde_json::json;
use support::keys::{self, secret_value};
use support::operator::Operator;

async fn setup(test: &str) -> (kube::Client, String, Operator) {
    let client = support::client().await;
    support::install_crds(&client).await;
    let ns = support::namespace(&client, test).await;
    support::apply_json(
        &client,
        &ns,
        json!({"apiVersion": "cloudkeys.io/v1alpha1", "kind": "KeyIssuer",
        "metadata": {"name": "local"}, "spec": {"local": {}}}),
    )
    .await;
    let op = Operator::start(&ns);
    (client, ns, op)
}

fn access_key(name: &str, extra: serde_json::Value) -> serde_json::Value {
    keys::manifest(name, "local", "local", json!({}), extra)
}

#[tokio::test]
async fn local_key_is_issued_into_the_secret_and_the_finalizer_released_on_delete() {
    let (client, ns, op) = setup("local-issue-delete").await;
    support::apply_json(&client, &ns, access_key("demo", json!({"secretTemplate": {"labels": {"team": "a"}}}))).await;
    let ak = keys::wait_issued(&client, &ns, "demo").await;
    let status = ak.status.clone().expect("status");
    let key_id = status.access_key_id.clone().expect("accessKeyId");
    assert_eq!(status.secret_name.as_deref(), Some("demo-credentials"));
    assert!(ak.metadata.finalizers.clone().unwrap_or_default().contains(&"cloudkeys.io/revoke".to_string()));
    // Every write of the operator names it, the finalizer's included: the test applied the rest.
    let managers: Vec<String> = ak.metadata.managed_fields.iter().flatten().filter_map(|f| f.manager.clone()).collect();
    assert!(
        managers.iter().all(|m| m.starts_with("cloudkeys") || m == support::FIELD_MANAGER),
        "field managers of the AccessKey: {managers:?}"
    );

    let secret = keys::secret(&client, &ns, "demo-credentials").await.expect("Secret written");
    assert_eq!(secret.type_.as_deref(), Some("Opaque"));
    assert_eq!(secret_value(&secret, "ACCESS_KEY_ID"), key_id);
    let secret_value_text = secret_value(&secret, "SECRET_ACCESS_KEY");
    assert!(secret_value_text.len() >= 32);
    let labels = secret.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels.get("app.kubernetes.io/managed-by").map(String::as_str), Some("cloudkeys"));
    assert_eq!(labels.get("cloudkeys.io/access-key").map(String::as_str), Some("demo"));
    assert_eq!(labels.get("team").map(String::as_str), Some("a"));
    let annotations = secret.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(annotations.get("cloudkeys.io/access-key-id"), Some(&key_id));
    let owner = secret.metadata.owner_references.clone().unwrap_or_default();
    assert!(owner.iter().any(|o| o.controller == Some(true) && Some(&o.uid) == ak.metadata.uid.as_ref()));

    // The secret appears nowhere but the Secret.
    let ak_json = serde_json::to_string(&ak).expect("json");
    assert!(!ak_json.contains(&secret_value_text));
    assert!(!op.logs().contains(&secret_value_text), "the operator logged a secret");
    let minted = op.local_keys().await;
    assert_eq!((minted.live, minted.revoked), (vec![key_id.clone()], vec![]), "the provider holds the one key");
    let served = reqwest::get(format!("{}/local/keys", op.http_base().await)).await.expect("GET").text().await;
    assert!(!served.expect("body").contains(&secret_value_text), "/local/keys shows a secret");

    keys::delete_access_key(&client, &ns, "demo").await;
    keys::wait_gone(&client, &ns, "demo").await;
    // The finalizer went last: by now the key is revoked at the provider.
    let minted = op.local_keys().await;
    assert_eq!((minted.live, minted.revoked), (vec![], vec![key_id.clone()]), "the key was not revoked");
    support::eventually("the Secret to be garbage-collected", Duration::from_secs(60), || {
        let client = client.clone();
        let ns = ns.clone();
        async move { keys::secret(&client, &ns, "demo-credentials").await.is_none().then_some(()) }
    })
    .await;
    assert!(!op.logs().contains(&secret_value_text));
}

#[tokio::test]
async fn secret_of_someone_else_is_a_conflict_and_never_touched() {
    let (client, ns, _op) = setup("local-conflict").await;
    support::create_secret(&client, &ns, "taken-credentials", json!({"mine": "do not touch"})).await;
    support::apply_json(&client, &ns, access_key("taken", json!({}))).await;
    let ak = keys::wait_reason(&client, &ns, "taken", "SecretConflict").await;
    assert!(ak.status.as_ref().and_then(|s| s.access_key_id.clone()).is_none(), "a key was created");
    let secret = keys::secret(&client, &ns, "taken-credentials").await.expect("still there");
    assert_eq!(secret_value(&secret, "mine"), "do not touch");
    assert!(secret.metadata.owner_references.is_none());

    // Freeing the name lets the key be issued.
    Api::<Secret>::namespaced(client.clone(), &ns)
        .delete("taken-credentials", &DeleteParams::default())
        .await
        .expect("deleted");
    support::apply_json(&client, &ns, access_key("taken", json!({"secretTemplate": {"labels": {"retry": "1"}}}))).await;
    keys::wait_issued(&client, &ns, "taken").await;
}

#[tokio::test]
async fn secret_deleted_by_hand_issues_new_key() {
    let (client, ns, op) = setup("local-secret-deleted").await;
    support::apply_json(&client, &ns, access_key("k", keys::no_grace_period())).await;
    let first = keys::wait_issued(&client, &ns, "k").await.status.and_then(|s| s.access_key_id).expect("id");
    Api::<Secret>::namespaced(client.clone(), &ns)
        .delete("k-credentials", &DeleteParams::default())
        .await
        .expect("deleted");
    let second = support::eventually("a new key", keys::WAIT, || {
        let client = client.clone();
        let ns = ns.clone();
        let first = first.clone();
        async move {
            let s = keys::secret(&client, &ns, "k-credentials").await?;
            let id = secret_value(&s, "ACCESS_KEY_ID");
            (id != first).then_some(id)
        }
    })
    .await;
    // Converged: the new key recorded and Ready, the replaced one revoked (no longer retired).
    let api: Api<cloudkeys::api::AccessKey> = Api::namespaced(client.clone(), &ns);
    support::eventually("the replacement to converge", keys::WAIT, || {
        let api = api.clone();
        let second = second.clone();
        async move {
            let ak = api.get("k").await.ok()?;
            let (_, reason, message) = keys::ready_condition(&ak)?;
            let status = ak.status?;
            (status.access_key_id.as_deref() == Some(second.as_str())
                && status.retired.is_empty()
                && reason == "Issued"
                && message.contains(&second))
            .then_some(())
        }
    })
    .await;
    // Not only out of the status: revoked at the provider, and the new key live there.
    let minted = op.local_keys().await;
    assert_eq!((minted.live, minted.revoked), (vec![second], vec![first]));
}

#[tokio::test]
async fn unknown_template_variable_is_invalid_spec_and_creates_nothing() {
    let (client, ns, _op) = setup("local-bad-template").await;
    support::apply_json(&client, &ns, access_key("t", json!({"secretTemplate": {"data": {"REGION": "{{ region }}"}}})))
        .await;
    let ak = keys::wait_reason(&client, &ns, "t", "InvalidSpec").await;
    let (_, _, message) = keys::ready_condition(&ak).expect("condition");
    assert!(message.contains("REGION") && message.contains("unknown variable"), "{message}");
    assert!(keys::secret(&client, &ns, "t-credentials").await.is_none());
    assert!(ak.status.and_then(|s| s.access_key_id).is_none());
}

#[tokio::test]
async fn retain_keeps_the_secret_after_the_access_key_is_deleted() {
    let (client, ns, op) = setup("local-retain").await;
    support::apply_json(&client, &ns, access_key("kept", json!({"deletionPolicy": "Retain"}))).await;
    let issued = keys::wait_issued(&client, &ns, "kept").await;
    let uid = issued.metadata.uid.expect("uid");
    let key_id = issued.status.and_then(|s| s.access_key_id).expect("accessKeyId");
    // A canary the garbage collector deletes once it has dealt with the AccessKey's deletion.
    let canary: k8s_openapi::api::core::v1::ConfigMap = serde_json::from_value(json!({"metadata": {
        "name": "canary", "ownerReferences": [{"apiVersion": "cloudkeys.io/v1alpha1", "kind": "AccessKey",
            "name": "kept", "uid": uid}]}}))
    .expect("ConfigMap literal");
    let config_maps: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(client.clone(), &ns);
    config_maps.create(&Default::default(), &canary).await.expect("canary created");
    keys::delete_access_key(&client, &ns, "kept").await;
    keys::wait_gone(&client, &ns, "kept").await;
    support::eventually("the garbage collector to take the canary", keys::WAIT, || async {
        config_maps.get_opt("canary").await.ok()?.is_none().then_some(())
    })
    .await;
    let secret = keys::secret(&client, &ns, "kept-credentials").await.expect("Secret survives");
    assert_eq!(secret_value(&secret, "ACCESS_KEY_ID"), key_id);
    assert!(secret.metadata.owner_references.unwrap_or_default().is_empty());
    // Retained: the key in the Secret still works.
    let minted = op.local_keys().await;
    assert_eq!((minted.live, minted.revoked), (vec![key_id], vec![]), "a retained key was revoked");
}

#[tokio::test]
async fn missing_issuer_is_reported_and_the_key_follows_once_it_exists() {
    let client = support::client().await;
    support::install_crds(&client).await;
    let ns = support::namespace(&client, "local-missing-issuer").await;
    let _op = Operator::start(&ns);
    support::apply_json(&client, &ns, access_key("late", json!({}))).await;
    let ak = keys::wait_reason(&client, &ns, "late", "IssuerNotFound").await;
    assert!(keys::ready_condition(&ak).expect("condition").2.contains("KeyIssuer local not found"));
    support::apply_json(
        &client,
        &ns,
        json!({"apiVersion": "cloudkeys.io/v1alpha1", "kind": "KeyIssuer",
        "metadata": {"name": "local"}, "spec": {"local": {}}}),
    )
    .await;
    keys::wait_issued(&client, &ns, "late").await;
}

/// A template built to render for minutes (nested loops) is refused at once, and the AccessKeys
/// of everyone else are issued meanwhile.
#[tokio::test]
async fn a_template_bomb_is_invalid_spec_at_once_and_stalls_no_one() {
    let (client, ns, _op) = setup("local-template-bomb").await;
    let started = std::time::Instant::now();
    let bomb = "{% for a in range(100000) %}{% for b in range(100000) %}{{ secretAccessKey }}{% endfor %}{% endfor %}";
    support::apply_json(&client, &ns, access_key("bomb", json!({"secretTemplate": {"data": {"K": bomb}}}))).await;
    let others: Vec<String> = (0..5).map(|i| format!("neighbour-{i}")).collect();
    for name in &others {
        support::apply_json(&client, &ns, access_key(name, json!({}))).await;
    }
    let ak = keys::wait_reason(&client, &ns, "bomb", "InvalidSpec").await;
    let (_, _, message) = keys::ready_condition(&ak).expect("condition");
    assert!(message.contains("secretTemplate.data[K]") && message.contains("statements"), "{message}");
    for name in &others {
        keys::wait_issued(&client, &ns, name).await;
    }
    println!("bomb refused and {} neighbours issued in {:?}", others.len(), started.elapsed());
}

/// Started where the leader-election Lease's namespace does not exist (by hand, outside a
/// cluster): one line that says what to do, and no debug structure of a kube error.
#[tokio::test]
async fn a_missing_lease_namespace_is_one_line_that_says_what_to_do() {
    let client = support::client().await;
    support::install_crds(&client).await;
    let ns = support::namespace(&client, "local-no-lease-ns").await;
    let missing = format!("{ns}-missing");
    let mut op = Operator::start_with(&ns, &[("CLOUDKEYS_LEADER_ELECTION_NAMESPACE", &missing)]);
    assert!(op.wait_exit(Duration::from_secs(60)).await, "the operator kept running without its Lease");
    let logs = op.logs();
    let line = logs.lines().find(|l| l.contains("controller failed")).unwrap_or_else(|| panic!("{logs}"));
    for says in [format!("namespace {missing}"), "does not exist".into(), "--leader-election=false".into()] {
        assert!(line.contains(&says), "{line}");
    }
    assert!(!logs.contains("Status {") && !logs.contains("ErrorResponse"), "{logs}");
}
