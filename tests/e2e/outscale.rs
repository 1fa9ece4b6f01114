//! 3DS OUTSCALE end to end: the operator process, the real apiserver, and a fake OSC API that
//! verifies OSC4/AWS4 signatures, enforces INACTIVE-before-delete for EIM users and the quota.

use crate::{fakes, support};
use std::time::{Duration, Instant};

use cloudkeys::api::AccessKey;
use fakes::outscale::{Faults, OutscaleFake, KEY_QUOTA};
use kube::api::Api;
use kube::Client;
use serde_json::{json, Value};
use support::keys::{self, secret_value};
use support::leaks::assert_no_secret_leaks;
use support::operator::Operator;

const REGION: &str = "eu-west-2";
const ADMIN_AK: &str = "ADMINAK0123456789ABC";
const ADMIN_SK: &str = "adminsecretkey0123456789adminsecretkey01";

struct Env {
    client: Client,
    ns: String,
    fake: OutscaleFake,
    op: Operator,
}

async fn setup(test: &str, admin_sk: &str) -> Env {
    let client = support::client().await;
    support::install_crds(&client).await;
    let ns = support::namespace(&client, test).await;
    let fake = OutscaleFake::start(REGION, ADMIN_AK, ADMIN_SK);
    fake.add_user("backup-bot");
    support::create_secret(&client, &ns, "osc-admin", json!({"OSC_ACCESS_KEY": ADMIN_AK, "OSC_SECRET_KEY": admin_sk}))
        .await;
    support::apply_json(&client, &ns, json!({"apiVersion": "cloudkeys.io/v1alpha1", "kind": "KeyIssuer",
        "metadata": {"name": "outscale"},
        "spec": {"outscale": {"region": REGION, "endpoint": fake.endpoint(), "credentialsSecretRef": {"name": "osc-admin"}},
            // Several tests mint keys of the account itself (no userName), which the default refuses.
            "policy": {"outscale": {"allowIssuerIdentity": true}}}}))
    .await;
    let op = Operator::start(&ns);
    Env { client, ns, fake, op }
}

fn access_key(name: &str, outscale: Value, extra: Value) -> Value {
    keys::manifest(name, "outscale", "outscale", outscale, extra)
}

impl Env {
    async fn apply(&self, manifest: Value) {
        support::apply_json(&self.client, &self.ns, manifest).await;
    }

    async fn issued(&self, name: &str) -> cloudkeys::api::AccessKeyStatus {
        let ak = keys::wait_issued(&self.client, &self.ns, name).await;
        let status = ak.status.expect("status");
        let id = status.access_key_id.clone().expect("accessKeyId");
        let secret = keys::secret(&self.client, &self.ns, &format!("{name}-credentials")).await.expect("Secret");
        assert_eq!(secret_value(&secret, "OSC_ACCESS_KEY"), id);
        assert_eq!(secret_value(&secret, "OSC_REGION"), REGION);
        assert!(self.fake.issued_secrets().contains(&secret_value(&secret, "OSC_SECRET_KEY")));
        status
    }

    /// Live keys other than the admin's own.
    fn live_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> =
            self.fake.live_keys().into_iter().map(|k| k.access_key_id).filter(|id| id != ADMIN_AK).collect();
        ids.sort();
        ids
    }

    async fn wait_live(&self, what: &str, want: Vec<String>) {
        keys::wait_live(what, || self.live_ids(), want).await;
    }
}

#[tokio::test]
async fn account_key_without_expiry_is_issued_and_revoked() {
    let env = setup("osc-root", ADMIN_SK).await;
    env.apply(access_key("root", json!({}), json!({}))).await;
    let status = env.issued("root").await;
    assert!(status.expires_at.is_none());
    let id = status.access_key_id.expect("id");
    let key = env.fake.live_keys().into_iter().find(|k| k.access_key_id == id).expect("live");
    assert!(key.user_name.is_none() && key.expiration_date.is_none());
    assert!(key.tag.as_deref().is_some_and(|t| t.starts_with("ck-")), "no ownership marker: {:?}", key.tag);
    keys::delete_access_key(&env.client, &env.ns, "root").await;
    keys::wait_gone(&env.client, &env.ns, "root").await;
    assert!(env.live_ids().is_empty());
    assert_no_secret_leaks(&env.client, &env.ns, &env.op, &env.fake.issued_secrets()).await;
}

