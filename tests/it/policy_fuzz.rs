//! No panic on what Azure sends: arbitrary JIT policies that the API schema
//! allows (ports 0 to 65535, empty lists, odd names, unknown fields, optional
//! fields left out, any request history) are served by a stand-in ARM to the
//! real app, which indexes them, answers autocomplete, handles `/jit`
//! requests against them and reconciles their request history.
//!
//! 256 cases by default; `DRAWBRIDGE_FUZZ_CASES` asks for more (see
//! `fuzz.rs`). A failure shrinks to a minimal policy set, stored in
//! `tests/it/policy_fuzz.proptest-regressions` and replayed first.
//! See: issue 15.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, SecondsFormat, Utc};
use drawbridge::app::App;
use drawbridge::clock::{SharedClock, SystemClock};
use drawbridge::config::{Settings, Sources};
use drawbridge::domain::mapping::MappingFile;
use drawbridge::domain::{PortAliases, RoleId, UserId};
use drawbridge::interactions::{AutocompleteQuery, Invocation, Member, SlashCommand};
use drawbridge::sandbox::{Emulator, Estate, RunningEmulator};
use drawbridge::service::reconcile::Reconciler;
use drawbridge::store::Store;
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, TestRunner};
use serde_json::{Value, json};

const SUB: &str = "3f2b6c1e-8d4a-4c1e-9b7a-1a2b3c4d5e60";
const ROLE: u64 = 100;

/// Everything the member with [`ROLE`] may ask for, on every VM.
const MAPPINGS: &str = r#"
[[mapping]]
name = "everything"
roles = ["100"]
vms = "*"
ports = ["ssh", "rdp", "winrm", "1", "8443", "65535"]
max_duration = "24h"
sources = ["0.0.0.0/0"]
allow_broad_sources = true
"#;

/// Cases per property: `DRAWBRIDGE_FUZZ_CASES`, else `default`.
fn config(default: u32) -> Config {
    let cases = std::env::var("DRAWBRIDGE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    Config {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "tests/it/policy_fuzz.proptest-regressions",
        ))),
        ..Config::default()
    }
}

// ----- the stand-in ARM -------------------------------------------------------------------------

/// Serves whatever policies the case holds, as ARM would: the subscription
/// list, one policy by id, initiate (recorded in the policy's history).
#[derive(Clone, Default)]
struct FakeArm {
    policies: Arc<Mutex<Vec<Value>>>,
}

impl FakeArm {
    fn set(&self, policies: Vec<Value>) {
        *self.policies.lock().unwrap() = policies;
    }

    /// Every port of every request in the history revoked, as after a
    /// newer request from elsewhere.
    fn revoke_all(&self) {
        fn array<'a>(v: &'a mut Value, key: &str) -> impl Iterator<Item = &'a mut Value> {
            v.get_mut(key)
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
        }
        for policy in self.policies.lock().unwrap().iter_mut() {
            let Some(properties) = policy.get_mut("properties") else {
                continue;
            };
            for request in array(properties, "requests") {
                for vm in array(request, "virtualMachines") {
                    for port in array(vm, "ports") {
                        port["status"] = json!("Revoked");
                        port["statusReason"] = json!("NewerRequestInitiated");
                    }
                }
            }
        }
    }

    /// The path the ARM client builds for a resource id (segments encoded).
    fn path_of(id: &str) -> String {
        let mut url = url::Url::parse("http://arm.invalid/").unwrap();
        url.path_segments_mut()
            .unwrap()
            .pop_if_empty()
            .extend(id.trim_start_matches('/').split('/'));
        url.path().to_lowercase()
    }

    fn answer(&self, method: &Method, uri: &Uri, body: &[u8]) -> Response {
        let path = uri.path().to_lowercase();
        let list = |value: Vec<Value>| axum::Json(json!({ "value": value })).into_response();
        if *method == Method::GET
            && path.ends_with("/providers/microsoft.security/jitnetworkaccesspolicies")
        {
            return list(self.policies.lock().unwrap().clone());
        }
        if *method == Method::GET && path.ends_with("/providers/microsoft.compute/virtualmachines")
        {
            return list(Vec::new());
        }
        let (target, initiate) = match path.strip_suffix("/initiate") {
            Some(p) => (p.to_owned(), true),
            None => (path.clone(), false),
        };
        let mut policies = self.policies.lock().unwrap();
        let Some(policy) = policies.iter_mut().find(|p| {
            p["id"]
                .as_str()
                .is_some_and(|id| Self::path_of(id) == target)
        }) else {
            let error = json!({"error": {"code": "ResourceNotFound", "message": "no such policy"}});
            return (StatusCode::NOT_FOUND, axum::Json(error)).into_response();
        };
        match (method.clone(), initiate) {
            (Method::GET, false) => axum::Json(policy.clone()).into_response(),
            (Method::POST, true) => {
                let request = initiated(body);
                if !policy["properties"]["requests"].is_array() {
                    policy["properties"]["requests"] = json!([]);
                }
                if let Some(history) = policy["properties"]["requests"].as_array_mut() {
                    history.push(request.clone());
                }
                (StatusCode::ACCEPTED, axum::Json(request)).into_response()
            }
            _ => StatusCode::METHOD_NOT_ALLOWED.into_response(),
        }
    }
}

