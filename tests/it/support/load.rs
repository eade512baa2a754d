#![allow(dead_code)] // the bench and the fault tests use different parts
//! The load harness: the real app (via [`TestAppBuilder`]) against the fake
//! Discord and the Azure emulator, driven by many concurrent `/jit`
//! interactions from distinct members, with optional faults. Shared by
//! `benches/load.rs` (figures for BENCHMARKS.md) and `tests/it/fault.rs`
//! (the same runs, shorter, as tests).
//!
//! Everything is measured from the fakes' own records: the ack latency is
//! the fake Discord's "interaction sent → callback received"; the reply time
//! is when the `PATCH …/messages/@original` arrived; ARM and token traffic
//! come from the emulator's call log.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use drawbridge::sandbox::{CallRecord, Fault, FaultRule, Route};
use drawbridge::store::AuditFilter;
use serde_json::Value;

use super::app::{AUDIT_CHANNEL, SRE_ROLE, TestApp, TestAppBuilder};
use super::fake_discord::{FailMode, RouteMatch};
use super::procfs::{cpu_time, status_kib};

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Concurrent `/jit` interactions, all sent in one burst.
    pub interactions: usize,
    /// Interactions sent (and answered) one by one before the measured ones,
    /// to warm the app up; their figures are reported apart.
    pub warmup: usize,
    /// Interactions sent per second; `None` sends the whole burst at once.
    pub rate: Option<f64>,
    /// Latency the emulator adds to every initiate.
    pub azure_latency: Duration,
    /// The app's `azure.request_timeout` (a hung call fails after it), whole
    /// seconds.
    pub azure_timeout: Duration,
    /// Azure answers ~10 % of initiates 429 (`Retry-After: 1`), ~10 % 500,
    /// and leaves ~`hang_percent` % unanswered.
    pub azure_faults: Option<AzureFaults>,
    /// ARM starts refusing the current token mid-load and the token endpoint
    /// fails the next this many calls.
    pub token_outage: Option<u32>,
    /// The audit channel answers 429 (`retry_after` 1 s) this many times and
    /// then 500 this many times.
    pub audit_channel_faults: Option<usize>,
    /// The gateway sends op 7 after a third of the burst and op 9 (not
    /// resumable) after two thirds.
    pub gateway_faults: bool,
    /// How long to wait for every reply and for the audit channel to drain.
    pub deadline: Duration,
}

/// Azure fault mix on the initiate route.
#[derive(Debug, Clone, Copy)]
pub struct AzureFaults {
    /// Share of 429s (`Retry-After: 1`).
    pub throttle: f64,
    /// Share of 500s.
    pub server_error: f64,
    /// Share of calls that hang until the client times out.
    pub hang: f64,
    /// Seed of the emulator's fault RNG.
    pub seed: u64,
}

impl Default for AzureFaults {
    fn default() -> Self {
        Self {
            throttle: 0.10,
            server_error: 0.10,
            hang: 0.03,
            seed: 7,
        }
    }
}

impl Default for LoadConfig {
    fn default() -> Self {
        Self {
            interactions: 200,
            warmup: 0,
            rate: None,
            azure_latency: Duration::from_secs(2),
            azure_timeout: Duration::from_secs(5),
            azure_faults: None,
            token_outage: None,
            audit_channel_faults: None,
            gateway_faults: false,
            deadline: Duration::from_secs(90),
        }
    }
}

/// How one interaction ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The interaction (and request) id.
    pub id: u64,
    /// Sent → first accepted callback, from the fake's record.
    pub ack: Option<Duration>,
    /// The callback's type (5: deferred).
    pub ack_kind: Option<u64>,
    /// Sent → the reply (the edit of the deferred response) arrived.
    pub reply: Option<Duration>,
    /// The reply's text (content, embed titles and descriptions).
    pub reply_text: String,
    /// The reply says the access was granted.
    pub granted: bool,
}

