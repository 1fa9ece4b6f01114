//! Rotation end to end: the operator process, the real apiserver with kube-controller-manager's
//! deployment, replicaset, statefulset and daemonset controllers (so that restarted workloads
//! really roll out, or never do: there is no scheduler), and the Exoscale and OUTSCALE fakes.
//!
//! Every replacement follows one order — new key, Secret, consumers restarted and rolled out,
//! grace period, old key revoked — and these tests check each step at the fake: the old key
//! stays live until the grace period after the rollout is over, and is never revoked before.

use crate::{fakes, support};
use std::time::Duration;

use cloudkeys::api::{AccessKey, AccessKeyStatus};
use fakes::exoscale::{ExoscaleFake, Faults, PREEXISTING_ROLE_ID};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Event, Secret};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::Client;
use serde_json::{json, Value};
use support::exoscale::{self, ADMIN_KEY, ADMIN_SECRET};
use support::keys::{self, secret_value};
use support::leaks::assert_no_secret_leaks;
use support::operator::Operator;

const KEY_ID: &str = "cloudkeys.io/key-id";

struct Env {
    client: Client,
    ns: String,
    fake: ExoscaleFake,
    op: Operator,
}

async fn setup(test: &str) -> Env {
    let client = support::client().await;
    support::install_crds(&client).await;
    let ns = support::namespace(&client, test).await;
    let fake = ExoscaleFake::start(ADMIN_KEY, ADMIN_SECRET);
    exoscale::issuer_with_credentials(&client, &ns, &fake.endpoint(), ADMIN_SECRET).await;
    let op = Operator::start(&ns);
    Env { client, ns, fake, op }
}

/// AccessKey `k` writing `k-credentials`, with `extra` (rotation, consumers) in its spec.
fn access_key(extra: Value) -> Value {
    keys::manifest("k", "exoscale", "exoscale", json!({"roleId": PREEXISTING_ROLE_ID}), extra)
}

/// A pod template whose container reads `k-credentials` as `how` says.
fn pod(how: &str) -> Value {
    let container = match how {
        "envFrom" => {
            json!({"name": "c", "image": "registry.invalid/app", "envFrom": [{"secretRef": {"name": "k-credentials"}}]})
        }
        "env" => json!({"name": "c", "image": "registry.invalid/app", "env": [{"name": "KEY",
            "valueFrom": {"secretKeyRef": {"name": "k-credentials", "key": "EXOSCALE_API_KEY"}}}]}),
        "subPath" => json!({"name": "c", "image": "registry.invalid/app",
            "volumeMounts": [{"name": "creds", "mountPath": "/etc/key", "subPath": "EXOSCALE_API_KEY"}]}),
        "volume" => json!({"name": "c", "image": "registry.invalid/app",
            "volumeMounts": [{"name": "creds", "mountPath": "/etc/creds"}]}),
        _ => json!({"name": "c", "image": "registry.invalid/app"}),
    };
    let mut spec = json!({"containers": [container]});
    if matches!(how, "subPath" | "volume") {
        spec["volumes"] = json!([{"name": "creds", "secret": {"secretName": "k-credentials"}}]);
    }
    spec
}

fn workload(kind: &str, name: &str, replicas: i32, labels: Value, how: &str) -> Value {
    let mut template_labels = json!({"app": name});
    if let (Some(t), Some(extra)) = (template_labels.as_object_mut(), labels.as_object()) {
        t.extend(extra.clone());
    }
    let mut spec = json!({"selector": {"matchLabels": {"app": name}},
        "template": {"metadata": {"labels": template_labels}, "spec": pod(how)}});
    if kind != "DaemonSet" {
        spec["replicas"] = json!(replicas);
    }
    if kind == "StatefulSet" {
        spec["serviceName"] = json!(name);
    }
    json!({"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": name, "labels": labels}, "spec": spec})
}

impl Env {
    async fn apply(&self, manifest: Value) {
        support::apply_json(&self.client, &self.ns, manifest).await;
    }

    fn access_keys(&self) -> Api<AccessKey> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    async fn status(&self) -> AccessKeyStatus {
        self.access_keys().get("k").await.expect("AccessKey readable").status.unwrap_or_default()
    }

