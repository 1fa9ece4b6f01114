//! Bounded keys, tried as a hostile tenant would: AccessKeys created all at once against
//! `maxKeysPerNamespace`, and `cloudkeys.io/rotate` set again and again with a long grace period.
//! One operator serves every namespace, so that a bystander tenant shares it; it watches every
//! namespace, hence a control plane of its own. The Exoscale fakes count live keys at every
//! moment, not only when the test looks.

use crate::{fakes, support};
use std::time::Duration;

use cloudkeys::api::{AccessKey, AccessKeyStatus};
use fakes::exoscale::{ExoscaleFake, Faults, PREEXISTING_ROLE_ID};
use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::Client;
use serde_json::{json, Value};
use support::exoscale::{ADMIN_KEY, ADMIN_SECRET, CREDENTIALS};
use support::keys;
use support::leaks::assert_no_secret_leaks;
use support::operator::Operator;

const BURST: usize = 10;
const MAX_KEYS: usize = 3;

fn exoscale_issuer(fake: &ExoscaleFake, policy: Value) -> Value {
    let mut spec = json!({"exoscale": {"endpoint": fake.endpoint(), "credentialsSecretRef": {"name": CREDENTIALS}}});
    if !policy.is_null() {
        spec["policy"] = policy;
    }
    json!({"apiVersion": "cloudkeys.io/v1alpha1", "kind": "KeyIssuer", "metadata": {"name": "exoscale"}, "spec": spec})
}

fn access_key(name: &str, extra: Value) -> Value {
    keys::manifest(name, "exoscale", "exoscale", json!({"roleId": PREEXISTING_ROLE_ID}), extra)
}

/// A namespace with the KeyIssuer `exoscale` at a fake of its own, Ready (an AccessKey applied
/// before would wait for the issuer's next check instead of testing anything).
async fn tenant(client: &Client, name: &str, policy: Value) -> (String, ExoscaleFake) {
    let ns = support::namespace(client, name).await;
    let fake = ExoscaleFake::start(ADMIN_KEY, ADMIN_SECRET);
    support::exoscale::credentials(client, &ns, ADMIN_SECRET).await;
    support::apply_json(client, &ns, exoscale_issuer(&fake, policy)).await;
    let issuers: Api<cloudkeys::api::KeyIssuer> = Api::namespaced(client.clone(), &ns);
    support::eventually(&format!("KeyIssuer {ns}/exoscale Ready"), keys::WAIT, || async {
        let issuer = issuers.get_opt("exoscale").await.ok()??;
        issuer.status?.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True").then_some(())
    })
    .await;
    (ns, fake)
}

/// Keys the fake created (answered): a key minted and revoked again counts too.
fn created(fake: &ExoscaleFake) -> usize {
    fake.requests().iter().filter(|r| r.method == "POST" && r.path == "/v2/api-key" && r.status == 200).count()
}

/// Every AccessKey of `ns` with its Ready reason, once each has one for its generation.
async fn settled_reasons(client: &Client, ns: &str, expected: usize) -> Vec<(String, String, String)> {
    let api: Api<AccessKey> = Api::namespaced(client.clone(), ns);
    support::eventually_explained("every AccessKey of the burst Issued or PolicyDenied", keys::WAIT, || async {
        let list = api.list(&ListParams::default()).await.map_err(|e| e.to_string())?;
        let mut reasons = Vec::new();
        for ak in &list.items {
            let current = ak.status.as_ref().and_then(|s| s.observed_generation) == ak.metadata.generation;
            match keys::ready_condition(ak) {
                Some((_, reason, message)) if current && (reason == "Issued" || reason == "PolicyDenied") => {
                    reasons.push((ak.metadata.name.clone().unwrap_or_default(), reason, message))
                }
                other => return Err(format!("{:?}: {other:?}", ak.metadata.name)),
            }
        }
        if reasons.len() == expected {
            Ok(reasons)
        } else {
            Err(format!("{} of {expected} AccessKeys settled", reasons.len()))
        }
    })
    .await
}

async fn status(api: &Api<AccessKey>) -> AccessKeyStatus {
    api.get("k").await.expect("AccessKey readable").status.unwrap_or_default()
}

async fn rotate(api: &Api<AccessKey>, value: &str) {
    let patch = json!({"metadata": {"annotations": {"cloudkeys.io/rotate": value}}});
    api.patch("k", &PatchParams::default(), &Patch::Merge(&patch)).await.expect("annotated");
}

/// Waits until the rotation `value` was handled and the AccessKey is back at rest: a current key
/// Ready, one replaced key in its grace period. Never more than two keys live meanwhile.
async fn rotated(api: &Api<AccessKey>, fake: &ExoscaleFake, value: &str) -> AccessKeyStatus {
    support::eventually_explained(&format!("rotation {value} handled"), keys::WAIT, || async {
        let most = fake.max_live_api_keys();
        assert!(
            most <= 2,
            "{most} keys of one AccessKey were live at once at the provider, waiting for rotation {value}"
        );
        let ak = api.get("k").await.map_err(|e| e.to_string())?;
        let s = ak.status.clone().unwrap_or_default();
        let (_, reason, message) = keys::ready_condition(&ak).unwrap_or_default();
        let id = s.access_key_id.clone().unwrap_or_default();
        let rotating = s.conditions.iter().find(|c| c.type_ == "Rotating").map(|c| c.reason.clone());
        let at_rest = s.last_rotate_request.as_deref() == Some(value)
            && reason == "Issued"
            && message.contains(&id)
            && s.retired.len() == 1
            && rotating.as_deref() == Some("GracePeriod");
        at_rest.then_some(s.clone()).ok_or_else(|| format!("{reason} {message}; rotating {rotating:?}; {s:?}"))
    })
    .await
}

