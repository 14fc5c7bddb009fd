//! Checker for the loss of one replicator host at a group's replica site: the group must be
//! seen `degraded` for that host's silence while it is down, and `protected` again once it
//! has returned and caught up.
//!
//! Pure: over the group's state in the status samples the caller hands in.

use super::verdict::Verdict;

/// A group's state as one status showed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateSample {
    /// When, in history time (ms).
    pub time_ms: u64,
    /// `protected`, `degraded`, ...
    pub state: String,
    /// Why, as the coordinators say.
    pub reason: String,
}

/// When the samples first showed the group degraded after the kill and protected after the
/// restart (ms after each).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResyncTimes {
    /// Kill to the first sample `degraded` for the host's silence.
    pub degraded_after_ms: Option<u64>,
    /// Restart to the first sample `protected`.
    pub protected_after_ms: Option<u64>,
}

/// The bounds of [`degraded_then_protected`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResyncBounds {
    /// The group must be seen degraded within this long of the kill.
    pub degrade_within_ms: u64,
    /// It must be seen protected within this long of the restart.
    pub protect_within_ms: u64,
}

/// Whether the coordinators' reason names the silence of replica host `host`.
fn names_host(reason: &str, host: &str) -> bool {
    reason.contains(&format!("replica host {host} "))
}