#[tokio::test]
async fn eim_user_key_with_expiry_is_issued_and_revoked_inactive_first() {
    let env = setup("osc-eim", ADMIN_SK).await;
    env.apply(access_key("bot", json!({"userName": "backup-bot", "expiresAfter": "2160h"}), json!({}))).await;
    let status = env.issued("bot").await;
    let expires = status.expires_at.expect("expiresAt").0;
    let issued = status.issued_at.expect("issuedAt").0;
    let lifetime = expires.duration_since(issued).as_secs();
    assert!((2160 * 3600 - 5..=2160 * 3600 + 5).contains(&lifetime), "lifetime {lifetime} s");
    let renewal = status.renewal_time.expect("renewalTime").0;
    assert!(renewal > issued && renewal < expires);
    let id = status.access_key_id.expect("id");
    let key = env.fake.live_keys().into_iter().find(|k| k.access_key_id == id).expect("live");
    assert_eq!(key.user_name.as_deref(), Some("backup-bot"));
    keys::delete_access_key(&env.client, &env.ns, "bot").await;
    keys::wait_gone(&env.client, &env.ns, "bot").await;
    assert!(env.live_ids().is_empty());
    let actions: Vec<String> = env.fake.requests().into_iter().map(|r| r.action).collect();
    let update = actions.iter().rposition(|a| a == "UpdateAccessKey").expect("INACTIVE first");
    let delete = actions.iter().rposition(|a| a == "DeleteAccessKey").expect("then delete");
    assert!(update < delete);
    let update_body = env.fake.requests().into_iter().rfind(|r| r.action == "UpdateAccessKey").expect("update").body;
    assert_eq!(update_body["State"], "INACTIVE");
    assert!(update_body.get("ExpirationDate").is_some(), "ExpirationDate must be re-sent: {update_body}");
}

#[tokio::test]
async fn retain_keeps_key_and_secret() {
    let env = setup("osc-retain", ADMIN_SK).await;
    env.apply(access_key("kept", json!({"userName": "backup-bot"}), json!({"deletionPolicy": "Retain"}))).await;
    let id = env.issued("kept").await.access_key_id.expect("id");
    keys::delete_access_key(&env.client, &env.ns, "kept").await;
    // The finalizer goes only once cleanup is done: what it did to the key is done now.
    keys::wait_gone(&env.client, &env.ns, "kept").await;
    assert_eq!(env.live_ids(), vec![id]);
    assert!(keys::secret(&env.client, &env.ns, "kept-credentials").await.is_some());
}

#[tokio::test]
async fn operator_killed_during_an_unanswered_create_ends_with_one_live_key() {
    let mut env = setup("osc-crash", ADMIN_SK).await;
    env.fake.set_faults(Faults { hang_creates: true, ..Faults::default() });
    env.apply(access_key("k", json!({"userName": "backup-bot"}), json!({}))).await;
    support::eventually("the unanswered key to exist", keys::WAIT, || {
        let n = env.live_ids().len();
        async move { (n == 1).then_some(()) }
    })
    .await;
    let orphan = env.live_ids()[0].clone();
    env.op.kill();
    env.fake.set_faults(Faults::default());
    env.op.restart();
    let id = env.issued("k").await.access_key_id.expect("id");
    assert_ne!(id, orphan);
    env.wait_live("only the issued key", vec![id]).await;
    assert_no_secret_leaks(&env.client, &env.ns, &env.op, &env.fake.issued_secrets()).await;
}

#[tokio::test]
async fn key_is_replaced_before_it_expires() {
    let env = setup("osc-renewal", ADMIN_SK).await;
    env.apply(access_key("short", json!({"userName": "backup-bot", "expiresAfter": "75s"}), json!({}))).await;
    let first = env.issued("short").await;
    let first_id = first.access_key_id.clone().expect("id");
    let old_expiry = first.expires_at.clone().expect("expiresAt").0;
    // Replaced when a third of the lifetime remains (after ~50 s), not when it has expired.
    let api: Api<AccessKey> = Api::namespaced(env.client.clone(), &env.ns);
    let renewed = support::eventually("the renewal", Duration::from_secs(90), || async {
        let status = api.get("short").await.ok()?.status?;
        let replaced = status.access_key_id.as_deref() != Some(first_id.as_str()) && status.access_key_id.is_some();
        // Once the grace period is scheduled (right after the Secret update, with no consumers).
        let scheduled = status.retired.iter().all(|r| r.revoke_after.is_some());
        (replaced && scheduled).then_some(status)
    })
    .await;
    assert!(jiff::Timestamp::now() < old_expiry, "the old key expired before it was replaced");
    let second = renewed.access_key_id.clone().expect("id");
    assert!(renewed.expires_at.expect("expiresAt").0 > old_expiry);
    // The old key's grace period (10 min by default) is cut short to end by its expiry.
    let retired = renewed.retired.iter().find(|r| r.access_key_id == first_id).expect("the old key is retired");
    assert!(retired.revoke_after.as_ref().is_some_and(|t| t.0 <= old_expiry), "revoked after it expired: {retired:?}");
    env.wait_live("the old key revoked by its expiry", vec![second]).await;
}

