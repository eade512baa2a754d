//! The request grammar: one `/jit` line, or the same fields from slash-command
//! options, becomes one [`AccessRequest`].
//!
//! ```text
//! /jit <port> <vm> <duration> [reason:<word>|reason:"<text>"] [from:<ip-or-cidr>]
//! ```

use std::fmt;

use super::duration::{AccessDuration, DurationError};
use super::port::{PortAliases, PortSpec, PortSpecError};
use super::source::{SourceError, SourcePrefix};
use super::vm::{VmRef, VmRefError};

/// The longest line accepted.
pub const MAX_LINE_CHARS: usize = 1000;
/// The longest reason accepted.
pub const MAX_REASON_CHARS: usize = 200;

const USAGE: &str =
    "usage: /jit <port> <vm> <duration> [reason:\"…\"] [from:<ip>], for example /jit ssh web-01 2h";

/// Why a reason was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReasonError {
    /// Blank.
    #[error("the reason is empty: say why you need access, or leave the reason out")]
    Empty,
    /// Too long.
    #[error("the reason is too long: at most {MAX_REASON_CHARS} characters")]
    TooLong,
    /// Holds control characters.
    #[error("the reason holds control characters: use plain text on one line")]
    ControlCharacters,
}

/// Why the engineer needs access: plain text on one line, at most 200 characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reason(String);

