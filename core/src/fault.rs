//! Failpoints for the chaos harness: named places at the durability and ordering boundaries
//! where a test makes a process crash, lose the writes it has not fsynced, fail with EIO or
//! ENOSPC, or sleep.
//!
//! They exist only in a build with the `failpoints` feature (the `fail` crate). The workspace
//! test build turns it on through `tandem-tests`; `cargo build -p tandem` (a production
//! build) leaves it off, and then [`hit`] is a constant `None` and the `fail` crate is not
//! linked.
//!
//! A process follows the file named by [`FAILPOINTS_FILE_ENV`]: one `NAME=ACTIONS` line per
//! failpoint, in the `fail` crate's syntax (`off`, `return(crash)`, `1*return(lose)`,
//! `sleep(200)`, `2*off->1*return(eio)`), read when the first failpoint is passed and then
//! every 20 ms; a name that leaves the file is switched off. The argument of `return` says
//! what happens ([`Injected`]).

use std::io;

/// Environment variable naming the failpoint file a process follows.
pub const FAILPOINTS_FILE_ENV: &str = "TANDEM_CHAOS_FAILPOINTS_FILE";

/// True when this binary was built with failpoints.
pub const ENABLED: bool = cfg!(feature = "failpoints");

/// Every failpoint, with where it sits. Names ending in `:` take a suffix (a runbook action).
pub const POINTS: &[(&str, &str)] = &[
    (
        "journal-write",
        "primary, journal append: before a frame is written (enospc writes half the frame first)",
    ),
    (
        "journal-before-fsync",
        "primary, journal append: frames written, before their fdatasync (lose: the unsynced tail is dropped)",
    ),
    (
        "journal-before-fsync-shipped",
        "primary, journal append: frames written and released to the shipper, before their fdatasync (lose: waits for the replica's ack, then drops the unsynced tail: the replica holds seqs the primary lost)",
    ),
    (
        "journal-after-fsync",
        "primary, journal append: frames durable, before the writes waiting on them are answered",
    ),
    (
        "primary-before-ack",
        "primary, NBD: a write is durable (sync: at the replica too), before the client is answered",
    ),
    (
        "primary-image-write",
        "primary, NBD: a write is journaled, before it is written to the volume image (eio: the image write fails and the group must fence)",
    ),
    (
        "replica-before-fence",
        "a replica copy (the old primary becoming replica, or a Hello from a newer epoch): before a raised epoch fence is persisted",
    ),
    (
        "replica-before-fsync",
        "replica, apply: changes written to the resource files, before their fdatasync",
    ),
    (
        "replica-before-watermark",
        "replica, apply: files durable, before the watermark is persisted",
    ),
    (
        "replica-before-ack",
        "replica, apply: watermark persisted, before the ack is sent",
    ),
    (
        "runbook-before-step:",
        "coordinator leader: a step's start committed, before it runs (suffix: the action, e.g. promote)",
    ),
    (
        "runbook-after-step:",
        "coordinator leader: a step ran, before its result is committed (suffix: the action)",
    ),
];

/// What a failpoint does when its action is `return(ARG)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Injected {
    /// `crash`: abort the process at once (as kill -9 would, at exactly this place).
    Crash,
    /// `lose`: drop what was written but not fsynced, then abort (a power loss).
    LoseUnsynced,
    /// `eio`: the operation fails with EIO.
    Eio,
    /// `enospc`: the operation fails with ENOSPC (the disk is full).
    Enospc,
}

impl Injected {
    /// Parses the argument of `return(ARG)`. Pure.
    ///
    /// # Errors
    /// The argument when it is none of `crash`, `lose`, `eio`, `enospc`.
    pub fn parse(arg: Option<&str>) -> Result<Injected, String> {
        match arg.map(str::trim) {
            Some("crash") | None | Some("") => Ok(Injected::Crash),
            Some("lose") => Ok(Injected::LoseUnsynced),
            Some("eio") => Ok(Injected::Eio),
            Some("enospc") => Ok(Injected::Enospc),
            Some(other) => Err(format!(
                "unknown failpoint argument {other:?}: expected crash, lose, eio or enospc"
            )),
        }
    }

