//! Command-line interface: argument types and one function per subcommand.

mod bank;
mod bench;
mod check_config;
mod demo;
mod eval;
mod features;
mod inspect;
mod kernels;
mod model_info;
mod synth;
mod verify;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit code: at least one part failed (`inspect`), or the daemon stopped on
/// a fault that a restart may cure (`run`).
pub const EXIT_FAIL: u8 = 1;
/// Exit code: the command could not do what was asked: bad usage,
/// configuration, model pack, bank or input files (systemd's
/// `RestartPreventExitStatus=` uses it to stop a restart loop).
pub const EXIT_CONFIG: u8 = 2;
/// Exit code: at least one picture could not be inspected (`inspect`).
pub const EXIT_UNINSPECTED: u8 = 3;

/// The exit codes, as `--help` shows them.
const EXIT_CODES: &str = "\
Exit status:
  0  success (inspect: every part passed)
  1  inspect: at least one part failed; run: stopped on a fault a restart may cure
  2  usage, configuration, model pack, bank or input files cannot be used (run: do not restart)
  3  inspect: at least one picture could not be inspected

Examples:
  winclip-edge demo
  winclip-edge bank --model models/tiny --object bottle --shots good/ --calibrate more-good/ -o bottle.bank
  winclip-edge inspect --model models/tiny --bank bottle.bank parts/
  winclip-edge run --config /etc/winclip-edge/config.toml";

/// Zero-/few-shot visual anomaly inspection (WinCLIP / WinCLIP+) for edge CPUs.
#[derive(Debug, Parser)]
#[command(name = "winclip-edge", version, about, after_help = EXIT_CODES)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// `--threads`, on the commands that run the model.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct Threads {
    /// Threads for inference (0 = one per core).
    #[arg(long, default_value_t = 0, env = "WINCLIP_THREADS")]
    pub threads: usize,
}

/// `--precision` and `--f32-layers`, on the commands that run the vision model.
#[derive(Debug, Clone, clap::Args)]
pub struct NumericsArgs {
    /// Token encoder precision: f32 (the reference), int8 (linear layers in
    /// 8-bit integers), bf16 (where the CPU has bf16 dot products, else f32),
    /// f16 (native on ARMv8.2+, emulated and slow elsewhere).
    #[arg(long, value_enum, default_value_t = crate::model::Precision::F32)]
    pub precision: crate::model::Precision,
    /// With int8 or bf16: linear layers kept in f32, by name or glob pattern,
    /// comma-separated (`blocks.11.*,*.mlp.c_proj`; `model info` lists the
    /// names). The final projection always is.
    #[arg(long, value_name = "LAYERS", value_delimiter = ',')]
    pub f32_layers: Vec<String>,
}

