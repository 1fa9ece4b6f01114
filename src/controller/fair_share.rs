//! How many of the operator's workers may wait on providers at once, and how they are shared
//! between issuers and namespaces.
//!
//! A reconcile that waits on a provider holds a worker all the while. Without a share, three
//! tenants whose providers take half a minute to answer hold every worker, and an AccessKey on a
//! healthy issuer elsewhere waits for them. So: at most `budget` reconciles wait on providers
//! (the rest of the workers stay free for everything else); an issuer, or a namespace, may hold
//! more than one of those only while as many places stay free as there are issuers (or
//! namespaces) waiting, and the last place is always kept for an issuer of a namespace that holds
//! none: the next tenant to come is served at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::context::lock;

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
}

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
        let by_issuer = held.issuers.get(issuer).copied().unwrap_or(0);
        let by_namespace = held.namespaces.get(namespace).copied().unwrap_or(0);
        // The last place is kept for a newcomer: shares shrink only as places come back, and
        // those taken while an issuer was alone may be slow to.
        let newcomer = by_issuer == 0 && by_namespace == 0;
        let limit = if newcomer { self.budget } else { self.budget - 1 };
        if held.total >= limit {
            return None;
        }
        let issuers = held.issuers.len() + usize::from(by_issuer == 0);
        let namespaces = held.namespaces.len() + usize::from(by_namespace == 0);
        if by_issuer >= share(self.budget, issuers) || by_namespace >= share(self.budget, namespaces) {
            return None;
        }
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
        // Alone, an issuer may use all but one place.
        let alone = fill(&fair, "slow-1", "a");
        assert_eq!(alone.len(), 13);
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
        // Another issuer of a namespace already served waits; a new tenant does not.
        assert!(fair.take("slow-4", "c").is_none());
        let healthy = fair.take("healthy", "d");
        assert!(healthy.is_some());
        assert!(fair.take("late", "e").is_none());
        drop(healthy);
        assert!(fair.take("late", "e").is_some());
    }

    #[test]
    fn a_namespace_with_many_issuers_gets_one_share_and_places_come_back() {
        let fair = FairShare::for_workers(16);
        let mut held = Vec::new();
        for i in 0..10 {
            held.extend(fill(&fair, &format!("tenant-issuer-{i}"), "greedy"));
        }
        let greedy = held.len();
        assert!(greedy < fair.budget(), "{greedy}");
        let other = fill(&fair, "other", "elsewhere");
        assert!(!other.is_empty());
        drop(held);
        drop(other);
        assert_eq!(fair.total(), 0);
        assert_eq!(fill(&fair, "slow-1", "a").len(), 13);
    }

    #[test]
    fn beyond_the_budget_nobody_gets_more() {
        let fair = FairShare::for_workers(4);
        let held: Vec<Share> = (0..10).filter_map(|i| fair.take(&format!("i{i}"), &format!("n{i}"))).collect();
        assert_eq!(held.len(), fair.budget());
    }
}