    /// The current key once it is Ready, checked against the Secret and the fake.
    async fn issued(&self) -> String {
        let ak = keys::wait_issued(&self.client, &self.ns, "k").await;
        let id = ak.status.and_then(|s| s.access_key_id).expect("accessKeyId");
        let secret = keys::secret(&self.client, &self.ns, "k-credentials").await.expect("Secret");
        assert_eq!(secret_value(&secret, "EXOSCALE_API_KEY"), id);
        id
    }

    fn live(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.fake.live_api_keys().into_iter().map(|k| k.key).collect();
        ids.sort();
        ids
    }

    async fn wait_live(&self, what: &str, want: Vec<String>) {
        keys::wait_live(what, || self.live(), want).await;
    }

    /// Asks for a rotation, with a grace period of its own if `grace` is given.
    async fn rotate(&self, value: &str, grace: Option<&str>) {
        let mut annotations = json!({"cloudkeys.io/rotate": value});
        if let Some(g) = grace {
            annotations["cloudkeys.io/rotate-grace-period"] = json!(g);
        }
        let patch = json!({"metadata": {"annotations": annotations}});
        self.access_keys().patch("k", &PatchParams::default(), &Patch::Merge(&patch)).await.expect("annotated");
    }

    /// Waits until the current key is another than `old`, and returns it.
    async fn replaced(&self, old: &str) -> String {
        let api = self.access_keys();
        support::eventually(&format!("a key replacing {old}"), keys::WAIT, || async {
            let id = api.get("k").await.ok()?.status?.access_key_id?;
            (id != old).then_some(id)
        })
        .await
    }

    /// Waits until the replaced key `old` has its revocation scheduled, and returns when.
    async fn revoke_after(&self, old: &str, within: Duration) -> jiff::Timestamp {
        let api = self.access_keys();
        support::eventually(&format!("the grace period of {old} to start"), within, || async {
            let status = api.get("k").await.ok()?.status?;
            status.retired.iter().find(|r| r.access_key_id == old)?.revoke_after.as_ref().map(|t| t.0)
        })
        .await
    }

    /// When the fake answered the revocation of `key`.
    fn revoked_at(&self, key: &str) -> Option<jiff::Timestamp> {
        let path = format!("/v2/api-key/{key}");
        let r = self.fake.requests().into_iter().find(|r| r.method == "DELETE" && r.path == path && r.status == 200)?;
        jiff::Timestamp::try_from(r.wall).ok()
    }

    async fn deployment(&self, name: &str) -> Deployment {
        Api::<Deployment>::namespaced(self.client.clone(), &self.ns).get(name).await.expect("Deployment")
    }

    async fn template_key_id(&self, kind: &str, name: &str) -> Option<String> {
        let template = match kind {
            "Deployment" => self.deployment(name).await.spec.template,
            "StatefulSet" => {
                Api::<StatefulSet>::namespaced(self.client.clone(), &self.ns)
                    .get(name)
                    .await
                    .expect("StatefulSet")
                    .spec
                    .template
            }
            _ => {
                Api::<DaemonSet>::namespaced(self.client.clone(), &self.ns)
                    .get(name)
                    .await
                    .expect("DaemonSet")
                    .spec
                    .template
            }
        };
        template.metadata?.annotations?.get(KEY_ID).cloned()
    }

    /// Events recorded on AccessKey `k` with this reason.
    async fn events(&self, reason: &str) -> Vec<String> {
        let list = Api::<Event>::namespaced(self.client.clone(), &self.ns)
            .list(&ListParams::default())
            .await
            .expect("events listed");
        list.items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some(reason) && e.involved_object.name.as_deref() == Some("k"))
            .filter_map(|e| e.message)
            .collect()
    }

    async fn wait_event(&self, reason: &str, containing: &str) -> String {
        support::eventually(&format!("a {reason} event naming {containing}"), keys::WAIT, || async {
            self.events(reason).await.into_iter().find(|m| m.contains(containing))
        })
        .await
    }

    async fn assert_no_leaks(&self) {
        assert_no_secret_leaks(&self.client, &self.ns, &self.op, &self.fake.issued_secrets()).await;
    }
}

