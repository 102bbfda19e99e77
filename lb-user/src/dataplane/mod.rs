//! The XDP program and its maps: load, attach, write, read.
//!
//! The object is embedded in the binary at build time (see build.rs); nothing
//! is read from `target/` at run time.

use std::collections::BTreeMap;

use anyhow::{bail, Context as _};
use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray, ProgramArray, RingBuf},
    programs::{xdp::XdpLinkId, Xdp, XdpMode},
    Ebpf, EbpfLoader,
};
use lb_common::{
    counter, maps, Backend, BackendStats, NatSource, Service, ServiceStats, VipAddrKey, VipKey, NAT_SOURCE_F_SHARED,
    SERVICE_F_PING, SETTING_FLAGS, SETTING_TRACE, VIP_ADDR_F_KNOWN, VIP_ADDR_F_PING,
};

use self::{
    nat_book::{port_word, NatBook},
    ring::RingMem,
};
use crate::config::XdpModeConfig;

pub mod conntrack_count;
mod nat_book;
pub mod neigh;
pub mod ring;

/// The XDP object built by `cargo xtask build-ebpf` (empty when built without it).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xlb.bpf.o"));

/// The XDP object embedded in this binary.
pub fn object() -> anyhow::Result<&'static [u8]> {
    if OBJECT.is_empty() {
        bail!(
            "this xlb binary was built without its XDP program; build it with \
             `cargo xtask build` (or `cargo xtask build-ebpf` before `cargo build`)"
        );
    }
    Ok(OBJECT)
}

/// Sizes fixed when the program is loaded.
#[derive(Clone, Copy, Debug)]
pub struct Sizes {
    pub conntrack_entries: u32,
    pub ring_entries: u32,
}

/// The loaded program and its maps.
pub struct Dataplane {
    /// `RING` mapped into memory (declared before `ebpf`: unmapped first).
    ring: Option<RingMem>,
    ebpf: Ebpf,
    /// Interface -> the mode it was attached in.
    attached: BTreeMap<String, &'static str>,
    /// The links made by [`Dataplane::attach`], for [`Dataplane::detach_all`].
    links: Vec<(String, XdpLinkId)>,
    /// What was written to the service and backend maps, from which
    /// `NAT_SOURCES`, `BACKEND_F_SHARED` and `REPLY_PORTS` follow.
    book: NatBook,
    /// The `TRACE` ring buffer, while no `xlb trace` has it.
    trace_ring: Option<RingBuf<MapData>>,
}

/// Loads `xlb_icmp` (ICMP for VIP flows, echo requests to VIPs) and puts it where `xlb`
/// tail-calls it. An object without it (an older build, e.g. a benchmark's baseline) leaves
/// ICMP to the kernel, as it did.
fn load_icmp(ebpf: &mut Ebpf) -> anyhow::Result<()> {
    let Some(prog) = ebpf.program_mut(lb_common::ICMP_PROGRAM_NAME) else {
        log::debug!("the XDP object has no {} program: ICMP goes to the kernel", lb_common::ICMP_PROGRAM_NAME);
        return Ok(());
    };
    let prog: &mut Xdp = prog.try_into()?;
    prog.load().context("the kernel refused the ICMP program xlb_icmp (verifier)")?;
    let fd = prog.fd()?.try_clone()?;
    let map = ebpf.map_mut(maps::ICMP_PROG).context("the XDP object has no ICMP_PROG map")?;
    let mut jump: ProgramArray<&mut MapData> = ProgramArray::try_from(map)?;
    jump.set(0, &fd, 0).context("writing ICMP_PROG")?;
    Ok(())
}

