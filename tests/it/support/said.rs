#![allow(dead_code)] // each test uses part of the harness
//! What a message the bot showed says about a grant's window, and whether
//! that is true by Azure (the emulator's request history). Pure: the
//! harness ([`super::shown`]) gathers the messages from the fake Discord
//! and the requests from the emulator.
//!
//! A message claims a grant is open until a time (a card's Window end, a
//! reminder's "ends", "open until", "closes") or closed (an Expired,
//! Superseded, Ended, Failed, Cancelled or Denied card, "the port closed").
//! The rules ([`violations`]):
//!
//! - every "open until T" ever shown names a window Azure really had: a
//!   request on the grant's VM and port (for the member: from the grant's
//!   source) that ends at T. The bot never invents an end;
//! - the newest claim shown to members about a grant is true now: open
//!   until T means Azure keeps each port open for the grant's source until
//!   T; closed (or an end already past) means Azure keeps none open for it,
//!   unless another open grant of Drawbridge from that source holds it, or
//!   a request Drawbridge flagged as opened outside it does. A grant the
//!   member replaced with a newer open one of theirs (same VM, ports and
//!   source) is spoken for by that one's card.
//!
//! Audit channel lines are history: they must name real windows, but a
//! newer event, not an edit, corrects them.

use std::collections::HashMap;

use chrono::{DateTime, TimeDelta, Utc};
use drawbridge::domain::GrantState;
use drawbridge::store::Grant;
use serde_json::Value;

/// Azure writes 100 ns ticks; Discord timestamps are whole seconds.
const SAME: TimeDelta = TimeDelta::seconds(1);

/// Words before a time that make it the end of a window.
const END_PHRASES: [&str; 4] = ["→ ", "until ", "ends ", "closes "];

/// Card titles that say the access is over, whatever times they show.
const CLOSED_TITLES: [&str; 12] = [
    "No answer",
    "Expired",
    "Superseded",
    "Ended",
    "Already ended",
    "Access failed",
    "Cancelled",
    "Request denied",
    "Request expired",
    "Request cancelled",
    "Approved, not opened",
    "Denied",
];

/// Card titles that say nothing of a window yet (or speak of another
/// member's, as the question before ending it does).
const SILENT_TITLES: [&str; 8] = [
    "Access requested",
    "Checking with Azure",
    "Another member holds",
    "Waiting for approval",
    "Approval needed",
    "Approved (",
    "Already approved",
    "From which address",
];

/// What a message says of a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Said {
    /// The port is open until then.
    OpenUntil(DateTime<Utc>),
    /// The access is over.
    Closed,
}

/// One thing the bot showed about a grant (or, without a request id, about
/// some open window: `/jit-who`).
#[derive(Debug, Clone)]
pub struct Claim {
    /// Where it was shown, for the failure message.
    pub place: String,
    pub request_id: Option<String>,
    /// The one port it speaks of (all of the grant's otherwise).
    pub port: Option<u16>,
    pub said: Said,
    /// When it was last shown (created or edited).
    pub shown_at: DateTime<Utc>,
    /// An audit line: it must name a real window, but is not held to now.
    pub history: bool,
}

/// The `<t:UNIX:f>` times in `text` written as the end of a window.
pub fn end_times(text: &str) -> Vec<DateTime<Utc>> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(found) = text[at..].find("<t:") {
        let start = at + found;
        at = start + 3;
        let before = &text[..start];
        if !END_PHRASES.iter().any(|p| before.ends_with(p)) {
            continue;
        }
        let rest = &text[start + 3..];
        let Some((secs, tail)) = rest.split_once(':') else {
            continue;
        };
        if !tail.starts_with("f>") {
            continue;
        }
        if let Some(t) = secs
            .parse()
            .ok()
            .and_then(|s| DateTime::from_timestamp(s, 0))
        {
            out.push(t);
        }
    }
    out
}

