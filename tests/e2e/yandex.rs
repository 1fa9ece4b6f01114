//! Yandex Cloud end to end: the operator process, the real apiserver, and a fake IAM that
//! verifies the PS256 JWT of the authorized key and requires a live IAM token on every call.

use crate::{fakes, support};
use std::time::{Duration, Instant};

use fakes::yandex::{Faults, YandexFake, SECOND_SERVICE_ACCOUNT_ID};
use kube::api::Api;
use kube::Client;
use serde_json::{json, Value};
use support::keys::{self, secret_value};
use support::leaks::assert_no_secret_leaks;
use support::operator::Operator;

struct Env {
    client: Client,
    ns: String,
    fake: YandexFake,
    op: Operator,
}

async fn setup(test: &str, faults: Faults, key_json: fn(&YandexFake) -> String) -> Env {
    let client = support::client().await;
    support::install_crds(&client).await;
    let ns = support::namespace(&client, test).await;
    let fake = YandexFake::start();
    fake.set_faults(faults);
    support::create_secret(&client, &ns, "yc-admin", json!({"key.json": key_json(&fake)})).await;
    let yandex = json!({"endpoint": fake.endpoint(), "operationEndpoint": fake.operation_endpoint(),
        "serviceAccountId": fake.service_account_id(), "serviceAccountKeySecretRef": {"name": "yc-admin"}});
    support::apply_json(
        &client,
        &ns,
        // Keys for a second service account too, which the default (the issuer's own only) refuses.
        json!({"apiVersion": "cloudkeys.io/v1alpha1", "kind": "KeyIssuer",
        "metadata": {"name": "yandex"}, "spec": {"yandex": yandex,
            "policy": {"yandex": {"serviceAccountIds": [fake.service_account_id(), SECOND_SERVICE_ACCOUNT_ID]}}}}),
    )
    .await;
    let op = Operator::start(&ns);
    Env { client, ns, fake, op }
}

fn with_key(f: &YandexFake) -> String {
    f.authorized_key_json()
}

fn with_wrong_key(f: &YandexFake) -> String {
    f.wrong_authorized_key_json()
}

fn access_key(name: &str, yandex: Value, extra: Value) -> Value {
    keys::manifest(name, "yandex", "yandex", yandex, extra)
}

impl Env {
    async fn apply(&self, manifest: Value) {
        support::apply_json(&self.client, &self.ns, manifest).await;
    }

    /// The AWS-style key id in status, checked against the Secret and the fake.
    async fn issued(&self, name: &str) -> String {
        let ak = keys::wait_issued(&self.client, &self.ns, name).await;
        let status = ak.status.expect("status");
        let key_id = status.access_key_id.expect("accessKeyId");
        let secret = keys::secret(&self.client, &self.ns, &format!("{name}-credentials")).await.expect("Secret");
        assert_eq!(secret_value(&secret, "AWS_ACCESS_KEY_ID"), key_id);
        assert!(self.fake.issued_secrets().contains(&secret_value(&secret, "AWS_SECRET_ACCESS_KEY")));
        let live = self.fake.live_keys().into_iter().find(|k| k.key_id == key_id).expect("key live at the provider");
        assert_eq!(status.key_ref.as_deref(), Some(live.id.as_str()), "keyRef must be accessKey.id, not keyId");
        key_id
    }

    fn live_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.fake.live_keys().into_iter().map(|k| k.key_id).collect();
        ids.sort();
        ids
    }

    async fn wait_live(&self, what: &str, want: Vec<String>) {
        keys::wait_live(what, || self.live_ids(), want).await;
    }
}

#[tokio::test]
async fn static_key_is_issued_and_deleted_with_the_operation_polled_to_done() {
    let env = setup("yc-issue-delete", Faults { operations_pending_polls: 2, ..Faults::default() }, with_key).await;
    env.apply(access_key("storage", json!({"description": "object storage of team a"}), json!({}))).await;
    let id = env.issued("storage").await;
    let live = env.fake.live_keys();
    assert_eq!(live.len(), 1);
    assert!(live[0].description.starts_with("object storage of team a ck-"), "{}", live[0].description);
    assert_eq!(live[0].service_account_id, env.fake.service_account_id(), "the issuer's default service account");
    assert_eq!(live[0].key_id, id);
    keys::delete_access_key(&env.client, &env.ns, "storage").await;
    keys::wait_gone(&env.client, &env.ns, "storage").await;
    assert!(env.fake.live_keys().is_empty(), "the key was not revoked");
    assert_no_secret_leaks(&env.client, &env.ns, &env.op, &env.fake.issued_secrets()).await;
}

