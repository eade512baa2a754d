//! Checking: the raw values of each section become typed settings, and each
//! bad value becomes a [`ConfigProblem`] naming its key and where it came
//! from, so that one run reports every problem. One function per section.

use std::net::SocketAddr;
use std::time::Duration;

use secrecy::SecretString;
use url::Url;

use super::raw::{
    Raw, RawAlias, RawAzure, RawDatabase, RawDiscord, RawEnable, RawLimits, RawLogging, RawPorts,
    RawScalar,
};
use super::{
    AzureSettings, ConfigProblem, DEFAULT_SOURCE, DatabaseSettings, DiscordMode, DiscordSettings,
    HttpSettings, LogFormat, LoggingSettings, NOT_SET, OpsSettings, ReminderSettings,
    ReportSettings, Settings,
};
use crate::azure::{AzureCloud, CredentialKind};
use crate::domain::duration::parse_span_seconds;
use crate::domain::port::{AliasError, PortAliases};
use crate::domain::rate::RateLimit;
use crate::domain::report::weekly::WeeklySlot;
use crate::domain::{
    AccessDuration, PolicyDefaults, RoleId, Snowflake, SourcePrefix, SubscriptionId,
};

pub(super) struct Checker<'a> {
    pub(super) cfg: &'a config::Config,
    pub(super) problems: Vec<ConfigProblem>,
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

/// A token audience: an absolute URI, given without the `/.default` suffix of
/// a scope. Kept exactly as written: Entra issues the token for that identifier.
fn parse_audience(s: &str) -> Result<String, String> {
    if s.ends_with("/.default") {
        return Err(format!(
            "`{s}` is a scope, not an audience: leave out /.default"
        ));
    }
    match Url::parse(s) {
        Ok(url) if url.has_host() && !s.contains(char::is_whitespace) => Ok(s.to_owned()),
        _ => Err(format!(
            "`{s}` is not an audience: use an absolute URI such as https://management.azure.com"
        )),
    }
}

/// A trusted proxy: an address or a network.
fn parse_proxy(s: &str) -> Result<ipnet::IpNet, String> {
    match SourcePrefix::parse(s) {
        Ok(SourcePrefix::Net(net)) => Ok(net),
        Ok(SourcePrefix::Any) => Err(format!(
            "`{s}` would trust every address: list the proxies' addresses or networks"
        )),
        Err(e) => Err(e.to_string()),
    }
}

fn parse_snowflake(s: &str) -> Result<Snowflake, String> {
    Snowflake::parse(s).map_err(|e| e.to_string())
}

fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    s.parse()
        .map_err(|_| format!("`{s}` is not a listen address: use host:port such as 0.0.0.0:8080"))
}

fn parse_flag(s: &str) -> Result<bool, String> {
    match s {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(format!("`{s}` is not a flag: use true or false")),
    }
}

/// The ARM endpoint receives the bearer token with every call, so plain
/// http is refused except on a loopback host (a local emulator or proxy).
fn parse_arm_endpoint(s: &str) -> Result<Url, String> {
    let url = parse_url(s)?;
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        None => false,
    };
    if url.scheme() == "http" && !loopback {
        return Err(format!(
            "`{s}` is plain http: use https (http is allowed only on a loopback host such as 127.0.0.1), or the ARM token would travel in clear"
        ));
    }
    Ok(url)
}

fn parse_public_key(s: &str) -> Result<[u8; 32], String> {
    let bytes = hex::decode(s).map_err(|_| "the public key is not hex".to_string())?;
    bytes
        .try_into()
        .map_err(|_| "the public key must be 32 bytes (64 hex digits)".to_string())
}

