//! Reconcile logic: pure decisions (`decide`, `secret`, `conditions`) and the I/O that acts on
//! them (`access_key`, `issuer`), wired together in `run`.

pub mod access_key;
pub mod cached_secret;
pub mod caught;
pub mod client;
pub mod conditions;
pub mod consumers;
pub mod context;
pub mod decide;
pub mod drift;
pub mod error;
pub mod fair_share;
pub mod guard;
pub mod in_use;
pub mod installation;
pub mod issuer;
pub mod namespace_keys;
pub mod observe;
pub mod policy;
pub mod registry;
pub mod retained;
pub mod rotation;
pub mod run;
pub mod secret;
pub mod unreadable;
pub mod watch;
