//! `device = "cuda" | "auto"` (issue #20) where no GPU can be used: CI
//! machines have none, and the default build has no CUDA support. `cuda`
//! refuses to start, with the reason; `auto` inspects on the CPU and says why.

use crate::station::{fixture, make_bank, Station};
use crate::util::{bin, run, text, tiny_pack};

/// The reason a build without the feature, or a machine without the driver, gives.
fn why_not(out: &str) -> bool {
    out.contains("--features cuda") || out.contains("libcuda")
}

fn says_why(out: &str) -> bool {
    out.contains("device = \"cuda\"") && why_not(out)
}

#[test]
fn a_station_told_to_use_a_gpu_it_cannot_use_refuses_to_start_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let st = Station::new(dir.path(), Some(1883), "");
    let config = std::fs::read_to_string(&st.config).unwrap();
    std::fs::write(
        &st.config,
        config.replace("[model]\n", "[model]\ndevice = \"cuda\"\n"),
    )
    .unwrap();
    for command in ["check-config", "run"] {
        let o = bin()
            .args([command, "--config"])
            .arg(&st.config)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{command}: {}", text(&o));
        assert!(says_why(&text(&o)), "{command}: {}", text(&o));
    }
    // `auto` passes the check and says where the encoder runs.
    std::fs::write(
        &st.config,
        config.replace("[model]\n", "[model]\ndevice = \"auto\"\n"),
    )
    .unwrap();
    let o = bin()
        .args(["check-config", "--config"])
        .arg(&st.config)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("device        cpu (device = \"auto\""),
        "{}",
        text(&o)
    );
    assert!(why_not(&text(&o)), "{}", text(&o));
}

#[test]
fn the_tools_take_device_and_fall_back_only_when_told_auto() {
    let pack = tiny_pack().display().to_string();
    let bank = make_bank().display().to_string();
    let picture = fixture("queries/hole.png").display().to_string();
    let inspect = |device: &str| {
        run(&[
            "inspect", "--model", &pack, "--bank", &bank, "--json", "--device", device, &picture,
        ])
    };
    let cuda = inspect("cuda");
    assert_eq!(cuda.status.code(), Some(2), "{}", text(&cuda));
    assert!(says_why(&text(&cuda)), "{}", text(&cuda));
    let auto = inspect("auto");
    let cpu = inspect("cpu");
    assert_eq!(auto.status.code(), cpu.status.code());
    let verdict = |o: &std::process::Output| {
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        (
            v["verdict"].clone(),
            v["score"].clone(),
            v["map"].clone(),
            v["regions"].clone(),
        )
    };
    assert_eq!(
        verdict(&auto),
        verdict(&cpu),
        "the same result on the CPU either way"
    );

    let o = run(&["model", "verify", "--model", &pack, "--device", "cuda"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let o = run(&[
        "bench", "--model", &pack, "--images", "1", "--k", "0", "--device", "cuda",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(says_why(&text(&o)), "{}", text(&o));
}