/// When a Discord message was last shown: its edit, else its creation.
pub fn shown_at(message: &Value) -> DateTime<Utc> {
    ["edited_timestamp", "timestamp"]
        .iter()
        .find_map(|k| message[*k].as_str()?.parse().ok())
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

fn text_of(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

/// Everything `message` claims; `place` names it, `history` marks the
/// audit channel.
pub fn claims_in(message: &Value, place: &str, history: bool) -> Vec<Claim> {
    let at = shown_at(message);
    let mut out = Vec::new();
    for embed in message["embeds"].as_array().into_iter().flatten() {
        let claim = |request_id: Option<String>, port: Option<u16>, said: Said| Claim {
            place: place.to_owned(),
            request_id,
            port,
            said,
            shown_at: at,
            history,
        };
        let title = text_of(&embed["title"]);
        let fields: Vec<(&str, &str)> = embed["fields"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|f| (text_of(&f["name"]), text_of(&f["value"])))
            .collect();
        if title == "Your grants" {
            for (name, value) in &fields {
                if let Some((said, id)) = status_entry(name, value) {
                    out.push(claim(Some(id), None, said));
                }
            }
            continue;
        }
        if title.starts_with("Open on ") {
            // `/jit-who`: "@member · until <t:…>", no request id.
            for (_, value) in &fields {
                for end in end_times(value) {
                    out.push(claim(None, None, Said::OpenUntil(end)));
                }
            }
            continue;
        }
        let id = request_id(embed, &fields);
        if id.is_none() || SILENT_TITLES.iter().any(|t| title.starts_with(t)) {
            continue;
        }
        if title.starts_with("Open ") && title.ends_with("anyway?") {
            continue;
        }
        let description = text_of(&embed["description"]);
        if !history
            && (CLOSED_TITLES.iter().any(|t| title.starts_with(t))
                || description.contains("Azure shows the port closed"))
        {
            out.push(claim(id, None, Said::Closed));
            continue;
        }
        for (name, value) in &fields {
            if *name == "Azure shows" {
                for (port, said) in per_port(value) {
                    out.push(claim(id.clone(), Some(port), said));
                }
                continue;
            }
            if *name == "When" {
                continue;
            }
            for end in end_times(value) {
                out.push(claim(id.clone(), None, Said::OpenUntil(end)));
            }
        }
        for end in end_times(description) {
            out.push(claim(id.clone(), None, Said::OpenUntil(end)));
        }
    }
    out
}

/// The request id of a card: its footer `Request <id>`, or (an audit
/// card) its Request field.
fn request_id(embed: &Value, fields: &[(&str, &str)]) -> Option<String> {
    let footer = text_of(&embed["footer"]["text"]);
    footer
        .strip_prefix("Request ")
        .map(str::to_owned)
        .or_else(|| {
            fields
                .iter()
                .find(|(n, _)| *n == "Request")
                .map(|(_, v)| (*v).to_owned())
        })
}

/// A `/jit-status` entry: "vm · ports · state", "window\nRequest id".
fn status_entry(name: &str, value: &str) -> Option<(Said, String)> {
    let (window, id) = value.rsplit_once("\nRequest ")?;
    let state = GrantState::parse(name.rsplit(" · ").next()?)?;
    let end = end_times(window).into_iter().next();
    let said = match (state, end) {
        (s, Some(end)) if s.is_open() || s == GrantState::ClosedEarly => Said::OpenUntil(end),
        (
            GrantState::Requested
            | GrantState::PendingAzure
            | GrantState::Confirming
            | GrantState::PendingApproval,
            _,
        ) => return None,
        (s, None) if s.is_open() => return None,
        _ => Said::Closed,
    };
    Some((said, id.to_owned()))
}

/// Close early's "Azure shows" lines: "22: open until <t:…>", "22: closed".
fn per_port(value: &str) -> Vec<(u16, Said)> {
    value
        .lines()
        .filter_map(|line| {
            let (port, rest) = line.split_once(": ")?;
            let port = port.trim().parse().ok()?;
            if rest.trim() == "closed" {
                return Some((port, Said::Closed));
            }
            Some((port, Said::OpenUntil(*end_times(rest).first()?)))
        })
        .collect()
}

fn same(a: DateTime<Utc>, b: DateTime<Utc>) -> bool {
    (a - b).abs() < SAME
}

/// One port of one request as Azure shows it.
struct Window<'a> {
    vm: &'a str,
    port: u16,
    source: &'a str,
    status: &'a str,
    end: Option<DateTime<Utc>>,
}

fn windows(requests: &[Value]) -> Vec<Window<'_>> {
    requests
        .iter()
        .flat_map(|r| r["virtualMachines"].as_array().into_iter().flatten())
        .flat_map(|vm| {
            let id = text_of(&vm["id"]);
            vm["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |p| Window {
                    vm: id,
                    port: p["number"]
                        .as_u64()
                        .and_then(|n| u16::try_from(n).ok())
                        .unwrap_or(0),
                    source: text_of(&p["allowedSourceAddressPrefix"]),
                    status: text_of(&p["status"]),
                    end: text_of(&p["endTimeUtc"]).parse().ok(),
                })
        })
        .collect()
}

