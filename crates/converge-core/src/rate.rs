//! Token buckets for the hub's rate limits, on time passed in (sans-io).

/// A token bucket: `rate` tokens per second, holding at most `burst`. Kept in thousandths of a
/// token so that rates below one per millisecond refill smoothly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    credit_milli: u64,
    at_ms: u64,
}

/// A rate: `per_sec` on average, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub per_sec: u32,
    pub burst: u32,
}

impl Bucket {
    /// A full bucket.
    pub fn full(rate: Rate, now_ms: u64) -> Self {
        Bucket {
            credit_milli: u64::from(rate.burst) * 1000,
            at_ms: now_ms,
        }
    }

    /// Takes one token if there is one. Time going backwards refills nothing.
    pub fn take(&mut self, rate: Rate, now_ms: u64) -> bool {
        let elapsed = now_ms.saturating_sub(self.at_ms);
        self.credit_milli = self
            .credit_milli
            .saturating_add(elapsed.saturating_mul(u64::from(rate.per_sec)))
            .min(u64::from(rate.burst) * 1000);
        self.at_ms = self.at_ms.max(now_ms);
        if self.credit_milli >= 1000 {
            self.credit_milli -= 1000;
            true
        } else {
            false
        }
    }

    /// Takes one token if there is one; otherwise how many milliseconds until there is (at
    /// least 1). A rate of zero never refills: the wait is then a minute, to be asked again.
    pub fn take_or_wait(&mut self, rate: Rate, now_ms: u64) -> Result<(), u64> {
        if self.take(rate, now_ms) {
            return Ok(());
        }
        let missing = 1000 - self.credit_milli;
        match u64::from(rate.per_sec) {
            0 => Err(60_000),
            per_sec => Err(missing.div_ceil(per_sec).max(1)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let rate = Rate {
            per_sec: 10,
            burst: 3,
        };
        let mut b = Bucket::full(rate, 0);
        assert!((0..3).all(|_| b.take(rate, 0)));
        assert!(!b.take(rate, 0));
        assert!(!b.take(rate, 99));
        assert!(b.take(rate, 100));
        assert!(!b.take(rate, 100));
        // A long pause refills to the burst, not beyond.
        assert!((0..3).all(|_| b.take(rate, 60_000)));
        assert!(!b.take(rate, 60_000));
        // Time going backwards refills nothing.
        assert!(!b.take(rate, 0));
    }

    #[test]
    fn a_refused_take_says_how_long_until_the_next_token() {
        let rate = Rate {
            per_sec: 500,
            burst: 2,
        };
        let mut b = Bucket::full(rate, 0);
        assert_eq!(b.take_or_wait(rate, 0), Ok(()));
        assert_eq!(b.take_or_wait(rate, 0), Ok(()));
        // 500 a second: a token every 2 ms.
        assert_eq!(b.take_or_wait(rate, 0), Err(2));
        assert_eq!(b.take_or_wait(rate, 1), Err(1));
        assert_eq!(b.take_or_wait(rate, 2), Ok(()));
        let slow = Rate {
            per_sec: 3,
            burst: 1,
        };
        let mut b = Bucket::full(slow, 0);
        assert_eq!(b.take_or_wait(slow, 0), Ok(()));
        assert_eq!(b.take_or_wait(slow, 0), Err(334));
        assert_eq!(b.take_or_wait(slow, 334), Ok(()));
        let never = Rate {
            per_sec: 0,
            burst: 1,
        };
        let mut b = Bucket::full(never, 0);
        assert_eq!(b.take_or_wait(never, 0), Ok(()));
        assert_eq!(b.take_or_wait(never, 10_000), Err(60_000));
    }
}
