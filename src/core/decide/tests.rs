//! Named scenarios: observed state in, next step out.
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::*;
use crate::api::{IssuerKind, PendingKey, RetiredKey};
use crate::providers::Marker;

const UID: &str = "0f8c2d7e-1b2a-4c3d-9e8f-0123456789ab";

fn issuer() -> IssuerRef {
    IssuerRef { name: "local".into(), kind: IssuerKind::KeyIssuer }
}

fn issued(id: &str) -> AccessKeyStatus {
    AccessKeyStatus {
        access_key_id: Some(id.into()),
        key_ref: Some(format!("ref-{id}")),
        key_spec_hash: Some("h1".into()),
        issued_by: Some(issuer()),
        ..AccessKeyStatus::default()
    }
}

fn ours(id: &str) -> SecretState {
    SecretState::Ours { key_id: Some(id.into()), data_intact: true, metadata_current: true }
}

fn owned(id: &str, attempt: &str) -> OwnedKey {
    OwnedKey { access_key_id: Some(id.into()), key_ref: format!("ref-{id}"), marker: Marker::of(UID, attempt) }
}

fn pending(status: &mut AccessKeyStatus, attempt: &str) {
    status.pending = Some(Box::new(PendingKey {
        attempt: attempt.into(),
        issuer: issuer(),
        started_at: Time("2026-11-23T12:00:00Z".parse().expect("time")),
        provider: None,
        spec_hash: None,
        rotate_request: None,
        grace_period_seconds: None,
    }));
}

struct Scenario {
    status: AccessKeyStatus,
    secret: SecretState,
    issuer: IssuerState,
    spec_problem: Option<String>,
    spec_hash: &'static str,
    owned: Option<Vec<OwnedKey>>,
    retired_tried: bool,
    rotation: RotationSettings,
    rotate_request: Option<&'static str>,
    rotate_now: bool,
    consumers: Vec<Workload>,
    blocked_until: Option<jiff::Timestamp>,
    policy_denial: Option<&'static str>,
    revoked_at_provider: bool,
    provider_view: Option<ProviderView>,
    now: jiff::Timestamp,
}

impl Scenario {
    fn new(status: AccessKeyStatus, secret: SecretState) -> Self {
        Self {
            status,
            secret,
            issuer: IssuerState::Ready,
            spec_problem: None,
            spec_hash: "h1",
            owned: None,
            retired_tried: false,
            rotation: RotationSettings::default(),
            rotate_request: None,
            rotate_now: false,
            consumers: Vec::new(),
            blocked_until: None,
            policy_denial: None,
            revoked_at_provider: false,
            provider_view: None,
            now: "2026-11-23T12:00:00Z".parse().expect("time"),
        }
    }

    fn decide(&self) -> Step {
        let issuer_ref = issuer();
        decide(&self.observed(&issuer_ref))
    }

    /// Whether `trigger` applies to this scenario, the Secret holding `in_secret`.
    fn triggers(&self, trigger: Trigger, in_secret: &InSecret<'_>) -> Option<IssueReason> {
        let issuer_ref = issuer();
        trigger(&self.observed(&issuer_ref), in_secret)
    }

    fn observed<'a>(&'a self, issuer_ref: &'a IssuerRef) -> Observed<'a> {
        Observed {
            status: &self.status,
            spec_problem: self.spec_problem.clone(),
            issuer: self.issuer.clone(),
            issuer_ref,
            spec_hash: self.spec_hash,
            secret: &self.secret,
            owned_keys: self.owned.as_deref(),
            retired_tried: self.retired_tried,
            rotation: &self.rotation,
            rotate_request: self.rotate_request,
            rotate_now: self.rotate_now,
            consumers: &self.consumers,
            blocked_until: self.blocked_until,
            policy_denial: self.policy_denial,
            revoked_at_provider: self.revoked_at_provider,
            provider_view: self.provider_view.as_ref(),
            now: self.now,
        }
    }
}

/// The Secret holding K1, as written.
const INTACT: InSecret<'static> = InSecret { current: "K1", key_id: Some("K1"), data_intact: true };

/// A key issued an hour ago, its Secret intact, nothing asked: no trigger applies.
fn at_rest() -> Scenario {
    Scenario::new(issued_ago("K1", "2026-11-23T12:00:00Z".parse().expect("time"), 3600), ours("K1"))
}

#[test]
fn no_trigger_applies_to_a_key_at_rest() {
    let s = at_rest();
    for trigger in TRIGGERS {
        assert_eq!(s.triggers(trigger, &INTACT), None);
    }
}

#[test]
fn trigger_spec_changed() {
    let mut s = at_rest();
    s.spec_hash = "h2";
    assert_eq!(s.triggers(spec_changed, &INTACT), Some(IssueReason::SpecChanged));
}

#[test]
fn trigger_revoked_at_provider() {
    let mut s = at_rest();
    s.revoked_at_provider = true;
    assert_eq!(s.triggers(revoked_at_provider, &INTACT), Some(IssueReason::RevokedAtProvider));
}

#[test]
fn trigger_secret_deleted() {
    let mut s = at_rest();
    s.secret = SecretState::Absent;
    assert_eq!(s.triggers(secret_deleted, &INTACT), Some(IssueReason::SecretDeleted));
}

#[test]
fn trigger_secret_modified() {
    let s = at_rest();
    let other_key = InSecret { key_id: Some("K9"), ..INTACT };
    let edited = InSecret { data_intact: false, ..INTACT };
    let unannotated = InSecret { key_id: None, ..INTACT };
    for in_secret in [other_key, edited, unannotated] {
        assert_eq!(s.triggers(secret_modified, &in_secret), Some(IssueReason::SecretModified));
    }
}

#[test]
fn trigger_requested() {
    let mut s = at_rest();
    s.rotate_request = Some("1");
    assert_eq!(s.triggers(requested, &INTACT), Some(IssueReason::Requested));
}

