//! The REST API under `/api/v10` (notes §1, §4, §6). Every request is recorded, then answered
//! by an injected fault or by the route's model.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State as AxumState;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use super::payloads::{apply_message_body, message_json, timestamp, user_json};
use super::{
    Callback, FailMode, InteractionKind, InteractionRecord, RecordedCall, RouteMatch, Shared, State,
};
use super::{Config, form, guild, limits};

const API_PREFIX: &str = "/api/v10";
const EPHEMERAL: u64 = 1 << 6;
const LOADING: u64 = 1 << 7;

/// The route below `/api/v10`, or `None` for any other path.
pub(super) fn strip_api_prefix(path: &str) -> Option<&str> {
    path.strip_prefix(API_PREFIX)
        .filter(|rest| rest.is_empty() || rest.starts_with('/'))
}

pub(super) async fn serve(shared: Arc<Shared>, listener: TcpListener) {
    // Room for ten files at the size limit: the fake's own rules refuse what is too large.
    let limit = super::ATTACHMENT_SIZE_LIMIT * (form::MAX_FILES + 2);
    let app = Router::new()
        .fallback(handle)
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .with_state(shared);
    let _ = axum::serve(listener, app).await;
}

struct Reply {
    status: u16,
    body: Option<Value>,
    headers: Vec<(&'static str, String)>,
}

impl Reply {
    fn json(status: u16, body: Value) -> Self {
        Self {
            status,
            body: Some(body),
            headers: Vec::new(),
        }
    }
    fn no_content() -> Self {
        Self {
            status: 204,
            body: None,
            headers: Vec::new(),
        }
    }
    /// Discord's error shape; serenity requires `code` (notes §1.3).
    fn error(status: u16, code: u64, message: &str) -> Self {
        Self::json(status, json!({"code": code, "message": message}))
    }
    fn unknown_interaction() -> Self {
        Self::error(404, 10062, "Unknown interaction")
    }
    fn unknown_webhook() -> Self {
        Self::error(404, 10015, "Unknown Webhook")
    }
    fn unknown_message() -> Self {
        Self::error(404, 10008, "Unknown Message")
    }
    fn not_found() -> Self {
        Self::error(404, 0, "404: Not Found")
    }
    fn invalid_form(message: &str) -> Self {
        Self::error(400, 50035, message)
    }
    /// 400 with Discord's `Invalid Form Body` and the offending field paths ([`limits`]).
    fn form_errors(body: Value) -> Self {
        Self::json(400, body)
    }
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let mut response = match self.body {
            Some(body) => {
                let mut r = Response::new(Body::from(body.to_string()));
                r.headers_mut()
                    .insert("content-type", "application/json".parse().expect("header"));
                r
            }
            None => Response::new(Body::empty()),
        };
        *response.status_mut() =
            StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        for (name, value) in self.headers {
            if let Ok(value) = value.parse() {
                response.headers_mut().insert(name, value);
            }
        }
        response
    }
}

async fn handle(
    AxumState(shared): AxumState<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Reply {
    let received_at = Instant::now();
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let form = header("content-type")
        .as_deref()
        .and_then(form::boundary)
        .map(|boundary| form::parse(&body, &boundary, super::ATTACHMENT_SIZE_LIMIT));
    let (body, files, refused) = match form {
        Some(Ok((payload, files))) => (payload, files, None),
        Some(Err(refusal)) => (Value::Null, Vec::new(), Some(refusal)),
        None if body.is_empty() => (Value::Null, Vec::new(), None),
        None => (
            serde_json::from_slice(&body)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned())),
            Vec::new(),
            None,
        ),
    };
    let kept = ["user-agent", "content-type", "x-audit-log-reason"]
        .into_iter()
        .filter_map(|name| Some((name.to_owned(), header(name)?)))
        .collect();
    let path = uri.path().to_owned();
    let query = uri.query().map(str::to_owned);
    shared.update(|st| {
        let route = strip_api_prefix(&path);
        let fault = route.and_then(|route| take_fault(st, &method, route));
        let injected_fault = fault.is_some();
        let reply = match (fault, route, refused) {
            (Some(reply), _, _) => reply,
            (None, Some(_), Some(refusal)) => {
                Reply::error(refusal.status, refusal.code, &refusal.message)
            }
            (None, Some(route), None) => {
                match take_rate_limit(st, &shared.config, route, received_at) {
                    Err(limited) => limited,
                    Ok(headers) => {
                        let authorization = header("authorization");
                        let uploads = store_uploads(st, &files);
                        let request = Request {
                            method: &method,
                            authorization: authorization.as_ref(),
                            route,
                            query: query.as_deref(),
                            body: &body,
                            uploads: &uploads,
                            at: received_at,
                        };
                        let mut reply = route_request(st, &shared, &request);
                        reply.headers.extend(headers);
                        reply
                    }
                }
            }
            (None, None, _) => Reply::not_found(),
        };
        st.calls.push(RecordedCall {
            method: method.as_str().to_owned(),
            path: path.clone(),
            query: query.clone(),
            authorization: header("authorization"),
            headers: kept,
            body: body.clone(),
            files: files.clone(),
            status: reply.status,
            injected_fault,
            received_at,
        });
        reply
    })
}

