//! The managed Secrets as the cache holds them: every field a decision reads or a replace writes
//! back, in boxed slices instead of `BTreeMap`s and `String`s, and the strings every managed
//! Secret repeats not allocated at all.
//!
//! A `Secret` decoded by k8s-openapi costs about 2.7 KB on the heap, most of it three
//! `BTreeMap` nodes (labels, annotations, data) allocated for eleven entries each; this form
//! holds the same content in about a third of that, which at 10,000 AccessKeys is the largest
//! single saving of operator memory. What is left out (managedFields, creationTimestamp,
//! generation, selfLink) is nothing the operator reads, and an update without managedFields
//! keeps the live ones.

use std::borrow::Cow;
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use k8s_openapi::ByteString;
use kube::runtime::reflector::Lookup;
use kube::runtime::watcher;

use crate::core::secret::{ACCESS_KEY_LABEL, DATA_HASH_ANNOTATION, KEY_ID_ANNOTATION, MANAGED_BY, MANAGED_BY_LABEL};
use crate::providers::default_secret_data;

type Pairs<V> = Box<[(Text, V)]>;

/// A string that every managed Secret repeats (the operator's label and annotation keys, the
/// owner's kind, the default data keys) costs no allocation; anything else is boxed.
#[derive(Clone)]
enum Text {
    Known(&'static str),
    Owned(Box<str>),
}

const PROVIDERS: [&str; 4] = ["local", "exoscale", "yandex", "outscale"];

impl Text {
    fn new(s: &str) -> Self {
        let operators = [MANAGED_BY_LABEL, MANAGED_BY, ACCESS_KEY_LABEL, KEY_ID_ANNOTATION, DATA_HASH_ANNOTATION];
        let owners = ["cloudkeys.io/v1alpha1", "AccessKey", "Opaque"];
        let data_keys = PROVIDERS.iter().flat_map(|p| default_secret_data(p).iter().map(|(k, _)| *k));
        match operators.into_iter().chain(owners).chain(data_keys).find(|k| *k == s) {
            Some(known) => Self::Known(known),
            None => Self::Owned(s.into()),
        }
    }

    fn as_str(&self) -> &str {
        match self {
            Self::Known(s) => s,
            Self::Owned(s) => s,
        }
    }
}

/// A managed Secret in the cache. Holds the Secret's data: no `Debug`, never logged.
#[derive(Clone)]
pub struct CachedSecret {
    name: Box<str>,
    namespace: Option<Box<str>>,
    uid: Option<Box<str>>,
    resource_version: Option<Box<str>>,
    deletion_timestamp: Option<Time>,
    labels: Pairs<Text>,
    annotations: Pairs<Text>,
    owner_references: Box<[Owner]>,
    finalizers: Box<[Box<str>]>,
    type_: Option<Text>,
    immutable: Option<bool>,
    data: Pairs<Box<[u8]>>,
}

#[derive(Clone)]
struct Owner {
    api_version: Text,
    kind: Text,
    name: Box<str>,
    uid: Box<str>,
    controller: Option<bool>,
    block_owner_deletion: Option<bool>,
}

fn boxed(s: Option<&String>) -> Option<Box<str>> {
    s.map(|s| s.as_str().into())
}

fn pairs<V, W>(map: Option<&BTreeMap<String, V>>, value: impl Fn(&V) -> W) -> Pairs<W> {
    map.into_iter().flatten().map(|(k, v)| (Text::new(k), value(v))).collect()
}

fn map<V, W: Clone>(pairs: &[(Text, V)], value: impl Fn(&V) -> W) -> Option<BTreeMap<String, W>> {
    (!pairs.is_empty()).then(|| pairs.iter().map(|(k, v)| (k.as_str().to_string(), value(v))).collect())
}

/// The AccessKey the Secret names as its controller, if any, in the version this operator
/// serves (an owner of a version nobody serves is never resolved, nor garbage-collected).
fn controlling_access_key(s: &Secret) -> Option<&OwnerReference> {
    let served = <crate::api::AccessKey as kube::Resource>::api_version(&());
    s.metadata
        .owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true) && r.kind == "AccessKey" && r.api_version == served)
}

