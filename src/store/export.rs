//! Audit export for `drawbridge audit export --format jsonl|csv`.
//!
//! Both formats carry every column needed to verify the chain elsewhere:
//! `seq, at, actor, action, target, outcome, detail, hash, prev_hash`.

use std::fmt;
use std::io::Write;
use std::str::FromStr;

use super::AuditRecord;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per line; `detail` is a JSON object.
    Jsonl,
    /// A header row, then one row per event; `detail` is a JSON string.
    Csv,
}

impl FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "jsonl" => Ok(Self::Jsonl),
            "csv" => Ok(Self::Csv),
            _ => Err(format!("`{s}` is not an export format: use jsonl or csv")),
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Jsonl => "jsonl",
            Self::Csv => "csv",
        })
    }
}

const CSV_HEADER: [&str; 9] = [
    "seq",
    "at",
    "actor",
    "action",
    "target",
    "outcome",
    "detail",
    "hash",
    "prev_hash",
];

/// Writes `records` to `out` in `format`.
///
/// # Errors
/// Any error writing to `out`.
pub fn write_audit<W: Write>(
    records: &[AuditRecord],
    format: Format,
    mut out: W,
) -> std::io::Result<()> {
    match format {
        Format::Jsonl => {
            for record in records {
                serde_json::to_writer(&mut out, &record.to_json())?;
                out.write_all(b"\n")?;
            }
            out.flush()
        }
        Format::Csv => {
            let mut writer = csv::Writer::from_writer(out);
            writer.write_record(CSV_HEADER)?;
            for r in records {
                let e = &r.event;
                writer.write_record([
                    r.seq.to_string().as_str(),
                    &e.at_text(),
                    &e.actor,
                    e.action.as_str(),
                    &e.target,
                    e.outcome.as_str(),
                    &e.detail.to_string(),
                    &r.hash,
                    &r.prev_hash,
                ])?;
            }
            writer.flush()
        }
    }
}