impl NumericsArgs {
    /// The checked numerics.
    pub fn numerics(&self) -> anyhow::Result<crate::model::Numerics> {
        let f32_layers =
            crate::model::F32Layers::new(&self.f32_layers).map_err(|e| anyhow::anyhow!("--{e}"))?;
        if !f32_layers.patterns().is_empty() && !self.precision.lowers_linear_layers() {
            anyhow::bail!(
                "--f32-layers applies to --precision int8 and bf16 only, not {}",
                self.precision
            );
        }
        Ok(crate::model::Numerics {
            precision: self.precision,
            f32_layers,
        })
    }
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// The whole station end to end on built-in defaults: synthetic parts, the
    /// bundled tiny model, an embedded MQTT broker, verdicts and heatmaps shown live.
    #[command(
        after_help = "Examples:\n  winclip-edge demo\n  winclip-edge demo --keep-running --port 1883   # then: mosquitto_sub -p 1883 -t 'winclip/#' -v"
    )]
    Demo {
        /// Model pack (default: the bundled tiny pack).
        #[arg(long)]
        model: Option<PathBuf>,
        /// Working directory (default: a new one under the system temp dir).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Pictures to drop into the station.
        #[arg(long, default_value_t = 24)]
        images: usize,
        /// Port of the embedded broker (default: a free one).
        #[arg(long)]
        port: Option<u16>,
        /// Keep the station running after the pictures (until Ctrl-C), to watch
        /// it with mosquitto_sub or drop pictures of your own into it.
        #[arg(long)]
        keep_running: bool,
        #[command(flatten)]
        threads: Threads,
    },
    /// Run the inspection daemon (what `systemctl start winclip-edge` runs).
    #[command(
        after_help = "Exit status: 0 stopped by SIGTERM; 1 a fault a restart may cure; 2 configuration, \
model pack, bank or source problem (systemd does not restart).\n\nExamples:\n  winclip-edge run --config /etc/winclip-edge/config.toml"
    )]
    Run {
        /// Configuration file.
        #[arg(long, default_value = "/etc/winclip-edge/config.toml")]
        config: PathBuf,
    },
    /// Validate a daemon configuration and print what it resolves to.
    #[command(
        after_help = "Exit status: 0 OK; 2 a problem (each one is printed).\n\nExamples:\n  \
winclip-edge check-config --config /etc/winclip-edge/config.toml\n  \
winclip-edge check-config --config /etc/winclip-edge/config.toml --connect"
    )]
    CheckConfig {
        /// Configuration file.
        #[arg(long, default_value = "/etc/winclip-edge/config.toml")]
        config: PathBuf,
        /// Also connect to the broker (log in, as the station would) and check that the
        /// state and drop directories can be written.
        #[arg(long)]
        connect: bool,
    },
    /// Build a bank: text prototypes, optional few-shot references (WinCLIP+), threshold.
    #[command(after_help = "Examples:\n  \
winclip-edge bank --model models/tiny --object bottle -o bottle-zero.bank\n  \
winclip-edge bank --model models/tiny --object bottle --shots good/ --calibrate more-good/ -o bottle.bank\n  \
winclip-edge bank --model models/tiny --object pcb --state \"bad soldering\" --shots good/ --threshold 0.29 -o pcb.bank")]
    Bank(BankArgs),
    /// Inspect images against a bank: verdicts, scores, maps, heatmaps.
    #[command(
        after_help = "Exit status: 0 every part passed; 1 at least one failed; 2 usage, model pack or bank \
error, or no picture found; 3 at least one picture could not be inspected.\n\nExamples:\n  \
winclip-edge inspect --model models/tiny --bank bottle.bank part.png\n  \
winclip-edge inspect --model models/tiny --bank bottle.bank --json --heatmaps out/ good/ bad/"
    )]
    Inspect(InspectArgs),
    /// Write synthetic good and defective pictures with defect masks.
    #[command(
        after_help = "Examples:\n  winclip-edge synth --out synth/ --good 8 --bad 4\n  \
winclip-edge synth --layout mvtec --out data/ --categories bottle=object,carpet=texture"
    )]
    Synth(SynthArgs),
    /// Evaluate on MVTec-AD, VisA or a folder of parts: metrics, report, plots.
    #[command(after_help = "Examples:\n  \
winclip-edge eval --model models/vit-b-16-plus-240 --dataset mvtec:/data/mvtec --k 0,1,2,4 --seeds 5 -o eval-mvtec\n  \
winclip-edge eval --model models/tiny --dataset folder:my-part/ -o eval-part")]
    Eval(EvalArgs),
    /// Time every stage on this machine: median ms, GFLOP/s, peak RSS.
    #[command(after_help = "Examples:\n  winclip-edge bench --model models/tiny\n  \
winclip-edge bench --model models/vit-b-16-plus-240 --k 1,4 --stream 40 --json bench.json\n  \
winclip-edge bench --model models/tiny --picture-size 1280x1024,2448x2048,5472x3648")]
    Bench(BenchArgs),
    /// Model pack tools.
    #[command(subcommand)]
    Model(ModelCommand),
}

