//! Reconcile logic: pure decisions (`decide`, `secret`, `conditions`) and the I/O that acts on
//! them (`access_key`, `issuer`), wired together in `run`.

pub mod access_key;
pub mod cached_secret;
pub mod caught;
pub mod client;
pub mod context;
pub mod drift;
pub mod error;
pub mod fair_share;
pub mod in_use;
pub mod installation;
pub mod issuer;
pub mod namespace_keys;
pub mod registry;
pub mod retained;
pub mod run;
pub mod run_args;
pub mod unreadable;
pub mod watch;