struct Request<'a> {
    method: &'a Method,
    authorization: Option<&'a String>,
    route: &'a str,
    query: Option<&'a str>,
    body: &'a Value,
    /// The request's files as attachment objects, by `files[n]` index ([`store_uploads`]).
    uploads: &'a [(u64, Value)],
    at: Instant,
}

/// Keeps the bytes of each uploaded file under a new attachment id and returns the attachment
/// objects Discord would show for them, by `files[n]` index.
/// The bytes are read back with [`super::FakeDiscord::attachment_data`]; the `url` is only
/// Discord's shape (the fake serves no CDN).
fn store_uploads(st: &mut State, files: &[form::Upload]) -> Vec<(u64, Value)> {
    files
        .iter()
        .map(|file| {
            let id = st.snowflake();
            st.files.insert(id, file.data.clone());
            let url = format!(
                "https://cdn.discordapp.com/attachments/{id}/{}",
                file.filename
            );
            let attachment = json!({
                "id": id.to_string(),
                "filename": file.filename,
                "size": file.data.len(),
                "url": url,
                "proxy_url": url,
                "content_type": file.content_type,
            });
            (file.index, attachment)
        })
        .collect()
}

fn take_fault(st: &mut State, method: &Method, route: &str) -> Option<Reply> {
    let index = st
        .faults
        .iter()
        .position(|f| matches(&f.route, method, route))?;
    let fault = &mut st.faults[index];
    let mode = fault.mode.clone();
    if let Some(remaining) = fault.remaining.as_mut() {
        *remaining -= 1;
        if *remaining == 0 {
            st.faults.remove(index);
        }
    }
    Some(match mode {
        FailMode::Status(status) => {
            let reason = StatusCode::from_u16(status)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("Error");
            Reply::error(status, 0, &format!("{status}: {reason}"))
        }
        FailMode::Json { status, body } => Reply::json(status, body),
        FailMode::RateLimited {
            retry_after_secs,
            global,
        } => rate_limited(retry_after_secs, global),
    })
}

fn matches(route: &RouteMatch, method: &Method, path: &str) -> bool {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match route {
        RouteMatch::Any => true,
        RouteMatch::Prefix { method: m, prefix } => {
            m.as_deref()
                .is_none_or(|m| m.eq_ignore_ascii_case(method.as_str()))
                && path.starts_with(prefix.as_str())
        }
        RouteMatch::ChannelMessages(channel) => {
            *method == Method::POST && path == format!("/channels/{channel}/messages")
        }
        RouteMatch::InteractionCallback => {
            *method == Method::POST
                && segments.len() == 4
                && segments[0] == "interactions"
                && segments[3] == "callback"
        }
        RouteMatch::Followup => {
            *method == Method::POST && segments.len() == 3 && segments[0] == "webhooks"
        }
        RouteMatch::EditOriginal => {
            *method == Method::PATCH
                && segments.first() == Some(&"webhooks")
                && path.ends_with("/messages/@original")
        }
        RouteMatch::CreateDm => *method == Method::POST && path == "/users/@me/channels",
        RouteMatch::Commands => {
            (*method == Method::PUT || *method == Method::POST)
                && segments.first() == Some(&"applications")
                && segments.last() == Some(&"commands")
        }
    }
}

/// The rate-limit bucket of a route, as Discord groups them (by top-level resource): a channel's
/// messages, DM channel creation, one webhook (interaction token), command registration.
/// Interaction callbacks and the gateway URL have none here.
fn bucket_of(route: &str) -> Option<String> {
    let segments: Vec<&str> = route.trim_start_matches('/').split('/').collect();
    match segments.as_slice() {
        ["channels", channel, "messages", ..] => Some(format!("channel:{channel}")),
        ["users", "@me", "channels"] => Some("dm".to_owned()),
        ["webhooks", _, token, ..] => Some(format!("webhook:{token}")),
        ["applications", .., "commands"] => Some("commands".to_owned()),
        _ => None,
    }
}

