//! Watches that keep working through anything the apiserver does: dropped connections, restarts,
//! `410 Gone` after compaction, outages of any length.
//!
//! kube's watcher already resumes or re-lists after every error; what it needs around it is a
//! retry pace that comes back soon after the apiserver does, health reporting, and no error
//! ever reaching a controller's trigger queue: kube pauses *all* of a controller's triggers
//! (its own objects' watch included) for a growing backoff whenever any one of them yields an
//! error, which after an apiserver restart left new AccessKeys unseen for a long time.

use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use kube::api::Api;
use kube::runtime::utils::Backoff;
use kube::runtime::watcher::{self, Config};
use kube::runtime::WatchStreamExt;
use kube::Resource;
use rand::Rng;

use crate::health::Health;

const FIRST_RETRY: Duration = Duration::from_millis(500);
/// Short enough that a watch is back within seconds of the apiserver, long enough that a few
/// watches retrying cost an absent apiserver nothing.
const MAX_RETRY: Duration = Duration::from_secs(5);

/// Exponential retry pace with jitter, reset by the first item that arrives after an error.
#[derive(Debug, Clone)]
pub struct WatchBackoff {
    next: Duration,
}

impl Default for WatchBackoff {
    fn default() -> Self {
        Self { next: FIRST_RETRY }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let wait = self.next;
        self.next = (self.next * 2).min(MAX_RETRY);
        // ±20 %: replicas and watches restarted together do not retry in lockstep.
        let jitter = rand::rng().random_range(0.8..1.2);
        Some(wait.mul_f64(jitter))
    }
}

impl Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = FIRST_RETRY;
    }
}

/// A backoff that never waits: for a controller's trigger queue, whose streams pace their own
/// retries and never yield errors (see [`watched`]).
#[derive(Debug, Clone, Default)]
pub struct NoBackoff;

impl Iterator for NoBackoff {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        Some(Duration::ZERO)
    }
}

impl Backoff for NoBackoff {
    fn reset(&mut self) {}
}

/// The events of a watch of `api` that retries forever at [`WatchBackoff`]'s pace, reporting each
/// item under `name` to the health checks and logging errors. Errors are consumed here: what
/// comes out is only events.
pub fn watched<K>(
    api: Api<K>,
    config: Config,
    name: &'static str,
    health: &Arc<Health>,
) -> impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let health = health.clone();
    watcher::watcher(api, config).backoff(WatchBackoff::default()).filter_map(move |item| {
        health.watch_item(name, item.is_ok());
        let event = match item {
            Ok(event) => Some(Ok(event)),
            Err(e) => {
                tracing::warn!(watch = name, error = %e, "watch failed; retrying");
                None
            }
        };
        futures::future::ready(event)
    })
}

/// What a cached object does not need and costs the most memory at scale: managedFields (set to
/// `None`, not emptied: an object written back from the cache must keep them, and an empty list
/// in an update would wipe them), and kubectl's copy of the whole object in
/// `last-applied-configuration` (nothing here reads it or writes it back).
pub fn slimmed<K: Resource>(obj: &mut K) {
    let meta = obj.meta_mut();
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_grow_to_a_few_seconds_and_start_over_after_success() {
        let mut b = WatchBackoff::default();
        let waits: Vec<Duration> = (0..8).filter_map(|_| b.next()).collect();
        assert!(waits[0] <= Duration::from_millis(600));
        assert!(waits.iter().all(|w| *w <= MAX_RETRY.mul_f64(1.2)));
        assert!(waits[7] >= MAX_RETRY.mul_f64(0.8));
        b.reset();
        assert!(b.next().is_some_and(|w| w <= Duration::from_millis(600)));
    }

    #[test]
    fn slimmed_objects_keep_everything_but_bulk_nobody_reads() {
        let mut ak: crate::api::AccessKey = serde_json::from_value(serde_json::json!({
            "apiVersion": "cloudkeys.io/v1alpha1", "kind": "AccessKey",
            "metadata": {"name": "k", "namespace": "n", "finalizers": ["cloudkeys.io/revoke"],
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{...}", "team": "a"},
                "managedFields": [{"manager": "kubectl", "operation": "Apply"}]},
            "spec": {"issuerRef": {"name": "i"}, "secretName": "s", "local": {}},
        }))
        .expect("AccessKey");
        slimmed(&mut ak);
        assert_eq!(ak.metadata.managed_fields, None);
        let annotations = ak.metadata.annotations.clone().unwrap_or_default();
        assert_eq!(annotations.into_iter().collect::<Vec<_>>(), vec![("team".to_string(), "a".to_string())]);
        assert_eq!(ak.metadata.finalizers.as_deref(), Some(&["cloudkeys.io/revoke".to_string()][..]));
    }
}
