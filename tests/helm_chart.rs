//! The Helm chart in `charts/cloudkeys`, through Helm's own Go library (helm-sdkpy, driven by
//! `tests/helm/helm.py`) against the real apiserver of `tests/support`: lint, the values schema,
//! install, upgrade, uninstall, and the operator running with nothing but the chart's RBAC.
//!
//! Every test has namespaces of its own and releases named after them (ClusterRoles are
//! cluster-wide). Helm installs the CRDs on the first install and skips them afterwards.

mod support;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cloudkeys::api::{AccessKey, ClusterKeyIssuer};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview};
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, DynamicObject, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::Client;
use serde::Deserialize as _;
use serde_json::json;

const CRDS: [&str; 3] = ["accesskeys.cloudkeys.io", "keyissuers.cloudkeys.io", "clusterkeyissuers.cloudkeys.io"];
const WAIT: Duration = Duration::from_secs(60);

/// Held by the tests that run an operator watching every namespace: two of them at once would
/// each reconcile the other's AccessKeys, and one proves that its operator cannot write Secrets.
static CLUSTER_WIDE_OPERATOR: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn chart() -> PathBuf {
    support::repo_root().join("charts/cloudkeys")
}

// ---------------------------------------------------------------------------------------------
// helm.py

struct Helm {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Helm {
    fn output(&self) -> String {
        format!("--- stdout\n{}--- stderr\n{}", self.stdout, self.stderr)
    }
}

/// A client of a control plane of this test's own: the chart's operator watches every namespace,
/// and would take the AccessKeys of other tests for its own (and all tests here take one, since
/// under plain `cargo test` they share one process).
async fn own_cluster() -> Client {
    support::own_control_plane();
    support::client().await
}

/// Runs `python3 tests/helm/helm.py ARGS` (`$PYTHON` instead of python3 when set, as in the Makefile).
fn helm(args: &[&str]) -> Helm {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(python)
        .arg(support::repo_root().join("tests/helm/helm.py"))
        .args(args)
        .output()
        .expect("python3 runs");
    let result = Helm {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert_ne!(
        out.status.code(),
        Some(3),
        "helm-sdkpy is missing: install it with `make helm-deps`\n{}",
        result.output()
    );
    result
}

/// `helm.py COMMAND RELEASE CHART NAMESPACE --kubeconfig K SETS...` against the test cluster.
fn helm_release(command: &str, release: &str, namespace: &str, sets: &[&str]) -> Helm {
    let kubeconfig = support::control_plane().kubeconfig.to_string_lossy().into_owned();
    let chart = chart().to_string_lossy().into_owned();
    let mut args = vec![command, release, chart.as_str(), namespace, "--kubeconfig", kubeconfig.as_str()];
    for s in sets {
        args.extend(["--set", s]);
    }
    helm(&args)
}

fn install(release: &str, namespace: &str, sets: &[&str]) {
    let out = helm_release("install", release, namespace, sets);
    assert!(out.ok, "helm install {release} failed:\n{}", out.output());
}

fn lint(sets: &[&str]) -> Helm {
    let chart = chart().to_string_lossy().into_owned();
    let mut args = vec!["lint", chart.as_str(), "--strict"];
    for s in sets {
        args.extend(["--set", s]);
    }
    helm(&args)
}

// ---------------------------------------------------------------------------------------------
// Reading objects back.

fn in_ns<K>(client: &Client, namespace: &str) -> Api<K>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
{
    Api::namespaced(client.clone(), namespace)
}

fn cluster<K>(client: &Client) -> Api<K>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::ClusterResourceScope>,
{
    Api::all(client.clone())
}

async fn get<K>(api: &Api<K>, name: &str) -> Option<K>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.get_opt(name).await.unwrap_or_else(|e| panic!("cannot read {name}: {e}"))
}

async fn must<K>(api: &Api<K>, name: &str) -> K
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    get(api, name).await.unwrap_or_else(|| panic!("{} {name} was not created", std::any::type_name::<K>()))
}

async fn wait_gone<K>(api: &Api<K>, name: &str)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let what = format!("{} {name} to be deleted", std::any::type_name::<K>());
    support::eventually(&what, WAIT, || async { get(api, name).await.is_none().then_some(()) }).await;
}

/// PodDisruptionBudgets are read untyped: a 1.20 apiserver serves only policy/v1beta1.
fn pdb_api(client: &Client, namespace: &str) -> Api<DynamicObject> {
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk("policy", "v1beta1", "PodDisruptionBudget"));
    Api::namespaced_with(client.clone(), namespace, &resource)
}

fn env_of(deployment: &Deployment) -> BTreeMap<String, String> {
    let container = &deployment.spec.template.spec.as_ref().expect("pod spec").containers[0];
    container
        .env
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|e| {
            let value = e.value.clone().unwrap_or_else(|| {
                let path = e.value_from.and_then(|f| f.field_ref).map(|f| f.field_path).unwrap_or_default();
                format!("fieldRef:{path}")
            });
            (e.name, value)
        })
        .collect()
}

/// Rules as comparable tuples: (apiGroups, resources, resourceNames, verbs).
type Rule = (Vec<String>, Vec<String>, Vec<String>, Vec<String>);

fn rules(rules: Option<Vec<PolicyRule>>) -> Vec<Rule> {
    let mut out: Vec<Rule> = rules
        .unwrap_or_default()
        .into_iter()
        .map(|r| {
            (
                r.api_groups.unwrap_or_default(),
                r.resources.unwrap_or_default(),
                r.resource_names.unwrap_or_default(),
                r.verbs,
            )
        })
        .collect();
    out.sort();
    out
}