/// The AccessKey a Secret names as its controller, as the AccessKey cache shows it.
pub enum ClaimedOwner {
    /// The cache has not been filled yet: it may be there.
    NotListedYet,
    Absent,
    Present {
        uid: Option<String>,
        secret_name: String,
    },
}

/// Whether the Secret is one an AccessKey writes: only then is its data kept. Any tenant can
/// label a Secret `managed-by: cloudkeys`, and claim its own AccessKey as the controller too; the
/// operator writes only the Secret an AccessKey names, so of the others it needs the name and its
/// own labels and annotations, not megabytes of data.
///
/// `owner` is the claimed controller as the AccessKey cache shows it, looked up by name in the
/// Secret's namespace. Before the cache is filled the Secret is kept, since it may be that
/// AccessKey's; afterwards an owner the cache does not have is none (the operator writes a
/// Secret only for an AccessKey its cache has).
pub fn written_for(s: &Secret, owner: impl FnOnce(&str) -> ClaimedOwner) -> bool {
    let Some(claimed) = controlling_access_key(s) else { return false };
    match owner(&claimed.name) {
        ClaimedOwner::NotListedYet => true,
        ClaimedOwner::Absent => false,
        ClaimedOwner::Present { uid, secret_name } => {
            uid.as_deref() == Some(claimed.uid.as_str()) && s.metadata.name.as_deref() == Some(secret_name.as_str())
        }
    }
}

fn ours(key: &str) -> bool {
    key.starts_with("cloudkeys.io/") || key == MANAGED_BY_LABEL
}

impl CachedSecret {
    /// `s` in the cache's form; its data and foreign labels and annotations kept only when
    /// `controlled` (see [`written_for`]).
    pub fn new(s: &Secret, controlled: bool) -> Self {
        let m = &s.metadata;
        let kept = |map: Option<&BTreeMap<String, String>>| -> Pairs<Text> {
            map.into_iter()
                .flatten()
                .filter(|(k, _)| controlled || ours(k))
                .map(|(k, v)| (Text::new(k), Text::new(v)))
                .collect()
        };
        Self {
            name: m.name.as_deref().unwrap_or_default().into(),
            namespace: boxed(m.namespace.as_ref()),
            uid: boxed(m.uid.as_ref()),
            resource_version: boxed(m.resource_version.as_ref()),
            deletion_timestamp: m.deletion_timestamp.clone(),
            labels: kept(m.labels.as_ref()),
            annotations: kept(m.annotations.as_ref()),
            owner_references: m
                .owner_references
                .iter()
                .flatten()
                .map(|r| Owner {
                    api_version: Text::new(&r.api_version),
                    kind: Text::new(&r.kind),
                    name: r.name.as_str().into(),
                    uid: r.uid.as_str().into(),
                    controller: r.controller,
                    block_owner_deletion: r.block_owner_deletion,
                })
                .collect(),
            finalizers: m.finalizers.iter().flatten().map(|f| f.as_str().into()).collect(),
            type_: s.type_.as_deref().map(Text::new),
            immutable: s.immutable,
            data: if controlled { pairs(s.data.as_ref(), |v| v.0.as_slice().into()) } else { Box::new([]) },
        }
    }

    /// One annotation's value, without rebuilding the Secret.
    pub fn annotation(&self, name: &str) -> Option<&str> {
        self.annotations.iter().find(|(k, _)| k.as_str() == name).map(|(_, v)| v.as_str())
    }

