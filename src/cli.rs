//! The command line: `drawbridge <command>`. Each command is a thin shell
//! over library code in a file of its own under `cli/` (the shape of
//! mini-redis's `cmd/`); `main` only parses, calls [`run`] and maps the
//! result to an exit code.
//!
//! Messages a user caused are [`UsageError`]s, printed as they are; anything
//! else is printed with its cause chain.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::{Settings, Sources};
use crate::store::Store;

mod audit;
mod backup;
mod check_config;
mod demo;
mod emulate_azure;
mod explain;
mod healthcheck;
mod mappings;
mod migrate;
mod migrate_store;
mod preflight;
mod report;
mod run;

pub use audit::{AuditCommand, ExportFormat};
pub use explain::ExplainArgs;
pub use mappings::{MappingArgs, MappingsCommand};
pub use report::ReportArgs;

/// Drawbridge: Azure Just-In-Time VM access from Discord.
#[derive(Debug, Parser)]
#[command(name = "drawbridge", version, about)]
pub struct Cli {
    /// A configuration file layered over config/default.toml (the
    /// container image sets DRAWBRIDGE_CONFIG to its baked-in file).
    #[arg(long, global = true, value_name = "FILE", env = "DRAWBRIDGE_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

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
        /// The URL to probe (default: from the configuration: ops.listen).
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
        /// The only token audience ARM accepts (default: the public cloud's,
        /// https://management.azure.com, and its legacy identifier).
        #[arg(long, value_name = "URI")]
        arm_audience: Option<String>,
        /// Which earlier requests an initiate supersedes: every open one on
        /// the VM and port, or only one from the same source.
        #[arg(long, value_enum, default_value = "any-on-port")]
        supersede: Supersede,
        /// What a request's `requestor` shows: the token's object id, or a
        /// name (the test identity's display name "Drawbridge JIT").
        #[arg(long, value_enum, default_value = "object-id")]
        requestor: Requestor,
    },
    /// Apply database migrations.
    Migrate,
    /// Copy a whole database into a new one (SQLite to PostgreSQL), and
    /// verify the copy's audit chain.
    MigrateStore {
        /// The database to copy, e.g. sqlite:///data/drawbridge.db (read in
        /// one snapshot; stop the bot first to copy everything).
        #[arg(long, value_name = "URL")]
        from: String,
        /// The new database, e.g. postgres://drawbridge@db/drawbridge; it is
        /// migrated, and must hold no grant and no audit event.
        #[arg(long, value_name = "URL")]
        to: String,
    },
    /// Check the configuration and report every problem.
    CheckConfig {
        /// Also check this mappings file (`[[mapping]]` tables) and flag
        /// mappings that open ports to broad sources.
        #[arg(long, value_name = "FILE")]
        mappings: Option<std::path::PathBuf>,
    },
    /// Check the deployment against Azure: token, role actions, JIT policies.
    Preflight,
    /// Manage role mappings.
    #[command(subcommand)]
    Mappings(MappingsCommand),
    /// Explain whether roles would be allowed a request, and why.
    Explain(ExplainArgs),
    /// Export or verify the audit log (opens the database read-only).
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Draw the weekly picture (PNG, optional CSV) from the database and
    /// print its summary (opens the database read-only).
    Report(ReportArgs),
    /// Copy the database, while the bot runs, to a new file and verify the
    /// copy's audit chain.
    Backup {
        /// The new file (must not exist).
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
}

/// `--supersede`: the emulator's [`crate::sandbox::SupersedeModel`].
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Supersede {
    AnyOnPort,
    SameSource,
}

/// `--requestor`: the emulator's [`crate::sandbox::RequestorModel`].
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Requestor {
    ObjectId,
    Name,
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
        Command::Run => run::execute(&sources).await,
        Command::Demo { speed } => demo::execute(speed).await,
        Command::Healthcheck { url } => healthcheck::execute(&sources, url).await,
        Command::EmulateAzure {
            listen,
            seed,
            identity_header,
            arm_audience,
            supersede,
            requestor,
        } => {
            let supersede = match supersede {
                Supersede::AnyOnPort => crate::sandbox::SupersedeModel::AnyOnPort,
                Supersede::SameSource => crate::sandbox::SupersedeModel::SameSource,
            };
            let options = crate::sandbox::StandaloneOptions {
                seed,
                identity_header: identity_header.unwrap_or_default(),
                arm_audience,
                supersede,
                requestor: match requestor {
                    Requestor::ObjectId => crate::sandbox::RequestorModel::ObjectId,
                    Requestor::Name => crate::sandbox::RequestorModel::Name,
                },
            };
            emulate_azure::execute(listen, options).await
        }
        Command::Migrate => migrate::execute(&sources).await,
        Command::MigrateStore { from, to } => migrate_store::execute(&sources, &from, &to).await,
        Command::CheckConfig { mappings } => {
            Ok(check_config::execute(&sources, mappings.as_deref()))
        }
        Command::Preflight => preflight::execute(&sources).await,
        Command::Mappings(command) => mappings::execute(&sources, command).await,
        Command::Explain(args) => explain::execute(&sources, args).await,
        Command::Audit(command) => audit::execute(&sources, command).await,
        Command::Backup { file } => backup::execute(&sources, &file).await,
        Command::Report(args) => report::execute(&sources, args).await,
    }
}

fn load(sources: &Sources) -> anyhow::Result<Settings> {
    Settings::load(sources).map_err(|e| usage(e.to_string()))
}

/// Opens the configured database read-only; it must exist.
async fn open_read_only(settings: &Settings) -> anyhow::Result<Store> {
    open_url_read_only(&settings.database.url).await
}

/// Opens the SQLite file `path` read-only; it must exist.
async fn open_file_read_only(path: &std::path::Path) -> anyhow::Result<Store> {
    open_url_read_only(&format!("sqlite://{}", path.display())).await
}

async fn open_url_read_only(url: &str) -> anyhow::Result<Store> {
    Store::open_read_only(url).await.map_err(|e| match e {
        crate::store::StoreError::InvalidInput(message) => usage(message),
        other => {
            anyhow::Error::new(other).context(format!("opening {}", crate::store::display_url(url)))
        }
    })
}

/// Opens (and migrates) the configured database.
async fn open_store(settings: &Settings) -> anyhow::Result<Store> {
    let url = &settings.database.url;
    Store::open_with(url, &settings.database.store_options())
        .await
        .with_context(|| format!("opening {}", crate::store::display_url(url)))
}
