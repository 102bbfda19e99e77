//! Options for bpf-linker, which generates the XDP object's code.
fn main() {
    // bpf-linker asks LLVM to expand memcpy "in order" by default, which also
    // turns every memset (zeroed padding, `NextHop::default()`, the FIB
    // parameters) into a call to a byte-by-byte loop; without it LLVM writes
    // them as a few plain stores.
    println!("cargo:rustc-link-arg-bins=--disable-expand-memcpy-in-order");
}
