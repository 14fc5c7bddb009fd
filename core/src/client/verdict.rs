//! How a volume's verify verdict ([`VolumeVerdict`]) is reported: the one line `tandem verify`
//! and the chaos runner print and the JSON detail they record in the audit chain. Pure.

use crate::proto::VolumeVerdict;
use crate::ranges::{describe_byte_ranges, from_wire};

pub use crate::bytes::hex;

/// `GROUP/RES: EQUAL at seq N: primary (SITE) root HEX | replica (SITE) root HEX`, with the
/// differing byte ranges on a second line when the copies differ.
pub fn verdict_line(group: &str, v: &VolumeVerdict, primary: &str, replica: &str) -> String {
    format!(
        "{group}/{}: {} at seq {}: primary ({primary}) root {} | replica ({replica}) root {}{}",
        v.resource,
        if v.equal { "EQUAL" } else { "DIFFERENT" },
        v.last_seq,
        hex(&v.primary_root),
        hex(&v.replica_root),
        if v.equal {
            String::new()
        } else {
            format!(
                "\n  differing bytes: {}",
                describe_byte_ranges(&from_wire(&v.differing))
            )
        }
    )
}

/// The audit detail of one volume's verdict (one entry of a `verify` record's `resources`).
pub fn verdict_detail(v: &VolumeVerdict, primary: &str, replica: &str) -> serde_json::Value {
    serde_json::json!({
        "resource": v.resource, "seq": v.last_seq, "equal": v.equal,
        "primary_site": primary, "replica_site": replica,
        "primary_root": hex(&v.primary_root), "replica_root": hex(&v.replica_root),
        "differing_bytes": describe_byte_ranges(&from_wire(&v.differing)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::ByteRange;

    #[test]
    fn a_differing_verdict_names_its_ranges_on_a_second_line() {
        let v = VolumeVerdict {
            resource: "disk0".into(),
            equal: false,
            primary_root: vec![0xab, 0x01],
            replica_root: vec![0x00],
            last_seq: 7,
            differing: vec![ByteRange {
                start: 0x1000,
                end: 0x2000,
            }],
            ..VolumeVerdict::default()
        };
        assert_eq!(
            verdict_line("vol", &v, "hanoi", "hcm"),
            "vol/disk0: DIFFERENT at seq 7: primary (hanoi) root ab01 | replica (hcm) root 00\n  differing bytes: 0x1000..0x2000"
        );
        let d = verdict_detail(&v, "hanoi", "hcm");
        assert_eq!(d["differing_bytes"], "0x1000..0x2000");
        assert_eq!(d["seq"], 7);
    }
}
