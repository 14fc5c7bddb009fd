//! Generates the gRPC code from `proto/tandem.proto` with a vendored protoc.
//!
//! PROTOC is set only for this build script (see STACK-NOTES: raft-proto needs its own).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY of intent: build scripts are single-threaded at this point.
    unsafe_set_protoc(&protoc);
    println!("cargo:rerun-if-changed=proto/tandem.proto");
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(&["proto/tandem.proto"], &["proto"])?;
    Ok(())
}

#[allow(unsafe_code)]
fn unsafe_set_protoc(path: &std::path::Path) {
    // std::env::set_var is unsafe in edition 2024; harmless in a single-threaded build script.
    #[allow(unused_unsafe)]
    unsafe {
        std::env::set_var("PROTOC", path);
    }
}
