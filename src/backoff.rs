//! Retry delays: exponential backoff with jitter, shared by everything that retries a remote
//! call (the model gateway, the attribute dispatcher, the summary webhook).

use std::time::Duration;

/// The delay before retry number `attempts` (1 after the first failure): `base_ms` doubled
/// per attempt, capped at `cap_ms`, then jittered to anywhere between half and all of it so
/// that callers failing together do not retry together.
pub fn backoff(base_ms: u64, cap_ms: u64, attempts: u32) -> Duration {
    let exp = base_ms.saturating_mul(1 << attempts.min(16)).min(cap_ms);
    Duration::from_millis(exp / 2 + rand::random_range(0..=exp / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_and_stay_within_the_jitter() {
        for _ in 0..100 {
            let first = backoff(100, 10_000, 1).as_millis();
            assert!((100..=200).contains(&first), "{first}");
            let third = backoff(100, 10_000, 3).as_millis();
            assert!((400..=800).contains(&third), "{third}");
            let capped = backoff(100, 1_000, 20).as_millis();
            assert!((500..=1_000).contains(&capped), "{capped}");
        }
        assert_eq!(backoff(0, 1_000, 5), Duration::ZERO);
        assert!(backoff(u64::MAX, u64::MAX, 40) >= Duration::from_millis(u64::MAX / 2));
    }
}
