//! End to end: the real app against the fake Discord and the Azure emulator.

use std::time::Duration;

use crate::support::app::{SRE_ROLE, spawn_app};

#[tokio::test]
async fn a_mapped_engineer_gets_ssh_on_web_01() {
    // Arrange
    let app = spawn_app().await;
    let d = &app.discord;

    // Act
    let sent = d
        .send_interaction(
            d.slash("jit")
                .string("port", "ssh")
                .string("vm", "web-01")
                .string("duration", "2h")
                .string("from", "203.0.113.7")
                .roles([SRE_ROLE]),
        )
        .await;

    // Assert
    let ack = d
        .wait_for_callback(sent.id, Duration::from_secs(3))
        .await
        .expect("deferred");
    assert_eq!(ack.kind(), Some(5));
    assert!(ack.is_ephemeral());
    let reply = d
        .wait_for_interaction_response(sent.id, Duration::from_secs(10), |m| {
            m.to_string().contains("Access granted")
        })
        .await
        .expect("the reply shows the grant");
    assert!(reply.to_string().contains("rg-web/web-01"), "{reply}");
    let initiates = app.azure.emulator.initiate_calls();
    assert_eq!(initiates.len(), 1);
    let body = initiates[0].body.as_ref().expect("initiate has a body");
    let port = &body["virtualMachines"][0]["ports"][0];
    assert_eq!(port["number"], 22);
    assert_eq!(port["allowedSourceAddressPrefix"], "203.0.113.7");
    app.stop().await.expect("clean stop");
}
