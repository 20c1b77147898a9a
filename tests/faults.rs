//! Faults and bad input (issue #16): every test here is a finding of an
//! adversarial run against the real binary and a real mosquitto, and failed
//! before its fix. Waits poll for events with generous limits; nothing
//! asserts on durations.

use std::path::{Path, PathBuf};

use crate::station::{file_name, files_seen, fixture, Station, STATION};
use crate::util::{bin, wait_for, Mosquitto, Subscriber};

/// `n` synthetic good pictures of `size` pixels (large pictures give large heatmaps).
fn big_pictures(dir: &Path, size: u32, n: usize) -> Vec<PathBuf> {
    let out = dir.join("synth");
    let o = bin()
        .args([
            "synth",
            "--size",
            &size.to_string(),
            "--good",
            &n.to_string(),
            "--bad",
            "0",
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut files: Vec<PathBuf> = std::fs::read_dir(out.join("good"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

/// Replace `from` by `to` in the station's configuration file.
fn edit_config(st: &Station, from: &str, to: &str) {
    let text = std::fs::read_to_string(&st.config).unwrap();
    assert!(text.contains(from), "{from:?} not in the config");
    std::fs::write(&st.config, text.replacen(from, to, 1)).unwrap();
}

fn append_config(st: &Station, more: &str) {
    let text = std::fs::read_to_string(&st.config).unwrap();
    std::fs::write(&st.config, format!("{text}\n{more}\n")).unwrap();
}

/// The last stats message the subscriber saw.
fn last_stats(sub: &Subscriber) -> serde_json::Value {
    sub.messages()
        .iter()
        .rev()
        .find(|m| m.topic == format!("winclip/{STATION}/stats"))
        .map(|m| m.json())
        .unwrap_or(serde_json::Value::Null)
}

/// Finding 1: a pending heatmap larger than the packet limit was re-sent
/// forever and no later result was ever delivered.
#[test]
fn a_heatmap_over_the_packet_limit_is_dropped_and_does_not_block_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let pictures = big_pictures(dir.path(), 1024, 3);
    let mut broker = Mosquitto::start(&dir.path().join("broker"));
    let sub = Subscriber::start(dir.path(), broker.port, "winclip/#");
    let mut st = Station::new(dir.path(), Some(broker.port), "");
    append_config(&st, "[heatmap]\nside = 1024\nquality = 100");
    st.start();
    broker.stop();
    st.drop_file(&pictures[0], "big0.png");
    st.drop_file(&pictures[1], "big1.png");
    wait_for(120, "both stored", || (st.pending().len() == 2).then_some(()));
    let jpgs: Vec<u64> = st
        .pending()
        .iter()
        .map(|p| std::fs::metadata(p.with_extension("jpg")).unwrap().len())
        .collect();
    assert!(
        jpgs.iter().all(|&b| b > 65_536),
        "heatmaps over the next limit: {jpgs:?}"
    );
    // A smaller limit (and heatmaps that fit it) while those two wait.
    assert!(st.terminate().success());
    edit_config(
        &st,
        "stats_interval_secs = 1",
        "stats_interval_secs = 1\nmax_packet_bytes = 65536",
    );
    edit_config(&st, "side = 1024", "side = 64");
    st.start();
    broker.restart();
    st.drop_file(&pictures[2], "after.png");
    wait_for(120, "every result, the ones behind the big heatmaps too", || {
        let seen = files_seen(&sub);
        ["big0.png", "big1.png", "after.png"]
            .iter()
            .all(|f| seen.contains(*f))
            .then_some(())
    });
    let results = sub.results();
    for r in results.iter().filter(|r| file_name(r).starts_with("big")) {
        assert!(r["heatmap"].is_null(), "{r}");
        assert_eq!(r["heatmap_dropped"], true, "{r}");
    }
    let after = results.iter().find(|r| file_name(r) == "after.png").unwrap();
    let topic = after["heatmap"]["topic"].as_str().unwrap().to_string();
    wait_for(60, "the later heatmap", || {
        sub.messages().iter().any(|m| m.topic == topic).then_some(())
    });
    wait_for(60, "the drops counted in /stats", || {
        (last_stats(&sub)["heatmaps_dropped"] == 2).then_some(())
    });
    assert!(
        st.log().matches("MQTT connected").count() <= 2,
        "no reconnect loop: {}",
        st.log()
    );
}

/// Finding 2: with the outbox's byte bound reached, results announced
/// heatmap topics that were never published and no drop was counted.
#[test]
fn heatmaps_dropped_to_bound_the_outbox_are_counted_and_their_results_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let pictures = big_pictures(dir.path(), 1024, 6);
    let mut broker = Mosquitto::start(&dir.path().join("broker"));
    let sub = Subscriber::start(dir.path(), broker.port, "winclip/#");
    let mut st = Station::new(dir.path(), Some(broker.port), "");
    append_config(
        &st,
        "[heatmap]\nside = 1024\nquality = 100\n[outbox]\nmax_bytes = 1048576",
    );
    st.start();
    broker.stop();
    for (i, p) in pictures.iter().enumerate() {
        st.drop_file(p, &format!("p{i}.png"));
    }
    wait_for(180, "all six stored", || (st.done() == 6).then_some(()));
    broker.restart();
    wait_for(120, "all six results", || {
        (files_seen(&sub).len() == 6).then_some(())
    });
    let results = sub.results();
    let dropped = results.iter().filter(|r| r["heatmap_dropped"] == true).count();
    assert!(dropped > 0, "six 1024-px heatmaps do not fit 1 MiB: {results:?}");
    for r in &results {
        if let Some(topic) = r["heatmap"]["topic"].as_str() {
            wait_for(60, &format!("the announced heatmap {topic}"), || {
                sub.messages().iter().any(|m| m.topic == topic).then_some(())
            });
        } else {
            assert_eq!(
                r["heatmap_dropped"], true,
                "a result without its heatmap says so: {r}"
            );
        }
    }
    wait_for(60, "the drops counted", || {
        let s = last_stats(&sub);
        (s["heatmaps_dropped"] == dropped && s["outbox_dropped"] == 0).then_some(())
    });
}

/// Finding 3: an outbox entry that could not be read (a directory in its
/// place) made the service exit 1 at start, a restart loop under systemd.
#[test]
fn an_unreadable_outbox_entry_at_start_is_quarantined_and_the_station_starts() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(&dir.path().join("broker"));
    let sub = Subscriber::start(dir.path(), broker.port, "winclip/#");
    let mut st = Station::new(dir.path(), Some(broker.port), "");
    let outbox = st.dir.join("state/outbox");
    std::fs::create_dir_all(outbox.join("0000000000000001.json")).unwrap();
    std::fs::write(outbox.join("0000000000000002.json"), b"{\"truncated").unwrap();
    st.start();
    st.drop_file(&fixture("queries/good.png"), "ok.png");
    wait_for(120, "a result", || {
        files_seen(&sub).contains("ok.png").then_some(())
    });
    assert!(st.alive());
    assert!(outbox.join("quarantine/0000000000000001.json").is_dir());
    assert!(outbox.join("quarantine/0000000000000002.json").is_file());
    wait_for(60, "the quarantine counted", || {
        (last_stats(&sub)["outbox_quarantined"] == 2).then_some(())
    });
}

/// Finding 9: two daemons on one state directory both ran, and delivered
/// each other's results.
#[test]
fn a_second_daemon_on_the_same_state_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(&dir.path().join("broker"));
    let mut st = Station::new(dir.path(), Some(broker.port), "");
    st.start();
    wait_for(60, "the first daemon ready", || {
        st.log().contains("ready").then_some(())
    });
    let o = bin().args(["run", "--config"]).arg(&st.config).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("already runs on state directory")
            && err.contains(&st.child.as_ref().unwrap().id().to_string()),
        "{err}"
    );
    assert!(st.alive());
}

