//! Fake cloud provider APIs for the integration tests: real HTTP servers on loopback that speak
//! the provider's wire protocol and check request signatures with their own verifier.

#![allow(dead_code)] // each test binary uses a different part of this module

pub mod exoscale;
pub mod outscale;
pub mod yandex;
