//! An Exoscale issuer for a test namespace: the admin credentials Secret and the KeyIssuer
//! pointing at a fake (the fakes live in `tests/fakes/`, which this module cannot see, so the
//! fake's endpoint is passed in).

use kube::Client;
use serde_json::json;

/// The admin key the Exoscale fakes of the end-to-end tests are started with.
pub const ADMIN_KEY: &str = "EXO0123456789abcdef01234567";
pub const ADMIN_SECRET: &str = "adminsecretadminsecretadminsecretadminsecre";
/// The credentials Secret every Exoscale KeyIssuer of the tests reads.
pub const CREDENTIALS: &str = "exoscale-admin";

/// A fresh namespace for `test`, with the Exoscale KeyIssuer `exoscale` at `endpoint` and its
/// credentials.
pub async fn namespace(test: &str, endpoint: &str) -> (Client, String) {
    let client = super::client().await;
    super::install_crds(&client).await;
    let ns = super::namespace(&client, test).await;
    issuer_with_credentials(&client, &ns, endpoint, ADMIN_SECRET).await;
    (client, ns)
}

/// The Secret `exoscale-admin` holding `ADMIN_KEY` and `admin_secret`, and the KeyIssuer
/// `exoscale` at `endpoint` reading it.
pub async fn issuer_with_credentials(client: &Client, ns: &str, endpoint: &str, admin_secret: &str) {
    credentials(client, ns, admin_secret).await;
    issuer(client, ns, "exoscale", endpoint).await;
}

/// The Secret `exoscale-admin` holding `ADMIN_KEY` and `admin_secret`.
pub async fn credentials(client: &Client, ns: &str, admin_secret: &str) {
    super::create_secret(
        client,
        ns,
        CREDENTIALS,
        json!({"EXOSCALE_API_KEY": ADMIN_KEY, "EXOSCALE_API_SECRET": admin_secret}),
    )
    .await;
}

/// A KeyIssuer `name` at `endpoint` reading the Secret `exoscale-admin`.
pub async fn issuer(client: &Client, ns: &str, name: &str, endpoint: &str) {
    super::apply_json(
        client,
        ns,
        json!({"apiVersion": "cloudkeys.io/v1alpha1", "kind": "KeyIssuer", "metadata": {"name": name},
            "spec": {"exoscale": {"endpoint": endpoint, "credentialsSecretRef": {"name": CREDENTIALS}}}}),
    )
    .await;
}
