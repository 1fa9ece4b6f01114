//! Rotation windows end to end: the operator process, the real apiserver with
//! kube-controller-manager's deployment controllers, and the Exoscale fake, whose record of
//! each request's wall-clock time says when a key was really created.
//!
//! A scheduled rotation begins only inside a window (its consumer restart too); what cannot wait
//! (the Secret deleted, `cloudkeys rotate --now`) does not; a window that cannot be read, or
//! never opens, is `InvalidSpec`, naming the field.

use crate::{fakes, support};

use cloudkeys::api::{AccessKey, RotationWindow};
use cloudkeys::core::windows::Windows;
use fakes::exoscale::{ExoscaleFake, PREEXISTING_ROLE_ID};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Event, Secret};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::Client;
use serde_json::{json, Value};
use support::exoscale::{self, ADMIN_KEY, ADMIN_SECRET};
use support::keys;
use support::operator::Operator;

struct Env {
    client: Client,
    ns: String,
    fake: ExoscaleFake,
    _op: Operator,
}

async fn setup(test: &str) -> Env {
    let client = support::client().await;
    support::install_crds(&client).await;
    let ns = support::namespace(&client, test).await;
    let fake = ExoscaleFake::start(ADMIN_KEY, ADMIN_SECRET);
    exoscale::issuer_with_credentials(&client, &ns, &fake.endpoint(), ADMIN_SECRET).await;
    let op = Operator::start(&ns);
    Env { client, ns, fake, _op: op }
}

impl Env {
    fn access_keys(&self) -> Api<AccessKey> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    async fn apply_key(&self, extra: Value) {
        let manifest = keys::manifest("k", "exoscale", "exoscale", json!({"roleId": PREEXISTING_ROLE_ID}), extra);
        support::apply_json(&self.client, &self.ns, manifest).await;
    }

    async fn issued(&self) -> AccessKey {
        keys::wait_issued(&self.client, &self.ns, "k").await
    }

    /// Waits until the current key is another than `old`, and returns the AccessKey then.
    async fn replaced(&self, old: &str) -> AccessKey {
        let api = self.access_keys();
        support::eventually(&format!("a key replacing {old}"), keys::WAIT * 4, || async {
            let ak = api.get("k").await.ok()?;
            let id = ak.status.as_ref()?.access_key_id.as_deref()?;
            (id != old).then_some(ak)
        })
        .await
    }

    /// When the fake answered the creation of a key (POST, in order).
    fn creations(&self) -> Vec<jiff::Timestamp> {
        self.fake
            .requests()
            .into_iter()
            .filter(|r| r.method == "POST" && r.path == "/v2/api-key" && r.status == 200)
            .filter_map(|r| jiff::Timestamp::try_from(r.wall).ok())
            .collect()
    }

    /// Events recorded on AccessKey `k` with this reason: (message, when).
    async fn events(&self, reason: &str) -> Vec<(String, Option<jiff::Timestamp>)> {
        let list = Api::<Event>::namespaced(self.client.clone(), &self.ns)
            .list(&ListParams::default())
            .await
            .expect("events listed");
        list.items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some(reason) && e.involved_object.name.as_deref() == Some("k"))
            .map(|e| {
                let when = e.event_time.map(|t| t.0).or(e.first_timestamp.map(|t| t.0));
                (e.message.unwrap_or_default(), when)
            })
            .collect()
    }

    async fn wait_event(&self, reason: &str, containing: &str) -> (String, Option<jiff::Timestamp>) {
        support::eventually(&format!("a {reason} event naming {containing}"), keys::WAIT * 4, || async {
            self.events(reason).await.into_iter().find(|(m, _)| m.contains(containing))
        })
        .await
    }
}

fn seconds(s: i64) -> jiff::SignedDuration {
    jiff::SignedDuration::from_secs(s)
}

/// The first whole minute at least `ahead` from now.
fn minute_after(ahead: i64) -> jiff::Timestamp {
    let t = jiff::Timestamp::now().as_second() + ahead;
    jiff::Timestamp::from_second((t + 59) / 60 * 60).expect("a time")
}

