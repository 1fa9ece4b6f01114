//! Drift checks end to end: a key revoked at the provider behind the operator's back (deleted at
//! Exoscale and Yandex, deactivated at OUTSCALE) is found by the next sweep and replaced at once;
//! what the provider shows of a key (Yandex's last use, an OUTSCALE expiry changed by hand) is
//! recorded; keys of this installation whose AccessKey is gone are counted, and revoked when the issuer
//! says so; keys of other installations and unmarked ones are never touched; sweeps that find
//! nothing new write nothing.

use crate::{clouds, fakes, support};
use cloudkeys::api::KeyIssuer;
use fakes::exoscale::PREEXISTING_ROLE_ID;
use fakes::yandex::SECOND_SERVICE_ACCOUNT_ID;
use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::Client;
use serde_json::json;
use support::keys;
use support::operator::Operator;

const INSTALLATION: &str = "0a1b2c3d";
/// The UID of an AccessKey that no longer exists.
const GONE_UID: &str = "0f8c2d7e-1b2a-4c3d-9e8f-0123456789ab";

/// The AccessKey's current key id and reference.
async fn current(client: &Client, ns: &str, name: &str) -> (String, String) {
    let status = keys::wait_issued(client, ns, name).await.status.expect("status");
    (status.access_key_id.expect("key id"), status.key_ref.expect("key ref"))
}