#[tokio::test]
async fn service_account_of_the_access_key_wins_and_retain_keeps_the_key() {
    let env = setup("yc-retain", Faults::default(), with_key).await;
    env.apply(access_key(
        "kept",
        json!({"serviceAccountId": SECOND_SERVICE_ACCOUNT_ID}),
        json!({"deletionPolicy": "Retain"}),
    ))
    .await;
    let id = env.issued("kept").await;
    assert_eq!(env.fake.live_keys()[0].service_account_id, SECOND_SERVICE_ACCOUNT_ID);
    keys::delete_access_key(&env.client, &env.ns, "kept").await;
    // The finalizer goes only once cleanup is done: what it did to the key is done now.
    keys::wait_gone(&env.client, &env.ns, "kept").await;
    assert_eq!(env.live_ids(), vec![id]);
    assert!(keys::secret(&env.client, &env.ns, "kept-credentials").await.is_some());
}

#[tokio::test]
async fn operator_killed_during_an_unanswered_create_ends_with_one_live_key() {
    let mut env = setup("yc-crash", Faults { hang_creates: true, ..Faults::default() }, with_key).await;
    env.apply(access_key("k", json!({}), json!({}))).await;
    support::eventually("the unanswered key to exist", keys::WAIT, || {
        let n = env.fake.live_keys().len();
        async move { (n == 1).then_some(()) }
    })
    .await;
    let orphan = env.live_ids()[0].clone();
    env.op.kill();
    env.fake.set_faults(Faults::default());
    env.op.restart();
    let id = env.issued("k").await;
    assert_ne!(id, orphan);
    env.wait_live("only the issued key", vec![id]).await;
    assert_no_secret_leaks(&env.client, &env.ns, &env.op, &env.fake.issued_secrets()).await;
}

#[tokio::test]
async fn spec_change_replaces_the_key() {
    let env = setup("yc-spec-change", Faults::default(), with_key).await;
    env.apply(access_key("k", json!({"description": "v1"}), keys::no_grace_period())).await;
    let first = env.issued("k").await;
    env.apply(access_key("k", json!({"description": "v2"}), keys::no_grace_period())).await;
    let second = support::eventually("the replacement", keys::WAIT, || {
        let live = env.live_ids();
        let first = first.clone();
        async move { (live.len() == 1 && live[0] != first).then(|| live[0].clone()) }
    })
    .await;
    assert_eq!(env.issued("k").await, second);
    assert!(env.fake.live_keys()[0].description.starts_with("v2 ck-"));
}

#[tokio::test]
async fn iam_token_expiry_mid_run_is_refreshed_transparently() {
    let env =
        setup("yc-token-expiry", Faults { token_ttl: Duration::from_secs(3), ..Faults::default() }, with_key).await;
    env.apply(access_key("a", json!({}), json!({}))).await;
    env.issued("a").await;
    let tokens = env.fake.tokens_issued();
    tokio::time::sleep(Duration::from_secs(4)).await; // the token the operator holds is now expired
    env.apply(access_key("b", json!({}), json!({}))).await;
    env.issued("b").await;
    assert!(env.fake.tokens_issued() > tokens, "no new IAM token was fetched");
    env.fake.expire_tokens(); // revoked early: the next call gets 401 and must recover by itself
    keys::delete_access_key(&env.client, &env.ns, "a").await;
    keys::wait_gone(&env.client, &env.ns, "a").await;
    assert_eq!(env.fake.live_keys().len(), 1);
}

