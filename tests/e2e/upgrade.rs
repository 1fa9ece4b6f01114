//! An upgrade of the operator, proven: the previous release (the commit recorded in
//! upgrade/previous-release, built from that commit by `scripts/previous-release.sh`) is installed
//! with its own chart and issues keys on every provider, with rotation, consumers and issuer
//! policies in use, and some keys in their grace period; then Helm upgrades the release to the
//! current chart and the current binary takes over. No key is re-keyed or revoked, no workload is
//! restarted, every AccessKey stays Ready, and the keys in their grace period are revoked by the
//! new version, not before their `revokeAfter`. A restart of the new version then writes nothing.
//!
//! The control plane has no kubelet: the chart's Deployment never runs, and the operator of each
//! release runs as a process of the test, as in the other end-to-end tests.

use crate::{clouds, fakes, support};

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use cloudkeys::api::AccessKey;
use fakes::exoscale::PREEXISTING_ROLE_ID;
use fakes::yandex::ACCESS_KEYS_PATH;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::ByteString;
use kube::api::{Api, Patch, PatchParams};
use kube::Client;
use serde_json::{json, Value};
use support::keys::{self, ready_condition};
use support::operator::Operator;

const CRDS: [&str; 3] = ["accesskeys.cloudkeys.io", "keyissuers.cloudkeys.io", "clusterkeyissuers.cloudkeys.io"];
const RELEASE: &str = "cloudkeys";
const KEY_ID: &str = "cloudkeys.io/key-id";
/// Long enough for the switch of operators to happen inside it, even on a busy CI machine.
const GRACE: &str = "60s";
/// Waits that span a grace period.
const LONG_WAIT: Duration = Duration::from_secs(180);

/// The previous release as `scripts/previous-release.sh build` leaves it: its binary and chart.
fn previous_release() -> (PathBuf, PathBuf) {
    let out = Command::new(support::repo_root().join("scripts/previous-release.sh"))
        .arg("dir")
        .output()
        .expect("scripts/previous-release.sh runs");
    assert!(out.status.success(), "scripts/previous-release.sh dir: {}", String::from_utf8_lossy(&out.stderr));
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let (binary, chart) = (dir.join("cloudkeys"), dir.join("chart"));
    assert!(
        binary.is_file() && chart.join("Chart.yaml").is_file(),
        "the previous release is not built in {}: run `make previous-release` \
         (scripts/previous-release.sh build; `make test` does it)",
        dir.display()
    );
    (binary, chart)
}

