//! The gateway: plain `ws://`, text frames (notes §2), any number of connections at once.
//!
//! Like Discord, a session outlives its connection: a dispatch made while the session has no
//! ready connection (after op 7, during a reconnect, or after its process died) is held with its
//! sequence number and replayed to the client that RESUMEs the session from an earlier sequence;
//! a session that is invalidated (op 9 `false`) loses what it held.
//!
//! Several sessions on one bot token (notes §8: "You can establish multiple sessions with the
//! same `[shard_id, num_shards]`"): every dispatch goes to every session, so two replicas
//! connected at once both receive each INTERACTION_CREATE, and the second `/callback` is refused
//! with 40060, as on Discord. READY and RESUMED go only to the session they belong to. The
//! scripted ops (op 7, op 9, close codes, heartbeat requests) act on the newest connection.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

use super::payloads::user_json;
use super::{Config, GatewayFrame, Shared};

#[derive(Default)]
pub(super) struct GatewayState {
    pub(super) frames: Vec<GatewayFrame>,
    pub(super) connect_uris: Vec<String>,
    connections: u64,
    /// Open connections by id.
    open: BTreeMap<u64, Connection>,
    /// The newest open connection: the one scripted ops act on.
    newest: Option<u64>,
    /// Live sessions by id (invalidated ones are removed).
    sessions: BTreeMap<String, Session>,
    session_count: u64,
    /// The most sessions ready at once so far.
    pub(super) peak_ready: usize,
}

struct Connection {
    tx: mpsc::UnboundedSender<Outgoing>,
    /// READY or RESUMED was sent on this connection and no op 7/9/close since.
    ready: bool,
    /// The session this connection carries, once identified or resumed.
    session: Option<String>,
}

struct Session {
    seq: u64,
    /// Dispatches of this session (not READY / RESUMED), for replay on RESUME.
    log: Vec<Value>,
    /// The connection carrying it, if any.
    connection: Option<u64>,
}

enum Outgoing {
    Text(String),
    Close(u16),
}

impl GatewayState {
    /// Whether some session has a ready connection.
    pub(super) fn is_ready(&self) -> bool {
        self.ready_sessions() > 0
    }

    /// How many sessions have a ready connection now.
    pub(super) fn ready_sessions(&self) -> usize {
        self.open
            .values()
            .filter(|c| c.ready && c.session.is_some())
            .count()
    }

    /// Drops every connection (their tasks end and close the sockets).
    pub(super) fn drop_connections(&mut self) {
        self.open.clear();
        self.newest = None;
    }

    /// Sends a dispatch to every session with a ready connection (and holds it for the others);
    /// returns its sequence number on the newest connection's session. `None` (nothing sent,
    /// nothing held) when no session has a ready connection.
    pub(super) fn dispatch(&mut self, t: &str, d: Value) -> Option<u64> {
        if !self.is_ready() {
            return None;
        }
        self.dispatch_or_hold(t, d)
    }

    /// Sends a dispatch to every live session: now where its connection is ready, else held for
    /// a RESUME. `None` when there is no session at all (never identified, or invalidated).
    pub(super) fn dispatch_or_hold(&mut self, t: &str, d: Value) -> Option<u64> {
        let ids: Vec<String> = self.sessions.keys().cloned().collect();
        let newest = self.newest_session();
        let mut seq = None;
        for id in ids {
            let s = self.dispatch_to(&id, t, d.clone());
            if seq.is_none() || newest.as_deref() == Some(id.as_str()) {
                seq = s;
            }
        }
        seq
    }

    fn newest_session(&self) -> Option<String> {
        self.newest
            .and_then(|id| self.open.get(&id))
            .and_then(|c| c.session.clone())
    }

