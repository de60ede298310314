//! The `smig` binary: everything lives in the library's `cli` module.

/// mimalloc: planning a large landscape allocates many small steps and facts; with it the
/// 10k/100k-VM plan benchmark runs 20-35% faster than with the system allocator. Version 2:
/// v3 (the crate's default) crashed in its thread-exit path (`_mi_theap_default_set`) under
/// load, with the many short-lived blocking threads an apply starts.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    smig::cli::main()
}
