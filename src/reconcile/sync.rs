//! A poisoned lock is still used: what it guards is memory the operator can rebuild (counters,
//! caches of answers), and one reconcile's panic must not stop every other one.

use std::sync::{Mutex, MutexGuard};

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
