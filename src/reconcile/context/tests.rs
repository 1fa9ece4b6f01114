use super::*;
use crate::api::{ClusterKeyIssuer, IssuerKind, KeyIssuer};
use crate::providers::local::{LocalProvider, LocalStore};
use crate::providers::policy_read::{Answer, Question};
use crate::providers::Provider;

/// A context whose client has no apiserver behind it: for what is decided in memory (other
/// modules' tests use it too).
pub(crate) fn offline_context() -> Context {
    offline_context_with(kube::runtime::reflector::store().0, kube::runtime::reflector::store().0)
}

fn offline_context_with(
    key_issuers: kube::runtime::reflector::Store<KeyIssuer>,
    cluster_issuers: kube::runtime::reflector::Store<ClusterKeyIssuer>,
) -> Context {
    let offline = tower::service_fn(|_: http::Request<kube::client::Body>| async {
        Err::<http::Response<kube::client::Body>, _>(std::io::Error::other("no apiserver in unit tests"))
    });
    let caches = Caches {
        access_keys: kube::runtime::reflector::store().0,
        secrets: kube::runtime::reflector::store().0,
        credentials: kube::runtime::reflector::store().0,
        key_issuers,
        cluster_issuers,
        workloads: Workloads::default(),
    };
    let health = Arc::new(Health::new(Duration::from_secs(60), Duration::from_secs(60)));
    let limits = Limits { workers: 4, issuer_concurrency: 2, provider_timeout: Duration::from_secs(10) };
    let guard = TenantGuard::default();
    Context::new(
        Client::new(offline, "default"),
        "cloudkeys".into(),
        HttpConfig::default(),
        caches,
        health,
        limits,
        guard,
    )
}

#[tokio::test]
async fn a_deleted_issuer_or_access_key_leaves_nothing_behind_in_memory() {
    let ctx = offline_context();
    let issuer =
        |name: &str| IssuerId { kind: IssuerKind::KeyIssuer, name: name.into(), namespace: Some("team".into()) };
    let (gone, kept) = (issuer("gone"), issuer("kept"));
    for id in [&gone, &kept] {
        let name = id.to_string();
        ctx.record_check(&name, "fp", true, Duration::from_secs(300));
        assert!(ctx.issuer_slot(&name, "team").await.is_some());
        drop(ctx.hold_writer(&id.holder_key()));
        let client: Arc<dyn Provider> = Arc::new(LocalProvider::new(LocalStore::default()));
        lock(&ctx.registry.cache).insert(format!("{name}@uid-1"), ("fp".into(), client));
        ctx.remember_policy_answer(&name, &role(), PolicyAnswer::new("fp", Answer::NoSuchRole));
    }
    ctx.forget_issuer(&gone);
    let remembered = |id: &IssuerId| {
        let name = id.to_string();
        [
            ctx.next_check(&name, "fp").is_some(),
            lock(&ctx.issuer_slots).contains_key(&name),
            lock(&ctx.hold_writers).contains_key(&id.holder_key()),
            lock(&ctx.registry.cache).contains_key(&format!("{name}@uid-1")),
            lock(&ctx.policy_answers).contains_key(&(name.clone(), role())),
        ]
    };
    assert_eq!(remembered(&gone), [false; 5]);
    assert_eq!(remembered(&kept), [true; 5]);

    ctx.record_failure("team/backups");
    assert_eq!(ctx.record_failure("team/backups"), 1, "failures before this one");
    ctx.record_busy("team/backups");
    let until = jiff::Timestamp::now();
    ctx.block("team/backups", "h1", until);
    assert_eq!(ctx.blocked_until("team/backups", "h1"), Some(until));
    assert_eq!(ctx.blocked_until("team/backups", "h2"), None, "a changed spec is tried at once");
    ctx.forget_access_key("team/backups");
    assert_eq!(ctx.record_failure("team/backups"), 0, "a re-created AccessKey starts afresh");
    assert_eq!(ctx.record_busy("team/backups"), 0);
    assert_eq!((ctx.refusals("team/backups"), ctx.blocked_until("team/backups", "h1")), (0, None));
}

fn role() -> Question {
    Question::ExoscaleRole("r".into())
}

#[tokio::test]
async fn a_policy_answer_is_kept_a_while_for_one_issuer_fingerprint() {
    let ctx = offline_context();
    assert_eq!(ctx.policy_answer("KeyIssuer team/exo", "fp1", &role()), None, "nothing read yet");
    ctx.remember_policy_answer("KeyIssuer team/exo", &role(), PolicyAnswer::new("fp1", Answer::NoSuchRole));
    assert_eq!(ctx.policy_answer("KeyIssuer team/exo", "fp1", &role()), Some(Answer::NoSuchRole));
    assert_eq!(ctx.policy_answer("KeyIssuer team/exo", "fp2", &role()), None, "new credentials: read again");
    assert_eq!(ctx.policy_answer("KeyIssuer team/other", "fp1", &role()), None, "another issuer's is its own");
    let user = Question::OutscaleUser("u".into());
    assert_eq!(ctx.policy_answer("KeyIssuer team/exo", "fp1", &user), None, "another question");
    // Past its time, an answer is not used, and dropped when the next one is kept.
    let Some(long_ago) = Instant::now().checked_sub(POLICY_ANSWER_TTL) else { return };
    let old = PolicyAnswer { read_at: long_ago, ..PolicyAnswer::new("fp1", Answer::NoSuchRole) };
    ctx.remember_policy_answer("KeyIssuer team/exo", &role(), old);
    assert_eq!(ctx.policy_answer("KeyIssuer team/exo", "fp1", &role()), None);
    ctx.remember_policy_answer("KeyIssuer team/third", &role(), PolicyAnswer::new("fp1", Answer::NoSuchRole));
    assert!(!lock(&ctx.policy_answers).contains_key(&("KeyIssuer team/exo".to_string(), role())));
}

