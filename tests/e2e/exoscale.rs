//! Exoscale end to end: the operator process, the real apiserver, and a fake Exoscale API that
//! verifies every request's EXO2 signature.

use crate::{fakes, support};
use std::time::{Duration, Instant};

use fakes::exoscale::{ExoscaleFake, Faults, PREEXISTING_ROLE_ID};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams};
use kube::Client;
use serde_json::{json, Value};
use support::exoscale::{self, ADMIN_KEY, ADMIN_SECRET};
use support::keys::{self, secret_value};
use support::leaks::assert_no_secret_leaks;
use support::operator::Operator;

struct Env {
    client: Client,
    ns: String,
    fake: ExoscaleFake,
    op: Operator,
}

async fn setup(test: &str) -> Env {
    setup_with_secret(test, ADMIN_SECRET).await
}

async fn setup_with_secret(test: &str, admin_secret: &str) -> Env {
    let client = support::client().await;
    support::install_crds(&client).await;
    let ns = support::namespace(&client, test).await;
    let fake = ExoscaleFake::start(ADMIN_KEY, ADMIN_SECRET);
    exoscale::issuer_with_credentials(&client, &ns, &fake.endpoint(), admin_secret).await;
    let op = Operator::start(&ns);
    Env { client, ns, fake, op }
}

fn access_key(name: &str, exoscale: Value, extra: Value) -> Value {
    keys::manifest(name, "exoscale", "exoscale", exoscale, extra)
}

fn role_id_mode() -> Value {
    json!({"roleId": PREEXISTING_ROLE_ID})
}

impl Env {
    async fn apply(&self, manifest: Value) {
        support::apply_json(&self.client, &self.ns, manifest).await;
    }

    /// The key id in status, checked against the Secret and the fake.
    async fn issued(&self, name: &str) -> String {
        let ak = keys::wait_issued(&self.client, &self.ns, name).await;
        let id = ak.status.and_then(|s| s.access_key_id).expect("accessKeyId");
        let secret = keys::secret(&self.client, &self.ns, &format!("{name}-credentials")).await.expect("Secret");
        assert_eq!(secret_value(&secret, "EXOSCALE_API_KEY"), id);
        let value = secret_value(&secret, "EXOSCALE_API_SECRET");
        assert!(self.fake.issued_secrets().contains(&value), "the Secret holds a secret the provider never issued");
        id
    }

    fn live_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.fake.live_api_keys().into_iter().map(|k| k.key).collect();
        ids.extend(self.fake.live_access_keys().into_iter().map(|k| k.key));
        ids.sort();
        ids
    }

    async fn wait_live(&self, what: &str, want: Vec<String>) {
        keys::wait_live(what, || self.live_ids(), want).await;
    }

    async fn assert_no_leaks(&self) {
        assert_no_secret_leaks(&self.client, &self.ns, &self.op, &self.fake.issued_secrets()).await;
    }
}

#[tokio::test]
async fn api_key_bound_to_an_existing_role_is_issued_and_revoked_on_delete() {
    let env = setup("exo-role-id").await;
    env.apply(access_key("backups", role_id_mode(), json!({}))).await;
    let id = env.issued("backups").await;
    let live = env.fake.live_api_keys();
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].role_id, PREEXISTING_ROLE_ID);
    assert!(live[0].name.starts_with(&format!("{}-backups.ck-", env.ns)), "{}", live[0].name);
    assert_eq!(live[0].key, id);

    keys::delete_access_key(&env.client, &env.ns, "backups").await;
    keys::wait_gone(&env.client, &env.ns, "backups").await;
    assert!(env.fake.live_api_keys().is_empty(), "the key was not revoked");
    env.assert_no_leaks().await;
}

