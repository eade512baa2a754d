//! The Azure adapter against the JIT emulator: the real azure_identity
//! managed-identity path for tokens, the real ARM client over HTTP.

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, TimeDelta, Utc};
use drawbridge::{
    azure::{
        ArmClient, ArmClientOptions, ArmError, ArmJit, AzureTokenSource, CredentialKind,
        CredentialOptions, Operation, ResolveError, RetryPolicy, SharedVmIndex,
        index::DEFAULT_MISS_FLOOR,
    },
    clock::{ManualClock, SharedClock},
    domain::{AccessDuration, PolicyDefaults, PolicyId, PortSpec, SourcePrefix, check_request},
    sandbox::{Emulator, Estate, Fault, FaultRule, NsgAccess, Route, RunningEmulator},
    service::jit_port::{IndexState, JitPort},
};
use url::Url;

const PROD: &str = "3f2b6c1e-8d4a-4c1e-9b7a-1a2b3c4d5e60";
const DEV: &str = "9c8d7e6f-5a4b-4c3d-8e2f-0a1b2c3d4e5f";

struct Harness {
    azure: RunningEmulator,
    clock: ManualClock,
    arm: ArmClient,
}

impl Harness {
    fn emulator(&self) -> &Emulator {
        &self.azure.emulator
    }

    fn now(&self) -> DateTime<Utc> {
        use drawbridge::clock::Clock;
        self.clock.now()
    }

    fn subscriptions() -> Vec<String> {
        vec![PROD.to_owned(), DEV.to_owned()]
    }

    fn vm_id(rg: &str, name: &str) -> String {
        format!(
            "/subscriptions/{PROD}/resourceGroups/{rg}/providers/Microsoft.Compute/virtualMachines/{name}"
        )
    }

    fn policy(rg: &str) -> PolicyId {
        PolicyId::new(PROD, rg, "westeurope", "default").unwrap()
    }

    fn calls_to(&self, route: Route) -> usize {
        self.emulator()
            .calls()
            .iter()
            .filter(|c| c.route == Some(route))
            .count()
    }
}

/// Fast retries so tests never wait long.
fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 3,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
        max_total: Duration::from_secs(5),
    }
}

/// Managed identity options, IMDS requests aimed at `base_url`.
fn mi_options(base_url: &str, clock: SharedClock) -> CredentialOptions {
    CredentialOptions {
        kind: CredentialKind::ManagedIdentity,
        tenant_id: None,
        client_id: None,
        client_secret: None,
        user_assigned_id: None,
        federated_token_file: None,
        authority_host: Url::parse("https://login.microsoftonline.com").unwrap(),
        scope: "https://management.azure.com/.default".to_owned(),
        managed_identity_endpoint: Some(Url::parse(base_url).unwrap()),
        timeout: Duration::from_secs(10),
        clock,
    }
}

/// The managed identity credential, its IMDS requests aimed at `base_url`.
fn managed_identity(base_url: &str, clock: SharedClock) -> Arc<AzureTokenSource> {
    Arc::new(AzureTokenSource::new(mi_options(base_url, clock)).unwrap())
}

fn arm_client(
    base_url: &str,
    tokens: Arc<AzureTokenSource>,
    clock: SharedClock,
    timeout: Duration,
) -> ArmClient {
    ArmClient::new(ArmClientOptions {
        arm_endpoint: Url::parse(base_url).unwrap(),
        token_source: tokens,
        request_timeout: timeout,
        retry: fast_retry(),
        clock,
    })
    .unwrap()
}

async fn harness_with_timeout(timeout: Duration) -> Harness {
    // Start at the wall clock's second: azure_identity judges its token cache by wall time.
    let start = DateTime::from_timestamp(Utc::now().timestamp(), 0).unwrap();
    let clock = ManualClock::new(start);
    let shared: SharedClock = Arc::new(clock.clone());
    let azure = Emulator::new(Estate::sample(), shared.clone())
        .spawn()
        .await
        .unwrap();
    let tokens = managed_identity(&azure.base_url, shared.clone());
    let arm = arm_client(&azure.base_url, tokens, shared, timeout);
    Harness { azure, clock, arm }
}

async fn harness() -> Harness {
    harness_with_timeout(Duration::from_secs(5)).await
}

#[tokio::test]
async fn list_policies_follows_next_link_across_pages() {
    let h = harness().await;
    h.emulator().set_page_size(2);

    let policies = h.arm.list_policies(PROD).await.unwrap();

    let mut rgs: Vec<String> = policies
        .iter()
        .map(|p| PolicyId::parse(&p.id).unwrap().resource_group)
        .collect();
    rgs.sort();
    assert_eq!(rgs, ["rg-data", "rg-prod", "rg-staging", "rg-web"]);
    assert_eq!(h.calls_to(Route::ListPolicies), 2, "two pages of two");
    assert_eq!(h.arm.stats().total(Operation::ListPolicies), 2);
}

