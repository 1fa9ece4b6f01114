//! One KeyIssuer per cloud provider in a test namespace, each at a fake of its own: for tests
//! that check a behaviour on every provider at once (the end-to-end tier's, which has both `fakes`
//! and `support`).

use kube::Client;
use serde_json::{json, Value};

use crate::fakes::exoscale::ExoscaleFake;
use crate::fakes::outscale::OutscaleFake;
use crate::fakes::yandex::YandexFake;
use crate::support;
use crate::support::exoscale::{ADMIN_KEY, ADMIN_SECRET, CREDENTIALS};

/// The OUTSCALE issuer's own access key and secret key (of the root account).
pub const OSC_AK: &str = "ADMINAK0123456789ABC";
pub const OSC_SK: &str = "adminsecretkey0123456789adminsecretkey01";
/// The EIM user that exists at the OUTSCALE fake.
pub const OSC_USER: &str = "app-web";

pub struct Clouds {
    pub exoscale: ExoscaleFake,
    pub yandex: YandexFake,
    pub outscale: OutscaleFake,
}

fn key_issuer(name: &str, provider: &str, block: Value) -> Value {
    json!({"apiVersion": "cloudkeys.io/v1alpha1", "kind": "KeyIssuer", "metadata": {"name": name},
        "spec": {provider: block}})
}

/// The KeyIssuers `exo`, `yc` (for the fake's own service account) and `osc`, with their
/// credentials Secrets, each without a policy.
pub async fn issuers(client: &Client, ns: &str) -> Clouds {
    let exoscale = ExoscaleFake::start(ADMIN_KEY, ADMIN_SECRET);
    support::exoscale::credentials(client, ns, ADMIN_SECRET).await;
    let exo = json!({"endpoint": exoscale.endpoint(), "credentialsSecretRef": {"name": CREDENTIALS}});
    support::apply_json(client, ns, key_issuer("exo", "exoscale", exo)).await;
    let yandex = YandexFake::start();
    support::create_secret(client, ns, "yc-admin", json!({"key.json": yandex.authorized_key_json()})).await;
    let yc = json!({"endpoint": yandex.endpoint(), "operationEndpoint": yandex.operation_endpoint(),
        "serviceAccountId": yandex.service_account_id(), "serviceAccountKeySecretRef": {"name": "yc-admin"}});
    support::apply_json(client, ns, key_issuer("yc", "yandex", yc)).await;
    let outscale = OutscaleFake::start("eu-west-2", OSC_AK, OSC_SK);
    outscale.add_user(OSC_USER);
    support::create_secret(client, ns, "osc-admin", json!({"OSC_ACCESS_KEY": OSC_AK, "OSC_SECRET_KEY": OSC_SK})).await;
    let osc =
        json!({"region": "eu-west-2", "endpoint": outscale.endpoint(), "credentialsSecretRef": {"name": "osc-admin"}});
    support::apply_json(client, ns, key_issuer("osc", "outscale", osc)).await;
    Clouds { exoscale, yandex, outscale }
}
