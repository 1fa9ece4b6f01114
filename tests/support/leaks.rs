//! The secret of a key may only ever be in its Secret: these checks look everywhere else.

use cloudkeys::api::AccessKey;
use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, ListParams};
use kube::Client;

use super::operator::Operator;

/// Fails if any of `secrets` appears in the operator's logs, the namespace's Events, or any
/// AccessKey (spec, status, annotations) of the namespace.
pub async fn assert_no_secret_leaks(client: &Client, ns: &str, op: &Operator, secrets: &[String]) {
    assert!(!secrets.is_empty(), "no secrets to look for: the check would prove nothing");
    let logs = op.logs();
    let events =
        Api::<Event>::namespaced(client.clone(), ns).list(&ListParams::default()).await.expect("events listed");
    let events = serde_json::to_string(&events.items).expect("json");
    let keys = Api::<AccessKey>::namespaced(client.clone(), ns).list(&ListParams::default()).await.expect("listed");
    let keys = serde_json::to_string(&keys.items).expect("json");
    for secret in secrets {
        assert!(!logs.contains(secret.as_str()), "a secret appears in the operator's logs");
        assert!(!events.contains(secret.as_str()), "a secret appears in an Event");
        assert!(!keys.contains(secret.as_str()), "a secret appears in an AccessKey");
    }
}