#[tokio::test]
async fn list_vms_pages_through_every_vm() {
    let h = harness().await;
    h.emulator().set_page_size(4);

    let vms = h.arm.list_vms(PROD).await.unwrap();

    assert_eq!(vms.len(), 9);
    assert!(vms.iter().any(|v| v.name == "legacy-01"));
    assert_eq!(h.calls_to(Route::ListVms), 3);
}

#[tokio::test]
async fn get_policy_reads_one_and_maps_404() {
    let h = harness().await;

    let web = h.arm.get_policy(&Harness::policy("rg-web")).await.unwrap();
    assert_eq!(web.properties.virtual_machines.len(), 4);

    let missing = PolicyId::new(PROD, "rg-web", "westeurope", "nope").unwrap();
    let err = h.arm.get_policy(&missing).await.unwrap_err();
    assert!(matches!(err, ArmError::NotFound { .. }), "{err:?}");
}

#[tokio::test]
async fn enable_vm_merges_into_the_policy_and_keeps_other_vms() {
    let h = harness().await;
    let legacy = Harness::vm_id("rg-legacy", "legacy-01");

    let policy = h
        .arm
        .enable_vm(
            PROD,
            "rg-web",
            "westeurope",
            &legacy,
            &PolicyDefaults::default(),
        )
        .await
        .unwrap();

    let ids: Vec<&str> = policy
        .properties
        .virtual_machines
        .iter()
        .map(|v| v.id.as_str())
        .collect();
    assert_eq!(ids.len(), 5, "{ids:?}");
    assert!(ids.iter().any(|id| id.ends_with("/web-01")));
    let added = policy
        .properties
        .virtual_machines
        .iter()
        .find(|v| v.id.eq_ignore_ascii_case(&legacy))
        .unwrap();
    assert_eq!(
        added.ports.iter().map(|p| p.number).collect::<Vec<_>>(),
        [22, 3389, 5985, 5986]
    );
    // The PUT carried only what a client may write.
    let put = h
        .emulator()
        .calls()
        .into_iter()
        .find(|c| c.route == Some(Route::PutPolicy))
        .unwrap();
    let body = put.body.unwrap();
    assert_eq!(
        body.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["kind", "properties"]
    );
    assert_eq!(
        body["properties"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        ["virtualMachines"]
    );

    // Enabling again changes nothing and writes nothing.
    h.arm
        .enable_vm(
            PROD,
            "rg-web",
            "westeurope",
            &legacy,
            &PolicyDefaults::default(),
        )
        .await
        .unwrap();
    assert_eq!(h.calls_to(Route::PutPolicy), 1);
}

#[tokio::test]
async fn enable_vm_creates_a_missing_policy() {
    let h = harness().await;
    let legacy = Harness::vm_id("rg-legacy", "legacy-01");
    let defaults = PolicyDefaults {
        ports: vec![22],
        ..PolicyDefaults::default()
    };

    let policy = h
        .arm
        .enable_vm(PROD, "rg-legacy", "westeurope", &legacy, &defaults)
        .await
        .unwrap();

    assert_eq!(policy.properties.virtual_machines.len(), 1);
    let fetched = h
        .arm
        .get_policy(&Harness::policy("rg-legacy"))
        .await
        .unwrap();
    assert_eq!(fetched.properties.virtual_machines[0].ports[0].number, 22);
}

#[tokio::test]
async fn an_initiate_opens_the_nsg_until_its_end_time() {
    let h = harness().await;
    let web01 = Harness::vm_id("rg-web", "web-01");
    let end = h.now() + TimeDelta::hours(1);

    let request = h
        .arm
        .initiate(
            &Harness::policy("rg-web"),
            &web01,
            &[22],
            end,
            "203.0.113.7",
            "alice: deploy (req 1)",
        )
        .await
        .unwrap();

    let port = &request.virtual_machines[0].ports[0];
    assert_eq!((port.number, port.end_time_utc), (22, end));
    let allows = |h: &Harness| {
        h.emulator()
            .nsg_rules(&web01)
            .into_iter()
            .filter(|r| r.access == NsgAccess::Allow)
            .collect::<Vec<_>>()
    };
    let open = allows(&h);
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].destination_ports, [22]);
    assert_eq!(open[0].source_address_prefixes, ["203.0.113.7"]);
    // The wire: endTimeUtc, never duration.
    let sent = &h.emulator().initiate_calls()[0];
    let sent_port = &sent.body.as_ref().unwrap()["virtualMachines"][0]["ports"][0];
    assert!(sent_port.get("duration").is_none());
    assert_eq!(
        sent_port["endTimeUtc"],
        end.format("%Y-%m-%dT%H:%M:%SZ").to_string()
    );

    h.clock.advance(TimeDelta::minutes(61));
    assert!(
        allows(&h).is_empty(),
        "the allow rule is gone after endTimeUtc"
    );
}

