//! A fake Discord (REST + gateway on 127.0.0.1) for end-to-end tests of a real, unmodified serenity
//! 0.12.5 client. See `/work/shared/notes/discord.md` §1-§6 for the facts it models.
//!
//! Point serenity at it with "setup A" (the proxy is ignored while the ratelimiter is on):
//!
//! ```ignore
//! let fake = FakeDiscord::start().await;
//! let http = HttpBuilder::new("fake-token").proxy(fake.base_url()).ratelimiter_disabled(true).build();
//! let client = ClientBuilder::new_with_http(http, GatewayIntents::GUILDS).event_handler(h).await?;
//! // never call `.token()` on the builder afterwards: it replaces the proxied `Http`.
//! ```
//!
//! Serenity asks `GET /api/v10/gateway` for the gateway URL, so `base_url()` is all it needs.
//!
//! The file is self-contained (external crates only, never `drawbridge`) so a bench can include it
//! with `#[path = "../tests/it/support/fake_discord.rs"] mod fake_discord;`. Sub-modules are named
//! with explicit `#[path]`s so they resolve the same way in both inclusions.
//!
//! What it models: HELLO/IDENTIFY/READY, heartbeat ACKs, RESUME/RESUMED, scripted op 7, op 9 and
//! close codes; several sessions on one token at once, each receiving every dispatch (so two
//! replicas connected at once both answer, and the second callback gets 40060); a session's dispatches held while it reconnects and replayed on RESUME, lost when
//! it is invalidated ([`FakeDiscord::dispatch_interaction`]); command registration; the 3 s interaction callback window and double-ACK 40060;
//! followups (first one after a type-5 defer edits the original), original-response edits and the
//! 15 min token lifetime; DM channels; channel messages with `nonce` + `enforce_nonce`
//! idempotency; files sent as multipart/form-data ([`form`]), kept for
//! [`FakeDiscord::files_of`]; and injected 5xx / 429 faults. Every REST call is recorded.
//!
//! It is strict about bodies as Discord is ([`limits`]): content, embed, component, autocomplete,
//! `allowed_mentions` and command-registration limits, refused with 400 / 50035 and the field
//! path.

// Test-support code: each test binary uses a different subset of this API.
#![allow(dead_code)]

#[path = "fake_discord/form.rs"]
pub mod form;
#[path = "fake_discord/gateway.rs"]
mod gateway;
/// The default guild's roles, channels and install scopes.
pub mod guild;
#[path = "fake_discord/limits.rs"]
pub mod limits;
#[path = "fake_discord/payloads.rs"]
mod payloads;
#[path = "fake_discord/rest.rs"]
mod rest;
#[path = "fake_discord/signing.rs"]
pub mod signing;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use payloads::{InteractionBuilder, InteractionKind};

/// Default application id (also what READY advertises).
pub const APPLICATION_ID: u64 = 2002;
/// Default guild the fake's interactions come from.
pub const GUILD_ID: u64 = 4004;
/// Default channel the fake's interactions come from.
pub const CHANNEL_ID: u64 = 5005;
/// The bot's own user id (READY `user.id`, author of the bot's messages).
pub const BOT_USER_ID: u64 = 9009;
/// The default invoking user of built interactions.
pub const USER_ID: u64 = 6006;
/// The guild's `attachment_size_limit` (a guild without boosts): larger files are refused.
pub const ATTACHMENT_SIZE_LIMIT: usize = 10 * 1024 * 1024;
/// Discord's epoch (2015-01-01) in Unix milliseconds, used to mint realistic snowflakes.
const DISCORD_EPOCH_MS: u64 = 1_420_070_400_000;

/// Tunables of a [`FakeDiscord`]; see [`FakeDiscord::builder`].
#[derive(Clone, Debug)]
pub struct Config {
    pub application_id: u64,
    pub guild_id: u64,
    pub channel_id: u64,
    pub bot_user_id: u64,
    pub bot_username: String,
    /// The bot token REST calls must carry (`Authorization: Bot <token>`);
    /// any other answers 401, as Discord does.
    pub bot_token: String,
    /// The application's "Public Bot" switch (`bot_public`).
    pub bot_public: bool,
    /// Discord invalidates an interaction not answered within 3 s.
    pub callback_window: Duration,
    /// Interaction tokens (followups, edits) are valid for 15 min.
    pub token_lifetime: Duration,
    /// Window in which `enforce_nonce` deduplicates channel messages ("a few minutes").
    pub nonce_window: Duration,
    /// HELLO's `heartbeat_interval`.
    pub heartbeat_interval: Duration,
    /// Whether op 1 heartbeats are answered with op 11 (turn off to provoke a zombie reconnect).
    pub ack_heartbeats: bool,
    /// Requests per route bucket (a channel's messages, DM channel creation, one webhook token,
    /// command registration) per [`Config::rate_window`]; over it, 429. Every bucketed answer
    /// carries `X-RateLimit-*`. Discord's real values are tighter (5 per 5 s for a channel's
    /// messages); the default is loose so that tests not about rate limits do not wait.
    pub rate_limit: u32,
    pub rate_window: Duration,
    /// Discord's global limit (50 requests per second per bot), when set.
    pub global_limit: Option<u32>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            application_id: APPLICATION_ID,
            guild_id: GUILD_ID,
            channel_id: CHANNEL_ID,
            bot_user_id: BOT_USER_ID,
            bot_username: "drawbridge".to_owned(),
            bot_token: "fake-token".to_owned(),
            bot_public: false,
            callback_window: Duration::from_secs(3),
            token_lifetime: Duration::from_secs(15 * 60),
            nonce_window: Duration::from_secs(5 * 60),
            heartbeat_interval: Duration::from_millis(41_250),
            ack_heartbeats: true,
            rate_limit: 50,
            rate_window: Duration::from_secs(1),
            global_limit: None,
        }
    }
}