    /// One dispatch on one session: logged (unless READY / RESUMED) and sent if its connection
    /// is ready.
    fn dispatch_to(&mut self, session: &str, t: &str, d: Value) -> Option<u64> {
        let s = self.sessions.get_mut(session)?;
        s.seq += 1;
        let frame = json!({"op": 0, "s": s.seq, "t": t, "d": d});
        if !matches!(t, "READY" | "RESUMED") {
            s.log.push(frame.clone());
        }
        let seq = s.seq;
        if let Some(connection) = s.connection
            && self.open.get(&connection).is_some_and(|c| c.ready)
        {
            self.send_to(connection, frame);
        }
        Some(seq)
    }

    /// Sends a non-dispatch op on the newest connection; op 7 and op 9 end its ready state.
    pub(super) fn send_op(&mut self, op: u64, d: Value) {
        let Some(id) = self.newest else { return };
        if matches!(op, 7 | 9)
            && let Some(connection) = self.open.get_mut(&id)
        {
            connection.ready = false;
        }
        self.send_to(id, json!({"op": op, "d": d}));
    }

    /// Invalidates the newest connection's session (op 9 `false`): what it held is lost.
    pub(super) fn invalidate_session(&mut self) {
        let Some(id) = self.newest else { return };
        if let Some(session) = self.open.get_mut(&id).and_then(|c| c.session.take()) {
            self.sessions.remove(&session);
        }
    }

    /// Closes the newest connection with `code`.
    pub(super) fn close(&mut self, code: u16) {
        let Some(id) = self.newest else { return };
        if let Some(connection) = self.open.get_mut(&id) {
            connection.ready = false;
            let _ = connection.tx.send(Outgoing::Close(code));
        }
    }

    fn send_to(&mut self, id: u64, frame: Value) {
        let Some(connection) = self.open.get(&id) else {
            return;
        };
        if connection
            .tx
            .send(Outgoing::Text(frame.to_string()))
            .is_ok()
        {
            self.record(id, false, &frame);
        }
    }

    fn record(&mut self, connection: u64, from_client: bool, frame: &Value) {
        self.frames.push(GatewayFrame {
            connection,
            from_client,
            op: frame["op"].as_u64().unwrap_or(u64::MAX),
            t: frame["t"].as_str().map(str::to_owned),
            s: frame["s"].as_u64(),
            d: frame.get("d").cloned().unwrap_or(Value::Null),
            at: Instant::now(),
        });
    }

    fn on_client_frame(&mut self, connection: u64, text: &str, config: &Config, gateway_url: &str) {
        let Ok(frame) = serde_json::from_str::<Value>(text) else {
            return;
        };
        self.record(connection, true, &frame);
        if !self.open.contains_key(&connection) {
            return; // a closed connection: recorded, not answered
        }
        let d = frame.get("d").cloned().unwrap_or(Value::Null);
        match frame["op"].as_u64() {
            Some(1) if config.ack_heartbeats => self.send_to(connection, json!({"op": 11})),
            Some(2) => self.identify(connection, &d, config, gateway_url),
            Some(6) => self.resume(connection, &d),
            _ => {}
        }
        self.peak_ready = self.peak_ready.max(self.ready_sessions());
    }

    /// Binds `session` to `connection` (taking it from any other connection) and marks the
    /// connection ready.
    fn bind(&mut self, connection: u64, session: &str) {
        let previous = self.sessions.get(session).and_then(|s| s.connection);
        if let Some(old) = previous.filter(|old| *old != connection)
            && let Some(c) = self.open.get_mut(&old)
        {
            c.session = None;
            c.ready = false;
        }
        if let Some(c) = self.open.get_mut(&connection) {
            if let Some(other) = c.session.replace(session.to_owned())
                && other != session
                && let Some(s) = self.sessions.get_mut(&other)
            {
                s.connection = None;
            }
            c.ready = true;
        }
        if let Some(s) = self.sessions.get_mut(session) {
            s.connection = Some(connection);
        }
    }

