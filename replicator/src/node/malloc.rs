//! Fixed glibc allocator thresholds for the data path. A replicator allocates and frees buffers
//! of up to a frame (a few MiB) many times a second. glibc maps such buffers apart (`mmap`)
//! until its dynamic threshold has learnt their size, and hands freed pages at the top of a
//! heap back to the OS (`trim`) once more than twice that threshold is free: each new buffer
//! then faults its pages in again. Measured with `tandem bench replication --compression off`
//! (raw 1 MiB frames, docs/BENCHMARKS.md): about 220 000 minor page faults per GB at the replica
//! and a quarter of its CPU. Fixing both thresholds keeps a freed frame's pages for the next
//! one; what stays mapped is bounded by [`TRIM_THRESHOLD`] per arena above what is in use.
//! Elsewhere (another libc) this is a no-op.

/// Allocations below this come from the heap (freed ones are reused), above it from `mmap`.
pub const MMAP_THRESHOLD: i32 = 32 << 20;

/// Free memory at the top of a heap beyond this goes back to the OS.
pub const TRIM_THRESHOLD: i32 = 64 << 20;

/// Sets both thresholds, once, at the start of a replicator node.
pub(crate) fn fix_thresholds() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: mallopt takes two integers and sets glibc's own tunables under its own lock; it
    // is safe to call from any thread at any time.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
    }
}