#[tokio::test]
async fn own_role_mode_creates_a_labelled_role_and_deletes_it_after_the_key() {
    let env = setup("exo-own-role").await;
    let policy = json!({"defaultServiceStrategy": "deny", "services": {"sos": {"type": "rules",
        "rules": [{"action": "allow", "expression": "resources.bucket == 'backups'"}]}}});
    env.apply(access_key(
        "bucket",
        json!({"name": "backups-bucket", "role": {"description": "backups", "policy": policy}}),
        json!({}),
    ))
    .await;
    let id = env.issued("bucket").await;
    let roles: Vec<_> = env.fake.roles().into_iter().filter(|r| r.id != PREEXISTING_ROLE_ID).collect();
    assert_eq!(roles.len(), 1, "{roles:?}");
    let role = &roles[0];
    let ak = keys::wait_issued(&env.client, &env.ns, "bucket").await;
    assert_eq!(role.labels.get("cloudkeys.io/owner"), ak.metadata.uid.as_ref());
    assert!(role.name.starts_with("backups-bucket.ck-"));
    assert_eq!(role.policy["default-service-strategy"], "deny");
    assert_eq!(role.policy["services"]["sos"]["rules"][0]["expression"], "resources.bucket == 'backups'");
    let key = env.fake.live_api_keys().into_iter().find(|k| k.key == id).expect("key live");
    assert_eq!(key.role_id, role.id);

    keys::delete_access_key(&env.client, &env.ns, "bucket").await;
    keys::wait_gone(&env.client, &env.ns, "bucket").await;
    assert!(env.fake.live_api_keys().is_empty());
    assert!(env.fake.roles().iter().all(|r| r.id == PREEXISTING_ROLE_ID), "the role was left behind");
    env.assert_no_leaks().await;
}

#[tokio::test]
async fn legacy_access_key_is_issued_with_operations_and_resources_and_revoked() {
    let env = setup("exo-legacy").await;
    env.apply(access_key(
        "legacy",
        json!({"operations": ["get-sos-object", "list-sos-bucket"], "resources": ["sos/bucket:my-bucket"]}),
        json!({}),
    ))
    .await;
    let id = env.issued("legacy").await;
    let live = env.fake.live_access_keys();
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].key, id);
    assert_eq!(live[0].operations, vec!["get-sos-object".to_string(), "list-sos-bucket".to_string()]);
    assert_eq!(live[0].resources, json!([{"domain": "sos", "resource-type": "bucket", "resource-name": "my-bucket"}]));
    keys::delete_access_key(&env.client, &env.ns, "legacy").await;
    keys::wait_gone(&env.client, &env.ns, "legacy").await;
    assert!(env.fake.live_access_keys().is_empty());
}

#[tokio::test]
async fn account_refusing_legacy_keys_shows_the_api_error_verbatim() {
    let env = setup("exo-legacy-refused").await;
    env.fake.set_legacy_enabled(false);
    env.apply(access_key("legacy", json!({"tags": ["compute"]}), json!({}))).await;
    let ak = keys::wait_reason(&env.client, &env.ns, "legacy", "ProviderError").await;
    let (_, _, message) = keys::ready_condition(&ak).expect("condition");
    assert!(message.contains(fakes::exoscale::LEGACY_DISABLED_MESSAGE), "{message}");
    assert!(env.fake.live_access_keys().is_empty());
}

#[tokio::test]
async fn retain_leaves_key_and_secret() {
    let env = setup("exo-retain").await;
    env.apply(access_key("kept", role_id_mode(), json!({"deletionPolicy": "Retain"}))).await;
    let id = env.issued("kept").await;
    keys::delete_access_key(&env.client, &env.ns, "kept").await;
    // The finalizer goes only once cleanup is done: what it did to the key is done now.
    keys::wait_gone(&env.client, &env.ns, "kept").await;
    assert_eq!(env.live_ids(), vec![id.clone()]);
    let secret = keys::secret(&env.client, &env.ns, "kept-credentials").await.expect("Secret survives");
    assert_eq!(secret_value(&secret, "EXOSCALE_API_KEY"), id);
}