/// Counts the request against its bucket and the global limit: the `X-RateLimit-*` headers for
/// the answer, or a 429 as Discord sends it when either is used up.
fn take_rate_limit(
    st: &mut State,
    config: &super::Config,
    route: &str,
    at: Instant,
) -> Result<Vec<(&'static str, String)>, Reply> {
    let Some(bucket) = bucket_of(route) else {
        return Ok(Vec::new());
    };
    let limit = config.rate_limit;
    let (start, count) = match st.buckets.get(&bucket) {
        Some(&(start, count)) if at < start + config.rate_window => (start, count),
        _ => (at, 0),
    };
    let reset_after = (start + config.rate_window)
        .saturating_duration_since(at)
        .as_secs_f64();
    if count >= limit {
        return Err(limited(reset_after, false, limit, &bucket));
    }
    if let Some(per_second) = config.global_limit {
        let window = std::time::Duration::from_secs(1);
        let (global_start, global_count) = match st.global_window {
            Some((s, c)) if at < s + window => (s, c),
            _ => (at, 0),
        };
        if global_count >= per_second {
            let wait = (global_start + window).saturating_duration_since(at);
            return Err(limited(wait.as_secs_f64(), true, per_second, "global"));
        }
        st.global_window = Some((global_start, global_count + 1));
    }
    st.buckets.insert(bucket.clone(), (start, count + 1));
    let reset = chrono::Utc::now().timestamp_millis() as f64 / 1000.0 + reset_after;
    Ok(vec![
        ("x-ratelimit-limit", limit.to_string()),
        ("x-ratelimit-remaining", (limit - count - 1).to_string()),
        ("x-ratelimit-reset", format!("{reset:.3}")),
        ("x-ratelimit-reset-after", format!("{reset_after:.3}")),
        ("x-ratelimit-bucket", bucket_hash(&bucket)),
    ])
}

