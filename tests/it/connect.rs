//! Issue 16, how to connect: the grant card shows the VM's address as
//! Azure reports it (NIC → public IP, read through the emulator) with a
//! ready command; a VM with only a private address says so. An approved
//! grant says it as a self-service one does.

use serde_json::{Value, json};

use crate::e2e::{BOB, WAIT, interact, jit};
use crate::e2e_approvals::APPROVALS;
use crate::support::app::{ADMIN_ROLE, SRE_ROLE, TestApp, TestAppBuilder, spawn_app};
use crate::support::fake_discord::{FakeDiscord, InteractionBuilder};

#[tokio::test]
async fn the_grant_card_shows_ssh_azureuser_at_the_public_ip() {
    let app = spawn_app().await;
    let d = &app.discord;

    let reply = interact(
        &app,
        jit(d, "ssh", "web-01", "1h", &[SRE_ROLE]).string("from", "203.0.113.7"),
    )
    .await;

    assert!(
        reply.title().starts_with("Access granted"),
        "{}",
        reply.text()
    );
    assert_eq!(reply.field("Connect"), Some("`ssh azureuser@20.105.12.34`"));
    assert!(
        d.files_of(&reply.message).is_empty(),
        "an ssh grant has no file: {}",
        reply.message
    );
    app.finish().await;
}

#[tokio::test]
async fn a_dns_name_is_preferred_and_a_private_only_vm_says_so() {
    let app = spawn_app().await;
    let d = &app.discord;

    let named = interact(
        &app,
        jit(d, "ssh", "web-02", "1h", &[SRE_ROLE]).string("from", "203.0.113.7"),
    )
    .await;
    let private = interact(
        &app,
        jit(d, "ssh", "web-03", "1h", &[SRE_ROLE]).string("from", "203.0.113.7"),
    )
    .await;

    assert_eq!(
        named.field("Connect"),
        Some("`ssh azureuser@contoso-web-02.westeurope.cloudapp.azure.com`")
    );
    assert_eq!(
        private.field("Connect"),
        Some(
            "This VM has no public address: connect over the VPN to 10.10.1.6 (ssh azureuser@10.10.1.6)."
        )
    );
    app.finish().await;
}

#[tokio::test]
async fn an_rdp_grant_names_the_host_for_the_remote_desktop_client() {
    let app = TestAppBuilder::default()
        .mappings(
            r#"
[[mapping]]
name = "windows"
roles = ["100"]
vms = "win-*"
ports = ["rdp"]
max_duration = "2h"
"#,
        )
        .start()
        .await;
    let d = &app.discord;

    let reply = interact(
        &app,
        jit(d, "rdp", "win-07", "1h", &[SRE_ROLE]).string("from", "203.0.113.7"),
    )
    .await;

    assert!(
        reply.title().starts_with("Access granted"),
        "{}",
        reply.text()
    );
    assert_eq!(reply.field("Connect"), Some("`mstsc /v:20.105.12.70`"));
    // The ephemeral reply carries a .rdp file that opens the right host and port.
    let files = d.files_of(&reply.message);
    assert_eq!(files.len(), 1, "{}", reply.message);
    let (name, data) = &files[0];
    assert_eq!(name, "win-07.rdp");
    let text = String::from_utf8(data.clone()).expect("an .rdp file is text");
    let lines: Vec<&str> = text.split("\r\n").collect();
    assert_eq!(lines[0], "full address:s:20.105.12.70:3389", "{text}");
    assert!(lines.iter().any(|l| l.starts_with("username:s:")), "{text}");
    app.finish().await;
}

/// An admin's `/jit-admin map` of `role` to SSH on web-01 with `ssh_user`.
fn map_with_user(d: &FakeDiscord, name: &str, role: u64, user: &str) -> InteractionBuilder {
    d.slash("jit-admin")
        .subcommand("map")
        .roles([ADMIN_ROLE])
        .string("name", name)
        .option("role", 8, json!(role.to_string()))
        .string("vms", "web-01")
        .string("ports", "ssh")
        .string("max_duration", "2h")
        .string("ssh_user", user)
}