#[tokio::test]
async fn secret_conflict_creates_no_key() {
    let env = setup("exo-conflict").await;
    support::create_secret(&env.client, &env.ns, "taken-credentials", json!({"x": "y"})).await;
    env.apply(access_key("taken", role_id_mode(), json!({}))).await;
    // The reconcile that wrote this condition decided against any key, before any provider call.
    let ak = keys::wait_reason(&env.client, &env.ns, "taken", "SecretConflict").await;
    assert!(env.fake.live_api_keys().is_empty(), "a key was created despite the conflict");
    assert!(env.fake.requests().iter().all(|r| r.method != "POST"), "the provider was asked to create something");
    let (_, _, message) = keys::ready_condition(&ak).expect("condition");
    assert!(
        message.starts_with("Secret taken-credentials exists") && message.contains("another secretName"),
        "{message}"
    );
    // The user does what it says: the key follows without any change to the AccessKey (whose
    // next periodic look is an hour away).
    let generation = ak.metadata.generation;
    Api::<Secret>::namespaced(env.client.clone(), &env.ns)
        .delete("taken-credentials", &DeleteParams::default())
        .await
        .expect("deleted");
    let ak = keys::wait_issued(&env.client, &env.ns, "taken").await;
    assert_eq!(ak.metadata.generation, generation);
    assert_eq!(env.live_ids().len(), 1);
}

/// A KeyIssuer and an AccessKey applied together, as the examples invite: the AccessKey waits
/// for the issuer's first check, and records no Warning on the way.
#[tokio::test]
async fn an_issuer_and_its_access_key_applied_together_record_no_warning() {
    let client = support::client().await;
    support::install_crds(&client).await;
    let ns = support::namespace(&client, "exo-together").await;
    let fake = ExoscaleFake::start(ADMIN_KEY, ADMIN_SECRET);
    // The first check takes a while, so the AccessKey is surely looked at before it is done.
    fake.set_faults(Faults { latency: Duration::from_secs(5), ..Faults::default() });
    let _op = Operator::start(&ns);
    exoscale::issuer_with_credentials(&client, &ns, &fake.endpoint(), ADMIN_SECRET).await;
    support::apply_json(&client, &ns, access_key("together", role_id_mode(), json!({}))).await;
    let waiting = keys::wait_reason(&client, &ns, "together", "IssuerNotReady").await;
    let (_, _, message) = keys::ready_condition(&waiting).expect("condition");
    assert!(message.contains("has not been checked yet"), "{message}");
    keys::wait_issued(&client, &ns, "together").await;
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), &ns);
    let listed = events.list(&kube::api::ListParams::default()).await.expect("events");
    let warnings: Vec<String> = listed
        .items
        .into_iter()
        .filter(|e| e.type_.as_deref() == Some("Warning"))
        .map(|e| format!("{:?} {:?}", e.reason, e.message))
        .collect();
    assert!(warnings.is_empty(), "{warnings:?}");
}

#[tokio::test]
async fn secret_deleted_by_hand_issues_new_key_and_revokes_old() {
    let env = setup("exo-secret-deleted").await;
    env.apply(access_key("k", role_id_mode(), keys::no_grace_period())).await;
    let first = env.issued("k").await;
    Api::<Secret>::namespaced(env.client.clone(), &env.ns)
        .delete("k-credentials", &DeleteParams::default())
        .await
        .expect("deleted");
    let second = support::eventually("a new key", keys::WAIT, || {
        let live = env.live_ids();
        let first = first.clone();
        async move { (live.len() == 1 && live[0] != first).then(|| live[0].clone()) }
    })
    .await;
    assert_eq!(env.issued("k").await, second);
    env.assert_no_leaks().await;
}

