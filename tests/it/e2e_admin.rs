//! End to end: `/jit-admin` against the real app.

use drawbridge::domain::AuditAction;
use drawbridge::sandbox::{Estate, Fault, FaultRule, PolicySeed, PolicyVmSeed, Route};
use drawbridge::service::messages::action_title;
use serde_json::json;

use crate::e2e::{Reply, audit_log, initiates, interact, jit};
use crate::support::app::{
    ADMIN_ROLE, DEV_ROLE, SRE_ROLE, SUB_PROD, TestApp, TestAppBuilder, spawn_app,
};
use crate::support::fake_discord::{InteractionBuilder, USER_ID};

/// `/jit-admin <sub>` from a member with `roles`.
fn admin(app: &TestApp, sub: &str, roles: &[u64]) -> InteractionBuilder {
    app.discord
        .slash("jit-admin")
        .subcommand(sub)
        .roles(roles.iter().copied())
}

/// `/jit-admin map` of `role` to `vms` (SSH, up to 2 h), by an admin.
async fn map(app: &TestApp, name: &str, role: u64, vms: &str) -> Reply {
    interact(
        app,
        admin(app, "map", &[ADMIN_ROLE])
            .string("name", name)
            .option("role", 8, json!(role.to_string()))
            .string("vms", vms)
            .string("ports", "ssh")
            .string("max_duration", "2h"),
    )
    .await
}

/// A developer's request for SSH on `vm` for 1 h.
async fn dev_requests(app: &TestApp, vm: &str) -> Reply {
    interact(
        app,
        jit(&app.discord, "ssh", vm, "1h", &[DEV_ROLE]).string("from", "203.0.113.7"),
    )
    .await
}

#[tokio::test]
async fn an_admin_maps_a_role_and_the_members_next_request_succeeds() {
    let app = spawn_app().await;
    let denied = dev_requests(&app, "web-03").await;
    assert_eq!(denied.title(), "Access denied", "{}", denied.text());

    let mapped = map(&app, "dev-web", DEV_ROLE, "web-*").await;
    assert_eq!(mapped.title(), "Mapping added", "{}", mapped.text());
    assert!(mapped.text().contains("dev-web"), "{}", mapped.text());
    let granted = dev_requests(&app, "web-03").await;

    assert!(
        granted.title().contains("Access granted"),
        "{}",
        granted.text()
    );
    assert_eq!(initiates(&app).len(), 1);
    let log = audit_log(&app).await;
    let added = log
        .iter()
        .rfind(|r| r.event.action == AuditAction::MappingAdded)
        .expect("the mapping change is audited");
    assert_eq!(added.event.actor, format!("discord:{USER_ID}"));

    // mappings lists both; unmap takes the new one away again.
    let listed = interact(&app, admin(&app, "mappings", &[ADMIN_ROLE])).await;
    assert_eq!(listed.title(), "2 mappings", "{}", listed.text());
    assert!(listed.field("sre-web").is_some() && listed.field("dev-web").is_some());
    let removed = interact(
        &app,
        admin(&app, "unmap", &[ADMIN_ROLE]).string("name", "dev-web"),
    )
    .await;
    assert_eq!(removed.title(), "Mapping removed", "{}", removed.text());
    let denied_again = dev_requests(&app, "web-03").await;
    assert_eq!(
        denied_again.title(),
        "Access denied",
        "{}",
        denied_again.text()
    );
    assert!(
        audit_log(&app)
            .await
            .iter()
            .any(|r| r.event.action == AuditAction::MappingRemoved)
    );
    app.finish().await;
}

