//! Per-member rate limits: a token bucket each, refilled continuously.
//! A member who floods `/jit`, `/jit-ip` or the buttons is slowed down
//! before anything is looked up or written but the refusal itself. Time is
//! passed in.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use super::ids::UserId;

/// How many actions a member may take: `per_minute` on average, at most
/// `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub per_minute: u32,
    pub burst: u32,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self {
            per_minute: 10,
            burst: 5,
        }
    }
}

/// Refused: try again after this many whole seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    pub retry_after_secs: u64,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: DateTime<Utc>,
}

/// The buckets of every member seen recently.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    limit: RateLimit,
    buckets: HashMap<UserId, Bucket>,
}

/// Above this many buckets, full ones are dropped (a full bucket is the
/// same as none).
const PRUNE_ABOVE: usize = 10_000;

impl RateLimiter {
    pub fn new(limit: RateLimit) -> Self {
        Self {
            limit,
            buckets: HashMap::new(),
        }
    }

    fn refill_per_sec(&self) -> f64 {
        f64::from(self.limit.per_minute) / 60.0
    }

    fn refilled(&self, bucket: Bucket, now: DateTime<Utc>) -> f64 {
        let secs = (now - bucket.at).num_milliseconds().max(0) as f64 / 1000.0;
        (bucket.tokens + secs * self.refill_per_sec()).min(f64::from(self.limit.burst))
    }

    /// Takes one token from `user`'s bucket at `now`.
    ///
    /// # Errors
    /// [`Limited`] when the bucket is empty; nothing is taken then.
    pub fn take(&mut self, user: UserId, now: DateTime<Utc>) -> Result<(), Limited> {
        if self.buckets.len() > PRUNE_ABOVE {
            let full = f64::from(self.limit.burst);
            let buckets = std::mem::take(&mut self.buckets);
            self.buckets = buckets
                .into_iter()
                .filter(|(_, b)| self.refilled(*b, now) < full)
                .collect();
        }
        let tokens = match self.buckets.get(&user) {
            Some(bucket) => self.refilled(*bucket, now),
            None => f64::from(self.limit.burst),
        };
        if tokens < 1.0 {
            let rate = self.refill_per_sec();
            let wait = if rate > 0.0 {
                ((1.0 - tokens) / rate).ceil() as u64
            } else {
                u64::MAX
            };
            return Err(Limited {
                retry_after_secs: wait.max(1),
            });
        }
        self.buckets.insert(
            user,
            Bucket {
                tokens: tokens - 1.0,
                at: now,
            },
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeDelta;

    use super::*;

    fn user(n: u64) -> UserId {
        UserId::parse(&n.to_string()).unwrap()
    }

    #[test]
    fn a_burst_then_the_average_rate() {
        let mut limiter = RateLimiter::new(RateLimit::default());
        let t0 = Utc::now();
        for _ in 0..5 {
            assert_eq!(limiter.take(user(1), t0), Ok(()));
        }
        assert_eq!(
            limiter.take(user(1), t0),
            Err(Limited {
                retry_after_secs: 6
            })
        );
        // Another member has their own bucket.
        assert_eq!(limiter.take(user(2), t0), Ok(()));
        // 10 a minute: one token every 6 s.
        assert!(limiter.take(user(1), t0 + TimeDelta::seconds(5)).is_err());
        assert_eq!(limiter.take(user(1), t0 + TimeDelta::seconds(6)), Ok(()));
        assert!(limiter.take(user(1), t0 + TimeDelta::seconds(7)).is_err());
        // A quiet minute fills the bucket to the burst, no more.
        let later = t0 + TimeDelta::minutes(10);
        for _ in 0..5 {
            assert_eq!(limiter.take(user(1), later), Ok(()));
        }
        assert!(limiter.take(user(1), later).is_err());
    }
}
