//! Tests of the fake Discord itself, driven by a real serenity 0.12.5 client (setup A).

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use serenity::all::{
    ApplicationId, ChannelId, CommandInteraction, CommandOptionType, CreateAutocompleteResponse,
    CreateCommand, CreateCommandOption, CreateInteractionResponse,
    CreateInteractionResponseFollowup, CreateInteractionResponseMessage, CreateMessage,
    EditInteractionResponse, GatewayIntents, GuildId, Interaction, Message, Nonce, Ready,
    ResolvedValue, ShardManager, UserId,
};
use serenity::async_trait;
use serenity::client::{ClientBuilder, Context, EventHandler};
use serenity::http::{Http, HttpBuilder, HttpError};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::support::fake_discord::signing::Signer;
use crate::support::fake_discord::{
    APPLICATION_ID, CHANNEL_ID, FailMode, FakeDiscord, GUILD_ID, RouteMatch, USER_ID,
};

const TOKEN: &str = "fake-token";
const WAIT: Duration = Duration::from_secs(5);

/// A serenity `Http` aimed at the fake (setup A), with the application id preset so it works
/// without a gateway.
fn http_for(fake: &FakeDiscord) -> Arc<Http> {
    Arc::new(
        HttpBuilder::new(TOKEN)
            .proxy(fake.base_url())
            .ratelimiter_disabled(true)
            .application_id(ApplicationId::new(fake.application_id()))
            .build(),
    )
}

