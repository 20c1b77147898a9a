//! Evaluation (issue #4): metrics against scikit-learn, and `eval` end to end.

use std::path::Path;

use winclip_edge::eval::metrics;

use crate::util::{root, run, text, tiny_pack};

fn fixture() -> serde_json::Value {
    let path = root().join("tests/fixtures/metrics/metrics.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn f32s(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn bools(v: &serde_json::Value) -> Vec<bool> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_bool().unwrap())
        .collect()
}

fn check(name: &str, what: &str, ours: Result<f64, metrics::Error>, want: &serde_json::Value) {
    match (ours, want.as_f64()) {
        (Ok(v), Some(w)) => assert!((v - w).abs() < 1e-9, "{name} {what}: {v} vs scikit-learn {w}"),
        (Err(metrics::Error::Undefined { .. }), None) => {}
        (o, w) => panic!("{name} {what}: ours {o:?}, scikit-learn {w:?}"),
    }
}

#[test]
fn image_metrics_match_scikit_learn_including_ties_and_one_class_cases() {
    let f = fixture();
    for case in f["image"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let (s, l) = (f32s(&case["scores"]), bools(&case["labels"]));
        check(name, "AUROC", metrics::auroc(&s, &l), &case["auroc"]);
        check(name, "AUPR", metrics::average_precision(&s, &l), &case["aupr"]);
        check(
            name,
            "F1-max",
            metrics::f1_max(&s, &l).map(|(f, _)| f),
            &case["f1_max"],
        );
    }
}

#[test]
fn pixel_metrics_match_scikit_learn_and_a_reference_pro() {
    let p = &fixture()["pixel"];
    let (h, w) = (
        p["height"].as_u64().unwrap() as usize,
        p["width"].as_u64().unwrap() as usize,
    );
    let maps: Vec<Vec<f32>> = p["maps"].as_array().unwrap().iter().map(f32s).collect();
    let masks: Vec<Vec<bool>> = p["masks"].as_array().unwrap().iter().map(bools).collect();
    let all_s: Vec<f32> = maps.concat();
    let all_l: Vec<bool> = masks.concat();
    check("pixel", "AUROC", metrics::auroc(&all_s, &all_l), &p["auroc"]);
    check(
        "pixel",
        "F1-max",
        metrics::f1_max(&all_s, &all_l).map(|(f, _)| f),
        &p["f1_max"],
    );
    let ims: Vec<metrics::MaskedMap<'_>> = maps
        .iter()
        .zip(&masks)
        .map(|(m, g)| metrics::MaskedMap {
            map: m,
            mask: g,
            height: h,
            width: w,
        })
        .collect();
    check("pixel", "PRO", metrics::pro(&ims), &p["pro"]);
}

fn synth_mvtec(dir: &Path) {
    let o = run(&[
        "synth",
        "--layout",
        "mvtec",
        "--out",
        dir.to_str().unwrap(),
        "--categories",
        "bottle=object,carpet=texture",
        "--train",
        "4",
        "--good",
        "3",
        "--bad",
        "4",
        "--size",
        "96",
    ]);
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn eval_runs_end_to_end_writes_a_report_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("mvtec");
    synth_mvtec(&data);
    assert!(data.join("bottle/ground_truth/hole/001_mask.png").is_file());
    let out = dir.path().join("out");
    let (pack, dataset) = (tiny_pack(), format!("mvtec:{}", data.display()));
    let args = [
        "eval",
        "--model",
        pack.to_str().unwrap(),
        "--dataset",
        &dataset,
        "--k",
        "0,1",
        "--seeds",
        "2",
        "-o",
        out.to_str().unwrap(),
    ];
    let o = run(&args);
    assert!(o.status.success(), "{}", text(&o));
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        md.contains("random weights"),
        "the report says the numbers mean nothing"
    );
    // Two of MVTec-AD's 15 categories: the paper's means do not compare (issue #21).
    assert!(
        md.contains("| 0 | image AUROC |") && !md.contains("| 91.8 |") && md.contains("not shown"),
        "no paper column for a subset: {md}"
    );
    // Not on a terminal: progress lines with one ETA for the whole run, and how to resume.
    let err = String::from_utf8_lossy(&o.stderr);
    // 2 categories x (7 test pictures + 3 runs).
    assert!(err.contains("ETA") && err.contains("/20 "), "{err}");
    assert!(err.contains("continues where it stopped"), "{err}");
    let roc = std::fs::read_to_string(out.join("roc-bottle.svg")).unwrap();
    assert!(
        roc.contains("(AUC 0.") || roc.contains("(AUC 1.000)"),
        "AUC in the legend"
    );
    assert!(roc.contains("chance"));
    assert!(
        md.contains("| bottle | 1 |") && md.contains("| carpet | 0 |") && md.contains("| **mean** | 1 |")
    );
    for f in [
        "results.json",
        "results.csv",
        "image-auroc.svg",
        "roc-bottle.svg",
        "pr-carpet.svg",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
    let runs = results["runs"].as_array().unwrap();
    assert_eq!(
        runs.len(),
        2 * (1 + 2),
        "2 categories x (K=0 once + K=1 x 2 seeds)"
    );
    for r in runs {
        assert!(r["metrics"]["image_auroc"].is_number(), "{r}");
        assert!(r["metrics"]["pixel_pro"].is_number(), "{r}");
        assert_eq!(
            r["references"].as_array().unwrap().len(),
            r["shots"].as_u64().unwrap() as usize
        );
    }
    // Different seeds draw different references.
    let refs: Vec<_> = runs
        .iter()
        .filter(|r| r["category"] == "bottle" && r["shots"] == 1)
        .map(|r| r["references"].clone())
        .collect();
    assert_ne!(refs[0], refs[1]);
    let cached = std::fs::read_dir(out.join("cache")).unwrap().count();
    assert!(cached > 0);

    // Resume: a missing run is recomputed, the others are reused as they are.
    let kept = std::fs::read(out.join("runs/bottle/k1-s0.json")).unwrap();
    std::fs::remove_file(out.join("runs/carpet/k1-s1.json")).unwrap();
    let o = run(&args);
    assert!(o.status.success(), "{}", text(&o));
    assert!(out.join("runs/carpet/k1-s1.json").is_file());
    assert_eq!(std::fs::read(out.join("runs/bottle/k1-s0.json")).unwrap(), kept);
    let again: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(again["rows"], results["rows"], "resuming gives the same numbers");

    // Other settings never mix with saved runs.
    let o = run(&[args.as_slice(), &["--tau", "0.01"]].concat());
    assert!(!o.status.success());
    assert!(text(&o).contains("other settings"), "{}", text(&o));
}

/// Issue #19: `eval --precision int8` is the one command that says what
/// int8 does to accuracy on a dataset: the same evaluation in f32 beside it.
#[test]
fn eval_in_int8_reports_beside_f32_on_the_same_pictures() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("mvtec");
    synth_mvtec(&data);
    let out = dir.path().join("out");
    let (pack, dataset) = (tiny_pack(), format!("mvtec:{}", data.display()));
    let args = [
        "eval",
        "--model",
        pack.to_str().unwrap(),
        "--dataset",
        &dataset,
        "--k",
        "0,1",
        "--seeds",
        "1",
        "--precision",
        "int8",
        "-o",
        out.to_str().unwrap(),
    ];
    let o = run(&args);
    assert!(o.status.success(), "{}", text(&o));
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("token encoder in int8"), "{md}");
    assert!(md.contains("## The int8 encoder against f32"), "{md}");
    for row in [
        "| **mean** | 0 | image AUROC |",
        "| **mean** | 1 | pixel AUROC |",
        "| bottle | 1 | image AUROC |",
        "| carpet | 0 | pixel AUROC |",
    ] {
        assert!(md.contains(row), "{row} missing: {md}");
    }
    // 2 categories × 7 test pictures × 2 runs each.
    assert!(md.contains("Image scores of 28 (picture, K, seed) pairs"), "{md}");
    let f32_md = std::fs::read_to_string(out.join("f32/report.md")).unwrap();
    assert!(
        f32_md.contains("token encoder in f32") && !f32_md.contains("against f32"),
        "{f32_md}"
    );
    // The two runs' scores differ (int8 really ran), a little.
    let score = |dir: &Path| -> f64 {
        let r: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("runs/bottle/k1-s0.json")).unwrap()).unwrap();
        r["images"][0][2].as_f64().unwrap()
    };
    let (a, b) = (score(&out), score(&out.join("f32")));
    assert!(a != b && (a - b).abs() < 1e-2, "int8 {a}, f32 {b}");
    // The saved runs are int8's: f32 into the same directory is refused.
    let f32_args: Vec<&str> = args
        .iter()
        .copied()
        .filter(|a| *a != "--precision" && *a != "int8")
        .collect();
    let o = run(&f32_args);
    assert!(!o.status.success());
    assert!(text(&o).contains("other settings"), "{}", text(&o));
}