fn rule(groups: &[&str], resources: &[&str], names: &[&str], verbs: &[&str]) -> Rule {
    let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    (v(groups), v(resources), v(names), v(verbs))
}

fn sorted(mut rules: Vec<Rule>) -> Vec<Rule> {
    rules.sort();
    rules
}

/// What the operator needs in the namespaces it works in.
fn namespaced_rules() -> Vec<Rule> {
    vec![
        rule(&["cloudkeys.io"], &["accesskeys"], &[], &["get", "list", "watch", "patch"]),
        rule(&["cloudkeys.io"], &["accesskeys/status"], &[], &["patch"]),
        rule(&["cloudkeys.io"], &["keyissuers"], &[], &["get", "list", "watch", "patch"]),
        rule(&["cloudkeys.io"], &["keyissuers/status"], &[], &["patch"]),
        rule(&[""], &["secrets"], &[], &["get", "list", "watch", "create", "update", "patch"]),
        rule(&["apps"], &["deployments", "statefulsets", "daemonsets"], &[], &["get", "list", "watch", "patch"]),
        rule(&["events.k8s.io"], &["events"], &[], &["create", "patch"]),
    ]
}

fn cluster_issuer_rules() -> Vec<Rule> {
    vec![
        rule(&["cloudkeys.io"], &["clusterkeyissuers"], &[], &["get", "list", "watch", "patch"]),
        rule(&["cloudkeys.io"], &["clusterkeyissuers/status"], &[], &["patch"]),
        rule(&[""], &["namespaces"], &[], &["get"]),
    ]
}

fn lease_rules() -> Vec<Rule> {
    vec![
        rule(&["coordination.k8s.io"], &["leases"], &[], &["create"]),
        rule(&["coordination.k8s.io"], &["leases"], &["cloudkeys-leader"], &["get", "update", "patch"]),
    ]
}

fn assert_bound(subjects: Option<Vec<k8s_openapi::api::rbac::v1::Subject>>, sa: &str, sa_ns: &str) {
    let subjects = subjects.unwrap_or_default();
    assert!(
        subjects.iter().any(|s| s.kind == "ServiceAccount" && s.name == sa && s.namespace.as_deref() == Some(sa_ns)),
        "not bound to ServiceAccount {sa_ns}/{sa}: {subjects:?}"
    );
}

/// (verb, resource[/subresource][.group], namespace, name, allowed?)
type Access<'a> = (&'a str, &'a str, Option<&'a str>, Option<&'a str>, bool);

/// Whether the ServiceAccount may do this, as the apiserver's authorizer decides.
async fn allowed(
    client: &Client,
    sa_ns: &str,
    sa: &str,
    verb: &str,
    resource: &str,
    ns: Option<&str>,
    name: Option<&str>,
) -> bool {
    // "accesskeys.cloudkeys.io/status": resource, group, subresource.
    let (resource, subresource) = match resource.split_once('/') {
        Some((r, s)) => (r, Some(s)),
        None => (resource, None),
    };
    let (group, resource) = match resource.split_once('.') {
        Some((r, g)) => (g, r),
        None => ("", resource),
    };
    let review = SubjectAccessReview {
        spec: k8s_openapi::api::authorization::v1::SubjectAccessReviewSpec {
            user: Some(format!("system:serviceaccount:{sa_ns}:{sa}")),
            groups: Some(vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{sa_ns}"),
                "system:authenticated".into(),
            ]),
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.into()),
                group: Some(group.into()),
                resource: Some(resource.into()),
                subresource: subresource.map(String::from),
                namespace: ns.map(String::from),
                name: name.map(String::from),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let answer = Api::<SubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .expect("SubjectAccessReview answered");
    answer.status.map(|s| s.allowed).unwrap_or(false)
}

// ---------------------------------------------------------------------------------------------
// The operator, run as the chart's ServiceAccount with the chart's Deployment environment.

struct ChartOperator {
    child: Option<Child>,
    log: PathBuf,
}

