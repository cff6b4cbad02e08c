//! Generates gRPC code from the protobuf definitions in `proto/`, compiled by `protox` (in
//! Rust: building needs no `protoc`):
//! - KEDA's external scaler protocol (`proto/keda/`, vendored with its licence): the server
//!   for the crate (`src/api/keda/`), and a client, in a directory of its own, for
//!   `tests/keda.rs`;
//! - the part of etcd's API that `src/cluster/etcd/` uses (`proto/etcd/`): a client, for
//!   the crate and the tests that set etcd up.

use std::path::{Path, PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(std::env::var("OUT_DIR")?);

    let keda = compile("proto/keda/externalscaler.proto", "proto/keda")?;
    // The server: `$OUT_DIR/externalscaler.rs`.
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(false)
        .compile_fds(keda.clone())?;
    // The client the tests call it with: `$OUT_DIR/client/externalscaler.rs`.
    let client = out.join("client");
    std::fs::create_dir_all(&client)?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .out_dir(client)
        .compile_fds(keda)?;

    // etcd's client: `$OUT_DIR/etcdserverpb.rs`.
    let etcd = compile("proto/etcd/etcd.proto", "proto/etcd")?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .compile_fds(etcd)?;
    Ok(())
}

/// Parses `proto` (its imports found under `include`) into a descriptor set.
fn compile(
    proto: &str,
    include: &str,
) -> Result<prost_types::FileDescriptorSet, Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={proto}");
    let set = protox::compile([Path::new(proto)], [Path::new(include)])
        .map_err(|e| format!("{proto}: {e}"))?;
    Ok(set)
}
