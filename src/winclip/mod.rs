//! WinCLIP / WinCLIP+ as pure math on embeddings: no I/O, no tract, no async.

mod windows;

pub use windows::WindowSet;