#[tokio::test]
async fn spec_change_replaces_the_key_new_first_then_old_revoked() {
    let env = setup("exo-spec-change").await;
    env.apply(access_key("k", role_id_mode(), keys::no_grace_period())).await;
    let first = env.issued("k").await;
    env.apply(access_key("k", role_id_mode(), json!({"rotation": {"gracePeriod": "0s"}, "secretTemplate": {"data": {
        "AWS_ACCESS_KEY_ID": "{{ accessKeyId }}", "AWS_SECRET_ACCESS_KEY": "{{ secretAccessKey }}", "ZONE": "{{ zone }}"}}})))
    .await;
    let second = support::eventually("the replacement", keys::WAIT, || {
        let live = env.live_ids();
        let first = first.clone();
        async move { (live.len() == 1 && live[0] != first).then(|| live[0].clone()) }
    })
    .await;
    let ak = keys::wait_issued(&env.client, &env.ns, "k").await;
    assert_eq!(ak.status.and_then(|s| s.access_key_id), Some(second.clone()));
    let secret = keys::secret(&env.client, &env.ns, "k-credentials").await.expect("Secret");
    assert_eq!(secret_value(&secret, "AWS_ACCESS_KEY_ID"), second);
    assert_eq!(secret_value(&secret, "ZONE"), "ch-gva-2");
    assert!(secret.data.as_ref().expect("data").get("EXOSCALE_API_KEY").is_none(), "old default keys remain");
    // Label-only changes are applied in place, keeping the key.
    env.apply(access_key("k", role_id_mode(), json!({"rotation": {"gracePeriod": "0s"}, "secretTemplate": {"labels": {"team": "a"}, "data": {
        "AWS_ACCESS_KEY_ID": "{{ accessKeyId }}", "AWS_SECRET_ACCESS_KEY": "{{ secretAccessKey }}", "ZONE": "{{ zone }}"}}})))
    .await;
    support::eventually("the label", keys::WAIT, || {
        let client = env.client.clone();
        let ns = env.ns.clone();
        async move {
            let s = keys::secret(&client, &ns, "k-credentials").await?;
            (s.metadata.labels?.get("team")? == "a").then_some(())
        }
    })
    .await;
    assert_eq!(env.live_ids(), vec![second]);
    assert_eq!(env.fake.issued_secrets().len(), 2, "one replacement, not more: keys were minted in a loop");
    env.assert_no_leaks().await;
}