/// What the test bot reports back: the step and serenity's result.
type Report = (&'static str, Result<(), serenity::Error>);

/// A tiny bot. On READY it registers `/jit` in the guild; `/jit` defers ephemerally and then edits
/// the response; `/twice` answers twice; `/slow` answers after 300 ms; autocomplete offers two
/// VMs; a button press updates its message.
struct TestBot {
    reports: mpsc::UnboundedSender<Report>,
}

#[async_trait]
impl EventHandler for TestBot {
    async fn ready(&self, ctx: Context, _ready: Ready) {
        let jit = CreateCommand::new("jit")
            .description("Request JIT access")
            .add_option(
                CreateCommandOption::new(CommandOptionType::String, "vm", "The VM")
                    .required(true)
                    .set_autocomplete(true),
            );
        let result = GuildId::new(GUILD_ID)
            .set_commands(&ctx.http, vec![jit])
            .await
            .map(|_| ());
        let _ = self.reports.send(("register", result));
    }

    async fn interaction_create(&self, ctx: Context, interaction: Interaction) {
        match interaction {
            Interaction::Command(command) => self.command(&ctx, &command).await,
            Interaction::Autocomplete(autocomplete) => {
                let choices = CreateAutocompleteResponse::new()
                    .add_string_choice("web-01", "web-01")
                    .add_string_choice("web-02", "web-02");
                let result = autocomplete
                    .create_response(&ctx.http, CreateInteractionResponse::Autocomplete(choices))
                    .await;
                let _ = self.reports.send(("autocomplete", result));
            }
            Interaction::Component(component) => {
                let update = CreateInteractionResponseMessage::new()
                    .content("extended")
                    .components(vec![]);
                let result = component
                    .create_response(&ctx.http, CreateInteractionResponse::UpdateMessage(update))
                    .await;
                let _ = self.reports.send(("component", result));
            }
            _ => {}
        }
    }
}

impl TestBot {
    async fn command(&self, ctx: &Context, command: &CommandInteraction) {
        let message = |text: &str| {
            CreateInteractionResponse::Message(
                CreateInteractionResponseMessage::new()
                    .content(text)
                    .ephemeral(true),
            )
        };
        match command.data.name.as_str() {
            "jit" => {
                let defer = CreateInteractionResponse::Defer(
                    CreateInteractionResponseMessage::new().ephemeral(true),
                );
                let result = command.create_response(&ctx.http, defer).await;
                let _ = self.reports.send(("defer", result));
                let vm = command.data.options().first().map(|o| match o.value {
                    ResolvedValue::String(vm) => vm.to_owned(),
                    _ => String::new(),
                });
                let edit = EditInteractionResponse::new()
                    .content(format!("granted {}", vm.unwrap_or_default()));
                let result = command.edit_response(&ctx.http, edit).await.map(|_| ());
                let _ = self.reports.send(("edit", result));
            }
            "twice" => {
                let first = command.create_response(&ctx.http, message("one")).await;
                let _ = self.reports.send(("first", first));
                let second = command.create_response(&ctx.http, message("two")).await;
                let _ = self.reports.send(("second", second));
            }
            "slow" => {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let result = command.create_response(&ctx.http, message("late")).await;
                let _ = self.reports.send(("slow", result));
            }
            _ => {}
        }
    }
}

/// A running serenity client plus the reports of its handler.
struct Bot {
    shard_manager: Arc<ShardManager>,
    task: JoinHandle<Result<(), serenity::Error>>,
    reports: mpsc::UnboundedReceiver<Report>,
}

impl Bot {
    /// Builds the client exactly as the notes' setup A: proxy + ratelimiter disabled, and no
    /// `.token()` afterwards (it would replace the proxied `Http`).
    async fn start(fake: &FakeDiscord) -> Self {
        let (tx, reports) = mpsc::unbounded_channel();
        let http = HttpBuilder::new(TOKEN)
            .proxy(fake.base_url())
            .ratelimiter_disabled(true)
            .build();
        let mut client = ClientBuilder::new_with_http(http, GatewayIntents::GUILDS)
            .event_handler(TestBot { reports: tx })
            .await
            .expect("build serenity client");
        let shard_manager = client.shard_manager.clone();
        let task = tokio::spawn(async move { client.start().await });
        Self {
            shard_manager,
            task,
            reports,
        }
    }

    /// The next report for `step`, skipping others.
    async fn report(&mut self, step: &str) -> Result<(), serenity::Error> {
        let wait = async {
            loop {
                let (name, result) = self.reports.recv().await.expect("bot reports channel open");
                if name == step {
                    return result;
                }
            }
        };
        match tokio::time::timeout(WAIT, wait).await {
            Ok(result) => result,
            Err(_) => panic!("no '{step}' report within {WAIT:?}"),
        }
    }

    async fn stop(self) {
        self.shard_manager.shutdown_all().await;
        let _ = tokio::time::timeout(WAIT, self.task).await;
    }
}

/// Status and Discord error code of a failed serenity HTTP call.
fn discord_error(result: Result<impl std::fmt::Debug, serenity::Error>) -> (u16, isize) {
    match result {
        Err(serenity::Error::Http(HttpError::UnsuccessfulRequest(response))) => {
            (response.status_code.as_u16(), response.error.code)
        }
        other => panic!("expected an unsuccessful request, got {other:?}"),
    }
}

#[tokio::test]
async fn serenity_identifies_registers_commands_and_defers_then_edits() {
    // Arrange
    let fake = FakeDiscord::start().await;
    let mut bot = Bot::start(&fake).await;
    assert!(
        fake.wait_until_ready(WAIT).await,
        "client never became ready"
    );
    bot.report("register").await.expect("command registration");

    // Act
    let sent = fake
        .send_interaction(fake.slash("jit").string("vm", "myVM").roles([7007]))
        .await;
    bot.report("edit").await.expect("edit_response");

    // Assert: handshake as serenity sends it (notes §2.3).
    assert_eq!(fake.gateway_connections(), vec!["/?v=10".to_owned()]);
    let identify = &fake.identifies()[0];
    assert_eq!(identify["token"], "Bot fake-token");
    assert_eq!(identify["compress"], true);
    assert!(
        identify["presence"]["since"].is_object(),
        "serenity sends since as an object"
    );
    let ready = fake
        .gateway_frames()
        .into_iter()
        .find(|f| f.t.as_deref() == Some("READY"))
        .expect("READY sent");
    assert_eq!(ready.s, Some(1));
    let ready: Ready = serde_json::from_value(ready.d).expect("READY deserializes");
    assert_eq!(ready.application.id.get(), APPLICATION_ID);

    let put = fake
        .wait_for_call(WAIT, |c| {
            c.is(
                "PUT",
                &format!("/applications/{APPLICATION_ID}/guilds/{GUILD_ID}/commands"),
            )
        })
        .await
        .expect("bulk PUT of guild commands");
    assert_eq!(put.authorization.as_deref(), Some("Bot fake-token"));
    let commands = fake.guild_commands(GUILD_ID);
    assert_eq!(commands.len(), 1);
    assert_eq!(commands[0]["name"], "jit");
    assert!(commands[0]["id"].is_string());

    let callback = fake
        .wait_for_callback(sent.id, WAIT)
        .await
        .expect("callback");
    assert_eq!((callback.status, callback.kind()), (204, Some(5)));
    assert!(callback.is_ephemeral());
    assert!(callback.elapsed < Duration::from_secs(3));
    let response = fake
        .interaction_response(sent.id)
        .expect("original response");
    assert_eq!(response["content"], "granted myVM");
    assert_eq!(response["flags"], 64, "ephemeral, no longer loading");
    assert!(fake.calls().iter().any(|c| c.is(
        "PATCH",
        &format!(
            "/webhooks/{APPLICATION_ID}/{}/messages/@original",
            sent.token
        )
    )));
    serde_json::from_value::<Message>(response).expect("original response is a serenity Message");

    bot.stop().await;
}

#[tokio::test]
async fn a_second_ack_is_rejected_with_40060() {
    let fake = FakeDiscord::start().await;
    let mut bot = Bot::start(&fake).await;
    assert!(fake.wait_until_ready(WAIT).await);

    let sent = fake.send_interaction(fake.slash("twice")).await;

    bot.report("first").await.expect("first ack succeeds");
    assert_eq!(discord_error(bot.report("second").await), (400, 40060));
    let statuses: Vec<u16> = fake.callbacks(sent.id).iter().map(|c| c.status).collect();
    assert_eq!(statuses, vec![204, 400]);
    assert_eq!(
        fake.interaction_response(sent.id).expect("original")["content"],
        "one"
    );
    bot.stop().await;
}

#[tokio::test]
async fn two_sessions_on_one_token_both_receive_an_interaction_and_the_second_ack_gets_40060() {
    // Arrange: two processes of one bot connected at once (notes §8).
    let fake = FakeDiscord::start().await;
    let mut first = Bot::start(&fake).await;
    assert!(
        fake.wait_until(WAIT, |f| f.ready_sessions() == 1).await,
        "the first session is ready"
    );
    let mut second = Bot::start(&fake).await;
    assert!(
        fake.wait_until(WAIT, |f| f.ready_sessions() == 2).await,
        "the second session is ready beside the first"
    );

    // Act
    let sent = fake.send_interaction(fake.slash("slow")).await;
    let answers = [first.report("slow").await, second.report("slow").await];

    // Assert: both got it; Discord took one answer and refused the other.
    let refused: Vec<(u16, isize)> = answers
        .into_iter()
        .filter(Result::is_err)
        .map(discord_error)
        .collect();
    assert_eq!(refused, vec![(400, 40060)]);
    let mut statuses: Vec<u16> = fake.callbacks(sent.id).iter().map(|c| c.status).collect();
    statuses.sort_unstable();
    assert_eq!(statuses, vec![204, 400]);
    assert_eq!(fake.identifies().len(), 2, "two sessions");
    assert_eq!(fake.peak_ready_sessions(), 2);
    first.stop().await;
    second.stop().await;
}

#[tokio::test]
async fn a_callback_after_the_window_gets_10062() {
    let fake = FakeDiscord::builder()
        .callback_window(Duration::from_millis(100))
        .start()
        .await;
    let mut bot = Bot::start(&fake).await;
    assert!(fake.wait_until_ready(WAIT).await);

    let sent = fake.send_interaction(fake.slash("slow")).await;

    assert_eq!(discord_error(bot.report("slow").await), (404, 10062));
    assert!(fake.interaction_response(sent.id).is_none());
    bot.stop().await;
}

#[tokio::test]
async fn autocomplete_and_buttons_round_trip() {
    let fake = FakeDiscord::start().await;
    let mut bot = Bot::start(&fake).await;
    assert!(fake.wait_until_ready(WAIT).await);

    let ac = fake
        .send_interaction(fake.autocomplete("jit").focused("vm", "web"))
        .await;
    bot.report("autocomplete")
        .await
        .expect("autocomplete response");
    let press = fake.send_interaction(fake.button("extend:42")).await;
    bot.report("component").await.expect("component update");

    let choices = fake.autocomplete_choices(ac.id).expect("choices");
    assert_eq!(choices.len(), 2);
    assert_eq!(choices[0]["value"], "web-01");
    let updated = fake
        .interaction_response(press.id)
        .expect("the button's message");
    assert_eq!(updated["content"], "extended");
    assert_eq!(updated["components"], json!([]));
    bot.stop().await;
}

#[tokio::test]
async fn op7_reconnect_resumes_the_session() {
    let fake = FakeDiscord::start().await;
    let mut bot = Bot::start(&fake).await;
    assert!(fake.wait_until_ready(WAIT).await);

    fake.send_reconnect();
    let resume = fake
        .wait_for_frame(WAIT, |f| f.from_client && f.op == 6)
        .await
        .expect("RESUME");
    assert!(fake.wait_until_ready(WAIT).await, "RESUMED after reconnect");

    assert_eq!(resume.d["session_id"], "fake-session-1");
    assert_eq!(resume.d["token"], "Bot fake-token");
    assert_eq!(fake.identifies().len(), 1, "resumed, not re-identified");
    assert_eq!(fake.gateway_connections().len(), 2);
    // The resumed session still delivers interactions, with increasing sequence numbers.
    let sent = fake
        .send_interaction(fake.slash("jit").string("vm", "web-01"))
        .await;
    bot.report("edit").await.expect("edit after resume");
    assert!(fake.interaction_response(sent.id).is_some());
    let seqs: Vec<u64> = fake.gateway_frames().iter().filter_map(|f| f.s).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "sequence numbers increase: {seqs:?}"
    );
    bot.stop().await;
}