/// An opaque bucket id, as Discord's `X-RateLimit-Bucket` is.
fn bucket_hash(bucket: &str) -> String {
    use std::hash::{Hash as _, Hasher as _};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    bucket.hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

/// A 429 for a used-up bucket (`global: false`, scope `user`) or the global limit.
fn limited(retry_after: f64, global: bool, limit: u32, bucket: &str) -> Reply {
    let mut reply = rate_limited(retry_after, global);
    for (name, value) in &mut reply.headers {
        match *name {
            "x-ratelimit-limit" => *value = limit.to_string(),
            "x-ratelimit-bucket" => *value = bucket_hash(bucket),
            _ => {}
        }
    }
    reply
}

/// 429 as Discord sends it (dapi:topics/rate-limits.mdx): float `Retry-After`, `X-RateLimit-*`.
fn rate_limited(retry_after: f64, global: bool) -> Reply {
    let reset = chrono::Utc::now().timestamp_millis() as f64 / 1000.0 + retry_after;
    let mut reply = Reply::json(
        429,
        json!({"message": "You are being rate limited.", "retry_after": retry_after, "global": global, "code": 0}),
    );
    reply.headers = vec![
        ("retry-after", format!("{retry_after}")),
        ("x-ratelimit-limit", "5".to_owned()),
        ("x-ratelimit-remaining", "0".to_owned()),
        ("x-ratelimit-reset", format!("{reset:.3}")),
        ("x-ratelimit-reset-after", format!("{retry_after}")),
        ("x-ratelimit-bucket", "fake-bucket".to_owned()),
        (
            "x-ratelimit-scope",
            if global { "global" } else { "user" }.to_owned(),
        ),
    ];
    if global {
        reply
            .headers
            .push(("x-ratelimit-global", "true".to_owned()));
    }
    reply
}

fn route_request(st: &mut State, shared: &Shared, req: &Request<'_>) -> Reply {
    let config = &shared.config;
    let segments: Vec<&str> = req.route.trim_start_matches('/').split('/').collect();
    let method = req.method.as_str();
    if needs_bot_token(&segments) && req.authorization != Some(&format!("Bot {}", config.bot_token))
    {
        return Reply::error(401, 0, "401: Unauthorized");
    }
    match (method, segments.as_slice()) {
        ("GET", ["gateway"]) => Reply::json(200, json!({"url": shared.gateway_url})),
        ("GET", ["gateway", "bot"]) => Reply::json(
            200,
            json!({
                "url": shared.gateway_url,
                "shards": 1,
                "session_start_limit": {"total": 1000, "remaining": 999, "reset_after": 86_400_000, "max_concurrency": 1},
            }),
        ),
        ("GET", ["users", "@me"]) => Reply::json(
            200,
            user_json(config.bot_user_id, &config.bot_username, true),
        ),
        ("GET", ["oauth2", "applications", "@me"]) => Reply::json(200, application_json(config)),
        ("GET", ["guilds", guild]) => match guild.parse::<u64>() {
            Ok(g) if g == config.guild_id => Reply::json(200, st.guild.json(g)),
            Ok(_) => Reply::error(403, 50001, "Missing Access"),
            Err(_) => Reply::error(404, 10004, "Unknown Guild"),
        },
        ("GET", ["channels", channel]) => get_channel(st, config, channel),
        (_, ["applications", app, "commands"]) => commands(st, shared, req, app, None),
        (_, ["applications", app, "guilds", guild, "commands"]) => match guild.parse::<u64>() {
            Ok(guild) if guild == config.guild_id && !st.guild.commands_scope => {
                Reply::error(403, 50001, "Missing Access")
            }
            Ok(guild) => commands(st, shared, req, app, Some(guild)),
            Err(_) => Reply::error(404, 10004, "Unknown Guild"),
        },
        ("POST", ["interactions", id, token, "callback"]) => callback(st, shared, req, id, token),
        ("POST", ["webhooks", app, token]) => followup(st, shared, req, app, token),
        (_, ["webhooks", app, token, "messages", message]) => {
            webhook_message(st, shared, req, app, token, message)
        }
        ("POST", ["users", "@me", "channels"]) => create_dm(st, req),
        ("GET", ["guilds", guild, "members", user]) => guild_member(st, shared, guild, user),
        (_, ["channels", channel, "messages"]) => match channel.parse::<u64>() {
            Ok(channel) if method == "POST" => create_message(st, shared, req, channel),
            Ok(channel) if method == "GET" => list_messages(st, req, channel),
            _ => Reply::not_found(),
        },
        (_, ["channels", channel, "messages", message]) => {
            match (channel.parse::<u64>(), message.parse::<u64>()) {
                (Ok(channel), Ok(message)) => channel_message(st, req, channel, message),
                _ => Reply::unknown_message(),
            }
        }
        _ => Reply::not_found(),
    }
}

/// Every route but interaction callbacks and webhooks (which the
/// interaction token authorizes) needs the bot token.
fn needs_bot_token(segments: &[&str]) -> bool {
    !matches!(segments, ["interactions", ..] | ["webhooks", ..])
}

/// `GET /oauth2/applications/@me`: the application the token belongs to.
fn application_json(config: &Config) -> Value {
    json!({
        "id": config.application_id.to_string(),
        "name": "Drawbridge",
        "icon": null,
        "description": "",
        "bot_public": config.bot_public,
        "bot_require_code_grant": false,
        "verify_key": "0".repeat(64),
        "flags": 0,
        "bot": user_json(config.bot_user_id, &config.bot_username, true),
    })
}

/// `GET /channels/{id}`: a channel of the default guild, 403/50001 when
/// the bot may not see it, 404/10003 when there is no such channel.
fn get_channel(st: &State, config: &Config, channel: &str) -> Reply {
    let Ok(id) = channel.parse::<u64>() else {
        return Reply::error(404, 10003, "Unknown Channel");
    };
    match st.guild.channels.get(&id) {
        Some(c) if c.hidden => Reply::error(403, 50001, "Missing Access"),
        Some(c) => Reply::json(200, guild::Guild::channel_json(config.guild_id, id, c)),
        None => Reply::error(404, 10003, "Unknown Channel"),
    }
}

/// `GET /guilds/{guild}/members/{user}`: the bot is in the default guild
/// only; a user who never showed up there is an unknown member.
fn guild_member(st: &State, shared: &Shared, guild: &str, user: &str) -> Reply {
    let Ok(guild) = guild.parse::<u64>() else {
        return Reply::error(404, 10004, "Unknown Guild");
    };
    if guild != shared.config.guild_id {
        return Reply::error(404, 10004, "Unknown Guild");
    }
    let config = &shared.config;
    if user.parse::<u64>() == Ok(config.bot_user_id) {
        return Reply::json(
            200,
            st.guild
                .bot_member(config.bot_user_id, &config.bot_username),
        );
    }
    match user
        .parse::<u64>()
        .ok()
        .and_then(|u| st.members.get(&(guild, u)))
    {
        Some(member) => Reply::json(200, member.clone()),
        None => Reply::error(404, 10007, "Unknown Member"),
    }
}

fn commands(
    st: &mut State,
    shared: &Shared,
    req: &Request<'_>,
    app: &str,
    guild: Option<u64>,
) -> Reply {
    let app_id = shared.config.application_id;
    if app.parse::<u64>() != Ok(app_id) {
        return Reply::error(404, 10002, "Unknown Application");
    }
    let stored = |st: &State| match guild {
        Some(g) => st.guild_commands.get(&g).cloned().unwrap_or_default(),
        None => st.global_commands.clone(),
    };
    match req.method.as_str() {
        "GET" => Reply::json(200, Value::Array(stored(st))),
        "PUT" => {
            let Some(list) = req.body.as_array() else {
                return Reply::invalid_form("Invalid Form Body");
            };
            if let Err(body) = limits::command_list(list) {
                return Reply::form_errors(body);
            }
            let echoed: Vec<Value> = list
                .iter()
                .map(|c| echo_command(st, app_id, guild, c))
                .collect();
            match guild {
                Some(g) => *st.guild_commands.entry(g).or_default() = echoed.clone(),
                None => st.global_commands = echoed.clone(),
            }
            Reply::json(200, Value::Array(echoed))
        }
        "POST" => {
            if let Err(body) = limits::command(req.body) {
                return Reply::form_errors(body);
            }
            let command = echo_command(st, app_id, guild, req.body);
            let list = match guild {
                Some(g) => st.guild_commands.entry(g).or_default(),
                None => &mut st.global_commands,
            };
            let existing = list.iter().position(|c| c["name"] == command["name"]);
            match existing {
                Some(i) => list[i] = command.clone(),
                None => list.push(command.clone()),
            }
            Reply::json(if existing.is_some() { 200 } else { 201 }, command)
        }
        _ => Reply::error(405, 0, "405: Method Not Allowed"),
    }
}

/// The command as Discord returns it: the body plus `id` (stable per name), `application_id`,
/// `version`, `guild_id` and defaults for the keys serenity's `Command` requires.
fn echo_command(st: &mut State, app_id: u64, guild: Option<u64>, body: &Value) -> Value {
    let name = body["name"].as_str().unwrap_or_default().to_owned();
    let id = match st.command_ids.get(&(guild, name.clone())) {
        Some(&id) => id,
        None => {
            let id = st.snowflake();
            st.command_ids.insert((guild, name), id);
            id
        }
    };
    let version = st.snowflake();
    let mut command = json!({
        "type": 1,
        "description": "",
        "default_member_permissions": null,
        "nsfw": false,
    });
    if let (Some(out), Some(body)) = (command.as_object_mut(), body.as_object()) {
        out.extend(
            body.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), v.clone())),
        );
    }
    command["id"] = json!(id.to_string());
    command["application_id"] = json!(app_id.to_string());
    command["version"] = json!(version.to_string());
    if let Some(guild) = guild {
        command["guild_id"] = json!(guild.to_string());
    }
    command
}

