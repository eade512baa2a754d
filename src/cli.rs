//! The command line: `drawbridge <command>`. Each command is a thin shell
//! over library code; `main` only parses, calls [`run`] and maps the result
//! to an exit code.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{Settings, Sources};
use crate::domain::MappingName;
use crate::domain::authorize::{AccessQuery, Decision, authorize};
use crate::domain::duration::parse_span_seconds;
use crate::domain::mapping::{MappingFile, MappingSpec};
use crate::domain::{AccessDuration, PortSpec, Reason, RoleId, SourcePrefix, VmIdentity, VmRef};
use crate::store::export::{Format, write_audit};
use crate::store::{AuditFilter, MappingChange, Store};

/// Drawbridge: Azure Just-In-Time VM access from Discord.
#[derive(Debug, Parser)]
#[command(name = "drawbridge", version, about)]
pub struct Cli {
    /// A configuration file layered over config/default.toml.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the bot.
    Run,
    /// Try Drawbridge locally: Azure emulator, temporary database, and this
    /// terminal as the chat (scriptable: pipe commands into it).
    Demo {
        /// Demo seconds per real second (default: 1 on a terminal, 0 for a
        /// script, where time moves only with `:advance`).
        #[arg(long, value_name = "N")]
        speed: Option<f64>,
    },
    /// Probe a running bot's /healthz (for container health checks); exits
    /// 0 when it answers.
    Healthcheck {
        /// The URL to probe (default: from the configuration: ops.listen in
        /// gateway mode, http.listen in HTTP mode).
        #[arg(long)]
        url: Option<String>,
    },
    /// Run the Azure JIT emulator on its own.
    EmulateAzure {
        /// Listen address.
        #[arg(long, default_value = "127.0.0.1:8788")]
        listen: std::net::SocketAddr,
        /// A TOML estate (subscriptions, VMs, policies); default: the sample.
        #[arg(long, value_name = "FILE")]
        seed: Option<PathBuf>,
        /// The managed-identity header secret clients must send
        /// (default: taken from IDENTITY_HEADER, else random and printed).
        #[arg(long, env = "IDENTITY_HEADER", hide_env_values = true)]
        identity_header: Option<String>,
    },
    /// Apply database migrations.
    Migrate,
    /// Check the configuration and report every problem.
    CheckConfig,
    /// Manage role mappings.
    #[command(subcommand)]
    Mappings(MappingsCommand),
    /// Explain whether roles would be allowed a request, and why.
    Explain(ExplainArgs),
    /// Export or verify the audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
}

/// `drawbridge mappings …`.
#[derive(Debug, Subcommand)]
pub enum MappingsCommand {
    /// List the mappings.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Add or replace one mapping.
    Add(MappingArgs),
    /// Remove one mapping by name.
    Remove {
        /// The mapping's name.
        name: String,
    },
    /// Replace the whole set with the mappings of a TOML file.
    Import {
        /// The TOML file (`[[mapping]]` tables).
        file: PathBuf,
        /// Show the diff without changing anything.
        #[arg(long)]
        dry_run: bool,
    },
    /// Print the mappings as TOML.
    Export,
}

/// One mapping's fields.
#[derive(Debug, Args)]
pub struct MappingArgs {
    /// Unique name, such as sre-web.
    #[arg(long)]
    pub name: String,
    /// Discord role ids, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub roles: Vec<String>,
    /// VMs: `*`, `sub:<id>`, `rg:<name>`, a glob such as `web-*`, or a VM.
    #[arg(long)]
    pub vms: String,
    /// Ports: `*` or names and numbers, comma-separated.
    #[arg(long)]
    pub ports: String,
    /// The longest window, such as 4h.
    #[arg(long)]
    pub max_duration: String,
    /// `any`, or addresses and CIDRs, comma-separated (default: any address but not `*`).
    #[arg(long, value_delimiter = ',')]
    pub sources: Option<Vec<String>>,
    /// The source used when a member gives none.
    #[arg(long)]
    pub default_source: Option<String>,
    /// Require a reason.
    #[arg(long)]
    pub require_reason: bool,
    /// Approver role id.
    #[arg(long)]
    pub approver_role: Option<String>,
}