#[tokio::test]
async fn op9_not_resumable_makes_serenity_identify_again() {
    let fake = FakeDiscord::start().await;
    let bot = Bot::start(&fake).await;
    assert!(fake.wait_until_ready(WAIT).await);

    fake.send_invalid_session(false);

    // Serenity waits out a 5 s shard restart (notes §2.3 item 7).
    let second = fake
        .wait_until(Duration::from_secs(12), |f| f.identifies().len() == 2)
        .await;
    assert!(second, "no second IDENTIFY");
    assert!(fake.wait_until_ready(WAIT).await);
    bot.stop().await;
}

#[tokio::test]
async fn close_4004_stops_the_client_with_an_error() {
    let fake = FakeDiscord::start().await;
    let bot = Bot::start(&fake).await;
    assert!(fake.wait_until_ready(WAIT).await);

    fake.close_gateway(4004);

    let result = tokio::time::timeout(WAIT, bot.task)
        .await
        .expect("client stops")
        .expect("task joins");
    assert!(result.is_err(), "4004 is fatal: {result:?}");
}

#[tokio::test]
async fn heartbeats_are_acknowledged() {
    let fake = FakeDiscord::builder()
        .heartbeat_interval(Duration::from_millis(200))
        .start()
        .await;
    let bot = Bot::start(&fake).await;
    assert!(fake.wait_until_ready(WAIT).await);

    let ack = fake
        .wait_for_frame(WAIT, |f| !f.from_client && f.op == 11)
        .await;

    assert!(ack.is_some(), "no heartbeat ACK");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        fake.gateway_connections().len(),
        1,
        "ACKed heartbeats keep the connection"
    );
    bot.stop().await;
}

#[tokio::test]
async fn a_rate_limited_channel_message_returns_the_429_to_serenity() {
    // With the ratelimiter disabled serenity does not retry: it returns
    // `Error::Http(UnsuccessfulRequest)` with status 429, and the error does not carry
    // `Retry-After`. A caller retries with its own backoff (e.g. the outbox's next attempt); tests
    // that need serenity's own 429 handling must use setup B (notes §1.2).
    let fake = FakeDiscord::start().await;
    let http = http_for(&fake);
    fake.fail_next(
        RouteMatch::ChannelMessages(CHANNEL_ID),
        FailMode::RateLimited {
            retry_after_secs: 0.25,
            global: false,
        },
        1,
    );

    let first = ChannelId::new(CHANNEL_ID)
        .say(&http, "audit: granted")
        .await;
    tokio::time::sleep(Duration::from_millis(250)).await;
    let retry = ChannelId::new(CHANNEL_ID)
        .say(&http, "audit: granted")
        .await;

    assert_eq!(discord_error(first), (429, 0));
    assert_eq!(retry.expect("retry succeeds").content, "audit: granted");
    let statuses: Vec<(u16, bool)> = fake
        .calls()
        .iter()
        .map(|c| (c.status, c.injected_fault))
        .collect();
    assert_eq!(statuses, vec![(429, true), (200, false)]);
    assert_eq!(fake.channel_messages(CHANNEL_ID).len(), 1);
}

#[tokio::test]
async fn a_429_carries_retry_after_and_rate_limit_headers() {
    let fake = FakeDiscord::start().await;
    fake.fail_next(
        RouteMatch::Any,
        FailMode::RateLimited {
            retry_after_secs: 1.5,
            global: true,
        },
        1,
    );
    let url = format!("{}/api/v10/channels/{CHANNEL_ID}/messages", fake.base_url());

    let response = reqwest::Client::new()
        .post(&url)
        .json(&json!({"content": "x"}))
        .send()
        .await
        .expect("request");

    assert_eq!(response.status().as_u16(), 429);
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    assert_eq!(header("retry-after").as_deref(), Some("1.5"));
    assert_eq!(header("x-ratelimit-global").as_deref(), Some("true"));
    assert_eq!(header("x-ratelimit-scope").as_deref(), Some("global"));
    assert_eq!(header("x-ratelimit-remaining").as_deref(), Some("0"));
    let body: Value = response.json().await.expect("json body");
    assert_eq!(
        body,
        json!({"message": "You are being rate limited.", "retry_after": 1.5, "global": true, "code": 0})
    );
}

#[tokio::test]
async fn injected_5xx_lasts_until_cleared() {
    let fake = FakeDiscord::start().await;
    let http = http_for(&fake);
    fake.fail_always(RouteMatch::CreateDm, FailMode::Status(503));

    let failed = UserId::new(USER_ID).create_dm_channel(&http).await;
    let again = UserId::new(USER_ID).create_dm_channel(&http).await;
    fake.clear_faults();
    let ok = UserId::new(USER_ID).create_dm_channel(&http).await;

    assert_eq!(discord_error(failed), (503, 0));
    assert_eq!(discord_error(again), (503, 0));
    assert_eq!(ok.expect("DM channel").recipient.id.get(), USER_ID);
}

#[tokio::test]
async fn dm_channel_and_message() {
    let fake = FakeDiscord::start().await;
    let http = http_for(&fake);

    let channel = UserId::new(USER_ID)
        .create_dm_channel(&http)
        .await
        .expect("DM channel");
    let message = channel
        .id
        .send_message(&http, CreateMessage::new().content("expires in 10 min"))
        .await
        .expect("DM");
    let same = UserId::new(USER_ID)
        .create_dm_channel(&http)
        .await
        .expect("DM channel again");

    assert_eq!(same.id, channel.id, "one DM channel per user");
    assert_eq!(fake.dm_channel(USER_ID), Some(channel.id.get()));
    assert_eq!(message.author.id.get(), fake.bot_user_id());
    let dms = fake.dm_messages(USER_ID);
    assert_eq!(dms.len(), 1);
    assert_eq!(dms[0]["content"], "expires in 10 min");
}

#[tokio::test]
async fn enforce_nonce_deduplicates_channel_messages() {
    let fake = FakeDiscord::start().await;
    let http = http_for(&fake);
    let channel = ChannelId::new(CHANNEL_ID);
    let audit = |nonce: &str, enforce: bool| {
        CreateMessage::new()
            .content("audit")
            .nonce(Nonce::String(nonce.to_owned()))
            .enforce_nonce(enforce)
    };

    let first = channel
        .send_message(&http, audit("outbox-1", true))
        .await
        .expect("send");
    let resend = channel
        .send_message(&http, audit("outbox-1", true))
        .await
        .expect("resend");
    let other = channel
        .send_message(&http, audit("outbox-2", true))
        .await
        .expect("other nonce");
    let unenforced = channel
        .send_message(&http, audit("outbox-1", false))
        .await
        .expect("not enforced");

    assert_eq!(
        resend.id, first.id,
        "same nonce returns the existing message"
    );
    assert_ne!(other.id, first.id);
    assert_ne!(unenforced.id, first.id);
    assert_eq!(fake.channel_messages(CHANNEL_ID).len(), 3);
    let too_long = channel
        .send_message(&http, audit(&"n".repeat(26), true))
        .await;
    assert_eq!(discord_error(too_long), (400, 50035));
}

