//! The Discord adapter against the fake Discord, with a real serenity client:
//! gateway mode, HTTP interactions mode, and the sender.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use drawbridge::chat::{Attachment, Button, ButtonAction, ButtonStyle, Card, ChatMessage, Tone};
use drawbridge::clock::{ManualClock, SharedClock, SystemClock};
use drawbridge::config::{DiscordMode, DiscordSettings};
use drawbridge::discord::{
    DiscordSender, GatewayStatus, discord_http, interactions_router, run_gateway,
};
use drawbridge::domain::Snowflake;
use drawbridge::interactions::{
    AutocompleteQuery, ChatSender, Choice, InteractionHandler, Invocation, SendError, SlashCommand,
};
use drawbridge::service::replica::Tenure;
use secrecy::SecretString;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;

use crate::support::fake_discord::signing::Signer;
use crate::support::fake_discord::{
    APPLICATION_ID, CHANNEL_ID, FailMode, FakeDiscord, GUILD_ID, RouteMatch, USER_ID,
};

const WAIT: Duration = Duration::from_secs(10);

// ----- a handler that records what reaches it --------------------------------------------------

#[derive(Default)]
struct Calls {
    commands: Vec<(Invocation, SlashCommand)>,
    /// When each command call started and finished.
    command_times: Vec<(Instant, Option<Instant>)>,
    autocompletes: Vec<AutocompleteQuery>,
    buttons: Vec<(Invocation, ButtonAction)>,
}

struct Recorder {
    calls: Mutex<Calls>,
    delay: Duration,
    choices: usize,
    /// A file every command reply carries.
    file: Option<Attachment>,
}

impl Recorder {
    fn new() -> Arc<Self> {
        Self::slow(Duration::ZERO)
    }

    fn slow(delay: Duration) -> Arc<Self> {
        Arc::new(Self {
            calls: Mutex::new(Calls::default()),
            delay,
            choices: 40,
            file: None,
        })
    }

    fn with_file(file: Attachment) -> Arc<Self> {
        Arc::new(Self {
            calls: Mutex::new(Calls::default()),
            delay: Duration::ZERO,
            choices: 40,
            file: Some(file),
        })
    }

    fn calls(&self) -> std::sync::MutexGuard<'_, Calls> {
        self.calls.lock().unwrap()
    }

    async fn wait_for(&self, what: &str, mut cond: impl FnMut(&Calls) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !cond(&self.calls()) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn card(request_id: &str, title: &str) -> ChatMessage {
        ChatMessage::card(
            Card::new(title, Tone::Success)
                .field("VM", "web-01", true)
                .footer(format!("request {request_id}")),
        )
        .with_buttons(vec![
            Button {
                action: ButtonAction::Extend(request_id.to_owned()),
                label: "Extend".into(),
                style: ButtonStyle::Primary,
            },
            Button {
                action: ButtonAction::CloseEarly(request_id.to_owned()),
                label: "Close early".into(),
                style: ButtonStyle::Danger,
            },
        ])
    }
}

#[async_trait]
impl InteractionHandler for Recorder {
    async fn command(&self, who: &Invocation, command: &SlashCommand) -> ChatMessage {
        let index = {
            let mut calls = self.calls();
            calls.commands.push((who.clone(), command.clone()));
            calls.command_times.push((Instant::now(), None));
            calls.command_times.len() - 1
        };
        tokio::time::sleep(self.delay).await;
        self.calls().command_times[index].1 = Some(Instant::now());
        let reply = Self::card(&who.id, "Access granted");
        match &self.file {
            Some(file) => reply.with_attachment(file.clone()),
            None => reply,
        }
    }

    async fn autocomplete(&self, _who: &Invocation, query: &AutocompleteQuery) -> Vec<Choice> {
        self.calls().autocompletes.push(query.clone());
        (0..self.choices)
            .map(|i| Choice {
                name: format!("web-{i:02}"),
                value: format!("web-{i:02}"),
            })
            .collect()
    }

    async fn button(&self, who: &Invocation, action: &ButtonAction) -> ChatMessage {
        self.calls().buttons.push((who.clone(), action.clone()));
        ChatMessage::text("Extended.")
    }
}

