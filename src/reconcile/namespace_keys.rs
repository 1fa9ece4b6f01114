//! `maxKeysPerNamespace`, exact even when many AccessKeys are created at once.
//!
//! Counting the AccessKey cache alone is not: up to `--concurrency` AccessKeys are reconciled at
//! once, and the cache shows a key only a moment after its status was written, so AccessKeys of
//! one namespace created together would all find the same places free, and all mint. Here a
//! place is taken (an [`Admission`]) under one lock, counting what the cache shows *and* the
//! AccessKeys admitted by this operator that the cache does not show yet. Only the leader
//! reconciles, so these are all the AccessKeys that may be minting.
//!
//! An admission counts:
//! - while the reconcile that took it may still mint (until the [`Admission`] is dropped);
//! - then, if the attempt was recorded (`status.pending`, written before the provider is asked)
//!   or may have been (a write that got no answer), until the cache shows the AccessKey holding
//!   or minting a key of the issuer (from then on the cache counts it), or the AccessKey is gone;
//! - not at all once its attempt failed before anything was recorded, or the policy refused it.
//!
//! Every count takes its snapshot of the cache under the lock too: an admission is let go only
//! because a snapshot showed the AccessKey, and every later count sees a snapshot at least as new.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use kube::ResourceExt;

use crate::api::AccessKey;

use super::sync::lock;
use crate::core::issuers::IssuerId;
use crate::core::observe::holds_key_of;

/// Admissions by issuer and namespace, then by AccessKey uid.
#[derive(Debug, Default)]
pub struct NamespaceKeys {
    places: Mutex<HashMap<String, HashMap<String, Place>>>,
    tokens: AtomicU64,
}

#[derive(Debug, Clone, Copy)]
struct Place {
    /// Which admission took it: a reconcile that asks twice drops its first admission after
    /// taking the second, which must not let the place go.
    token: u64,
    /// The attempt was (or may have been) recorded in the AccessKey's status.
    recorded: bool,
}

/// A place taken for one AccessKey's new key; see the module docs for how long it counts.
#[derive(Debug)]
pub struct Admission<'a> {
    keys: &'a NamespaceKeys,
    scope: String,
    uid: String,
    token: u64,
}

impl NamespaceKeys {
    /// Counts the other AccessKeys of `ak`'s namespace holding or minting a key of its issuer —
    /// those in `cached()` (the AccessKey cache, read under the lock) and those admitted — and
    /// asks `denial` with that count. Allowed: the place is `ak`'s until the admission ends.
    /// Refused: the denial, and any place `ak` held goes.
    pub fn admit(
        &self,
        ak: &AccessKey,
        cached: impl FnOnce() -> Vec<Arc<AccessKey>>,
        denial: impl FnOnce(usize) -> Option<String>,
    ) -> Result<Admission<'_>, String> {
        let ns = ak.namespace().unwrap_or_default();
        let issuer = IssuerId::from_ref(&ak.spec.issuer_ref, &ns);
        let scope = format!("{}@{ns}", issuer.holder_key());
        let uid = ak.uid().unwrap_or_default();
        let mut places = lock(&self.places);
        let cached = cached();
        let in_namespace: HashMap<String, &AccessKey> = cached
            .iter()
            .filter(|a| a.metadata.namespace.as_deref() == Some(ns.as_str()))
            .map(|a| (a.uid().unwrap_or_default(), &**a))
            .collect();
        let admitted = places.entry(scope.clone()).or_default();
        // Recorded and now shown by the cache (or gone): the cache counts it from here on.
        admitted.retain(|other, place| match in_namespace.get(other) {
            None => false,
            Some(a) => !(place.recorded && holds_key_of(a, &issuer, &ns)),
        });
        let mut counted: HashSet<&str> = in_namespace
            .iter()
            .filter(|(other, a)| **other != uid && holds_key_of(a, &issuer, &ns))
            .map(|(other, _)| other.as_str())
            .collect();
        counted.extend(admitted.keys().map(String::as_str).filter(|other| *other != uid));
        match denial(counted.len()) {
            Some(refused) => {
                admitted.remove(&uid);
                if admitted.is_empty() {
                    places.remove(&scope);
                }
                Err(refused)
            }
            None => {
                let token = self.tokens.fetch_add(1, Ordering::Relaxed);
                admitted.insert(uid.clone(), Place { token, recorded: false });
                Ok(Admission { keys: self, scope, uid, token })
            }
        }
    }

    /// The AccessKey `uid` is gone: no place of its counts any more.
    pub fn forget(&self, uid: &str) {
        let mut places = lock(&self.places);
        places.retain(|_, admitted| {
            admitted.remove(uid);
            !admitted.is_empty()
        });
    }

    /// AccessKeys admitted in all (for tests and their assertions).
    #[cfg(test)]
    fn admitted(&self) -> usize {
        lock(&self.places).values().map(HashMap::len).sum()
    }
}

