//! Drift checks end to end: a key revoked at the provider behind the operator's back (deleted at
//! Exoscale and Yandex, deactivated at OUTSCALE) is found by the next sweep and replaced at once;
//! sweeps that find nothing write nothing.

mod fakes;
mod support;

use fakes::exoscale::{ExoscaleFake, PREEXISTING_ROLE_ID};
use fakes::outscale::OutscaleFake;
use fakes::yandex::YandexFake;
use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, ListParams};
use kube::Client;
use serde_json::{json, Value};
use support::exoscale::{ADMIN_KEY, ADMIN_SECRET, CREDENTIALS};
use support::keys;
use support::operator::Operator;

fn key_issuer(name: &str, provider: &str, block: Value) -> Value {
    json!({"apiVersion": "cloudkeys.io/v1alpha1", "kind": "KeyIssuer", "metadata": {"name": name},
        "spec": {provider: block}})
}

/// The AccessKey's current key id and reference.
async fn current(client: &Client, ns: &str, name: &str) -> (String, String) {
    let status = keys::wait_issued(client, ns, name).await.status.expect("status");
    (status.access_key_id.expect("key id"), status.key_ref.expect("key ref"))
}

/// The drift listings the operator has sent, from its metrics.
async fn listings(base: &str) -> u64 {
    let text = reqwest::get(format!("{base}/metrics")).await.expect("metrics").text().await.expect("metrics text");
    text.lines()
        .filter(|l| l.starts_with("cloudkeys_drift_listings_total{") && l.contains("result=\"ok\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

async fn wait_event(client: &Client, ns: &str, name: &str, reason: &str, says: &str) {
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    support::eventually(&format!("a {reason} event on {name}"), keys::WAIT, || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items
            .iter()
            .any(|e| {
                e.reason.as_deref() == Some(reason)
                    && e.involved_object.name.as_deref() == Some(name)
                    && e.message.as_deref().is_some_and(|m| m.contains(says))
            })
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn keys_revoked_at_the_provider_are_replaced_by_the_next_sweep() {
    let client = support::client().await;
    support::install_crds(&client).await;
    let ns = support::namespace(&client, "drift").await;
    let exoscale = ExoscaleFake::start(ADMIN_KEY, ADMIN_SECRET);
    support::exoscale::credentials(&client, &ns, ADMIN_SECRET).await;
    let exo = json!({"endpoint": exoscale.endpoint(), "credentialsSecretRef": {"name": CREDENTIALS}});
    support::apply_json(&client, &ns, key_issuer("exo", "exoscale", exo)).await;
    let yandex = YandexFake::start();
    support::create_secret(&client, &ns, "yc-admin", json!({"key.json": yandex.authorized_key_json()})).await;
    let yc = json!({"endpoint": yandex.endpoint(), "operationEndpoint": yandex.operation_endpoint(),
        "serviceAccountId": yandex.service_account_id(), "serviceAccountKeySecretRef": {"name": "yc-admin"}});
    support::apply_json(&client, &ns, key_issuer("yc", "yandex", yc)).await;
    let (osc_ak, osc_sk) = ("ADMINAK0123456789ABC", "adminsecretkey0123456789adminsecretkey01");
    let outscale = OutscaleFake::start("eu-west-2", osc_ak, osc_sk);
    outscale.add_user("app-web");
    support::create_secret(&client, &ns, "osc-admin", json!({"OSC_ACCESS_KEY": osc_ak, "OSC_SECRET_KEY": osc_sk}))
        .await;
    let osc =
        json!({"region": "eu-west-2", "endpoint": outscale.endpoint(), "credentialsSecretRef": {"name": "osc-admin"}});
    support::apply_json(&client, &ns, key_issuer("osc", "outscale", osc)).await;
    let op = Operator::start_with(&ns, &[("CLOUDKEYS_DRIFT_CHECK_INTERVAL", "2s")]);
    let base = op.http_base().await;
    let accesskeys = [
        keys::manifest("exo-key", "exo", "exoscale", json!({"roleId": PREEXISTING_ROLE_ID}), json!({})),
        keys::manifest("yc-key", "yc", "yandex", json!({}), json!({})),
        keys::manifest("osc-key", "osc", "outscale", json!({"userName": "app-web"}), json!({})),
    ];
    for manifest in &accesskeys {
        support::apply_json(&client, &ns, manifest.clone()).await;
    }
    let mut old = Vec::new();
    for name in ["exo-key", "yc-key", "osc-key"] {
        old.push(current(&client, &ns, name).await);
    }
    // A key nobody's marker names, and one with another installation's marker: never touched.
    let unmarked = exoscale.add_api_key("by-hand", PREEXISTING_ROLE_ID);
    let elsewhere =
        exoscale.add_api_key("team-b.ck-ffffffff-0f8c2d7e-1b2a-4c3d-9e8f-0123456789ab-aaaaaaaaaa", PREEXISTING_ROLE_ID);

    // Sweeps that find every key in place write nothing.
    let aks: Api<cloudkeys::api::AccessKey> = Api::namespaced(client.clone(), &ns);
    let versions = |list: Vec<cloudkeys::api::AccessKey>| -> Vec<Option<String>> {
        list.into_iter().map(|ak| ak.metadata.resource_version).collect()
    };
    let before = versions(aks.list(&ListParams::default()).await.expect("listed").items);
    let seen = listings(&base).await;
    support::eventually("two more sweeps", keys::WAIT, || async {
        // Each sweep lists the three owners once.
        (listings(&base).await >= seen + 6).then_some(())
    })
    .await;
    assert_eq!(versions(aks.list(&ListParams::default()).await.expect("listed").items), before);

    // Revoked behind the operator's back, each the way its console does it.
    assert!(exoscale.delete_api_key_by_hand(&old[0].0));
    assert!(yandex.delete_key_by_hand(&old[1].1));
    assert!(outscale.deactivate_key_by_hand(&old[2].0));
    for (i, name) in ["exo-key", "yc-key", "osc-key"].into_iter().enumerate() {
        wait_event(&client, &ns, name, "KeyRevokedExternally", &old[i].0).await;
        let (id, _) = support::eventually(&format!("{name} to have a new key"), keys::WAIT, || async {
            let (id, key_ref) = current(&client, &ns, name).await;
            (id != old[i].0).then_some((id, key_ref))
        })
        .await;
        let secret = keys::secret(&client, &ns, &format!("{name}-credentials")).await.expect("Secret");
        let annotations = secret.metadata.annotations.unwrap_or_default();
        assert_eq!(annotations.get("cloudkeys.io/access-key-id"), Some(&id), "{name}: the new key is in the Secret");
        wait_event(&client, &ns, name, "Rotated", "revoked at the provider").await;
    }
    let exo_live: Vec<String> = exoscale.live_api_keys().into_iter().map(|k| k.key).collect();
    assert!(exo_live.contains(&unmarked.key) && exo_live.contains(&elsewhere.key), "{exo_live:?}");
    assert_eq!(exo_live.len(), 3, "the new key and the two foreign ones: {exo_live:?}");
    assert_eq!(yandex.live_keys().len(), 1);
    // The deactivated key is gone too once replaced: it carried the marker.
    support::eventually("the deactivated OUTSCALE key deleted", keys::WAIT, || async {
        outscale.live_keys().iter().all(|k| k.access_key_id != old[2].0).then_some(())
    })
    .await;
}