impl Dataplane {
    /// Loads the program (not attached yet) with maps sized by `sizes`.
    pub fn load(sizes: Sizes) -> anyhow::Result<Self> {
        raise_memlock_limit();
        let mut loader = EbpfLoader::new();
        if std::env::var_os("XLB_VERIFIER_LOG").is_some() {
            // Full verifier output on load errors, for debugging the program.
            loader.verifier_log_level(aya::VerifierLogLevel::VERBOSE | aya::VerifierLogLevel::STATS);
        }
        let mut ebpf = loader
            .map_max_entries(maps::CONNTRACK, sizes.conntrack_entries)
            .map_max_entries(maps::REVERSE_NAT, sizes.conntrack_entries)
            .map_max_entries(maps::RING, sizes.ring_entries.max(1))
            .load(object()?)
            .context("loading the XDP object into the kernel")?;
        let prog: &mut Xdp =
            ebpf.program_mut(lb_common::PROGRAM_NAME).context("the XDP object has no program `xlb`")?.try_into()?;
        prog.load().context("the kernel refused the XDP program (verifier)")?;
        if std::env::var_os("XLB_NO_ICMP").is_some() {
            // A test knob: the data path as before issue 11's ICMP handling.
            log::warn!("XLB_NO_ICMP is set: ICMP is left to the kernel (no PMTU errors to backends, no ping answers)");
        } else {
            load_icmp(&mut ebpf)?;
        }
        let ring = match ebpf.map(maps::RING) {
            Some(aya::maps::Map::Array(m)) => RingMem::map(m.fd(), sizes.ring_entries.max(1) as usize)
                .inspect_err(|e| log::warn!("{e:#}; writing Maglev tables slot by slot (slower)"))
                .ok(),
            _ => None,
        };
        let trace_ring = ebpf.take_map(maps::TRACE).context("the XDP object has no TRACE map")?;
        let trace_ring = Some(RingBuf::try_from(trace_ring)?);
        Ok(Self { ring, ebpf, attached: BTreeMap::new(), links: Vec::new(), book: NatBook::default(), trace_ring })
    }

    pub fn program(&self) -> &Xdp {
        self.ebpf
            .program(lb_common::PROGRAM_NAME)
            .and_then(|p| <&Xdp>::try_from(p).ok())
            .expect("program was loaded in Dataplane::load")
    }

    /// The trivial XDP_PASS program of the same object (benchmark floor),
    /// loaded on first use.
    pub fn floor_program(&mut self) -> anyhow::Result<&Xdp> {
        let prog: &mut Xdp = self.ebpf.program_mut("xlb_floor").context("no xlb_floor program")?.try_into()?;
        if prog.fd().is_err() {
            prog.load()?;
        }
        Ok(prog)
    }

    /// Attaches to `iface`. `auto` tries native (driver) mode first, then generic.
    pub fn attach(&mut self, iface: &str, mode: XdpModeConfig) -> anyhow::Result<&'static str> {
        let prog: &mut Xdp = self.ebpf.program_mut(lb_common::PROGRAM_NAME).expect("loaded").try_into()?;
        let tries: &[(XdpMode, &'static str)] = match mode {
            XdpModeConfig::Native => &[(XdpMode::Driver, "native")],
            XdpModeConfig::Generic => &[(XdpMode::Skb, "generic")],
            XdpModeConfig::Auto => &[(XdpMode::Driver, "native"), (XdpMode::Skb, "generic")],
        };
        let mut last = None;
        for &(m, name) in tries {
            match prog.attach(iface, m) {
                Ok(link) => {
                    self.links.push((iface.to_string(), link));
                    self.attached.insert(iface.to_string(), name);
                    return Ok(name);
                }
                Err(e) => last = Some((name, e)),
            }
        }
        let (name, e) = last.expect("at least one mode tried");
        let hint = match mode {
            XdpModeConfig::Native => "; the driver may lack native XDP: try xdp_mode = \"generic\"",
            _ => "; does the interface exist in this network namespace?",
        };
        Err(anyhow::Error::new(e)).context(format!("attaching XDP to {iface} in {name} mode failed{hint}"))
    }

    /// Detaches the program from every interface it was attached to; the
    /// interfaces. Dropping the `Dataplane` detaches too: this one can be
    /// called while others still hold the balancer, and reports failures.
    pub fn detach_all(&mut self) -> anyhow::Result<Vec<String>> {
        let prog: &mut Xdp = self.ebpf.program_mut(lb_common::PROGRAM_NAME).expect("loaded").try_into()?;
        let mut done = Vec::new();
        let mut failed = Vec::new();
        for (iface, link) in self.links.drain(..) {
            match prog.detach(link) {
                Ok(()) => done.push(iface),
                Err(e) => failed.push(format!("{iface}: {e}")),
            }
        }
        self.attached.clear();
        if !failed.is_empty() {
            bail!("detaching XDP failed on {}", failed.join(", "));
        }
        Ok(done)
    }

