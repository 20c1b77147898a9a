//! Shared helpers for the integration tests.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The committed tiny model pack; fails loudly if it is missing.
pub fn tiny_pack() -> PathBuf {
    let p = root().join("models/tiny");
    assert!(
        p.join("manifest.toml").is_file(),
        "the committed tiny model pack is missing at {}; restore it with `git checkout models/tiny` \
         or regenerate it with `python3 models/export.py --tiny --out models/tiny`",
        p.display()
    );
    p
}

/// The winclip-edge binary under test: the one built for this test run, or
/// `WINCLIP_TEST_BIN` (tests/run points it at the shipped aarch64 binary).
pub fn exe() -> PathBuf {
    std::env::var_os("WINCLIP_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_winclip-edge")))
}

/// A command running [`exe`]. For another architecture (tests/run: the
/// aarch64 binary), `WINCLIP_TEST_RUNNER` holds the emulator command (e.g.
/// "qemu-aarch64 -cpu cortex-a76 -L /usr/aarch64-linux-gnu") to run it with.
pub fn bin() -> Command {
    let exe = exe();
    let runner = std::env::var("WINCLIP_TEST_RUNNER").unwrap_or_default();
    let mut words = runner.split_whitespace();
    let mut c = match words.next() {
        Some(emulator) => {
            let mut c = Command::new(emulator);
            c.args(words).arg(&exe);
            c
        }
        None => Command::new(exe),
    };
    c.env("RUST_LOG", "warn");
    c
}

/// Run the binary with `args`; return its output.
pub fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("spawn winclip-edge")
}

/// stdout + stderr as one string, for assertion messages.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Copy a directory tree (small packs only).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

/// A free TCP port on loopback (bound once, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Poll `f` every 100 ms until it returns `Some`, or panic after `secs` with `what`.
/// Only waits for events; never asserts on durations.
pub fn wait_for<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .chain([PathBuf::from("/usr/sbin")])
                .any(|d| d.join(program).is_file())
        })
        .unwrap_or(false)
}

pub fn require(program: &str) -> PathBuf {
    assert!(
        which(program),
        "{program} is not installed: the daemon tests need a real MQTT broker and client. \
         Install Debian's mosquitto and mosquitto-clients (tests/run does this)."
    );
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .unwrap()
}

/// A peer program only some runs have (a browser, a Prometheus server): its
/// path, or `None` with a loud "SKIPPED" line. `tests/run` installs them and
/// sets `var=required`, under which a missing one fails the test instead.
/// (The aarch64 run under qemu has none: what they check does not depend on
/// the architecture.)
pub fn optional_peer(program: &str, var: &str, install: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|d| d.join(program))
        .find(|p| p.is_file());
    match found {
        Some(p) => Some(p),
        None if std::env::var(var).is_ok_and(|v| v == "required") => {
            panic!("{var}=required but {program} is not installed: apt-get install {install}")
        }
        None => {
            eprintln!("SKIPPED: {program} is not installed (apt-get install {install}; tests/run does)");
            None
        }
    }
}

/// A mosquitto password file in `dir` for `users` (name, password).
fn password_file(dir: &Path, users: &[(&str, &str)]) -> PathBuf {
    let pw = dir.join("passwords");
    for (i, (user, password)) in users.iter().enumerate() {
        let create: &[&str] = if i == 0 { &["-b", "-c"] } else { &["-b"] };
        let o = Command::new(require("mosquitto_passwd"))
            .args(create)
            .arg(&pw)
            .args([user, password])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "mosquitto_passwd: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    pw
}

/// A real mosquitto broker on a private port, with persistence so a restart
/// keeps the subscriber's session. Killed on drop.
pub struct Mosquitto {
    pub port: u16,
    dir: PathBuf,
    /// Extra configuration lines (TLS, authentication).
    extra: String,
    child: Option<std::process::Child>,
}

impl Mosquitto {
    pub fn start(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let mut m = Self {
            port: free_port(),
            dir: dir.to_owned(),
            extra: String::new(),
            child: None,
        };
        m.restart();
        m
    }

    /// A broker that only speaks TLS (certificate for 127.0.0.1, signed by a CA
    /// made here with openssl) and only accepts `user`/`password`.
    /// Returns the broker and the CA file.
    pub fn start_tls(dir: &Path, user: &str, password: &str) -> (Self, PathBuf) {
        std::fs::create_dir_all(dir).unwrap();
        let run = |args: &[&str]| {
            let o = Command::new(require("openssl"))
                .args(args)
                .current_dir(dir)
                .output()
                .unwrap();
            assert!(
                o.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        };
        let subj_ca = "/CN=winclip-test-ca";
        run(&[
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days",
            "2", "-subj", subj_ca,
        ]);
        let san = "subjectAltName=IP:127.0.0.1";
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            san,
        ]);
        run(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-copy_extensions",
            "copy",
        ]);
        let pw = password_file(dir, &[(user, password)]);
        let extra = format!(
            "cafile {0}/ca.pem\ncertfile {0}/server.pem\nkeyfile {0}/server.key\npassword_file {1}\n",
            dir.display(),
            pw.display()
        );
        let mut m = Self {
            port: free_port(),
            dir: dir.to_owned(),
            extra,
            child: None,
        };
        m.restart();
        (m, dir.join("ca.pem"))
    }

    /// A plain-TCP broker that admits only `users` (name, password), each
    /// allowed what `acl` (mosquitto's acl_file syntax) says.
    pub fn start_with_acl(dir: &Path, users: &[(&str, &str)], acl: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let pw = password_file(dir, users);
        std::fs::write(dir.join("acl"), acl).unwrap();
        let extra = format!(
            "password_file {}\nacl_file {}\n",
            pw.display(),
            dir.join("acl").display()
        );
        let mut m = Self {
            port: free_port(),
            dir: dir.to_owned(),
            extra,
            child: None,
        };
        m.restart();
        m
    }

    /// (Re)start on the same port.
    pub fn restart(&mut self) {
        assert!(
            self.launch(),
            "mosquitto did not start on port {}:\n{}",
            self.port,
            self.log()
        );
    }

    /// Start mosquitto on `self.port`; false if it exited instead of listening.
    fn launch(&mut self) -> bool {
        let conf = self.dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {} 127.0.0.1\nallow_anonymous {}\npersistence true\npersistence_location {}/\nautosave_interval 1\n{}{}",
                self.port,
                self.extra.is_empty(),
                self.dir.display(),
                self.extra,
                // Started as root, mosquitto drops to user "mosquitto", which cannot
                // read the test's private directory (persistence, keys): stay root.
                if nix::unistd::Uid::effective().is_root() { "user root\n" } else { "" },
            ),
        )
        .unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("mosquitto.log"))
            .unwrap();
        let mut child = Command::new(require("mosquitto"))
            .arg("-c")
            .arg(&conf)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start mosquitto");
        let port = self.port;
        // Listening, and it is our broker that listens (a port taken in between
        // makes mosquitto exit; another test's broker could answer the connect).
        let up = wait_for(20, "mosquitto to listen or exit", || {
            if child.try_wait().unwrap().is_some() {
                return Some(false);
            }
            std::net::TcpStream::connect(("127.0.0.1", port))
                .ok()
                .map(|_| true)
        });
        self.child = Some(child);
        up
    }

    /// The broker's log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default()
    }

    /// Stop gracefully (SIGTERM: saves its persistence file).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = c.wait();
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One message seen by the subscriber.
#[derive(Debug, Clone)]
pub struct Message {
    pub topic: String,
    pub retained: bool,
    pub payload: Vec<u8>,
}

