//! The teardown check of every end-to-end test ("what the bot shows
//! matches Azure", `support/shown.rs` and `support/said.rs`) can fail: fed
//! a message that lies about a real grant, it names the lie.

use std::sync::Arc;

use chrono::TimeDelta;
use drawbridge::discord::{DiscordSender, discord_http};
use drawbridge::domain::{GrantState, PortAliases};
use drawbridge::interactions::ChatSender as _;
use drawbridge::service::messages;

use crate::e2e::{grant, interact, ssh_web_01};
use crate::support::app::{TestApp, spawn_app};
use crate::support::said::{Said, end_times};
use crate::support::shown::shown_violations;

/// Sends `message` to `user` as a DM through the bot's own Discord client,
/// as the bot would.
async fn dm_as_the_bot(
    app: &TestApp,
    user: u64,
    message: &drawbridge::chat::ChatMessage,
    key: &str,
) {
    let http = discord_http(&app.settings.discord).expect("the Discord client builds");
    DiscordSender::new(Arc::clone(&http))
        .direct(user, message, key)
        .await
        .expect("the fake Discord takes the DM");
}

#[tokio::test]
async fn a_dm_claiming_a_longer_window_than_azure_keeps_is_caught() {
    // Arrange: a real grant, and everything shown about it is true.
    let app = spawn_app().await;
    let reply = interact(&app, ssh_web_01(&app.discord)).await;
    let mut stored = grant(&app, &reply.request_id()).await;
    assert_eq!(stored.state, GrantState::Active);
    assert_eq!(shown_violations(&app).await, Vec::<String>::new());

    // Act: a reminder DM that says the port stays open an hour longer.
    let real_end = stored.end_time.expect("an end");
    stored.end_time = Some(real_end + TimeDelta::hours(1));
    let lie = messages::reminder(
        &stored,
        real_end + TimeDelta::hours(1),
        &PortAliases::default(),
        None,
    );
    dm_as_the_bot(&app, stored.user_id.get(), &lie, "lie-longer").await;

    // Assert: the invented end and the false last word are both named.
    let wrong = shown_violations(&app).await;
    let id = stored.request_id.as_str();
    assert!(
        wrong
            .iter()
            .any(|w| w.contains(id) && w.contains("never had a window")),
        "{wrong:#?}"
    );
    assert!(
        wrong
            .iter()
            .any(|w| w.contains(id) && w.contains("last told")),
        "{wrong:#?}"
    );
    app.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_dm_saying_expired_while_azure_keeps_the_port_open_is_caught() {
    // Arrange
    let app = spawn_app().await;
    let reply = interact(&app, ssh_web_01(&app.discord)).await;
    let mut stored = grant(&app, &reply.request_id()).await;

    // Act: an expiry notice for a window Azure still keeps open.
    stored.state = GrantState::Expired;
    let lie = messages::expired(&stored, false, &PortAliases::default());
    dm_as_the_bot(&app, stored.user_id.get(), &lie, "lie-expired").await;

    // Assert
    let wrong = shown_violations(&app).await;
    assert!(
        wrong
            .iter()
            .any(|w| w.contains(stored.request_id.as_str()) && w.contains("Closed")),
        "{wrong:#?}"
    );
    app.stop().await.expect("clean stop");
}

#[test]
fn only_times_written_as_an_end_are_ends() {
    let text = "<t:100:f> → <t:200:f> (<t:200:R>); open until <t:300:f>; ends <t:400:f>; the port closes <t:500:f>; asked at <t:600:f>; by <t:700:f>";
    let ends: Vec<i64> = end_times(text).iter().map(|t| t.timestamp()).collect();
    assert_eq!(ends, [200, 300, 400, 500]);
    assert_ne!(Said::Closed, Said::OpenUntil(chrono::Utc::now()));
}