/// Builder for a [`FakeDiscord`] with non-default ids or time limits.
#[derive(Clone, Debug, Default)]
pub struct FakeDiscordBuilder {
    config: Config,
}

impl FakeDiscordBuilder {
    pub fn application_id(mut self, id: u64) -> Self {
        self.config.application_id = id;
        self
    }
    pub fn guild_id(mut self, id: u64) -> Self {
        self.config.guild_id = id;
        self
    }
    pub fn channel_id(mut self, id: u64) -> Self {
        self.config.channel_id = id;
        self
    }
    pub fn bot_user_id(mut self, id: u64) -> Self {
        self.config.bot_user_id = id;
        self
    }
    pub fn bot_token(mut self, token: &str) -> Self {
        self.config.bot_token = token.to_owned();
        self
    }
    pub fn bot_public(mut self, public: bool) -> Self {
        self.config.bot_public = public;
        self
    }
    pub fn callback_window(mut self, window: Duration) -> Self {
        self.config.callback_window = window;
        self
    }
    pub fn token_lifetime(mut self, lifetime: Duration) -> Self {
        self.config.token_lifetime = lifetime;
        self
    }
    pub fn nonce_window(mut self, window: Duration) -> Self {
        self.config.nonce_window = window;
        self
    }
    pub fn heartbeat_interval(mut self, interval: Duration) -> Self {
        self.config.heartbeat_interval = interval;
        self
    }
    pub fn ack_heartbeats(mut self, ack: bool) -> Self {
        self.config.ack_heartbeats = ack;
        self
    }
    /// `limit` requests per route bucket per `window`.
    pub fn rate_limit(mut self, limit: u32, window: Duration) -> Self {
        self.config.rate_limit = limit;
        self.config.rate_window = window;
        self
    }
    /// At most `per_second` bucketed requests per second in all.
    pub fn global_limit(mut self, per_second: u32) -> Self {
        self.config.global_limit = Some(per_second);
        self
    }
    pub async fn start(self) -> FakeDiscord {
        FakeDiscord::start_with(self.config).await
    }
}

/// One REST request the fake received, with the status it answered.
#[derive(Clone, Debug)]
pub struct RecordedCall {
    pub method: String,
    /// The full request path, e.g. `/api/v10/channels/5005/messages`.
    pub path: String,
    pub query: Option<String>,
    /// The `Authorization` header as sent (serenity sends `Bot <token>`).
    pub authorization: Option<String>,
    /// A subset of headers: `user-agent`, `content-type`, `x-audit-log-reason`.
    pub headers: BTreeMap<String, String>,
    /// The JSON body (of a multipart body: its `payload_json`); `Null` when empty, a `String`
    /// when not JSON.
    pub body: Value,
    /// The files of a multipart body ([`form`]).
    pub files: Vec<form::Upload>,
    pub status: u16,
    /// True when the answer came from [`FakeDiscord::fail_next`] / [`FakeDiscord::fail_always`].
    pub injected_fault: bool,
    pub received_at: Instant,
}

impl RecordedCall {
    /// The path below `/api/v10`, e.g. `/channels/5005/messages`.
    pub fn route(&self) -> &str {
        rest::strip_api_prefix(&self.path).unwrap_or(&self.path)
    }
    /// `call.is("POST", "/channels/5005/messages")`: exact method and route.
    pub fn is(&self, method: &str, route: &str) -> bool {
        self.method.eq_ignore_ascii_case(method) && self.route() == route
    }
    /// Method matches and the route starts with `prefix`.
    pub fn is_under(&self, method: &str, prefix: &str) -> bool {
        self.method.eq_ignore_ascii_case(method) && self.route().starts_with(prefix)
    }
}

/// One attempt to answer an interaction (`POST /interactions/{id}/{token}/callback`).
#[derive(Clone, Debug)]
pub struct Callback {
    pub body: Value,
    /// 204 accepted; 404 (10062) too late or unknown; 400 (40060) already acknowledged.
    pub status: u16,
    /// Time since the fake sent (or prepared) the interaction.
    pub elapsed: Duration,
    pub received_at: Instant,
}