#[tokio::test]
async fn exhausted_key_quota_is_a_clear_not_ready() {
    let env = setup("osc-quota", ADMIN_SK).await;
    for _ in 0..KEY_QUOTA {
        env.fake.add_key(Some("backup-bot"), None);
    }
    env.apply(access_key("one-too-many", json!({"userName": "backup-bot"}), json!({}))).await;
    let ak = keys::wait_reason(&env.client, &env.ns, "one-too-many", "ProviderError").await;
    let (_, _, message) = keys::ready_condition(&ak).expect("condition");
    assert!(message.to_lowercase().contains("quota"), "{message}");
    assert!(message.contains("RequestId") || message.contains("request id"), "{message}");
}

#[tokio::test]
async fn wrong_credentials_never_risk_the_lockout() {
    let env = setup("osc-wrong-creds", "wrongsecretkey0123456789wrongsecretkey01").await;
    env.apply(access_key("k", json!({}), json!({}))).await;
    keys::wait_reason(&env.client, &env.ns, "k", "IssuerNotReady").await;
    // Outscale locks a key out after four bad signatures in a row: never four within a minute.
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(65)).await;
    let failed: Vec<Instant> = env.fake.requests().into_iter().filter(|r| !r.signature_ok).map(|r| r.at).collect();
    assert!(!failed.is_empty(), "the issuer never checked its credentials");
    for (i, t) in failed.iter().enumerate() {
        let within = failed[i..].iter().filter(|u| u.duration_since(*t) < Duration::from_secs(60)).count();
        assert!(within < 4, "{within} failed signatures within a minute");
    }
    assert!(failed.iter().filter(|t| **t >= start).count() <= 2);
}

/// A rotation the key quota refuses: the current key stays in the Secret, live and Ready; the
/// Rotating condition says which limit; the current key is never revoked to make room.
#[tokio::test]
async fn a_rotation_refused_by_the_key_quota_keeps_the_current_key_ready() {
    let env = setup("osc-quota-rotation", ADMIN_SK).await;
    env.apply(access_key("k", json!({"userName": "backup-bot"}), json!({}))).await;
    let current = env.issued("k").await.access_key_id.expect("id");
    for _ in 1..KEY_QUOTA {
        env.fake.add_key(Some("backup-bot"), None);
    }
    let patch = json!({"metadata": {"annotations": {"cloudkeys.io/rotate": "1"}}});
    let api: Api<AccessKey> = Api::namespaced(env.client.clone(), &env.ns);
    api.patch("k", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch)).await.expect("annotated");
    let ak = support::eventually("the rotation to be blocked", keys::WAIT, || async {
        let ak = api.get("k").await.ok()?;
        let blocked = ak.status.as_ref()?.conditions.iter().any(|c| c.type_ == "Rotating" && c.reason == "Blocked");
        blocked.then_some(ak)
    })
    .await;
    let status = ak.status.clone().expect("status");
    let rotating = status.conditions.iter().find(|c| c.type_ == "Rotating").expect("Rotating");
    assert_eq!(rotating.status, "False");
    assert!(rotating.message.contains("at most 10 access keys"), "{}", rotating.message);
    assert!(rotating.message.contains(&current), "{}", rotating.message);
    let (ready, reason, _) = keys::ready_condition(&ak).expect("Ready");
    assert_eq!((ready.as_str(), reason.as_str()), ("True", "Issued"));
    assert_eq!(status.access_key_id.as_deref(), Some(current.as_str()));
    let secret = keys::secret(&env.client, &env.ns, "k-credentials").await.expect("Secret");
    assert_eq!(secret_value(&secret, "OSC_ACCESS_KEY"), current);
    assert!(env.live_ids().contains(&current), "the current key was revoked to make room");
    let events = Api::<k8s_openapi::api::core::v1::Event>::namespaced(env.client.clone(), &env.ns);
    support::eventually("a RotationBlocked event", keys::WAIT, || async {
        let list = events.list(&Default::default()).await.ok()?;
        list.items.iter().any(|e| e.reason.as_deref() == Some("RotationBlocked")).then_some(())
    })
    .await;
}
