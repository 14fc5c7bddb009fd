//! Data residency: jurisdiction codes (ISO 3166-1 alpha-2) and the one rule that decides whether
//! a group's data may be placed at a site.
//!
//! The rule is pure and shared: `tandem config check` (and every node loading its topology),
//! the coordinators' state machine and the replicators all call [`placement_refusal`], so the
//! wording and the decision are the same everywhere.

/// The officially assigned ISO 3166-1 alpha-2 country codes, sorted.
pub const ISO_3166_ALPHA2: [&str; 249] = [
    "AD", "AE", "AF", "AG", "AI", "AL", "AM", "AO", "AQ", "AR", "AS", "AT", "AU", "AW", "AX", "AZ",
    "BA", "BB", "BD", "BE", "BF", "BG", "BH", "BI", "BJ", "BL", "BM", "BN", "BO", "BQ", "BR", "BS",
    "BT", "BV", "BW", "BY", "BZ", "CA", "CC", "CD", "CF", "CG", "CH", "CI", "CK", "CL", "CM", "CN",
    "CO", "CR", "CU", "CV", "CW", "CX", "CY", "CZ", "DE", "DJ", "DK", "DM", "DO", "DZ", "EC", "EE",
    "EG", "EH", "ER", "ES", "ET", "FI", "FJ", "FK", "FM", "FO", "FR", "GA", "GB", "GD", "GE", "GF",
    "GG", "GH", "GI", "GL", "GM", "GN", "GP", "GQ", "GR", "GS", "GT", "GU", "GW", "GY", "HK", "HM",
    "HN", "HR", "HT", "HU", "ID", "IE", "IL", "IM", "IN", "IO", "IQ", "IR", "IS", "IT", "JE", "JM",
    "JO", "JP", "KE", "KG", "KH", "KI", "KM", "KN", "KP", "KR", "KW", "KY", "KZ", "LA", "LB", "LC",
    "LI", "LK", "LR", "LS", "LT", "LU", "LV", "LY", "MA", "MC", "MD", "ME", "MF", "MG", "MH", "MK",
    "ML", "MM", "MN", "MO", "MP", "MQ", "MR", "MS", "MT", "MU", "MV", "MW", "MX", "MY", "MZ", "NA",
    "NC", "NE", "NF", "NG", "NI", "NL", "NO", "NP", "NR", "NU", "NZ", "OM", "PA", "PE", "PF", "PG",
    "PH", "PK", "PL", "PM", "PN", "PR", "PS", "PT", "PW", "PY", "QA", "RE", "RO", "RS", "RU", "RW",
    "SA", "SB", "SC", "SD", "SE", "SG", "SH", "SI", "SJ", "SK", "SL", "SM", "SN", "SO", "SR", "SS",
    "ST", "SV", "SX", "SY", "SZ", "TC", "TD", "TF", "TG", "TH", "TJ", "TK", "TL", "TM", "TN", "TO",
    "TR", "TT", "TV", "TW", "TZ", "UA", "UG", "UM", "US", "UY", "UZ", "VA", "VC", "VE", "VG", "VI",
    "VN", "VU", "WF", "WS", "YE", "YT", "ZA", "ZM", "ZW",
];

/// Whether `code` is an assigned ISO 3166-1 alpha-2 code, written in upper case (`VN`).
pub fn is_jurisdiction(code: &str) -> bool {
    ISO_3166_ALPHA2.binary_search(&code).is_ok()
}

/// Why a jurisdiction code is refused, or `None` when it is a valid ISO 3166-1 alpha-2 code.
/// The message suggests the upper-case form when that is what was meant.
pub fn jurisdiction_error(code: &str) -> Option<String> {
    if is_jurisdiction(code) {
        return None;
    }
    let upper = code.to_ascii_uppercase();
    Some(if is_jurisdiction(&upper) {
        format!("\"{code}\" must be written in upper case: \"{upper}\" (ISO 3166-1 alpha-2)")
    } else {
        format!("\"{code}\" is not an ISO 3166-1 alpha-2 country code (e.g. \"VN\", \"SG\")")
    })
}

/// Why a group that allows only `allowed` may not hold data at `site` (which is in
/// `jurisdiction`, or in none), or `None` when it may. An empty `allowed` allows anywhere.
/// `what` names the site's use (`replica`, `drill copy`) and starts the message:
/// `replica site "sg" is in SG, allowed: VN`.
pub fn placement_refusal(
    what: &str,
    allowed: &[String],
    site: &str,
    jurisdiction: Option<&str>,
) -> Option<String> {
    if allowed.is_empty() {
        return None;
    }
    let list = allowed.join(", ");
    match jurisdiction {
        Some(j) if allowed.iter().any(|a| a == j) => None,
        Some(j) => Some(format!("{what} site \"{site}\" is in {j}, allowed: {list}")),
        None => Some(format!(
            "{what} site \"{site}\" has no jurisdiction, allowed: {list}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_list_is_sorted_unique_and_two_upper_letters() {
        for w in ISO_3166_ALPHA2.windows(2) {
            assert!(w[0] < w[1], "{} before {}", w[0], w[1]);
        }
        for c in ISO_3166_ALPHA2 {
            assert!(
                c.len() == 2 && c.bytes().all(|b| b.is_ascii_uppercase()),
                "{c}"
            );
        }
    }

    #[test]
    fn jurisdiction_codes_are_checked() {
        for (code, ok) in [
            ("VN", true),
            ("SG", true),
            ("ZW", true),
            ("AD", true),
            ("vn", false),
            ("XX", false),
            ("VNM", false),
            ("", false),
            ("EU", false),
        ] {
            assert_eq!(is_jurisdiction(code), ok, "{code:?}");
            assert_eq!(jurisdiction_error(code).is_none(), ok, "{code:?}");
        }
        assert!(jurisdiction_error("vn")
            .unwrap_or_default()
            .contains("\"VN\""));
    }

    #[test]
    fn placement_outside_the_allowed_list_is_refused() {
        let vn = vec!["VN".to_string()];
        assert_eq!(placement_refusal("replica", &[], "sg", Some("SG")), None);
        assert_eq!(placement_refusal("replica", &[], "x", None), None);
        assert_eq!(placement_refusal("replica", &vn, "hcm", Some("VN")), None);
        assert_eq!(
            placement_refusal("replica", &vn, "sg", Some("SG")).as_deref(),
            Some("replica site \"sg\" is in SG, allowed: VN")
        );
        assert_eq!(
            placement_refusal("drill copy", &vn, "lab", None).as_deref(),
            Some("drill copy site \"lab\" has no jurisdiction, allowed: VN")
        );
        let two = vec!["VN".to_string(), "SG".to_string()];
        assert_eq!(placement_refusal("replica", &two, "sg", Some("SG")), None);
        assert!(placement_refusal("replica", &two, "us", Some("US"))
            .unwrap_or_default()
            .ends_with("allowed: VN, SG"));
    }
}