/// What a run measured and found.
#[derive(Debug, Clone)]
pub struct LoadReport {
    /// The configuration.
    pub config: LoadConfig,
    /// One per interaction, in send order.
    pub outcomes: Vec<Outcome>,
    /// First send → last reply.
    pub wall: Duration,
    /// Time to send the whole burst (op 7/9 waits included).
    pub send_time: Duration,
    /// ARM calls (token endpoint excluded) during the load.
    pub arm_calls: usize,
    /// Of `arm_calls`, the reads of a VM's connection address (VM, network
    /// interface, public IP), each cached per VM after its first grant.
    pub address_calls: usize,
    /// Of which initiates.
    pub initiate_calls: usize,
    /// `arm_calls` by operation, so a count that differs says which.
    pub arm_routes: BTreeMap<String, usize>,
    /// Token endpoint requests during the load.
    pub token_requests: usize,
    /// Last reply → last audit message posted (0 when it had drained first).
    pub drain: Duration,
    /// Audit events the store holds for the load.
    pub audit_events: usize,
    /// Of which grants Azure showed ended by a later member's request
    /// (several members on one VM and port).
    pub ended_in_azure: usize,
    /// Audit messages posted (accepted) for the load.
    pub audit_messages: usize,
    /// CPU time of this whole process (app, fakes, emulator and harness)
    /// from the first send until the audit channel had every event.
    pub cpu: Option<Duration>,
    /// Peak resident set of this process (`VmHWM`), KiB: harness, fakes,
    /// emulator and app together.
    pub peak_rss_kib: Option<u64>,
    /// Ack latencies of the warm-up interactions, in order.
    pub warmup_acks: Vec<Duration>,
    /// Problems found by the checks; empty when all passed.
    pub problems: Vec<String>,
}

/// Percentile (nearest rank) of sorted durations.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

impl LoadReport {
    fn sorted(&self, f: impl Fn(&Outcome) -> Option<Duration>) -> Vec<Duration> {
        let mut v: Vec<Duration> = self.outcomes.iter().filter_map(f).collect();
        v.sort();
        v
    }

    /// Ack latencies, sorted.
    pub fn acks(&self) -> Vec<Duration> {
        self.sorted(|o| o.ack)
    }

    /// Reply latencies of granted requests, sorted.
    pub fn grant_latencies(&self) -> Vec<Duration> {
        self.sorted(|o| o.reply.filter(|_| o.granted))
    }

    /// Granted requests.
    pub fn granted(&self) -> usize {
        self.outcomes.iter().filter(|o| o.granted).count()
    }