fn seconds(d: u64) -> jiff::SignedDuration {
    jiff::SignedDuration::from_secs(d as i64)
}

/// The old key is revoked after the grace period, counted from the rollout, never before.
fn assert_revoked_on_time(env: &Env, old: &str, revoke_after: jiff::Timestamp) {
    let at = env.revoked_at(old).unwrap_or_else(|| panic!("{old} was never revoked at the provider"));
    assert!(at >= revoke_after, "{old} revoked at {at}, before its grace period ended at {revoke_after}");
}

#[tokio::test]
async fn a_consumer_is_restarted_once_and_the_old_key_lives_until_its_grace_period_after_the_rollout() {
    let env = setup("rot-consumer").await;
    // One replica and no scheduler: the restart rolls out only once the test scales it to zero.
    env.apply(workload("Deployment", "api", 1, json!({}), "envFrom")).await;
    env.apply(access_key(json!({"rotation": {"gracePeriod": "20s"},
        "consumers": {"targets": [{"kind": "Deployment", "name": "api"}]}})))
        .await;
    let first = env.issued().await;
    assert_eq!(env.template_key_id("Deployment", "api").await, None, "the first key restarts nothing");
    let generation = env.deployment("api").await.metadata.generation;

    env.rotate("1", None).await;
    let second = env.replaced(&first).await;
    let status = support::eventually("the restart recorded, not rolled out", keys::WAIT, || async {
        let status = env.access_keys().get("k").await.ok()?.status?;
        (status.consumers.len() == 1 && !status.consumers[0].rolled_out).then_some(status)
    })
    .await;
    assert_eq!(status.consumers[0].key_id, second);
    assert_eq!(env.template_key_id("Deployment", "api").await, Some(second.clone()));
    let retired = status.retired.iter().find(|r| r.access_key_id == first).expect("the old key retired");
    assert!(retired.revoke_after.is_none(), "the grace period started before the rollout: {retired:?}");
    let rotating = status.conditions.iter().find(|c| c.type_ == "Rotating").expect("Rotating condition");
    assert_eq!((rotating.status.as_str(), rotating.reason.as_str()), ("True", "RollingOut"));
    let mut both = vec![first.clone(), second.clone()];
    both.sort();
    assert_eq!(env.live(), both, "the old key must stay live while the consumer rolls out");

    // The rollout completes now: the grace period counts from here.
    let rolled_out = rotation_clock();
    let scale = json!({"spec": {"replicas": 0}});
    Api::<Deployment>::namespaced(env.client.clone(), &env.ns)
        .patch("api", &PatchParams::default(), &Patch::Merge(&scale))
        .await
        .expect("scaled");
    let revoke_after = env.revoke_after(&first, keys::WAIT).await;
    assert!(revoke_after >= rolled_out + seconds(20), "grace counted from before the rollout: {revoke_after}");
    let status = env.status().await;
    assert!(status.consumers[0].rolled_out && status.consumers[0].key_id == second);
    let rotating = status.conditions.iter().find(|c| c.type_ == "Rotating").expect("Rotating condition");
    assert_eq!((rotating.status.as_str(), rotating.reason.as_str()), ("True", "GracePeriod"));
    assert!(env.live().contains(&first), "the old key must stay live during its grace period");

    env.wait_live("the old key revoked after its grace period", vec![second.clone()]).await;
    assert_revoked_on_time(&env, &first, revoke_after);
    // Once per key: one restart (one new generation, plus the test's scaling), whatever
    // reconciled since.
    assert_eq!(env.deployment("api").await.metadata.generation, generation.map(|g| g + 2));
    env.wait_event("ConsumersRestarted", "Deployment/api").await;
    env.wait_event("Rotated", &second).await;
    env.wait_event("Revoked", &first).await;
    // The Revoked event goes out before the status write that drops the replaced key.
    let status = support::eventually("Rotating back to Idle", keys::WAIT, || async {
        let status = env.access_keys().get("k").await.ok()?.status?;
        let rotating = status.conditions.iter().find(|c| c.type_ == "Rotating")?;
        (rotating.status == "False" && rotating.reason == "Idle").then_some(status)
    })
    .await;
    assert_eq!(status.last_rotate_request.as_deref(), Some("1"));
    assert!(status.retired.is_empty(), "{:?}", status.retired);
    env.assert_no_leaks().await;
}