/// The status an interaction response (sent to `/callback`, or inline in HTTP mode) gets.
pub(super) fn inline_response(st: &mut State, shared: &Shared, id: u64, body: &Value) -> u16 {
    let Some(token) = st.interactions.get(&id).map(|ix| ix.token.clone()) else {
        return 404;
    };
    let req = Request {
        method: &Method::POST,
        authorization: None,
        route: "",
        query: None,
        body,
        uploads: &[],
        at: Instant::now(),
    };
    callback(st, shared, &req, &id.to_string(), &token).status
}

fn callback(st: &mut State, shared: &Shared, req: &Request<'_>, id: &str, token: &str) -> Reply {
    let config = &shared.config;
    let Ok(id) = id.parse::<u64>() else {
        return Reply::unknown_interaction();
    };
    let message_id = st.snowflake();
    let Some(ix) = st.interactions.get_mut(&id) else {
        return Reply::unknown_interaction();
    };
    let elapsed = req.at.saturating_duration_since(ix.sent_at);
    let reply = if ix.token != token {
        Reply::error(401, 50027, "Invalid Webhook Token")
    } else if ix.acked.is_some() {
        Reply::error(400, 40060, "Interaction has already been acknowledged.")
    } else if elapsed > config.callback_window {
        Reply::unknown_interaction()
    } else {
        accept_callback(
            ix,
            req.body,
            req.uploads,
            message_id,
            config.bot_user_id,
            &config.bot_username,
            config.application_id,
        )
    };
    ix.callbacks.push(Callback {
        body: req.body.clone(),
        status: reply.status,
        elapsed,
        received_at: req.at,
    });
    reply
}

