//! Retry policy for ARM calls: exponential backoff with full jitter, bounded in
//! attempts and total time, and server hints (`Retry-After`,
//! `x-ms-retry-after-ms`, `retry-after-ms`) honoured.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;
use reqwest::header::HeaderMap;

/// How ARM calls are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, including the first (at least 1).
    pub max_attempts: u32,
    /// Backoff before the second attempt; doubles each time.
    pub base_delay: Duration,
    /// Cap on one computed backoff (a server's `Retry-After` may exceed it).
    pub max_delay: Duration,
    /// Give up rather than start a wait that would end past this total.
    pub max_total: Duration,
}

impl Default for RetryPolicy {
    /// 4 attempts, 500 ms doubling to at most 8 s, 30 s in all.
    fn default() -> Self {
        Self {
            max_attempts: 4,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(8),
            max_total: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The capped exponential ceiling before attempt `retry + 1` (`retry` counts from 0).
    pub fn backoff_ceiling(&self, retry: u32) -> Duration {
        let factor = 1u32.checked_shl(retry.min(31)).unwrap_or(u32::MAX);
        self.base_delay.saturating_mul(factor).min(self.max_delay)
    }

    /// The wait before attempt `retry + 1`: the server's hint if it gave one,
    /// else a uniformly random duration in `[0, backoff_ceiling]` (full jitter).
    pub fn delay(&self, retry: u32, server_hint: Option<Duration>, rng: &mut impl Rng) -> Duration {
        match server_hint {
            Some(hint) => hint,
            None => {
                let ceiling = self.backoff_ceiling(retry).as_millis() as u64;
                Duration::from_millis(rng.random_range(0..=ceiling))
            }
        }
    }
}

/// The server's requested wait, from `x-ms-retry-after-ms`, `retry-after-ms`
/// or `Retry-After` (seconds or an HTTP date, relative to `now`), in that order.
pub fn server_retry_hint(headers: &HeaderMap, now: DateTime<Utc>) -> Option<Duration> {
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    for name in ["x-ms-retry-after-ms", "retry-after-ms"] {
        if let Some(ms) = get(name).and_then(|v| v.parse::<u64>().ok()) {
            return Some(Duration::from_millis(ms));
        }
    }
    parse_retry_after(get("retry-after")?, now)
}

/// Parses a `Retry-After` value: delay-seconds or an HTTP-date (a date in the
/// past means "now").
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = DateTime::parse_from_rfc2822(value)
        .ok()?
        .with_timezone(&Utc);
    Some((at - now).to_std().unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use reqwest::header::HeaderValue;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(1000),
            max_total: Duration::from_secs(5),
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = policy();
        let ceilings: Vec<u128> = (0..6).map(|r| p.backoff_ceiling(r).as_millis()).collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(p.backoff_ceiling(200), Duration::from_millis(1000));
    }

    #[test]
    fn full_jitter_stays_within_the_ceiling_and_varies() {
        let p = policy();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let delays: Vec<Duration> = (0..200).map(|_| p.delay(2, None, &mut rng)).collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(400)));
        assert!(delays.iter().any(|d| *d < Duration::from_millis(100)));
        assert!(delays.iter().any(|d| *d > Duration::from_millis(300)));
    }

    #[test]
    fn a_server_hint_wins_over_backoff() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        assert_eq!(
            policy().delay(0, Some(Duration::from_secs(3)), &mut rng),
            Duration::from_secs(3)
        );
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now: DateTime<Utc> = "2026-01-01T12:00:00Z".parse().unwrap();
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Thu, 01 Jan 2026 12:00:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Thu, 01 Jan 2026 11:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-1", now), None);
    }

    #[test]
    fn millisecond_headers_come_first() {
        let now = Utc::now();
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("10"));
        assert_eq!(server_retry_hint(&h, now), Some(Duration::from_secs(10)));
        h.insert("retry-after-ms", HeaderValue::from_static("250"));
        assert_eq!(server_retry_hint(&h, now), Some(Duration::from_millis(250)));
        h.insert("x-ms-retry-after-ms", HeaderValue::from_static("40"));
        assert_eq!(server_retry_hint(&h, now), Some(Duration::from_millis(40)));
        assert_eq!(server_retry_hint(&HeaderMap::new(), now), None);
    }
}
