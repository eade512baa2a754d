//! What the benches that run the real binary (as a child process, or its
//! use cases in process) share: the role mappings they seed its database
//! with, the service over the Azure emulator, and reading a process's
//! memory and CPU time from `/proc`. Included with `#[path]` (a folder
//! without `main.rs` is not a bench target of its own).
#![allow(dead_code)] // each bench uses its part

use std::process::{Child, Command};
use std::sync::Arc;
use std::time::Duration;

use drawbridge::azure::{
    ArmClient, ArmClientOptions, ArmJit, AzureTokenSource, CredentialKind, CredentialOptions,
    RetryPolicy, SharedVmIndex, index::DEFAULT_MISS_FLOOR,
};
use drawbridge::clock::SharedClock;
use drawbridge::domain::PolicyDefaults;
use drawbridge::service::{Service, ServiceConfig};
use drawbridge::store::Store;

use drawbridge::domain::mapping::MappingSpec;
use drawbridge::domain::{PortAliases, RoleId, RoleMapping};

#[path = "../../tests/it/support/procfs.rs"]
mod procfs;

pub use procfs::{cpu_time, status_kib};

/// The mapping the bench's member holds: its name, its one role and the
/// VMs it covers (a selector as admins write it).
pub struct FirstMapping<'a> {
    pub name: &'a str,
    pub role: u64,
    pub vms: &'a str,
}

/// `first` and `n - 1` others of the shapes admins write (a glob, a
/// resource group, one VM), each for its own role, all SSH up to 3 h.
pub fn mappings(first: FirstMapping<'_>, n: usize) -> Vec<RoleMapping> {
    let aliases = PortAliases::default();
    let spec = |name: String, role: u64, vms: String| MappingSpec {
        name,
        roles: vec![RoleId::parse(&role.to_string()).expect("role")],
        vms,
        ports: vec!["ssh".into()],
        max_duration: "3h".into(),
        sources: None,
        allow_broad_sources: false,
        default_source: None,
        require_reason: false,
        ..MappingSpec::default()
    };
    std::iter::once(spec(first.name.into(), first.role, first.vms.into()))
        .chain((1..n).map(|i| {
            let vms = match i % 3 {
                0 => format!("app{i}-*"),
                1 => format!("rg:rg-team-{i}"),
                _ => format!("rg-team-{i}/vm-{i}"),
            };
            spec(format!("m-{i:05}"), 1_000_000 + i as u64, vms)
        }))
        .map(|s| s.validate(&aliases).expect("valid mapping"))
        .collect()
}

/// The resource group of policy `p` in [`estate`].
pub fn rg(p: usize) -> String {
    format!("rg-scale-{p:03}")
}

/// `vms` VMs in `policies` resource groups, each group under one policy
/// with SSH and RDP rules, as the TOML seed a large customer would write.
pub fn estate(sub: &str, vms: usize, policies: usize) -> drawbridge::sandbox::Estate {
    use std::fmt::Write as _;
    let mut toml = format!("[[subscriptions]]\nid = \"{sub}\"\n");
    let per = vms.div_ceil(policies);
    for i in 0..vms {
        let p = i / per;
        let region = ["westeurope", "northeurope", "eastus"][p % 3];
        let _ = write!(
            toml,
            "[[subscriptions.vms]]\nname = \"vm-{i:05}-{}\"\nresourceGroup = \"{}\"\nlocation = \"{region}\"\nos = \"linux\"\nprivateIp = \"10.{}.{}.{}\"\n",
            ["web", "db", "app", "cache"][i % 4],
            rg(p),
            i / 65_536,
            (i / 256) % 256,
            i % 256
        );
    }
    for p in 0..policies {
        let region = ["westeurope", "northeurope", "eastus"][p % 3];
        let _ = write!(
            toml,
            "[[subscriptions.policies]]\nresourceGroup = \"{}\"\nlocation = \"{region}\"\n",
            rg(p)
        );
        for i in (p * per)..((p + 1) * per).min(vms) {
            let _ = write!(
                toml,
                "[[subscriptions.policies.virtualMachines]]\nname = \"vm-{i:05}-{}\"\nports = [{{ number = 22, protocol = \"TCP\", allowedSourceAddressPrefix = \"*\", maxRequestAccessDuration = \"PT3H\" }}, {{ number = 3389, protocol = \"TCP\", allowedSourceAddressPrefix = \"*\", maxRequestAccessDuration = \"PT3H\" }}]\n",
                ["web", "db", "app", "cache"][i % 4],
            );
        }
    }
    drawbridge::sandbox::Estate::from_toml_str(&toml).expect("the generated estate is valid")
}

/// Nearest-rank percentile `p` (0–100) of sorted durations.
pub fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The bench's multi-threaded runtime.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

pub fn mib(kib: Option<u64>) -> String {
    kib.map_or("n/a".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
}

/// SIGTERM, up to 5 s to exit, then SIGKILL.
pub fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    for _ in 0..100 {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The ARM adapter over the emulator at `base_url` (managed identity from
/// the emulator too), indexing `subscription`.
pub fn arm_jit(base_url: &str, subscription: &str, clock: &SharedClock) -> Arc<ArmJit> {
    let base = url::Url::parse(base_url).expect("url");
    let tokens = Arc::new(
        AzureTokenSource::new(CredentialOptions {
            kind: CredentialKind::ManagedIdentity,
            tenant_id: None,
            client_id: None,
            client_secret: None,
            user_assigned_id: None,
            federated_token_file: None,
            authority_host: url::Url::parse("https://login.invalid").expect("url"),
            scope: "https://management.azure.com/.default".to_owned(),
            managed_identity_endpoint: Some(base.clone()),
            timeout: Duration::from_secs(30),
            clock: Arc::clone(clock),
        })
        .expect("credential"),
    );
    let arm = ArmClient::new(ArmClientOptions {
        arm_endpoint: base,
        token_source: tokens,
        request_timeout: Duration::from_secs(60),
        retry: RetryPolicy::default(),
        clock: Arc::clone(clock),
    })
    .expect("ARM client");
    Arc::new(ArmJit::new(
        arm,
        SharedVmIndex::new(Arc::clone(clock), DEFAULT_MISS_FLOOR),
        vec![subscription.to_owned()],
        PolicyDefaults::default(),
    ))
}

/// The use cases over `store` and `jit`: default aliases and rate limit,
/// no admins, channels or reminder offsets configured.
pub async fn service(store: Store, jit: Arc<ArmJit>, clock: SharedClock) -> Service {
    Service::new(store, jit as _, clock, ServiceConfig::default())
        .await
        .expect("service")
}