fn accept_callback(
    ix: &mut InteractionRecord,
    body: &Value,
    uploads: &[(u64, Value)],
    message_id: u64,
    bot_id: u64,
    bot_name: &str,
    app_id: u64,
) -> Reply {
    let Some(kind) = body["type"].as_u64() else {
        return Reply::invalid_form("Invalid Form Body: type");
    };
    let allowed: &[u64] = match ix.kind {
        InteractionKind::Ping => &[1],
        InteractionKind::Command => &[4, 5, 9],
        InteractionKind::Component => &[4, 5, 6, 7, 9],
        InteractionKind::Autocomplete => &[8],
        // A form cannot answer with another form.
        InteractionKind::ModalSubmit => &[4, 5, 6, 7],
    };
    if !allowed.contains(&kind) {
        return Reply::invalid_form(&format!(
            "Invalid Form Body: callback type {kind} for this interaction"
        ));
    }
    if let Err(errors) = limits::interaction_response(body) {
        return Reply::form_errors(errors);
    }
    if kind == 9
        && let Err(message) = check_modal(&body["data"])
    {
        return Reply::invalid_form(&format!("Invalid Form Body: {message}"));
    }
    let data = &body["data"];
    match kind {
        4 | 5 => {
            let mut message = message_json(
                message_id,
                ix.channel_id,
                user_json(bot_id, bot_name, true),
                &chrono::Utc::now(),
            );
            message["type"] = json!(if ix.kind == InteractionKind::Command {
                20
            } else {
                19
            });
            message["webhook_id"] = json!(app_id.to_string());
            message["application_id"] = json!(app_id.to_string());
            apply_message_body(&mut message, data);
            if let Err(e) = form::apply_attachments(&mut message, data, uploads) {
                return Reply::invalid_form(&format!("Invalid Form Body: data.{e}"));
            }
            if kind == 5 {
                let flags = data["flags"].as_u64().unwrap_or(0) & EPHEMERAL;
                message["content"] = json!("");
                message["flags"] = json!(flags | LOADING);
                ix.loading = true;
            }
            ix.original = Some(message);
        }
        7 => {
            if let Some(original) = ix.original.as_mut() {
                if let Err(e) = form::apply_attachments(original, data, uploads) {
                    return Reply::invalid_form(&format!("Invalid Form Body: data.{e}"));
                }
                apply_message_body(original, data);
                original["edited_timestamp"] = json!(timestamp(&chrono::Utc::now()));
            }
        }
        8 => {
            ix.autocomplete_choices = Some(data["choices"].as_array().cloned().unwrap_or_default())
        }
        9 => ix.modal = Some(data.clone()),
        _ => {}
    }
    ix.acked = Some(kind);
    Reply::no_content()
}

/// A modal (callback type 9) as Discord takes it: `custom_id` 1-100,
/// `title` 1-45, 1-5 action rows each holding one text input (type 4) with
/// a `custom_id`, a `style` 1 or 2 and a `label` of 1-45 characters.
fn check_modal(data: &Value) -> Result<(), String> {
    let len = |v: &Value| v.as_str().map(|s| s.chars().count());
    if !len(&data["custom_id"]).is_some_and(|n| (1..=100).contains(&n)) {
        return Err("data.custom_id must be 1-100 characters".into());
    }
    if !len(&data["title"]).is_some_and(|n| (1..=45).contains(&n)) {
        return Err("data.title must be 1-45 characters".into());
    }
    let rows = data["components"].as_array().cloned().unwrap_or_default();
    if !(1..=5).contains(&rows.len()) {
        return Err("data.components must hold 1-5 action rows".into());
    }
    for row in &rows {
        let inputs = row["components"].as_array().cloned().unwrap_or_default();
        let ok = row["type"] == 1
            && inputs.len() == 1
            && inputs[0]["type"] == 4
            && len(&inputs[0]["custom_id"]).is_some_and(|n| (1..=100).contains(&n))
            && matches!(inputs[0]["style"].as_u64(), Some(1 | 2))
            && len(&inputs[0]["label"]).is_some_and(|n| (1..=45).contains(&n));
        if !ok {
            return Err(format!("data.components: not one valid text input: {row}"));
        }
    }
    Ok(())
}

/// The interaction behind a webhook token, checking the app id and the 15 min lifetime.
fn webhook_interaction<'a>(
    st: &'a mut State,
    shared: &Shared,
    req: &Request<'_>,
    app: &str,
    token: &str,
) -> Result<&'a mut InteractionRecord, Reply> {
    if app.parse::<u64>() != Ok(shared.config.application_id) {
        return Err(Reply::unknown_webhook());
    }
    let id = *st
        .interaction_by_token
        .get(token)
        .ok_or_else(Reply::unknown_webhook)?;
    let ix = st
        .interactions
        .get_mut(&id)
        .ok_or_else(Reply::unknown_webhook)?;
    if req.at.saturating_duration_since(ix.sent_at) > shared.config.token_lifetime {
        return Err(Reply::unknown_interaction());
    }
    if ix.acked.is_none() {
        return Err(Reply::unknown_webhook());
    }
    Ok(ix)
}

