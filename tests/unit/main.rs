//! The tier that needs no cluster, beside the library's own unit tests (`make unit`): the
//! repository's checks (layers, docs, the committed CRDs, fingerprints of issued specs) and the
//! provider fakes tested against the providers' wire formats. One binary, so that it links once.

#[path = "../fakes/mod.rs"]
mod fakes;

mod crds_in_repo;
mod docs;
mod exoscale_fake;
mod fingerprints;
mod layers;
mod outscale_fake;
mod yandex_fake;
