//! The daemon's TOML configuration: parsed into a raw mirror of the file
//! ([`raw`]), then checked section by section into a ready-to-use [`Config`].
//!
//! Unknown keys and wrong types are errors that name the key and the line
//! (serde + `deny_unknown_fields`); each section's checker adds its problems
//! to one list, so every problem is reported at once; warnings (deprecated
//! keys) are kept apart. Every key, its default and whether it applies live
//! or needs a restart ([`reload`]) is documented in `config/winclip-edge.toml`.

pub mod outputs;
mod raw;
pub mod reload;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use raw::{
    RawAfter, RawCommands, RawConfig, RawHeatmap, RawHistory, RawHttp, RawModel, RawMqtt, RawOutbox,
    RawRecipe, RawSource, RawSourceType, RawStation,
};
pub use reload::{Applies, Change, EngineChange, ReloadPlan};

/// Default MQTT topic prefix.
pub const DEFAULT_PREFIX: &str = "winclip";
/// Default listen address of the embedded broker.
pub const DEFAULT_EMBEDDED_LISTEN: &str = "127.0.0.1:1883";
/// rumqttc's own limit is 10 KiB, too small for heatmaps.
pub const DEFAULT_MAX_PACKET_BYTES: usize = 8 * 1024 * 1024;
/// Where the outbox, records and captures live (systemd's `StateDirectory=`).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/winclip-edge";
/// Images waiting for the inference worker.
pub const DEFAULT_QUEUE_CAPACITY: usize = 64;
/// Most inference threads accepted (tract's thread pool is built with this many).
pub const MAX_THREADS: usize = 256;
/// MQTT keep-alive.
pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(30);
/// Period of `/stats` messages.
pub const DEFAULT_STATS_INTERVAL: Duration = Duration::from_secs(60);
/// First reconnect delay.
pub const DEFAULT_RECONNECT_MIN: Duration = Duration::from_millis(500);
/// Longest reconnect delay.
pub const DEFAULT_RECONNECT_MAX: Duration = Duration::from_secs(30);
/// Longest side of heatmap thumbnails.
pub const DEFAULT_HEATMAP_SIDE: u32 = 256;
/// JPEG quality of heatmaps.
pub const DEFAULT_HEATMAP_QUALITY: u8 = 80;
/// Most pending results in the outbox.
pub const DEFAULT_OUTBOX_MAX_ENTRIES: usize = 10_000;
/// Most bytes in the outbox.
pub const DEFAULT_OUTBOX_MAX_BYTES: u64 = 512 * 1024 * 1024;
/// Resident memory a model pack change may reach (the full-size pack's
/// station peaks at ≈ 1.0 GB; boards with 2 GB leave room for the system).
pub const DEFAULT_MEMORY_BUDGET_MB: u64 = 1200;
/// GPIO debounce period.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(10);
/// Capture command time limit.
pub const DEFAULT_CAPTURE_TIMEOUT: Duration = Duration::from_secs(10);

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

/// A checked configuration and what deserves a warning in it.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked {
    /// The configuration.
    pub config: Config,
    /// One line per warning (deprecated keys), each naming its key.
    pub warnings: Vec<String>,
}

/// The checked configuration.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    /// Station settings.
    pub station: Station,
    /// Model pack and bank.
    pub model: Model,
    /// MQTT settings.
    pub mqtt: Mqtt,
    /// Heatmap rendering.
    pub heatmap: Heatmap,
    /// Durable outbox bounds.
    pub outbox: Outbox,
    /// The HTTP endpoint (metrics, JSON API, the page).
    pub http: Http,
    /// The store of recent results the page shows.
    pub history: History,
    /// Commands over MQTT.
    pub commands: Commands,
    /// The recipes beyond `[model]`'s own (`[[recipe]]`).
    pub recipes: Vec<Recipe>,
    /// The recipe each source starts with, where it names one (`recipe` of
    /// a `[[source]]`; the others start with `model.recipe`).
    pub source_recipes: BTreeMap<String, String>,
    /// Image sources.
    pub sources: Vec<Source>,
}

/// A recipe: a named bank with its own threshold and early-exit setting, on
/// the station's one model (`[[recipe]]`; `[model]`'s bank is the recipe
/// named `model.recipe`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recipe {
    /// What commands, the active-recipe file and results call it.
    pub name: String,
    /// Bank file (made with the station's model pack).
    pub bank: PathBuf,
    /// Threshold override.
    pub threshold: Option<f32>,
    /// Early-exit cascade.
    pub early_exit: bool,
}

/// The recipe name `[model]`'s bank has unless `model.recipe` says otherwise.
pub const DEFAULT_RECIPE: &str = "default";

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
    /// What a picture may cost before it is refused unread.
    pub limits: crate::imageio::Limits,
    /// Decode JPEGs at reduced DCT scale ([`crate::imageio::decode_rgb_reduced`]).
    pub jpeg_dct_scaling: bool,
}

/// The model pack and bank to inspect with.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Model {
    /// Model pack directory.
    pub pack: PathBuf,
    /// Bank file.
    pub bank: PathBuf,
    /// The name of the recipe this bank is.
    pub recipe: String,
    /// Threshold override.
    pub threshold: Option<f32>,
    /// Early-exit cascade: pass clearly good parts from the full-image pass.
    pub early_exit: bool,
    /// Token encoder precision.
    pub precision: crate::model::Precision,
    /// Linear layers an int8 or bf16 encoder keeps in f32.
    pub f32_layers: crate::model::F32Layers,
    /// Where the token encoder runs.
    pub device: crate::model::Device,
    /// Resident memory (bytes) a model pack change may reach: the new model
    /// is loaded beside the running one only when both fit.
    pub memory_budget: u64,
}

impl Model {
    /// How the token encoder computes.
    pub fn numerics(&self) -> crate::model::Numerics {
        crate::model::Numerics {
            precision: self.precision,
            f32_layers: self.f32_layers.clone(),
        }
    }

    /// `pack` and `bank` with every other setting at its default.
    pub fn new(pack: PathBuf, bank: PathBuf) -> Self {
        Self {
            pack,
            bank,
            recipe: DEFAULT_RECIPE.into(),
            threshold: None,
            early_exit: false,
            precision: crate::model::Precision::default(),
            f32_layers: crate::model::F32Layers::default(),
            device: crate::model::Device::default(),
            memory_budget: DEFAULT_MEMORY_BUDGET_MB * 1_000_000,
        }
    }
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
        /// Accept clients without credentials on an address other than
        /// loopback (anyone on that network could publish under the
        /// station's topics).
        allow_anonymous: bool,
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
    /// First reconnect delay.
    pub reconnect_min: Duration,
    /// Longest reconnect delay.
    pub reconnect_max: Duration,
    /// Home Assistant MQTT discovery: the discovery prefix, when on.
    pub homeassistant: Option<String>,
}

impl Mqtt {
    /// Settings for `broker` with every other key at its default.
    pub fn new(broker: Broker, station: &str) -> Self {
        Self {
            broker,
            prefix: DEFAULT_PREFIX.into(),
            client_id: default_client_id(station),
            keep_alive: DEFAULT_KEEP_ALIVE,
            username: None,
            password: None,
            tls: None,
            max_packet_bytes: DEFAULT_MAX_PACKET_BYTES,
            stats_interval: DEFAULT_STATS_INTERVAL,
            reconnect_min: DEFAULT_RECONNECT_MIN,
            reconnect_max: DEFAULT_RECONNECT_MAX,
            homeassistant: None,
        }
    }

    /// Whether `other` differs from `self` in what the connection is made
    /// with (everything but the prefix, the stats period and discovery).
    pub fn connection_differs(&self, other: &Mqtt) -> bool {
        let strip = |m: &Mqtt| Mqtt {
            prefix: String::new(),
            stats_interval: Duration::ZERO,
            homeassistant: None,
            ..m.clone()
        };
        strip(self) != strip(other)
    }
}

fn default_client_id(station: &str) -> String {
    format!("winclip-edge-{station}")
}

/// Where the HTTP endpoint listens by default: loopback only.
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:8080";

/// The station's HTTP endpoint (`[http]`): Prometheus metrics and the JSON API.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Http {
    /// Serve at all.
    pub enabled: bool,
    /// Address and port.
    pub listen: std::net::SocketAddr,
    /// The bearer token every request must carry (required beyond loopback).
    pub token: Option<Secret>,
}

impl Default for Http {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: DEFAULT_HTTP_LISTEN.parse().expect("a valid default address"),
            token: None,
        }
    }
}

/// Commands over MQTT (`[commands]`): off unless asked for.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Commands {
    /// Subscribe to `<prefix>/<station>/cmd` and act on what arrives.
    pub enabled: bool,
}

/// Home Assistant's default discovery prefix.
pub const DEFAULT_HOMEASSISTANT_PREFIX: &str = "homeassistant";