    fn identify(&mut self, connection: u64, d: &Value, config: &Config, gateway_url: &str) {
        self.session_count += 1;
        let session_id = format!("fake-session-{}", self.session_count);
        self.sessions.insert(
            session_id.clone(),
            Session {
                seq: 0,
                log: Vec::new(),
                connection: None,
            },
        );
        self.bind(connection, &session_id);
        let mut user = user_json(config.bot_user_id, &config.bot_username, true);
        user["verified"] = json!(true);
        let ready = json!({
            "v": 10,
            "user": user,
            "guilds": [{"id": config.guild_id.to_string(), "unavailable": true}],
            "session_id": session_id,
            "resume_gateway_url": gateway_url,
            "shard": d.get("shard").cloned().unwrap_or(json!([0, 1])),
            "application": {"id": config.application_id.to_string(), "flags": 0},
        });
        self.dispatch_to(&session_id, "READY", ready);
    }

    fn resume(&mut self, connection: u64, d: &Value) {
        let Some(session_id) = d["session_id"]
            .as_str()
            .filter(|id| self.sessions.contains_key(*id))
            .map(str::to_owned)
        else {
            if let Some(c) = self.open.get_mut(&connection) {
                c.ready = false;
            }
            self.send_to(connection, json!({"op": 9, "d": false}));
            return;
        };
        self.bind(connection, &session_id);
        // Replay what the client missed: everything after the sequence it resumes from.
        let from = d["seq"].as_u64().unwrap_or(0);
        let missed: Vec<Value> = self.sessions.get(&session_id).map_or_else(Vec::new, |s| {
            s.log
                .iter()
                .filter(|f| f["s"].as_u64().is_some_and(|n| n > from))
                .cloned()
                .collect()
        });
        for frame in missed {
            self.send_to(connection, frame);
        }
        self.dispatch_to(&session_id, "RESUMED", json!({}));
    }

    /// A connection ended: its session (if any) waits for a RESUME.
    fn closed(&mut self, connection: u64) {
        if let Some(c) = self.open.remove(&connection)
            && let Some(session) = c.session
            && let Some(s) = self.sessions.get_mut(&session)
            && s.connection == Some(connection)
        {
            s.connection = None;
        }
        if self.newest == Some(connection) {
            self.newest = self.open.keys().next_back().copied();
        }
    }
}

pub(super) async fn serve(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        if let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(connection(shared.clone(), stream));
        }
    }
}

// The handshake callback must return tungstenite's large `Result<Response, ErrorResponse>`.
#[allow(clippy::result_large_err)]
async fn connection(shared: Arc<Shared>, stream: TcpStream) {
    let mut uri = String::new();
    let accepted = tokio_tungstenite::accept_hdr_async(stream, |req: &Request, resp: Response| {
        uri = req.uri().to_string();
        Ok(resp)
    })
    .await;
    let Ok(ws) = accepted else { return };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let hello = json!({"op": 10, "d": {"heartbeat_interval": shared.config.heartbeat_interval.as_millis() as u64}});
    let id = shared.update(|st| {
        let gw = &mut st.gateway;
        gw.connections += 1;
        gw.connect_uris.push(uri);
        let id = gw.connections;
        gw.open.insert(
            id,
            Connection {
                tx,
                ready: false,
                session: None,
            },
        );
        gw.newest = Some(id);
        gw.record(id, false, &hello);
        id
    });
    let (mut sink, mut source) = ws.split();
    if sink.send(Message::Text(hello.to_string())).await.is_ok() {
        loop {
            tokio::select! {
                incoming = source.next() => match incoming {
                    Some(Ok(Message::Text(text))) => shared.update(|st| {
                        st.gateway.on_client_frame(id, &text, &shared.config, &shared.gateway_url)
                    }),
                    Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                    Some(Ok(_)) => {}
                },
                outgoing = rx.recv() => match outgoing {
                    Some(Outgoing::Text(text)) => {
                        if sink.send(Message::Text(text)).await.is_err() {
                            break;
                        }
                    }
                    Some(Outgoing::Close(code)) => {
                        let frame = CloseFrame { code: code.into(), reason: "fake discord".into() };
                        let _ = sink.send(Message::Close(Some(frame))).await;
                        break;
                    }
                    None => break,
                },
            }
        }
    }
    shared.update(|st| st.gateway.closed(id));
}
