//! A provider whose calls share one deadline: however a provider misbehaves (accepts the
//! connection and never answers, an operation that stays pending, endless pages), the caller
//! gets its time back by then, as a retryable error.
//!
//! Dropping a call half-way is as safe as a crash at that point: every key creation is recorded
//! before it is sent and found again by its marker.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::api::KeyProvider;

use super::{IssuedKey, KeyRequest, ListedKey, OwnedKey, Provider, ProviderError, Revocation, TemplateVars};

pub struct Bounded {
    inner: Arc<dyn Provider>,
    deadline: Instant,
}

impl Bounded {
    pub fn new(inner: Arc<dyn Provider>, deadline: Instant) -> Self {
        Self { inner, deadline }
    }

    async fn within<T>(
        &self,
        operation: &str,
        call: impl std::future::Future<Output = Result<T, ProviderError>>,
    ) -> Result<T, ProviderError> {
        match tokio::time::timeout_at(self.deadline, call).await {
            Ok(result) => result,
            Err(_) => Err(ProviderError::retryable(
                operation,
                "the provider did not answer within --provider-timeout; will retry",
            )),
        }
    }
}

#[async_trait]
impl Provider for Bounded {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn check_credentials(&self) -> Result<(), ProviderError> {
        self.within("check-credentials", self.inner.check_credentials()).await
    }

    async fn answer(
        &self,
        question: &super::policy_read::Question,
    ) -> Result<super::policy_read::Answer, ProviderError> {
        self.within("policy-read", self.inner.answer(question)).await
    }

    async fn create_key(&self, request: &KeyRequest<'_>) -> Result<IssuedKey, ProviderError> {
        self.within("create-key", self.inner.create_key(request)).await
    }

    async fn find_keys(&self, owner_uid: &str, spec: &KeyProvider) -> Result<Vec<OwnedKey>, ProviderError> {
        self.within("find-keys", self.inner.find_keys(owner_uid, spec)).await
    }

    async fn revoke_key(&self, key_ref: &str, owner_uid: &str) -> Result<Revocation, ProviderError> {
        self.within("revoke-key", self.inner.revoke_key(key_ref, owner_uid)).await
    }

    fn listing_scope(&self, spec: &KeyProvider) -> String {
        self.inner.listing_scope(spec)
    }

    async fn list_marked(&self, spec: &KeyProvider) -> Result<Vec<ListedKey>, ProviderError> {
        self.within("list-keys", self.inner.list_marked(spec)).await
    }

    async fn key_present(&self, key_ref: &str) -> Result<Option<bool>, ProviderError> {
        self.within("read-key", self.inner.key_present(key_ref)).await
    }

    async fn last_used(&self, key_ref: &str) -> Result<Option<jiff::Timestamp>, ProviderError> {
        self.within("read-key-use", self.inner.last_used(key_ref)).await
    }

    fn lifetime(&self, spec: &KeyProvider) -> Option<std::time::Duration> {
        self.inner.lifetime(spec)
    }

    fn template_vars(&self) -> TemplateVars {
        self.inner.template_vars()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Hanging;

    #[async_trait]
    impl Provider for Hanging {
        fn name(&self) -> &'static str {
            "hanging"
        }
        async fn check_credentials(&self) -> Result<(), ProviderError> {
            std::future::pending().await
        }
        async fn create_key(&self, _: &KeyRequest<'_>) -> Result<IssuedKey, ProviderError> {
            std::future::pending().await
        }
        async fn find_keys(&self, _: &str, _: &KeyProvider) -> Result<Vec<OwnedKey>, ProviderError> {
            Ok(Vec::new())
        }
        async fn revoke_key(&self, _: &str, _: &str) -> Result<Revocation, ProviderError> {
            std::future::pending().await
        }
        fn listing_scope(&self, _: &KeyProvider) -> String {
            String::new()
        }
        async fn list_marked(&self, _: &KeyProvider) -> Result<Vec<ListedKey>, ProviderError> {
            std::future::pending().await
        }
        async fn key_present(&self, _: &str) -> Result<Option<bool>, ProviderError> {
            std::future::pending().await
        }
        fn template_vars(&self) -> TemplateVars {
            TemplateVars::new()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn every_call_ends_by_the_shared_deadline() {
        let bounded = Bounded::new(Arc::new(Hanging), Instant::now() + std::time::Duration::from_secs(60));
        let e = bounded.revoke_key("k", "uid").await.expect_err("a hanging call ends");
        assert_eq!(e.kind, super::super::ErrorKind::Retryable);
        assert!(e.to_string().contains("--provider-timeout"));
        // The deadline is shared: a later call has no time left.
        assert!(bounded.check_credentials().await.is_err());
        assert!(bounded.find_keys("uid", &KeyProvider::Local(Default::default())).await.is_ok());
    }
}