// ----- harness ---------------------------------------------------------------------------------

fn settings(fake: &FakeDiscord) -> DiscordSettings {
    DiscordSettings {
        token: Some(SecretString::from("fake-token")),
        application_id: Snowflake::from_u64(APPLICATION_ID),
        guild_id: Snowflake::from_u64(GUILD_ID),
        register_globally: false,
        base_url: fake.base_url().parse().unwrap(),
        mode: DiscordMode::Gateway,
        public_key: None,
        audit_channel_id: None,
        approvals_channel_id: None,
        alert_role_id: None,
        admin_role_ids: Vec::new(),
        gateway_lease_ttl: drawbridge::service::replica::GATEWAY_TTL,
    }
}

/// `run_gateway` in a task, with its shutdown trigger.
struct Gateway {
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
    status: GatewayStatus,
    /// Ending it deposes this holder of the gateway session.
    tenure: Tenure,
}

impl Gateway {
    async fn start(fake: &FakeDiscord, handler: Arc<Recorder>) -> Self {
        let settings = settings(fake);
        let status = GatewayStatus::new();
        let tenure = Tenure::unbounded();
        let (trigger, shutdown) = oneshot::channel::<()>();
        let task = tokio::spawn({
            let status = status.clone();
            let tenure = tenure.clone();
            async move {
                run_gateway(&settings, handler, status, tenure, async {
                    let _ = shutdown.await;
                })
                .await
            }
        });
        assert!(fake.wait_until_ready(WAIT).await, "gateway never READY");
        Self {
            shutdown: Some(trigger),
            task,
            status,
            tenure,
        }
    }

    /// Triggers shutdown and returns what `run_gateway` returned.
    async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(trigger) = self.shutdown.take() {
            let _ = trigger.send(());
        }
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("run_gateway returns after shutdown")
            .expect("run_gateway task")
    }
}

fn embed_title(message: &Value) -> Option<&str> {
    message.pointer("/embeds/0/title").and_then(Value::as_str)
}

fn button_ids(message: &Value) -> Vec<String> {
    message["components"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|row| row["components"].as_array().cloned().unwrap_or_default())
        .filter_map(|b| b["custom_id"].as_str().map(str::to_owned))
        .collect()
}

// ----- gateway mode ----------------------------------------------------------------------------

#[tokio::test]
async fn slash_jit_is_deferred_at_once_then_the_reply_is_edited_to_the_card() {
    // Arrange
    let fake = FakeDiscord::start().await;
    let handler = Recorder::slow(Duration::from_secs(2));
    let gateway = Gateway::start(&fake, handler.clone()).await;

    // Act
    let sent = fake
        .send_interaction(
            fake.slash("jit")
                .user(USER_ID, "alice")
                .roles([111, 222])
                .string("port", "ssh")
                .string("vm", "web-01")
                .string("duration", "2h"),
        )
        .await;

    // Assert: the ack
    let callback = fake
        .wait_for_callback(sent.id, WAIT)
        .await
        .expect("a callback");
    assert_eq!(callback.kind(), Some(5));
    assert!(callback.is_ephemeral());
    assert_eq!(callback.status, 204);
    assert!(callback.elapsed < Duration::from_secs(3), "{callback:?}");
    // Assert: the edit
    let original = fake
        .wait_for_interaction_response(sent.id, WAIT, |m| embed_title(m).is_some())
        .await
        .expect("the original response is edited");
    assert_eq!(embed_title(&original), Some("Access granted"));
    let id = sent.id.to_string();
    assert_eq!(
        button_ids(&original),
        [format!("extend:{id}"), format!("close:{id}")]
    );
    assert_eq!(original["flags"].as_u64().unwrap_or(0) & 64, 64);
    // Assert: the handler's view, and the ack came before it returned
    {
        let calls = handler.calls();
        let (who, command) = &calls.commands[0];
        assert_eq!(command.name, "jit");
        assert_eq!(command.subcommand, None);
        assert_eq!(command.option("port"), Some("ssh"));
        assert_eq!(command.option("vm"), Some("web-01"));
        assert_eq!(command.option("duration"), Some("2h"));
        assert_eq!(who.id, id);
        assert_eq!(who.member.user_id.get(), USER_ID);
        assert_eq!(who.member.name, "alice");
        let roles: Vec<u64> = who.member.roles.iter().map(|r| r.get()).collect();
        assert_eq!(roles, [111, 222]);
        assert_eq!(who.guild_id, Some(GUILD_ID));
        assert_eq!(who.channel_id, Some(CHANNEL_ID));
        let (_, finished) = calls.command_times[0];
        assert!(callback.received_at < finished.expect("handler finished"));
    }
    gateway.stop().await.unwrap();
}

