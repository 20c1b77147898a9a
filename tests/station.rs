//! The station under test: a real `winclip-edge run` with its own state
//! directory, drop directory and configuration, and helpers to read what it
//! published. Shared by the daemon and the fault tests.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::util::{bin, free_port, root, tiny_pack, wait_for, Subscriber};

pub const STATION: &str = "st1";

/// A station under test: its directories, config and process.
pub struct Station {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub child: Option<Child>,
    /// Where its HTTP endpoint listens (a free loopback port).
    pub http_port: u16,
}

/// Appended to a station's configuration: commands on (MQTT, and HTTP with a token).
pub const COMMANDS_ON: &str = "\n[commands]\nenabled = true\n";

pub fn fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures/winclip").join(name)
}

/// A 2-shot bank for the tiny pack with an explicit threshold (0.3, between
/// the tiny pack's good and defective fixtures' scores), built once per test
/// run with the real CLI (under emulation, building one per test would
/// dominate the run).
pub fn make_bank() -> PathBuf {
    static BANK: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BANK.get_or_init(|| {
        let bank =
            Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("daemon-tests-{}.bank", std::process::id()));
        let o = bin()
            .args([
                "bank",
                "--model",
                tiny_pack().to_str().unwrap(),
                "--object",
                "bottle",
                "-o",
            ])
            .arg(&bank)
            .arg("--shots")
            .arg(fixture("shots/000.png"))
            .arg(fixture("shots/001.png"))
            .args(["--threshold", "0.3"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        bank
    })
    .clone()
}

impl Station {
    /// Config for an external broker on `port` (None: embedded broker on a free port).
    pub fn new(dir: &Path, port: Option<u16>, extra_source: &str) -> Self {
        let bank = make_bank();
        let mqtt = match port {
            Some(p) => format!("host = \"127.0.0.1\"\nport = {p}"),
            None => format!("embedded_listen = \"127.0.0.1:{}\"", free_port()),
        };
        let config = dir.join("config.toml");
        let http_port = free_port();
        std::fs::write(
            &config,
            format!(
                r#"[station]
name = "{STATION}"
state_dir = "{state}"
threads = 1
[model]
pack = "{pack}"
bank = "{bank}"
[mqtt]
{mqtt}
stats_interval_secs = 1
reconnect_min_ms = 100
reconnect_max_ms = 1000
[http]
listen = "127.0.0.1:{http_port}"
[[source]]
type = "directory"
name = "cam"
path = "{incoming}"
{extra_source}
"#,
                state = dir.join("state").display(),
                pack = tiny_pack().display(),
                bank = bank.display(),
                incoming = dir.join("in").display(),
            ),
        )
        .unwrap();
        std::fs::create_dir_all(dir.join("in")).unwrap();
        Self {
            dir: dir.to_owned(),
            config,
            child: None,
            http_port,
        }
    }

    /// Judge with `threshold` (a `[model] threshold` override): 0.29 passes
    /// queries/good.png and fails queries/hole.png with the tiny pack (their
    /// scores are ≈ 0.280 and ≈ 0.299; the bank's own 0.3 passes both).
    pub fn set_threshold(&self, threshold: f32) {
        self.edit_line("bank = ", |line| format!("{line}\nthreshold = {threshold}"));
    }

    /// Replace the configuration's first line starting with `prefix` by
    /// `new(line)`; returns the configuration as written.
    pub fn edit_line(&self, prefix: &str, new: impl FnOnce(&str) -> String) -> String {
        let config = std::fs::read_to_string(&self.config).unwrap();
        let line = config
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap()
            .to_string();
        let config = config.replacen(&line, &new(&line), 1);
        std::fs::write(&self.config, &config).unwrap();
        config
    }

    /// `config` (this station's text) with `[http]` requiring `token`, which
    /// is written to a file in the station's directory.
    pub fn with_token(&self, config: &str, token: &str) -> String {
        let file = self.dir.join("http-token");
        std::fs::write(&file, format!("{token}\n")).unwrap();
        let listen = format!("listen = \"127.0.0.1:{}\"", self.http_port);
        assert!(config.contains(&listen), "{config}");
        config.replace(&listen, &format!("{listen}\ntoken_file = \"{}\"", file.display()))
    }

    pub fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("daemon.log"))
            .unwrap();
        let child = bin()
            .env("RUST_LOG", "info")
            .args(["run", "--config"])
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().expect("running").id() as i32)
    }

    pub fn signal(&self, s: Signal) {
        kill(self.pid(), s).unwrap();
    }

    /// Send SIGTERM and return the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal(Signal::SIGTERM);
        let mut child = self.child.take().unwrap();
        wait_for(60, "the daemon to exit", || child.try_wait().unwrap())
    }

    pub fn kill9(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    /// Write `config` over the station's configuration, send SIGHUP, wait
    /// until the daemon logs that the reload ended (applied or refused), and
    /// return the log.
    pub fn reload(&self, config: &str) -> String {
        let ended = |log: &str| log.matches("reloaded").count() + log.matches("reload failed").count();
        let before = ended(&self.log());
        std::fs::write(&self.config, config).unwrap();
        self.signal(Signal::SIGHUP);
        wait_for(60, "the reload to end", || {
            let log = self.log();
            (ended(&log) > before).then_some(log)
        })
    }

    /// Drop a picture the way cameras do: write a temporary name, rename into place.
    pub fn drop_file(&self, from: &Path, name: &str) {
        let tmp = self.dir.join("in").join(format!(".{name}.part"));
        std::fs::copy(from, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("in").join(name)).unwrap();
    }

    /// The results waiting in the outbox (their JSON files), in order.
    pub fn pending(&self) -> Vec<PathBuf> {
        let Ok(dir) = std::fs::read_dir(self.dir.join("state/outbox")) else {
            return Vec::new();
        };
        let mut files: Vec<PathBuf> = dir
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        files.sort();
        files
    }

    pub fn done(&self) -> usize {
        std::fs::read_dir(self.dir.join("in/done"))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

impl Drop for Station {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn file_name(r: &serde_json::Value) -> String {
    Path::new(r["file"].as_str().unwrap_or(""))
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// Distinct result files received.
pub fn files_seen(sub: &Subscriber) -> HashSet<String> {
    sub.results().iter().map(file_name).collect()
}
