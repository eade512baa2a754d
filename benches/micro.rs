//! Micro-benchmarks of the hot paths a `/jit` request takes: parsing the
//! request line, the authorization decision, VM lookup and autocomplete, and
//! appending an audit event (hash chain + outbox row) to SQLite.
//!
//! `cargo bench --bench micro` (add `-- --warm-up-time 1 --measurement-time 3`
//! for a short run). Figures are in BENCHMARKS.md.

use std::hint::black_box;

use chrono::{TimeDelta, Utc};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use drawbridge::azure::VmIndex;
use drawbridge::domain::mapping::MappingSpec;
use drawbridge::domain::{
    AccessDuration, AccessQuery, AccessRequest, AuditAction, AuditEvent, Outcome, PortAliases,
    PortSpec, RoleId, RoleMapping, SourcePrefix, VmIdentity, authorize,
};
use drawbridge::domain::{AllowedSources, IndexedVm, PolicyId, PolicyPort};
use drawbridge::domain::{ResourceGroupName, SubscriptionId, VmName};
use drawbridge::store::Store;

const SUB: &str = "3f2b6c1e-8d4a-4c1e-9b7a-1a2b3c4d5e60";

fn parsing(c: &mut Criterion) {
    let aliases = PortAliases::default();
    let mut g = c.benchmark_group("parse");
    for (name, line) in [
        ("short", "/jit ssh web-01 2h"),
        (
            "full",
            r#"/jit ssh,8443 rg-prod/web-01 1h30m reason:"patch tuesday, ticket OPS-4411" from:203.0.113.0/24"#,
        ),
    ] {
        g.bench_function(BenchmarkId::new("request_line", name), |b| {
            b.iter(|| AccessRequest::parse_line(black_box(line), &aliases).expect("valid"))
        });
    }
    g.bench_function("duration/PT1H30M", |b| {
        b.iter(|| AccessDuration::parse(black_box("PT1H30M")).expect("valid"))
    });
    g.bench_function("source/cidr", |b| {
        b.iter(|| SourcePrefix::parse(black_box("2001:db8::/48")).expect("valid"))
    });
    g.finish();
}

/// `n` mappings of the shapes admins write (a glob, a resource group, one
/// VM, a subscription), each for its own role. The member holds five roles;
/// only the last mapping's role matches, so every mapping is looked at.
fn mappings(n: usize) -> Vec<RoleMapping> {
    let aliases = PortAliases::default();
    (0..n)
        .map(|i| {
            let vms = match i % 4 {
                0 => format!("app{i}-*"),
                1 => format!("rg:rg-team-{i}"),
                2 => format!("rg-team-{i}/vm-{i}"),
                _ => format!("sub:{SUB}"),
            };
            MappingSpec {
                name: format!("m-{i:05}"),
                roles: vec![RoleId::parse(&(1_000_000 + i).to_string()).expect("role")],
                vms,
                ports: vec!["ssh".into(), "rdp".into()],
                max_duration: "4h".into(),
                sources: Some(vec!["10.20.0.0/16".into(), "203.0.113.0/24".into()]),
                allow_broad_sources: false,
                default_source: None,
                require_reason: i % 7 == 0,
                ..MappingSpec::default()
            }
            .validate(&aliases)
            .expect("valid mapping")
        })
        .collect()
}

fn authorization(c: &mut Criterion) {
    let mut g = c.benchmark_group("authorize");
    let vm = VmIdentity {
        subscription: SubscriptionId::parse(SUB).expect("sub"),
        resource_group: ResourceGroupName::parse("rg-web").expect("rg"),
        name: VmName::parse("web-01").expect("name"),
    };
    let ports = PortSpec::parse("ssh", &PortAliases::default()).expect("ports");
    let source = SourcePrefix::parse("203.0.113.7").expect("source");
    for n in [1_000usize, 10_000] {
        let all = mappings(n);
        // The last mapping (a `sub:` selector when n % 4 == 0) is the member's.
        let roles: Vec<RoleId> = [1, 2, 3, 4, 1_000_000 + n as u64 - 1]
            .iter()
            .map(|r| RoleId::parse(&r.to_string()).expect("role"))
            .collect();
        let query = AccessQuery {
            roles: &roles,
            vm: &vm,
            ports: &ports,
            duration: AccessDuration::parse("2h").expect("duration"),
            source: Some(&source),
            reason: None,
        };
        assert!(authorize(&all, &query).is_allowed());
        g.bench_with_input(BenchmarkId::new("allow", n), &n, |b, _| {
            b.iter(|| authorize(black_box(&all), black_box(&query)))
        });
        let stranger: Vec<RoleId> = vec![RoleId::parse("42").expect("role")];
        let denied = AccessQuery {
            roles: &stranger,
            ..query
        };
        g.bench_with_input(BenchmarkId::new("deny_no_role", n), &n, |b, _| {
            b.iter(|| authorize(black_box(&all), black_box(&denied)))
        });
    }
    g.finish();
}

