//! Waiting on a provider's asynchronous operation (Exoscale's role and key deletions, Yandex's
//! key deletions): polled with doubling pauses, and given up after a bound.

use std::future::Future;
use std::time::Duration;

use super::error::brief;
use super::ProviderError;

/// Operations settle within seconds; two minutes of polling means something is stuck, and the
/// controller's own retry (which finds leftovers by marker) is the better place to wait.
const FIRST: Duration = Duration::from_millis(250);
const MAX: Duration = Duration::from_secs(5);
const GIVE_UP: Duration = Duration::from_secs(120);

/// An operation as the API reports it.
pub trait Operation {
    /// `None` once it has settled (however it ended); while it runs, its id, if the API gave one.
    fn running(&self) -> Option<Option<&str>>;
}

/// Polls `op` through `fetch` (which reads the operation of that id) until it settles.
pub async fn until_settled<Op, F, Fut>(operation: &str, mut op: Op, mut fetch: F) -> Result<Op, ProviderError>
where
    Op: Operation,
    F: FnMut(String) -> Fut,
    Fut: Future<Output = Result<Op, ProviderError>>,
{
    let deadline = tokio::time::Instant::now() + GIVE_UP;
    let mut pause = FIRST;
    while let Some(id) = op.running() {
        let id = id.filter(|id| !id.is_empty()).map(str::to_string).ok_or_else(|| {
            ProviderError::retryable(operation, "the API returned an unfinished operation without an id")
        })?;
        if tokio::time::Instant::now() + pause > deadline {
            return Err(ProviderError::retryable(
                operation,
                format!("operation {} not done after {} s", brief(&id), GIVE_UP.as_secs()),
            ));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX);
        op = fetch(id).await?;
    }
    Ok(op)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Op(Option<Option<&'static str>>);

    impl Operation for Op {
        fn running(&self) -> Option<Option<&str>> {
            self.0
        }
    }

    #[tokio::test(start_paused = true)]
    async fn polls_the_id_until_settled() {
        let mut polled = Vec::new();
        let mut left = 3;
        let done = until_settled("op", Op(Some(Some("o1"))), |id| {
            polled.push(id);
            left -= 1;
            let next = if left == 0 { Op(None) } else { Op(Some(Some("o1"))) };
            async move { Ok(next) }
        })
        .await
        .expect("settles");
        assert!(done.0.is_none());
        assert_eq!(polled, ["o1", "o1", "o1"]);
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_on_a_missing_id_and_on_an_operation_that_never_ends() {
        let never = |_| async { Ok(Op(Some(Some("o1")))) };
        let err = until_settled("op", Op(Some(None)), never).await.err().expect("no id");
        assert!(err.to_string().contains("without an id"), "{err}");
        let err = until_settled("op", Op(Some(Some("o1"))), never).await.err().expect("never settles");
        assert_eq!(err.kind, crate::providers::error::ErrorKind::Retryable, "{err}");
        assert!(err.to_string().contains("operation o1 not done after 120 s"), "{err}");
    }
}
