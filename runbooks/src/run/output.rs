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
}
