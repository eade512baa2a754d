//! ARM errors, mapped to what a caller can act on, and request statistics.

use std::{collections::BTreeMap, fmt, sync::Mutex};

use reqwest::StatusCode;

use super::{ids::IdError, wire::CloudError};

/// The ARM operations Drawbridge performs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Operation {
    /// `JitNetworkAccessPolicies_List` (one page).
    ListPolicies,
    /// `JitNetworkAccessPolicies_Get`.
    GetPolicy,
    /// `JitNetworkAccessPolicies_CreateOrUpdate`.
    PutPolicy,
    /// `JitNetworkAccessPolicies_Initiate`.
    Initiate,
    /// `VirtualMachines_ListAll` (one page).
    ListVms,
    /// `Permissions_ListForResourceGroup`'s subscription form (`drawbridge preflight`).
    ListPermissions,
    /// `VirtualMachines_Get` (the VM's network interfaces and tags).
    GetVm,
    /// `NetworkInterfaces_Get` (the VM's addresses).
    GetNic,
    /// `PublicIPAddresses_Get` (the address and DNS name).
    GetPublicIp,
}

impl Operation {
    /// A stable short name for logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Self::ListPolicies => "list_policies",
            Self::GetPolicy => "get_policy",
            Self::PutPolicy => "put_policy",
            Self::Initiate => "initiate",
            Self::ListVms => "list_vms",
            Self::ListPermissions => "list_permissions",
            Self::GetVm => "get_vm",
            Self::GetNic => "get_nic",
            Self::GetPublicIp => "get_public_ip",
        }
    }

    /// The Azure RBAC action this operation needs.
    pub fn needed_action(self) -> &'static str {
        match self {
            Self::ListPolicies | Self::GetPolicy => {
                "Microsoft.Security/locations/jitNetworkAccessPolicies/read"
            }
            Self::PutPolicy => "Microsoft.Security/locations/jitNetworkAccessPolicies/write",
            Self::Initiate => {
                "Microsoft.Security/locations/jitNetworkAccessPolicies/initiate/action"
            }
            Self::ListVms | Self::GetVm => "Microsoft.Compute/virtualMachines/read",
            Self::ListPermissions => "Microsoft.Authorization/permissions/read",
            Self::GetNic => "Microsoft.Network/networkInterfaces/read",
            Self::GetPublicIp => "Microsoft.Network/publicIPAddresses/read",
        }
    }
}