impl Admission<'_> {
    /// Whether the attempt is recorded in the AccessKey's status (or may be: a write sent that
    /// got no answer). Recorded, the place outlives this admission until the cache shows it.
    pub fn recorded(&self, recorded: bool) {
        let mut places = lock(&self.keys.places);
        let place = places.get_mut(&self.scope).and_then(|a| a.get_mut(&self.uid));
        if let Some(place) = place.filter(|p| p.token == self.token) {
            place.recorded = recorded;
        }
    }
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        let mut places = lock(&self.keys.places);
        let Some(admitted) = places.get_mut(&self.scope) else { return };
        if admitted.get(&self.uid).is_some_and(|p| p.token == self.token && !p.recorded) {
            admitted.remove(&self.uid);
        }
        if admitted.is_empty() {
            places.remove(&self.scope);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const MAX: usize = 3;

    fn access_key(name: &str, status: serde_json::Value) -> Arc<AccessKey> {
        Arc::new(
            serde_json::from_value(json!({
                "apiVersion": "cloudkeys.io/v1alpha1", "kind": "AccessKey",
                "metadata": {"name": name, "namespace": "team-a", "uid": format!("uid-{name}")},
                "spec": {"issuerRef": {"name": "local"}, "secretName": "s", "local": {}},
                "status": status,
            }))
            .expect("AccessKey literal"),
        )
    }

    fn fresh(name: &str) -> Arc<AccessKey> {
        access_key(name, json!({}))
    }

    fn holding(name: &str) -> Arc<AccessKey> {
        access_key(name, json!({"accessKeyId": "K", "keyRef": "K", "issuedBy": {"name": "local"}}))
    }

    fn minting(name: &str) -> Arc<AccessKey> {
        access_key(
            name,
            json!({"pending": {"attempt": "a1", "issuer": {"name": "local"}, "startedAt": "2026-12-01T00:00:00Z"}}),
        )
    }

    fn at_most(max: usize) -> impl FnOnce(usize) -> Option<String> {
        move |n| (n >= max).then(|| format!("{n} keys, at most {max}"))
    }

    #[test]
    fn access_keys_reconciled_together_take_the_places_one_by_one() {
        let keys = NamespaceKeys::default();
        let burst: Vec<Arc<AccessKey>> = (0..10).map(|i| fresh(&format!("k{i}"))).collect();
        // The cache shows none of them holding a key: only the admissions count.
        let mut admitted = Vec::new();
        let mut refused = 0;
        for ak in &burst {
            match keys.admit(ak, || burst.clone(), at_most(MAX)) {
                Ok(a) => admitted.push(a),
                Err(why) => {
                    assert!(why.contains("3 keys, at most 3"), "{why}");
                    refused += 1;
                }
            }
        }
        assert_eq!((admitted.len(), refused), (3, 7));
        // An attempt that failed before anything was recorded gives its place back.
        admitted.pop();
        assert!(keys.admit(&burst[9], || burst.clone(), at_most(MAX)).is_ok());
    }

    #[test]
    fn a_recorded_attempt_counts_until_the_cache_shows_it() {
        let keys = NamespaceKeys::default();
        let (a, b) = (fresh("a"), fresh("b"));
        let admission = keys.admit(&a, || vec![a.clone(), b.clone()], at_most(1)).expect("first place");
        admission.recorded(true);
        drop(admission);
        // The reconcile is over, the cache still shows `a` as it was: its place is kept.
        assert!(keys.admit(&b, || vec![a.clone(), b.clone()], at_most(1)).is_err());
        // The cache shows the attempt (then the key): counted from there, the admission goes.
        assert!(keys.admit(&b, || vec![minting("a"), b.clone()], at_most(1)).is_err());
        assert_eq!(keys.admitted(), 0);
        assert!(keys.admit(&b, || vec![holding("a"), b.clone()], at_most(1)).is_err());
        assert!(keys.admit(&b, || vec![holding("a"), b.clone()], at_most(2)).is_ok());
    }

    #[test]
    fn an_access_key_is_never_counted_against_itself_nor_twice() {
        let keys = NamespaceKeys::default();
        let a = holding("a");
        // Replacing its own key: its cached key and its admission are its own.
        let first = keys.admit(&a, || vec![a.clone()], at_most(1)).expect("own key does not count");
        let second = keys.admit(&a, || vec![a.clone()], at_most(1)).expect("nor its own admission");
        // The first admission ends after the second began: the place stays the second's.
        drop(first);
        assert_eq!(keys.admitted(), 1);
        second.recorded(true);
        drop(second);
        // Recorded and shown by the cache: counted once, by the cache.
        let b = fresh("b");
        assert!(keys.admit(&b, || vec![a.clone(), b.clone()], at_most(2)).is_ok());
    }

    #[test]
    fn a_refused_or_deleted_access_key_holds_no_place() {
        let keys = NamespaceKeys::default();
        let (a, b) = (fresh("a"), fresh("b"));
        let admission = keys.admit(&a, || vec![a.clone(), b.clone()], at_most(1)).expect("place");
        admission.recorded(true);
        drop(admission);
        // Refused later (a policy tightened): its place goes with the refusal.
        assert!(keys.admit(&a, || vec![a.clone(), b.clone()], |_| Some("denied".into())).is_err());
        assert!(keys.admit(&b, || vec![a.clone(), b.clone()], at_most(1)).is_ok());
        let other = NamespaceKeys::default();
        other.admit(&a, || vec![a.clone(), b.clone()], at_most(1)).expect("place").recorded(true);
        // Gone from the cache (deleted): its place goes, whether told or not.
        assert!(other.admit(&b, || vec![b.clone()], at_most(1)).is_ok());
        other.admit(&a, || vec![a.clone(), b.clone()], at_most(2)).expect("place").recorded(true);
        other.forget("uid-a");
        assert_eq!(other.admitted(), 0);
    }

    #[test]
    fn other_namespaces_and_issuers_do_not_count() {
        let keys = NamespaceKeys::default();
        let mut elsewhere = (*holding("x")).clone();
        elsewhere.metadata.namespace = Some("team-b".into());
        let mut other_issuer = (*holding("y")).clone();
        other_issuer.spec.issuer_ref.name = "other".into();
        if let Some(s) = other_issuer.status.as_mut() {
            s.issued_by = Some(other_issuer.spec.issuer_ref.clone());
        }
        let a = fresh("a");
        let cached = vec![Arc::new(elsewhere), Arc::new(other_issuer), a.clone()];
        assert!(keys.admit(&a, || cached.clone(), at_most(1)).is_ok());
    }

    // A replaced key of the issuer still live counts: switching issuerRef away (with a long
    // grace period) frees no place.
    #[test]
    fn a_replaced_key_of_the_issuer_counts_against_its_namespace() {
        let keys = NamespaceKeys::default();
        // `a` was switched to issuer `other`; its key of `local` waits out a long grace period.
        let a = access_key(
            "a",
            json!({"accessKeyId": "K2", "keyRef": "K2", "issuedBy": {"name": "other"},
                   "retired": [{"accessKeyId": "K1", "keyRef": "K1", "issuer": {"name": "local"},
                                "retiredAt": "2026-12-01T00:00:00Z", "revokeAfter": "2126-12-01T00:00:00Z"}]}),
        );
        let b = fresh("b");
        assert!(
            keys.admit(&b, || vec![a.clone(), b.clone()], at_most(1)).is_err(),
            "a live key of `local` in team-a is not counted: a second one is admitted under maxKeysPerNamespace 1"
        );
    }
}