/// `winclip-edge bank ...`
#[derive(Debug, clap::Args)]
pub struct BankArgs {
    /// Model pack directory.
    #[arg(long)]
    pub model: PathBuf,
    /// Object name used in the prompts ("bottle", "pcb", "metal nut").
    #[arg(long)]
    pub object: String,
    /// Images (or directories of images) of good parts: K shots for WinCLIP+. None = zero-shot.
    #[arg(long, num_args = 1..)]
    pub shots: Vec<PathBuf>,
    /// Directory of further good images: sets the threshold from their scores.
    #[arg(long)]
    pub calibrate: Option<PathBuf>,
    /// Explicit decision threshold on the image score (overrides calibration).
    #[arg(long)]
    pub threshold: Option<f32>,
    /// Build a WinCLIP+ bank without --calibrate or --threshold anyway: its
    /// threshold is then the zero-shot 0.5, which passes every defect until a
    /// threshold is given where it is used (inspect --threshold, the daemon's
    /// model.threshold; the daemon refuses it otherwise).
    #[arg(long)]
    pub uncalibrated: bool,
    /// Calibration rule: threshold = max(highest score, mean + SIGMAS·std).
    #[arg(long, default_value_t = crate::bank::DEFAULT_SIGMAS)]
    pub sigmas: f32,
    /// Template set: "paper" (22 templates) or "anomalib" (21).
    #[arg(long, default_value = "paper")]
    pub prompt_set: crate::winclip::TemplateSet,
    /// Extra anomalous state, e.g. "bad soldering" or "{} with a bent pin" (repeatable).
    #[arg(long = "state")]
    pub states: Vec<String>,
    /// Softmax temperature of the class score.
    #[arg(long, default_value_t = crate::winclip::DEFAULT_TAU)]
    pub tau: f32,
    /// Window scales in patches.
    #[arg(long, value_delimiter = ',', default_value = "2,3")]
    pub scales: Vec<usize>,
    /// Region of interest x,y,width,height: pixels (100,50,640,480) or fractions of
    /// the picture (0.1,0.05,0.5,0.9). The shots, the calibration pictures and every
    /// picture judged with the bank are cropped to it; outside it nothing can fail.
    #[arg(long)]
    pub roi: Option<crate::roi::Roi>,
    /// A mask picture (white = inspect), of the camera picture's size (cropped
    /// to --roi as the pictures are): only its patches can fail a part. The
    /// zero-shot image score still sees the whole crop; --roi is the hard limit.
    #[arg(long, value_name = "PNG")]
    pub roi_mask: Option<PathBuf>,
    /// Output bank file.
    #[arg(
        short,
        long = "out",
        visible_alias = "output",
        required_unless_present = "recipe_dir"
    )]
    pub output: Option<PathBuf>,
    /// Make a recipe directory instead of a bank file: the bank with copies of
    /// the shots and the calibration pictures, in versions, so the station can
    /// rebuild it when an operator teaches a picture (`teach`, `rollback`).
    /// Name the directory as a bank in the configuration.
    #[arg(long, conflicts_with = "output")]
    pub recipe_dir: Option<PathBuf>,
    /// The encoder's arithmetic the bank is built with (and recorded in it):
    /// a station or `inspect` must run the same to use it (f32 and f16 are alike).
    #[command(flatten)]
    pub numerics: NumericsArgs,
    #[command(flatten)]
    pub threads: Threads,
}