#[test]
fn dataset_problems_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("mvtec");
    synth_mvtec(&data);
    std::fs::remove_file(data.join("carpet/ground_truth/stain/002_mask.png")).unwrap();
    let (pack, dataset, out) = (
        tiny_pack(),
        format!("mvtec:{}", data.display()),
        dir.path().join("o"),
    );
    let eval = |extra: &[&str]| {
        let base = [
            "eval",
            "--model",
            pack.to_str().unwrap(),
            "--dataset",
            &dataset,
            "-o",
            out.to_str().unwrap(),
        ];
        run(&[base.as_slice(), extra].concat())
    };
    let o = eval(&["--k", "0"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("002_mask.png"), "{}", text(&o));
    // A problem in a category that was not asked for does not matter.
    let o = eval(&["--categories", "bottle", "--k", "9"]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("9 shots asked, only 4 training images"),
        "{}",
        text(&o)
    );
}

/// Issue #21: `--k 8` with 8 training images reported "± 0.0" from identical
/// draws without a word; Ctrl-C said nothing about resuming.
#[test]
fn identical_draws_are_flagged_and_an_interrupt_says_how_to_resume() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("mvtec");
    synth_mvtec(&data);
    let out = dir.path().join("out");
    let (pack, dataset) = (tiny_pack(), format!("mvtec:{}", data.display()));
    let o = run(&[
        "eval",
        "--model",
        pack.to_str().unwrap(),
        "--dataset",
        &dataset,
        "--categories",
        "bottle",
        "--k",
        "4",
        "--seeds",
        "2",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("all 2 seeds draw the same"), "{}", text(&o));
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("every seed draws the same references"), "{md}");

    let mut child = crate::util::bin()
        .args([
            "eval",
            "--model",
            pack.to_str().unwrap(),
            "--dataset",
            &dataset,
            "-o",
        ])
        .arg(dir.path().join("out2"))
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Read;
    let mut err = child.stderr.take().unwrap();
    // Interrupt once it has started work.
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&seen).contains("steps") {
        let n = err.read(&mut buf).unwrap();
        assert!(n > 0, "eval ended early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    err.read_to_end(&mut seen).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert!(
        String::from_utf8_lossy(&seen).contains("rerun the same command to resume"),
        "{}",
        String::from_utf8_lossy(&seen)
    );
}

