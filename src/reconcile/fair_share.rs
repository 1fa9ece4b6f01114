//! How many of the operator's workers may wait on providers at once, and how they are shared
//! between issuers and namespaces.
//!
//! A reconcile that waits on a provider holds a worker all the while. Without a share, three
//! tenants whose providers take half a minute to answer hold every worker, and an AccessKey on a
//! healthy issuer elsewhere waits for them. So:
//! - at most `budget` reconciles wait on providers; the rest of the workers stay free for
//!   everything else;
//! - an issuer may hold more than one of those only while as many places stay free as there are
//!   issuers waiting; the last place is kept for an issuer that holds none, and (from three
//!   places on) the one before it for a namespace that holds none: the next issuer to come, of
//!   this namespace or another, is served at once, even when one tenant's many issuers came
//!   first;
//! - a namespace holds at most three quarters of the places, even alone: two tenants whose
//!   providers hang cannot take the place kept for a third;
//! - while AccessKeys of several namespaces wait (holding places, or refused one lately), a
//!   namespace takes a place only below its share, so that a tenant with many issuers cannot
//!   crowd the others out. With one namespace alone, only the issuer rules apply.
//!
//! Shares shrink only as places come back: what an issuer took while it was alone it keeps until
//! its calls end. (A tenant cannot make its own provider slow on purpose: a KeyIssuer may name
//! only the providers' own API hosts, see `guard`.)

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::sync::lock;

#[derive(Debug)]
pub struct FairShare {
    budget: usize,
    held: Mutex<Held>,
}

#[derive(Debug, Default)]
struct Held {
    total: usize,
    issuers: HashMap<String, usize>,
    namespaces: HashMap<String, usize>,
    /// Namespaces refused a place lately, holding none: they wait too (their AccessKeys come
    /// back within the busy backoff), and count when shares are made.
    waiting: HashMap<String, Instant>,
}

/// How long a refused namespace counts as waiting: past the longest busy backoff of an AccessKey.
const WAITING_FOR: Duration = Duration::from_secs(60);

/// One reconcile's place among those waiting on providers, given back when dropped.
#[derive(Debug)]
pub struct Share {
    fair: Arc<FairShare>,
    issuer: String,
    namespace: String,
}

impl FairShare {
    /// For `workers` reconcile workers: all but an eighth of them (at least one) may wait on
    /// providers.
    pub fn for_workers(workers: usize) -> Arc<Self> {
        let budget = workers.saturating_sub((workers / 8).max(1)).max(1);
        Arc::new(Self { budget, held: Mutex::new(Held::default()) })
    }

    pub fn budget(&self) -> usize {
        self.budget
    }

    /// A place for a reconcile of `issuer` for an AccessKey of `namespace`, or `None` when the
    /// issuer or the namespace holds its share already, or every place is taken.
    pub fn take(self: &Arc<Self>, issuer: &str, namespace: &str) -> Option<Share> {
        let mut held = lock(&self.held);
        let allowed = held.allows(self.budget, issuer, namespace);
        if !allowed {
            if !held.namespaces.contains_key(namespace) {
                held.waiting.insert(namespace.to_string(), Instant::now());
            }
            return None;
        }
        held.waiting.remove(namespace);
        held.total += 1;
        *held.issuers.entry(issuer.to_string()).or_default() += 1;
        *held.namespaces.entry(namespace.to_string()).or_default() += 1;
        Some(Share { fair: self.clone(), issuer: issuer.to_string(), namespace: namespace.to_string() })
    }

    #[cfg(test)]
    fn total(&self) -> usize {
        lock(&self.held).total
    }
}

impl Held {
    fn allows(&mut self, budget: usize, issuer: &str, namespace: &str) -> bool {
        let by_issuer = self.issuers.get(issuer).copied().unwrap_or(0);
        let by_namespace = self.namespaces.get(namespace).copied().unwrap_or(0);
        let kept_for_a_namespace = by_namespace > 0 && budget >= 3;
        let limit = budget.saturating_sub(usize::from(by_issuer > 0) + usize::from(kept_for_a_namespace));
        if self.total >= limit || by_namespace >= budget - budget / 4 {
            return false;
        }
        let issuers = self.issuers.len() + usize::from(by_issuer == 0);
        if by_issuer >= share(budget, issuers) {
            return false;
        }
        self.waiting.retain(|_, since| since.elapsed() < WAITING_FOR);
        let others_waiting = self.waiting.keys().filter(|ns| *ns != namespace).count();
        let namespaces = self.namespaces.len() + usize::from(by_namespace == 0) + others_waiting;
        namespaces == 1 || by_namespace < share(budget, namespaces)
    }
}

/// What each of `waiting` issuers (or namespaces) may hold: one at least; more only as far as
/// the budget keeps one place free for each of them.
fn share(budget: usize, waiting: usize) -> usize {
    (budget.saturating_sub(waiting) / waiting.max(1)).max(1)
}