/// The store of recent results (`[history]`, in `<state_dir>/history`): the
/// page and `/api/results` show them; kept across restarts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct History {
    /// Results kept (0: none, the page shows only what arrives live).
    pub results: usize,
    /// Bytes the store may take (pictures and heatmaps).
    pub max_bytes: u64,
    /// Keep each inspected picture too (as read), not only its heatmap.
    pub pictures: bool,
}

impl Default for History {
    fn default() -> Self {
        Self {
            results: 100,
            max_bytes: 256 << 20,
            pictures: true,
        }
    }
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

/// Heatmap thumbnails published beside each result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Heatmap {
    /// Render and publish heatmaps.
    pub enabled: bool,
    /// Longest side in pixels.
    pub side: u32,
    /// JPEG quality.
    pub quality: u8,
}

impl Default for Heatmap {
    fn default() -> Self {
        Self {
            enabled: true,
            side: DEFAULT_HEATMAP_SIDE,
            quality: DEFAULT_HEATMAP_QUALITY,
        }
    }
}

/// Outbox bounds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outbox {
    /// Most pending results kept.
    pub max_entries: usize,
    /// Most bytes kept (results + heatmaps).
    pub max_bytes: u64,
}

impl Default for Outbox {
    fn default() -> Self {
        Self {
            max_entries: DEFAULT_OUTBOX_MAX_ENTRIES,
            max_bytes: DEFAULT_OUTBOX_MAX_BYTES,
        }
    }
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Edge {
    /// Low → high.
    Rising,
    /// High → low.
    Falling,
    /// Both.
    Both,
}

/// A camera drop directory.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DirectorySource {
    /// Source name (in results).
    pub name: String,
    /// Directory watched.
    pub path: PathBuf,
    /// File-name glob.
    pub pattern: Option<String>,
    /// What to do after inspection.
    pub after: After,
    /// A file closed after writing is inspected once its size and time have
    /// not changed for this long (for writers that close and reopen it);
    /// zero: at once. Files renamed into place are always final.
    pub settle: Duration,
    /// Create the directory when it does not exist (otherwise that is an
    /// error: a typo in the path would mean nothing ever arrives).
    pub create: bool,
}

/// A GPIO line that triggers a capture command.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GpioSource {
    /// Source name (in results).
    pub name: String,
    /// `/dev/gpiochipN`.
    pub chip: PathBuf,
    /// Line offset.
    pub line: u32,
    /// Edge.
    pub edge: Edge,
    /// Debounce period: the kernel's where the kernel has it (uAPI v2), in
    /// software otherwise.
    pub debounce: Duration,
    /// Line is active-low.
    pub active_low: bool,
    /// Capture command argv; `{output}` is replaced by the image path.
    pub capture: Vec<String>,
    /// Capture time limit.
    pub capture_timeout: Duration,
    /// Where captures are written.
    pub output_dir: PathBuf,
    /// Keep captured images after inspection.
    pub keep_captures: bool,
    /// Input lines (same chip) read at each trigger as a binary recipe code,
    /// the first line the lowest bit; empty: the source's active recipe.
    pub recipe_lines: Vec<u32>,
    /// The code lines are active-low (a low line is a 1).
    pub recipe_lines_active_low: bool,
    /// The recipe of code 0, 1, 2, …; `""` (and a code past the end) is
    /// no recipe: that trigger gets an error result.
    pub recipe_codes: Vec<String>,
    /// The PLC output lines and their handshake.
    pub outputs: Option<outputs::Outputs>,
    /// A button (same chip, same polarity and debounce as the trigger) that
    /// teaches this source's last kept picture to its recipe (command `teach`).
    pub teach_line: Option<u32>,
    /// What a press teaches it as.
    pub teach_as: crate::recipe_dir::Set,
}

impl GpioSource {
    /// The recipe code `code` selects (`None`: no recipe has that code).
    pub fn recipe_of_code(&self, code: usize) -> Option<&str> {
        self.recipe_codes
            .get(code)
            .map(String::as_str)
            .filter(|n| !n.is_empty())
    }
}

/// One image source.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Source {
    /// A camera drop directory.
    Directory(DirectorySource),
    /// A GPIO line that triggers a capture command.
    Gpio(GpioSource),
}

impl Source {
    /// The source's name.
    pub fn name(&self) -> &str {
        match self {
            Source::Directory(d) => &d.name,
            Source::Gpio(g) => &g.name,
        }
    }
}

impl Config {
    /// A configuration with one station, model and source list, every other
    /// key at its default (the embedded broker on its default address).
    pub fn new(name: &str, state_dir: PathBuf, model: Model, sources: Vec<Source>) -> Self {
        Self {
            station: Station {
                name: name.to_string(),
                state_dir,
                threads: 0,
                queue_capacity: DEFAULT_QUEUE_CAPACITY,
                limits: crate::imageio::Limits::DEFAULT,
                jpeg_dct_scaling: false,
            },
            model,
            mqtt: Mqtt::new(
                Broker::Embedded {
                    listen: DEFAULT_EMBEDDED_LISTEN.into(),
                    allow_anonymous: false,
                },
                name,
            ),
            heatmap: Heatmap::default(),
            outbox: Outbox::default(),
            http: Http::default(),
            history: History::default(),
            commands: Commands::default(),
            recipes: Vec::new(),
            source_recipes: BTreeMap::new(),
            sources,
        }
    }

    /// Every recipe's name, `[model]`'s first.
    pub fn recipe_names(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.model.recipe.as_str()).chain(self.recipes.iter().map(|r| r.name.as_str()))
    }

    /// The recipe `source` starts with (and returns to when a command clears its choice).
    pub fn default_recipe(&self, source: &str) -> &str {
        self.source_recipes
            .get(source)
            .map_or(self.model.recipe.as_str(), String::as_str)
    }

    /// The threshold override of recipe `name` (`None` also for an unknown name).
    pub fn recipe_threshold(&self, name: &str) -> Option<f32> {
        if name == self.model.recipe {
            self.model.threshold
        } else {
            self.recipes
                .iter()
                .find(|r| r.name == name)
                .and_then(|r| r.threshold)
        }
    }

    /// Set the threshold override of recipe `name` (nothing for an unknown name).
    pub fn set_recipe_threshold(&mut self, name: &str, threshold: Option<f32>) {
        if name == self.model.recipe {
            self.model.threshold = threshold;
        } else if let Some(r) = self.recipes.iter_mut().find(|r| r.name == name) {
            r.threshold = threshold;
        }
    }

    /// What reloading from `old` (running) to `self` (just read) changes.
    pub fn reload_plan(&self, old: &Config) -> ReloadPlan {
        ReloadPlan::new(old, self)
    }

    /// The configuration as a TOML file that [`parse`] reads back to the same
    /// value (every key written out; paths and strings quoted by the TOML
    /// writer, so any path works). Fails only on paths that are not UTF-8.
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string(&RawConfig::from(self))
    }
}

/// Read and check a configuration file.
pub fn load(path: &Path) -> Result<Checked, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })?;
    parse(&text, path)
}

/// Parse and check configuration text; `path` names the file in messages and
/// anchors relative paths (relative to the file's directory).
pub fn parse(text: &str, path: &Path) -> Result<Checked, Error> {
    let raw: RawConfig = toml::from_str(text).map_err(|e| Error::Parse {
        path: path.to_owned(),
        message: plain_types(&e.to_string()),
    })?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut report = Report::default();
    let config = check(raw, &base, &mut report);
    if report.problems.is_empty() {
        Ok(Checked {
            config,
            warnings: report.warnings,
        })
    } else {
        Err(Error::Invalid {
            path: path.to_owned(),
            problems: report.problems,
        })
    }
}

/// serde names Rust types ("expected u16"); say what they hold instead.
fn plain_types(message: &str) -> String {
    const TYPES: [(&str, &str); 8] = [
        ("expected u8", "expected a whole number from 0 to 255"),
        ("expected u16", "expected a whole number from 0 to 65535"),
        ("expected u32", "expected a whole number from 0 to 4294967295"),
        ("expected u64", "expected a whole number, 0 or more"),
        ("expected usize", "expected a whole number, 0 or more"),
        ("expected f32", "expected a number"),
        ("expected a boolean", "expected true or false"),
        (
            "expected a sequence",
            "expected a list in brackets, like [\"a\", \"b\"]",
        ),
    ];
    let mut m = message.to_string();
    for (rust, plain) in TYPES {
        m = m.replace(rust, plain);
    }
    m
}

// ------------------------------------------------------------------ checks

/// What the section checkers found.
#[derive(Debug, Default)]
struct Report {
    problems: Vec<String>,
    warnings: Vec<String>,
}

impl Report {
    fn problem(&mut self, p: impl Into<String>) {
        self.problems.push(p.into());
    }

    fn warning(&mut self, w: impl Into<String>) {
        self.warnings.push(w.into());
    }

