//! `drawbridge demo`: the whole bot on one terminal, nothing to set up.
//!
//! The Azure JIT emulator runs in-process with the sample estate
//! ([`Estate::sample`]), the database is a temporary SQLite file, and the
//! terminal stands in for Discord: it is one more chat transport over the
//! same [`InteractionHandler`]/[`ChatSender`] seam as the Discord adapter.
//! Everything else — [`App::build`], the use cases, the store, the
//! scheduler, the outbox, the ARM client — is the production code, pointed
//! at the emulator exactly as the integration tests do.
//!
//! Time is a [`ManualClock`] shared by the app and the emulator: `:advance
//! 1h55m` moves it, wakes the scheduler and the outbox and waits until they
//! are idle, so a script's output is deterministic. With `--speed N` (the
//! default on a terminal is 1) it also runs N times faster than real time.
//!
//! # Layout
//! - `parse`: `/name [sub] [positional…] [key:value]` to a
//!   [`SlashCommand`], with the shapes of the registered commands.
//! - `console`: rendering messages as text, and the [`ConsoleSender`].

mod console;
mod parse;

use std::io::IsTerminal as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use tokio::io::{AsyncBufRead, AsyncBufReadExt as _};

use crate::app::{App, Workers};
use crate::chat::{ButtonAction, ChatMessage};
use crate::clock::{ManualClock, SharedClock};
use crate::config::{Settings, Sources};
use crate::domain::duration::parse_span_seconds;
use crate::domain::mapping::MappingFile;
use crate::domain::{RoleId, Snowflake, UserId};
use crate::interactions::{InteractionHandler, Invocation, Member, SlashCommand};
use crate::sandbox::{Emulator, Estate, RunningEmulator};

pub use console::{ConsoleSender, Names, Output, render, render_audit};
pub use parse::{CommandShape, Directory, parse_slash, shapes, tokenize};

/// The audit channel the demo posts to.
const AUDIT_CHANNEL: u64 = 5000;
/// Where approval cards go.
const APPROVALS_CHANNEL: u64 = 5100;
/// The channel members type in (reminders fall back to it).
const REQUEST_CHANNEL: u64 = 6000;
const GUILD: u64 = 4000;
/// The longest `settle` waits for the workers.
const SETTLE_LIMIT: Duration = Duration::from_secs(20);
/// How often the clock moves with `--speed`.
const SPEED_TICK: Duration = Duration::from_millis(100);

/// The role mappings the demo starts with (see [`MEMBERS`]).
pub const SAMPLE_MAPPINGS: &str = r#"
# SREs may SSH to the web servers for up to 3 hours.
[[mapping]]
name = "sre-web"
roles = ["100"]
vms = "web-*"
ports = ["ssh"]
max_duration = "3h"

# SREs may RDP or WinRM to win-07 for up to 2 hours, saying why.
[[mapping]]
name = "sre-windows"
roles = ["100"]
vms = "win-07"
ports = ["rdp", "winrm", "winrm-https"]
max_duration = "2h"
require_reason = true

# SREs may SSH to the production ops-01 for up to 2 hours, once a lead
# approves; an SRE may break the glass in an emergency, with a reason.
[[mapping]]
name = "prod"
roles = ["100"]
vms = "rg-prod/ops-01"
ports = ["ssh"]
max_duration = "2h"
approvers = ["300"]
approvals = 1
break_glass = ["100"]

# Developers may SSH to staging only, for up to an hour.
[[mapping]]
name = "dev-staging"
roles = ["200"]
vms = "rg:rg-staging"
ports = ["ssh"]
max_duration = "1h"
"#;

/// A member of the demo guild.
#[derive(Debug, Clone, Copy)]
pub struct DemoMember {
    /// What `:as` takes.
    pub key: &'static str,
    /// Display name.
    pub name: &'static str,
    /// User id.
    pub user_id: u64,
    /// Role ids.
    pub roles: &'static [u64],
    /// The address they saved with `/jit-ip` (requests use it without `from:`).
    pub source: &'static str,
    /// What they may do, for `:members`.
    pub about: &'static str,
}

