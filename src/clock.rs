//! Time as a port: every part of Drawbridge asks a [`Clock`] for "now", so tests
//! and the demo can run hours of grants in milliseconds.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};

/// Where "now" comes from.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// The current time in UTC.
    fn now(&self) -> DateTime<Utc>;

    /// A receiver that sees each move of a clock that jumps (a
    /// [`ManualClock`]), so workers sleeping until a due time look again;
    /// `None` for a clock that only flows.
    fn moves(&self) -> Option<tokio::sync::watch::Receiver<()>> {
        None
    }
}

/// The wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that moves only when told to: tests and the demo advance it.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<Mutex<DateTime<Utc>>>,
    moved: Arc<tokio::sync::watch::Sender<()>>,
}

impl ManualClock {
    /// A clock that starts at `start`.
    pub fn new(start: DateTime<Utc>) -> Self {
        Self {
            now: Arc::new(Mutex::new(start)),
            moved: Arc::new(tokio::sync::watch::Sender::new(())),
        }
    }

    /// Moves the clock forward by `by` (a negative duration moves it back).
    pub fn advance(&self, by: chrono::Duration) {
        *self.now.lock().unwrap_or_else(|e| e.into_inner()) += by;
        self.moved.send_replace(());
    }

    /// Sets the clock to `to`.
    pub fn set(&self, to: DateTime<Utc>) {
        *self.now.lock().unwrap_or_else(|e| e.into_inner()) = to;
        self.moved.send_replace(());
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn moves(&self) -> Option<tokio::sync::watch::Receiver<()>> {
        Some(self.moved.subscribe())
    }
}

/// Shared handle to a clock.
pub type SharedClock = Arc<dyn Clock>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_advanced() {
        let start = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let clock = ManualClock::new(start);
        assert_eq!(clock.now(), start);
        clock.advance(chrono::Duration::minutes(90));
        assert_eq!(clock.now(), start + chrono::Duration::minutes(90));
        let shared = clock.clone();
        shared.advance(chrono::Duration::minutes(1));
        assert_eq!(clock.now(), start + chrono::Duration::minutes(91));
    }
}