impl Message {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).unwrap_or(serde_json::Value::Null)
    }
}

/// What `mosquitto_sub -F "%r %t %x"` printed: retain flag, topic, hex payload.
fn parse_messages(text: &str) -> Vec<Message> {
    text.lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ' ');
            let retained = parts.next()? == "1";
            let topic = parts.next()?.to_string();
            let payload = hex::decode(parts.next().unwrap_or("")).ok()?;
            Some(Message {
                topic,
                retained,
                payload,
            })
        })
        .collect()
}

/// The messages retained on `topic` now (a fresh client, `--retained-only`).
pub fn retained(port: u16, topic: &str) -> Vec<Message> {
    let o = Command::new(require("mosquitto_sub"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-t", topic])
        .args(["--retained-only", "-W", "2", "-F", "%r %t %x"])
        .output()
        .unwrap();
    parse_messages(&String::from_utf8_lossy(&o.stdout))
}

/// Client ids must be unique: two clients with one id keep kicking each other off.
static SUBSCRIBERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// `mosquitto_sub` with a persistent QoS 1 session on `winclip/#`, writing
/// every message (hex payload) to a file.
pub struct Subscriber {
    out: PathBuf,
    child: std::process::Child,
}

impl Subscriber {
    pub fn start(dir: &Path, port: u16, topic: &str) -> Self {
        Self::start_with(dir, port, topic, &[])
    }

    /// Like [`Subscriber::start`], with extra mosquitto_sub/pub arguments (TLS, credentials).
    pub fn start_with(dir: &Path, port: u16, topic: &str, extra: &[&str]) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let out = dir.join("sub.txt");
        let file = std::fs::File::create(&out).unwrap();
        let child = Command::new(require("mosquitto_sub"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-t",
                topic,
                "-q",
                "1",
                "-c",
                "-i",
            ])
            .arg(format!(
                "test-sub-{}-{}",
                std::process::id(),
                SUBSCRIBERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ))
            .args(["-F", "%r %t %x"])
            .args(extra)
            .stdout(file)
            .stderr(std::fs::File::create(dir.join("sub.err")).unwrap())
            .spawn()
            .expect("start mosquitto_sub");
        // Connected and subscribed once the broker has the session: give it a moment by
        // publishing a probe and waiting to see it.
        let probe = format!("{}/probe", topic.trim_end_matches("/#"));
        let s = Self { out, child };
        let what = format!(
            "the subscriber to receive a probe (its stderr: {})",
            dir.join("sub.err").display()
        );
        wait_for(30, &what, || {
            let _ = Command::new(require("mosquitto_pub"))
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                    "-t",
                    &probe,
                    "-q",
                    "1",
                    "-m",
                    "probe",
                ])
                .args(extra)
                .status();
            s.messages().iter().any(|m| m.topic == probe).then_some(())
        });
        s
    }

    pub fn messages(&self) -> Vec<Message> {
        parse_messages(&std::fs::read_to_string(&self.out).unwrap_or_default())
    }

    /// Results (parsed JSON) received so far.
    pub fn results(&self) -> Vec<serde_json::Value> {
        self.messages()
            .iter()
            .filter(|m| m.topic.ends_with("/result"))
            .map(Message::json)
            .collect()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
