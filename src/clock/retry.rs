//! The one retry helper (time, like the clock): jittered exponential backoff, and `retry`, which repeats an operation
//! until it succeeds, fails for good, or runs out of attempts. Used by the workers' schedules,
//! deliveries, and every compare-and-swap loop over storage. Knows nothing but time.

use std::future::Future;
use std::time::Duration;

/// `interval` plus up to a tenth of it at random, so replicas started together spread out.
pub fn jittered(interval: Duration) -> Duration {
    interval.saturating_add(random_below(interval.checked_div(10).unwrap_or_default()))
}

/// Delay before retry `attempts + 1` of one piece of work: doubling from `first` up to `max`,
/// half of it random (so replicas retrying the same peer spread out).
pub fn backoff(attempts: u32, first: Duration, max: Duration) -> Duration {
    let doubled = first.saturating_mul(1u32.checked_shl(attempts.min(16)).unwrap_or(u32::MAX)).min(max);
    let half = doubled.checked_div(2).unwrap_or_default();
    half.saturating_add(random_below(half))
}

/// A random duration below `limit`.
pub fn random_below(limit: Duration) -> Duration {
    let ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
    match ms {
        0 => Duration::ZERO,
        m => Duration::from_millis(
            u64::try_from(uuid::Uuid::new_v4().as_u128().checked_rem(u128::from(m)).unwrap_or(0)).unwrap_or(0),
        ),
    }
}

/// How a [`retry`] spaces its attempts.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// The first wait.
    pub first: Duration,
    /// The longest wait.
    pub max: Duration,
    /// Attempts in all, the first included.
    pub attempts: u32,
}

impl Backoff {
    /// For compare-and-swap loops on records: a few milliseconds, doubling to 100 ms, 16 tries.
    pub const CONFLICT: Self = Self { first: Duration::from_millis(2), max: Duration::from_millis(100), attempts: 16 };
}

/// Runs `op` until it succeeds, returns an error `retryable` says is not worth another try, or
/// has been tried `backoff.attempts` times (the last error is returned); waits a jittered,
/// doubling backoff between tries.
pub async fn retry<T, E, F, Fut>(backoff: Backoff, retryable: impl Fn(&E) -> bool, mut op: F) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut attempt = 0u32;
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) => {
                attempt = attempt.saturating_add(1);
                if attempt >= backoff.attempts || !retryable(&e) {
                    return Err(e);
                }
                tokio::time::sleep(self::backoff(attempt.saturating_sub(1), backoff.first, backoff.max)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_limit_half_of_it_random() {
        for attempts in 0..20 {
            let d = backoff(attempts, Duration::from_millis(100), Duration::from_secs(10));
            let full = Duration::from_millis(100).saturating_mul(1 << attempts.min(16)).min(Duration::from_secs(10));
            assert!(d >= full / 2 && d <= full, "{attempts}: {d:?} vs {full:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retry_stops_at_success_at_a_permanent_error_or_after_its_attempts() {
        let quick = Backoff { first: Duration::from_millis(10), max: Duration::from_millis(40), attempts: 5 };
        let mut calls = 0;
        let r: Result<u32, &str> = retry(
            quick,
            |_| true,
            || {
                calls += 1;
                let n = calls;
                async move {
                    if n < 3 {
                        Err("conflict")
                    } else {
                        Ok(n)
                    }
                }
            },
        )
        .await;
        assert_eq!(r, Ok(3));
        let mut calls = 0;
        let r: Result<(), &str> = retry(
            quick,
            |e| *e == "conflict",
            || {
                calls += 1;
                async { Err("broken") }
            },
        )
        .await;
        assert_eq!((r, calls), (Err("broken"), 1), "a permanent error is not retried");
        let mut calls = 0;
        let started = tokio::time::Instant::now();
        let r: Result<(), &str> = retry(
            quick,
            |_| true,
            || {
                calls += 1;
                async { Err("conflict") }
            },
        )
        .await;
        assert_eq!((r, calls), (Err("conflict"), 5));
        // Four waits of at most 10, 20, 40, 40 ms (paused time: no real waiting).
        assert!(started.elapsed() <= Duration::from_millis(110), "{:?}", started.elapsed());
    }
}