/// Now, in the whole seconds status times are kept in.
fn rotation_clock() -> jiff::Timestamp {
    jiff::Timestamp::from_second(jiff::Timestamp::now().as_second()).expect("now")
}

#[tokio::test]
async fn a_rollout_that_never_completes_starts_the_grace_period_at_its_timeout_with_a_warning() {
    let env = setup("rot-timeout").await;
    // One replica and no scheduler: the new pod is never available.
    env.apply(workload("Deployment", "stuck", 1, json!({}), "envFrom")).await;
    env.apply(access_key(json!({"rotation": {"gracePeriod": "1s", "rolloutTimeout": "5s"},
        "consumers": {"targets": [{"kind": "Deployment", "name": "stuck"}]}})))
        .await;
    let first = env.issued().await;
    env.rotate("1", None).await;
    let second = env.replaced(&first).await;
    let status = env.status().await;
    let retired_at = status.retired.iter().find(|r| r.access_key_id == first).and_then(|r| r.retired_at.clone());
    let message = env.wait_event("RolloutTimeout", "Deployment/stuck").await;
    assert!(message.contains("5s"), "{message}");
    env.wait_live("the old key revoked once the rollout timed out", vec![second.clone()]).await;
    let retired_at = retired_at.expect("retiredAt").0;
    assert_revoked_on_time(&env, &first, retired_at + seconds(6));
    let status = env.status().await;
    assert_eq!(status.consumers.len(), 1);
    assert!(!status.consumers[0].rolled_out, "the stuck Deployment is not rolled out");
}

#[tokio::test]
async fn discover_selector_and_targets_find_their_workloads_and_leave_the_rest_alone() {
    let env = setup("rot-discover").await;
    for manifest in [
        workload("Deployment", "env-reader", 0, json!({}), "env"),
        workload("StatefulSet", "env-from-reader", 0, json!({}), "envFrom"),
        workload("DaemonSet", "sub-path-reader", 0, json!({}), "subPath"),
        workload("Deployment", "volume-reader", 0, json!({}), "volume"),
        workload("Deployment", "selected", 0, json!({"tier": "api"}), "none"),
        workload("StatefulSet", "targeted", 0, json!({}), "none"),
        workload("Deployment", "unrelated", 0, json!({}), "none"),
    ] {
        env.apply(manifest).await;
    }
    env.apply(access_key(json!({"rotation": {"gracePeriod": "0s"}, "consumers": {
        "discover": true,
        "selector": {"matchLabels": {"tier": "api"}},
        "targets": [{"kind": "StatefulSet", "name": "targeted"}]}})))
        .await;
    let first = env.issued().await;
    env.rotate("1", None).await;
    let second = env.replaced(&first).await;
    env.wait_live("the old key revoked", vec![second.clone()]).await;
    let restarted = [
        ("Deployment", "env-reader"),
        ("StatefulSet", "env-from-reader"),
        ("DaemonSet", "sub-path-reader"),
        ("Deployment", "selected"),
        ("StatefulSet", "targeted"),
    ];
    for (kind, name) in restarted {
        assert_eq!(env.template_key_id(kind, name).await.as_deref(), Some(second.as_str()), "{kind}/{name}");
    }
    for name in ["volume-reader", "unrelated"] {
        assert_eq!(env.template_key_id("Deployment", name).await, None, "{name} was restarted");
    }
    let mut recorded: Vec<String> =
        env.status().await.consumers.iter().map(|c| format!("{:?}/{}", c.kind, c.name)).collect();
    recorded.sort();
    let mut expected: Vec<String> = restarted.iter().map(|(k, n)| format!("{k}/{n}")).collect();
    expected.sort();
    assert_eq!(recorded, expected);
}

