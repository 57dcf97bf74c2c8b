use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    // Rust ignores SIGPIPE, so `xaiclip info ... | head` would panic on the closed pipe; restore the
    // default (quiet exit) that command-line tools have.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    xaiclip::backend::cpu::reuse_freed_memory();
    let cli = xaiclip::cli::Cli::parse();
    match xaiclip::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