#[tokio::test]
async fn a_key_due_every_minute_is_rotated_only_inside_its_window_with_its_restart() {
    let env = setup("win-schedule").await;
    // No scheduler: a Deployment of no replicas rolls out as soon as it is restarted.
    let deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "api"},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "api"}},
            "template": {"metadata": {"labels": {"app": "api"}}, "spec": {"containers": [{"name": "c",
                "image": "registry.invalid/app", "envFrom": [{"secretRef": {"name": "k-credentials"}}]}]}}}});
    support::apply_json(&env.client, &env.ns, deployment).await;
    // A window of a minute, opening once an hour (Zurich's offsets are whole hours: minute M
    // there is minute M in UTC) at a minute well after the key's first due time.
    let opens = minute_after(150);
    let window = RotationWindow {
        schedule: format!("{} * * * *", opens.to_zoned(jiff::tz::TimeZone::UTC).minute()),
        duration: "1m".into(),
        time_zone: Some("Europe/Zurich".into()),
    };
    let windows = Windows::parse(std::slice::from_ref(&window), "rotation.windows").expect("a valid window");
    env.apply_key(json!({
        "rotation": {"every": "1m", "gracePeriod": "0s", "windows": [window]},
        "consumers": {"targets": [{"kind": "Deployment", "name": "api"}]},
    }))
    .await;
    let ak = env.issued().await;
    let status = ak.status.expect("status");
    let first = status.access_key_id.clone().expect("first key");
    let due = status.issued_at.expect("issuedAt").0 + seconds(60);
    let planned = windows.plan(due, due).expect("a window opens");
    assert!(due < opens, "the first key came too late for this test ({due}, the window opens at {opens})");
    assert_eq!(planned, opens, "the window the operator's arithmetic finds");
    assert_eq!(status.next_rotation_time.map(|t| t.0), Some(planned), "nextRotationTime is the window start");

    // Due at `due`, outside the window: deferred, and said so.
    let (note, _) = env.wait_event("RotationDeferred", &planned.to_string()).await;
    assert!(note.contains(&first) && note.contains("rotation.every"), "{note}");
    assert_eq!(env.issued().await.status.and_then(|s| s.access_key_id), Some(first.clone()));

    let ak = env.replaced(&first).await;
    let status = ak.status.expect("status");
    let second = status.access_key_id.clone().expect("second key");
    let (start, end) = windows.open_at(planned).expect("the window is open at its start");
    let created = *env.creations().last().expect("the fake created the second key");
    assert!(start <= created && created < end, "key created at {created}, outside the window [{start}, {end})");
    let issued_at = status.issued_at.expect("issuedAt").0;
    assert!(start <= issued_at && issued_at < end, "issuedAt {issued_at} outside the window [{start}, {end})");
    // The consumer restarted for the new key, inside the window too.
    let (_, restarted) = env.wait_event("ConsumersRestarted", &second).await;
    let restarted = restarted.expect("the event's time");
    assert!(start <= restarted && restarted < end, "restarted at {restarted}, outside the window [{start}, {end})");
    let deployment = Api::<Deployment>::namespaced(env.client.clone(), &env.ns).get("api").await.expect("Deployment");
    let annotations = deployment.spec.template.metadata.and_then(|m| m.annotations).unwrap_or_default();
    assert_eq!(annotations.get("cloudkeys.io/key-id"), Some(&second));
    // The next rotation waits for the next window, an hour later.
    let next = env.issued().await.status.and_then(|s| s.next_rotation_time).map(|t| t.0);
    assert_eq!(next, windows.plan(issued_at + seconds(60), issued_at + seconds(60)));
    assert_eq!(next, Some(start + seconds(3600)));
}