fn followup(st: &mut State, shared: &Shared, req: &Request<'_>, app: &str, token: &str) -> Reply {
    let config = &shared.config;
    if let Err(errors) = limits::message(req.body) {
        return Reply::form_errors(errors);
    }
    let message_id = st.snowflake();
    let ix = match webhook_interaction(st, shared, req, app, token) {
        Ok(ix) => ix,
        Err(reply) => return reply,
    };
    if ix.loading
        && let Some(original) = ix.original.as_mut()
    {
        // Quirk (notes §6): the first followup after a type-5 defer edits the loading message,
        // keeping the defer's ephemeral flag.
        let ephemeral = original["flags"].as_u64().unwrap_or(0) & EPHEMERAL;
        if let Err(e) = form::apply_attachments(original, req.body, req.uploads) {
            return Reply::invalid_form(&format!("Invalid Form Body: {e}"));
        }
        apply_message_body(original, req.body);
        original["flags"] = json!(ephemeral);
        ix.loading = false;
        return Reply::json(200, original.clone());
    }
    let mut message = message_json(
        message_id,
        ix.channel_id,
        user_json(config.bot_user_id, &config.bot_username, true),
        &chrono::Utc::now(),
    );
    message["webhook_id"] = json!(config.application_id.to_string());
    message["application_id"] = json!(config.application_id.to_string());
    if let Err(e) = form::apply_attachments(&mut message, req.body, req.uploads) {
        return Reply::invalid_form(&format!("Invalid Form Body: {e}"));
    }
    apply_message_body(&mut message, req.body);
    ix.followups.push(message.clone());
    Reply::json(200, message)
}

fn webhook_message(
    st: &mut State,
    shared: &Shared,
    req: &Request<'_>,
    app: &str,
    token: &str,
    message: &str,
) -> Reply {
    let ix = match webhook_interaction(st, shared, req, app, token) {
        Ok(ix) => ix,
        Err(reply) => return reply,
    };
    let now = timestamp(&chrono::Utc::now());
    let method = req.method.as_str();
    if method == "PATCH"
        && let Err(errors) = limits::message(req.body)
    {
        return Reply::form_errors(errors);
    }
    if message == "@original" {
        let Some(original) = ix.original.as_mut() else {
            return Reply::unknown_message();
        };
        return match method {
            "GET" => Reply::json(200, original.clone()),
            "PATCH" => {
                if let Err(e) = form::apply_attachments(original, req.body, req.uploads) {
                    return Reply::invalid_form(&format!("Invalid Form Body: {e}"));
                }
                apply_message_body(original, req.body);
                let flags = original["flags"].as_u64().unwrap_or(0) & !LOADING;
                original["flags"] = json!(flags);
                original["edited_timestamp"] = json!(now);
                ix.loading = false;
                Reply::json(200, original.clone())
            }
            "DELETE" => {
                ix.original = None;
                Reply::no_content()
            }
            _ => Reply::error(405, 0, "405: Method Not Allowed"),
        };
    }
    let Some(index) = ix
        .followups
        .iter()
        .position(|m| m["id"].as_str() == Some(message))
    else {
        return Reply::unknown_message();
    };
    match method {
        "GET" => Reply::json(200, ix.followups[index].clone()),
        "PATCH" => {
            let followup = &mut ix.followups[index];
            if let Err(e) = form::apply_attachments(followup, req.body, req.uploads) {
                return Reply::invalid_form(&format!("Invalid Form Body: {e}"));
            }
            apply_message_body(followup, req.body);
            followup["edited_timestamp"] = json!(now);
            Reply::json(200, followup.clone())
        }
        "DELETE" => {
            ix.followups.remove(index);
            Reply::no_content()
        }
        _ => Reply::error(405, 0, "405: Method Not Allowed"),
    }
}

/// A snowflake given as a JSON string or number.
pub(super) fn snowflake_field(value: &Value) -> Option<u64> {
    value
        .as_u64()
        .or_else(|| value.as_str()?.parse().ok())
        .filter(|&id| id != 0)
}

fn create_dm(st: &mut State, req: &Request<'_>) -> Reply {
    let Some(recipient) = snowflake_field(&req.body["recipient_id"]) else {
        return Reply::invalid_form("Invalid Form Body: recipient_id");
    };
    let channel = match st.dm_channels.get(&recipient) {
        Some(&channel) => channel,
        None => {
            let channel = st.snowflake();
            st.dm_channels.insert(recipient, channel);
            channel
        }
    };
    let last = st
        .messages
        .get(&channel)
        .and_then(|m| m.last())
        .map(|m| m["id"].clone());
    Reply::json(
        200,
        json!({
            "id": channel.to_string(),
            "type": 1,
            "last_message_id": last,
            "flags": 0,
            "recipients": [user_json(recipient, &format!("user{recipient}"), false)],
        }),
    )
}

