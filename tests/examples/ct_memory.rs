//! Memory of the conntrack table per million flows: loads the program with
//! `conntrack_entries` = 2^20 and prints what the kernel charges for each
//! map sized by it (`memlock` in `/proc/self/fdinfo`). A measurement, not a test.
//! `cargo run --release -p xlb-testbed --example ct_memory` as root.

use xlb::balancer::Balancer;
use xlb_testbed::{is_root, xdpbed::fixture_config};

fn main() -> anyhow::Result<()> {
    if !is_root() {
        anyhow::bail!("run as root (BPF maps)");
    }
    let mut cfg = fixture_config();
    cfg.daemon.conntrack_entries = 1 << 20;
    let _bal = Balancer::load(&cfg)?;
    for entry in std::fs::read_dir("/proc/self/fdinfo")? {
        let text = std::fs::read_to_string(entry?.path()).unwrap_or_default();
        let field = |name: &str| {
            text.lines().find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned())).unwrap_or_default()
        };
        // The maps sized for 2^20 flows: the conntrack table (an array of
        // 2^18 buckets of 4 slots, type 2) and the NAT reverse table (LRU hash, type 9).
        let entries = field("max_entries:");
        let table = field("map_type:") == "2" && field("value_size:") == "336" && entries == (1u32 << 18).to_string();
        let reverse = field("map_type:") == "9" && entries == (1u32 << 20).to_string();
        if table || reverse {
            let memlock: u64 = field("memlock:").parse().unwrap_or(0);
            println!(
                "map type {:>2}, key {:>2} B, value {:>3} B, {:>7} entries: {:.1} MiB, {:.0} B per tracked flow",
                field("map_type:"),
                field("key_size:"),
                field("value_size:"),
                entries,
                memlock as f64 / (1u64 << 20) as f64,
                memlock as f64 / f64::from(1u32 << 20),
            );
        }
    }
    Ok(())
}