#[tokio::test]
async fn a_deposed_gateway_holder_closes_its_session_and_answers_nothing_more() {
    // Arrange
    let fake = FakeDiscord::start().await;
    let handler = Recorder::new();
    let gateway = Gateway::start(&fake, handler.clone()).await;
    assert_eq!(fake.ready_sessions(), 1);

    // Act: the tenure ends (another replica took the lease, or it could
    // not be renewed in time), and Discord keeps dispatching.
    gateway.tenure.end();
    let closed = fake.wait_until(WAIT, |f| f.ready_sessions() == 0).await;
    let late = fake.dispatch_interaction(fake.slash("jit").string("vm", "web-01"));
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Assert
    assert!(closed, "the shard is closed");
    assert!(fake.callbacks(late.id).is_empty(), "nothing answered");
    assert!(handler.calls().commands.is_empty());
    assert!(!gateway.status.is_connected());
    tokio::time::timeout(WAIT, gateway.task)
        .await
        .expect("run_gateway returns when the tenure ends")
        .expect("run_gateway task")
        .expect("a deposed holder stops cleanly");
}

#[tokio::test]
async fn commands_are_bulk_registered_to_the_guild_on_ready() {
    // Arrange
    let fake = FakeDiscord::start().await;
    let gateway = Gateway::start(&fake, Recorder::new()).await;

    // Act
    let route = format!("/applications/{APPLICATION_ID}/guilds/{GUILD_ID}/commands");
    let call = fake
        .wait_for_call(WAIT, |c| c.is("PUT", &route))
        .await
        .expect("a bulk PUT of the guild commands");

    // Assert
    assert_eq!(call.status, 200);
    assert!(fake.global_commands().is_empty());
    let commands = fake.guild_commands(GUILD_ID);
    let names: Vec<_> = commands
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "jit",
            "jit-status",
            "jit-ip",
            "jit-who",
            "jit-admin",
            "jit-pending"
        ]
    );
    let jit = &commands[0]["options"];
    for (i, name) in ["port", "vm", "duration"].iter().enumerate() {
        assert_eq!(jit[i]["name"], *name);
        assert_eq!(jit[i]["required"], true);
    }
    assert!(gateway.status.is_connected());
    gateway.stop().await.unwrap();
}

#[tokio::test]
async fn admin_map_arrives_with_its_subcommand_and_the_role_as_an_id() {
    // Arrange
    let fake = FakeDiscord::start().await;
    let handler = Recorder::new();
    let gateway = Gateway::start(&fake, handler.clone()).await;

    // Act
    let sent = fake
        .send_interaction(
            fake.slash("jit-admin")
                .roles([999])
                .subcommand("map")
                .string("name", "web-ssh")
                .option("role", 8, json!("7007"))
                .string("vms", "web-*")
                .string("ports", "ssh")
                .string("max_duration", "4h")
                .boolean("require_reason", true),
        )
        .await;
    handler
        .wait_for("the command", |c| !c.commands.is_empty())
        .await;

    // Assert
    let (_, command) = handler.calls().commands[0].clone();
    assert_eq!(command.name, "jit-admin");
    assert_eq!(command.subcommand.as_deref(), Some("map"));
    assert_eq!(command.option("role"), Some("7007"));
    assert_eq!(command.option("require_reason"), Some("true"));
    assert_eq!(command.option("max_duration"), Some("4h"));
    assert!(
        fake.wait_for_interaction_response(sent.id, WAIT, |m| embed_title(m).is_some())
            .await
            .is_some()
    );
    gateway.stop().await.unwrap();
}

