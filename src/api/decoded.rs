//! One object of a list or watch, decoded on its own.
//!
//! kube decodes a list page or a watch event into the typed object as a whole: one object whose
//! field the Rust type cannot hold (an integer past its range stored before the schema had a
//! bound, or written through a CRD newer than this version) would fail every list of its kind,
//! and so every AccessKey in every namespace, again after each restart. As `Decoded<K>`, such an
//! object reads as `Unreadable` (its metadata and why) and the rest of the list as usual.

use std::borrow::Cow;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

/// An object of kind `K` as the apiserver sent it: read, or not (its metadata and why).
#[derive(Clone, Debug)]
pub enum Decoded<K> {
    Read(K),
    Unreadable { metadata: Box<ObjectMeta>, error: String },
}

impl<'de, K: DeserializeOwned> Deserialize<'de> for Decoded<K> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(deserializer)?;
        // With the path of the field that does not fit: the report names it.
        match serde_path_to_error::deserialize::<_, K>(&value) {
            Ok(obj) => Ok(Self::Read(obj)),
            Err(e) => {
                let metadata = value.get("metadata").and_then(|m| ObjectMeta::deserialize(m).ok()).unwrap_or_default();
                let metadata = Box::new(metadata);
                // serde names the field and the value it refused: no secret lives in these kinds.
                let error = e.to_string().chars().take(300).collect();
                Ok(Self::Unreadable { metadata, error })
            }
        }
    }
}

impl<K: Resource<DynamicType = ()>> Resource for Decoded<K> {
    type DynamicType = ();
    type Scope = K::Scope;

    fn kind(dt: &()) -> Cow<'_, str> {
        K::kind(dt)
    }
    fn group(dt: &()) -> Cow<'_, str> {
        K::group(dt)
    }
    fn version(dt: &()) -> Cow<'_, str> {
        K::version(dt)
    }
    fn api_version(dt: &()) -> Cow<'_, str> {
        K::api_version(dt)
    }
    fn plural(dt: &()) -> Cow<'_, str> {
        K::plural(dt)
    }
    fn url_path(dt: &(), namespace: Option<&str>) -> String {
        K::url_path(dt, namespace)
    }
    fn meta(&self) -> &ObjectMeta {
        match self {
            Self::Read(obj) => obj.meta(),
            Self::Unreadable { metadata, .. } => metadata,
        }
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        match self {
            Self::Read(obj) => obj.meta_mut(),
            Self::Unreadable { metadata, .. } => metadata,
        }
    }
}