impl Callback {
    /// The callback `type` (4 message, 5 defer, 6 deferred update, 7 update, 8 autocomplete, 9 modal).
    pub fn kind(&self) -> Option<u64> {
        self.body.get("type").and_then(Value::as_u64)
    }
    pub fn flags(&self) -> u64 {
        self.body
            .pointer("/data/flags")
            .and_then(Value::as_u64)
            .unwrap_or(0)
    }
    pub fn is_ephemeral(&self) -> bool {
        self.flags() & 64 != 0
    }
}

/// An interaction the fake has handed to the bot.
#[derive(Clone, Debug)]
pub struct SentInteraction {
    pub id: u64,
    pub token: String,
    pub sent_at: Instant,
    /// The interaction object (the gateway's `d`, or the body of an HTTP-mode POST).
    pub payload: Value,
}

impl SentInteraction {
    /// The payload as bytes, ready to sign and POST to an HTTP-mode bot.
    pub fn body_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&self.payload).expect("a JSON value serializes")
    }
}

/// An HTTP-mode bot's answer to [`FakeDiscord::post_interaction`].
#[derive(Clone, Debug)]
pub struct HttpDelivery {
    pub sent: SentInteraction,
    pub status: u16,
    /// The response body as JSON (`Null` when empty or not JSON).
    pub body: Value,
}

/// Which REST calls a fault applies to.
#[derive(Clone, Debug)]
pub enum RouteMatch {
    Any,
    /// `method` (any when `None`) and a route prefix below `/api/v10`, e.g. `/webhooks/`.
    Prefix {
        method: Option<String>,
        prefix: String,
    },
    /// `POST /channels/{id}/messages` (DM channels too).
    ChannelMessages(u64),
    /// `POST /interactions/{id}/{token}/callback`, any interaction.
    InteractionCallback,
    /// `POST /webhooks/{app}/{token}` (followups), any interaction.
    Followup,
    /// `PATCH /webhooks/{app}/{token}/messages/@original`.
    EditOriginal,
    /// `POST /users/@me/channels`.
    CreateDm,
    /// Command registration (`PUT|POST .../commands`).
    Commands,
}

/// How a matching REST call fails.
#[derive(Clone, Debug)]
pub enum FailMode {
    /// This status with body `{"code":0,"message":"<status> <reason>"}`.
    Status(u16),
    /// This status with this JSON body (include `"code"`: serenity requires it).
    Json { status: u16, body: Value },
    /// 429 with `Retry-After` (float seconds), `X-RateLimit-*` headers and the documented body
    /// `{"message","retry_after","global","code"}`.
    RateLimited { retry_after_secs: f64, global: bool },
}

/// One gateway frame, in either direction.
#[derive(Clone, Debug)]
pub struct GatewayFrame {
    /// The connection it travelled on (1 for the first connection).
    pub connection: u64,
    pub from_client: bool,
    pub op: u64,
    pub t: Option<String>,
    pub s: Option<u64>,
    pub d: Value,
    pub at: Instant,
}

/// A running fake Discord. Dropping it stops the servers.
pub struct FakeDiscord {
    shared: Arc<Shared>,
    rest_addr: SocketAddr,
    gateway_addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

struct Shared {
    config: Config,
    gateway_url: String,
    state: Mutex<State>,
    /// Bumped after every state change; waiters re-check their condition.
    changed: watch::Sender<u64>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `f` on the state and wakes all waiters.
    fn update<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let out = f(&mut self.lock());
        self.changed.send_modify(|n| *n += 1);
        out
    }
}

#[derive(Default)]
struct State {
    last_snowflake: u64,
    calls: Vec<RecordedCall>,
    faults: Vec<Fault>,
    interactions: HashMap<u64, InteractionRecord>,
    interaction_by_token: HashMap<String, u64>,
    /// Channel id → messages in creation order.
    messages: BTreeMap<u64, Vec<Value>>,
    /// (channel, nonce) → (message id, created) for `enforce_nonce`.
    nonces: HashMap<(u64, String), (u64, Instant)>,
    /// Attachment id → the bytes uploaded ([`FakeDiscord::attachment_data`]).
    files: HashMap<u64, Vec<u8>>,
    /// Recipient user id → DM channel id.
    dm_channels: BTreeMap<u64, u64>,
    /// (guild, user) → the guild member object `GET /guilds/{g}/members/{u}`
    /// returns: recorded from every guild interaction (Discord knows its
    /// members), or set with [`FakeDiscord::set_member_roles`].
    members: BTreeMap<(u64, u64), Value>,
    global_commands: Vec<Value>,
    guild_commands: BTreeMap<u64, Vec<Value>>,
    /// Command name → id, stable across re-registration (Discord keeps ids by name).
    command_ids: HashMap<(Option<u64>, String), u64>,
    /// Route bucket → (window start, requests in it).
    buckets: HashMap<String, (Instant, u32)>,
    /// The global window: (start, requests in it).
    global_window: Option<(Instant, u32)>,
    gateway: gateway::GatewayState,
    guild: guild::Guild,
}

impl State {
    /// A fresh, increasing, non-zero snowflake whose timestamp is now.
    fn snowflake(&mut self) -> u64 {
        let ms = chrono::Utc::now().timestamp_millis() as u64;
        let candidate = ms.saturating_sub(DISCORD_EPOCH_MS) << 22;
        self.last_snowflake = candidate.max(self.last_snowflake + 1);
        self.last_snowflake
    }
}

