//! The raw layer: every key as lenient text, so that one bad value does not
//! hide the others. [`super::check`] turns it into [`super::Settings`],
//! reporting each problem with its key and source.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct Raw {
    pub(super) discord: RawDiscord,
    pub(super) http: RawHttp,
    pub(super) ops: RawOps,
    pub(super) azure: RawAzure,
    pub(super) database: RawDatabase,
    pub(super) reminders: RawReminders,
    pub(super) report: RawReport,
    pub(super) limits: RawLimits,
    pub(super) ports: RawPorts,
    pub(super) logging: RawLogging,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawDiscord {
    pub(super) token: Option<String>,
    pub(super) token_file: Option<String>,
    pub(super) application_id: Option<String>,
    pub(super) guild_id: Option<String>,
    pub(super) register_globally: Option<RawScalar>,
    pub(super) base_url: Option<String>,
    pub(super) mode: Option<String>,
    pub(super) public_key: Option<String>,
    pub(super) audit_channel_id: Option<String>,
    pub(super) approvals_channel_id: Option<String>,
    pub(super) alert_role_id: Option<String>,
    #[serde(deserialize_with = "one_or_many")]
    pub(super) admin_role_ids: Vec<String>,
    pub(super) gateway_lease_ttl: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawHttp {
    pub(super) listen: Option<String>,
    pub(super) healthz: Option<RawScalar>,
    pub(super) public_url: Option<String>,
    #[serde(deserialize_with = "one_or_many")]
    pub(super) trusted_proxies: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawOps {
    pub(super) listen: Option<String>,
    pub(super) metrics_refresh: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawAzure {
    pub(super) cloud: Option<String>,
    pub(super) arm_endpoint: Option<String>,
    pub(super) authority_host: Option<String>,
    pub(super) arm_audience: Option<String>,
    pub(super) credential: Option<String>,
    pub(super) tenant_id: Option<String>,
    pub(super) client_id: Option<String>,
    pub(super) client_secret: Option<String>,
    pub(super) client_secret_file: Option<String>,
    pub(super) managed_identity_client_id: Option<String>,
    pub(super) managed_identity_endpoint: Option<String>,
    #[serde(deserialize_with = "one_or_many")]
    pub(super) subscriptions: Vec<String>,
    pub(super) index_refresh: Option<String>,
    pub(super) reconcile_interval: Option<String>,
    pub(super) request_timeout: Option<String>,
    #[serde(deserialize_with = "one_or_many")]
    pub(super) requestor_names: Vec<String>,
    pub(super) enable: RawEnable,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawEnable {
    #[serde(deserialize_with = "one_or_many")]
    pub(super) ports: Vec<String>,
    pub(super) max_duration: Option<String>,
    pub(super) source: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawDatabase {
    pub(super) url: Option<String>,
    pub(super) max_connections: Option<RawScalar>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawReminders {
    #[serde(deserialize_with = "one_or_many")]
    pub(super) before: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawReport {
    pub(super) weekly: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawPorts {
    pub(super) aliases: BTreeMap<String, RawAlias>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawAlias {
    Number(i64),
    One(String),
    Many(Vec<RawScalar>),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawScalar {
    Number(i64),
    Float(f64),
    Flag(bool),
    Text(String),
}

impl RawScalar {
    pub(super) fn text(&self) -> String {
        match self {
            Self::Number(n) => n.to_string(),
            Self::Float(n) => n.to_string(),
            Self::Flag(b) => b.to_string(),
            Self::Text(s) => s.clone(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawLimits {
    pub(super) requests_per_minute: Option<RawScalar>,
    pub(super) burst: Option<RawScalar>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawLogging {
    pub(super) format: Option<String>,
    pub(super) filter: Option<String>,
}

/// A list, or a single value: the environment gives `111` (one id) as a
/// number, not a one-item list.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        Many(Vec<RawScalar>),
        One(RawScalar),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::Many(v) => v.iter().map(RawScalar::text).collect(),
        OneOrMany::One(x) => vec![x.text()],
    })
}