#[test]
fn trigger_expires_soon() {
    let mut s = at_rest();
    s.status.renewal_time = Some(Time(s.now + jiff::SignedDuration::from_secs(1)));
    assert_eq!(s.triggers(expires_soon, &INTACT), None);
    s.status.renewal_time = Some(Time(s.now));
    assert_eq!(s.triggers(expires_soon, &INTACT), Some(IssueReason::ExpiresSoon));
}

#[test]
fn trigger_scheduled_waits_for_the_last_replaced_key() {
    let mut s = at_rest();
    s.rotation.every = Some(Duration::from_secs(3600));
    assert_eq!(s.triggers(scheduled, &INTACT), Some(IssueReason::Scheduled));
    s.status.retired.push(legacy_retired("K0"));
    assert_eq!(s.triggers(scheduled, &INTACT), None);
}

#[test]
fn the_first_trigger_that_applies_names_the_replacement() {
    // Everything at once: the spec change wins, then what broke the key, then the user, then
    // the clock.
    let mut s = at_rest();
    s.spec_hash = "h2";
    s.revoked_at_provider = true;
    s.rotate_request = Some("1");
    s.rotation.every = Some(Duration::from_secs(60));
    let order: Vec<IssueReason> = TRIGGERS.iter().filter_map(|t| s.triggers(*t, &INTACT)).collect();
    assert_eq!(
        order,
        [IssueReason::SpecChanged, IssueReason::RevokedAtProvider, IssueReason::Requested, IssueReason::Scheduled]
    );
    assert_eq!(s.decide(), Step::Issue { reason: IssueReason::SpecChanged });
}

#[test]
fn new_access_key_issues_its_first_key() {
    let s = Scenario::new(AccessKeyStatus::default(), SecretState::Absent);
    assert_eq!(s.decide(), Step::Issue { reason: IssueReason::FirstKey });
}

#[test]
fn a_key_revoked_at_the_provider_is_replaced_at_once() {
    let mut s = Scenario::new(issued("K1"), ours("K1"));
    s.revoked_at_provider = true;
    // Freshly issued: no hold applies to a dead key.
    s.now = "2026-11-23T12:00:01Z".parse().expect("time");
    s.status.issued_at = Some(Time(s.now));
    assert_eq!(s.decide(), Step::Issue { reason: IssueReason::RevokedAtProvider });
    // A spec change replaces it anyway, under its own reason.
    s.spec_hash = "h2";
    assert_eq!(s.decide(), Step::Issue { reason: IssueReason::SpecChanged });
    // A tightened policy still stops the new key (and revokes nothing).
    s.spec_hash = "h1";
    s.policy_denial = Some("no");
    assert!(matches!(s.decide(), Step::NotReady(Reason::PolicyDenied, _)));
}

#[test]
fn what_the_provider_shows_of_the_key_is_recorded_when_it_is_new() {
    let mut s = Scenario::new(issued("K1"), ours("K1"));
    let used: jiff::Timestamp = "2026-11-23T11:00:00.5Z".parse().expect("time");
    s.provider_view = Some(ProviderView { last_used_at: Some(used), expires_at: None });
    assert_eq!(s.decide(), Step::RecordProviderView { last_used_at: Some(used), expires_at: None });
    // Recorded: a later use is news only a day later.
    s.status.last_used_at = Some(Time("2026-11-23T11:00:00Z".parse().expect("time")));
    assert_eq!(s.decide(), Step::Ready);
    let later: jiff::Timestamp = "2026-11-24T10:59:59Z".parse().expect("time");
    s.provider_view = Some(ProviderView { last_used_at: Some(later), expires_at: None });
    assert_eq!(s.decide(), Step::Ready);
    let day_later: jiff::Timestamp = "2026-11-24T11:00:00Z".parse().expect("time");
    s.provider_view = Some(ProviderView { last_used_at: Some(day_later), expires_at: None });
    assert_eq!(s.decide(), Step::RecordProviderView { last_used_at: Some(day_later), expires_at: None });
    // A key that now expires (set by hand at the provider).
    let expiry: jiff::Timestamp = "2026-11-30T00:00:00Z".parse().expect("time");
    s.provider_view = Some(ProviderView { last_used_at: None, expires_at: Some(Some(expiry)) });
    assert_eq!(s.decide(), Step::RecordProviderView { last_used_at: None, expires_at: Some(Some(expiry)) });
    s.status.expires_at = Some(Time(expiry));
    assert_eq!(s.decide(), Step::Ready);
    s.provider_view = Some(ProviderView { last_used_at: None, expires_at: Some(None) });
    assert_eq!(s.decide(), Step::RecordProviderView { last_used_at: None, expires_at: Some(None) });
}

#[test]
fn issued_key_with_intact_secret_is_ready() {
    assert_eq!(Scenario::new(issued("K1"), ours("K1")).decide(), Step::Ready);
}

#[test]
fn invalid_spec_is_reported_before_anything_is_created() {
    let mut s = Scenario::new(AccessKeyStatus::default(), SecretState::Absent);
    s.spec_problem = Some("spec.exoscale: bad".into());
    assert_eq!(s.decide(), Step::NotReady(Reason::InvalidSpec, "spec.exoscale: bad".into()));
}

#[test]
fn missing_or_unready_issuer_blocks_issuance() {
    let mut s = Scenario::new(AccessKeyStatus::default(), SecretState::Absent);
    s.issuer = IssuerState::NotFound("KeyIssuer team-a/x not found".into());
    assert!(matches!(s.decide(), Step::NotReady(Reason::IssuerNotFound, _)));
    s.issuer = IssuerState::NotReady("credentials refused".into());
    assert!(matches!(s.decide(), Step::NotReady(Reason::IssuerNotReady, _)));
}

