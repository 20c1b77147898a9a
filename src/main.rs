//! The `winclip-edge` binary: parse arguments, run, map the outcome to an exit code.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    winclip_edge::logging::init();
    let cli = winclip_edge::cli::Cli::parse();
    if !cli.command.serves() {
        // A tool whose output is piped into `head` ends quietly when the pipe
        // closes, as Unix tools do (Rust ignores SIGPIPE and panics on the
        // write). Not for the daemon: a closed socket must not kill it.
        // SAFETY: restoring a signal's default disposition has no preconditions.
        let _ = unsafe {
            nix::sys::signal::signal(nix::sys::signal::SIGPIPE, nix::sys::signal::SigHandler::SigDfl)
        };
    }
    match winclip_edge::cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(winclip_edge::cli::EXIT_CONFIG)
        }
    }
}
