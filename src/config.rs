//! The daemon's TOML configuration: parsed into a raw mirror of the file, then
//! checked as a whole into a ready-to-use [`Config`].
//!
//! Unknown keys and wrong types are errors that name the key and the line
//! (serde + `deny_unknown_fields`); checks across fields collect every problem
//! before failing. Every key and its default is documented in
//! `config/winclip-edge.toml`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Default MQTT topic prefix.
pub const DEFAULT_PREFIX: &str = "winclip";
/// Default listen address of the embedded broker.
pub const DEFAULT_EMBEDDED_LISTEN: &str = "127.0.0.1:1883";
/// rumqttc's own limit is 10 KiB, too small for heatmaps.
pub const DEFAULT_MAX_PACKET_BYTES: usize = 8 * 1024 * 1024;

/// A configuration that could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Syntax errors, unknown keys, wrong types (the message names key and line).
    #[error("invalid config {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's message with line and column.
        message: String,
    },
    /// Values that do not fit together; all problems found are listed.
    #[error("invalid config {path}:\n  - {}", problems.join("\n  - "))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// One line per problem, each naming its key.
        problems: Vec<String>,
    },
}

// ------------------------------------------------------------------ raw layer

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    station: RawStation,
    model: Option<RawModel>,
    #[serde(default)]
    mqtt: RawMqtt,
    #[serde(default)]
    outbox: RawOutbox,
    #[serde(default, rename = "source")]
    sources: Vec<RawSource>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStation {
    name: Option<String>,
    state_dir: Option<PathBuf>,
    threads: Option<usize>,
    queue_capacity: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    pack: PathBuf,
    bank: PathBuf,
    threshold: Option<f32>,
    early_exit: Option<bool>,
    precision: Option<crate::model::Precision>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMqtt {
    host: Option<String>,
    port: Option<u16>,
    prefix: Option<String>,
    client_id: Option<String>,
    keep_alive_secs: Option<u64>,
    username: Option<String>,
    password_file: Option<PathBuf>,
    password_credential: Option<String>,
    tls: Option<bool>,
    ca_file: Option<PathBuf>,
    client_cert_file: Option<PathBuf>,
    client_key_file: Option<PathBuf>,
    max_packet_bytes: Option<usize>,
    stats_interval_secs: Option<u64>,
    heatmap: Option<bool>,
    heatmap_side: Option<u32>,
    heatmap_quality: Option<u8>,
    reconnect_min_ms: Option<u64>,
    reconnect_max_ms: Option<u64>,
    embedded_listen: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutbox {
    max_entries: Option<usize>,
    max_bytes: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, tag = "type", rename_all = "lowercase")]
enum RawSource {
    Directory {
        name: Option<String>,
        path: PathBuf,
        pattern: Option<String>,
        after: Option<String>,
        done_dir: Option<PathBuf>,
        failed_dir: Option<PathBuf>,
    },
    Gpio {
        name: Option<String>,
        chip: PathBuf,
        line: u32,
        edge: Option<String>,
        debounce_ms: Option<u64>,
        active_low: Option<bool>,
        capture: Vec<String>,
        capture_timeout_secs: Option<u64>,
        output_dir: Option<PathBuf>,
        keep_captures: Option<bool>,
    },
}

// ------------------------------------------------------------------ checked layer

/// The checked configuration.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    /// Station settings.
    pub station: Station,
    /// Model pack and bank.
    pub model: Model,
    /// MQTT settings.
    pub mqtt: Mqtt,
    /// Durable outbox bounds.
    pub outbox: Outbox,
    /// Image sources.
    pub sources: Vec<Source>,
}

/// Station identity and resources.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Station {
    /// Station name, used in topics and inspection ids.
    pub name: String,
    /// Outbox, records and captures live here.
    pub state_dir: PathBuf,
    /// Inference threads (0 = one per core).
    pub threads: usize,
    /// Jobs waiting for the inference worker.
    pub queue_capacity: usize,
}