/// The `JitNetworkAccessRequest` ARM answers to an initiate body.
fn initiated(body: &[u8]) -> Value {
    let asked: Value = serde_json::from_slice(body).unwrap_or_default();
    let vms: Vec<Value> = asked["virtualMachines"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|vm| {
            let ports: Vec<Value> = vm["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| {
                    json!({
                        "number": p["number"],
                        "allowedSourceAddressPrefix": p["allowedSourceAddressPrefix"],
                        "endTimeUtc": p["endTimeUtc"],
                        "status": "Initiated",
                        "statusReason": "UserRequested",
                    })
                })
                .collect();
            json!({"id": vm["id"], "ports": ports})
        })
        .collect();
    json!({
        "virtualMachines": vms,
        "startTimeUtc": Utc::now().to_rfc3339_opts(SecondsFormat::AutoSi, true),
        "requestor": "fuzz-identity",
        "justification": asked["justification"],
    })
}

async fn serve(arm: FakeArm) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().fallback(move |method: Method, uri: Uri, body: Bytes| {
        let arm = arm.clone();
        async move { arm.answer(&method, &uri, &body) }
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

// ----- arbitrary schema-valid policies ----------------------------------------------------------

/// Names as Azure might spell them (mostly), and some it would not.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        24 => "[a-z][a-z0-9-]{0,14}",
        1 => "[A-Za-z0-9._()-]{1,90}",
        1 => "\\PC{1,12}",
        1 => Just(String::new()),
        1 => "[a-z]{1,4}[ /?#%&][a-z]{1,4}",
    ]
}

fn port_number() -> impl Strategy<Value = u16> {
    prop_oneof![
        Just(0u16),
        Just(22),
        Just(3389),
        Just(5985),
        Just(8443),
        Just(65535),
        any::<u16>()
    ]
}

fn duration() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => Just("PT3H".to_owned()),
        1 => Just("PT5M".to_owned()),
        1 => Just("P1D".to_owned()),
        1 => Just("PT0S".to_owned()),
        1 => Just("P9999999W".to_owned()),
        1 => Just("PT1H30M".to_owned()),
        1 => Just("P1Y".to_owned()),
        1 => "[PTWDHMS0-9.]{0,12}",
    ]
}

fn source() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => Just("*".to_owned()),
        1 => Just("203.0.113.7".to_owned()),
        1 => Just("0.0.0.0/0".to_owned()),
        1 => Just("2001:db8::/32".to_owned()),
        1 => Just("10.0.0.0/33".to_owned()),
        1 => "\\PC{0,16}",
    ]
}