/// The demo's members: an SRE, a developer, an admin and a lead who
/// approves production access.
pub const MEMBERS: [DemoMember; 4] = [
    DemoMember {
        key: "sre",
        name: "Sam (SRE)",
        user_id: 1001,
        roles: &[100],
        source: "203.0.113.10",
        about: "role 100: may SSH to web-* for up to 3h (sre-web), RDP/WinRM to win-07 for up to 2h with a reason (sre-windows)",
    },
    DemoMember {
        key: "dev",
        name: "Dana (developer)",
        user_id: 1002,
        roles: &[200],
        source: "198.51.100.20",
        about: "role 200: may SSH to rg-staging only, up to 1h (mapping dev-staging)",
    },
    DemoMember {
        key: "admin",
        name: "Alex (admin)",
        user_id: 1003,
        roles: &[900],
        source: "192.0.2.30",
        about: "role 900: discord.admin_role_ids, may use /jit-admin",
    },
    DemoMember {
        key: "lead",
        name: "Lee (lead)",
        user_id: 1004,
        roles: &[300],
        source: "192.0.2.40",
        about: "role 300: approves requests for prod (mapping prod needs one approval), :press approve|deny|ack",
    },
];

const ROLE_NAMES: [(&str, u64); 4] = [("sre", 100), ("dev", 200), ("admin", 900), ("lead", 300)];

/// Command-line options of `drawbridge demo`.
#[derive(Debug, Clone, Copy, Default)]
pub struct DemoOptions {
    /// Demo seconds per real second; `None`: 1 on a terminal, 0 (time moves
    /// only with `:advance`) when the input is a script.
    pub speed: Option<f64>,
}

/// Runs the demo on stdin/stdout until `:quit` or the end of input.
///
/// # Errors
/// When the demo cannot start (no free port, no temp dir).
pub async fn run(options: DemoOptions) -> anyhow::Result<()> {
    let interactive = std::io::stdin().is_terminal();
    let speed = options.speed.unwrap_or(if interactive { 1.0 } else { 0.0 });
    let output = Output::new(Box::new(std::io::stdout()));
    let demo = Demo::start(output, speed).await?;
    let input = tokio::io::BufReader::new(tokio::io::stdin());
    demo.repl(input, interactive).await
}

struct DirectoryOfMembers;

fn member_by(text: &str) -> Option<&'static DemoMember> {
    let text = text.trim_start_matches('@');
    MEMBERS.iter().find(|m| {
        m.key.eq_ignore_ascii_case(text)
            || m.name.eq_ignore_ascii_case(text)
            || m.user_id.to_string() == text
    })
}

impl Directory for DirectoryOfMembers {
    fn user(&self, text: &str) -> Option<(u64, Vec<u64>)> {
        member_by(text).map(|m| (m.user_id, m.roles.to_vec()))
    }

    fn role(&self, text: &str) -> Option<u64> {
        let text = text.trim_start_matches('@');
        ROLE_NAMES
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(text))
            .map(|(_, id)| *id)
            .or_else(|| text.parse().ok())
    }
}

enum Flow {
    Continue,
    Quit,
}