struct Fault {
    route: RouteMatch,
    mode: FailMode,
    /// `None` = until [`FakeDiscord::clear_faults`].
    remaining: Option<usize>,
}

struct InteractionRecord {
    id: u64,
    token: String,
    kind: InteractionKind,
    channel_id: u64,
    sent_at: Instant,
    payload: Value,
    callbacks: Vec<Callback>,
    /// The accepted callback type.
    acked: Option<u64>,
    /// The original response message (for components: the message the component is on).
    original: Option<Value>,
    /// A type-5 defer whose loading message is still shown: the next followup edits it.
    loading: bool,
    followups: Vec<Value>,
    autocomplete_choices: Option<Vec<Value>>,
    modal: Option<Value>,
}

impl InteractionRecord {
    fn new(
        id: u64,
        token: String,
        kind: InteractionKind,
        channel_id: u64,
        payload: Value,
        original: Option<Value>,
    ) -> Self {
        Self {
            id,
            token,
            kind,
            channel_id,
            sent_at: Instant::now(),
            payload,
            callbacks: Vec::new(),
            acked: None,
            original,
            loading: false,
            followups: Vec::new(),
            autocomplete_choices: None,
            modal: None,
        }
    }
}

impl FakeDiscord {
    /// Starts a fake with the default ids ([`APPLICATION_ID`], [`GUILD_ID`], ...).
    pub async fn start() -> Self {
        Self::start_with(Config::default()).await
    }

    pub fn builder() -> FakeDiscordBuilder {
        FakeDiscordBuilder::default()
    }

    pub async fn start_with(config: Config) -> Self {
        let rest_listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake REST");
        let gateway_listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake gateway");
        let rest_addr = rest_listener.local_addr().expect("REST address");
        let gateway_addr = gateway_listener.local_addr().expect("gateway address");
        let guild = guild::Guild::new(config.guild_id, config.channel_id);
        let shared = Arc::new(Shared {
            config,
            gateway_url: format!("ws://{gateway_addr}"),
            state: Mutex::new(State {
                guild,
                ..State::default()
            }),
            changed: watch::Sender::new(0),
        });
        let tasks = vec![
            tokio::spawn(rest::serve(shared.clone(), rest_listener)),
            tokio::spawn(gateway::serve(shared.clone(), gateway_listener)),
        ];
        Self {
            shared,
            rest_addr,
            gateway_addr,
            tasks,
        }
    }

    // ----- addresses and ids -------------------------------------------------------------------