#[test]
fn foreign_secret_is_a_conflict_and_creates_nothing() {
    let s = Scenario::new(AccessKeyStatus::default(), SecretState::Foreign("taken".into()));
    assert!(matches!(s.decide(), Step::NotReady(Reason::SecretConflict, m) if m.starts_with("Secret taken exists")));
    let s = Scenario::new(issued("K1"), SecretState::Foreign("taken".into()));
    assert!(matches!(s.decide(), Step::NotReady(Reason::SecretConflict, _)));
}

#[test]
fn spec_change_replaces_the_key() {
    let mut s = Scenario::new(issued("K1"), ours("K1"));
    s.spec_hash = "h2";
    assert_eq!(s.decide(), Step::Issue { reason: IssueReason::SpecChanged });
}

#[test]
fn secret_deleted_by_hand_issues_new_key() {
    let s = Scenario::new(issued("K1"), SecretState::Absent);
    assert_eq!(s.decide(), Step::Issue { reason: IssueReason::SecretDeleted });
}

#[test]
fn secret_edited_by_hand_issues_new_key() {
    let s = Scenario::new(
        issued("K1"),
        SecretState::Ours { key_id: Some("K1".into()), data_intact: false, metadata_current: true },
    );
    assert_eq!(s.decide(), Step::Issue { reason: IssueReason::SecretModified });
    let s = Scenario::new(issued("K1"), ours("K0"));
    assert_eq!(s.decide(), Step::Issue { reason: IssueReason::SecretModified });
}

fn issued_ago(id: &str, now: jiff::Timestamp, secs: i64) -> AccessKeyStatus {
    let mut status = issued(id);
    status.issued_at = Some(Time(now - jiff::SignedDuration::from_secs(secs)));
    status
}

#[test]
fn a_secret_that_keeps_changing_cannot_make_keys_in_a_loop() {
    let modified = SecretState::Ours { key_id: Some("K1".into()), data_intact: false, metadata_current: true };
    let mut s = Scenario::new(AccessKeyStatus::default(), modified);
    s.status = issued_ago("K1", s.now, 2);
    assert_eq!(s.decide(), Step::WaitBeforeReplacing(IssueReason::SecretModified, Duration::from_secs(8)));
    s.secret = SecretState::Absent;
    assert_eq!(s.decide(), Step::WaitBeforeReplacing(IssueReason::SecretDeleted, Duration::from_secs(8)));
    // A spec change is the user's explicit wish: no wait.
    s.spec_hash = "h2";
    assert_eq!(s.decide(), Step::Issue { reason: IssueReason::SpecChanged });
}

#[test]
fn each_forced_replacement_in_a_row_doubles_the_wait_up_to_an_hour() {
    let mut s = Scenario::new(AccessKeyStatus::default(), SecretState::Absent);
    s.status = issued_ago("K1", s.now, 30);
    s.status.forced_replacements = Some(2);
    assert_eq!(s.decide(), Step::WaitBeforeReplacing(IssueReason::SecretDeleted, Duration::from_secs(10)));
    s.status.issued_at = Some(Time(s.now - jiff::SignedDuration::from_secs(40)));
    assert_eq!(s.decide(), Step::Issue { reason: IssueReason::SecretDeleted });
    assert_eq!(forced_replacement_wait(0), Duration::from_secs(10));
    assert_eq!(forced_replacement_wait(3), Duration::from_secs(80));
    assert_eq!(forced_replacement_wait(40), Duration::from_secs(3600));
}

#[test]
fn the_count_of_forced_replacements_grows_in_a_fight_and_starts_over_once_the_secret_stayed_put() {
    let now: jiff::Timestamp = "2026-11-23T12:00:00Z".parse().expect("time");
    let mut status = issued_ago("K1", now, 21);
    status.forced_replacements = Some(1); // waited 20 s; replaced right after
    assert_eq!(forced_replacements_after(IssueReason::SecretModified, &status, now), 2);
    let mut status = issued_ago("K1", now, 41);
    status.forced_replacements = Some(1); // untouched for twice its 20 s wait: not yet put
    assert_eq!(forced_replacements_after(IssueReason::SecretDeleted, &status, now), 2);
    let mut status = issued_ago("K1", now, 3600);
    status.forced_replacements = Some(5); // untouched for an hour
    assert_eq!(forced_replacements_after(IssueReason::SecretDeleted, &status, now), 1);
    let mut status = issued_ago("K1", now, 7199);
    status.forced_replacements = Some(12); // at the 1 h cap the quiet spell is 2 h
    assert_eq!(forced_replacements_after(IssueReason::SecretDeleted, &status, now), 13);
    assert_eq!(forced_replacements_after(IssueReason::SpecChanged, &status, now), 0);
    assert_eq!(forced_replacements_after(IssueReason::Scheduled, &status, now), 0);
    assert_eq!(forced_replacements_after(IssueReason::SecretDeleted, &issued("K1"), now), 1);
}

#[test]
fn the_users_own_replacements_go_at_once_unless_many_come_in_a_row() {
    let now: jiff::Timestamp = "2026-11-23T12:00:00Z".parse().expect("time");
    type Ask = fn(&mut Scenario);
    let asks: [(Ask, IssueReason); 2] = [
        (|s| s.rotate_request = Some("again"), IssueReason::Requested),
        (|s| s.spec_hash = "h2", IssueReason::SpecChanged),
    ];
    for (ask, reason) in asks {
        // However young the key: at once, as long as fewer than five came in a row.
        let mut s = Scenario::new(issued_ago("K1", now, 1), ours("K1"));
        ask(&mut s);
        for in_a_row in 0..FREE_REPEATS {
            s.status.requested_replacements = Some(in_a_row);
            assert_eq!(s.decide(), Step::Issue { reason }, "{in_a_row} in a row");
        }
        // Then 10 s, 20 s, ... of the current key's age.
        s.status.requested_replacements = Some(FREE_REPEATS);
        assert_eq!(s.decide(), Step::WaitBeforeReplacing(reason, Duration::from_secs(9)));
        s.status.requested_replacements = Some(FREE_REPEATS + 1);
        assert_eq!(s.decide(), Step::WaitBeforeReplacing(reason, Duration::from_secs(19)));
        s.now = now + jiff::SignedDuration::from_secs(19);
        assert_eq!(s.decide(), Step::Issue { reason });
        // Counted from the key before: a quiet hour starts over.
        assert_eq!(requested_replacements_after(reason, &issued_ago("K0", now, 3600), now), 1);
        assert_eq!(requested_replacements_after(reason, &s.status, now), FREE_REPEATS + 2);
        // The Secret's count is another: the user's own changes never lengthen its waits.
        assert_eq!(forced_replacements_after(reason, &s.status, now), 0);
    }
}

