//! Durations written as `500ms`, `5s`, `1m`, `1h30m`, `7d`.

use std::borrow::Cow;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, de};

/// A non-negative duration with a unit, as in `5s` or `1h30m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    /// Whole milliseconds.
    pub fn as_millis(&self) -> u128 {
        self.0.as_millis()
    }

    /// Whether the duration is zero.
    pub fn is_zero(&self) -> bool {
        self.0.is_zero()
    }
}

const UNITS: [(&str, u64); 5] = [
    ("ms", 1),
    ("s", 1_000),
    ("m", 60_000),
    ("h", 3_600_000),
    ("d", 86_400_000),
];

/// Parses `1h30m`-style text.
pub fn parse(text: &str) -> Result<Duration, String> {
    let err = || {
        format!(
            "invalid duration `{text}`: expected a whole number and a unit (ms, s, m, h, d), such as `500ms`, `5s` or `1h30m`"
        )
    };
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(err());
    }
    let mut total: u64 = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(err());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| err())?;
        rest = &rest[digits..];
        // Longest unit first so `ms` is not read as `m`.
        let (unit, factor) = UNITS
            .iter()
            .filter(|(u, _)| rest.starts_with(u))
            .max_by_key(|(u, _)| u.len())
            .ok_or_else(err)?;
        rest = &rest[unit.len()..];
        total = n
            .checked_mul(*factor)
            .and_then(|ms| total.checked_add(ms))
            .ok_or_else(err)?;
    }
    Ok(Duration(std::time::Duration::from_millis(total)))
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ms = u64::try_from(self.0.as_millis()).unwrap_or(u64::MAX);
        if ms == 0 {
            return f.write_str("0s");
        }
        for (unit, factor) in UNITS.iter().rev() {
            if ms >= *factor {
                write!(f, "{}{unit}", ms / factor)?;
                ms %= factor;
            }
        }
        Ok(())
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse(&text).map_err(de::Error::custom)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": "^([0-9]+(ms|s|m|h|d))+$",
            "description": "A duration: whole numbers with units ms, s, m, h, d, such as `500ms`, `5s`, `1h30m`."
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(text: &str) -> u128 {
        parse(text).expect("valid").as_millis()
    }

    #[test]
    fn parses_units_and_compounds() {
        assert_eq!(ms("500ms"), 500);
        assert_eq!(ms("5s"), 5_000);
        assert_eq!(ms("1m"), 60_000);
        assert_eq!(ms("1h30m"), 5_400_000);
        assert_eq!(ms("2d"), 172_800_000);
        assert_eq!(ms("0s"), 0);
    }

    #[test]
    fn rejects_bad_text() {
        for bad in [
            "",
            "5",
            "s",
            "1.5h",
            "5 sec",
            "-1s",
            "99999999999999999999d",
        ] {
            assert!(parse(bad).is_err(), "{bad} should fail");
        }
    }

    #[test]
    fn displays_round_trip() {
        for text in ["500ms", "5s", "1h30m", "1d1h1m1s1ms", "0s"] {
            assert_eq!(parse(text).expect("valid").to_string(), text);
        }
    }
}