#[tokio::test]
async fn a_bad_request_carries_azures_message_and_is_not_retried() {
    let h = harness().await;
    let web01 = Harness::vm_id("rg-web", "web-01");

    let err = h
        .arm
        .initiate(
            &Harness::policy("rg-web"),
            &web01,
            &[23],
            h.now() + TimeDelta::hours(1),
            "*",
            "x",
        )
        .await
        .unwrap_err();

    let ArmError::BadRequest { message, .. } = &err else {
        panic!("{err:?}")
    };
    assert!(!message.is_empty());
    assert_eq!(
        err.user_message(),
        format!("Azure refused the request: {message}")
    );
    assert_eq!(
        h.emulator().initiate_calls().len(),
        1,
        "a 400 is never retried"
    );
}

#[tokio::test]
async fn throttling_honours_retry_after_then_succeeds() {
    let h = harness().await;
    h.emulator().inject(
        Route::ListPolicies,
        FaultRule::next(
            1,
            Fault::Throttle {
                retry_after_secs: 1,
            },
        ),
    );
    let started = tokio::time::Instant::now();

    h.arm.list_policies(DEV).await.unwrap();

    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "waited as told"
    );
    assert_eq!(h.calls_to(Route::ListPolicies), 2);
    let throttled = h
        .arm
        .stats()
        .snapshot()
        .into_iter()
        .find(|c| c.status == 429)
        .unwrap();
    assert_eq!(throttled.count, 1);
}

#[tokio::test]
async fn throttling_without_end_exhausts_the_retry_budget() {
    let h = harness().await;
    h.emulator().inject(
        Route::Initiate,
        FaultRule::always(Fault::Throttle {
            retry_after_secs: 0,
        }),
    );

    let err = h
        .arm
        .initiate(
            &Harness::policy("rg-web"),
            &Harness::vm_id("rg-web", "web-01"),
            &[22],
            h.now() + TimeDelta::hours(1),
            "*",
            "x",
        )
        .await
        .unwrap_err();

    assert!(
        matches!(err, ArmError::Throttled { attempts: 3 }),
        "{err:?}"
    );
    assert_eq!(h.emulator().initiate_calls().len(), 3);
}

