//! Refusals that happen before a request exists (invalid input, a source
//! that may not be saved, another member's button, an admin command
//! without the admin role, an interaction from outside the guild, a rate
//! limit): each is one `action_refused` audit event, so the audit log shows
//! every attempt, not only those that reached the mappings.
//!
//! A member who floods must not bury the audit channel: the first refusal
//! of a member in a minute is posted, later ones are written to the log
//! only and counted, and the count is posted as one `refusals_folded`
//! event when the minute is over. The audit log keeps every row.

use std::collections::HashMap;

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::json;

use super::{Service, actor};
use crate::domain::place::{Interaction, PlaceRefusal, check_place};
use crate::domain::rate::Limited;
use crate::domain::{AuditAction, AuditEvent, Outcome};
use crate::interactions::Invocation;
use crate::store::StoreError;

/// The code of a failure inside Drawbridge, whose cause is never posted.
pub const INTERNAL: &str = "internal";

/// One refused action, as the audit log records it.
#[derive(Debug, Clone, Copy)]
pub struct Refused<'a> {
    /// What was tried: `jit`, `jit-ip`, `extend`, `jit-admin map`, …
    pub action: &'a str,
    /// On what: a VM, a request id, a member; empty if nothing.
    pub target: &'a str,
    /// A short machine-readable code, such as `invalid_input`.
    pub code: &'a str,
    /// What the member was told (never an internal cause).
    pub reason: &'a str,
    /// `denied` for a refusal, `failed` when Azure or Drawbridge failed.
    pub outcome: Outcome,
}

impl<'a> Refused<'a> {
    /// A refusal of `action` on `target`: `code`, and what the member was told.
    pub fn denied(action: &'a str, target: &'a str, code: &'a str, reason: &'a str) -> Self {
        Self {
            action,
            target,
            code,
            reason,
            outcome: Outcome::Denied,
        }
    }

    /// A refusal, or with `failed` a failure (Azure's or Drawbridge's).
    pub fn new(
        action: &'a str,
        target: &'a str,
        (code, failed): (&'a str, bool),
        reason: &'a str,
    ) -> Self {
        Self {
            outcome: if failed {
                Outcome::Failed
            } else {
                Outcome::Denied
            },
            ..Self::denied(action, target, code, reason)
        }
    }
}

/// How long a member's refusals are folded after one is posted.
const FOLD_WINDOW: TimeDelta = TimeDelta::minutes(1);

/// Refusals of one member written to the log but not posted yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Folded {
    /// Since when (the start of the window).
    pub since: DateTime<Utc>,
    pub count: u32,
    pub first_seq: i64,
    pub last_seq: i64,
}

/// Which refusals are posted, per actor; in memory (after a restart the
/// next refusal is simply posted).
#[derive(Debug, Default)]
pub struct RefusalFolder {
    windows: HashMap<String, (DateTime<Utc>, Option<Folded>)>,
}

impl RefusalFolder {
    /// Whether `actor`'s refusal at `now` is posted (`true`) or folded,
    /// and the summary of their earlier folded refusals to post first.
    pub fn decide(&mut self, actor: &str, now: DateTime<Utc>) -> (bool, Option<Folded>) {
        match self.windows.get_mut(actor) {
            Some((since, _)) if now - *since < FOLD_WINDOW => (false, None),
            Some((since, pending)) => {
                *since = now;
                (true, pending.take())
            }
            None => {
                self.windows.insert(actor.to_owned(), (now, None));
                (true, None)
            }
        }
    }

    /// Counts the folded rows `first_seq..=last_seq` of `actor`.
    pub fn folded(&mut self, actor: &str, first_seq: i64, last_seq: i64) {
        let Some((since, pending)) = self.windows.get_mut(actor) else {
            return;
        };
        let rows = u32::try_from(last_seq - first_seq + 1).unwrap_or(1);
        match pending {
            Some(f) => {
                f.count += rows;
                f.last_seq = last_seq;
            }
            None => {
                *pending = Some(Folded {
                    since: *since,
                    count: rows,
                    first_seq,
                    last_seq,
                });
            }
        }
    }

    /// The summaries whose minute is over, as (actor, summary); their
    /// actors' next minute starts now, so a flood shows as at most one
    /// message a minute. Actors quiet for a whole window are forgotten.
    pub fn due(&mut self, now: DateTime<Utc>) -> Vec<(String, Folded)> {
        let mut out = Vec::new();
        self.windows.retain(|actor, (since, pending)| {
            if now - *since < FOLD_WINDOW {
                return true;
            }
            match pending.take() {
                Some(f) => {
                    out.push((actor.clone(), f));
                    *since = now;
                    true
                }
                None => false,
            }
        });
        out
    }
}

impl Service {
    /// Takes one of `who`'s tokens for `action`; a refusal is audited
    /// (folded like any other).
    ///
    /// # Errors
    /// [`Limited`] with when to try again.
    pub async fn check_rate(&self, who: &Invocation, action: &str) -> Result<(), Limited> {
        let now = self.clock().now();
        let limited = match self.limiter().take(who.member.user_id, now) {
            Ok(()) => return Ok(()),
            Err(limited) => limited,
        };
        let reason = format!("rate limited: try again in {} s", limited.retry_after_secs);
        self.audit_refusal(who, Refused::denied(action, "", "rate_limited", &reason))
            .await;
        Err(limited)
    }