/// The action in Azure's `AuthorizationFailed` message: "… does not have
/// authorization to perform action 'Microsoft.X/y/read' over scope …".
fn reported_action(message: &str) -> Option<&str> {
    let start = message.find("perform action '")? + "perform action '".len();
    let rest = &message[start..];
    let action = &rest[..rest.find('\'')?];
    let plausible = action.starts_with("Microsoft.")
        && action.contains('/')
        && !action.contains(char::is_whitespace);
    plausible.then_some(action)
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An ARM call that failed. Neither `Display` nor `Debug` carries a token.
#[derive(Debug, thiserror::Error)]
pub enum ArmError {
    /// 403: the bot's identity lacks a permission.
    #[error("forbidden ({code}): {message}; needs {needed_action}")]
    Forbidden {
        /// Azure's error code, e.g. `AuthorizationFailed`.
        code: String,
        /// Azure's message.
        message: String,
        /// The RBAC action Azure says is missing (quoted from its message),
        /// else the one the operation needs.
        needed_action: String,
    },
    /// 404.
    #[error("not found ({code}): {message}")]
    NotFound {
        /// Azure's error code.
        code: String,
        /// Azure's message.
        message: String,
    },
    /// 400 or 422: Azure refused the request; its message explains why.
    #[error("bad request ({code}): {message}")]
    BadRequest {
        /// Azure's error code.
        code: String,
        /// Azure's message, fit for users.
        message: String,
    },
    /// 409 or 412.
    #[error("conflict ({code}): {message}")]
    Conflict {
        /// Azure's error code.
        code: String,
        /// Azure's message.
        message: String,
    },
    /// 429 until the retry budget ran out.
    #[error("throttled by ARM after {attempts} attempts")]
    Throttled {
        /// Attempts made.
        attempts: u32,
    },
    /// 5xx, timeouts or connection errors until the retry budget ran out.
    #[error("ARM unavailable after {attempts} attempts (last: {last})")]
    Unavailable {
        /// Attempts made.
        attempts: u32,
        /// The last failure, e.g. `503` or `timeout`.
        last: String,
    },
    /// No usable token: the credential failed, or ARM refused a fresh token.
    #[error("not authenticated to ARM: {message}")]
    Unauthorized {
        /// Why (never the token).
        message: String,
    },
    /// Drawbridge was asked to use an id or value that cannot be right.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// Anything else: malformed responses, unexpected statuses.
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl From<IdError> for ArmError {
    fn from(e: IdError) -> Self {
        Self::InvalidInput(e.to_string())
    }
}

impl From<crate::domain::InvalidPolicyId> for ArmError {
    fn from(e: crate::domain::InvalidPolicyId) -> Self {
        Self::InvalidInput(e.to_string())
    }
}

/// ARM's error code for a token minted for another audience.
const WRONG_AUDIENCE: &str = "InvalidAuthenticationTokenAudience";

/// How an [`ArmError::Unauthorized`] about the token audience begins, whether
/// ARM refused the token or the token service refused the audience
/// ([`super::TokenError::UnknownAudience`]).
const AUDIENCE_PROBLEM: &str = "azure.arm_audience: ";

/// Whether an ARM 401 body says the token is for the wrong audience: a new
/// token from the same credential would be refused too.
pub(crate) fn is_wrong_audience(body: &[u8]) -> bool {
    serde_json::from_slice::<CloudError>(body).is_ok_and(|c| c.error.code == WRONG_AUDIENCE)
}

impl ArmError {
    /// Maps a non-success, non-retried response to an error.
    pub(crate) fn from_response(op: Operation, status: StatusCode, body: &[u8]) -> Self {
        let cloud = serde_json::from_slice::<CloudError>(body)
            .map(|c| c.error)
            .unwrap_or_default();
        let code = if cloud.code.is_empty() {
            status
                .canonical_reason()
                .unwrap_or("Unknown")
                .replace(' ', "")
        } else {
            cloud.code
        };
        let message = cloud.message;
        match status.as_u16() {
            401 if code == WRONG_AUDIENCE => Self::Unauthorized {
                message: format!(
                    "azure.arm_audience: ARM refused the token because it was issued for another audience ({code}: {message}); set azure.arm_audience to the audience your cloud's Resource Manager accepts"
                ),
            },
            401 => Self::Unauthorized {
                message: format!("ARM refused the token ({code})"),
            },
            403 => Self::Forbidden {
                code,
                needed_action: reported_action(&message)
                    .unwrap_or(op.needed_action())
                    .to_owned(),
                message,
            },
            404 => Self::NotFound { code, message },
            400 | 422 => Self::BadRequest { code, message },
            409 | 412 => Self::Conflict { code, message },
            other => Self::Unexpected(anyhow::anyhow!(
                "{op} answered HTTP {other} ({code}): {message}"
            )),
        }
    }

    /// One sentence for the operator running the CLI: a sign-in problem in
    /// full (what Azure or the token service said, and the setting to fix),
    /// since it is theirs to fix and never holds a secret or token; any other
    /// failure as [`ArmError::user_message`] says it.
    pub fn operator_message(&self) -> String {
        match self {
            Self::Unauthorized { .. } => self.to_string(),
            _ => self.user_message(),
        }
    }

    /// The same error again (for an answer that repeats a remembered
    /// failure); an unexpected one keeps its text.
    pub fn replay(&self) -> Self {
        match self {
            Self::Forbidden {
                code,
                message,
                needed_action,
            } => Self::Forbidden {
                code: code.clone(),
                message: message.clone(),
                needed_action: needed_action.clone(),
            },
            Self::NotFound { code, message } => Self::NotFound {
                code: code.clone(),
                message: message.clone(),
            },
            Self::BadRequest { code, message } => Self::BadRequest {
                code: code.clone(),
                message: message.clone(),
            },
            Self::Conflict { code, message } => Self::Conflict {
                code: code.clone(),
                message: message.clone(),
            },
            Self::Throttled { attempts } => Self::Throttled {
                attempts: *attempts,
            },
            Self::Unavailable { attempts, last } => Self::Unavailable {
                attempts: *attempts,
                last: last.clone(),
            },
            Self::Unauthorized { message } => Self::Unauthorized {
                message: message.clone(),
            },
            Self::InvalidInput(text) => Self::InvalidInput(text.clone()),
            Self::Unexpected(e) => Self::Unexpected(anyhow::anyhow!("{e:#}")),
        }
    }

    /// One clear sentence for a Discord user: no ids, tokens or internals
    /// beyond Azure's own explanation of a refused request.
    pub fn user_message(&self) -> String {
        match self {
            Self::Forbidden { needed_action, .. } => format!(
                "Azure denied Drawbridge's own identity: it lacks the permission `{needed_action}`. Ask an Azure admin to grant it."
            ),
            Self::NotFound { .. } => {
                "Azure could not find that resource: the VM or its JIT policy may have been removed.".to_owned()
            }
            Self::BadRequest { message, .. } if !message.is_empty() => format!("Azure refused the request: {message}"),
            Self::BadRequest { .. } => "Azure refused the request.".to_owned(),
            Self::Conflict { .. } => {
                "Azure is busy with another change to this JIT policy; try again in a moment.".to_owned()
            }
            Self::Throttled { .. } => "Azure is throttling requests right now; try again in a minute.".to_owned(),
            Self::Unavailable { .. } => "Azure is not answering right now; try again shortly.".to_owned(),
            Self::Unauthorized { message } if message.starts_with(AUDIENCE_PROBLEM) => {
                "Drawbridge could not sign in to Azure: its token audience (azure.arm_audience) is wrong; an operator needs to fix its configuration.".to_owned()
            }
            Self::Unauthorized { .. } => {
                "Drawbridge could not sign in to Azure; an operator needs to check its credential.".to_owned()
            }
            Self::InvalidInput(_) | Self::Unexpected(_) => {
                "Something unexpected went wrong talking to Azure; an operator can find details in the logs.".to_owned()
            }
        }
    }
}

/// One row of [`ArmStats::snapshot`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatCount {
    /// The operation.
    pub operation: Operation,
    /// HTTP status, or 0 when no response came (timeout, connection error).
    pub status: u16,
    /// Requests sent (each retry counts).
    pub count: u64,
}

/// Requests sent, by operation and status.
#[derive(Debug, Default)]
pub struct ArmStats {
    counts: Mutex<BTreeMap<(Operation, u16), u64>>,
}

impl ArmStats {
    /// Counts one attempt (`status` 0: no response) and feeds the process
    /// metrics ([`crate::metrics`]) with its latency.
    pub(crate) fn record(&self, operation: Operation, status: u16, latency: std::time::Duration) {
        crate::metrics::global().arm_request(operation.name(), status, latency);
        *self
            .counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((operation, status))
            .or_default() += 1;
    }

    /// All counts so far.
    pub fn snapshot(&self) -> Vec<StatCount> {
        self.counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(&(operation, status), &count)| StatCount {
                operation,
                status,
                count,
            })
            .collect()
    }

    /// Requests sent for `operation`, any status.
    pub fn total(&self, operation: Operation) -> u64 {
        self.snapshot()
            .iter()
            .filter(|c| c.operation == operation)
            .map(|c| c.count)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_variants_with_azure_text() {
        let body = br#"{"error":{"code":"AuthorizationFailed","message":"The client 'x' does not have authorization"}}"#;
        let e = ArmError::from_response(Operation::Initiate, StatusCode::FORBIDDEN, body);
        assert!(matches!(&e, ArmError::Forbidden { code, needed_action, .. }
            if code == "AuthorizationFailed" && *needed_action == "Microsoft.Security/locations/jitNetworkAccessPolicies/initiate/action"));
        assert!(e.user_message().contains("initiate/action"));

        let body = br#"{"error":{"code":"AuthorizationFailed","message":"The client 'x' with object id 'x' does not have authorization to perform action 'Microsoft.Network/networkInterfaces/read' over scope '/subscriptions/s' or the scope is invalid."}}"#;
        let e = ArmError::from_response(Operation::Initiate, StatusCode::FORBIDDEN, body);
        assert!(
            e.user_message()
                .contains("`Microsoft.Network/networkInterfaces/read`"),
            "the action Azure names is quoted: {}",
            e.user_message()
        );

        let e = ArmError::from_response(
            Operation::Initiate,
            StatusCode::BAD_REQUEST,
            br#"{"error":{"code":"X","message":"Port 23 is not in the policy"}}"#,
        );
        assert_eq!(
            e.user_message(),
            "Azure refused the request: Port 23 is not in the policy"
        );

        let e = ArmError::from_response(Operation::GetPolicy, StatusCode::NOT_FOUND, b"");
        assert!(matches!(&e, ArmError::NotFound { code, .. } if code == "NotFound"));
        assert!(matches!(
            ArmError::from_response(Operation::PutPolicy, StatusCode::CONFLICT, b"{}"),
            ArmError::Conflict { .. }
        ));
        assert!(matches!(
            ArmError::from_response(Operation::PutPolicy, StatusCode::IM_A_TEAPOT, b"<html>"),
            ArmError::Unexpected(_)
        ));
    }

    #[test]
    fn a_token_for_another_audience_names_the_setting() {
        let body = br#"{"error":{"code":"InvalidAuthenticationTokenAudience","message":"The access token has been obtained for wrong audience or resource 'https://vault.azure.net'."}}"#;
        assert!(is_wrong_audience(body));
        let e = ArmError::from_response(Operation::ListPolicies, StatusCode::UNAUTHORIZED, body);
        let text = e.to_string();
        assert!(text.contains("azure.arm_audience"), "{text}");
        assert!(text.contains("https://vault.azure.net"), "{text}");
        assert!(e.user_message().contains("(azure.arm_audience) is wrong"));
        assert!(
            !e.user_message().contains("vault"),
            "Azure's detail is logged, not shown"
        );

        let expired = br#"{"error":{"code":"ExpiredAuthenticationToken","message":"expired"}}"#;
        assert!(!is_wrong_audience(expired));
        let e = ArmError::from_response(Operation::ListPolicies, StatusCode::UNAUTHORIZED, expired);
        assert!(!e.to_string().contains("arm_audience"));
        assert!(!e.user_message().contains("arm_audience"));

        let unknown = super::super::TokenError::UnknownAudience {
            credential: "managed identity",
            audience: "https://arm-proxy.example".into(),
        };
        let e = ArmError::Unauthorized {
            message: unknown.to_string(),
        };
        assert!(e.user_message().contains("(azure.arm_audience) is wrong"));
    }

    #[test]
    fn stats_count_by_operation_and_status() {
        let s = ArmStats::default();
        let t = std::time::Duration::from_millis(5);
        s.record(Operation::Initiate, 202, t);
        s.record(Operation::Initiate, 429, t);
        s.record(Operation::ListPolicies, 200, t);
        assert_eq!(s.total(Operation::Initiate), 2);
        assert_eq!(s.snapshot().len(), 3);
    }
}