pub(super) fn check(c: &mut Checker<'_>, raw: Raw) -> Settings {
    Settings {
        discord: discord(c, raw.discord),
        http: HttpSettings {
            listen: listen(c, "http.listen", &raw.http.listen, "0.0.0.0:8080"),
            healthz: c
                .opt(
                    "http.healthz",
                    &raw.http.healthz.as_ref().map(RawScalar::text),
                    parse_flag,
                )
                .unwrap_or(false),
            public_url: c.opt("http.public_url", &raw.http.public_url, parse_url),
            trusted_proxies: c.list(
                "http.trusted_proxies",
                &raw.http.trusted_proxies,
                parse_proxy,
            ),
        },
        ops: OpsSettings {
            listen: listen(c, "ops.listen", &raw.ops.listen, "127.0.0.1:9090"),
            metrics_refresh: c.span(
                "ops.metrics_refresh",
                &raw.ops.metrics_refresh,
                Duration::from_secs(15),
            ),
        },
        azure: azure(c, raw.azure),
        database: database(c, raw.database),
        reminders: ReminderSettings {
            before: c.list("reminders.before", &raw.reminders.before, parse_span),
        },
        report: ReportSettings {
            weekly: c
                .opt("report.weekly", &raw.report.weekly, WeeklySlot::parse)
                .flatten(),
        },
        limits: limits(c, &raw.limits),
        ports: ports(c, &raw.ports),
        logging: logging(c, raw.logging),
    }
}

fn limits(c: &mut Checker<'_>, l: &RawLimits) -> RateLimit {
    let defaults = RateLimit::default();
    let mut count = |key: &str, value: &Option<RawScalar>, default: u32| {
        c.opt(key, &value.as_ref().map(RawScalar::text), parse_count)
            .unwrap_or(default)
    };
    RateLimit {
        per_minute: count(
            "limits.requests_per_minute",
            &l.requests_per_minute,
            defaults.per_minute,
        ),
        burst: count("limits.burst", &l.burst, defaults.burst),
    }
}

fn parse_count(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(n) if (1..=10_000).contains(&n) => Ok(n),
        _ => Err("must be a whole number from 1 to 10000".into()),
    }
}

fn discord(c: &mut Checker<'_>, d: RawDiscord) -> DiscordSettings {
    DiscordSettings {
        token: secret(c, "discord.token", d.token, d.token_file),
        application_id: c.opt("discord.application_id", &d.application_id, parse_snowflake),
        guild_id: c.opt("discord.guild_id", &d.guild_id, parse_snowflake),
        register_globally: c
            .opt(
                "discord.register_globally",
                &d.register_globally.as_ref().map(RawScalar::text),
                parse_flag,
            )
            .unwrap_or(false),
        base_url: c
            .opt("discord.base_url", &d.base_url, parse_url)
            .unwrap_or_else(|| Url::parse("https://discord.com").expect("valid literal")),
        mode: c
            .opt("discord.mode", &d.mode, parse_mode)
            .unwrap_or(DiscordMode::Gateway),
        public_key: c.opt("discord.public_key", &d.public_key, parse_public_key),
        audit_channel_id: c.opt(
            "discord.audit_channel_id",
            &d.audit_channel_id,
            parse_snowflake,
        ),
        approvals_channel_id: c.opt(
            "discord.approvals_channel_id",
            &d.approvals_channel_id,
            parse_snowflake,
        ),
        alert_role_id: c.opt("discord.alert_role_id", &d.alert_role_id, |s| {
            RoleId::parse(s).map_err(|e| e.to_string())
        }),
        admin_role_ids: c.list("discord.admin_role_ids", &d.admin_role_ids, |s| {
            RoleId::parse(s).map_err(|e| e.to_string())
        }),
        gateway_lease_ttl: c
            .opt("discord.gateway_lease_ttl", &d.gateway_lease_ttl, |s| {
                parse_span(s).and_then(|ttl| {
                    if ttl < Duration::from_secs(2) {
                        Err(format!("`{s}` is too short: at least 2s"))
                    } else {
                        Ok(ttl)
                    }
                })
            })
            .unwrap_or(crate::service::replica::GATEWAY_TTL),
    }
}

