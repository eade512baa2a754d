#![allow(dead_code)] // the load harness and each bench use different parts
//! A process's memory and CPU time, read from `/proc` (Linux): for the load
//! harness (`self`) and the benches that run the binary as a child process.

use std::fmt::Display;
use std::time::Duration;

/// `/proc/<pid>/stat` counts CPU time in USER_HZ ticks, which Linux fixes
/// at 100 a second for user space whatever the kernel's own tick.
const TICK: Duration = Duration::from_millis(10);

/// A `/proc/<pid>/status` field in KiB (`VmRSS`, `VmHWM`); `pid` may be
/// `self`.
pub fn status_kib(pid: impl Display, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// User plus system CPU time of the process so far, all its threads
/// (ended ones too), to 10 ms: `/proc/<pid>/stat` fields 14 and 15.
pub fn cpu_time(pid: impl Display) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 2, the command, may hold spaces: count from its closing `)`.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let user: u32 = fields.next()?.parse().ok()?;
    let system: u32 = fields.next()?.parse().ok()?;
    Some(TICK * (user + system))
}
