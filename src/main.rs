fn main() -> std::process::ExitCode {
    chatgate::cli::main()
}
