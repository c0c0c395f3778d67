//! The one proto build of the workspace (used by `common/`, see its
//! `Cargo.toml`). It needs no system `protoc`: the vendored binary is used.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // prost-build finds `protoc` through this variable. Setting it is sound
    // here: a build script is single-threaded.
    #[allow(unsafe_code)]
    unsafe {
        env::set_var("PROTOC", protoc);
    }

    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("..");
    let proto_dir = root.join("proto");
    let files: Vec<PathBuf> = ["types", "commands", "events", "stream", "queries"]
        .iter()
        .map(|name| proto_dir.join(format!("hotel/v1/{name}.proto")))
        .collect();
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }

    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("hotel_descriptor.bin"))
        .compile_protos(&files, std::slice::from_ref(&proto_dir))?;

    // The command server's EventStream and the query server's services
    // again, with `Subscribe` sending `wire::SubscribeResponse` (stored
    // payloads spliced in as they are), `SearchAvailability`
    // `wire::SearchAvailabilityResponse` (room types' fields encoded once)
    // and every other type `pb`'s: only the server code is generated.
    let wire_dir = out_dir.join("wire");
    std::fs::create_dir_all(&wire_dir)?;
    tonic_prost_build::configure()
        .build_client(false)
        .out_dir(wire_dir)
        .extern_path(".hotel.v1", "crate::pb")
        .extern_path(
            ".hotel.v1.SubscribeResponse",
            "crate::wire::SubscribeResponse",
        )
        .extern_path(
            ".hotel.v1.SearchAvailabilityResponse",
            "crate::wire::SearchAvailabilityResponse",
        )
        .compile_protos(
            &[
                proto_dir.join("hotel/v1/stream.proto"),
                proto_dir.join("hotel/v1/queries.proto"),
            ],
            &[proto_dir],
        )?;
    Ok(())
}