/// A tenant sets a new `cloudkeys.io/rotate` value every second for an hour; the operator
/// decides each second. Keys minted, which spend the rate limit every AccessKey of the issuer
/// shares: a handful, not thousands.
#[test]
fn a_loop_of_rotation_requests_mints_a_handful_of_keys_an_hour() {
    let start: jiff::Timestamp = "2026-11-23T12:00:00Z".parse().expect("time");
    let mut status = issued_ago("K0", start, 7200);
    let mut minted = 0u32;
    for second in 0..3600 {
        let now = start + jiff::SignedDuration::from_secs(second);
        let mut s = Scenario::new(status.clone(), ours(status.access_key_id.as_deref().unwrap_or_default()));
        s.now = now;
        s.rotate_request = Some("a new value every second");
        match s.decide() {
            Step::Issue { reason } => {
                minted += 1;
                let requested = requested_replacements_after(reason, &status, now);
                status = issued_ago(&format!("K{minted}"), now, 0);
                status.requested_replacements = Some(requested);
            }
            Step::WaitBeforeReplacing(IssueReason::Requested, _) => {}
            other => panic!("second {second}: unexpected {other:?}"),
        }
    }
    // Five at once, then 10 s, 20 s, 40 s, ... up to an hour between keys.
    assert!(minted <= 15, "{minted} keys minted in an hour");
    assert!(minted > FREE_REPEATS, "{minted}: the requests were not served");
}

/// Another writer deletes the Secret every `every` seconds for `span`, starting right after
/// the key K was issued; the operator replaces the key whenever it decides to. Returns the
/// replacements and the status at the end.
fn secret_deleted_every(every: i64, span: jiff::SignedDuration) -> (u32, AccessKeyStatus) {
    let start: jiff::Timestamp = "2026-11-23T12:00:00Z".parse().expect("time");
    let mut status = issued_ago("K", start, 0);
    let (mut replacements, mut now) = (0, start);
    while now < start + span {
        now += jiff::SignedDuration::from_secs(every);
        let mut s = Scenario::new(status.clone(), SecretState::Absent);
        s.now = now;
        if let Step::Issue { reason } = s.decide() {
            status.forced_replacements = Some(forced_replacements_after(reason, &status, now));
            status.issued_at = Some(Time(now));
            replacements += 1;
        }
    }
    (replacements, status)
}

#[test]
fn a_sync_tool_rewriting_the_secret_every_few_minutes_is_backed_off_too() {
    // Every 3 minutes, for a day: the waits grow to an hour instead of starting over.
    let (keys, _) = secret_deleted_every(180, jiff::SignedDuration::from_hours(24));
    assert!(keys <= 32, "{keys} keys in a day");
}

#[test]
fn a_fight_over_the_secret_mints_at_most_four_keys_a_minute() {
    // Another writer overwrites the Secret two seconds after every write, for a minute.
    let (replacements, status) = secret_deleted_every(2, jiff::SignedDuration::from_secs(60));
    let keys = 1 + replacements;
    assert!(keys <= 4, "{keys} keys minted in a minute");
    assert_eq!(status.forced_replacements, Some(2));
}

#[test]
fn key_near_expiry_is_replaced() {
    let mut s = Scenario::new(issued("K1"), ours("K1"));
    s.status.issued_at = Some(Time(s.now - jiff::SignedDuration::from_secs(3600)));
    s.status.renewal_time = Some(Time(s.now));
    assert_eq!(s.decide(), Step::Issue { reason: IssueReason::ExpiresSoon });
}

#[test]
fn label_drift_is_fixed_in_place() {
    let s = Scenario::new(
        issued("K1"),
        SecretState::Ours { key_id: Some("K1".into()), data_intact: true, metadata_current: false },
    );
    assert_eq!(s.decide(), Step::UpdateSecretMetadata);
}

#[test]
fn interrupted_creation_first_lists_owned_keys() {
    let mut status = AccessKeyStatus::default();
    pending(&mut status, "attempt001");
    assert_eq!(Scenario::new(status, SecretState::Absent).decide(), Step::ListOwnedKeys);
}

#[test]
fn crash_after_secret_write_adopts_the_key_in_the_secret() {
    let mut status = AccessKeyStatus::default();
    pending(&mut status, "attempt001");
    let mut s = Scenario::new(status, ours("K2"));
    s.owned = Some(vec![owned("K2", "attempt001")]);
    assert_eq!(s.decide(), Step::Adopt(owned("K2", "attempt001")));
}

#[test]
fn crash_before_secret_write_revokes_the_orphan() {
    let mut status = issued("K1");
    pending(&mut status, "attempt002");
    let mut s = Scenario::new(status, ours("K1"));
    s.owned = Some(vec![owned("K1", "attempt001"), owned("K2", "attempt002")]);
    assert_eq!(s.decide(), Step::ResolvePending { revoke: vec![owned("K2", "attempt002")] });
}

