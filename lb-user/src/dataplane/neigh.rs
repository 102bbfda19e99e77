//! Next hops for backends, from the kernel's route and neighbour tables.
//!
//! The XDP program forwards to a backend with the egress interface and MACs
//! kept in its `BACKENDS` entry: a map read instead of a `bpf_fib_lookup` per
//! packet (measured: the FIB lookup costs more than the rest of the
//! established-flow path). The daemon refreshes the entries every second;
//! a backend without a resolved neighbour gets `ifindex = 0` and the program
//! asks the FIB for it instead.

use std::{collections::HashMap, net::IpAddr, process::Command};

use lb_common::NextHop;

fn run(args: &[&str]) -> Option<String> {
    let out = Command::new("ip").args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn word_after<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let mut it = line.split_whitespace();
    while let Some(w) = it.next() {
        if w == key {
            return it.next();
        }
    }
    None
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let v: Vec<u8> = s.split(':').map(|h| u8::from_str_radix(h, 16)).collect::<Result<_, _>>().ok()?;
    v.try_into().ok()
}

/// Index and MAC of `dev`, from `ip -o link show` (works in the caller's
/// network namespace whatever /sys shows).
fn iface(dev: &str) -> Option<(u32, [u8; 6])> {
    let line = run(&["-o", "link", "show", "dev", dev])?;
    let idx = line.split(':').next()?.trim().parse().ok()?;
    Some((idx, parse_mac(word_after(&line, "link/ether")?)?))
}

/// Resolves each address: route (device, gateway) then neighbour entry.
/// Addresses without a usable neighbour entry are left out.
pub fn resolve(addrs: &[IpAddr]) -> HashMap<IpAddr, NextHop> {
    let mut neigh: HashMap<(String, IpAddr), [u8; 6]> = HashMap::new();
    for fam in ["-4", "-6"] {
        for line in run(&[fam, "neigh", "show"]).unwrap_or_default().lines() {
            let bad = ["FAILED", "INCOMPLETE", "NOARP"].iter().any(|s| line.contains(s));
            let (Some(ip), Some(dev), Some(mac)) = (
                line.split_whitespace().next().and_then(|a| a.parse::<IpAddr>().ok()),
                word_after(line, "dev"),
                word_after(line, "lladdr").and_then(parse_mac),
            ) else {
                continue;
            };
            if !bad {
                neigh.insert((dev.to_string(), ip), mac);
            }
        }
    }
    let mut out = HashMap::new();
    for &a in addrs {
        let Some(route) = run(&["route", "get", &a.to_string()]) else { continue };
        let line = route.lines().next().unwrap_or_default();
        let (Some(dev), via) = (word_after(line, "dev"), word_after(line, "via")) else { continue };
        let hop_ip = via.and_then(|v| v.parse().ok()).unwrap_or(a);
        let (Some(&dmac), Some((ifindex, smac))) = (neigh.get(&(dev.to_string(), hop_ip)), iface(dev)) else {
            continue;
        };
        out.insert(a, NextHop { ifindex, dmac, smac });
    }
    out
}
