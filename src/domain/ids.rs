//! Identifiers: Discord snowflakes and Drawbridge request ids.

use std::fmt;
use std::num::NonZeroU64;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// Not a Discord id (a positive 64-bit number).
    #[error("`{0}` is not a Discord id: ids are positive whole numbers such as 112233445566778899")]
    NotASnowflake(String),
    /// Not a request id.
    #[error("`{0}` is not a request id: request ids are 1 to 64 letters, digits or hyphens")]
    NotARequestId(String),
}

/// A Discord snowflake: a non-zero 64-bit id, written as a decimal string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Snowflake(NonZeroU64);

impl Snowflake {
    /// Parses a decimal snowflake (surrounding spaces and a `<@&…>` role
    /// mention or `<@…>` user mention wrapper are accepted).
    pub fn parse(input: &str) -> Result<Self, IdError> {
        let trimmed = input.trim();
        let inner = trimmed
            .strip_prefix("<@&")
            .or_else(|| trimmed.strip_prefix("<@!"))
            .or_else(|| trimmed.strip_prefix("<@"))
            .and_then(|s| s.strip_suffix('>'))
            .unwrap_or(trimmed);
        if inner.is_empty() || !inner.bytes().all(|b| b.is_ascii_digit()) {
            return Err(IdError::NotASnowflake(input.to_string()));
        }
        inner
            .parse::<u64>()
            .ok()
            .and_then(NonZeroU64::new)
            .map(Self)
            .ok_or_else(|| IdError::NotASnowflake(input.to_string()))
    }

    /// The numeric value.
    pub fn get(self) -> u64 {
        self.0.get()
    }

    /// From a number; `None` for zero.
    pub fn from_u64(value: u64) -> Option<Self> {
        NonZeroU64::new(value).map(Self)
    }
}

impl fmt::Display for Snowflake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for Snowflake {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for Snowflake {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Snowflake {
    /// Accepts a string or a number, as DESIGN.md promises for configuration.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(u64),
            Text(String),
        }
        let text = match Raw::deserialize(deserializer)? {
            Raw::Num(n) => n.to_string(),
            Raw::Text(s) => s,
        };
        Snowflake::parse(&text).map_err(serde::de::Error::custom)
    }
}

macro_rules! snowflake_newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Snowflake);

        impl $name {
            /// Parses a decimal id.
            pub fn parse(input: &str) -> Result<Self, IdError> {
                Snowflake::parse(input).map(Self)
            }
            /// The numeric value.
            pub fn get(self) -> u64 {
                self.0.get()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }
    };
}

snowflake_newtype!(
    /// A Discord role id.
    RoleId
);
snowflake_newtype!(
    /// A Discord user id.
    UserId
);

/// Identifies one access request end to end (the Discord interaction id, or
/// a generated id from the console and CLI). One request id never initiates
/// twice.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RequestId(String);

impl RequestId {
    /// Validates a request id: 1 to 64 ASCII letters, digits or hyphens.
    pub fn parse(input: &str) -> Result<Self, IdError> {
        let ok = !input.is_empty()
            && input.len() <= 64
            && input
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if ok {
            Ok(Self(input.to_string()))
        } else {
            Err(IdError::NotARequestId(input.to_string()))
        }
    }

    /// A fresh random request id.
    pub fn generate() -> Self {
        Self(uuid::Uuid::new_v4().simple().to_string())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for RequestId {
    type Error = IdError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<RequestId> for String {
    fn from(value: RequestId) -> Self {
        value.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snowflakes_accept_digits_and_mentions_only() {
        assert_eq!(Snowflake::parse("112233").unwrap().get(), 112233);
        assert_eq!(Snowflake::parse(" <@&42> ").unwrap().get(), 42);
        assert_eq!(Snowflake::parse("<@7>").unwrap().get(), 7);
        for bad in ["", "0", "-1", "12a", "99999999999999999999", "<@&>", "1 2"] {
            let err = Snowflake::parse(bad).unwrap_err();
            assert!(err.to_string().contains("is not a Discord id"), "{bad}");
        }
    }

    #[test]
    fn snowflakes_deserialize_from_strings_and_numbers() {
        let from_num: RoleId = serde_json::from_str("111").unwrap();
        let from_str: RoleId = serde_json::from_str("\"111\"").unwrap();
        assert_eq!(from_num, from_str);
        assert!(serde_json::from_str::<RoleId>("\"abc\"").is_err());
        assert_eq!(serde_json::to_string(&from_num).unwrap(), "\"111\"");
    }

    #[test]
    fn request_ids_are_bounded_and_plain() {
        assert!(RequestId::parse("1234-abcd").is_ok());
        assert!(RequestId::parse("").is_err());
        assert!(RequestId::parse("a/b").is_err());
        assert!(RequestId::parse(&"a".repeat(65)).is_err());
        assert_eq!(RequestId::generate().as_str().len(), 32);
    }
}
