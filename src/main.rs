/// mimalloc: a bot lookup allocates and frees a few dozen small buffers; with
/// glibc's allocator that was 14 % of a lookup's CPU time under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    chatgate::cli::main()
}
