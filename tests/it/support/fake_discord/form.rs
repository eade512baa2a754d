//! Files sent as Discord takes them ("Uploading Files"): a `multipart/form-data` body with a
//! `payload_json` part (the JSON body) and one `files[n]` part per file, each named by an entry
//! `{id: n, filename}` in the payload's `attachments`.
//!
//! Strict as Discord is: a file part without its `attachments` entry, a file over the guild's
//! `attachment_size_limit`, more than [`MAX_FILES`] files, a part that is neither `payload_json`
//! nor `files[n]`, a file part without a file name, or a body that is not well-formed multipart
//! is refused and nothing is posted.

use serde_json::{Value, json};

/// Files per message, at most.
pub const MAX_FILES: usize = 10;

/// One file part as received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upload {
    /// The `n` of `files[n]`.
    pub index: u64,
    pub filename: String,
    pub content_type: Option<String>,
    pub data: Vec<u8>,
}

/// Why a body was refused: the status, Discord's code and message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub code: u64,
    pub message: String,
}

impl Refusal {
    fn invalid(message: impl Into<String>) -> Self {
        Self {
            status: 400,
            code: 50035,
            message: format!("Invalid Form Body: {}", message.into()),
        }
    }
}

/// The boundary of a `multipart/form-data` content type, `None` for any other type.
pub fn boundary(content_type: &str) -> Option<String> {
    let mut parts = content_type.split(';').map(str::trim);
    if !parts.next()?.eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    parts
        .find_map(|p| p.strip_prefix("boundary="))
        .map(|b| b.trim_matches('"').to_owned())
}

/// The JSON payload and the files of a multipart body, checked against Discord's rules.
pub fn parse(
    body: &[u8],
    boundary: &str,
    size_limit: usize,
) -> Result<(Value, Vec<Upload>), Refusal> {
    let mut payload = None;
    let mut files: Vec<Upload> = Vec::new();
    for part in split(body, boundary)? {
        let (headers, data) = part_headers(part)?;
        let name = headers
            .name
            .ok_or_else(|| Refusal::invalid("a part has no name"))?;
        if name == "payload_json" {
            let value: Value = serde_json::from_slice(data)
                .map_err(|_| Refusal::invalid("payload_json is not JSON"))?;
            payload = Some(value);
            continue;
        }
        let index = name
            .strip_prefix("files[")
            .and_then(|n| n.strip_suffix(']'))
            .and_then(|n| n.parse::<u64>().ok())
            .ok_or_else(|| Refusal::invalid(format!("unexpected form field `{name}`")))?;
        let filename = headers
            .filename
            .filter(|f| !f.is_empty())
            .ok_or_else(|| Refusal::invalid(format!("{name} has no filename")))?;
        if files.iter().any(|f| f.index == index) {
            return Err(Refusal::invalid(format!("{name} appears twice")));
        }
        if data.len() > size_limit {
            return Err(Refusal {
                status: 413,
                code: 40005,
                message: "Request entity too large".into(),
            });
        }
        files.push(Upload {
            index,
            filename,
            content_type: headers.content_type,
            data: data.to_vec(),
        });
    }
    if files.len() > MAX_FILES {
        return Err(Refusal::invalid(format!(
            "files: must be {MAX_FILES} or fewer in length"
        )));
    }
    let payload = payload.unwrap_or(Value::Null);
    let entries = attachment_ids(&payload);
    if let Some(file) = files.iter().find(|f| !entries.contains(&f.index)) {
        return Err(Refusal::invalid(format!(
            "files[{}] has no entry in attachments",
            file.index
        )));
    }
    Ok((payload, files))
}

/// The ids of a payload's `attachments` entries (numbers or strings).
pub fn attachment_ids(payload: &Value) -> Vec<u64> {
    payload["attachments"]
        .as_array()
        .map(|list| list.iter().filter_map(|a| id_of(&a["id"])).collect())
        .unwrap_or_default()
}

fn id_of(value: &Value) -> Option<u64> {
    value.as_u64().or_else(|| value.as_str()?.parse().ok())
}

/// Sets `message.attachments` from a create/edit `body`: each entry is a file of this request
/// (`uploaded`, by part index) or an attachment the message already has (kept). No
/// `attachments` in the body keeps the message's files as they are.
pub fn apply_attachments(
    message: &mut Value,
    body: &Value,
    uploaded: &[(u64, Value)],
) -> Result<(), String> {
    let Some(entries) = body.get("attachments").and_then(Value::as_array) else {
        return Ok(());
    };
    let existing = message["attachments"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut list = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let id = id_of(&entry["id"]).ok_or(format!("attachments[{i}].id is missing"))?;
        let found = uploaded
            .iter()
            .find(|(index, _)| *index == id)
            .map(|(_, a)| a.clone())
            .or_else(|| {
                existing
                    .iter()
                    .find(|a| id_of(&a["id"]) == Some(id))
                    .cloned()
            });
        let Some(mut attachment) = found else {
            return Err(format!(
                "attachments[{i}].id {id} is neither a file of this request nor one of the message's"
            ));
        };
        if let Some(description) = entry["description"].as_str() {
            attachment["description"] = json!(description);
        }
        list.push(attachment);
    }
    message["attachments"] = Value::Array(list);
    Ok(())
}

struct PartHeaders {
    name: Option<String>,
    filename: Option<String>,
    content_type: Option<String>,
}

/// The parts between `--boundary` lines; the body must end with `--boundary--`.
fn split<'a>(body: &'a [u8], boundary: &str) -> Result<Vec<&'a [u8]>, Refusal> {
    let delimiter = format!("--{boundary}");
    let delimiter = delimiter.as_bytes();
    let malformed = || Refusal::invalid("malformed multipart body");
    let mut rest = body.strip_prefix(delimiter).ok_or_else(malformed)?;
    let mut parts = Vec::new();
    loop {
        if rest.starts_with(b"--") {
            return Ok(parts);
        }
        rest = rest.strip_prefix(b"\r\n").ok_or_else(malformed)?;
        let mut needle = b"\r\n".to_vec();
        needle.extend_from_slice(delimiter);
        let end = find(rest, &needle).ok_or_else(malformed)?;
        parts.push(&rest[..end]);
        rest = &rest[end + needle.len()..];
    }
}

fn part_headers(part: &[u8]) -> Result<(PartHeaders, &[u8]), Refusal> {
    let end = find(part, b"\r\n\r\n").ok_or_else(|| Refusal::invalid("a part has no headers"))?;
    let head = String::from_utf8_lossy(&part[..end]);
    let mut headers = PartHeaders {
        name: None,
        filename: None,
        content_type: None,
    };
    for line in head.split("\r\n") {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if key.eq_ignore_ascii_case("content-disposition") {
            for param in value.split(';').map(str::trim).skip(1) {
                if let Some((k, v)) = param.split_once('=') {
                    let v = v.trim_matches('"').to_owned();
                    match k {
                        "name" => headers.name = Some(v),
                        "filename" => headers.filename = Some(v),
                        _ => {}
                    }
                }
            }
        } else if key.eq_ignore_ascii_case("content-type") {
            headers.content_type = Some(value.to_owned());
        }
    }
    Ok((headers, &part[end + 4..]))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
