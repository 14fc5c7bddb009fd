//! Serves one raw image over NBD until Ctrl-C, for manual testing and measurement:
//! `cargo run -p tandem-replicator --example nbd_serve -- IMAGE SIZE_MIB PORT [EXPORT]`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::Arc;

use tandem_replicator::nbd::{serve, ExportMap};
use tandem_replicator::volume::{FileVolume, VolumeBackend};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: nbd_serve IMAGE SIZE_MIB PORT [EXPORT]");
        std::process::exit(2);
    }
    let path = PathBuf::from(&args[1]);
    let size: u64 = args[2].parse::<u64>().expect("SIZE_MIB is a number") << 20;
    let port: u16 = args[3].parse().expect("PORT is a number");
    let export = args.get(4).cloned().unwrap_or_else(|| "disk0".into());
    let volume = FileVolume::create(&path, size).expect("open image");
    let exports = ExportMap::new();
    exports
        .insert(export.clone(), Arc::new(volume) as Arc<dyn VolumeBackend>)
        .expect("export name");
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind");
    eprintln!(
        "serving {} as nbd://127.0.0.1:{port}/{export}",
        path.display()
    );
    let (stop, rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(serve(listener, Arc::new(exports), None, rx));
    tokio::signal::ctrl_c().await.expect("ctrl-c handler");
    stop.send(true).expect("server is running");
    server.await.expect("server task");
}