/// `drawbridge explain …`.
#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The member's role ids, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub roles: Vec<String>,
    /// The VM: `name` or `rg/name` (looked up in Azure), or `sub/rg/name`.
    #[arg(long)]
    pub vm: String,
    /// Ports, such as ssh or 22,8443.
    #[arg(long)]
    pub port: String,
    /// The window, such as 2h.
    #[arg(long)]
    pub duration: String,
    /// The source address or CIDR.
    #[arg(long)]
    pub from: Option<String>,
    /// A reason.
    #[arg(long)]
    pub reason: Option<String>,
    /// Decide against this mappings file instead of the database.
    #[arg(long, value_name = "FILE")]
    pub mappings: Option<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// `drawbridge audit …`.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Write the audit log to stdout.
    Export {
        /// Output format.
        #[arg(long, value_enum, default_value = "jsonl")]
        format: ExportFormat,
        /// Only events newer than this, such as 24h or 7d.
        #[arg(long)]
        since: Option<String>,
    },
    /// Recompute the hash chain; exits non-zero at the first broken link.
    Verify,
}

/// Audit export formats.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ExportFormat {
    /// One JSON object per line.
    Jsonl,
    /// Comma-separated values with a header.
    Csv,
}

/// A failure the user caused, printed as is (no cause chain, no internals).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

