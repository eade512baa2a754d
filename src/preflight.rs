//! `drawbridge preflight`: checks a real deployment before it serves anyone
//! and prints a checklist, one line per check, each failure with its fix.
//! The rules are pure ([`crate::domain::preflight`]); this module only
//! fetches their inputs through the ARM client and Discord's REST API
//! (`discord`) and words the lines, so a
//! missing role action shows here rather than as a 403 in production.

mod discord;

use std::fmt;

use crate::azure::{ArmClient, ArmError};
use crate::domain::preflight::{NEEDED_ACTIONS, missing_actions};

pub use discord::check_discord;

/// One line of the checklist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckLine {
    pub ok: bool,
    pub what: String,
    /// How to fix a failure (`None` when it passed).
    pub fix: Option<String>,
}

impl CheckLine {
    fn pass(what: impl Into<String>) -> Self {
        Self {
            ok: true,
            what: what.into(),
            fix: None,
        }
    }

    fn fail(what: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            ok: false,
            what: what.into(),
            fix: Some(fix.into()),
        }
    }
}

impl fmt::Display for CheckLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.fix, self.ok) {
            (Some(fix), false) => write!(f, "✗ {}\n    fix: {fix}", self.what),
            _ => write!(f, "✓ {}", self.what),
        }
    }
}

/// The lines of every check, in order.
#[derive(Debug, Clone, Default)]
pub struct Checklist(pub Vec<CheckLine>);

impl Checklist {
    /// Whether every check passed.
    #[must_use]
    pub fn passed(&self) -> bool {
        self.0.iter().all(|l| l.ok)
    }
}

impl fmt::Display for Checklist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for line in &self.0 {
            writeln!(f, "{line}")?;
        }
        Ok(())
    }
}

/// The Azure checks: the credential yields a token, and in each
/// subscription the identity holds every needed action and can list JIT
/// policies. Stops after a token failure (every other call would repeat it).
pub async fn check_azure(arm: &ArmClient, subscriptions: &[String]) -> Vec<CheckLine> {
    let mut lines = Vec::new();
    for (i, sub) in subscriptions.iter().enumerate() {
        let permissions = arm.list_permissions(sub).await;
        if let Err(ArmError::Unauthorized { message }) = &permissions {
            tracing::warn!(error = %message, "preflight: no Azure token");
            lines.push(CheckLine::fail(
                format!("Azure credential: no token for Resource Manager ({message})"),
                "check azure.credential and its settings (docs/operations.md, Azure identity)",
            ));
            return lines;
        }
        if i == 0 {
            lines.push(CheckLine::pass("Azure credential yields a token"));
        }
        lines.push(actions_line(sub, permissions));
        lines.push(match arm.list_policies(sub).await {
            Ok(p) => CheckLine::pass(format!(
                "subscription {sub}: JIT policies are listable ({} found)",
                p.len()
            )),
            Err(e) => CheckLine::fail(
                format!("subscription {sub}: JIT policies cannot be listed ({e})"),
                "grant Microsoft.Security/locations/jitNetworkAccessPolicies/read and enable Defender for Servers Plan 2",
            ),
        });
    }
    lines
}

fn actions_line(
    sub: &str,
    permissions: Result<Vec<crate::domain::preflight::PermissionEntry>, ArmError>,
) -> CheckLine {
    match permissions {
        Ok(entries) => {
            let missing = missing_actions(&entries);
            if missing.is_empty() {
                CheckLine::pass(format!(
                    "subscription {sub}: the identity holds all {} needed actions",
                    NEEDED_ACTIONS.len()
                ))
            } else {
                CheckLine::fail(
                    format!(
                        "subscription {sub}: the identity lacks {}",
                        missing.join(", ")
                    ),
                    "add the missing actions to the Drawbridge custom role and assign it in this subscription (docs/operations.md)",
                )
            }
        }
        Err(e) => CheckLine::fail(
            format!("subscription {sub}: its permissions cannot be read ({e})"),
            "check azure.subscriptions and that the identity has a role assignment in this subscription",
        ),
    }
}