    /// `key = value` must lie in `lo..=hi`.
    fn range<T: PartialOrd + std::fmt::Display>(&mut self, key: &str, value: T, lo: T, hi: T) {
        if value < lo || value > hi {
            self.problem(format!("{key} = {value}: must be between {lo} and {hi}"));
        }
    }
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

fn check(raw: RawConfig, base: &Path, r: &mut Report) -> Config {
    let station = check_station(raw.station, base, r);
    let model = check_model(raw.model, base, r);
    let (mqtt, deprecated) = check_mqtt(raw.mqtt, &station.name, base, r);
    let heatmap = check_heatmap(raw.heatmap, deprecated, r);
    // A JPEG takes at most ~4 bytes per pixel (quality 100 on noise: 3.3);
    // a heatmap that may not fit one MQTT packet would be dropped at publish.
    let worst = 4 * (heatmap.side as usize).pow(2);
    if heatmap.enabled && worst > mqtt.max_packet_bytes {
        r.problem(format!(
            "heatmap.side = {} gives JPEGs of up to {worst} bytes, more than mqtt.max_packet_bytes = {}: \
             lower heatmap.side to {} or raise mqtt.max_packet_bytes to {worst}",
            heatmap.side,
            mqtt.max_packet_bytes,
            ((mqtt.max_packet_bytes / 4) as f64).sqrt() as usize,
        ));
    }
    let outbox = check_outbox(raw.outbox, r);
    let http = check_http(raw.http, base, r);
    let history = check_history(raw.history, r);
    let commands = Commands {
        enabled: raw.commands.enabled.unwrap_or(false),
    };
    let recipes = check_recipes(raw.recipes, &model, base, r);
    let source_recipes: BTreeMap<String, String> = raw
        .sources
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            let name = s.name.clone().unwrap_or_else(|| default_source_name(s, i));
            Some((name, s.recipe.clone()?))
        })
        .collect();
    for (source, recipe) in &source_recipes {
        if recipe != &model.recipe && !recipes.iter().any(|x| &x.name == recipe) {
            r.problem(format!(
                "source {source}: recipe = {recipe:?} is not a recipe here (model.recipe {:?}{})",
                model.recipe,
                recipes
                    .iter()
                    .map(|x| format!(", {:?}", x.name))
                    .collect::<String>()
            ));
        }
    }
    let sources = check_sources(raw.sources, base, &station.state_dir, r);
    for s in &sources {
        let Source::Gpio(g) = s else { continue };
        if !g.recipe_lines.is_empty() && source_recipes.contains_key(&g.name) {
            r.problem(format!(
                "source {}: recipe and recipe_lines: the code on its lines chooses each trigger's recipe; remove recipe",
                g.name
            ));
        }
        for (code, name) in g.recipe_codes.iter().enumerate() {
            if !name.is_empty() && name != &model.recipe && !recipes.iter().any(|x| &x.name == name) {
                r.problem(format!(
                    "source {}: recipe_codes[{code}] = {name:?} is not a recipe here (model.recipe {:?}{}; \"\" for a code that selects none)",
                    g.name,
                    model.recipe,
                    recipes.iter().map(|x| format!(", {:?}", x.name)).collect::<String>()
                ));
            }
        }
    }
    Config {
        station,
        model,
        mqtt,
        heatmap,
        outbox,
        http,
        history,
        commands,
        recipes,
        source_recipes,
        sources,
    }
}

/// A `[[recipe]]` needs a name (unique, with `model.recipe`) and a bank.
fn check_recipes(raw: Vec<RawRecipe>, model: &Model, base: &Path, r: &mut Report) -> Vec<Recipe> {
    let mut recipes: Vec<Recipe> = Vec::new();
    for (i, x) in raw.into_iter().enumerate() {
        let key = format!("recipe[{i}]");
        let Some(name) = x.name else {
            r.problem(format!("{key}.name is missing: the name commands switch to"));
            continue;
        };
        if !valid_name(&name) || name.len() > 64 {
            r.problem(format!(
                "{key}.name = {name:?}: 1 to 64 letters, digits, '-', '_' or '.'"
            ));
        }
        if name == model.recipe || recipes.iter().any(|o| o.name == name) {
            r.problem(format!(
                "two recipes are named {name:?} (model.recipe names [model]'s bank)"
            ));
        }
        let Some(bank) = x.bank else {
            r.problem(format!("{key}.bank is missing: the bank file of recipe {name:?}"));
            continue;
        };
        if x.threshold.is_some_and(|t| !t.is_finite()) {
            r.problem(format!("{key}.threshold must be a finite number"));
        }
        recipes.push(Recipe {
            name,
            bank: resolve(base, bank),
            threshold: x.threshold,
            early_exit: x.early_exit.unwrap_or(false),
        });
    }
    recipes
}

fn check_history(h: RawHistory, r: &mut Report) -> History {
    let d = History::default();
    let history = History {
        results: h.results.unwrap_or(d.results),
        max_bytes: h.max_mb.map_or(d.max_bytes, |mb| mb << 20),
        pictures: h.pictures.unwrap_or(d.pictures),
    };
    r.range("history.results", history.results, 0, 100_000);
    r.range("history.max_mb", history.max_bytes >> 20, 1, 1 << 20);
    history
}

fn check_station(s: RawStation, base: &Path, r: &mut Report) -> Station {
    let name = s.name.unwrap_or_else(|| {
        nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "station".into())
    });
    if !valid_name(&name) {
        r.problem(format!(
            "station.name = {name:?}: use letters, digits, '-', '_' or '.' (it becomes an MQTT topic level)"
        ));
    }
    let threads = s.threads.unwrap_or(0);
    r.range("station.threads", threads, 0, MAX_THREADS);
    let queue_capacity = s.queue_capacity.unwrap_or(DEFAULT_QUEUE_CAPACITY);
    r.range("station.queue_capacity", queue_capacity, 1, 100_000);
    let d = crate::imageio::Limits::DEFAULT;
    let mb = s.max_image_mb.unwrap_or(d.max_bytes >> 20);
    r.range("station.max_image_mb", mb, 1, 4096);
    let mp = s.max_image_megapixels.unwrap_or(d.max_pixels / 1_000_000);
    // 16384² is the most a side allows: 268 MP.
    r.range("station.max_image_megapixels", mp, 1, 268);
    Station {
        name,
        state_dir: resolve(base, s.state_dir.unwrap_or_else(|| DEFAULT_STATE_DIR.into())),
        threads,
        queue_capacity,
        limits: crate::imageio::Limits {
            max_bytes: mb.saturating_mul(1 << 20),
            max_pixels: mp.saturating_mul(1_000_000),
        },
        jpeg_dct_scaling: s.jpeg_dct_scaling.unwrap_or(false),
    }
}

fn check_model(m: Option<RawModel>, base: &Path, r: &mut Report) -> Model {
    let Some(m) = m else {
        r.problem("[model] is missing: set model.pack and model.bank");
        return Model::new(PathBuf::new(), PathBuf::new());
    };
    if m.threshold.is_some_and(|t| !t.is_finite()) {
        r.problem("model.threshold must be a finite number");
    }
    let budget_mb = m.memory_budget_mb.unwrap_or(DEFAULT_MEMORY_BUDGET_MB);
    r.range("model.memory_budget_mb", budget_mb, 64, 1 << 20);
    let recipe = m.recipe.unwrap_or_else(|| DEFAULT_RECIPE.into());
    if !valid_name(&recipe) || recipe.len() > 64 {
        r.problem(format!(
            "model.recipe = {recipe:?}: 1 to 64 letters, digits, '-', '_' or '.'"
        ));
    }
    let precision = m.precision.unwrap_or_default();
    let f32_layers = match crate::model::F32Layers::new(&m.f32_layers.unwrap_or_default()) {
        Ok(layers) => layers,
        Err(e) => {
            r.problem(format!("model.{e}"));
            crate::model::F32Layers::default()
        }
    };
    if !f32_layers.patterns().is_empty() && !precision.lowers_linear_layers() {
        r.warning(format!(
            "model.f32_layers applies to precision \"int8\" and \"bf16\" only; with \"{precision}\" every layer is {precision} anyway"
        ));
    }
    Model {
        pack: resolve(base, m.pack),
        bank: resolve(base, m.bank),
        recipe,
        threshold: m.threshold,
        early_exit: m.early_exit.unwrap_or(false),
        precision,
        f32_layers,
        device: m.device.unwrap_or_default(),
        memory_budget: budget_mb.saturating_mul(1_000_000),
    }
}

/// The deprecated `mqtt.heatmap*` keys, handed to the `[heatmap]` checker.
struct DeprecatedHeatmap {
    enabled: Option<bool>,
    side: Option<u32>,
    quality: Option<u8>,
}

