//! Argo Rollouts as consumers, end to end: the operator process, a control plane of this test's
//! own (the Rollout CRD is cluster-wide, and the test starts without it), and the Exoscale fake.
//! No Rollouts controller runs here: the test writes the Rollout's status as Argo's controller
//! would once every pod was restarted.

use crate::{fakes, support};

use cloudkeys::api::{AccessKey, Rollout};
use fakes::exoscale::{ExoscaleFake, PREEXISTING_ROLE_ID};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use support::exoscale::{self, ADMIN_KEY, ADMIN_SECRET};
use support::keys;
use support::operator::Operator;

const KEY_ID: &str = "cloudkeys.io/key-id";
const NOT_INSTALLED: &str = "the Argo Rollouts CRD (rollouts.argoproj.io) is not installed";

/// Argo's CRD at its smallest: any fields, a status subresource (so that status writes leave
/// `metadata.generation` alone, as with Argo's own).
fn rollout_crd() -> CustomResourceDefinition {
    serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "rollouts.argoproj.io"},
        "spec": {"group": "argoproj.io", "scope": "Namespaced",
            "names": {"kind": "Rollout", "plural": "rollouts", "singular": "rollout", "listKind": "RolloutList"},
            "versions": [{"name": "v1alpha1", "served": true, "storage": true,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]},
    }))
    .expect("CRD literal")
}

async fn install_rollout_crd(client: &kube::Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.create(&PostParams::default(), &rollout_crd()).await.expect("Rollout CRD created");
    support::eventually("the Rollout CRD established", keys::WAIT, || async {
        let crd = crds.get("rollouts.argoproj.io").await.ok()?;
        let established = crd.status?.conditions?.iter().any(|c| c.type_ == "Established" && c.status == "True");
        established.then_some(())
    })
    .await;
}

/// The Rollout's status as Argo's controller writes it once it has restarted every pod for
/// the Rollout as it is now: this generation observed, Healthy, `restartedAt` = `restartAt`.
async fn argo_reports_restarted(rollouts: &Api<Rollout>, name: &str) {
    let r = rollouts.get(name).await.expect("Rollout");
    let generation = r.metadata.generation.expect("generation");
    let restart_at = r.spec.restart_at.map(|t| t.0.to_string());
    let status = json!({"status": {"observedGeneration": generation.to_string(), "phase": "Healthy",
        "restartedAt": restart_at, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1,
        "readyReplicas": 1, "stableRS": "abc", "currentPodHash": "abc"}});
    rollouts.patch_status(name, &PatchParams::default(), &Patch::Merge(&status)).await.expect("status written");
}