impl ChartOperator {
    /// Starts `cloudkeys` with the args and environment of the release's Deployment, and a
    /// kubeconfig holding a token of its ServiceAccount: the operator has exactly the chart's RBAC.
    async fn start(client: &Client, namespace: &str, deployment: &str) -> Self {
        let d: Deployment = must(&in_ns(client, namespace), deployment).await;
        let pod = d.spec.template.spec.clone().expect("pod spec");
        let sa = pod.service_account_name.clone().expect("serviceAccountName");
        let container = &pod.containers[0];
        let token = Api::<ServiceAccount>::namespaced(client.clone(), namespace)
            .create_token_request(
                &sa,
                &PostParams::default(),
                &TokenRequest {
                    spec: Some(k8s_openapi::api::authentication::v1::TokenRequestSpec {
                        expiration_seconds: Some(3600),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            )
            .await
            .expect("token for the chart's ServiceAccount")
            .status
            .expect("token issued")
            .token
            .expect("token");
        let dir = &support::control_plane().dir;
        let kubeconfig = dir.join(format!("{namespace}-{sa}.kubeconfig"));
        write_kubeconfig_with_token(&support::control_plane().kubeconfig, &kubeconfig, &token);

        let mut env = Vec::new();
        for e in container.env.clone().unwrap_or_default() {
            let value = match (e.value, e.value_from.and_then(|f| f.field_ref).map(|f| f.field_path)) {
                (Some(v), _) => v,
                (None, Some(path)) if path == "metadata.namespace" => namespace.to_string(),
                (None, Some(path)) if path == "metadata.name" => format!("{deployment}-0"),
                (None, other) => panic!("cannot emulate env {} from {other:?}", e.name),
            };
            env.push((e.name, value));
        }
        let log = dir.join(format!("operator-{namespace}-{deployment}.log"));
        let out = File::create(&log).expect("operator log");
        let child = Command::new(env!("CARGO_BIN_EXE_cloudkeys"))
            .args(container.args.clone().unwrap_or_default())
            .env_clear()
            .env("KUBECONFIG", &kubeconfig)
            .envs(env)
            // Several operators run at once on this machine: each takes a free port.
            .env("CLOUDKEYS_METRICS_ADDRESS", "127.0.0.1:0")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log handle"))
            .stderr(out)
            .spawn()
            .expect("operator starts");
        Self { child: Some(child), log }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops it and checks the apiserver never refused it anything.
    fn stop_and_check(mut self) {
        self.kill();
        let logs = self.logs();
        for line in logs.lines() {
            let lower = line.to_lowercase();
            assert!(
                !lower.contains("forbidden") && !lower.contains("code: 403") && !lower.contains("\"code\":403"),
                "the operator was refused something by RBAC:\n{line}"
            );
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ChartOperator {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("--- operator log ({}) ---\n{}", self.log.display(), self.logs());
        }
    }
}

fn write_kubeconfig_with_token(admin: &Path, target: &Path, token: &str) {
    let mut config: serde_norway::Value =
        serde_norway::from_str(&std::fs::read_to_string(admin).expect("admin kubeconfig")).expect("kubeconfig YAML");
    let users = config["users"].as_sequence_mut().expect("users");
    for user in users.iter_mut() {
        user["user"] = serde_norway::to_value(json!({ "token": token })).expect("token YAML");
    }
    std::fs::write(target, serde_norway::to_string(&config).expect("kubeconfig YAML")).expect("kubeconfig written");
}

/// A KeyIssuer, an AccessKey on it (deletionPolicy Delete), an AccessKey on a ClusterKeyIssuer
/// (Retain), and a ClusterKeyIssuer whose credentials Secret is missing: issued, reported, and
/// deleted again, which takes every verb the operator uses.
async fn exercise_operator(client: &Client, ns: &str, cluster_resource_ns: &str, tag: &str) {
    let local_cluster = format!("{tag}-local");
    let exo_cluster = format!("{tag}-exoscale");
    for manifest in [
        json!({"apiVersion": "cloudkeys.io/v1alpha1", "kind": "KeyIssuer", "metadata": {"name": "local"}, "spec": {"local": {}}}),
        json!({"apiVersion": "cloudkeys.io/v1alpha1", "kind": "ClusterKeyIssuer", "metadata": {"name": local_cluster}, "spec": {"local": {}}}),
        json!({"apiVersion": "cloudkeys.io/v1alpha1", "kind": "ClusterKeyIssuer", "metadata": {"name": exo_cluster},
            "spec": {"exoscale": {"zone": "ch-gva-2", "credentialsSecretRef": {"name": "exoscale-admin"}}}}),
        json!({"apiVersion": "cloudkeys.io/v1alpha1", "kind": "AccessKey", "metadata": {"name": "deleted"},
            "spec": {"issuerRef": {"name": "local"}, "secretName": "deleted-credentials", "local": {}}}),
        json!({"apiVersion": "cloudkeys.io/v1alpha1", "kind": "AccessKey", "metadata": {"name": "retained"},
            "spec": {"issuerRef": {"name": local_cluster, "kind": "ClusterKeyIssuer"}, "secretName": "retained-credentials",
                "deletionPolicy": "Retain", "local": {}}}),
    ] {
        support::apply_json(client, ns, manifest).await;
    }
    support::keys::wait_issued(client, ns, "deleted").await;
    support::keys::wait_issued(client, ns, "retained").await;
    let secret = support::keys::secret(client, ns, "deleted-credentials").await.expect("Secret written");
    let first = support::keys::secret_value(&secret, "ACCESS_KEY_ID");

    // A workload reading the Secret from its environment: restarted when the key is replaced.
    support::apply_json(
        client,
        ns,
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "reader"},
            "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "reader"}},
                "template": {"metadata": {"labels": {"app": "reader"}}, "spec": {"containers": [{"name": "c",
                    "image": "registry.invalid/reader", "envFrom": [{"secretRef": {"name": "deleted-credentials"}}]}]}}}}),
    )
    .await;

    // A new Secret template: a new key, written over the existing Secret (update), with new labels.
    support::apply_json(
        client,
        ns,
        json!({"apiVersion": "cloudkeys.io/v1alpha1", "kind": "AccessKey", "metadata": {"name": "deleted"},
            "spec": {"issuerRef": {"name": "local"}, "secretName": "deleted-credentials", "local": {},
                "consumers": {"discover": true}, "rotation": {"gracePeriod": "0s"},
                "secretTemplate": {"labels": {"team": "a"}, "data": {"KEY_ID": "{{ accessKeyId }}"}}}}),
    )
    .await;
    let replaced = support::eventually("the replaced key in the existing Secret", WAIT, || async {
        let secret = support::keys::secret(client, ns, "deleted-credentials").await?;
        let id = String::from_utf8(secret.data?.get("KEY_ID")?.0.clone()).ok()?;
        let labelled = secret.metadata.labels?.get("team").map(String::as_str) == Some("a");
        (id != first && labelled).then_some(id)
    })
    .await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    support::eventually("the reader restarted for the new key", WAIT, || async {
        let d = deployments.get_opt("reader").await.ok().flatten()?;
        let annotations = d.spec.template.metadata?.annotations?;
        (annotations.get("cloudkeys.io/key-id") == Some(&replaced)).then_some(())
    })
    .await;
    support::keys::wait_issued(client, ns, "deleted").await;

    // Reading the credentials Secret in the cluster resource namespace is allowed: it is merely missing.
    let expected = format!("credentials Secret {cluster_resource_ns}/exoscale-admin not found");
    let issuers: Api<ClusterKeyIssuer> = Api::all(client.clone());
    support::eventually(&format!("ClusterKeyIssuer {exo_cluster} to report: {expected}"), WAIT, || async {
        let issuer = issuers.get_opt(&exo_cluster).await.ok().flatten()?;
        let conditions = issuer.status?.conditions;
        conditions.iter().any(|c| c.message.contains(&expected)).then_some(())
    })
    .await;

    // Delete: revoked, finalizer removed, Secret garbage-collected. Retain: Secret released.
    let keys: Api<AccessKey> = Api::namespaced(client.clone(), ns);
    for name in ["deleted", "retained"] {
        keys.delete(name, &DeleteParams::default()).await.expect("AccessKey delete accepted");
        support::keys::wait_gone(client, ns, name).await;
    }
    support::eventually("the deleted AccessKey's Secret to be garbage-collected", WAIT, || async {
        support::keys::secret(client, ns, "deleted-credentials").await.is_none().then_some(())
    })
    .await;
    let kept = support::keys::secret(client, ns, "retained-credentials").await.expect("retained Secret kept");
    assert!(kept.metadata.owner_references.unwrap_or_default().is_empty(), "the retained Secret still has an owner");

    for name in [&local_cluster, &exo_cluster] {
        issuers.delete(name, &DeleteParams::default()).await.expect("ClusterKeyIssuer deleted");
    }
}

// ---------------------------------------------------------------------------------------------
// Tests.

#[test]
fn chart_crds_are_the_repos_crds_byte_for_byte() {
    let listing = |dir: &Path| -> BTreeMap<String, Vec<u8>> {
        std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
            .map(|entry| {
                let entry = entry.expect("directory entry");
                (entry.file_name().to_string_lossy().into_owned(), std::fs::read(entry.path()).expect("readable"))
            })
            .collect()
    };
    let repo = listing(&support::repo_root().join("crds"));
    let in_chart = listing(&chart().join("crds"));
    assert_eq!(
        repo.keys().collect::<Vec<_>>(),
        in_chart.keys().collect::<Vec<_>>(),
        "charts/cloudkeys/crds/ must hold exactly the files of crds/ (run `make crds`)"
    );
    for (name, bytes) in &repo {
        assert!(in_chart[name] == *bytes, "charts/cloudkeys/crds/{name} differs from crds/{name}: run `make crds`");
    }

    let meta: serde_norway::Value =
        serde_norway::from_str(&std::fs::read_to_string(chart().join("Chart.yaml")).expect("Chart.yaml"))
            .expect("YAML");
    assert_eq!(
        meta["appVersion"].as_str(),
        Some(env!("CARGO_PKG_VERSION")),
        "Chart.yaml appVersion is the crate version"
    );
    assert_eq!(meta["name"].as_str(), Some("cloudkeys"));
}

#[test]
fn lint_is_clean_with_defaults_a_watched_namespace_two_replicas_and_every_option() {
    for sets in [
        &[][..],
        &["watchNamespace=team-a"][..],
        &["watchNamespace=team-a", "clusterResourceNamespace=team-a", "leaderElection.namespace=kube-system"][..],
        &["replicas=2"][..],
        &["leaderElection.enabled=false"][..],
        &[
            "serviceMonitor.enabled=true",
            "podDisruptionBudget.enabled=true",
            "networkPolicy.enabled=true",
            "rbac.ownerReferencesPermissionEnforcement=true",
            "prometheus.rules.enabled=true",
            "prometheus.rules.labels.release=prometheus",
            "prometheus.rules.for.CloudkeysAccessKeyNotReady=30m",
            "prometheus.rules.alertLabels.team=platform",
            "grafana.dashboard.enabled=true",
            "grafana.dashboard.namespace=monitoring",
            "grafana.dashboard.annotations.grafana_folder=Platform",
        ][..],
        &[
            "podDisruptionBudget.enabled=true",
            "podDisruptionBudget.minAvailable=50%",
            "serviceAccount.create=false",
            "serviceAccount.name=existing",
        ][..],
    ] {
        let out = lint(sets);
        assert!(out.ok, "helm lint {sets:?} failed:\n{}", out.output());
        assert!(
            !out.stdout.contains("[WARNING]") && !out.stdout.contains("[ERROR]"),
            "helm lint {sets:?} is not clean:\n{}",
            out.output()
        );
    }
}

#[tokio::test]
async fn the_values_schema_rejects_bad_values_at_lint_and_install() {
    let client = own_cluster().await;
    let ns = support::namespace(&client, "helm-schema").await;
    for (set, complaint) in [
        ("logFormat=xml", "/logFormat"),
        ("replicas=0", "/replicas"),
        ("concurrency=0", "/concurrency"),
        ("kubeApi.qps=0", "/kubeApi/qps"),
        ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
        ("watchNamespace=Not_A_Namespace", "/watchNamespace"),
        ("metrics.port=70000", "/metrics/port"),
        ("replica=2", "replica"),
    ] {
        let out = lint(&[set]);
        assert!(!out.ok, "helm lint accepted {set}:\n{}", out.output());
        assert!(out.stdout.contains("[ERROR] values.yaml"), "helm lint {set}: no values error:\n{}", out.output());

        let out = helm_release("install", &ns, &ns, &[set]);
        assert!(!out.ok, "helm install accepted {set}:\n{}", out.output());
        assert!(
            out.stderr.contains("don't meet the specifications of the schema") && out.stderr.contains(complaint),
            "helm install {set}: not rejected by the schema at {complaint}:\n{}",
            out.output()
        );
    }
    assert!(get(&in_ns::<Deployment>(&client, &ns), &format!("{ns}-cloudkeys")).await.is_none());
}

#[tokio::test]
async fn replicas_without_leader_election_fail_with_a_clear_message() {
    let client = own_cluster().await;
    let ns = support::namespace(&client, "helm-replicas").await;
    let sets = ["replicas=2", "leaderElection.enabled=false"];
    let message = "replicas: 2 needs leaderElection.enabled=true";

    let out = lint(&sets);
    assert!(!out.ok && out.stdout.contains(message), "helm lint did not fail clearly:\n{}", out.output());
    let out = helm_release("install", &ns, &ns, &sets);
    assert!(!out.ok && out.stderr.contains(message), "helm install did not fail clearly:\n{}", out.output());
    assert!(get(&in_ns::<Deployment>(&client, &ns), &format!("{ns}-cloudkeys")).await.is_none());

    // Two replicas with leader election are fine; one without it runs with Recreate.
    install(&ns, &ns, &["replicas=2"]);
    let d: Deployment = must(&in_ns(&client, &ns), &format!("{ns}-cloudkeys")).await;
    assert_eq!(d.spec.replicas, Some(2));
    let out = helm_release("upgrade", &ns, &ns, &["leaderElection.enabled=false"]);
    assert!(out.ok, "upgrade failed:\n{}", out.output());
    let d: Deployment = must(&in_ns(&client, &ns), &format!("{ns}-cloudkeys")).await;
    let spec = &d.spec;
    assert_eq!(spec.replicas, Some(1));
    assert_eq!(spec.strategy.as_ref().and_then(|s| s.type_.as_deref()), Some("Recreate"));
    assert_eq!(env_of(&d).get("CLOUDKEYS_LEADER_ELECTION").map(String::as_str), Some("false"));
    assert!(!env_of(&d).contains_key("CLOUDKEYS_LEADER_ELECTION_NAMESPACE"));
    wait_gone(&in_ns::<Role>(&client, &ns), &format!("{ns}-cloudkeys-leader-election")).await;
    assert!(helm(&["uninstall", &ns, &ns, "--kubeconfig", &support::control_plane().kubeconfig.to_string_lossy()]).ok);
}

#[tokio::test]
async fn install_upgrade_and_uninstall_in_the_real_apiserver() {
    let client = own_cluster().await;
    let ns = support::namespace(&client, "helm-install").await;
    let release = ns.clone();
    let name = format!("{release}-cloudkeys");
    install(
        &release,
        &ns,
        &["serviceMonitor.enabled=false", "podDisruptionBudget.enabled=true", "networkPolicy.enabled=true"],
    );

    // The CRDs (installed by this release or an earlier one: Helm skips existing CRDs).
    for crd in CRDS {
        must(&cluster::<CustomResourceDefinition>(&client), crd).await;
    }

    // The Deployment: image, arguments, environment, probes, hardening.
    let d: Deployment = must(&in_ns(&client, &ns), &name).await;
    let spec = d.spec.clone();
    assert_eq!(spec.replicas, Some(1));
    let pod = spec.template.spec.clone().expect("pod spec");
    assert_eq!(pod.service_account_name.as_deref(), Some(name.as_str()));
    let c = &pod.containers[0];
    assert_eq!(c.image.as_deref(), Some(format!("ghcr.io/cloudkeys/cloudkeys:{}", env!("CARGO_PKG_VERSION")).as_str()));
    assert_eq!(c.args.clone().unwrap_or_default(), vec!["run".to_string()]);
    let env = env_of(&d);
    let expect_env = [
        ("POD_NAMESPACE", "fieldRef:metadata.namespace".to_string()),
        ("POD_NAME", "fieldRef:metadata.name".to_string()),
        ("RUST_LOG", "info".to_string()),
        ("CLOUDKEYS_LOG_FORMAT", "json".to_string()),
        ("CLOUDKEYS_CONCURRENCY", "16".to_string()),
        ("CLOUDKEYS_KUBE_API_QPS", "500".to_string()),
        ("CLOUDKEYS_KUBE_API_BURST", "1000".to_string()),
        ("CLOUDKEYS_CLUSTER_RESOURCE_NAMESPACE", ns.clone()),
        ("CLOUDKEYS_METRICS_ADDRESS", "0.0.0.0:8080".to_string()),
        ("CLOUDKEYS_LEADER_ELECTION", "true".to_string()),
        ("CLOUDKEYS_LEADER_ELECTION_NAMESPACE", ns.clone()),
    ];
    for (key, value) in &expect_env {
        assert_eq!(env.get(*key), Some(value), "env {key} in {env:?}");
    }
    assert!(!env.contains_key("CLOUDKEYS_NAMESPACE"), "all namespaces by default");
    let port = c
        .ports
        .clone()
        .unwrap_or_default()
        .into_iter()
        .find(|p| p.name.as_deref() == Some("metrics"))
        .expect("metrics port");
    assert_eq!(port.container_port, 8080);
    let probe_path = |p: Option<&k8s_openapi::api::core::v1::Probe>| {
        p.and_then(|p| p.http_get.as_ref()).and_then(|h| h.path.clone()).unwrap_or_default()
    };
    assert_eq!(probe_path(c.liveness_probe.as_ref()), "/healthz");
    assert_eq!(probe_path(c.readiness_probe.as_ref()), "/readyz");
    let sc = c.security_context.clone().expect("container securityContext");
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.run_as_user, Some(65532));
    assert_eq!(sc.run_as_group, Some(65532));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.capabilities.and_then(|c| c.drop), Some(vec!["ALL".to_string()]));
    assert_eq!(sc.seccomp_profile.map(|s| s.type_), Some("RuntimeDefault".to_string()));
    let limits = c.resources.clone().and_then(|r| r.limits).unwrap_or_default();
    assert!(limits.contains_key("memory"), "a memory limit is set");

    // ServiceAccount and cluster-wide RBAC, exactly.
    must(&in_ns::<ServiceAccount>(&client, &ns), &name).await;
    let role: ClusterRole = must(&cluster(&client), &name).await;
    assert_eq!(rules(role.rules), sorted([namespaced_rules(), cluster_issuer_rules()].concat()));
    let binding: ClusterRoleBinding = must(&cluster(&client), &name).await;
    assert_eq!(binding.role_ref.name, name);
    assert_bound(binding.subjects, &name, &ns);
    let lease_role: Role = must(&in_ns(&client, &ns), &format!("{name}-leader-election")).await;
    assert_eq!(rules(lease_role.rules), sorted(lease_rules()));
    let lease_binding: RoleBinding = must(&in_ns(&client, &ns), &format!("{name}-leader-election")).await;
    assert_bound(lease_binding.subjects, &name, &ns);

    // Metrics Service, PodDisruptionBudget, NetworkPolicy.
    let svc: Service = must(&in_ns(&client, &ns), &format!("{name}-metrics")).await;
    let svc_port = &svc.spec.expect("service spec").ports.expect("ports")[0];
    assert_eq!((svc_port.name.as_deref(), svc_port.port), (Some("metrics"), 8080));
    let pdb = pdb_api(&client, &ns).get(&name).await.expect("PodDisruptionBudget created");
    assert_eq!(pdb.data["spec"]["maxUnavailable"], json!(1));
    let netpol: NetworkPolicy = must(&in_ns(&client, &ns), &name).await;
    let np = netpol.spec.expect("policy spec");
    let ingress = np.ingress.clone().unwrap_or_default();
    assert_eq!(ingress.len(), 1);
    let ports = ingress[0].ports.clone().unwrap_or_default();
    assert_eq!(ports.len(), 1, "ingress to the metrics port only");
    assert_eq!(
        ports[0].port,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("metrics".into()))
    );
    assert_eq!(np.egress.unwrap_or_default().len(), 1, "all egress allowed");

    // Upgrade: a changed value changes the Deployment; a disabled option removes its object.
    let generation = d.metadata.generation;
    let out = helm_release(
        "upgrade",
        &release,
        &ns,
        &["concurrency=8", "logFormat=text", "podDisruptionBudget.enabled=true"],
    );
    assert!(out.ok, "helm upgrade failed:\n{}", out.output());
    let d: Deployment = must(&in_ns(&client, &ns), &name).await;
    assert!(d.metadata.generation > generation, "the Deployment changed");
    assert_eq!(env_of(&d).get("CLOUDKEYS_CONCURRENCY").map(String::as_str), Some("8"));
    assert_eq!(env_of(&d).get("CLOUDKEYS_LOG_FORMAT").map(String::as_str), Some("text"));
    wait_gone(&in_ns::<NetworkPolicy>(&client, &ns), &name).await;

    // Uninstall: every object goes, the CRDs stay (Helm never deletes CRDs).
    let out =
        helm(&["uninstall", &release, &ns, "--kubeconfig", &support::control_plane().kubeconfig.to_string_lossy()]);
    assert!(out.ok, "helm uninstall failed:\n{}", out.output());
    wait_gone(&in_ns::<Deployment>(&client, &ns), &name).await;
    wait_gone(&in_ns::<ServiceAccount>(&client, &ns), &name).await;
    wait_gone(&cluster::<ClusterRole>(&client), &name).await;
    wait_gone(&cluster::<ClusterRoleBinding>(&client), &name).await;
    wait_gone(&in_ns::<Role>(&client, &ns), &format!("{name}-leader-election")).await;
    wait_gone(&in_ns::<RoleBinding>(&client, &ns), &format!("{name}-leader-election")).await;
    wait_gone(&in_ns::<Service>(&client, &ns), &format!("{name}-metrics")).await;
    support::eventually("the PodDisruptionBudget to be deleted", WAIT, || async {
        pdb_api(&client, &ns).get_opt(&name).await.expect("readable").is_none().then_some(())
    })
    .await;
    for crd in CRDS {
        must(&cluster::<CustomResourceDefinition>(&client), crd).await;
    }
}

