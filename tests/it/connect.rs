//! Issue 16, how to connect: the grant card shows the VM's address as
//! Azure reports it (NIC → public IP, read through the emulator) with a
//! ready command; a VM with only a private address says so.

use serde_json::json;

use crate::e2e::{interact, jit};
use crate::support::app::{ADMIN_ROLE, SRE_ROLE, TestAppBuilder, spawn_app};
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