#[tokio::test]
async fn a_key_is_rotated_on_schedule_and_the_old_one_revoked_after_its_grace_period() {
    let env = setup("rot-schedule").await;
    env.apply(access_key(json!({"rotation": {"every": "1m", "gracePeriod": "20s"}}))).await;
    let first = env.issued().await;
    let status = env.status().await;
    let issued_at = status.issued_at.clone().expect("issuedAt").0;
    assert_eq!(status.next_rotation_time.map(|t| t.0), Some(issued_at + seconds(60)));
    let second = support::eventually("the scheduled rotation", Duration::from_secs(120), || async {
        let id = env.access_keys().get("k").await.ok()?.status?.access_key_id?;
        (id != first).then_some(id)
    })
    .await;
    let status = env.status().await;
    assert!(status.issued_at.expect("issuedAt").0 >= issued_at + seconds(60), "rotated before rotation.every");
    let revoke_after = env.revoke_after(&first, keys::WAIT).await;
    assert!(env.live().contains(&first), "the old key must stay live during its grace period");
    env.wait_live("the old key revoked after its grace period", vec![second.clone()]).await;
    assert_revoked_on_time(&env, &first, revoke_after);
    env.wait_event("Rotated", "rotation.every").await;
}

#[tokio::test]
async fn a_requested_rotation_with_a_0s_grace_period_revokes_the_old_key_at_once() {
    let env = setup("rot-leaked").await;
    // A consumer that never rolls out: a leaked key waits for nothing but the restart.
    env.apply(workload("Deployment", "stuck", 1, json!({}), "envFrom")).await;
    let spec = json!({"consumers": {"targets": [{"kind": "Deployment", "name": "stuck"}]}});
    env.apply(access_key(spec.clone())).await;
    let first = env.issued().await;
    env.rotate("leaked-1", Some("0s")).await;
    let second = env.replaced(&first).await;
    env.wait_live("the leaked key revoked at once", vec![second.clone()]).await;
    assert_eq!(env.template_key_id("Deployment", "stuck").await, Some(second.clone()), "not restarted");
    // Each value rotates once: the handled one is echoed, and reconciling again changes nothing.
    let ak = keys::wait_issued(&env.client, &env.ns, "k").await;
    assert_eq!(ak.status.and_then(|s| s.last_rotate_request).as_deref(), Some("leaked-1"));
    let mut labelled = spec;
    labelled["secretTemplate"] = json!({"labels": {"touched": "yes"}});
    env.apply(access_key(labelled)).await;
    support::eventually("the label applied in place", keys::WAIT, || async {
        let s = keys::secret(&env.client, &env.ns, "k-credentials").await?;
        (s.metadata.labels?.get("touched")? == "yes").then_some(())
    })
    .await;
    assert_eq!(env.issued().await, second, "one rotate value rotated twice");
    assert_eq!(env.fake.issued_secrets().len(), 2);
}

#[tokio::test]
async fn spec_changes_and_secret_deletions_replace_the_key_through_the_same_grace_period() {
    let env = setup("rot-same-path").await;
    env.apply(access_key(json!({"rotation": {"gracePeriod": "15s"}}))).await;
    let first = env.issued().await;
    env.apply(access_key(json!({"rotation": {"gracePeriod": "15s"},
        "secretTemplate": {"data": {"EXOSCALE_API_KEY": "{{ accessKeyId }}", "EXOSCALE_API_SECRET": "{{ secretAccessKey }}", "ZONE": "{{ zone }}"}}})))
    .await;
    let second = env.replaced(&first).await;
    let first_revoke = env.revoke_after(&first, keys::WAIT).await;
    assert!(env.live().contains(&first), "the spec change revoked the old key at once");

    Api::<Secret>::namespaced(env.client.clone(), &env.ns)
        .delete("k-credentials", &DeleteParams::default())
        .await
        .expect("Secret deleted");
    let third = env.replaced(&second).await;
    let second_revoke = env.revoke_after(&second, keys::WAIT).await;
    assert!(env.live().contains(&second), "the Secret deletion revoked the old key at once");
    // Two replacements in a row never overlap: the first replaced key goes before the third key
    // is minted, early if its grace period was not over yet, and the event says so.
    assert!(env.fake.max_live_api_keys() <= 2, "{} keys were live at once", env.fake.max_live_api_keys());
    let first_gone = env.revoked_at(&first).unwrap_or_else(|| panic!("{first} was not revoked before {third}"));
    if first_gone < first_revoke {
        env.wait_event("Revoked", &format!("revoked replaced key {first}: its grace period ends early")).await;
    }
    env.wait_live("the second replaced key revoked after its grace period", vec![third.clone()]).await;
    assert_revoked_on_time(&env, &second, second_revoke);
    env.wait_event("Rotated", "the spec changed").await;
    env.wait_event("Rotated", "the Secret was deleted").await;
    env.assert_no_leaks().await;
}

