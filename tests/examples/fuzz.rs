//! `cargo xtask fuzz [--frames N] [--seed S]`: the differential fuzzer's long
//! run (default 1,000,000 frames, a seed from the clock). Prints the seed
//! first, a line every 100,000 frames, then the outcome counts and every
//! divergence with its frame in hex and how to replay it. Needs root.

use std::{process::ExitCode, time::SystemTime};

use xlb_testbed::fuzz::run_fuzz;

fn main() -> ExitCode {
    let mut frames = 1_000_000u64;
    let mut seed = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| -> u64 {
            let v = args.next().unwrap_or_else(|| fail(&format!("{name} needs a value")));
            v.parse().unwrap_or_else(|_| fail(&format!("{name} {v:?}: expected a whole number")))
        };
        match a.as_str() {
            "--frames" => frames = value("--frames"),
            "--seed" => seed = value("--seed"),
            other => fail(&format!("unknown argument {other:?}; usage: fuzz [--frames N] [--seed S]")),
        }
    }
    println!(
        "differential fuzzer: {frames} frames, seed {seed} (replay: cargo xtask fuzz --seed {seed} --frames {frames})"
    );
    let rep = match run_fuzz(frames, seed, true) {
        Ok(r) => r,
        Err(e) => fail(&format!("{e:#}")),
    };
    print!("{}", rep.summary());
    for d in &rep.divergences {
        println!("DIVERGENCE {d}");
    }
    if rep.divergences.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("error: {msg}");
    std::process::exit(2)
}
