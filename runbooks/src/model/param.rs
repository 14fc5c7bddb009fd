//! A runbook's declared parameters: name, type, default, and values given on the command
//! line parsed by type.
//!
//! Pure types; imports nothing of the crate (the `when` language types against these).

use serde::{Deserialize, Serialize};
use std::fmt;
use tandem_core::config::HumanDuration;

/// A declared runbook parameter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parameter {
    /// Name, referenced as `param.NAME` in `when` conditions; `exec` steps see it as
    /// the environment variable `TANDEM_PARAM_NAME` (upper case).
    pub name: String,
    /// Type of its values.
    pub ty: ParamType,
    /// Value when the caller gives none; `None` makes the parameter required.
    pub default: Option<ParamValue>,
    /// What it controls.
    pub description: String,
}

/// Type of a parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamType {
    /// Text.
    String,
    /// `true` or `false`.
    Bool,
    /// A signed 64-bit integer.
    Integer,
    /// A humane duration (`"30s"`).
    Duration,
}

impl ParamType {
    /// The name written in a runbook file.
    pub fn as_str(self) -> &'static str {
        match self {
            ParamType::String => "string",
            ParamType::Bool => "bool",
            ParamType::Integer => "integer",
            ParamType::Duration => "duration",
        }
    }

    /// Parses a value of this type from command-line text (`true`, `42`, `30s`, any text).
    ///
    /// # Errors
    /// A message naming the expected form when `text` is not a value of this type.
    pub fn parse_value(self, text: &str) -> Result<ParamValue, String> {
        match self {
            ParamType::String => Ok(ParamValue::String(text.to_string())),
            ParamType::Bool => match text {
                "true" => Ok(ParamValue::Bool(true)),
                "false" => Ok(ParamValue::Bool(false)),
                _ => Err(format!("expected true or false, got \"{text}\"")),
            },
            ParamType::Integer => text
                .parse::<i64>()
                .map(ParamValue::Integer)
                .map_err(|_| format!("expected an integer, got \"{text}\"")),
            ParamType::Duration => text
                .parse::<HumanDuration>()
                .map(ParamValue::Duration)
                .map_err(|e| e.to_string()),
        }
    }
}

impl fmt::Display for ParamType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parameter value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamValue {
    /// Text.
    String(String),
    /// A boolean.
    Bool(bool),
    /// An integer.
    Integer(i64),
    /// A duration.
    Duration(HumanDuration),
}

impl ParamValue {
    /// The type of this value.
    pub fn ty(&self) -> ParamType {
        match self {
            ParamValue::String(_) => ParamType::String,
            ParamValue::Bool(_) => ParamType::Bool,
            ParamValue::Integer(_) => ParamType::Integer,
            ParamValue::Duration(_) => ParamType::Duration,
        }
    }
}

impl fmt::Display for ParamValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamValue::String(s) => f.write_str(s),
            ParamValue::Bool(b) => write!(f, "{b}"),
            ParamValue::Integer(i) => write!(f, "{i}"),
            ParamValue::Duration(d) => write!(f, "{d}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn param_values_parse_by_type() {
        assert_eq!(
            ParamType::Bool.parse_value("true"),
            Ok(ParamValue::Bool(true))
        );
        assert!(ParamType::Bool.parse_value("yes").is_err());
        assert_eq!(
            ParamType::Integer.parse_value("-3"),
            Ok(ParamValue::Integer(-3))
        );
        assert_eq!(
            ParamType::Duration.parse_value("30s"),
            Ok(ParamValue::Duration(HumanDuration::from_secs(30)))
        );
        assert!(ParamType::Duration.parse_value("30").is_err());
    }
}
