//! The CRDs against a real kube-apiserver: they install, `kubectl get cloudkeys` serves them,
//! every example is accepted and invalid manifests are refused with messages naming the field.

use crate::support;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::Client;
use serde_json::{json, Value};

async fn setup(test: &str) -> (Client, String) {
    // The examples hold ClusterKeyIssuers with fixed names, one of them on the real Exoscale API:
    // in a shared cluster every test's operator would check them. A cluster of its own.
    support::own_control_plane();
    let client = support::client().await;
    support::install_crds(&client).await;
    let ns = support::namespace(&client, test).await;
    (client, ns)
}

/// Server-side applies one manifest (into `ns` when namespaced); the apiserver's error message on refusal.
async fn apply(client: &Client, ns: &str, manifest: &Value) -> Result<(), String> {
    let kind = manifest["kind"].as_str().expect("manifest has a kind");
    let gvk = GroupVersionKind::gvk("cloudkeys.io", "v1alpha1", kind);
    let resource = ApiResource::from_gvk(&gvk);
    let api: Api<DynamicObject> = if kind == "ClusterKeyIssuer" {
        Api::all_with(client.clone(), &resource)
    } else {
        Api::namespaced_with(client.clone(), ns, &resource)
    };
    let name = manifest["metadata"]["name"].as_str().expect("manifest has a name");
    let params = PatchParams::apply(support::FIELD_MANAGER).force();
    match api.patch(name, &params, &Patch::Apply(manifest)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) => Err(status.message.clone()),
        Err(other) => panic!("unexpected client error: {other}"),
    }
}

fn access_key(spec: Value) -> Value {
    json!({
        "apiVersion": "cloudkeys.io/v1alpha1",
        "kind": "AccessKey",
        "metadata": {"name": "invalid"},
        "spec": spec,
    })
}

fn key_issuer(spec: Value) -> Value {
    json!({
        "apiVersion": "cloudkeys.io/v1alpha1",
        "kind": "KeyIssuer",
        "metadata": {"name": "invalid"},
        "spec": spec,
    })
}

async fn assert_refused(client: &Client, ns: &str, manifest: Value, must_mention: &[&str]) {
    let message = apply(client, ns, &manifest)
        .await
        .expect_err(&format!("the apiserver accepted an invalid manifest: {manifest}"));
    for needle in must_mention {
        assert!(message.contains(needle), "refusal of {manifest} does not mention {needle:?}: {message}");
    }
}

#[tokio::test]
async fn crds_install_and_kubectl_get_cloudkeys_lists_every_kind() {
    let (client, ns) = setup("kubectl-get-cloudkeys").await;
    let local_issuer = json!({"apiVersion": "cloudkeys.io/v1alpha1", "kind": "KeyIssuer",
        "metadata": {"name": "local"}, "spec": {"local": {}}});
    let key = access_key(json!({"issuerRef": {"name": "local"}, "secretName": "demo", "local": {}}));
    apply(&client, &ns, &local_issuer).await.expect("KeyIssuer accepted");
    apply(&client, &ns, &key).await.expect("AccessKey accepted");

    let (ok, out, err) = support::run_kubectl(&["get", "cloudkeys", "-n", &ns]);
    assert!(ok, "kubectl get cloudkeys failed: {err}");
    assert!(out.contains("accesskey.cloudkeys.io/invalid"), "{out}");
    assert!(out.contains("keyissuer.cloudkeys.io/local"), "{out}");

    // Short names and printer columns as docs/api.md lists them ("Kinds").
    let (ok, out, err) = support::run_kubectl(&["get", "ak", "-n", &ns]);
    assert!(ok, "{err}");
    let header: Vec<&str> = out.lines().next().unwrap_or_default().split_whitespace().collect();
    // The Ready condition's reason says why at a glance; the issuer's kind (defaulted by the
    // schema) tells a KeyIssuer from a ClusterKeyIssuer of the same name.
    assert_eq!(header, ["NAME", "READY", "REASON", "ISSUER", "ISSUER", "KIND", "SECRET", "KEY", "ID", "AGE"]);
    assert!(out.lines().nth(1).is_some_and(|row| row.contains("KeyIssuer")), "{out}");
    let (ok, out, err) = support::run_kubectl(&["get", "ak", "-n", &ns, "-o", "wide"]);
    assert!(ok, "{err}");
    let header = out.lines().next().unwrap_or_default();
    assert!(header.contains("EXPIRES") && header.contains("NEXT ROTATION"), "{out}");
    for short in ["ki", "cki"] {
        let (ok, _, err) = support::run_kubectl(&["get", short, "-A"]);
        assert!(ok, "kubectl get {short}: {err}");
    }
    let (_, out, _) = support::run_kubectl(&["get", "ki", "-n", &ns]);
    let header: Vec<&str> = out.lines().next().unwrap_or_default().split_whitespace().collect();
    assert_eq!(header, ["NAME", "READY", "PROVIDER", "AGE"]);
}

#[tokio::test]
async fn every_example_manifest_is_accepted() {
    let (client, ns) = setup("examples-accepted").await;
    let files = support::example_files();
    assert!(files.len() >= 10, "expected the examples of every provider, found {files:?}");
    for file in files {
        let text = std::fs::read_to_string(&file).expect("example readable");
        for doc in serde_norway::Deserializer::from_str(&text) {
            let manifest: Value = serde::Deserialize::deserialize(doc).expect("example is YAML");
            apply(&client, &ns, &manifest).await.unwrap_or_else(|e| panic!("{} was refused: {e}", file.display()));
        }
    }
}

