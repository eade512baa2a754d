//! Discord's rate limits, honoured before a 429 rather than learned from one.
//!
//! Why ours and not serenity's: serenity's ratelimiter ignores
//! `HttpBuilder::proxy` (serenity#1739), and the proxy is how every REST call
//! reaches `discord.base_url`, so serenity's is off (see
//! [`super::discord_http`]). Discord temporarily bans an IP after 10,000
//! invalid requests (429s included) in 10 minutes, so a bot that only reacts
//! to 429s is one busy outage away from a ban.
//!
//! Every Discord answer announces its route's bucket: `X-RateLimit-Limit`,
//! `-Remaining` and `-Reset-After` (seconds, fractional). When a bucket has
//! no request left, the next request on that route waits until it resets.
//! On top, at most [`GLOBAL_PER_SECOND`] requests leave per second, Discord's
//! global limit for a bot, which no header announces until it is broken.
//!
//! The state is pure: [`RateLimits::reserve`] says how long to wait, and the
//! sender sleeps (so the limits can be tested with made-up instants).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Discord's global limit: requests per second per bot.
pub const GLOBAL_PER_SECOND: usize = 50;
/// No more than [`GLOBAL_PER_SECOND`] requests leave within any span this
/// long: a second, and a margin for requests that reach Discord faster than
/// the ones before them (Discord counts arrivals, we count departures).
const GLOBAL_WINDOW: Duration = Duration::from_millis(1100);

/// What one answer said about its bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BucketHeaders {
    pub remaining: u32,
    pub reset_after: Duration,
}

impl BucketHeaders {
    /// Reads the headers; `None` when Discord sent no (readable) bucket.
    pub fn parse(header: impl Fn(&str) -> Option<String>) -> Option<Self> {
        let remaining = header("x-ratelimit-remaining")?.trim().parse().ok()?;
        let seconds: f64 = header("x-ratelimit-reset-after")?.trim().parse().ok()?;
        let reset_after = Duration::try_from_secs_f64(seconds).ok()?;
        Some(Self {
            remaining,
            reset_after,
        })
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    remaining: u32,
    resets_at: Instant,
}

#[derive(Debug, Default)]
struct State {
    /// Per route key (e.g. `channel:123`), as Discord's headers last said.
    buckets: HashMap<String, Bucket>,
    /// When the last [`GLOBAL_PER_SECOND`] requests left, oldest first.
    sent: VecDeque<Instant>,
}

/// The buckets seen so far, shared by every send.
#[derive(Debug, Default)]
pub struct RateLimits {
    state: Mutex<State>,
}

impl RateLimits {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes a slot on `route` at `now`, or says how long to wait before
    /// asking again (nothing is taken then).
    pub fn reserve(&self, route: &str, now: Instant) -> Option<Duration> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let global_wait = state
            .sent
            .front()
            .filter(|_| state.sent.len() >= GLOBAL_PER_SECOND)
            .map(|&oldest| oldest + GLOBAL_WINDOW)
            .filter(|&free| now < free)
            .map(|free| free - now);
        let bucket_wait = state
            .buckets
            .get(route)
            .filter(|b| b.remaining == 0 && now < b.resets_at)
            .map(|b| b.resets_at - now);
        if let Some(wait) = global_wait.max(bucket_wait) {
            return Some(wait);
        }
        let reset = state.buckets.get(route).is_some_and(|b| now >= b.resets_at);
        if reset {
            state.buckets.remove(route);
        } else if let Some(bucket) = state.buckets.get_mut(route) {
            bucket.remaining -= 1;
        }
        if state.sent.len() >= GLOBAL_PER_SECOND {
            state.sent.pop_front();
        }
        state.sent.push_back(now);
        None
    }

    /// Records what Discord's answer on `route`, received at `now`, said.
    pub fn update(&self, route: &str, headers: BucketHeaders, now: Instant) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.buckets.insert(
            route.to_owned(),
            Bucket {
                remaining: headers.remaining,
                resets_at: now + headers.reset_after,
            },
        );
    }

    /// Waits (real time) until `route` has a slot, and takes it.
    pub async fn acquire(&self, route: &str) {
        while let Some(wait) = self.reserve(route, Instant::now()) {
            tracing::debug!(
                route,
                wait_ms = wait.as_millis() as u64,
                "waiting for Discord's rate limit"
            );
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(remaining: u32, ms: u64) -> BucketHeaders {
        BucketHeaders {
            remaining,
            reset_after: Duration::from_millis(ms),
        }
    }

    #[test]
    fn an_unknown_route_goes_at_once() {
        let limits = RateLimits::new();
        assert_eq!(limits.reserve("channel:1", Instant::now()), None);
    }

    #[test]
    fn an_exhausted_bucket_waits_until_it_resets() {
        let limits = RateLimits::new();
        let t0 = Instant::now();
        limits.update("channel:1", headers(1, 500), t0);
        assert_eq!(limits.reserve("channel:1", t0), None, "the last slot");
        assert_eq!(
            limits.reserve("channel:1", t0 + Duration::from_millis(100)),
            Some(Duration::from_millis(400))
        );
        assert_eq!(limits.reserve("channel:2", t0), None, "other routes go on");
        assert_eq!(
            limits.reserve("channel:1", t0 + Duration::from_millis(500)),
            None
        );
    }

    #[test]
    fn a_bucket_the_headers_say_is_empty_waits() {
        let limits = RateLimits::new();
        let t0 = Instant::now();
        limits.update("dm", headers(0, 250), t0);
        assert_eq!(limits.reserve("dm", t0), Some(Duration::from_millis(250)));
    }

    #[test]
    fn at_most_fifty_requests_leave_in_any_second() {
        let limits = RateLimits::new();
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        for i in 0..GLOBAL_PER_SECOND {
            let at = t0 + ms(10 * i as u64);
            assert_eq!(limits.reserve(&format!("channel:{i}"), at), None);
        }
        // The 51st waits until the first is more than a second (and a margin) old.
        assert_eq!(limits.reserve("channel:99", t0 + ms(600)), Some(ms(500)));
        assert_eq!(limits.reserve("channel:99", t0 + ms(1100)), None);
        // The 52nd waits for the second one.
        assert_eq!(limits.reserve("channel:98", t0 + ms(1100)), Some(ms(10)));
    }

    #[test]
    fn headers_are_read_as_discord_sends_them() {
        let sent = |name: &str| match name {
            "x-ratelimit-remaining" => Some("4".to_owned()),
            "x-ratelimit-reset-after" => Some("1.25".to_owned()),
            _ => None,
        };
        assert_eq!(BucketHeaders::parse(sent), Some(headers(4, 1250)));
        assert_eq!(BucketHeaders::parse(|_| None), None);
        assert_eq!(
            BucketHeaders::parse(|n| (n == "x-ratelimit-remaining")
                .then(|| "x".to_owned())
                .or(Some("1".to_owned()))),
            None
        );
    }
}