/// `eval --jpeg-dct-scaling` (issue #19): the test pictures are decoded at
/// reduced DCT scale, as the station does with `station.jpeg_dct_scaling`;
/// the scores move a little, and the runs never mix with full-decode ones.
#[test]
fn eval_can_judge_jpegs_decoded_at_reduced_scale() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("part");
    for (sub, n, defect) in [("good", 2, false), ("bad", 2, true)] {
        std::fs::create_dir_all(data.join(sub)).unwrap();
        for i in 0..n {
            let img = image::RgbImage::from_fn(1000, 1000, |x, y| {
                let hole = defect && (400..400 + 60 * (i + 1)).contains(&x) && (300..380).contains(&y);
                let v = if hole {
                    20
                } else {
                    ((x / 7 + y / 5 + i * 13) % 200) as u8 + 30
                };
                image::Rgb([v, v / 2 + 60, 255 - v])
            });
            let mut jpg = std::io::Cursor::new(Vec::new());
            img.write_to(&mut jpg, image::ImageFormat::Jpeg).unwrap();
            std::fs::write(data.join(sub).join(format!("{i}.jpg")), jpg.into_inner()).unwrap();
        }
    }
    let (pack, dataset) = (tiny_pack(), format!("folder:{}", data.display()));
    let eval = |out: &Path, extra: &[&str]| {
        let mut args = vec![
            "eval",
            "--model",
            pack.to_str().unwrap(),
            "--dataset",
            &dataset,
            "--k",
            "0",
            "-o",
            out.to_str().unwrap(),
        ];
        args.extend(extra);
        run(&args)
    };
    let scores = |out: &Path| -> Vec<f64> {
        // A folder dataset is one category, named after its directory.
        let run = std::fs::read(out.join("runs/part/k0-s0.json")).unwrap();
        let r: serde_json::Value = serde_json::from_slice(&run).unwrap();
        r["images"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i[2].as_f64().unwrap())
            .collect()
    };
    let (full, reduced) = (dir.path().join("full"), dir.path().join("reduced"));
    let o = eval(&full, &[]);
    assert!(o.status.success(), "{}", text(&o));
    let o = eval(&reduced, &["--jpeg-dct-scaling"]);
    assert!(o.status.success(), "{}", text(&o));
    let settings = std::fs::read_to_string(reduced.join("runs/settings.json")).unwrap();
    assert!(settings.contains("\"jpeg_dct_scaling\": true"), "{settings}");
    let (a, b) = (scores(&full), scores(&reduced));
    assert_eq!(a.len(), 4);
    let moved: f64 = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
    assert!(
        moved > 0.0 && moved < 0.01,
        "scores moved by {moved}: {a:?} {b:?}"
    );
    // A directory of full-decode runs refuses the option, and the other way round.
    let o = eval(&full, &["--jpeg-dct-scaling"]);
    assert!(
        !o.status.success() && text(&o).contains("other settings"),
        "{}",
        text(&o)
    );
}
