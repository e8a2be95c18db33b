//! Records how the harness itself was optimized, so a run can say when its
//! hot path (the load generator) runs unoptimized.
fn main() {
    let opt = std::env::var("OPT_LEVEL").unwrap_or_else(|_| "?".into());
    let profile = std::env::var("PROFILE").unwrap_or_else(|_| "?".into());
    println!("cargo:rustc-env=POOLSTRESS_HARNESS_OPT_LEVEL={opt}");
    println!("cargo:rustc-env=POOLSTRESS_HARNESS_PROFILE={profile}");
    println!("cargo:rerun-if-changed=build.rs");
}
