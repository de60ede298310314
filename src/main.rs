//! The `smig` binary: everything lives in the library's `cli` module.

fn main() -> std::process::ExitCode {
    smig::cli::main()
}
