//! Evaluation reports: Markdown, JSON and CSV tables with the paper's numbers
//! beside ours, and SVG plots.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use super::dataset::Kind;
use super::{metrics, plot, Metrics, Run};

/// Reads one metric out of [`Metrics`].
pub type Accessor = fn(&Metrics) -> Option<f64>;

/// Metric names in table order, with their accessor.
pub const METRICS: [(&str, Accessor); 6] = [
    ("image AUROC", |m| m.image_auroc),
    ("image AUPR", |m| m.image_aupr),
    ("image F1-max", |m| m.image_f1_max),
    ("pixel AUROC", |m| m.pixel_auroc),
    ("PRO", |m| m.pixel_pro),
    ("pixel F1-max", |m| m.pixel_f1_max),
];

/// The categories the paper's means are over: its numbers compare with ours
/// only when we evaluated all of them.
pub fn benchmark_categories(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::Mvtec => &[
            "bottle",
            "cable",
            "capsule",
            "carpet",
            "grid",
            "hazelnut",
            "leather",
            "metal_nut",
            "pill",
            "screw",
            "tile",
            "toothbrush",
            "transistor",
            "wood",
            "zipper",
        ],
        Kind::Visa => &[
            "candle",
            "capsules",
            "cashew",
            "chewinggum",
            "fryum",
            "macaroni1",
            "macaroni2",
            "pcb1",
            "pcb2",
            "pcb3",
            "pcb4",
            "pipe_fryum",
        ],
        Kind::Folder => &[],
    }
}

/// The paper's category means (percent), by dataset, K and metric (None: not published).
pub fn paper(kind: Kind, k: usize) -> Option<[Option<f64>; 6]> {
    let v = |x: f64| Some(x);
    match (kind, k) {
        (Kind::Mvtec, 0) => Some([v(91.8), v(96.5), v(92.9), v(85.1), v(64.6), v(31.7)]),
        (Kind::Visa, 0) => Some([v(78.1), v(81.2), v(79.0), v(79.6), v(56.8), v(14.8)]),
        (Kind::Mvtec, 1) => Some([v(93.1), None, None, v(95.2), v(87.1), None]),
        (Kind::Mvtec, 2) => Some([v(94.4), None, None, v(96.0), v(88.4), None]),
        (Kind::Mvtec, 4) => Some([v(95.2), None, None, v(96.2), v(89.0), None]),
        (Kind::Visa, 1) => Some([v(83.8), None, None, v(96.4), v(85.1), None]),
        (Kind::Visa, 2) => Some([v(84.6), None, None, v(96.8), v(86.2), None]),
        (Kind::Visa, 4) => Some([v(87.3), None, None, v(97.2), v(87.6), None]),
        _ => None,
    }
}

/// Mean and (population) standard deviation over seeds, in percent.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Stat {
    /// Mean.
    pub mean: f64,
    /// Standard deviation over seeds.
    pub std: f64,
    /// Runs that had the metric (per category; for the mean row, the most of any category).
    pub n: usize,
}

