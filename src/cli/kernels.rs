//! `winclip-edge model kernels`: the int8 and bf16 kernels of this CPU,
//! checked against the portable reference, optionally timed.

use std::process::ExitCode;

use crate::model::kernels;

pub(crate) fn run(time: bool, repeats: usize, json: bool) -> anyhow::Result<ExitCode> {
    let checks = kernels::check();
    let timings = if time {
        kernels::time(&kernels::ENCODER_SHAPES, repeats)
    } else {
        Vec::new()
    };
    let failed = checks.iter().any(|c| c.failure.is_some());
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "checks": checks, "timings": timings }))?
        );
    } else {
        for c in &checks {
            let chosen = if c.chosen { " (the encoder's)" } else { "" };
            match &c.failure {
                None => println!(
                    "{} {}{chosen}: ok, {} products as the portable kernel gives them",
                    c.precision, c.kernel, c.products
                ),
                Some(f) => println!("{} {}{chosen}: WRONG: {f}", c.precision, c.kernel),
            }
        }
        if !timings.is_empty() {
            println!(
                "\n{:<18} {:<22} {:>10} {:>8} {:>8}",
                "rows × k × n", "kernel", "median ms", "GOP/s", "× f32"
            );
            for t in &timings {
                let f32_ms = timings
                    .iter()
                    .find(|u| u.shape == t.shape && u.kernel == "f32 gemm")
                    .map_or(f64::NAN, |u| u.median_ms);
                println!(
                    "{:<18} {:<22} {:>10.2} {:>8.1} {:>8.2}",
                    format!("{} × {} × {}", t.shape[0], t.shape[1], t.shape[2]),
                    t.kernel,
                    t.median_ms,
                    t.gops,
                    f32_ms / t.median_ms
                );
            }
            println!("(one thread; GOP/s counts a multiply-add as two operations, as GFLOP/s does)");
        }
    }
    if failed {
        eprintln!("a kernel gives wrong results on this CPU: do not use that precision here");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
