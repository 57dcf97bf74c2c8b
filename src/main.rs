use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = xaiclip::cli::Cli::parse();
    match xaiclip::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