/// Discord's refusal of the bot's post to `channel` (with files when
/// `files`), by the bot's permissions there: 403/50001 Missing Access
/// without VIEW_CHANNEL, 403/50013 Missing Permissions without
/// SEND_MESSAGES, or without ATTACH_FILES for files. Channels outside the
/// guild (DM channels) are not checked.
fn post_refused(st: &State, config: &Config, channel: u64, files: bool) -> Option<Reply> {
    use guild::bits::{ATTACH_FILES, SEND_MESSAGES, VIEW_CHANNEL};
    let perms = st
        .guild
        .bot_permissions(config.guild_id, config.bot_user_id, channel)?;
    let needed = SEND_MESSAGES | if files { ATTACH_FILES } else { 0 };
    if perms & VIEW_CHANNEL == 0 {
        Some(Reply::error(403, 50001, "Missing Access"))
    } else if perms & needed != needed {
        Some(Reply::error(403, 50013, "Missing Permissions"))
    } else {
        None
    }
}

fn create_message(st: &mut State, shared: &Shared, req: &Request<'_>, channel: u64) -> Reply {
    let config = &shared.config;
    if let Some(refused) = post_refused(st, config, channel, !req.uploads.is_empty()) {
        return refused;
    }
    let body = req.body;
    let nonce = match &body["nonce"] {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    if nonce.as_ref().is_some_and(|n| n.chars().count() > 25) {
        return Reply::invalid_form("Invalid Form Body: nonce must be at most 25 characters");
    }
    if let Err(errors) = limits::message(body) {
        return Reply::form_errors(errors);
    }
    let empty = |key: &str| {
        body[key].as_str().is_none_or(str::is_empty)
            && body[key].as_array().is_none_or(Vec::is_empty)
    };
    if empty("content")
        && empty("embeds")
        && empty("components")
        && empty("sticker_ids")
        && req.uploads.is_empty()
    {
        return Reply::error(400, 50006, "Cannot send an empty message");
    }
    // `enforce_nonce`: the same nonce in this channel within the window returns the first message.
    let enforce = body["enforce_nonce"].as_bool().unwrap_or(false);
    if enforce
        && let Some(nonce) = &nonce
        && let Some(&(id, at)) = st.nonces.get(&(channel, nonce.clone()))
        && req.at.saturating_duration_since(at) <= config.nonce_window
        && let Some(existing) = st
            .messages
            .get(&channel)
            .and_then(|m| m.iter().find(|m| m["id"] == json!(id.to_string())))
    {
        return Reply::json(200, existing.clone());
    }
    let id = st.snowflake();
    let mut message = message_json(
        id,
        channel,
        user_json(config.bot_user_id, &config.bot_username, true),
        &chrono::Utc::now(),
    );
    if let Err(e) = form::apply_attachments(&mut message, body, req.uploads) {
        return Reply::invalid_form(&format!("Invalid Form Body: {e}"));
    }
    apply_message_body(&mut message, body);
    if let Some(nonce) = nonce {
        st.nonces.insert((channel, nonce), (id, req.at));
    }
    st.messages
        .entry(channel)
        .or_default()
        .push(message.clone());
    Reply::json(200, message)
}

fn list_messages(st: &State, req: &Request<'_>, channel: u64) -> Reply {
    let limit = req
        .query
        .unwrap_or_default()
        .split('&')
        .find_map(|kv| kv.strip_prefix("limit=")?.parse::<usize>().ok())
        .unwrap_or(50);
    let messages = st
        .messages
        .get(&channel)
        .map(|m| m.iter().rev().take(limit).cloned().collect())
        .unwrap_or_default();
    Reply::json(200, Value::Array(messages))
}

fn channel_message(st: &mut State, req: &Request<'_>, channel: u64, message: u64) -> Reply {
    let Some(messages) = st.messages.get_mut(&channel) else {
        return Reply::unknown_message();
    };
    let Some(index) = messages
        .iter()
        .position(|m| m["id"] == json!(message.to_string()))
    else {
        return Reply::unknown_message();
    };
    match req.method.as_str() {
        "GET" => Reply::json(200, messages[index].clone()),
        "PATCH" => {
            if let Err(errors) = limits::message(req.body) {
                return Reply::form_errors(errors);
            }
            if let Err(e) = form::apply_attachments(&mut messages[index], req.body, req.uploads) {
                return Reply::invalid_form(&format!("Invalid Form Body: {e}"));
            }
            apply_message_body(&mut messages[index], req.body);
            messages[index]["edited_timestamp"] = json!(timestamp(&chrono::Utc::now()));
            Reply::json(200, messages[index].clone())
        }
        "DELETE" => {
            messages.remove(index);
            Reply::no_content()
        }
        _ => Reply::error(405, 0, "405: Method Not Allowed"),
    }
}
