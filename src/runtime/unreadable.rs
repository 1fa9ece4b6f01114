//! Watching the operator's own kinds so that one object that cannot be read never stops the
//! others from being served: each object is decoded on its own ([`Decoded`]), and one that does
//! not read is skipped and reported (log, `cloudkeys_undecodable_objects`, a Warning event on
//! it) while every other object is served.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use futures::{Stream, StreamExt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Client, Resource};

use crate::api::Decoded;
use crate::reconcile::sync::lock;

/// The objects of one kind skipped now, by UID (with the resourceVersion last reported), so
/// that each version of a bad object is reported once and the gauge counts what is skipped.
pub struct Unreadable {
    kind: &'static str,
    client: Option<Client>,
    skipped: Mutex<BTreeMap<String, String>>,
}

impl Unreadable {
    /// Reports through `client` (events); `None` only logs and counts (unit tests).
    pub fn new(kind: &'static str, client: Option<Client>) -> Arc<Self> {
        Arc::new(Self { kind, client, skipped: Mutex::new(BTreeMap::new()) })
    }

    /// What the watch passes on: the event with read objects only. A good object replacing a
    /// bad one (fixed by its owner), or a bad one deleted, is no longer counted.
    pub fn keep_read<K>(&self, event: watcher::Event<Decoded<K>>) -> Option<watcher::Event<K>>
    where
        K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
    {
        use watcher::Event as E;
        match event {
            E::Init => Some(E::Init),
            E::InitDone => Some(E::InitDone),
            E::Apply(d) => self.read(d).map(E::Apply),
            E::InitApply(d) => self.read(d).map(E::InitApply),
            E::Delete(d) => {
                self.forget(d.meta().uid.as_deref().unwrap_or_default());
                match d {
                    Decoded::Read(obj) => Some(E::Delete(obj)),
                    Decoded::Unreadable { .. } => None,
                }
            }
        }
    }

    fn read<K>(&self, decoded: Decoded<K>) -> Option<K>
    where
        K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
    {
        match decoded {
            Decoded::Read(obj) => {
                self.forget(obj.meta().uid.as_deref().unwrap_or_default());
                Some(obj)
            }
            Decoded::Unreadable { metadata, error } => {
                self.skip::<K>(*metadata, error);
                None
            }
        }
    }

    fn forget(&self, uid: &str) {
        let mut skipped = lock(&self.skipped);
        if skipped.remove(uid).is_some() {
            crate::metrics::global().undecodable(self.kind, skipped.len());
        }
    }

    fn skip<K: Resource<DynamicType = ()>>(&self, metadata: ObjectMeta, error: String) {
        let uid = metadata.uid.clone().unwrap_or_default();
        let version = metadata.resource_version.clone().unwrap_or_default();
        {
            let mut skipped = lock(&self.skipped);
            if skipped.get(&uid) == Some(&version) {
                return;
            }
            skipped.insert(uid, version);
            crate::metrics::global().undecodable(self.kind, skipped.len());
        }
        let name = match &metadata.namespace {
            Some(ns) => format!("{ns}/{}", metadata.name.as_deref().unwrap_or_default()),
            None => metadata.name.clone().unwrap_or_default(),
        };
        tracing::warn!(kind = self.kind, object = %name, %error, "cannot read this object; skipped until it changes");
        let Some(client) = self.client.clone() else { return };
        let reference = Decoded::<K>::Unreadable { metadata: Box::new(metadata), error: String::new() }.object_ref(&());
        let note = format!(
            "cloudkeys cannot read this {}: {error}. It is skipped (no key is issued, rotated or revoked for it) \
             until it is changed; fix the field named",
            self.kind
        );
        let reporter = Reporter { controller: "cloudkeys".into(), instance: std::env::var("POD_NAME").ok() };
        // Not awaited: the watch that found it must not wait on the apiserver for an event.
        tokio::spawn(async move {
            let event = Event {
                type_: EventType::Warning,
                reason: "Unreadable".into(),
                note: Some(note),
                action: "Read".into(),
                secondary: None,
            };
            if let Err(e) = Recorder::new(client, reporter).publish(&event, &reference).await {
                tracing::warn!(error = %e, "cannot record event");
            }
        });
    }