fn stat(values: &[f64]) -> Option<Stat> {
    if values.is_empty() {
        return None;
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let std = (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
    Some(Stat {
        mean: 100.0 * mean,
        std: 100.0 * std,
        n: values.len(),
    })
}

/// Per (category, K): one statistic per metric.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Category ("mean" for the category mean).
    pub category: String,
    /// K.
    pub shots: usize,
    /// Statistics in [`METRICS`] order.
    pub metrics: Vec<Option<Stat>>,
}

/// Aggregate runs into rows, then one "mean" row per K (mean over categories of
/// the per-category means; std = mean of the per-category stds).
pub fn aggregate(runs: &[Run]) -> Vec<Row> {
    let mut groups: BTreeMap<(usize, String), Vec<&Run>> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    for r in runs {
        if !order.contains(&r.category) {
            order.push(r.category.clone());
        }
        groups.entry((r.shots, r.category.clone())).or_default().push(r);
    }
    let mut rows = Vec::new();
    let ks: Vec<usize> = {
        let mut k: Vec<usize> = groups.keys().map(|(k, _)| *k).collect();
        k.dedup();
        k
    };
    for k in ks {
        let mut cat_rows = Vec::new();
        for cat in &order {
            if let Some(rs) = groups.get(&(k, cat.clone())) {
                let metrics = METRICS
                    .iter()
                    .map(|(_, get)| stat(&rs.iter().filter_map(|r| get(&r.metrics)).collect::<Vec<_>>()))
                    .collect();
                cat_rows.push(Row {
                    category: cat.clone(),
                    shots: k,
                    metrics,
                });
            }
        }
        let mean = (0..METRICS.len())
            .map(|i| {
                let v: Vec<Stat> = cat_rows.iter().filter_map(|r| r.metrics[i]).collect();
                (!v.is_empty()).then(|| Stat {
                    mean: v.iter().map(|s| s.mean).sum::<f64>() / v.len() as f64,
                    std: v.iter().map(|s| s.std).sum::<f64>() / v.len() as f64,
                    // Runs per category, so K = 0 shows no spread.
                    n: v.iter().map(|s| s.n).max().unwrap_or(0),
                })
            })
            .collect();
        rows.extend(cat_rows);
        rows.push(Row {
            category: "mean".into(),
            shots: k,
            metrics: mean,
        });
    }
    rows
}

fn cell(s: Option<Stat>) -> String {
    match s {
        Some(s) if s.n > 1 => format!("{:.1} ± {:.1}", s.mean, s.std),
        Some(s) => format!("{:.1}", s.mean),
        None => "–".into(),
    }
}

/// Facts printed at the top of the report.
pub struct Header<'a> {
    /// Dataset layout.
    pub kind: Kind,
    /// Dataset root.
    pub dataset: &'a Path,
    /// Model pack description ("ViT-B-16-plus-240, random weights (seed 0), id …").
    pub model: String,
    /// True when the pack has random weights.
    pub random_weights: bool,
    /// Seeds per K > 0.
    pub seeds: u64,
    /// Side of the square model input (and of the scored maps), in pixels.
    pub image_size: usize,
    /// Command line that produced it.
    pub command: String,
}