impl Reason {
    /// Validates a reason (trimmed).
    pub fn parse(input: &str) -> Result<Self, ReasonError> {
        let text = input.trim();
        if text.is_empty() {
            Err(ReasonError::Empty)
        } else if text.chars().count() > MAX_REASON_CHARS {
            Err(ReasonError::TooLong)
        } else if text.chars().any(char::is_control) {
            Err(ReasonError::ControlCharacters)
        } else {
            Ok(Self(text.to_string()))
        }
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a request line was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestParseError {
    /// Nothing was typed.
    #[error("nothing to do: {USAGE}")]
    Empty,
    /// Longer than [`MAX_LINE_CHARS`].
    #[error("the request is too long: at most {MAX_LINE_CHARS} characters")]
    TooLong,
    /// Another command than `/jit`.
    #[error("`{0}` is not /jit: {USAGE}")]
    NotJit(String),
    /// A quote was opened and not closed.
    #[error("a quote is not closed: put the reason in a pair of double quotes")]
    UnterminatedQuote,
    /// Fewer than three positional arguments.
    #[error("the {0} is missing: {USAGE}")]
    Missing(&'static str),
    /// A fourth positional argument.
    #[error("unexpected `{0}`: options after the duration are written reason:\"…\" or from:<ip>")]
    Unexpected(String),
    /// `name:` that is not an option.
    #[error("`{0}` is not an option: the options are reason and from")]
    UnknownOption(String),
    /// An option given twice.
    #[error("the option {0} is given twice")]
    DuplicateOption(&'static str),
    /// The port spec is wrong.
    #[error(transparent)]
    Port(#[from] PortSpecError),
    /// The VM reference is wrong.
    #[error(transparent)]
    Vm(#[from] VmRefError),
    /// The duration is wrong.
    #[error(transparent)]
    Duration(#[from] DurationError),
    /// The source is wrong.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The reason is wrong.
    #[error(transparent)]
    Reason(#[from] ReasonError),
}

/// One access request: which ports on which VM, for how long, why and from where.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AccessRequest {
    /// The ports to open.
    pub ports: PortSpec,
    /// The VM, as named by the user.
    pub vm: VmRef,
    /// How long.
    pub duration: AccessDuration,
    /// Why, if given.
    pub reason: Option<Reason>,
    /// From where, if given (else the saved IP or a mapping's default).
    pub source: Option<SourcePrefix>,
}

impl AccessRequest {
    /// Builds a request from the separate option values a slash command
    /// delivers, with the same validation as the line grammar.
    pub fn from_options(
        port: &str,
        vm: &str,
        duration: &str,
        reason: Option<&str>,
        from: Option<&str>,
        aliases: &PortAliases,
    ) -> Result<Self, RequestParseError> {
        Ok(Self {
            ports: PortSpec::parse(port, aliases)?,
            vm: VmRef::parse(vm)?,
            duration: AccessDuration::parse(duration)?,
            reason: reason.map(Reason::parse).transpose()?,
            source: from.map(SourcePrefix::parse).transpose()?,
        })
    }

    /// Parses a whole line such as `/jit rdp rg-prod/win-07 45m reason:"patch
    /// tuesday" from:203.0.113.7`. The leading `/jit` may be left out.
    pub fn parse_line(line: &str, aliases: &PortAliases) -> Result<Self, RequestParseError> {
        if line.chars().count() > MAX_LINE_CHARS {
            return Err(RequestParseError::TooLong);
        }
        let tokens = tokenize(line)?;
        let mut tokens = tokens.as_slice();
        match tokens.first() {
            None => return Err(RequestParseError::Empty),
            Some(Token::Word(w)) if w.eq_ignore_ascii_case("/jit") => tokens = &tokens[1..],
            Some(Token::Word(w)) if w.starts_with('/') => {
                return Err(RequestParseError::NotJit(w.chars().take(40).collect()));
            }
            _ => {}
        }
        let mut positional: Vec<&str> = Vec::new();
        let mut reason: Option<&str> = None;
        let mut from: Option<&str> = None;
        for token in tokens {
            match token {
                Token::Word(w) => {
                    if positional.len() == 3 {
                        return Err(RequestParseError::Unexpected(w.chars().take(40).collect()));
                    }
                    positional.push(w);
                }
                Token::Option(name, value) => {
                    let (slot, key) = match name.to_ascii_lowercase().as_str() {
                        "reason" => (&mut reason, "reason"),
                        "from" => (&mut from, "from"),
                        _ => {
                            return Err(RequestParseError::UnknownOption(
                                name.chars().take(40).collect(),
                            ));
                        }
                    };
                    if slot.replace(value).is_some() {
                        return Err(RequestParseError::DuplicateOption(key));
                    }
                }
            }
        }
        let [port, vm, duration] = match positional.as_slice() {
            [] => return Err(RequestParseError::Missing("port")),
            [_] => return Err(RequestParseError::Missing("VM")),
            [_, _] => return Err(RequestParseError::Missing("duration")),
            [p, v, d] => [*p, *v, *d],
            _ => unreachable!("at most three positionals are collected"),
        };
        Self::from_options(port, vm, duration, reason, from, aliases)
    }
}

/// The canonical line; [`AccessRequest::parse_line`] gives back the same value.
impl fmt::Display for AccessRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "/jit {} {} {}", self.ports, self.vm, self.duration)?;
        if let Some(reason) = &self.reason {
            let escaped = reason.as_str().replace('\\', "\\\\").replace('"', "\\\"");
            write!(f, " reason:\"{escaped}\"")?;
        }
        if let Some(source) = &self.source {
            write!(f, " from:{source}")?;
        }
        Ok(())
    }
}

#[derive(Debug, PartialEq)]
enum Token {
    Word(String),
    Option(String, String),
}

/// Splits on whitespace; `name:value` and `name:"quoted value"` become options.
/// Inside quotes, `\"` and `\\` escape.
fn tokenize(line: &str) -> Result<Vec<Token>, RequestParseError> {
    let mut tokens = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(tokens);
        }
        let mut word = String::new();
        let mut quoted: Option<String> = None;
        while let Some(&c) = chars.peek() {
            if c.is_whitespace() {
                break;
            }
            chars.next();
            if c == '"' {
                let mut value = String::new();
                loop {
                    match chars.next() {
                        None => return Err(RequestParseError::UnterminatedQuote),
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(e @ ('"' | '\\')) => value.push(e),
                            Some(other) => {
                                value.push('\\');
                                value.push(other);
                            }
                            None => return Err(RequestParseError::UnterminatedQuote),
                        },
                        Some(other) => value.push(other),
                    }
                }
                quoted.get_or_insert_with(String::new).push_str(&value);
            } else if quoted.is_some() {
                return Err(RequestParseError::Unexpected(c.to_string()));
            } else {
                word.push(c);
            }
        }
        let token = match (word.split_once(':'), quoted) {
            (Some((name, "")), Some(value)) if is_option_name(name) => {
                Token::Option(name.to_string(), value)
            }
            (Some((name, value)), None) if is_option_name(name) => {
                Token::Option(name.to_string(), value.to_string())
            }
            (_, Some(_)) => return Err(RequestParseError::Unexpected(word)),
            (_, None) => Token::Word(word),
        };
        tokens.push(token);
    }
}

fn is_option_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphabetic())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(line: &str) -> Result<AccessRequest, RequestParseError> {
        AccessRequest::parse_line(line, &PortAliases::default())
    }

    #[test]
    fn the_readme_examples_parse() {
        let r = parse("/jit ssh myVM 2h").unwrap();
        assert_eq!(r.ports.numbers(), vec![22]);
        assert_eq!(r.vm.name.as_str(), "myVM");
        assert_eq!(r.duration.minutes(), 120);
        assert_eq!((r.reason, r.source), (None, None));

        let r = parse(r#"/jit rdp rg-prod/win-07 45m reason:"patch tuesday" from:203.0.113.7"#)
            .unwrap();
        assert_eq!(r.ports.numbers(), vec![3389]);
        assert_eq!(r.vm.resource_group.unwrap().as_str(), "rg-prod");
        assert_eq!(r.duration.minutes(), 45);
        assert_eq!(r.reason.unwrap().as_str(), "patch tuesday");
        assert_eq!(r.source.unwrap().to_string(), "203.0.113.7");

        let r = parse("ssh,8443 web-01 1h30m from:10.0.0.0/8 reason:deploy").unwrap();
        assert_eq!(r.ports.numbers(), vec![22, 8443]);
        assert_eq!(r.reason.unwrap().as_str(), "deploy");
    }

    #[test]
    fn every_malformed_line_gets_a_specific_message() {
        use RequestParseError as E;
        type Check = fn(&E) -> bool;
        let cases: &[(&str, Check)] = &[
            ("", |e| matches!(e, E::Empty)),
            ("   ", |e| matches!(e, E::Empty)),
            ("/jit", |e| matches!(e, E::Missing("port"))),
            ("/jit ssh", |e| matches!(e, E::Missing("VM"))),
            ("/jit ssh web-01", |e| matches!(e, E::Missing("duration"))),
            ("/jit ssh web-01 2h extra", |e| {
                matches!(e, E::Unexpected(_))
            }),
            ("/jit-status", |e| matches!(e, E::NotJit(_))),
            ("/jit ssh web-01 2h reason:\"open", |e| {
                matches!(e, E::UnterminatedQuote)
            }),
            ("/jit ssh web-01 2h why:x", |e| {
                matches!(e, E::UnknownOption(_))
            }),
            ("/jit ssh web-01 2h from:1.2.3.4 from:1.2.3.5", |e| {
                matches!(e, E::DuplicateOption("from"))
            }),
            ("/jit telnet web-01 2h", |e| matches!(e, E::Port(_))),
            ("/jit ssh ../etc 2h", |e| matches!(e, E::Vm(_))),
            ("/jit ssh web-01 2d", |e| matches!(e, E::Duration(_))),
            ("/jit ssh web-01 2h from:nowhere", |e| {
                matches!(e, E::Source(_))
            }),
            ("/jit ssh web-01 2h reason:\"  \"", |e| {
                matches!(e, E::Reason(_))
            }),
            ("/jit ssh web-01 2h \"quoted\"", |e| {
                matches!(e, E::Unexpected(_))
            }),
        ];
        for (line, check) in cases {
            let err = parse(line).unwrap_err();
            assert!(check(&err), "{line}: {err:?}");
            assert!(!err.to_string().is_empty());
        }
        assert_eq!(
            parse("/jit ssh").unwrap_err().to_string(),
            "the VM is missing: usage: /jit <port> <vm> <duration> [reason:\"…\"] [from:<ip>], for example /jit ssh web-01 2h"
        );
        assert!(matches!(parse(&"x".repeat(1001)), Err(E::TooLong)));
    }

    #[test]
    fn reasons_keep_quotes_and_backslashes_through_a_round_trip() {
        let r = parse(r#"/jit ssh web-01 2h reason:"say \"hi\" C:\\temp""#).unwrap();
        assert_eq!(r.reason.as_ref().unwrap().as_str(), r#"say "hi" C:\temp"#);
        assert_eq!(parse(&r.to_string()).unwrap(), r);
    }

    #[test]
    fn slash_command_options_use_the_same_validation() {
        let aliases = PortAliases::default();
        let r =
            AccessRequest::from_options("ssh", "web-01", "2h", Some("x"), None, &aliases).unwrap();
        assert_eq!(r, parse("/jit ssh web-01 2h reason:x").unwrap());
        assert!(
            AccessRequest::from_options("ssh", "web-01", "2h", Some(""), None, &aliases).is_err()
        );
    }

    fn arb_request() -> impl Strategy<Value = AccessRequest> {
        let ports = prop::collection::btree_set(1u16..=65535, 1..4)
            .prop_map(|s| PortSpec::from_numbers(s).unwrap());
        let name = "[a-zA-Z0-9][a-zA-Z0-9._-]{0,20}[a-zA-Z0-9_]";
        let vm =
            (proptest::option::of("[a-z][a-z0-9()_.-]{0,10}[a-z]"), name).prop_map(|(rg, name)| {
                VmRef::parse(&match rg {
                    Some(rg) => format!("{rg}/{name}"),
                    None => name,
                })
                .unwrap()
            });
        let duration = (5u32..=1440).prop_map(|m| AccessDuration::from_minutes(m).unwrap());
        let reason = proptest::option::of(
            "[ -~]{1,60}".prop_filter_map("blank", |s| Reason::parse(&s).ok()),
        );
        let source = proptest::option::of(prop_oneof![
            Just(SourcePrefix::Any),
            any::<[u8; 4]>()
                .prop_map(
                    |b| SourcePrefix::parse(&std::net::Ipv4Addr::from(b).to_string()).unwrap()
                ),
        ]);
        (ports, vm, duration, reason, source).prop_map(|(ports, vm, duration, reason, source)| {
            AccessRequest {
                ports,
                vm,
                duration,
                reason,
                source,
            }
        })
    }

    proptest! {
        #[test]
        fn no_input_makes_the_parser_panic(line in ".{0,200}") {
            let _ = parse(&line);
        }

        #[test]
        fn no_jit_shaped_input_makes_the_parser_panic(
            port in "[a-z0-9,]{0,12}", vm in "[ -~]{0,30}", dur in "[0-9a-zA-Z]{0,8}", tail in "[ -~]{0,40}"
        ) {
            let _ = parse(&format!("/jit {port} {vm} {dur} {tail}"));
        }

        #[test]
        fn formatting_then_parsing_gives_the_same_request(request in arb_request()) {
            let line = request.to_string();
            prop_assert_eq!(parse(&line), Ok(request));
        }
    }
}