/// The drift listings the operator has sent to the three clouds, from its metrics. (In a shared
/// control plane it also sweeps other tests' ClusterKeyIssuers; those are all `local`.)
async fn listings(base: &str) -> u64 {
    let text = reqwest::get(format!("{base}/metrics")).await.expect("metrics").text().await.expect("metrics text");
    text.lines()
        .filter(|l| l.starts_with("cloudkeys_drift_listings_total{") && l.contains("result=\"ok\""))
        .filter(|l| ["exoscale", "yandex", "outscale"].iter().any(|p| l.contains(&format!("provider=\"{p}\""))))
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
    let clouds::Clouds { exoscale, yandex, outscale } = clouds::issuers(&client, &ns).await;
    // Keys of this installation whose AccessKey is gone (a finalizer removed by hand, a restored
    // backup), one per provider owner; and keys that are not this installation's.
    let orphan = format!("ck-{INSTALLATION}-{GONE_UID}-aaaaaaaaaa");
    let exo_orphan = exoscale.add_api_key(&format!("old-app.{orphan}"), PREEXISTING_ROLE_ID);
    let yc_orphan = yandex.add_key(&yandex.service_account_id(), &format!("old app {orphan}"));
    let (osc_orphan, _) = outscale.add_key(Some("app-web"), Some(&orphan));
    let unmarked = exoscale.add_api_key("by-hand", PREEXISTING_ROLE_ID);
    let elsewhere = exoscale.add_api_key(&format!("team-b.ck-ffffffff-{GONE_UID}-aaaaaaaaaa"), PREEXISTING_ROLE_ID);
    let legacy = exoscale.add_api_key(&format!("team-c.ck-{GONE_UID}-aaaaaaaaaa"), PREEXISTING_ROLE_ID);
    let op = Operator::start_with(
        &ns,
        &[("CLOUDKEYS_DRIFT_CHECK_INTERVAL", "2s"), ("CLOUDKEYS_INSTALLATION_ID", INSTALLATION)],
    );
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
    // The orphans are counted on their issuers, with a Warning; nothing is revoked yet.
    let issuers: Api<KeyIssuer> = Api::namespaced(client.clone(), &ns);
    for issuer in ["exo", "yc", "osc"] {
        support::eventually(&format!("{issuer}'s orphan counted"), keys::WAIT, || async {
            let i = issuers.get(issuer).await.ok()?;
            (i.status?.orphaned_keys == Some(1)).then_some(())
        })
        .await;
    }
    wait_event(&client, &ns, "exo", "OrphanedKeys", &exo_orphan.key).await;
    wait_event(&client, &ns, "yc", "OrphanedKeys", &yc_orphan.key_id).await;
    wait_event(&client, &ns, "osc", "OrphanedKeys", &osc_orphan.access_key_id).await;

    // Sweeps that find nothing new write nothing: no AccessKey, no issuer.
    let aks: Api<cloudkeys::api::AccessKey> = Api::namespaced(client.clone(), &ns);
    let versions = || async {
        let listed = aks.list(&ListParams::default()).await.expect("listed").items;
        let mut v: Vec<Option<String>> = listed.into_iter().map(|o| o.metadata.resource_version).collect();
        let listed = issuers.list(&ListParams::default()).await.expect("listed").items;
        v.extend(listed.into_iter().map(|o| o.metadata.resource_version));
        v
    };
    let before = versions().await;
    let seen = listings(&base).await;
    support::eventually("two more sweeps", keys::WAIT, || async {
        // Each sweep lists four owners once: the Exoscale account, the Yandex service account,
        // the OUTSCALE user and the OUTSCALE issuer's own identity.
        (listings(&base).await >= seen + 8).then_some(())
    })
    .await;
    assert_eq!(versions().await, before);

    // A listing of another scope than the key's is no proof it is gone: with the Yandex issuer's
    // default service account changed, yc-key's key is not in the listing, but it exists, and
    // stays.
    let to = |sa: &str| json!({"spec": {"yandex": {"serviceAccountId": sa}}});
    issuers.patch("yc", &PatchParams::default(), &Patch::Merge(&to(SECOND_SERVICE_ACCOUNT_ID))).await.expect("patched");
    let seen = listings(&base).await;
    support::eventually("two sweeps of the new scope", keys::WAIT, || async {
        (listings(&base).await >= seen + 8).then_some(())
    })
    .await;
    assert_eq!(current(&client, &ns, "yc-key").await.0, old[1].0, "a key that exists was replaced");
    issuers.patch("yc", &PatchParams::default(), &Patch::Merge(&to(&yandex.service_account_id()))).await.expect("back");

    // What the provider shows of a key is recorded: Yandex's last use, and an expiry someone set
    // by hand at OUTSCALE (with a warning; renewal follows it).
    assert!(yandex.use_key(&old[1].1, "2026-12-01T10:00:00Z"));
    let expiry = jiff::Timestamp::from_second(jiff::Timestamp::now().as_second() + 30 * 86_400).expect("time");
    outscale.set_expiration_by_hand(&old[2].0, expiry);
    support::eventually("yc-key's last use recorded", keys::WAIT, || async {
        let status = aks.get("yc-key").await.ok()?.status?;
        (status.last_used_at?.0 == "2026-12-01T10:00:00Z".parse::<jiff::Timestamp>().ok()?).then_some(())
    })
    .await;
    support::eventually("osc-key's new expiry recorded", keys::WAIT, || async {
        let status = aks.get("osc-key").await.ok()?.status?;
        (status.expires_at?.0 == expiry && status.renewal_time.is_some()).then_some(())
    })
    .await;
    wait_event(&client, &ns, "osc-key", "KeyExpiryChanged", &old[2].0).await;
    support::eventually("the last use as a metric", keys::WAIT, || async {
        let metrics = reqwest::get(format!("{base}/metrics")).await.ok()?.text().await.ok()?;
        metrics
            .lines()
            .filter(|l| l.starts_with("cloudkeys_access_key_last_used_timestamp_seconds{") && l.contains("yc-key"))
            .any(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) == Some(1_796_119_200.0))
            .then_some(())
    })
    .await;

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
        wait_event(&client, &ns, name, "Rotated", "the key was revoked at the provider").await;
    }
    assert_eq!(exoscale.live_api_keys().len(), 5, "the new key, the orphan and three foreign ones");
    assert_eq!(yandex.live_keys().len(), 2, "the new key and the orphan");
    // The deactivated key is gone too once replaced: it carried the marker.
    support::eventually("the deactivated OUTSCALE key deleted", keys::WAIT, || async {
        outscale.live_keys().iter().all(|k| k.access_key_id != old[2].0).then_some(())
    })
    .await;

    // Issuers that ask for it get their orphans revoked; keys without this installation's marker
    // stay.
    for issuer in ["exo", "yc", "osc"] {
        let patch = json!({"spec": {"revokeOrphans": true}});
        issuers.patch(issuer, &PatchParams::default(), &Patch::Merge(&patch)).await.expect("revokeOrphans set");
    }
    for issuer in ["exo", "yc", "osc"] {
        support::eventually(&format!("{issuer}'s orphan revoked"), keys::WAIT, || async {
            let i = issuers.get(issuer).await.ok()?;
            (i.status?.orphaned_keys == Some(0)).then_some(())
        })
        .await;
    }
    let exo_live: Vec<String> = exoscale.live_api_keys().into_iter().map(|k| k.key).collect();
    assert!(!exo_live.contains(&exo_orphan.key), "{exo_live:?}");
    for foreign in [&unmarked.key, &elsewhere.key, &legacy.key] {
        assert!(exo_live.contains(foreign), "{foreign} must stay: {exo_live:?}");
    }
    assert!(yandex.live_keys().iter().all(|k| k.id != yc_orphan.id));
    assert!(outscale.live_keys().iter().all(|k| k.access_key_id != osc_orphan.access_key_id));
    wait_event(&client, &ns, "exo", "OrphansRevoked", &exo_orphan.key).await;
}

