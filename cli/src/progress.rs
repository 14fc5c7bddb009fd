//! A progress bar on stderr for long work (resync, initial sync): redrawn in place on a
//! terminal, one line per phase change or tenth of the work when stderr is a file or pipe.
//!
//! Hand-written rather than `indicatif`: indicatif draws nothing when stderr is not a
//! terminal, while this bar logs one line per tenth there (what the demo, chaos and CI logs
//! show), so that path would stay hand-written anyway; what indicatif would replace is the
//! two-line in-place redraw, not worth its dependency tree. The bar's text is pinned by the
//! tests below.

use std::io::{IsTerminal, Write};

/// Width of the bar in characters.
const WIDTH: usize = 30;

/// A progress bar writing to stderr.
#[derive(Debug)]
pub struct Bar {
    tty: bool,
    last_label: String,
    last_tenth: u64,
    drawn: bool,
}

impl Default for Bar {
    fn default() -> Self {
        Bar::new()
    }
}

impl Bar {
    /// A bar that redraws in place when stderr is a terminal.
    pub fn new() -> Bar {
        Bar {
            tty: std::io::stderr().is_terminal(),
            last_label: String::new(),
            last_tenth: u64::MAX,
            drawn: false,
        }
    }

    /// Shows `done` of `total` with a label (`hashing disk0`) and a detail after the figures.
    pub fn update(&mut self, label: &str, done: u64, total: u64, detail: &str) {
        let line = render(label, done, total, detail);
        let tenth = (done * 10).checked_div(total).unwrap_or(10);
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[2K{line}");
            let _ = err.flush();
            self.drawn = true;
        } else if label != self.last_label || tenth != self.last_tenth {
            let _ = writeln!(err, "{line}");
        }
        self.last_label = label.to_owned();
        self.last_tenth = tenth;
    }

    /// Ends the bar's line (on a terminal) so later output starts on a fresh line.
    pub fn finish(&mut self) {
        if self.tty && self.drawn {
            let _ = writeln!(std::io::stderr());
            self.drawn = false;
        }
    }
}

/// One bar line: `hashing disk0 [#########.....................]  30% 77.0/256.0 MiB detail`.
pub fn render(label: &str, done: u64, total: u64, detail: &str) -> String {
    let frac = if total == 0 {
        1.0
    } else {
        (done.min(total) as f64) / (total as f64)
    };
    let filled = ((frac * WIDTH as f64).round() as usize).min(WIDTH);
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let mut line = format!(
        "{label} [{}{}] {:>3}% {:.1}/{:.1} MiB",
        "#".repeat(filled),
        ".".repeat(WIDTH - filled),
        (frac * 100.0).floor() as u64,
        mib(done),
        mib(total)
    );
    if !detail.is_empty() {
        line.push(' ');
        line.push_str(detail);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::render;

    #[test]
    fn render_fills_the_bar_in_proportion() {
        let half = render("copying disk0", 5 << 20, 10 << 20, "");
        assert!(
            half.contains(&format!("[{}{}]", "#".repeat(15), ".".repeat(15))),
            "{half}"
        );
        assert!(half.contains(" 50% 5.0/10.0 MiB"), "{half}");
    }

    #[test]
    fn render_of_nothing_to_do_is_complete_and_never_overflows() {
        assert!(render("x", 0, 0, "").contains("100%"));
        let over = render("x", 20, 10, "d");
        assert!(over.contains(&format!("[{}]", "#".repeat(30))), "{over}");
        assert!(over.ends_with(" d"), "{over}");
    }
}