    /// Interfaces the program is attached to, with their XDP mode.
    pub fn attached(&self) -> &BTreeMap<String, &'static str> {
        &self.attached
    }

    fn map_mut(&mut self, name: &str) -> &mut aya::maps::Map {
        self.ebpf.map_mut(name).unwrap_or_else(|| panic!("map {name} missing from the object"))
    }

    fn map(&self, name: &str) -> &aya::maps::Map {
        self.ebpf.map(name).unwrap_or_else(|| panic!("map {name} missing from the object"))
    }

    /// Publishes a service; the NAT sources of its backends, its entry by id
    /// and its port's `VIP_PORTS` bit are written first.
    pub fn set_service(&mut self, key: &VipKey, svc: &Service) -> anyhow::Result<()> {
        let before = self.book.keys_of_service(svc.id);
        self.book.services.insert(svc.id, (*key, svc.flags));
        self.sync_service_sources(svc.id, before)?;
        let mut by_id: Array<&mut MapData, Service> = Array::try_from(self.map_mut(maps::SERVICES_BY_ID))?;
        by_id.set(svc.id, svc, 0).with_context(|| format!("writing SERVICES_BY_ID[{}]", svc.id))?;
        self.sync_vip_port(key.port)?;
        let mut m: HashMap<&mut MapData, VipKey, Service> = HashMap::try_from(self.map_mut(maps::SERVICES))?;
        m.insert(key, svc, 0).context("writing SERVICES")?;
        self.sync_vip_addr(key)
    }

    /// Writes the `VIP_ADDRS` entry of `key`'s address from the services in the book:
    /// echo requests are answered while every service on the address has `answer_ping`.
    fn sync_vip_addr(&mut self, key: &VipKey) -> anyhow::Result<()> {
        let same = |k: &VipKey| k.addr == key.addr && k.family == key.family;
        let ping = self.book.services.values().filter(|(k, _)| same(k)).all(|(_, f)| f & SERVICE_F_PING != 0);
        let value = VIP_ADDR_F_KNOWN | if ping { VIP_ADDR_F_PING } else { 0 };
        let addr = VipAddrKey { addr: key.addr, family: key.family, _pad: [0; 3] };
        let mut a: HashMap<&mut MapData, VipAddrKey, u32> = HashMap::try_from(self.map_mut(maps::VIP_ADDRS))?;
        a.insert(addr, value, 0).context("writing VIP_ADDRS")
    }

    /// Removes a service; its VIP address stays known while another service uses it.
    pub fn remove_service(&mut self, key: &VipKey, addr_still_used: bool) -> anyhow::Result<()> {
        let mut m: HashMap<&mut MapData, VipKey, Service> = HashMap::try_from(self.map_mut(maps::SERVICES))?;
        m.remove(key).context("removing from SERVICES")?;
        if !addr_still_used {
            let addr = VipAddrKey { addr: key.addr, family: key.family, _pad: [0; 3] };
            let mut a: HashMap<&mut MapData, VipAddrKey, u32> = HashMap::try_from(self.map_mut(maps::VIP_ADDRS))?;
            a.remove(&addr).context("removing from VIP_ADDRS")?;
        }
        if let Some(id) = self.book.services.iter().find(|(_, (k, _))| k == key).map(|(id, _)| *id) {
            let before = self.book.keys_of_service(id);
            self.book.services.remove(&id);
            self.sync_service_sources(id, before)?;
        }
        if addr_still_used {
            self.sync_vip_addr(key)?;
        }
        // Its `SERVICES_BY_ID` entry stays until the id is reused: it is only
        // reached through its backends, which are cleared after it.
        self.sync_vip_port(key.port)
    }

    /// Makes the `VIP_PORTS` word of `port` (network order) match the services in the book.
    fn sync_vip_port(&mut self, port: u16) -> anyhow::Result<()> {
        let port = u16::from_be(port);
        let (word, value) = port_word(self.book.services.values().map(|(k, _)| u16::from_be(k.port)), port);
        let mut m: Array<&mut MapData, u64> = Array::try_from(self.map_mut(maps::VIP_PORTS))?;
        m.set(word, value, 0).context("writing VIP_PORTS")
    }

    /// Writes `BACKENDS[slot]` (`Backend::default()` frees it) and what
    /// follows from it: its NAT source and the reply-port bits.
    pub fn set_backend(&mut self, slot: u32, be: &Backend) -> anyhow::Result<()> {
        let before = self.book.backends.get(&slot).and_then(|b| self.book.key_of(b));
        if be.port == 0 {
            self.book.backends.remove(&slot);
        } else {
            self.book.backends.insert(slot, *be);
        }
        let after = self.book.backends.get(&slot).and_then(|b| self.book.key_of(b));
        for key in before.into_iter().chain(after.filter(|a| Some(*a) != before)) {
            self.sync_nat_source(key)?;
        }
        self.write_backend(slot)
    }

    fn write_backend(&mut self, slot: u32) -> anyhow::Result<()> {
        let be = self.book.entry(slot);
        let mut m: Array<&mut MapData, Backend> = Array::try_from(self.map_mut(maps::BACKENDS))?;
        m.set(slot, be, 0).with_context(|| format!("writing BACKENDS[{slot}]"))
    }

    /// After service `id` changed: the NAT sources its backends had
    /// (`before`) and have now, then its backends' entries.
    fn sync_service_sources(&mut self, id: u32, before: Vec<VipKey>) -> anyhow::Result<()> {
        let mut keys = before;
        keys.extend(self.book.keys_of_service(id));
        keys.dedup();
        for key in keys {
            self.sync_nat_source(key)?;
        }
        for slot in self.book.slots_of_service(id) {
            self.write_backend(slot)?;
        }
        Ok(())
    }

    /// Makes `NAT_SOURCES[key]` what the book says, then the flags of the
    /// backends behind it and the `REPLY_PORTS` bit of its port. A source is
    /// written before any flow can use its service and removed only when no
    /// NAT backend answers from it any more.
    fn sync_nat_source(&mut self, key: VipKey) -> anyhow::Result<()> {
        let want = self.book.want(&key);
        let prev = self.book.sources.get(&key).copied();
        if want == prev {
            return Ok(());
        }
        let mut m: HashMap<&mut MapData, VipKey, NatSource> = HashMap::try_from(self.map_mut(maps::NAT_SOURCES))?;
        match want {
            Some(src) => {
                m.insert(key, src, 0).context("writing NAT_SOURCES")?;
                self.book.sources.insert(key, src);
            }
            None => {
                m.remove(&key).context("removing from NAT_SOURCES")?;
                self.book.sources.remove(&key);
            }
        }
        let shared = |s: Option<NatSource>| s.is_some_and(|s| s.flags & NAT_SOURCE_F_SHARED != 0);
        if shared(want) != shared(prev) {
            for slot in self.book.members(&key) {
                self.write_backend(slot)?;
            }
        }
        let (word, value) = self.book.reply_port_word(u16::from_be(key.port));
        let mut m: Array<&mut MapData, u64> = Array::try_from(self.map_mut(maps::REPLY_PORTS))?;
        m.set(word, value, 0).context("writing REPLY_PORTS")
    }

    /// Writes the slots of a Maglev table that differ from `old` (all of them
    /// when `old` is `None`). Each slot is one atomic write, so a packet sees
    /// either the old or the new backend of a slot, both in the configured set.
    /// Returns how many slots were written.
    pub fn write_ring(&mut self, offset: u32, new: &[u32], old: Option<&[u32]>) -> anyhow::Result<usize> {
        // The slots that differ from `old` (all of them without it).
        let changed = new
            .iter()
            .enumerate()
            .filter(|&(i, b)| old.is_none_or(|o| o.get(i) != Some(b)))
            .map(|(i, &b)| (offset + i as u32, b));
        let mut written = 0;
        if let Some(ring) = &self.ring {
            let end = offset as usize + new.len();
            if end > ring.entries() {
                bail!("RING too small: slots {offset}..{end} of {}", ring.entries());
            }
            for (slot, b) in changed {
                ring.set(slot as usize, b);
                written += 1;
            }
        } else {
            let mut m: Array<&mut MapData, u32> = Array::try_from(self.map_mut(maps::RING))?;
            for (slot, b) in changed {
                m.set(slot, b, 0).context("writing RING")?;
                written += 1;
            }
        }
        Ok(written)
    }

    /// One `RING` slot, read through the syscall (for tests and checks).
    pub fn read_ring_slot(&self, i: u32) -> anyhow::Result<u32> {
        let m: Array<&MapData, u32> = Array::try_from(self.map(maps::RING))?;
        Ok(m.get(&i, 0)?)
    }

    pub fn set_flags(&mut self, flags: u32) -> anyhow::Result<()> {
        let mut m: Array<&mut MapData, u32> = Array::try_from(self.map_mut(maps::SETTINGS))?;
        m.set(SETTING_FLAGS, flags, 0).context("writing SETTINGS")
    }

    /// Turns data-path tracing on (one decision in `rate`) or off (`0`).
    pub fn set_trace(&mut self, rate: u32) -> anyhow::Result<()> {
        let mut m: Array<&mut MapData, u32> = Array::try_from(self.map_mut(maps::SETTINGS))?;
        m.set(SETTING_TRACE, rate, 0).context("writing SETTINGS")
    }

    /// Lends out the `TRACE` ring buffer; `None` while a trace has it.
    pub fn take_trace_ring(&mut self) -> Option<RingBuf<MapData>> {
        self.trace_ring.take()
    }

    pub fn return_trace_ring(&mut self, ring: RingBuf<MapData>) {
        self.trace_ring = Some(ring);
    }

    /// `COUNTERS`, summed over CPUs.
    pub fn counters(&self) -> anyhow::Result<Vec<u64>> {
        let m: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(self.map(maps::COUNTERS))?;
        (0..counter::NUM_COUNTERS).map(|i| Ok(m.get(&i, 0)?.iter().sum())).collect()
    }

    /// `BACKEND_STATS[slot]`, summed over CPUs.
    pub fn backend_stats(&self, slot: u32) -> anyhow::Result<BackendStats> {
        let m: PerCpuArray<&MapData, BackendStats> = PerCpuArray::try_from(self.map(maps::BACKEND_STATS))?;
        Ok(m.get(&slot, 0)?.iter().fold(BackendStats::default(), |a, s| BackendStats {
            packets: a.packets + s.packets,
            bytes: a.bytes + s.bytes,
            new_flows: a.new_flows + s.new_flows,
        }))
    }

    /// Clears `BACKEND_STATS[slot]` (a slot handed to a new backend starts at 0).
    pub fn reset_backend_stats(&mut self, slot: u32) -> anyhow::Result<()> {
        let n = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        let mut m: PerCpuArray<&mut MapData, BackendStats> = PerCpuArray::try_from(self.map_mut(maps::BACKEND_STATS))?;
        m.set(slot, aya::maps::PerCpuValues::try_from(vec![BackendStats::default(); n])?, 0)?;
        Ok(())
    }

    /// `SERVICE_STATS[id]`, summed over CPUs.
    pub fn service_stats(&self, id: u32) -> anyhow::Result<ServiceStats> {
        let m: PerCpuArray<&MapData, ServiceStats> = PerCpuArray::try_from(self.map(maps::SERVICE_STATS))?;
        Ok(m.get(&id, 0)?.iter().fold(ServiceStats::default(), |a, s| ServiceStats {
            packets: a.packets + s.packets,
            established: a.established + s.established,
            new_flows: a.new_flows + s.new_flows,
            repicked: a.repicked + s.repicked,
        }))
    }

    /// Entries in the conntrack map (walks the map: for status, not hot paths).
    pub fn conntrack_len(&self) -> anyhow::Result<usize> {
        let m: HashMap<&MapData, lb_common::FlowKey, lb_common::FlowState> =
            HashMap::try_from(self.map(maps::CONNTRACK))?;
        Ok(m.keys().filter(|k| k.is_ok()).count())
    }

    /// A duplicate of the conntrack map's descriptor and the map's capacity,
    /// so its entries can be counted without holding the balancer (see
    /// `conntrack_count`).
    pub fn conntrack_fd(&self) -> anyhow::Result<(std::os::fd::OwnedFd, u32)> {
        use std::os::fd::AsFd as _;
        let aya::maps::Map::LruHashMap(m) = self.map(maps::CONNTRACK) else {
            bail!("{} is not an LRU hash map", maps::CONNTRACK);
        };
        let fd = m.fd().as_fd().try_clone_to_owned().context("duplicating the conntrack map descriptor")?;
        Ok((fd, m.info()?.max_entries()))
    }
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; raise it so large
/// conntrack maps load there too (a no-op on newer kernels).
fn raise_memlock_limit() {
    let rlim = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: plain syscall with a valid pointer.
    let ret = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) };
    if ret != 0 {
        log::debug!("could not raise RLIMIT_MEMLOCK: {}", std::io::Error::last_os_error());
    }
}