#[tokio::test]
async fn a_rollout_consumer_is_restarted_once_through_restart_at_and_waited_for() {
    support::own_control_plane();
    let client = support::client().await;
    support::install_crds(&client).await;
    let ns = support::namespace(&client, "rollout-consumer").await;
    let fake = ExoscaleFake::start(ADMIN_KEY, ADMIN_SECRET);
    exoscale::issuer_with_credentials(&client, &ns, &fake.endpoint(), ADMIN_SECRET).await;

    // Without the CRD the operator works as before, and says so once.
    let mut op = Operator::start(&ns);
    let spec = |grace: &str| json!({"rotation": {"gracePeriod": grace}, "consumers": {"targets": [{"kind": "Rollout", "name": "api"}]}});
    support::apply_json(
        &client,
        &ns,
        keys::manifest("k", "exoscale", "exoscale", json!({"roleId": PREEXISTING_ROLE_ID}), spec("5s")),
    )
    .await;
    let ak = keys::wait_issued(&client, &ns, "k").await;
    let first = ak.status.and_then(|s| s.access_key_id).expect("accessKeyId");
    assert_eq!(op.logs().matches(NOT_INSTALLED).count(), 1, "said once:\n{}", op.logs());

    // Argo Rollouts installed: taken up at the operator's next start. Beside the consumer, a
    // tenant's Rollouts this CRD lets through without a spec, or with one that is no object:
    // they fail neither the watch of every Rollout nor the operator's start.
    install_rollout_crd(&client).await;
    for odd in [
        json!({"apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout", "metadata": {"name": "no-spec"}}),
        json!({"apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout", "metadata": {"name": "odd"}, "spec": "x"}),
    ] {
        support::apply_json(&client, &ns, odd).await;
    }
    op.restart();
    let rollouts: Api<Rollout> = Api::namespaced(client.clone(), &ns);
    support::apply_json(
        &client,
        &ns,
        json!({"apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout",
        "metadata": {"name": "api"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "api"}},
            "strategy": {"canary": {"steps": [{"setWeight": 20}, {"pause": {}}]}},
            "template": {"metadata": {"labels": {"app": "api"}}, "spec": {"containers": [{"name": "c",
                "image": "registry.invalid/app", "envFrom": [{"secretRef": {"name": "k-credentials"}}]}]}}}}),
    )
    .await;
    argo_reports_restarted(&rollouts, "api").await;
    let before = rollouts.get("api").await.expect("Rollout");
    assert!(before.spec.restart_at.is_none());

    // A rotation restarts the Rollout through spec.restartAt, its template untouched.
    let access_keys: Api<AccessKey> = Api::namespaced(client.clone(), &ns);
    let rotate = json!({"metadata": {"annotations": {"cloudkeys.io/rotate": "1"}}});
    access_keys.patch("k", &PatchParams::default(), &Patch::Merge(&rotate)).await.expect("annotated");
    let restarted = support::eventually("the Rollout restarted", keys::WAIT, || async {
        let r = rollouts.get("api").await.ok()?;
        r.spec.restart_at.is_some().then_some(r)
    })
    .await;
    let second = access_keys.get("k").await.expect("AccessKey").status.and_then(|s| s.access_key_id).expect("id");
    assert_ne!(second, first);
    assert_eq!(restarted.metadata.annotations.as_ref().and_then(|a| a.get(KEY_ID)), Some(&second));
    assert_eq!(restarted.spec.template, before.spec.template, "no new revision: the template is left alone");
    assert_eq!(restarted.metadata.generation, before.metadata.generation.map(|g| g + 1));
    let status = support::eventually("the restart recorded, not rolled out", keys::WAIT, || async {
        let status = access_keys.get("k").await.ok()?.status?;
        (status.consumers.len() == 1 && !status.consumers[0].rolled_out).then_some(status)
    })
    .await;
    assert_eq!((status.consumers[0].kind.as_str(), status.consumers[0].key_id.as_str()), ("Rollout", second.as_str()));
    assert!(status.retired.iter().all(|r| r.revoke_after.is_none()), "grace before the rollout: {:?}", status.retired);
    assert!(fake.live_api_keys().iter().any(|k| k.key == first), "the old key stays live while the Rollout restarts");

    // An operator restart mid-rollout restarts nothing again; Argo's report ends the wait.
    op.restart();
    keys::wait_issued(&client, &ns, "k").await;
    argo_reports_restarted(&rollouts, "api").await;
    let revoke_after = support::eventually("the grace period to start", keys::WAIT, || async {
        let status = access_keys.get("k").await.ok()?.status?;
        let r = status.retired.iter().find(|r| r.access_key_id == first)?;
        (status.consumers.first()?.rolled_out).then_some(r.revoke_after.clone()?)
    })
    .await;
    keys::wait_live(
        "the old key revoked after its grace period",
        || fake.live_api_keys().into_iter().map(|k| k.key).collect(),
        vec![second.clone()],
    )
    .await;
    let revoked = fake
        .requests()
        .into_iter()
        .find(|r| r.method == "DELETE" && r.path == format!("/v2/api-key/{first}") && r.status == 200)
        .and_then(|r| jiff::Timestamp::try_from(r.wall).ok())
        .expect("the old key revoked at the provider");
    assert!(revoked >= revoke_after.0, "revoked at {revoked}, before its grace period ended at {}", revoke_after.0);
    let after = rollouts.get("api").await.expect("Rollout");
    assert_eq!(after.metadata.generation, restarted.metadata.generation, "restarted once for one key");
    assert_eq!(after.spec.restart_at, restarted.spec.restart_at);
}