#[tokio::test]
async fn server_errors_are_retried_and_then_reported_unavailable() {
    let h = harness().await;
    h.emulator().inject(
        Route::GetPolicy,
        FaultRule::next(2, Fault::ServerError { status: 503 }),
    );
    h.arm.get_policy(&Harness::policy("rg-web")).await.unwrap();
    assert_eq!(h.calls_to(Route::GetPolicy), 3);

    h.emulator().inject(
        Route::GetPolicy,
        FaultRule::always(Fault::ServerError { status: 500 }),
    );
    let err = h
        .arm
        .get_policy(&Harness::policy("rg-web"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ArmError::Unavailable { attempts: 3, last } if last == "500"),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_hung_request_times_out_and_is_retried() {
    let h = harness_with_timeout(Duration::from_millis(300)).await;
    h.emulator()
        .inject(Route::GetPolicy, FaultRule::next(1, Fault::Hang));

    h.arm.get_policy(&Harness::policy("rg-web")).await.unwrap();

    let stats = h.arm.stats().snapshot();
    assert!(
        stats
            .iter()
            .any(|c| c.operation == Operation::GetPolicy && c.status == 0),
        "{stats:?}"
    );
}

#[tokio::test]
async fn the_managed_identity_token_is_cached_and_renewed_after_expiry() {
    let h = harness().await;

    h.arm.list_policies(PROD).await.unwrap();
    h.arm.list_policies(DEV).await.unwrap();
    assert_eq!(
        h.emulator().token_requests(),
        1,
        "azure_identity caches the token"
    );

    h.clock.advance(TimeDelta::hours(2));
    h.arm.list_policies(PROD).await.unwrap();

    assert_eq!(
        h.emulator().token_requests(),
        2,
        "a new token after the old one expired"
    );
    assert!(h.emulator().calls().iter().all(|c| c.status != 401));
}

#[tokio::test]
async fn the_index_resolves_names_case_insensitively_and_reports_ambiguity() {
    let h = harness().await;
    let index = SharedVmIndex::new(Arc::new(h.clock.clone()), DEFAULT_MISS_FLOOR);
    index
        .refresh(&h.arm, &Harness::subscriptions())
        .await
        .unwrap();
    let snapshot = index.snapshot();

    let web = snapshot.resolve(None, None, "WEB-01").unwrap();
    assert_eq!(
        (&*web.resource_group, web.policy.resource_group.as_str()),
        ("rg-web", "rg-web")
    );
    assert_eq!(
        snapshot.resolve(None, None, "ops-01").unwrap_err(),
        ResolveError::Ambiguous {
            candidates: vec!["rg-prod/ops-01".into(), "rg-staging/ops-01".into()]
        }
    );
    assert_eq!(
        snapshot
            .resolve(None, Some("RG-STAGING"), "Ops-01")
            .unwrap()
            .resource_group,
        "rg-staging".into()
    );
    assert!(matches!(
        snapshot.resolve(None, None, "legacy-01"),
        Err(ResolveError::NotFound { .. })
    ));
    assert_eq!(
        snapshot.resolve(None, None, "dev-02").unwrap().subscription,
        DEV.into()
    );
    let names: Vec<String> = snapshot
        .search("web", 10, |_| true)
        .iter()
        .map(|v| v.name.clone())
        .collect();
    assert_eq!(names, ["web-01", "web-02", "web-03", "web-04"]);
}

#[tokio::test]
async fn refresh_on_miss_has_a_floor() {
    let h = harness().await;
    let subs = Harness::subscriptions();
    let index = SharedVmIndex::new(Arc::new(h.clock.clone()), TimeDelta::seconds(30));
    index.refresh(&h.arm, &subs).await.unwrap();
    let lists = h.calls_to(Route::ListPolicies);

    for _ in 0..5 {
        assert!(
            index
                .refresh_on_miss(&h.arm, &subs)
                .await
                .unwrap()
                .is_none()
        );
    }
    assert_eq!(
        h.calls_to(Route::ListPolicies),
        lists,
        "no ARM traffic within the floor"
    );

    h.clock.advance(TimeDelta::seconds(31));
    assert!(
        index
            .refresh_on_miss(&h.arm, &subs)
            .await
            .unwrap()
            .is_some()
    );
    assert!(h.calls_to(Route::ListPolicies) > lists);
}

#[tokio::test]
async fn a_miss_after_a_failed_refresh_reports_the_failure_not_a_missing_vm() {
    // Arrange: the first refresh fails (ARM refuses the identity)
    let h = harness().await;
    let subs = Harness::subscriptions();
    let index = SharedVmIndex::new(Arc::new(h.clock.clone()), TimeDelta::seconds(30));
    h.emulator()
        .inject(Route::ListPolicies, FaultRule::next(1, Fault::Forbidden));
    assert!(index.refresh(&h.arm, &subs).await.is_err());
    let lists = h.calls_to(Route::ListPolicies);

    // Act: a miss inside the floor, then one after it
    let inside = index.refresh_on_miss(&h.arm, &subs).await;
    h.clock.advance(TimeDelta::seconds(31));
    let after = index.refresh_on_miss(&h.arm, &subs).await;

    // Assert
    assert!(
        matches!(inside, Err(ArmError::Forbidden { .. })),
        "{inside:?}"
    );
    assert!(matches!(after, Ok(Some(_))), "{after:?}");
    assert!(h.calls_to(Route::ListPolicies) > lists);
    assert!(
        matches!(index.refresh_on_miss(&h.arm, &subs).await, Ok(None)),
        "a success clears the failure"
    );
}

/// The adapter over the harness's client, both subscriptions configured.
fn arm_jit(h: &Harness) -> ArmJit {
    ArmJit::new(
        h.arm.clone(),
        SharedVmIndex::new(Arc::new(h.clock.clone()), DEFAULT_MISS_FLOOR),
        Harness::subscriptions(),
        PolicyDefaults::default(),
    )
}

#[tokio::test]
async fn the_reconcilers_listing_rebuilds_the_index_and_the_refresh_then_reads_nothing() {
    // Arrange
    let h = harness().await;
    let jit = arm_jit(&h);
    assert_eq!(jit.index_state(), IndexState::Loading);

    // Act: the reconciler reads Azure's requests
    let requests = jit.requests().await.unwrap();
    let lists = h.calls_to(Route::ListPolicies);
    let refreshed_early = jit.refresh_if_older(TimeDelta::minutes(10)).await.unwrap();
    h.clock.advance(TimeDelta::minutes(10));
    let refreshed_late = jit.refresh_if_older(TimeDelta::minutes(10)).await.unwrap();

    // Assert: one listing served both; the refresh waited for its interval
    assert!(requests.is_empty(), "the sample has no request history yet");
    assert!(
        matches!(jit.index_state(), IndexState::Ready { vms } if vms > 0),
        "{:?}",
        jit.index_state()
    );
    assert_eq!(lists, 2, "one list per subscription");
    assert!(!refreshed_early);
    assert!(refreshed_late);
    assert_eq!(h.calls_to(Route::ListPolicies), lists + 2);
}

#[tokio::test]
async fn the_vm_list_is_read_with_the_first_refresh_and_then_at_most_hourly() {
    let h = harness().await;
    let jit = arm_jit(&h);

    // Listings, not pages: a list's first page has no skip token.
    let listings = || {
        h.emulator()
            .calls()
            .iter()
            .filter(|c| c.route == Some(Route::ListVms))
            .filter(|c| !c.query.as_deref().unwrap_or("").contains("skipToken"))
            .count()
    };
    jit.refresh().await.unwrap();
    let first = listings();
    h.clock.advance(TimeDelta::minutes(30));
    jit.refresh().await.unwrap();
    let half_hour = listings();
    h.clock.advance(TimeDelta::minutes(31));
    jit.refresh().await.unwrap();

    assert_eq!(first, 2, "one list per subscription");
    assert_eq!(half_hour, 2);
    assert_eq!(listings(), 4);
}

#[tokio::test]
async fn a_refresh_keeps_every_unchanged_vm_and_shares_what_vms_have_in_common() {
    let h = harness().await;
    let index = SharedVmIndex::new(Arc::new(h.clock.clone()), DEFAULT_MISS_FLOOR);
    let first = index
        .refresh(&h.arm, &Harness::subscriptions())
        .await
        .unwrap();
    let second = index
        .refresh(&h.arm, &Harness::subscriptions())
        .await
        .unwrap();

    let web: Vec<_> = second
        .iter()
        .filter(|v| v.name.starts_with("web-"))
        .collect();
    assert_eq!(web.len(), 4);
    for vm in &web {
        let before = first.iter().find(|v| v.vm_id == vm.vm_id).unwrap();
        assert!(Arc::ptr_eq(before, vm), "{} was rebuilt", vm.name);
        assert!(Arc::ptr_eq(&vm.policy, &web[0].policy));
        assert!(Arc::ptr_eq(&vm.resource_group, &web[0].resource_group));
        assert!(Arc::ptr_eq(&vm.location, &web[0].location));
    }
    let ports = |name: &str| &web.iter().find(|v| v.name == name).unwrap().ports;
    assert!(
        Arc::ptr_eq(ports("web-01"), ports("web-02")),
        "same rules, one copy"
    );
    assert!(Arc::ptr_eq(ports("web-03"), ports("web-04")));
    assert!(!Arc::ptr_eq(ports("web-01"), ports("web-03")));
}

#[tokio::test]
async fn a_steady_state_grant_costs_exactly_one_arm_request() {
    let h = harness().await;
    let index = SharedVmIndex::new(Arc::new(h.clock.clone()), DEFAULT_MISS_FLOOR);
    index
        .refresh(&h.arm, &Harness::subscriptions())
        .await
        .unwrap();
    h.emulator().clear_calls();
    let tokens_before = h.emulator().token_requests();

    let vm = index.snapshot().resolve(None, None, "db-01").unwrap();
    let source = SourcePrefix::parse("10.20.3.4/32").unwrap();
    let ports = PortSpec::from_numbers([22]).unwrap();
    check_request(
        &vm,
        &ports,
        AccessDuration::from_minutes(45).unwrap(),
        &source,
    )
    .unwrap();
    initiate(&h, &index, "db-01", "bob: debug (req 2)").await;

    let calls = h.emulator().calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].route, Some(Route::Initiate));
    assert_eq!(h.emulator().token_requests(), tokens_before);
}