#[tokio::test]
async fn user_options_carry_the_chosen_members_roles() {
    // Arrange: the builder has no resolved data, so the payload is written out.
    let fake = FakeDiscord::start().await;
    let handler = Recorder::new();
    let gateway = Gateway::start(&fake, handler.clone()).await;
    let mut payload = fake
        .interaction_json(
            fake.slash("jit-admin")
                .subcommand("explain")
                .string("vm", "web-01")
                .string("port", "ssh")
                .string("duration", "1h")
                .option("user", 6, json!("8008")),
        )
        .payload;
    payload["data"]["resolved"] = json!({
        "users": {"8008": {"id": "8008", "username": "bob", "discriminator": "0",
                           "global_name": "Bob", "avatar": null}},
        "members": {"8008": {"roles": ["31", "32"], "joined_at": "2024-01-01T00:00:00+00:00",
                             "deaf": false, "mute": false, "pending": false, "flags": 0}},
    });

    // Act
    fake.send_dispatch("INTERACTION_CREATE", payload);
    handler
        .wait_for("the command", |c| !c.commands.is_empty())
        .await;

    // Assert
    let (_, command) = handler.calls().commands[0].clone();
    assert_eq!(command.subcommand.as_deref(), Some("explain"));
    assert_eq!(command.option("user"), Some("8008"));
    let roles: Vec<u64> = command.resolved_roles["user"]
        .iter()
        .map(|r| r.get())
        .collect();
    assert_eq!(roles, [31, 32]);
    gateway.stop().await.unwrap();
}

#[tokio::test]
async fn autocomplete_answers_with_at_most_25_choices() {
    // Arrange
    let fake = FakeDiscord::start().await;
    let handler = Recorder::new();
    let gateway = Gateway::start(&fake, handler.clone()).await;

    // Act
    let sent = fake
        .send_interaction(
            fake.autocomplete("jit")
                .string("port", "ssh")
                .focused("vm", "we"),
        )
        .await;
    let answered = fake
        .wait_until(WAIT, |f| f.autocomplete_choices(sent.id).is_some())
        .await;

    // Assert
    assert!(answered, "no autocomplete answer");
    let choices = fake.autocomplete_choices(sent.id).unwrap();
    assert_eq!(choices.len(), 25);
    assert_eq!(choices[0], json!({"name": "web-00", "value": "web-00"}));
    let callback = &fake.callbacks(sent.id)[0];
    assert_eq!(callback.kind(), Some(8));
    let query = handler.calls().autocompletes[0].clone();
    assert_eq!(query.command, "jit");
    assert_eq!(query.focused, "vm");
    assert_eq!(query.partial, "we");
    assert_eq!(query.options.get("port").map(String::as_str), Some("ssh"));
    gateway.stop().await.unwrap();
}

#[tokio::test]
async fn a_button_press_reaches_the_handler_and_its_reply_is_shown_ephemerally() {
    // Arrange
    let fake = FakeDiscord::start().await;
    let handler = Recorder::new();
    let gateway = Gateway::start(&fake, handler.clone()).await;

    // Act
    let sent = fake
        .send_interaction(fake.button("extend:req-1").roles([111]))
        .await;
    handler
        .wait_for("the button", |c| !c.buttons.is_empty())
        .await;

    // Assert
    let (who, action) = handler.calls().buttons[0].clone();
    assert_eq!(action, ButtonAction::Extend("req-1".into()));
    assert_eq!(who.member.roles.len(), 1);
    let callback = fake.wait_for_callback(sent.id, WAIT).await.unwrap();
    assert_eq!(callback.kind(), Some(5));
    assert!(callback.is_ephemeral());
    let reply = fake
        .wait_for_interaction_response(sent.id, WAIT, |m| m["content"] == "Extended.")
        .await
        .expect("the ephemeral reply is edited");
    assert_eq!(reply["flags"].as_u64().unwrap_or(0) & 64, 64);
    gateway.stop().await.unwrap();
}

