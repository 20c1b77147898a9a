//! Integration tests: one binary (see `autotests = false` in Cargo.toml).

mod util;

mod model_pack;
