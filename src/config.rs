//! Settings: `config/default.toml` (built into the binary), then the file
//! given with `--config`, then `DRAWBRIDGE__SECTION__KEY` environment
//! variables. [`Settings::load`] checks every key and reports every problem at
//! once, each naming the key and the source it came from.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::SecretString;
use url::Url;

use crate::azure::{AzureCloud, CredentialKind};
use crate::domain::port::PortAliases;
use crate::domain::{PolicyDefaults, RoleId, Snowflake, SubscriptionId};

mod check;
mod raw;
mod unknown;

pub use unknown::{UnknownKey, known_keys, unknown_keys};

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
    "azure.requestor_names",
    "reminders.before",
    "http.trusted_proxies",
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable.
    Pretty,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Clone)]
pub struct DiscordSettings {
    /// The bot token (secret).
    pub token: Option<SecretString>,
    pub application_id: Option<Snowflake>,
    /// The one guild Drawbridge serves: commands are registered there, and
    /// interactions from anywhere else are refused.
    pub guild_id: Option<Snowflake>,
    /// Register the commands globally (every guild the bot is in, never in
    /// DMs) instead: an explicit opt-in, for when `guild_id` is not set.
    pub register_globally: bool,
    /// Discord's base URL; tests point it at a fake.
    pub base_url: Url,
    /// Gateway or HTTP interactions.
    pub mode: DiscordMode,
    /// HTTP mode: the Ed25519 public key, 32 bytes.
    pub public_key: Option<[u8; 32]>,
    /// Where audit events go.
    pub audit_channel_id: Option<Snowflake>,
    /// Where approval and break-glass review cards go (default: the audit
    /// channel).
    pub approvals_channel_id: Option<Snowflake>,
    /// The role pinged in the audit channel when break-glass is used.
    pub alert_role_id: Option<RoleId>,
    /// Who may use `/jit-admin`.
    pub admin_role_ids: Vec<RoleId>,
    /// Gateway mode with several replicas: how long the gateway lease
    /// outlives its holder's last renewal, which bounds a standby's
    /// takeover ([`crate::service::replica::GatewayTimings`]).
    pub gateway_lease_ttl: Duration,
}

#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// Listen address of the interactions endpoint.
    pub listen: SocketAddr,
    /// Whether that listener also answers `GET /healthz` (a load
    /// balancer's probe); the rest of the ops endpoints never go there.
    pub healthz: bool,
    /// The address members reach this listener at, for IP capture links
    /// (`{public_url}/ip/{token}`). Unset: no links (and in gateway mode,
    /// no listener).
    pub public_url: Option<Url>,
    /// Reverse proxies whose `X-Forwarded-For` the IP page believes.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

#[derive(Debug, Clone)]
pub struct OpsSettings {
    /// Listen address of /healthz, /readyz, /metrics, in both modes.
    pub listen: SocketAddr,
    /// How often the gauges of /metrics are read from the database (a
    /// scrape never queries it).
    pub metrics_refresh: Duration,
}

#[derive(Debug, Clone)]
pub struct AzureSettings {
    pub cloud: AzureCloud,
    /// Overrides the cloud's ARM endpoint.
    pub arm_endpoint: Option<Url>,
    /// Overrides the cloud's Entra authority host.
    pub authority_host: Option<Url>,
    /// Overrides the cloud's ARM token audience (required with `custom`).
    pub arm_audience: Option<String>,
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
    /// The names Azure may write as `requestor` on Drawbridge's own
    /// requests (a UPN or the identity's display name), besides the ids its
    /// token names and the name Azure recorded on an earlier initiate.
    pub requestor_names: Vec<String>,
    /// What `/jit-admin enable` configures (`[azure.enable]`).
    pub enable: PolicyDefaults,
}

#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    /// sqlx database URL: `sqlite://PATH` or `postgres://USER@HOST/DB`.
    pub url: String,
    /// The most connections to a PostgreSQL server (each replica's own
    /// pool); SQLite ignores it.
    pub max_connections: u32,
}