/// Initiates SSH from 10.20.3.4 on the sample's VM `name` for 45 minutes
/// with `justification`.
async fn initiate(h: &Harness, index: &SharedVmIndex, name: &str, justification: &str) {
    let vm = index.snapshot().resolve(None, None, name).unwrap();
    h.arm
        .initiate(
            &vm.policy,
            &vm.vm_id,
            &[22],
            h.now() + TimeDelta::minutes(45),
            "10.20.3.4/32",
            justification,
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_backs_asked_during_a_policy_read_share_the_next_read_and_see_their_writes() {
    // Arrange: the web VMs share one policy; its reads take 300 ms.
    let h = harness().await;
    let jit = Arc::new(arm_jit(&h));
    jit.refresh().await.unwrap();
    let index = jit.index();
    let web = |name: &str| index.snapshot().resolve(None, None, name).unwrap();
    initiate(&h, index, "web-01", "first").await;
    h.emulator().inject(
        Route::GetPolicy,
        FaultRule::always(Fault::Latency { millis: 300 }),
    );
    h.emulator().clear_calls();
    let early = tokio::spawn({
        let (jit, vm) = (Arc::clone(&jit), web("web-01"));
        async move { jit.policy_requests(&vm).await }
    });
    while h.calls_to(Route::GetPolicy) == 0 {
        tokio::task::yield_now().await;
    }

    // Act: a write after that read began, then eight read-backs at once
    initiate(&h, index, "web-02", "second").await;
    let asked: Vec<_> = ["web-01", "web-02", "web-03", "web-04"]
        .iter()
        .cycle()
        .take(8)
        .map(|name| {
            let (jit, vm) = (Arc::clone(&jit), web(name));
            tokio::spawn(async move { jit.policy_requests(&vm).await })
        })
        .collect();
    let mut answers = Vec::new();
    for a in asked {
        answers.push(a.await.unwrap().unwrap());
    }
    early.await.unwrap().unwrap();

    // Assert: two reads for nine read-backs; each later one shows the write
    assert_eq!(h.calls_to(Route::GetPolicy), 2);
    for records in &answers {
        assert!(
            records
                .iter()
                .any(|r| r.justification.as_deref() == Some("second")),
            "a read-back missed a write made before it asked: {records:?}"
        );
    }
}

#[tokio::test]
async fn a_vms_address_is_read_only_while_half_of_arms_read_bucket_is_left() {
    // Arrange: the emulator's clock stands still, so its bucket does not
    // refill; 130 reads leave 120 of 250.
    let h = harness().await;
    let jit = arm_jit(&h);
    jit.refresh().await.unwrap();
    let vm = jit
        .index()
        .snapshot()
        .resolve(None, None, "web-01")
        .unwrap();
    while h.calls_to(Route::GetPolicy) < 130 {
        h.arm.get_policy(&vm.policy).await.unwrap();
    }
    h.emulator().clear_calls();

    // Act
    let scarce = jit.connection(&vm).await;
    let vm_reads_while_scarce = h.calls_to(Route::GetVm);
    h.clock.advance(TimeDelta::seconds(10));
    h.arm.get_policy(&vm.policy).await.unwrap();
    let plenty = jit.connection(&vm).await;

    // Assert: none read under half; read once the bucket was seen refilled
    assert!(scarce.is_none());
    assert_eq!(vm_reads_while_scarce, 0);
    assert!(plenty.is_some_and(|c| c.private_ip.is_some()));
    assert_eq!(h.calls_to(Route::GetVm), 1);
}

/// The mappings file with one mapping, `web`, for VMs `vms`.
fn web_mapping(vms: &str) -> Vec<drawbridge::domain::RoleMapping> {
    let text = format!(
        "[[mapping]]\nname = \"web\"\nroles = [\"100\"]\nvms = \"{vms}\"\nports = [\"ssh\"]\nmax_duration = \"3h\"\n"
    );
    drawbridge::domain::mapping::MappingFile::parse(
        &text,
        &drawbridge::domain::PortAliases::default(),
    )
    .unwrap()
}

#[tokio::test]
async fn a_reload_reads_the_mappings_only_once_a_change_of_them_is_counted() {
    // Arrange: the service over a database file, with one mapping.
    use drawbridge::service::{Service, ServiceConfig};
    use drawbridge::store::Store;
    let h = harness().await;
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("m.db").display());
    let store = Store::open(&db).await.unwrap();
    store
        .import_mappings(&web_mapping("rg:rg-web"), "test", h.now())
        .await
        .unwrap();
    let config = ServiceConfig::default();
    let service = Service::new(
        store,
        Arc::new(arm_jit(&h)),
        Arc::new(h.clock.clone()),
        config,
    )
    .await
    .unwrap();
    let vms = |s: &Service| s.mappings()[0].to_spec().vms;
    // A write to the table that no store made, so nothing counted it.
    let raw = sqlx::SqlitePool::connect(&db).await.unwrap();
    let uncounted = sqlx::query("UPDATE mappings SET spec = replace(spec, 'rg-web', 'rg-raw')")
        .execute(&raw)
        .await
        .unwrap();
    raw.close().await;

    // Act: a reload; then another process's import (counted), a reload
    service.reload_mappings().await.unwrap();
    let after_uncounted = vms(&service);
    let other = Store::open(&db).await.unwrap();
    other
        .import_mappings(&web_mapping("rg:rg-db"), "test", h.now())
        .await
        .unwrap();
    service.reload_mappings().await.unwrap();

    // Assert
    assert_eq!(uncounted.rows_affected(), 1);
    assert_eq!(
        after_uncounted, "rg:rg-web",
        "the reload read every mapping although no change was counted"
    );
    assert_eq!(vms(&service), "rg:rg-db", "a counted change was missed");
}

/// Run by [`managed_identity_from_environment_variables`] in a child process
/// with `IDENTITY_ENDPOINT`/`IDENTITY_HEADER` set; does nothing otherwise.
#[tokio::test]
async fn env_identity_child_process() {
    let Ok(arm) = std::env::var("DRAWBRIDGE_IT_ENV_IDENTITY_ARM") else {
        return;
    };
    let clock: SharedClock = Arc::new(drawbridge::clock::SystemClock);
    let tokens = Arc::new(
        AzureTokenSource::new(CredentialOptions {
            managed_identity_endpoint: None,
            ..mi_options(&arm, clock.clone())
        })
        .unwrap(),
    );
    let client = arm_client(&arm, tokens, clock, Duration::from_secs(5));
    assert!(!client.list_policies(PROD).await.unwrap().is_empty());
}

/// The plain App Service path: azure_identity reads `IDENTITY_ENDPOINT` and
/// `IDENTITY_HEADER` itself. Mutating the environment is unsafe with tests in
/// parallel, so this re-runs the test binary with only
/// [`env_identity_child_process`] selected and the variables set for it alone.
#[tokio::test]
async fn managed_identity_from_environment_variables() {
    let clock: SharedClock = Arc::new(drawbridge::clock::SystemClock);
    let azure = Emulator::new(Estate::sample(), clock)
        .spawn()
        .await
        .unwrap();
    azure.emulator.set_identity_header("it-identity-header");

    let output = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "azure_client::env_identity_child_process",
            "--exact",
            "--test-threads=1",
        ])
        .env("IDENTITY_ENDPOINT", format!("{}/msi/token", azure.base_url))
        .env("IDENTITY_HEADER", "it-identity-header")
        .env("DRAWBRIDGE_IT_ENV_IDENTITY_ARM", &azure.base_url)
        .output()
        .await
        .unwrap();

    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(azure.emulator.token_requests(), 1);
    assert!(
        azure
            .emulator
            .calls()
            .iter()
            .any(|c| c.route == Some(Route::ListPolicies) && c.status == 200)
    );
}

