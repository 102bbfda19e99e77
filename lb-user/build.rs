//! Embeds the XDP object built by `cargo xtask build-ebpf`.
//!
//! The object is looked up at `XLB_EBPF_OBJ` or at the path where
//! `cargo xtask build-ebpf` leaves it. When it is missing an empty stub is
//! embedded instead, so `cargo check`/`clippy`/`test` of the user-space crates
//! work without the BPF toolchain; `xlb run` then refuses to start and says how
//! to build the object.
use std::{env, fs, path::PathBuf};

fn main() {
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("xlb.bpf.o");
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let default = manifest.join("../target/bpfel-unknown-none/release/lb-ebpf");
    println!("cargo:rerun-if-env-changed=XLB_EBPF_OBJ");
    let src = env::var_os("XLB_EBPF_OBJ").map(PathBuf::from).unwrap_or(default);
    println!("cargo:rerun-if-changed={}", src.display());
    match fs::read(&src) {
        Ok(bytes) => fs::write(&out, bytes).unwrap(),
        Err(_) => {
            println!(
                "cargo:warning=XDP object not found at {}; embedding an empty stub (run `cargo xtask build-ebpf`)",
                src.display()
            );
            fs::write(&out, []).unwrap()
        }
    }
}