#[tokio::test]
async fn a_non_admin_is_refused_every_admin_command() {
    let app = spawn_app().await;
    let log_before = audit_log(&app).await.len();

    for sub in ["mappings", "coverage", "audit"] {
        let reply = interact(&app, admin(&app, sub, &[SRE_ROLE])).await;
        assert_eq!(reply.title(), "Not allowed", "{sub}: {}", reply.text());
        assert!(reply.description().contains("admin roles"), "{sub}");
    }
    let map_attempt = interact(
        &app,
        admin(&app, "map", &[SRE_ROLE, DEV_ROLE])
            .string("name", "sneaky")
            .option("role", 8, json!(DEV_ROLE.to_string()))
            .string("vms", "*")
            .string("ports", "ssh")
            .string("max_duration", "8h"),
    )
    .await;
    let enable_attempt = interact(
        &app,
        admin(&app, "enable", &[SRE_ROLE]).string("vm", "legacy-01"),
    )
    .await;

    assert_eq!(map_attempt.title(), "Not allowed", "{}", map_attempt.text());
    assert_eq!(enable_attempt.title(), "Not allowed");
    let sneaky = dev_requests(&app, "web-01").await;
    assert_eq!(sneaky.title(), "Access denied", "the mapping was not added");
    let log = audit_log(&app).await;
    assert!(
        log[log_before..]
            .iter()
            .all(|r| r.event.action != AuditAction::MappingAdded
                && r.event.action != AuditAction::PolicyEnabled)
    );
    assert!(
        app.azure.emulator.calls().iter().all(|c| c.method != "PUT"),
        "no policy was written"
    );
    app.finish().await;
}

#[tokio::test]
async fn explain_says_why_roles_would_be_allowed_or_denied() {
    let app = spawn_app().await;
    let explain = |roles: &str| {
        admin(&app, "explain", &[ADMIN_ROLE])
            .string("vm", "web-01")
            .string("port", "ssh")
            .string("duration", "2h")
            .string("roles", roles)
    };

    let allowed = interact(&app, explain(&SRE_ROLE.to_string())).await;
    let denied = interact(&app, explain(&DEV_ROLE.to_string())).await;
    let too_long = interact(
        &app,
        admin(&app, "explain", &[ADMIN_ROLE])
            .string("vm", "web-01")
            .string("port", "ssh")
            .string("duration", "5h")
            .string("roles", &SRE_ROLE.to_string()),
    )
    .await;

    assert_eq!(allowed.title(), "Would be allowed", "{}", allowed.text());
    assert!(
        allowed.description().contains("sre-web")
            && allowed.description().contains("rg-web/web-01"),
        "{}",
        allowed.description()
    );
    assert_eq!(denied.title(), "Would be denied", "{}", denied.text());
    assert!(
        denied
            .description()
            .contains("none of your roles is mapped")
    );
    assert_eq!(too_long.title(), "Would be denied");
    assert!(
        too_long.description().contains("maximum"),
        "{}",
        too_long.description()
    );
    assert!(initiates(&app).is_empty(), "explain never opens anything");
    app.finish().await;
}

#[tokio::test]
async fn coverage_lists_legacy_01_and_enable_makes_it_requestable() {
    let app = spawn_app().await;
    map(&app, "dev-legacy", DEV_ROLE, "legacy-01").await;
    let before = dev_requests(&app, "legacy-01").await;
    assert_eq!(before.title(), "VM not under JIT", "{}", before.text());

    let coverage = interact(&app, admin(&app, "coverage", &[ADMIN_ROLE])).await;
    assert_eq!(coverage.title(), "1 VMs without JIT", "{}", coverage.text());
    assert!(coverage.description().contains("rg-legacy/legacy-01"));
    let enabled = interact(
        &app,
        admin(&app, "enable", &[ADMIN_ROLE]).string("vm", "legacy-01"),
    )
    .await;
    assert_eq!(enabled.title(), "JIT enabled", "{}", enabled.text());
    assert!(enabled.description().contains("rg-legacy/legacy-01"));
    let after = dev_requests(&app, "legacy-01").await;

    assert!(after.title().contains("Access granted"), "{}", after.text());
    assert_eq!(after.field("VM"), Some("rg-legacy/legacy-01"));
    let calls = initiates(&app);
    assert_eq!(calls.len(), 1);
    assert!(calls[0].path.contains("rg-legacy"), "{}", calls[0].path);
    let coverage = interact(&app, admin(&app, "coverage", &[ADMIN_ROLE])).await;
    assert_eq!(
        coverage.title(),
        "Every VM is under JIT",
        "{}",
        coverage.text()
    );
    assert!(
        audit_log(&app)
            .await
            .iter()
            .any(|r| r.event.action == AuditAction::PolicyEnabled
                && r.event.target == "rg-legacy/legacy-01")
    );
    app.finish().await;
}

