//! Per-model admission: a lane holds one model's limits (calls at once, requests/s,
//! tokens/min) and how many of its calls run; a call starts only when its lane admits it.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use super::ModelLimits;

/// One model's limits and current use.
pub(super) struct Lane {
    limits: ModelLimits,
    /// Calls running now (the caller gives a slot back when a call ends).
    pub(super) running: usize,
    requests: Option<DefaultDirectRateLimiter>,
    tokens: Option<DefaultDirectRateLimiter>,
}

impl Lane {
    /// A lane with nothing running under `limits`.
    pub(super) fn new(limits: ModelLimits) -> Self {
        let requests = NonZeroU32::new(limits.requests_per_second)
            .map(|n| RateLimiter::direct(Quota::per_second(n)));
        let tokens = NonZeroU32::new(limits.tokens_per_minute)
            .map(|n| RateLimiter::direct(Quota::per_minute(n)));
        Self {
            limits,
            running: 0,
            requests,
            tokens,
        }
    }

    /// Takes a slot for a call of about `tokens` tokens, or says how long to wait.
    pub(super) fn admit(&mut self, tokens: u32) -> Result<(), Option<Duration>> {
        if self.running >= self.limits.concurrency.max(1) {
            return Err(None);
        }
        let now = DefaultClock::default().now();
        if let Some(limiter) = &self.requests
            && let Err(not_until) = limiter.check()
        {
            return Err(Some(not_until.wait_time_from(now)));
        }
        if let Some(limiter) = &self.tokens {
            let n = NonZeroU32::new(tokens.max(1)).expect("at least 1");
            match limiter.check_n(n) {
                Ok(Ok(())) => {}
                Ok(Err(not_until)) => return Err(Some(not_until.wait_time_from(now))),
                // A call bigger than a whole minute's budget can never fit: let it through
                // alone rather than starve it.
                Err(_) if self.running == 0 => {}
                Err(_) => return Err(None),
            }
        }
        self.running += 1;
        Ok(())
    }
}

/// Rough token count of a prompt: about four characters a token, plus the instructions.
pub(super) fn estimate_tokens(text_len: usize) -> u32 {
    (text_len / 4 + 64).min(u32::MAX as usize) as u32
}