#[test]
fn duplicate_keys_of_one_attempt_keep_only_the_one_in_the_secret() {
    let mut status = AccessKeyStatus::default();
    pending(&mut status, "attempt001");
    let mut s = Scenario::new(status.clone(), ours("K3"));
    s.owned = Some(vec![owned("K2", "attempt001"), owned("K3", "attempt001")]);
    assert_eq!(s.decide(), Step::Adopt(owned("K3", "attempt001")));
    // After adoption K3 is current; the duplicate goes when the attempt is resolved.
    let mut status = issued("K3");
    pending(&mut status, "attempt001");
    let mut s = Scenario::new(status, ours("K3"));
    s.owned = Some(vec![owned("K2", "attempt001"), owned("K3", "attempt001")]);
    assert_eq!(s.decide(), Step::ResolvePending { revoke: vec![owned("K2", "attempt001")] });
}

#[test]
fn crash_before_create_resolves_with_nothing_to_revoke() {
    let mut status = AccessKeyStatus::default();
    pending(&mut status, "attempt001");
    let mut s = Scenario::new(status, SecretState::Absent);
    s.owned = Some(vec![]);
    assert_eq!(s.decide(), Step::ResolvePending { revoke: vec![] });
}

#[test]
fn a_tampered_secret_is_never_adopted() {
    let mut status = AccessKeyStatus::default();
    pending(&mut status, "attempt001");
    let mut s = Scenario::new(
        status,
        SecretState::Ours { key_id: Some("K2".into()), data_intact: false, metadata_current: true },
    );
    s.owned = Some(vec![owned("K2", "attempt001")]);
    assert_eq!(s.decide(), Step::ResolvePending { revoke: vec![owned("K2", "attempt001")] });
}

#[test]
fn the_current_key_is_kept_even_when_listed_under_another_reference() {
    let mut status = issued("K1");
    pending(&mut status, "attempt002");
    let mut s = Scenario::new(status, ours("K1"));
    let mut relisted = owned("K1", "attempt001");
    relisted.key_ref = "api-key:K1".into();
    s.owned = Some(vec![relisted]);
    assert_eq!(s.decide(), Step::ResolvePending { revoke: vec![] });
}

/// A key retired by an operator older than rotation: no schedule, revoked at once.
fn legacy_retired(id: &str) -> RetiredKey {
    RetiredKey {
        access_key_id: id.into(),
        key_ref: format!("ref-{id}"),
        issuer: issuer(),
        retired_at: None,
        revoke_after: None,
        grace_period_seconds: None,
        expires_at: None,
        last_used_at: None,
        held_until: None,
    }
}

fn workload(name: &str, key_id: Option<&str>, rolled_out: bool) -> Workload {
    Workload {
        kind: crate::api::WorkloadKind::Deployment,
        name: name.into(),
        key_id: key_id.map(Into::into),
        rolled_out,
    }
}

fn target(name: &str) -> ConsumerTarget {
    ConsumerTarget { kind: crate::api::WorkloadKind::Deployment, name: name.into() }
}

/// K2 is current and in the Secret; K1 was replaced `ago` seconds before now.
fn rotated(ago: i64) -> Scenario {
    let mut s = Scenario::new(issued("K2"), ours("K2"));
    let then = s.now - jiff::SignedDuration::from_secs(ago);
    s.status.issued_at = Some(Time(then));
    s.status.retired.push(rotation::retire(
        "K1".into(),
        "ref-K1".into(),
        issuer(),
        None,
        Duration::from_secs(600),
        then,
    ));
    s
}

#[test]
fn after_a_replacement_the_consumers_are_restarted_for_the_new_key_once() {
    let mut s = rotated(1);
    s.consumers =
        vec![workload("api", Some("K1"), true), workload("web", None, true), workload("db", Some("K2"), false)];
    assert_eq!(s.decide(), Step::RestartConsumers(vec![target("api"), target("web")]));
    // Restarted (their templates name K2 now): never patched again, their rollout recorded.
    s.consumers = vec![workload("api", Some("K2"), false), workload("db", Some("K2"), false)];
    assert!(matches!(s.decide(), Step::RecordConsumers { start_grace: false, .. }));
    // A cache still showing the old template rolled out proves nothing about the new one.
    s.consumers = vec![workload("api", Some("K1"), true), workload("db", Some("K2"), false)];
    s.status.consumers = vec![ConsumerStatus {
        kind: crate::api::WorkloadKind::Deployment,
        name: "api".into(),
        key_id: "K2".into(),
        rolled_out: false,
    }];
    assert!(matches!(s.decide(), Step::RecordConsumers { start_grace: false, .. }), "{:?}", s.decide());
    s.status.consumers.clear();
    s.consumers = vec![workload("api", Some("K2"), false), workload("db", Some("K2"), false)];
    let Step::RecordConsumers { consumers, start_grace: false, .. } = s.decide() else {
        panic!("expected the rollout recorded: {:?}", s.decide())
    };
    assert_eq!(consumers.len(), 2);
    s.status.consumers = consumers;
    assert_eq!(s.decide(), Step::Ready, "nothing new: wait for the rollout");
    // A cache that does not show the restart yet changes nothing: the record says it was done.
    s.consumers = vec![workload("api", Some("K1"), false), workload("db", Some("K2"), false)];
    assert_eq!(s.decide(), Step::Ready);
}

#[test]
fn the_grace_period_starts_once_every_consumer_rolled_out() {
    let mut s = rotated(60);
    s.consumers = vec![workload("api", Some("K2"), true)];
    let step = s.decide();
    let Step::RecordConsumers { start_grace: true, timed_out, .. } = &step else { panic!("{step:?}") };
    assert!(timed_out.is_empty());
    // No consumers at all: the grace period starts at once.
    s.consumers = Vec::new();
    assert!(matches!(s.decide(), Step::RecordConsumers { start_grace: true, .. }));
}