    /// `http://127.0.0.1:PORT`: serenity's `HttpBuilder::proxy`, Drawbridge's `discord.base_url`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.rest_addr)
    }
    /// `ws://127.0.0.1:PORT`, as returned by `GET /api/v10/gateway`.
    pub fn gateway_url(&self) -> String {
        self.shared.gateway_url.clone()
    }
    pub fn config(&self) -> &Config {
        &self.shared.config
    }
    pub fn application_id(&self) -> u64 {
        self.shared.config.application_id
    }
    pub fn guild_id(&self) -> u64 {
        self.shared.config.guild_id
    }
    pub fn channel_id(&self) -> u64 {
        self.shared.config.channel_id
    }
    pub fn bot_user_id(&self) -> u64 {
        self.shared.config.bot_user_id
    }

    // ----- waiting -----------------------------------------------------------------------------

    /// Polls `cond` after every state change until it returns `Some` or `timeout` passes.
    async fn wait_for<T>(
        &self,
        timeout: Duration,
        mut cond: impl FnMut(&State) -> Option<T>,
    ) -> Option<T> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut changes = self.shared.changed.subscribe();
        loop {
            changes.borrow_and_update();
            if let Some(found) = cond(&self.shared.lock()) {
                return Some(found);
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return cond(&self.shared.lock()),
            }
        }
    }

    /// Waits until `cond(self)` holds, re-checking after every change in the fake.
    /// Returns whether it held before `timeout`.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        mut cond: impl FnMut(&FakeDiscord) -> bool,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut changes = self.shared.changed.subscribe();
        loop {
            changes.borrow_and_update();
            if cond(self) {
                return true;
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return cond(self),
            }
        }
    }

    /// The first recorded REST call (past or future) matching `pred`.
    pub async fn wait_for_call(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&RecordedCall) -> bool,
    ) -> Option<RecordedCall> {
        self.wait_for(timeout, |st| st.calls.iter().find(|c| pred(c)).cloned())
            .await
    }

    // ----- REST records ------------------------------------------------------------------------

    /// Every REST call so far, in arrival order.
    pub fn calls(&self) -> Vec<RecordedCall> {
        self.shared.lock().calls.clone()
    }
    /// Calls with this method whose route (below `/api/v10`) starts with `prefix`.
    pub fn calls_to(&self, method: &str, prefix: &str) -> Vec<RecordedCall> {
        self.shared
            .lock()
            .calls
            .iter()
            .filter(|c| c.is_under(method, prefix))
            .cloned()
            .collect()
    }
    /// Runs `f` on every REST call so far, in arrival order, without
    /// copying them: for pollers (the load harness) that only look.
    pub fn inspect_calls(&self, mut f: impl FnMut(&RecordedCall)) {
        self.shared.lock().calls.iter().for_each(&mut f);
    }
    /// Every callback attempt for the interaction, accepted or not.
    pub fn callbacks(&self, interaction_id: u64) -> Vec<Callback> {
        self.with_interaction(interaction_id, |ix| ix.callbacks.clone())
            .unwrap_or_default()
    }
    /// Waits for the first callback attempt for the interaction.
    pub async fn wait_for_callback(
        &self,
        interaction_id: u64,
        timeout: Duration,
    ) -> Option<Callback> {
        self.wait_for(timeout, |st| {
            st.interactions
                .get(&interaction_id)?
                .callbacks
                .first()
                .cloned()
        })
        .await
    }
    /// The original response message as last edited (`None` before an accepted type 4/5 callback
    /// or after deletion). For a component interaction: the message the component is on.
    pub fn interaction_response(&self, interaction_id: u64) -> Option<Value> {
        self.with_interaction(interaction_id, |ix| ix.original.clone())
            .flatten()
    }
    /// Waits until the original response satisfies `pred` (e.g. it has non-empty content).
    pub async fn wait_for_interaction_response(
        &self,
        interaction_id: u64,
        timeout: Duration,
        mut pred: impl FnMut(&Value) -> bool,
    ) -> Option<Value> {
        self.wait_for(timeout, |st| {
            st.interactions
                .get(&interaction_id)?
                .original
                .clone()
                .filter(|m| pred(m))
        })
        .await
    }
    /// Messages created by followups (a followup that replaced a defer's loading message is the
    /// original response instead, see [`FakeDiscord::interaction_response`]).
    pub fn followups(&self, interaction_id: u64) -> Vec<Value> {
        self.with_interaction(interaction_id, |ix| ix.followups.clone())
            .unwrap_or_default()
    }
    /// Every interaction's response message and followups, as last edited,
    /// with the interaction id, oldest interaction first: what members were
    /// shown in reply to commands and buttons.
    pub fn interaction_messages(&self) -> Vec<(u64, Value)> {
        let st = self.shared.lock();
        let mut ids: Vec<u64> = st.interactions.keys().copied().collect();
        ids.sort_unstable();
        ids.into_iter()
            .flat_map(|id| {
                let ix = &st.interactions[&id];
                ix.original
                    .iter()
                    .chain(ix.followups.iter())
                    .map(move |m| (id, m.clone()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }
    /// The `choices` of an accepted autocomplete (type 8) callback.
    pub fn autocomplete_choices(&self, interaction_id: u64) -> Option<Vec<Value>> {
        self.with_interaction(interaction_id, |ix| ix.autocomplete_choices.clone())
            .flatten()
    }
    /// The `data` of an accepted modal (type 9) callback.
    pub fn modal(&self, interaction_id: u64) -> Option<Value> {
        self.with_interaction(interaction_id, |ix| ix.modal.clone())
            .flatten()
    }
    fn with_interaction<T>(&self, id: u64, f: impl FnOnce(&InteractionRecord) -> T) -> Option<T> {
        self.shared.lock().interactions.get(&id).map(f)
    }
    /// Messages posted to the channel (`POST /channels/{id}/messages`), oldest first.
    pub fn channel_messages(&self, channel_id: u64) -> Vec<Value> {
        self.shared
            .lock()
            .messages
            .get(&channel_id)
            .cloned()
            .unwrap_or_default()
    }
    /// How many messages were posted to the channel, without copying them.
    pub fn channel_message_count(&self, channel_id: u64) -> usize {
        self.shared
            .lock()
            .messages
            .get(&channel_id)
            .map_or(0, Vec::len)
    }
    /// The bytes of an attachment object of a message the fake holds (its `id`), as uploaded.
    pub fn attachment_data(&self, attachment: &Value) -> Option<Vec<u8>> {
        let id = rest::snowflake_field(&attachment["id"])?;
        self.shared.lock().files.get(&id).cloned()
    }
    /// A message's files: (file name, bytes), in the message's order.
    pub fn files_of(&self, message: &Value) -> Vec<(String, Vec<u8>)> {
        message["attachments"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| {
                let name = a["filename"].as_str()?.to_owned();
                Some((name, self.attachment_data(a)?))
            })
            .collect()
    }
    /// Every channel's messages (DM channels among them) as last edited,
    /// with the channel id: everything the bot posted outside replies.
    pub fn all_channel_messages(&self) -> Vec<(u64, Value)> {
        let st = self.shared.lock();
        st.messages
            .iter()
            .flat_map(|(channel, messages)| messages.iter().map(|m| (*channel, m.clone())))
            .collect()
    }
    /// The user a DM channel was opened for.
    pub fn dm_recipient(&self, channel_id: u64) -> Option<u64> {
        let st = self.shared.lock();
        st.dm_channels
            .iter()
            .find(|(_, c)| **c == channel_id)
            .map(|(u, _)| *u)
    }
    /// The DM channel created for `user_id`, if any.
    pub fn dm_channel(&self, user_id: u64) -> Option<u64> {
        self.shared.lock().dm_channels.get(&user_id).copied()
    }
    /// Makes `user_id` a member of the default guild with these roles now,
    /// as `GET /guilds/{id}/members/{user}` reports them (an empty list is a
    /// member without roles).
    pub fn set_member_roles(&self, user_id: u64, roles: impl IntoIterator<Item = u64>) {
        let roles: Vec<String> = roles.into_iter().map(|r| r.to_string()).collect();
        let guild = self.shared.config.guild_id;
        self.shared.update(|st| {
            st.members.insert(
                (guild, user_id),
                payloads::member_json(user_id, &format!("user{user_id}"), &roles),
            );
        });
    }
    /// Removes `user_id` from the default guild (they left or were kicked).
    pub fn remove_member(&self, user_id: u64) {
        let guild = self.shared.config.guild_id;
        self.shared.update(|st| {
            st.members.remove(&(guild, user_id));
        });
    }
    /// Messages sent to the user's DM channel, oldest first.
    pub fn dm_messages(&self, user_id: u64) -> Vec<Value> {
        let st = self.shared.lock();
        let Some(channel) = st.dm_channels.get(&user_id) else {
            return Vec::new();
        };
        st.messages.get(channel).cloned().unwrap_or_default()
    }
    /// Globally registered commands, as last bulk-overwritten (with ids).
    pub fn global_commands(&self) -> Vec<Value> {
        self.shared.lock().global_commands.clone()
    }
    /// The guild's registered commands, as last bulk-overwritten (with ids).
    pub fn guild_commands(&self, guild_id: u64) -> Vec<Value> {
        self.shared
            .lock()
            .guild_commands
            .get(&guild_id)
            .cloned()
            .unwrap_or_default()
    }
    /// All registered commands: global ones, then each guild's.
    pub fn registered_commands(&self) -> Vec<Value> {
        let st = self.shared.lock();
        let mut all = st.global_commands.clone();
        all.extend(st.guild_commands.values().flatten().cloned());
        all
    }

    // ----- fault injection ---------------------------------------------------------------------

    /// The next `times` calls matching `route` fail with `mode` (faults are checked in the order
    /// they were added; the first match wins).
    pub fn fail_next(&self, route: RouteMatch, mode: FailMode, times: usize) {
        self.shared.update(|st| {
            st.faults.push(Fault {
                route,
                mode,
                remaining: Some(times),
            })
        });
    }
    /// Every call matching `route` fails with `mode` until [`FakeDiscord::clear_faults`].
    pub fn fail_always(&self, route: RouteMatch, mode: FailMode) {
        self.shared.update(|st| {
            st.faults.push(Fault {
                route,
                mode,
                remaining: None,
            })
        });
    }
    pub fn clear_faults(&self) {
        self.shared.update(|st| st.faults.clear());
    }

    // ----- interactions ------------------------------------------------------------------------

    /// A slash command (`type` 2) named `name`, from [`USER_ID`] in the default guild and channel.
    pub fn slash(&self, name: &str) -> InteractionBuilder {
        InteractionBuilder::new(&self.shared.config, InteractionKind::Command, name)
    }
    /// An autocomplete request (`type` 4) for command `name`; mark one option with `.focused(..)`.
    pub fn autocomplete(&self, name: &str) -> InteractionBuilder {
        InteractionBuilder::new(&self.shared.config, InteractionKind::Autocomplete, name)
    }
    /// A button press (`type` 3, `component_type` 2) with this `custom_id`.
    pub fn button(&self, custom_id: &str) -> InteractionBuilder {
        InteractionBuilder::new(&self.shared.config, InteractionKind::Component, custom_id)
    }
    /// The MODAL_SUBMIT (`type` 5) of the form the bot showed in answer to
    /// interaction `shown_in`, with `values` for its text inputs by
    /// `custom_id`, from the member who saw it. Panics if the bot showed no
    /// form there (Discord sends a submission only for a form it showed), or
    /// a value names no input of the form.
    pub fn submit_modal(&self, shown_in: u64, values: &[(&str, &str)]) -> InteractionBuilder {
        let modal = self
            .modal(shown_in)
            .unwrap_or_else(|| panic!("interaction {shown_in} showed no form"));
        let inputs: Vec<String> = modal["components"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|row| row["components"].as_array().cloned().unwrap_or_default())
            .filter_map(|input| input["custom_id"].as_str().map(str::to_owned))
            .collect();
        let custom_id = modal["custom_id"].as_str().unwrap_or_default();
        let mut form =
            InteractionBuilder::new(&self.shared.config, InteractionKind::ModalSubmit, custom_id);
        for (id, value) in values {
            assert!(
                inputs.iter().any(|i| i == id),
                "the form has no input {id}: {modal}"
            );
            form = form.input(id, value);
        }
        form
    }
    /// A PING (`type` 1), as Discord sends to verify an HTTP interactions endpoint.
    pub fn ping(&self) -> InteractionBuilder {
        InteractionBuilder::new(&self.shared.config, InteractionKind::Ping, "")
    }

    /// Mints a fresh id and token for `interaction`, starts its 3 s window now and returns the
    /// payload without sending it (for HTTP-mode tests that POST it to the bot themselves).
    pub fn interaction_json(&self, interaction: InteractionBuilder) -> SentInteraction {
        self.shared
            .update(|st| register_interaction(st, interaction))
    }

    /// Sends `interaction` as an INTERACTION_CREATE dispatch, waiting up to 10 s for a READY
    /// client. Panics when no client is connected.
    pub async fn send_interaction(&self, interaction: InteractionBuilder) -> SentInteraction {
        self.wait_until_ready(Duration::from_secs(10)).await;
        self.shared
            .update(|st| {
                let sent = register_interaction(st, interaction);
                st.gateway
                    .dispatch("INTERACTION_CREATE", sent.payload.clone())
                    .map(|_| sent)
            })
            .expect("send_interaction: no READY gateway client")
    }

    /// Sends `interaction` as Discord does whatever the connection's state: at once to a ready
    /// connection; held for the session while it reconnects (after op 7) and replayed on its
    /// RESUME; lost when there is no session (after op 9 `false`, until the next IDENTIFY). Does
    /// not wait, so a test can dispatch into a reconnect.
    pub fn dispatch_interaction(&self, interaction: InteractionBuilder) -> SentInteraction {
        self.shared.update(|st| {
            let sent = register_interaction(st, interaction);
            st.gateway
                .dispatch_or_hold("INTERACTION_CREATE", sent.payload.clone());
            sent
        })
    }

    /// Records `body` as the interaction's response, as if sent to `/callback`: for HTTP-mode
    /// bots that answer inline (the 200 body of Discord's POST). Returns the status a callback
    /// would have got (204 accepted, 400 already acknowledged, 404 too late).
    pub fn record_inline_response(&self, interaction_id: u64, body: Value) -> u16 {
        self.shared
            .update(|st| rest::inline_response(st, &self.shared, interaction_id, &body))
    }

    /// Delivers `interaction` to an HTTP-mode bot as Discord does: a signed POST of the payload
    /// to `endpoint`. A 200 answer with an interaction response body counts as the callback
    /// (see [`FakeDiscord::record_inline_response`]); a 202 means the bot uses `/callback`.
    pub async fn post_interaction(
        &self,
        endpoint: &str,
        interaction: InteractionBuilder,
        signer: &signing::Signer,
    ) -> HttpDelivery {
        let sent = self.interaction_json(interaction);
        let body = sent.body_bytes();
        let mut request = reqwest::Client::new()
            .post(endpoint)
            .header("content-type", "application/json")
            .body(body.clone());
        for (name, value) in signer.headers(&body) {
            request = request.header(name, value);
        }
        let response = request
            .send()
            .await
            .expect("POST to the bot's interactions endpoint");
        let status = response.status().as_u16();
        let bytes = response.bytes().await.unwrap_or_default();
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status == 200 && body.get("type").is_some() {
            self.record_inline_response(sent.id, body.clone());
        }
        HttpDelivery { sent, status, body }
    }

    /// Sends a hand-written interaction object `d` (e.g. a malformed one) as INTERACTION_CREATE.
    /// Its `id`, `token`, `type` and `channel_id` are registered so callbacks to it are modelled.
    pub async fn send_interaction_json(&self, payload: Value) -> SentInteraction {
        self.wait_until_ready(Duration::from_secs(10)).await;
        self.shared
            .update(|st| {
                let sent = register_raw_interaction(st, payload);
                st.gateway
                    .dispatch("INTERACTION_CREATE", sent.payload.clone())
                    .map(|_| sent)
            })
            .expect("send_interaction_json: no READY gateway client")
    }

    // ----- gateway -----------------------------------------------------------------------------

    /// Waits until a client has identified (or resumed) and been sent READY (or RESUMED) on the
    /// current connection.
    pub async fn wait_until_ready(&self, timeout: Duration) -> bool {
        self.wait_for(timeout, |st| st.gateway.is_ready().then_some(()))
            .await
            .is_some()
    }
    /// Every gateway frame both ways, in order.
    pub fn gateway_frames(&self) -> Vec<GatewayFrame> {
        self.shared.lock().gateway.frames.clone()
    }
    /// The `d` of every IDENTIFY (op 2) received.
    pub fn identifies(&self) -> Vec<Value> {
        self.client_frames(2)
    }
    /// The `d` of every RESUME (op 6) received.
    pub fn resumes(&self) -> Vec<Value> {
        self.client_frames(6)
    }
    fn client_frames(&self, op: u64) -> Vec<Value> {
        let st = self.shared.lock();
        st.gateway
            .frames
            .iter()
            .filter(|f| f.from_client && f.op == op)
            .map(|f| f.d.clone())
            .collect()
    }
    /// Waits for the first frame (either direction) matching `pred`.
    pub async fn wait_for_frame(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&GatewayFrame) -> bool,
    ) -> Option<GatewayFrame> {
        self.wait_for(timeout, |st| {
            st.gateway.frames.iter().find(|f| pred(f)).cloned()
        })
        .await
    }
    /// How many sessions have a ready gateway connection now (several replicas connected at
    /// once each have one).
    pub fn ready_sessions(&self) -> usize {
        self.shared.lock().gateway.ready_sessions()
    }
    /// The most sessions that were ready at once so far.
    pub fn peak_ready_sessions(&self) -> usize {
        self.shared.lock().gateway.peak_ready
    }
    /// The request URIs of gateway connections so far (serenity connects to `/?v=10`).
    pub fn gateway_connections(&self) -> Vec<String> {
        self.shared.lock().gateway.connect_uris.clone()
    }
    /// Sends a dispatch `{"op":0,"s":N,"t":t,"d":d}` to every READY session; returns `N` (on the
    /// newest connection's session).
    pub fn send_dispatch(&self, t: &str, d: Value) -> Option<u64> {
        self.shared.update(|st| st.gateway.dispatch(t, d))
    }
    /// Sends op 7 RECONNECT on the newest connection: serenity reconnects and RESUMEs.
    pub fn send_reconnect(&self) {
        self.shared.update(|st| st.gateway.send_op(7, Value::Null));
    }
    /// Sends op 9 INVALID_SESSION on the newest connection. `false` makes serenity re-identify (allow ~5 s).
    pub fn send_invalid_session(&self, resumable: bool) {
        self.shared.update(|st| {
            if !resumable {
                st.gateway.invalidate_session();
            }
            st.gateway.send_op(9, Value::Bool(resumable))
        });
    }
    /// Sends op 1: serenity heartbeats at once.
    pub fn request_heartbeat(&self) {
        self.shared.update(|st| st.gateway.send_op(1, Value::Null));
    }
    /// Closes the newest connection with `code` (4004 is fatal for serenity; 4000 resumes).
    pub fn close_gateway(&self, code: u16) {
        self.shared.update(|st| st.gateway.close(code));
    }
}

impl Drop for FakeDiscord {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        // Dropping the connection's sender ends its task and closes the socket.
        self.shared.lock().gateway.drop_connections();
    }
}

fn register_raw_interaction(st: &mut State, payload: Value) -> SentInteraction {
    let field = |key: &str| rest::snowflake_field(&payload[key]);
    let id = field("id").unwrap_or_else(|| st.snowflake());
    let token = payload["token"]
        .as_str()
        .map_or_else(|| format!("fake-interaction-token-{id}"), str::to_owned);
    let kind = match payload["type"].as_u64() {
        Some(1) => InteractionKind::Ping,
        Some(3) => InteractionKind::Component,
        Some(4) => InteractionKind::Autocomplete,
        Some(5) => InteractionKind::ModalSubmit,
        _ => InteractionKind::Command,
    };
    let sent = SentInteraction {
        id,
        token: token.clone(),
        sent_at: Instant::now(),
        payload: payload.clone(),
    };
    let original = (kind == InteractionKind::Component).then(|| payload["message"].clone());
    st.interaction_by_token.insert(token.clone(), id);
    st.interactions.insert(
        id,
        InteractionRecord::new(
            id,
            token,
            kind,
            field("channel_id").unwrap_or(0),
            payload,
            original,
        ),
    );
    sent
}

fn register_interaction(st: &mut State, interaction: InteractionBuilder) -> SentInteraction {
    let id = st.snowflake();
    let token = format!("fake-interaction-token-{id}");
    let command_id = st
        .command_ids
        .get(&(
            Some(interaction.guild_id_or_zero()),
            interaction.name().to_owned(),
        ))
        .or_else(|| st.command_ids.get(&(None, interaction.name().to_owned())))
        .copied();
    let command_id = command_id.unwrap_or_else(|| st.snowflake());
    let message_id = st.snowflake();
    let payload = interaction.build(id, &token, command_id, message_id);
    if let (Some(guild), Some(user)) = (
        payload["guild_id"]
            .as_str()
            .and_then(|g| g.parse::<u64>().ok()),
        payload["member"]["user"]["id"]
            .as_str()
            .and_then(|u| u.parse::<u64>().ok()),
    ) {
        let mut member = payload["member"].clone();
        if let Some(map) = member.as_object_mut() {
            map.remove("permissions");
        }
        st.members.insert((guild, user), member);
    }
    let sent_at = Instant::now();
    let kind = interaction.kind();
    let original = (kind == InteractionKind::Component).then(|| payload["message"].clone());
    st.interaction_by_token.insert(token.clone(), id);
    st.interactions.insert(
        id,
        InteractionRecord {
            id,
            token: token.clone(),
            kind,
            channel_id: interaction.channel_id(),
            sent_at,
            payload: payload.clone(),
            callbacks: Vec::new(),
            acked: None,
            original,
            loading: false,
            followups: Vec::new(),
            autocomplete_choices: None,
            modal: None,
        },
    );
    SentInteraction {
        id,
        token,
        sent_at,
        payload,
    }
}
