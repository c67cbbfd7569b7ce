//! The client's connection policy: exponential backoff with full jitter, and a circuit breaker.
//! Randomness and time are passed in, so both are deterministic under test.

/// Exponential backoff with full jitter: the n-th retry waits a uniformly random time in
/// `[0, min(cap, base * 2^n)]` (the AWS "full jitter" scheme: it spreads a reconnect storm best).
#[derive(Debug, Clone)]
pub struct Backoff {
    pub base_ms: u64,
    pub cap_ms: u64,
    attempt: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(500, 30_000)
    }
}

impl Backoff {
    pub fn new(base_ms: u64, cap_ms: u64) -> Self {
        Backoff {
            base_ms,
            cap_ms,
            attempt: 0,
        }
    }

    /// The delay before the next attempt. `unit` is a uniform random number in `[0, 1)`.
    pub fn next_delay_ms(&mut self, unit: f64) -> u64 {
        let ceiling = self
            .base_ms
            .saturating_mul(1u64 << self.attempt.min(32))
            .min(self.cap_ms);
        self.attempt = self.attempt.saturating_add(1);
        (ceiling as f64 * unit.clamp(0.0, 1.0)) as u64
    }

    /// A connection succeeded: start again from the base.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

/// Opens after `threshold` consecutive failures; after `cool_down_ms` it half-opens and lets
/// one attempt through: success closes it, failure opens it again.
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    pub threshold: u32,
    pub cool_down_ms: u64,
    failures: u32,
    opened_at_ms: Option<u64>,
}

impl CircuitBreaker {
    pub fn new(threshold: u32, cool_down_ms: u64) -> Self {
        CircuitBreaker {
            threshold,
            cool_down_ms,
            failures: 0,
            opened_at_ms: None,
        }
    }

    /// Whether an attempt may be made now; `Err(until)` while open.
    pub fn check(&self, now_ms: u64) -> Result<(), u64> {
        match self.opened_at_ms {
            Some(at) if now_ms < at + self.cool_down_ms => Err(at + self.cool_down_ms),
            _ => Ok(()),
        }
    }

    pub fn is_open(&self, now_ms: u64) -> bool {
        self.check(now_ms).is_err()
    }

    pub fn success(&mut self) {
        self.failures = 0;
        self.opened_at_ms = None;
    }

    pub fn failure(&mut self, now_ms: u64) {
        self.failures = self.failures.saturating_add(1);
        if self.failures >= self.threshold {
            self.opened_at_ms = Some(now_ms);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn delays_stay_within_the_growing_ceiling(units in proptest::collection::vec(0.0f64..1.0, 1..40)) {
            let mut b = Backoff::new(500, 30_000);
            for (n, u) in units.iter().enumerate() {
                let ceiling = (500u64 << n.min(32)).min(30_000);
                prop_assert!(b.next_delay_ms(*u) <= ceiling);
            }
        }
    }

    #[test]
    fn breaker_opens_then_half_opens() {
        let mut c = CircuitBreaker::new(3, 1000);
        c.failure(0);
        c.failure(1);
        assert!(c.check(2).is_ok());
        c.failure(2);
        assert_eq!(c.check(500), Err(1002));
        assert!(c.check(1002).is_ok(), "half-open after the cool-down");
        c.failure(1003);
        assert!(c.is_open(1004), "a failed trial opens it again");
        c.success();
        assert!(c.check(1005).is_ok());
    }
}
