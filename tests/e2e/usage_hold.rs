//! Evidence before revoking, end to end: the operator process, the real apiserver and the
//! Yandex fake, which reports `lastUsedAt` per static key as the IAM API does. A replaced key
//! the provider shows used after the switch to the new key is held past its grace period (a
//! Warning, a metric, the hold in status), then revoked when the hold ends.

use crate::{fakes, support};

use std::time::Instant;

use cloudkeys::api::{AccessKey, RetiredKey};
use fakes::yandex::YandexFake;
use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;
use support::keys;
use support::operator::Operator;

#[tokio::test]
async fn a_replaced_key_used_after_the_switch_is_held_with_a_warning_then_revoked_when_the_hold_ends() {
    let client = support::client().await;
    support::install_crds(&client).await;
    let ns = support::namespace(&client, "usage-hold").await;
    let fake = YandexFake::start();
    support::create_secret(&client, &ns, "yc-admin", json!({"key.json": fake.authorized_key_json()})).await;
    let yandex = json!({"endpoint": fake.endpoint(), "operationEndpoint": fake.operation_endpoint(),
        "serviceAccountId": fake.service_account_id(), "serviceAccountKeySecretRef": {"name": "yc-admin"}});
    support::apply_json(
        &client,
        &ns,
        json!({"apiVersion": "cloudkeys.io/v1alpha1", "kind": "KeyIssuer",
        "metadata": {"name": "yandex"}, "spec": {"yandex": yandex}}),
    )
    .await;
    let op = Operator::start(&ns);
    let rotation = json!({"rotation": {"gracePeriod": "15s", "maxUsageHold": "20s"}});
    support::apply_json(&client, &ns, keys::manifest("k", "yandex", "yandex", json!({}), rotation)).await;
    let first = keys::wait_issued(&client, &ns, "k").await.status.and_then(|s| s.access_key_id).expect("accessKeyId");
    let first_ref = fake.live_keys().into_iter().find(|k| k.key_id == first).expect("live at the fake").id;

    // Rotated; with no consumers the grace period starts at once.
    let access_keys: Api<AccessKey> = Api::namespaced(client.clone(), &ns);
    let rotate = json!({"metadata": {"annotations": {"cloudkeys.io/rotate": "1"}}});
    access_keys.patch("k", &PatchParams::default(), &Patch::Merge(&rotate)).await.expect("annotated");
    let retired = |status: Option<cloudkeys::api::AccessKeyStatus>| -> Option<RetiredKey> {
        status?.retired.into_iter().find(|r| r.access_key_id == first)
    };
    let grace_end = support::eventually("the grace period of the replaced key", keys::WAIT, || async {
        retired(access_keys.get("k").await.ok()?.status)?.revoke_after.map(|t| t.0)
    })
    .await;
    let second = access_keys.get("k").await.expect("AccessKey").status.and_then(|s| s.access_key_id).expect("id");

    // Something nobody declared still authenticates with the old key, after the switch.
    let used = grace_end - jiff::SignedDuration::from_secs(5);
    assert!(jiff::Timestamp::now() < grace_end, "the grace period ended before the test could use the key");
    assert!(fake.use_key(&first_ref, &used.to_string()));

    let held = support::eventually("the revocation held", keys::WAIT, || async {
        retired(access_keys.get("k").await.ok()?.status).filter(|r| r.held_until.is_some())
    })
    .await;
    let held_until = held.held_until.as_ref().expect("heldUntil").0;
    assert_eq!(held_until, grace_end + jiff::SignedDuration::from_secs(20), "maxUsageHold past the grace period");
    assert_eq!(held.last_used_at.map(|t| t.0), Some(used));
    assert!(jiff::Timestamp::now() < held_until);
    assert!(fake.live_keys().iter().any(|k| k.key_id == first), "held: still live past its grace period");
    let status = access_keys.get("k").await.expect("AccessKey").status.expect("status");
    let rotating = status.conditions.iter().find(|c| c.type_ == "Rotating").expect("Rotating");
    assert!(rotating.message.contains("revocation held"), "{}", rotating.message);

    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let warning = support::eventually("a RetiredKeyStillUsed warning", keys::WAIT, || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items.into_iter().find(|e| e.reason.as_deref() == Some("RetiredKeyStillUsed"))
    })
    .await;
    assert_eq!(warning.type_.as_deref(), Some("Warning"));
    let message = warning.message.unwrap_or_default();
    assert!(message.contains(&first) && message.contains(&second) && message.contains(&held_until.to_string()));
    let base = op.http_base().await;
    support::eventually("the hold counted in the metrics", keys::WAIT, || async {
        let metrics = reqwest::get(format!("{base}/metrics")).await.ok()?.text().await.ok()?;
        let value = |prefix: &str| {
            let line = metrics.lines().find(|l| l.starts_with(prefix))?;
            line.rsplit(' ').next()?.parse::<f64>().ok()
        };
        let counted = value("cloudkeys_retired_keys_still_used_total{provider=\"yandex\"}") == Some(1.0);
        let gauge =
            value(&format!("cloudkeys_access_key_retired_keys_held{{namespace=\"{ns}\",name=\"k\"}}")) == Some(1.0);
        (counted && gauge).then_some(())
    })
    .await;

    // The hold ends: revoked then, not before, and never asked about again.
    let (wall, clock) = (jiff::Timestamp::now(), Instant::now());
    keys::wait_live(
        "the held key revoked when its hold ends",
        || fake.live_keys().into_iter().map(|k| k.key_id).collect(),
        vec![second.clone()],
    )
    .await;
    let delete = format!("/iam/aws-compatibility/v1/accessKeys/{first_ref}");
    let requests = fake.requests();
    let deleted = requests.iter().find(|r| r.method == "DELETE" && r.path == delete).expect("DELETE of the held key");
    let deleted_at = match deleted.at.checked_duration_since(clock) {
        Some(after) => wall + jiff::SignedDuration::try_from(after).expect("duration"),
        None => wall,
    };
    assert!(deleted_at >= held_until, "revoked at {deleted_at}, before its hold ended at {held_until}");
    let asked = requests.iter().filter(|r| r.method == "GET" && r.path == delete).count();
    // One read for its use when the grace period ended, one by the revocation's ownership check.
    assert!(asked <= 2, "the held key was asked about again during its hold: {asked} reads");
}