/// `n` VMs over 20 subscriptions-worth of resource groups, named like real
/// fleets (`web-00042`, `db-eu-00042`, …).
fn vm_index(n: usize) -> VmIndex {
    let kinds = [
        "web",
        "db-eu",
        "api",
        "worker",
        "win-build",
        "cache",
        "bastion",
        "etl",
    ];
    let vms = (0..n)
        .map(|i| {
            let kind = kinds[i % kinds.len()];
            let rg = format!("rg-{kind}-{}", i % 50);
            let name = format!("{kind}-{i:05}");
            IndexedVm {
                vm_id: format!(
                    "/subscriptions/{SUB}/resourceGroups/{rg}/providers/Microsoft.Compute/virtualMachines/{name}"
                ),
                subscription: SUB.into(),
                resource_group: rg.as_str().into(),
                name,
                location: "westeurope".into(),
                policy: PolicyId {
                    subscription: SUB.into(),
                    resource_group: rg,
                    location: "westeurope".into(),
                    name: "default".into(),
                }
                .into(),
                ports: vec![PolicyPort {
                    number: 22,
                    protocol: "*".into(),
                    max_duration: TimeDelta::hours(3),
                    allowed_sources: AllowedSources::Any,
                }]
                .into(),
            }
        })
        .collect();
    VmIndex::from_vms(vms)
}

fn index(c: &mut Criterion) {
    let n = 50_000;
    let idx = vm_index(n);
    let mut g = c.benchmark_group("vm_index_50k");
    g.throughput(Throughput::Elements(1));
    g.bench_function("resolve", |b| {
        b.iter(|| {
            idx.resolve(None, None, black_box("Worker-00043"))
                .expect("found")
        })
    });
    // Autocomplete asks for 25 choices; each query is a keystroke's worth.
    for (name, q) in [
        ("empty", ""),
        ("prefix_w", "w"),
        ("prefix_web-0001", "web-0001"),
        ("substring_00042", "00042"),
        ("substring_miss", "zzz"),
        ("substring_eu", "eu-"),
    ] {
        g.bench_function(BenchmarkId::new("search", name), |b| {
            b.iter(|| idx.search(black_box(q), 25, |_| true))
        });
    }
    // A filter that rejects most VMs (member may request only rg-web-7).
    g.bench_function(BenchmarkId::new("search", "filtered_web"), |b| {
        b.iter(|| idx.search(black_box("web"), 25, |vm| &*vm.resource_group == "rg-web-8"))
    });
    g.finish();
    let mut g = c.benchmark_group("vm_index_50k");
    g.sample_size(10);
    g.bench_function("build", |b| b.iter(|| vm_index(black_box(n))));
    g.finish();
}

fn audit(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
    let store = rt.block_on(Store::open(&url)).expect("store opens");
    let event = AuditEvent::new(
        Utc::now(),
        "discord:123456789012345678",
        AuditAction::AccessInitiated,
        "1234567890123456789",
        Outcome::Success,
    )
    .with_detail(serde_json::json!({
        "vm": "rg-web/web-01", "ports": [22], "source": "203.0.113.7/32",
        "end": "2026-11-22T08:00:00Z", "mapping": "sre-web"
    }));
    let mut g = c.benchmark_group("audit");
    g.bench_function("chain_hash", |b| {
        b.iter(|| black_box(&event).chain_hash(black_box(42), "0".repeat(64).as_str()))
    });
    g.bench_function("append_sqlite_file", |b| {
        b.iter(|| {
            rt.block_on(store.append_audit(black_box(&event)))
                .expect("append")
        })
    });
    g.finish();
    rt.block_on(store.close());
    audit_postgres(c, &rt, &event);
}

/// The same append on PostgreSQL, when `DRAWBRIDGE_TEST_POSTGRES_URL` names
/// a server (a fresh database is created there and dropped after).
fn audit_postgres(c: &mut Criterion, rt: &tokio::runtime::Runtime, event: &AuditEvent) {
    use sqlx::Connection as _;
    let Ok(admin) = std::env::var("DRAWBRIDGE_TEST_POSTGRES_URL") else {
        eprintln!("audit/append_postgres skipped: DRAWBRIDGE_TEST_POSTGRES_URL is not set");
        return;
    };
    let name = format!("drawbridge_bench_{}", uuid::Uuid::new_v4().simple());
    let run_admin = |sql: String| {
        rt.block_on(async {
            let mut conn = sqlx::PgConnection::connect(&admin).await?;
            sqlx::raw_sql(&sql).execute(&mut conn).await?;
            conn.close().await
        })
        .expect("admin statement")
    };
    run_admin(format!("CREATE DATABASE {name}"));
    let mut url = url::Url::parse(&admin).expect("URL");
    url.set_path(&format!("/{name}"));
    let store = rt.block_on(Store::open(url.as_str())).expect("store opens");
    let mut g = c.benchmark_group("audit");
    g.bench_function("append_postgres", |b| {
        b.iter(|| {
            rt.block_on(store.append_audit(black_box(event)))
                .expect("append")
        })
    });
    g.finish();
    rt.block_on(store.close());
    run_admin(format!("DROP DATABASE {name} WITH (FORCE)"));
}

criterion_group!(benches, parsing, authorization, index, audit);
criterion_main!(benches);
