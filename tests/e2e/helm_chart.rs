//! The Helm chart in `charts/cloudkeys`, through Helm's own Go library (helm-sdkpy, driven by
//! `tests/helm/helm.py`) against the real apiserver of `tests/support`: lint, the values schema,
//! install, upgrade, uninstall, and the operator running with nothing but the chart's RBAC.
//!
//! Every test has namespaces of its own and releases named after them (ClusterRoles are
//! cluster-wide). Helm installs the CRDs on the first install and skips them afterwards.

use crate::support;
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cloudkeys::api::{AccessKey, ClusterKeyIssuer, KeyIssuer};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::Client;
use serde::Deserialize as _;
use serde_json::json;

const CRDS: [&str; 3] = ["accesskeys.cloudkeys.io", "keyissuers.cloudkeys.io", "clusterkeyissuers.cloudkeys.io"];
const WAIT: Duration = Duration::from_secs(60);

/// Held by the tests that run an operator watching every namespace: two of them at once would
/// each reconcile the other's AccessKeys, and one proves that its operator cannot write Secrets.
/// Also by those that uninstall a release: its pre-delete hook looks at the AccessKeys of every
/// namespace (and refuses while there are some). The holders leave no AccessKey behind.
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
///
/// The CRDs are created as `kubectl apply -f crds/` (or an older chart's crds/ folder) leaves
/// them, owned by no release: the releases of the tests leave them alone (see `release_args`).
async fn own_cluster() -> Client {
    support::own_control_plane();
    let client = support::client().await;
    support::install_crds(&client).await;
    client
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
    let args = release_args(command, release, namespace, sets);
    helm(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// The arguments of `helm_release`. Releases leave the CRDs alone (`crds.enabled=false`) unless
/// `sets` say otherwise: the tests of this file install many releases at once into one cluster,
/// and the CRDs can belong to one release only. `own_cluster` creates them.
fn release_args(command: &str, release: &str, namespace: &str, sets: &[&str]) -> Vec<String> {
    let kubeconfig = support::control_plane().kubeconfig.to_string_lossy().into_owned();
    let chart = chart().to_string_lossy().into_owned();
    let mut args: Vec<String> =
        vec![command.into(), release.into(), chart, namespace.into(), "--kubeconfig".into(), kubeconfig];
    if !sets.iter().any(|s| s.starts_with("crds.enabled=")) {
        args.extend(["--set".into(), "crds.enabled=false".into()]);
    }
    for s in sets {
        args.extend(["--set".into(), s.to_string()]);
    }
    args
}

// ---------------------------------------------------------------------------------------------
// The pre-delete hook. The test control plane has no Job controller and no kubelet: these
// helpers do their part. When Helm creates the hook's Job, the test runs the Job's container
// (the `cloudkeys` binary with the Job's args) as the Job's ServiceAccount, with a token of it,
// and writes the outcome into the Job's status, which Helm waits for.

/// What to do with the hook's Job.
#[derive(Clone, Copy, PartialEq, Eq)]
enum HookMode {
    /// Run its command, and complete or fail the Job as the command exits.
    Run,
    /// Complete it without running anything: the uninstall of `template`'s throwaway release,
    /// which must not act on the cluster's AccessKeys.
    Complete,
}

/// One run of the hook's command.
#[derive(Debug)]
struct HookRun {
    args: Vec<String>,
    code: i32,
    stdout: String,
    stderr: String,
    /// The operator's Deployment existed when the hook ran: Helm had not deleted it yet.
    operator_present: bool,
    /// When the command exited. Helm deletes the release (its RBAC too) only after that.
    ended: jiff::Timestamp,
}

/// The name of the hook objects of a release named like its namespace (as every test does).
fn hook_name(release: &str) -> String {
    format!("{release}-cloudkeys-uninstall")
}

/// Runs the container of the rendered Job `job` as its ServiceAccount.
async fn run_job(client: &Client, namespace: &str, job: &Job) -> HookRun {
    let pod = job.spec.as_ref().and_then(|s| s.template.spec.clone()).expect("the Job has a pod spec");
    let sa = pod.service_account_name.clone().expect("the Job names its ServiceAccount");
    let args = pod.containers[0].args.clone().unwrap_or_default();
    let kubeconfig = service_account_kubeconfig(client, namespace, &sa).await;
    run_cloudkeys_as(&kubeconfig, &args).await
}

/// `cloudkeys ARGS` with nothing but `kubeconfig` (no inherited environment).
async fn run_cloudkeys_as(kubeconfig: &Path, args: &[String]) -> HookRun {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_cloudkeys"))
        .args(args)
        .env_clear()
        .env("KUBECONFIG", kubeconfig)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("cloudkeys runs");
    HookRun {
        args: args.to_vec(),
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        operator_present: false,
        ended: jiff::Timestamp::now(),
    }
}

/// Writes the Job's outcome as the Job controller would.
async fn finish_job(jobs: &Api<Job>, name: &str, succeeded: bool) {
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now());
    let (condition, reason) = if succeeded { ("Complete", "Completed") } else { ("Failed", "BackoffLimitExceeded") };
    let mut status = json!({
        "startTime": now,
        "conditions": [{"type": condition, "status": "True", "reason": reason, "lastProbeTime": now, "lastTransitionTime": now}],
    });
    if succeeded {
        status["succeeded"] = json!(1);
        status["completionTime"] = json!(now);
    } else {
        status["failed"] = json!(1);
    }
    jobs.patch_status(name, &PatchParams::default(), &Patch::Merge(json!({ "status": status })))
        .await
        .unwrap_or_else(|e| panic!("cannot write the status of Job {name}: {e}"));
}

/// Runs `helm.py ARGS`, doing the Job controller's part for the hook Job `job` in `namespace`
/// while it runs.
async fn helm_with_hook(
    client: &Client,
    args: Vec<String>,
    namespace: &str,
    job: &str,
    mode: HookMode,
) -> (Helm, Option<HookRun>) {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let child = tokio::process::Command::new(python)
        .arg(support::repo_root().join("tests/helm/helm.py"))
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs");
    // Read its output as it comes (a rendered manifest fills a pipe), and see when it exits.
    let mut helm_done = tokio::spawn(child.wait_with_output());
    let jobs: Api<Job> = in_ns(client, namespace);
    let release = args.get(1).cloned().unwrap_or_default();
    let mut hook = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    let out = loop {
        tokio::select! {
            done = &mut helm_done => break done.expect("helm.py joined").expect("helm.py ran"),
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
        assert!(tokio::time::Instant::now() < deadline, "helm.py {args:?} did not finish");
        if hook.is_some() {
            continue;
        }
        let Some(created) = jobs.get_opt(job).await.expect("Jobs readable") else { continue };
        if created.status.as_ref().is_some_and(|s| !s.conditions.clone().unwrap_or_default().is_empty()) {
            continue;
        }
        let run = match mode {
            HookMode::Complete => None,
            HookMode::Run => {
                let operator = format!("{release}-cloudkeys");
                let operator_present = get(&in_ns::<Deployment>(client, namespace), &operator).await.is_some();
                Some(HookRun { operator_present, ..run_job(client, namespace, &created).await })
            }
        };
        finish_job(&jobs, job, run.as_ref().is_none_or(|r| r.code == 0)).await;
        hook = Some(run);
    };
    let helm = Helm {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    (helm, hook.flatten())
}

/// `helm uninstall RELEASE` of the release named like its namespace, its pre-delete hook run.
async fn uninstall(client: &Client, release: &str) -> (Helm, Option<HookRun>) {
    let kubeconfig = support::control_plane().kubeconfig.to_string_lossy().into_owned();
    let args = vec!["uninstall".into(), release.into(), release.into(), "--kubeconfig".into(), kubeconfig];
    helm_with_hook(client, args, release, &hook_name(release), HookMode::Run).await
}

/// `uninstall` that must succeed, without a hook or with one that exited 0.
async fn uninstall_ok(client: &Client, release: &str) {
    let (out, hook) = uninstall(client, release).await;
    assert!(out.ok, "helm uninstall {release} failed:\n{}\nhook: {hook:?}", out.output());
}

/// `helm template` (a throwaway release, installed and uninstalled again), its hook completed.
async fn template(client: &Client, release: &str, sets: &[&str]) -> Helm {
    let args = release_args("template", release, release, sets);
    helm_with_hook(client, args, release, &hook_name(release), HookMode::Complete).await.0
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
        let kubeconfig = service_account_kubeconfig(client, namespace, &sa).await;
        let dir = &support::control_plane().dir;

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
    fn stop_and_check(self) {
        self.stop_and_check_until(None);
    }

    /// Stops it and checks the apiserver refused it nothing until `until`. Where Helm deleted the
    /// release while this process (standing in for the Deployment's pod) still ran, its RBAC went
    /// first; a refusal logged after that is the uninstall, not a missing rule.
    fn stop_and_check_until(mut self, until: Option<jiff::Timestamp>) {
        self.kill();
        let logs = self.logs();
        for line in logs.lines() {
            let logged = serde_json::from_str::<serde_json::Value>(line)
                .ok()
                .and_then(|l| l["timestamp"].as_str().and_then(|t| t.parse::<jiff::Timestamp>().ok()));
            if matches!((until, logged), (Some(until), Some(logged)) if logged > until) {
                continue;
            }
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

/// A kubeconfig of the test cluster holding a token of ServiceAccount `namespace/sa`: whatever
/// runs with it has exactly the RBAC bound to that ServiceAccount.
async fn service_account_kubeconfig(client: &Client, namespace: &str, sa: &str) -> PathBuf {
    let token = Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create_token_request(
            sa,
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
        .unwrap_or_else(|e| panic!("no token for ServiceAccount {namespace}/{sa}: {e}"))
        .status
        .expect("token issued")
        .token
        .expect("token");
    let kubeconfig = support::control_plane().dir.join(format!("{namespace}-{sa}.kubeconfig"));
    write_kubeconfig_with_token(&support::control_plane().kubeconfig, &kubeconfig, &token);
    kubeconfig
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
    delete_key_issuer(client, ns).await;
}

/// Deletes the KeyIssuer `local` of `ns` while the operator runs: it minted keys, so it holds
/// the finalizer cloudkeys.io/in-use until deleted, and the uninstall hook refuses while it does.
async fn delete_key_issuer(client: &Client, ns: &str) {
    let issuers: Api<KeyIssuer> = in_ns(client, ns);
    issuers.delete("local", &DeleteParams::default()).await.expect("KeyIssuer delete accepted");
    wait_gone(&issuers, "local").await;
}

// ---------------------------------------------------------------------------------------------
// Tests.

#[test]
fn the_chart_renders_the_repos_crds_from_templates_not_from_a_crds_folder() {
    // Helm installs a chart's crds/ folder once and never upgrades it: the CRDs are templates.
    assert!(!chart().join("crds").exists(), "charts/cloudkeys/crds/ is back: Helm would install the CRDs from it too");
    let repo = std::fs::read(support::repo_root().join("crds/cloudkeys.io_crds.yaml")).expect("crds/ readable");
    let in_chart = std::fs::read(chart().join("files/cloudkeys.io_crds.yaml")).expect("the chart's copy");
    assert!(repo == in_chart, "charts/cloudkeys/files/cloudkeys.io_crds.yaml differs from crds/: run `make crds`");
    let template = std::fs::read_to_string(chart().join("templates/crds.yaml")).expect("templates/crds.yaml");
    assert!(template.contains(".Files.Get \"files/cloudkeys.io_crds.yaml\""), "the template renders the copy");

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

/// The documents of a rendered manifest that came from `source` (a template's path in the chart),
/// each as Helm wrote it, without its `# Source:` line.
fn documents_from(manifest: &str, source: &str) -> Vec<String> {
    let marker = format!("# Source: {source}\n");
    manifest
        .split("\n---\n")
        .map(|d| d.trim_start_matches("---\n"))
        .filter_map(|d| d.strip_prefix(marker.as_str()))
        .map(|d| d.trim().to_string())
        .collect()
}

const KEEP: &str = "    helm.sh/resource-policy: keep\n";

/// The upgrade path of docs/operations.md: a release whose CRDs came from the chart's old crds/
/// folder (owned by no release) turns crds.enabled on; Helm refuses until the CRDs carry its
/// ownership metadata, then writes the chart's CRDs over them, byte for byte the repository's
/// apart from the keep annotation; uninstalling keeps them.
#[tokio::test]
async fn an_existing_release_takes_over_its_crds_as_documented_and_keeps_them_on_uninstall() {
    let _alone = CLUSTER_WIDE_OPERATOR.lock().await;
    let client = own_cluster().await;
    let ns = support::namespace(&client, "helm-crds").await;
    install(&ns, &ns, &["crds.enabled=false"]);
    let crds: Api<CustomResourceDefinition> = cluster(&client);
    // As an older chart's CRDs would say.
    for crd in CRDS {
        let old = json!({"metadata": {"annotations": {"cloudkeys.io/version": "0.0.1"}}});
        crds.patch(crd, &PatchParams::default(), &Patch::Merge(old)).await.expect("CRD patched");
    }

    let refused = helm_release("upgrade", &ns, &ns, &["crds.enabled=true"]);
    assert!(!refused.ok, "Helm took CRDs that no release owns:\n{}", refused.output());
    assert!(refused.stderr.contains("invalid ownership metadata"), "not refused for ownership:\n{}", refused.output());

    // What docs/operations.md (Upgrading) tells the platform team to run, through kubectl.
    for crd in CRDS {
        let (ok, _, err) = support::run_kubectl(&[
            "annotate",
            "crd",
            crd,
            &format!("meta.helm.sh/release-name={ns}"),
            &format!("meta.helm.sh/release-namespace={ns}"),
        ]);
        assert!(ok, "kubectl annotate {crd}: {err}");
        let (ok, _, err) = support::run_kubectl(&["label", "crd", crd, "app.kubernetes.io/managed-by=Helm"]);
        assert!(ok, "kubectl label {crd}: {err}");
    }
    let mut args = release_args("upgrade", &ns, &ns, &["crds.enabled=true"]);
    args.push("--show-manifest".into());
    let out = helm(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.ok, "helm upgrade with crds.enabled failed:\n{}", out.output());

    let rendered = documents_from(&out.stdout, "cloudkeys/templates/crds.yaml");
    let repo = std::fs::read_to_string(support::repo_root().join("crds/cloudkeys.io_crds.yaml")).expect("crds/");
    let expected: Vec<String> =
        repo.split("---\n").map(str::trim).filter(|d| !d.is_empty()).map(String::from).collect();
    assert_eq!(rendered.len(), expected.len(), "one rendered CRD for each of crds/:\n{}", out.stdout);
    for (got, want) in rendered.iter().zip(&expected) {
        assert_eq!(got.matches(KEEP).count(), 1, "no keep annotation in:\n{got}");
        assert!(
            got.replacen(KEEP, "", 1) == *want,
            "a rendered CRD differs from crds/ (beyond the keep annotation):\n{got}"
        );
    }
    for crd in CRDS {
        let live = must(&crds, crd).await;
        let annotations = live.metadata.annotations.unwrap_or_default();
        assert_eq!(
            annotations.get("cloudkeys.io/version").map(String::as_str),
            Some(env!("CARGO_PKG_VERSION")),
            "{crd} upgraded"
        );
        assert_eq!(annotations.get("helm.sh/resource-policy").map(String::as_str), Some("keep"), "{crd}");
    }

    // Uninstalled, the release keeps its CRDs (and with them every AccessKey of the cluster).
    uninstall_ok(&client, &ns).await;
    wait_gone(&in_ns::<Deployment>(&client, &ns), &format!("{ns}-cloudkeys")).await;
    for crd in CRDS {
        let live = must(&crds, crd).await;
        assert!(live.metadata.deletion_timestamp.is_none(), "{crd} is being deleted");
    }
}

/// The hook as rendered for each policy: its objects, their hook annotations, its command and
/// its RBAC, exactly; none at all with policy None.
#[tokio::test]
async fn the_uninstall_hook_renders_per_policy() {
    let client = own_cluster().await;
    let ns = support::namespace(&client, "helm-hook-render").await;
    let watched = support::namespace(&client, "helm-hook-render-watched").await;
    let name = hook_name(&ns);
    let watch = format!("watchNamespace={watched}");
    let cases: [RenderCase; 4] = [
        (vec![], vec!["uninstall"], vec!["list"], false),
        (
            vec!["uninstall.policy=RevokeAll"],
            vec!["uninstall", "--revoke-all", "--wait", "--timeout", "4m"],
            vec!["list", "delete"],
            false,
        ),
        (
            vec!["uninstall.policy=RevokeAll", "uninstall.timeout=90s", watch.as_str()],
            vec!["uninstall", "--revoke-all", "--wait", "--timeout", "90s", "--namespace", watched.as_str()],
            vec!["list", "delete"],
            true,
        ),
        (vec!["uninstall.policy=None"], vec![], vec![], false),
    ];
    for (sets, args, verbs, namespaced) in cases {
        let out = template(&client, &ns, &sets).await;
        assert!(out.ok, "helm template {sets:?} failed:\n{}", out.output());
        let hooks: Vec<serde_norway::Value> = documents_from(&out.stdout, "cloudkeys/templates/uninstall-hook.yaml")
            .iter()
            .map(|d| serde_norway::from_str(d).expect("a hook is YAML"))
            .collect();
        if args.is_empty() {
            assert!(hooks.is_empty(), "policy None renders a hook:\n{}", out.stdout);
            continue;
        }
        let kinds: Vec<&str> = hooks.iter().filter_map(|h| h["kind"].as_str()).collect();
        let (role, binding) = if namespaced { ("Role", "RoleBinding") } else { ("ClusterRole", "ClusterRoleBinding") };
        assert_eq!(kinds, vec!["ServiceAccount", role, binding, "Job"], "{sets:?}");
        for h in &hooks {
            let a = &h["metadata"]["annotations"];
            assert_eq!(h["metadata"]["name"].as_str(), Some(name.as_str()));
            assert_eq!(a["helm.sh/hook"].as_str(), Some("pre-delete"), "{h:?}");
            assert_eq!(a["helm.sh/hook-delete-policy"].as_str(), Some("before-hook-creation,hook-succeeded"), "{h:?}");
        }
        let role_doc = &hooks[1];
        if namespaced {
            assert_eq!(role_doc["metadata"]["namespace"].as_str(), Some(watched.as_str()));
        }
        let rules: Vec<PolicyRule> = serde_norway::from_value(role_doc["rules"].clone()).expect("rules");
        let resources: &[&str] =
            if namespaced { &["accesskeys", "keyissuers"] } else { &["accesskeys", "keyissuers", "clusterkeyissuers"] };
        assert_eq!(rules_of(rules), vec![rule(&["cloudkeys.io"], resources, &[], &verbs)], "{sets:?}");
        let job: Job = serde_norway::from_value(hooks[3].clone()).expect("a Job");
        let pod = job.spec.and_then(|s| s.template.spec).expect("pod spec");
        assert_eq!(pod.service_account_name.as_deref(), Some(name.as_str()));
        assert_eq!(pod.containers[0].args.clone().unwrap_or_default(), args, "{sets:?}");
    }
    // The CRDs are left out with crds.enabled=false (what `release_args` sets).
    let out = template(&client, &ns, &[]).await;
    assert!(documents_from(&out.stdout, "cloudkeys/templates/crds.yaml").is_empty(), "CRDs rendered:\n{}", out.stdout);
}

/// (values, the Job's args, the role's verbs, whether the role is namespaced) of one rendering.
type RenderCase<'a> = (Vec<&'a str>, Vec<&'a str>, Vec<&'a str>, bool);

fn rules_of(r: Vec<PolicyRule>) -> Vec<Rule> {
    rules(Some(r))
}

/// A KeyIssuer and two AccessKeys in `team`, issued.
async fn two_keys(client: &Client, team: &str) {
    support::apply_json(
        client,
        team,
        json!({"apiVersion": "cloudkeys.io/v1alpha1", "kind": "KeyIssuer",
        "metadata": {"name": "local"}, "spec": {"local": {}}}),
    )
    .await;
    for name in ["a", "b"] {
        support::apply_json(client, team, support::keys::manifest(name, "local", "local", json!({}), json!({}))).await;
    }
    for name in ["a", "b"] {
        support::keys::wait_issued(client, team, name).await;
    }
}

/// The authorizer goes by the rendered RevokeAll rule: list and delete on the three kinds.
async fn hook_rule_is_rendered(client: &Client, ns: &str) {
    let name = hook_name(ns);
    for verb in ["list", "delete"] {
        for resource in ISSUER_KINDS {
            let resource = format!("{resource}.cloudkeys.io");
            support::eventually(&format!("{verb} {resource} allowed"), WAIT, || async {
                allowed(client, ns, &name, verb, &resource, None, None).await.then_some(())
            })
            .await;
        }
    }
}

const ISSUER_KINDS: [&str; 3] = ["accesskeys", "keyissuers", "clusterkeyissuers"];

/// Sets the one rule of the hook's ClusterRole, and waits until the authorizer goes by it.
async fn hook_rule(client: &Client, ns: &str, resources: &[&str], verbs: &[&str]) {
    let name = hook_name(ns);
    let roles: Api<ClusterRole> = cluster(client);
    let mut role = must(&roles, &name).await;
    let strings = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    role.rules = Some(vec![PolicyRule {
        api_groups: Some(vec!["cloudkeys.io".into()]),
        resources: Some(strings(resources)),
        verbs: strings(verbs),
        ..Default::default()
    }]);
    roles.replace(&name, &PostParams::default(), &role).await.expect("hook ClusterRole replaced");
    for verb in ["list", "delete"] {
        for resource in ISSUER_KINDS {
            let want = verbs.contains(&verb) && resources.contains(&resource);
            let resource = format!("{resource}.cloudkeys.io");
            support::eventually(&format!("{verb} {resource} allowed: {want}"), WAIT, || async {
                (allowed(client, ns, &name, verb, &resource, None, None).await == want).then_some(())
            })
            .await;
        }
    }
}

/// The rendered hook's command, run as the rendered hook's ServiceAccount with its rendered
/// RBAC, against AccessKeys the chart's operator issued: enough to refuse (list) and to revoke
/// everything (list, delete); without either verb it fails, refused by the apiserver.
#[tokio::test]
async fn the_uninstall_hook_works_with_nothing_but_its_rbac_and_fails_without_a_verb() {
    let _alone = CLUSTER_WIDE_OPERATOR.lock().await;
    let client = own_cluster().await;
    let ns = support::namespace(&client, "helm-hook-rbac").await;
    let team = support::namespace(&client, "helm-hook-rbac-team").await;
    let out = template(&client, &ns, &["uninstall.policy=RevokeAll"]).await;
    assert!(out.ok, "helm template failed:\n{}", out.output());
    let hooks: Vec<serde_json::Value> = documents_from(&out.stdout, "cloudkeys/templates/uninstall-hook.yaml")
        .iter()
        .map(|d| serde_norway::from_str(d).expect("a hook is YAML"))
        .collect();
    // The objects Helm would create for the hook, as rendered (the Job is run by hand below).
    let mut job = None;
    let mut rendered_role = None;
    for hook in hooks {
        let kind = hook["kind"].as_str().expect("kind").to_string();
        if kind == "Job" {
            job = Some(serde_json::from_value::<Job>(hook).expect("a Job"));
            continue;
        }
        let (group, version) = hook["apiVersion"].as_str().expect("apiVersion").split_once('/').unwrap_or(("", "v1"));
        let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, &kind));
        let api: Api<DynamicObject> = if kind.starts_with("Cluster") {
            Api::all_with(client.clone(), &resource)
        } else {
            Api::namespaced_with(client.clone(), &ns, &resource)
        };
        if kind == "ClusterRole" {
            rendered_role = Some(serde_json::from_value::<ClusterRole>(hook.clone()).expect("a ClusterRole"));
        }
        let obj: DynamicObject = serde_json::from_value(hook).expect("an object");
        api.create(&PostParams::default(), &obj).await.unwrap_or_else(|e| panic!("{kind} not created: {e}"));
    }
    let job = job.expect("a hook Job");
    let rendered_role = rendered_role.expect("a hook ClusterRole");
    let revoke_all = job.spec.as_ref().and_then(|s| s.template.spec.as_ref()).expect("pod").containers[0]
        .args
        .clone()
        .unwrap_or_default();
    let refuse = vec!["uninstall".to_string()];

    install(&ns, &ns, &["uninstall.policy=None"]);
    let op = ChartOperator::start(&client, &ns, &format!("{ns}-cloudkeys")).await;
    two_keys(&client, &team).await;
    let accesskeys: Api<AccessKey> = in_ns(&client, &team);
    let kubeconfig = service_account_kubeconfig(&client, &ns, &hook_name(&ns)).await;

    let issuers: Api<KeyIssuer> = in_ns(&client, &team);
    let untouched = || async {
        for name in ["a", "b"] {
            assert!(must(&accesskeys, name).await.metadata.deletion_timestamp.is_none(), "{name} was deleted");
        }
        assert!(must(&issuers, "local").await.metadata.deletion_timestamp.is_none(), "the KeyIssuer was deleted");
    };
    let forbidden = |run: &HookRun| run.code == 1 && run.stderr.to_lowercase().contains("forbidden");

    // Policy Refuse's role: list. The command lists what is left and exits 1, refused nothing.
    hook_rule(&client, &ns, &ISSUER_KINDS, &["list"]).await;
    let run = run_cloudkeys_as(&kubeconfig, &refuse).await;
    assert!(run.code == 1 && !forbidden(&run), "{run:?}");
    for (kind, name) in [("AccessKey", "a"), ("AccessKey", "b"), ("KeyIssuer", "local")] {
        let listed =
            run.stdout.lines().any(|l| l.starts_with(kind) && l.contains(&team) && l.contains(&format!(" {name} ")));
        assert!(listed, "{kind} {name} not listed: {run:?}");
    }
    untouched().await;
    // Without list, or without one of the kinds: refused by the apiserver.
    for (resources, verbs) in [(&ISSUER_KINDS[..], &["delete"][..]), (&ISSUER_KINDS[..2], &["list"][..])] {
        hook_rule(&client, &ns, resources, verbs).await;
        let run = run_cloudkeys_as(&kubeconfig, &refuse).await;
        assert!(forbidden(&run), "{resources:?} {verbs:?}: not refused by the apiserver: {run:?}");
    }
    // RevokeAll without delete, or without one of the kinds: refused, and nothing is deleted.
    for (resources, verbs) in [
        (&ISSUER_KINDS[..], &["list"][..]),
        (&["accesskeys", "keyissuers"][..], &["list", "delete"][..]),
        (&["accesskeys", "clusterkeyissuers"][..], &["list", "delete"][..]),
        (&["keyissuers", "clusterkeyissuers"][..], &["list", "delete"][..]),
    ] {
        hook_rule(&client, &ns, resources, verbs).await;
        let run = run_cloudkeys_as(&kubeconfig, &revoke_all).await;
        assert!(forbidden(&run), "{resources:?} {verbs:?}: not refused by the apiserver: {run:?}");
        untouched().await;
    }
    // The rendered role: every key revoked by the operator, every AccessKey and the held
    // KeyIssuer gone, and the namespace can be deleted.
    let roles: Api<ClusterRole> = cluster(&client);
    let current = must(&roles, &hook_name(&ns)).await;
    roles
        .replace(&hook_name(&ns), &PostParams::default(), &ClusterRole { metadata: current.metadata, ..rendered_role })
        .await
        .expect("rendered ClusterRole restored");
    hook_rule_is_rendered(&client, &ns).await;
    let run = run_cloudkeys_as(&kubeconfig, &revoke_all).await;
    assert_eq!(run.code, 0, "{run:?}");
    for name in ["a", "b"] {
        assert!(get(&accesskeys, name).await.is_none(), "{name} left after --wait");
    }
    assert!(get(&issuers, "local").await.is_none(), "the KeyIssuer is left after --wait");
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = cluster(&client);
    namespaces.delete(&team, &DeleteParams::default()).await.expect("namespace delete accepted");
    wait_gone(&namespaces, &team).await;
    op.stop_and_check();
    for (kind, name) in
        [("serviceaccount", hook_name(&ns)), ("clusterrole", hook_name(&ns)), ("clusterrolebinding", hook_name(&ns))]
    {
        let mut args = vec!["delete", kind, name.as_str()];
        if kind == "serviceaccount" {
            args.extend(["-n", ns.as_str()]);
        }
        let (ok, _, err) = support::run_kubectl(&args);
        assert!(ok, "kubectl delete {kind}: {err}");
    }
    uninstall_ok(&client, &ns).await;
}

/// `helm uninstall` itself: the pre-delete hook runs while the operator's Deployment is still
/// there. Policy Refuse fails the uninstall and keeps everything; once the AccessKeys are gone
/// (`cloudkeys uninstall --revoke-all --wait`, as the hook's log says) it goes ahead. Policy
/// RevokeAll revokes every key, then the release goes, the hook's objects too, and the tenants'
/// namespace can be deleted.
#[tokio::test]
async fn helm_uninstall_refuses_with_access_keys_and_revokes_them_all_with_revoke_all() {
    let _alone = CLUSTER_WIDE_OPERATOR.lock().await;
    let client = own_cluster().await;
    let kubeconfig = support::control_plane().kubeconfig.to_string_lossy().into_owned();

    // Refuse (the default).
    let ns = support::namespace(&client, "helm-hook-refuse").await;
    let team = support::namespace(&client, "helm-hook-refuse-team").await;
    let name = format!("{ns}-cloudkeys");
    install(&ns, &ns, &[]);
    let op = ChartOperator::start(&client, &ns, &name).await;
    two_keys(&client, &team).await;
    let (out, hook) = uninstall(&client, &ns).await;
    let hook = hook.expect("the pre-delete hook ran");
    assert!(!out.ok, "helm uninstall went ahead with AccessKeys left:\n{}", out.output());
    assert!(hook.operator_present, "the operator was gone before the hook ran");
    assert_eq!((hook.code, hook.args.clone()), (1, vec!["uninstall".to_string()]), "{hook:?}");
    assert!(hook.stdout.contains(&team) && hook.stdout.contains("--revoke-all"), "{hook:?}");
    assert!(hook.stdout.lines().any(|l| l.starts_with("KeyIssuer") && l.contains(" local ")), "{hook:?}");
    must(&in_ns::<Deployment>(&client, &ns), &name).await;
    must(&in_ns::<Job>(&client, &ns), &hook_name(&ns)).await; // kept for `kubectl logs`
    let accesskeys: Api<AccessKey> = in_ns(&client, &team);
    for key in ["a", "b"] {
        assert!(must(&accesskeys, key).await.metadata.deletion_timestamp.is_none(), "{key} deleted by Refuse");
    }
    // What the hook's log says to do, then the uninstall again: the failed Job is replaced.
    let run = run_cloudkeys_as(
        Path::new(&kubeconfig),
        &["uninstall", "--revoke-all", "--wait", "--timeout", "2m"].map(String::from),
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    let (out, hook) = uninstall(&client, &ns).await;
    assert!(out.ok, "helm uninstall failed once the AccessKeys were gone:\n{}\n{hook:?}", out.output());
    let hook = hook.expect("the pre-delete hook ran again");
    assert_eq!((hook.code, hook.operator_present), (0, true), "{hook:?}");
    op.stop_and_check_until(Some(hook.ended));
    wait_gone(&in_ns::<Deployment>(&client, &ns), &name).await;
    wait_gone(&in_ns::<Job>(&client, &ns), &hook_name(&ns)).await;

    // RevokeAll.
    let ns = support::namespace(&client, "helm-hook-revoke").await;
    let team = support::namespace(&client, "helm-hook-revoke-team").await;
    let name = format!("{ns}-cloudkeys");
    install(&ns, &ns, &["uninstall.policy=RevokeAll"]);
    let op = ChartOperator::start(&client, &ns, &name).await;
    two_keys(&client, &team).await;
    let (out, hook) = uninstall(&client, &ns).await;
    let hook = hook.expect("the pre-delete hook ran");
    assert!(out.ok, "helm uninstall failed:\n{}\n{hook:?}", out.output());
    assert!(hook.operator_present, "the operator was gone before the hook ran");
    assert_eq!(hook.code, 0, "{hook:?}");
    assert_eq!(&hook.args[..3], ["uninstall", "--revoke-all", "--wait"]);
    let accesskeys: Api<AccessKey> = in_ns(&client, &team);
    for key in ["a", "b"] {
        assert!(get(&accesskeys, key).await.is_none(), "{key} left after the uninstall");
    }
    assert!(get(&in_ns::<KeyIssuer>(&client, &team), "local").await.is_none(), "the held KeyIssuer is left");
    op.stop_and_check_until(Some(hook.ended));
    wait_gone(&in_ns::<Deployment>(&client, &ns), &name).await;
    let hook_objects = hook_name(&ns);
    wait_gone(&in_ns::<Job>(&client, &ns), &hook_objects).await;
    wait_gone(&in_ns::<ServiceAccount>(&client, &ns), &hook_objects).await;
    wait_gone(&cluster::<ClusterRole>(&client), &hook_objects).await;
    wait_gone(&cluster::<ClusterRoleBinding>(&client), &hook_objects).await;
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = cluster(&client);
    namespaces.delete(&team, &DeleteParams::default()).await.expect("namespace delete accepted");
    wait_gone(&namespaces, &team).await;
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
            "rbac.argoRollouts=true",
            "prometheus.rules.enabled=true",
            "prometheus.rules.labels.release=prometheus",
            "prometheus.rules.for.CloudkeysAccessKeyNotReady=30m",
            "prometheus.rules.alertLabels.team=platform",
            "grafana.dashboard.enabled=true",
            "grafana.dashboard.namespace=monitoring",
            "grafana.dashboard.annotations.grafana_folder=Platform",
            "podSecurityContext.runAsUser=65532",
            "podSecurityContext.runAsGroup=65532",
            "podSecurityContext.fsGroup=65532",
            "securityContext.runAsUser=65532",
        ][..],
        &[
            "podDisruptionBudget.enabled=true",
            "podDisruptionBudget.minAvailable=50%",
            "serviceAccount.create=false",
            "serviceAccount.name=existing",
        ][..],
        &["uninstall.policy=RevokeAll", "uninstall.timeout=15m", "crds.keep=false"][..],
        &["uninstall.policy=RevokeAll", "watchNamespace=team-a"][..],
        &["uninstall.policy=None", "crds.enabled=false"][..],
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
        ("uninstall.policy=Never", "/uninstall/policy"),
        ("uninstall.timeout=soon", "/uninstall/timeout"),
        ("crds.enabled=yes", "/crds/enabled"),
        ("podSecurityContext.runAsUser=0", "/podSecurityContext/runAsUser"),
        ("podSecurityContext.fsGroup=staff", "/podSecurityContext/fsGroup"),
        ("securityContext.privileged=true", "privileged"),
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
    let _alone = CLUSTER_WIDE_OPERATOR.lock().await;
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
    uninstall_ok(&client, &ns).await;
}

#[tokio::test]
async fn install_upgrade_and_uninstall_in_the_real_apiserver() {
    let _alone = CLUSTER_WIDE_OPERATOR.lock().await;
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
    // No fixed IDs (OpenShift's restricted-v2 assigns them): see the pod security test below.
    assert_eq!((sc.run_as_user, sc.run_as_group), (None, None));
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
    uninstall_ok(&client, &release).await;
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
    uninstall_ok(&client, &ns).await;

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
    uninstall_ok(&client, &ns).await;
    wait_gone(&in_ns::<Role>(&client, "default"), &format!("{name}-events")).await;
    wait_gone(&in_ns::<Role>(&client, &credentials), &format!("{name}-credentials")).await;
}

#[tokio::test]
async fn template_renders_the_watch_namespace_variant() {
    let client = own_cluster().await;
    let ns = support::namespace(&client, "helm-template").await;
    let watched = support::namespace(&client, "helm-template-watched").await;
    let out = template(&client, &ns, &[&format!("watchNamespace={watched}")]).await;
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
    let original = must(&roles, &name).await;
    let mut role = original.clone();
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

    // The verb back: the operator issues the key, and revokes it when the AccessKey is deleted, so
    // that no AccessKey is left for the uninstall hook (or another test's) to find.
    let current = must(&roles, &name).await;
    let restored = ClusterRole { metadata: current.metadata, ..original };
    roles.replace(&name, &PostParams::default(), &restored).await.expect("ClusterRole restored");
    support::keys::wait_issued(&client, &team, "k").await;
    support::keys::delete_access_key(&client, &team, "k").await;
    support::keys::wait_gone(&client, &team, "k").await;
    delete_key_issuer(&client, &team).await;
    op.kill();
    uninstall_ok(&client, &ns).await;
}

// ---------------------------------------------------------------------------------------------
// Pod security, the values schema, Artifact Hub metadata.

/// The rendered documents of `helm template` of this kind, whatever template they came from.
fn rendered(manifest: &str, kind: &str) -> Vec<serde_json::Value> {
    serde_norway::Deserializer::from_str(manifest)
        .filter_map(|d| serde_json::Value::deserialize(d).ok())
        .filter(|d| d["kind"] == kind)
        .collect()
}

/// The pod spec of the operator's Deployment and of the uninstall hook's Job, rendered with `sets`.
async fn pod_specs(client: &Client, release: &str, sets: &[&str]) -> Vec<(String, serde_json::Value)> {
    let out = template(client, release, sets).await;
    assert!(out.ok, "helm template {sets:?} failed:\n{}", out.output());
    let mut pods = Vec::new();
    for kind in ["Deployment", "Job"] {
        let docs = rendered(&out.stdout, kind);
        assert_eq!(docs.len(), 1, "one {kind} rendered:\n{}", out.stdout);
        pods.push((kind.to_string(), docs[0]["spec"]["template"]["spec"].clone()));
    }
    pods
}

/// OpenShift's restricted-v2 admits a Pod that fixes no UID or GID outside the namespace's range:
/// by default none is fixed (the image's numeric user runs, which runAsNonRoot needs), and every
/// other restriction stays; the values fix them when wanted.
#[tokio::test]
async fn the_pods_fix_no_user_or_group_unless_the_values_do_and_stay_restricted() {
    let client = own_cluster().await;
    let ns = support::namespace(&client, "helm-pod-security").await;
    for (kind, pod) in pod_specs(&client, &ns, &[]).await {
        let security = &pod["securityContext"];
        assert_eq!(security["runAsNonRoot"], json!(true), "{kind}: {pod}");
        assert_eq!(security["seccompProfile"], json!({"type": "RuntimeDefault"}), "{kind}: {pod}");
        for id in ["runAsUser", "runAsGroup", "fsGroup", "supplementalGroups"] {
            assert!(security.get(id).is_none(), "{kind} fixes {id} by default: {security}");
        }
        let container = &pod["containers"][0]["securityContext"];
        assert_eq!(
            container,
            &json!({"runAsNonRoot": true, "readOnlyRootFilesystem": true, "allowPrivilegeEscalation": false,
                "privileged": false, "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}),
            "{kind}'s container"
        );
    }
    let dockerfile = std::fs::read_to_string(support::repo_root().join("Dockerfile")).expect("Dockerfile");
    assert!(dockerfile.lines().any(|l| l == "USER 65532:65532"), "runAsNonRoot needs the image's user to be numeric");

    let sets = [
        "podSecurityContext.runAsUser=1000",
        "podSecurityContext.runAsGroup=1000",
        "podSecurityContext.fsGroup=2000",
        "securityContext.runAsUser=1001",
    ];
    for (kind, pod) in pod_specs(&client, &ns, &sets).await {
        let security = &pod["securityContext"];
        assert_eq!(
            security,
            &json!({"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"},
                "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 2000}),
            "{kind}"
        );
        let container = &pod["containers"][0]["securityContext"];
        assert_eq!(container["runAsUser"], json!(1001), "{kind}: {container}");
        assert_eq!(container["readOnlyRootFilesystem"], json!(true), "{kind}: {container}");
        assert_eq!(container["capabilities"], json!({"drop": ["ALL"]}), "{kind}: {container}");
    }
}

/// Walks the values of values.yaml under `schema`: every key is declared (or the object is a
/// free-form map whose `additionalProperties` says what its values are), and every object with
/// declared keys refuses others. Returns what is wrong, by path.
fn undeclared(value: &serde_json::Value, schema: &serde_json::Value, path: &str, wrong: &mut Vec<String>) {
    let Some(map) = value.as_object() else { return };
    let properties = schema["properties"].as_object();
    if properties.is_some() && schema["additionalProperties"] != json!(false) {
        wrong.push(format!("{path}: declares its keys but lacks additionalProperties: false"));
    }
    for (key, value) in map {
        let at = format!("{path}/{key}");
        match (properties.and_then(|p| p.get(key)), &schema["additionalProperties"]) {
            (Some(declared), _) => undeclared(value, declared, &at, wrong),
            (None, open) if open.is_object() => undeclared(value, open, &at, wrong),
            (None, _) => wrong.push(format!("{at}: in values.yaml, not in values.schema.json")),
        }
    }
}

#[test]
fn the_values_schema_declares_every_value_and_refuses_unknown_keys() {
    let values: serde_json::Value =
        serde_norway::from_str(&std::fs::read_to_string(chart().join("values.yaml")).expect("values.yaml"))
            .expect("values.yaml is YAML");
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(chart().join("values.schema.json")).expect("schema"))
            .expect("values.schema.json is JSON");
    let mut wrong = Vec::new();
    undeclared(&values, &schema, "", &mut wrong);
    assert!(wrong.is_empty(), "values.schema.json does not cover values.yaml:\n{}", wrong.join("\n"));
    // The walk can fail: a key the schema does not know is found.
    let mut extra = values.clone();
    extra["podSecurityContext"]["privileged"] = json!(true);
    let mut found = Vec::new();
    undeclared(&extra, &schema, "", &mut found);
    assert_eq!(found, ["/podSecurityContext/privileged: in values.yaml, not in values.schema.json"]);
}

/// An Artifact Hub annotation of Chart.yaml, a YAML document in a string.
fn artifact_hub(meta: &serde_norway::Value, name: &str) -> serde_json::Value {
    let text = meta["annotations"][&format!("artifacthub.io/{name}")]
        .as_str()
        .unwrap_or_else(|| panic!("Chart.yaml lacks the annotation artifacthub.io/{name}"));
    serde_norway::from_str(text).unwrap_or_else(|e| panic!("artifacthub.io/{name} is not YAML: {e}"))
}

#[test]
fn the_artifact_hub_metadata_lists_the_charts_crds_with_valid_examples_and_the_crates_license() {
    let meta: serde_norway::Value =
        serde_norway::from_str(&std::fs::read_to_string(chart().join("Chart.yaml")).expect("Chart.yaml"))
            .expect("YAML");
    assert_eq!(meta["annotations"]["artifacthub.io/license"].as_str(), Some(env!("CARGO_PKG_LICENSE")));
    for url in [&meta["home"], &meta["sources"][0]] {
        assert!(url.as_str().is_some_and(|u| u.starts_with("https://")), "home and sources are URLs: {url:?}");
    }
    let links = artifact_hub(&meta, "links");
    let links = links.as_array().expect("links: a list");
    assert!(!links.is_empty());
    for link in links {
        assert!(link["name"].as_str().is_some_and(|n| !n.is_empty()), "{link}");
        assert!(link["url"].as_str().is_some_and(|u| u.starts_with("https://")), "{link}");
    }
    let images = artifact_hub(&meta, "images");
    let app_version = meta["appVersion"].as_str().expect("appVersion");
    assert_eq!(images[0]["image"], json!(format!("ghcr.io/cloudkeys/cloudkeys:{app_version}")), "the default image");

    // The CRDs the chart ships (files/, byte for byte crds/: see the test above).
    let shipped = std::fs::read_to_string(chart().join("files/cloudkeys.io_crds.yaml")).expect("the chart's CRDs");
    let mut crds: Vec<(String, String, String)> = serde_norway::Deserializer::from_str(&shipped)
        .map(|d| serde_json::Value::deserialize(d).expect("a CRD"))
        .flat_map(|crd| {
            let versions = crd["spec"]["versions"].as_array().cloned().unwrap_or_default();
            versions.into_iter().filter(|v| v["served"] == json!(true)).map(move |v| {
                let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
                (text(&crd["spec"]["names"]["kind"]), text(&v["name"]), text(&crd["metadata"]["name"]))
            })
        })
        .collect();
    crds.sort();
    let listed = artifact_hub(&meta, "crds");
    let mut annotated: Vec<(String, String, String)> = listed
        .as_array()
        .expect("crds: a list")
        .iter()
        .map(|c| {
            for field in ["displayName", "description"] {
                assert!(c[field].as_str().is_some_and(|d| !d.is_empty()), "{field} of {c}");
            }
            let text = |f: &str| c[f].as_str().unwrap_or_default().to_string();
            (text("kind"), text("version"), text("name"))
        })
        .collect();
    annotated.sort();
    assert_eq!(annotated, crds, "artifacthub.io/crds lists the CRDs the chart ships");

    // One example per kind, each one of examples/ and valid for its kind's Rust type.
    let examples: Vec<serde_json::Value> = support::example_files()
        .iter()
        .map(|f| serde_norway::from_str(&std::fs::read_to_string(f).expect("example")).expect("example YAML"))
        .collect();
    let shown = artifact_hub(&meta, "crdsExamples");
    let shown = shown.as_array().expect("crdsExamples: a list");
    let mut kinds: Vec<&str> = shown.iter().filter_map(|e| e["kind"].as_str()).collect();
    kinds.sort();
    let mut want: Vec<&str> = crds.iter().map(|(kind, _, _)| kind.as_str()).collect();
    want.sort();
    assert_eq!(kinds, want, "one example per kind");
    for example in shown {
        assert!(examples.contains(example), "not one of examples/: {example}");
        let parsed = match example["kind"].as_str() {
            Some("AccessKey") => serde_json::from_value::<AccessKey>(example.clone()).map(drop),
            Some("KeyIssuer") => serde_json::from_value::<KeyIssuer>(example.clone()).map(drop),
            _ => serde_json::from_value::<ClusterKeyIssuer>(example.clone()).map(drop),
        };
        parsed.unwrap_or_else(|e| panic!("the example does not parse as its kind: {e}\n{example}"));
    }
}

/// `rbac.argoRollouts=true` grants list, watch and patch on Argo Rollouts, where the other
/// namespaced rules go (the ClusterRole, or the watched namespace's Role), and nothing else;
/// by default (checked exactly by the install test) there is no rule for them.
#[tokio::test]
async fn argo_rollouts_rbac_is_granted_only_with_its_value() {
    let client = own_cluster().await;
    let rollouts = rule(&["argoproj.io"], &["rollouts"], &[], &["list", "watch", "patch"]);
    let rendered_rules = |stdout: &str, kind: &str| -> Vec<Rule> {
        let docs: Vec<serde_norway::Value> = serde_norway::Deserializer::from_str(stdout)
            .filter_map(|d| serde_norway::Value::deserialize(d).ok())
            .filter(|v| !v.is_null())
            .collect();
        let role = docs
            .iter()
            .find(|d| {
                d["kind"].as_str() == Some(kind)
                    && d["metadata"]["name"].as_str().is_some_and(|n| n.ends_with("-cloudkeys"))
            })
            .unwrap_or_else(|| panic!("a {kind} named <release>-cloudkeys:\n{stdout}"));
        let parsed: Vec<PolicyRule> = serde_norway::from_value(role["rules"].clone()).expect("rules");
        rules(Some(parsed))
    };

    let ns = support::namespace(&client, "helm-rollouts").await;
    let out = template(&client, &ns, &["rbac.argoRollouts=true"]).await;
    assert!(out.ok, "helm template failed:\n{}", out.output());
    let mut want = [namespaced_rules(), cluster_issuer_rules()].concat();
    want.push(rollouts.clone());
    assert_eq!(rendered_rules(&out.stdout, "ClusterRole"), sorted(want));

    let ns = support::namespace(&client, "helm-rollouts-ns").await;
    let watched = support::namespace(&client, "helm-rollouts-ns-watched").await;
    let out = template(&client, &ns, &["rbac.argoRollouts=true", &format!("watchNamespace={watched}")]).await;
    assert!(out.ok, "helm template failed:\n{}", out.output());
    let mut want = namespaced_rules();
    want.push(rollouts);
    assert_eq!(rendered_rules(&out.stdout, "Role"), sorted(want));
    assert_eq!(rendered_rules(&out.stdout, "ClusterRole"), sorted(cluster_issuer_rules()));
}