impl DatabaseSettings {
    /// What [`crate::store::Store::open_with`] takes besides the URL.
    pub fn store_options(&self) -> crate::store::StoreOptions {
        crate::store::StoreOptions {
            max_connections: self.max_connections,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ReminderSettings {
    /// Offsets before the end of a grant.
    pub before: Vec<Duration>,
}

/// The weekly report in the audit channel.
#[derive(Debug, Clone, Default)]
pub struct ReportSettings {
    /// When it is posted (`report.weekly`); `None`: never (`off` or unset).
    pub weekly: Option<crate::domain::report::weekly::WeeklySlot>,
}

#[derive(Debug, Clone)]
pub struct LoggingSettings {
    pub format: LogFormat,
    /// tracing filter (RUST_LOG wins).
    pub filter: String,
}

/// All settings, checked: one field per section of the file.
#[derive(Debug, Clone)]
pub struct Settings {
    pub discord: DiscordSettings,
    pub http: HttpSettings,
    pub ops: OpsSettings,
    pub azure: AzureSettings,
    pub database: DatabaseSettings,
    pub reminders: ReminderSettings,
    pub report: ReportSettings,
    /// Each member's rate of `/jit`, `/jit-ip` and button presses.
    pub limits: crate::domain::rate::RateLimit,
    /// The built-in port names plus `[ports.aliases]`.
    pub ports: PortAliases,
    pub logging: LoggingSettings,
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

    /// No file, and these variables in place of the process environment.
    #[cfg(test)]
    pub(crate) fn env_only(pairs: &[(&str, &str)]) -> Self {
        Self {
            file: None,
            env: Some(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
        }
    }
}

impl Settings {
    /// Loads and checks settings from `sources`.
    pub fn load(sources: &Sources) -> Result<Settings, ConfigErrors> {
        let mut builder = config::Config::builder().add_source(config::File::from_str(
            DEFAULT_TOML,
            config::FileFormat::Toml,
        ));
        if let Some(file) = &sources.file {
            check_toml_syntax(file)?;
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
                message: redact_values(&e.to_string()),
            }])
        })?;
        let raw: raw::Raw = cfg.clone().try_deserialize().map_err(|e| {
            ConfigErrors(vec![ConfigProblem {
                key: "(structure)".into(),
                source: "the configuration".into(),
                message: redact_values(&e.to_string()),
            }])
        })?;
        let mut c = check::Checker {
            cfg: &cfg,
            problems: Vec::new(),
        };
        let settings = check::check(&mut c, raw);
        if c.problems.is_empty() {
            Ok(settings)
        } else {
            Err(ConfigErrors(c.problems))
        }
    }

