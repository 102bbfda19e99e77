//! A short run of the differential fuzzer (`cargo xtask fuzz` runs a long
//! one): 50,000 frames through the XDP program and the reference model must
//! agree on every action, output byte and counter, ICMP and ICMPv6 included. `XLB_FUZZ_SEED` picks
//! another seed than the fixed one.

use xlb_testbed::fuzz::run_fuzz;

const FRAMES: u64 = 50_000;
const SEED: u64 = 0x786c_6231_3400_0001;

#[test]
#[ignore = "needs root (network namespaces, XDP): cargo xtask test runs it"]
fn differential_fuzz_short_run() {
    let seed = std::env::var("XLB_FUZZ_SEED")
        .ok()
        .map_or(SEED, |s| s.parse().unwrap_or_else(|e| panic!("XLB_FUZZ_SEED={s:?} is not a whole number: {e}")));
    let rep = run_fuzz(FRAMES, seed, false).unwrap_or_else(|e| panic!("fuzzer could not run: {e:#}"));
    println!("{}", rep.summary());
    assert_eq!(rep.frames, FRAMES, "every frame ran (stopped early at a divergence?)\n{}", rep.divergences.join("\n"));
    assert!(
        rep.divergences.is_empty(),
        "the XDP program and the model disagree on {} frame(s) (expected none):\n{}",
        rep.divergences.len(),
        rep.divergences.join("\n")
    );
    // The run reached every refusal and every way through.
    for outcome in [
        "drop/truncated",
        "drop/fragment",
        "drop/ipv6_extension",
        "drop/bad_header",
        "drop/bad_source",
        "drop/bad_flags",
        "redirect/to_backend",
        "redirect/nat_reply",
        "tx/nat_reply",
        "pass/not_vip",
        "pass/ttl",
        "drop/icmp_truncated",
        "drop/icmp_fragment",
        "drop/icmp_unknown_flow",
        "drop/ping_rate_limited",
        "pass/icmp",
        "redirect/icmp_to_backend",
        "tx/icmp_to_backend",
        "redirect/icmp_to_client",
        "tx/ping_answered",
    ] {
        let n = rep.outcomes.get(outcome).copied().unwrap_or(0);
        assert!(n >= 10, "outcome {outcome}: {n} frames, expected at least 10 in {FRAMES}\n{}", rep.summary());
    }
}
