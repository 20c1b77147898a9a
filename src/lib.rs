//! winclip-edge: zero-/few-shot visual anomaly inspection (WinCLIP / WinCLIP+) on edge CPUs.
//!
//! Layers, each depending only on the ones above it:
//! - [`winclip`], [`bank`], [`heatmap`], [`synth`], [`roi`]: pure — the algorithm on
//!   embeddings, the bank format, heatmap drawing, synthetic test pictures,
//!   the region of interest;
//! - [`model`]: model packs and the tract runtime (the only tract user);
//! - [`inspector`]: image → features → scores, shared by every front end;
//! - [`imageio`], [`fsutil`], [`recipe_dir`]: safe decoding, atomic files, versioned
//!   recipe directories;
//! - [`config`], [`daemon`]: the inspection service (sources, outbox, MQTT, systemd);
//! - [`eval`]: metrics, dataset readers and the evaluation runner;
//! - [`bench`]: FLOP counts, medians and memory figures for `bench`;
//! - [`cli`]: the command-line tools built on them.

pub mod bank;
pub mod bench;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod eval;
pub mod fsutil;
mod fuzz;
pub mod heatmap;
pub mod imageio;
pub mod inspector;
pub mod logging;
pub mod model;
pub mod recipe_dir;
pub mod record;
pub mod roi;
pub mod synth;
pub mod winclip;