/// Write report.md, results.json, results.csv and the SVG plots into `dir`.
pub fn write(dir: &Path, header: &Header<'_>, runs: &[Run]) -> anyhow::Result<String> {
    std::fs::create_dir_all(dir)?;
    let rows = aggregate(runs);
    let mut md = String::new();
    writeln!(md, "# winclip-edge evaluation\n")?;
    writeln!(
        md,
        "- dataset: `{}` ({} layout)",
        header.dataset.display(),
        header.kind
    )?;
    writeln!(md, "- model pack: {}", header.model)?;
    writeln!(md, "- protocol: K-shot references drawn from each category's normal training images, {} seeds per K > 0 (mean ± std over seeds); image metrics on image scores; pixel metrics on the anomaly maps at {s}×{s} (the model input) with masks resized by nearest neighbour; PRO integrated to FPR 0.3 over every distinct score. Values in percent.", header.seeds, s = header.image_size)?;
    writeln!(md, "- command: `{}`\n", header.command)?;
    if header.random_weights {
        writeln!(md, "> **These numbers come from a model with random weights.** They show that the pipeline runs end to end (data loading, few-shot sampling, scoring, metrics, report). They say nothing about the accuracy of WinCLIP with CLIP weights: the zero-shot numbers are near chance, and the few-shot numbers only show that nearest-neighbour matching of random patch features still finds clearly drawn defects. For the paper's numbers, export a real pack (`python3 models/export.py --pretrained laion400m_e31 --out PACK`) and rerun on MVTec-AD or VisA.\n")?;
    }
    let ks: Vec<usize> = {
        let mut v: Vec<usize> = rows.iter().map(|r| r.shots).collect();
        v.dedup();
        v
    };
    // The paper column only where it compares: the paper's numbers are means
    // over every category of its benchmark.
    let benchmark = benchmark_categories(header.kind);
    let evaluated: Vec<&str> = {
        let mut v: Vec<&str> = runs.iter().map(|r| r.category.as_str()).collect();
        v.sort_unstable();
        v.dedup();
        v
    };
    let published = !benchmark.is_empty() && benchmark.iter().all(|c| evaluated.contains(c));
    if !benchmark.is_empty() && !published {
        writeln!(
            md,
            "> The paper's numbers are means over all {} {} categories; {} of them were evaluated here, so they are not shown (a mean over other categories does not compare).\n",
            benchmark.len(),
            header.kind,
            evaluated.iter().filter(|c| benchmark.contains(c)).count()
        )?;
    }
    if published {
        writeln!(md, "## Category mean, ours vs the paper\n")?;
        writeln!(
            md,
            "| K | metric | ours | paper (mean of its {} categories) |",
            benchmark.len()
        )?;
        writeln!(md, "|---|---|---|---|")?;
    } else {
        writeln!(md, "## Summary\n")?;
        writeln!(md, "| K | metric | ours |")?;
        writeln!(md, "|---|---|---|")?;
    }
    for &k in &ks {
        let mean = rows.iter().find(|r| r.shots == k && r.category == "mean");
        let p = paper(header.kind, k);
        for (i, (name, _)) in METRICS.iter().enumerate() {
            let ours = cell(mean.and_then(|r| r.metrics[i]));
            if published {
                let theirs = p
                    .and_then(|p| p[i])
                    .map_or("–".to_string(), |v| format!("{v:.1}"));
                writeln!(md, "| {k} | {name} | {ours} | {theirs} |")?;
            } else {
                writeln!(md, "| {k} | {name} | {ours} |")?;
            }
        }
    }
    writeln!(md, "\n## Per category\n")?;
    write!(md, "| category | K |")?;
    for (name, _) in METRICS {
        write!(md, " {name} |")?;
    }
    writeln!(md, "\n|---|---|{}", "---|".repeat(METRICS.len()))?;
    for r in &rows {
        write!(
            md,
            "| {} | {} |",
            if r.category == "mean" {
                "**mean**"
            } else {
                &r.category
            },
            r.shots
        )?;
        for s in &r.metrics {
            write!(md, " {} |", cell(*s))?;
        }
        writeln!(md)?;
    }
    let notes: Vec<String> = {
        let mut n: Vec<String> = runs
            .iter()
            .flat_map(|r| {
                r.notes
                    .iter()
                    .map(move |x| format!("{} K={}: {x}", r.category, r.shots))
            })
            .collect();
        n.sort();
        n.dedup();
        n
    };
    if !notes.is_empty() {
        writeln!(md, "\nNotes (a metric shown as – could not be computed):\n")?;
        for n in notes {
            writeln!(md, "- {n}")?;
        }
    }

    // Plots: curves of seed 0 per K, and bars of image AUROC per category.
    let cats: Vec<String> = rows
        .iter()
        .filter(|r| r.category != "mean")
        .map(|r| r.category.clone())
        .fold(Vec::new(), |mut v, c| {
            if !v.contains(&c) {
                v.push(c);
            }
            v
        });
    writeln!(md, "\n## Plots\n")?;
    for cat in &cats {
        let mut roc = Vec::new();
        let mut pr = Vec::new();
        let mut positives = 0.0;
        for r in runs.iter().filter(|r| &r.category == cat && r.seed == 0) {
            let s: Vec<f32> = r.images.iter().map(|i| i.2).collect();
            let l: Vec<bool> = r.images.iter().map(|i| i.1).collect();
            positives = l.iter().filter(|x| **x).count() as f64 / l.len().max(1) as f64;
            if let (Ok(c), Ok(a)) = (metrics::roc_curve(&s, &l), metrics::auroc(&s, &l)) {
                roc.push((format!("K={} (AUC {:.3})", r.shots, a), c));
            }
            if let (Ok(c), Ok(a)) = (metrics::pr_curve(&s, &l), metrics::average_precision(&s, &l)) {
                pr.push((format!("K={} (AP {:.3})", r.shots, a), plot::pr_steps(&c)));
            }
        }
        if !roc.is_empty() {
            plot::curves(
                &dir.join(format!("roc-{cat}.svg")),
                &format!("{cat}: image ROC"),
                "false positive rate",
                "true positive rate",
                &roc,
                &[(0.0, 0.0), (1.0, 1.0)],
            )?;
            plot::curves(
                &dir.join(format!("pr-{cat}.svg")),
                &format!("{cat}: image precision-recall"),
                "recall",
                "precision",
                &pr,
                &[(0.0, positives), (1.0, positives)],
            )?;
            writeln!(md, "![ROC {cat}](roc-{cat}.svg) ![PR {cat}](pr-{cat}.svg)")?;
        }
    }
    let series: Vec<plot::BarSeries> = ks
        .iter()
        .map(|&k| {
            let v = cats
                .iter()
                .map(|c| {
                    rows.iter()
                        .find(|r| r.shots == k && &r.category == c)
                        .and_then(|r| r.metrics[0])
                        .map(|s| (s.mean / 100.0, s.std / 100.0))
                })
                .collect();
            (format!("K={k}"), v)
        })
        .collect();
    plot::bars(
        &dir.join("image-auroc.svg"),
        "image AUROC per category (mean ± std over seeds)",
        &cats,
        &series,
    )?;
    writeln!(md, "\n![image AUROC per category](image-auroc.svg)")?;

    std::fs::write(dir.join("report.md"), &md)?;
    std::fs::write(
        dir.join("results.json"),
        serde_json::to_vec_pretty(&serde_json::json!({ "rows": rows, "runs": runs }))?,
    )?;
    let mut csv = String::from("category,shots");
    for (name, _) in METRICS {
        csv.push_str(&format!(",{name} mean,{name} std"));
    }
    csv.push('\n');
    for r in &rows {
        csv.push_str(&format!("{},{}", r.category, r.shots));
        for s in &r.metrics {
            match s {
                Some(s) => csv.push_str(&format!(",{:.3},{:.3}", s.mean, s.std)),
                None => csv.push_str(",,"),
            }
        }
        csv.push('\n');
    }
    std::fs::write(dir.join("results.csv"), csv)?;
    Ok(md)
}

