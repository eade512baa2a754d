//! Issue 16, the weekly picture in the audit channel: posted at the
//! configured time (`report.weekly`, on the manual clock) with the PNG and
//! the CSV attached and a short summary, once, also across a restart; and
//! on `/jit-admin report`, for admins only.

use chrono::{DateTime, Utc};
use drawbridge::clock::ManualClock;
use drawbridge::report::{HEIGHT, WIDTH};
use serde_json::Value;

use crate::e2e::{WAIT, interact, jit};
use crate::support::app::{ADMIN_ROLE, AUDIT_CHANNEL, SRE_ROLE, TestApp, TestAppBuilder};
use crate::support::fake_discord::{FakeDiscord, USER_ID};

const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc)
}

/// The audit channel's posts that carry files.
fn reports(d: &FakeDiscord) -> Vec<Value> {
    d.channel_messages(AUDIT_CHANNEL)
        .into_iter()
        .filter(|m| m["attachments"].as_array().is_some_and(|a| !a.is_empty()))
        .collect()
}

async fn wait_for_reports(app: &TestApp, n: usize) -> Vec<Value> {
    assert!(
        app.discord
            .wait_until(WAIT, |d| reports(d).len() >= n)
            .await,
        "{n} report(s) posted: {:?}",
        app.discord.channel_messages(AUDIT_CHANNEL)
    );
    reports(&app.discord)
}

/// Checks one report post: the summary, a PNG of the report's size and
/// the CSV with its header.
fn assert_is_report(d: &FakeDiscord, post: &Value, first_day: &str) {
    let content = post["content"].as_str().unwrap_or_default();
    assert!(content.contains("Weekly access report"), "{content}");
    assert!(
        content.contains(&format!("Access from {first_day} for 7 days")),
        "{content}"
    );
    let files = d.files_of(post);
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            format!("drawbridge-week-{first_day}.png"),
            format!("drawbridge-week-{first_day}.csv")
        ]
    );
    let png = &files[0].1;
    assert!(png.starts_with(PNG_SIGNATURE), "a PNG");
    let reader = png::Decoder::new(std::io::Cursor::new(png.clone()))
        .read_info()
        .expect("the PNG decodes");
    assert_eq!((reader.info().width, reader.info().height), (WIDTH, HEIGHT));
    let csv = String::from_utf8(files[1].1.clone()).expect("the CSV is text");
    assert!(csv.starts_with("kind,key,when,value\n"), "{csv}");
}

#[tokio::test]
async fn the_weekly_report_is_posted_at_its_time_once_even_across_a_restart() {
    // Arrange: Monday 2026-11-30, a minute before the weekly slot.
    let clock = ManualClock::new(at("2026-11-30T08:59:00Z"));
    let mut app = TestAppBuilder::default()
        .clock(clock.clone())
        .env("REPORT__WEEKLY", "Mon 09:00")
        .start()
        .await;
    assert!(reports(&app.discord).is_empty(), "nothing before the slot");

    // Act: the slot comes.
    clock.set(at("2026-11-30T09:00:00Z"));

    // Assert: one post with both files, for the week before.
    let posted = wait_for_reports(&app, 1).await;
    assert_is_report(&app.discord, &posted[0], "2026-11-23");

    // Act: a grant (its reminder is due at 09:50), a restart, then 09:50:
    // the restarted scheduler's pass that sends the reminder has looked at
    // the weekly report too.
    let reply = interact(
        &app,
        jit(&app.discord, "ssh", "web-01", "1h", &[SRE_ROLE]).string("from", "203.0.113.7"),
    )
    .await;
    assert!(
        reply.title().starts_with("Access granted"),
        "{}",
        reply.text()
    );
    app.restart().await;
    clock.set(at("2026-11-30T09:50:00Z"));
    let reminded = app
        .discord
        .wait_until(WAIT, |d| !d.dm_messages(USER_ID).is_empty())
        .await;
    assert!(reminded, "the reminder was sent after the restart");

    // Assert: still one report (the outbox delivers in order: a second
    // post, queued before the reminder, would be there).
    assert_eq!(reports(&app.discord).len(), 1, "posted once");
    app.finish().await;
}

#[tokio::test]
async fn jit_admin_report_posts_to_the_audit_channel_and_answers_the_admin() {
    // Arrange
    let app = TestAppBuilder::default().start().await;
    let d = &app.discord;

    // Act
    let refused = interact(
        &app,
        d.slash("jit-admin").subcommand("report").roles([SRE_ROLE]),
    )
    .await;
    let answer = interact(
        &app,
        d.slash("jit-admin")
            .subcommand("report")
            .roles([ADMIN_ROLE]),
    )
    .await;

    // Assert
    assert_eq!(refused.title(), "Not allowed", "{}", refused.text());
    assert_eq!(answer.title(), "Report posted", "{}", answer.text());
    assert!(
        answer.text().contains(&format!("<#{AUDIT_CHANNEL}>")),
        "{}",
        answer.text()
    );
    assert!(answer.text().contains("for 7 days"), "{}", answer.text());
    let posted = wait_for_reports(&app, 1).await;
    let first_day = (Utc::now() - chrono::Duration::days(6)).date_naive();
    assert_is_report(d, &posted[0], &first_day.to_string());
    assert_eq!(reports(d).len(), 1, "the refused request posted nothing");
    app.finish().await;
}