fn usage(message: impl Into<String>) -> anyhow::Error {
    UsageError(message.into()).into()
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let sources = Sources::new(cli.config.as_deref());
    match cli.command {
        Command::Run => {
            let settings = load(&sources)?;
            crate::telemetry::init(
                settings.logging.format,
                &settings.logging.filter,
                std::io::stderr,
            );
            let problems = settings.problems_for_run();
            if !problems.is_empty() {
                return Err(usage(crate::config::ConfigErrors(problems).to_string()));
            }
            let clock: crate::clock::SharedClock = std::sync::Arc::new(crate::clock::SystemClock);
            let app = crate::app::App::build(settings, clock).await?;
            app.bind().await?.run(crate::app::shutdown_signal()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::EmulateAzure {
            listen,
            seed,
            identity_header,
        } => {
            crate::telemetry::init(crate::config::LogFormat::Pretty, "info", std::io::stderr);
            let header = identity_header.unwrap_or_else(|| {
                let generated = uuid::Uuid::new_v4().simple().to_string();
                eprintln!("identity header (IDENTITY_HEADER): {generated}");
                generated
            });
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("listening on {listen}"))?;
            crate::sandbox::run_standalone(listener, seed, header, crate::app::shutdown_signal())
                .await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo { speed } => {
            if speed.is_some_and(|s| !(0.0..=100_000.0).contains(&s)) {
                return Err(usage("--speed: give a number from 0 to 100000"));
            }
            crate::telemetry::init(crate::config::LogFormat::Pretty, "warn", std::io::stderr);
            crate::demo::run(crate::demo::DemoOptions { speed }).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Healthcheck { url } => {
            let url = match url {
                Some(url) => url,
                None => crate::ops::healthz_url(&load(&sources)?),
            };
            match crate::ops::probe(&url).await {
                Ok(()) => Ok(ExitCode::SUCCESS),
                Err(e) => {
                    eprintln!("unhealthy: {e:#}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::CheckConfig => Ok(check_config(&sources)),
        Command::Explain(args) => explain(&sources, args).await,
        other => run_with_store(&sources, other).await,
    }
}

fn load(sources: &Sources) -> anyhow::Result<Settings> {
    Settings::load(sources).map_err(|e| usage(e.to_string()))
}

/// Resolves a VM through Azure's JIT policies (one list per subscription).
async fn resolve_vm(settings: &Settings, vm: &VmRef) -> anyhow::Result<VmIdentity> {
    use crate::service::ResolveVmError;
    if settings.azure.subscriptions.is_empty() {
        return Err(usage(
            "--vm: give the VM as subscriptionId/resourceGroup/name, or configure azure.subscriptions so it can be looked up",
        ));
    }
    let clock: crate::clock::SharedClock = std::sync::Arc::new(crate::clock::SystemClock);
    let (azure, _) = crate::app::build_azure(settings, &clock)?;
    match crate::service::resolve_vm(azure.as_ref(), vm).await {
        Ok(found) => Ok(found.identity),
        Err(ResolveVmError::Unexpected(e)) => Err(e),
        Err(e) => Err(usage(format!("--vm: {e}"))),
    }
}

fn check_config(sources: &Sources) -> ExitCode {
    let mut problems = match Settings::load(sources) {
        Ok(settings) => settings.problems_for_run(),
        Err(errors) => errors.0,
    };
    problems.sort_by(|a, b| a.key.cmp(&b.key));
    if problems.is_empty() {
        println!("configuration OK");
        ExitCode::SUCCESS
    } else {
        eprintln!("{}", crate::config::ConfigErrors(problems));
        ExitCode::FAILURE
    }
}

async fn explain(sources: &Sources, args: ExplainArgs) -> anyhow::Result<ExitCode> {
    let settings = load(sources)?;
    let aliases = &settings.ports;
    let roles = args
        .roles
        .iter()
        .map(|r| RoleId::parse(r).map_err(|e| usage(format!("--roles: {e}"))))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let vm_ref = VmRef::parse(&args.vm).map_err(|e| usage(format!("--vm: {e}")))?;
    let vm = match (&vm_ref.subscription, &vm_ref.resource_group) {
        (Some(subscription), Some(resource_group)) => VmIdentity {
            subscription: subscription.clone(),
            resource_group: resource_group.clone(),
            name: vm_ref.name.clone(),
        },
        _ => resolve_vm(&settings, &vm_ref).await?,
    };
    let ports = PortSpec::parse(&args.port, aliases).map_err(|e| usage(format!("--port: {e}")))?;
    let duration =
        AccessDuration::parse(&args.duration).map_err(|e| usage(format!("--duration: {e}")))?;
    let source = args
        .from
        .as_deref()
        .map(SourcePrefix::parse)
        .transpose()
        .map_err(|e| usage(format!("--from: {e}")))?;
    let reason = args
        .reason
        .as_deref()
        .map(Reason::parse)
        .transpose()
        .map_err(|e| usage(format!("--reason: {e}")))?;
    let mappings = match &args.mappings {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            MappingFile::parse(&text, aliases)
                .map_err(|e| usage(format!("{}: {e}", path.display())))?
        }
        None => {
            let store = crate::store::Store::open(&settings.database.url).await?;
            let mappings = store.list_mappings(aliases).await?;
            store.close().await;
            mappings
        }
    };
    let decision = authorize(
        &mappings,
        &AccessQuery {
            roles: &roles,
            vm: &vm,
            ports: &ports,
            duration,
            source: source.as_ref(),
            reason: reason.as_ref(),
        },
    );
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", decision.to_json())?;
    } else {
        match &decision {
            Decision::Allow(a) => writeln!(
                out,
                "allow: mapping {} allows {} on {} for {} (maximum {})",
                a.mapping,
                ports.describe(aliases),
                vm.qualified(),
                duration,
                a.max_duration
            )?,
            Decision::Deny(d) => writeln!(out, "deny: {d}")?,
        }
    }
    Ok(if decision.is_allowed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

async fn run_with_store(sources: &Sources, command: Command) -> anyhow::Result<ExitCode> {
    let settings = load(sources)?;
    let url = &settings.database.url;
    let aliases = &settings.ports;
    let now = chrono::Utc::now();
    let mut out = std::io::stdout().lock();
    if let Command::Migrate = command {
        let store = Store::connect(url)
            .await
            .with_context(|| format!("opening {url}"))?;
        let applied = store.migrate().await?;
        if applied.is_empty() {
            writeln!(out, "database is up to date")?;
        }
        for m in applied {
            writeln!(out, "applied migration {} {}", m.version, m.description)?;
        }
        store.close().await;
        return Ok(ExitCode::SUCCESS);
    }
    let store = Store::open(url)
        .await
        .with_context(|| format!("opening {url}"))?;
    let code = match command {
        Command::Mappings(MappingsCommand::List { json }) => {
            let mappings = store.list_mappings(aliases).await?;
            if json {
                let specs: Vec<_> = mappings.iter().map(|m| m.to_spec()).collect();
                writeln!(out, "{}", serde_json::to_string_pretty(&specs)?)?;
            } else if mappings.is_empty() {
                writeln!(out, "no mappings")?;
            } else {
                for m in &mappings {
                    let roles: Vec<String> = m.roles.iter().map(ToString::to_string).collect();
                    writeln!(
                        out,
                        "{}: roles {} → {}",
                        m.name,
                        roles.join(","),
                        m.describe()
                    )?;
                }
            }
            ExitCode::SUCCESS
        }
        Command::Mappings(MappingsCommand::Add(args)) => {
            let spec = MappingSpec {
                name: args.name,
                roles: args
                    .roles
                    .iter()
                    .map(|r| RoleId::parse(r).map_err(|e| usage(format!("--roles: {e}"))))
                    .collect::<anyhow::Result<_>>()?,
                vms: args.vms,
                ports: vec![args.ports],
                max_duration: args.max_duration,
                sources: args.sources,
                default_source: args.default_source,
                require_reason: args.require_reason,
                approver_role: args
                    .approver_role
                    .as_deref()
                    .map(RoleId::parse)
                    .transpose()
                    .map_err(|e| usage(format!("--approver-role: {e}")))?,
            };
            let mapping = spec.validate(aliases).map_err(|e| usage(e.to_string()))?;
            let change = store.add_mapping(&mapping, "cli", now).await?;
            let verb = match change {
                MappingChange::Added => "added",
                MappingChange::Changed { .. } => "changed",
                MappingChange::Unchanged => "unchanged",
            };
            writeln!(out, "mapping {} {verb}", mapping.name)?;
            ExitCode::SUCCESS
        }
        Command::Mappings(MappingsCommand::Remove { name }) => {
            let name = MappingName::parse(&name).map_err(|e| usage(e.to_string()))?;
            match store.remove_mapping(&name, "cli", now).await? {
                Some(_) => {
                    writeln!(out, "mapping {name} removed")?;
                    ExitCode::SUCCESS
                }
                None => {
                    eprintln!("error: there is no mapping named {name}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Mappings(MappingsCommand::Import { file, dry_run }) => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let mappings = MappingFile::parse(&text, aliases)
                .map_err(|e| usage(format!("{}: {e}", file.display())))?;
            let diff = if dry_run {
                let mut tx = store.begin().await?;
                let diff = tx.replace_mappings(&mappings, now).await?;
                tx.rollback().await?;
                diff
            } else {
                store.import_mappings(&mappings, "cli", now).await?
            };
            for (label, names) in [
                ("added", &diff.added),
                ("removed", &diff.removed),
                ("changed", &diff.changed),
                ("unchanged", &diff.unchanged),
            ] {
                for name in names {
                    writeln!(out, "{label:>9} {name}")?;
                }
            }
            writeln!(
                out,
                "{}: {} added, {} removed, {} changed, {} unchanged",
                if dry_run { "dry run" } else { "imported" },
                diff.added.len(),
                diff.removed.len(),
                diff.changed.len(),
                diff.unchanged.len()
            )?;
            ExitCode::SUCCESS
        }
        Command::Mappings(MappingsCommand::Export) => {
            let mappings = store.list_mappings(aliases).await?;
            write!(out, "{}", MappingFile::render(&mappings))?;
            ExitCode::SUCCESS
        }
        Command::Audit(AuditCommand::Export { format, since }) => {
            let since = match since {
                Some(text) => {
                    let secs = parse_span_seconds(&text).ok_or_else(|| {
                        usage(format!(
                            "--since: `{text}` is not a duration: use forms like 24h or 7d"
                        ))
                    })?;
                    let secs = i64::try_from(secs)
                        .unwrap_or(i64::MAX)
                        .min(100 * 365 * 86_400);
                    Some(now - chrono::Duration::seconds(secs))
                }
                None => None,
            };
            let records = store
                .audit_events(&AuditFilter {
                    since,
                    ..AuditFilter::default()
                })
                .await?;
            let format = match format {
                ExportFormat::Jsonl => Format::Jsonl,
                ExportFormat::Csv => Format::Csv,
            };
            write_audit(&records, format, &mut out)?;
            ExitCode::SUCCESS
        }
        Command::Audit(AuditCommand::Verify) => {
            let report = store.verify_audit().await?;
            match report.first_broken {
                None => {
                    writeln!(out, "audit log intact: {} events verified", report.checked)?;
                    ExitCode::SUCCESS
                }
                Some(broken) => {
                    eprintln!(
                        "audit log BROKEN at row {}: {} ({} rows checked)",
                        broken.seq, broken.problem, report.checked
                    );
                    ExitCode::from(3)
                }
            }
        }
        Command::Migrate
        | Command::CheckConfig
        | Command::Explain(_)
        | Command::Run
        | Command::Demo { .. }
        | Command::Healthcheck { .. }
        | Command::EmulateAzure { .. } => ExitCode::SUCCESS,
    };
    store.close().await;
    Ok(code)
}
