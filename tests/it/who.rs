//! Issue 16, who holds what: `/jit-who [vm]` lists the open grants
//! (member, ports, until) without their sources unless an admin asks, and
//! the `vm` autocomplete marks VMs someone holds open.

use serde_json::Value;

use crate::e2e::{ACK_LIMIT, interact, jit};
use crate::support::app::{ADMIN_ROLE, DEV_ROLE, SRE_ROLE, TestApp, spawn_app};

const SAM: (u64, &str) = (330_000_000_000_000_011, "sam");
const DANA: (u64, &str) = (330_000_000_000_000_012, "dana");

/// Sam opens SSH on web-01 from 203.0.113.7.
async fn sam_opens_web_01(app: &TestApp) {
    let d = &app.discord;
    let reply = interact(
        app,
        jit(d, "ssh", "web-01", "2h", &[SRE_ROLE])
            .string("from", "203.0.113.7")
            .user(SAM.0, SAM.1),
    )
    .await;
    assert!(
        reply.title().starts_with("Access granted"),
        "{}",
        reply.text()
    );
}

#[tokio::test]
async fn jit_who_lists_sams_open_grant_for_dana_without_sams_source() {
    let app = spawn_app().await;
    sam_opens_web_01(&app).await;
    let d = &app.discord;

    let dana = interact(
        &app,
        d.slash("jit-who")
            .string("vm", "web-01")
            .user(DANA.0, DANA.1)
            .roles([SRE_ROLE]),
    )
    .await;
    let admin = interact(
        &app,
        d.slash("jit-who").user(DANA.0, DANA.1).roles([ADMIN_ROLE]),
    )
    .await;

    assert_eq!(dana.title(), "Open on rg-web/web-01", "{}", dana.text());
    let line = dana.field("rg-web/web-01 · ssh (22)").expect("Sam's grant");
    assert!(line.starts_with("@sam · until "), "{line}");
    assert!(!dana.text().contains("203.0.113.7"), "{}", dana.text());
    let admin_line = admin
        .field("rg-web/web-01 · ssh (22)")
        .unwrap_or_else(|| panic!("Sam's grant: {}", admin.text()));
    assert!(admin_line.contains("from 203.0.113.7"), "{admin_line}");
    app.finish().await;
}

#[tokio::test]
async fn jit_who_keeps_to_the_vms_a_member_may_request() {
    let app = spawn_app().await;
    sam_opens_web_01(&app).await;
    let d = &app.discord;

    let all = interact(
        &app,
        d.slash("jit-who").user(DANA.0, DANA.1).roles([DEV_ROLE]),
    )
    .await;
    let one = interact(
        &app,
        d.slash("jit-who")
            .string("vm", "web-01")
            .user(DANA.0, DANA.1)
            .roles([DEV_ROLE]),
    )
    .await;

    assert_eq!(all.title(), "Nobody holds a port open", "{}", all.text());
    assert_eq!(one.title(), "VM not found", "{}", one.text());
    app.finish().await;
}

#[tokio::test]
async fn the_vm_autocomplete_marks_vms_with_open_grants() {
    let app = spawn_app().await;
    sam_opens_web_01(&app).await;
    let d = &app.discord;

    let sent = d
        .send_interaction(
            d.autocomplete("jit")
                .focused("vm", "web-0")
                .roles([SRE_ROLE]),
        )
        .await;
    d.wait_for_callback(sent.id, ACK_LIMIT)
        .await
        .expect("answered");

    let names: Vec<String> = d
        .autocomplete_choices(sent.id)
        .unwrap_or_default()
        .iter()
        .map(|c: &Value| c["name"].as_str().unwrap_or_default().to_owned())
        .collect();
    let web_01 = names
        .iter()
        .find(|n| n.starts_with("web-01"))
        .unwrap_or_else(|| panic!("{names:?}"));
    assert!(web_01.contains(" · open for @sam until "), "{web_01}");
    assert!(
        names.iter().filter(|n| n.contains("open for")).count() == 1,
        "{names:?}"
    );
    app.finish().await;
}