#[tokio::test]
async fn an_unknown_button_is_told_it_is_no_longer_valid() {
    // Arrange
    let fake = FakeDiscord::start().await;
    let handler = Recorder::new();
    let gateway = Gateway::start(&fake, handler.clone()).await;

    // Act
    let sent = fake.send_interaction(fake.button("approve:x/y")).await;
    let callback = fake.wait_for_callback(sent.id, WAIT).await.unwrap();

    // Assert
    assert_eq!(callback.kind(), Some(4));
    assert!(callback.is_ephemeral());
    assert_eq!(
        callback.body["data"]["content"],
        "This button is no longer valid."
    );
    assert!(handler.calls().buttons.is_empty());
    gateway.stop().await.unwrap();
}

#[tokio::test]
async fn a_double_delivered_interaction_runs_the_handler_once() {
    // Arrange
    let fake = FakeDiscord::start().await;
    let handler = Recorder::new();
    let gateway = Gateway::start(&fake, handler.clone()).await;

    // Act: the same interaction twice (a re-delivery, or two replicas)
    let sent = fake
        .send_interaction(
            fake.slash("jit")
                .string("port", "ssh")
                .string("vm", "web-01")
                .string("duration", "2h"),
        )
        .await;
    fake.send_dispatch("INTERACTION_CREATE", sent.payload.clone());
    assert!(
        fake.wait_until(WAIT, |f| f.callbacks(sent.id).len() == 2)
            .await
    );
    fake.wait_for_interaction_response(sent.id, WAIT, |m| embed_title(m).is_some())
        .await
        .expect("the winner's reply");
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Assert
    let mut statuses: Vec<u16> = fake.callbacks(sent.id).iter().map(|c| c.status).collect();
    statuses.sort_unstable();
    assert_eq!(statuses, [204, 400]);
    assert_eq!(handler.calls().commands.len(), 1);
    gateway.stop().await.unwrap();
}

#[tokio::test]
async fn a_command_from_a_dm_has_no_roles_and_no_guild() {
    // Arrange
    let fake = FakeDiscord::start().await;
    let handler = Recorder::new();
    let gateway = Gateway::start(&fake, handler.clone()).await;

    // Act
    fake.send_interaction(fake.slash("jit-status").in_dm())
        .await;
    handler
        .wait_for("the command", |c| !c.commands.is_empty())
        .await;

    // Assert
    let (who, command) = handler.calls().commands[0].clone();
    assert_eq!(command.name, "jit-status");
    assert!(who.member.roles.is_empty());
    assert_eq!(who.guild_id, None);
    assert_eq!(who.member.user_id.get(), USER_ID);
    gateway.stop().await.unwrap();
}

#[tokio::test]
async fn a_failed_edit_of_the_reply_is_retried() {
    // Arrange
    let fake = FakeDiscord::start().await;
    let gateway = Gateway::start(&fake, Recorder::new()).await;
    fake.fail_next(RouteMatch::EditOriginal, FailMode::Status(503), 1);
    fake.fail_next(
        RouteMatch::EditOriginal,
        FailMode::Json {
            status: 404,
            body: json!({"code": 10015, "message": "Unknown Webhook"}),
        },
        1,
    );

    // Act
    let sent = fake.send_interaction(fake.slash("jit-status")).await;

    // Assert
    assert!(
        fake.wait_for_interaction_response(sent.id, WAIT, |m| embed_title(m).is_some())
            .await
            .is_some()
    );
    let edits = fake.calls_to("PATCH", "/webhooks/");
    let statuses: Vec<u16> = edits.iter().map(|c| c.status).collect();
    assert_eq!(statuses, [503, 404, 200]);
    gateway.stop().await.unwrap();
}

#[tokio::test]
async fn shutdown_lets_the_interaction_in_flight_finish_and_returns_ok() {
    // Arrange
    let fake = FakeDiscord::start().await;
    let handler = Recorder::slow(Duration::from_secs(2));
    let gateway = Gateway::start(&fake, handler.clone()).await;
    let status = gateway.status.clone();
    let sent = fake
        .send_interaction(
            fake.slash("jit")
                .string("port", "ssh")
                .string("vm", "web-01")
                .string("duration", "2h"),
        )
        .await;
    handler
        .wait_for("the slow command", |c| !c.commands.is_empty())
        .await;

    // Act
    let result = gateway.stop().await;

    // Assert
    result.expect("run_gateway returns Ok");
    let original = fake
        .interaction_response(sent.id)
        .expect("an original response");
    assert_eq!(embed_title(&original), Some("Access granted"));
    assert!(!status.is_connected());
}