    /// The Secret again, as the apiserver sent it but for the fields left out.
    pub fn to_secret(&self) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some(self.name.to_string()),
                namespace: self.namespace.as_deref().map(str::to_string),
                uid: self.uid.as_deref().map(str::to_string),
                resource_version: self.resource_version.as_deref().map(str::to_string),
                deletion_timestamp: self.deletion_timestamp.clone(),
                labels: map(&self.labels, |v| v.as_str().to_string()),
                annotations: map(&self.annotations, |v| v.as_str().to_string()),
                owner_references: (!self.owner_references.is_empty()).then(|| {
                    self.owner_references
                        .iter()
                        .map(|o| OwnerReference {
                            api_version: o.api_version.as_str().to_string(),
                            kind: o.kind.as_str().to_string(),
                            name: o.name.to_string(),
                            uid: o.uid.to_string(),
                            controller: o.controller,
                            block_owner_deletion: o.block_owner_deletion,
                        })
                        .collect()
                }),
                finalizers: (!self.finalizers.is_empty())
                    .then(|| self.finalizers.iter().map(|f| f.to_string()).collect()),
                ..ObjectMeta::default()
            },
            type_: self.type_.as_ref().map(|t| t.as_str().to_string()),
            immutable: self.immutable,
            data: map(&self.data, |v| ByteString(v.to_vec())),
            string_data: None,
        }
    }
}

/// A watch event of Secrets as the cache takes it; `controlled` tells which Secrets' data to
/// keep (see [`written_for`]).
pub fn cached_event(
    event: &watcher::Event<Secret>,
    controlled: impl Fn(&Secret) -> bool,
) -> watcher::Event<CachedSecret> {
    let cached = |s: &Secret| CachedSecret::new(s, controlled(s));
    match event {
        watcher::Event::Apply(s) => watcher::Event::Apply(cached(s)),
        watcher::Event::Delete(s) => watcher::Event::Delete(cached(s)),
        watcher::Event::InitApply(s) => watcher::Event::InitApply(cached(s)),
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitDone => watcher::Event::InitDone,
    }
}

impl Lookup for CachedSecret {
    type DynamicType = ();

