//! `winclip-edge eval`: the paper's protocol on a dataset, with a report.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};

use crate::eval::{self, report};
use crate::model::ModelPack;

/// Arguments of `eval`.
pub(crate) struct Args {
    pub model: PathBuf,
    pub spec: eval::Spec,
    pub command: String,
}

/// Progress on stderr: a bar with the whole evaluation's ETA on a terminal;
/// elsewhere (a log file, CI) a line every few seconds.
enum Bar {
    Terminal(ProgressBar),
    Lines(Mutex<Lines>),
}

struct Lines {
    total: u64,
    done: u64,
    what: String,
    started: Instant,
    last: Instant,
}

/// Seconds between progress lines when stderr is not a terminal.
const LINE_EVERY: Duration = Duration::from_secs(5);

impl Bar {
    fn new() -> Self {
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template("{msg:<28} [{bar:30}] {pos}/{len} {elapsed_precise} ETA {eta}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            Bar::Terminal(bar)
        } else {
            let now = Instant::now();
            Bar::Lines(Mutex::new(Lines {
                total: 0,
                done: 0,
                what: String::new(),
                started: now,
                last: now,
            }))
        }
    }

    fn finish(&self) {
        if let Bar::Terminal(bar) = self {
            bar.finish_and_clear();
        }
    }
}

impl Lines {
    fn line(&self) -> String {
        let pct = 100.0 * self.done as f64 / self.total.max(1) as f64;
        let eta = match self.done {
            0 => "unknown".to_string(),
            d => {
                let per = self.started.elapsed().as_secs_f64() / d as f64;
                let left = Duration::from_secs((per * self.total.saturating_sub(d) as f64) as u64);
                humantime::format_duration(left).to_string()
            }
        };
        format!(
            "eval: {}/{} ({pct:.0} %), {}; ETA {eta}",
            self.done, self.total, self.what
        )
    }
}

impl eval::Progress for Bar {
    fn start(&self, total: u64) {
        match self {
            Bar::Terminal(bar) => {
                bar.set_length(total);
                bar.set_position(0);
                bar.reset_eta();
            }
            Bar::Lines(l) => {
                if let Ok(mut l) = l.lock() {
                    l.total = total;
                    eprintln!("eval: {total} steps (pictures to extract, runs to score)");
                }
            }
        }
    }

    fn phase(&self, what: &str) {
        match self {
            Bar::Terminal(bar) => bar.set_message(what.to_string()),
            Bar::Lines(l) => {
                if let Ok(mut l) = l.lock() {
                    l.what = what.to_string();
                }
            }
        }
    }

    fn step(&self) {
        match self {
            Bar::Terminal(bar) => bar.inc(1),
            Bar::Lines(l) => {
                if let Ok(mut l) = l.lock() {
                    l.done += 1;
                    if l.last.elapsed() >= LINE_EVERY || l.done == l.total {
                        l.last = Instant::now();
                        eprintln!("{}", l.line());
                    }
                }
            }
        }
    }
}

/// On Ctrl-C (or SIGTERM) say how to go on: every finished run is saved.
fn say_how_to_resume() {
    extern "C" fn on_interrupt(_: nix::libc::c_int) {
        const MSG: &[u8] =
            b"\ninterrupted: rerun the same command to resume (finished runs and features are saved)\n";
        // SAFETY: write(2) and _exit(2) are async-signal-safe.
        unsafe {
            nix::libc::write(2, MSG.as_ptr().cast(), MSG.len());
            nix::libc::_exit(130);
        }
    }
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let action = SigAction::new(
        SigHandler::Handler(on_interrupt),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only makes async-signal-safe calls.
        let _ = unsafe { sigaction(sig, &action) };
    }
}

pub(crate) fn run(args: Args) -> anyhow::Result<ExitCode> {
    let pack =
        ModelPack::open(&args.model).with_context(|| format!("model pack {}", args.model.display()))?;
    say_how_to_resume();
    eprintln!(
        "eval: results go to {}; an interrupted run continues where it stopped when the same command runs again",
        args.spec.out.display()
    );
    let numerics = args.spec.numerics.clone();
    // Reduced precision: the same evaluation in f32 first, into OUT/f32,
    // for the report to set beside it.
    let reference = if numerics.precision.lowers_linear_layers() {
        let spec = eval::Spec {
            out: args.spec.out.join("f32"),
            numerics: Default::default(),
            ..args.spec.clone()
        };
        eprintln!("eval: first in f32, into {}", spec.out.display());
        let bar = Bar::new();
        let runs = eval::evaluate(&args.model, &spec, &bar)?;
        bar.finish();
        Some((spec, runs))
    } else {
        None
    };
    eprintln!("eval: the {numerics} encoder");
    let bar = Bar::new();
    let runs = eval::evaluate(&args.model, &args.spec, &bar)?;
    bar.finish();
    let src = &pack.manifest().source;
    let random = src.pretrained == "none";
    let weights = match (src.pretrained.as_str(), src.seed) {
        ("none", Some(s)) => format!("random weights (seed {s})"),
        ("none", None) => "random weights".to_string(),
        (p, _) => p.to_string(),
    };
    let header = |numerics: &crate::model::Numerics| report::Header {
        kind: args.spec.dataset.kind,
        dataset: &args.spec.dataset.root,
        model: format!(
            "{} / {weights} (pack id {}), token encoder in {numerics}",
            src.model,
            pack.id()
        ),
        random_weights: random,
        seeds: args.spec.seeds,
        image_size: pack.architecture().image_size,
        command: args.command.clone(),
    };
    let mut md = String::new();
    if let Some((spec, f32_runs)) = &reference {
        report::write(&spec.out, &header(&spec.numerics), f32_runs)?;
    }
    md += &report::write(&args.spec.out, &header(&numerics), &runs)?;
    if let Some((_, f32_runs)) = &reference {
        let section = report::against_f32(&runs, f32_runs, &numerics.to_string())?;
        md += &section;
        let path = args.spec.out.join("report.md");
        let mut file =
            std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        file += &section;
        crate::fsutil::write_atomic(&path, file.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    println!("{md}");
    println!("report written to {}", args.spec.out.join("report.md").display());
    Ok(ExitCode::SUCCESS)
}
