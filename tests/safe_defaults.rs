//! Safe by default (issue #21): the station never passes defects quietly
//! because of a setting that was left out. Each test is an observed mistake.

use std::path::{Path, PathBuf};

use crate::station::{fixture, Station};
use crate::util::{bin, run, text, tiny_pack};

fn bank(dir: &Path, name: &str, extra: &[&str]) -> (PathBuf, std::process::Output) {
    let out = dir.join(name);
    let pack = tiny_pack();
    let mut args = vec!["bank", "--model", pack.to_str().unwrap(), "--object", "pcb", "-o"];
    let out_s = out.display().to_string();
    args.push(&out_s);
    args.extend_from_slice(extra);
    (out.clone(), run(&args))
}

/// Observed: `bank --shots good/` printed "threshold 0.50000 (Default)",
/// and `inspect` then passed 12 of 12 defective parts.
#[test]
fn an_uncalibrated_winclip_plus_bank_is_refused_unless_asked_for_and_never_served_without_a_threshold() {
    let dir = tempfile::tempdir().unwrap();
    let s0 = fixture("shots/000.png").display().to_string();
    let (path, o) = bank(dir.path(), "plain.bank", &["--shots", &s0]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("needs a threshold") && text(&o).contains("--calibrate DIR"),
        "{}",
        text(&o)
    );
    assert!(!path.exists(), "nothing written");

    let (path, o) = bank(dir.path(), "risky.bank", &["--shots", &s0, "--uncalibrated"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("UNCALIBRATED"), "{}", text(&o));
    let o = run(&[
        "inspect",
        "--model",
        tiny_pack().to_str().unwrap(),
        "--bank",
        path.to_str().unwrap(),
        fixture("queries/hole.png").to_str().unwrap(),
    ]);
    assert!(text(&o).contains("UNCALIBRATED"), "inspect warns: {}", text(&o));

    // The daemon refuses it (exit 2) until the configuration gives a threshold.
    let st = Station::new(dir.path(), Some(1883), "");
    let config = std::fs::read_to_string(&st.config).unwrap();
    let with_bank = config.replace(
        &crate::station::make_bank().display().to_string(),
        &path.display().to_string(),
    );
    std::fs::write(&st.config, &with_bank).unwrap();
    let check = || {
        bin()
            .args(["check-config", "--config"])
            .arg(&st.config)
            .output()
            .unwrap()
    };
    let o = check();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("uncalibrated WinCLIP+ bank"), "{}", text(&o));
    let o = bin().args(["run", "--config"]).arg(&st.config).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    std::fs::write(
        &st.config,
        with_bank.replace("[model]\n", "[model]\nthreshold = 0.29\n"),
    )
    .unwrap();
    let o = check();
    assert!(o.status.success(), "{}", text(&o));
}

