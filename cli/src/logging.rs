//! Logging through `tracing`: human-readable by default, JSON lines with `--log-format json`.

use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber (stderr), in colour only when stderr is a terminal: a node's
/// log written to a file (the local cluster, the chaos runner, systemd's journal) is plain
/// text that `grep key=value` finds. The FUSE library under the chaos runner's
/// power-loss file systems logs every mount and every request it does not implement
/// (`getxattr`) at info and warn; it is held to errors unless the filter names it.
pub fn init(format: &str, filter: &str) {
    let filter = if filter.contains("fuser") {
        filter.to_owned()
    } else {
        format!("{filter},fuser=error")
    };
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(true);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}