/// `Revoked` events of AccessKey `k`.
async fn revoked_events(client: &Client, ns: &str) -> Vec<String> {
    let list = Api::<Event>::namespaced(client.clone(), ns).list(&ListParams::default()).await.expect("events");
    list.items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("Revoked") && e.involved_object.name.as_deref() == Some("k"))
        .filter_map(|e| e.message)
        .collect()
}

fn sorted(mut ids: Vec<String>) -> Vec<String> {
    ids.sort();
    ids
}

#[tokio::test]
async fn a_tenant_can_neither_stack_keys_nor_exceed_its_namespace_quota_and_bystanders_are_served() {
    support::own_control_plane();
    let client = support::client().await;
    support::install_crds(&client).await;
    let home = support::namespace(&client, "bounded-operator").await;
    let mut op = Operator::start_everywhere(&home, &[]);
    let pid = op.pid().expect("operator running");

    // Ten AccessKeys created in the same instant, with room for three. The fake answers slowly,
    // so that all ten are reconciled while the first keys are still being minted.
    let (burst_ns, burst_fake) = tenant(&client, "bounded-burst", json!({"maxKeysPerNamespace": MAX_KEYS})).await;
    burst_fake.set_faults(Faults { latency: Duration::from_millis(200), ..Faults::default() });
    let creates = (0..BURST).map(|i| {
        let (client, ns) = (client.clone(), burst_ns.clone());
        async move { support::apply_json(&client, &ns, access_key(&format!("burst-{i}"), json!({}))).await }
    });
    futures::future::join_all(creates).await;
    let reasons = settled_reasons(&client, &burst_ns, BURST).await;
    let issued = reasons.iter().filter(|(_, reason, _)| reason == "Issued").count();
    assert_eq!(issued, MAX_KEYS, "maxKeysPerNamespace {MAX_KEYS}, yet: {reasons:?}");
    for (name, reason, message) in reasons.iter().filter(|(_, reason, _)| reason == "PolicyDenied") {
        assert!(message.contains("maxKeysPerNamespace"), "{name} ({reason}) says {message:?}");
    }
    assert_eq!(burst_fake.live_api_keys().len(), MAX_KEYS, "live keys at the provider");
    assert_eq!(burst_fake.max_live_api_keys(), MAX_KEYS, "more keys were live at some moment");
    assert_eq!(created(&burst_fake), MAX_KEYS, "keys minted beyond the quota (and revoked again)");

    // A rotation loop with an hour of grace: first as fast as the apiserver takes the requests,
    // then each one waited for, so that every one replaces the key while another waits.
    let (rot_ns, rot_fake) = tenant(&client, "bounded-rotate", Value::Null).await;
    support::apply_json(&client, &rot_ns, access_key("k", json!({"rotation": {"gracePeriod": "1h"}}))).await;
    keys::wait_issued(&client, &rot_ns, "k").await;
    let api: Api<AccessKey> = Api::namespaced(client.clone(), &rot_ns);
    for i in 1..=8 {
        rotate(&api, &i.to_string()).await;
    }
    rotated(&api, &rot_fake, "8").await;
    let mut early = 0;
    for i in 9..=12 {
        let before = status(&api).await;
        let waiting = before.retired[0].clone();
        let ends = waiting.revoke_after.as_ref().expect("grace period started").0;
        rotate(&api, &i.to_string()).await;
        let after = rotated(&api, &rot_fake, &i.to_string()).await;
        assert_eq!(after.retired[0].access_key_id, before.access_key_id.clone().unwrap_or_default());
        // The key that waited went first, and the event says its grace period ended early.
        let says = format!(
            "revoked replaced key {}: its grace period ends early (it was to end at {ends})",
            waiting.access_key_id
        );
        let events = revoked_events(&client, &rot_ns).await;
        assert!(events.iter().any(|m| m.contains(&says)), "no event saying {says:?}: {events:?}");
        early += 1;
        let live = sorted(rot_fake.live_api_keys().into_iter().map(|k| k.key).collect());
        let held =
            sorted(vec![after.access_key_id.clone().unwrap_or_default(), after.retired[0].access_key_id.clone()]);
        assert_eq!(live, held, "live keys at the provider after rotation {i}");
    }
    assert_eq!(early, 4);
    assert_eq!(rot_fake.max_live_api_keys(), 2, "more than two keys of one AccessKey were live at some moment");
    assert!(created(&rot_fake) >= 6, "the loop replaced the key only {} times", created(&rot_fake));
    assert_no_secret_leaks(&client, &rot_ns, &op, &rot_fake.issued_secrets()).await;

    // Another tenant is served by the same operator process, which never restarted.
    let (bystander_ns, bystander_fake) = tenant(&client, "bounded-bystander", Value::Null).await;
    support::apply_json(&client, &bystander_ns, access_key("k", json!({}))).await;
    let ak = keys::wait_issued(&client, &bystander_ns, "k").await;
    let id = ak.status.and_then(|s| s.access_key_id).expect("bystander's key");
    assert_eq!(bystander_fake.live_api_keys().into_iter().map(|k| k.key).collect::<Vec<_>>(), vec![id]);
    assert_eq!(op.pid(), Some(pid));
    assert!(op.is_running(), "the operator process {pid} is gone");
}