#[tokio::test]
async fn a_reply_with_a_file_is_edited_in_with_the_file() {
    // Arrange
    let fake = FakeDiscord::start().await;
    let rdp = b"full address:s:20.1.2.3:3389\r\n".to_vec();
    let handler = Recorder::with_file(Attachment::new("web-01.rdp", rdp.clone()).unwrap());
    let gateway = Gateway::start(&fake, handler).await;

    // Act
    let sent = fake
        .send_interaction(fake.slash("jit").string("vm", "web-01"))
        .await;

    // Assert
    let original = fake
        .wait_for_interaction_response(sent.id, WAIT, |m| embed_title(m).is_some())
        .await
        .expect("the original response is edited");
    assert_eq!(embed_title(&original), Some("Access granted"));
    assert_eq!(fake.files_of(&original), [("web-01.rdp".to_owned(), rdp)]);
    gateway.stop().await.unwrap();
}

// ----- the sender ------------------------------------------------------------------------------

fn sender(fake: &FakeDiscord) -> DiscordSender {
    DiscordSender::new(discord_http(&settings(fake)).unwrap())
}

#[tokio::test]
async fn posts_carry_a_nonce_and_a_repeated_key_posts_once() {
    // Arrange
    let fake = FakeDiscord::start().await;
    let sender = sender(&fake);
    let message = ChatMessage::text("<@6006> opened SSH on web-01");

    // Act
    sender.post(CHANNEL_ID, &message, "audit-1").await.unwrap();
    sender.post(CHANNEL_ID, &message, "audit-1").await.unwrap();
    sender.post(CHANNEL_ID, &message, "audit-2").await.unwrap();

    // Assert
    let posted = fake.channel_messages(CHANNEL_ID);
    assert_eq!(posted.len(), 2);
    let calls = fake.calls_to("POST", &format!("/channels/{CHANNEL_ID}/messages"));
    assert_eq!(calls.len(), 3);
    assert_eq!(calls[0].body["nonce"], "audit-1");
    assert_eq!(calls[0].body["enforce_nonce"], true);
    assert_eq!(calls[0].body["allowed_mentions"]["parse"], json!([]));
}

#[tokio::test]
async fn posts_with_files_carry_each_file_once() {
    // Arrange
    let fake = FakeDiscord::start().await;
    let sender = sender(&fake);
    let png = vec![0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0xfe];
    let csv = b"kind,key,when,value\n".to_vec();
    let message = ChatMessage::text("The week in access.")
        .with_attachment(Attachment::new("week.png", png.clone()).unwrap())
        .with_attachment(Attachment::new("week.csv", csv.clone()).unwrap());

    // Act
    let first = sender.post(CHANNEL_ID, &message, "weekly-1").await.unwrap();
    let again = sender.post(CHANNEL_ID, &message, "weekly-1").await.unwrap();

    // Assert
    let posted = fake.channel_messages(CHANNEL_ID);
    assert_eq!(posted.len(), 1, "the nonce holds for a post with files too");
    assert_eq!(first, again);
    assert_eq!(posted[0]["content"], "The week in access.");
    assert_eq!(
        fake.files_of(&posted[0]),
        [("week.png".to_owned(), png), ("week.csv".to_owned(), csv)]
    );
    let call = &fake.calls_to("POST", &format!("/channels/{CHANNEL_ID}/messages"))[0];
    assert!(
        call.headers["content-type"].starts_with("multipart/form-data"),
        "{call:?}"
    );
    assert_eq!(call.body["nonce"], "weekly-1");
}