/// An extra member Azure may add in a later api-version.
fn unknown_fields() -> impl Strategy<Value = BTreeMap<String, Value>> {
    proptest::collection::btree_map(
        "x[A-Za-z]{1,8}",
        prop_oneof![
            Just(Value::Null),
            any::<i64>().prop_map(Value::from),
            "\\PC{0,8}".prop_map(Value::from),
            Just(json!({"nested": [1, "two"]})),
        ],
        0..2,
    )
}

/// An optional member: left out, written as `null`, or given.
fn optional(object: &mut Value, key: &str, value: Value, choice: u8) {
    match choice % 3 {
        0 => {}
        1 => object[key] = Value::Null,
        _ => object[key] = value,
    }
}

fn with_extra(mut object: Value, extra: BTreeMap<String, Value>) -> Value {
    if let Some(map) = object.as_object_mut() {
        map.extend(extra);
    }
    object
}

/// `JitNetworkAccessPortRule`: number, protocol and duration required.
fn port_rule() -> impl Strategy<Value = Value> {
    let sources = prop_oneof![
        Just(None),
        source().prop_map(|s| Some(json!({ "allowedSourceAddressPrefix": s }))),
        proptest::collection::vec(source(), 0..3)
            .prop_map(|l| Some(json!({ "allowedSourceAddressPrefixes": l }))),
    ];
    let protocol = prop_oneof![Just("TCP"), Just("UDP"), Just("*"), Just("ICMP")];
    (
        port_number(),
        protocol,
        duration(),
        sources,
        unknown_fields(),
    )
        .prop_map(|(number, protocol, max, sources, extra)| {
            let mut rule = json!({
                "number": number,
                "protocol": protocol,
                "maxRequestAccessDuration": max,
            });
            if let Some(Value::Object(s)) = sources {
                rule.as_object_mut().unwrap().extend(s);
            }
            with_extra(rule, extra)
        })
}

fn vm_id(rg: &str, name: &str) -> String {
    format!(
        "/subscriptions/{SUB}/resourceGroups/{rg}/providers/Microsoft.Compute/virtualMachines/{name}"
    )
}

/// `JitNetworkAccessPolicyVirtualMachine`: id and ports required.
fn policy_vm() -> impl Strategy<Value = Value> {
    (
        name(),
        name(),
        proptest::collection::vec(port_rule(), 0..5),
        ("[0-9.]{0,15}", any::<u8>()),
        unknown_fields(),
    )
        .prop_map(|(rg, name, ports, (ip, choice), extra)| {
            let mut vm = json!({ "id": vm_id(&rg, &name), "ports": ports });
            optional(&mut vm, "publicIpAddress", json!(ip), choice);
            with_extra(vm, extra)
        })
}

/// A time Azure could write: any second of years 1 to 9999, the edges of
/// RFC 3339, or around now.
fn time() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("0000-01-01T00:00:00Z".to_owned()),
        Just("9999-12-31T23:59:59.9999999Z".to_owned()),
        (-62_135_596_800i64..253_402_300_799).prop_map(|s| DateTime::from_timestamp(s, 0)
            .unwrap_or_default()
            .to_rfc3339_opts(SecondsFormat::Secs, true)),
        (-3_600i64..90_000).prop_map(|offset| (Utc::now() + chrono::TimeDelta::seconds(offset))
            .to_rfc3339_opts(SecondsFormat::AutoSi, true)),
    ]
}

/// `JitNetworkAccessRequest` of the policy's history.
fn history(vms: Vec<String>) -> impl Strategy<Value = Value> {
    let port = (
        port_number(),
        time(),
        prop_oneof![
            Just("Initiated"),
            Just("Revoked"),
            Just("Initiating"),
            Just("Pending")
        ],
        proptest::option::of(prop_oneof![
            Just("Expired"),
            Just("UserRequested"),
            Just("NewerRequestInitiated")
        ]),
        proptest::option::of(source()),
    )
        .prop_map(|(number, end, status, reason, source)| {
            json!({"number": number, "endTimeUtc": end, "status": status,
                   "statusReason": reason, "allowedSourceAddressPrefix": source})
        });
    let vm_ids = if vms.is_empty() {
        Just(vm_id("rg", "elsewhere")).boxed()
    } else {
        proptest::sample::select(vms).boxed()
    };
    let vm = (vm_ids, proptest::collection::vec(port, 0..3))
        .prop_map(|(id, ports)| json!({"id": id, "ports": ports}));
    (
        proptest::collection::vec(vm, 0..3),
        time(),
        proptest::option::of("\\PC{0,12}"),
        proptest::option::of(prop_oneof![
            "\\PC{0,24}",
            (0u64..u64::MAX).prop_map(|id| format!("Drawbridge request {id} for someone"))
        ]),
    )
        .prop_map(|(vms, start, requestor, justification)| {
            json!({"virtualMachines": vms, "startTimeUtc": start,
                   "requestor": requestor, "justification": justification})
        })
}

