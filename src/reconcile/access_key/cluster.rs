//! What one reconcile reads from the cluster about an AccessKey, and the writes that keep
//! that view current (status, Secret, restarted consumers).

use super::*;
use crate::reconcile::namespace_keys::Admission;

/// Everything one reconcile reads from the cluster about an AccessKey.
pub(super) struct Cluster<'a> {
    pub(super) ctx: &'a Context,
    pub(super) ak: &'a AccessKey,
    pub(super) ns: String,
    pub(super) uid: String,
    /// The AccessKey's resourceVersion this reconcile last saw: every status write is
    /// conditional on it, so a reconcile that started from a stale cached copy fails with a
    /// conflict instead of overwriting a newer record of a key (and losing track of it).
    pub(super) resource_version: std::sync::Mutex<Option<String>>,
    /// The issuer slots this reconcile holds, released when it ends.
    pub(super) slots: std::sync::Mutex<Vec<(String, crate::reconcile::context::IssuerSlot)>>,
    /// When this reconcile stops waiting on providers (`--provider-timeout`).
    pub(super) deadline: tokio::time::Instant,
    /// The AccessKey's Secret as this reconcile last wrote or read it from the apiserver: newer
    /// than the cache, which sees our own writes only a moment later. `None`: nothing yet.
    pub(super) secret_seen: std::sync::Mutex<Option<Option<Secret>>>,
    /// Consumers as this reconcile restarted them: newer than the caches.
    pub(super) workloads_seen: std::sync::Mutex<Vec<Workload>>,
    /// `spec.rotation` with its defaults, the issuer's windows among them (an invalid one is
    /// reported as the spec's problem).
    pub(super) settings: RotationSettings,
    /// The place this reconcile took under `maxKeysPerNamespace` for the key it mints, if any.
    pub(super) admission: std::sync::Mutex<Option<Admission<'a>>>,
}

impl<'a> Cluster<'a> {
    pub(super) fn api(&self) -> Api<AccessKey> {
        Api::namespaced(self.ctx.client.clone(), &self.ns)
    }

