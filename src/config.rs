//! Settings: `config/default.toml` (built into the binary), then the file
//! given with `--config`, then `DRAWBRIDGE__SECTION__KEY` environment
//! variables. [`Settings::load`] checks every key and reports every problem at
//! once, each naming the key and the source it came from.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;
use url::Url;

use crate::azure::{AzureCloud, CredentialKind};
use crate::domain::duration::parse_span_seconds;
use crate::domain::port::{AliasError, PortAliases};
use crate::domain::{
    AccessDuration, PolicyDefaults, RoleId, Snowflake, SourcePrefix, SubscriptionId,
};

/// The defaults, checked in as `config/default.toml`.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");
const DEFAULT_SOURCE: &str = "config/default.toml";
const ENV_PREFIX: &str = "DRAWBRIDGE";
/// The source of a required key that no layer sets.
const NOT_SET: &str = "not set";
/// Keys whose environment values are comma-separated lists.
const LIST_KEYS: &[&str] = &[
    "discord.admin_role_ids",
    "azure.subscriptions",
    "azure.enable.ports",
    "reminders.before",
];

/// One thing wrong with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// The key, such as `discord.token`.
    pub key: String,
    /// Where its value came from (a file, the environment, or the defaults).
    pub source: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.source.as_str() {
            NOT_SET => write!(f, "{} (not set): {}", self.key, self.message),
            source => write!(f, "{} (from {source}): {}", self.key, self.message),
        }
    }
}

/// Every problem found, at once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigProblem>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        writeln!(
            f,
            "{n} configuration problem{}:",
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.0 {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

/// How Discord delivers interactions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiscordMode {
    /// Over the gateway websocket.
    Gateway,
    /// As signed HTTP POSTs to our interactions endpoint.
    Http,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// `[discord]`.
#[derive(Debug, Clone)]
pub struct DiscordSettings {
    /// The bot token (secret).
    pub token: Option<SecretString>,
    /// The application id.
    pub application_id: Option<Snowflake>,
    /// Register commands to this guild when set, else globally.
    pub guild_id: Option<Snowflake>,
    /// Discord's base URL; tests point it at a fake.
    pub base_url: Url,
    /// Gateway or HTTP interactions.
    pub mode: DiscordMode,
    /// HTTP mode: the Ed25519 public key, 32 bytes.
    pub public_key: Option<[u8; 32]>,
    /// Where audit events go.
    pub audit_channel_id: Option<Snowflake>,
    /// Who may use `/jit-admin`.
    pub admin_role_ids: Vec<RoleId>,
}

/// `[http]`.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// Listen address of the interactions endpoint.
    pub listen: SocketAddr,
}

/// `[ops]`.
#[derive(Debug, Clone)]
pub struct OpsSettings {
    /// Listen address of /healthz, /readyz, /metrics in gateway mode.
    pub listen: SocketAddr,
}

/// `[azure]`.
#[derive(Debug, Clone)]
pub struct AzureSettings {
    /// The cloud.
    pub cloud: AzureCloud,
    /// Overrides the cloud's ARM endpoint.
    pub arm_endpoint: Option<Url>,
    /// Overrides the cloud's Entra authority host.
    pub authority_host: Option<Url>,
    /// The credential kind.
    pub credential: CredentialKind,
    /// Tenant id (client secret, workload identity).
    pub tenant_id: Option<String>,
    /// Client id (client secret, workload identity).
    pub client_id: Option<String>,
    /// Client secret (secret).
    pub client_secret: Option<SecretString>,
    /// A user-assigned managed identity's client id.
    pub managed_identity_client_id: Option<String>,
    /// Replaces the instance metadata service endpoint.
    pub managed_identity_endpoint: Option<Url>,
    /// Subscriptions whose JIT policies are indexed.
    pub subscriptions: Vec<SubscriptionId>,
    /// How often the VM index is rebuilt.
    pub index_refresh: Duration,
    /// How often Azure's JIT requests are compared with our grants.
    pub reconcile_interval: Duration,
    /// Timeout of one ARM request.
    pub request_timeout: Duration,
    /// What `/jit-admin enable` configures (`[azure.enable]`).
    pub enable: PolicyDefaults,
}

/// `[database]`.
#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    /// sqlx database URL.
    pub url: String,
}

/// `[reminders]`.
#[derive(Debug, Clone)]
pub struct ReminderSettings {
    /// Offsets before the end of a grant.
    pub before: Vec<Duration>,
}

