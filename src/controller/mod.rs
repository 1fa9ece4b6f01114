//! Reconcile logic: pure decisions (`decide`, `secret`, `conditions`) and the I/O that acts on
//! them.

pub mod conditions;
pub mod decide;
pub mod secret;