    pub(super) fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.ctx.client.clone(), &self.ns)
    }

    pub(super) async fn issuer(&self, r: &IssuerRef) -> Result<Option<LoadedIssuer>, Error> {
        let ctx = self.ctx;
        Ok(ctx.registry.load(&ctx.client, &ctx.caches, &self.ns, r, &ctx.cluster_resource_namespace).await?)
    }

    /// Whether an issuer named as `r` names one exists with the other kind (from the caches).
    pub(super) fn other_kind_exists(&self, r: &IssuerRef) -> bool {
        let caches = &self.ctx.caches;
        match r.kind {
            crate::api::IssuerKind::KeyIssuer => caches.cluster_issuers.get(&ObjectRef::new(&r.name)).is_some(),
            crate::api::IssuerKind::ClusterKeyIssuer => {
                caches.key_issuers.get(&ObjectRef::new(&r.name).within(&self.ns)).is_some()
            }
        }
    }

    /// A provider client for revoking or listing through `r`, whatever its Ready condition says.
    pub(super) async fn provider_of(&self, r: &IssuerRef) -> Result<Arc<dyn Provider>, Error> {
        match self.issuer(r).await? {
            Some(loaded) => {
                let issuer = loaded.display;
                let provider = loaded.provider.map_err(|cause| Error::IssuerUnusable { issuer, cause })?;
                self.at_provider(r, provider).await
            }
            None => Err(Error::IssuerNotFound(format!("{} {}", observe::kind_name(r), r.name))),
        }
    }

    /// `provider`, bounded by this reconcile's deadline, once this reconcile holds one of the
    /// issuer's slots (`--issuer-concurrency`): when all are taken, `Error::IssuerBusy` sends the
    /// AccessKey back to the queue instead of letting it hold a worker.
    pub(super) async fn at_provider(
        &self,
        r: &IssuerRef,
        provider: Arc<dyn Provider>,
    ) -> Result<Arc<dyn Provider>, Error> {
        let issuer = IssuerId::from_ref(r, &self.ns).to_string();
        // The built-in provider answers from memory: it can neither hang nor hold a worker.
        let networked = provider.name() != "local";
        let held = self.slots.lock().unwrap_or_else(|p| p.into_inner()).iter().any(|(held, _)| *held == issuer);
        if networked && !held {
            let slot =
                self.ctx.issuer_slot(&issuer, &self.ns).await.ok_or_else(|| Error::IssuerBusy(issuer.clone()))?;
            self.slots.lock().unwrap_or_else(|p| p.into_inner()).push((issuer, slot));
        }
        Ok(Arc::new(Bounded::new(provider, self.deadline)))
    }

    /// Lets go of the issuer slots held so far: once the provider has answered, the apiserver
    /// writes that follow need no slot, and the next AccessKey of the issuer may go.
    pub(super) fn release_slots(&self) {
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    pub(super) fn new(ctx: &'a Context, ak: &'a AccessKey) -> Self {
        Cluster {
            ctx,
            ak,
            ns: ak.namespace().unwrap_or_default(),
            uid: ak.uid().unwrap_or_default(),
            resource_version: std::sync::Mutex::new(ak.resource_version()),
            slots: std::sync::Mutex::new(Vec::new()),
            deadline: tokio::time::Instant::now() + ctx.limits.provider_timeout,
            secret_seen: std::sync::Mutex::new(None),
            workloads_seen: std::sync::Mutex::new(Vec::new()),
            // The issuer's default windows are added once it is loaded.
            settings: RotationSettings::of(&ak.spec, None).unwrap_or_default(),
            admission: std::sync::Mutex::new(None),
        }
    }

    /// Keeps the place taken for the key about to be minted until this reconcile ends.
    pub(super) fn admitted(&self, admission: Option<Admission<'a>>) {
        *self.admission.lock().unwrap_or_else(|p| p.into_inner()) = admission;
    }

    /// Whether the attempt holding this reconcile's place is (or may be) recorded in the status.
    pub(super) fn attempt_recorded(&self, recorded: bool) {
        if let Some(a) = self.admission.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            a.recorded(recorded);
        }
    }

    /// The workloads `spec.consumers` names, from the caches (or as this reconcile restarted
    /// them). Looked up only while a replaced key waits for them.
    pub(super) fn observed_consumers(&self, status: &AccessKeyStatus) -> Vec<Workload> {
        if !observe::consumers_wanted(self.ak, status) {
            return Vec::new();
        }
        let workloads = &self.ctx.caches.workloads;
        let (deployments, stateful_sets, daemon_sets, rollouts) = (
            workloads.deployments.state(),
            workloads.stateful_sets.state(),
            workloads.daemon_sets.state(),
            workloads.rollouts.state(),
        );
        let read = observe::WorkloadsRead {
            deployments: &deployments,
            stateful_sets: &stateful_sets,
            daemon_sets: &daemon_sets,
            rollouts: &rollouts,
        };
        let mut found = observe::observe_consumers(self.ak, status, read);
        let seen = self.workloads_seen.lock().unwrap_or_else(|p| p.into_inner());
        for w in found.iter_mut() {
            if let Some(newer) = seen.iter().find(|s| s.kind == w.kind && s.name == w.name) {
                *w = newer.clone();
            }
        }
        found
    }

    /// Restarts one consumer for `key_id` (a pod-template annotation; a workload that has it
    /// already is not changed, so this never rolls anything twice for one key).
    pub(super) async fn restart(&self, target: &ConsumerTarget, key_id: &str) -> Result<(), Error> {
        let patch = consumers::restart_patch(target.kind, key_id, jiff::Timestamp::now());
        let client = self.ctx.client.clone();
        let name = &target.name;
        let observed = match target.kind {
            WorkloadKind::Deployment => {
                let api = Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(client, &self.ns);
                crate::reconcile::writes::restart_workload(&api, name, &patch).await?.observe()
            }
            WorkloadKind::StatefulSet => {
                let api = Api::<k8s_openapi::api::apps::v1::StatefulSet>::namespaced(client, &self.ns);
                crate::reconcile::writes::restart_workload(&api, name, &patch).await?.observe()
            }
            WorkloadKind::DaemonSet => {
                let api = Api::<k8s_openapi::api::apps::v1::DaemonSet>::namespaced(client, &self.ns);
                crate::reconcile::writes::restart_workload(&api, name, &patch).await?.observe()
            }
            WorkloadKind::Rollout => {
                let api = Api::<crate::api::Rollout>::namespaced(client, &self.ns);
                crate::reconcile::writes::restart_workload(&api, name, &patch).await?.observe()
            }
        };
        let mut seen = self.workloads_seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.retain(|w| !(w.kind == observed.kind && w.name == observed.name));
        seen.push(observed);
        Ok(())
    }

    /// The AccessKey's Secret: as last written or read by this reconcile, else from the cache
    /// of the Secrets this operator manages (labelled).
    pub(super) fn observed_secret(&self) -> Option<Secret> {
        if let Some(seen) = self.secret_seen.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return seen;
        }
        let key = ObjectRef::new(&self.ak.spec.secret_name).within(&self.ns);
        self.ctx.caches.secrets.get(&key).map(|s| s.to_secret())
    }

    pub(super) fn saw_secret(&self, secret: Option<Secret>) {
        *self.secret_seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(secret);
    }

    /// Whether the Secret was read from the apiserver (or written) in this reconcile.
    pub(super) fn secret_confirmed(&self) -> bool {
        self.secret_seen.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    pub(super) async fn write_status(&self, status: &mut AccessKeyStatus) -> Result<(), Error> {
        // The Rotating condition follows the replaced keys in every write; `Blocked` stays until
        // a new key is had or none is wanted any more (cleared explicitly).
        if !rotation::is_blocked(&status.conditions) {
            let state = RotatingState::of(status);
            rotation::put_rotating(&mut status.conditions, &state, self.ak.meta().generation, jiff::Timestamp::now());
        }
        // Stalled and Reconciling follow Ready and the replaced keys in the same write.
        self.put_progress(status);
        let rv = self.resource_version.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let patch = serde_json::json!({
            "metadata": {"resourceVersion": rv},
            "status": status_merge_patch(status),
        });
        let updated = crate::reconcile::writes::access_key_status(&self.api(), &self.ak.name_any(), &patch).await?;
        let cached = || {
            let key = ObjectRef::new(&self.ak.name_any()).within(&self.ns);
            self.ctx.caches.access_keys.get(&key).and_then(|a| a.resource_version())
        };
        self.ctx.own_writes.wrote_status(&self.uid, rv, updated.resource_version(), cached);
        *self.resource_version.lock().unwrap_or_else(|p| p.into_inner()) = updated.resource_version();
        Ok(())
    }

    /// The provider block a pending attempt was made with: the current one if none is recorded
    /// (an operator older than the field) or the recorded one cannot be read.
    pub(super) fn attempt_spec(&self, pending: &PendingKey) -> crate::api::KeyProvider {
        match &pending.provider {
            Some(crate::api::Recorded::Known(provider)) => provider.clone(),
            Some(crate::api::Recorded::Unreadable(_)) => {
                // A key asked for under another spec may be missed here; the issuer's sweep for
                // marked keys nothing tracks still counts it in `orphanedKeys`.
                tracing::warn!(
                    attempt = %pending.attempt,
                    "status.pendingKey.provider does not parse; looking for the pending key with the current spec"
                );
                self.ak.spec.provider.clone()
            }
            None => self.ak.spec.provider.clone(),
        }
    }

    /// Puts the Ready condition into `status` (not written yet); false if it was there already.
    pub(super) fn put_condition(&self, status: &mut AccessKeyStatus, reason: Reason, message: &str) -> bool {
        let generation = self.ak.meta().generation;
        let condition = ready_condition(&status.conditions, reason, message, generation, now());
        let unchanged = status.observed_generation == generation
            && status.conditions.iter().any(|c| {
                c.type_ == READY
                    && c.reason == condition.reason
                    && c.message == condition.message
                    && c.status == condition.status
            });
        if !unchanged {
            status.conditions.retain(|c| c.type_ != READY);
            status.conditions.insert(0, condition);
            status.observed_generation = generation;
        }
        // Also when Ready stays: an AccessKey last written by an operator without the kstatus
        // conditions gets them once, and never again while nothing changes.
        let progress_changed = self.put_progress(status);
        !unchanged || progress_changed
    }

    /// Puts `Stalled` and `Reconciling` as Ready and the work under way say; false if they are
    /// there already as they are.
    fn put_progress(&self, status: &mut AccessKeyStatus) -> bool {
        let activity = rotation::activity(status);
        conditions::put_progress(&mut status.conditions, activity, self.ak.meta().generation, now())
    }

    pub(super) async fn set_condition(
        &self,
        status: &mut AccessKeyStatus,
        reason: Reason,
        message: String,
    ) -> Result<(), Error> {
        if !self.put_condition(status, reason, &message) {
            return Ok(());
        }
        self.write_status(status).await?;
        // Revoking is progress, announced by the Revoked event that follows.
        if !reason.is_ready() && reason != Reason::Revoking {
            self.ctx.event(self.ak, EventType::Warning, reason.as_str(), message.clone()).await;
        }
        tracing::info!(reason = reason.as_str(), %message, "condition");
        Ok(())
    }
}