    /// A human-readable summary.
    pub fn summary(&self) -> String {
        let acks = self.acks();
        let grants = self.grant_latencies();
        let n = self.outcomes.len();
        let granted = self.granted();
        let mut errors: BTreeMap<String, usize> = BTreeMap::new();
        for o in self.outcomes.iter().filter(|o| !o.granted) {
            let text: String = o.reply_text.chars().take(90).collect();
            *errors.entry(text).or_default() += 1;
        }
        let mut s = String::new();
        let per_grant = |x: usize| {
            if granted == 0 {
                "n/a".to_string()
            } else {
                format!("{:.3}", x as f64 / granted as f64)
            }
        };
        s += &format!(
            "interactions {n} (granted {granted}, refused/failed {}), Azure latency {}, {}\n",
            n - granted,
            ms(self.config.azure_latency),
            match self.config.rate {
                Some(r) => format!("sent at {r}/s"),
                None => "sent as one burst".to_string(),
            }
        );
        if !self.warmup_acks.is_empty() {
            let acks: Vec<String> = self.warmup_acks.iter().map(|d| ms(*d)).collect();
            s += &format!(
                "warm-up acks:  {} (one at a time, not counted below)\n",
                acks.join(", ")
            );
        }
        s += &format!(
            "ack latency:   p50 {}  p99 {}  max {}  ({} acks)\n",
            ms(percentile(&acks, 50.0)),
            ms(percentile(&acks, 99.0)),
            ms(acks.last().copied().unwrap_or_default()),
            acks.len()
        );
        s += &format!(
            "grant latency: p50 {}  p99 {}  max {}  (sent → reply shown)\n",
            ms(percentile(&grants, 50.0)),
            ms(percentile(&grants, 99.0)),
            ms(grants.last().copied().unwrap_or_default()),
        );
        s += &format!(
            "throughput:    {:.1} interactions/s answered (first send → last reply {}); burst sent in {}\n",
            n as f64 / self.wall.as_secs_f64().max(1e-9),
            ms(self.wall),
            ms(self.send_time)
        );
        s += &format!(
            "ARM requests:  {} ({} initiates) = {} per granted access; token requests {}; {:?}\n",
            self.arm_calls,
            self.initiate_calls,
            per_grant(self.arm_calls),
            self.token_requests,
            self.arm_routes
        );
        s += &format!(
            "audit:         {} events stored, {} messages posted; outbox drained {} after the last reply\n",
            self.audit_events,
            self.audit_messages,
            ms(self.drain)
        );
        if let Some(cpu) = self.cpu {
            s += &format!(
                "CPU:           {} = {} per granted access (the whole process: app, fakes, emulator and harness; first send → audit drained)\n",
                ms(cpu),
                if granted == 0 {
                    "n/a".to_string()
                } else {
                    ms(cpu / granted as u32)
                }
            );
        }
        if let Some(kib) = self.peak_rss_kib {
            s += &format!(
                "peak RSS:      {:.1} MiB (VmHWM of the whole in-process harness: app + fakes + emulator)\n",
                kib as f64 / 1024.0
            );
        }
        for (text, count) in errors {
            s += &format!("  {count} × {text:?}\n");
        }
        if self.problems.is_empty() {
            s += "checks:        all passed\n";
        } else {
            for p in &self.problems {
                s += &format!("PROBLEM: {p}\n");
            }
        }
        s
    }
}

/// `VmHWM` of this process, KiB.
pub fn peak_rss_kib() -> Option<u64> {
    status_kib("self", "VmHWM")
}

/// `VmRSS` of this process, KiB.
pub fn rss_kib() -> Option<u64> {
    status_kib("self", "VmRSS")
}

/// The request id in an initiate's justification
/// (`Drawbridge request <id> by …`).
pub fn justification_request_id(call: &CallRecord) -> Option<String> {
    let text = call.body.as_ref()?.get("justification")?.as_str()?;
    let rest = text.strip_prefix("Drawbridge request ")?;
    Some(rest.split_whitespace().next()?.to_string())
}

/// The visible text of a message: content, embed titles, descriptions and
/// field values.
pub fn message_text(message: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(c) = message["content"].as_str().filter(|c| !c.is_empty()) {
        parts.push(c.to_string());
    }
    for e in message["embeds"].as_array().into_iter().flatten() {
        for key in ["title", "description"] {
            if let Some(t) = e[key].as_str() {
                parts.push(t.to_string());
            }
        }
    }
    parts.join(" | ")
}

/// The audit seq and hash in an audit message's footer (`#<seq> · <hash>`).
fn audit_footer(message: &Value) -> Option<(i64, String)> {
    let footer = message["embeds"][0]["footer"]["text"].as_str()?;
    let (seq, hash) = footer.strip_prefix('#')?.split_once(" · ")?;
    Some((seq.parse().ok()?, hash.to_string()))
}

/// Starts the app with `config`'s Azure timeout.
pub async fn start(config: &LoadConfig) -> TestApp {
    TestAppBuilder::default()
        .env(
            "AZURE__REQUEST_TIMEOUT",
            &format!("{}s", config.azure_timeout.as_secs().max(1)),
        )
        .start()
        .await
}

/// Starts the app and runs the load.
pub async fn start_and_run(config: LoadConfig) -> LoadReport {
    let app = start(&config).await;
    let report = run(&app, config).await;
    app.stop().await.expect("the app stops cleanly");
    report
}

