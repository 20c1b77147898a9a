//! `bench` (issue #6): it runs on the tiny pack and reports every stage and mode.
//! Only the shape of the report is checked; times are never asserted.

use crate::util::{run, text, tiny_pack};

/// Run `bench` on the tiny pack with `args`; return its printed report and
/// its JSON report.
fn bench(args: &[&str]) -> (String, serde_json::Value) {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let pack = tiny_pack();
    let mut all: Vec<&str> = vec![
        "bench",
        "--model",
        pack.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ];
    all.extend(args);
    let o = run(&all);
    assert!(o.status.success(), "{}", text(&o));
    let report = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    (text(&o), report)
}

#[test]
fn bench_reports_every_stage_mode_and_memory() {
    let (out, r) = bench(&["--threads", "1", "--images", "1", "--k", "1,2"]);
    assert!(out.contains("GFLOP/s"), "{out}");
    assert_eq!(r["threads"], 1);
    let stages: Vec<&str> = r["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    for want in [
        "preprocess",
        "image:",
        "windows 2×2 (196 × 5)",
        "windows 3×3 (169 × 10)",
        "WinCLIP+ K=2",
    ] {
        assert!(
            stages.iter().any(|s| s.contains(want)),
            "{want} missing from {stages:?}"
        );
    }
    let modes = r["modes"].as_array().unwrap();
    assert_eq!(
        modes.len(),
        4,
        "classification, zero-shot maps, K=1, K=2: {modes:?}"
    );
    for m in modes {
        assert!(m["median_ms"].as_f64().unwrap() > 0.0, "{m}");
    }
    // The whole picture is more work than the one forward of classification.
    assert!(modes[1]["gflop"].as_f64().unwrap() > modes[0]["gflop"].as_f64().unwrap());
    assert!(r["rss_loaded_bytes"].as_u64().unwrap() > 0);
    // The peak can only be reset where /proc/self/clear_refs is writable
    // (not always under emulation); when it is reported it must make sense.
    if let Some(peak) = r["peak_rss_bytes"].as_u64() {
        assert!(peak >= r["rss_loaded_bytes"].as_u64().unwrap() / 2, "{r}");
    }
}

#[test]
fn bench_stream_compares_the_cascade_with_the_full_pipeline() {
    let (out, r) = bench(&["--images", "1", "--k", "1", "--stream", "5", "--calibration", "3"]);
    assert!(out.contains("early-exit cascade"), "{out}");
    let s = &r["stream"];
    assert_eq!(s["images"], 5);
    assert_eq!(s["calibration_images"], 3);
    assert!(
        s["rule"].as_str().unwrap().contains("fitted on 3 good images"),
        "{s}"
    );
    let agreeing = s["agreeing"].as_u64().unwrap();
    let differing = s["disagreements"].as_array().unwrap().len() as u64;
    assert_eq!(agreeing + differing, 5);
    let pictures = s["pictures"].as_array().unwrap();
    assert_eq!(pictures.len(), 5);
    let exits = pictures.iter().filter(|p| p["early_exit"] == true).count() as u64;
    assert_eq!(s["early_exits"].as_u64().unwrap(), exits);
    // A picture that exited has a bound at or below the threshold.
    let threshold = s["threshold"].as_f64().unwrap();
    for p in pictures.iter().filter(|p| p["early_exit"] == true) {
        assert!(p["bound"].as_f64().unwrap() <= threshold + 1e-6, "{p}");
    }
    assert!(r["precision_check"].is_null(), "f32 needs no comparison");
}

#[test]
fn bench_precision_f16_measures_the_difference_to_f32() {
    // f16 is emulated, slowly, off Arm: no verdict stream.
    let (_, r) = bench(&[
        "--images",
        "1",
        "--k",
        "1",
        "--precision",
        "f16",
        "--verdicts",
        "0",
    ]);
    assert_eq!(r["precision"], "f16");
    let p = &r["precision_check"];
    let map = p["max_map_diff"].as_f64().unwrap();
    // Half precision changes the numbers a little, never a lot.
    assert!(map > 0.0 && map < 0.05 * p["map_range"].as_f64().unwrap(), "{p}");
    assert!(p["max_score_diff"].as_f64().unwrap() < 1e-2, "{p}");
    assert_eq!(p["measured"], "f16 on cpu");
    assert!(p["map_pearson_r"].as_f64().unwrap() > 0.99, "{p}");
    assert_eq!(r["device"]["kind"], "cpu");
    assert!(p["verdicts"].is_null(), "{p}");
}