#[test]
fn a_rollout_that_never_ends_starts_the_grace_period_at_the_timeout_naming_the_workload() {
    let mut s = rotated(1799);
    s.consumers = vec![workload("stuck", Some("K2"), false)];
    s.status.consumers = vec![ConsumerStatus {
        kind: crate::api::WorkloadKind::Deployment,
        name: "stuck".into(),
        key_id: "K2".into(),
        rolled_out: false,
    }];
    assert_eq!(s.decide(), Step::Ready);
    let mut s2 = rotated(1800);
    s2.consumers = s.consumers.clone();
    s2.status.consumers = s.status.consumers.clone();
    let step = s2.decide();
    assert!(
        matches!(&step, Step::RecordConsumers { start_grace: true, timed_out, .. } if timed_out == &vec![target("stuck")]),
        "{step:?}"
    );
}

#[test]
fn a_replaced_key_is_revoked_only_when_its_grace_period_is_over() {
    let mut s = rotated(60);
    rotation::start_grace(&mut s.status, s.now - jiff::SignedDuration::from_secs(30));
    assert_eq!(s.decide(), Step::Ready, "570 s of grace left");
    s.now += jiff::SignedDuration::from_secs(570);
    assert_eq!(s.decide(), Step::RevokeRetired);
}

#[test]
fn rotation_is_scheduled_requested_or_waits_for_the_replaced_key() {
    let mut s = Scenario::new(issued_ago("K1", "2026-11-23T12:00:00Z".parse().expect("time"), 3600), ours("K1"));
    s.rotation.every = Some(Duration::from_secs(3600));
    assert_eq!(s.decide(), Step::Issue { reason: IssueReason::Scheduled });
    s.rotation.every = Some(Duration::from_secs(7200));
    let at = s.now + jiff::SignedDuration::from_secs(3600);
    assert_eq!(s.decide(), Step::UpdateSchedule(Some(at)));
    s.status.next_rotation_time = Some(Time(at));
    assert_eq!(s.decide(), Step::Ready);
    s.rotate_request = Some("1");
    assert_eq!(s.decide(), Step::Issue { reason: IssueReason::Requested });
    // By the clock, one rotation at a time; by request, at once.
    let mut s = rotated(60);
    s.rotation.every = Some(Duration::from_secs(60));
    assert_ne!(s.decide(), Step::Issue { reason: IssueReason::Scheduled });
    s.rotate_request = Some("2");
    // At once, but never a third live key: the replaced key waiting goes first (see below).
    let early = Step::RevokeEarly { reason: IssueReason::Requested, key_refs: vec!["ref-K1".into()] };
    assert_eq!(s.decide(), early);
}

#[test]
fn a_third_key_first_revokes_the_oldest_replaced_key() {
    // K1 was replaced by K2 a minute ago and is in its grace period; a rotation request comes.
    let mut s = rotated(60);
    rotation::start_grace(&mut s.status, s.now - jiff::SignedDuration::from_secs(30));
    s.rotate_request = Some("2");
    assert_eq!(s.decide(), Step::RevokeEarly { reason: IssueReason::Requested, key_refs: vec!["ref-K1".into()] });
    // Revoked (its entry gone only once the provider confirmed): now the new key is minted.
    s.status.retired.clear();
    assert_eq!(s.decide(), Step::Issue { reason: IssueReason::Requested });
}

#[test]
fn every_replacement_makes_room_first_even_while_the_consumers_roll_out() {
    type Change = fn(&mut Scenario);
    let reasons: [(&str, Change, IssueReason); 5] = [
        ("spec", |s| s.spec_hash = "h2", IssueReason::SpecChanged),
        ("secret deleted", |s| s.secret = SecretState::Absent, IssueReason::SecretDeleted),
        ("secret edited", |s| s.secret = ours("K9"), IssueReason::SecretModified),
        ("expiry", |s| s.status.renewal_time = Some(Time(s.now)), IssueReason::ExpiresSoon),
        ("revoked at the provider", |s| s.revoked_at_provider = true, IssueReason::RevokedAtProvider),
    ];
    for (what, change, reason) in reasons {
        // Old enough for any hold; K1 still awaits the rollout of K2's consumers.
        let mut s = rotated(7200);
        s.consumers = vec![workload("api", Some("K2"), false)];
        change(&mut s);
        assert_eq!(s.decide(), Step::RevokeEarly { reason, key_refs: vec!["ref-K1".into()] }, "{what}");
    }
}

#[test]
fn keys_stacked_by_an_older_operator_are_revoked_down_to_one_replaced_key_oldest_first() {
    let mut s = rotated(60);
    s.status.retired.insert(0, legacy_retired("K0"));
    let later = s.now - jiff::SignedDuration::from_secs(30);
    s.status.retired.push(rotation::retire("K1b".into(), "ref-K1b".into(), issuer(), None, Duration::ZERO, later));
    s.rotate_request = Some("3");
    // K0 is due anyway; past that pass, all three go before a fourth key is minted.
    s.retired_tried = true;
    let refs = vec!["ref-K0".to_string(), "ref-K1".into(), "ref-K1b".into()];
    assert_eq!(s.decide(), Step::RevokeEarly { reason: IssueReason::Requested, key_refs: refs });
    // Without a current key (none recorded), one replaced key may stay next to the first key.
    let mut status = AccessKeyStatus::default();
    status.retired.push(legacy_retired("K0"));
    let mut s = Scenario::new(status, SecretState::Absent);
    s.retired_tried = true;
    assert_eq!(s.decide(), Step::Issue { reason: IssueReason::FirstKey });
}

#[test]
fn a_replacement_that_cannot_go_ahead_cuts_no_grace_period_short() {
    let mut s = rotated(60);
    rotation::start_grace(&mut s.status, s.now - jiff::SignedDuration::from_secs(30));
    s.rotate_request = Some("2");
    // Refused by the provider a moment ago: wait, K1 keeps its grace period.
    s.blocked_until = Some(s.now + jiff::SignedDuration::from_secs(60));
    assert_eq!(s.decide(), Step::WaitBeforeReplacing(IssueReason::Requested, Duration::from_secs(60)));
    // Refused by the policy: no new key, so no early revocation either.
    s.blocked_until = None;
    s.policy_denial = Some("denied");
    assert_eq!(s.decide(), Step::NotReady(Reason::PolicyDenied, "denied".into()));
    // A Secret overwritten again too soon waits its turn, with K1 still live.
    s.policy_denial = None;
    s.rotate_request = None;
    s.secret = SecretState::Absent;
    s.status.forced_replacements = Some(5);
    assert!(matches!(s.decide(), Step::WaitBeforeReplacing(IssueReason::SecretDeleted, _)), "{:?}", s.decide());
}