#[tokio::test]
async fn first_followup_after_a_defer_edits_the_original() {
    let fake = FakeDiscord::start().await;
    let http = http_for(&fake);
    let sent = fake.interaction_json(fake.slash("jit").string("vm", "web-01"));
    let command =
        match serde_json::from_value::<Interaction>(sent.payload.clone()).expect("interaction") {
            Interaction::Command(command) => command,
            other => panic!("expected a command, got {other:?}"),
        };
    let defer =
        CreateInteractionResponse::Defer(CreateInteractionResponseMessage::new().ephemeral(true));

    command.create_response(&http, defer).await.expect("defer");
    let loading = fake.interaction_response(sent.id).expect("loading message");
    let first = command
        .create_followup(
            &http,
            CreateInteractionResponseFollowup::new().content("done"),
        )
        .await;
    let second = command
        .create_followup(
            &http,
            CreateInteractionResponseFollowup::new().content("also"),
        )
        .await;

    assert_eq!(loading["flags"], 64 | 128, "ephemeral + loading");
    let first = first.expect("first followup");
    assert_eq!(
        first.id.to_string(),
        loading["id"].as_str().expect("id"),
        "edited the loading message"
    );
    assert_eq!(
        fake.interaction_response(sent.id).expect("original")["content"],
        "done"
    );
    assert_ne!(second.expect("second followup").id, first.id);
    assert_eq!(fake.followups(sent.id).len(), 1);
}

#[tokio::test]
async fn interaction_tokens_expire() {
    let fake = FakeDiscord::builder()
        .token_lifetime(Duration::from_millis(200))
        .start()
        .await;
    let http = http_for(&fake);
    let sent = fake.interaction_json(fake.slash("jit"));
    let Interaction::Command(command) =
        serde_json::from_value(sent.payload.clone()).expect("interaction")
    else {
        panic!("expected a command");
    };
    command
        .create_response(
            &http,
            CreateInteractionResponse::Defer(CreateInteractionResponseMessage::new()),
        )
        .await
        .expect("defer");

    tokio::time::sleep(Duration::from_millis(300)).await;
    let late = command
        .edit_response(&http, EditInteractionResponse::new().content("too late"))
        .await;

    assert_eq!(discord_error(late), (404, 10062));
}

#[tokio::test]
async fn payload_builders_deserialize_into_serenity_models() {
    let fake = FakeDiscord::start().await;

    let slash = fake.interaction_json(
        fake.slash("jit")
            .string("port", "ssh")
            .string("vm", "myVM")
            .string("duration", "2h")
            .string("reason", "patching")
            .string("from", "10.0.0.0/24")
            .user(USER_ID, "alice")
            .roles([7007, 7008]),
    );
    let admin = fake.interaction_json(
        fake.slash("jit-admin")
            .subcommand("map")
            .string("role", "7007")
            .string("vm", "web-*"),
    );
    let grouped = fake.interaction_json(
        fake.slash("jit-admin")
            .subcommand_group("mappings")
            .subcommand("list")
            .integer("page", 2),
    );
    let ac = fake.interaction_json(
        fake.autocomplete("jit")
            .string("port", "ssh")
            .focused("vm", "my"),
    );
    let button = fake.interaction_json(fake.button("close-early:42"));
    let select = fake.interaction_json(fake.button("pick").select_values(["a", "b"]));
    let dm = fake.interaction_json(fake.slash("jit-status").in_dm());
    let ping = fake.interaction_json(fake.ping());

    let parse = |sent: &crate::support::fake_discord::SentInteraction| -> Interaction {
        serde_json::from_value(sent.payload.clone())
            .unwrap_or_else(|e| panic!("{e}: {}", sent.payload))
    };
    let Interaction::Command(command) = parse(&slash) else {
        panic!("slash")
    };
    assert_eq!(command.id.get(), slash.id);
    assert_eq!(command.token, slash.token);
    assert_eq!(command.user.id.get(), USER_ID);
    let member = command.member.as_ref().expect("member");
    assert_eq!(
        member.roles.iter().map(|r| r.get()).collect::<Vec<_>>(),
        vec![7007, 7008]
    );
    assert_eq!(command.guild_id.map(|g| g.get()), Some(GUILD_ID));
    let options: Vec<_> = command.data.options().into_iter().map(|o| o.name).collect();
    assert_eq!(options, vec!["port", "vm", "duration", "reason", "from"]);

    let Interaction::Command(admin) = parse(&admin) else {
        panic!("admin")
    };
    match &admin.data.options()[0].value {
        ResolvedValue::SubCommand(inner) => assert_eq!(inner.len(), 2),
        other => panic!("expected a subcommand, got {other:?}"),
    }
    let Interaction::Command(grouped) = parse(&grouped) else {
        panic!("grouped")
    };
    match &grouped.data.options()[0].value {
        ResolvedValue::SubCommandGroup(inner) => assert_eq!(inner[0].name, "list"),
        other => panic!("expected a group, got {other:?}"),
    }
    let Interaction::Autocomplete(ac) = parse(&ac) else {
        panic!("autocomplete")
    };
    assert_eq!(ac.data.autocomplete().expect("focused").name, "vm");
    let Interaction::Component(button) = parse(&button) else {
        panic!("component")
    };
    assert_eq!(button.data.custom_id, "close-early:42");
    assert_eq!(button.message.author.id.get(), fake.bot_user_id());
    let Interaction::Component(select) = parse(&select) else {
        panic!("select")
    };
    assert_eq!(select.data.custom_id, "pick");
    let Interaction::Command(dm) = parse(&dm) else {
        panic!("dm")
    };
    assert!(dm.guild_id.is_none() && dm.member.is_none());
    assert_eq!(dm.user.id.get(), USER_ID);
    assert!(matches!(parse(&ping), Interaction::Ping(_)));
    // Every interaction gets a fresh, non-zero id and token.
    let ids = [slash.id, ac.id.get(), button.id.get(), dm.id.get(), ping.id];
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
}