/// Checks a group whose replica host `host` was killed at `kill_ms` and started again at
/// `restart_ms`: a sample after the kill and before the restart shows it `degraded` with a
/// reason naming the host's silence, within `bounds.degrade_within_ms` of the kill; no sample
/// from then until the restart shows it `protected`; a sample after the restart shows it
/// `protected`, within `bounds.protect_within_ms` of the restart. Returns the verdict and the
/// times seen.
pub fn degraded_then_protected(
    samples: &[StateSample],
    host: &str,
    kill_ms: u64,
    restart_ms: Option<u64>,
    bounds: ResyncBounds,
) -> (Verdict, ResyncTimes) {
    const NAME: &str = "degraded_then_protected";
    let mut violations = Vec::new();
    let mut notes = Vec::new();
    let down_until = restart_ms.unwrap_or(u64::MAX);
    let degraded = samples.iter().find(|s| {
        (kill_ms..down_until).contains(&s.time_ms)
            && s.state == "degraded"
            && names_host(&s.reason, host)
    });
    let mut times = ResyncTimes {
        degraded_after_ms: degraded.map(|s| s.time_ms - kill_ms),
        ..ResyncTimes::default()
    };
    match degraded {
        None => violations.push(format!(
            "never seen degraded for the silence of replica host {host} between its kill at \
             {kill_ms} ms and {}",
            restart_ms.map_or("the end".to_owned(), |r| format!("its restart at {r} ms"))
        )),
        Some(d) => {
            let after = d.time_ms - kill_ms;
            notes.push(format!(
                "degraded {after} ms after the kill of {host}: {}",
                d.reason
            ));
            if after > bounds.degrade_within_ms {
                violations.push(format!(
                    "seen degraded only {after} ms after the kill of {host}, more than {} ms",
                    bounds.degrade_within_ms
                ));
            }
            let back: Vec<String> = samples
                .iter()
                .filter(|s| (d.time_ms..down_until).contains(&s.time_ms))
                .filter(|s| s.state == "protected")
                .map(|s| format!("{} ms", s.time_ms))
                .collect();
            if !back.is_empty() {
                violations.push(format!(
                    "seen protected while replica host {host} was down, at {}",
                    back.into_iter().take(3).collect::<Vec<_>>().join(", ")
                ));
            }
        }
    }
    let Some(restart) = restart_ms else {
        violations.push(format!("replica host {host} was not restarted in the run"));
        return (Verdict::new(NAME, violations, notes), times);
    };
    let protected = samples
        .iter()
        .find(|s| s.time_ms >= restart && s.state == "protected");
    times.protected_after_ms = protected.map(|s| s.time_ms - restart);
    match protected {
        None => {
            let last = samples.last().map_or("no sample".to_owned(), |s| {
                format!("{} ({}) at {} ms", s.state, s.reason, s.time_ms)
            });
            violations.push(format!(
                "not seen protected after the restart of {host} at {restart} ms; last seen {last}"
            ));
        }
        Some(p) => {
            let after = p.time_ms - restart;
            notes.push(format!("protected {after} ms after the restart of {host}"));
            if after > bounds.protect_within_ms {
                violations.push(format!(
                    "seen protected only {after} ms after the restart of {host}, more than {} ms",
                    bounds.protect_within_ms
                ));
            }
        }
    }
    (Verdict::new(NAME, violations, notes), times)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: &str = "hcm-rep-1";
    const BOUNDS: ResyncBounds = ResyncBounds {
        degrade_within_ms: 2500,
        protect_within_ms: 8000,
    };

    fn s(time_ms: u64, state: &str, reason: &str) -> StateSample {
        StateSample {
            time_ms,
            state: state.into(),
            reason: reason.into(),
        }
    }

    fn silent(host: &str) -> String {
        format!(
            "replica host {host} at hcm silent for 1700 ms (the other replicators at hcm report)"
        )
    }

    /// Protected, killed at 1000, degraded at 2800, restarted at 6000, protected at 7500.
    fn good() -> Vec<StateSample> {
        vec![
            s(500, "protected", ""),
            s(1200, "protected", ""),
            s(2800, "degraded", &silent(HOST)),
            s(4000, "degraded", &silent(HOST)),
            s(6100, "degraded", &silent(HOST)),
            s(7500, "protected", ""),
            s(9000, "protected", ""),
        ]
    }

    #[test]
    fn a_group_degraded_while_its_replica_host_is_down_and_protected_after_passes() {
        let (v, t) = degraded_then_protected(&good(), HOST, 1000, Some(6000), BOUNDS);
        assert!(v.ok, "{:?}", v.violations);
        assert_eq!(
            t,
            ResyncTimes {
                degraded_after_ms: Some(1800),
                protected_after_ms: Some(1500)
            }
        );
        assert!(
            v.notes[0].starts_with("degraded 1800 ms after"),
            "{:?}",
            v.notes
        );
    }

    #[test]
    fn a_group_never_degraded_or_degraded_for_another_reason_is_caught() {
        // Detection disabled: the group stays protected throughout.
        let never: Vec<StateSample> = good()
            .into_iter()
            .map(|x| s(x.time_ms, "protected", ""))
            .collect();
        let (v, t) = degraded_then_protected(&never, HOST, 1000, Some(6000), BOUNDS);
        assert!(
            v.violations[0].starts_with("never seen degraded") && v.violations.len() == 1,
            "{:?}",
            v.violations
        );
        assert_eq!(t.degraded_after_ms, None);
        // Degraded, but for another host (hcm-rep-10 is not hcm-rep-1) or another reason.
        for reason in [silent("hcm-rep-10"), "site hcm down".to_owned()] {
            let other: Vec<StateSample> = good()
                .into_iter()
                .map(|x| {
                    let r = if x.state == "degraded" {
                        reason.clone()
                    } else {
                        x.reason
                    };
                    s(x.time_ms, &x.state, &r)
                })
                .collect();
            let (v, _) = degraded_then_protected(&other, HOST, 1000, Some(6000), BOUNDS);
            assert!(
                v.violations[0].starts_with("never seen degraded"),
                "{reason}"
            );
        }
        // A degraded sample after the restart does not count.
        let (v, _) = degraded_then_protected(&good(), HOST, 1000, Some(2000), BOUNDS);
        assert!(v.violations[0].starts_with("never seen degraded"), "{v:?}");
    }

    #[test]
    fn late_degradation_flapping_and_no_resync_are_caught() {
        let tight = ResyncBounds {
            degrade_within_ms: 1000,
            protect_within_ms: 1000,
        };
        let (v, _) = degraded_then_protected(&good(), HOST, 1000, Some(6000), tight);
        assert_eq!(
            v.violations,
            vec![
                "seen degraded only 1800 ms after the kill of hcm-rep-1, more than 1000 ms",
                "seen protected only 1500 ms after the restart of hcm-rep-1, more than 1000 ms",
            ]
        );
        // Protected again while the host is still down.
        let mut flap = good();
        flap.insert(4, s(5000, "protected", ""));
        let (v, _) = degraded_then_protected(&flap, HOST, 1000, Some(6000), BOUNDS);
        assert_eq!(
            v.violations,
            vec!["seen protected while replica host hcm-rep-1 was down, at 5000 ms"]
        );
        // Never protected again after the restart.
        let stuck = &good()[..5];
        let (v, t) = degraded_then_protected(stuck, HOST, 1000, Some(6000), BOUNDS);
        assert!(
            v.violations[0].starts_with("not seen protected after the restart")
                && v.violations[0].ends_with("at 6100 ms"),
            "{:?}",
            v.violations
        );
        assert_eq!(t.protected_after_ms, None);
        // No restart in the run: what is protected later was protected while the host was down.
        let (v, _) = degraded_then_protected(stuck, HOST, 1000, None, BOUNDS);
        assert_eq!(
            v.violations,
            vec!["replica host hcm-rep-1 was not restarted in the run"]
        );
        let (v, _) = degraded_then_protected(&good(), HOST, 1000, None, BOUNDS);
        assert!(v.violations[0].starts_with("seen protected while"), "{v:?}");
    }
}