    /// The I/O error this injection stands for (`Crash` and `LoseUnsynced` give EIO too, for
    /// callers that cannot crash).
    pub fn io_error(self, name: &str) -> io::Error {
        let code = if self == Injected::Enospc {
            ENOSPC
        } else {
            EIO
        };
        let e = io::Error::from_raw_os_error(code);
        io::Error::new(e.kind(), format!("{e} (failpoint {name})"))
    }
}

/// Linux's errno values (the only platform Tandem runs on).
const EIO: i32 = 5;
const ENOSPC: i32 = 28;

/// True if `name` is a failpoint of [`POINTS`] (with a non-empty suffix where one is taken).
pub fn known(name: &str) -> bool {
    POINTS.iter().any(|(p, _)| match p.strip_suffix(':') {
        Some(prefix) => name
            .strip_prefix(prefix)
            .and_then(|r| r.strip_prefix(':'))
            .is_some_and(|s| !s.is_empty()),
        None => name == *p,
    })
}

/// Parses a failpoint file: `NAME=ACTIONS` lines; blank lines and `#` comments are skipped.
/// Pure.
///
/// # Errors
/// The line number and what is wrong: no `=`, an unknown name, or empty actions.
pub fn parse_program(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((name, actions)) = line.split_once('=') else {
            return Err(format!("line {}: expected NAME=ACTIONS", i + 1));
        };
        let (name, actions) = (name.trim(), actions.trim());
        if !known(name) {
            return Err(format!("line {}: unknown failpoint {name:?}", i + 1));
        }
        if actions.is_empty() {
            return Err(format!("line {}: {name}: no actions", i + 1));
        }
        out.push((name.to_owned(), actions.to_owned()));
    }
    Ok(out)
}

/// Passes failpoint `name`: `None` unless it is configured and its action is `return(ARG)`
/// (a `sleep` action sleeps here and returns `None`). Logs each firing as
/// `failpoint NAME fired: ARG`, which the chaos runner looks for.
pub fn hit(name: &str) -> Option<Injected> {
    #[cfg(feature = "failpoints")]
    {
        watch::start();
        let arg = fail::eval(name, |arg| arg)?;
        match Injected::parse(arg.as_deref()) {
            Ok(inj) => {
                eprintln!("failpoint {name} fired: {inj:?}");
                tracing::warn!(failpoint = name, injected = ?inj, "failpoint {name} fired");
                Some(inj)
            }
            Err(e) => {
                tracing::error!(failpoint = name, "{e}");
                None
            }
        }
    }
    #[cfg(not(feature = "failpoints"))]
    {
        let _ = name;
        None
    }
}

/// Aborts the process at failpoint `name` (no destructor runs, no buffer is flushed).
pub fn crash(name: &str) -> ! {
    eprintln!("failpoint {name}: aborting the process");
    std::process::abort()
}

/// Passes failpoint `name` at a place that can only crash or fail: crashes on `crash` and
/// `lose`, returns the I/O error for `eio` and `enospc`.
///
/// # Errors
/// The injected I/O error.
pub fn check(name: &str) -> io::Result<()> {
    match hit(name) {
        None => Ok(()),
        Some(Injected::Crash | Injected::LoseUnsynced) => crash(name),
        Some(e @ (Injected::Eio | Injected::Enospc)) => Err(e.io_error(name)),
    }
}

#[cfg(feature = "failpoints")]
mod watch {
    use super::{parse_program, FAILPOINTS_FILE_ENV};
    use std::collections::BTreeMap;
    use std::path::PathBuf;
    use std::sync::Once;
    use std::time::Duration;

    static WATCH: Once = Once::new();

    /// Reads the file once now (so the first failpoint passed already sees it), then follows
    /// it on a thread.
    pub(super) fn start() {
        WATCH.call_once(|| {
            let Some(path) = std::env::var_os(FAILPOINTS_FILE_ENV).map(PathBuf::from) else {
                return;
            };
            let mut state = (None, BTreeMap::new());
            apply(&path, &mut state);
            let spawned = std::thread::Builder::new()
                .name("chaos-failpoints".into())
                .spawn(move || loop {
                    std::thread::sleep(Duration::from_millis(20));
                    apply(&path, &mut state);
                });
            if let Err(e) = spawned {
                tracing::warn!("cannot follow the failpoint file: {e}");
            }
        });
    }