/// Until when Azure keeps `port` of `vm` open for `source` at `now`.
fn open_until(
    requests: &[Value],
    vm: &str,
    port: u16,
    source: &str,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    windows(requests)
        .into_iter()
        .filter(|w| w.vm.eq_ignore_ascii_case(vm) && w.port == port && w.source == source)
        .filter(|w| w.status == "Initiated")
        .filter_map(|w| w.end)
        .filter(|end| *end > now)
        .max()
}

/// A window Drawbridge flagged as opened outside it (its audit event):
/// the bot does not speak for it, so a grant it shows closed may share its
/// port and source.
#[derive(Debug, Clone)]
pub struct Flagged {
    pub vm_ids: Vec<String>,
    pub sources: Vec<String>,
    pub end: DateTime<Utc>,
}

impl Flagged {
    /// From an `opened_outside_drawbridge` audit detail.
    pub fn from_detail(detail: &Value) -> Option<Self> {
        Some(Self {
            vm_ids: detail["vm_ids"]
                .as_array()?
                .iter()
                .filter_map(|v| Some(v.as_str()?.to_owned()))
                .collect(),
            sources: text_of(&detail["source"])
                .split(", ")
                .map(str::to_owned)
                .collect(),
            end: text_of(&detail["end"]).parse().ok()?,
        })
    }

    fn holds(&self, vm: &str, source: &str, end: DateTime<Utc>) -> bool {
        self.vm_ids.iter().any(|v| v.eq_ignore_ascii_case(vm))
            && self.sources.iter().any(|s| s == source)
            && same(self.end, end)
    }
}

/// Every way `claims` misstate Azure (empty: all true). `requests` holds
/// each grant policy's requests as the emulator shows them at `now`;
/// `flagged`, the windows flagged as opened outside Drawbridge.
pub fn violations(
    claims: &[Claim],
    grants: &[Grant],
    requests: &HashMap<String, Vec<Value>>,
    flagged: &[Flagged],
    now: DateTime<Utc>,
) -> Vec<String> {
    let by_id: HashMap<&str, &Grant> = grants.iter().map(|g| (g.request_id.as_str(), g)).collect();
    let mut out = Vec::new();
    for claim in claims {
        if let Some(problem) = invented_end(claim, &by_id, requests) {
            out.push(problem);
        }
    }
    for grant in grants {
        out.extend(newest_is_true(
            claims, grant, grants, requests, flagged, now,
        ));
    }
    out
}