/// `JitNetworkAccessPolicy`, with optional members sometimes left out.
fn policy() -> impl Strategy<Value = Value> {
    (
        (
            name(),
            prop_oneof![8 => Just("westeurope".to_owned()), 1 => name()],
            name(),
        ),
        proptest::collection::vec(policy_vm(), 0..4),
        any::<[u8; 4]>(),
        unknown_fields(),
    )
        .prop_flat_map(|((rg, location, policy_name), vms, choice, extra)| {
            let ids: Vec<String> = vms
                .iter()
                .filter_map(|v| v["id"].as_str().map(str::to_owned))
                .collect();
            let requests = proptest::collection::vec(history(ids), 0..3);
            requests.prop_map(move |requests| {
                let id = format!(
                    "/subscriptions/{SUB}/resourceGroups/{rg}/providers/Microsoft.Security/locations/{location}/jitNetworkAccessPolicies/{policy_name}"
                );
                let mut properties = json!({ "virtualMachines": vms.clone() });
                optional(&mut properties, "requests", json!(requests), choice[0]);
                optional(&mut properties, "provisioningState", json!("Succeeded"), choice[1]);
                let mut policy = json!({ "id": id, "properties": properties });
                optional(&mut policy, "name", json!(policy_name), choice[2]);
                optional(&mut policy, "kind", json!("Basic"), choice[2]);
                optional(&mut policy, "location", json!(location), choice[3]);
                with_extra(policy, extra.clone())
            })
        })
}

// ----- the app under test -----------------------------------------------------------------------

struct World {
    app: App,
    arm: FakeArm,
    next_id: AtomicU64,
    _emulator: RunningEmulator,
    _dir: tempfile::TempDir,
}

