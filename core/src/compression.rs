//! How a byte stream is compressed on its way to the other site: a setting (`auto`, `off`,
//! `zstd`, `zstd-N`), read from the config (`[[groups]] compression`) and from the resync
//! options. What `auto` decides is each stream's own rule: resync chooses a level per link from
//! a probe (`tandem_replicator::resync::compression::choose_level`), the replication stream
//! follows its backlog (`tandem_replicator::pipeline::adapt`).

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// zstd's highest level a setting may ask for (higher levels are far slower for little gain).
pub const MAX_LEVEL: i32 = 19;

/// How a stream compresses what it sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Compression {
    /// Chosen by measurement, while the stream runs.
    #[default]
    Auto,
    /// Sent raw.
    Off,
    /// zstd at this level (`1..=MAX_LEVEL`).
    Zstd(i32),
}

impl FromStr for Compression {
    type Err = String;

    /// `auto`, `off` (or `none`), `zstd` (level 1) or `zstd-N`.
    fn from_str(s: &str) -> Result<Compression, String> {
        match s.trim() {
            "auto" => Ok(Compression::Auto),
            "off" | "none" => Ok(Compression::Off),
            "zstd" => Ok(Compression::Zstd(1)),
            other => other
                .strip_prefix("zstd-")
                .and_then(|l| l.parse::<i32>().ok())
                .filter(|l| (1..=MAX_LEVEL).contains(l))
                .map(Compression::Zstd)
                .ok_or_else(|| {
                    format!(
                        "compression {s:?}: expected auto, off, zstd or zstd-1..zstd-{MAX_LEVEL}"
                    )
                }),
        }
    }
}

impl TryFrom<String> for Compression {
    type Error = String;

    fn try_from(s: String) -> Result<Compression, String> {
        s.parse()
    }
}

impl From<Compression> for String {
    fn from(c: Compression) -> String {
        c.to_string()
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Compression::Auto => f.write_str("auto"),
            Compression::Off => f.write_str("off"),
            Compression::Zstd(l) => write!(f, "zstd-{l}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse_and_print_back() {
        for (s, c) in [
            ("auto", Compression::Auto),
            ("off", Compression::Off),
            ("none", Compression::Off),
            ("zstd", Compression::Zstd(1)),
            ("zstd-7", Compression::Zstd(7)),
        ] {
            assert_eq!(s.parse::<Compression>(), Ok(c), "{s}");
            assert_eq!(c.to_string().parse::<Compression>(), Ok(c));
        }
        for bad in ["zstd-0", "zstd-20", "lz4", "zstd-x", ""] {
            let e = bad.parse::<Compression>().unwrap_err();
            assert!(e.contains("expected auto, off, zstd"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_setting_reads_from_and_writes_to_toml_as_its_string() {
        #[derive(Serialize, Deserialize)]
        struct G {
            compression: Compression,
        }
        let g: G = toml::from_str("compression = \"zstd-3\"").unwrap();
        assert_eq!(g.compression, Compression::Zstd(3));
        assert_eq!(
            toml::to_string(&g).unwrap().trim(),
            "compression = \"zstd-3\""
        );
        let e = toml::from_str::<G>("compression = \"fast\"").err().unwrap();
        assert!(e.to_string().contains("expected auto, off"), "{e}");
    }
}
