//! What Azure says about a grant's ports, read from a policy's request
//! history (pure). Drawbridge's word about a port ("open until 14:30",
//! "closed") is only ever what this finds.
//!
//! A grant's own request in Azure's history is the one for its VM and port
//! with its source and its end (Azure's `endTimeUtc`, which the grant
//! records): Azure gives requests no id, and the justification is free text
//! anyone can type. So the justification never makes a request the grant's;
//! but one that names another Drawbridge request is not this grant's: two
//! members behind one address (an office's NAT) asking for the same
//! duration at once hold windows with the same source and end. Azure's own status of that request then says whether the
//! grant is open, was superseded by a newer request (`NewerRequestInitiated`)
//! or ended (`Expired`, `UserRequested`).

use chrono::{DateTime, TimeDelta, Utc};

use super::ids::RequestId;
use super::jit_policy::{JitRequestRecord, RequestedPort};

/// How far apart two end times may be and still be the same: we store
/// microseconds, Azure writes 100 ns ticks.
const SAME_END: TimeDelta = TimeDelta::seconds(1);

/// The window a grant holds on a VM, as Drawbridge recorded it.
#[derive(Debug, Clone, Copy)]
pub struct HeldWindow<'a> {
    /// The grant's request id.
    pub request_id: &'a RequestId,
    /// The VM's resource id.
    pub vm_id: &'a str,
    /// The grant's source prefix as sent to Azure (`*`, an address, a CIDR).
    pub source: &'a str,
    /// Azure's end of the grant's newest request.
    pub end: DateTime<Utc>,
}

/// Who holds a port after a newer request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// Azure's `requestor` of the newer request.
    pub requestor: Option<String>,
    /// Its source.
    pub source: String,
    /// Its end.
    pub end: DateTime<Utc>,
    /// When it started.
    pub start: Option<DateTime<Utc>>,
}

/// What Azure shows for one port of a grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortView {
    /// The grant's request is open until `end`.
    Open { end: DateTime<Utc> },
    /// A newer request replaced the grant's (`NewerRequestInitiated`);
    /// `by` is the newest request on the port, if Azure still shows it.
    Superseded { by: Option<Holder> },
    /// Azure ended the grant's request for `reason` (`Expired`, ...).
    Ended { reason: String },
    /// Azure shows no request of the grant for the port.
    Unseen,
}

/// What Azure shows for one port: its number and the view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortTruth {
    pub number: u16,
    pub view: PortView,
}

/// What Azure shows for each of `ports` of `held` at `now`.
pub fn grant_ports(
    records: &[JitRequestRecord],
    held: HeldWindow<'_>,
    ports: &[u16],
    now: DateTime<Utc>,
) -> Vec<PortTruth> {
    ports
        .iter()
        .map(|&number| PortTruth {
            number,
            view: port_view(records, held, number, now),
        })
        .collect()
}

fn port_view(
    records: &[JitRequestRecord],
    held: HeldWindow<'_>,
    number: u16,
    now: DateTime<Utc>,
) -> PortView {
    let on_port = requests_on(records, held.vm_id, number);
    let Some((_, ours)) = on_port.iter().rev().find(|(r, p)| is_held(r, p, held)) else {
        return PortView::Unseen;
    };
    if ours.is_open_at(now) {
        return PortView::Open { end: ours.end };
    }
    let reason = if ours.status.eq_ignore_ascii_case("Revoked") {
        ours.status_reason
            .clone()
            .unwrap_or_else(|| ours.status.clone())
    } else {
        // Still `Initiated` past its end: Azure has not caught up.
        "Expired".to_owned()
    };
    if reason.eq_ignore_ascii_case("NewerRequestInitiated") {
        let by = on_port.last().map(|(r, p)| Holder {
            requestor: r.requestor.clone(),
            source: p.sources.join(", "),
            end: p.end,
            start: r.start,
        });
        return PortView::Superseded { by };
    }
    PortView::Ended { reason }
}

/// Every request for `vm_id`'s `number`, oldest first (by start, then by
/// position in Azure's history).
fn requests_on<'r>(
    records: &'r [JitRequestRecord],
    vm_id: &str,
    number: u16,
) -> Vec<(&'r JitRequestRecord, &'r RequestedPort)> {
    let mut found: Vec<_> = records
        .iter()
        .enumerate()
        .flat_map(|(i, r)| {
            r.vms
                .iter()
                .filter(|vm| vm.vm_id.eq_ignore_ascii_case(vm_id))
                .flat_map(|vm| vm.ports.iter())
                .filter(|p| p.number == number)
                .map(move |p| ((r.start, i), (r, p)))
        })
        .collect();
    found.sort_by_key(|(key, _)| *key);
    found.into_iter().map(|(_, rp)| rp).collect()
}

fn is_held(record: &JitRequestRecord, port: &RequestedPort, held: HeldWindow<'_>) -> bool {
    if record
        .drawbridge_id()
        .is_some_and(|id| id != *held.request_id)
    {
        return false;
    }
    let same_source = port.sources.len() == 1 && port.sources[0].eq_ignore_ascii_case(held.source);
    same_source && (port.end - held.end).abs() <= SAME_END
}

/// The latest end of any request open at `now` on `vm_id`'s `number` for
/// `source`: when the port really closes for that source. `None` if closed.
pub fn open_until(
    records: &[JitRequestRecord],
    vm_id: &str,
    number: u16,
    source: &str,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    requests_on(records, vm_id, number)
        .into_iter()
        .filter(|(_, p)| p.is_open_at(now))
        .filter(|(_, p)| p.sources.iter().any(|s| s.eq_ignore_ascii_case(source)))
        .map(|(_, p)| p.end)
        .max()
}