#[tokio::test]
async fn the_operator_works_with_nothing_but_the_charts_rbac() {
    let _alone = CLUSTER_WIDE_OPERATOR.lock().await;
    let client = own_cluster().await;

    // All namespaces: one ClusterRole.
    let ns = support::namespace(&client, "helm-rbac-cluster").await;
    let team = support::namespace(&client, "helm-rbac-cluster-team").await;
    let name = format!("{ns}-cloudkeys");
    install(&ns, &ns, &[]);
    let checks: &[Access] = &[
        ("list", "secrets", Some(&team), None, true),
        ("delete", "secrets", Some(&team), None, false),
        ("get", "accesskeys.cloudkeys.io", Some(&team), Some("x"), true),
        ("update", "accesskeys.cloudkeys.io", Some(&team), Some("x"), false),
        ("delete", "accesskeys.cloudkeys.io", Some(&team), Some("x"), false),
        ("update", "accesskeys.cloudkeys.io/status", Some(&team), Some("x"), false),
        ("create", "keyissuers.cloudkeys.io", Some(&team), None, false),
        ("get", "leases.coordination.k8s.io", Some(&ns), Some("cloudkeys-leader"), true),
        ("update", "leases.coordination.k8s.io", Some(&ns), Some("cloudkeys-leader"), true),
        ("get", "leases.coordination.k8s.io", Some(&ns), Some("someone-elses"), false),
        ("update", "leases.coordination.k8s.io", Some(&ns), Some("someone-elses"), false),
        ("create", "leases.coordination.k8s.io", Some(&ns), None, true),
        ("create", "leases.coordination.k8s.io", Some(&team), None, false),
        ("create", "events.events.k8s.io", Some(&team), None, true),
        ("create", "events", Some(&team), None, false),
        ("list", "configmaps", Some(&team), None, false),
        ("patch", "deployments.apps", Some(&team), Some("x"), true),
        ("watch", "daemonsets.apps", Some(&team), None, true),
        ("update", "statefulsets.apps", Some(&team), Some("x"), false),
        ("delete", "deployments.apps", Some(&team), Some("x"), false),
    ];
    for (verb, resource, where_, object, expected) in checks {
        let got = allowed(&client, &ns, &name, verb, resource, *where_, *object).await;
        assert_eq!(got, *expected, "{verb} {resource} in {where_:?} name {object:?}");
    }
    // Namespace editors and viewers get AccessKeys and KeyIssuers through the built-in roles.
    for (role, account) in [("edit", "tenant-editor"), ("view", "tenant-viewer")] {
        let binding = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": account}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": team}]});
        support::apply_json(&client, &team, binding).await;
    }
    let tenant_checks: &[(&str, &str, &str, bool)] = &[
        ("tenant-editor", "create", "accesskeys.cloudkeys.io", true),
        ("tenant-editor", "delete", "keyissuers.cloudkeys.io", true),
        ("tenant-editor", "patch", "accesskeys.cloudkeys.io/status", false),
        ("tenant-editor", "update", "keyissuers.cloudkeys.io/status", false),
        ("tenant-viewer", "list", "accesskeys.cloudkeys.io", true),
        ("tenant-viewer", "create", "accesskeys.cloudkeys.io", false),
    ];
    for (account, verb, resource, expected) in tenant_checks {
        // The aggregation controller fills the built-in roles a moment after the chart's appear.
        support::eventually(&format!("{account} {verb} {resource}: {expected}"), WAIT, || async {
            (allowed(&client, &team, account, verb, resource, Some(&team), Some("x")).await == *expected).then_some(())
        })
        .await;
    }
    let op = ChartOperator::start(&client, &ns, &name).await;
    exercise_operator(&client, &team, &ns, &ns).await;
    op.stop_and_check();
    assert!(helm(&["uninstall", &ns, &ns, "--kubeconfig", &support::control_plane().kubeconfig.to_string_lossy()]).ok);

    // One watched namespace: Roles, and a ClusterRole for ClusterKeyIssuers only.
    let ns = support::namespace(&client, "helm-rbac-ns").await;
    let watched = support::namespace(&client, "helm-rbac-ns-watched").await;
    let credentials = support::namespace(&client, "helm-rbac-ns-credentials").await;
    let other = support::namespace(&client, "helm-rbac-ns-other").await;
    let name = format!("{ns}-cloudkeys");
    install(&ns, &ns, &[&format!("watchNamespace={watched}"), &format!("clusterResourceNamespace={credentials}")]);

    let cluster_role: ClusterRole = must(&cluster(&client), &name).await;
    assert_eq!(rules(cluster_role.rules), sorted(cluster_issuer_rules()), "only cluster-scoped kinds cluster-wide");
    assert_bound(must(&cluster::<ClusterRoleBinding>(&client), &name).await.subjects, &name, &ns);
    let role: Role = must(&in_ns(&client, &watched), &name).await;
    assert_eq!(rules(role.rules), sorted(namespaced_rules()));
    assert_bound(must(&in_ns::<RoleBinding>(&client, &watched), &name).await.subjects, &name, &ns);
    let creds: Role = must(&in_ns(&client, &credentials), &format!("{name}-credentials")).await;
    assert_eq!(rules(creds.rules), vec![rule(&[""], &["secrets"], &[], &["get", "patch"])]);
    assert_bound(
        must(&in_ns::<RoleBinding>(&client, &credentials), &format!("{name}-credentials")).await.subjects,
        &name,
        &ns,
    );
    let events: Role = must(&in_ns(&client, "default"), &format!("{name}-events")).await;
    assert_eq!(rules(events.rules), vec![rule(&["events.k8s.io"], &["events"], &[], &["create", "patch"])]);
    let lease: Role = must(&in_ns(&client, &ns), &format!("{name}-leader-election")).await;
    assert_eq!(rules(lease.rules), sorted(lease_rules()));
    let d: Deployment = must(&in_ns(&client, &ns), &name).await;
    assert_eq!(env_of(&d).get("CLOUDKEYS_NAMESPACE"), Some(&watched));
    assert_eq!(env_of(&d).get("CLOUDKEYS_CLUSTER_RESOURCE_NAMESPACE"), Some(&credentials));

    let checks: &[Access] = &[
        ("list", "secrets", Some(&watched), None, true),
        ("list", "secrets", Some(&other), None, false),
        ("get", "secrets", Some(&other), Some("x"), false),
        ("get", "secrets", Some(&credentials), Some("exoscale-admin"), true),
        ("list", "secrets", Some(&credentials), None, false),
        ("list", "accesskeys.cloudkeys.io", Some(&watched), None, true),
        ("list", "accesskeys.cloudkeys.io", Some(&other), None, false),
        ("list", "accesskeys.cloudkeys.io", None, None, false),
        ("list", "clusterkeyissuers.cloudkeys.io", None, None, true),
        ("create", "events.events.k8s.io", Some("default"), None, true),
        ("create", "events.events.k8s.io", Some(&other), None, false),
    ];
    for (verb, resource, where_, object, expected) in checks {
        let got = allowed(&client, &ns, &name, verb, resource, *where_, *object).await;
        assert_eq!(got, *expected, "{verb} {resource} in {where_:?} name {object:?}");
    }
    let op = ChartOperator::start(&client, &ns, &name).await;
    exercise_operator(&client, &watched, &credentials, &ns).await;
    op.stop_and_check();
    assert!(helm(&["uninstall", &ns, &ns, "--kubeconfig", &support::control_plane().kubeconfig.to_string_lossy()]).ok);
    wait_gone(&in_ns::<Role>(&client, "default"), &format!("{name}-events")).await;
    wait_gone(&in_ns::<Role>(&client, &credentials), &format!("{name}-credentials")).await;
}

