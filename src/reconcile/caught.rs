//! A panic while handling one object stays that object's error.
//!
//! kube's controller runs every reconcile inside its own stream: a panic there would end the
//! controller, and with it the process, for every tenant, again after each restart if an
//! object's content caused it. Caught here, it becomes [`Error::Panicked`]: backed off, counted
//! under its label, and reported on the object by the caller.

use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures::FutureExt;

use super::error::Error;

/// Runs `work`, turning a panic in it into [`Error::Panicked`].
///
/// Unwind safety: the state a reconcile shares (the caches, the per-object maps in `Context`)
/// is behind locks that are taken back after a poisoning, and holds nothing half-written that a
/// later reconcile relies on; what the object's status says is read again from the cluster.
pub async fn caught<T>(work: impl Future<Output = Result<T, Error>>) -> Result<T, Error> {
    match AssertUnwindSafe(work).catch_unwind().await {
        Ok(result) => result,
        Err(payload) => Err(Error::Panicked(panic_message(payload.as_ref()))),
    }
}

/// What a panic said, shown as any other text that may hold values: sanitised and cut.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    let text = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".to_string());
    crate::providers::error::sanitize_message(&text, 200)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_is_an_error_of_the_object_and_the_caller_goes_on() {
        let e = caught(async {
            let big: u64 = "18446744073709551615".parse().unwrap_or_default();
            if big > 0 {
                panic!("overflow while adding {big} seconds");
            }
            Ok(())
        })
        .await
        .expect_err("panicked");
        assert!(matches!(&e, Error::Panicked(m) if m.contains("overflow while adding")), "{e}");
        assert_eq!(e.label(), "panicked");
        assert!(e.backoff(0) >= std::time::Duration::from_secs(30));
        // A formatted payload and a non-string one.
        let e = caught::<()>(async { std::panic::panic_any(7u8) }).await.expect_err("panicked");
        assert!(e.to_string().contains("no message"), "{e}");
        // No panic: the result as it was.
        assert_eq!(caught(async { Ok::<_, Error>(3) }).await.ok(), Some(3));
    }

    #[test]
    fn a_panic_message_is_sanitised_and_cut() {
        let long = format!("token=abcdef {}", "x".repeat(500));
        let shown = panic_message(&long);
        assert!(!shown.contains("abcdef") && shown.chars().count() <= 201, "{shown}");
    }
}