#[tokio::test]
async fn the_mappings_ssh_user_is_on_the_card_before_the_vms_own() {
    // Arrange: an admin maps role 300 to web-01 with a login user.
    let app = spawn_app().await;
    let d = &app.discord;
    let mapped = interact(&app, map_with_user(d, "deployers", 300, "deploy")).await;
    assert!(
        mapped.title().starts_with("Mapping added"),
        "{}",
        mapped.text()
    );
    assert!(mapped.text().contains("ssh as deploy"), "{}", mapped.text());

    // Act
    let reply = interact(
        &app,
        jit(d, "ssh", "web-01", "1h", &[300]).string("from", "203.0.113.7"),
    )
    .await;

    // Assert: the mapping's user, not the VM's azureuser.
    assert!(
        reply.title().starts_with("Access granted"),
        "{}",
        reply.text()
    );
    assert_eq!(reply.field("Connect"), Some("`ssh deploy@20.105.12.34`"));
    let bad = interact(&app, map_with_user(d, "bad", 301, "-oProxyCommand=x")).await;
    assert!(bad.text().contains("is not a login name"), "{}", bad.text());
    app.finish().await;
}

/// Who may ask for the approved mappings below, and who approves them.
const ASKER_ROLE: u64 = 410;
const APPROVER_ROLE: u64 = 420;

/// SSH on web-01 and RDP on win-07 (both with a public IP), each needing
/// one approval.
fn approved_builder() -> TestAppBuilder {
    let mapping = |name: &str, vm: &str, port: &str| {
        format!(
            r#"
[[mapping]]
name = "{name}"
roles = ["{ASKER_ROLE}"]
vms = "{vm}"
ports = ["{port}"]
max_duration = "2h"
approvers = ["{APPROVER_ROLE}"]
approvals = 1
"#
        )
    };
    let toml = mapping("web-approved", "web-01", "ssh") + &mapping("win-approved", "win-07", "rdp");
    TestAppBuilder::default()
        .mappings(&toml)
        .env("DISCORD__APPROVALS_CHANNEL_ID", &APPROVALS.to_string())
}

/// The member's `/jit port vm` waits for approval; Bob approves it; the
/// member's reply, edited by the outbox once Azure opened it, is returned.
async fn approved_reply(app: &TestApp, port: &str, vm: &str) -> Value {
    let d = &app.discord;
    let asked = interact(
        app,
        jit(d, port, vm, "1h", &[ASKER_ROLE]).string("from", "203.0.113.7"),
    )
    .await;
    assert!(
        asked.title().contains("Waiting for approval"),
        "{}",
        asked.text()
    );
    let id = asked.request_id();
    let approve = d
        .button(&format!("approve:{id}:1"))
        .user(BOB, "bob")
        .roles([APPROVER_ROLE]);
    let approved = interact(app, approve).await;
    assert!(
        approved.title().starts_with("Approved"),
        "{}",
        approved.text()
    );
    d.wait_for_interaction_response(asked.sent.id, WAIT, |m| {
        m["embeds"][0]["title"]
            .as_str()
            .is_some_and(|t| t.starts_with("Access granted"))
    })
    .await
    .expect("the member's reply is edited to the grant")
}

/// The value of `message`'s embed field `name`.
fn field<'a>(message: &'a Value, name: &str) -> Option<&'a str> {
    message["embeds"][0]["fields"]
        .as_array()?
        .iter()
        .find(|f| f["name"] == name)?["value"]
        .as_str()
}

#[tokio::test]
async fn an_approved_grant_says_how_to_connect_as_a_self_service_one_does() {
    let app = approved_builder().start().await;
    let d = &app.discord;

    let ssh = approved_reply(&app, "ssh", "web-01").await;
    assert_eq!(
        field(&ssh, "Connect"),
        Some("`ssh azureuser@20.105.12.34`"),
        "{ssh}"
    );
    assert!(
        d.files_of(&ssh).is_empty(),
        "an ssh grant has no file: {ssh}"
    );

    let rdp = approved_reply(&app, "rdp", "win-07").await;
    assert_eq!(
        field(&rdp, "Connect"),
        Some("`mstsc /v:20.105.12.70`"),
        "{rdp}"
    );
    let files = d.files_of(&rdp);
    assert_eq!(files.len(), 1, "{rdp}");
    let (name, data) = &files[0];
    assert_eq!(name, "win-07.rdp");
    let text = String::from_utf8(data.clone()).expect("an .rdp file is text");
    assert_eq!(
        text.split("\r\n").next(),
        Some("full address:s:20.105.12.70:3389"),
        "{text}"
    );
    app.finish().await;
}
