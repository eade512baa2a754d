//! The gateway: plain `ws://`, text frames, one live connection at a time (notes §2).
//!
//! Like Discord, a session outlives its connection: a dispatch made while the session has no
//! ready connection (after op 7, during a reconnect) is held with its sequence number and
//! replayed to the client that RESUMEs the session from an earlier sequence; a session that is
//! invalidated (op 9 `false`) or replaced by a new IDENTIFY loses what it held.

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
    pub(super) current: Option<Connection>,
    pub(super) session: Option<Session>,
    sessions: u64,
}

pub(super) struct Connection {
    id: u64,
    tx: mpsc::UnboundedSender<Outgoing>,
    /// READY or RESUMED was sent on this connection and no op 7/9/close since.
    ready: bool,
}

pub(super) struct Session {
    id: String,
    seq: u64,
    /// Dispatches of this session (not READY / RESUMED), for replay on RESUME.
    log: Vec<Value>,
}

enum Outgoing {
    Text(String),
    Close(u16),
}

impl GatewayState {
    pub(super) fn is_ready(&self) -> bool {
        self.current.as_ref().is_some_and(|c| c.ready) && self.session.is_some()
    }

    /// Sends a dispatch to the ready connection; returns its sequence number. `None` (nothing
    /// sent, nothing held) when the session has no ready connection.
    pub(super) fn dispatch(&mut self, t: &str, d: Value) -> Option<u64> {
        if !self.is_ready() {
            return None;
        }
        self.dispatch_or_hold(t, d)
    }

    /// Sends a dispatch now if the session's connection is ready, else holds it for a RESUME.
    /// `None` when there is no session at all (never identified, or invalidated).
    pub(super) fn dispatch_or_hold(&mut self, t: &str, d: Value) -> Option<u64> {
        let ready = self.is_ready();
        let session = self.session.as_mut()?;
        session.seq += 1;
        let s = session.seq;
        let frame = json!({"op": 0, "s": s, "t": t, "d": d});
        if !matches!(t, "READY" | "RESUMED") {
            session.log.push(frame.clone());
        }
        if ready {
            self.send(frame);
        }
        Some(s)
    }

    /// Sends a non-dispatch op; op 7 and op 9 end the connection's ready state.
    pub(super) fn send_op(&mut self, op: u64, d: Value) {
        if matches!(op, 7 | 9)
            && let Some(connection) = self.current.as_mut()
        {
            connection.ready = false;
        }
        self.send(json!({"op": op, "d": d}));
    }

    pub(super) fn close(&mut self, code: u16) {
        if let Some(connection) = self.current.as_mut() {
            connection.ready = false;
            let _ = connection.tx.send(Outgoing::Close(code));
        }
    }

    fn send(&mut self, frame: Value) {
        let Some(connection) = self.current.as_ref() else {
            return;
        };
        let id = connection.id;
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
        if self.current.as_ref().is_none_or(|c| c.id != connection) {
            return; // a stale connection: recorded, not answered
        }
        let d = frame.get("d").cloned().unwrap_or(Value::Null);
        match frame["op"].as_u64() {
            Some(1) if config.ack_heartbeats => self.send(json!({"op": 11})),
            Some(2) => self.identify(&d, config, gateway_url),
            Some(6) => self.resume(&d),
            _ => {}
        }
    }

    fn identify(&mut self, d: &Value, config: &Config, gateway_url: &str) {
        self.sessions += 1;
        let session_id = format!("fake-session-{}", self.sessions);
        self.session = Some(Session {
            id: session_id.clone(),
            seq: 0,
            log: Vec::new(),
        });
        if let Some(connection) = self.current.as_mut() {
            connection.ready = true;
        }
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
        self.dispatch("READY", ready);
    }

    fn resume(&mut self, d: &Value) {
        let known = self
            .session
            .as_ref()
            .is_some_and(|s| d["session_id"].as_str() == Some(s.id.as_str()));
        if known {
            if let Some(connection) = self.current.as_mut() {
                connection.ready = true;
            }
            // Replay what the client missed: everything after the sequence it resumes from.
            let from = d["seq"].as_u64().unwrap_or(0);
            let missed: Vec<Value> = self.session.as_ref().map_or_else(Vec::new, |s| {
                s.log
                    .iter()
                    .filter(|f| f["s"].as_u64().is_some_and(|n| n > from))
                    .cloned()
                    .collect()
            });
            for frame in missed {
                self.send(frame);
            }
            self.dispatch("RESUMED", json!({}));
        } else {
            self.send_op(9, Value::Bool(false));
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
    // A new connection replaces the current one; the old one's sender is dropped, ending it.
    let id = shared.update(|st| {
        let gw = &mut st.gateway;
        gw.connections += 1;
        gw.connect_uris.push(uri);
        gw.current = Some(Connection {
            id: gw.connections,
            tx,
            ready: false,
        });
        gw.record(gw.connections, false, &hello);
        gw.connections
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
    shared.update(|st| {
        if st.gateway.current.as_ref().is_some_and(|c| c.id == id) {
            st.gateway.current = None;
        }
    });
}