/// A secret given as `key` or read from the file `key_file` (a Kubernetes
/// secret mount); surrounding whitespace, such as a final newline, is
/// dropped. Problems name the path, never the content.
fn secret(
    c: &mut Checker<'_>,
    key: &str,
    value: Option<String>,
    file: Option<String>,
) -> Option<SecretString> {
    let value = value.filter(|v| !v.trim().is_empty());
    let file = file.filter(|f| !f.trim().is_empty());
    let file_key = format!("{key}_file");
    match (value, file) {
        (Some(_), Some(_)) => {
            c.problem(&file_key, format!("set {key} or {file_key}, not both"));
            None
        }
        (Some(v), None) => Some(SecretString::from(v.trim().to_owned())),
        (None, Some(path)) => match std::fs::read_to_string(path.trim()) {
            Ok(text) if !text.trim().is_empty() => Some(SecretString::from(text.trim().to_owned())),
            Ok(_) => {
                c.problem(&file_key, format!("{} is empty", path.trim()));
                None
            }
            Err(e) => {
                c.problem(
                    &file_key,
                    format!("cannot read {}: {}", path.trim(), e.kind()),
                );
                None
            }
        },
        (None, None) => None,
    }
}

fn listen(c: &mut Checker<'_>, key: &str, raw: &Option<String>, default: &str) -> SocketAddr {
    c.opt(key, raw, parse_listen)
        .unwrap_or_else(|| default.parse().expect("valid literal"))
}

fn azure(c: &mut Checker<'_>, a: RawAzure) -> AzureSettings {
    // Given but unreadable is reported as such, not also as missing.
    let audience_given = a
        .arm_audience
        .as_deref()
        .is_some_and(|s| !s.trim().is_empty());
    let azure = AzureSettings {
        cloud: c
            .opt("azure.cloud", &a.cloud, parse_cloud)
            .unwrap_or(AzureCloud::Public),
        arm_endpoint: c.opt("azure.arm_endpoint", &a.arm_endpoint, parse_arm_endpoint),
        authority_host: c.opt("azure.authority_host", &a.authority_host, parse_url),
        arm_audience: c.opt("azure.arm_audience", &a.arm_audience, parse_audience),
        credential: c
            .opt("azure.credential", &a.credential, parse_credential)
            .unwrap_or(CredentialKind::ManagedIdentity),
        tenant_id: a.tenant_id.filter(|s| !s.trim().is_empty()),
        client_id: a.client_id.filter(|s| !s.trim().is_empty()),
        client_secret: secret(
            c,
            "azure.client_secret",
            a.client_secret,
            a.client_secret_file,
        ),
        managed_identity_client_id: a
            .managed_identity_client_id
            .filter(|s| !s.trim().is_empty()),
        managed_identity_endpoint: c.opt(
            "azure.managed_identity_endpoint",
            &a.managed_identity_endpoint,
            parse_url,
        ),
        subscriptions: c.list("azure.subscriptions", &a.subscriptions, |s| {
            SubscriptionId::parse(s).map_err(|e| e.to_string())
        }),
        index_refresh: c.span(
            "azure.index_refresh",
            &a.index_refresh,
            Duration::from_secs(600),
        ),
        reconcile_interval: c.span(
            "azure.reconcile_interval",
            &a.reconcile_interval,
            Duration::from_secs(300),
        ),
        request_timeout: c.span(
            "azure.request_timeout",
            &a.request_timeout,
            Duration::from_secs(30),
        ),
        requestor_names: a
            .requestor_names
            .iter()
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty())
            .collect(),
        enable: enable(c, a.enable),
    };
    azure_requirements(c, &azure, audience_given);
    azure
}

