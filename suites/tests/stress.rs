//! The `stress` test target: `cargo test --test stress -- --include-tag chaos`.
fn main() -> std::process::ExitCode {
    poolstress::main()
}