/// kill -9 at every new step of a rotation: after the Secret update (before the status), after
/// the status (before the restarts), after the restarts (before they are recorded), just before
/// the revoke. Each ends with the new key in the Secret, the consumer restarted once, and the
/// old key revoked after its grace period, not before.
#[tokio::test]
async fn an_operator_killed_at_each_step_of_a_rotation_restarts_each_consumer_once_and_revokes_on_time() {
    // Each point in a namespace of its own, with its own operator and fake: all at once.
    let points = ["after-secret-write", "before-consumer-restart", "after-consumer-restart", "before-retired-revoke"];
    futures::future::join_all(points.map(killed_at)).await;
}

async fn killed_at(point: &str) {
    let mut env = setup(&format!("rot-crash-{point}")).await;
    env.apply(workload("Deployment", "api", 0, json!({}), "envFrom")).await;
    env.apply(access_key(json!({"rotation": {"gracePeriod": "5s"},
        "consumers": {"targets": [{"kind": "Deployment", "name": "api"}]}})))
        .await;
    let first = env.issued().await;
    let generation = env.deployment("api").await.metadata.generation;
    env.op.restart_with(&[("CLOUDKEYS_CRASH_AT", point)]);
    env.rotate("1", None).await;
    assert!(env.op.wait_exit(Duration::from_secs(60)).await, "the operator did not reach {point}");
    env.op.restart_with(&[]);
    let second = env.replaced(&first).await;
    env.wait_live(&format!("the old key revoked after a crash {point}"), vec![second.clone()]).await;
    let issued_at = env.status().await.issued_at.expect("issuedAt").0;
    assert_revoked_on_time(&env, &first, issued_at + seconds(5));
    assert_eq!(env.issued().await, second);
    assert_eq!(env.template_key_id("Deployment", "api").await, Some(second.clone()), "{point}");
    assert_eq!(env.deployment("api").await.metadata.generation, generation.map(|g| g + 1), "restarted twice ({point})");
    assert_eq!(env.fake.issued_secrets().len(), 2, "a key too many after a crash {point}");
}

/// kill -9 once the provider confirmed the early revocation of a replaced key, before the status
/// forgets it: the next operator revokes it again (gone already: done), says so, and only then
/// mints the new key. Never a third live key, never a key minted twice.
#[tokio::test]
async fn an_operator_killed_after_an_early_revocation_mints_the_next_key_once_with_two_live_at_most() {
    let mut env = setup("rot-crash-early").await;
    env.apply(access_key(json!({"rotation": {"gracePeriod": "1h"}}))).await;
    let first = env.issued().await;
    env.rotate("1", None).await;
    let second = env.replaced(&first).await;
    env.revoke_after(&first, keys::WAIT).await;
    env.op.restart_with(&[("CLOUDKEYS_CRASH_AT", "after-early-revoke")]);
    env.rotate("2", None).await;
    assert!(env.op.wait_exit(Duration::from_secs(60)).await, "the operator did not reach after-early-revoke");
    assert!(!env.live().contains(&first), "{first} was not revoked at the provider before the crash");
    let recorded: Vec<String> = env.status().await.retired.into_iter().map(|r| r.access_key_id).collect();
    assert_eq!(recorded, vec![first.clone()], "the record of {first} outlives the crash");
    env.op.restart_with(&[]);
    let third = env.replaced(&second).await;
    env.wait_live("the current key and one replaced key", vec![second.clone(), third.clone()]).await;
    let recorded: Vec<String> = env.status().await.retired.into_iter().map(|r| r.access_key_id).collect();
    assert_eq!(recorded, vec![second.clone()]);
    env.wait_event("Revoked", &format!("revoked replaced key {first}: its grace period ends early")).await;
    assert_eq!(env.fake.issued_secrets().len(), 3, "a key minted twice");
    assert_eq!(env.fake.max_live_api_keys(), 2, "more than two keys were live at once");
}

