//! An issuer's `policy.deletionPolicies` holds for the whole life of a key, as a hostile tenant
//! would test it: an AccessKey switched to `Retain` after issuance is revoked all the same when
//! deleted; a finalizer stripped by hand and a Secret forged to look like a retained one hide
//! nothing from the orphan sweep. A key kept where the issuer allows it is recorded in the
//! issuer's status, survives the sweeps, and leaves the record once revoked by hand. Other
//! tenants are served throughout, by the same process.
//!
//! The operator watches every namespace here (tenants live in several): a control plane of its
//! own.

use crate::{fakes, support};
use std::collections::BTreeSet;

use cloudkeys::api::{AccessKey, ClusterKeyIssuer};
use fakes::exoscale::{ExoscaleFake, PREEXISTING_ROLE_ID};
use k8s_openapi::api::core::v1::{Event, Secret};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::Client;
use serde_json::json;
use support::exoscale::{ADMIN_SECRET, CREDENTIALS};
use support::keys;
use support::operator::Operator;

fn live(fake: &ExoscaleFake) -> BTreeSet<String> {
    fake.live_api_keys().into_iter().map(|k| k.key).collect()
}

/// An AccessKey on the ClusterKeyIssuer `issuer`, with `deletionPolicy: Delete`.
fn access_key(name: &str, issuer: &str) -> serde_json::Value {
    let extra = json!({"issuerRef": {"name": issuer, "kind": "ClusterKeyIssuer"}, "deletionPolicy": "Delete"});
    keys::manifest(name, issuer, "exoscale", json!({"roleId": PREEXISTING_ROLE_ID}), extra)
}

async fn issued(client: &Client, ns: &str, name: &str) -> String {
    keys::wait_issued(client, ns, name).await.status.and_then(|s| s.access_key_id).expect("key id")
}

