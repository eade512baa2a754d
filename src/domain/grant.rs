//! The grant state machine: the only way a grant's state changes.
//!
//! ```text
//! requested ──initiated──▶ active ──extend requested──▶ extending ──extended──▶ extended
//!     │                     │  ▲                         │   ▲                    │
//!   failed                  │  └──────extend failed──────┘   └─extend requested───┘
//!     ▼                     ├──close requested──▶ closing ──closed──▶ closed_early
//!   failed                  └──window ended────▶ expired
//!
//! active, extended, closing ──ended in Azure──▶ superseded (a newer request
//!                               replaced it) or ended (Azure's reason)
//!
//! requested ──asked first──▶ confirming ──confirmed──▶ requested
//!                                 └───────cancelled──▶ cancelled
//!
//! extending ──unclear──▶ pending_azure ──extended──▶ extended
//!                              └──extend failed──▶ active or extended
//!
//! failed, closed_early, expired, ended ──reopened in Azure──▶ active
//! ```
//!
//! `confirming` is a question: another member holds the port, and the
//! member is asked whether to end their access (Azure keeps one window per
//! port). Nothing has reached Azure; Open anyway and Cancel each claim the
//! grant out of it, so only one of them wins. `reopened in Azure` is the
//! reconciler finding our own request of a grant we took for closed still
//! open in Azure: the grant is put back under Drawbridge's care.
//! A mapping that needs approval puts a request in `pending_approval` first:
//!
//! ```text
//! requested ──await approval──▶ pending_approval ──approved──▶ requested (then as above)
//!                                 ├──denied──▶ denied
//!                                 ├──cancelled──▶ cancelled
//!                                 └──approval timed out──▶ approval_expired
//! ```
//!
//! Leaving `pending_approval` is the claim that decides a request: Approve,
//! Deny, Cancel and the timeout each try it, and only the first wins.
//!
//! `closing` and `extending` are claims: the action that moved the grant
//! there is the only one that may call Azure for it until it settles, so
//! Extend, Close early and expiry never race each other into Azure.

use std::fmt;

use chrono::{DateTime, Utc};

/// Where a grant is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GrantState {
    /// Stored, Azure not yet asked (or the answer not yet recorded).
    Requested,
    /// Azure opened the port.
    Active,
    /// Opened, then extended at least once.
    Extended,
    /// Close early was asked for and is under way.
    Closing,
    /// Extend was asked for and is under way.
    Extending,
    /// Closed early (the port closes at the short window Azure was given).
    ClosedEarly,
    /// The window ended.
    Expired,
    /// Azure refused or failed.
    Failed,
    /// The initiate was sent and its outcome is unclear (timeout, 5xx, a
    /// body that does not parse); the policy is read back to settle it.
    PendingAzure,
    /// Azure shows a newer request replaced it (`NewerRequestInitiated`).
    Superseded,
    /// Azure shows it ended before Drawbridge ended it (`Expired`,
    /// `UserRequested`); the grant's failure text holds Azure's reason.
    Ended,
    /// Another member holds the port: the member was asked whether to end
    /// their access. Nothing was sent to Azure.
    Confirming,
    /// Allowed, waiting for approvers; Azure not asked.
    PendingApproval,
    /// An approver denied it (or it was no longer allowed when approved).
    Denied,
    /// The member answered the port question with Cancel (or it lapsed), or
    /// the requester cancelled it while it waited for approvers; nothing was
    /// sent to Azure.
    Cancelled,
    /// Nobody decided before the mapping's approval timeout.
    ApprovalExpired,
}