#[tokio::test]
async fn invalid_access_keys_are_refused_naming_the_field() {
    let (client, ns) = setup("invalid-access-keys").await;
    let c = &client;
    let ns = &ns;
    assert_refused(
        c,
        ns,
        access_key(json!({"issuerRef": {"name": "x"}, "local": {}})),
        &["spec.secretName", "Required"],
    )
    .await;
    assert_refused(
        c,
        ns,
        access_key(json!({"issuerRef": {"name": "x"}, "secretName": "Not_A_Name", "local": {}})),
        &["spec.secretName", "should match"],
    )
    .await;
    assert_refused(
        c,
        ns,
        access_key(json!({"issuerRef": {"name": "x"}, "secretName": &"a".repeat(254), "local": {}})),
        &["spec.secretName"],
    )
    .await;
    assert_refused(
        c,
        ns,
        access_key(json!({"issuerRef": {}, "secretName": "s", "local": {}})),
        &["spec.issuerRef.name", "Required"],
    )
    .await;
    assert_refused(
        c,
        ns,
        access_key(json!({"issuerRef": {"name": "x", "kind": "Issuer"}, "secretName": "s", "local": {}})),
        &["spec.issuerRef.kind", "KeyIssuer", "ClusterKeyIssuer"],
    )
    .await;
    assert_refused(
        c,
        ns,
        access_key(json!({"issuerRef": {"name": "x"}, "secretName": "s", "deletionPolicy": "Keep", "local": {}})),
        &["spec.deletionPolicy", "Delete", "Retain"],
    )
    .await;
    assert_refused(c, ns, access_key(json!({"issuerRef": {"name": "x"}, "secretName": "s"})), &["\"spec\"", "oneOf"])
        .await;
    assert_refused(
        c,
        ns,
        access_key(json!({"issuerRef": {"name": "x"}, "secretName": "s", "local": {}, "yandex": {}})),
        &["\"spec\"", "oneOf"],
    )
    .await;
    // Exoscale: exactly one of the three modes.
    let exo = |block: Value| access_key(json!({"issuerRef": {"name": "x"}, "secretName": "s", "exoscale": block}));
    assert_refused(c, ns, exo(json!({"name": "k"})), &["spec.exoscale", "oneOf"]).await;
    assert_refused(
        c,
        ns,
        exo(json!({"roleId": "7b1e0000-0000-4000-8000-000000000001", "operations": ["list-zones"]})),
        &["spec.exoscale", "oneOf"],
    )
    .await;
    assert_refused(c, ns, exo(json!({"roleId": "not-a-uuid"})), &["spec.exoscale.roleId"]).await;
    assert_refused(c, ns, exo(json!({"resources": ["sos-bucket-my-bucket"]})), &["spec.exoscale.resources"]).await;
    assert_refused(
        c,
        ns,
        access_key(json!({"issuerRef": {"name": "x"}, "secretName": "s", "outscale": {"expiresAfter": "90 days"}})),
        &["spec.outscale.expiresAfter"],
    )
    .await;
    assert_refused(
        c,
        ns,
        access_key(json!({"issuerRef": {"name": "x"}, "secretName": "s", "yandex": {"description": "d".repeat(257)}})),
        &["spec.yandex.description"],
    )
    .await;
}

#[tokio::test]
async fn invalid_issuers_are_refused_naming_the_field() {
    let (client, ns) = setup("invalid-issuers").await;
    let c = &client;
    let ns = &ns;
    assert_refused(c, ns, key_issuer(json!({})), &["\"spec\"", "oneOf"]).await;
    assert_refused(
        c,
        ns,
        key_issuer(json!({"local": {}, "exoscale": {"credentialsSecretRef": {"name": "a"}}})),
        &["\"spec\"", "oneOf"],
    )
    .await;
    assert_refused(c, ns, key_issuer(json!({"exoscale": {}})), &["spec.exoscale.credentialsSecretRef", "Required"])
        .await;
    assert_refused(
        c,
        ns,
        key_issuer(
            json!({"exoscale": {"endpoint": "http://api.example.com/v2", "credentialsSecretRef": {"name": "a"}}}),
        ),
        &["spec.exoscale.endpoint"],
    )
    .await;
    assert_refused(
        c,
        ns,
        key_issuer(json!({"outscale": {"credentialsSecretRef": {"name": "a"}}})),
        &["spec.outscale.region", "Required"],
    )
    .await;
    assert_refused(
        c,
        ns,
        key_issuer(json!({"outscale": {"region": "eu-west-", "credentialsSecretRef": {"name": "a"}}})),
        &["spec.outscale.region"],
    )
    .await;
    assert_refused(c, ns, key_issuer(json!({"yandex": {}})), &["spec.yandex", "oneOf"]).await;
    assert_refused(
        c,
        ns,
        key_issuer(json!({"yandex": {"serviceAccountKeySecretRef": {"name": "a"}, "metadataService": {}}})),
        &["spec.yandex", "oneOf"],
    )
    .await;

    // Defaults the apiserver fills in.
    let ok = key_issuer(json!({"exoscale": {"credentialsSecretRef": {"name": "a"}}}));
    apply(c, ns, &ok).await.expect("minimal Exoscale issuer accepted");
    let (_, out, _) = support::run_kubectl(&["get", "ki", "invalid", "-n", ns, "-o", "jsonpath={.spec.exoscale.zone}"]);
    assert_eq!(out, "ch-gva-2");
}