/// Observed: `--calibrate` with the shots themselves was accepted (then 12 of
/// 12 unseen good parts failed), and one calibration picture was accepted.
#[test]
fn calibration_pictures_that_are_shots_or_too_few_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let shots = fixture("shots");
    let s0 = shots.join("000.png").display().to_string();
    let same = dir.path().join("same");
    std::fs::create_dir_all(&same).unwrap();
    for i in 0..4 {
        std::fs::copy(shots.join(format!("{i:03}.png")), same.join(format!("c{i}.png"))).unwrap();
    }
    let o = run(&[
        "synth",
        "--out",
        dir.path().join("synth").to_str().unwrap(),
        "--good",
        "1",
        "--bad",
        "0",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    std::fs::copy(dir.path().join("synth/good/000.png"), same.join("c4.png")).unwrap();
    let (_, o) = bank(
        dir.path(),
        "b.bank",
        &["--shots", &s0, "--calibrate", same.to_str().unwrap()],
    );
    assert!(!o.status.success());
    assert!(
        text(&o).contains("c0.png is the same picture as the shot 000.png"),
        "{}",
        text(&o)
    );
    let few = dir.path().join("few");
    std::fs::create_dir_all(&few).unwrap();
    std::fs::copy(shots.join("001.png"), few.join("a.png")).unwrap();
    let (_, o) = bank(
        dir.path(),
        "b.bank",
        &["--shots", &s0, "--calibrate", few.to_str().unwrap()],
    );
    assert!(!o.status.success());
    assert!(
        text(&o).contains("1 good pictures found, at least 5"),
        "{}",
        text(&o)
    );
}

/// Observed: the embedded broker on a port already taken exited 1 (a restart
/// loop under systemd) with no hint; every start logged a spurious
/// "connection refused"; the journal never showed a verdict.
#[test]
fn the_embedded_broker_and_the_journal_say_what_happens() {
    let dir = tempfile::tempdir().unwrap();
    let mut st = Station::new(dir.path(), None, "");
    let text_cfg = std::fs::read_to_string(&st.config).unwrap();
    let port: u16 = text_cfg
        .split("127.0.0.1:")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    {
        let _taken = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
        let o = bin().args(["run", "--config"]).arg(&st.config).output().unwrap();
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        assert!(
            text(&o).contains("set mqtt.host to use the broker already running there"),
            "{}",
            text(&o)
        );
    }
    st.start();
    crate::util::wait_for(60, "the embedded broker", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    let sub = crate::util::Subscriber::start(dir.path(), port, "winclip/#");
    st.drop_file(&fixture("queries/good.png"), "a.png");
    crate::util::wait_for(120, "a result", || {
        crate::station::files_seen(&sub).contains("a.png").then_some(())
    });
    let log = st.log();
    assert!(
        !log.contains("connection lost"),
        "no spurious connection error: {log}"
    );
    let line = log
        .lines()
        .find(|l| l.contains("a.png: "))
        .expect("a journal line for the picture");
    assert!(
        (line.contains("pass score") || line.contains("FAIL score")) && line.contains("threshold 0.3000"),
        "{line}"
    );
}

/// Observed: `run` silently created a drop directory that did not exist (a
/// typo → nothing ever arrives) and `check-config` accepted it.
#[test]
fn a_missing_drop_directory_is_an_error_unless_create_is_set_and_check_config_can_connect() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = crate::util::Mosquitto::start(&dir.path().join("broker"));
    let mut st = Station::new(dir.path(), Some(broker.port), "");
    std::fs::remove_dir_all(st.dir.join("in")).unwrap();
    let config = st.config.clone();
    let check = |extra: &[&str]| {
        bin()
            .args(["check-config", "--config"])
            .arg(&config)
            .args(extra)
            .output()
            .unwrap()
    };
    let o = check(&[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("does not exist") && text(&o).contains("create = true"),
        "{}",
        text(&o)
    );
    let o = bin().args(["run", "--config"]).arg(&st.config).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("drop directory does not exist"), "{}", text(&o));

    let cfg = std::fs::read_to_string(&st.config).unwrap();
    std::fs::write(&st.config, format!("{cfg}\ncreate = true\n")).unwrap();
    let o = check(&["--connect"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("broker        connected"), "{}", text(&o));
    st.start();
    crate::util::wait_for(60, "ready", || st.log().contains("ready").then_some(()));
    assert!(st.dir.join("in").is_dir(), "created");
    broker.stop();
    let o = check(&["--connect"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("error: broker"), "{}", text(&o));
}

/// Observed: `demo` printed "watch it live: mosquitto_sub -p …" and exited
/// two seconds later, and never mentioned the configuration it wrote.
#[test]
fn the_demo_can_keep_running_and_names_the_configuration_it_wrote() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let mut child = bin()
        .args(["demo", "--images", "2", "--keep-running", "--dir"])
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    loop {
        let line = lines.next().expect("the demo ended early").unwrap();
        let done = line.contains("the station keeps running");
        seen.push(line);
        if done {
            break;
        }
    }
    let config = dir.path().join("config.toml");
    assert!(
        seen.iter()
            .any(|l| l.contains(&config.display().to_string()) && l.contains("start your own station")),
        "{seen:?}"
    );
    // Still serving: a picture of our own gets a result.
    std::fs::copy(fixture("queries/good.png"), dir.path().join("incoming/.own.part")).unwrap();
    std::fs::rename(
        dir.path().join("incoming/.own.part"),
        dir.path().join("incoming/own.png"),
    )
    .unwrap();
    crate::util::wait_for(120, "our picture inspected", || {
        dir.path().join("incoming/done/own.png").exists().then_some(())
    });
    // The configuration it names is one a station starts from.
    let o = bin()
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = crate::util::wait_for(60, "the demo to stop", || child.try_wait().unwrap());
    assert!(status.success());
}
