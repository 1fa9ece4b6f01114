//! The operator against a control plane that misbehaves: kube-apiserver killed and started
//! again while keys are issued, and a ClusterKeyIssuer's credentials deleted while in use.
//!
//! This binary restarts its own apiserver and creates cluster-scoped issuers that every operator
//! of the binary would see, so its tests take turns.

use crate::{fakes, support};
use std::collections::BTreeSet;
use std::time::Duration;

use cloudkeys::api::{AccessKey, ClusterKeyIssuer};
use fakes::exoscale::{ExoscaleFake, Faults, PREEXISTING_ROLE_ID};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, ListParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use support::exoscale::{self, ADMIN_KEY, ADMIN_SECRET};
use support::keys;
use support::operator::Operator;

const IN_USE: &str = "cloudkeys.io/in-use";

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A namespace with the admin credentials Secret `exoscale-admin` for a fresh Exoscale fake.
async fn setup(test: &str) -> (Client, String, ExoscaleFake) {
    // kube-apiserver is restarted here: not in the middle of other tests.
    support::own_control_plane();
    let client = support::client().await;
    support::install_crds(&client).await;
    let ns = support::namespace(&client, test).await;
    let fake = ExoscaleFake::start(ADMIN_KEY, ADMIN_SECRET);
    let credentials = json!({"EXOSCALE_API_KEY": ADMIN_KEY, "EXOSCALE_API_SECRET": ADMIN_SECRET});
    support::create_secret(&client, &ns, exoscale::CREDENTIALS, credentials).await;
    (client, ns, fake)
}

/// Replaced keys are revoked at once: convergence here means one live key per AccessKey.
fn access_key(name: &str, issuer: &str, extra: serde_json::Value) -> serde_json::Value {
    let mut extra = extra;
    extra["rotation"] = json!({"gracePeriod": "0s"});
    keys::manifest(name, issuer, "exoscale", json!({"roleId": PREEXISTING_ROLE_ID}), extra)
}

fn live(fake: &ExoscaleFake) -> BTreeSet<String> {
    fake.live_api_keys().into_iter().map(|k| k.key).collect()
}

async fn get(url: &str) -> Option<u16> {
    Some(get_text(url).await?.0)
}

async fn get_text(url: &str) -> Option<(u16, String)> {
    let resp = reqwest::get(url).await.ok()?;
    let status = resp.status().as_u16();
    Some((status, resp.text().await.ok()?))
}

/// The longest "(for Ns)" in a /readyz answer: how long a watch has been failing.
fn failing_for(body: &str) -> Option<u64> {
    body.split("(for ").skip(1).filter_map(|p| p.split('s').next()?.parse().ok()).max()
}