/// Finding 10: a directory source plus a GPIO source whose chip does not
/// exist hung at start (no message, SIGTERM ignored); it must exit 2 with
/// the message, promptly.
#[test]
fn a_source_that_cannot_start_stops_the_others_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(&dir.path().join("broker"));
    let mut st = Station::new(
        dir.path(),
        Some(broker.port),
        "\n[[source]]\ntype = \"gpio\"\nname = \"trig\"\nchip = \"/dev/gpiochip-missing\"\nline = 3\ncapture = [\"true\", \"{output}\"]",
    );
    st.start();
    let mut child = st.child.take().unwrap();
    let status = wait_for(60, "the daemon to exit", || child.try_wait().unwrap());
    assert_eq!(status.code(), Some(2), "{}", st.log());
    assert!(st.log().contains("/dev/gpiochip-missing"), "{}", st.log());
}

/// Finding 13: `embedded_listen = "0.0.0.0:1883"` opened an anonymous
/// broker to the factory network without a word.
#[test]
fn an_embedded_broker_beyond_loopback_needs_credentials_or_an_explicit_yes() {
    let dir = tempfile::tempdir().unwrap();
    let mut st = Station::new(dir.path(), None, "");
    let port = crate::util::free_port();
    let text = std::fs::read_to_string(&st.config).unwrap();
    let listen_line = text
        .lines()
        .find(|l| l.starts_with("embedded_listen"))
        .unwrap()
        .to_string();
    let open = text.replace(&listen_line, &format!("embedded_listen = \"0.0.0.0:{port}\""));
    std::fs::write(&st.config, &open).unwrap();
    let o = bin()
        .args(["check-config", "--config"])
        .arg(&st.config)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("allow_anonymous = true"));

    // With a login, the embedded broker requires it.
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "s3cret\n").unwrap();
    std::fs::write(
        &st.config,
        open.replace(
            "[mqtt]\n",
            &format!(
                "[mqtt]\nusername = \"station\"\npassword_file = \"{}\"\n",
                pw.display()
            ),
        ),
    )
    .unwrap();
    st.start();
    wait_for(60, "the embedded broker", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    let anonymous = std::process::Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-t",
            "winclip/#",
            "-C",
            "1",
            "-W",
            "5",
        ])
        .output()
        .unwrap();
    // Admitted, it would get the retained status at once.
    assert!(
        !anonymous.status.success() && anonymous.stdout.is_empty(),
        "an anonymous client is refused: {anonymous:?}"
    );
    let sub = Subscriber::start_with(dir.path(), port, "winclip/#", &["-u", "station", "-P", "s3cret"]);
    st.drop_file(&fixture("queries/good.png"), "a.png");
    wait_for(120, "a result for the logged-in client", || {
        files_seen(&sub).contains("a.png").then_some(())
    });
    assert!(!st.log().contains("s3cret"));
}