#[test]
fn a_held_back_replacement_does_not_hold_up_the_rollout_of_the_one_before() {
    let mut s = rotated(60);
    s.consumers = vec![workload("api", Some("K2"), true)];
    s.rotate_request = Some("2");
    s.blocked_until = Some(s.now + jiff::SignedDuration::from_secs(600));
    assert!(matches!(s.decide(), Step::RecordConsumers { start_grace: true, .. }), "{:?}", s.decide());
    s.policy_denial = Some("denied");
    assert!(matches!(s.decide(), Step::RecordConsumers { start_grace: true, .. }));
}

#[test]
fn a_workload_that_cannot_be_restarted_stops_mattering_at_the_timeout() {
    let mut s = rotated(1800);
    s.consumers = vec![workload("locked", Some("K1"), true)];
    let step = s.decide();
    assert!(
        matches!(&step, Step::RecordConsumers { start_grace: true, timed_out, .. } if timed_out == &vec![target("locked")]),
        "{step:?}"
    );
}

#[test]
fn a_leaked_key_waits_for_no_rollout() {
    let mut s = rotated(1);
    s.status.retired[0].grace_period_seconds = Some(0);
    s.consumers = vec![workload("api", None, true)];
    assert_eq!(s.decide(), Step::RestartConsumers(vec![target("api")]));
    s.consumers = vec![workload("api", Some("K2"), false)];
    assert!(matches!(s.decide(), Step::RecordConsumers { start_grace: true, .. }));
}

#[test]
fn a_refused_new_key_is_not_asked_for_again_before_its_backoff() {
    let mut s = Scenario::new(issued("K1"), ours("K1"));
    s.rotate_request = Some("1");
    s.blocked_until = Some(s.now + jiff::SignedDuration::from_secs(60));
    assert_eq!(s.decide(), Step::WaitBeforeReplacing(IssueReason::Requested, Duration::from_secs(60)));
    s.blocked_until = Some(s.now);
    assert_eq!(s.decide(), Step::Issue { reason: IssueReason::Requested });
}

#[test]
fn a_policy_denial_stops_new_keys_and_leaves_the_current_one_alone() {
    let mut s = Scenario::new(AccessKeyStatus::default(), SecretState::Absent);
    s.policy_denial = Some("spec.exoscale.roleId R is not allowed");
    assert_eq!(s.decide(), Step::NotReady(Reason::PolicyDenied, "spec.exoscale.roleId R is not allowed".into()));
    // Issued before the policy tightened: kept, and still Ready while nothing is to replace.
    let mut s = Scenario::new(issued("K1"), ours("K1"));
    s.policy_denial = Some("denied");
    assert_eq!(s.decide(), Step::Ready);
    s.rotate_request = Some("1");
    assert_eq!(s.decide(), Step::NotReady(Reason::PolicyDenied, "denied".into()));
}

#[test]
fn retired_keys_are_revoked_once_per_pass() {
    let mut status = issued("K2");
    status.retired.push(legacy_retired("K1"));
    let mut s = Scenario::new(status, ours("K2"));
    assert_eq!(s.decide(), Step::RevokeRetired);
    s.retired_tried = true;
    assert_eq!(s.decide(), Step::Ready);
}

#[test]
fn retired_keys_are_not_revoked_again_by_pending_resolution() {
    let mut status = issued("K2");
    status.retired.push(legacy_retired("K1"));
    pending(&mut status, "attempt003");
    let mut s = Scenario::new(status, ours("K2"));
    s.owned = Some(vec![owned("K1", "attempt001"), owned("K2", "attempt002")]);
    assert_eq!(s.decide(), Step::ResolvePending { revoke: vec![] });
}

/// Finding 4a: the count of the user's replacements in a row goes back to zero with any
/// replacement the clock makes. A tenant sets `rotation: {every: 1m, gracePeriod: 0s}` (the
/// minimum; no replaced key left to hold the schedule back), asks for five rotations at once, waits for the
/// scheduled one (which starts the count over), and asks for five more: six keys a minute for
/// each AccessKey, all hour long, where the backoff promises a handful an hour.
#[test]
fn rotation_requests_between_scheduled_rotations_mint_a_handful_of_keys_an_hour() {
    let start: jiff::Timestamp = "2026-11-23T12:00:00Z".parse().expect("time");
    let mut status = issued_ago("K0", start, 7200);
    let mut minted = 0u32;
    let mut requested = 0u32;
    for second in 0..3600 {
        let now = start + jiff::SignedDuration::from_secs(second);
        let mut s = Scenario::new(status.clone(), ours(status.access_key_id.as_deref().unwrap_or_default()));
        s.now = now;
        s.rotation.every = Some(Duration::from_secs(60));
        // The tenant asks only while requests go at once; otherwise it lets the clock rotate.
        if status.requested_replacements.unwrap_or(0) < FREE_REPEATS {
            s.rotate_request = Some("a new value");
        }
        match s.decide() {
            Step::Issue { reason } => {
                minted += 1;
                requested += u32::from(reason == IssueReason::Requested);
                let count = requested_replacements_after(reason, &status, now);
                status = issued_ago(&format!("K{minted}"), now, 0);
                status.requested_replacements = Some(count);
            }
            Step::UpdateSchedule(_) | Step::WaitBeforeReplacing(..) | Step::Ready => {}
            other => panic!("second {second}: unexpected {other:?}"),
        }
    }
    // The clock alone makes 60 an hour (rotation.every: 1m is allowed); the requests on top of
    // it should be a handful, as in `a_loop_of_rotation_requests_mints_a_handful_of_keys_an_hour`.
    assert!(requested <= 15, "{requested} keys minted for rotation requests in an hour ({minted} in all)");
}

