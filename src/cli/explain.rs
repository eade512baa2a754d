//! `drawbridge explain`: what `/jit` would decide for some roles, and why,
//! without asking for anything; against the database's mappings or a
//! mappings file before it is imported.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use super::usage;
use crate::config::{Settings, Sources};
use crate::domain::authorize::{AccessQuery, Decision, authorize};
use crate::domain::mapping::MappingFile;
use crate::domain::{
    AccessDuration, PortSpec, Reason, RoleId, RoleMapping, SourcePrefix, VmIdentity, VmRef,
};

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

/// The request to explain, each value checked.
struct Question {
    roles: Vec<RoleId>,
    vm: VmRef,
    ports: PortSpec,
    duration: AccessDuration,
    source: Option<SourcePrefix>,
    reason: Option<Reason>,
}

pub(super) async fn execute(sources: &Sources, args: ExplainArgs) -> anyhow::Result<ExitCode> {
    let settings = super::load(sources)?;
    let question = Question::parse(&args, &settings)?;
    let vm = match (&question.vm.subscription, &question.vm.resource_group) {
        (Some(subscription), Some(resource_group)) => VmIdentity {
            subscription: subscription.clone(),
            resource_group: resource_group.clone(),
            name: question.vm.name.clone(),
        },
        _ => resolve_vm(&settings, &question.vm).await?,
    };
    let mappings = mappings(&settings, args.mappings.as_ref()).await?;
    let decision = authorize(
        &mappings,
        &AccessQuery {
            roles: &question.roles,
            vm: &vm,
            ports: &question.ports,
            duration: question.duration,
            source: question.source.as_ref(),
            reason: question.reason.as_ref(),
        },
    );
    print(&decision, &question, &vm, &settings, args.json)?;
    Ok(if decision.is_allowed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

impl Question {
    fn parse(args: &ExplainArgs, settings: &Settings) -> anyhow::Result<Question> {
        let roles = args
            .roles
            .iter()
            .map(|r| RoleId::parse(r).map_err(|e| usage(format!("--roles: {e}"))))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let vm = VmRef::parse(&args.vm).map_err(|e| usage(format!("--vm: {e}")))?;
        let ports = PortSpec::parse(&args.port, &settings.ports)
            .map_err(|e| usage(format!("--port: {e}")))?;
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
        Ok(Question {
            roles,
            vm,
            ports,
            duration,
            source,
            reason,
        })
    }
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
        // The operator runs this: a credential or audience problem is theirs
        // to fix, so say what it is (the text never holds a secret or token).
        Err(ResolveVmError::Azure { detail, .. }) => Err(usage(format!("--vm: {detail}"))),
        Err(e) => Err(usage(format!("--vm: {e}"))),
    }
}

/// The mappings of `file`, else those in the database.
async fn mappings(settings: &Settings, file: Option<&PathBuf>) -> anyhow::Result<Vec<RoleMapping>> {
    let aliases = &settings.ports;
    match file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            MappingFile::parse(&text, aliases)
                .map_err(|e| usage(format!("{}: {e}", path.display())))
        }
        None => {
            let store = crate::store::Store::open_with(
                &settings.database.url,
                &settings.database.store_options(),
            )
            .await?;
            let mappings = store.list_mappings(aliases).await?;
            store.close().await;
            Ok(mappings)
        }
    }
}

fn print(
    decision: &Decision,
    question: &Question,
    vm: &VmIdentity,
    settings: &Settings,
    json: bool,
) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", decision.to_json())?;
        return Ok(());
    }
    match decision {
        Decision::Allow(a) => writeln!(
            out,
            "allow: mapping {} allows {} on {} for {} (maximum {})",
            a.mapping,
            question.ports.describe(&settings.ports),
            vm.qualified(),
            question.duration,
            a.max_duration
        )?,
        Decision::Deny(d) => writeln!(out, "deny: {d}")?,
    }
    Ok(())
}