/// The provider fails the early revocation of the replaced key: no new key is even asked for,
/// `Rotating=False` (`Blocked`) names the key holding it back, the current key stays `Ready`;
/// once the provider answers again, the rotation goes ahead.
#[tokio::test]
async fn a_replaced_key_that_cannot_be_revoked_early_holds_the_new_key_back() {
    let env = setup("rot-room-blocked").await;
    env.apply(access_key(json!({"rotation": {"gracePeriod": "1h"}}))).await;
    let first = env.issued().await;
    env.rotate("1", None).await;
    let second = env.replaced(&first).await;
    env.revoke_after(&first, keys::WAIT).await;
    let failing_since = std::time::Instant::now();
    env.fake.set_faults(Faults { error_rate: 1.0, ..Faults::default() });
    env.rotate("2", None).await;
    let blocked = support::eventually(&format!("Rotating Blocked by {first}"), keys::WAIT, || async {
        let status = env.access_keys().get("k").await.ok()?.status?;
        let c = status.conditions.into_iter().find(|c| c.type_ == "Rotating" && c.reason == "Blocked")?;
        c.message.contains(&first).then_some(c)
    })
    .await;
    assert_eq!(blocked.status, "False");
    assert!(blocked.message.contains("at most 2 live keys"), "{}", blocked.message);
    env.wait_event("RevocationFailed", &first).await;
    let ak = env.access_keys().get("k").await.expect("AccessKey");
    let (ready, reason, message) = keys::ready_condition(&ak).expect("Ready");
    assert_eq!((ready.as_str(), reason.as_str()), ("True", "Issued"));
    assert!(message.contains(&second), "{message}");
    let mints = env.fake.requests().into_iter().filter(|r| r.at >= failing_since && r.method == "POST").count();
    assert_eq!(mints, 0, "a new key was asked for while {first} could not be revoked");

    env.fake.set_faults(Faults::default());
    let third = env.replaced(&second).await;
    env.wait_live("the current key and one replaced key", vec![second.clone(), third]).await;
    assert_eq!(env.fake.max_live_api_keys(), 2, "more than two keys were live at once");
}

/// kill -9 while the consumer rolls out, and again during the grace period: the rollout timeout
/// and the grace period are kept in status, so they end on time after the restart.
#[tokio::test]
async fn an_operator_killed_during_the_rollout_and_the_grace_period_resumes_both_on_time() {
    let mut env = setup("rot-kill-phases").await;
    env.apply(workload("Deployment", "stuck", 1, json!({}), "envFrom")).await;
    env.apply(access_key(json!({"rotation": {"gracePeriod": "10s", "rolloutTimeout": "10s"},
        "consumers": {"targets": [{"kind": "Deployment", "name": "stuck"}]}})))
        .await;
    let first = env.issued().await;
    let generation = env.deployment("stuck").await.metadata.generation;
    env.rotate("1", None).await;
    let second = env.replaced(&first).await;
    // Rolling out: restarted, recorded, not rolled out.
    support::eventually("the restart recorded, its rollout not over", keys::WAIT, || async {
        let status = env.access_keys().get("k").await.ok()?.status?;
        let rolling_out = status.retired.iter().any(|r| r.access_key_id == first && r.revoke_after.is_none());
        (status.consumers.len() == 1 && !status.consumers[0].rolled_out && rolling_out).then_some(())
    })
    .await;
    env.op.kill();
    env.op.restart();
    let revoke_after = env.revoke_after(&first, keys::WAIT).await;
    let retired_at =
        env.status().await.retired.iter().find(|r| r.access_key_id == first).and_then(|r| r.retired_at.clone());
    assert!(revoke_after >= retired_at.expect("retiredAt").0 + seconds(20), "rollout timeout or grace cut short");
    // In the grace period now.
    env.op.kill();
    assert!(env.live().contains(&first), "revoked during its grace period");
    env.op.restart();
    env.wait_live("the old key revoked once the grace period is over", vec![second.clone()]).await;
    assert_revoked_on_time(&env, &first, revoke_after);
    assert_eq!(env.deployment("stuck").await.metadata.generation, generation.map(|g| g + 1), "restarted twice");
}
