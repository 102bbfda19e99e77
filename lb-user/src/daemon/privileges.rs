//! Capabilities the daemon keeps once XDP is attached.
//!
//! Loading the program, creating and pinning maps and attaching need
//! `CAP_BPF`, `CAP_NET_ADMIN`, `CAP_PERFMON` (and, on older kernels,
//! `CAP_SYS_ADMIN`). After that the daemon only writes maps through the
//! descriptors it holds, detaches its links (`xlb stop`, `--detach-on-exit`)
//! and runs health checks over ordinary sockets. So it keeps `CAP_BPF`,
//! `CAP_NET_ADMIN` (link detach) and `CAP_PERFMON`, and drops every other
//! capability from its effective, permitted, inheritable, ambient and
//! bounding sets: a root daemon started by hand loses `CAP_SYS_ADMIN`,
//! `CAP_DAC_OVERRIDE`, `CAP_SYS_MODULE`, `CAP_NET_RAW` and the rest, and
//! programs it runs (`ip` for next hops) get no more than what is kept.
//!
//! Capabilities are per thread in Linux: this must run while the process
//! has one thread (`xlb run` calls it before its runtime starts), so that
//! every thread started later inherits the reduced sets.

use anyhow::Context as _;

/// `CAP_NET_ADMIN`, `CAP_PERFMON`, `CAP_BPF` (linux/capability.h).
const KEEP: [(u32, &str); 3] = [(12, "cap_net_admin"), (38, "cap_perfmon"), (39, "cap_bpf")];

/// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words per set.
const CAP_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The kept set as a 64-bit mask.
pub fn kept_mask() -> u64 {
    KEEP.iter().fold(0, |m, (c, _)| m | 1u64 << c)
}

fn capget() -> anyhow::Result<[CapData; 2]> {
    let mut hdr = CapHeader { version: CAP_VERSION_3, pid: 0 };
    let mut data = [CapData::default(); 2];
    // SAFETY: header and two data words as the v3 ABI asks.
    let r = unsafe { libc::syscall(libc::SYS_capget, &mut hdr, data.as_mut_ptr()) };
    if r != 0 {
        return Err(std::io::Error::last_os_error()).context("capget");
    }
    Ok(data)
}

fn mask(data: &[CapData; 2], f: impl Fn(&CapData) -> u32) -> u64 {
    u64::from(f(&data[0])) | u64::from(f(&data[1])) << 32
}

/// Drops every capability but [`KEEP`] (see the module docs). Returns what
/// is kept, for the log. A process without `CAP_SETPCAP` (not root, or a
/// unit that did not grant it) cannot shrink its bounding set: its
/// effective and permitted sets are still reduced.
pub fn drop_unneeded() -> anyhow::Result<String> {
    let before = capget()?;
    let permitted = mask(&before, |d| d.permitted);
    let last: u32 =
        std::fs::read_to_string("/proc/sys/kernel/cap_last_cap").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(40);
    let mut bounding_kept = true;
    for cap in 0..=last.min(63) {
        if kept_mask() & 1u64 << cap != 0 {
            continue;
        }
        // SAFETY: plain prctl with integer arguments.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) } != 0 {
            bounding_kept = false;
        }
    }
    // SAFETY: as above.
    unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong, 0, 0, 0) };
    let keep = permitted & kept_mask();
    let word = |i: u32| (keep >> (32 * i)) as u32;
    let data = [0, 1].map(|i| CapData { effective: word(i), permitted: word(i), inheritable: 0 });
    let mut hdr = CapHeader { version: CAP_VERSION_3, pid: 0 };
    // SAFETY: header and two data words as the v3 ABI asks.
    if unsafe { libc::syscall(libc::SYS_capset, &mut hdr, data.as_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error()).context("capset");
    }
    let names: Vec<&str> = KEEP.iter().filter(|(c, _)| keep & 1u64 << c != 0).map(|(_, n)| *n).collect();
    let dropped = (permitted & !keep).count_ones();
    let mut out = format!(
        "kept {}; dropped {dropped} other{}",
        if names.is_empty() { "none".to_string() } else { names.join(", ") },
        if dropped == 1 { "" } else { "s" }
    );
    if !bounding_kept {
        out.push_str(" (the bounding set could not be reduced: no CAP_SETPCAP)");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kept_set_is_bpf_net_admin_and_perfmon() {
        assert_eq!(kept_mask(), 1 << 12 | 1 << 38 | 1 << 39);
    }
}
