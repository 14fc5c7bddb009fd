//! Tandem chaos harness: fault proxy, process, disk and clock faults, workloads and checkers.