/// `[logging]`.
#[derive(Debug, Clone)]
pub struct LoggingSettings {
    /// Pretty or JSON.
    pub format: LogFormat,
    /// tracing filter (RUST_LOG wins).
    pub filter: String,
}

/// All settings, checked.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `[discord]`.
    pub discord: DiscordSettings,
    /// `[http]`.
    pub http: HttpSettings,
    /// `[ops]`.
    pub ops: OpsSettings,
    /// `[azure]`.
    pub azure: AzureSettings,
    /// `[database]`.
    pub database: DatabaseSettings,
    /// `[reminders]`.
    pub reminders: ReminderSettings,
    /// Built-in and configured port names.
    pub ports: PortAliases,
    /// `[logging]`.
    pub logging: LoggingSettings,
}

// ---- raw layer: lenient types, so every field can be checked and reported ----

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Raw {
    discord: RawDiscord,
    http: RawListen,
    ops: RawListen,
    azure: RawAzure,
    database: RawDatabase,
    reminders: RawReminders,
    ports: RawPorts,
    logging: RawLogging,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawDiscord {
    token: Option<String>,
    application_id: Option<String>,
    guild_id: Option<String>,
    base_url: Option<String>,
    mode: Option<String>,
    public_key: Option<String>,
    audit_channel_id: Option<String>,
    #[serde(deserialize_with = "one_or_many")]
    admin_role_ids: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawListen {
    listen: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawAzure {
    cloud: Option<String>,
    arm_endpoint: Option<String>,
    authority_host: Option<String>,
    credential: Option<String>,
    tenant_id: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    managed_identity_client_id: Option<String>,
    managed_identity_endpoint: Option<String>,
    #[serde(deserialize_with = "one_or_many")]
    subscriptions: Vec<String>,
    index_refresh: Option<String>,
    reconcile_interval: Option<String>,
    request_timeout: Option<String>,
    enable: RawEnable,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawEnable {
    #[serde(deserialize_with = "one_or_many")]
    ports: Vec<String>,
    max_duration: Option<String>,
    source: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawDatabase {
    url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawReminders {
    #[serde(deserialize_with = "one_or_many")]
    before: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawPorts {
    aliases: BTreeMap<String, RawAlias>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawAlias {
    Number(i64),
    One(String),
    Many(Vec<RawScalar>),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawScalar {
    Number(i64),
    Float(f64),
    Flag(bool),
    Text(String),
}

impl RawScalar {
    fn text(&self) -> String {
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
struct RawLogging {
    format: Option<String>,
    filter: Option<String>,
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

/// Where to read settings from.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// The `--config` file.
    pub file: Option<PathBuf>,
    /// Environment variables to use instead of the process environment (tests).
    pub env: Option<std::collections::HashMap<String, String>>,
}

impl Sources {
    /// The defaults, an optional file, and the process environment.
    pub fn new(file: Option<&Path>) -> Self {
        Self {
            file: file.map(Path::to_path_buf),
            env: None,
        }
    }
}

struct Checker<'a> {
    cfg: &'a config::Config,
    problems: Vec<ConfigProblem>,
}

impl Checker<'_> {
    fn source_of(&self, key: &str) -> String {
        // `get_table` keeps each value's origin; `get::<Value>` does not.
        key.rsplit_once('.')
            .and_then(|(parent, leaf)| {
                let table = self.cfg.get_table(parent).ok()?;
                table.get(leaf)?.origin().map(str::to_string)
            })
            .unwrap_or_else(|| DEFAULT_SOURCE.to_string())
    }

    fn missing(&mut self, key: &str, message: impl Into<String>) {
        self.problems.push(ConfigProblem {
            key: key.to_string(),
            source: NOT_SET.into(),
            message: message.into(),
        });
    }

    fn problem(&mut self, key: &str, message: impl Into<String>) {
        let source = self.source_of(key);
        self.problems.push(ConfigProblem {
            key: key.to_string(),
            source,
            message: message.into(),
        });
    }

    /// Runs `parse` on a present, non-empty value; records a problem on error.
    fn opt<T>(
        &mut self,
        key: &str,
        value: &Option<String>,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        let text = value.as_deref().map(str::trim).filter(|s| !s.is_empty())?;
        match parse(text) {
            Ok(v) => Some(v),
            Err(message) => {
                self.problem(key, message);
                None
            }
        }
    }

    fn list<T>(
        &mut self,
        key: &str,
        values: &[String],
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Vec<T> {
        let mut out = Vec::new();
        for v in values.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
            match parse(v) {
                Ok(x) => out.push(x),
                Err(m) => self.problem(key, m),
            }
        }
        out
    }

    fn span(&mut self, key: &str, value: &Option<String>, default: Duration) -> Duration {
        self.opt(key, value, parse_span).unwrap_or(default)
    }
}

fn parse_span(s: &str) -> Result<Duration, String> {
    match parse_span_seconds(s) {
        Some(0) | None => Err(format!(
            "`{s}` is not a duration: use forms like 30s, 10m, 1h or PT5M"
        )),
        Some(secs) => Ok(Duration::from_secs(secs)),
    }
}

fn parse_url(s: &str) -> Result<Url, String> {
    let url = Url::parse(s).map_err(|e| format!("`{s}` is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!("`{s}` is not an http(s) URL with a host"));
    }
    Ok(url)
}

fn parse_snowflake(s: &str) -> Result<Snowflake, String> {
    Snowflake::parse(s).map_err(|e| e.to_string())
}

fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    s.parse()
        .map_err(|_| format!("`{s}` is not a listen address: use host:port such as 0.0.0.0:8080"))
}

fn parse_public_key(s: &str) -> Result<[u8; 32], String> {
    let bytes = hex::decode(s).map_err(|_| "the public key is not hex".to_string())?;
    bytes
        .try_into()
        .map_err(|_| "the public key must be 32 bytes (64 hex digits)".to_string())
}

impl Settings {
    /// Loads and checks settings from `sources`.
    pub fn load(sources: &Sources) -> Result<Settings, ConfigErrors> {
        let mut builder = config::Config::builder().add_source(config::File::from_str(
            DEFAULT_TOML,
            config::FileFormat::Toml,
        ));
        if let Some(file) = &sources.file {
            builder = builder.add_source(config::File::from(file.clone()).required(true));
        }
        let mut env = config::Environment::with_prefix(ENV_PREFIX)
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .list_separator(",")
            .ignore_empty(true);
        for key in LIST_KEYS {
            env = env.with_list_parse_key(key);
        }
        if let Some(vars) = &sources.env {
            env = env.source(Some(vars.clone().into_iter().collect()));
        }
        let cfg = builder.add_source(env).build().map_err(|e| {
            ConfigErrors(vec![ConfigProblem {
                key: "(file)".into(),
                source: sources
                    .file
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| DEFAULT_SOURCE.into()),
                message: e.to_string(),
            }])
        })?;
        let raw: Raw = cfg.clone().try_deserialize().map_err(|e| {
            ConfigErrors(vec![ConfigProblem {
                key: "(structure)".into(),
                source: "the configuration".into(),
                message: e.to_string(),
            }])
        })?;
        let mut c = Checker {
            cfg: &cfg,
            problems: Vec::new(),
        };
        let settings = Self::check(&mut c, raw);
        if c.problems.is_empty() {
            Ok(settings)
        } else {
            Err(ConfigErrors(c.problems))
        }
    }

    fn check(c: &mut Checker<'_>, raw: Raw) -> Settings {
        let d = raw.discord;
        let discord = DiscordSettings {
            token: d
                .token
                .filter(|t| !t.trim().is_empty())
                .map(|t| SecretString::from(t.trim().to_string())),
            application_id: c.opt("discord.application_id", &d.application_id, parse_snowflake),
            guild_id: c.opt("discord.guild_id", &d.guild_id, parse_snowflake),
            base_url: c
                .opt("discord.base_url", &d.base_url, parse_url)
                .unwrap_or_else(|| Url::parse("https://discord.com").expect("valid literal")),
            mode: c
                .opt("discord.mode", &d.mode, |s| match s {
                    "gateway" => Ok(DiscordMode::Gateway),
                    "http" => Ok(DiscordMode::Http),
                    _ => Err(format!("`{s}` is not a mode: use gateway or http")),
                })
                .unwrap_or(DiscordMode::Gateway),
            public_key: c.opt("discord.public_key", &d.public_key, parse_public_key),
            audit_channel_id: c.opt(
                "discord.audit_channel_id",
                &d.audit_channel_id,
                parse_snowflake,
            ),
            admin_role_ids: c.list("discord.admin_role_ids", &d.admin_role_ids, |s| {
                RoleId::parse(s).map_err(|e| e.to_string())
            }),
        };
        let http = HttpSettings {
            listen: c
                .opt("http.listen", &raw.http.listen, parse_listen)
                .unwrap_or_else(|| "0.0.0.0:8080".parse().expect("valid literal")),
        };
        let ops = OpsSettings {
            listen: c
                .opt("ops.listen", &raw.ops.listen, parse_listen)
                .unwrap_or_else(|| "0.0.0.0:9090".parse().expect("valid literal")),
        };
        let a = raw.azure;
        let cloud = c
            .opt("azure.cloud", &a.cloud, |s| match s {
                "public" => Ok(AzureCloud::Public),
                "usgov" => Ok(AzureCloud::UsGov),
                "china" => Ok(AzureCloud::China),
                "custom" => Ok(AzureCloud::Custom),
                _ => Err(format!(
                    "`{s}` is not a cloud: use public, usgov, china or custom"
                )),
            })
            .unwrap_or(AzureCloud::Public);
        let azure = AzureSettings {
            cloud,
            arm_endpoint: c.opt("azure.arm_endpoint", &a.arm_endpoint, parse_url),
            authority_host: c.opt("azure.authority_host", &a.authority_host, parse_url),
            credential: c
                .opt("azure.credential", &a.credential, |s| match s {
                    "managed_identity" => Ok(CredentialKind::ManagedIdentity),
                    "workload_identity" => Ok(CredentialKind::WorkloadIdentity),
                    "client_secret" => Ok(CredentialKind::ClientSecret),
                    "azure_cli" => Ok(CredentialKind::AzureCli),
                    _ => Err(format!(
                        "`{s}` is not a credential: use managed_identity, workload_identity, client_secret or azure_cli"
                    )),
                })
                .unwrap_or(CredentialKind::ManagedIdentity),
            tenant_id: a.tenant_id.filter(|s| !s.trim().is_empty()),
            client_id: a.client_id.filter(|s| !s.trim().is_empty()),
            client_secret: a
                .client_secret
                .filter(|s| !s.trim().is_empty())
                .map(SecretString::from),
            managed_identity_client_id: a.managed_identity_client_id.filter(|s| !s.trim().is_empty()),
            managed_identity_endpoint: c.opt(
                "azure.managed_identity_endpoint",
                &a.managed_identity_endpoint,
                parse_url,
            ),
            subscriptions: c.list("azure.subscriptions", &a.subscriptions, |s| {
                SubscriptionId::parse(s).map_err(|e| e.to_string())
            }),
            index_refresh: c.span("azure.index_refresh", &a.index_refresh, Duration::from_secs(600)),
            reconcile_interval: c.span(
                "azure.reconcile_interval",
                &a.reconcile_interval,
                Duration::from_secs(300),
            ),
            request_timeout: c.span("azure.request_timeout", &a.request_timeout, Duration::from_secs(30)),
            enable: PolicyDefaults {
                ports: c.list("azure.enable.ports", &a.enable.ports, |s| {
                    s.parse::<u16>()
                        .ok()
                        .filter(|p| *p != 0)
                        .ok_or_else(|| format!("`{s}` is not a port: use numbers from 1 to 65535"))
                }),
                max_duration: c
                    .opt("azure.enable.max_duration", &a.enable.max_duration, |s| {
                        AccessDuration::parse(s).map_err(|e| e.to_string())
                    })
                    .unwrap_or_else(|| AccessDuration::from_minutes(180).expect("in range")),
                source: c
                    .opt("azure.enable.source", &a.enable.source, |s| {
                        SourcePrefix::parse(s).map_err(|e| e.to_string())
                    })
                    .unwrap_or(SourcePrefix::Any),
            },
        };
        if azure.cloud == AzureCloud::Custom {
            if azure.arm_endpoint.is_none() {
                c.missing("azure.arm_endpoint", "required when azure.cloud is custom");
            }
            if azure.authority_host.is_none() {
                c.problem(
                    "azure.authority_host",
                    "required when azure.cloud is custom",
                );
            }
        }
        if azure.credential == CredentialKind::ClientSecret {
            for (key, missing) in [
                ("azure.tenant_id", azure.tenant_id.is_none()),
                ("azure.client_id", azure.client_id.is_none()),
                ("azure.client_secret", azure.client_secret.is_none()),
            ] {
                if missing {
                    c.missing(key, "required when azure.credential is client_secret");
                }
            }
        }
        let database = DatabaseSettings {
            url: raw
                .database
                .url
                .filter(|u| !u.trim().is_empty())
                .unwrap_or_else(|| "sqlite://drawbridge.db".into()),
        };
        if !database.url.starts_with("sqlite:") {
            c.problem("database.url", "only sqlite: URLs are supported for now");
        }
        let reminders = ReminderSettings {
            before: c.list("reminders.before", &raw.reminders.before, parse_span),
        };
        let mut alias_list: Vec<(String, Vec<u16>)> = Vec::new();
        for (name, value) in &raw.ports.aliases {
            let key = format!("ports.aliases.{name}");
            let items = match value {
                RawAlias::Number(n) => vec![n.to_string()],
                RawAlias::One(s) => s.split(',').map(str::to_string).collect(),
                RawAlias::Many(v) => v.iter().map(RawScalar::text).collect(),
            };
            let nums: Vec<u16> = c.list(&key, &items, |s| {
                s.parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| format!("`{s}` is not a port: use numbers from 1 to 65535"))
            });
            alias_list.push((name.clone(), nums));
        }
        let ports = match PortAliases::with_aliases(
            alias_list.iter().map(|(n, p)| (n.as_str(), p.as_slice())),
        ) {
            Ok(p) => p,
            Err(e) => {
                let key = match &e {
                    AliasError::BadName(n) | AliasError::ShadowsBuiltIn(n) => {
                        format!("ports.aliases.{n}")
                    }
                    AliasError::BadPorts { name, .. } => format!("ports.aliases.{name}"),
                };
                c.problem(&key, e.to_string());
                PortAliases::default()
            }
        };
        let logging = LoggingSettings {
            format: c
                .opt("logging.format", &raw.logging.format, |s| match s {
                    "pretty" => Ok(LogFormat::Pretty),
                    "json" => Ok(LogFormat::Json),
                    _ => Err(format!("`{s}` is not a log format: use pretty or json")),
                })
                .unwrap_or(LogFormat::Pretty),
            filter: raw.logging.filter.unwrap_or_else(|| "info".into()),
        };
        Settings {
            discord,
            http,
            ops,
            azure,
            database,
            reminders,
            ports,
            logging,
        }
    }

    /// What `drawbridge run` needs beyond well-formed values: the keys that
    /// must be set to talk to Discord and Azure.
    pub fn problems_for_run(&self) -> Vec<ConfigProblem> {
        let mut out = Vec::new();
        let mut need = |key: &str, missing: bool, why: &str| {
            if missing {
                out.push(ConfigProblem {
                    key: key.into(),
                    source: NOT_SET.into(),
                    message: why.into(),
                });
            }
        };
        need(
            "discord.token",
            self.discord.token.is_none(),
            "the bot token is missing: set DRAWBRIDGE__DISCORD__TOKEN",
        );
        need(
            "discord.application_id",
            self.discord.application_id.is_none(),
            "the application id is missing",
        );
        need(
            "discord.audit_channel_id",
            self.discord.audit_channel_id.is_none(),
            "the audit channel is missing: every event is posted there",
        );
        need(
            "discord.public_key",
            self.discord.mode == DiscordMode::Http && self.discord.public_key.is_none(),
            "required in http mode to verify Discord's signatures",
        );
        need(
            "azure.subscriptions",
            self.azure.subscriptions.is_empty(),
            "no subscription to index: list the subscription ids whose JIT policies Drawbridge serves",
        );
        need(
            "discord.admin_role_ids",
            self.discord.admin_role_ids.is_empty(),
            "no admin role: nobody could manage mappings from Discord",
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Sources {
        Sources {
            file: None,
            env: Some(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<HashMap<_, _>>(),
            ),
        }
    }

    #[test]
    fn defaults_load_without_problems() {
        let s = Settings::load(&env(&[])).unwrap();
        assert_eq!(s.discord.mode, DiscordMode::Gateway);
        assert_eq!(s.discord.base_url.as_str(), "https://discord.com/");
        assert_eq!(s.azure.cloud, AzureCloud::Public);
        assert_eq!(s.azure.index_refresh, Duration::from_secs(600));
        assert_eq!(s.reminders.before, vec![Duration::from_secs(600)]);
        assert_eq!(s.azure.enable.ports, vec![22, 3389, 5985, 5986]);
        assert_eq!(s.database.url, "sqlite://drawbridge.db");
    }

    #[test]
    fn environment_overrides_with_lists_and_numeric_ids() {
        let s = Settings::load(&env(&[
            ("DRAWBRIDGE__DISCORD__TOKEN", "1234567890"),
            ("DRAWBRIDGE__DISCORD__ADMIN_ROLE_IDS", "111,222"),
            ("DRAWBRIDGE__DISCORD__GUILD_ID", "4004"),
            ("DRAWBRIDGE__AZURE__ENABLE__PORTS", "22"),
            (
                "DRAWBRIDGE__AZURE__SUBSCRIPTIONS",
                "00000000-0000-0000-0000-00000000000a,00000000-0000-0000-0000-00000000000b",
            ),
            ("DRAWBRIDGE__REMINDERS__BEFORE", "10m,2m"),
        ]))
        .unwrap();
        assert_eq!(s.discord.token.unwrap().expose_secret(), "1234567890");
        assert_eq!(s.discord.admin_role_ids.len(), 2);
        assert_eq!(s.discord.guild_id.unwrap().get(), 4004);
        assert_eq!(s.azure.subscriptions.len(), 2);
        assert_eq!(s.reminders.before.len(), 2);
        assert_eq!(s.azure.enable.ports, vec![22]);
    }

    #[test]
    fn a_single_numeric_value_is_a_one_item_list() {
        let s = Settings::load(&env(&[("DRAWBRIDGE__DISCORD__ADMIN_ROLE_IDS", "900")])).unwrap();
        assert_eq!(
            s.discord.admin_role_ids,
            vec![RoleId::parse("900").unwrap()]
        );
    }

    #[test]
    fn every_problem_is_reported_at_once_with_key_and_source() {
        let err = Settings::load(&env(&[
            ("DRAWBRIDGE__DISCORD__GUILD_ID", "not-a-number"),
            ("DRAWBRIDGE__AZURE__CLOUD", "mars"),
            ("DRAWBRIDGE__AZURE__INDEX_REFRESH", "often"),
            ("DRAWBRIDGE__DISCORD__ADMIN_ROLE_IDS", "111,abc"),
            ("DRAWBRIDGE__DISCORD__MODE", "carrier-pigeon"),
        ]))
        .unwrap_err();
        let keys: Vec<&str> = err.0.iter().map(|p| p.key.as_str()).collect();
        for key in [
            "discord.guild_id",
            "azure.cloud",
            "azure.index_refresh",
            "discord.admin_role_ids",
            "discord.mode",
        ] {
            assert!(keys.contains(&key), "{key} missing from {keys:?}");
        }
        assert!(err.0.iter().all(|p| p.source == "the environment"), "{err}");
        assert!(err.to_string().contains("`mars` is not a cloud"));
    }

    #[test]
    fn file_values_name_the_file_and_custom_cloud_needs_endpoints() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bot.toml");
        std::fs::write(
            &path,
            "[azure]\ncloud = \"custom\"\ncredential = \"client_secret\"\n[ports.aliases]\nssh = 2222\n",
        )
        .unwrap();
        let err = Settings::load(&Sources {
            file: Some(path.clone()),
            env: Some(HashMap::new()),
        })
        .unwrap_err();
        let text = err.to_string();
        for want in [
            "azure.arm_endpoint",
            "azure.authority_host",
            "azure.client_secret",
            "azure.tenant_id",
            "ports.aliases",
        ] {
            assert!(text.contains(want), "{want} missing from {text}");
        }
        assert!(text.contains("bot.toml"), "{text}");
    }

    #[test]
    fn secrets_do_not_show_in_debug_output() {
        let s = Settings::load(&env(&[
            ("DRAWBRIDGE__DISCORD__TOKEN", "super-secret-token"),
            ("DRAWBRIDGE__AZURE__CLIENT_SECRET", "super-secret-client"),
        ]))
        .unwrap();
        let debug = format!("{s:?}");
        assert!(!debug.contains("super-secret-token"));
        assert!(!debug.contains("super-secret-client"));
    }

    #[test]
    fn run_needs_token_ids_and_subscriptions() {
        let s = Settings::load(&env(&[])).unwrap();
        let keys: Vec<String> = s.problems_for_run().into_iter().map(|p| p.key).collect();
        assert!(keys.contains(&"discord.token".to_string()));
        assert!(keys.contains(&"azure.subscriptions".to_string()));
    }
}