/// An operator upgrade: keys an older operator retained were known only by their Secrets. The
/// first complete sweep of an issuer from before the record takes them over into
/// `status.retainedKeys`, once; the other orphans are revoked as ever. A Secret written after
/// that proves nothing.
#[tokio::test]
async fn keys_retained_before_the_record_existed_are_taken_over_once_and_kept() {
    let client = support::client().await;
    support::install_crds(&client).await;
    let ns = support::namespace(&client, "drift-upgrade").await;
    let fake = fakes::exoscale::ExoscaleFake::start(support::exoscale::ADMIN_KEY, support::exoscale::ADMIN_SECRET);
    support::exoscale::credentials(&client, &ns, support::exoscale::ADMIN_SECRET).await;
    let spec = json!({"exoscale": {"endpoint": fake.endpoint(), "credentialsSecretRef": {"name": support::exoscale::CREDENTIALS}},
        "revokeOrphans": true});
    support::apply_json(
        &client,
        &ns,
        json!({"apiVersion": "cloudkeys.io/v1alpha1", "kind": "KeyIssuer", "metadata": {"name": "exo"}, "spec": spec}),
    )
    .await;
    // The issuer's status as an older operator left it: its provider, and no record.
    let issuers: Api<KeyIssuer> = Api::namespaced(client.clone(), &ns);
    let old_status = json!({"status": {"provider": "exoscale"}});
    issuers.patch_status("exo", &PatchParams::default(), &Patch::Merge(&old_status)).await.expect("old status");
    let marker = |attempt: &str| format!("ck-{INSTALLATION}-{GONE_UID}-{attempt}");
    let kept = fake.add_api_key(&format!("app.{}", marker("aaaaaaaaaa")), PREEXISTING_ROLE_ID);
    let orphan = fake.add_api_key(&format!("other.{}", marker("bbbbbbbbbb")), PREEXISTING_ROLE_ID);
    let stray = fake.add_api_key(&format!("stray.{}", marker("cccccccccc")), PREEXISTING_ROLE_ID);
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), &ns);
    let released = |name: &str, key: &str| -> k8s_openapi::api::core::v1::Secret {
        serde_json::from_value(json!({"metadata": {"name": name,
            "labels": {"app.kubernetes.io/managed-by": "cloudkeys"},
            "annotations": {"cloudkeys.io/access-key-id": key}}}))
        .expect("Secret literal")
    };
    let params = kube::api::PostParams::default();
    secrets.create(&params, &released("app-credentials", &kept.key)).await.expect("the old operator's Secret");
    let _op = Operator::start_with(
        &ns,
        &[("CLOUDKEYS_DRIFT_CHECK_INTERVAL", "2s"), ("CLOUDKEYS_INSTALLATION_ID", INSTALLATION)],
    );
    let status = support::eventually("the retained key taken over", keys::WAIT, || async {
        let status = issuers.get("exo").await.ok()?.status?;
        status.retained_keys_since.as_ref()?;
        Some(status)
    })
    .await;
    let record = status.retained_keys.expect("record");
    assert_eq!(record.len(), 1, "{record:?}");
    assert_eq!((record[0].access_key_id.as_str(), record[0].owner.as_str()), (kept.key.as_str(), GONE_UID));
    assert_eq!((record[0].namespace.as_str(), record[0].secret_name.as_str()), (ns.as_str(), "app-credentials"));
    let live = || fake.live_api_keys().into_iter().map(|k| k.key).collect::<Vec<_>>();
    support::eventually("the other orphans revoked", keys::WAIT, || async {
        let live = live();
        (!live.contains(&orphan.key) && !live.contains(&stray.key)).then_some(())
    })
    .await;
    assert!(live().contains(&kept.key), "the key retained before the upgrade was revoked");

    // Once: a Secret claiming a key after the takeover keeps nothing.
    let another = fake.add_api_key(&format!("forged.{}", marker("dddddddddd")), PREEXISTING_ROLE_ID);
    secrets.create(&params, &released("forged", &another.key)).await.expect("forged Secret");
    support::eventually("the key the forged Secret names revoked", keys::WAIT, || async {
        (!live().contains(&another.key)).then_some(())
    })
    .await;
    assert!(live().contains(&kept.key));
}