#[tokio::test]
async fn direct_messages_open_a_dm_channel_and_are_idempotent_too() {
    // Arrange
    let fake = FakeDiscord::start().await;
    let sender = sender(&fake);
    let key = "reminder-0123456789abcdef-0123456789abcdef";

    // Act
    for _ in 0..2 {
        sender
            .direct(
                USER_ID,
                &ChatMessage::text("Your access ends in 10 minutes."),
                key,
            )
            .await
            .unwrap();
    }

    // Assert
    let dms = fake.dm_messages(USER_ID);
    assert_eq!(dms.len(), 1);
    assert_eq!(dms[0]["content"], "Your access ends in 10 minutes.");
    assert_eq!(dms[0]["nonce"].as_str().unwrap().len(), 25);
}

#[tokio::test]
async fn rate_limits_and_server_errors_are_retryable_refusals_are_not() {
    // Arrange
    let fake = FakeDiscord::start().await;
    let sender = sender(&fake);
    let message = ChatMessage::text("audit");
    fake.fail_next(
        RouteMatch::ChannelMessages(CHANNEL_ID),
        FailMode::RateLimited {
            retry_after_secs: 1.5,
            global: false,
        },
        1,
    );
    fake.fail_next(
        RouteMatch::ChannelMessages(CHANNEL_ID),
        FailMode::Status(502),
        1,
    );
    fake.fail_next(
        RouteMatch::ChannelMessages(CHANNEL_ID),
        FailMode::Json {
            status: 403,
            body: json!({"code": 50001, "message": "Missing Access"}),
        },
        1,
    );
    fake.fail_next(
        RouteMatch::ChannelMessages(CHANNEL_ID),
        FailMode::Json {
            status: 403,
            body: json!({"code": 50007, "message": "Cannot send messages to this user"}),
        },
        1,
    );

    // Act
    let mut results = Vec::new();
    for _ in 0..4 {
        results.push(sender.post(CHANNEL_ID, &message, "k").await);
    }

    // Assert
    assert!(
        matches!(&results[0], Err(SendError::Retry { .. })),
        "{:?}",
        results[0]
    );
    assert!(matches!(&results[1], Err(SendError::Retry { .. })));
    assert!(matches!(&results[2], Err(SendError::Permanent(_))));
    assert!(matches!(&results[3], Err(SendError::Permanent(_))));
    for result in &results {
        let text = result.as_ref().unwrap_err().to_string();
        assert!(
            !text.contains("fake-token") && !text.contains("127.0.0.1"),
            "{text}"
        );
    }
    assert!(fake.channel_messages(CHANNEL_ID).is_empty());
}

// ----- HTTP interactions mode -------------------------------------------------------------------