/// `tests/helm/helm.py COMMAND RELEASE CHART NAMESPACE` against the test cluster, which must work.
fn helm(command: &str, chart: &std::path::Path, namespace: &str) {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(python)
        .arg(support::repo_root().join("tests/helm/helm.py"))
        .args([command, RELEASE])
        .arg(chart)
        .args([namespace, "--kubeconfig"])
        .arg(&support::control_plane().kubeconfig)
        .output()
        .expect("python3 runs");
    assert_ne!(out.status.code(), Some(3), "helm-sdkpy is missing: install it with `make helm-deps`");
    assert!(
        out.status.success(),
        "helm {command} {}:\n{}{}",
        chart.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn wait_crds_established(client: &Client) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for name in CRDS {
        let established = kube::runtime::wait::await_condition(
            api.clone(),
            name,
            kube::runtime::wait::conditions::is_crd_established(),
        );
        tokio::time::timeout(keys::WAIT, established).await.expect("CRD established in time").expect("CRD watch");
    }
}

/// One AccessKey of the test: its issuer, provider block and consumer Deployment `<name>-app`.
struct Key {
    name: &'static str,
    issuer: Value,
    provider: &'static str,
    block: Value,
}

/// What an AccessKey holds at one moment.
#[derive(Debug, Clone, PartialEq)]
struct Held {
    key_id: String,
    key_ref: String,
    secret: BTreeMap<String, ByteString>,
    /// The consumer Deployment's generation and restart annotation.
    generation: Option<i64>,
    restarted_for: Option<String>,
    /// Replaced keys awaiting revocation: id, keyRef, revokeAfter.
    retired: Vec<(String, String, Option<jiff::Timestamp>)>,
}

struct Env {
    client: Client,
    ns: String,
    clouds: clouds::Clouds,
    keys: Vec<Key>,
}

impl Env {
    fn access_keys(&self) -> Api<AccessKey> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    async fn held(&self, name: &str) -> Held {
        let ak = self.access_keys().get(name).await.expect("AccessKey readable");
        let status = ak.status.unwrap_or_default();
        let secret = keys::secret(&self.client, &self.ns, &format!("{name}-credentials")).await.expect("Secret");
        let app = Api::<Deployment>::namespaced(self.client.clone(), &self.ns)
            .get(&format!("{name}-app"))
            .await
            .expect("Deployment");
        Held {
            key_id: status.access_key_id.unwrap_or_default(),
            key_ref: status.key_ref.unwrap_or_default(),
            secret: secret.data.unwrap_or_default(),
            generation: app.metadata.generation,
            restarted_for: app.spec.template.metadata.and_then(|m| m.annotations?.get(KEY_ID).cloned()),
            retired: status
                .retired
                .iter()
                .map(|r| (r.access_key_id.clone(), r.key_ref.clone(), r.revoke_after.as_ref().map(|t| t.0)))
                .collect(),
        }
    }

    async fn all_held(&self) -> BTreeMap<&'static str, Held> {
        let mut all = BTreeMap::new();
        for k in &self.keys {
            all.insert(k.name, self.held(k.name).await);
        }
        all
    }

    /// Panics unless every AccessKey is Ready (`True`, `Issued`).
    async fn assert_all_ready(&self, when: &str) {
        for k in &self.keys {
            let ak = self.access_keys().get(k.name).await.expect("AccessKey readable");
            let ready = ready_condition(&ak);
            assert!(
                ready.as_ref().is_some_and(|(s, r, _)| s == "True" && r == "Issued"),
                "AccessKey {} not Ready {when}: {ready:?}",
                k.name
            );
        }
    }

    /// The live key ids the AccessKeys hold at the cloud fakes.
    fn live_in_clouds(&self) -> Vec<String> {
        let c = &self.clouds;
        let mut ids: Vec<String> = c.exoscale.live_api_keys().into_iter().map(|k| k.key).collect();
        ids.extend(c.yandex.live_keys().into_iter().map(|k| k.key_id));
        // Not the issuer's own key.
        ids.extend(c.outscale.live_keys().into_iter().map(|k| k.access_key_id).filter(|id| id != clouds::OSC_AK));
        ids.sort();
        ids
    }

    /// Every key the cloud fakes ever created.
    fn created_in_clouds(&self) -> usize {
        let c = &self.clouds;
        c.exoscale.issued_secrets().len() + c.yandex.issued_secrets().len() + c.outscale.issued_secrets().len()
    }

    /// When the provider of AccessKey `name` answered the revocation of key `id` (`key_ref`).
    fn revoked_at(&self, name: &str, id: &str, key_ref: &str) -> Option<Instant> {
        let c = &self.clouds;
        match name {
            "exo" => c
                .exoscale
                .requests()
                .into_iter()
                .find(|r| r.method == "DELETE" && r.path == format!("/v2/api-key/{id}") && r.status == 200)
                .map(|r| r.at),
            "yc" => c
                .yandex
                .requests()
                .into_iter()
                .find(|r| r.method == "DELETE" && r.path == format!("{ACCESS_KEYS_PATH}/{key_ref}") && r.status == 200)
                .map(|r| r.at),
            "osc" => c
                .outscale
                .requests()
                .into_iter()
                .find(|r| r.action == "DeleteAccessKey" && r.body["AccessKeyId"] == id && r.status == 200)
                .map(|r| r.at),
            _ => None,
        }
    }
}

