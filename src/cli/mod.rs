//! Command-line interface: argument types and one function per subcommand.

mod features;
mod model_info;
mod verify;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit code for invalid configuration or arguments (systemd's
/// `RestartPreventExitStatus=` uses it to stop a restart loop).
pub const EXIT_CONFIG: u8 = 2;

/// Zero-/few-shot visual anomaly inspection (WinCLIP / WinCLIP+) for edge CPUs.
#[derive(Debug, Parser)]
#[command(name = "winclip-edge", version, about)]
pub struct Cli {
    /// Threads for inference (0 = one per core).
    #[arg(long, global = true, default_value_t = 0, env = "WINCLIP_THREADS")]
    pub threads: usize,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Model pack tools.
    #[command(subcommand)]
    Model(ModelCommand),
}

/// `winclip-edge model ...`
#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Summarise a model pack and verify its files.
    Info {
        /// Model pack directory.
        #[arg(long)]
        model: PathBuf,
        /// Skip hashing the files (sizes are still checked).
        #[arg(long)]
        no_verify: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Recompute the pack's torch reference outputs with this build and compare
    /// (preprocessing, vision encoder, windows, tokenizer, text encoder).
    Verify {
        /// Model pack directory.
        #[arg(long)]
        model: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Dump an image's features (embedding, token map, patch features, window
    /// embeddings per scale) to a safetensors file, for debugging and parity checks.
    Features {
        /// Model pack directory.
        #[arg(long)]
        model: PathBuf,
        /// Image file.
        image: PathBuf,
        /// Output safetensors file.
        #[arg(short, long)]
        output: PathBuf,
        /// Window scales in patches.
        #[arg(long, value_delimiter = ',', default_value = "2,3")]
        scales: Vec<usize>,
    },
}

/// Run a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    crate::model::set_threads(cli.threads);
    match cli.command {
        Command::Model(ModelCommand::Info {
            model,
            no_verify,
            json,
        }) => model_info::run(&model, !no_verify, json),
        Command::Model(ModelCommand::Verify { model, json }) => verify::run(&model, json),
        Command::Model(ModelCommand::Features {
            model,
            image,
            output,
            scales,
        }) => features::run(&model, &image, &output, &scales),
    }
}