impl Drop for Share {
    fn drop(&mut self) {
        let mut guard = lock(&self.fair.held);
        let held = &mut *guard;
        held.total = held.total.saturating_sub(1);
        for (map, key) in [(&mut held.issuers, &self.issuer), (&mut held.namespaces, &self.namespace)] {
            if let Some(n) = map.get_mut(key) {
                *n -= 1;
                if *n == 0 {
                    map.remove(key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(fair: &Arc<FairShare>, issuer: &str, namespace: &str) -> Vec<Share> {
        std::iter::from_fn(|| fair.take(issuer, namespace)).collect()
    }

    #[test]
    fn the_budget_leaves_workers_free_for_everything_else() {
        assert_eq!(FairShare::for_workers(16).budget(), 14);
        assert_eq!(FairShare::for_workers(4).budget(), 3);
        assert_eq!(FairShare::for_workers(1).budget(), 1);
        assert_eq!(FairShare::for_workers(0).budget(), 1);
    }

    #[test]
    fn slow_issuers_leave_a_place_for_the_next_issuer_and_namespace() {
        let fair = FairShare::for_workers(16);
        // Alone, an issuer may use three quarters of the places: the rest are kept for other
        // namespaces.
        let alone = fill(&fair, "slow-1", "a");
        assert_eq!(alone.len(), 11);
        drop(alone);
        assert_eq!(fair.total(), 0);
        // Three slow tenants, each as greedy as it can be, in the order they come.
        let mut held = Vec::new();
        for round in 0..20 {
            for (issuer, ns) in [("slow-1", "a"), ("slow-2", "b"), ("slow-3", "c")] {
                held.extend(fair.take(issuer, ns));
            }
            assert!(fair.total() < fair.budget(), "round {round}: every place taken");
        }
        // A healthy issuer of another namespace still gets one at once.
        assert!(fair.take("healthy", "d").is_some());
    }

    #[test]
    fn places_taken_while_alone_still_leave_the_last_one_for_a_newcomer() {
        let fair = FairShare::for_workers(16);
        let mut held = Vec::new();
        // Tenants come one after another, each with a handful of slow AccessKeys.
        for (issuer, ns) in [("slow-1", "a"), ("slow-2", "b"), ("slow-3", "c")] {
            held.extend((0..6).filter_map(|_| fair.take(issuer, ns)));
        }
        assert_eq!(fair.total(), fair.budget() - 1);
        // The last place goes to the next issuer that holds none.
        let healthy = fair.take("healthy", "d");
        assert!(healthy.is_some());
        assert!(fair.take("late", "e").is_none());
        drop(healthy);
        assert!(fair.take("late", "e").is_some());
    }

    #[test]
    fn another_issuer_of_a_namespace_with_a_hanging_one_is_served() {
        // Four workers, three places: a hanging issuer gets one of its two slots
        // (--issuer-concurrency); the others are kept for another issuer and another namespace.
        let fair = FairShare::for_workers(4);
        let hanging: Vec<Share> = (0..2).filter_map(|_| fair.take("hanging", "team")).collect();
        assert_eq!(hanging.len(), 1);
        let healthy = fair.take("healthy", "team");
        assert!(healthy.is_some());
        // One at a time beside the hang: the last place is kept for an issuer holding none.
        assert!(fair.take("healthy", "team").is_none());
    }

    #[test]
    fn a_namespace_with_many_issuers_leaves_a_place_for_another_namespace() {
        let fair = FairShare::for_workers(16);
        let mut greedy = Vec::new();
        for i in 0..10 {
            greedy.extend(fill(&fair, &format!("tenant-issuer-{i}"), "greedy"));
        }
        // Alone, it takes three quarters of the places.
        assert_eq!(greedy.len(), 11);
        let others: Vec<Share> =
            ["elsewhere", "third", "fourth"].iter().filter_map(|ns| fair.take(&format!("{ns}-issuer"), ns)).collect();
        assert_eq!(others.len(), 3, "three other namespaces served at once");
        assert!(fair.take("fifth-issuer", "fifth").is_none());
        // A place comes back while another namespace waits: it goes to that one, not to one more
        // of the greedy issuers.
        greedy.pop();
        assert!(fair.take("tenant-issuer-3", "greedy").is_none());
        assert!(fair.take("tenant-issuer-11", "greedy").is_none());
        let fifth = fair.take("fifth-issuer", "fifth");
        assert!(fifth.is_some());
        drop(greedy);
        drop(others);
        drop(fifth);
        assert_eq!(fair.total(), 0);
    }

    /// Finding 5a: one place is kept for "a namespace holding none", so a second hostile tenant
    /// takes it: two tenants with hanging issuers (their checks, listings and AccessKeys each
    /// hold a place for --provider-timeout, 60 s by default) hold every place, and a third
    /// tenant's first issuer check (or first key) waits until one of their calls times out,
    /// again each time their retries fill the places back up.
    #[test]
    fn two_tenants_with_hanging_issuers_leave_a_place_for_a_third_tenants_first_check() {
        let fair = FairShare::for_workers(16);
        let mut hanging = Vec::new();
        for tenant in ["hostile-a", "hostile-b"] {
            for i in 0..20 {
                hanging.extend(fill(&fair, &format!("{tenant}-issuer-{i}"), tenant));
            }
        }
        assert!(hanging.len() < fair.budget(), "{} places held", hanging.len());
        assert!(fair.take("first-issuer", "victim").is_some(), "the victim's first issuer check waits");
    }

    /// Finding 5b (regression): with `--concurrency 3` (a budget of two places) a hanging issuer
    /// used to leave the second place to the next issuer of its namespace; now that place is kept
    /// for another namespace, and the tenant's healthy issuer waits behind its hanging one.
    #[test]
    fn with_two_places_another_issuer_of_the_namespace_is_served_beside_a_hanging_one() {
        let fair = FairShare::for_workers(3);
        assert_eq!(fair.budget(), 2);
        let hanging = fill(&fair, "hanging", "team");
        assert_eq!(hanging.len(), 1);
        assert!(fair.take("healthy", "team").is_some(), "the next issuer, of this namespace or another, is served");
    }

    #[test]
    fn beyond_the_budget_nobody_gets_more() {
        let fair = FairShare::for_workers(4);
        let held: Vec<Share> = (0..10).filter_map(|i| fair.take(&format!("i{i}"), &format!("n{i}"))).collect();
        assert_eq!(held.len(), fair.budget());
    }
}