fn key_issuer(name: &str, provider: &str, block: Value, policy: Value) -> Value {
    json!({"apiVersion": "cloudkeys.io/v1alpha1", "kind": "KeyIssuer", "metadata": {"name": name},
        "spec": {provider: block, "policy": policy}})
}

/// A Deployment of no replicas reading `secret` (kube-controller-manager rolls it out at once).
fn consumer(name: &str, secret: &str) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "c",
                "image": "registry.invalid/app", "envFrom": [{"secretRef": {"name": secret}}]}]}}}})
}

/// The issuers (every provider; policies on three of them, one a ClusterKeyIssuer) and one
/// AccessKey per issuer with rotation and a consumer, in a namespace of their own.
async fn setup(client: &Client) -> Env {
    let ns = support::namespace(client, "upgrade-team").await;
    let clouds = clouds::issuers(client, &ns).await;
    // Policies in use: the Exoscale key's role is one the policy names, the OUTSCALE key's user
    // and lifetime are within its bounds, the ClusterKeyIssuer serves the namespace it names.
    let exo = json!({"endpoint": clouds.exoscale.endpoint(),
        "credentialsSecretRef": {"name": support::exoscale::CREDENTIALS}});
    let exo_policy = json!({"maxKeysPerNamespace": 5, "exoscale": {"roleIds": [PREEXISTING_ROLE_ID]}});
    support::apply_json(client, &ns, key_issuer("exo", "exoscale", exo, exo_policy)).await;
    let osc = json!({"region": "eu-west-2", "endpoint": clouds.outscale.endpoint(),
        "credentialsSecretRef": {"name": "osc-admin"}});
    let osc_policy = json!({"outscale": {"userNames": ["app-*"], "maxExpiresAfter": "2160h"}});
    support::apply_json(client, &ns, key_issuer("osc", "outscale", osc, osc_policy)).await;
    support::apply_json(client, &ns, key_issuer("local", "local", json!({}), json!({"deletionPolicies": ["Delete"]})))
        .await;
    let cluster_issuer = format!("{ns}-local");
    support::apply_json(
        client,
        &ns,
        json!({"apiVersion": "cloudkeys.io/v1alpha1", "kind": "ClusterKeyIssuer", "metadata": {"name": cluster_issuer},
            "spec": {"local": {}, "policy": {"namespaces": {"names": [ns]}}}}),
    )
    .await;

    let keys = vec![
        Key {
            name: "exo",
            issuer: json!({"name": "exo"}),
            provider: "exoscale",
            block: json!({"roleId": PREEXISTING_ROLE_ID}),
        },
        Key { name: "yc", issuer: json!({"name": "yc"}), provider: "yandex", block: json!({}) },
        Key {
            name: "osc",
            issuer: json!({"name": "osc"}),
            provider: "outscale",
            block: json!({"userName": clouds::OSC_USER, "expiresAfter": "720h"}),
        },
        Key { name: "local", issuer: json!({"name": "local"}), provider: "local", block: json!({}) },
        Key {
            name: "shared",
            issuer: json!({"kind": "ClusterKeyIssuer", "name": cluster_issuer}),
            provider: "local",
            block: json!({}),
        },
    ];
    for k in &keys {
        support::apply_json(client, &ns, consumer(&format!("{}-app", k.name), &format!("{}-credentials", k.name)))
            .await;
        let extra = json!({"issuerRef": k.issuer, "rotation": {"every": "720h", "gracePeriod": "10m"},
            "consumers": {"targets": [{"kind": "Deployment", "name": format!("{}-app", k.name)}]}});
        support::apply_json(client, &ns, keys::manifest(k.name, "", k.provider, k.block.clone(), extra)).await;
    }
    Env { client: client.clone(), ns, clouds, keys }
}

