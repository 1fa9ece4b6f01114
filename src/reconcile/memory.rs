//! What the operator remembers of one object between its reconciles, typed: backoff counters, a
//! provider's refusal, what a drift check found. Kept in memory only: after a restart each
//! starts over, which costs at most one early retry or one more drift listing.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::core::decide::ProviderView;

use super::sync::lock;

/// One object's memory (an AccessKey's, or an issuer's, by its display name).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Memory {
    /// Failed reconciles in a row: the error backoff.
    pub failures: u32,
    /// Times in a row the object's issuer had no place for it: the busy backoff.
    pub busy: u32,
    /// New keys the provider refused in a row.
    pub refusals: u32,
    /// After a refusal: the spec fingerprint refused, and no new attempt for it before then.
    pub blocked: Option<(String, jiff::Timestamp)>,
    /// The key id a drift check found gone at the provider.
    pub revoked_externally: Option<String>,
    /// The key id and what the last drift check saw of it at the provider.
    pub provider_view: Option<(String, ProviderView)>,
    /// The window start a `RotationDeferred` event announced last: announced once.
    pub deferred_until: Option<jiff::Timestamp>,
}

/// Every object's memory. An object whose memory is back to nothing takes no room.
#[derive(Debug, Default)]
pub struct Memories(Mutex<HashMap<String, Memory>>);

impl Memories {
    /// Runs `f` on `key`'s memory and returns what it returns.
    pub fn update<T>(&self, key: &str, f: impl FnOnce(&mut Memory) -> T) -> T {
        let mut all = lock(&self.0);
        let memory = all.entry(key.to_string()).or_default();
        let result = f(memory);
        if *memory == Memory::default() {
            all.remove(key);
        }
        result
    }

    /// `f` of `key`'s memory as it is (empty if none).
    pub fn read<T>(&self, key: &str, f: impl FnOnce(&Memory) -> T) -> T {
        let all = lock(&self.0);
        match all.get(key) {
            Some(memory) => f(memory),
            None => f(&Memory::default()),
        }
    }

    /// Lets go of `key`'s memory (the object is gone).
    pub fn forget(&self, key: &str) {
        lock(&self.0).remove(key);
    }

    /// How many objects have a memory.
    #[cfg(test)]
    fn remembered(&self) -> usize {
        lock(&self.0).len()
    }
}

/// Counts one more in a row; returns how many came before this one.
pub fn one_more(counter: &mut u32) -> u32 {
    let before = *counter;
    *counter = counter.saturating_add(1);
    before
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_memory_back_to_nothing_takes_no_room() {
        let memories = Memories::default();
        assert_eq!(memories.update("team/k", |m| one_more(&mut m.failures)), 0);
        assert_eq!(memories.update("team/k", |m| one_more(&mut m.failures)), 1);
        assert_eq!(memories.remembered(), 1);
        memories.update("team/k", |m| m.failures = 0);
        assert_eq!(memories.remembered(), 0);
        assert_eq!(memories.read("team/k", |m| m.failures), 0);
        memories.update("team/k", |m| m.revoked_externally = Some("K1".into()));
        memories.forget("team/k");
        assert_eq!(memories.remembered(), 0);
    }
}
