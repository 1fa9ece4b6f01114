//! What `/readyz` and `/healthz` report, fed by the controllers as they run.
//!
//! - Ready: this replica is a standby waiting for the lease, or it leads with every cache synced
//!   and no watch failing.
//! - Healthy (alive): no watch has been failing for longer than the stall window while others
//!   work (all failing is the apiserver away: restarting would not help, and crash-looping
//!   would delay recovery once it is back), and when reconciles are under way, one has finished
//!   within the window. Either would mean the process is wedged — a restart is the cure.
//!
//! A watch counts as failing from its first error until it delivers anything again, or until
//! no new error has come for [`ERRORS_RECUR_WITHIN`]: a failing watch retries at least that
//! often (`watch::WatchBackoff`, plus a connection attempt), and a watch that resumed quietly
//! (nothing changed in the meantime) delivers nothing to prove it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long the Kubernetes client tries to connect before giving up.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longer than a watch's longest retry pace (6 s) plus a connection attempt.
pub const ERRORS_RECUR_WITHIN: Duration = Duration::from_secs(20);
/// Default of `--stall-timeout`.
pub const DEFAULT_STALL: Duration = Duration::from_secs(180);

#[derive(Debug, Clone, Copy, Default)]
struct WatchState {
    failing_since: Option<Instant>,
    last_error: Option<Instant>,
}

#[derive(Debug)]
pub struct Health {
    /// The AccessKey and issuer caches are synced (this replica leads, or runs alone).
    pub synced: AtomicBool,
    /// This replica waits for the lease: ready to take over.
    pub standby: AtomicBool,
    stall_after: Duration,
    /// At least the longest a reconcile may legitimately take.
    reconcile_stall_after: Duration,
    watches: Mutex<HashMap<&'static str, WatchState>>,
    in_flight: AtomicUsize,
    last_finished: Mutex<Instant>,
}

impl Default for Health {
    fn default() -> Self {
        Self::new(DEFAULT_STALL, DEFAULT_STALL)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Health {
    /// Watches stall after `stall_after` failing; reconciles after `reconcile_stall_after` (at
    /// least `stall_after`) under way with none finishing.
    pub fn new(stall_after: Duration, reconcile_stall_after: Duration) -> Self {
        Self {
            synced: AtomicBool::new(false),
            standby: AtomicBool::new(false),
            stall_after,
            reconcile_stall_after: reconcile_stall_after.max(stall_after),
            watches: Mutex::new(HashMap::new()),
            in_flight: AtomicUsize::new(0),
            last_finished: Mutex::new(Instant::now()),
        }
    }

    /// One item from the watch `name`: an event (`ok`) or an error.
    pub fn watch_item(&self, name: &'static str, ok: bool) {
        self.watch_item_at(name, ok, Instant::now());
    }

    fn watch_item_at(&self, name: &'static str, ok: bool, now: Instant) {
        let mut watches = lock(&self.watches);
        let state = watches.entry(name).or_default();
        if ok {
            *state = WatchState::default();
        } else {
            state.failing_since.get_or_insert(now);
            state.last_error = Some(now);
        }
    }

    /// The watches failing now, each with how long it has been failing.
    fn failing_at(&self, now: Instant) -> Vec<(&'static str, Duration)> {
        let watches = lock(&self.watches);
        let mut failing: Vec<_> = watches
            .iter()
            .filter_map(|(name, s)| {
                let (since, last) = (s.failing_since?, s.last_error?);
                (now.duration_since(last) < ERRORS_RECUR_WITHIN).then(|| (*name, now.duration_since(since)))
            })
            .collect();
        failing.sort();
        failing
    }

    /// A reconcile starts; the guard marks it finished when dropped (also on cancellation).
    pub fn reconcile_started(&self) -> ReconcileGuard<'_> {
        let mut last_finished = lock(&self.last_finished);
        // After a quiet spell the clock starts now, not at the last reconcile of long ago.
        if self.in_flight.fetch_add(1, Ordering::Relaxed) == 0 {
            *last_finished = Instant::now();
        }
        ReconcileGuard(self)
    }

    /// `None` when ready, else why not.
    pub fn not_ready(&self) -> Option<String> {
        self.not_ready_at(Instant::now())
    }

    fn not_ready_at(&self, now: Instant) -> Option<String> {
        if self.standby.load(Ordering::Relaxed) {
            return None;
        }
        if !self.synced.load(Ordering::Relaxed) {
            return Some("caches not synced yet".into());
        }
        let failing = self.failing_at(now);
        (!failing.is_empty()).then(|| {
            let names: Vec<_> = failing.iter().map(|(n, d)| format!("{n} (for {}s)", d.as_secs())).collect();
            format!("watches failing: {}", names.join(", "))
        })
    }

    /// `None` when alive, else what is stuck.
    pub fn stalled(&self) -> Option<String> {
        self.stalled_at(Instant::now())
    }

    fn stalled_at(&self, now: Instant) -> Option<String> {
        let failing = self.failing_at(now);
        let some_work = lock(&self.watches).len() > failing.len();
        if let Some((name, for_)) = failing.into_iter().find(|(_, d)| *d >= self.stall_after).filter(|_| some_work) {
            return Some(format!("watch {name} has been failing for {}s while others work", for_.as_secs()));
        }
        let busy = self.in_flight.load(Ordering::Relaxed);
        let idle_for = now.duration_since(*lock(&self.last_finished));
        (busy > 0 && idle_for >= self.reconcile_stall_after)
            .then(|| format!("{busy} reconcile(s) under way and none finished for {}s", idle_for.as_secs()))
    }
}

pub struct ReconcileGuard<'a>(&'a Health);

