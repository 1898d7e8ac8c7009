use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let protos = [
        "protos/quiver/v1/common.proto",
        "protos/quiver/v1/merger.proto",
        "protos/quiver/v1/searcher.proto",
    ];
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("quiver_descriptor.bin"))
        .compile_protos(&protos, &["protos"])?;
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    Ok(())
}
