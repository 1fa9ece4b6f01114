//! A real Kubernetes control plane for the integration tests.
//!
//! `make test` starts one etcd + kube-apiserver + kube-controller-manager for the whole run
//! (`scripts/test.sh`) and names it in `CLOUDKEYS_TEST_CONTROL_PLANE`; every test gets a
//! namespace of its own in it. Run without it (`cargo test --test …`), a test process starts a
//! control plane of its own on free loopback ports with `scripts/control-plane.sh`, which stops it
//! and removes its state when the process exits. Cluster-scoped objects are seen by every
//! test's operator, so tests name theirs after their namespace. Tests that disturb the control
//! plane as a whole (restarting kube-apiserver, judging every cluster-wide object, an operator
//! watching every namespace, objects with fixed names) take their own control plane in any case:
//! [`own_control_plane`].

#![allow(dead_code)] // each test binary uses a different part of this module

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

pub const FIELD_MANAGER: &str = "cloudkeys-tests";

/// The directory of a running control plane that the tests of this run share.
pub const SHARED_CONTROL_PLANE: &str = "CLOUDKEYS_TEST_CONTROL_PLANE";

pub struct ControlPlane {
    pub dir: PathBuf,
    pub kubeconfig: PathBuf,
    /// Started by this process, for it alone.
    pub own: bool,
}

static CONTROL_PLANE: OnceLock<ControlPlane> = OnceLock::new();

pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn script() -> PathBuf {
    repo_root().join("scripts/control-plane.sh")
}

/// The control plane of this test process: the run's shared one if there is one, else one of
/// its own, started on first use.
pub fn control_plane() -> &'static ControlPlane {
    CONTROL_PLANE.get_or_init(|| match std::env::var_os(SHARED_CONTROL_PLANE) {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            assert!(dir.join("kubeconfig").is_file(), "{SHARED_CONTROL_PLANE}={} holds no kubeconfig", dir.display());
            ControlPlane { kubeconfig: dir.join("kubeconfig"), dir, own: false }
        }
        None => start_own(),
    })
}

/// A control plane for this test process alone, even when the run shares one: for a test that
/// restarts kube-apiserver, or asserts on every cluster-wide object. Call it before anything
/// else in the process touches the control plane.
pub fn own_control_plane() -> &'static ControlPlane {
    let cp = CONTROL_PLANE.get_or_init(start_own);
    assert!(cp.own, "this process already uses the shared control plane: call own_control_plane() first");
    cp
}

