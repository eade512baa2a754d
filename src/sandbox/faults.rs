//! Fault injection: make chosen routes throttle, fail, slow down or hang, for
//! the next N calls, a fraction of calls, or until cleared. Some faults
//! strike after the operation took effect (hang, 5xx, truncated body), as
//! when ARM applies a write and the answer is lost: the client cannot tell
//! those from a change not made.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// An emulated operation faults can be aimed at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Route {
    /// The four JIT policy list operations.
    ListPolicies,
    /// `GET` one policy.
    GetPolicy,
    /// `PUT` one policy.
    PutPolicy,
    /// `DELETE` one policy.
    DeletePolicy,
    /// `POST …/initiate`.
    Initiate,
    /// The Compute VM list.
    ListVms,
    /// `GET` one VM (Compute).
    GetVm,
    /// `GET` one network interface (Network).
    GetNic,
    /// `GET` one public IP address (Network).
    GetPublicIp,
    /// Every token endpoint (managed identity and Entra v2).
    Token,
    /// The caller's effective permissions in a subscription (`drawbridge preflight`).
    ListPermissions,
}

impl Route {
    /// The RBAC action Azure checks on this route (as its 403 names it).
    pub fn action(self) -> &'static str {
        match self {
            Self::ListPolicies | Self::GetPolicy => {
                "Microsoft.Security/locations/jitNetworkAccessPolicies/read"
            }
            Self::PutPolicy => "Microsoft.Security/locations/jitNetworkAccessPolicies/write",
            Self::DeletePolicy => "Microsoft.Security/locations/jitNetworkAccessPolicies/delete",
            Self::Initiate => {
                "Microsoft.Security/locations/jitNetworkAccessPolicies/initiate/action"
            }
            Self::ListVms | Self::GetVm => "Microsoft.Compute/virtualMachines/read",
            Self::GetNic => "Microsoft.Network/networkInterfaces/read",
            Self::GetPublicIp => "Microsoft.Network/publicIPAddresses/read",
            Self::Token => "(token endpoint)",
            Self::ListPermissions => "Microsoft.Authorization/permissions/read",
        }
    }
}

/// What goes wrong.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "kind",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum Fault {
    /// 429 Too Many Requests with `Retry-After: <retry_after_secs>`.
    Throttle {
        /// Seconds the client is told to wait.
        retry_after_secs: u64,
    },
    /// A 5xx (500, 503, …) with an ARM error body.
    ServerError {
        /// The HTTP status; values outside 500..=599 become 500.
        status: u16,
    },
    /// 403 `AuthorizationFailed`: the caller's identity lacks the permission.
    Forbidden,
    /// The normal answer, after a delay.
    Latency {
        /// The added delay in milliseconds.
        millis: u64,
    },
    /// No answer until the emulator shuts down (or an hour passes): longer
    /// than any client timeout.
    Hang,
    /// The operation is applied, then no answer until the emulator shuts
    /// down (or an hour passes): the client times out on a change made.
    HangAfterApply,
    /// The operation is applied, then a 5xx (values outside 500..=599
    /// become 500) with an ARM error body.
    ServerErrorAfterApply {
        /// The HTTP status.
        status: u16,
    },
    /// The operation is applied and answered with its 2xx status, its body
    /// cut in half (a connection dropped mid-answer, as a client sees it).
    TruncatedBody,
}

impl Fault {
    /// Whether the fault strikes after the operation took effect. Only ARM
    /// routes have an operation to apply; on [`Route::Token`] these faults
    /// fire and change nothing.
    pub fn after_apply(&self) -> bool {
        matches!(
            self,
            Self::HangAfterApply | Self::ServerErrorAfterApply { .. } | Self::TruncatedBody
        )
    }
}

/// When a fault fires.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Trigger {
    /// On each of the next N matching calls, then the rule is gone.
    Next(u32),
    /// On each matching call with this probability (0.0..=1.0), drawn from
    /// the emulator's seeded RNG so runs are reproducible.
    Probability(f64),
    /// On every matching call until the faults are cleared.
    Always,
}