/// `--precision int8|bf16` (issue #19): the encoder really runs in that
/// precision (or says why not), is timed beside f32 stage by stage, stays
/// close to f32, and judges a stream with a bank of its own.
#[test]
fn bench_precision_int8_and_bf16_measure_speed_and_verdicts_against_f32() {
    for precision in ["int8", "bf16"] {
        let (out, r) = bench(&[
            "--images",
            "1",
            "--k",
            "1",
            "--precision",
            precision,
            "--verdicts",
            "8",
            "--calibration",
            "5",
        ]);
        assert_eq!(r["precision"], precision);
        let n = &r["numerics"];
        assert_eq!(n["asked"], precision, "{n}");
        if n["running"] == precision {
            assert!(n["kernel"].is_string(), "{n}");
            assert_eq!(n["kept"], serde_json::json!(["proj"]), "{n}");
            assert_eq!(n["lowered"].as_array().unwrap().len(), 8, "{n}");
            let plans = r["encoder_plans"].as_array().unwrap();
            assert!(plans.iter().all(|p| p[precision] == 12), "{plans:?}");
        } else {
            // bf16 without bf16 dot products: f32, said in the report.
            assert_eq!(
                (precision, &n["running"]),
                ("bf16", &serde_json::json!("f32")),
                "{n}"
            );
            assert!(out.contains("WARNING: precision = \"bf16\""), "{out}");
        }
        let p = &r["precision_check"];
        let map = p["max_map_diff"].as_f64().unwrap();
        assert!(map < 0.05 * p["map_range"].as_f64().unwrap(), "{p}");
        assert!(p["map_pearson_r"].as_f64().unwrap() > 0.99, "{p}");
        // The f32 encoder's stages, named as the measured ones.
        let stages: Vec<&str> = r["stages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap())
            .collect();
        let f32_stages = p["f32_stages"].as_array().unwrap();
        assert_eq!(f32_stages.len(), 4, "{p}");
        for s in f32_stages {
            assert!(stages.contains(&s[0].as_str().unwrap()), "{s} in {stages:?}");
            assert!(s[1].as_f64().unwrap() > 0.0, "{s}");
        }
        assert!(p["f32_picture_ms"].as_f64().unwrap() > 0.0 && r["picture_ms"].as_f64().unwrap() > 0.0);
        assert!(out.contains("every forward pass of a picture"), "{out}");
        let v = &p["verdicts"];
        assert_eq!(
            (v["pictures"].as_u64(), v["calibration_images"].as_u64()),
            (Some(8), Some(5)),
            "{v}"
        );
        let differing = v["differing"].as_array().unwrap().len() as u64;
        assert_eq!(v["agreeing"].as_u64().unwrap() + differing, 8, "{v}");
        assert!(
            v["threshold_f32"].as_f64().unwrap() > 0.0 && v["threshold_measured"].as_f64().unwrap() > 0.0
        );
        assert!(out.contains("verdicts agree on"), "{out}");
    }
}

/// `--picture-size` (issue #19): decode, resize and heatmap at camera
/// resolution, full and at reduced DCT scale, with the difference measured.
#[test]
fn bench_times_camera_resolutions_full_and_reduced() {
    let (out, r) = bench(&["--images", "1", "--k", "0", "--picture-size", "1280x1024,500x300"]);
    assert!(out.contains("camera resolution"), "{out}");
    let p = r["pictures"].as_array().unwrap();
    assert_eq!(p.len(), 2, "{r}");
    assert_eq!(p[0]["size"]["width"], 1280);
    // 1024 / 2 = 512 ≥ 2 × 240 (the tiny pack's input); 300 cannot shrink.
    assert_eq!(p[0]["reduced_factor"], 2);
    assert_eq!(p[1]["reduced_factor"], 1);
    assert_eq!(p[1]["reduced_input_max_diff"], 0.0, "a full decode both ways");
    let moved = p[0]["reduced_input_mean_diff"].as_f64().unwrap();
    assert!(moved > 0.0 && moved < 0.05, "{moved}");
    for key in ["decode_ms", "preprocess_ms", "reduced_decode_ms", "heatmap_ms"] {
        assert!(p[0][key].as_f64().unwrap() > 0.0, "{key}: {r}");
    }
    let bad = run(&[
        "bench",
        "--model",
        tiny_pack().to_str().unwrap(),
        "--picture-size",
        "2448",
    ]);
    assert!(!bad.status.success());
    assert!(text(&bad).contains("is not WIDTHxHEIGHT"), "{}", text(&bad));
}

/// `model kernels` (issue #19): every int8 and bf16 kernel of this CPU
/// gives the portable kernel's results (under qemu-aarch64 in CI: the Arm
/// dot-product kernel).
#[test]
fn every_kernel_of_this_cpu_agrees_with_the_portable_one() {
    let o = run(&["model", "kernels", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let checks = r["checks"].as_array().unwrap();
    let kernels: Vec<&str> = checks.iter().map(|c| c["kernel"].as_str().unwrap()).collect();
    assert!(kernels.contains(&"portable"), "{kernels:?}");
    for c in checks {
        assert!(c["failure"].is_null(), "{c}");
        assert_eq!(c["products"], 5, "{c}");
    }
    // Exactly one int8 kernel is the encoder's.
    let chosen = checks
        .iter()
        .filter(|c| c["precision"] == "int8" && c["chosen"] == true)
        .count();
    assert_eq!(chosen, 1, "{checks:?}");
    assert!(
        r["timings"].as_array().unwrap().is_empty(),
        "timed only with --time"
    );
}
