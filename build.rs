//! Generates the gRPC code of KEDA's external scaler protocol (`proto/keda/`, vendored with
//! its licence): the server for the crate (`src/api/keda/`), and a client, in a directory
//! of its own, for `tests/keda.rs`. Needs `protoc` (Debian's `protobuf-compiler`), as
//! etcd-client's own build does.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/keda/externalscaler.proto";
    println!("cargo:rerun-if-changed={proto}");
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    // The server: `$OUT_DIR/externalscaler.rs`.
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(false)
        .compile_protos(&[proto], &["proto/keda"])?;
    // The client the tests call it with: `$OUT_DIR/client/externalscaler.rs`.
    let client = out.join("client");
    std::fs::create_dir_all(&client)?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .out_dir(client)
        .compile_protos(&[proto], &["proto/keda"])?;
    Ok(())
}