fn check_mqtt(m: RawMqtt, station: &str, base: &Path, r: &mut Report) -> (Mqtt, DeprecatedHeatmap) {
    if m.host.is_some() && m.allow_anonymous.is_some() {
        r.problem("mqtt.allow_anonymous applies to the embedded broker only: remove it (or mqtt.host)");
    }
    let broker = match m.host {
        Some(host) if host.trim().is_empty() => {
            r.problem("mqtt.host is empty: remove it to use the embedded broker");
            Broker::External { host, port: 1883 }
        }
        Some(host) => Broker::External {
            host,
            port: m.port.unwrap_or(if m.tls == Some(true) { 8883 } else { 1883 }),
        },
        None => {
            if m.port.is_some() {
                r.problem(
                    "mqtt.port is set without mqtt.host (the embedded broker uses mqtt.embedded_listen)",
                );
            }
            let listen = m
                .embedded_listen
                .unwrap_or_else(|| DEFAULT_EMBEDDED_LISTEN.into());
            let allow_anonymous = m.allow_anonymous.unwrap_or(false);
            match listen.parse::<std::net::SocketAddr>() {
                Err(_) => r.problem(format!(
                    "mqtt.embedded_listen = {listen:?} is not an address:port"
                )),
                // Beyond loopback, anyone on the network could publish fake
                // results under the station's topics.
                Ok(addr) if !addr.ip().is_loopback() && m.username.is_none() => {
                    if allow_anonymous {
                        r.warning(format!(
                            "mqtt.embedded_listen = {listen:?} with allow_anonymous = true: anyone who can \
                             reach that address can publish fake results under this station's topics"
                        ));
                    } else {
                        r.problem(format!(
                            "mqtt.embedded_listen = {listen:?} would open an anonymous broker to the network, \
                             where anyone could publish fake results under this station's topics: set \
                             mqtt.username and a password (the embedded broker then requires them), listen \
                             on 127.0.0.1, or set mqtt.allow_anonymous = true to accept that"
                        ));
                    }
                }
                Ok(_) => {}
            }
            Broker::Embedded {
                listen,
                allow_anonymous,
            }
        }
    };
    let prefix = m.prefix.unwrap_or_else(|| DEFAULT_PREFIX.into());
    if prefix.is_empty() || prefix.contains(['#', '+']) || prefix.starts_with('/') || prefix.ends_with('/') {
        r.problem(format!(
            "mqtt.prefix = {prefix:?}: no wildcards, no leading or trailing '/'"
        ));
    }
    let client_id = m.client_id.unwrap_or_else(|| default_client_id(station));
    if client_id.is_empty() {
        r.problem("mqtt.client_id must not be empty");
    }
    // rumqttc panics on a keep-alive under 1 s; check before it is used.
    let keep_alive = m.keep_alive_secs.unwrap_or(DEFAULT_KEEP_ALIVE.as_secs());
    r.range("mqtt.keep_alive_secs", keep_alive, 1, 65_535);
    let password = match (m.password_file, m.password_credential) {
        (Some(_), Some(_)) => {
            r.problem("mqtt.password_file and mqtt.password_credential are both set: choose one");
            None
        }
        (Some(f), None) => {
            if f.as_os_str().is_empty() {
                r.problem("mqtt.password_file is empty: give the file that holds the password");
            }
            Some(Secret::File(resolve(base, f)))
        }
        (None, Some(c)) => Some(Secret::Credential(c)),
        (None, None) => None,
    };
    match &password {
        Some(Secret::Credential(c)) if c.is_empty() || c.contains('/') => {
            r.problem(format!(
                "mqtt.password_credential = {c:?}: give the name of a systemd credential (LoadCredential=NAME:...)"
            ));
        }
        _ => {}
    }
    if let (Some(p), None) = (&password, &m.username) {
        let key = match p {
            Secret::File(_) => "mqtt.password_file",
            Secret::Credential(_) => "mqtt.password_credential",
        };
        r.problem(format!("{key} is set but mqtt.username is not"));
    }
    let tls = match (m.tls.unwrap_or(false), m.ca_file) {
        (true, Some(ca)) => {
            let client_auth = match (m.client_cert_file, m.client_key_file) {
                (Some(c), Some(k)) => Some((resolve(base, c), resolve(base, k))),
                (None, None) => None,
                _ => {
                    r.problem("mqtt.client_cert_file and mqtt.client_key_file go together");
                    None
                }
            };
            Some(Tls {
                ca_file: resolve(base, ca),
                client_auth,
            })
        }
        (true, None) => {
            r.problem("mqtt.tls = true needs mqtt.ca_file");
            None
        }
        (false, ca) => {
            if ca.is_some() {
                r.problem("mqtt.ca_file is set but mqtt.tls is not true");
            }
            None
        }
    };
    if matches!(broker, Broker::Embedded { .. }) && tls.is_some() {
        r.problem("mqtt.tls needs mqtt.host (the embedded broker listens in plain TCP on loopback)");
    }
    let max_packet_bytes = m.max_packet_bytes.unwrap_or(DEFAULT_MAX_PACKET_BYTES);
    // MQTT's own limit is 256 MiB; below 64 KiB heatmaps cannot be sent.
    r.range(
        "mqtt.max_packet_bytes",
        max_packet_bytes,
        64 * 1024,
        256 * 1024 * 1024,
    );
    let ha_prefix = m
        .homeassistant_prefix
        .unwrap_or_else(|| DEFAULT_HOMEASSISTANT_PREFIX.into());
    if ha_prefix.is_empty()
        || ha_prefix.contains(['#', '+'])
        || ha_prefix.starts_with('/')
        || ha_prefix.ends_with('/')
    {
        r.problem(format!(
            "mqtt.homeassistant_prefix = {ha_prefix:?}: no wildcards, no leading or trailing '/' \
             (Home Assistant's default is \"{DEFAULT_HOMEASSISTANT_PREFIX}\")"
        ));
    }
    let homeassistant = m.homeassistant.unwrap_or(false).then_some(ha_prefix);
    let stats = m.stats_interval_secs.unwrap_or(DEFAULT_STATS_INTERVAL.as_secs());
    r.range("mqtt.stats_interval_secs", stats, 1, 86_400);
    let rmin = m
        .reconnect_min_ms
        .unwrap_or(DEFAULT_RECONNECT_MIN.as_millis() as u64);
    let rmax = m
        .reconnect_max_ms
        .unwrap_or(DEFAULT_RECONNECT_MAX.as_millis() as u64);
    if rmin == 0 || rmax < rmin || rmax > 3_600_000 {
        r.problem(
            "mqtt.reconnect_min_ms must be >= 1 and <= mqtt.reconnect_max_ms, which is at most 3600000",
        );
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
        reconnect_min: Duration::from_millis(rmin),
        reconnect_max: Duration::from_millis(rmax),
        homeassistant,
    };
    let deprecated = DeprecatedHeatmap {
        enabled: m.heatmap,
        side: m.heatmap_side,
        quality: m.heatmap_quality,
    };
    (mqtt, deprecated)
}

fn check_heatmap(h: RawHeatmap, old: DeprecatedHeatmap, r: &mut Report) -> Heatmap {
    /// The `[heatmap]` value, or the deprecated `mqtt.` key's with a warning.
    fn pick<T>(r: &mut Report, new: Option<T>, old: Option<T>, new_key: &str, old_key: &str) -> Option<T> {
        match (new, old) {
            (Some(_), Some(_)) => {
                r.problem(format!(
                    "{old_key} and [heatmap] {new_key} are both set: keep [heatmap] {new_key} only"
                ));
                None
            }
            (Some(v), None) => Some(v),
            (None, Some(v)) => {
                r.warning(format!(
                    "{old_key} is deprecated: write it as `{new_key}` in a [heatmap] section (it still works)"
                ));
                Some(v)
            }
            (None, None) => None,
        }
    }
    let d = Heatmap::default();
    let enabled = pick(r, h.enabled, old.enabled, "enabled", "mqtt.heatmap").unwrap_or(d.enabled);
    let side = pick(r, h.side, old.side, "side", "mqtt.heatmap_side").unwrap_or(d.side);
    let quality = pick(r, h.quality, old.quality, "quality", "mqtt.heatmap_quality").unwrap_or(d.quality);
    r.range("heatmap.side", side, 16, 4096);
    r.range("heatmap.quality", quality, 1, 100);
    Heatmap {
        enabled,
        side,
        quality,
    }
}

fn check_outbox(o: RawOutbox, r: &mut Report) -> Outbox {
    let d = Outbox::default();
    let outbox = Outbox {
        max_entries: o.max_entries.unwrap_or(d.max_entries),
        max_bytes: o.max_bytes.unwrap_or(d.max_bytes),
    };
    r.range("outbox.max_entries", outbox.max_entries, 1, 10_000_000);
    r.range("outbox.max_bytes", outbox.max_bytes, 1024 * 1024, 1 << 40);
    outbox
}

