//! Commands over MQTT (`[commands] enabled`, issue #17): against Debian's
//! mosquitto, with mosquitto_pub as the PLC. Each command is answered on
//! `…/cmd/reply` with its request id; what it sets survives a restart; a
//! malformed or unknown one changes nothing; with commands off, or from a
//! client the broker's ACL denies, nothing happens at all.

use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::station::{fixture, Station, COMMANDS_ON, STATION};
use crate::util::{require, wait_for, Mosquitto, Subscriber};

/// Publish `payload` on the station's command topic (QoS 1).
fn send(port: u16, payload: &str, login: &[&str]) {
    let o = Command::new(require("mosquitto_pub"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
        .args(["-t", &format!("winclip/{STATION}/cmd"), "-m", payload])
        .args(login)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "mosquitto_pub: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The reply to `request_id`.
fn reply(sub: &Subscriber, request_id: &Value) -> Value {
    wait_for(60, &format!("the reply to {request_id}"), || {
        sub.messages()
            .iter()
            .filter(|m| m.topic.ends_with("/cmd/reply"))
            .map(|m| m.json())
            .find(|r| r["request_id"] == *request_id)
    })
}

/// Whether any reply was seen.
fn replied(sub: &Subscriber) -> bool {
    sub.messages().iter().any(|m| m.topic.ends_with("/cmd/reply"))
}

/// The `n`-th result (1-based) once it is there.
fn result(sub: &Subscriber, n: usize) -> Value {
    wait_for(120, &format!("result {n}"), || sub.results().get(n - 1).cloned())
}

/// Wait for the `n`-th start's command subscription (the log is appended to).
fn listening(st: &Station, n: usize) {
    wait_for(60, "the command subscription", || {
        (st.log().matches("commands: listening on").count() >= n).then_some(())
    });
}

#[test]
fn commands_set_the_threshold_pause_and_resume_survive_a_restart_and_refuse_what_they_cannot_read() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(&dir.path().join("broker"));
    let sub = Subscriber::start(&dir.path().join("sub"), broker.port, "winclip/#");
    let mut st = Station::new(dir.path(), Some(broker.port), "");
    let config = std::fs::read_to_string(&st.config).unwrap() + COMMANDS_ON;
    std::fs::write(&st.config, &config).unwrap();
    st.start();
    listening(&st, 1);
    let p = broker.port;

    send(p, r#"{"command": "status", "request_id": "s1"}"#, &[]);
    let r = reply(&sub, &json!("s1"));
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["state"]["threshold"], 0.3);
    assert_eq!(r["state"]["paused"], false);
    assert_eq!(r["state"]["commands_enabled"], true);

    // The bank's 0.3 passes the defective fixture; 0.29 fails it.
    st.drop_file(&fixture("queries/hole.png"), "hole1.png");
    assert_eq!(result(&sub, 1)["verdict"], "pass");
    send(
        p,
        r#"{"command": "threshold", "value": 0.29, "request_id": 2}"#,
        &[],
    );
    let r = reply(&sub, &json!(2));
    assert_eq!(
        (r["ok"].clone(), r["state"]["threshold_override"].clone()),
        (json!(true), json!(0.29)),
        "{r}"
    );
    st.drop_file(&fixture("queries/hole.png"), "hole2.png");
    let failed = result(&sub, 2);
    assert_eq!(
        (failed["verdict"].clone(), failed["threshold"].clone()),
        (json!("fail"), json!(0.29))
    );
    let state = wait_for(30, "the retained state", || {
        sub.messages()
            .iter()
            .rev()
            .find(|m| m.topic == format!("winclip/{STATION}/state"))
            .map(|m| m.json())
            .filter(|s| s["threshold_override"] == 0.29)
    });
    assert_eq!(state["threshold"], 0.29);

    // Malformed and unknown commands: an error reply, nothing changes.
    send(p, "{oops", &[]);
    let r = reply(&sub, &Value::Null);
    assert_eq!(r["ok"], false);
    assert!(r["error"].as_str().unwrap().contains("not JSON"), "{r}");
    for (cmd, id, needle) in [
        (
            r#"{"command": "reboot", "request_id": "u"}"#,
            "u",
            "unknown command",
        ),
        (
            r#"{"command": "threshold", "value": "low", "request_id": "v"}"#,
            "v",
            "not a number",
        ),
    ] {
        send(p, cmd, &[]);
        let r = reply(&sub, &json!(id));
        assert_eq!(r["ok"], false, "{r}");
        assert!(r["error"].as_str().unwrap().contains(needle), "{r}");
        assert_eq!(r["state"]["threshold"], 0.29, "unchanged: {r}");
    }

    // Paused: a dropped picture waits; resumed: it is inspected.
    send(p, r#"{"command": "pause", "request_id": "p"}"#, &[]);
    assert_eq!(reply(&sub, &json!("p"))["state"]["paused"], true);
    st.drop_file(&fixture("queries/good.png"), "waits.png");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(sub.results().len(), 2, "nothing is inspected while paused");
    assert_eq!(st.pending().len(), 0);
    assert!(
        dir.path().join("in/waits.png").exists(),
        "the picture waits in the drop directory"
    );

    // What commands set survives a restart: still paused, still 0.29.
    assert!(st.terminate().success());
    st.start();
    listening(&st, 2);
    assert!(st.log().contains("PAUSED by command"), "{}", st.log());
    send(p, r#"{"command": "resume", "request_id": "r"}"#, &[]);
    let r = reply(&sub, &json!("r"));
    assert_eq!(
        (r["state"]["paused"].clone(), r["state"]["threshold"].clone()),
        (json!(false), json!(0.29)),
        "{r}"
    );
    let waited = result(&sub, 3);
    assert!(
        waited["file"].as_str().unwrap().ends_with("waits.png"),
        "{waited}"
    );

    // A reload keeps the commanded threshold over the file's; null returns to the file's.
    let bank_line = config.lines().find(|l| l.starts_with("bank = ")).unwrap();
    let log = st.reload(&config.replacen(bank_line, &format!("{bank_line}\nthreshold = 0.31"), 1));
    assert!(log.contains("set by command stays"), "{log}");
    send(p, r#"{"command": "status", "request_id": "after-reload"}"#, &[]);
    assert_eq!(reply(&sub, &json!("after-reload"))["state"]["threshold"], 0.29);
    send(
        p,
        r#"{"command": "threshold", "value": null, "request_id": "n"}"#,
        &[],
    );
    let r = reply(&sub, &json!("n"));
    assert_eq!(
        (r["ok"].clone(), r["state"]["threshold"].clone()),
        (json!(true), json!(0.31)),
        "{r}"
    );
    assert!(r["state"]["threshold_override"].is_null());
    assert!(st.terminate().success());
}

#[test]
fn with_commands_off_or_from_a_client_the_acl_denies_nothing_happens() {
    let dir = tempfile::tempdir().unwrap();
    let acl = "user station\ntopic readwrite winclip/#\n\n\
               user plc\ntopic write winclip/+/cmd\ntopic read winclip/+/cmd/reply\n\n\
               user viewer\ntopic read winclip/#\n";
    let broker = Mosquitto::start_with_acl(
        &dir.path().join("broker"),
        &[("station", "st-pw"), ("plc", "plc-pw"), ("viewer", "viewer-pw")],
        acl,
    );
    let viewer = ["-u", "viewer", "-P", "viewer-pw"];
    let plc = ["-u", "plc", "-P", "plc-pw"];
    let sub = Subscriber::start_with(
        &dir.path().join("sub"),
        broker.port,
        "winclip/#",
        &["-u", "station", "-P", "st-pw"],
    );
    let password = dir.path().join("mqtt-password");
    std::fs::write(&password, "st-pw\n").unwrap();
    let mut st = Station::new(dir.path(), Some(broker.port), "");
    let login = format!(
        "username = \"station\"\npassword_file = \"{}\"\n",
        password.display()
    );
    let plain =
        std::fs::read_to_string(&st.config)
            .unwrap()
            .replacen("[mqtt]\n", &format!("[mqtt]\n{login}"), 1);
    std::fs::write(&st.config, &plain).unwrap();
    let p = broker.port;

    // Commands off (the default): not even read.
    st.start();
    wait_for(60, "online", || {
        sub.messages()
            .iter()
            .any(|m| m.topic.ends_with("/status") && m.payload == b"online")
            .then_some(())
    });
    send(
        p,
        r#"{"command": "threshold", "value": 0.29, "request_id": "off"}"#,
        &plc,
    );
    st.drop_file(&fixture("queries/hole.png"), "a.png");
    assert_eq!(result(&sub, 1)["verdict"], "pass", "the threshold did not move");
    assert!(!replied(&sub), "no reply");
    assert!(!st.log().contains("command"), "{}", st.log());
    assert!(st.terminate().success());

    // On, but from a client the ACL only lets read: the broker drops it.
    std::fs::write(&st.config, plain.clone() + COMMANDS_ON).unwrap();
    st.start();
    listening(&st, 1);
    send(
        p,
        r#"{"command": "threshold", "value": 0.29, "request_id": "viewer"}"#,
        &viewer,
    );
    st.drop_file(&fixture("queries/hole.png"), "b.png");
    assert_eq!(result(&sub, 2)["verdict"], "pass", "the viewer cannot command");
    assert!(!replied(&sub), "no reply");
    // The PLC may.
    send(
        p,
        r#"{"command": "threshold", "value": 0.29, "request_id": "plc"}"#,
        &plc,
    );
    assert_eq!(reply(&sub, &json!("plc"))["ok"], true);
    st.drop_file(&fixture("queries/hole.png"), "c.png");
    assert_eq!(result(&sub, 3)["verdict"], "fail");
    assert!(st.terminate().success());
}

/// Issue #17 part 1: recipes. Two recipes on one model (the same bank, one
/// stricter): switched by command, refused when unknown, switched by a
/// script through `<state_dir>/active-recipe`, kept across a restart; every
/// result names its recipe, and the verdicts follow.
#[test]
fn recipes_switch_by_command_and_by_file_survive_a_restart_and_every_result_names_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(&dir.path().join("broker"));
    let sub = Subscriber::start(&dir.path().join("sub"), broker.port, "winclip/#");
    let mut st = Station::new(dir.path(), Some(broker.port), "");
    let bank = crate::station::make_bank();
    let config = std::fs::read_to_string(&st.config).unwrap()
        + COMMANDS_ON
        + &format!(
            "[[recipe]]\nname = \"strict\"\nbank = \"{}\"\nthreshold = 0.29\n",
            bank.display()
        );
    std::fs::write(&st.config, &config).unwrap();
    st.start();
    listening(&st, 1);
    let p = broker.port;

    // [model]'s bank is the recipe "default": 0.3 passes the defect.
    st.drop_file(&fixture("queries/hole.png"), "hole1.png");
    let r1 = result(&sub, 1);
    assert_eq!(
        (r1["verdict"].clone(), r1["recipe"].clone()),
        (json!("pass"), json!("default"))
    );

    send(
        p,
        r#"{"command": "recipe", "name": "strict", "request_id": "r1"}"#,
        &[],
    );
    let r = reply(&sub, &json!("r1"));
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["state"]["active_recipes"], json!({"cam": "strict"}));
    assert_eq!(r["state"]["recipes"]["strict"]["threshold"], 0.29);
    st.drop_file(&fixture("queries/hole.png"), "hole2.png");
    let r2 = result(&sub, 2);
    assert_eq!(
        (
            r2["verdict"].clone(),
            r2["recipe"].clone(),
            r2["threshold"].clone()
        ),
        (json!("fail"), json!("strict"), json!(0.29))
    );
    assert_eq!(r2["bank"], r1["bank"], "the same bank file: the same bank id");

    // An unknown recipe or source: refused with the reason, the active one stays.
    for (cmd, id, needle) in [
        (
            r#"{"command": "recipe", "name": "nope", "request_id": "u1"}"#,
            "u1",
            "\"nope\"",
        ),
        (
            r#"{"command": "recipe", "name": "default", "source": "cam9", "request_id": "u2"}"#,
            "u2",
            "no source \"cam9\"",
        ),
    ] {
        send(p, cmd, &[]);
        let r = reply(&sub, &json!(id));
        assert_eq!(r["ok"], false, "{r}");
        assert!(r["error"].as_str().unwrap().contains(needle), "{r}");
        assert_eq!(r["state"]["active_recipes"]["cam"], "strict", "{r}");
    }
    let file = dir.path().join("state/active-recipe");
    assert!(
        std::fs::read_to_string(&file)
            .unwrap()
            .contains("cam = \"strict\""),
        "the switch is kept on disk"
    );

    // A script writes the file: the station follows within a few seconds.
    std::fs::write(&file, "default\n").unwrap();
    wait_for(30, "the switch from the file", || {
        st.log()
            .contains("recipes from the active-recipe file: cam: default")
            .then_some(())
    });
    st.drop_file(&fixture("queries/hole.png"), "hole3.png");
    assert_eq!(result(&sub, 3)["recipe"], "default");
    // A file naming no recipe is refused loudly; the recipe stays.
    std::fs::write(&file, "cam = \"gone\"\n").unwrap();
    wait_for(30, "the refusal", || {
        st.log().contains("the recipes stay as they are").then_some(())
    });

    // Kept across a restart: the command's choice, not the configured default.
    send(
        p,
        r#"{"command": "recipe", "name": "strict", "request_id": "r2"}"#,
        &[],
    );
    assert_eq!(reply(&sub, &json!("r2"))["ok"], true);
    assert!(st.terminate().success());
    st.start();
    listening(&st, 2);
    st.drop_file(&fixture("queries/hole.png"), "hole4.png");
    let r4 = result(&sub, 4);
    assert_eq!(
        (r4["verdict"].clone(), r4["recipe"].clone()),
        (json!("fail"), json!("strict"))
    );

    // Thresholds by recipe: "strict" is active, so a bare threshold command moves it.
    send(
        p,
        r#"{"command": "threshold", "value": 0.31, "request_id": "t1"}"#,
        &[],
    );
    let r = reply(&sub, &json!("t1"));
    assert_eq!(r["state"]["recipes"]["strict"]["threshold"], 0.31, "{r}");
    assert_eq!(r["state"]["recipes"]["default"]["threshold"], 0.3, "{r}");
    // A reload that removes the active recipe is refused; the station runs on.
    let log = st.reload(&config.replace("name = \"strict\"", "name = \"other\""));
    assert!(log.contains("recipe \"strict\""), "{log}");
    st.drop_file(&fixture("queries/hole.png"), "hole5.png");
    assert_eq!(result(&sub, 5)["recipe"], "strict");
    assert!(st.terminate().success());

    // A start with a file naming no recipe stops (exit status 2) rather than judge
    // with another product's bank.
    std::fs::write(&file, "gone\n").unwrap();
    st.start();
    let mut child = st.child.take().unwrap();
    let status = wait_for(60, "the refused start", || child.try_wait().unwrap());
    assert_eq!(status.code(), Some(2), "{}", st.log());
    assert!(
        st.log().contains("recipe \"gone\" is not one of the recipes"),
        "{}",
        st.log()
    );
}

/// A recipe directory for the tiny pack: 2 shots and `calibration` good
/// pictures from `synth`, with `synth`'s defective pictures beside it (in
/// `<dir>/synth/bad`). Returns the recipe directory.
fn recipe_dir(dir: &std::path::Path, calibration: usize) -> std::path::PathBuf {
    let synth = dir.join("synth");
    let o = crate::util::run(&[
        "synth",
        "--out",
        synth.to_str().unwrap(),
        "--good",
        &(calibration + 2).to_string(),
        "--bad",
        "4",
        "--size",
        "240",
    ]);
    assert!(o.status.success(), "{}", crate::util::text(&o));
    let mut good: Vec<_> = std::fs::read_dir(synth.join("good"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    good.sort();
    let calib = dir.join("calibration");
    std::fs::create_dir_all(&calib).unwrap();
    for p in &good[2..] {
        std::fs::copy(p, calib.join(p.file_name().unwrap())).unwrap();
    }
    let recipe = dir.join("bottle-recipe");
    let o = crate::util::run(&[
        "bank",
        "--model",
        crate::util::tiny_pack().to_str().unwrap(),
        "--object",
        "bottle",
        "--shots",
        good[0].to_str().unwrap(),
        good[1].to_str().unwrap(),
        "--calibrate",
        calib.to_str().unwrap(),
        "--recipe-dir",
        recipe.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", crate::util::text(&o));
    assert!(crate::util::text(&o).contains("recipe directory, version 1"));
    recipe
}

/// A broker, a subscriber to everything, and a started station judging with
/// a recipe directory of `calibration` pictures (see [`recipe_dir`]), commands on.
fn teaching_station(
    dir: &std::path::Path,
    calibration: usize,
) -> (std::path::PathBuf, Mosquitto, Subscriber, Station) {
    let recipe = recipe_dir(dir, calibration);
    let broker = Mosquitto::start(&dir.join("broker"));
    let sub = Subscriber::start(&dir.join("sub"), broker.port, "winclip/#");
    let mut st = Station::new(dir, Some(broker.port), "");
    let config = st.edit_line("bank = ", |_| format!("bank = \"{}\"", recipe.display()));
    std::fs::write(&st.config, config + COMMANDS_ON).unwrap();
    st.start();
    listening(&st, 1);
    (recipe, broker, sub, st)
}

/// The retained state once `teaching.state` is `want` (`done` or `failed`).
fn taught(sub: &Subscriber, want: &str) -> Value {
    wait_for(120, &format!("teaching {want}"), || {
        sub.messages()
            .iter()
            .filter(|m| m.topic.ends_with("/state"))
            .map(|m| m.json())
            .find(|s| s["teaching"]["state"] == want)
    })
}

#[test]
fn teaching_a_false_reject_moves_the_threshold_and_rollback_restores_the_old_verdicts_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let (recipe, broker, sub, mut st) = teaching_station(dir.path(), 6);
    let p = broker.port;

    // A part the station rejects: the operator says it is good.
    let picture = dir.path().join("synth/bad/000.png");
    st.drop_file(&picture, "part1.png");
    let r1 = result(&sub, 1);
    assert_eq!(r1["verdict"], "fail", "{r1}");
    let (score, threshold) = (r1["score"].as_f64().unwrap(), r1["threshold"].as_f64().unwrap());
    assert!(score > threshold);

    // Bad requests change nothing: unknown id, wrong set, a bank file.
    send(
        p,
        r#"{"command": "teach", "id": "nope", "as": "calibration", "request_id": "b1"}"#,
        &[],
    );
    let r = reply(&sub, &json!("b1"));
    assert_eq!(r["ok"], false, "{r}");
    assert!(
        r["error"].as_str().unwrap().contains("no inspection \"nope\""),
        "{r}"
    );
    send(p, r#"{"command": "rollback", "request_id": "b2"}"#, &[]);
    let r = reply(&sub, &json!("b2"));
    assert!(
        r["error"].as_str().unwrap().contains("nothing to roll back to"),
        "{r}"
    );

    let teach = json!({"command": "teach", "id": r1["id"], "as": "calibration", "request_id": "t1"});
    send(p, &teach.to_string(), &[]);
    let r = reply(&sub, &json!("t1"));
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["state"]["teaching"]["state"], "building", "{r}");
    let state = taught(&sub, "done");
    let t = &state["teaching"];
    assert_eq!(
        (t["version"].clone(), t["previous"].clone()),
        (json!(2), json!(1)),
        "{state}"
    );
    assert_eq!(state["recipes"]["default"]["version"], 2, "{state}");
    let new_threshold = t["threshold"].as_f64().unwrap();
    assert!(new_threshold >= score, "the threshold moved to pass it: {state}");
    // Taught once only.
    send(p, &teach.to_string().replace("t1", "t2"), &[]);
    assert!(reply(&sub, &json!("t2"))["error"]
        .as_str()
        .unwrap()
        .contains("already in"));

    // The same picture passes now, with the same score (its references did not change).
    st.drop_file(&picture, "part2.png");
    let r2 = result(&sub, 2);
    assert_eq!(
        (
            r2["verdict"].clone(),
            r2["score"].clone(),
            r2["threshold"].clone()
        ),
        (json!("pass"), r1["score"].clone(), json!(new_threshold)),
        "{r2}"
    );
    assert_ne!(r2["bank"], r1["bank"]);
    assert!(
        recipe
            .join("versions/0002/calibration")
            .read_dir()
            .unwrap()
            .count()
            == 7
    );

    // Rollback: the old bank, the old verdict, bit for bit; kept across a restart.
    send(p, r#"{"command": "rollback", "request_id": "rb"}"#, &[]);
    let r = reply(&sub, &json!("rb"));
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["state"]["recipes"]["default"]["version"], 1, "{r}");
    assert_eq!(
        std::fs::read_link(recipe.join("current")).unwrap(),
        std::path::Path::new("versions/0001")
    );
    assert!(st.terminate().success());
    st.start();
    listening(&st, 2);
    st.drop_file(&picture, "part3.png");
    let r3 = result(&sub, 3);
    for k in ["verdict", "score", "threshold", "bank", "regions"] {
        assert_eq!(r3[k], r1[k], "{k}: {r3}");
    }
}

#[test]
fn a_kill_in_the_middle_of_a_rebuild_leaves_the_old_bank_active_and_nothing_half_written() {
    let dir = tempfile::tempdir().unwrap();
    // Enough calibration pictures that the rebuild takes a while (each is inspected
    // again; ≈ 30 ms each in a release build, far longer in the tests' debug build).
    let (recipe, broker, sub, mut st) = teaching_station(dir.path(), 12);
    st.drop_file(&dir.path().join("synth/bad/001.png"), "part1.png");
    let r1 = result(&sub, 1);
    let teach = json!({"command": "teach", "id": r1["id"], "as": "shot", "request_id": "t1"});
    send(broker.port, &teach.to_string(), &[]);
    let staging = recipe.join("versions/.0002.tmp");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !staging.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the rebuild never started: {}",
            st.log()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    st.kill9();
    assert!(
        !recipe.join("versions/0002").exists(),
        "the kill came after the rebuild: {}",
        st.log()
    );
    assert_eq!(
        std::fs::read_link(recipe.join("current")).unwrap(),
        std::path::Path::new("versions/0001")
    );

    // The restart cleans up and judges with the old bank.
    st.start();
    listening(&st, 2);
    assert!(!staging.exists());
    assert!(
        st.log().contains("removed what an interrupted rebuild left"),
        "{}",
        st.log()
    );
    st.drop_file(&dir.path().join("synth/bad/001.png"), "part2.png");
    let r2 = result(&sub, 2);
    assert_eq!(
        (r2["bank"].clone(), r2["score"].clone()),
        (r1["bank"].clone(), r1["score"].clone())
    );
}