/// The model pack and bank to inspect with.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Model {
    /// Model pack directory.
    pub pack: PathBuf,
    /// Bank file.
    pub bank: PathBuf,
    /// Threshold override.
    pub threshold: Option<f32>,
    /// Early-exit cascade: pass clearly good parts from the full-image pass.
    pub early_exit: bool,
    /// Token encoder precision.
    pub precision: crate::model::Precision,
}

/// Where the broker is.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Broker {
    /// A broker of the factory network.
    External {
        /// Host name or address.
        host: String,
        /// TCP port.
        port: u16,
    },
    /// No broker configured: run one in-process.
    Embedded {
        /// Listen address.
        listen: String,
    },
}

/// MQTT settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Mqtt {
    /// The broker.
    pub broker: Broker,
    /// Topic prefix: topics are `<prefix>/<station>/<kind>`.
    pub prefix: String,
    /// Client id.
    pub client_id: String,
    /// MQTT keep-alive.
    pub keep_alive: Duration,
    /// User name.
    pub username: Option<String>,
    /// Where the password comes from (never the password itself).
    pub password: Option<Secret>,
    /// TLS settings, if TLS is on.
    pub tls: Option<Tls>,
    /// Largest MQTT packet, both directions.
    pub max_packet_bytes: usize,
    /// Period of `/stats` messages.
    pub stats_interval: Duration,
    /// Publish heatmap thumbnails.
    pub heatmap: bool,
    /// Longest side of heatmap thumbnails.
    pub heatmap_side: u32,
    /// JPEG quality of heatmaps.
    pub heatmap_quality: u8,
    /// First reconnect delay.
    pub reconnect_min: Duration,
    /// Longest reconnect delay.
    pub reconnect_max: Duration,
}

/// A secret's source.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Secret {
    /// Read from a file.
    File(PathBuf),
    /// A systemd credential name, read from `$CREDENTIALS_DIRECTORY`.
    Credential(String),
}

impl Secret {
    /// Read the secret (trailing newline removed).
    pub fn read(&self) -> std::io::Result<String> {
        let path = match self {
            Secret::File(p) => p.clone(),
            Secret::Credential(name) => {
                let dir = std::env::var_os("CREDENTIALS_DIRECTORY").ok_or_else(|| {
                    std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!(
                            "credential {name:?}: $CREDENTIALS_DIRECTORY is not set (use LoadCredential=)"
                        ),
                    )
                })?;
                PathBuf::from(dir).join(name)
            }
        };
        let s = std::fs::read_to_string(&path)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        Ok(s.trim_end_matches(['\r', '\n']).to_string())
    }
}

/// TLS files.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Tls {
    /// CA certificate(s), PEM.
    pub ca_file: PathBuf,
    /// Client certificate and key, PEM, for mutual TLS.
    pub client_auth: Option<(PathBuf, PathBuf)>,
}

/// Outbox bounds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outbox {
    /// Most pending results kept.
    pub max_entries: usize,
    /// Most bytes kept (results + heatmaps).
    pub max_bytes: u64,
}

/// What to do with a file once its result is safely in the outbox.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum After {
    /// Move into `done/` (passed or failed) or `failed/` (could not be inspected).
    Move {
        /// Destination of inspected files.
        done_dir: PathBuf,
        /// Destination of files that could not be inspected.
        failed_dir: PathBuf,
    },
    /// Delete it.
    Delete,
    /// Leave it, and record it so a restart does not inspect it again.
    Keep,
}

/// GPIO edge to trigger on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Edge {
    /// Low → high.
    Rising,
    /// High → low.
    Falling,
    /// Both.
    Both,
}

/// One image source.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Source {
    /// A camera drop directory.
    Directory {
        /// Source name (in results).
        name: String,
        /// Directory watched.
        path: PathBuf,
        /// File-name glob.
        pattern: Option<String>,
        /// What to do after inspection.
        after: After,
    },
    /// A GPIO line that triggers a capture command.
    Gpio {
        /// Source name (in results).
        name: String,
        /// `/dev/gpiochipN`.
        chip: PathBuf,
        /// Line offset.
        line: u32,
        /// Edge.
        edge: Edge,
        /// Kernel debounce period.
        debounce: Duration,
        /// Line is active-low.
        active_low: bool,
        /// Capture command argv; `{output}` is replaced by the image path.
        capture: Vec<String>,
        /// Capture time limit.
        capture_timeout: Duration,
        /// Where captures are written.
        output_dir: PathBuf,
        /// Keep captured images after inspection.
        keep_captures: bool,
    },
}

