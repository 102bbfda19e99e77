//! Options for bpf-linker, which generates the XDP object's code.
fn main() {
    // Only for the BPF target (a host build of the crate links with cc).
    if !std::env::var("TARGET").is_ok_and(|t| t.starts_with("bpf")) {
        return;
    }
    // bpf-linker asks LLVM to expand memcpy "in order" by default, which also
    // turns every memset (zeroed padding, `NextHop::default()`, the FIB
    // parameters) into a call to a byte-by-byte loop; without it LLVM writes
    // them as a few plain stores.
    println!("cargo:rustc-link-arg-bins=--disable-expand-memcpy-in-order");
    // BTF, so that the conntrack table's functions can be global functions,
    // which the verifier checks once rather than on every path that calls
    // them; exported, so that bpf-linker keeps them global.
    println!("cargo:rustc-link-arg-bins=--btf");
    println!("cargo:rustc-link-arg-bins=--export=xlb_ct_find,xlb_ct_insert");
}
