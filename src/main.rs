use clap::Parser as _;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

// mimalloc reserves its first arena at the first allocation, which the Rust runtime makes
// before `main`: its options are set from the process's constructors instead.
#[cfg(target_os = "linux")]
#[used]
#[unsafe(link_section = ".init_array")]
static TUNE_ALLOCATOR: extern "C" fn() = {
    extern "C" fn tune() {
        dendrite::tune_allocator();
    }
    tune
};

fn main() -> std::process::ExitCode {
    dendrite::tune_threads();
    let cli = dendrite::cli::Cli::parse();
    match dendrite::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
