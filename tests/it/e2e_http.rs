//! End to end in HTTP interactions mode: Discord POSTs signed interactions
//! to the bot's endpoint and the acknowledgement is the response body.

use std::time::{Duration, Instant};

use drawbridge::domain::AuditAction;
use drawbridge::sandbox::{Fault, FaultRule, Route};
use serde_json::{Value, json};

use crate::e2e::{
    ACK_LIMIT, audit_actions_for, audit_channel_matches_log, initiated_port, initiates, jit,
    reply_to, ssh_web_01,
};
use crate::support::app::{ADMIN_ROLE, DEV_ROLE, SRE_ROLE, TestApp, TestAppBuilder};
use crate::support::fake_discord::signing::Signer;
use crate::support::fake_discord::{HttpDelivery, SentInteraction};

async fn spawn_http_app() -> (TestApp, Signer, String) {
    let signer = Signer::test();
    let app = TestAppBuilder::default()
        .http_mode(&signer.public_key_hex())
        .start()
        .await;
    let endpoint = app.endpoint.clone().expect("HTTP mode has an endpoint");
    (app, signer, endpoint)
}

/// POSTs `body` with `headers`; returns the status and the JSON answer.
async fn post_raw(endpoint: &str, body: Vec<u8>, headers: &[(&str, String)]) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .post(endpoint)
        .header("content-type", "application/json")
        .body(body);
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let response = request.send().await.expect("the endpoint answers");
    let status = response.status().as_u16();
    let bytes = response.bytes().await.unwrap_or_default();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn assert_deferred(delivery: &HttpDelivery) {
    assert_eq!(delivery.status, 200, "{delivery:?}");
    assert_eq!(delivery.body["type"], 5, "{delivery:?}");
    assert_eq!(delivery.body["data"]["flags"], 64, "{delivery:?}");
}

#[tokio::test]
async fn a_signed_request_is_deferred_and_granted() {
    let (app, signer, endpoint) = spawn_http_app().await;
    let d = &app.discord;

    let ping = d.post_interaction(&endpoint, d.ping(), &signer).await;
    let delivery = d.post_interaction(&endpoint, ssh_web_01(d), &signer).await;

    assert_eq!((ping.status, &ping.body), (200, &json!({"type": 1})));
    assert_deferred(&delivery);
    let reply = reply_to(d, delivery.sent).await;
    assert!(reply.title().contains("Access granted"), "{}", reply.text());
    assert_eq!(reply.field("VM"), Some("rg-web/web-01"));
    assert_eq!(reply.buttons().len(), 2);
    let calls = initiates(&app);
    assert_eq!(calls.len(), 1);
    assert_eq!(initiated_port(&calls[0])["number"], 22);
    assert_eq!(
        audit_actions_for(&app, &reply.request_id()).await,
        [
            AuditAction::RequestReceived,
            AuditAction::AccessAllowed,
            AuditAction::AccessInitiated
        ]
    );
    audit_channel_matches_log(&app).await;
    app.finish().await;
}

