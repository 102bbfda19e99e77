//! Maglev table figures for `cargo xtask bench`: build time, balance, and
//! disruption when one backend leaves. Pure computation (lb-user's
//! `maglev::build_table`), no root needed.
//!
//! `cargo run --release -p xlb-testbed --example bench_maglev -- [--quick] [--reps N]`

use std::time::Instant;

use xlb::maglev::{build_table, MaglevBackend};
use xlb_testbed::bench::{emit, method, Opts};

/// Backend ids as the daemon forms them (`address:port`); `set` picks the
/// port, so that deterministic figures can be taken over several sets.
fn ids(n: usize, set: usize) -> Vec<String> {
    (0..n).map(|i| format!("198.18.{}.{}:{}", 1 + i / 250, 1 + i % 250, 80 + set)).collect()
}

fn backends(ids: &[String]) -> Vec<MaglevBackend<'_>> {
    ids.iter().map(|id| MaglevBackend { id, weight: 1 }).collect()
}

/// Milliseconds to build one table of `size` slots over `n` backends.
fn build_ms(n: usize, size: u32, reps: usize) -> Vec<f64> {
    let ids = ids(n, 0);
    let bs = backends(&ids);
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            let table = build_table(&bs, size);
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            assert_eq!(table.len(), size as usize);
            ms
        })
        .collect()
}

/// Largest share of slots of one backend over the mean share.
fn max_over_mean(n: usize, size: u32, set: usize) -> f64 {
    let ids = ids(n, set);
    let table = build_table(&backends(&ids), size);
    let mut count = vec![0u64; n];
    for &b in &table {
        count[b as usize] += 1;
    }
    let mean = f64::from(size) / n as f64;
    *count.iter().max().unwrap() as f64 / mean
}

/// Slots that change backend when backend `gone` of `n` is removed, over the
/// ideal share 1/n.
fn disruption_ratio(n: usize, size: u32, gone: usize) -> f64 {
    let all = ids(n, 0);
    let before: Vec<&str> = build_table(&backends(&all), size).iter().map(|&i| all[i as usize].as_str()).collect();
    let rest: Vec<String> = all.iter().enumerate().filter(|&(i, _)| i != gone).map(|(_, s)| s.clone()).collect();
    let after: Vec<&str> = build_table(&backends(&rest), size).iter().map(|&i| rest[i as usize].as_str()).collect();
    let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
    (moved as f64 / f64::from(size)) / (1.0 / n as f64)
}

fn main() -> anyhow::Result<()> {
    let opts = Opts::from_args()?;
    method(
        "maglev",
        "lb-user maglev::build_table, wall time of one build (release build, this machine, shared CPU); \
         backend ids 198.18.x.y:80, weight 1; max/mean over as many id sets (ports 80, 81, ...) as repetitions; disruption: one of 100 backends removed (every 10th case: ids 0, 10, ... 90), \
         slots whose backend id changed / table size, divided by 1/100",
    );
    build_ms(1000, 65537, 1); // warm up allocator and caches
    emit("maglev_build_ms_65537_n1000", &build_ms(1000, 65537, opts.reps.max(9)));
    emit("maglev_build_ms_655373_n1000", &build_ms(1000, 655373, opts.reps));
    let balance: Vec<f64> = (0..opts.reps).map(|set| max_over_mean(1000, 65537, set)).collect();
    emit("maglev_max_over_mean_65537_n1000", &balance);
    let disruption: Vec<f64> = (0..10).map(|k| disruption_ratio(100, 65537, k * 10)).collect();
    emit("maglev_disruption_ratio_n100", &disruption);
    Ok(())
}