fn check_http(h: RawHttp, base: &Path, r: &mut Report) -> Http {
    let d = Http::default();
    let listen = match h.listen.as_deref().map(str::parse::<std::net::SocketAddr>) {
        None => d.listen,
        Some(Ok(a)) => a,
        Some(Err(_)) => {
            r.problem(format!(
                "http.listen = {:?}: give an address and port, e.g. \"{DEFAULT_HTTP_LISTEN}\"",
                h.listen.unwrap_or_default()
            ));
            d.listen
        }
    };
    let token = match (h.token_file, h.token_credential) {
        (Some(_), Some(_)) => {
            r.problem("http.token_file and http.token_credential are both set: choose one");
            None
        }
        (Some(f), None) if f.as_os_str().is_empty() => {
            r.problem("http.token_file is empty: give the file that holds the token");
            None
        }
        (Some(f), None) => Some(Secret::File(resolve(base, f))),
        (None, Some(c)) if c.is_empty() || c.contains('/') => {
            r.problem(format!(
                "http.token_credential = {c:?}: give the name of a systemd credential (LoadCredential=NAME:...)"
            ));
            None
        }
        (None, Some(c)) => Some(Secret::Credential(c)),
        (None, None) => None,
    };
    let enabled = h.enabled.unwrap_or(d.enabled);
    if enabled && token.is_none() && !listen.ip().is_loopback() {
        r.problem(format!(
            "http.listen = \"{listen}\" reaches beyond this machine, and nothing says who may ask: \
             set http.token_file (every request must then carry \"Authorization: Bearer <token>\"), \
             or listen on 127.0.0.1 behind a reverse proxy that authenticates (README: \"HTTP and metrics\")"
        ));
    }
    Http {
        enabled,
        listen,
        token,
    }
}

fn check_sources(raw: Vec<RawSource>, base: &Path, state_dir: &Path, r: &mut Report) -> Vec<Source> {
    if raw.is_empty() {
        r.problem("no [[source]]: add a directory or gpio source");
    }
    let mut sources = Vec::new();
    for (i, s) in raw.into_iter().enumerate() {
        let key = format!("source[{i}]");
        let name = s.name.clone().unwrap_or_else(|| default_source_name(&s, i));
        let source = match s.kind {
            None => {
                r.problem(format!("{key}.type is missing: \"directory\" or \"gpio\""));
                continue;
            }
            Some(RawSourceType::Directory) => {
                for k in s.gpio_keys() {
                    r.problem(format!(
                        "{key}.{k} is a key of gpio sources, not of type = \"directory\""
                    ));
                }
                check_directory(s, name, &key, base, r)
            }
            Some(RawSourceType::Gpio) => {
                for k in s.directory_keys() {
                    r.problem(format!(
                        "{key}.{k} is a key of directory sources, not of type = \"gpio\""
                    ));
                }
                check_gpio(s, name, &key, base, state_dir, r)
            }
        };
        sources.extend(source);
    }
    let mut names: Vec<&str> = sources.iter().map(Source::name).collect();
    names.sort_unstable();
    for w in names.windows(2) {
        if w[0] == w[1] {
            r.problem(format!("two sources are named {:?}", w[0]));
        }
    }
    for s in &sources {
        if !valid_name(s.name()) {
            r.problem(format!(
                "source name {:?}: use letters, digits, '-', '_' or '.'",
                s.name()
            ));
        }
    }
    sources
}

/// The name of the `i`-th source when it has none: `dir<i>` or `gpio<i>`.
fn default_source_name(s: &RawSource, i: usize) -> String {
    match s.kind {
        Some(RawSourceType::Gpio) => format!("gpio{i}"),
        _ => format!("dir{i}"),
    }
}

fn check_directory(s: RawSource, name: String, key: &str, base: &Path, r: &mut Report) -> Option<Source> {
    let Some(path) = s.path else {
        r.problem(format!(
            "{key}.path is missing: the directory the camera writes into"
        ));
        return None;
    };
    let path = resolve(base, path);
    if let Some(p) = &s.pattern {
        if let Err(e) = glob::Pattern::new(p) {
            r.problem(format!("{key}.pattern = {p:?}: {e}"));
        }
    }
    let after = match s.after.unwrap_or(RawAfter::Move) {
        RawAfter::Move => After::Move {
            done_dir: s
                .done_dir
                .map(|d| resolve(base, d))
                .unwrap_or_else(|| path.join("done")),
            failed_dir: s
                .failed_dir
                .map(|d| resolve(base, d))
                .unwrap_or_else(|| path.join("failed")),
        },
        other => {
            if s.done_dir.is_some() || s.failed_dir.is_some() {
                r.problem(format!(
                    "{key}.done_dir and {key}.failed_dir apply to after = \"move\" only"
                ));
            }
            if other == RawAfter::Delete {
                After::Delete
            } else {
                After::Keep
            }
        }
    };
    let settle_ms = s.settle_ms.unwrap_or(0);
    r.range(&format!("{key}.settle_ms"), settle_ms, 0, 60_000);
    Some(Source::Directory(DirectorySource {
        name,
        path,
        pattern: s.pattern,
        after,
        settle: Duration::from_millis(settle_ms),
        create: s.create.unwrap_or(false),
    }))
}

fn check_gpio(
    s: RawSource,
    name: String,
    key: &str,
    base: &Path,
    state_dir: &Path,
    r: &mut Report,
) -> Option<Source> {
    let (Some(chip), Some(line)) = (s.chip, s.line) else {
        r.problem(format!(
            "{key}: a gpio source needs chip (\"/dev/gpiochipN\") and line (its offset)"
        ));
        return None;
    };
    let capture = s.capture.unwrap_or_default();
    if capture.is_empty() {
        r.problem(format!(
            "{key}.capture is missing or empty: give the capture command as an argv list"
        ));
    } else if !capture.iter().any(|a| a.contains("{output}")) {
        r.problem(format!(
            "{key}.capture must contain {{output}} (where the image is written)"
        ));
    }
    let debounce_ms = s.debounce_ms.unwrap_or(DEFAULT_DEBOUNCE.as_millis() as u64);
    r.range(&format!("{key}.debounce_ms"), debounce_ms, 0, 10_000);
    let timeout = s
        .capture_timeout_secs
        .unwrap_or(DEFAULT_CAPTURE_TIMEOUT.as_secs());
    r.range(&format!("{key}.capture_timeout_secs"), timeout, 1, 3600);
    let output_dir = resolve(
        base,
        s.output_dir
            .unwrap_or_else(|| state_dir.join("captures").join(&name)),
    );
    let recipe_lines = s.recipe_lines.unwrap_or_default();
    let recipe_codes = s.recipe_codes.unwrap_or_default();
    outputs::check_codes(&recipe_lines, &recipe_codes, line, key, r);
    let chip = resolve(base, chip);
    if let Some(t) = s.teach_line {
        if t == line || recipe_lines.contains(&t) {
            r.problem(format!(
                "{key}.teach_line: {t} is already the trigger or a recipe code line"
            ));
        }
    } else if s.teach_as.is_some() {
        r.problem(format!(
            "{key}.teach_as needs teach_line: the button's input line"
        ));
    }
    let taken: Vec<u32> = std::iter::once(line)
        .chain(recipe_lines.iter().copied())
        .chain(s.teach_line)
        .collect();
    let outputs = s.outputs.map(|o| outputs::check(o, key, base, &chip, &taken, r));
    Some(Source::Gpio(GpioSource {
        name,
        chip,
        line,
        edge: s.edge.unwrap_or(Edge::Rising),
        debounce: Duration::from_millis(debounce_ms),
        active_low: s.active_low.unwrap_or(false),
        capture,
        capture_timeout: Duration::from_secs(timeout),
        output_dir,
        keep_captures: s.keep_captures.unwrap_or(false),
        recipe_lines,
        recipe_lines_active_low: s.recipe_lines_active_low.unwrap_or(false),
        recipe_codes,
        outputs,
        teach_line: s.teach_line,
        teach_as: s.teach_as.unwrap_or(crate::recipe_dir::Set::Calibration),
    }))
}

// ------------------------------------------------------------------ back to TOML