#[tokio::test]
async fn denial_autocomplete_and_admin_mapping_work_the_same_over_http() {
    let (app, signer, endpoint) = spawn_http_app().await;
    let d = &app.discord;
    let post = |interaction| d.post_interaction(&endpoint, interaction, &signer);
    let dev_request = || jit(d, "ssh", "web-03", "1h", &[DEV_ROLE]).string("from", "203.0.113.7");

    let denied = post(dev_request()).await;
    assert_deferred(&denied);
    let denied = reply_to(d, denied.sent).await;
    let choices = post(
        d.autocomplete("jit")
            .string("port", "ssh")
            .focused("vm", "")
            .roles([SRE_ROLE]),
    )
    .await;
    let refused = post(
        d.slash("jit-admin")
            .subcommand("mappings")
            .roles([SRE_ROLE]),
    )
    .await;
    let refused = reply_to(d, refused.sent).await;
    let mapped = post(
        d.slash("jit-admin")
            .subcommand("map")
            .string("name", "dev-web")
            .option("role", 8, json!(DEV_ROLE.to_string()))
            .string("vms", "web-*")
            .string("ports", "ssh")
            .string("max_duration", "2h")
            .roles([ADMIN_ROLE]),
    )
    .await;
    let mapped = reply_to(d, mapped.sent).await;
    let granted = post(dev_request()).await;
    let granted = reply_to(d, granted.sent).await;

    assert_eq!(denied.title(), "Access denied", "{}", denied.text());
    assert_eq!(choices.status, 200);
    assert_eq!(choices.body["type"], 8, "autocomplete is answered inline");
    let vms: Vec<&str> = choices.body["data"]["choices"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert!(
        vms.len() == 4
            && vms
                .iter()
                .all(|v| v.starts_with("web-0") && v.ends_with("(rg-web)")),
        "{vms:?}"
    );
    assert_eq!(refused.title(), "Not allowed", "{}", refused.text());
    assert_eq!(mapped.title(), "Mapping added", "{}", mapped.text());
    assert!(
        granted.title().contains("Access granted"),
        "{}",
        granted.text()
    );
    assert_eq!(
        initiates(&app).len(),
        1,
        "only the granted request reached Azure"
    );
    app.finish().await;
}

#[tokio::test]
async fn a_bad_signature_gets_401_and_changes_nothing() {
    let (app, signer, endpoint) = spawn_http_app().await;
    let d = &app.discord;
    let intruder = Signer::from_seed([9; 32]);

    let forged = d
        .post_interaction(&endpoint, ssh_web_01(d), &intruder)
        .await;
    let sent = d.interaction_json(ssh_web_01(d));
    let signed = signer.headers(&sent.body_bytes());
    let mut tampered = sent.payload.clone();
    tampered["data"]["options"][1]["value"] = json!("web-02");
    let (tampered_status, _) =
        post_raw(&endpoint, serde_json::to_vec(&tampered).unwrap(), &signed).await;
    let (unsigned_status, _) = post_raw(&endpoint, sent.body_bytes(), &[]).await;
    let stale = {
        let old = (chrono::Utc::now() - chrono::Duration::minutes(10))
            .timestamp()
            .to_string();
        let body = sent.body_bytes();
        let signature = signer.sign(&old, &body);
        post_raw(
            &endpoint,
            body,
            &[
                ("X-Signature-Ed25519", signature),
                ("X-Signature-Timestamp", old),
            ],
        )
        .await
        .0
    };

    assert_eq!(forged.status, 401);
    assert_eq!(tampered_status, 401);
    assert_eq!(unsigned_status, 401);
    assert_eq!(stale, 401, "a replayed old request");
    assert!(initiates(&app).is_empty());
    assert!(d.callbacks(forged.sent.id).is_empty());
    assert!(
        app.store
            .grant(&drawbridge::domain::RequestId::parse(&forged.sent.id.to_string()).unwrap())
            .await
            .unwrap()
            .is_none()
    );
    app.finish().await;
}

#[tokio::test]
async fn a_double_posted_interaction_initiates_once() {
    let (app, signer, endpoint) = spawn_http_app().await;
    let d = &app.discord;
    let sent: SentInteraction = d.interaction_json(ssh_web_01(d));
    let body = sent.body_bytes();

    // Discord retries a delivery it thinks failed: the same signed body twice.
    let (headers_1, headers_2) = (signer.headers(&body), signer.headers(&body));
    let (first, second) = tokio::join!(
        post_raw(&endpoint, body.clone(), &headers_1),
        post_raw(&endpoint, body.clone(), &headers_2),
    );
    let accepted: Vec<u16> = [&first, &second]
        .into_iter()
        .map(|(status, answer)| {
            assert_eq!((*status, &answer["type"]), (200, &json!(5)));
            d.record_inline_response(sent.id, answer.clone())
        })
        .collect();
    assert_eq!(accepted, [204, 400], "Discord takes the first answer only");
    let reply = reply_to(d, sent.clone()).await;

    // The repeat was answered from the first delivery and ran nothing: the
    // reply was edited once.
    let edits = d
        .calls_to(
            "PATCH",
            &format!("/webhooks/{}/{}", d.application_id(), sent.token),
        )
        .iter()
        .filter(|c| c.status == 200)
        .count();
    assert_eq!(edits, 1, "one delivery ran");
    assert_eq!(initiates(&app).len(), 1, "one request id initiates once");
    // The reply shows the grant.
    assert!(reply.title().contains("Access granted"), "{}", reply.text());
    let last = d.interaction_response(sent.id).expect("a reply");
    assert!(
        last["embeds"][0]["title"]
            .as_str()
            .is_some_and(|t| t.contains("Access granted")),
        "{last}"
    );
    assert_eq!(
        last["components"][0]["components"].as_array().map(Vec::len),
        Some(2)
    );
    assert_eq!(
        audit_actions_for(&app, &reply.request_id()).await,
        [
            AuditAction::RequestReceived,
            AuditAction::AccessAllowed,
            AuditAction::AccessInitiated
        ]
    );
    app.finish().await;
}

#[tokio::test]
async fn the_http_ack_never_waits_on_azure() {
    let (app, signer, endpoint) = spawn_http_app().await;
    let d = &app.discord;
    app.azure.emulator.inject(
        Route::Initiate,
        FaultRule::always(Fault::Latency { millis: 2000 }),
    );

    let started = Instant::now();
    let delivery = d.post_interaction(&endpoint, ssh_web_01(d), &signer).await;
    let answered = started.elapsed();

    assert_deferred(&delivery);
    assert!(
        answered < Duration::from_millis(1000),
        "the POST was answered in {answered:?} although Azure takes 2 s"
    );
    let reply = reply_to(d, delivery.sent).await;
    assert!(reply.ack.elapsed < ACK_LIMIT);
    assert!(reply.title().contains("Access granted"), "{}", reply.text());
    app.finish().await;
}
