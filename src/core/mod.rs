//! Everything that decides, and nothing that does: no `async`, no kube `Api` or `Client`, no
//! operator state; the time is passed in. What a reconcile observed goes in (`observe`), the next
//! step comes out (`decide`); the rules behind it (rotation, consumers, the Secret's content,
//! issuer policy, the tenant guard, which issuers an AccessKey needs) are each a module here.
//! `reconcile` and the CLI's `inspect` call the same functions.

pub mod conditions;
pub mod consumers;
pub mod decide;
pub mod guard;
pub mod issuers;
pub mod observe;
pub mod policy;
pub mod rotation;
pub mod secret;
pub mod windows;