impl World {
    /// The real app, its ARM calls going to the stand-in and its tokens
    /// coming from the emulator's managed-identity endpoint.
    async fn start() -> World {
        let clock: SharedClock = Arc::new(SystemClock);
        let emulator = Emulator::new(Estate::sample(), Arc::clone(&clock))
            .spawn()
            .await
            .unwrap();
        let arm = FakeArm::default();
        let arm_url = serve(arm.clone()).await;
        let dir = tempfile::tempdir().unwrap();
        let db = format!("sqlite://{}", dir.path().join("fuzz.db").display());
        let env = [
            ("AZURE__ARM_ENDPOINT", arm_url),
            (
                "AZURE__MANAGED_IDENTITY_ENDPOINT",
                emulator.base_url.clone(),
            ),
            ("AZURE__SUBSCRIPTIONS", SUB.to_owned()),
            ("AZURE__REQUEST_TIMEOUT", "5s".to_owned()),
            ("DATABASE__URL", db.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (format!("DRAWBRIDGE__{k}"), v))
        .collect();
        let settings = Settings::load(&Sources {
            file: None,
            env: Some(env),
        })
        .unwrap();
        let store = Store::open(&db).await.unwrap();
        let mappings = MappingFile::parse(MAPPINGS, &PortAliases::default()).unwrap();
        store
            .import_mappings(&mappings, "fuzz", Utc::now())
            .await
            .unwrap();
        store.close().await;
        let app = App::build(settings, clock).await.unwrap();
        app.index_load().await;
        World {
            app,
            arm,
            next_id: AtomicU64::new(1_400_000_000_000_000_000),
            _emulator: emulator,
            _dir: dir,
        }
    }

    fn who(&self) -> Invocation {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        Invocation {
            id: id.to_string(),
            member: Member {
                user_id: UserId::parse("600001").unwrap(),
                name: "fuzz".into(),
                roles: vec![RoleId::parse(&ROLE.to_string()).unwrap()],
            },
            channel_id: Some(1),
            guild_id: Some(4004),
            token: None,
        }
    }

    async fn complete(&self, focused: &str, options: &[(&str, &str)]) -> Vec<String> {
        let query = AutocompleteQuery {
            command: "jit".into(),
            subcommand: None,
            focused: focused.into(),
            partial: String::new(),
            options: options
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        let choices = self.app.handler().autocomplete(&self.who(), &query).await;
        assert!(choices.len() <= 25, "{choices:?}");
        choices.into_iter().map(|c| c.value).collect()
    }

    async fn request(&self, port: &str, vm: &str) {
        let command = SlashCommand {
            name: "jit".into(),
            options: [
                ("port", port),
                ("vm", vm),
                ("duration", "1h"),
                ("from", "203.0.113.7"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
            ..SlashCommand::default()
        };
        let reply = self.app.handler().command(&self.who(), &command).await;
        assert!(reply.content.is_some() || reply.card.is_some());
    }

    /// Index, autocomplete, request and reconcile against `policies`
    /// (after revoking everything, if `revoke`).
    async fn exercise(&self, policies: Vec<Value>, revoke: bool) {
        self.arm.set(policies);
        // One odd policy must not stop the others from being indexed.
        let refreshed = self.app.azure.refresh().await;
        assert!(refreshed.is_ok(), "{refreshed:?}");
        let vms = self.complete("vm", &[]).await;
        for vm in vms.iter().take(3) {
            let ports = self.complete("port", &[("vm", vm)]).await;
            assert!(
                ports.iter().all(|p| p != "0"),
                "port 0 is never offered: {ports:?}"
            );
            let port = ports.first().map_or("ssh", String::as_str);
            self.complete("duration", &[("vm", vm), ("port", port)])
                .await;
            self.request(port, vm).await;
        }
        if revoke {
            self.arm.revoke_all();
        }
        let reconciler = Reconciler::new(self.app.service.clone());
        let _ = reconciler.tick(Utc::now()).await;
    }
}

#[test]
fn arbitrary_schema_valid_policies_never_panic_the_app() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let world = rt.block_on(World::start());
    let strategy = (proptest::collection::vec(policy(), 0..4), any::<bool>());
    let mut runner = TestRunner::new(config(256));
    runner
        .run(&strategy, |(policies, revoke)| {
            rt.block_on(world.exercise(policies, revoke));
            Ok(())
        })
        .unwrap();
}

#[test]
fn a_policy_with_port_0_is_indexed_and_never_offered() {
    // Arrange: one VM whose policy has port 0 beside SSH (the API allows 0)
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let world = World::start().await;
        let rule = |n: u16| json!({"number": n, "protocol": "*", "maxRequestAccessDuration": "PT3H", "allowedSourceAddressPrefix": "*"});
        world.arm.set(vec![json!({
            "id": format!("/subscriptions/{SUB}/resourceGroups/rg-web/providers/Microsoft.Security/locations/westeurope/jitNetworkAccessPolicies/default"),
            "properties": {"virtualMachines": [{"id": vm_id("rg-web", "web-01"), "ports": [rule(0), rule(22)]}]},
        })]);
        world.app.azure.refresh().await.unwrap();

        // Act
        let ports = world.complete("port", &[("vm", "rg-web/web-01")]).await;
        world.request("ssh", "rg-web/web-01").await;

        // Assert
        assert!(ports.contains(&"22".to_owned()), "{ports:?}");
        assert!(!ports.contains(&"0".to_owned()), "{ports:?}");
        let initiated = world.arm.policies.lock().unwrap()[0]["properties"]["requests"]
            .as_array()
            .map_or(0, Vec::len);
        assert_eq!(initiated, 1, "SSH on the VM was granted");
    });
}
