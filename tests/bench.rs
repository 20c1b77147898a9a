//! `bench` (issue #6): it runs on the tiny pack and reports every stage and mode.
//! Only the shape of the report is checked; times are never asserted.

use crate::util::{run, text, tiny_pack};

#[test]
fn bench_reports_every_stage_mode_and_memory() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let o = run(&[
        "--threads",
        "1",
        "bench",
        "--model",
        tiny_pack().to_str().unwrap(),
        "--images",
        "1",
        "--shots",
        "1,2",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("GFLOP/s"), "{}", text(&o));
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
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
