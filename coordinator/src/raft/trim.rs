//! Hands the memory a snapshot freed back to the operating system. Serializing or installing a
//! snapshot allocates several copies of the whole state (megabytes at 1 000 groups) and frees
//! them; glibc keeps freed memory in its per-thread arenas, and above its dynamic mmap threshold
//! it stops mapping big buffers apart, so a coordinator's RSS ratchets up with every snapshot
//! that is larger than the last (issue 20: memory bounded over time). `malloc_trim` returns the
//! free pages of every arena. Elsewhere (another libc) it is a no-op.

/// Returns freed heap memory to the OS (glibc); called after a snapshot is taken or installed,
/// at most once per snapshot (tens of seconds apart), costing a walk of the allocator's free
/// lists.
pub(crate) fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: malloc_trim takes no pointers and only walks glibc's own free lists; it is safe
    // to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}
