//! Integration tests: one binary (see `autotests = false` in Cargo.toml).

mod util;

mod bench;
mod daemon;
mod engine;
mod eval;
mod model_pack;
