//! Integration tests: one binary (see `autotests = false` in Cargo.toml).

mod station;
mod util;

mod bench;
mod daemon;
mod device;
mod engine;
mod eval;
mod faults;
mod http;
mod model_pack;
mod safe_defaults;