/// An "open until T" that no window in Azure's history ends at.
fn invented_end(
    claim: &Claim,
    grants: &HashMap<&str, &Grant>,
    requests: &HashMap<String, Vec<Value>>,
) -> Option<String> {
    let Said::OpenUntil(end) = claim.said else {
        return None;
    };
    let grant = claim.request_id.as_deref().and_then(|id| grants.get(id));
    let real = match grant {
        Some(g) => windows(
            requests
                .get(&g.policy_id)
                .map(Vec::as_slice)
                .unwrap_or_default(),
        )
        .iter()
        .filter(|w| w.vm.eq_ignore_ascii_case(&g.vm_id))
        .filter(|w| {
            claim
                .port
                .map_or(g.ports.numbers().contains(&w.port), |p| p == w.port)
        })
        .filter(|w| claim.history || w.source == g.source.to_string())
        .any(|w| w.end.is_some_and(|e| same(e, end))),
        None => requests
            .values()
            .flat_map(|r| windows(r))
            .any(|w| w.end.is_some_and(|e| same(e, end))),
    };
    (!real).then(|| {
        format!(
            "{} shows {} open until {end}, and Azure never had a window ending then",
            claim.place,
            claim.request_id.as_deref().unwrap_or("a grant")
        )
    })
}

/// Whether another grant of Drawbridge from `grant`'s source holds `port`
/// of its VM at `now` (then Azure keeps the port open for that source): an
/// open one, or one closed early whose last minutes are still running.
pub fn held_by_another(grants: &[Grant], grant: &Grant, port: u16, now: DateTime<Utc>) -> bool {
    let holds = |g: &Grant| {
        g.state.is_open()
            || (g.state == GrantState::ClosedEarly && g.end_time.is_some_and(|end| end > now))
    };
    grants.iter().any(|g| {
        g.request_id != grant.request_id
            && holds(g)
            && g.vm_id.eq_ignore_ascii_case(&grant.vm_id)
            && g.source == grant.source
            && g.ports.numbers().contains(&port)
    })
}

/// Whether the member holds a newer open grant of theirs on the same VM,
/// ports and source that they were shown: asking again replaces one's own
/// grant, and the newer grant's card speaks for the port.
fn replaced_by_own(claims: &[Claim], grant: &Grant, grants: &[Grant]) -> bool {
    !grant.state.is_open()
        && grants.iter().any(|g| {
            g.request_id != grant.request_id
                && g.state.is_open()
                && g.user_id == grant.user_id
                && g.vm_id.eq_ignore_ascii_case(&grant.vm_id)
                && g.source == grant.source
                && grant
                    .ports
                    .numbers()
                    .iter()
                    .all(|p| g.ports.numbers().contains(p))
                && claims
                    .iter()
                    .any(|c| !c.history && c.request_id.as_deref() == Some(g.request_id.as_str()))
        })
}

/// Whether the newest member-facing message about `grant` is true now.
fn newest_is_true(
    claims: &[Claim],
    grant: &Grant,
    grants: &[Grant],
    requests: &HashMap<String, Vec<Value>>,
    flagged: &[Flagged],
    now: DateTime<Utc>,
) -> Vec<String> {
    let id = grant.request_id.as_str();
    let about: Vec<&Claim> = claims
        .iter()
        .filter(|c| !c.history && c.request_id.as_deref() == Some(id))
        .collect();
    let Some(newest) = about.iter().map(|c| c.shown_at).max() else {
        return Vec::new();
    };
    if replaced_by_own(claims, grant, grants) {
        return Vec::new();
    }
    let requests = requests
        .get(&grant.policy_id)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let source = grant.source.to_string();
    let held_by_another = |port: u16| held_by_another(grants, grant, port, now);
    let mut out = Vec::new();
    for claim in about.into_iter().filter(|c| c.shown_at == newest) {
        let ports = claim
            .port
            .map_or_else(|| grant.ports.numbers(), |p| vec![p]);
        for port in ports {
            let azure = open_until(requests, &grant.vm_id, port, &source, now);
            let true_now = match claim.said {
                Said::OpenUntil(end) if end > now => azure.is_some_and(|a| same(a, end)),
                _ => match azure {
                    None => true,
                    Some(end) => {
                        held_by_another(port)
                            || flagged.iter().any(|f| f.holds(&grant.vm_id, &source, end))
                    }
                },
            };
            if !true_now {
                out.push(format!(
                    "{} last told about grant {id} ({}): {:?}; Azure keeps port {port} open for {source} until {azure:?} (now {now})",
                    claim.place, grant.state, claim.said
                ));
            }
        }
    }
    out
}