    /// The effective configuration for the start-up audit event: what the
    /// bot runs with, so a changed setting shows in the audit log. Never a
    /// secret: the token and client secret appear only as whether they are
    /// set, and a database URL loses its password.
    pub fn audit_summary(&self) -> serde_json::Value {
        let d = &self.discord;
        let a = &self.azure;
        let text = |v: &Option<Url>| v.as_ref().map(Url::to_string);
        serde_json::json!({
            "discord": {
                "mode": format!("{:?}", d.mode).to_lowercase(),
                "application_id": d.application_id.map(|s| s.to_string()),
                "guild_id": d.guild_id.map(|s| s.to_string()),
                "base_url": d.base_url.to_string(),
                "audit_channel_id": d.audit_channel_id.map(|s| s.to_string()),
                "approvals_channel_id": d.approvals_channel_id.map(|s| s.to_string()),
                "alert_role_id": d.alert_role_id.map(|s| s.to_string()),
                "admin_role_ids": d.admin_role_ids.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
                "token_set": d.token.is_some(),
            },
            "http": {
                "listen": self.http.listen.to_string(),
                "healthz": self.http.healthz,
                "public_url": text(&self.http.public_url),
                "trusted_proxies": self.http.trusted_proxies.iter().map(ToString::to_string).collect::<Vec<_>>(),
            },
            "ops": {"listen": self.ops.listen.to_string()},
            "azure": {
                "cloud": format!("{:?}", a.cloud).to_lowercase(),
                "arm_endpoint": text(&a.arm_endpoint),
                "authority_host": text(&a.authority_host),
                "arm_audience": a.arm_audience,
                "credential": format!("{:?}", a.credential),
                "client_id": a.client_id,
                "client_secret_set": a.client_secret.is_some(),
                "subscriptions": a.subscriptions.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                "requestor_names": a.requestor_names,
            },
            "database": without_password(&self.database.url),
            "reminders_before_secs": self.reminders.before.iter().map(Duration::as_secs).collect::<Vec<_>>(),
            "report_weekly": self.report.weekly.map_or_else(|| "off".to_owned(), |w| w.to_string()),
        })
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
            "the bot token is missing: set DRAWBRIDGE__DISCORD__TOKEN or DRAWBRIDGE__DISCORD__TOKEN_FILE",
        );
        need(
            "discord.application_id",
            self.discord.application_id.is_none(),
            "the application id is missing",
        );
        need(
            "discord.guild_id",
            self.discord.guild_id.is_none() && !self.discord.register_globally,
            "the guild is missing: commands are registered to it and interactions from anywhere else are refused \
             (set discord.register_globally = true only to register in every guild on purpose)",
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

    /// What the process environment must still supply: the workload identity
    /// credential reads its tenant, client and token file from `AZURE_*`
    /// variables unless the config gives them, and without them `run` would
    /// only fail at its first token ("no tenant ID specified").
    pub fn problems_for_environment(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Vec<ConfigProblem> {
        if self.azure.credential != CredentialKind::WorkloadIdentity {
            return Vec::new();
        }
        let set = |var: &str| env(var).is_some_and(|v| !v.trim().is_empty());
        [
            (
                "azure.tenant_id",
                "AZURE_TENANT_ID",
                self.azure.tenant_id.is_some(),
            ),
            (
                "azure.client_id",
                "AZURE_CLIENT_ID",
                self.azure.client_id.is_some(),
            ),
            (
                "AZURE_FEDERATED_TOKEN_FILE",
                "AZURE_FEDERATED_TOKEN_FILE",
                false,
            ),
        ]
        .into_iter()
        .filter(|(_, var, in_config)| !in_config && !set(var))
        .map(|(key, var, _)| ConfigProblem {
            key: key.into(),
            source: NOT_SET.into(),
            message: workload_message(key, var),
        })
        .collect()
    }
}

fn workload_message(key: &str, var: &str) -> String {
    if key == var {
        format!(
            "required when azure.credential is workload_identity: the environment variable {var} is not set (the workload identity webhook sets it when the pod's service account is federated)"
        )
    } else {
        format!(
            "required when azure.credential is workload_identity: set {key} or the environment variable {var}"
        )
    }
}

/// `url` with any password replaced by `***`.
fn without_password(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}

/// Parses the `--config` file as TOML first, so that a syntax error is
/// reported by line and column only. The parsers' own messages quote the
/// offending line, and that line may hold a secret.
fn check_toml_syntax(file: &Path) -> Result<(), ConfigErrors> {
    let problem = |message: String| {
        ConfigErrors(vec![ConfigProblem {
            key: "(file)".into(),
            source: file.display().to_string(),
            message,
        }])
    };
    let text = std::fs::read_to_string(file)
        .map_err(|e| problem(format!("cannot be read: {}", e.kind())))?;
    match toml::from_str::<toml::Table>(&text) {
        Ok(_) => Ok(()),
        Err(e) => {
            let at = e.span().map(|span| line_and_column(&text, span.start));
            Err(problem(match at {
                Some((line, column)) => format!(
                    "not valid TOML at line {line}, column {column} (the line is not shown: it may hold a secret)"
                ),
                None => "not valid TOML (the line is not shown: it may hold a secret)".into(),
            }))
        }
    }
}

/// 1-based line and column of byte `offset` in `text`.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Blanks what a parser quotes (`"…"` and `` `…` ``): the value of a line,
/// which may be a secret.
fn redact_values(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut open: Option<char> = None;
    for c in message.chars() {
        match open {
            Some(q) if c == q => {
                out.push('…');
                out.push(c);
                open = None;
            }
            Some(_) => {}
            None => {
                out.push(c);
                if c == '"' || c == '`' {
                    open = Some(c);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Sources {
        Sources::env_only(pairs)
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
    fn secrets_can_be_read_from_files_as_kubernetes_mounts_them() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        let secret = dir.path().join("secret");
        std::fs::write(&token, "from-a-file\n").unwrap();
        std::fs::write(&secret, "azure-secret").unwrap();
        let s = Settings::load(&env(&[
            ("DRAWBRIDGE__DISCORD__TOKEN_FILE", token.to_str().unwrap()),
            (
                "DRAWBRIDGE__AZURE__CLIENT_SECRET_FILE",
                secret.to_str().unwrap(),
            ),
        ]))
        .unwrap();
        assert_eq!(s.discord.token.unwrap().expose_secret(), "from-a-file");
        assert_eq!(
            s.azure.client_secret.unwrap().expose_secret(),
            "azure-secret"
        );
    }

    #[test]
    fn a_secret_file_that_is_missing_or_doubled_is_a_problem_without_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let err = Settings::load(&env(&[
            ("DRAWBRIDGE__DISCORD__TOKEN_FILE", missing.to_str().unwrap()),
            ("DRAWBRIDGE__AZURE__CLIENT_SECRET", "hunter2"),
            ("DRAWBRIDGE__AZURE__CLIENT_SECRET_FILE", "/etc/hostname"),
        ]))
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("discord.token_file") && text.contains("cannot read"),
            "{text}"
        );
        assert!(
            text.contains("azure.client_secret_file") && text.contains("not both"),
            "{text}"
        );
        assert!(!text.contains("hunter2"), "{text}");
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
            "azure.arm_audience (not set): required when azure.cloud is custom",
            "azure.client_secret",
            "azure.tenant_id",
            "ports.aliases",
        ] {
            assert!(text.contains(want), "{want} missing from {text}");
        }
        assert!(text.contains("bot.toml"), "{text}");
    }

    #[test]
    fn the_arm_audience_is_optional_kept_verbatim_and_checked() {
        let s = Settings::load(&env(&[(
            "DRAWBRIDGE__AZURE__ARM_ENDPOINT",
            "https://arm-proxy.internal.example",
        )]))
        .unwrap();
        assert_eq!(s.azure.arm_audience, None, "the cloud's own is used");

        let s = Settings::load(&env(&[(
            "DRAWBRIDGE__AZURE__ARM_AUDIENCE",
            "https://management.core.windows.net/",
        )]))
        .unwrap();
        assert_eq!(
            s.azure.arm_audience.as_deref(),
            Some("https://management.core.windows.net/")
        );

        for (bad, want) in [
            (
                "https://management.azure.com/.default",
                "leave out /.default",
            ),
            ("management.azure.com", "not an audience"),
            ("https://", "not an audience"),
        ] {
            let err = Settings::load(&env(&[("DRAWBRIDGE__AZURE__ARM_AUDIENCE", bad)]))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("azure.arm_audience (from the environment)") && err.contains(want),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn a_custom_cloud_with_its_audience_loads() {
        let s = Settings::load(&env(&[
            ("DRAWBRIDGE__AZURE__CLOUD", "custom"),
            (
                "DRAWBRIDGE__AZURE__ARM_ENDPOINT",
                "https://management.local.azurestack.external",
            ),
            (
                "DRAWBRIDGE__AZURE__AUTHORITY_HOST",
                "https://adfs.local.azurestack.external",
            ),
            (
                "DRAWBRIDGE__AZURE__ARM_AUDIENCE",
                "https://management.adfs.azurestack.local/4de154de-f8a8-4017-af41-df619da68155",
            ),
        ]))
        .unwrap();
        assert_eq!(s.azure.cloud, AzureCloud::Custom);
        assert!(s.azure.arm_audience.is_some());
    }

    #[test]
    fn the_arm_endpoint_must_be_https_except_on_loopback() {
        for ok in [
            "https://arm.example.com",
            "http://127.0.0.1:8443",
            "http://localhost:9000",
            "http://[::1]:9000",
        ] {
            let s = Settings::load(&env(&[("DRAWBRIDGE__AZURE__ARM_ENDPOINT", ok)]));
            assert!(s.is_ok(), "{ok}: {s:?}");
        }
        let err = Settings::load(&env(&[(
            "DRAWBRIDGE__AZURE__ARM_ENDPOINT",
            "http://arm-proxy.internal.example",
        )]))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("azure.arm_endpoint (from the environment)") && err.contains("use https"),
            "{err}"
        );
    }

    #[test]
    fn quoted_values_are_redacted_from_parser_messages() {
        assert_eq!(
            redact_values("invalid type: string \"hunter2\", expected `a b`"),
            "invalid type: string \"…\", expected `…`"
        );
        assert_eq!(line_and_column("a = 1\nb = x\n", 10), (2, 5));
    }

    #[test]
    fn the_audit_summary_holds_no_secret() {
        let s = Settings::load(&env(&[
            ("DRAWBRIDGE__DISCORD__TOKEN", "super-secret-token"),
            ("DRAWBRIDGE__AZURE__CLIENT_SECRET", "super-secret-client"),
        ]))
        .unwrap();
        let summary = s.audit_summary().to_string();
        assert!(!summary.contains("super-secret"), "{summary}");
        assert!(summary.contains(r#""token_set":true"#), "{summary}");
        assert_eq!(
            without_password("postgres://bot:super-secret-pw@db.internal/drawbridge"),
            "postgres://bot:***@db.internal/drawbridge"
        );
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
