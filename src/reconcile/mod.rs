//! One object at a time: read what it needs (the watch-fed caches first), ask `core` what to do,
//! and do it (the apiserver, the provider). `access_key` and `issuer` reconcile one object each,
//! `drift` checks an issuer's keys at its provider; `context` is what they share (caches,
//! provider clients, the places of `fair_share`, per-object memory).

pub mod access_key;
pub mod cached_secret;
pub mod caches;
pub mod caught;
pub mod context;
pub mod drift;
pub mod error;
pub mod fair_share;
pub mod in_use;
pub mod issuer;
pub mod issuer_object;
pub mod memory;
pub mod namespace_keys;
pub mod registry;
pub mod retained;
pub mod sync;
pub mod writes;
