//! winclip-edge: zero-/few-shot visual anomaly inspection (WinCLIP / WinCLIP+) on edge CPUs.
//!
//! Layers, each depending only on the ones above it:
//! - [`winclip`]: the algorithm as pure math on embeddings;
//! - [`model`]: model packs and the tract runtime (the only tract user);
//! - [`imageio`]: safe image decoding;
//! - [`cli`]: the command-line tools built on them.

pub mod cli;
pub mod imageio;
pub mod model;
pub mod winclip;