impl Source {
    /// The source's name.
    pub fn name(&self) -> &str {
        match self {
            Source::Directory { name, .. } | Source::Gpio { name, .. } => name,
        }
    }
}

/// Read and check a configuration file.
pub fn load(path: &Path) -> Result<Config, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })?;
    parse(&text, path)
}

/// Parse and check configuration text; `path` names the file in messages and
/// anchors relative paths (relative to the file's directory).
pub fn parse(text: &str, path: &Path) -> Result<Config, Error> {
    let raw: RawConfig = toml::from_str(text).map_err(|e| Error::Parse {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    from_raw(raw, &base).map_err(|problems| Error::Invalid {
        path: path.to_owned(),
        problems,
    })
}

fn resolve(base: &Path, p: PathBuf) -> PathBuf {
    if p.is_absolute() {
        p
    } else {
        base.join(p)
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn from_raw(raw: RawConfig, base: &Path) -> Result<Config, Vec<String>> {
    let mut problems = Vec::new();
    let name = raw.station.name.unwrap_or_else(|| {
        nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "station".into())
    });
    if !valid_name(&name) {
        problems.push(format!(
            "station.name = {name:?}: use letters, digits, '-', '_' or '.' (it becomes an MQTT topic level)"
        ));
    }
    let state_dir = resolve(
        base,
        raw.station
            .state_dir
            .unwrap_or_else(|| "/var/lib/winclip-edge".into()),
    );
    let queue_capacity = raw.station.queue_capacity.unwrap_or(64);
    if queue_capacity == 0 {
        problems.push("station.queue_capacity must be at least 1".into());
    }
    let station = Station {
        name: name.clone(),
        state_dir: state_dir.clone(),
        threads: raw.station.threads.unwrap_or(0),
        queue_capacity,
    };

    let model = match raw.model {
        Some(m) => {
            if let Some(t) = m.threshold {
                if !t.is_finite() {
                    problems.push("model.threshold must be a finite number".into());
                }
            }
            Model {
                pack: resolve(base, m.pack),
                bank: resolve(base, m.bank),
                threshold: m.threshold,
                early_exit: m.early_exit.unwrap_or(false),
                precision: m.precision.unwrap_or_default(),
            }
        }
        None => {
            problems.push("[model] is missing: set model.pack and model.bank".into());
            Model {
                pack: PathBuf::new(),
                bank: PathBuf::new(),
                threshold: None,
                early_exit: false,
                precision: crate::model::Precision::F32,
            }
        }
    };

    let m = raw.mqtt;
    let broker = match m.host {
        Some(host) if host.trim().is_empty() => {
            problems.push("mqtt.host is empty: remove it to use the embedded broker".into());
            Broker::External { host, port: 1883 }
        }
        Some(host) => Broker::External {
            host,
            port: m.port.unwrap_or(if m.tls == Some(true) { 8883 } else { 1883 }),
        },
        None => {
            if m.port.is_some() {
                problems.push(
                    "mqtt.port is set without mqtt.host (the embedded broker uses mqtt.embedded_listen)"
                        .into(),
                );
            }
            let listen = m
                .embedded_listen
                .unwrap_or_else(|| DEFAULT_EMBEDDED_LISTEN.into());
            if listen.parse::<std::net::SocketAddr>().is_err() {
                problems.push(format!(
                    "mqtt.embedded_listen = {listen:?} is not an address:port"
                ));
            }
            Broker::Embedded { listen }
        }
    };
    let prefix = m.prefix.unwrap_or_else(|| DEFAULT_PREFIX.into());
    if prefix.is_empty() || prefix.contains(['#', '+']) || prefix.starts_with('/') || prefix.ends_with('/') {
        problems.push(format!(
            "mqtt.prefix = {prefix:?}: no wildcards, no leading or trailing '/'"
        ));
    }
    let client_id = m.client_id.unwrap_or_else(|| format!("winclip-edge-{name}"));
    if client_id.is_empty() {
        problems.push("mqtt.client_id must not be empty".into());
    }
    // rumqttc panics on a keep-alive under 1 s; check before it is used.
    let keep_alive = m.keep_alive_secs.unwrap_or(30);
    if keep_alive < 1 {
        problems.push("mqtt.keep_alive_secs must be at least 1".into());
    }
    let password = match (m.password_file, m.password_credential) {
        (Some(_), Some(_)) => {
            problems.push("mqtt.password_file and mqtt.password_credential are both set: choose one".into());
            None
        }
        (Some(f), None) => Some(Secret::File(resolve(base, f))),
        (None, Some(c)) => Some(Secret::Credential(c)),
        (None, None) => None,
    };
    if password.is_some() && m.username.is_none() {
        problems.push("a password is configured but mqtt.username is not".into());
    }
    let tls = match (m.tls.unwrap_or(false), m.ca_file) {
        (true, Some(ca)) => {
            let client_auth = match (m.client_cert_file, m.client_key_file) {
                (Some(c), Some(k)) => Some((resolve(base, c), resolve(base, k))),
                (None, None) => None,
                _ => {
                    problems.push("mqtt.client_cert_file and mqtt.client_key_file go together".into());
                    None
                }
            };
            Some(Tls {
                ca_file: resolve(base, ca),
                client_auth,
            })
        }
        (true, None) => {
            problems.push("mqtt.tls = true needs mqtt.ca_file".into());
            None
        }
        (false, ca) => {
            if ca.is_some() {
                problems.push("mqtt.ca_file is set but mqtt.tls is not true".into());
            }
            None
        }
    };
    if matches!(broker, Broker::Embedded { .. }) && tls.is_some() {
        problems
            .push("mqtt.tls needs mqtt.host (the embedded broker listens in plain TCP on loopback)".into());
    }
    let max_packet_bytes = m.max_packet_bytes.unwrap_or(DEFAULT_MAX_PACKET_BYTES);
    if max_packet_bytes < 64 * 1024 {
        problems.push("mqtt.max_packet_bytes must be at least 65536 (heatmaps are tens of KiB)".into());
    }
    let stats = m.stats_interval_secs.unwrap_or(60);
    if stats == 0 {
        problems.push("mqtt.stats_interval_secs must be at least 1".into());
    }
    let heatmap_side = m.heatmap_side.unwrap_or(256);
    if !(16..=4096).contains(&heatmap_side) {
        problems.push("mqtt.heatmap_side must be between 16 and 4096".into());
    }
    let heatmap_quality = m.heatmap_quality.unwrap_or(80);
    if !(1..=100).contains(&heatmap_quality) {
        problems.push("mqtt.heatmap_quality must be between 1 and 100".into());
    }
    let (rmin, rmax) = (
        m.reconnect_min_ms.unwrap_or(500),
        m.reconnect_max_ms.unwrap_or(30_000),
    );
    if rmin == 0 || rmax < rmin {
        problems.push("mqtt.reconnect_min_ms must be >= 1 and <= mqtt.reconnect_max_ms".into());
    }
    let mqtt = Mqtt {
        broker,
        prefix,
        client_id,
        keep_alive: Duration::from_secs(keep_alive),
        username: m.username,
        password,
        tls,
        max_packet_bytes,
        stats_interval: Duration::from_secs(stats),
        heatmap: m.heatmap.unwrap_or(true),
        heatmap_side,
        heatmap_quality,
        reconnect_min: Duration::from_millis(rmin),
        reconnect_max: Duration::from_millis(rmax),
    };

    let outbox = Outbox {
        max_entries: raw.outbox.max_entries.unwrap_or(10_000),
        max_bytes: raw.outbox.max_bytes.unwrap_or(512 * 1024 * 1024),
    };
    if outbox.max_entries == 0 || outbox.max_bytes < 1024 * 1024 {
        problems.push("outbox.max_entries must be >= 1 and outbox.max_bytes >= 1048576".into());
    }

    let mut sources = Vec::new();
    if raw.sources.is_empty() {
        problems.push("no [[source]]: add a directory or gpio source".into());
    }
    for (i, s) in raw.sources.into_iter().enumerate() {
        let key = format!("source[{i}]");
        match s {
            RawSource::Directory {
                name,
                path,
                pattern,
                after,
                done_dir,
                failed_dir,
            } => {
                let name = name.unwrap_or_else(|| format!("dir{i}"));
                let path = resolve(base, path);
                if let Some(p) = &pattern {
                    if let Err(e) = glob::Pattern::new(p) {
                        problems.push(format!("{key}.pattern = {p:?}: {e}"));
                    }
                }
                let after = match after.as_deref().unwrap_or("move") {
                    "move" => After::Move {
                        done_dir: done_dir
                            .map(|d| resolve(base, d))
                            .unwrap_or_else(|| path.join("done")),
                        failed_dir: failed_dir
                            .map(|d| resolve(base, d))
                            .unwrap_or_else(|| path.join("failed")),
                    },
                    "delete" => After::Delete,
                    "keep" => After::Keep,
                    other => {
                        problems.push(format!(
                            "{key}.after = {other:?}: expected \"move\", \"delete\" or \"keep\""
                        ));
                        After::Keep
                    }
                };
                sources.push(Source::Directory {
                    name,
                    path,
                    pattern,
                    after,
                });
            }
            RawSource::Gpio {
                name,
                chip,
                line,
                edge,
                debounce_ms,
                active_low,
                capture,
                capture_timeout_secs,
                output_dir,
                keep_captures,
            } => {
                let name = name.unwrap_or_else(|| format!("gpio{i}"));
                let edge = match edge.as_deref().unwrap_or("rising") {
                    "rising" => Edge::Rising,
                    "falling" => Edge::Falling,
                    "both" => Edge::Both,
                    other => {
                        problems.push(format!(
                            "{key}.edge = {other:?}: expected \"rising\", \"falling\" or \"both\""
                        ));
                        Edge::Rising
                    }
                };
                if capture.is_empty() {
                    problems.push(format!(
                        "{key}.capture is empty: give the capture command as an argv list"
                    ));
                } else if !capture.iter().any(|a| a.contains("{output}")) {
                    problems.push(format!(
                        "{key}.capture must contain {{output}} (where the image is written)"
                    ));
                }
                let output_dir = resolve(
                    base,
                    output_dir.unwrap_or_else(|| state_dir.join("captures").join(&name)),
                );
                sources.push(Source::Gpio {
                    name,
                    chip: resolve(base, chip),
                    line,
                    edge,
                    debounce: Duration::from_millis(debounce_ms.unwrap_or(10)),
                    active_low: active_low.unwrap_or(false),
                    capture,
                    capture_timeout: Duration::from_secs(capture_timeout_secs.unwrap_or(10)),
                    output_dir,
                    keep_captures: keep_captures.unwrap_or(false),
                });
            }
        }
    }
    let mut names: Vec<&str> = sources.iter().map(Source::name).collect();
    names.sort_unstable();
    for w in names.windows(2) {
        if w[0] == w[1] {
            problems.push(format!("two sources are named {:?}", w[0]));
        }
    }
    for s in &sources {
        if !valid_name(s.name()) {
            problems.push(format!(
                "source name {:?}: use letters, digits, '-', '_' or '.'",
                s.name()
            ));
        }
    }

    if problems.is_empty() {
        Ok(Config {
            station,
            model,
            mqtt,
            outbox,
            sources,
        })
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[station]
name = "line1"
state_dir = "/tmp/state"
[model]
pack = "models/tiny"
bank = "bottle.bank"
[[source]]
type = "directory"
path = "/srv/drop"
"#;

    fn parse_str(s: &str) -> Result<Config, String> {
        parse(s, Path::new("/etc/winclip-edge/config.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse_str(MINIMAL).unwrap();
        assert_eq!(c.station.name, "line1");
        assert!(!c.model.early_exit, "early exit is opt-in");
        assert_eq!(c.model.precision, crate::model::Precision::F32);
        let on = parse_str(&MINIMAL.replace(
            "bank = \"bottle.bank\"",
            "bank = \"bottle.bank\"\nearly_exit = true\nprecision = \"f16\"",
        ))
        .unwrap();
        assert!(on.model.early_exit);
        assert_eq!(on.model.precision, crate::model::Precision::F16);
        let bad = parse_str(&MINIMAL.replace(
            "bank = \"bottle.bank\"",
            "bank = \"bottle.bank\"\nprecision = \"f8\"",
        ));
        assert!(bad.unwrap_err().contains("precision"));
        assert_eq!(c.mqtt.prefix, "winclip");
        assert_eq!(
            c.mqtt.broker,
            Broker::Embedded {
                listen: "127.0.0.1:1883".into()
            }
        );
        assert_eq!(c.mqtt.max_packet_bytes, DEFAULT_MAX_PACKET_BYTES);
        assert_eq!(
            c.model.pack,
            PathBuf::from("/etc/winclip-edge/models/tiny"),
            "relative to the file"
        );
        match &c.sources[0] {
            Source::Directory {
                after: After::Move { done_dir, failed_dir },
                name,
                ..
            } => {
                assert_eq!(name, "dir0");
                assert_eq!(done_dir, &PathBuf::from("/srv/drop/done"));
                assert_eq!(failed_dir, &PathBuf::from("/srv/drop/failed"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unknown_keys_name_the_key_and_line() {
        let err = parse_str(&MINIMAL.replace("[model]", "[model]\nthreshhold = 0.5")).unwrap_err();
        assert!(err.contains("threshhold"), "{err}");
        assert!(err.contains("line 6"), "{err}");
    }

    #[test]
    fn wrong_types_name_the_key_and_line() {
        let err = parse_str(&MINIMAL.replace("name = \"line1\"", "name = \"line1\"\nthreads = \"two\""))
            .unwrap_err();
        assert!(err.contains("threads") && err.contains("line 4"), "{err}");
    }

    #[test]
    fn every_cross_field_problem_is_reported_at_once() {
        let text = MINIMAL.replace(
            "[model]",
            "[mqtt]\ntls = true\nkeep_alive_secs = 0\nprefix = \"a/#\"\n[model]",
        );
        let err = parse_str(&text).unwrap_err();
        for want in [
            "mqtt.tls = true needs mqtt.ca_file",
            "keep_alive_secs",
            "mqtt.prefix",
        ] {
            assert!(err.contains(want), "missing {want:?} in {err}");
        }
    }

    #[test]
    fn gpio_sources_need_an_output_placeholder() {
        let text = format!(
            "{MINIMAL}\n[[source]]\ntype = \"gpio\"\nchip = \"/dev/gpiochip0\"\nline = 17\ncapture = [\"cam\", \"-o\", \"x.jpg\"]\nedge = \"up\"\n"
        );
        let err = parse_str(&text).unwrap_err();
        assert!(
            err.contains("{output}") && err.contains("source[1].edge"),
            "{err}"
        );
    }

    #[test]
    fn an_external_broker_with_credentials() {
        let text = MINIMAL.replace(
            "[model]",
            "[mqtt]\nhost = \"broker.lan\"\nusername = \"cam\"\npassword_credential = \"mqtt-password\"\n[model]",
        );
        let c = parse_str(&text).unwrap();
        assert_eq!(
            c.mqtt.broker,
            Broker::External {
                host: "broker.lan".into(),
                port: 1883
            }
        );
        assert_eq!(c.mqtt.password, Some(Secret::Credential("mqtt-password".into())));
    }

    #[test]
    fn missing_sections_are_named() {
        let err = parse_str("[station]\nname = \"x\"\n").unwrap_err();
        assert!(
            err.contains("[model] is missing") && err.contains("no [[source]]"),
            "{err}"
        );
    }

    #[test]
    fn the_shipped_example_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/winclip-edge.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let c = parse(&text, &path).unwrap();
        assert!(!c.sources.is_empty());
    }
}
