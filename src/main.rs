//! The `xaiclip` command: flags converted into library settings (src/cli/), then library calls.

mod cli;

use clap::Parser;
use std::process::ExitCode;

#[global_allocator]
static ALLOC: xaiclip::backend::cpu::CacheAligned = xaiclip::backend::cpu::CacheAligned;

fn main() -> ExitCode {
    // Rust ignores SIGPIPE, so `xaiclip info ... | head` would panic on the closed pipe; restore the
    // default (quiet exit) that command-line tools have.
    // SAFETY: called once at start-up, before any thread exists; SIG_DFL is a valid disposition.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    xaiclip::backend::cpu::reuse_freed_memory();
    let cli = cli::Cli::parse();
    match cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // Interrupted (Ctrl-C, SIGTERM) where a command stops cleanly: the shell's 128 + SIGINT.
        Err(e) if xaiclip::error::kind_of(&e) == xaiclip::ErrorKind::Cancelled => ExitCode::from(130),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