    fn kind(_: &()) -> Cow<'_, str> {
        "Secret".into()
    }

    fn group(_: &()) -> Cow<'_, str> {
        "".into()
    }

    fn version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }

    fn plural(_: &()) -> Cow<'_, str> {
        "secrets".into()
    }

    fn name(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed(&self.name))
    }

    fn namespace(&self) -> Option<Cow<'_, str>> {
        self.namespace.as_deref().map(Cow::Borrowed)
    }

    fn resource_version(&self) -> Option<Cow<'_, str>> {
        self.resource_version.as_deref().map(Cow::Borrowed)
    }

    fn uid(&self) -> Option<Cow<'_, str>> {
        self.uid.as_deref().map(Cow::Borrowed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cached_secret_gives_back_everything_but_what_nobody_reads() {
        let secret: Secret = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque", "immutable": false,
            "metadata": {
                "name": "s", "namespace": "n", "uid": "u-1", "resourceVersion": "42",
                "creationTimestamp": "2026-12-01T00:00:00Z", "deletionTimestamp": "2026-12-01T01:00:00Z",
                "labels": {"app.kubernetes.io/managed-by": "cloudkeys", "team": "a"},
                "annotations": {"cloudkeys.io/access-key-id": "K1"},
                "ownerReferences": [{"apiVersion": "cloudkeys.io/v1alpha1", "kind": "AccessKey", "name": "k",
                    "uid": "ak-1", "controller": true, "blockOwnerDeletion": true}],
                "finalizers": ["example.com/hold"],
                "managedFields": [{"manager": "cloudkeys", "operation": "Update"}],
            },
            "data": {"ACCESS_KEY_ID": "SzE=", "SECRET_ACCESS_KEY": "eA=="},
        }))
        .expect("Secret");
        let mut want = secret.clone();
        want.metadata.managed_fields = None;
        want.metadata.creation_timestamp = None;
        assert_eq!(CachedSecret::new(&secret, true).to_secret(), want);

        let bare =
            Secret { metadata: ObjectMeta { name: Some("b".into()), ..ObjectMeta::default() }, ..Secret::default() };
        assert_eq!(CachedSecret::new(&bare, true).to_secret(), bare, "absent maps stay absent, not empty");
    }

    #[test]
    fn a_labelled_secret_no_access_key_controls_is_cached_without_its_data() {
        let forged: Secret = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "big", "namespace": "n",
                "labels": {"app.kubernetes.io/managed-by": "cloudkeys", "bulk": "x".repeat(63)},
                "annotations": {"cloudkeys.io/access-key-id": "K1", "bulk": "x".repeat(4096)},
                "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "c", "uid": "u", "controller": true}]},
            "data": {"blob": base64_of(&"x".repeat(8192))},
        }))
        .expect("Secret");
        let cached = CachedSecret::new(&forged, written_for(&forged, |_| ClaimedOwner::NotListedYet)).to_secret();
        assert_eq!(cached.data, None);
        assert_eq!(
            cached.metadata.annotations.map(|a| a.into_keys().collect::<Vec<_>>()),
            Some(vec!["cloudkeys.io/access-key-id".to_string()])
        );
        assert_eq!(
            cached.metadata.labels.map(|l| l.into_keys().collect::<Vec<_>>()),
            Some(vec![MANAGED_BY_LABEL.to_string()])
        );
        assert_eq!(cached.metadata.name.as_deref(), Some("big"));
    }

    #[test]
    fn only_the_secret_its_access_key_names_is_written_for_it() {
        let secret = |name: &str, owner_uid: &str| -> Secret {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "namespace": "n",
                    "ownerReferences": [{"apiVersion": "cloudkeys.io/v1alpha1", "kind": "AccessKey", "name": "k",
                        "uid": owner_uid, "controller": true}]},
            }))
            .expect("Secret")
        };
        let k = |name: &str| ClaimedOwner::Present { uid: Some("ak-1".to_string()), secret_name: name.to_string() };
        let named_k = |owner: &str| if owner == "k" { k("k-credentials") } else { ClaimedOwner::Absent };
        assert!(written_for(&secret("k-credentials", "ak-1"), named_k));
        // The tenant's own AccessKey claimed by a Secret it does not name, or by a stale uid.
        assert!(!written_for(&secret("bulk-1", "ak-1"), |_| k("k-credentials")));
        assert!(!written_for(&secret("k-credentials", "ak-0"), |_| k("k-credentials")));
        // Before the AccessKeys are listed: kept; after, an AccessKey the cache lacks is none.
        assert!(written_for(&secret("k-credentials", "ak-1"), |_| ClaimedOwner::NotListedYet));
        assert!(!written_for(&secret("k-credentials", "ak-1"), |_| ClaimedOwner::Absent));
        // No AccessKey as controller: never.
        let mut foreign = secret("k-credentials", "ak-1");
        foreign.metadata.owner_references = None;
        assert!(!written_for(&foreign, |_| k("k-credentials")));
    }

    /// Finding 1: the GC deletes a Secret whose owner does not exist only when it can resolve the
    /// owner's kind. An ownerReference to `cloudkeys.io/v0` (a version nobody serves) is never
    /// resolved, so the GC retries forever and never deletes: a tenant's Secrets labelled
    /// `managed-by: cloudkeys` claiming such an owner are kept, data and all, in the operator's
    /// cache, megabytes each, for as long as they exist.
    #[test]
    fn a_secret_claiming_an_owner_the_garbage_collector_cannot_resolve_keeps_no_data() {
        let claiming = |api_version: &str| -> Secret {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "bulk-1", "namespace": "tenant",
                    "labels": {"app.kubernetes.io/managed-by": "cloudkeys"},
                    "ownerReferences": [{"apiVersion": api_version, "kind": "AccessKey", "name": "never-created",
                        "uid": "00000000-0000-0000-0000-000000000000", "controller": true}]},
                "data": {"blob": base64_of(&"x".repeat(1 << 20))},
            }))
            .expect("Secret")
        };
        // No such AccessKey in the cache (there never will be).
        let hostile = claiming("cloudkeys.io/v0");
        assert!(
            !written_for(&hostile, |_| ClaimedOwner::NotListedYet),
            "an owner of an unserved version is never garbage-collected: its Secret's data must not be cached"
        );
        let cached = CachedSecret::new(&hostile, written_for(&hostile, |_| ClaimedOwner::NotListedYet));
        assert!(cached.to_secret().data.is_none(), "1 MiB of a tenant's data held by the operator");
        // In the served version, but no such AccessKey once the cache is filled.
        let claiming_served = claiming("cloudkeys.io/v1alpha1");
        assert!(!written_for(&claiming_served, |_| ClaimedOwner::Absent));
    }

    fn base64_of(s: &str) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(s)
    }
}
