//! Link options of the crate's binaries.
//!
//! `vessel-shim` stays resident once per running container, so its private
//! memory is multiplied by the number of containers. Linked as a
//! position-independent executable, every page of its `.data.rel.ro` and
//! `.got` (vtables, panic locations, string tables: about 290 KiB with the
//! runtime library linked in) is rewritten by the dynamic loader at start
//! and becomes private dirty memory in each shim. Linked at a fixed address
//! those pages need no relocation and stay clean, shared file pages.
//! The cost is that the shim's own code and data are not randomised (its
//! stack, heap and libraries still are); what the shim reads (requests on
//! its root-only socket, the container's output, a microVM agent's frames)
//! is handled by safe Rust.
//!
//! A fully static build (`-C target-feature=+crt-static`, as the microVM
//! tests make for their L1 guest) is left alone: rustc links those as
//! static PIEs with start files that relocate themselves, and `-no-pie` on
//! top of them yields a binary that crashes before `main`.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let features = std::env::var("CARGO_CFG_TARGET_FEATURE").unwrap_or_default();
    if !features.split(',').any(|f| f == "crt-static") {
        println!("cargo:rustc-link-arg-bin=vessel-shim=-no-pie");
    }
}