#[tokio::test]
async fn template_renders_the_watch_namespace_variant() {
    let client = own_cluster().await;
    let ns = support::namespace(&client, "helm-template").await;
    let watched = support::namespace(&client, "helm-template-watched").await;
    let out = helm_release("template", &ns, &ns, &[&format!("watchNamespace={watched}")]);
    assert!(out.ok, "helm template failed:\n{}", out.output());
    let docs: Vec<serde_norway::Value> = serde_norway::Deserializer::from_str(&out.stdout)
        .filter_map(|d| serde_norway::Value::deserialize(d).ok())
        .filter(|v| !v.is_null())
        .collect();
    let kinds: Vec<(String, String)> = docs
        .iter()
        .map(|d| {
            (
                d["kind"].as_str().unwrap_or_default().to_string(),
                d["metadata"]["namespace"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert!(kinds.contains(&("Role".into(), watched.clone())), "a Role in the watched namespace: {kinds:?}");
    assert!(
        kinds.contains(&("RoleBinding".into(), watched.clone())),
        "a RoleBinding in the watched namespace: {kinds:?}"
    );
    assert!(kinds.contains(&("Role".into(), "default".into())), "a Role for Events in default: {kinds:?}");
    // The throwaway release is gone again.
    wait_gone(&in_ns::<Deployment>(&client, &ns), &format!("{ns}-cloudkeys")).await;
    wait_gone(&in_ns::<Role>(&client, &watched), &format!("{ns}-cloudkeys")).await;
}

/// The RBAC check above can fail: with one verb taken out of the chart's ClusterRole, the
/// operator is refused by the apiserver and no key reaches a Secret.
#[tokio::test]
async fn a_verb_removed_from_the_cluster_role_makes_the_operator_fail() {
    let _alone = CLUSTER_WIDE_OPERATOR.lock().await;
    let client = own_cluster().await;
    let ns = support::namespace(&client, "helm-rbac-missing-verb").await;
    let team = support::namespace(&client, "helm-rbac-missing-verb-team").await;
    let name = format!("{ns}-cloudkeys");
    install(&ns, &ns, &[]);
    let roles: Api<ClusterRole> = cluster(&client);
    let mut role = must(&roles, &name).await;
    let mut removed = false;
    for r in role.rules.iter_mut().flatten() {
        if r.resources.as_ref().is_some_and(|rs| rs.iter().any(|x| x == "secrets")) {
            let before = r.verbs.len();
            r.verbs.retain(|v| v != "create");
            removed |= r.verbs.len() < before;
        }
    }
    assert!(removed, "the chart's ClusterRole has no create on secrets to remove");
    roles.replace(&name, &PostParams::default(), &role).await.expect("ClusterRole replaced");

    let mut op = ChartOperator::start(&client, &ns, &name).await;
    support::apply_json(
        &client,
        &team,
        json!({"apiVersion": "cloudkeys.io/v1alpha1", "kind": "KeyIssuer",
        "metadata": {"name": "local"}, "spec": {"local": {}}}),
    )
    .await;
    support::apply_json(&client, &team, json!({"apiVersion": "cloudkeys.io/v1alpha1", "kind": "AccessKey",
        "metadata": {"name": "k"}, "spec": {"issuerRef": {"name": "local"}, "secretName": "k-credentials", "local": {}}}))
    .await;
    support::eventually("the apiserver to refuse the operator", Duration::from_secs(60), || {
        let refused = op.logs().contains("forbidden");
        async move { refused.then_some(()) }
    })
    .await;
    let ak: AccessKey = must(&in_ns(&client, &team), "k").await;
    let issued = ak.status.and_then(|s| s.access_key_id);
    assert!(issued.is_none(), "a key was recorded although its Secret could not be written");
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = in_ns(&client, &team);
    assert!(get(&secrets, "k-credentials").await.is_none());
    op.kill();
    assert!(helm(&["uninstall", &ns, &ns, "--kubeconfig", &support::control_plane().kubeconfig.to_string_lossy()]).ok);
}