    type State = (Option<String>, BTreeMap<String, String>);

    fn apply(path: &std::path::Path, (last, active): &mut State) {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => {
                tracing::warn!(file = %path.display(), "failpoint file: {e}");
                return;
            }
        };
        if last.as_deref() == Some(text.as_str()) {
            return;
        }
        *last = Some(text.clone());
        let program = match parse_program(&text) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(file = %path.display(), "failpoint file: {e}");
                return;
            }
        };
        let wanted: BTreeMap<String, String> = program.into_iter().collect();
        for name in active.keys() {
            if !wanted.contains_key(name) {
                fail::remove(name);
            }
        }
        for (name, actions) in &wanted {
            if active.get(name) == Some(actions) {
                continue;
            }
            match fail::cfg(name.clone(), actions) {
                Ok(()) => tracing::info!(failpoint = %name, actions = %actions, "failpoint set"),
                Err(e) => tracing::error!(failpoint = %name, "failpoint actions {actions:?}: {e}"),
            }
        }
        *active = wanted;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_parse_and_unknown_ones_are_refused() {
        assert_eq!(Injected::parse(None), Ok(Injected::Crash));
        assert_eq!(Injected::parse(Some("lose")), Ok(Injected::LoseUnsynced));
        assert_eq!(Injected::parse(Some(" eio ")), Ok(Injected::Eio));
        assert_eq!(Injected::parse(Some("enospc")), Ok(Injected::Enospc));
        assert!(Injected::parse(Some("explode")).is_err());
        assert_eq!(
            Injected::Enospc.io_error("x").raw_os_error(),
            None,
            "wrapped errors carry the failpoint name"
        );
        assert_eq!(
            Injected::Enospc.io_error("x").kind(),
            io::Error::from_raw_os_error(28).kind()
        );
    }

    /// The whole path a node takes: the file named by the environment, read on the first
    /// failpoint passed, a counted action, and a change picked up by the watcher.
    #[cfg(feature = "failpoints")]
    #[test]
    fn a_failpoint_file_arms_and_disarms_failpoints() {
        let path = std::env::temp_dir().join(format!("tandem-failpoints-{}", std::process::id()));
        std::fs::write(
            &path,
            "journal-write=1*return(eio)\nreplica-before-ack=return(enospc)\n",
        )
        .unwrap_or_default();
        std::env::set_var(FAILPOINTS_FILE_ENV, &path);
        assert_eq!(hit("journal-write"), Some(Injected::Eio));
        assert_eq!(hit("journal-write"), None, "counted: fires once");
        assert_eq!(hit("journal-after-fsync"), None, "not in the file");
        assert!(check("replica-before-ack").is_err());
        std::fs::write(&path, "").unwrap_or_default();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while hit("replica-before-ack").is_some() {
            assert!(
                std::time::Instant::now() < deadline,
                "the watcher never saw the change"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn names_are_checked_with_their_suffixes() {
        assert!(known("journal-before-fsync"));
        assert!(known("runbook-after-step:promote"));
        assert!(!known("runbook-after-step:"));
        assert!(!known("runbook-after-step"));
        assert!(!known("journal-before-fsync:x"));
        assert!(!known("nope"));
    }

    #[test]
    fn programs_parse_and_bad_lines_are_named() {
        let p =
            parse_program("# c\n\njournal-before-fsync = 1*return(lose)\nreplica-before-ack=off\n")
                .unwrap_or_default();
        assert_eq!(
            p,
            vec![
                (
                    "journal-before-fsync".to_owned(),
                    "1*return(lose)".to_owned()
                ),
                ("replica-before-ack".to_owned(), "off".to_owned())
            ]
        );
        let e = parse_program("journal-write=off\nbogus=off\n")
            .err()
            .unwrap_or_default();
        assert!(e.contains("line 2") && e.contains("bogus"), "{e}");
        assert!(parse_program("journal-write").is_err());
        assert!(parse_program("journal-write=").is_err());
    }
}