/// The node's identity (`metadataService`) on a ClusterKeyIssuer: tokens from the metadata
/// service, no admin key in the cluster. Its endpoints are the fake's, on loopback: besides
/// Yandex's own API, a proxy in the operator's own pod is the one place the node's tokens may go,
/// and only a cluster admin can name it. A tenant's KeyIssuer, even where the operator lets
/// KeyIssuers use the node's identity, may not name any endpoint with it: refused before a token
/// is fetched.
#[tokio::test]
async fn metadata_service_tokens_need_no_admin_key_in_the_cluster() {
    let client = support::client().await;
    support::install_crds(&client).await;
    let ns = support::namespace(&client, "yc-metadata").await;
    let fake = YandexFake::start();
    let ambient = |fake: &YandexFake| {
        json!({"metadataService": {"endpoint": fake.metadata_endpoint()}, "endpoint": fake.endpoint(),
            "operationEndpoint": fake.operation_endpoint(), "serviceAccountId": fake.service_account_id()})
    };
    let node = format!("{ns}-node");
    support::apply_json(
        &client,
        &ns,
        json!({"apiVersion": "cloudkeys.io/v1alpha1", "kind": "ClusterKeyIssuer", "metadata": {"name": node},
            "spec": {"yandex": ambient(&fake)}}),
    )
    .await;
    let tenants_fake = YandexFake::start();
    support::apply_json(
        &client,
        &ns,
        json!({"apiVersion": "cloudkeys.io/v1alpha1", "kind": "KeyIssuer", "metadata": {"name": "node-elsewhere"},
            "spec": {"yandex": ambient(&tenants_fake)}}),
    )
    .await;
    let _op = Operator::start_with(&ns, &[("CLOUDKEYS_ALLOW_NAMESPACED_AMBIENT_CREDENTIALS", "true")]);

    let mut on_node = access_key("k", json!({}), json!({}));
    on_node["spec"]["issuerRef"] = json!({"name": node, "kind": "ClusterKeyIssuer"});
    support::apply_json(&client, &ns, on_node).await;
    let issued = keys::wait_issued(&client, &ns, "k").await;
    let key_id = issued.status.and_then(|s| s.access_key_id).expect("key id");
    assert!(fake.live_keys().iter().any(|k| k.key_id == key_id));
    assert!(fake.requests().iter().any(|r| r.path.contains("computeMetadata")));

    let issuers: Api<cloudkeys::api::KeyIssuer> = Api::namespaced(client.clone(), &ns);
    let message = support::eventually("the tenant's issuer refused", keys::WAIT, || async {
        let i = issuers.get_opt("node-elsewhere").await.ok()??;
        let c = i.status?.conditions.into_iter().find(|c| c.type_ == "Ready" && c.reason == "InvalidSpec")?;
        Some(c.message)
    })
    .await;
    assert!(message.contains("yandex.endpoint") && message.contains("metadataService"), "{message}");
    support::apply_json(&client, &ns, keys::manifest("elsewhere", "node-elsewhere", "yandex", json!({}), json!({})))
        .await;
    keys::wait_reason(&client, &ns, "elsewhere", "IssuerNotReady").await;
    assert!(tenants_fake.requests().is_empty(), "a request went to the metadata service or IAM");
}

#[tokio::test]
async fn wrong_authorized_key_makes_the_issuer_not_ready_without_a_hot_loop() {
    let env = setup("yc-wrong-key", Faults::default(), with_wrong_key).await;
    env.apply(access_key("k", json!({}), json!({}))).await;
    let issuers: Api<cloudkeys::api::KeyIssuer> = Api::namespaced(env.client.clone(), &env.ns);
    support::eventually("the issuer to be not ready", keys::WAIT, || {
        let issuers = issuers.clone();
        async move {
            let i = issuers.get("yandex").await.ok()?;
            let c = i.status.as_ref()?.conditions.first()?.clone();
            (c.status == "False" && c.reason == "InvalidCredentials").then_some(())
        }
    })
    .await;
    keys::wait_reason(&env.client, &env.ns, "k", "IssuerNotReady").await;
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(15)).await;
    let during = env.fake.requests().iter().filter(|r| r.at >= start).count();
    assert!(during < 3, "{during} requests in 15 s against refused credentials");
    assert!(env.fake.live_keys().is_empty());
}
