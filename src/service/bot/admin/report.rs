//! `/jit-admin report`: the weekly report, now, in the audit channel; the
//! admin gets its summary.

use super::notice;
use crate::chat::{ChatMessage, Tone};
use crate::interactions::Invocation;
use crate::service::Service;
use crate::service::admin::AdminError;

pub(super) async fn run(s: &Service, who: &Invocation) -> Result<ChatMessage, AdminError> {
    let posted = s.report_now(who).await?;
    Ok(notice(
        "Report posted",
        Tone::Success,
        format!(
            "The report (PNG and CSV) is on its way to <#{}>.\n{}",
            posted.channel,
            posted.week.text()
        ),
    ))
}