/// A fault and when it fires.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultRule {
    /// What goes wrong.
    pub fault: Fault,
    /// When.
    pub when: Trigger,
}

impl FaultRule {
    /// `fault` on each of the next `n` calls.
    pub fn next(n: u32, fault: Fault) -> Self {
        Self {
            fault,
            when: Trigger::Next(n),
        }
    }

    /// `fault` on a `probability` fraction of calls.
    pub fn probability(probability: f64, fault: Fault) -> Self {
        Self {
            fault,
            when: Trigger::Probability(probability),
        }
    }

    /// `fault` on every call until cleared.
    pub fn always(fault: Fault) -> Self {
        Self {
            fault,
            when: Trigger::Always,
        }
    }
}

/// The armed faults; the first rule for a route that fires wins.
#[derive(Debug)]
pub(crate) struct Faults {
    rules: Vec<(Route, FaultRule)>,
    rng: StdRng,
}

impl Faults {
    pub fn new(seed: u64) -> Self {
        Self {
            rules: Vec::new(),
            rng: StdRng::seed_from_u64(seed),
        }
    }

    pub fn reseed(&mut self, seed: u64) {
        self.rng = StdRng::seed_from_u64(seed);
    }

    pub fn add(&mut self, route: Route, rule: FaultRule) {
        self.rules.push((route, rule));
    }

    pub fn clear(&mut self) {
        self.rules.clear();
    }

    /// The fault for this call of `route`, if one fires; consumes counted rules.
    pub fn take(&mut self, route: Route) -> Option<Fault> {
        let mut i = 0;
        while i < self.rules.len() {
            let (r, rule) = &mut self.rules[i];
            if *r == route {
                let fires = match &mut rule.when {
                    Trigger::Next(0) => false,
                    Trigger::Next(n) => {
                        *n -= 1;
                        true
                    }
                    Trigger::Probability(p) => self.rng.random::<f64>() < *p,
                    Trigger::Always => true,
                };
                if fires {
                    let fault = rule.fault.clone();
                    if rule.when == Trigger::Next(0) {
                        self.rules.remove(i);
                    }
                    return Some(fault);
                }
            }
            i += 1;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counted_faults_fire_n_times_then_vanish() {
        let mut faults = Faults::new(0);
        faults.add(Route::Initiate, FaultRule::next(2, Fault::Hang));
        assert_eq!(faults.take(Route::GetPolicy), None);
        assert_eq!(faults.take(Route::Initiate), Some(Fault::Hang));
        assert_eq!(faults.take(Route::Initiate), Some(Fault::Hang));
        assert_eq!(faults.take(Route::Initiate), None);
        assert!(faults.rules.is_empty());
    }

    #[test]
    fn probabilistic_faults_are_reproducible_from_the_seed() {
        let run = |seed| {
            let mut faults = Faults::new(seed);
            let fault = Fault::ServerError { status: 503 };
            faults.add(Route::ListVms, FaultRule::probability(0.5, fault));
            (0..64)
                .map(|_| faults.take(Route::ListVms).is_some())
                .collect::<Vec<_>>()
        };
        let a = run(7);
        assert_eq!(a, run(7));
        let fired = a.iter().filter(|f| **f).count();
        assert!((16..=48).contains(&fired), "{fired} of 64");
    }

    #[test]
    fn fault_rules_read_from_json() {
        let rule: FaultRule = serde_json::from_str(
            r#"{"fault":{"kind":"throttle","retryAfterSecs":5},"when":{"next":3}}"#,
        )
        .unwrap();
        assert_eq!(
            rule,
            FaultRule::next(
                3,
                Fault::Throttle {
                    retry_after_secs: 5
                }
            )
        );
        let rule: FaultRule =
            serde_json::from_str(r#"{"fault":{"kind":"hang"},"when":"always"}"#).unwrap();
        assert_eq!(rule, FaultRule::always(Fault::Hang));
        let rule: FaultRule =
            serde_json::from_str(r#"{"fault":{"kind":"forbidden"},"when":{"next":1}}"#).unwrap();
        assert_eq!(rule, FaultRule::next(1, Fault::Forbidden));
    }
}
