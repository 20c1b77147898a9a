//! `winclip-edge eval`: the paper's protocol on a dataset, with a report.

use std::path::PathBuf;
use std::process::ExitCode;

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

/// A progress bar with ETA on stderr.
struct Bar(ProgressBar);

impl eval::Progress for Bar {
    fn start(&self, what: &str, total: u64) {
        self.0.set_length(total);
        self.0.set_position(0);
        self.0.reset_eta();
        self.0.set_message(what.to_string());
    }
    fn step(&self) {
        self.0.inc(1);
    }
}

pub(crate) fn run(args: Args) -> anyhow::Result<ExitCode> {
    let pack =
        ModelPack::open(&args.model).with_context(|| format!("model pack {}", args.model.display()))?;
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{msg:<28} [{bar:30}] {pos}/{len} {elapsed_precise} ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let runs = eval::evaluate(&args.model, &args.spec, &Bar(bar.clone()))?;
    bar.finish_and_clear();
    let src = &pack.manifest().source;
    let random = src.pretrained == "none";
    let weights = match (src.pretrained.as_str(), src.seed) {
        ("none", Some(s)) => format!("random weights (seed {s})"),
        ("none", None) => "random weights".to_string(),
        (p, _) => p.to_string(),
    };
    let header = report::Header {
        kind: args.spec.dataset.kind,
        dataset: &args.spec.dataset.root,
        model: format!("{} / {weights} (pack id {})", src.model, pack.id()),
        random_weights: random,
        seeds: args.spec.seeds,
        image_size: pack.architecture().image_size,
        command: args.command,
    };
    let md = report::write(&args.spec.out, &header, &runs)?;
    println!("{md}");
    println!("report written to {}", args.spec.out.join("report.md").display());
    Ok(ExitCode::SUCCESS)
}