/// Maps an instant of the test process to the wall clock, through one reading of both.
fn wall(at: Instant, anchor: (Instant, jiff::Timestamp)) -> jiff::Timestamp {
    let since = jiff::SignedDuration::try_from(at.saturating_duration_since(anchor.0)).expect("a short duration");
    anchor.1 + since
}

async fn reconciles(op: &Operator) -> u64 {
    let text = reqwest::get(format!("{}/metrics", op.http_base().await))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .filter(|l| l.starts_with("cloudkeys_reconciles_total{") && l.contains("controller=\"accesskey\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test]
async fn an_upgrade_from_the_previous_release_rekeys_nothing_restarts_nothing_and_revokes_on_time() {
    let (previous, previous_chart) = previous_release();
    support::own_control_plane();
    let client = support::client().await;
    let operator_ns = support::namespace(&client, "upgrade-operator").await;

    // The previous release, with its chart's CRDs, issues every key.
    helm("install", &previous_chart, &operator_ns);
    wait_crds_established(&client).await;
    let env = setup(&client).await;
    let mut old = Operator::start_release(&previous, &operator_ns, &[]);
    let mut first = BTreeMap::new();
    for k in &env.keys {
        let ak = keys::wait_issued(&client, &env.ns, k.name).await;
        first.insert(k.name, ak.status.and_then(|s| s.access_key_id).expect("a key id"));
    }

    // Every key is rotated once, its consumer restarted and rolled out; the replaced keys start
    // a grace period that outlives the switch of operators.
    let rotate = json!({"metadata": {"annotations": {"cloudkeys.io/rotate": "1",
        "cloudkeys.io/rotate-grace-period": GRACE}}});
    for k in &env.keys {
        env.access_keys().patch(k.name, &PatchParams::default(), &Patch::Merge(&rotate)).await.expect("annotated");
    }
    for k in &env.keys {
        let replaced = first[k.name].clone();
        support::eventually_explained(
            &format!("{}: {replaced} replaced and in its grace period", k.name),
            keys::WAIT,
            || {
                let env = &env;
                let replaced = replaced.clone();
                async move {
                    let held = env.held(k.name).await;
                    let grace = held.retired.iter().any(|(id, _, after)| *id == replaced && after.is_some());
                    let restarted = held.restarted_for.as_deref() == Some(held.key_id.as_str());
                    (grace && restarted && held.key_id != replaced).then_some(()).ok_or_else(|| format!("{held:?}"))
                }
            },
        )
        .await;
    }
    env.assert_all_ready("before the upgrade").await;
    let before = env.all_held().await;
    let created = env.created_in_clouds();
    let live = env.live_in_clouds();
    let mut want_live: Vec<String> =
        ["exo", "yc", "osc"].iter().flat_map(|n| [before[n].key_id.clone(), first[n].clone()]).collect();
    want_live.sort();
    assert_eq!(live, want_live, "before the upgrade: the current and the replaced key of each cloud AccessKey");

    // The upgrade: the old Pod is stopped (SIGTERM, as on a rollout), Helm upgrades the release to
    // the current chart and its CRDs, the current operator starts.
    assert!(old.terminate(Duration::from_secs(30)).await, "the previous release did not exit cleanly on SIGTERM");
    assert_eq!(env.live_in_clouds(), want_live, "the previous release revoked a key in its grace period");
    helm("upgrade", &support::repo_root().join("charts/cloudkeys"), &operator_ns);
    wait_crds_established(&client).await;
    let anchor = (Instant::now(), jiff::Timestamp::now());
    let mut new = Operator::start_everywhere(&operator_ns, &[]);

    // Each replaced key goes when its grace period is over, revoked by the new version; meanwhile
    // every AccessKey stays Ready on the key it had.
    support::eventually_explained("the replaced keys revoked by the new version", LONG_WAIT, || async {
        env.assert_all_ready("during the upgrade").await;
        let now = env.all_held().await;
        let waiting: Vec<&str> = now.iter().filter(|(_, h)| !h.retired.is_empty()).map(|(n, _)| *n).collect();
        if waiting.is_empty() {
            Ok(now)
        } else {
            Err(format!("retired keys left on {waiting:?}"))
        }
    })
    .await;
    for k in &env.keys {
        let (old_id, old_ref, revoke_after) = before[k.name].retired[0].clone();
        let revoke_after = revoke_after.expect("revokeAfter");
        let Some(at) = env.revoked_at(k.name, &old_id, &old_ref) else {
            assert_eq!(k.provider, "local", "{}: {old_id} never revoked at the provider", k.name);
            continue;
        };
        assert!(at >= anchor.0, "{}: {old_id} revoked before the new version started", k.name);
        let at = wall(at, anchor);
        assert!(
            at >= revoke_after,
            "{}: {old_id} revoked at {at}, before its grace period ended at {revoke_after}",
            k.name
        );
    }

    // Nothing else changed: the same keys in the same Secrets, no key created or revoked at a
    // provider, no consumer restarted.
    let after = env.all_held().await;
    for k in &env.keys {
        let (was, is) = (&before[k.name], &after[k.name]);
        assert_eq!((&is.key_id, &is.key_ref), (&was.key_id, &was.key_ref), "{}: re-keyed by the upgrade", k.name);
        assert!(is.secret == was.secret, "{}: the Secret's data changed in the upgrade", k.name);
        assert_eq!(
            (is.generation, &is.restarted_for),
            (was.generation, &was.restarted_for),
            "{}: its consumer was restarted by the upgrade",
            k.name
        );
    }
    assert_eq!(env.created_in_clouds(), created, "a key was created at a provider by the upgrade");
    let mut current: Vec<String> = ["exo", "yc", "osc"].iter().map(|n| before[n].key_id.clone()).collect();
    current.sort();
    assert_eq!(env.live_in_clouds(), current, "the current keys stay live, and only they");
    env.assert_all_ready("after the upgrade").await;

    // An idle start of the new version writes nothing: every AccessKey reconciled once more, and
    // no AccessKey, Secret or Deployment changed.
    let versions = resource_versions(&env).await;
    assert!(new.terminate(Duration::from_secs(30)).await, "the new version did not exit cleanly on SIGTERM");
    let again = Operator::start_everywhere(&operator_ns, &[]);
    let keys_count = env.keys.len() as u64;
    support::eventually("every AccessKey reconciled after the restart", keys::WAIT, || async {
        (reconciles(&again).await >= keys_count).then_some(())
    })
    .await;
    assert_eq!(resource_versions(&env).await, versions, "an idle reconcile of the new version wrote something");
}

/// The resourceVersions of every AccessKey, Secret and Deployment of the test namespace.
async fn resource_versions(env: &Env) -> BTreeMap<String, String> {
    use kube::api::ListParams;
    let mut versions = BTreeMap::new();
    let lp = ListParams::default();
    for ak in env.access_keys().list(&lp).await.expect("AccessKeys listed") {
        versions.insert(
            format!("AccessKey/{}", ak.metadata.name.unwrap_or_default()),
            ak.metadata.resource_version.unwrap_or_default(),
        );
    }
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(env.client.clone(), &env.ns);
    for s in secrets.list(&lp).await.expect("Secrets listed") {
        versions.insert(
            format!("Secret/{}", s.metadata.name.unwrap_or_default()),
            s.metadata.resource_version.unwrap_or_default(),
        );
    }
    let deployments: Api<Deployment> = Api::namespaced(env.client.clone(), &env.ns);
    for d in deployments.list(&lp).await.expect("Deployments listed") {
        versions.insert(
            format!("Deployment/{}", d.metadata.name.unwrap_or_default()),
            d.metadata.resource_version.unwrap_or_default(),
        );
    }
    versions
}