impl GrantState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Requested => "requested",
            Self::Active => "active",
            Self::Extended => "extended",
            Self::Closing => "closing",
            Self::Extending => "extending",
            Self::ClosedEarly => "closed_early",
            Self::Expired => "expired",
            Self::Failed => "failed",
            Self::PendingAzure => "pending_azure",
            Self::Superseded => "superseded",
            Self::Ended => "ended",
            Self::Confirming => "confirming",
            Self::PendingApproval => "pending_approval",
            Self::Denied => "denied",
            Self::Cancelled => "cancelled",
            Self::ApprovalExpired => "approval_expired",
        }
    }

    /// Parses the stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "requested" => Self::Requested,
            "active" => Self::Active,
            "extended" => Self::Extended,
            "closing" => Self::Closing,
            "extending" => Self::Extending,
            "closed_early" => Self::ClosedEarly,
            "expired" => Self::Expired,
            "failed" => Self::Failed,
            "pending_azure" => Self::PendingAzure,
            "superseded" => Self::Superseded,
            "ended" => Self::Ended,
            "confirming" => Self::Confirming,
            "pending_approval" => Self::PendingApproval,
            "denied" => Self::Denied,
            "cancelled" => Self::Cancelled,
            "approval_expired" => Self::ApprovalExpired,
            _ => return None,
        })
    }

    /// Whether the port may be open.
    pub fn is_open(self) -> bool {
        matches!(
            self,
            Self::Active | Self::Extended | Self::Closing | Self::Extending
        )
    }

    /// Whether an action holds the grant's transition (see the module docs).
    pub fn is_claimed(self) -> bool {
        matches!(self, Self::Closing | Self::Extending)
    }

    /// Whether nothing more can happen to it by Drawbridge's own doing
    /// (the reconciler may still find a failed or closed grant open in
    /// Azure: [`GrantEvent::ReopenedInAzure`]).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Self::ClosedEarly
                | Self::Expired
                | Self::Failed
                | Self::Superseded
                | Self::Ended
                | Self::Denied
                | Self::Cancelled
                | Self::ApprovalExpired
        )
    }

    /// The state after `event`, or why that is not allowed.
    pub fn apply(self, event: &GrantEvent) -> Result<GrantState, InvalidTransition> {
        use GrantEvent as E;
        use GrantState as S;
        let next = match (self, event) {
            (S::Requested, E::AwaitApproval) => S::PendingApproval,
            (S::PendingApproval, E::Approved) => S::Requested,
            (S::PendingApproval, E::ApprovalDenied) => S::Denied,
            (S::PendingApproval, E::ApprovalCancelled) => S::Cancelled,
            (S::PendingApproval, E::ApprovalTimedOut) => S::ApprovalExpired,
            (S::Requested, E::Initiated { .. }) => S::Active,
            (S::Requested, E::Failed) => S::Failed,
            (S::Requested, E::Unclear) => S::PendingAzure,
            (S::PendingAzure, E::Initiated { .. }) => S::Active,
            (S::PendingAzure, E::Failed) => S::Failed,
            (S::Requested, E::AskedFirst) => S::Confirming,
            (S::Confirming, E::Confirmed) => S::Requested,
            (S::Confirming, E::Cancelled) => S::Cancelled,
            (S::Extending, E::Unclear) => S::PendingAzure,
            (S::PendingAzure, E::Extended { .. }) => S::Extended,
            (S::PendingAzure, E::ExtendFailed { back_to_extended }) => {
                if *back_to_extended {
                    S::Extended
                } else {
                    S::Active
                }
            }
            (
                S::Failed | S::ClosedEarly | S::Expired | S::Ended | S::Superseded,
                E::ReopenedInAzure { .. },
            ) => S::Active,
            (S::Active | S::Extended, E::ExtendRequested) => S::Extending,
            (S::Extending, E::Extended { .. }) => S::Extended,
            (S::Extending, E::ExtendFailed { back_to_extended }) => {
                if *back_to_extended {
                    S::Extended
                } else {
                    S::Active
                }
            }
            (S::Active | S::Extended, E::CloseRequested) => S::Closing,
            (S::Closing, E::Closed { .. }) => S::ClosedEarly,
            (S::Closing, E::CloseFailed { back_to_extended }) => {
                if *back_to_extended {
                    S::Extended
                } else {
                    S::Active
                }
            }
            (S::Active | S::Extended | S::Closing | S::Extending, E::WindowEnded) => S::Expired,
            (S::Active | S::Extended | S::Closing, E::EndedInAzure { superseded, .. }) => {
                if *superseded {
                    S::Superseded
                } else {
                    S::Ended
                }
            }
            _ => {
                return Err(InvalidTransition {
                    from: self,
                    event: event.name(),
                });
            }
        };
        Ok(next)
    }
}

