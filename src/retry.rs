//! Trying again with backoff: the one loop behind every retry backstop makes itself (a storage
//! download cut off, a notification not delivered, an S3 body cut midway). The SDK's own
//! retries of a request that fails are the SDK's.
//!
//! After the n-th failed attempt the wait is `first << n` (with `first` = 500 ms: 1 s, 2 s, ...),
//! and the attempt itself says whether its failure may pass ([`Attempt::Again`]) or is final.

use std::future::Future;
use std::time::Duration;

/// How a failed attempt ends.
pub enum Attempt<E> {
    /// It may pass: try again while attempts are left.
    Again(E),
    /// It will not pass: stop now.
    Final(E),
}

/// At most `attempts` tries, waiting `first << n` after the n-th failure.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub attempts: u32,
    pub first: Duration,
}

impl Backoff {
    /// Runs `attempt(n)` for n = 1, 2, ... until it succeeds, fails for good, or `attempts`
    /// tries have failed; `before_again(&error, n)` is told of each failure that is tried again.
    /// A failure gives the last error and the number of tries made.
    pub async fn run<T, E, F, Fut>(
        &self,
        mut attempt: F,
        mut before_again: impl FnMut(&E, u32),
    ) -> Result<T, (E, u32)>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, Attempt<E>>>,
    {
        let mut n = 1;
        loop {
            match attempt(n).await {
                Ok(t) => return Ok(t),
                Err(Attempt::Again(e)) if n < self.attempts => {
                    before_again(&e, n);
                    tokio::time::sleep(self.first * (1 << n)).await;
                    n += 1;
                }
                Err(Attempt::Again(e) | Attempt::Final(e)) => return Err((e, n)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tries_again_only_what_may_pass_and_waits_longer_each_time() {
        let backoff = Backoff {
            attempts: 3,
            first: Duration::from_millis(10),
        };
        let start = std::time::Instant::now();
        let mut told = Vec::new();
        let r: Result<(), (u32, u32)> = backoff
            .run(
                |n| async move { Err(Attempt::Again(n)) },
                |e, n| told.push((*e, n)),
            )
            .await;
        assert_eq!(r.unwrap_err(), (3, 3));
        assert_eq!(told, vec![(1, 1), (2, 2)]);
        assert!(start.elapsed() >= Duration::from_millis(20 + 40));

        let r: Result<(), (&str, u32)> = backoff
            .run(
                |_| async { Err(Attempt::Final("no")) },
                |_, _| panic!("not again"),
            )
            .await;
        assert_eq!(r.unwrap_err(), ("no", 1));
        let r: Result<u32, ((), u32)> = backoff
            .run(
                |n| async move {
                    if n < 2 {
                        Err(Attempt::Again(()))
                    } else {
                        Ok(n)
                    }
                },
                |_, _| {},
            )
            .await;
        assert_eq!(r.ok(), Some(2));
    }
}