#[test]
fn a_copy_from_before_an_own_write_is_known_stale_until_the_cache_shows_the_write() {
    let w = OwnStatusWrites::default();
    assert!(!w.behind_own_write("u", Some("1")));
    let cache_behind = || Some("1".to_string());
    w.wrote_status("u", Some("1".into()), Some("2".into()), cache_behind);
    w.wrote_status("u", Some("2".into()), Some("3".into()), cache_behind);
    assert!(w.behind_own_write("u", Some("1")));
    assert!(w.behind_own_write("u", Some("2")));
    assert!(!w.behind_own_write("u", Some("3")));
    // The cache shows the first write only: still behind the second.
    w.cache_saw("u", Some("2"));
    assert!(w.behind_own_write("u", Some("2")));
    w.cache_saw("u", Some("3"));
    assert!(!w.behind_own_write("u", Some("2")), "forgotten once the cache caught up");
    // Someone else's write after ours also means the cache is past ours.
    w.wrote_status("u", Some("3".into()), Some("4".into()), || Some("3".into()));
    w.cache_saw("u", Some("9"));
    assert!(!w.behind_own_write("u", Some("3")));
    w.wrote_status("v", Some("1".into()), Some("2".into()), || None);
    w.cache_saw("v", None);
    assert!(!w.behind_own_write("v", Some("1")), "a deleted AccessKey is forgotten");
    // The write's event came back before its answer: nothing to wait for, nothing kept.
    w.wrote_status("x", Some("1".into()), Some("2".into()), || Some("2".into()));
    assert!(!w.behind_own_write("x", Some("1")));
    assert!(lock(&w.0).is_empty(), "notes left behind");
}

#[tokio::test]
async fn a_stuck_issuer_turns_callers_away_and_a_busy_one_makes_them_wait_their_turn() {
    let slots = Arc::new(IssuerSlots::new(1));
    let first = slots.clone().acquire().await.expect("a free slot");
    // Taken, and none ever given back: stuck, as far as anyone can tell.
    assert!(slots.clone().acquire().await.is_none());

    // Given back once: the issuer is turning over, so the next caller waits for the slot
    // the holder gives back.
    drop(first);
    let second = slots.clone().acquire().await.expect("free again");
    let waiter = tokio::spawn(slots.clone().acquire());
    // (One thread: the waiter runs up to its wait here, while the slot is still taken.)
    tokio::task::yield_now().await;
    assert!(!waiter.is_finished());
    drop(second);
    assert!(waiter.await.expect("waiter ran").is_some(), "the waiter did not get the slot");
}

#[tokio::test]
async fn only_secrets_an_issuer_names_are_credentials_to_cache() {
    let (key_issuers, mut key_issuer_writer) = kube::runtime::reflector::store::<KeyIssuer>();
    let (cluster_issuers, mut cluster_issuer_writer) = kube::runtime::reflector::store::<ClusterKeyIssuer>();
    let exoscale = |secret: &str| serde_json::json!({"exoscale": {"credentialsSecretRef": {"name": secret}}});
    let key_issuer: KeyIssuer = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "exo", "namespace": "team-a"}, "spec": exoscale("exo-admin")}))
    .expect("KeyIssuer");
    let cluster_issuer: ClusterKeyIssuer =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "shared"}, "spec": exoscale("shared-admin")}))
            .expect("ClusterKeyIssuer");
    key_issuer_writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(key_issuer));
    cluster_issuer_writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(cluster_issuer));
    let ctx = offline_context_with(key_issuers, cluster_issuers);
    let secret = |ns: &str, name: &str| Secret {
        metadata: kube::api::ObjectMeta { name: Some(name.into()), namespace: Some(ns.into()), ..Default::default() },
        ..Secret::default()
    };
    assert!(ctx.names_credentials(&secret("team-a", "exo-admin")));
    assert!(ctx.names_credentials(&secret("cloudkeys", "shared-admin")));
    // Labelled by a tenant, named by no issuer, or named from elsewhere: not cached.
    for (ns, name) in [("team-a", "bulk"), ("team-b", "exo-admin"), ("team-a", "shared-admin")] {
        assert!(!ctx.names_credentials(&secret(ns, name)), "{ns}/{name}");
    }
}