impl fmt::Display for GrantState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Something that happens to a grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantEvent {
    /// Azure accepted the initiate; the window ends at `end`.
    Initiated {
        /// Azure's `endTimeUtc`.
        end: DateTime<Utc>,
    },
    /// Azure refused or failed.
    Failed,
    /// Azure gave no usable answer to the initiate: it may have opened it.
    Unclear,
    /// The owner asked to extend.
    ExtendRequested,
    /// The extension failed; the grant is as before.
    ExtendFailed {
        /// Whether it had been extended.
        back_to_extended: bool,
    },
    /// Azure accepted a new window.
    Extended {
        /// The new end.
        end: DateTime<Utc>,
    },
    /// The owner asked to close early.
    CloseRequested,
    /// Azure accepted the short window.
    Closed {
        /// When the port actually closes.
        end: DateTime<Utc>,
    },
    /// The close failed; the grant is as before.
    CloseFailed {
        /// Whether it had been extended.
        back_to_extended: bool,
    },
    /// The end time passed.
    WindowEnded,
    /// Azure shows the window ended before its time: replaced by a newer
    /// request (`superseded`) or for another reason.
    EndedInAzure {
        superseded: bool,
        /// When it ended, as near as Azure shows.
        at: DateTime<Utc>,
    },
    /// Another member holds the port: the member is asked first.
    AskedFirst,
    /// The member answered Open anyway.
    Confirmed,
    /// The member answered Cancel, or the question lapsed.
    Cancelled,
    /// Azure shows our own request of the grant open until `end` although
    /// Drawbridge had it failed or closed.
    ReopenedInAzure { end: DateTime<Utc> },
    /// The mapping needs approval: the request waits.
    AwaitApproval,
    /// Enough approvers approved: the request goes on to Azure.
    Approved,
    /// An approver denied it.
    ApprovalDenied,
    /// The requester cancelled it.
    ApprovalCancelled,
    /// Nobody decided in time.
    ApprovalTimedOut,
}

impl GrantEvent {
    /// What happened, in words (also the stored transition's event).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Initiated { .. } => "initiated",
            Self::Failed => "failed",
            Self::Unclear => "unclear",
            Self::ExtendRequested => "extend requested",
            Self::ExtendFailed { .. } => "extend failed",
            Self::Extended { .. } => "extended",
            Self::CloseRequested => "close requested",
            Self::Closed { .. } => "closed",
            Self::CloseFailed { .. } => "close failed",
            Self::WindowEnded => "window ended",
            Self::EndedInAzure { .. } => "ended in Azure",
            Self::AskedFirst => "asked first",
            Self::Confirmed => "confirmed",
            Self::Cancelled => "cancelled",
            Self::ReopenedInAzure { .. } => "reopened in Azure",
            Self::AwaitApproval => "awaiting approval",
            Self::Approved => "approved",
            Self::ApprovalDenied => "denied",
            Self::ApprovalCancelled => "cancelled",
            Self::ApprovalTimedOut => "expired unapproved",
        }
    }
}

/// A transition the state machine does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a grant that is {from} cannot be {event}")]
pub struct InvalidTransition {
    /// The state it was in.
    pub from: GrantState,
    /// What was attempted.
    pub event: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;
    use GrantEvent as E;
    use GrantState as S;

