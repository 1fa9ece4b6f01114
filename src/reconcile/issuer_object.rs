//! What the reconciles need of either issuer kind, `KeyIssuer` and `ClusterKeyIssuer`, written once.

use std::sync::Arc;

use kube::api::Api;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::api::{ClusterKeyIssuer, Issuer, IssuerKind, IssuerStatus, KeyIssuer};
use crate::core::issuers::IssuerId;

use super::context::{display_name, Context};

/// What the issuer controller needs from either kind.
pub trait IssuerObject:
    Issuer
    + Resource<DynamicType = ()>
    + ResourceExt
    + Clone
    + Serialize
    + DeserializeOwned
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
    /// The controller's name in metrics.
    const CONTROLLER: &'static str;
    fn api(ctx: &Context, namespace: Option<&str>) -> Api<Self>;
    /// Namespace of the Secrets this issuer reads.
    fn secret_namespace(&self, ctx: &Context) -> String;
    fn status(&self) -> Option<&IssuerStatus>;
    fn describe(&self) -> String;
    fn id(&self) -> IssuerId;
    /// The issuer `id` names, from the cache.
    fn cached(ctx: &Context, id: &IssuerId) -> Option<Arc<Self>>;
}

impl IssuerObject for KeyIssuer {
    const CONTROLLER: &'static str = "keyissuer";
    fn api(ctx: &Context, namespace: Option<&str>) -> Api<Self> {
        Api::namespaced(ctx.client.clone(), namespace.unwrap_or_default())
    }
    fn secret_namespace(&self, _: &Context) -> String {
        self.namespace().unwrap_or_default()
    }
    fn status(&self) -> Option<&IssuerStatus> {
        self.status.as_ref()
    }
    fn describe(&self) -> String {
        format!("KeyIssuer {}", display_name(self))
    }
    fn id(&self) -> IssuerId {
        IssuerId { kind: IssuerKind::KeyIssuer, name: self.name_any(), namespace: self.namespace() }
    }
    fn cached(ctx: &Context, id: &IssuerId) -> Option<Arc<Self>> {
        let namespace = id.namespace.as_deref().unwrap_or_default();
        ctx.caches.key_issuers.get(&ObjectRef::new(&id.name).within(namespace))
    }
}

impl IssuerObject for ClusterKeyIssuer {
    const CONTROLLER: &'static str = "clusterkeyissuer";
    fn api(ctx: &Context, _: Option<&str>) -> Api<Self> {
        Api::all(ctx.client.clone())
    }
    fn secret_namespace(&self, ctx: &Context) -> String {
        ctx.cluster_resource_namespace.clone()
    }
    fn status(&self) -> Option<&IssuerStatus> {
        self.status.as_ref()
    }
    fn describe(&self) -> String {
        format!("ClusterKeyIssuer {}", self.name_any())
    }
    fn id(&self) -> IssuerId {
        IssuerId { kind: IssuerKind::ClusterKeyIssuer, name: self.name_any(), namespace: None }
    }
    fn cached(ctx: &Context, id: &IssuerId) -> Option<Arc<Self>> {
        ctx.caches.cluster_issuers.get(&ObjectRef::new(&id.name))
    }
}