impl From<&Config> for RawConfig {
    fn from(c: &Config) -> Self {
        let m = &c.mqtt;
        let (host, port, embedded_listen, allow_anonymous) = match &m.broker {
            Broker::External { host, port } => (Some(host.clone()), Some(*port), None, None),
            Broker::Embedded {
                listen,
                allow_anonymous,
            } => (None, None, Some(listen.clone()), Some(*allow_anonymous)),
        };
        let (password_file, password_credential) = match &m.password {
            Some(Secret::File(p)) => (Some(p.clone()), None),
            Some(Secret::Credential(n)) => (None, Some(n.clone())),
            None => (None, None),
        };
        let (client_cert_file, client_key_file) = match m.tls.as_ref().and_then(|t| t.client_auth.clone()) {
            Some((c, k)) => (Some(c), Some(k)),
            None => (None, None),
        };
        RawConfig {
            station: RawStation {
                name: Some(c.station.name.clone()),
                state_dir: Some(c.station.state_dir.clone()),
                threads: Some(c.station.threads),
                queue_capacity: Some(c.station.queue_capacity),
                max_image_mb: Some(c.station.limits.max_bytes >> 20),
                max_image_megapixels: Some(c.station.limits.max_pixels / 1_000_000),
                jpeg_dct_scaling: Some(c.station.jpeg_dct_scaling),
            },
            model: Some(RawModel {
                pack: c.model.pack.clone(),
                bank: c.model.bank.clone(),
                recipe: Some(c.model.recipe.clone()),
                threshold: c.model.threshold,
                early_exit: Some(c.model.early_exit),
                precision: Some(c.model.precision),
                f32_layers: Some(c.model.f32_layers.patterns().to_vec()),
                device: Some(c.model.device),
                memory_budget_mb: Some(c.model.memory_budget / 1_000_000),
            }),
            mqtt: RawMqtt {
                host,
                port,
                prefix: Some(m.prefix.clone()),
                client_id: Some(m.client_id.clone()),
                keep_alive_secs: Some(m.keep_alive.as_secs()),
                username: m.username.clone(),
                password_file,
                password_credential,
                tls: Some(m.tls.is_some()),
                ca_file: m.tls.as_ref().map(|t| t.ca_file.clone()),
                client_cert_file,
                client_key_file,
                max_packet_bytes: Some(m.max_packet_bytes),
                stats_interval_secs: Some(m.stats_interval.as_secs()),
                reconnect_min_ms: Some(m.reconnect_min.as_millis() as u64),
                reconnect_max_ms: Some(m.reconnect_max.as_millis() as u64),
                homeassistant: Some(m.homeassistant.is_some()),
                homeassistant_prefix: m.homeassistant.clone(),
                embedded_listen,
                allow_anonymous,
                heatmap: None,
                heatmap_side: None,
                heatmap_quality: None,
            },
            heatmap: RawHeatmap {
                enabled: Some(c.heatmap.enabled),
                side: Some(c.heatmap.side),
                quality: Some(c.heatmap.quality),
            },
            http: RawHttp {
                enabled: Some(c.http.enabled),
                listen: Some(c.http.listen.to_string()),
                token_file: match &c.http.token {
                    Some(Secret::File(f)) => Some(f.clone()),
                    _ => None,
                },
                token_credential: match &c.http.token {
                    Some(Secret::Credential(n)) => Some(n.clone()),
                    _ => None,
                },
            },
            outbox: RawOutbox {
                max_entries: Some(c.outbox.max_entries),
                max_bytes: Some(c.outbox.max_bytes),
            },
            commands: RawCommands {
                enabled: Some(c.commands.enabled),
            },
            history: RawHistory {
                results: Some(c.history.results),
                max_mb: Some(c.history.max_bytes >> 20),
                pictures: Some(c.history.pictures),
            },
            recipes: c
                .recipes
                .iter()
                .map(|x| RawRecipe {
                    name: Some(x.name.clone()),
                    bank: Some(x.bank.clone()),
                    threshold: x.threshold,
                    early_exit: Some(x.early_exit),
                })
                .collect(),
            sources: c
                .sources
                .iter()
                .map(|s| RawSource {
                    recipe: c.source_recipes.get(s.name()).cloned(),
                    ..RawSource::from(s)
                })
                .collect(),
        }
    }
}