    #[test]
    fn the_lifecycle_follows_the_diagram() {
        let end = Utc::now();
        let path = [
            (S::Requested, E::Initiated { end }, S::Active),
            (S::Active, E::ExtendRequested, S::Extending),
            (S::Extending, E::Extended { end }, S::Extended),
            (S::Extended, E::ExtendRequested, S::Extending),
            (
                S::Extending,
                E::ExtendFailed {
                    back_to_extended: true,
                },
                S::Extended,
            ),
            (S::Extended, E::CloseRequested, S::Closing),
            (
                S::Closing,
                E::CloseFailed {
                    back_to_extended: true,
                },
                S::Extended,
            ),
            (S::Extended, E::CloseRequested, S::Closing),
            (S::Closing, E::Closed { end }, S::ClosedEarly),
            (S::Requested, E::Failed, S::Failed),
            (S::Requested, E::Unclear, S::PendingAzure),
            (S::PendingAzure, E::Initiated { end }, S::Active),
            (S::PendingAzure, E::Failed, S::Failed),
            (S::Requested, E::AskedFirst, S::Confirming),
            (S::Confirming, E::Confirmed, S::Requested),
            (S::Confirming, E::Cancelled, S::Cancelled),
            (S::Extending, E::Unclear, S::PendingAzure),
            (S::PendingAzure, E::Extended { end }, S::Extended),
            (
                S::PendingAzure,
                E::ExtendFailed {
                    back_to_extended: false,
                },
                S::Active,
            ),
            (S::Failed, E::ReopenedInAzure { end }, S::Active),
            (S::ClosedEarly, E::ReopenedInAzure { end }, S::Active),
            (S::Active, E::WindowEnded, S::Expired),
            (
                S::Closing,
                E::EndedInAzure {
                    superseded: true,
                    at: end,
                },
                S::Superseded,
            ),
            (
                S::Extended,
                E::EndedInAzure {
                    superseded: false,
                    at: end,
                },
                S::Ended,
            ),
        ];
        for (from, event, to) in path {
            assert_eq!(from.apply(&event), Ok(to), "{from} + {event:?}");
        }
    }

    #[test]
    fn final_states_accept_nothing() {
        let end = Utc::now();
        for from in [
            S::ClosedEarly,
            S::Expired,
            S::Failed,
            S::Superseded,
            S::Ended,
            S::Cancelled,
        ] {
            for event in [
                E::Initiated { end },
                E::Extended { end },
                E::CloseRequested,
                E::WindowEnded,
            ] {
                let err = from.apply(&event).unwrap_err();
                assert_eq!(err.from, from);
            }
            assert!(from.is_final() && !from.is_open());
        }
        assert_eq!(
            S::Requested
                .apply(&E::Extended { end })
                .unwrap_err()
                .to_string(),
            "a grant that is requested cannot be extended"
        );
    }

    #[test]
    fn a_pending_request_is_decided_once() {
        let pending = S::Requested.apply(&E::AwaitApproval).unwrap();
        assert_eq!(pending, S::PendingApproval);
        assert!(!pending.is_open() && !pending.is_final());
        assert_eq!(pending.apply(&E::Approved), Ok(S::Requested));
        for (event, to) in [
            (E::ApprovalDenied, S::Denied),
            (E::ApprovalCancelled, S::Cancelled),
            (E::ApprovalTimedOut, S::ApprovalExpired),
        ] {
            assert_eq!(pending.apply(&event), Ok(to));
            assert!(to.is_final());
            // Whoever comes second loses: nothing leaves a decided request.
            for late in [E::Approved, E::ApprovalCancelled, E::ApprovalDenied] {
                assert!(to.apply(&late).is_err(), "{to} + {late:?}");
            }
        }
        assert!(pending.apply(&E::Initiated { end: Utc::now() }).is_err());
    }

    #[test]
    fn names_round_trip() {
        for s in [
            S::Requested,
            S::Active,
            S::Extended,
            S::Closing,
            S::Extending,
            S::ClosedEarly,
            S::Expired,
            S::Failed,
            S::PendingAzure,
            S::Superseded,
            S::Ended,
            S::Confirming,
            S::PendingApproval,
            S::Denied,
            S::Cancelled,
            S::ApprovalExpired,
        ] {
            assert_eq!(S::parse(s.as_str()), Some(s));
        }
    }
}