/// The drift listings sent to Exoscale so far, from the operator's metrics.
async fn listings(base: &str) -> u64 {
    let text = reqwest::get(format!("{base}/metrics")).await.expect("metrics").text().await.expect("metrics text");
    text.lines()
        .filter(|l| l.starts_with("cloudkeys_drift_listings_total{") && l.contains("result=\"ok\""))
        .filter(|l| l.contains("provider=\"exoscale\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

async fn wait_event(client: &Client, ns: &str, name: &str, reason: &str, says: &str) -> String {
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    support::eventually(&format!("a {reason} event on {name}"), keys::WAIT, || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items.into_iter().find_map(|e| {
            let hit = e.reason.as_deref() == Some(reason)
                && e.involved_object.name.as_deref() == Some(name)
                && e.message.as_deref().is_some_and(|m| m.contains(says));
            hit.then(|| format!("{} {}", e.type_.unwrap_or_default(), e.message.unwrap_or_default()))
        })
    })
    .await
}

async fn retained_ids(issuers: &Api<ClusterKeyIssuer>, name: &str) -> Option<Vec<String>> {
    let status = issuers.get(name).await.ok()?.status?;
    Some(status.retained_keys?.into_iter().map(|k| k.access_key_id).collect())
}

#[tokio::test]
async fn an_issuer_that_allows_only_delete_revokes_every_key_a_tenant_tries_to_keep() {
    support::own_control_plane();
    let client = support::client().await;
    support::install_crds(&client).await;
    let ops = support::namespace(&client, "retain-ops").await;
    let team_a = support::namespace(&client, "retain-a").await;
    let team_b = support::namespace(&client, "retain-b").await;
    let fake = ExoscaleFake::start(support::exoscale::ADMIN_KEY, ADMIN_SECRET);
    support::exoscale::credentials(&client, &ops, ADMIN_SECRET).await;
    let exoscale = json!({"endpoint": fake.endpoint(), "credentialsSecretRef": {"name": CREDENTIALS}});
    let (strict, lenient) = ("delete-only", "keeps");
    for (name, deletion) in [(strict, json!(["Delete"])), (lenient, json!(["Delete", "Retain"]))] {
        let spec = json!({"exoscale": exoscale, "policy": {"deletionPolicies": deletion}, "revokeOrphans": true});
        support::apply_json(
            &client,
            &ops,
            json!({"apiVersion": "cloudkeys.io/v1alpha1", "kind": "ClusterKeyIssuer", "metadata": {"name": name}, "spec": spec}),
        )
        .await;
    }
    let mut op = Operator::start_everywhere(&ops, &[("CLOUDKEYS_DRIFT_CHECK_INTERVAL", "2s")]);
    let pid = op.pid().expect("running");
    let base = op.http_base().await;
    for name in ["switched", "stripped"] {
        support::apply_json(&client, &team_a, access_key(name, strict)).await;
    }
    let switched = issued(&client, &team_a, "switched").await;
    let stripped = issued(&client, &team_a, "stripped").await;
    assert_eq!(live(&fake), BTreeSet::from([switched.clone(), stripped.clone()]));
    let aks: Api<AccessKey> = Api::namespaced(client.clone(), &team_a);
    let patch = |body: serde_json::Value| Patch::Merge(body);

    // (1) Switched to Retain after issuance (the policy was checked when the key was minted),
    // then deleted: revoked all the same, with a Warning saying why.
    aks.patch("switched", &PatchParams::default(), &patch(json!({"spec": {"deletionPolicy": "Retain"}})))
        .await
        .expect("switched to Retain");
    keys::delete_access_key(&client, &team_a, "switched").await;
    keys::wait_gone(&client, &team_a, "switched").await;
    assert_eq!(live(&fake), BTreeSet::from([stripped.clone()]), "the key switched to Retain is live");
    let said = wait_event(&client, &team_a, "switched", "RetainDenied", strict).await;
    assert!(said.starts_with("Warning") && said.contains("Retain"), "{said}");
    let issuers: Api<ClusterKeyIssuer> = Api::all(client.clone());
    assert!(!retained_ids(&issuers, strict).await.unwrap_or_default().contains(&switched));

    // (2) A Secret forged to look retained (the managed-by label and the key-id annotation, all
    // a tenant may write), then the finalizer stripped and the AccessKey deleted: the key is an
    // orphan all the same, and the issuer revokes it.
    let forged: Secret = serde_json::from_value(json!({
        "metadata": {"name": "looks-retained",
            "labels": {"app.kubernetes.io/managed-by": "cloudkeys"},
            "annotations": {"cloudkeys.io/access-key-id": stripped}},
        "stringData": {"EXOSCALE_API_KEY": stripped},
    }))
    .expect("Secret literal");
    Api::<Secret>::namespaced(client.clone(), &team_a).create(&PostParams::default(), &forged).await.expect("forged");
    aks.patch("stripped", &PatchParams::default(), &patch(json!({"metadata": {"finalizers": null}})))
        .await
        .expect("finalizer stripped");
    keys::delete_access_key(&client, &team_a, "stripped").await;
    keys::wait_gone(&client, &team_a, "stripped").await;
    support::eventually("the orphan revoked by a sweep", keys::WAIT, || async { live(&fake).is_empty().then_some(()) })
        .await;

    // Where the issuer allows it, a key kept is recorded in the issuer's status (never a
    // secret), survives the sweeps, and leaves the record once revoked by hand.
    let kept_spec = json!({"issuerRef": {"name": lenient, "kind": "ClusterKeyIssuer"}, "deletionPolicy": "Retain"});
    let kept_key = keys::manifest("kept", lenient, "exoscale", json!({"roleId": PREEXISTING_ROLE_ID}), kept_spec);
    support::apply_json(&client, &team_a, kept_key).await;
    let kept = issued(&client, &team_a, "kept").await;
    keys::delete_access_key(&client, &team_a, "kept").await;
    keys::wait_gone(&client, &team_a, "kept").await;
    let status = issuers.get(lenient).await.expect("issuer").status.expect("status");
    let record = status.retained_keys.expect("retained keys recorded");
    assert_eq!(record.len(), 1, "{record:?}");
    assert_eq!(
        (record[0].access_key_id.as_str(), record[0].namespace.as_str(), record[0].access_key.as_deref()),
        (kept.as_str(), team_a.as_str(), Some("kept"))
    );
    assert_eq!(record[0].secret_name, "kept-credentials");
    let secret = fake.issued_secrets();
    let written = serde_json::to_string(&record).expect("record as JSON");
    assert!(secret.iter().all(|s| !written.contains(s.as_str())), "a key's secret is in the issuer's status");
    let seen = listings(&base).await;
    support::eventually("two more sweeps of both issuers", keys::WAIT, || async {
        (listings(&base).await >= seen + 4).then_some(())
    })
    .await;
    assert_eq!(live(&fake), BTreeSet::from([kept.clone()]), "the retained key was taken for an orphan");
    assert!(fake.delete_api_key_by_hand(&kept));
    support::eventually("the retained key revoked by hand leaves the record", keys::WAIT, || async {
        retained_ids(&issuers, lenient).await.filter(|ids| ids.is_empty())
    })
    .await;

    // (3) Another tenant is served as ever, by the same process.
    support::apply_json(&client, &team_b, access_key("bystander", strict)).await;
    let bystander = issued(&client, &team_b, "bystander").await;
    assert_eq!(live(&fake), BTreeSet::from([bystander]));
    assert!(op.is_running(), "the operator exited");
    assert_eq!(op.pid(), Some(pid));
}