impl From<&Source> for RawSource {
    fn from(s: &Source) -> Self {
        match s {
            Source::Directory(d) => {
                let (after, done_dir, failed_dir) = match &d.after {
                    After::Move { done_dir, failed_dir } => {
                        (RawAfter::Move, Some(done_dir.clone()), Some(failed_dir.clone()))
                    }
                    After::Delete => (RawAfter::Delete, None, None),
                    After::Keep => (RawAfter::Keep, None, None),
                };
                RawSource {
                    kind: Some(RawSourceType::Directory),
                    name: Some(d.name.clone()),
                    path: Some(d.path.clone()),
                    pattern: d.pattern.clone(),
                    after: Some(after),
                    done_dir,
                    failed_dir,
                    settle_ms: Some(d.settle.as_millis() as u64),
                    create: Some(d.create),
                    ..RawSource::default()
                }
            }
            Source::Gpio(g) => RawSource {
                kind: Some(RawSourceType::Gpio),
                name: Some(g.name.clone()),
                chip: Some(g.chip.clone()),
                line: Some(g.line),
                edge: Some(g.edge),
                debounce_ms: Some(g.debounce.as_millis() as u64),
                active_low: Some(g.active_low),
                capture: Some(g.capture.clone()),
                capture_timeout_secs: Some(g.capture_timeout.as_secs()),
                output_dir: Some(g.output_dir.clone()),
                keep_captures: Some(g.keep_captures),
                recipe_lines: (!g.recipe_lines.is_empty()).then(|| g.recipe_lines.clone()),
                recipe_lines_active_low: Some(g.recipe_lines_active_low),
                recipe_codes: (!g.recipe_codes.is_empty()).then(|| g.recipe_codes.clone()),
                outputs: g.outputs.as_ref().map(raw::RawOutputs::from),
                teach_line: g.teach_line,
                teach_as: g.teach_line.map(|_| g.teach_as),
                ..RawSource::default()
            },
        }
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

    fn parse_checked(s: &str) -> Result<Checked, String> {
        parse(s, Path::new("/etc/winclip-edge/config.toml")).map_err(|e| e.to_string())
    }

    fn parse_str(s: &str) -> Result<Config, String> {
        parse_checked(s).map(|c| c.config)
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
        let with = |extra: &str| {
            parse_checked(&MINIMAL.replace(
                "bank = \"bottle.bank\"",
                &format!("bank = \"bottle.bank\"\n{extra}"),
            ))
        };
        let int8 = with("precision = \"int8\"\nf32_layers = [\"blocks.11.*\", \"*.c_proj\"]").unwrap();
        assert_eq!(int8.config.model.precision, crate::model::Precision::Int8);
        assert_eq!(
            int8.config.model.f32_layers.patterns(),
            ["blocks.11.*", "*.c_proj"]
        );
        assert!(int8.warnings.is_empty(), "{:?}", int8.warnings);
        assert!(c.model.f32_layers.patterns().is_empty());
        let bad = with("precision = \"int8\"\nf32_layers = [\"blocks.[1\"]").unwrap_err();
        assert!(bad.contains("model.f32 layer pattern \"blocks.[1\""), "{bad}");
        let useless = with("f32_layers = [\"proj\"]").unwrap();
        assert!(
            useless
                .warnings
                .iter()
                .any(|w| w.contains("model.f32_layers applies to precision")),
            "{:?}",
            useless.warnings
        );
        assert_eq!(c.mqtt.prefix, "winclip");
        assert_eq!(
            c.mqtt.broker,
            Broker::Embedded {
                listen: "127.0.0.1:1883".into(),
                allow_anonymous: false,
            }
        );
        assert_eq!(c.mqtt.max_packet_bytes, DEFAULT_MAX_PACKET_BYTES);
        assert_eq!(c.heatmap, Heatmap::default());
        assert_eq!(
            c.model.pack,
            PathBuf::from("/etc/winclip-edge/models/tiny"),
            "relative to the file"
        );
        match &c.sources[0] {
            Source::Directory(DirectorySource {
                after: After::Move { done_dir, failed_dir },
                name,
                ..
            }) => {
                assert_eq!(name, "dir0");
                assert_eq!(done_dir, &PathBuf::from("/srv/drop/done"));
                assert_eq!(failed_dir, &PathBuf::from("/srv/drop/failed"));
            }
            other => panic!("{other:?}"),
        }
    }

    /// Issue #17: recipes beside `[model]`'s bank, each source starting with one.
    #[test]
    fn recipes_are_named_uniquely_have_banks_and_sources_name_existing_ones() {
        let text = MINIMAL.replace("path = \"/srv/drop\"", "path = \"/srv/drop\"\nrecipe = \"b\"")
            + "[[recipe]]\nname = \"b\"\nbank = \"b.bank\"\nthreshold = 0.4\n";
        let c = parse_str(&text).unwrap();
        assert_eq!(c.model.recipe, DEFAULT_RECIPE);
        assert_eq!(c.recipe_names().collect::<Vec<_>>(), ["default", "b"]);
        assert_eq!(c.recipes[0].bank, Path::new("/etc/winclip-edge/b.bank"));
        assert_eq!(c.default_recipe("dir0"), "b");
        assert_eq!(c.default_recipe("other"), "default");
        assert_eq!(c.recipe_threshold("b"), Some(0.4));
        let plain = parse_str(MINIMAL).unwrap();
        assert_eq!(plain.default_recipe("dir0"), "default");

        let err = parse_str(
            &(text.replace("recipe = \"b\"", "recipe = \"c\"")
                + "[[recipe]]\nname = \"default\"\nbank = \"x\"\n[[recipe]]\nname = \"no bank\"\n"),
        )
        .unwrap_err();
        for want in [
            "recipe = \"c\" is not a recipe here",
            "two recipes are named \"default\"",
            "recipe[2].name = \"no bank\"",
            "recipe[2].bank is missing",
        ] {
            assert!(err.contains(want), "missing {want:?} in {err}");
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

    /// Issue #21: "expected u16" for port 188300 read like Rust internals.
    #[test]
    fn type_errors_say_what_the_key_holds_in_plain_words() {
        let err = parse_str(&MINIMAL.replace("[model]", "[mqtt]\nhost = \"b\"\nport = 188300\n[model]"))
            .unwrap_err();
        assert!(
            err.contains("port") && err.contains("a whole number from 0 to 65535"),
            "{err}"
        );
        assert!(!err.contains("u16"), "{err}");
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
    fn recipe_codes_and_plc_outputs_are_checked_against_the_lines_and_the_recipes() {
        let gpio = "\n[[source]]\ntype = \"gpio\"\nname = \"g\"\nchip = \"/dev/gpiochip0\"\nline = 17\ncapture = [\"cam\", \"{output}\"]\n";
        let with = |extra: &str| parse_checked(&format!("{MINIMAL}{gpio}{extra}"));
        let ok = with("recipe_lines = [3, 4]\nrecipe_codes = [\"\", \"default\"]\n[source.outputs]\nfail = { line = 20, pulse_ms = 50 }\nready = { line = 21, active_low = true }\n").unwrap();
        let Source::Gpio(g) = &ok.config.sources[1] else {
            panic!()
        };
        assert_eq!(g.recipe_of_code(0), None, "\"\" selects no recipe");
        assert_eq!(g.recipe_of_code(1), Some("default"));
        assert_eq!(g.recipe_of_code(3), None, "past the end");
        let o = g.outputs.as_ref().unwrap();
        assert_eq!(
            o.chip,
            Path::new("/dev/gpiochip0"),
            "the source's chip by default"
        );
        assert_eq!(o.hold, outputs::DEFAULT_HOLD);
        assert_eq!(
            o.line(outputs::Signal::Fail).unwrap().pulse,
            Duration::from_millis(50)
        );
        assert!(o.line(outputs::Signal::Ready).unwrap().active_low);
        assert!(
            ok.warnings.iter().all(|w| !w.contains("outputs")),
            "{:?}",
            ok.warnings
        );
        for (extra, expect) in [
            ("recipe_lines = [3]\n", "recipe_lines needs recipe_codes"),
            (
                "recipe_codes = [\"default\"]\n",
                "recipe_codes needs recipe_lines",
            ),
            (
                "recipe_lines = [3, 17]\nrecipe_codes = [\"default\"]\n",
                "17 is the trigger line",
            ),
            (
                "recipe_lines = [3, 3]\nrecipe_codes = [\"default\"]\n",
                "3 is listed twice",
            ),
            (
                "recipe_lines = [3]\nrecipe_codes = [\"default\", \"default\", \"default\"]\n",
                "codes 0 to 1 only",
            ),
            (
                "recipe_lines = [3]\nrecipe_codes = [\"nope\"]\n",
                "recipe_codes[0] = \"nope\" is not a recipe",
            ),
            (
                "recipe = \"default\"\nrecipe_lines = [3]\nrecipe_codes = [\"default\"]\n",
                "remove recipe",
            ),
            ("[source.outputs]\n", "wires no line"),
            (
                "[source.outputs]\nbusy = { line = 20, pulse_ms = 5 }\n",
                "busy is a level",
            ),
            (
                "[source.outputs]\npass = { line = 20 }\nfail = { line = 20 }\n",
                "is also source[1].outputs.pass",
            ),
            (
                "recipe_lines = [3]\nrecipe_codes = [\"default\"]\n[source.outputs]\nfail = { line = 3 }\n",
                "is an input of this source",
            ),
            (
                "[source.outputs]\nfail = { pulse_ms = 5 }\n",
                "fail.line is missing",
            ),
            (
                "[source.outputs]\nfail = { line = 1 }\nhold_ms = 0\n",
                "hold_ms = 0",
            ),
            ("teach_line = 17\n", "teach_line: 17 is already the trigger"),
            ("teach_as = \"shot\"\n", "teach_as needs teach_line"),
            ("teach_line = 4\nteach_as = \"good\"\n", "teach_as"),
            (
                "teach_line = 4\n[source.outputs]\nfail = { line = 4 }\n",
                "is an input of this source",
            ),
        ] {
            let err = with(extra).unwrap_err();
            assert!(err.contains(expect), "{extra}: {err}");
        }
        // On another chip, the same offset is another line.
        with("[source.outputs]\nchip = \"/dev/gpiochip1\"\nfail = { line = 17 }\n").unwrap();
        let busy_only = with("[source.outputs]\nbusy = { line = 20 }\n").unwrap();
        assert!(
            busy_only
                .warnings
                .iter()
                .any(|w| w.contains("neither pass nor fail")),
            "{:?}",
            busy_only.warnings
        );
        let dir = parse_checked(
            &MINIMAL.replace("type = \"directory\"", "type = \"directory\"\nrecipe_lines = [1]"),
        )
        .unwrap_err();
        assert!(dir.contains("recipe_lines is a key of gpio sources"), "{dir}");
    }

    #[test]
    fn gpio_sources_need_an_output_placeholder_and_a_known_edge() {
        let gpio = "\n[[source]]\ntype = \"gpio\"\nchip = \"/dev/gpiochip0\"\nline = 17\ncapture = [\"cam\", \"-o\", \"x.jpg\"]\n";
        let err = parse_str(&format!("{MINIMAL}{gpio}")).unwrap_err();
        assert!(
            err.contains("source[1].capture") && err.contains("{output}"),
            "{err}"
        );
        let err = parse_str(&format!("{MINIMAL}{gpio}edge = \"up\"\n")).unwrap_err();
        assert!(
            err.contains("edge = \"up\"") && err.contains("`rising`, `falling`") && err.contains("line 17"),
            "{err}"
        );
        let err = parse_str(&format!("{MINIMAL}{gpio}path = \"/srv\"\n")).unwrap_err();
        assert!(
            err.contains("source[1].path is a key of directory sources"),
            "{err}"
        );
        let err = parse_str(&MINIMAL.replace(
            "path = \"/srv/drop\"",
            "path = \"/srv/drop\"\nafter = \"archive\"",
        ))
        .unwrap_err();
        assert!(err.contains("after") && err.contains("`move`, `delete`"), "{err}");
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
    fn numbers_out_of_range_name_the_key_and_the_range() {
        let text = MINIMAL.replace(
            "name = \"line1\"",
            "name = \"line1\"\nthreads = 100000\nqueue_capacity = 0",
        ) + "[heatmap]\nside = 8\n";
        let err = parse_str(&text).unwrap_err();
        for want in [
            "station.threads = 100000: must be between 0 and 256",
            "station.queue_capacity = 0",
            "heatmap.side = 8",
        ] {
            assert!(err.contains(want), "missing {want:?} in {err}");
        }
    }

    /// Issue #16, finding 13: an anonymous broker open to the factory network.
    #[test]
    fn an_embedded_broker_beyond_loopback_needs_credentials_or_an_explicit_yes() {
        let open = format!("{MINIMAL}[mqtt]\nembedded_listen = \"0.0.0.0:1883\"\n");
        let err = parse_str(&open).unwrap_err();
        assert!(
            err.contains("anonymous broker") && err.contains("allow_anonymous = true"),
            "{err}"
        );
        let yes = parse_checked(&format!("{open}allow_anonymous = true\n")).unwrap();
        assert!(yes.warnings[0].contains("fake results"), "{:?}", yes.warnings);
        let login = parse_checked(&format!("{open}username = \"st\"\npassword_file = \"pw\"\n")).unwrap();
        assert!(login.warnings.is_empty());
        let err = parse_str(&format!(
            "{MINIMAL}[mqtt]\nhost = \"b\"\nallow_anonymous = true\n"
        ))
        .unwrap_err();
        assert!(err.contains("embedded broker only"), "{err}");
        parse_checked(MINIMAL).unwrap();
    }

    /// Issue #16, finding 1: heatmap settings that cannot fit a packet.
    #[test]
    fn heatmaps_that_may_not_fit_one_mqtt_packet_are_refused() {
        let err = parse_str(&format!("{MINIMAL}[heatmap]\nside = 4096\nquality = 100\n")).unwrap_err();
        assert!(
            err.contains("heatmap.side = 4096") && err.contains("mqtt.max_packet_bytes = 8388608"),
            "{err}"
        );
        let err = parse_str(&format!("{MINIMAL}[mqtt]\nmax_packet_bytes = 65536\n")).unwrap_err();
        assert!(err.contains("lower heatmap.side to 128"), "{err}");
        parse_str(&format!(
            "{MINIMAL}[mqtt]\nmax_packet_bytes = 65536\n[heatmap]\nside = 128\n"
        ))
        .unwrap();
        parse_str(&format!(
            "{MINIMAL}[mqtt]\nmax_packet_bytes = 65536\n[heatmap]\nenabled = false\n"
        ))
        .unwrap();
    }

    #[test]
    fn the_old_heatmap_keys_still_work_with_a_warning() {
        let old = parse_checked(&format!("{MINIMAL}[mqtt]\nheatmap_side = 128\nheatmap = false\n")).unwrap();
        assert_eq!(
            old.config.heatmap,
            Heatmap {
                enabled: false,
                side: 128,
                quality: DEFAULT_HEATMAP_QUALITY
            }
        );
        assert_eq!(old.warnings.len(), 2, "{:?}", old.warnings);
        assert!(
            old.warnings[0].contains("mqtt.heatmap is deprecated"),
            "{:?}",
            old.warnings
        );
        let new = parse_checked(&format!("{MINIMAL}[heatmap]\nside = 128\nenabled = false\n")).unwrap();
        assert_eq!(new.config, old.config);
        assert!(new.warnings.is_empty());
        let both = parse_str(&format!(
            "{MINIMAL}[heatmap]\nside = 64\n[mqtt]\nheatmap_side = 128\n"
        ));
        assert!(both.unwrap_err().contains("both set"));
    }

    #[test]
    fn a_config_written_as_toml_reads_back_the_same_even_with_odd_paths() {
        let odd = PathBuf::from("/tmp/we\"ird\\dir with spaces/'q'");
        let mut c = Config::new(
            "demo",
            odd.join("state"),
            Model::new(odd.join("pack"), odd.join("a.bank")),
            vec![
                Source::Directory(DirectorySource {
                    name: "camera".into(),
                    path: odd.join("incoming"),
                    pattern: Some("*.png".into()),
                    after: After::Keep,
                    settle: Duration::from_millis(250),
                    create: true,
                }),
                Source::Gpio(GpioSource {
                    name: "trigger".into(),
                    chip: "/dev/gpiochip0".into(),
                    line: 3,
                    edge: Edge::Both,
                    debounce: Duration::from_millis(20),
                    active_low: true,
                    capture: vec!["cam".into(), "{output}".into()],
                    capture_timeout: Duration::from_secs(4),
                    output_dir: odd.join("captures"),
                    keep_captures: true,
                    recipe_lines: vec![4, 5],
                    recipe_lines_active_low: true,
                    recipe_codes: vec!["".into(), "bottle-b".into()],
                    outputs: Some(outputs::Outputs {
                        chip: odd.join("gpiochip1"),
                        hold: Duration::from_millis(750),
                        lines: [
                            (
                                outputs::Signal::Fail,
                                outputs::OutputLine {
                                    line: 7,
                                    active_low: true,
                                    pulse: Duration::from_millis(40),
                                },
                            ),
                            (
                                outputs::Signal::Ready,
                                outputs::OutputLine {
                                    line: 8,
                                    active_low: false,
                                    pulse: Duration::ZERO,
                                },
                            ),
                        ]
                        .into(),
                    }),
                    teach_line: Some(9),
                    teach_as: crate::recipe_dir::Set::Shot,
                }),
            ],
        );
        c.model.threshold = Some(0.123);
        c.mqtt.broker = Broker::External {
            host: "broker.lan".into(),
            port: 8883,
        };
        c.mqtt.username = Some("station".into());
        c.mqtt.password = Some(Secret::File(odd.join("pw")));
        c.mqtt.tls = Some(Tls {
            ca_file: odd.join("ca.pem"),
            client_auth: Some((odd.join("c.pem"), odd.join("c.key"))),
        });
        c.heatmap.side = 99;
        c.model.recipe = "bottle-a".into();
        c.recipes.push(Recipe {
            name: "bottle-b".into(),
            bank: odd.join("b.bank"),
            threshold: Some(0.4),
            early_exit: true,
        });
        let first = c.sources[0].name().to_string();
        c.source_recipes.insert(first, "bottle-b".into());
        let text = c.to_toml().unwrap();
        let back = parse_checked(&text).unwrap();
        assert_eq!(back.config, c, "{text}");
        assert!(back.warnings.is_empty());
        let mut sources = c.sources;
        for s in &mut sources {
            if let Source::Gpio(g) = s {
                g.recipe_codes = vec!["".into(), DEFAULT_RECIPE.into()];
            }
        }
        let embedded = Config::new(
            "demo",
            odd.join("state"),
            Model::new(odd.join("p"), odd.join("b")),
            sources,
        );
        assert_eq!(parse_str(&embedded.to_toml().unwrap()).unwrap(), embedded);
    }

    #[test]
    fn the_shipped_example_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/winclip-edge.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let c = parse(&text, &path).unwrap();
        assert!(!c.config.sources.is_empty());
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }

    /// Every key in the example file, set or commented out, says whether it
    /// applies live or needs a restart, in the comment block above it or on its line.
    #[test]
    fn every_example_key_says_live_or_restart() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/winclip-edge.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let key_line = |l: &str| {
            let l = l.trim_start_matches('#').trim_start();
            let key: String = l
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            (!key.is_empty() && l[key.len()..].trim_start().starts_with('=')).then_some(key)
        };
        let mut block = String::new();
        let mut missing = Vec::new();
        let mut keys = 0;
        for line in text.lines() {
            if line.trim().is_empty() || line.starts_with('[') {
                block.clear();
                continue;
            }
            match key_line(line) {
                Some(key) => {
                    keys += 1;
                    let doc = format!("{block}{line}");
                    if !doc.contains("Applies live") && !doc.contains("Needs a restart") {
                        missing.push(key);
                    }
                }
                None => block.push_str(line),
            }
        }
        assert!(keys > 40, "found only {keys} keys");
        assert!(
            missing.is_empty(),
            "keys without \"Applies live\" or \"Needs a restart\": {missing:?}"
        );
    }
}

/// Issue #16, finding 11: mutants of the example configuration. Every one
/// parses to a configuration or to problems naming the key; none panics.
#[cfg(test)]
mod mutants {
    use super::*;

    const VALUES: &[&str] = &[
        "-1",
        "0",
        "1",
        "100000",
        "4294967296",
        "18446744073709551615",
        "1.5",
        "nan",
        "\"\"",
        "\"x\"",
        "\"/\"",
        "true",
        "[]",
        "[\"\"]",
        "{}",
    ];

    /// The example file with each key (set or commented out) given each value.
    fn mutants() -> Vec<(String, String)> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/winclip-edge.toml");
        let text = std::fs::read_to_string(path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let mut out = Vec::new();
        for (i, line) in lines.iter().enumerate() {
            let bare = line.trim_start_matches('#').trim_start();
            let Some((key, _)) = bare.split_once(" = ") else {
                continue;
            };
            if key.is_empty() || !key.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                continue;
            }
            for v in VALUES {
                let mut m = lines.clone();
                let new = format!("{key} = {v}");
                m[i] = &new;
                out.push((format!("{key} = {v}"), m.join("\n")));
            }
        }
        out
    }

    #[test]
    fn no_mutant_of_the_example_panics_and_every_refusal_names_its_key() {
        let mutants = mutants();
        assert!(mutants.len() > 600, "{} mutants", mutants.len());
        let path = Path::new("/etc/winclip-edge/config.toml");
        let mut refused = 0;
        let mut unnamed = Vec::new();
        for (what, text) in &mutants {
            let key = what.split(" = ").next().unwrap();
            match std::panic::catch_unwind(|| parse(text, path)) {
                Err(_) => panic!("{what}: parsing panicked"),
                Ok(Ok(c)) => {
                    // What parses is usable: every duration and bound in range.
                    let m = &c.config.mqtt;
                    assert!(m.keep_alive >= Duration::from_secs(1), "{what}");
                    assert!(m.stats_interval >= Duration::from_secs(1), "{what}");
                    assert!(c.config.station.threads <= MAX_THREADS, "{what}");
                    assert!(c.config.station.queue_capacity >= 1, "{what}");
                }
                Ok(Err(e)) => {
                    refused += 1;
                    let msg = e.to_string();
                    if !msg.contains(key) {
                        unnamed.push(format!("{what}: {msg}"));
                    }
                }
            }
        }
        assert!(
            unnamed.is_empty(),
            "refusals that do not name their key:\n{}",
            unnamed.join("\n")
        );
        assert!(
            refused > mutants.len() / 2,
            "{refused} of {} refused",
            mutants.len()
        );
    }
}
