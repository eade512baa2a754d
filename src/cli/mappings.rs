//! `drawbridge mappings …`: the role mappings, from the command line. Every
//! change is audited with `cli` as the actor.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};

use super::usage;
use crate::config::Sources;
use crate::domain::mapping::{MappingFile, MappingSpec};
use crate::domain::{MappingName, OnConflict, PortAliases, RoleId};
use crate::store::{MappingChange, Store};

// Parsed once per run: the size of the `add` variant costs nothing.
#[allow(clippy::large_enum_variant)]
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

/// `mappings add`: one mapping's fields, as in a mappings file.
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
    /// Addresses and CIDRs, comma-separated (default: single addresses only).
    #[arg(long, value_delimiter = ',')]
    pub sources: Option<Vec<String>>,
    /// Let --sources hold `any` or networks shorter than /16 (IPv4) or /32 (IPv6).
    #[arg(long)]
    pub allow_broad_sources: bool,
    /// The source used when a member gives none.
    #[arg(long)]
    pub default_source: Option<String>,
    /// The login user shown in `ssh user@host` on the grant card (before
    /// the VM's `drawbridge-ssh-user` tag).
    #[arg(long)]
    pub ssh_user: Option<String>,
    /// Require a reason.
    #[arg(long)]
    pub require_reason: bool,
    /// Approver role ids, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub approvers: Vec<String>,
    /// How many distinct approvers a request needs (default 0: self-service).
    #[arg(long, default_value_t = 0)]
    pub approvals: u32,
    /// How long a request waits for approvers (default 30m).
    #[arg(long)]
    pub approval_timeout: Option<String>,
    /// Role ids that may skip approval with a reason, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub break_glass: Vec<String>,
    /// When another member holds the port: `ask` (the default) or `refuse`.
    #[arg(long)]
    pub on_conflict: Option<String>,
}

fn role_ids(flag: &str, ids: &[String]) -> anyhow::Result<Vec<RoleId>> {
    ids.iter()
        .map(|r| RoleId::parse(r.trim()).map_err(|e| usage(format!("{flag}: {e}"))))
        .collect()
}

pub(super) async fn execute(
    sources: &Sources,
    command: MappingsCommand,
) -> anyhow::Result<ExitCode> {
    let settings = super::load(sources)?;
    let aliases = &settings.ports;
    let now = Utc::now();
    let mut out = std::io::stdout().lock();
    let store = super::open_store(&settings).await?;
    let code = match command {
        MappingsCommand::List { json } => list(&store, aliases, json, &mut out).await,
        MappingsCommand::Add(args) => add(&store, aliases, args, now, &mut out).await,
        MappingsCommand::Remove { name } => remove(&store, &name, now, &mut out).await,
        MappingsCommand::Import { file, dry_run } => {
            import(&store, aliases, &file, dry_run, now, &mut out).await
        }
        MappingsCommand::Export => export(&store, aliases, &mut out).await,
    };
    store.close().await;
    code
}

async fn list(
    store: &Store,
    aliases: &PortAliases,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
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
    Ok(ExitCode::SUCCESS)
}

async fn add(
    store: &Store,
    aliases: &PortAliases,
    args: MappingArgs,
    now: DateTime<Utc>,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
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
        allow_broad_sources: args.allow_broad_sources,
        default_source: args.default_source,
        ssh_user: args.ssh_user,
        require_reason: args.require_reason,
        on_conflict: args
            .on_conflict
            .as_deref()
            .map(OnConflict::parse)
            .transpose()
            .map_err(|e| usage(format!("--on-conflict: {e}")))?,
        approvers: role_ids("--approvers", &args.approvers)?,
        approvals: args.approvals,
        approval_timeout: args.approval_timeout,
        break_glass: role_ids("--break-glass", &args.break_glass)?,
        ..MappingSpec::default()
    };
    let mapping = spec.validate(aliases).map_err(|e| usage(e.to_string()))?;
    let verb = match store.add_mapping(&mapping, "cli", now).await? {
        MappingChange::Added => "added",
        MappingChange::Changed { .. } => "changed",
        MappingChange::Unchanged => "unchanged",
    };
    writeln!(out, "mapping {} {verb}", mapping.name)?;
    Ok(ExitCode::SUCCESS)
}

async fn remove(
    store: &Store,
    name: &str,
    now: DateTime<Utc>,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    let name = MappingName::parse(name).map_err(|e| usage(e.to_string()))?;
    match store.remove_mapping(&name, "cli", now).await? {
        Some(_) => {
            writeln!(out, "mapping {name} removed")?;
            Ok(ExitCode::SUCCESS)
        }
        None => {
            eprintln!("error: there is no mapping named {name}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Replaces the whole set; a dry run computes the diff in a transaction
/// that is rolled back.
async fn import(
    store: &Store,
    aliases: &PortAliases,
    file: &Path,
    dry_run: bool,
    now: DateTime<Utc>,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
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
    Ok(ExitCode::SUCCESS)
}

async fn export(
    store: &Store,
    aliases: &PortAliases,
    out: &mut impl Write,
) -> anyhow::Result<ExitCode> {
    let mappings = store.list_mappings(aliases).await?;
    write!(out, "{}", MappingFile::render(&mappings))?;
    Ok(ExitCode::SUCCESS)
}
