//! The audit chain, watched from inside the bot. `drawbridge audit verify`
//! proves a chain only when someone runs it; here the chain is recomputed
//! at start-up and every hour, and a break becomes an audit event of its own
//! (`audit_chain_broken`, naming the first broken row), so it reaches the
//! audit channel, which lies outside the database and keeps every event's
//! hash as a witness.

use std::time::Duration;

use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::Service;
use crate::domain::{AuditAction, AuditEvent, Outcome};
use crate::store::BrokenLink;

/// How often the running bot recomputes the chain.
pub const VERIFY_EVERY: Duration = Duration::from_secs(3600);

/// Verifies the chain and raises one alert per break.
pub struct AuditWatch {
    service: Service,
    /// The first broken row already alerted on (no hourly repeat of it).
    alerted: Option<i64>,
}

impl AuditWatch {
    pub fn new(service: Service) -> Self {
        Self {
            service,
            alerted: None,
        }
    }

    /// Recomputes the chain; on a break not yet reported, appends an
    /// `audit_chain_broken` event naming the first broken row. Returns the
    /// break, if any.
    ///
    /// # Errors
    /// The database fails.
    pub async fn check(&mut self) -> anyhow::Result<Option<BrokenLink>> {
        let report = self.service.store().verify_audit().await?;
        let Some(broken) = report.first_broken else {
            return Ok(None);
        };
        tracing::error!(seq = broken.seq, problem = %broken.problem, "the audit chain is broken");
        if self.alerted != Some(broken.seq) {
            let event = AuditEvent::new(
                self.service.clock().now(),
                "system",
                AuditAction::AuditChainBroken,
                format!("audit row {}", broken.seq),
                Outcome::Failed,
            )
            .with_detail(json!({
                "first_broken_row": broken.seq,
                "problem": broken.problem,
                "rows_intact": report.checked,
            }));
            self.service.store().append_audit(&event).await?;
            self.service.wake_after(());
            self.alerted = Some(broken.seq);
        }
        Ok(Some(broken))
    }

    /// Checks every [`VERIFY_EVERY`] until cancelled.
    pub async fn run(mut self, cancel: CancellationToken) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(VERIFY_EVERY) => {
                    if let Err(e) = self.check().await {
                        tracing::warn!(error.message = %e, "verifying the audit chain failed");
                    }
                }
            }
        }
    }
}