#[tokio::test]
async fn revocation_that_cannot_succeed_holds_the_finalizer_until_retain() {
    let env = setup("exo-revocation-failed").await;
    env.apply(access_key("k", role_id_mode(), json!({}))).await;
    let id = env.issued("k").await;
    // The issuer's admin key stops working: nothing can revoke the key any more.
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &env.ns);
    let mut admin = secrets.get("exoscale-admin").await.expect("credentials");
    admin.data = None;
    admin.string_data = Some(
        [("EXOSCALE_API_KEY", ADMIN_KEY), ("EXOSCALE_API_SECRET", "revokedrevokedrevokedrevokedrevokedrevoked0")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    secrets.replace("exoscale-admin", &Default::default(), &admin).await.expect("credentials replaced");
    keys::delete_access_key(&env.client, &env.ns, "k").await;
    let ak = keys::wait_reason(&env.client, &env.ns, "k", "RevocationFailed").await;
    let (_, _, message) = keys::ready_condition(&ak).expect("condition");
    assert!(message.contains("credentials") && message.contains("deletionPolicy: Retain"), "{message}");
    assert_eq!(env.live_ids(), vec![id.clone()], "the key must stay tracked while the finalizer holds");

    // The user chooses to keep the key: the AccessKey may go.
    env.apply(access_key("k", role_id_mode(), json!({"deletionPolicy": "Retain"}))).await;
    keys::wait_gone(&env.client, &env.ns, "k").await;
    assert_eq!(env.live_ids(), vec![id]);
}

#[tokio::test]
async fn an_issuer_deleted_while_in_use_stays_until_its_keys_are_revoked() {
    let env = setup("exo-issuer-in-use").await;
    env.apply(access_key("k", role_id_mode(), json!({}))).await;
    env.issued("k").await;
    let issuers: Api<cloudkeys::api::KeyIssuer> = Api::namespaced(env.client.clone(), &env.ns);
    issuers.delete("exoscale", &DeleteParams::default()).await.expect("deletion accepted");
    let kept = support::eventually("the issuer to say why it stays", keys::WAIT, || {
        let issuers = issuers.clone();
        async move {
            let i = issuers.get_opt("exoscale").await.ok()??;
            let c = i.status.as_ref()?.conditions.iter().find(|c| c.type_ == "Ready")?.clone();
            (c.reason == "InUse").then_some((i, c))
        }
    })
    .await;
    assert!(kept.0.metadata.deletion_timestamp.is_some());
    assert_eq!(kept.1.status, "False");
    assert!(kept.1.message.contains(&format!("{}/k", env.ns)), "{}", kept.1.message);

    // The key can still be revoked with it; then it goes.
    keys::delete_access_key(&env.client, &env.ns, "k").await;
    keys::wait_gone(&env.client, &env.ns, "k").await;
    assert!(env.live_ids().is_empty(), "the key was not revoked");
    support::eventually("the issuer to be gone", keys::WAIT, || {
        let issuers = issuers.clone();
        async move { issuers.get_opt("exoscale").await.ok()?.is_none().then_some(()) }
    })
    .await;
}

#[tokio::test]
async fn the_issuers_rate_limit_paces_every_request_to_its_account() {
    let env = setup("exo-rate-limit").await;
    // The same issuer, now limited to 2 requests per second with no burst.
    env.apply(json!({"apiVersion": "cloudkeys.io/v1alpha1", "kind": "KeyIssuer", "metadata": {"name": "exoscale"},
        "spec": {"exoscale": {"endpoint": env.fake.endpoint(), "credentialsSecretRef": {"name": exoscale::CREDENTIALS}},
                 "rateLimit": {"requestsPerSecond": 2, "burst": 1}}}))
        .await;
    let api: Api<cloudkeys::api::KeyIssuer> = Api::namespaced(env.client.clone(), &env.ns);
    support::eventually("the rate limit to be seen by the operator", keys::WAIT, || {
        let api = api.clone();
        async move {
            let i = api.get("exoscale").await.ok()?;
            let observed = i.status?.conditions.iter().find(|c| c.type_ == "Ready")?.observed_generation;
            (observed == i.metadata.generation).then_some(())
        }
    })
    .await;
    let from = env.fake.requests().len();
    for i in 0..4 {
        env.apply(access_key(&format!("k{i}"), role_id_mode(), json!({}))).await;
    }
    for i in 0..4 {
        env.issued(&format!("k{i}")).await;
    }
    let at: Vec<Instant> = env.fake.requests()[from..].iter().map(|r| r.at).collect();
    assert!(at.len() >= 4, "{} requests", at.len());
    // 2/s with a burst of 1: the operator sends them at least 500 ms apart. The fake notes when
    // each arrives, which a busy machine can delay a little: allow a quarter of a second.
    for pair in at.windows(2) {
        let gap = pair[1].duration_since(pair[0]);
        assert!(gap >= Duration::from_millis(250), "two requests {gap:?} apart");
    }
    let span = at[at.len() - 1].duration_since(at[0]);
    let paced = Duration::from_millis(500) * (at.len() as u32 - 1);
    assert!(span + Duration::from_millis(250) >= paced, "{} requests within {span:?}", at.len());
}

/// Crash point: the create request reached the provider, which made the key, but the answer
/// (and with it the only copy of the secret) never came back before the operator died.
#[tokio::test]
async fn operator_killed_during_an_unanswered_create_ends_with_exactly_one_live_key() {
    let mut env = setup("exo-crash-unanswered").await;
    env.fake.set_faults(Faults { hang_creates: true, ..Faults::default() });
    env.apply(access_key("k", role_id_mode(), json!({}))).await;
    support::eventually("the unanswered key to exist", keys::WAIT, || {
        let n = env.fake.live_api_keys().len();
        async move { (n == 1).then_some(()) }
    })
    .await;
    let orphan = env.live_ids()[0].clone();
    env.op.kill();
    env.fake.set_faults(Faults::default());
    env.op.restart();
    let id = env.issued("k").await;
    assert_ne!(id, orphan, "the key whose secret was lost cannot be the one in use");
    env.wait_live("only the issued key to remain", vec![id]).await;
    env.assert_no_leaks().await;
}

/// Crash points between the steps of a creation: after recording the intent, after the
/// provider answered (secret in memory only), after the Secret was written (status not yet).
#[tokio::test]
async fn operator_crashing_at_each_step_of_a_creation_converges_to_one_live_key() {
    for point in ["after-intent", "after-create", "after-secret-write"] {
        let mut env = setup(&format!("exo-crash-{point}")).await;
        env.op.restart_with(&[("CLOUDKEYS_CRASH_AT", point)]);
        env.apply(access_key("k", role_id_mode(), json!({}))).await;
        assert!(env.op.wait_exit(Duration::from_secs(60)).await, "the operator did not reach {point}");
        env.op.restart_with(&[]);
        let id = env.issued("k").await;
        env.wait_live(&format!("exactly one live key after a crash {point}"), vec![id.clone()]).await;
        if point == "after-secret-write" {
            // The key in the Secret was adopted, not replaced: only one key was ever created.
            assert_eq!(env.fake.issued_secrets().len(), 1, "the adopted key was replaced needlessly");
        }
        env.assert_no_leaks().await;
    }
}

#[tokio::test]
async fn errors_and_throttling_converge_without_duplicates() {
    let env = setup("exo-faults").await;
    env.fake.set_faults(Faults { error_rate: 0.3, throttle_rate: 0.15, ..Faults::default() });
    let names = ["a", "b", "c", "d"];
    for name in names {
        env.apply(access_key(name, role_id_mode(), json!({}))).await;
    }
    let mut ids = Vec::new();
    for name in names {
        ids.push(env.issued(name).await);
    }
    env.wait_live("one live key per AccessKey", ids).await;
    let failures = env.fake.requests().iter().filter(|r| r.status >= 500 || r.status == 429).count();
    assert!(failures > 0, "no fault was injected: the test proves nothing");
    env.fake.set_faults(Faults::default());
    for name in names {
        keys::delete_access_key(&env.client, &env.ns, name).await;
    }
    for name in names {
        keys::wait_gone(&env.client, &env.ns, name).await;
    }
    assert!(env.live_ids().is_empty());
    env.assert_no_leaks().await;
}

#[tokio::test]
async fn wrong_admin_credentials_make_the_issuer_not_ready_without_hammering_the_provider() {
    let env = setup_with_secret("exo-wrong-creds", "wrongsecretwrongsecretwrongsecretwrongsecre").await;
    env.apply(access_key("k", role_id_mode(), json!({}))).await;
    let issuers: Api<cloudkeys::api::KeyIssuer> = Api::namespaced(env.client.clone(), &env.ns);
    let issuer = support::eventually("the issuer to be not ready", keys::WAIT, || {
        let issuers = issuers.clone();
        async move {
            let i = issuers.get("exoscale").await.ok()?;
            let c = i.status.as_ref()?.conditions.first()?.clone();
            (c.status == "False" && c.reason == "InvalidCredentials").then_some(c)
        }
    })
    .await;
    assert!(issuer.message.contains("Invalid request signature"), "{}", issuer.message);
    keys::wait_reason(&env.client, &env.ns, "k", "IssuerNotReady").await;

    let window = Duration::from_secs(20);
    let start = Instant::now();
    let before = env.fake.requests().len();
    tokio::time::sleep(window).await;
    let during = env.fake.requests().iter().filter(|r| r.at >= start).count();
    assert!(
        (during as f64) < window.as_secs_f64() / 5.0,
        "{during} provider requests in {window:?} (before: {before}): the operator hammers a provider that refuses it"
    );
    assert!(env.fake.live_api_keys().is_empty());
}