/// A running demo.
struct Demo {
    app: App,
    handler: Arc<dyn InteractionHandler>,
    workers: Workers,
    emulator: RunningEmulator,
    clock: ManualClock,
    output: Output,
    names: Names,
    last_buttons: console::LastButtons,
    shapes: Vec<CommandShape>,
    current: &'static DemoMember,
    next_interaction: u64,
    ticker: Option<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Demo {
    async fn start(output: Output, speed: f64) -> anyhow::Result<Demo> {
        let start = Utc::now();
        let start =
            start - chrono::Duration::nanoseconds(i64::from(start.timestamp_subsec_nanos()));
        let clock = ManualClock::new(start);
        let shared: SharedClock = Arc::new(clock.clone());
        let estate = Estate::sample();
        let subscriptions: Vec<String> =
            estate.subscriptions.iter().map(|s| s.id.clone()).collect();
        let vm_count = estate.vms().count();
        let emulator = Emulator::new(estate, Arc::clone(&shared))
            .spawn()
            .await
            .context("starting the Azure emulator")?;
        let dir = tempfile::Builder::new()
            .prefix("drawbridge-demo-")
            .tempdir()
            .context("creating a temporary directory")?;
        let db_path = dir.path().join("drawbridge.db");
        let db = format!("sqlite://{}", db_path.display());
        let env = [
            ("DISCORD__AUDIT_CHANNEL_ID", AUDIT_CHANNEL.to_string()),
            (
                "DISCORD__APPROVALS_CHANNEL_ID",
                APPROVALS_CHANNEL.to_string(),
            ),
            ("DISCORD__GUILD_ID", GUILD.to_string()),
            ("DISCORD__ADMIN_ROLE_IDS", "900".to_string()),
            ("AZURE__CLOUD", "public".to_string()),
            ("AZURE__ARM_ENDPOINT", emulator.base_url.clone()),
            ("AZURE__AUTHORITY_HOST", "https://login.invalid".to_string()),
            ("AZURE__CREDENTIAL", "managed_identity".to_string()),
            (
                "AZURE__MANAGED_IDENTITY_ENDPOINT",
                emulator.base_url.clone(),
            ),
            ("AZURE__SUBSCRIPTIONS", subscriptions.join(",")),
            ("AZURE__REQUEST_TIMEOUT", "10s".to_string()),
            ("DATABASE__URL", db.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (format!("DRAWBRIDGE__{k}"), v))
        .collect();
        let settings = Settings::load(&Sources {
            file: None,
            env: Some(env),
        })
        .map_err(|e| anyhow::anyhow!("the demo settings are invalid: {e}"))?;
        let app = App::build(settings, Arc::clone(&shared)).await?;
        app.index_load().await;
        let mappings = MappingFile::parse(SAMPLE_MAPPINGS, &app.settings.ports)
            .map_err(|e| anyhow::anyhow!("the sample mappings are invalid: {e}"))?;
        app.service
            .store()
            .import_mappings(&mappings, "demo", shared.now())
            .await?;
        app.service.reload_mappings().await?;
        for m in &MEMBERS {
            let user = UserId(Snowflake::from_u64(m.user_id).context("a demo user id")?);
            let source = crate::domain::SourcePrefix::parse(m.source)
                .map_err(|e| anyhow::anyhow!("a demo source: {e}"))?;
            app.service
                .store()
                .save_source(user, &source, shared.now())
                .await?;
        }
        let names = Names {
            users: MEMBERS
                .iter()
                .map(|m| (m.user_id, m.name.to_owned()))
                .collect(),
            channels: [
                (AUDIT_CHANNEL, "audit".to_owned()),
                (APPROVALS_CHANNEL, "approvals".to_owned()),
                (REQUEST_CHANNEL, "ops-requests".to_owned()),
            ]
            .into(),
            roles: ROLE_NAMES
                .iter()
                .map(|(name, id)| (*id, (*name).to_owned()))
                .collect(),
        };
        let last_buttons = console::LastButtons::default();
        let sender = ConsoleSender::new(
            output.clone(),
            names.clone(),
            Arc::clone(&shared),
            AUDIT_CHANNEL,
            Arc::clone(&last_buttons),
        );
        // The banner goes out before the workers start, so the audit lines
        // of the sample mappings always follow it.
        output.line(&format!(
            "Drawbridge demo: the Azure JIT emulator is serving {vm_count} sample VMs at {}, \
             the database is a temporary SQLite file, and this terminal is Discord.",
            emulator.base_url
        ));
        output.line(&format!(
            "Members: sre, dev, admin, lead (see :members). You are {}. Try /jit ssh web-01 2h, then :advance 2h. :help lists everything.",
            MEMBERS[0].name
        ));
        let workers = app.start_workers(Arc::new(sender));
        let handler = app.handler();
        let ticker = (speed > 0.0).then(|| {
            let clock = clock.clone();
            let wake = app.service.wakers().scheduler.clone();
            let step = chrono::Duration::from_std(SPEED_TICK.mul_f64(speed))
                .unwrap_or_else(|_| chrono::Duration::zero());
            tokio::spawn(async move {
                let mut every = tokio::time::interval(SPEED_TICK);
                loop {
                    every.tick().await;
                    clock.advance(step);
                    wake.notify_one();
                }
            })
        });
        let demo = Demo {
            app,
            handler,
            workers,
            emulator,
            clock,
            output,
            names,
            last_buttons,
            shapes: shapes(),
            current: &MEMBERS[0],
            next_interaction: 1_300_000_000_000_000_000,
            ticker,
            _dir: dir,
        };
        demo.settle().await;
        Ok(demo)
    }

    async fn repl(
        mut self,
        input: impl AsyncBufRead + Unpin,
        interactive: bool,
    ) -> anyhow::Result<()> {
        let mut lines = input.lines();
        loop {
            if interactive {
                self.output.prompt(&format!("{}> ", self.current.key));
            }
            let line = tokio::select! {
                line = lines.next_line() => line.context("reading the input")?,
                _ = tokio::signal::ctrl_c() => None,
            };
            let Some(line) = line else { break };
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if !interactive {
                self.output.line(&format!("{}> {line}", self.current.key));
            }
            if let Flow::Quit = self.execute(line).await {
                break;
            }
        }
        self.stop().await;
        Ok(())
    }

    async fn execute(&mut self, line: &str) -> Flow {
        if line.starts_with('/') {
            match parse_slash(line, &self.shapes, &DirectoryOfMembers) {
                Ok(command) => self.slash(command).await,
                Err(e) => self.output.line(&format!("error: {e}")),
            }
            return Flow::Continue;
        }
        let Some(rest) = line.strip_prefix(':') else {
            self.output
                .line("error: type a /command (as Discord), or :help");
            return Flow::Continue;
        };
        let mut words = rest.split_whitespace();
        let verb = words.next().unwrap_or_default();
        let args: Vec<&str> = words.collect();
        match (verb, args.as_slice()) {
            ("quit" | "q" | "exit", _) => return Flow::Quit,
            ("help" | "h" | "?", _) => self.help(),
            ("members", _) => {
                for m in &MEMBERS {
                    let marker = if m.key == self.current.key { "*" } else { " " };
                    self.output.line(&format!(
                        "{marker} {:<6} {:<18} {} (saved /jit-ip {})",
                        m.key, m.name, m.about, m.source
                    ));
                }
            }
            ("as", [who]) => match member_by(who) {
                Some(m) => {
                    self.current = m;
                    self.output.line(&format!("-- you are now {}", m.name));
                }
                None => self.output.line("error: :as sre|dev|admin|lead"),
            },
            ("advance", [span]) => match parse_span_seconds(span) {
                Some(secs) => {
                    let secs = i64::try_from(secs).unwrap_or(i64::MAX).min(366 * 86_400);
                    let target = self.clock_now() + chrono::Duration::seconds(secs);
                    self.advance_to(target).await;
                    self.output
                        .line(&format!("-- the clock is now {}", local(self.clock_now())));
                }
                None => self.output.line(&format!(
                    "error: `{span}` is not a duration; try 10m, 2h or 1h55m"
                )),
            },
            ("report", [file]) => self.report(file).await,
            ("report", []) => self.report("drawbridge-report.png").await,
            ("time", []) => self
                .output
                .line(&format!("-- the clock is {}", local(self.clock_now()))),
            ("press", [verb, rest @ ..]) => match self.pressed(verb, rest) {
                Ok(action) => self.button(action).await,
                Err(message) => self.output.line(&format!("error: {message}")),
            },
            _ => self.output.line(&format!(
                "error: unknown console command :{verb}; see :help"
            )),
        }
        Flow::Continue
    }

    /// The button `:press <verb> [request-id] [reason…]` stands for: the
    /// request id given, else the one of the buttons last shown to the
    /// member (Extend, Close early, Cancel) or in the approvals channel
    /// (Approve, Deny, Acknowledge).
    fn pressed(&self, verb: &str, rest: &[&str]) -> Result<ButtonAction, String> {
        let given = rest
            .first()
            .copied()
            .filter(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_digit()));
        let words = if given.is_some() { &rest[1..] } else { rest };
        let channel_card = matches!(verb, "approve" | "deny" | "ack" | "acknowledge");
        let key = if channel_card {
            console::CHANNEL_BUTTONS
        } else {
            self.current.user_id
        };
        let last = self
            .last_buttons
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned();
        let id = given
            .map(str::to_owned)
            .or(last)
            .ok_or("no buttons were shown for that; give a request id: :press <verb> <id>")?;
        let usage = "use :press extend|close|open-anyway|cancel|withdraw|approve|ack [request-id], or :press deny [request-id] <reason>";
        match verb {
            "deny" if words.is_empty() => {
                Err("a Deny needs a reason: :press deny [request-id] <reason>".into())
            }
            "deny" => Ok(ButtonAction::DenyWithReason {
                id,
                reason: words.join(" "),
            }),
            _ if !words.is_empty() => Err(usage.into()),
            "extend" => Ok(ButtonAction::Extend(id)),
            "close" | "close-early" => Ok(ButtonAction::CloseEarly(id)),
            "open-anyway" => Ok(ButtonAction::OpenAnyway(id)),
            "cancel" => Ok(ButtonAction::Cancel(id)),
            "withdraw" => Ok(ButtonAction::Withdraw(id)),
            "approve" => Ok(ButtonAction::Approve(id)),
            "ack" | "acknowledge" => Ok(ButtonAction::Acknowledge(id)),
            _ => Err(usage.into()),
        }
    }

    fn clock_now(&self) -> DateTime<Utc> {
        crate::clock::Clock::now(&self.clock)
    }

    /// `:report FILE`: the weekly picture of the demo's last 7 days, with
    /// the coverage the emulator reports.
    async fn report(&self, file: &str) {
        let now = self.clock_now();
        let first_day = (now - chrono::Duration::days(6)).date_naive();
        let store = self.app.service.store();
        let mut week = match crate::report::gather(store, first_day, 7, now).await {
            Ok(week) => week,
            Err(e) => return self.output.line(&format!("error: reading the week: {e}")),
        };
        if let Ok(without) = self.app.service.unprotected_vms().await {
            week.without_jit = Some(without);
        }
        let written = crate::report::render_png(&week)
            .map_err(|e| e.to_string())
            .and_then(|png| std::fs::write(file, png).map_err(|e| e.to_string()));
        match written {
            Ok(()) => self
                .output
                .line(&format!("{}\n-- wrote {file}", week.text())),
            Err(e) => self.output.line(&format!("error: {file}: {e}")),
        }
    }

    fn invocation(&mut self) -> Invocation {
        self.next_interaction += 1;
        let m = self.current;
        Invocation {
            id: self.next_interaction.to_string(),
            member: Member {
                user_id: UserId(Snowflake::from_u64(m.user_id).expect("demo ids are snowflakes")),
                name: m.name.to_owned(),
                roles: m
                    .roles
                    .iter()
                    .filter_map(|r| Snowflake::from_u64(*r).map(RoleId))
                    .collect(),
            },
            channel_id: Some(REQUEST_CHANNEL),
            guild_id: Some(GUILD),
            token: None,
        }
    }

    async fn slash(&mut self, command: SlashCommand) {
        let who = self.invocation();
        let held = self.output.hold().await;
        let reply = self.handler.command(&who, &command).await;
        self.show_reply(&reply);
        self.output.collect();
        drop(held);
        self.settle().await;
    }

    async fn button(&mut self, action: ButtonAction) {
        let who = self.invocation();
        let held = self.output.hold().await;
        let reply = self.handler.button(&who, &action).await;
        self.show_reply(&reply);
        self.output.collect();
        drop(held);
        self.settle().await;
    }

    fn show_reply(&self, reply: &ChatMessage) {
        let header = format!("[reply → {}, only they see it]", self.current.name);
        self.output
            .line(&render(&header, reply, &self.names, self.clock_now()));
        console::remember_buttons(&self.last_buttons, self.current.user_id, reply);
    }

    fn help(&self) {
        let mut text = vec![
            "Slash commands, typed as the current member (positional values in Discord's order, or key:value, key:\"quoted\"):".to_owned(),
        ];
        for shape in &self.shapes {
            for usage in parse::usage(shape) {
                text.push(format!("  {usage}"));
            }
        }
        text.extend(
            [
                "Console commands:",
                "  :as sre|dev|admin|lead            act as another member (:members says who may do what)",
                "  :advance 1h55m                    move the clock; due reminders and expiries fire",
                "  :press extend|close|open-anyway|cancel|withdraw [id]  press a button (default: the last one shown to you)",
                "  :press approve|ack [id]           an approver's buttons (default: the last approval card)",
                "  :press deny [id] <reason>         deny a pending request, saying why",
                "  :report [FILE]                    the weekly picture of the last 7 days (PNG) and its summary",
                "  :time                             the demo clock",
                "  :quit                             leave (also Ctrl-D, or the end of a piped script)",
                "VMs: web-01..04 (rg-web), db-01 (rg-data, SSH from 10.20.0.0/16 only), win-07 (RDP, WinRM),",
                "     ops-01 (in rg-prod and rg-staging: say which), legacy-01 (no JIT policy).",
                "prod (rg-prod/ops-01) waits for one approval by lead; /jit … break_glass:true reason:\"…\" skips it.",
                "Reminders come 10 minutes before a window ends; :advance stops at each one on the way.",
            ]
            .map(str::to_owned),
        );
        self.output.line(&text.join("\n"));
    }

    /// Moves the clock to `target`, stopping at every timer on the way (so
    /// each fires at its own time, as it would live) and settling there.
    async fn advance_to(&self, target: DateTime<Utc>) {
        loop {
            let now = self.clock_now();
            let next = self
                .timer_times()
                .await
                .into_iter()
                .filter(|t| *t > now && *t <= target)
                .min();
            match next {
                Some(at) => {
                    self.clock.set(at);
                    self.settle().await;
                }
                None => break,
            }
        }
        self.clock.set(target.max(self.clock_now()));
        self.settle().await;
    }

    /// Waits until no timer is due and the outbox has nothing to send now,
    /// waking the workers as it goes; then prints what was delivered, in a
    /// fixed order (see [`Output::collect`]).
    async fn settle(&self) {
        self.output.collect();
        self.wait_for_workers().await;
        self.output.flush();
    }

    async fn wait_for_workers(&self) {
        let wakers = self.app.service.wakers();
        let deadline = Instant::now() + SETTLE_LIMIT;
        loop {
            let now = self.clock_now();
            // Timers first: one handled commits its messages to the outbox in
            // the same transaction, so the outbox check below sees them.
            let timers_due = self.timers_due(now).await;
            let outbox_due = match self.app.service.store().next_outbox_batch(now, 1).await {
                Ok(rows) => !rows.is_empty(),
                Err(_) => false,
            };
            if !timers_due && !outbox_due {
                return;
            }
            wakers.scheduler.notify_one();
            wakers.outbox.notify_one();
            if Instant::now() > deadline {
                tracing::warn!("the workers are still busy; going on");
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Whether a timer due at `now` is not done yet (claimed ones count).
    async fn timers_due(&self, now: DateTime<Utc>) -> bool {
        self.timer_times().await.iter().any(|t| *t <= now)
    }

    /// When the pending timers (claimed or not) are due.
    async fn timer_times(&self) -> Vec<DateTime<Utc>> {
        match self.app.service.store().pending_due_times().await {
            Ok(times) => times,
            Err(error) => {
                tracing::warn!(%error, "cannot read the pending timers");
                Vec::new()
            }
        }
    }

    async fn stop(self) {
        if let Some(ticker) = &self.ticker {
            ticker.abort();
        }
        self.settle().await;
        self.workers.stop().await;
        self.app.service.store().close().await;
        let _ = self.emulator.shutdown().await;
    }
}

fn local(at: DateTime<Utc>) -> String {
    at.with_timezone(&chrono::Local)
        .format("%Y-%m-%d %H:%M %Z")
        .to_string()
}