impl Drop for ReconcileGuard<'_> {
    fn drop(&mut self) {
        let mut last_finished = lock(&self.0.last_finished);
        *last_finished = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leading() -> Health {
        let h = Health::new(Duration::from_secs(180), Duration::from_secs(180));
        h.synced.store(true, Ordering::Relaxed);
        h
    }

    #[test]
    fn a_standby_is_ready_and_a_leader_only_once_synced() {
        let h = Health::default();
        assert!(h.not_ready().is_some());
        h.standby.store(true, Ordering::Relaxed);
        assert!(h.not_ready().is_none());
        assert!(leading().not_ready().is_none());
    }

    #[test]
    fn a_failing_watch_makes_the_leader_unready_until_it_delivers_again() {
        let h = leading();
        let t0 = Instant::now();
        h.watch_item_at("accesskeys", false, t0);
        assert!(h.not_ready_at(t0 + Duration::from_secs(1)).is_some_and(|m| m.contains("accesskeys")));
        h.watch_item_at("accesskeys", true, t0 + Duration::from_secs(2));
        assert!(h.not_ready_at(t0 + Duration::from_secs(2)).is_none());
    }

    #[test]
    fn a_watch_that_stopped_failing_quietly_is_healthy_again() {
        let h = leading();
        let t0 = Instant::now();
        h.watch_item_at("secrets", false, t0);
        assert!(h.not_ready_at(t0 + ERRORS_RECUR_WITHIN - Duration::from_secs(1)).is_some());
        assert!(h.not_ready_at(t0 + ERRORS_RECUR_WITHIN).is_none());
    }

    #[test]
    fn a_watch_failing_past_the_stall_window_while_others_work_fails_liveness() {
        let h = leading();
        let t0 = Instant::now();
        h.watch_item_at("secrets", true, t0);
        for s in (0..=200).step_by(20) {
            h.watch_item_at("accesskeys", false, t0 + Duration::from_secs(s));
        }
        assert!(h.stalled_at(t0 + Duration::from_secs(170)).is_none());
        assert!(h.stalled_at(t0 + Duration::from_secs(200)).is_some_and(|m| m.contains("accesskeys")));
    }

    #[test]
    fn every_watch_failing_is_the_apiserver_away_and_no_reason_to_restart() {
        let h = leading();
        let t0 = Instant::now();
        for s in (0..=600).step_by(20) {
            h.watch_item_at("accesskeys", false, t0 + Duration::from_secs(s));
            h.watch_item_at("secrets", false, t0 + Duration::from_secs(s));
        }
        assert!(h.stalled_at(t0 + Duration::from_secs(600)).is_none());
        assert!(h.not_ready_at(t0 + Duration::from_secs(600)).is_some());
    }

    #[test]
    fn the_first_reconcile_after_a_quiet_spell_is_not_a_stall() {
        let h = leading();
        *lock(&h.last_finished) = Instant::now() - Duration::from_secs(3600);
        let _guard = h.reconcile_started();
        assert!(h.stalled().is_none());
    }

    #[test]
    fn reconciles_under_way_with_none_finishing_fail_liveness() {
        let h = leading();
        let start = Instant::now();
        let guard = h.reconcile_started();
        assert!(h.stalled_at(start + Duration::from_secs(10)).is_none());
        assert!(h.stalled_at(start + Duration::from_secs(181)).is_some());
        drop(guard);
        assert!(h.stalled_at(Instant::now() + Duration::from_secs(600)).is_none(), "idle is not stalled");
    }
}