/// Runs the load against a started app.
pub async fn run(app: &TestApp, config: LoadConfig) -> LoadReport {
    let d = &app.discord;
    let emu = &app.azure.emulator;
    let mut warmup_acks = Vec::new();
    for i in 0..config.warmup {
        let interaction = d
            .slash("jit")
            .string("port", "ssh")
            .string("vm", "web-01")
            .string("duration", "1h")
            .string("from", "198.51.100.1")
            .user(20_000_000 + i as u64, "warmup")
            .roles([SRE_ROLE]);
        let sent = d.send_interaction(interaction).await;
        let ack = d.wait_for_callback(sent.id, Duration::from_secs(3)).await;
        warmup_acks.push(ack.map(|c| c.elapsed).unwrap_or_default());
        d.wait_for_interaction_response(sent.id, config.deadline, |m| !message_text(m).is_empty())
            .await;
    }
    // The steady state: the VM index loaded (it loads in the background at
    // start-up, and its listing is not the load's), and the start-up audit
    // events drained, so neither is counted.
    app.wait_for_vm_index(Duration::from_secs(10)).await;
    let base_seq = wait_for_audit_drain(app, Duration::from_secs(10)).await;
    let base_messages = d.channel_message_count(AUDIT_CHANNEL);
    let base_tokens = emu.token_requests();
    emu.clear_calls();
    if let Some(f) = config.azure_faults {
        emu.seed_faults(f.seed);
        // The first rule that fires wins, so each later share is of the rest.
        emu.inject(
            Route::Initiate,
            FaultRule::probability(
                f.throttle,
                Fault::Throttle {
                    retry_after_secs: 1,
                },
            ),
        );
        emu.inject(
            Route::Initiate,
            FaultRule::probability(
                f.server_error / (1.0 - f.throttle),
                Fault::ServerError { status: 500 },
            ),
        );
        emu.inject(
            Route::Initiate,
            FaultRule::probability(f.hang / (1.0 - f.throttle - f.server_error), Fault::Hang),
        );
    }
    if !config.azure_latency.is_zero() {
        emu.inject(
            Route::Initiate,
            FaultRule::always(Fault::Latency {
                millis: config.azure_latency.as_millis() as u64,
            }),
        );
    }
    if let Some(times) = config.audit_channel_faults {
        d.fail_next(
            RouteMatch::ChannelMessages(AUDIT_CHANNEL),
            FailMode::RateLimited {
                retry_after_secs: 1.0,
                global: false,
            },
            times,
        );
        d.fail_next(
            RouteMatch::ChannelMessages(AUDIT_CHANNEL),
            FailMode::Status(500),
            times,
        );
    }

    // The burst: distinct members, distinct request ids (the interaction ids).
    let n = config.interactions;
    let cpu_before = cpu_time("self");
    let started = Instant::now();
    let mut sent = Vec::with_capacity(n);
    for i in 0..n {
        if config.gateway_faults && i == n / 3 {
            d.send_reconnect();
        }
        if config.gateway_faults && i == 2 * n / 3 {
            // The op 9 ends the session: first let the bot resume it, or what the fake holds
            // for it is lost (as on Discord).
            d.wait_until_ready(Duration::from_secs(10)).await;
            d.send_invalid_session(false);
        }
        if let Some(times) = config.token_outage
            && i == n / 2
        {
            emu.inject(
                Route::Token,
                FaultRule::next(times, Fault::ServerError { status: 500 }),
            );
            emu.revoke_tokens();
        }
        let user = 10_000_000 + i as u64;
        let interaction = d
            .slash("jit")
            .string("port", "ssh")
            .string("vm", &format!("web-0{}", 1 + i % 4))
            .string("duration", "1h")
            // One address for everyone (an office's NAT, as the warm-up's):
            // members asking from different addresses for a port another
            // member holds are asked first (Azure keeps one window per
            // port), which a load of unattended requests cannot answer.
            .string("from", "198.51.100.1")
            .user(user, &format!("member{i}"))
            .roles([SRE_ROLE]);
        if let Some(rate) = config.rate.filter(|r| *r > 0.0) {
            let due = started + Duration::from_secs_f64(i as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
        // Between the op 7 and the op 9 the interactions are dispatched without waiting for
        // the bot: those sent while it reconnects are held by the fake and replayed on RESUME
        // (or lost, if the bot did not resume), as Discord does.
        let into_reconnect = config.gateway_faults && (n / 3..2 * n / 3).contains(&i);
        sent.push(if into_reconnect {
            d.dispatch_interaction(interaction)
        } else {
            d.send_interaction(interaction).await
        });
        // Yield so the burst interleaves with the app, as real traffic would.
        tokio::task::yield_now().await;
    }
    let send_time = started.elapsed();

    // Wait until every interaction has its reply (the edit of the defer).
    let tokens: HashMap<String, usize> = sent
        .iter()
        .enumerate()
        .map(|(i, s)| (s.token.clone(), i))
        .collect();
    // Polled every 20 ms: the calls are looked at in place, not copied (a
    // copy of every recorded call per poll was the harness's own CPU).
    let reply_times = |d: &super::fake_discord::FakeDiscord| {
        let mut replies: Vec<Option<Instant>> = vec![None; n];
        d.inspect_calls(|c| {
            if c.status != 200 || !c.is_under("PATCH", "/webhooks/") {
                return;
            }
            if !c.path.ends_with("/messages/@original") {
                return;
            }
            let token = c.path.split('/').rev().nth(2).unwrap_or_default();
            if let Some(&i) = tokens.get(token)
                && replies[i].is_none()
            {
                replies[i] = Some(c.received_at);
            }
        });
        replies
    };
    let deadline = Instant::now() + config.deadline;
    let mut replies = reply_times(d);
    while replies.iter().any(Option::is_none) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        replies = reply_times(d);
    }
    let last_reply = replies.iter().flatten().max().copied();
    let wall = last_reply
        .map(|t| t.saturating_duration_since(sent[0].sent_at))
        .unwrap_or_default();

    let mut problems = Vec::new();
    let mut outcomes = Vec::with_capacity(n);
    for (s, reply) in sent.iter().zip(&replies) {
        let callbacks = d.callbacks(s.id);
        let accepted = callbacks.iter().find(|c| c.status == 204);
        if callbacks.len() != 1 || accepted.is_none() {
            problems.push(format!(
                "interaction {}: {} callback(s), statuses {:?}",
                s.id,
                callbacks.len(),
                callbacks.iter().map(|c| c.status).collect::<Vec<_>>()
            ));
        }
        let response = d.interaction_response(s.id).unwrap_or(Value::Null);
        let reply_text = message_text(&response);
        let granted = reply_text.contains("Access granted");
        if reply.is_none() {
            problems.push(format!(
                "interaction {}: no reply within {:?}",
                s.id, config.deadline
            ));
        } else if reply_text.is_empty() {
            problems.push(format!("interaction {}: an empty reply", s.id));
        }
        outcomes.push(Outcome {
            id: s.id,
            ack: accepted.map(|c| c.elapsed),
            ack_kind: accepted.and_then(|c| c.kind()),
            reply: reply.map(|at| at.saturating_duration_since(s.sent_at)),
            reply_text,
            granted,
        });
    }
    if let Some(o) = outcomes.iter().find(|o| o.ack_kind != Some(5)) {
        problems.push(format!(
            "interaction {}: acknowledged with type {:?}, not a deferred reply",
            o.id, o.ack_kind
        ));
    }

    // Initiates: at most one that Azure accepted per request id, and it
    // matches the reply.
    let calls = emu.calls();
    let arm: Vec<&CallRecord> = calls
        .iter()
        .filter(|c| c.route != Some(Route::Token))
        .collect();
    let initiates: Vec<&CallRecord> = arm
        .iter()
        .copied()
        .filter(|c| c.route == Some(Route::Initiate))
        .collect();
    let mut accepted_by_id: HashMap<String, usize> = HashMap::new();
    for c in &initiates {
        let Some(id) = justification_request_id(c) else {
            problems.push(format!("initiate call {} has no request id", c.id));
            continue;
        };
        if (200..300).contains(&c.status) {
            *accepted_by_id.entry(id).or_default() += 1;
        }
    }
    for (id, count) in &accepted_by_id {
        if *count > 1 {
            problems.push(format!("request {id} was initiated {count} times"));
        }
    }
    for o in &outcomes {
        let accepted = accepted_by_id.get(&o.id.to_string()).copied().unwrap_or(0);
        if o.granted && accepted != 1 {
            problems.push(format!(
                "interaction {} says granted but Azure accepted {accepted} initiates",
                o.id
            ));
        }
    }

    // The audit channel: every stored event exactly once, in order.
    let drain_deadline = Duration::from_secs(60).min(config.deadline);
    let head = wait_for_audit_drain(app, drain_deadline).await;
    let cpu = cpu_time("self")
        .zip(cpu_before)
        .map(|(after, before)| after - before);
    let records = app
        .store
        .audit_events(&AuditFilter::default())
        .await
        .expect("audit events read");
    let records: Vec<_> = records.into_iter().filter(|r| r.seq > base_seq).collect();
    let messages: Vec<Value> = d
        .channel_messages(AUDIT_CHANNEL)
        .into_iter()
        .skip(base_messages)
        .collect();
    let posted: Vec<(i64, String)> = messages.iter().filter_map(audit_footer).collect();
    if posted.len() != messages.len() {
        problems.push("an audit message without a `#seq · hash` footer".into());
    }
    let expected: Vec<(i64, String)> = records.iter().map(|r| (r.seq, r.hash.clone())).collect();
    if posted != expected {
        let missing = expected.iter().filter(|e| !posted.contains(e)).count();
        let mut seen = std::collections::HashSet::new();
        let duplicated = posted.iter().filter(|p| !seen.insert(*p)).count();
        problems.push(format!(
            "audit channel differs from the log: {} stored (head {head}), {} posted, {missing} missing, {duplicated} duplicated, in order: {}",
            expected.len(),
            posted.len(),
            posted.windows(2).all(|w| w[0].0 < w[1].0)
        ));
    }
    let verification = app.store.verify_audit().await.expect("audit verifies");
    if !verification.is_intact() {
        problems.push(format!(
            "the audit chain is broken: {:?}",
            verification.first_broken
        ));
    }
    let last_audit_post = d
        .calls_to("POST", &format!("/channels/{AUDIT_CHANNEL}/messages"))
        .iter()
        .filter(|c| c.status == 200)
        .map(|c| c.received_at)
        .max();
    let drain = match (last_reply, last_audit_post) {
        (Some(r), Some(a)) => a.saturating_duration_since(r),
        _ => Duration::ZERO,
    };

    LoadReport {
        outcomes,
        wall,
        send_time,
        arm_calls: arm.len(),
        address_calls: arm
            .iter()
            .filter(|c| {
                matches!(
                    c.route,
                    Some(Route::GetVm | Route::GetNic | Route::GetPublicIp)
                )
            })
            .count(),
        initiate_calls: initiates.len(),
        arm_routes: arm.iter().fold(BTreeMap::new(), |mut by, c| {
            *by.entry(format!("{:?}", c.route)).or_default() += 1;
            by
        }),
        token_requests: emu.token_requests() - base_tokens,
        drain,
        audit_events: records.len(),
        ended_in_azure: records
            .iter()
            .filter(|r| r.event.action == drawbridge::domain::AuditAction::AccessEndedInAzure)
            .count(),
        audit_messages: messages.len(),
        cpu,
        peak_rss_kib: peak_rss_kib(),
        warmup_acks,
        problems,
        config,
    }
}

/// Waits until the audit channel holds one message per stored event;
/// returns the audit head's seq. Polled every 20 ms, so it reads the head
/// row and counts the messages, copying neither the log nor the messages
/// (both copies were most of the harness's own CPU in the load bench).
async fn wait_for_audit_drain(app: &TestApp, timeout: Duration) -> i64 {
    let deadline = Instant::now() + timeout;
    loop {
        let (head, _) = app.store.audit_head().await.expect("audit head read");
        let posted = app.discord.channel_message_count(AUDIT_CHANNEL);
        if posted as i64 >= head || Instant::now() >= deadline {
            return head;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