/// The metrics of an evaluation whose encoder ran in `numerics` beside those
/// of the f32 encoder on the same pictures, shots and seeds (`f32_runs`):
/// per K, the category means of every metric; per category, image and pixel
/// AUROC; and how far the image scores moved.
pub fn against_f32(runs: &[Run], f32_runs: &[Run], numerics: &str) -> Result<String, std::fmt::Error> {
    let (rows, base) = (aggregate(runs), aggregate(f32_runs));
    let find =
        |rows: &[Row], cat: &str, k: usize| rows.iter().find(|r| r.category == cat && r.shots == k).cloned();
    let value = |s: Option<Stat>| s.map(|s| s.mean);
    let delta = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => format!("{:+.2}", b - a),
        _ => "–".into(),
    };
    let show = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{v:.2}"));
    let mut md = String::new();
    writeln!(md, "\n## The {numerics} encoder against f32\n")?;
    writeln!(
        md,
        "The same pictures, shots and seeds through the f32 encoder (its own report: `f32/report.md`). \
         Values in percent; Δ is {numerics} minus f32. A model with random weights has no outlier channels: \
         this comparison on your own pictures and weights is what says whether {numerics} is safe for them.\n"
    )?;
    writeln!(md, "| category | K | metric | f32 | {numerics} | Δ |")?;
    writeln!(md, "|---|---|---|---|---|---|")?;
    for r in &rows {
        let Some(b) = find(&base, &r.category, r.shots) else {
            continue;
        };
        let mean = r.category == "mean";
        for (i, (name, _)) in METRICS.iter().enumerate() {
            if !mean && !matches!(*name, "image AUROC" | "pixel AUROC") {
                continue;
            }
            let (f, q) = (value(b.metrics[i]), value(r.metrics[i]));
            let cat = if mean { "**mean**" } else { &r.category };
            writeln!(
                md,
                "| {cat} | {} | {name} | {} | {} | {} |",
                r.shots,
                show(f),
                show(q),
                delta(f, q)
            )?;
        }
    }
    // Image scores, picture by picture.
    let (mut worst, mut xs, mut ys) = (0f32, Vec::new(), Vec::new());
    let mut compared = 0;
    for r in runs {
        let Some(b) = f32_runs
            .iter()
            .find(|b| b.category == r.category && b.shots == r.shots && b.seed == r.seed)
        else {
            continue;
        };
        for ((file, _, q), (bfile, _, f)) in r.images.iter().zip(&b.images) {
            if file == bfile {
                worst = worst.max((q - f).abs());
                xs.push(f64::from(*f));
                ys.push(f64::from(*q));
                compared += 1;
            }
        }
    }
    if compared > 0 {
        writeln!(
            md,
            "\nImage scores of {compared} (picture, K, seed) pairs: largest difference {worst:.2e}, \
             Pearson r {:.6}.",
            metrics::pearson(&xs, &ys)
        )?;
    }
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(cat: &str, k: usize, seed: u64, auroc: f64) -> Run {
        Run {
            category: cat.into(),
            shots: k,
            seed,
            references: vec![],
            metrics: Metrics {
                image_auroc: Some(auroc),
                ..Metrics::default()
            },
            images: vec![],
            notes: vec![],
        }
    }

    #[test]
    fn seeds_average_within_categories_then_categories_average() {
        let runs = vec![
            run("a", 1, 0, 0.8),
            run("a", 1, 1, 0.9),
            run("b", 1, 0, 0.6),
            run("b", 1, 1, 0.6),
        ];
        let rows = aggregate(&runs);
        let a = rows.iter().find(|r| r.category == "a").unwrap().metrics[0].unwrap();
        assert!((a.mean - 85.0).abs() < 1e-9 && (a.std - 5.0).abs() < 1e-9);
        let mean = rows.iter().find(|r| r.category == "mean").unwrap().metrics[0].unwrap();
        assert!((mean.mean - 72.5).abs() < 1e-9);
        assert!(rows.iter().find(|r| r.category == "mean").unwrap().metrics[1].is_none());
    }
}