#[tokio::test]
async fn signatures_verify_with_serenity() {
    let signer = Signer::test();
    let body = br#"{"type":1}"#;
    let [(_, signature), (_, timestamp)] = signer.headers(body);

    let verifier = serenity::interactions_endpoint::Verifier::new(&signer.public_key_hex());

    assert_eq!(signer.public_key_hex().len(), 64);
    assert!(verifier.verify(&signature, &timestamp, body).is_ok());
    assert!(
        verifier
            .verify(&signature, &timestamp, br#"{"type":2}"#)
            .is_err()
    );
    assert!(
        verifier
            .verify(&signer.sign("1", body), &timestamp, body)
            .is_err()
    );
}

/// A minimal HTTP-interactions-mode bot (notes §5): verify, answer PING, defer inline, then edit.
async fn spawn_http_mode_bot(fake: &FakeDiscord, public_key: &str) -> String {
    use axum::body::Bytes;
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::IntoResponse;

    let verifier = Arc::new(serenity::interactions_endpoint::Verifier::new(public_key));
    let http = http_for(fake);
    let handler = move |headers: HeaderMap, body: Bytes| {
        let (verifier, http) = (verifier.clone(), http.clone());
        async move {
            let header = |name: &str| {
                headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned()
            };
            let (signature, timestamp) = (
                header("x-signature-ed25519"),
                header("x-signature-timestamp"),
            );
            if verifier.verify(&signature, &timestamp, &body).is_err() {
                return StatusCode::UNAUTHORIZED.into_response();
            }
            let response = match serde_json::from_slice::<Interaction>(&body) {
                Ok(Interaction::Ping(_)) => CreateInteractionResponse::Pong,
                Ok(Interaction::Command(command)) => {
                    tokio::spawn(async move {
                        let edit = EditInteractionResponse::new().content("granted over HTTP");
                        let _ = command.edit_response(&http, edit).await;
                    });
                    CreateInteractionResponse::Defer(
                        CreateInteractionResponseMessage::new().ephemeral(true),
                    )
                }
                _ => return StatusCode::BAD_REQUEST.into_response(),
            };
            axum::Json(serde_json::to_value(&response).expect("response serializes"))
                .into_response()
        }
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind bot");
    let url = format!(
        "http://{}/interactions",
        listener.local_addr().expect("addr")
    );
    let app = axum::Router::new().route("/interactions", axum::routing::post(handler));
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

#[tokio::test]
async fn http_mode_bot_answers_inline_and_edits_via_rest() {
    let fake = FakeDiscord::start().await;
    let signer = Signer::test();
    let endpoint = spawn_http_mode_bot(&fake, &signer.public_key_hex()).await;

    let ping = fake.post_interaction(&endpoint, fake.ping(), &signer).await;
    let forged = fake
        .post_interaction(&endpoint, fake.ping(), &Signer::from_seed([9; 32]))
        .await;
    let command = fake
        .post_interaction(&endpoint, fake.slash("jit").string("vm", "web-01"), &signer)
        .await;

    assert_eq!((ping.status, ping.body["type"].as_u64()), (200, Some(1)));
    assert_eq!(fake.callbacks(ping.sent.id)[0].status, 204);
    assert_eq!(forged.status, 401);
    assert_eq!(
        (command.status, command.body["type"].as_u64()),
        (200, Some(5))
    );
    let edited = fake
        .wait_for_interaction_response(command.sent.id, WAIT, |m| {
            m["content"] == "granted over HTTP"
        })
        .await
        .expect("edited original response");
    assert_eq!(edited["flags"], 64);
}

#[tokio::test]
async fn a_malformed_interaction_is_dropped_and_the_shard_stays_up() {
    let fake = FakeDiscord::start().await;
    let mut bot = Bot::start(&fake).await;
    assert!(fake.wait_until_ready(WAIT).await);

    // Missing `entitlements`, `attachment_size_limit`, `data`, ...: serenity logs and drops it.
    let bad = fake
        .send_interaction_json(
            json!({"id": "77", "application_id": "2002", "type": 2, "token": "t", "version": 1}),
        )
        .await;
    let good = fake
        .send_interaction(fake.slash("jit").string("vm", "web-01"))
        .await;
    bot.report("edit")
        .await
        .expect("the next interaction still works");

    assert!(fake.callbacks(bad.id).is_empty());
    assert_eq!(fake.callbacks(good.id).len(), 1);
    assert_eq!(fake.gateway_connections().len(), 1);
    bot.stop().await;
}

// ----- Discord's body limits: each one refuses with 400 / 50035 and the field path ---------------

/// Sends `body` to `route` (below `/api/v10`) as a bot would; the status and the JSON answer.
async fn send_raw(fake: &FakeDiscord, method: &str, route: &str, body: &Value) -> (u16, Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("a method");
    let response = reqwest::Client::new()
        .request(method, format!("{}/api/v10{route}", fake.base_url()))
        .header("authorization", format!("Bot {TOKEN}"))
        .json(body)
        .send()
        .await
        .expect("the fake answers");
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

/// The code of the first error Discord lists at `path` (a JSON pointer below `errors`).
fn form_error<'a>(answer: &'a Value, path: &str) -> Option<&'a str> {
    assert_eq!(answer["code"], 50035, "Invalid Form Body: {answer}");
    assert_eq!(answer["message"], "Invalid Form Body");
    answer
        .pointer(&format!("/errors{path}/_errors/0/code"))
        .and_then(Value::as_str)
}

/// Posts `message` to the default channel: the status and answer.
async fn post_message(fake: &FakeDiscord, message: Value) -> (u16, Value) {
    send_raw(
        fake,
        "POST",
        &format!("/channels/{CHANNEL_ID}/messages"),
        &message,
    )
    .await
}

/// Asserts that `message` is refused with `code` at `path`, and names the case on failure.
async fn assert_refused(fake: &FakeDiscord, case: &str, message: Value, path: &str, code: &str) {
    let (status, answer) = post_message(fake, message).await;
    assert_eq!(status, 400, "{case}: {answer}");
    assert_eq!(form_error(&answer, path), Some(code), "{case}: {answer}");
}

fn text(n: usize) -> String {
    "x".repeat(n)
}

fn embed_with(key: &str, value: Value) -> Value {
    let mut embed = json!({"title": "t"});
    embed[key] = value;
    json!({"embeds": [embed]})
}

fn field(name: usize, value: usize) -> Value {
    json!({"name": text(name), "value": text(value), "inline": false})
}

fn buttons(ids: &[String]) -> Value {
    json!({"type": 1, "components": ids.iter().map(|id| json!({
        "type": 2, "style": 1, "label": "Go", "custom_id": id,
    })).collect::<Vec<_>>()})
}

#[tokio::test]
async fn messages_at_every_limit_are_accepted() {
    let fake = FakeDiscord::start().await;
    let fields: Vec<Value> = (0..25).map(|_| field(10, 10)).collect();
    let rows: Vec<Value> = (0..5)
        .map(|r| {
            buttons(
                &(0..5)
                    .map(|i| format!("{r}{i}{}", text(98)))
                    .collect::<Vec<_>>(),
            )
        })
        .collect();
    let message = json!({
        "content": text(2000),
        "embeds": [{"title": text(256), "description": text(4096), "fields": fields,
                    "footer": {"text": text(1000)}}],
        "components": rows,
        "allowed_mentions": {"users": ["6006"], "parse": []},
    });

    let (status, answer) = post_message(&fake, message).await;

    assert_eq!(status, 200, "{answer}");
}

#[tokio::test]
async fn content_over_2000_characters_is_refused() {
    let fake = FakeDiscord::start().await;
    assert_refused(
        &fake,
        "content",
        json!({"content": text(2001)}),
        "/content",
        "BASE_TYPE_MAX_LENGTH",
    )
    .await;
    // Characters, not bytes: 2000 two-byte characters fit.
    let (status, _) = post_message(&fake, json!({"content": "é".repeat(2000)})).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn each_embed_limit_refuses() {
    let fake = FakeDiscord::start().await;
    let max = "BASE_TYPE_MAX_LENGTH";
    let cases = [
        (
            "title 257",
            embed_with("title", json!(text(257))),
            "/embeds/0/title",
            max,
        ),
        (
            "description 4097",
            embed_with("description", json!(text(4097))),
            "/embeds/0/description",
            max,
        ),
        (
            "footer 2049",
            embed_with("footer", json!({"text": text(2049)})),
            "/embeds/0/footer/text",
            max,
        ),
        (
            "author 257",
            embed_with("author", json!({"name": text(257)})),
            "/embeds/0/author/name",
            max,
        ),
        (
            "26 fields",
            embed_with(
                "fields",
                json!((0..26).map(|_| field(1, 1)).collect::<Vec<_>>()),
            ),
            "/embeds/0/fields",
            max,
        ),
        (
            "field name 257",
            embed_with("fields", json!([field(257, 1)])),
            "/embeds/0/fields/0/name",
            "BASE_TYPE_BAD_LENGTH",
        ),
        (
            "field value 1025",
            embed_with("fields", json!([field(1, 1025)])),
            "/embeds/0/fields/0/value",
            "BASE_TYPE_BAD_LENGTH",
        ),
        (
            "empty field value",
            embed_with("fields", json!([field(1, 0)])),
            "/embeds/0/fields/0/value",
            "BASE_TYPE_BAD_LENGTH",
        ),
        (
            "11 embeds",
            json!({"embeds": (0..11).map(|_| json!({"title": "t"})).collect::<Vec<_>>()}),
            "/embeds",
            max,
        ),
        (
            "6001 in total over two embeds",
            json!({"embeds": [{"description": text(3000)}, {"description": text(3000), "title": "t"}]}),
            "/embeds",
            "MAX_EMBED_SIZE_EXCEEDED",
        ),
    ];
    for (case, message, path, code) in cases {
        assert_refused(&fake, case, message, path, code).await;
    }
    assert!(
        fake.channel_messages(CHANNEL_ID).is_empty(),
        "nothing refused was posted"
    );
}

#[tokio::test]
async fn each_component_limit_refuses() {
    let fake = FakeDiscord::start().await;
    let ids = |n: usize, tag: &str| (0..n).map(|i| format!("{tag}{i}")).collect::<Vec<_>>();
    let six_rows: Vec<Value> = (0..6)
        .map(|r| buttons(&ids(1, &format!("r{r}-"))))
        .collect();
    let mut long_label = buttons(&ids(1, "a"));
    long_label["components"][0]["label"] = json!(text(81));
    let cases = [
        (
            "6 rows",
            json!({"components": six_rows}),
            "/components",
            "BASE_TYPE_MAX_LENGTH",
        ),
        (
            "6 buttons in a row",
            json!({"components": [buttons(&ids(6, "b"))]}),
            "/components/0/components",
            "BASE_TYPE_MAX_LENGTH",
        ),
        (
            "custom_id 101",
            json!({"components": [buttons(&[text(101)])]}),
            "/components/0/components/0/custom_id",
            "BASE_TYPE_BAD_LENGTH",
        ),
        (
            "empty custom_id",
            json!({"components": [buttons(&[String::new()])]}),
            "/components/0/components/0/custom_id",
            "BASE_TYPE_BAD_LENGTH",
        ),
        (
            "duplicate custom_id",
            json!({"components": [buttons(&["same".to_owned()]), buttons(&["same".to_owned()])]}),
            "/components/1/components/0/custom_id",
            "COMPONENT_CUSTOM_ID_DUPLICATED",
        ),
        (
            "label 81",
            json!({"components": [long_label]}),
            "/components/0/components/0/label",
            "BASE_TYPE_MAX_LENGTH",
        ),
    ];
    for (case, mut message, path, code) in cases {
        message["content"] = json!("with buttons");
        assert_refused(&fake, case, message, path, code).await;
    }
}

#[tokio::test]
async fn allowed_mentions_of_the_wrong_shape_are_refused() {
    let fake = FakeDiscord::start().await;
    let with = |mentions: Value| json!({"content": "<@6006>", "allowed_mentions": mentions});
    let users: Vec<String> = (1..=101).map(|i| i.to_string()).collect();
    let cases = [
        (
            "parse users and a users list",
            with(json!({"parse": ["users"], "users": ["6006"]})),
            "/allowed_mentions",
            "MESSAGE_ALLOWED_MENTIONS_PARSE_EXCLUSIVE",
        ),
        (
            "unknown parse value",
            with(json!({"parse": ["here"]})),
            "/allowed_mentions/parse/0",
            "BASE_TYPE_CHOICES",
        ),
        (
            "a user that is not a snowflake",
            with(json!({"users": ["alice"]})),
            "/allowed_mentions/users/0",
            "NUMBER_TYPE_COERCE",
        ),
        (
            "101 users",
            with(json!({"users": users})),
            "/allowed_mentions/users",
            "BASE_TYPE_MAX_LENGTH",
        ),
        (
            "not an object",
            with(json!(["users"])),
            "/allowed_mentions",
            "DICT_TYPE_CONVERT",
        ),
    ];
    for (case, message, path, code) in cases {
        assert_refused(&fake, case, message, path, code).await;
    }
}

#[tokio::test]
async fn edits_followups_and_inline_responses_are_held_to_the_same_limits() {
    let fake = FakeDiscord::start().await;
    let sent = fake.interaction_json(fake.slash("jit").string("vm", "web-01"));
    let callback = format!("/interactions/{}/{}/callback", sent.id, sent.token);
    let webhook = format!("/webhooks/{APPLICATION_ID}/{}", sent.token);
    let too_long = json!({"content": text(2001)});

    let (inline, inline_answer) = send_raw(
        &fake,
        "POST",
        &callback,
        &json!({"type": 4, "data": too_long}),
    )
    .await;
    let (deferred, _) = send_raw(
        &fake,
        "POST",
        &callback,
        &json!({"type": 5, "data": {"flags": 64}}),
    )
    .await;
    let (edit, edit_answer) = send_raw(
        &fake,
        "PATCH",
        &format!("{webhook}/messages/@original"),
        &too_long,
    )
    .await;
    let (followup, followup_answer) = send_raw(&fake, "POST", &webhook, &too_long).await;

    assert_eq!(inline, 400, "{inline_answer}");
    assert_eq!(
        form_error(&inline_answer, "/data/content"),
        Some("BASE_TYPE_MAX_LENGTH")
    );
    assert_eq!(
        deferred, 204,
        "a refused response does not count as the acknowledgement"
    );
    assert_eq!(edit, 400);
    assert_eq!(
        form_error(&edit_answer, "/content"),
        Some("BASE_TYPE_MAX_LENGTH")
    );
    assert_eq!(followup, 400);
    assert_eq!(
        form_error(&followup_answer, "/content"),
        Some("BASE_TYPE_MAX_LENGTH")
    );
}

#[tokio::test]
async fn each_autocomplete_limit_refuses() {
    let fake = FakeDiscord::start().await;
    let choice = |name: String, value: String| json!({"name": name, "value": value});
    let cases = [
        (
            "26 choices",
            (0..26)
                .map(|i| choice(i.to_string(), i.to_string()))
                .collect::<Vec<_>>(),
            "/data/choices",
            "BASE_TYPE_MAX_LENGTH",
        ),
        (
            "name 101",
            vec![choice(text(101), "v".into())],
            "/data/choices/0/name",
            "BASE_TYPE_BAD_LENGTH",
        ),
        (
            "value 101",
            vec![choice("n".into(), text(101))],
            "/data/choices/0/value",
            "BASE_TYPE_BAD_LENGTH",
        ),
        (
            "empty value",
            vec![choice("n".into(), String::new())],
            "/data/choices/0/value",
            "BASE_TYPE_BAD_LENGTH",
        ),
        (
            "empty name",
            vec![choice(String::new(), "v".into())],
            "/data/choices/0/name",
            "BASE_TYPE_BAD_LENGTH",
        ),
    ];
    for (case, choices, path, code) in cases {
        let sent = fake.interaction_json(fake.autocomplete("jit").focused("vm", ""));
        let route = format!("/interactions/{}/{}/callback", sent.id, sent.token);
        let body = json!({"type": 8, "data": {"choices": choices}});
        let (status, answer) = send_raw(&fake, "POST", &route, &body).await;
        assert_eq!(status, 400, "{case}: {answer}");
        assert_eq!(form_error(&answer, path), Some(code), "{case}: {answer}");
        assert_eq!(
            fake.autocomplete_choices(sent.id),
            None,
            "{case}: nothing shown"
        );
    }
    let sent = fake.interaction_json(fake.autocomplete("jit").focused("vm", ""));
    let route = format!("/interactions/{}/{}/callback", sent.id, sent.token);
    let at_limit: Vec<Value> = (0..25)
        .map(|i| choice(format!("{i:02}{}", text(98)), format!("{i:02}{}", text(98))))
        .collect();
    let (status, answer) = send_raw(
        &fake,
        "POST",
        &route,
        &json!({"type": 8, "data": {"choices": at_limit}}),
    )
    .await;
    assert_eq!(status, 204, "25 choices of 100 characters fit: {answer}");
}

#[tokio::test]
async fn each_command_registration_limit_refuses() {
    let fake = FakeDiscord::start().await;
    let route = format!("/applications/{APPLICATION_ID}/guilds/{GUILD_ID}/commands");
    let option = |name: &str, required: bool| json!({"type": 3, "name": name, "description": "d", "required": required});
    let command = |name: &str, description: &str, options: Vec<Value>| json!({"type": 1, "name": name, "description": description, "options": options});
    let many: Vec<Value> = (0..26).map(|i| option(&format!("o{i}"), false)).collect();
    let mut choices = option("port", false);
    choices["choices"] = json!(
        (0..26)
            .map(|i| json!({"name": i.to_string(), "value": i.to_string()}))
            .collect::<Vec<_>>()
    );
    let mut long_choice = option("port", false);
    long_choice["choices"] = json!([{"name": "ssh", "value": text(101)}]);
    let cases = [
        (
            "uppercase name",
            command("Jit", "d", vec![]),
            "/0/name",
            "APPLICATION_COMMAND_INVALID_NAME",
        ),
        (
            "name 33",
            command(&text(33), "d", vec![]),
            "/0/name",
            "APPLICATION_COMMAND_INVALID_NAME",
        ),
        (
            "space in a name",
            command("jit admin", "d", vec![]),
            "/0/name",
            "APPLICATION_COMMAND_INVALID_NAME",
        ),
        (
            "empty description",
            command("jit", "", vec![]),
            "/0/description",
            "BASE_TYPE_BAD_LENGTH",
        ),
        (
            "description 101",
            command("jit", &text(101), vec![]),
            "/0/description",
            "BASE_TYPE_BAD_LENGTH",
        ),
        (
            "26 options",
            command("jit", "d", many),
            "/0/options",
            "BASE_TYPE_MAX_LENGTH",
        ),
        (
            "26 choices",
            command("jit", "d", vec![choices]),
            "/0/options/0/choices",
            "BASE_TYPE_MAX_LENGTH",
        ),
        (
            "choice value 101",
            command("jit", "d", vec![long_choice]),
            "/0/options/0/choices/0/value",
            "BASE_TYPE_BAD_LENGTH",
        ),
        (
            "option name Vm",
            command("jit", "d", vec![option("Vm", true)]),
            "/0/options/0/name",
            "APPLICATION_COMMAND_INVALID_NAME",
        ),
        (
            "required after optional",
            command("jit", "d", vec![option("a", false), option("b", true)]),
            "/0/options/1",
            "APPLICATION_COMMAND_OPTIONS_REQUIRED_INVALID_ORDER",
        ),
    ];
    for (case, command, path, code) in cases {
        let (status, answer) = send_raw(&fake, "PUT", &route, &json!([command])).await;
        assert_eq!(status, 400, "{case}: {answer}");
        assert_eq!(form_error(&answer, path), Some(code), "{case}: {answer}");
    }
    assert!(
        fake.guild_commands(GUILD_ID).is_empty(),
        "nothing refused was registered"
    );
    let (status, answer) = send_raw(
        &fake,
        "PUT",
        &route,
        &json!([command("jit-admin", "d", vec![option("vm", true)])]),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
}

// ----- files: multipart/form-data as Discord takes it ----------------------------------------------

const BOUNDARY: &str = "fake-boundary-7MA4YWxkTrZu0gW";

/// A multipart body: `payload_json` (when given), then each part as (field name, file name, bytes).
fn multipart(payload: Option<&Value>, parts: &[(&str, Option<&str>, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    if let Some(payload) = payload {
        body.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"payload_json\"\r\n\r\n{payload}\r\n"
            )
            .as_bytes(),
        );
    }
    for (name, filename, data) in parts {
        let filename = filename
            .map(|f| format!("; filename=\"{f}\""))
            .unwrap_or_default();
        body.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"{filename}\r\nContent-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

/// Posts a multipart `body` to the default channel: the status and answer.
async fn post_form(fake: &FakeDiscord, body: Vec<u8>) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!(
            "{}/api/v10/channels/{CHANNEL_ID}/messages",
            fake.base_url()
        ))
        .header("authorization", format!("Bot {TOKEN}"))
        .header(
            "content-type",
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(body)
        .send()
        .await
        .expect("the fake answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn files_sent_by_serenity_are_kept_with_their_message() {
    // Arrange
    let fake = FakeDiscord::start().await;
    let http = http_for(&fake);
    let png = vec![0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a, 0, 0xff];
    let message = CreateMessage::new()
        .content("the week")
        .add_file(serenity::all::CreateAttachment::bytes(
            png.clone(),
            "week.png",
        ))
        .add_file(serenity::all::CreateAttachment::bytes(
            b"kind,key\n".to_vec(),
            "week.csv",
        ));

    // Act
    let sent = ChannelId::new(CHANNEL_ID)
        .send_message(&http, message)
        .await
        .expect("a message with two files is taken");

    // Assert
    let names: Vec<&str> = sent
        .attachments
        .iter()
        .map(|a| a.filename.as_str())
        .collect();
    assert_eq!(names, ["week.png", "week.csv"]);
    assert_eq!(sent.attachments[0].size, png.len() as u32);
    let posted = fake.channel_messages(CHANNEL_ID);
    assert_eq!(
        fake.files_of(&posted[0]),
        [
            ("week.png".to_owned(), png),
            ("week.csv".to_owned(), b"kind,key\n".to_vec())
        ]
    );
    let call = &fake.calls_to("POST", &format!("/channels/{CHANNEL_ID}/messages"))[0];
    assert_eq!(call.body["content"], "the week");
    assert_eq!(call.files.len(), 2);
}

#[tokio::test]
async fn files_discord_refuses_are_refused_and_nothing_is_posted() {
    // Arrange
    let fake = FakeDiscord::start().await;
    let entry = |n: u64| json!({"id": n, "filename": format!("f{n}.txt")});
    let payload = |ids: &[u64]| json!({"content": "x", "attachments": ids.iter().map(|&n| entry(n)).collect::<Vec<_>>()});
    let big = vec![0u8; crate::support::fake_discord::ATTACHMENT_SIZE_LIMIT + 1];
    let eleven: Vec<(String, String)> = (0..11)
        .map(|n| (format!("files[{n}]"), format!("f{n}.txt")))
        .collect();
    let eleven_parts: Vec<(&str, Option<&str>, &[u8])> = eleven
        .iter()
        .map(|(name, file)| (name.as_str(), Some(file.as_str()), b"x".as_slice()))
        .collect();
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "a file without its attachments entry",
            multipart(Some(&payload(&[])), &[("files[0]", Some("f0.txt"), b"x")]),
            400,
        ),
        (
            "an entry naming another file",
            multipart(Some(&payload(&[1])), &[("files[0]", Some("f0.txt"), b"x")]),
            400,
        ),
        (
            "a file over the guild's size limit",
            multipart(Some(&payload(&[0])), &[("files[0]", Some("f0.txt"), &big)]),
            413,
        ),
        (
            "eleven files",
            multipart(Some(&payload(&(0..11).collect::<Vec<_>>())), &eleven_parts),
            400,
        ),
        (
            "a field that is not payload_json or files[n]",
            multipart(Some(&payload(&[])), &[("content", None, b"x")]),
            400,
        ),
        (
            "a file part without a file name",
            multipart(Some(&payload(&[0])), &[("files[0]", None, b"x")]),
            400,
        ),
        (
            "a body that never closes",
            multipart(Some(&payload(&[0])), &[("files[0]", Some("f0.txt"), b"x")])
                .strip_suffix(format!("--{BOUNDARY}--\r\n").as_bytes())
                .expect("the closing line")
                .to_vec(),
            400,
        ),
    ];

    for (case, body, status) in cases {
        // Act
        let (got, answer) = post_form(&fake, body).await;
        // Assert
        assert_eq!(got, status, "{case}: {answer}");
        assert!(answer["code"].is_u64(), "{case}: {answer}");
    }
    // An entry without a file, sent as plain JSON, is refused too.
    let (status, answer) = post_message(&fake, payload(&[0])).await;
    assert_eq!(status, 400, "{answer}");
    assert!(fake.channel_messages(CHANNEL_ID).is_empty());

    // Ten files, the largest at the limit, are taken.
    let at_limit = vec![7u8; crate::support::fake_discord::ATTACHMENT_SIZE_LIMIT];
    let mut ten: Vec<(&str, Option<&str>, &[u8])> = eleven_parts[..10].to_vec();
    ten[0].2 = &at_limit;
    let (status, answer) = post_form(
        &fake,
        multipart(Some(&payload(&(0..10).collect::<Vec<_>>())), &ten),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let posted = fake.channel_messages(CHANNEL_ID);
    assert_eq!(posted[0]["attachments"].as_array().map(Vec::len), Some(10));
    assert_eq!(fake.files_of(&posted[0])[0].1.len(), at_limit.len());
}

// ----- permissions: the bot's posts are checked as Discord checks them ---------------------------

/// The fake's answer (status, JSON error code) to a post of `message` to
/// the default channel with `overwrites` on it.
async fn post_with(
    fake: &FakeDiscord,
    overwrites: &[(u64, bool, u64, u64)],
    message: Value,
) -> (u16, u64) {
    fake.add_channel(CHANNEL_ID, overwrites);
    let (status, answer) = post_message(fake, message).await;
    (status, answer["code"].as_u64().unwrap_or(0))
}

#[tokio::test]
async fn a_post_needs_view_channel_and_send_messages_after_every_overwrite() {
    use crate::support::fake_discord::guild::{BOT_ROLE_ID, bits};
    let fake = FakeDiscord::start().await;
    let bot = fake.bot_user_id();
    let (view, send) = (bits::VIEW_CHANNEL, bits::SEND_MESSAGES);
    let hi = || json!({"content": "hi"});

    let cases = [
        ("no overwrites", vec![]),
        ("@everyone denied", vec![(GUILD_ID, false, 0, send)]),
        (
            "the bot's role allows it back",
            vec![(GUILD_ID, false, 0, send), (BOT_ROLE_ID, false, send, 0)],
        ),
        (
            "the bot itself denied",
            vec![(BOT_ROLE_ID, false, send, 0), (bot, true, 0, send)],
        ),
        ("@everyone may not see", vec![(GUILD_ID, false, 0, view)]),
    ];
    let mut answers = Vec::new();
    for (case, overwrites) in cases {
        answers.push((case, post_with(&fake, &overwrites, hi()).await));
    }
    fake.hide_channel(CHANNEL_ID);
    let (hidden, _) = post_message(&fake, hi()).await;
    fake.set_role_permissions(BOT_ROLE_ID, bits::ADMINISTRATOR);
    let admin = post_with(&fake, &[(bot, true, 0, view | send)], hi()).await;

    assert_eq!(
        answers,
        [
            ("no overwrites", (200, 0)),
            ("@everyone denied", (403, 50013)),
            ("the bot's role allows it back", (200, 0)),
            ("the bot itself denied", (403, 50013)),
            ("@everyone may not see", (403, 50001)),
        ]
    );
    assert_eq!(hidden, 403, "a channel the bot may not see");
    assert_eq!(admin, (200, 0), "ADMINISTRATOR passes every overwrite");
}

#[tokio::test]
async fn files_need_attach_files_where_text_does_not() {
    use crate::support::fake_discord::guild::{BOT_ROLE_ID, bits};
    let fake = FakeDiscord::start().await;
    let deny_files = [
        (GUILD_ID, false, 0, bits::ATTACH_FILES),
        (BOT_ROLE_ID, false, 0, bits::ATTACH_FILES),
    ];
    fake.add_channel(CHANNEL_ID, &deny_files);
    let text_only = json!({"content": "the week"});
    let with_file = json!({
        "content": "the week",
        "attachments": [{"id": 0, "filename": "week.csv"}],
    });

    let (text, _) = post_message(&fake, text_only).await;
    let (files, answer) = post_form(
        &fake,
        multipart(
            Some(&with_file),
            &[("files[0]", Some("week.csv"), b"kind\n")],
        ),
    )
    .await;

    assert_eq!(text, 200);
    assert_eq!(
        (files, answer["code"].as_u64()),
        (403, Some(50013)),
        "{answer}"
    );
}