/// How Azure ended a grant, summed up over its ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    /// A newer request replaced it on some port.
    pub superseded: bool,
    /// When it ended, as near as Azure shows (the newer request's start).
    pub at: DateTime<Utc>,
    /// Azure's `statusReason` (`NewerRequestInitiated`, `Expired`, ...).
    pub reason: String,
    /// The newer request, if one replaced it.
    pub by: Option<Holder>,
    /// One sentence for the member.
    pub sentence: String,
}

/// Sums up `ports` of a grant Azure shows ended; `otherwise` is the time
/// when Azure shows none.
pub fn ended(ports: &[PortTruth], otherwise: DateTime<Utc>) -> Ended {
    let by = ports.iter().find_map(|p| match &p.view {
        PortView::Superseded { by } => Some(by.clone()),
        _ => None,
    });
    if let Some(by) = by {
        let sentence = match &by {
            Some(h) => format!(
                "Azure shows a newer request for this port, from {}, replaced this access: Azure keeps one window per port.",
                h.source
            ),
            None => "Azure shows a newer request for this port replaced this access.".to_owned(),
        };
        return Ended {
            superseded: true,
            at: by
                .as_ref()
                .and_then(|h| h.start)
                .filter(|s| *s < otherwise)
                .unwrap_or(otherwise),
            reason: "NewerRequestInitiated".to_owned(),
            by,
            sentence,
        };
    }
    let reason = ports
        .iter()
        .find_map(|p| match &p.view {
            PortView::Ended { reason } => Some(reason.clone()),
            _ => None,
        })
        .unwrap_or_else(|| "no open request".to_owned());
    Ended {
        superseded: false,
        at: otherwise,
        sentence: format!("Azure shows this access already ended ({reason})."),
        reason,
        by: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::jit_policy::{JUSTIFICATION_MARKER, RequestedVm};

    const VM: &str =
        "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/web-01";

    fn t(min: i64) -> DateTime<Utc> {
        "2026-03-02T09:00:00Z".parse::<DateTime<Utc>>().unwrap() + TimeDelta::minutes(min)
    }

    fn request(start: i64, source: &str, end: i64, status: &str, reason: &str) -> JitRequestRecord {
        JitRequestRecord {
            policy_id: "p".into(),
            start: Some(t(start)),
            requestor: Some("bot".into()),
            justification: None,
            vms: vec![RequestedVm {
                vm_id: VM.into(),
                display_name: "rg/web-01".into(),
                ports: vec![RequestedPort {
                    number: 22,
                    status: status.into(),
                    status_reason: Some(reason.into()),
                    end: t(end),
                    sources: vec![source.into()],
                }],
            }],
        }
    }

    fn held(request_id: &RequestId, end: i64) -> HeldWindow<'_> {
        HeldWindow {
            request_id,
            vm_id: VM,
            source: "203.0.113.7",
            end: t(end),
        }
    }

    fn view(records: &[JitRequestRecord], end: i64, now: i64) -> PortView {
        let id = RequestId::parse("1300").unwrap();
        grant_ports(records, held(&id, end), &[22], t(now))
            .remove(0)
            .view
    }

    fn naming(id: &str, mut record: JitRequestRecord) -> JitRequestRecord {
        record.justification = Some(format!("{JUSTIFICATION_MARKER}{id} by Discord user 6"));
        record
    }

    #[test]
    fn a_request_naming_another_grant_is_not_this_ones() {
        // Two members behind one address, the same duration at once: the
        // same source and end. The newer one superseded ours.
        let records = [
            naming(
                "1300",
                request(0, "203.0.113.7", 60, "Revoked", "NewerRequestInitiated"),
            ),
            naming(
                "1301",
                request(0, "203.0.113.7", 60, "Initiated", "UserRequested"),
            ),
        ];
        assert!(
            matches!(view(&records, 60, 10), PortView::Superseded { .. }),
            "{:?}",
            view(&records, 60, 10)
        );
        let ours = [naming(
            "1300",
            request(0, "203.0.113.7", 60, "Initiated", "UserRequested"),
        )];
        assert_eq!(view(&ours, 60, 10), PortView::Open { end: t(60) });
    }

    #[test]
    fn the_grants_own_request_decides() {
        let open = [request(0, "203.0.113.7", 60, "Initiated", "UserRequested")];
        assert_eq!(view(&open, 60, 10), PortView::Open { end: t(60) });
        assert_eq!(
            view(&open, 60, 61),
            PortView::Ended {
                reason: "Expired".into()
            },
            "past its end, whatever the status says"
        );
        assert_eq!(view(&open, 30, 10), PortView::Unseen, "another end");
    }

    #[test]
    fn a_newer_request_names_who_holds_the_port() {
        let records = [
            request(0, "203.0.113.7", 60, "Revoked", "NewerRequestInitiated"),
            request(5, "198.51.100.20", 65, "Initiated", "UserRequested"),
        ];
        let PortView::Superseded { by: Some(by) } = view(&records, 60, 10) else {
            panic!("{:?}", view(&records, 60, 10));
        };
        assert_eq!((by.source.as_str(), by.end), ("198.51.100.20", t(65)));
    }

    #[test]
    fn open_until_is_the_latest_open_window_for_the_source() {
        let records = [
            request(0, "203.0.113.7", 60, "Initiated", "UserRequested"),
            request(5, "203.0.113.7", 10, "Initiated", "UserRequested"),
            request(6, "198.51.100.20", 90, "Initiated", "UserRequested"),
        ];
        assert_eq!(
            open_until(&records, VM, 22, "203.0.113.7", t(6)),
            Some(t(60)),
            "an old window Azure did not revoke still counts"
        );
        assert_eq!(open_until(&records, VM, 22, "203.0.113.7", t(61)), None);
    }
}
