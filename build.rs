//! Tells the binary the opt-level it was built at, so benchmarks can print it.

fn main() {
    let level = std::env::var("OPT_LEVEL").unwrap_or_else(|_| "?".into());
    println!("cargo:rustc-env=CALLPULSE_OPT_LEVEL={level}");
    println!("cargo:rerun-if-changed=build.rs");
}