    /// Writes a refusal's audit `events` (one actor's) in one transaction:
    /// posted to the audit channel, or folded into the minute's summary.
    ///
    /// # Errors
    /// If the store fails.
    pub async fn append_refusal(&self, events: &[AuditEvent]) -> Result<(), StoreError> {
        let Some(actor) = events.first().map(|e| e.actor.clone()) else {
            return Ok(());
        };
        let now = self.clock().now();
        let (post, summary) = self.folder().decide(&actor, now);
        let mut tx = self.store().begin().await?;
        if let Some(summary) = summary {
            tx.append_audit(&folded_event(&actor, &summary, now))
                .await?;
        }
        let mut seqs = Vec::new();
        for event in events {
            let record = if post {
                tx.append_audit(event).await?
            } else {
                tx.append_audit_unposted(event).await?
            };
            seqs.push(record.seq);
        }
        tx.commit().await?;
        if let (false, Some(first), Some(last)) = (post, seqs.first(), seqs.last()) {
            self.folder().folded(&actor, *first, *last);
        }
        Ok(())
    }

    /// Posts the summaries of folded refusals whose minute is over.
    ///
    /// # Errors
    /// If the store fails (those summaries are then lost from the channel;
    /// their rows are in the log).
    pub async fn flush_refusal_summaries(&self, now: DateTime<Utc>) -> Result<usize, StoreError> {
        let due = self.folder().due(now);
        for (actor, summary) in &due {
            self.store()
                .append_audit(&folded_event(actor, summary, now))
                .await?;
        }
        Ok(due.len())
    }

    /// Whether `who` may use `kind` (`action`, for the audit log) from
    /// where they are; a refusal is audited.
    ///
    /// # Errors
    /// The [`PlaceRefusal`].
    pub async fn check_place(
        &self,
        who: &Invocation,
        kind: Interaction,
        action: &str,
    ) -> Result<(), PlaceRefusal> {
        let refusal = match check_place(self.config().home_guild, who.guild_id, kind) {
            Ok(()) => return Ok(()),
            Err(refusal) => refusal,
        };
        let target = who
            .guild_id
            .map_or_else(|| "direct message".to_owned(), |g| format!("guild {g}"));
        let reason = refusal.to_string();
        self.audit_refusal(
            who,
            Refused::denied(action, &target, refusal.code(), &reason),
        )
        .await;
        Err(refusal)
    }

    /// Audits `refused` as done by `who`. A store failure is logged: the
    /// member still gets their answer.
    pub async fn audit_refusal(&self, who: &Invocation, refused: Refused<'_>) {
        // An internal cause is logged where it happened, never posted.
        let reason = if refused.code == INTERNAL {
            "internal error: see the logs"
        } else {
            refused.reason
        };
        let event = AuditEvent::new(
            self.clock().now(),
            actor(who.member.user_id),
            AuditAction::ActionRefused,
            refused.target,
            refused.outcome,
        )
        .with_detail(json!({
            "action": refused.action,
            "code": refused.code,
            "reason": reason,
            "interaction_id": who.id,
            "guild_id": who.guild_id.map(|g| g.to_string()),
        }));
        if let Err(e) = self.append_refusal(&[event]).await {
            tracing::error!(error.message = %e, error.cause_chain = ?e, code = refused.code, "auditing a refusal failed");
        }
    }
}

fn folded_event(actor: &str, summary: &Folded, now: DateTime<Utc>) -> AuditEvent {
    AuditEvent::new(now, actor, AuditAction::RefusalsFolded, "", Outcome::Denied).with_detail(
        json!({
            "refusals": summary.count,
            "since": crate::domain::audit::format_time(summary.since),
            "first_seq": summary.first_seq,
            "last_seq": summary.last_seq,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_one_message_then_one_summary_a_minute() {
        let mut folder = RefusalFolder::default();
        let t0 = Utc::now();
        assert_eq!(folder.decide("discord:1", t0), (true, None));
        for seq in 2..=11 {
            assert_eq!(folder.decide("discord:1", t0), (false, None));
            folder.folded("discord:1", seq, seq);
        }
        assert_eq!(folder.decide("discord:2", t0), (true, None), "per member");
        assert!(folder.due(t0 + TimeDelta::seconds(59)).is_empty());
        let due = folder.due(t0 + TimeDelta::seconds(60));
        assert_eq!(
            due,
            [(
                "discord:1".to_owned(),
                Folded {
                    since: t0,
                    count: 10,
                    first_seq: 2,
                    last_seq: 11
                }
            )]
        );
        // The summary opened a new minute: the next refusal is folded.
        assert_eq!(
            folder.decide("discord:1", t0 + TimeDelta::seconds(61)),
            (false, None)
        );
        // Quiet members are forgotten.
        folder.due(t0 + TimeDelta::minutes(5));
        assert_eq!(
            folder.decide("discord:2", t0 + TimeDelta::minutes(5)),
            (true, None)
        );
    }
}
