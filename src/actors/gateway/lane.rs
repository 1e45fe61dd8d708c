//! One model's lane: its limits (concurrency, requests per second, tokens per minute) and
//! how many of its calls run.

use std::time::Duration;

use super::ModelLimits;
use crate::actors::pump::RateLimit;

/// One model's limits and current use.
pub(super) struct Lane {
    limits: ModelLimits,
    /// Its calls running now.
    pub(super) running: usize,
    requests: Option<RateLimit>,
    tokens: Option<RateLimit>,
}

impl Lane {
    /// A lane with nothing running.
    pub(super) fn new(limits: ModelLimits) -> Self {
        Self {
            requests: RateLimit::per_second(limits.requests_per_second),
            tokens: RateLimit::per_minute(limits.tokens_per_minute),
            limits,
            running: 0,
        }
    }

    /// Takes a slot for a call of about `tokens` tokens, or says how long to wait.
    pub(super) fn admit(&mut self, tokens: u32) -> Result<(), Option<Duration>> {
        if self.running >= self.limits.concurrency.max(1) {
            return Err(None);
        }
        if let Some(wait) = self.requests.as_ref().and_then(|l| l.check().err()) {
            return Err(Some(wait));
        }
        if let Some(limiter) = &self.tokens {
            match limiter.check_n(tokens) {
                Ok(Ok(())) => {}
                Ok(Err(wait)) => return Err(Some(wait)),
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