/// The keys a cloud or a credential kind needs.
fn azure_requirements(c: &mut Checker<'_>, azure: &AzureSettings, audience_given: bool) {
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
        if !audience_given {
            c.missing(
                "azure.arm_audience",
                "required when azure.cloud is custom: the token audience your Resource Manager accepts (for Azure Stack Hub, its management audience, not the endpoint URL)",
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
}

fn enable(c: &mut Checker<'_>, e: RawEnable) -> PolicyDefaults {
    PolicyDefaults {
        ports: c.list("azure.enable.ports", &e.ports, parse_port),
        max_duration: c
            .opt("azure.enable.max_duration", &e.max_duration, |s| {
                AccessDuration::parse(s).map_err(|e| e.to_string())
            })
            .unwrap_or_else(|| AccessDuration::from_minutes(180).expect("in range")),
        source: c
            .opt("azure.enable.source", &e.source, |s| {
                SourcePrefix::parse(s).map_err(|e| e.to_string())
            })
            .unwrap_or(SourcePrefix::Any),
    }
}

fn database(c: &mut Checker<'_>, d: RawDatabase) -> DatabaseSettings {
    let url = d
        .url
        .filter(|u| !u.trim().is_empty())
        .unwrap_or_else(|| "sqlite://drawbridge.db".into());
    let scheme = url.split_once(':').map(|(s, _)| s);
    if !matches!(scheme, Some("sqlite" | "postgres" | "postgresql")) {
        // Only the scheme: the rest may hold a password.
        c.problem(
            "database.url",
            format!(
                "the scheme `{}` is not supported: use sqlite://PATH or postgres://USER@HOST/DATABASE",
                scheme.unwrap_or_default()
            ),
        );
    }
    let max_connections = c
        .opt(
            "database.max_connections",
            &d.max_connections.as_ref().map(RawScalar::text),
            parse_pool_size,
        )
        .unwrap_or(10);
    DatabaseSettings {
        url,
        max_connections,
    }
}

fn parse_pool_size(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(n) if (1..=1000).contains(&n) => Ok(n),
        _ => Err("must be a whole number from 1 to 1000".into()),
    }
}

/// The built-in port names plus `[ports.aliases]`.
fn ports(c: &mut Checker<'_>, raw: &RawPorts) -> PortAliases {
    let mut alias_list: Vec<(String, Vec<u16>)> = Vec::new();
    for (name, value) in &raw.aliases {
        let key = format!("ports.aliases.{name}");
        let items = match value {
            RawAlias::Number(n) => vec![n.to_string()],
            RawAlias::One(s) => s.split(',').map(str::to_string).collect(),
            RawAlias::Many(v) => v.iter().map(RawScalar::text).collect(),
        };
        let nums: Vec<u16> = c.list(&key, &items, parse_port);
        alias_list.push((name.clone(), nums));
    }
    match PortAliases::with_aliases(alias_list.iter().map(|(n, p)| (n.as_str(), p.as_slice()))) {
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
    }
}

fn logging(c: &mut Checker<'_>, l: RawLogging) -> LoggingSettings {
    LoggingSettings {
        format: c
            .opt("logging.format", &l.format, |s| match s {
                "pretty" => Ok(LogFormat::Pretty),
                "json" => Ok(LogFormat::Json),
                _ => Err(format!("`{s}` is not a log format: use pretty or json")),
            })
            .unwrap_or(LogFormat::Pretty),
        filter: l.filter.unwrap_or_else(|| "info".into()),
    }
}

fn parse_port(s: &str) -> Result<u16, String> {
    s.parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("`{s}` is not a port: use numbers from 1 to 65535"))
}

fn parse_mode(s: &str) -> Result<DiscordMode, String> {
    match s {
        "gateway" => Ok(DiscordMode::Gateway),
        "http" => Ok(DiscordMode::Http),
        _ => Err(format!("`{s}` is not a mode: use gateway or http")),
    }
}

fn parse_cloud(s: &str) -> Result<AzureCloud, String> {
    match s {
        "public" => Ok(AzureCloud::Public),
        "usgov" => Ok(AzureCloud::UsGov),
        "china" => Ok(AzureCloud::China),
        "custom" => Ok(AzureCloud::Custom),
        _ => Err(format!(
            "`{s}` is not a cloud: use public, usgov, china or custom"
        )),
    }
}

fn parse_credential(s: &str) -> Result<CredentialKind, String> {
    match s {
        "managed_identity" => Ok(CredentialKind::ManagedIdentity),
        "workload_identity" => Ok(CredentialKind::WorkloadIdentity),
        "client_secret" => Ok(CredentialKind::ClientSecret),
        "azure_cli" => Ok(CredentialKind::AzureCli),
        _ => Err(format!(
            "`{s}` is not a credential: use managed_identity, workload_identity, client_secret or azure_cli"
        )),
    }
}