/// `winclip-edge inspect ...`
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// Model pack directory.
    #[arg(long)]
    pub model: PathBuf,
    /// Bank file.
    #[arg(long)]
    pub bank: PathBuf,
    /// Image files or directories.
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    /// One JSON object per image on stdout.
    #[arg(long)]
    pub json: bool,
    /// Write each anomaly map as <stem>.npy (float32, model input resolution) and <stem>.grid.npy (patch grid).
    #[arg(long)]
    pub maps: Option<PathBuf>,
    /// Write <stem>.jpg (heatmap over the picture) and <stem>.thumb.jpg.
    #[arg(long)]
    pub heatmaps: Option<PathBuf>,
    /// Override the bank's threshold.
    #[arg(long)]
    pub threshold: Option<f32>,
    /// Early-exit cascade: pass an image from the full-image pass alone when
    /// its prescore plus the bank's calibrated margin is at or below the threshold.
    #[arg(long)]
    pub early_exit: bool,
    #[command(flatten)]
    pub numerics: NumericsArgs,
    /// Where the token encoder runs: cpu, cuda (a build with `--features cuda`
    /// and an NVIDIA GPU) or auto (CUDA when it can be used, else the CPU).
    #[arg(long, value_enum, default_value_t = crate::model::Device::Cpu)]
    pub device: crate::model::Device,
    #[command(flatten)]
    pub threads: Threads,
}

/// `winclip-edge eval ...`
#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// Model pack directory.
    #[arg(long)]
    pub model: PathBuf,
    /// Dataset: mvtec:PATH, visa:PATH or folder:PATH.
    #[arg(long)]
    pub dataset: crate::eval::dataset::Spec,
    /// Categories to evaluate (default: all).
    #[arg(long, value_delimiter = ',')]
    pub categories: Vec<String>,
    /// K, the shot counts to evaluate (0 = zero-shot).
    #[arg(
        long = "k",
        value_name = "K",
        alias = "shots",
        value_delimiter = ',',
        default_value = "0,1,2,4"
    )]
    pub shots: Vec<usize>,
    /// Seeds (reference draws) per K > 0.
    #[arg(long, default_value_t = 5)]
    pub seeds: u64,
    /// Output directory: report.md, results.json/.csv, plots; cache/ and runs/ make it resumable.
    #[arg(short, long, default_value = "eval-out")]
    pub out: PathBuf,
    /// Template set: "paper" or "anomalib".
    #[arg(long, default_value = "paper")]
    pub prompt_set: crate::winclip::TemplateSet,
    /// Softmax temperature.
    #[arg(long, default_value_t = crate::winclip::DEFAULT_TAU)]
    pub tau: f32,
    /// Decode the test pictures at reduced JPEG DCT scale, as the station
    /// does with `station.jpeg_dct_scaling` (the shots in full, as in a
    /// bank): compare the report with one made without it.
    #[arg(long)]
    pub jpeg_dct_scaling: bool,
    /// The token encoder's arithmetic; with int8 or bf16 the same evaluation
    /// also runs in f32 (into OUT/f32) and the report sets the two side by side.
    #[command(flatten)]
    pub numerics: NumericsArgs,
    #[command(flatten)]
    pub threads: Threads,
}

/// `winclip-edge bench ...`
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Model pack directory.
    #[arg(long)]
    pub model: PathBuf,
    /// Pictures to time (after one warm-up).
    #[arg(long, default_value_t = 5)]
    pub images: usize,
    /// K, the WinCLIP+ shot counts to time (0 = zero-shot only).
    #[arg(
        long = "k",
        value_name = "K",
        alias = "shots",
        value_delimiter = ',',
        default_value = "1,4"
    )]
    pub shots: Vec<usize>,
    /// Also write the numbers as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Then time the early-exit cascade against the full pipeline on a stream
    /// of this many pictures (95 % good, 5 % defective), with a bank of the
    /// largest --k calibrated on --calibration good pictures; 0 skips it.
    #[arg(long, default_value_t = 0)]
    pub stream: usize,
    /// Good pictures the stream's bank is calibrated on.
    #[arg(long, default_value_t = 20)]
    pub calibration: usize,
    /// The token encoder's arithmetic; with any but f32, the differences
    /// to f32 on the same pictures, a verdict stream and (`--eval`) AUROC
    /// are measured too.
    #[command(flatten)]
    pub numerics: NumericsArgs,
    /// Where the token encoder runs: cpu, cuda (a build with `--features cuda`
    /// and an NVIDIA GPU) or auto (CUDA when it can be used, else the CPU).
    #[arg(long, value_enum, default_value_t = crate::model::Device::Cpu)]
    pub device: crate::model::Device,
    /// Also time JPEG decode, the resize to the model's input and the heatmap
    /// at these camera resolutions (WIDTHxHEIGHT, comma-separated), full and
    /// at reduced DCT scale, and measure what the reduced decode changes.
    #[arg(long = "picture-size", value_name = "WxH", value_delimiter = ',')]
    pub picture_sizes: Vec<bench::PictureSize>,
    /// With any precision but f32 (or another device): judge a stream of this
    /// many synthetic pictures (5 % defective) with a bank of the largest --k
    /// built and calibrated (--calibration good pictures) with each encoder,
    /// and count the verdicts that agree; 0 skips it.
    #[arg(long, default_value_t = 200)]
    pub verdicts: usize,
    #[command(flatten)]
    pub threads: Threads,
}