/// A stand-in ARM for answers the emulator never gives (403, 409, garbage,
/// a foreign nextLink): every request gets `answer(method, path)` and is counted.
struct FakeArm {
    base_url: String,
    hits: Arc<std::sync::atomic::AtomicUsize>,
}

async fn fake_arm(answer: fn(&str, &str) -> (u16, String)) -> FakeArm {
    use axum::{body::Body, http::Request, response::IntoResponse};
    let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = hits.clone();
    let app = axum::Router::new().fallback(move |req: Request<Body>| {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let (status, body) = answer(req.method().as_str(), req.uri().path());
            let status = axum::http::StatusCode::from_u16(status).unwrap();
            (status, [("content-type", "application/json")], body).into_response()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base_url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    FakeArm { base_url, hits }
}

/// An ARM client for `fake`, with tokens from the emulator's managed identity endpoint.
async fn client_for(fake: &FakeArm) -> (RunningEmulator, ArmClient) {
    let clock: SharedClock = Arc::new(drawbridge::clock::SystemClock);
    let azure = Emulator::new(Estate::sample(), clock.clone())
        .spawn()
        .await
        .unwrap();
    let tokens = managed_identity(&azure.base_url, clock.clone());
    let client = arm_client(&fake.base_url, tokens, clock, Duration::from_secs(5));
    (azure, client)
}

fn cloud_error(code: &str, message: &str) -> String {
    serde_json::json!({"error": {"code": code, "message": message}}).to_string()
}

#[tokio::test]
async fn a_403_names_the_permission_the_identity_lacks() {
    let fake = fake_arm(|_, _| {
        (
            403,
            cloud_error(
                "AuthorizationFailed",
                "The client does not have authorization",
            ),
        )
    })
    .await;
    let (_azure, arm) = client_for(&fake).await;
    let web01 = Harness::vm_id("rg-web", "web-01");

    let err = arm
        .initiate(
            &Harness::policy("rg-web"),
            &web01,
            &[22],
            Utc::now() + TimeDelta::hours(1),
            "*",
            "x",
        )
        .await
        .unwrap_err();

    assert!(
        matches!(&err, ArmError::Forbidden { code, .. } if code == "AuthorizationFailed"),
        "{err:?}"
    );
    assert!(
        err.user_message()
            .contains("Microsoft.Security/locations/jitNetworkAccessPolicies/initiate/action")
    );
    assert_eq!(
        fake.hits.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "a 403 is never retried"
    );
}

#[tokio::test]
async fn a_409_is_a_conflict_and_not_retried() {
    let fake = fake_arm(|_, _| {
        (
            409,
            cloud_error("Conflict", "Another operation is in progress"),
        )
    })
    .await;
    let (_azure, arm) = client_for(&fake).await;

    let err = arm
        .put_policy(&Harness::policy("rg-web"), vec![])
        .await
        .unwrap_err();

    assert!(matches!(err, ArmError::Conflict { .. }), "{err:?}");
    assert_eq!(fake.hits.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_malformed_body_is_a_typed_error() {
    let fake = fake_arm(|_, _| (200, r#"{"value": [{"id": 7}]"#.to_owned())).await;
    let (_azure, arm) = client_for(&fake).await;

    let err = arm.list_policies(PROD).await.unwrap_err();

    assert!(matches!(err, ArmError::Unexpected(_)), "{err:?}");
}

#[tokio::test]
async fn a_next_link_to_another_origin_is_refused_and_never_called() {
    let elsewhere = fake_arm(|_, _| (200, r#"{"value": []}"#.to_owned())).await;
    // The page's nextLink must name the other server; pass it through a static.
    static ELSEWHERE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ELSEWHERE.set(elsewhere.base_url.clone()).unwrap();
    let fake = fake_arm(|_, _| {
        let next = format!("{}/subscriptions/x/page2", ELSEWHERE.get().unwrap());
        (
            200,
            serde_json::json!({"value": [], "nextLink": next}).to_string(),
        )
    })
    .await;
    let (_azure, arm) = client_for(&fake).await;

    let err = arm.list_policies(PROD).await.unwrap_err();

    assert!(err.to_string().contains("another origin"), "{err}");
    assert_eq!(
        elsewhere.hits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the token went nowhere else"
    );
}

/// Collects everything logged (all levels) while a test runs.
#[derive(Clone, Default)]
struct LogSink(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn tokens_never_reach_the_logs() {
    let sink = LogSink::default();
    let writer = sink.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let h = harness().await;
    h.emulator().inject(
        Route::ListPolicies,
        FaultRule::next(1, Fault::ServerError { status: 503 }),
    );

    h.arm.list_policies(PROD).await.unwrap();
    let err = format!(
        "{:?}",
        h.arm
            .get_policy(&PolicyId::new(PROD, "rg-web", "westeurope", "nope").unwrap())
            .await
    );

    let logs = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("ARM call"), "debug lines were captured");
    // Emulator tokens are 64 hex digits.
    let has_token = |text: &str| {
        text.split(|c: char| !c.is_ascii_hexdigit())
            .any(|run| run.len() >= 64)
    };
    assert!(!has_token(&logs), "{logs}");
    assert!(!has_token(&err), "{err}");
    assert!(!has_token(&format!("{:?}", h.arm)));
}

#[tokio::test]
async fn a_token_arm_refuses_is_replaced_once_and_the_call_succeeds() {
    // The token source keeps its own clock; only ARM (the emulator) sees time pass,
    // so the cached token looks fine to us but ARM answers 401.
    let h = harness().await;
    let emulator_clock = ManualClock::new(h.now());
    let azure = Emulator::new(Estate::sample(), Arc::new(emulator_clock.clone()))
        .spawn()
        .await
        .unwrap();
    let tokens = managed_identity(&azure.base_url, Arc::new(h.clock.clone()));
    let arm = arm_client(
        &azure.base_url,
        tokens,
        Arc::new(h.clock.clone()),
        Duration::from_secs(5),
    );
    arm.list_policies(PROD).await.unwrap();

    emulator_clock.advance(TimeDelta::hours(2));
    arm.list_policies(PROD).await.unwrap();

    let statuses: Vec<u16> = azure.emulator.calls().iter().map(|c| c.status).collect();
    assert_eq!(statuses, [200, 401, 200]);
    assert_eq!(azure.emulator.token_requests(), 2);
}

#[tokio::test]
async fn a_token_endpoint_that_hangs_is_an_unauthorized_error_in_bounded_time() {
    let clock: SharedClock = Arc::new(drawbridge::clock::SystemClock);
    let azure = Emulator::new(Estate::sample(), clock.clone())
        .spawn()
        .await
        .unwrap();
    azure
        .emulator
        .inject(Route::Token, FaultRule::always(Fault::Hang));
    let tokens = Arc::new(
        AzureTokenSource::new(CredentialOptions {
            timeout: Duration::from_millis(300),
            ..mi_options(&azure.base_url, clock.clone())
        })
        .unwrap(),
    );
    let arm = arm_client(&azure.base_url, tokens, clock, Duration::from_secs(5));

    let err = arm.list_policies(PROD).await.unwrap_err();

    assert!(
        matches!(&err, ArmError::Unauthorized { message } if message.contains("timed out")),
        "{err:?}"
    );
    let exported = drawbridge::metrics::global().render(&Default::default());
    assert!(
        exported
            .lines()
            .any(|l| l
                .starts_with(r#"drawbridge_token_failures_total{credential="managed_identity"} "#)),
        "token failures are counted by credential kind:\n{exported}"
    );
    assert!(
        azure
            .emulator
            .calls()
            .iter()
            .all(|c| c.route != Some(Route::ListPolicies)),
        "no ARM call without a token"
    );
}
