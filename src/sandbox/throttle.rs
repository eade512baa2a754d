//! ARM's request throttling, as the emulator applies it.
//!
//! Since 2024 ARM counts requests in token buckets per principal,
//! subscription and kind of operation: reads 250, refilled at 25 a second;
//! writes and deletes 200 each, refilled at 10 a second. An empty bucket
//! answers 429 with `Retry-After`, and a request sent before that wait is
//! over "isn't processed and a new retry value is returned": a client that
//! retries early only waits longer. ARM reports what is left after each
//! read and write in `x-ms-ratelimit-remaining-subscription-reads` and
//! `-writes`.
//!
//! Pure: every call takes the time, so tests need no clock.

use std::collections::HashMap;

use chrono::{DateTime, TimeDelta, Utc};

/// What a request counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpKind {
    Read,
    Write,
    Delete,
}

impl OpKind {
    /// The kind of a request by its HTTP method.
    pub fn of(method: &axum::http::Method) -> Self {
        match *method {
            axum::http::Method::GET | axum::http::Method::HEAD => OpKind::Read,
            axum::http::Method::DELETE => OpKind::Delete,
            _ => OpKind::Write,
        }
    }

    fn size(self) -> f64 {
        match self {
            OpKind::Read => 250.0,
            OpKind::Write | OpKind::Delete => 200.0,
        }
    }

    fn refill_per_s(self) -> f64 {
        match self {
            OpKind::Read => 25.0,
            OpKind::Write | OpKind::Delete => 10.0,
        }
    }

    /// The header ARM reports the bucket's remaining count in, if any.
    pub fn remaining_header(self) -> Option<&'static str> {
        match self {
            OpKind::Read => Some("x-ms-ratelimit-remaining-subscription-reads"),
            OpKind::Write => Some("x-ms-ratelimit-remaining-subscription-writes"),
            OpKind::Delete => None,
        }
    }

    /// As ARM's throttling message names it.
    pub fn word(self) -> &'static str {
        match self {
            OpKind::Read => "read",
            OpKind::Write => "write",
            OpKind::Delete => "delete",
        }
    }
}

/// A refused request: try again after this many whole seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled {
    pub retry_after_s: u32,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    left: f64,
    counted_at: DateTime<Utc>,
    /// A 429's `Retry-After` runs until then: nothing is processed before.
    blocked_until: Option<DateTime<Utc>>,
}

/// Every caller's buckets.
#[derive(Debug, Default)]
pub struct Buckets {
    buckets: HashMap<(String, String, OpKind), Bucket>,
}

impl Buckets {
    /// Takes one request of `kind` by `principal` on subscription `sub` at
    /// `now`: the count left, or the wait ARM answers 429 with.
    ///
    /// # Errors
    /// [`Throttled`] when the bucket is empty, or a 429's wait is not over.
    pub fn take(
        &mut self,
        principal: &str,
        sub: &str,
        kind: OpKind,
        now: DateTime<Utc>,
    ) -> Result<u32, Throttled> {
        let key = (principal.to_owned(), sub.to_ascii_lowercase(), kind);
        let bucket = self.buckets.entry(key).or_insert(Bucket {
            left: kind.size(),
            counted_at: now,
            blocked_until: None,
        });
        if let Some(until) = bucket.blocked_until.filter(|until| *until > now) {
            return Err(Throttled {
                retry_after_s: whole_seconds(until - now),
            });
        }
        let elapsed = (now - bucket.counted_at).max(TimeDelta::zero());
        let refilled = elapsed.num_milliseconds() as f64 / 1000.0 * kind.refill_per_s();
        bucket.left = (bucket.left + refilled).min(kind.size());
        bucket.counted_at = now.max(bucket.counted_at);
        if bucket.left < 1.0 {
            let wait_ms = ((1.0 - bucket.left) / kind.refill_per_s() * 1000.0).ceil() as i64;
            let retry_after_s = whole_seconds(TimeDelta::milliseconds(wait_ms));
            bucket.blocked_until = Some(now + TimeDelta::seconds(i64::from(retry_after_s)));
            return Err(Throttled { retry_after_s });
        }
        bucket.left -= 1.0;
        Ok(bucket.left as u32)
    }
}

/// `wait` rounded up to whole seconds, at least one (`Retry-After` counts
/// seconds).
fn whole_seconds(wait: TimeDelta) -> u32 {
    let ms = wait.num_milliseconds().max(1);
    u32::try_from((ms + 999) / 1000).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap() + TimeDelta::milliseconds(ms)
    }

    #[test]
    fn writes_have_200_then_a_429_whose_wait_holds_until_it_is_over() {
        let mut b = Buckets::default();
        let left: Vec<u32> = (0..200)
            .map(|_| b.take("app", "SUB", OpKind::Write, t(0)).unwrap())
            .collect();
        assert_eq!((left[0], left[199]), (199, 0));
        let refused = b.take("app", "sub", OpKind::Write, t(0));
        assert_eq!(refused, Err(Throttled { retry_after_s: 1 }));
        // Early, not processed; a new, shorter wait is returned.
        assert_eq!(
            b.take("app", "sub", OpKind::Write, t(600)),
            Err(Throttled { retry_after_s: 1 })
        );
        // After the wait, the bucket has refilled by ten.
        assert_eq!(b.take("app", "sub", OpKind::Write, t(1_000)), Ok(9));
    }

    #[test]
    fn kinds_principals_and_subscriptions_have_buckets_of_their_own() {
        let mut b = Buckets::default();
        for _ in 0..200 {
            b.take("app", "sub", OpKind::Write, t(0)).unwrap();
        }
        assert!(b.take("app", "sub", OpKind::Write, t(0)).is_err());
        assert_eq!(b.take("app", "sub", OpKind::Read, t(0)), Ok(249));
        assert_eq!(b.take("app", "sub", OpKind::Delete, t(0)), Ok(199));
        assert_eq!(b.take("other", "sub", OpKind::Write, t(0)), Ok(199));
        assert_eq!(b.take("app", "sub2", OpKind::Write, t(0)), Ok(199));
    }

    #[test]
    fn reads_refill_at_25_a_second_up_to_250() {
        let mut b = Buckets::default();
        for _ in 0..250 {
            b.take("app", "sub", OpKind::Read, t(0)).unwrap();
        }
        assert_eq!(b.take("app", "sub", OpKind::Read, t(400)), Ok(9));
        assert_eq!(b.take("app", "sub", OpKind::Read, t(3_600_000)), Ok(249));
    }
}
