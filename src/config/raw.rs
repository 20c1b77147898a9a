//! The raw layer: a mirror of the TOML file, every key optional, no checks
//! beyond types. It is also written back (`Config::to_toml`), so a program
//! that builds a [`super::Config`] can save it as a file the daemon reads.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::Edge;

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub station: RawStation,
    pub model: Option<RawModel>,
    #[serde(default)]
    pub mqtt: RawMqtt,
    #[serde(default)]
    pub heatmap: RawHeatmap,
    #[serde(default)]
    pub outbox: RawOutbox,
    #[serde(default)]
    pub http: RawHttp,
    #[serde(default)]
    pub history: RawHistory,
    #[serde(default)]
    pub commands: RawCommands,
    #[serde(default, rename = "recipe", skip_serializing_if = "Vec::is_empty")]
    pub recipes: Vec<RawRecipe>,
    #[serde(default, rename = "source")]
    pub sources: Vec<RawSource>,
}

/// One `[[recipe]]`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRecipe {
    pub name: Option<String>,
    pub bank: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub early_exit: Option<bool>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStation {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_capacity: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_image_mb: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_image_megapixels: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jpeg_dct_scaling: Option<bool>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawModel {
    pub pack: PathBuf,
    pub bank: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recipe: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub early_exit: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub precision: Option<crate::model::Precision>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub f32_layers: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<crate::model::Device>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_budget_mb: Option<u64>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMqtt {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_alive_secs: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_credential: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_cert_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_key_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_packet_bytes: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stats_interval_secs: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reconnect_min_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reconnect_max_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub embedded_listen: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_anonymous: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub homeassistant: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub homeassistant_prefix: Option<String>,
    /// Deprecated: `[heatmap] enabled`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heatmap: Option<bool>,
    /// Deprecated: `[heatmap] side`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heatmap_side: Option<u32>,
    /// Deprecated: `[heatmap] quality`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heatmap_quality: Option<u8>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHeatmap {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub side: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quality: Option<u8>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOutbox {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_entries: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttp {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_credential: Option<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHistory {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub results: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_mb: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pictures: Option<bool>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCommands {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

/// `after = "move" | "delete" | "keep"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum RawAfter {
    Move,
    Delete,
    Keep,
}

/// `type = "directory" | "gpio"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum RawSourceType {
    Directory,
    Gpio,
}

/// One `[[source]]`: the keys of every type in one flat table (not a
/// tagged enum), so that a wrong value is reported at its own key and line;
/// the checker refuses keys of the other type.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSource {
    #[serde(rename = "type")]
    pub kind: Option<RawSourceType>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recipe: Option<String>,
    // directory
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<RawAfter>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub done_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub settle_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub create: Option<bool>,
    // gpio
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chip: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub edge: Option<Edge>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub debounce_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub active_low: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capture: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capture_timeout_secs: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_captures: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recipe_lines: Option<Vec<u32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recipe_lines_active_low: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recipe_codes: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outputs: Option<RawOutputs>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub teach_line: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub teach_as: Option<crate::recipe_dir::Set>,
}

/// A gpio source's `[source.outputs]`: PLC output lines.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOutputs {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chip: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hold_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pass: Option<RawOutputLine>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fail: Option<RawOutputLine>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<RawOutputLine>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub busy: Option<RawOutputLine>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ready: Option<RawOutputLine>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result_valid: Option<RawOutputLine>,
}

/// One output line: `{ line = 20, active_low = false, pulse_ms = 0 }`.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOutputLine {
    pub line: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub active_low: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pulse_ms: Option<u64>,
}

impl RawSource {
    /// The keys of a gpio source that are set.
    pub fn gpio_keys(&self) -> Vec<&'static str> {
        let set = [
            ("chip", self.chip.is_some()),
            ("line", self.line.is_some()),
            ("edge", self.edge.is_some()),
            ("debounce_ms", self.debounce_ms.is_some()),
            ("active_low", self.active_low.is_some()),
            ("capture", self.capture.is_some()),
            ("capture_timeout_secs", self.capture_timeout_secs.is_some()),
            ("output_dir", self.output_dir.is_some()),
            ("keep_captures", self.keep_captures.is_some()),
            ("recipe_lines", self.recipe_lines.is_some()),
            ("recipe_lines_active_low", self.recipe_lines_active_low.is_some()),
            ("recipe_codes", self.recipe_codes.is_some()),
            ("outputs", self.outputs.is_some()),
            ("teach_line", self.teach_line.is_some()),
            ("teach_as", self.teach_as.is_some()),
        ];
        set.into_iter().filter(|(_, s)| *s).map(|(k, _)| k).collect()
    }

    /// The keys of a directory source that are set.
    pub fn directory_keys(&self) -> Vec<&'static str> {
        let set = [
            ("path", self.path.is_some()),
            ("pattern", self.pattern.is_some()),
            ("after", self.after.is_some()),
            ("done_dir", self.done_dir.is_some()),
            ("failed_dir", self.failed_dir.is_some()),
            ("settle_ms", self.settle_ms.is_some()),
            ("create", self.create.is_some()),
        ];
        set.into_iter().filter(|(_, s)| *s).map(|(k, _)| k).collect()
    }
}
