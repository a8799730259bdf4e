//! The `camgate` binary; see the library for everything it does.

fn main() -> std::process::ExitCode {
    camgate::cli::main()
}