/// `winclip-edge synth ...`
#[derive(Debug, clap::Args)]
pub struct SynthArgs {
    /// Output directory (gets good/, bad/, masks/).
    #[arg(short, long)]
    pub out: PathBuf,
    /// "object" (a round part) or "texture" (a woven surface).
    #[arg(long, default_value = "object")]
    pub scene: crate::synth::Scene,
    /// Number of good pictures.
    #[arg(long, default_value_t = 8)]
    pub good: usize,
    /// Number of defective pictures.
    #[arg(long, default_value_t = 4)]
    pub bad: usize,
    /// Picture side in pixels.
    #[arg(long, default_value_t = 256)]
    pub size: u32,
    /// Random seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Directory layout to write.
    #[arg(long, value_enum, default_value_t = SynthLayout::Folder)]
    pub layout: SynthLayout,
    /// Categories for the mvtec layout, as name=scene (scene: object or texture).
    #[arg(long, value_delimiter = ',', default_value = "bottle=object,carpet=texture")]
    pub categories: Vec<String>,
    /// Normal training images per category (mvtec layout).
    #[arg(long, default_value_t = 8)]
    pub train: usize,
}

/// Layouts `synth` can write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SynthLayout {
    /// good/, bad/, masks/ (the `folder:` dataset layout).
    Folder,
    /// <category>/train/good, test/<defect>, ground_truth/<defect> (the `mvtec:` layout).
    Mvtec,
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
        /// Where the token encoder runs: cpu, cuda (a build with `--features cuda`
        /// and an NVIDIA GPU) or auto (CUDA when it can be used, else the CPU).
        #[arg(long, value_enum, default_value_t = crate::model::Device::Cpu)]
        device: crate::model::Device,
        #[command(flatten)]
        threads: Threads,
    },
    /// The int8 and bf16 kernels this CPU runs: each checked against the
    /// portable reference (exit status 1 if one differs), and with --time
    /// timed against f32 on the encoder's shapes.
    Kernels {
        /// Also time every kernel on ViT-B-16-plus-240's linear layers (one thread).
        #[arg(long)]
        time: bool,
        /// Timed runs per product (the median is printed).
        #[arg(long, default_value_t = 5)]
        repeats: usize,
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
        #[arg(short, long = "out", visible_alias = "output")]
        output: PathBuf,
        /// Window scales in patches.
        #[arg(long, value_delimiter = ',', default_value = "2,3")]
        scales: Vec<usize>,
        #[command(flatten)]
        threads: Threads,
    },
}

impl Command {
    /// Whether the command serves for long (the daemon, the demo) rather
    /// than printing a result and ending.
    pub fn serves(&self) -> bool {
        matches!(self, Command::Run { .. } | Command::Demo { .. })
    }
}

