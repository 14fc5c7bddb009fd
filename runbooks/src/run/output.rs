//! What a run keeps of a step's output: a bounded excerpt (head and tail), since the run is
//! replicated through Raft.
//!
//! Pure.

/// Most bytes of a step's output kept in the run (it is replicated through Raft).
pub const OUTPUT_EXCERPT_MAX: usize = 4096;

/// Bounds `output` to [`OUTPUT_EXCERPT_MAX`] bytes, keeping its head and (mostly) its tail,
/// where errors usually are.
pub fn excerpt(output: &str) -> String {
    if output.len() <= OUTPUT_EXCERPT_MAX {
        return output.to_string();
    }
    let cut = output.len();
    let marker_room = 64;
    let head_len = floor_boundary(output, 1024);
    let tail_want = OUTPUT_EXCERPT_MAX - head_len - marker_room;
    let tail_start = ceil_boundary(output, cut - tail_want);
    let omitted = tail_start - head_len;
    format!(
        "{}\n[... {omitted} bytes omitted ...]\n{}",
        &output[..head_len],
        &output[tail_start..]
    )
}

/// Most lines of a failed command's output quoted in its step's error.
pub const FAILURE_TAIL_LINES: usize = 5;

/// The error of a failed `exec` step: `the command failed`, then the last
/// [`FAILURE_TAIL_LINES`] non-empty lines of its output (stdout then stderr, ending with the
/// exit status), at most 600 bytes, so that the live output and `run show` say why.
pub fn failure_summary(output: &str) -> String {
    let lines: Vec<&str> = output
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .collect();
    if lines.is_empty() {
        return "the command failed (no output)".into();
    }
    let tail = lines[lines.len().saturating_sub(FAILURE_TAIL_LINES)..].join(" | ");
    let start = ceil_boundary(&tail, tail.len().saturating_sub(600));
    let cut = if start > 0 { "..." } else { "" };
    format!("the command failed: {cut}{}", &tail[start..])
}

fn floor_boundary(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn ceil_boundary(s: &str, mut i: usize) -> usize {
    while i < s.len() && !s.is_char_boundary(i) {
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_excerpt_is_bounded_and_keeps_head_and_tail() {
        let long = format!("HEAD{}TAIL", "é".repeat(10_000));
        let e = excerpt(&long);
        assert!(e.len() <= OUTPUT_EXCERPT_MAX, "{}", e.len());
        assert!(e.starts_with("HEAD") && e.ends_with("TAIL"));
        assert!(e.contains("bytes omitted"));
        assert_eq!(excerpt("short"), "short");
    }

    #[test]
    fn a_failed_command_error_quotes_the_tail_of_its_output() {
        let out =
            "starting\n\npsql: error: connection to server on socket failed\n[exit status: 2]";
        assert_eq!(
            failure_summary(out),
            "the command failed: starting | psql: error: connection to server on socket failed | [exit status: 2]"
        );
        let many: String = (0..20).map(|i| format!("line {i}\n")).collect();
        let s = failure_summary(&many);
        assert!(
            s.ends_with("line 15 | line 16 | line 17 | line 18 | line 19"),
            "{s}"
        );
        assert!(!s.contains("line 14"), "{s}");
        let long = "é".repeat(2_000);
        let s = failure_summary(&long);
        assert!(s.len() < 700 && s.contains("..."), "{}", s.len());
        assert_eq!(failure_summary(""), "the command failed (no output)");
    }
}