/// Finding 4b (regression): before, a spec change started the count of forced replacements
/// over; now three edits of the spec in a row (a user fixing a template) make the next
/// replacement of a deleted Secret wait 80 s instead of 10 s, the workload without credentials
/// all that time.
#[test]
fn spec_changes_do_not_lengthen_the_wait_before_a_deleted_secret_is_replaced() {
    let now: jiff::Timestamp = "2026-11-23T12:00:00Z".parse().expect("time");
    let mut status = issued_ago("K0", now, 7200);
    for edit in 1..=3 {
        let forced = forced_replacements_after(IssueReason::SpecChanged, &status, now);
        let requested = requested_replacements_after(IssueReason::SpecChanged, &status, now);
        status = issued_ago(&format!("K{edit}"), now, 0);
        status.forced_replacements = Some(forced);
        status.requested_replacements = Some(requested);
    }
    assert_eq!(
        replacement_hold(IssueReason::SecretDeleted, &status),
        Some(FORCED_REPLACEMENT_WAIT),
        "the first replacement the Secret forces waits as long as it did before"
    );
}

/// Windows of an hour from 02:00 UTC every day: closed at the scenarios' noon.
fn nightly() -> crate::core::windows::Windows {
    let window = crate::api::RotationWindow { schedule: "0 2 * * *".into(), duration: "1h".into(), time_zone: None };
    crate::core::windows::Windows::parse(&[window], "rotation.windows").expect("valid window")
}

/// The window after the scenarios' noon.
fn tonight() -> jiff::Timestamp {
    "2026-11-24T02:00:00Z".parse().expect("time")
}

/// A key due by the schedule (every 30m, issued an hour ago) with nightly windows, and
/// `nextRotationTime` recorded as tonight's window.
fn due_outside_the_windows() -> Scenario {
    let mut s = at_rest();
    s.rotation.every = Some(Duration::from_secs(1800));
    s.rotation.windows = nightly();
    s.status.next_rotation_time = Some(Time(tonight()));
    s
}

#[test]
fn a_scheduled_rotation_outside_the_windows_waits_for_the_next_one() {
    let mut s = due_outside_the_windows();
    assert_eq!(s.decide(), Step::Deferred { reason: IssueReason::Scheduled, until: tonight() });
    // Recorded otherwise (before the windows were set): the window start is recorded first.
    s.status.next_rotation_time = Some(Time(s.now - jiff::SignedDuration::from_secs(1800)));
    assert_eq!(s.decide(), Step::UpdateSchedule(Some(tonight())));
    // Once the window is open, it goes.
    let mut s = due_outside_the_windows();
    s.now = tonight() + jiff::SignedDuration::from_secs(60);
    assert_eq!(s.decide(), Step::Issue { reason: IssueReason::Scheduled });
}

#[test]
fn replacements_forced_by_the_secret_or_the_provider_ignore_the_windows() {
    let mut s = due_outside_the_windows();
    s.secret = SecretState::Absent;
    assert_eq!(s.decide(), Step::Issue { reason: IssueReason::SecretDeleted });
    let mut s = due_outside_the_windows();
    s.secret = SecretState::Ours { key_id: Some("K1".into()), data_intact: false, metadata_current: true };
    assert_eq!(s.decide(), Step::Issue { reason: IssueReason::SecretModified });
    let mut s = due_outside_the_windows();
    s.revoked_at_provider = true;
    assert_eq!(s.decide(), Step::Issue { reason: IssueReason::RevokedAtProvider });
}

#[test]
fn a_rotation_request_waits_for_the_window_unless_asked_now() {
    let mut s = at_rest();
    s.rotation.windows = nightly();
    s.rotate_request = Some("1");
    // The request is the next rotation: recorded, then waited for.
    assert_eq!(s.decide(), Step::UpdateSchedule(Some(tonight())));
    s.status.next_rotation_time = Some(Time(tonight()));
    assert_eq!(s.decide(), Step::Deferred { reason: IssueReason::Requested, until: tonight() });
    s.rotate_now = true;
    assert_eq!(s.decide(), Step::Issue { reason: IssueReason::Requested });
}

#[test]
fn an_expiring_key_waits_for_a_window_only_while_one_opens_before_it_must_go() {
    // Renewal due a minute ago; a window tonight, 14 hours away.
    let mut s = at_rest();
    s.rotation.windows = nightly();
    s.status.renewal_time = Some(Time(s.now - jiff::SignedDuration::from_secs(60)));
    s.status.expires_at = Some(Time(s.now + jiff::SignedDuration::from_secs(3 * 86_400)));
    s.status.next_rotation_time = Some(Time(tonight()));
    assert_eq!(s.decide(), Step::Deferred { reason: IssueReason::ExpiresSoon, until: tonight() });
    // Expiring in ten minutes: no window before it must be replaced; it goes now, and so does a
    // request that waited for a window.
    s.status.expires_at = Some(Time(s.now + jiff::SignedDuration::from_secs(600)));
    assert_eq!(s.decide(), Step::Issue { reason: IssueReason::ExpiresSoon });
    s.rotate_request = Some("1");
    assert_eq!(s.decide(), Step::Issue { reason: IssueReason::ExpiresSoon });
}

#[test]
fn without_windows_nothing_is_deferred() {
    let mut s = at_rest();
    s.rotation.every = Some(Duration::from_secs(1800));
    assert_eq!(s.decide(), Step::Issue { reason: IssueReason::Scheduled });
    let mut s = at_rest();
    s.rotate_request = Some("1");
    assert_eq!(s.decide(), Step::Issue { reason: IssueReason::Requested });
}
