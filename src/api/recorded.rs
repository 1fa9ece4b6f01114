//! Values the operator writes into a status and reads back later.

use serde::{Deserialize, Serialize};

/// A typed value from a status, or, when it does not parse as one (edited by hand, or written by
/// another version in a shape this one cannot read), the value as it stands. A status field must
/// never fail to parse: the watch lists every AccessKey at once, and one bad status would stall
/// them all. (A newer block that parses but has fields this version does not know reads as
/// `Known`, without them.)
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(untagged)]
pub enum Recorded<T> {
    Known(T),
    Unreadable(serde_json::Value),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{KeyProvider, PendingKey};

    fn pending(provider: serde_json::Value) -> PendingKey {
        serde_json::from_value(serde_json::json!({
            "attempt": "a1",
            "issuer": {"kind": "KeyIssuer", "name": "i"},
            "startedAt": "2026-12-01T00:00:00Z",
            "provider": provider,
        }))
        .expect("a pending key parses whatever its provider block holds")
    }

    #[test]
    fn a_provider_block_round_trips_typed() {
        let block = serde_json::json!({"local": {}});
        let p = pending(block.clone());
        assert!(matches!(p.provider, Some(Recorded::Known(KeyProvider::Local(_)))), "{:?}", p.provider);
        assert_eq!(serde_json::to_value(&p).expect("serializes")["provider"], block);
    }

    #[test]
    fn a_block_this_version_cannot_read_is_kept_as_it_was() {
        for block in [serde_json::json!({"nimbus": {"x": 1}}), serde_json::json!("local"), serde_json::json!(7)] {
            let p = pending(block.clone());
            assert_eq!(p.provider, Some(Recorded::Unreadable(block.clone())));
            assert_eq!(serde_json::to_value(&p).expect("serializes")["provider"], block);
        }
    }
}