#[tokio::test]
async fn audit_shows_the_latest_events_of_the_log() {
    let app = spawn_app().await;
    interact(
        &app,
        jit(&app.discord, "ssh", "web-01", "2h", &[SRE_ROLE]).string("from", "203.0.113.7"),
    )
    .await;

    let reply = interact(
        &app,
        admin(&app, "audit", &[ADMIN_ROLE]).option("limit", 4, json!(3)),
    )
    .await;

    let log = audit_log(&app).await;
    let last_three = &log[log.len() - 3..];
    assert_eq!(reply.title(), "3 audit events", "{}", reply.text());
    for record in last_three {
        let name = format!("#{} {}", record.seq, action_title(record.event.action));
        let value = reply.field(&name);
        assert!(value.is_some(), "{name} is listed: {}", reply.text());
        assert!(
            value.is_some_and(|v| !v.contains('{') && v.contains("rg-web/web-01")),
            "{name} reads as a sentence, not JSON: {}",
            reply.text()
        );
    }
    assert_eq!(
        last_three.last().map(|r| r.event.action),
        Some(AuditAction::AccessInitiated)
    );
    app.finish().await;
}

/// The resource id of `name` in `rg` of the sample's production subscription.
fn prod_vm(rg: &str, name: &str) -> String {
    format!(
        "/subscriptions/{SUB_PROD}/resourceGroups/{rg}/providers/Microsoft.Compute/virtualMachines/{name}"
    )
}

/// The sample estate with a second VM without JIT, `legacy-02`, beside
/// `legacy-01` in `rg-legacy`.
fn two_legacy_vms() -> Estate {
    let mut estate = Estate::sample();
    let prod = &mut estate.subscriptions[0];
    let mut second = prod
        .vms
        .iter()
        .find(|v| v.name == "legacy-01")
        .expect("the sample has legacy-01")
        .clone();
    second.name = "legacy-02".to_owned();
    second.private_ip = "10.50.0.5".parse().unwrap();
    prod.vms.push(second);
    estate
}

/// `/jit-admin enable vm:<vm>` by an admin.
async fn enable(app: &TestApp, vm: &str) -> Reply {
    interact(app, admin(app, "enable", &[ADMIN_ROLE]).string("vm", vm)).await
}

fn policy_puts(app: &TestApp) -> usize {
    app.azure
        .emulator
        .calls()
        .iter()
        .filter(|c| c.route == Some(Route::PutPolicy))
        .count()
}

/// A VM whose name, with the policy's (`default`), is over Azure's 56
/// characters cannot be enabled: the admin is told why and what to do,
/// and nothing is written to Azure (which would refuse it).
#[tokio::test]
async fn enable_refuses_a_vm_whose_name_and_the_policys_are_over_56_characters() {
    // Arrange: a VM of 50 characters without JIT.
    let long = format!("legacy-{}", "x".repeat(43));
    let mut estate = Estate::sample();
    let prod = &mut estate.subscriptions[0];
    let mut vm = prod
        .vms
        .iter()
        .find(|v| v.name == "legacy-01")
        .expect("the sample has legacy-01")
        .clone();
    vm.name.clone_from(&long);
    vm.private_ip = "10.50.0.6".parse().unwrap();
    prod.vms.push(vm);
    let app = TestAppBuilder::default().estate(estate).start().await;

    // Act
    let reply = enable(&app, &long).await;

    // Assert
    assert_eq!(reply.title(), "That did not work", "{}", reply.text());
    assert!(
        reply
            .description()
            .contains("at most 56 characters for the policy's name (default) and the VM's name together, and they have 57"),
        "{}",
        reply.text()
    );
    assert_eq!(policy_puts(&app), 0, "nothing written");
    app.finish().await;
}

