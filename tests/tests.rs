//! Integration tests: one binary (see `autotests = false` in Cargo.toml).

mod station;
mod util;

mod bench;
mod browser;
mod commands;
mod daemon;
mod device;
mod engine;
mod eval;
mod faults;
pub mod http;
mod model_pack;
mod safe_defaults;