/// Run a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let threads = |t: Threads| crate::model::set_threads(t.threads);
    match cli.command {
        Command::Run { config } => match crate::daemon::run(&config) {
            Ok(()) => Ok(ExitCode::SUCCESS),
            Err(crate::daemon::Error::Config(e)) => {
                log::error!("{e:#}");
                Ok(ExitCode::from(EXIT_CONFIG))
            }
            Err(crate::daemon::Error::Runtime(e)) => {
                log::error!("{e:#}");
                Ok(ExitCode::from(EXIT_FAIL))
            }
        },
        Command::Demo {
            model,
            dir,
            images,
            port,
            keep_running,
            threads: t,
        } => demo::run(demo::Args {
            model,
            dir,
            images,
            port,
            keep_running,
            threads: t.threads,
        }),
        Command::CheckConfig { config, connect } => check_config::run(&config, connect),
        Command::Bank(a) => {
            threads(a.threads);
            bank::run(bank::Args {
                model: a.model,
                numerics: a.numerics.numerics()?,
                spec: crate::inspector::BankSpec {
                    object: a.object,
                    prompt_set: a.prompt_set,
                    extra_states: a.states,
                    config: crate::winclip::Config {
                        tau: a.tau,
                        scales: a.scales,
                        stride: 1,
                    },
                    threshold: a.threshold,
                    sigmas: a.sigmas,
                    roi: a.roi,
                    mask: None,
                },
                roi_mask: a.roi_mask,
                shots: a.shots,
                calibrate: a.calibrate,
                uncalibrated: a.uncalibrated,
                output: match (a.output, a.recipe_dir) {
                    (_, Some(dir)) => bank::Output::RecipeDir(dir),
                    (Some(file), None) => bank::Output::File(file),
                    (None, None) => anyhow::bail!("bank: give --out FILE or --recipe-dir DIR"),
                },
            })
        }
        Command::Inspect(a) => {
            threads(a.threads);
            inspect::run(inspect::Args {
                model: a.model,
                bank: a.bank,
                images: a.images,
                json: a.json,
                maps: a.maps,
                heatmaps: a.heatmaps,
                threshold: a.threshold,
                early_exit: a.early_exit,
                numerics: a.numerics.numerics()?,
                device: a.device,
            })
        }
        Command::Synth(a) => synth::run(&a),
        Command::Bench(a) => bench::run(bench::Args {
            model: a.model,
            images: a.images,
            shots: a.shots,
            threads: threads(a.threads),
            json: a.json,
            stream: a.stream,
            calibration: a.calibration,
            numerics: a.numerics.numerics()?,
            device: a.device,
            picture_sizes: a.picture_sizes,
            verdicts: a.verdicts,
        }),
        Command::Eval(a) => {
            threads(a.threads);
            eval::run(eval::Args {
                model: a.model,
                command: std::iter::once("winclip-edge".to_string())
                    .chain(std::env::args().skip(1))
                    .collect::<Vec<_>>()
                    .join(" "),
                spec: crate::eval::Spec {
                    dataset: a.dataset,
                    categories: a.categories,
                    shots: a.shots,
                    seeds: a.seeds,
                    out: a.out,
                    prompt_set: a.prompt_set,
                    config: crate::winclip::Config {
                        tau: a.tau,
                        ..crate::winclip::Config::default()
                    },
                    jpeg_dct_scaling: a.jpeg_dct_scaling,
                    numerics: a.numerics.numerics()?,
                },
            })
        }
        Command::Model(ModelCommand::Info {
            model,
            no_verify,
            json,
        }) => model_info::run(&model, !no_verify, json),
        Command::Model(ModelCommand::Verify {
            model,
            json,
            device,
            threads: t,
        }) => {
            threads(t);
            verify::run(&model, json, device)
        }
        Command::Model(ModelCommand::Kernels { time, repeats, json }) => kernels::run(time, repeats, json),
        Command::Model(ModelCommand::Features {
            model,
            image,
            output,
            scales,
            threads: t,
        }) => {
            threads(t);
            features::run(&model, &image, &output, &scales)
        }
    }
}