#[tokio::test]
async fn two_enables_at_once_on_one_policy_both_end_up_in_azures_policy() {
    let app = TestAppBuilder::default()
        .estate(two_legacy_vms())
        .start()
        .await;
    // The first write lands late, so without one enable at a time per policy
    // the second would read the policy before the first wrote it.
    app.azure.emulator.inject(
        Route::PutPolicy,
        FaultRule::next(1, Fault::Latency { millis: 300 }),
    );

    let (first, second) = tokio::join!(enable(&app, "legacy-01"), enable(&app, "legacy-02"));

    for (reply, vm) in [(&first, "legacy-01"), (&second, "legacy-02")] {
        assert_eq!(reply.title(), "JIT enabled", "{}", reply.text());
        assert!(
            reply.description().contains(&format!("rg-legacy/{vm}"))
                && reply.description().contains("rg-legacy/default")
                && reply.description().contains("22, 3389, 5985, 5986"),
            "the reply tells what Azure shows: {}",
            reply.description()
        );
        assert_eq!(
            app.azure
                .emulator
                .policies_holding(&prod_vm("rg-legacy", vm)),
            ["rg-legacy/default"]
        );
    }
    assert_eq!(policy_puts(&app), 2, "one write each, one after the other");
    app.finish().await;
}

#[tokio::test]
async fn a_vm_already_in_another_policy_is_refused_naming_that_policy() {
    let mut estate = Estate::sample();
    let prod = &mut estate.subscriptions[0];
    let rules = prod.policies[0].virtual_machines[0].ports.clone();
    prod.policies.push(PolicySeed {
        resource_group: "rg-web".to_owned(),
        location: "westeurope".to_owned(),
        name: "portal-made".to_owned(),
        kind: "Basic".to_owned(),
        virtual_machines: vec![PolicyVmSeed {
            name: "legacy-01".to_owned(),
            resource_group: Some("rg-legacy".to_owned()),
            ports: rules,
        }],
    });
    let app = TestAppBuilder::default().estate(estate).start().await;

    let reply = enable(&app, "legacy-01").await;

    assert_eq!(reply.title(), "That did not work", "{}", reply.text());
    assert!(
        reply.description().contains("rg-web/portal-made"),
        "names the policy: {}",
        reply.description()
    );
    assert_eq!(policy_puts(&app), 0, "nothing written");
    assert_eq!(
        app.azure
            .emulator
            .policies_holding(&prod_vm("rg-legacy", "legacy-01")),
        ["rg-web/portal-made"]
    );
    app.finish().await;
}

#[tokio::test]
async fn an_enable_a_portal_edit_overwrites_is_written_again_and_both_changes_stay() {
    let app = TestAppBuilder::default()
        .estate(two_legacy_vms())
        .start()
        .await;
    app.azure
        .emulator
        .race_next_policy_put(&prod_vm("rg-legacy", "legacy-02"), &[22])
        .unwrap();

    let reply = enable(&app, "legacy-01").await;

    assert_eq!(reply.title(), "JIT enabled", "{}", reply.text());
    for vm in ["legacy-01", "legacy-02"] {
        assert_eq!(
            app.azure
                .emulator
                .policies_holding(&prod_vm("rg-legacy", vm)),
            ["rg-legacy/default"],
            "{vm} is in Azure's policy"
        );
    }
    assert_eq!(
        policy_puts(&app),
        2,
        "written again once the read-back missed it"
    );
    app.finish().await;
}
