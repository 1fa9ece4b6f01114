//! The built-in provider: random keys from the operating system's CSPRNG, no network. Keys and
//! their revocation live in the operator's memory only, shared by every `local` issuer.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rand::rngs::OsRng;
use rand::TryRngCore;
use secrecy::SecretString;

use super::{IssuedKey, KeyRequest, ListedKey, Marker, OwnedKey, Provider, ProviderError, Revocation, TemplateVars};
use crate::api::KeyProvider;

#[derive(Debug, Clone, PartialEq, Eq)]
struct LocalKey {
    marker: Marker,
    revoked: bool,
}

/// The key ids of the local provider; never a secret.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LocalKeyIds {
    pub live: Vec<String>,
    pub revoked: Vec<String>,
}

/// Every key the local provider minted in this process, by key id.
#[derive(Debug, Default, Clone)]
pub struct LocalStore {
    keys: Arc<Mutex<BTreeMap<String, LocalKey>>>,
}

impl LocalStore {
    /// Every key id minted, live and revoked: what `/local/keys` shows, so that tests can check
    /// revocation at the "provider" rather than trust the operator's status.
    pub fn key_ids(&self) -> LocalKeyIds {
        let mut ids = LocalKeyIds::default();
        for (id, key) in self.lock().iter() {
            let list = if key.revoked { &mut ids.revoked } else { &mut ids.live };
            list.push(id.clone());
        }
        ids
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, LocalKey>> {
        // A panic while holding the lock leaves plain data behind; keep using it.
        self.keys.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

pub struct LocalProvider {
    store: LocalStore,
}

impl LocalProvider {
    pub fn new(store: LocalStore) -> Self {
        Self { store }
    }
}

fn random_alnum(len: usize) -> Result<String, ProviderError> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut bytes = vec![0u8; len];
    OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| ProviderError::retryable("create-key", format!("no randomness from the OS: {e}")))?;
    // 62 symbols from bytes: reject the top of the range to stay unbiased.
    let mut out = String::with_capacity(len);
    let mut pool = bytes.into_iter();
    while out.len() < len {
        let b = match pool.next() {
            Some(b) => b,
            None => {
                let mut one = [0u8; 1];
                OsRng
                    .try_fill_bytes(&mut one)
                    .map_err(|e| ProviderError::retryable("create-key", format!("no randomness from the OS: {e}")))?;
                one[0]
            }
        };
        if b < 248 {
            out.push(char::from(ALPHABET[usize::from(b) % ALPHABET.len()]));
        }
    }
    Ok(out)
}

#[async_trait]
impl Provider for LocalProvider {
    fn name(&self) -> &'static str {
        "local"
    }

    async fn check_credentials(&self) -> Result<(), ProviderError> {
        Ok(())
    }

    async fn create_key(&self, request: &KeyRequest<'_>) -> Result<IssuedKey, ProviderError> {
        let id = format!("LK{}", random_alnum(18)?.to_uppercase());
        let secret = SecretString::from(random_alnum(40)?);
        self.store.lock().insert(id.clone(), LocalKey { marker: request.marker.clone(), revoked: false });
        Ok(IssuedKey { access_key_id: id.clone(), secret, key_ref: id, expires_at: None })
    }

    async fn find_keys(&self, owner_uid: &str, _spec: &KeyProvider) -> Result<Vec<OwnedKey>, ProviderError> {
        Ok(self
            .store
            .lock()
            .iter()
            .filter(|(_, k)| !k.revoked && k.marker.owner() == owner_uid)
            .map(|(id, k)| OwnedKey { access_key_id: Some(id.clone()), key_ref: id.clone(), marker: k.marker.clone() })
            .collect())
    }

    async fn revoke_key(&self, key_ref: &str, owner_uid: &str) -> Result<Revocation, ProviderError> {
        Ok(match self.store.lock().get_mut(key_ref) {
            None | Some(LocalKey { revoked: true, .. }) => Revocation::AlreadyGone,
            Some(k) if k.marker.owner() != owner_uid => {
                Revocation::NotOwned(format!("key {key_ref} was issued for another AccessKey"))
            }
            Some(k) => {
                k.revoked = true;
                Revocation::Revoked
            }
        })
    }

    fn listing_scope(&self, _spec: &KeyProvider) -> String {
        String::new()
    }

    async fn list_marked(&self, _spec: &KeyProvider) -> Result<Vec<ListedKey>, ProviderError> {
        let keys = self.store.lock();
        let live = keys.iter().filter(|(_, k)| !k.revoked);
        Ok(live
            .map(|(id, k)| ListedKey {
                access_key_id: id.clone(),
                key_ref: id.clone(),
                marker: Some(k.marker.clone()),
                active: true,
                expires_at: None,
                last_used_at: None,
            })
            .collect())
    }

    async fn key_present(&self, key_ref: &str) -> Result<Option<bool>, ProviderError> {
        Ok(self.store.lock().get(key_ref).filter(|k| !k.revoked).map(|_| true))
    }

    fn template_vars(&self) -> TemplateVars {
        TemplateVars::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::LocalKey as LocalSpec;

    #[tokio::test]
    async fn local_keys_are_random_found_by_owner_and_revocable() {
        let store = LocalStore::default();
        let p = LocalProvider::new(store.clone());
        let spec = KeyProvider::Local(LocalSpec {});
        let marker = Marker::new_attempt("0f8c2d7e-1b2a-4c3d-9e8f-0123456789ab");
        let req = KeyRequest { marker: &marker, display_name: "ns-k".into(), spec: &spec, now: jiff::Timestamp::now() };
        let a = p.create_key(&req).await.expect("created");
        let b = p.create_key(&req).await.expect("created");
        assert_ne!(a.access_key_id, b.access_key_id);
        use secrecy::ExposeSecret;
        assert_ne!(a.secret.expose_secret(), b.secret.expose_secret());
        assert_eq!(a.secret.expose_secret().len(), 40);
        assert_eq!(p.find_keys(marker.owner(), &spec).await.expect("listed").len(), 2);
        assert!(p.find_keys("other", &spec).await.expect("listed").is_empty());
        let owner = marker.owner();
        assert!(matches!(p.revoke_key(&b.key_ref, "other").await, Ok(Revocation::NotOwned(_))), "not its key");
        assert_eq!(p.revoke_key(&a.key_ref, owner).await.expect("revoked"), Revocation::Revoked);
        assert_eq!(p.revoke_key(&a.key_ref, owner).await.expect("twice is fine"), Revocation::AlreadyGone);
        assert_eq!(p.revoke_key("unknown", owner).await.expect("unknown is gone"), Revocation::AlreadyGone);
        assert_eq!(store.key_ids(), LocalKeyIds { live: vec![b.access_key_id], revoked: vec![a.access_key_id] });
    }
}