struct Endpoint {
    url: String,
    tracker: TaskTracker,
    server: JoinHandle<()>,
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn serve_endpoint(
    fake: &FakeDiscord,
    handler: Arc<Recorder>,
    clock: SharedClock,
) -> Endpoint {
    let signer = Signer::test();
    let key: [u8; 32] = hex::decode(signer.public_key_hex())
        .unwrap()
        .try_into()
        .unwrap();
    let http = discord_http(&settings(fake)).unwrap();
    let tracker = TaskTracker::new();
    let router = interactions_router(
        key,
        http,
        handler,
        clock,
        tracker.clone(),
        Arc::new(crate::support::ledger::MemoryLedger::default()),
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/interactions", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    Endpoint {
        url,
        tracker,
        server,
    }
}

async fn raw_post(url: &str, headers: &[(&str, String)], body: Vec<u8>) -> u16 {
    let mut request = reqwest::Client::new().post(url).body(body);
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    request.send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn http_mode_answers_a_signed_ping_with_pong() {
    let fake = FakeDiscord::start().await;
    let endpoint = serve_endpoint(&fake, Recorder::new(), Arc::new(SystemClock)).await;

    let delivery = fake
        .post_interaction(&endpoint.url, fake.ping(), &Signer::test())
        .await;

    assert_eq!(delivery.status, 200);
    assert_eq!(delivery.body, json!({"type": 1}));
}

#[tokio::test]
async fn http_mode_refuses_bad_missing_and_stale_signatures() {
    // Arrange
    let fake = FakeDiscord::start().await;
    let handler = Recorder::new();
    let endpoint = serve_endpoint(&fake, handler.clone(), Arc::new(SystemClock)).await;
    let later = ManualClock::new(chrono::Utc::now() + chrono::Duration::minutes(10));
    let stale = serve_endpoint(&fake, handler.clone(), Arc::new(later)).await;
    let jit = || {
        fake.slash("jit")
            .string("port", "ssh")
            .string("vm", "web-01")
            .string("duration", "2h")
    };

    // Act + Assert: signed by someone else
    let forged = fake
        .post_interaction(&endpoint.url, jit(), &Signer::from_seed([8; 32]))
        .await;
    assert_eq!(forged.status, 401);
    // no headers at all, and garbage headers
    let body = fake.interaction_json(jit()).body_bytes();
    assert_eq!(raw_post(&endpoint.url, &[], body.clone()).await, 401);
    let garbage = [
        ("X-Signature-Ed25519", "zz".repeat(64)),
        ("X-Signature-Timestamp", "soon".to_owned()),
    ];
    assert_eq!(raw_post(&endpoint.url, &garbage, body.clone()).await, 401);
    // a valid signature, but the timestamp is ten minutes before "now"
    let delivery = fake
        .post_interaction(&stale.url, jit(), &Signer::test())
        .await;
    assert_eq!(delivery.status, 401);
    // a valid signature over something that is not an interaction
    let junk = b"{\"not\": \"an interaction\"}".to_vec();
    let headers = Signer::test().headers(&junk);
    let headers: Vec<_> = headers.iter().map(|(n, v)| (*n, v.clone())).collect();
    assert_eq!(raw_post(&endpoint.url, &headers, junk).await, 400);
    // too large
    let huge = vec![b' '; 100 * 1024];
    let headers = Signer::test().headers(&huge);
    let headers: Vec<_> = headers.iter().map(|(n, v)| (*n, v.clone())).collect();
    assert_eq!(raw_post(&endpoint.url, &headers, huge).await, 413);

    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(handler.calls().commands.is_empty());
}

#[tokio::test]
async fn http_mode_defers_inline_then_edits_the_original_over_rest() {
    // Arrange
    let fake = FakeDiscord::start().await;
    let handler = Recorder::slow(Duration::from_secs(2));
    let endpoint = serve_endpoint(&fake, handler.clone(), Arc::new(SystemClock)).await;

    // Act
    let delivery = fake
        .post_interaction(
            &endpoint.url,
            fake.slash("jit")
                .roles([111])
                .string("port", "rdp")
                .string("vm", "win-07")
                .string("duration", "45m"),
            &Signer::test(),
        )
        .await;
    let finished_before_the_answer = handler.calls().command_times.first().and_then(|t| t.1);

    // Assert: the deferral came back while the command was still running.
    assert_eq!(delivery.status, 200);
    assert_eq!(delivery.body["type"], 5);
    assert_eq!(delivery.body["data"]["flags"], 64);
    assert_eq!(
        finished_before_the_answer, None,
        "the deferral waited for the command"
    );
    let id = delivery.sent.id;
    assert!(fake.callbacks(id)[0].status == 204);
    let original = fake
        .wait_for_interaction_response(id, WAIT, |m| embed_title(m).is_some())
        .await
        .expect("the original is edited over REST");
    assert_eq!(embed_title(&original), Some("Access granted"));
    assert!(fake.calls_to("POST", "/interactions/").is_empty());
    let (_, command) = handler.calls().commands[0].clone();
    assert_eq!(command.option("port"), Some("rdp"));
    endpoint.tracker.close();
    tokio::time::timeout(WAIT, endpoint.tracker.wait())
        .await
        .unwrap();
}

#[tokio::test]
async fn http_mode_answers_autocomplete_inline() {
    let fake = FakeDiscord::start().await;
    let endpoint = serve_endpoint(&fake, Recorder::new(), Arc::new(SystemClock)).await;

    let delivery = fake
        .post_interaction(
            &endpoint.url,
            fake.autocomplete("jit").focused("port", "s"),
            &Signer::test(),
        )
        .await;

    assert_eq!(delivery.status, 200);
    assert_eq!(delivery.body["type"], 8);
    assert_eq!(
        delivery.body["data"]["choices"].as_array().unwrap().len(),
        25
    );
    assert_eq!(
        fake.autocomplete_choices(delivery.sent.id).unwrap().len(),
        25
    );
}