/// Waits until every AccessKey of `ns` is Issued with its key in its Secret and nothing left to
/// revoke, and the provider's live keys are exactly theirs; returns them by name.
async fn converged(client: &Client, ns: &str, fake: &ExoscaleFake) -> Vec<(String, String)> {
    let api: Api<AccessKey> = Api::namespaced(client.clone(), ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    support::eventually_explained("every AccessKey to hold exactly one live key", keys::WAIT, || {
        let (api, secrets) = (api.clone(), secrets.clone());
        let live = live(fake);
        async move {
            let mut held = Vec::new();
            let list = api.list(&ListParams::default()).await.map_err(|e| format!("list: {e}"))?;
            for ak in list.items {
                let name = ak.name_any();
                let status = ak.status.as_ref().ok_or(format!("{name}: no status"))?;
                let id = status.access_key_id.clone().ok_or(format!("{name}: no key"))?;
                let (_, reason, message) = keys::ready_condition(&ak).ok_or(format!("{name}: no Ready"))?;
                let secret = secrets.get_opt(&ak.spec.secret_name).await.ok().flatten();
                let in_secret = secret.as_ref().map(|s| keys::secret_value(s, "EXOSCALE_API_KEY"));
                if reason != "Issued"
                    || !message.contains(&id)
                    || !status.retired.is_empty()
                    || status.pending.is_some()
                    || in_secret.as_deref() != Some(id.as_str())
                {
                    return Err(format!(
                        "{name}: {reason} {message:?}, {} retired, pending {}, Secret holds {in_secret:?}",
                        status.retired.len(),
                        status.pending.is_some()
                    ));
                }
                held.push((name, id));
            }
            let ids: BTreeSet<String> = held.iter().map(|(_, id)| id.clone()).collect();
            if ids.len() == held.len() && ids == live {
                Ok(held)
            } else {
                Err(format!("held {ids:?}, live at the provider {live:?}"))
            }
        }
    })
    .await
}

#[tokio::test]
async fn after_an_apiserver_restart_new_access_keys_deleted_secrets_and_issuer_changes_are_handled() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let (client, ns, fake) = setup("apiserver-restart").await;
    exoscale::issuer(&client, &ns, "exo-a", &fake.endpoint()).await;
    exoscale::issuer(&client, &ns, "exo-b", &fake.endpoint()).await;
    fake.set_faults(Faults { latency: Duration::from_millis(200), ..Faults::default() });
    let op = Operator::start_with(&ns, &[("CLOUDKEYS_STALL_TIMEOUT", "5s")]);
    let base = op.http_base().await;
    for i in 0..6 {
        support::apply_json(&client, &ns, access_key(&format!("before-{i}"), "exo-a", json!({}))).await;
    }
    keys::wait_issued(&client, &ns, "before-0").await;

    // Killed while the others are being issued, and away long enough for every watch to fail
    // and back off, longer than --stall-timeout: /readyz says so; /healthz does not, since a
    // restart would not bring the apiserver back.
    let restart = tokio::task::spawn_blocking(|| support::restart_apiserver(Duration::from_secs(12)));
    support::eventually("/readyz to report failing watches for a while", keys::WAIT, || {
        let url = format!("{base}/readyz");
        async move {
            let (status, body) = get_text(&url).await?;
            (status == 503 && failing_for(&body).is_some_and(|s| s >= 6)).then_some(())
        }
    })
    .await;
    assert_eq!(get(&format!("{base}/healthz")).await, Some(200), "liveness failed while the apiserver was away");
    restart.await.expect("restart finished");

    // New work after the restart: a new AccessKey, a deleted Secret, an issuer change.
    support::apply_json(&client, &ns, access_key("after", "exo-a", json!({}))).await;
    let replaced = keys::wait_issued(&client, &ns, "before-1").await.status.and_then(|s| s.access_key_id);
    Api::<Secret>::namespaced(client.clone(), &ns)
        .delete("before-1-credentials", &DeleteParams::default())
        .await
        .expect("Secret deleted");
    support::apply_json(&client, &ns, access_key("before-2", "exo-b", json!({}))).await;

    keys::wait_issued(&client, &ns, "after").await;
    let held = converged(&client, &ns, &fake).await;
    assert_eq!(held.len(), 7);
    let now = |name: &str| held.iter().find(|(n, _)| n == name).map(|(_, id)| id.clone());
    assert_ne!(now("before-1"), replaced, "the deleted Secret did not get a new key");
    let moved = Api::<AccessKey>::namespaced(client.clone(), &ns).get("before-2").await.expect("AccessKey");
    assert_eq!(moved.status.and_then(|s| s.issued_by).map(|i| i.name).as_deref(), Some("exo-b"));
    support::eventually("/readyz and /healthz to recover", keys::WAIT, || {
        let (ready, healthy) = (format!("{base}/readyz"), format!("{base}/healthz"));
        async move { (get(&ready).await? == 200 && get(&healthy).await? == 200).then_some(()) }
    })
    .await;
    support::leaks::assert_no_secret_leaks(&client, &ns, &op, &fake.issued_secrets()).await;
}

#[tokio::test]
async fn a_cluster_issuers_credentials_deleted_while_in_use_stay_until_the_last_key_is_revoked() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let (client, ns, fake) = setup("cluster-issuer-in-use").await;
    let name = format!("shared-{ns}");
    support::apply_json(
        &client,
        &ns,
        json!({"apiVersion": "cloudkeys.io/v1alpha1", "kind": "ClusterKeyIssuer", "metadata": {"name": name},
            "spec": {"exoscale": {"endpoint": fake.endpoint(), "credentialsSecretRef": {"name": "exoscale-admin"}}}}),
    )
    .await;
    let _op = Operator::start(&ns);
    let extra = json!({"issuerRef": {"name": name, "kind": "ClusterKeyIssuer"}});
    support::apply_json(&client, &ns, access_key("k", "unused", extra)).await;
    let id = keys::wait_issued(&client, &ns, "k").await.status.and_then(|s| s.access_key_id).expect("key id");

    // The credentials are deleted while the key still needs them: they stay, marked for deletion.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    secrets.delete("exoscale-admin", &DeleteParams::default()).await.expect("deletion accepted");
    let kept = secrets.get("exoscale-admin").await.expect("credentials kept");
    assert!(kept.metadata.deletion_timestamp.is_some());
    assert!(kept.finalizers().contains(&IN_USE.to_string()));
    let issuers: Api<ClusterKeyIssuer> = Api::all(client.clone());
    assert!(issuers.get(&name).await.expect("issuer").finalizers().contains(&IN_USE.to_string()));
    assert_eq!(live(&fake), BTreeSet::from([id]));

    // Deleting the AccessKey revokes its key with them, then lets them go.
    keys::delete_access_key(&client, &ns, "k").await;
    keys::wait_gone(&client, &ns, "k").await;
    assert!(live(&fake).is_empty(), "the key was not revoked");
    support::eventually("the credentials to be released and deleted", keys::WAIT, || {
        let secrets = secrets.clone();
        async move { secrets.get_opt("exoscale-admin").await.ok()?.is_none().then_some(()) }
    })
    .await;
    // Unused, the issuer itself goes as soon as it is deleted.
    issuers.delete(&name, &DeleteParams::default()).await.expect("deletion accepted");
    support::eventually("the issuer to be released and gone", keys::WAIT, || {
        let issuers = issuers.clone();
        let name = name.clone();
        async move { issuers.get_opt(&name).await.ok()?.is_none().then_some(()) }
    })
    .await;
}
