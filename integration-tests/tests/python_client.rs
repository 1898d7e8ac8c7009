//! A client in another language: Python's grpcio, with stubs generated from our .proto
//! files by protoc, drives the Merger over real gRPC.

use std::{path::Path, process::Command};

use quiver_integration_tests::Cluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpc_client_drives_the_merger() {
    let python = Path::new("/usr/bin/python3");
    assert!(
        python.exists() && Path::new("/usr/bin/grpc_python_plugin").exists(),
        "Debian's python3-grpcio and protobuf-compiler-grpc are missing: run ./scripts/test.sh"
    );
    let cluster = Cluster::start(2, 10).await;
    let work = tempfile::tempdir().unwrap();
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let output = Command::new(python)
        .arg(manifest.join("python/merger_client.py"))
        .arg(&cluster.merger_address)
        .arg(manifest.join("../proto/protos"))
        .arg(work.path())
        .output()
        .expect("run the Python client");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the Python client failed:\nstdout: {stdout}\nstderr: {stderr}\nmerger log:\n{}",
        cluster.log_tail("merger")
    );
    assert!(
        stdout.contains("python client: all checks passed"),
        "{stdout}"
    );
}