    #[cfg(test)]
    fn skipped(&self) -> usize {
        lock(&self.skipped).len()
    }
}

/// A watch's events with every unreadable object skipped and reported by `unreadable`.
pub fn read_only<K, S>(
    events: S,
    unreadable: Arc<Unreadable>,
) -> impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
    S: Stream<Item = Result<watcher::Event<Decoded<K>>, watcher::Error>> + Send,
{
    events.filter_map(move |item| futures::future::ready(item.map(|event| unreadable.keep_read(event)).transpose()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{AccessKey, KeyIssuer};
    use kube::core::ObjectList;
    use serde_json::json;

    fn issuer(name: &str, max_keys: serde_json::Value) -> serde_json::Value {
        json!({
            "apiVersion": "cloudkeys.io/v1alpha1", "kind": "KeyIssuer",
            "metadata": {"name": name, "namespace": "team-a", "uid": format!("uid-{name}"), "resourceVersion": "1"},
            "spec": {"local": {}, "policy": {"maxKeysPerNamespace": max_keys}},
        })
    }

    #[test]
    fn a_list_with_one_object_out_of_range_serves_every_other_one() {
        let list = json!({
            "apiVersion": "cloudkeys.io/v1alpha1", "kind": "KeyIssuerList", "metadata": {"resourceVersion": "9"},
            "items": [issuer("good", json!(3)), issuer("bad", json!(4294967296u64)), issuer("also-good", json!(0))],
        });
        // The typed list, as kube decodes it: one object fails all of them.
        assert!(serde_json::from_value::<ObjectList<KeyIssuer>>(list.clone()).is_err());
        let decoded: ObjectList<Decoded<KeyIssuer>> = serde_json::from_value(list).expect("every item decodes");
        let unreadable = Unreadable::new("KeyIssuer", None);
        let served: Vec<String> = decoded
            .items
            .into_iter()
            .filter_map(|d| unreadable.keep_read(watcher::Event::InitApply(d)))
            .filter_map(|e| match e {
                watcher::Event::InitApply(i) => i.metadata.name,
                _ => None,
            })
            .collect();
        assert_eq!(served, ["good", "also-good"]);
        assert_eq!(unreadable.skipped(), 1);
    }

    #[test]
    fn an_unreadable_object_keeps_its_name_and_says_which_field() {
        let d: Decoded<KeyIssuer> = serde_json::from_value(issuer("bad", json!(-1))).expect("decodes");
        let Decoded::Unreadable { metadata, error } = &d else { panic!("read a negative u32") };
        assert_eq!(metadata.name.as_deref(), Some("bad"));
        assert_eq!(d.object_ref(&()).kind.as_deref(), Some("KeyIssuer"));
        assert!(error.starts_with("spec.policy.maxKeysPerNamespace: ") && error.contains("-1"), "{error}");
        // Not even an object: still no error for the list.
        let d: Decoded<AccessKey> = serde_json::from_value(json!("text")).expect("decodes");
        assert!(matches!(d, Decoded::Unreadable { .. }));
    }

    #[test]
    fn a_fixed_or_deleted_object_is_no_longer_counted_and_each_version_is_reported_once() {
        let unreadable = Unreadable::new("KeyIssuer", None);
        let bad = || serde_json::from_value::<Decoded<KeyIssuer>>(issuer("x", json!(-1))).expect("decodes");
        assert!(unreadable.keep_read(watcher::Event::Apply(bad())).is_none());
        assert!(unreadable.keep_read(watcher::Event::Apply(bad())).is_none());
        assert_eq!(unreadable.skipped(), 1);
        let fixed = serde_json::from_value::<Decoded<KeyIssuer>>(issuer("x", json!(2))).expect("decodes");
        assert!(matches!(unreadable.keep_read(watcher::Event::Apply(fixed)), Some(watcher::Event::Apply(_))));
        assert_eq!(unreadable.skipped(), 0);
        assert!(unreadable.keep_read(watcher::Event::Apply(bad())).is_none());
        assert!(unreadable.keep_read(watcher::Event::Delete(bad())).is_none());
        assert_eq!(unreadable.skipped(), 0);
        assert!(matches!(unreadable.keep_read::<KeyIssuer>(watcher::Event::InitDone), Some(watcher::Event::InitDone)));
    }
}
