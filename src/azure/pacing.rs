//! Pacing of ARM reads by the bucket ARM reports.
//!
//! ARM answers every read with `x-ms-ratelimit-remaining-subscription-reads`:
//! what is left in the caller's read bucket for the subscription. Since
//! 2024 that bucket holds 250 reads and refills at 25 per second; older
//! regions still count 12,000 reads an hour. Either way, a list of a large
//! estate (dozens of pages, and the reconciler's and the index's listings)
//! must not drain the bucket the `/jit` read-backs need, so the pages of a
//! list wait once the bucket is under 10 %, until it has refilled to 10 %.
//! Reads that can be done without (a VM's address for the grant card) are
//! made only while half the bucket is left.
//!
//! The bucket's size is not sent: it is taken as the larger of 250 and the
//! highest remaining count seen, and its refill as 25 per second for a
//! bucket of 250 or the hourly rate of a larger one. The arithmetic is pure
//! ([`ReadPacer::delay`] takes the time), so tests never sleep.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use reqwest::header::HeaderMap;

/// The header ARM sets on every read.
pub const REMAINING_READS: &str = "x-ms-ratelimit-remaining-subscription-reads";
/// The read bucket of ARM's token-bucket throttling.
pub const READ_BUCKET: u32 = 250;
/// Its refill per second.
pub const READ_REFILL_PER_S: f64 = 25.0;
/// Below this share of the bucket, reads wait.
const LOW_SHARE: f64 = 0.10;
/// From this share of the bucket up, reads that can be done without are
/// made ([`ReadPacer::plenty`]).
const PLENTY_SHARE: f64 = 0.5;
/// The longest a page waits (an hourly bucket can be minutes from 10 %;
/// a 429 with `Retry-After` still stops us if we guessed wrong).
const MAX_WAIT: Duration = Duration::from_secs(10);

/// What ARM last said of the read bucket.
#[derive(Debug, Default)]
pub struct ReadPacer {
    state: Mutex<State>,
}

#[derive(Debug, Default, Clone, Copy)]
struct State {
    /// Remaining reads and when ARM said so.
    last: Option<(u32, Instant)>,
    /// The highest remaining count seen (the bucket is at least that).
    highest: u32,
}

impl ReadPacer {
    /// Records the header of a read's answer, if it has one.
    pub fn observe(&self, headers: &HeaderMap, at: Instant) {
        let Some(remaining) = headers
            .get(REMAINING_READS)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u32>().ok())
        else {
            return;
        };
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.last = Some((remaining, at));
        state.highest = state.highest.max(remaining);
    }

    /// How long the next read of a list should wait at `now`.
    pub fn delay(&self, now: Instant) -> Duration {
        let state = *self.state.lock().unwrap_or_else(|e| e.into_inner());
        let Some((remaining, at)) = state.last else {
            return Duration::ZERO;
        };
        let (bucket, refill) = state.bucket();
        let missing = bucket * LOW_SHARE - f64::from(remaining);
        if missing <= 0.0 {
            return Duration::ZERO;
        }
        let wait = Duration::from_secs_f64(missing / refill).min(MAX_WAIT);
        wait.saturating_sub(now.saturating_duration_since(at))
    }

    /// Whether at least half the bucket is left at `now` (ARM's last count
    /// plus the refill since): reads that can be done without, such as a
    /// VM's address, are made only then, so that they never take what the
    /// read-backs after writes need.
    pub fn plenty(&self, now: Instant) -> bool {
        let state = *self.state.lock().unwrap_or_else(|e| e.into_inner());
        let Some((remaining, at)) = state.last else {
            return true;
        };
        let (bucket, refill) = state.bucket();
        let since = now.saturating_duration_since(at).as_secs_f64();
        f64::from(remaining) + since * refill >= bucket * PLENTY_SHARE
    }
}

impl State {
    /// The bucket's size and refill per second, as far as ARM showed them.
    fn bucket(&self) -> (f64, f64) {
        let bucket = f64::from(READ_BUCKET.max(self.highest));
        let refill = if bucket <= f64::from(READ_BUCKET) {
            READ_REFILL_PER_S
        } else {
            bucket / 3600.0
        };
        (bucket, refill)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(pacer: &ReadPacer, remaining: &str, at: Instant) {
        let mut h = HeaderMap::new();
        h.insert(REMAINING_READS, remaining.parse().unwrap());
        pacer.observe(&h, at);
    }

    #[test]
    fn reads_wait_only_under_a_tenth_of_the_bucket_until_it_refills() {
        let t0 = Instant::now();
        let p = ReadPacer::default();
        assert_eq!(p.delay(t0), Duration::ZERO, "nothing seen yet");
        seen(&p, "200", t0);
        assert_eq!(p.delay(t0), Duration::ZERO);
        seen(&p, "25", t0);
        assert_eq!(p.delay(t0), Duration::ZERO, "exactly 10 % is not under");
        seen(&p, "5", t0);
        // 20 reads short of 25, at 25 per second: 0.8 s, less what passed.
        assert_eq!(p.delay(t0), Duration::from_millis(800));
        assert_eq!(
            p.delay(t0 + Duration::from_millis(300)),
            Duration::from_millis(500)
        );
        assert_eq!(p.delay(t0 + Duration::from_secs(1)), Duration::ZERO);
    }

    #[test]
    fn an_hourly_bucket_refills_at_its_hourly_rate_within_a_bound() {
        let t0 = Instant::now();
        let p = ReadPacer::default();
        seen(&p, "11999", t0);
        assert_eq!(p.delay(t0), Duration::ZERO);
        // 12,000 an hour: 10 % is 1,200; 1,100 short at 3.33 per second is
        // minutes, so the wait is capped.
        seen(&p, "100", t0);
        assert_eq!(p.delay(t0), MAX_WAIT);
    }

    #[test]
    fn optional_reads_wait_for_half_the_bucket_counting_its_refill() {
        let t0 = Instant::now();
        let p = ReadPacer::default();
        assert!(p.plenty(t0), "nothing seen yet");
        seen(&p, "125", t0);
        assert!(p.plenty(t0), "exactly half is enough");
        seen(&p, "100", t0);
        assert!(!p.plenty(t0));
        // 25 reads short, at 25 per second.
        assert!(!p.plenty(t0 + Duration::from_millis(900)));
        assert!(p.plenty(t0 + Duration::from_secs(1)));
    }

    #[test]
    fn answers_without_the_header_or_with_garbage_change_nothing() {
        let t0 = Instant::now();
        let p = ReadPacer::default();
        p.observe(&HeaderMap::new(), t0);
        seen(&p, "many", t0);
        seen(&p, "-3", t0);
        assert_eq!(p.delay(t0), Duration::ZERO);
    }
}