#[tokio::test]
async fn what_cannot_wait_ignores_the_window_and_a_plain_request_waits_for_it() {
    let env = setup("win-forced").await;
    // The issuer's default: a window on the first of January only, closed all through the test.
    let defaults = json!({"spec": {"rotationDefaults": {"windows": [{"schedule": "0 3 1 1 *", "duration": "1h"}]}}});
    Api::<cloudkeys::api::KeyIssuer>::namespaced(env.client.clone(), &env.ns)
        .patch("exoscale", &PatchParams::default(), &Patch::Merge(&defaults))
        .await
        .expect("issuer patched");
    env.apply_key(json!({"rotation": {"gracePeriod": "0s"}})).await;
    let first = env.issued().await.status.and_then(|s| s.access_key_id).expect("first key");

    // The Secret deleted: replaced at once.
    Api::<Secret>::namespaced(env.client.clone(), &env.ns)
        .delete("k-credentials", &DeleteParams::default())
        .await
        .expect("Secret deleted");
    let ak = env.replaced(&first).await;
    let second = ak.status.and_then(|s| s.access_key_id).expect("second key");
    env.wait_event("Rotated", "the Secret was deleted").await;

    // A plain request waits for the issuer's window, and says so.
    let annotate = |value: &str, now: bool| {
        let mut annotations = json!({"cloudkeys.io/rotate": value});
        if now {
            annotations["cloudkeys.io/rotate-now"] = json!("true");
        }
        json!({"metadata": {"annotations": annotations}})
    };
    env.access_keys().patch("k", &PatchParams::default(), &Patch::Merge(&annotate("1", false))).await.expect("asked");
    let january =
        Windows::parse(&[RotationWindow { schedule: "0 3 1 1 *".into(), duration: "1h".into(), time_zone: None }], "w")
            .expect("valid")
            .next_start(jiff::Timestamp::now())
            .expect("a window");
    let (note, _) = env.wait_event("RotationDeferred", &january.to_string()).await;
    assert!(note.contains("cloudkeys.io/rotate") && note.contains("--now"), "{note}");
    let ak = env.issued().await;
    let status = ak.status.expect("status");
    assert_eq!(status.access_key_id.as_deref(), Some(second.as_str()), "a deferred request replaced the key");
    assert_eq!(status.next_rotation_time.map(|t| t.0), Some(january));
    assert_eq!(status.last_rotate_request, None);

    // Asked again with --now: replaced at once.
    env.access_keys().patch("k", &PatchParams::default(), &Patch::Merge(&annotate("2", true))).await.expect("asked");
    let ak = env.replaced(&second).await;
    assert_eq!(ak.status.and_then(|s| s.last_rotate_request).as_deref(), Some("2"));
}

#[tokio::test]
async fn an_invalid_cron_or_time_zone_is_an_invalid_spec_naming_it() {
    let env = setup("win-invalid").await;
    env.apply_key(json!({"rotation": {"windows": [{"schedule": "61 * * * *", "duration": "1h"}]}})).await;
    let ak = keys::wait_reason(&env.client, &env.ns, "k", "InvalidSpec").await;
    let (_, _, message) = keys::ready_condition(&ak).expect("Ready condition");
    assert!(message.contains("spec.rotation.windows[0].schedule") && message.contains("\"61 * * * *\""), "{message}");
    assert!(env.creations().is_empty(), "a key was minted for an invalid spec");

    env.apply_key(json!({"rotation": {"windows": [
        {"schedule": "0 2 * * 1-5", "duration": "2h", "timeZone": "Europe/Zurich"},
        {"schedule": "0 2 * * 6", "duration": "2h", "timeZone": "Mars/Olympus_Mons"}]}}))
        .await;
    // Read for the new generation: the message is about the new spec.
    let ak = keys::wait_reason(&env.client, &env.ns, "k", "InvalidSpec").await;
    let (_, _, message) = keys::ready_condition(&ak).expect("Ready condition");
    assert!(
        message.contains("spec.rotation.windows[1].timeZone") && message.contains("\"Mars/Olympus_Mons\""),
        "{message}"
    );

    // A day that never comes: refused before any search for it.
    env.apply_key(json!({"rotation": {"windows": [{"schedule": "0 0 30 2 *", "duration": "1h"}]}})).await;
    let ak = keys::wait_reason(&env.client, &env.ns, "k", "InvalidSpec").await;
    let (_, _, message) = keys::ready_condition(&ak).expect("Ready condition");
    assert!(
        message.contains("spec.rotation.windows[0].schedule") && message.contains("must open at least once a year"),
        "{message}"
    );

    // Fixed: the key is issued.
    env.apply_key(json!({"rotation": {"windows": [{"schedule": "0 2 * * 1-5", "duration": "2h",
        "timeZone": "Europe/Zurich"}]}}))
        .await;
    env.issued().await;
}