fn start_own() -> ControlPlane {
    let dir = std::env::temp_dir().join(format!("cloudkeys-cp-{}", std::process::id()));
    let out = Command::new(script())
        .arg("start")
        .arg(&dir)
        .arg(std::process::id().to_string())
        .output()
        .expect("cannot run scripts/control-plane.sh");
    if !out.status.success() {
        panic!(
            "the test control plane did not start:\n{}\n\
             If the binaries are missing, build them once with `make control-plane` \
             (or `scripts/control-plane.sh deps && scripts/control-plane.sh build`).",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    ControlPlane { kubeconfig: dir.join("kubeconfig"), dir, own: true }
}

/// Every manifest file under examples/, sorted.
pub fn example_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![repo_root().join("examples")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("examples/ readable") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// Tests of one process that each run an operator watching every namespace take turns: on a
/// control plane they share, two such operators would both act on each test's objects. (Under
/// cargo-nextest every test has a process of its own; plain `cargo test` runs a file's tests in
/// one.)
pub async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    TURN.lock().await
}

/// Kills this test process's kube-apiserver (SIGKILL) and, after `down`, starts it again with the
/// same flags and data, as a crash or a control-plane upgrade would; returns once it is ready.
pub fn restart_apiserver(down: Duration) {
    let cp = control_plane();
    assert!(cp.own, "restarting kube-apiserver needs own_control_plane(): other tests share this one");
    let out = Command::new(script())
        .arg("restart-apiserver")
        .arg(&cp.dir)
        .arg(down.as_secs().to_string())
        .output()
        .expect("cannot run scripts/control-plane.sh");
    assert!(out.status.success(), "kube-apiserver did not come back:\n{}", String::from_utf8_lossy(&out.stderr));
}

/// Path of the kubectl built together with the control plane.
pub fn kubectl() -> PathBuf {
    let out = Command::new(script()).arg("bin-dir").output().expect("cannot run scripts/control-plane.sh");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("kubectl")
}

/// Runs the control plane's kubectl against the test cluster; returns (success, stdout, stderr).
pub fn run_kubectl(args: &[&str]) -> (bool, String, String) {
    let cp = control_plane();
    // A fresh discovery cache per call: kubectl would otherwise keep a view from before the CRDs.
    let cache = tempfile::tempdir().expect("temp dir");
    let out = Command::new(kubectl())
        .arg("--kubeconfig")
        .arg(&cp.kubeconfig)
        .arg("--cache-dir")
        .arg(cache.path())
        .args(args)
        .output()
        .expect("cannot run kubectl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A client for the test cluster, as the cluster admin.
pub async fn client() -> Client {
    let cp = control_plane();
    let kubeconfig = Kubeconfig::read_from(&cp.kubeconfig).expect("kubeconfig readable");
    let config =
        Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await.expect("kubeconfig valid");
    Client::try_from(config).expect("client builds")
}

/// Creates cloudkeys' CRDs (once per control plane) and waits until the apiserver serves them.
///
/// They are created, not server-side applied: a 1.20 apiserver's typed patches do not know
/// `x-kubernetes-validations` (its schema handling ignores the field on create, as Helm relies on).
pub async fn install_crds(client: &Client) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in cloudkeys::api::crds() {
        let name = crd.metadata.name.clone().expect("CRD has a name");
        match api.create(&PostParams::default(), &crd).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => panic!("CRD {name} not created: {e}"),
        }
        let established = kube::runtime::wait::await_condition(
            api.clone(),
            &name,
            kube::runtime::wait::conditions::is_crd_established(),
        );
        tokio::time::timeout(Duration::from_secs(30), established)
            .await
            .expect("CRD established in time")
            .expect("CRD watch works");
    }
}

/// A fresh namespace for one test, named after it.
pub async fn namespace(client: &Client, test: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let slug: String =
        test.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).take(40).collect();
    // Other test processes share the control plane: the process id keeps their names apart.
    let name = format!("{}-{}-{}", slug.trim_matches('-'), std::process::id(), N.fetch_add(1, Ordering::Relaxed));
    let ns: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).expect("namespace literal");
    Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await.expect("namespace created");
    name
}

pub mod exoscale;
pub mod keys;
pub mod leaks;
pub mod operator;

/// Polls `probe` until it returns `Some`, for at most `timeout`; panics with `what` otherwise.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    eventually_explained(what, timeout, || {
        let probed = probe();
        async move { probed.await.ok_or_else(|| "not yet".to_string()) }
    })
    .await
}

/// Like [`eventually`], for a probe that says why it is not there yet: the last reason is in the
/// panic message, so a timeout in CI shows what was missing.
pub async fn eventually_explained<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let why = match probe().await {
            Ok(v) => return v,
            Err(why) => why,
        };
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}; last seen: {why}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Applies a manifest (server-side, as the tests' field manager) into `ns`.
pub async fn apply_json(client: &Client, ns: &str, manifest: serde_json::Value) {
    use kube::api::{DynamicObject, Patch, PatchParams};
    use kube::core::{ApiResource, GroupVersionKind};
    let api_version = manifest["apiVersion"].as_str().expect("apiVersion");
    let kind = manifest["kind"].as_str().expect("kind");
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind));
    let api: Api<DynamicObject> = if kind == "ClusterKeyIssuer" {
        Api::all_with(client.clone(), &resource)
    } else {
        Api::namespaced_with(client.clone(), ns, &resource)
    };
    let name = manifest["metadata"]["name"].as_str().expect("name");
    api.patch(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&manifest))
        .await
        .unwrap_or_else(|e| panic!("cannot apply {kind} {name}: {e}"));
}

/// Creates a Secret `name` in `ns` from string data (credentials, or someone else's Secret).
pub async fn create_secret(client: &Client, ns: &str, name: &str, string_data: serde_json::Value) {
    let secret: k8s_openapi::api::core::v1::Secret =
        serde_json::from_value(serde_json::json!({"metadata": {"name": name}, "stringData": string_data}))
            .expect("Secret literal");
    Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap_or_else(|e| panic!("Secret {ns}/{name} not created: {e}"));
}
