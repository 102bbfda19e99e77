//! The XDP program and its maps: load, attach, write, read.
//!
//! The object is embedded in the binary at build time (see build.rs); nothing
//! is read from `target/` at run time.

use std::collections::BTreeMap;

use anyhow::{bail, Context as _};
use aya::{
    maps::{
        lpm_trie::{Key as LpmKey, LpmTrie},
        Array, DevMapHash, HashMap, MapData, PerCpuArray, ProgramArray, RingBuf,
    },
    programs::{xdp::XdpLinkId, Xdp, XdpMode},
    Ebpf, EbpfLoader,
};
use lb_common::{
    counter, maps, Backend, BackendStats, NatSource, Service, ServiceStats, VipAddrKey, VipKey, ENCAP_SOURCE_V4,
    ENCAP_SOURCE_V6, NAT_SOURCE_F_SHARED, SCHED_HALF, SERVICE_F_PING, SETTING_FLAGS, SETTING_GUE_PORT, SETTING_HAIRPIN,
    SETTING_TRACE, VIP_ADDR_F_KNOWN, VIP_ADDR_F_PING,
};
use lb_common::{SourceRuleKey, FIREWALL_F_CLOSED_DROP, SETTING_FIREWALL, VIP_ADDR_F_CLOSED_DROP};

use self::{
    nat_book::{port_word, NatBook},
    ring::RingMem,
};
use crate::config::{EncapSource, XdpModeConfig};

pub mod conns;
pub mod conntrack_count;
pub mod ct_table;
pub mod decap;
mod mmap;
mod nat_book;
pub mod neigh;
pub mod pins;
pub mod ring;
pub mod sweep;
pub mod sys;
pub mod veth;

/// The XDP object built by `cargo xtask build-ebpf` (empty when built without it).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xlb.bpf.o"));

/// An XDP object read from a file, 8-byte aligned as the ELF parser needs.
pub struct ObjectFile {
    words: Vec<u64>,
    len: usize,
}

impl ObjectFile {
    pub fn read(path: &std::path::Path) -> anyhow::Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("reading XDP object {}", path.display()))?;
        let mut words = vec![0u64; bytes.len().div_ceil(8)];
        // SAFETY: `words` owns at least `bytes.len()` initialised bytes.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), words.as_mut_ptr().cast::<u8>(), bytes.len()) };
        Ok(Self { words, len: bytes.len() })
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `words` holds `len` initialised bytes (see `read`).
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast::<u8>(), self.len) }
    }
}

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

/// How the program is attached to one interface.
enum Link {
    /// Made by aya, owned by the program (not pinned): detached when dropped.
    Aya(XdpLinkId),
    /// A pinned `bpf_link`: stays attached after the daemon exits.
    Pinned,
}

/// The loaded program and its maps.
pub struct Dataplane {
    /// `RING` mapped into memory (declared before `ebpf`: unmapped first).
    ring: Option<RingMem>,
    /// `BACKEND_CONNS` mapped into memory; `None` for an object without it (an older build).
    conns: Option<std::sync::Arc<conns::ConnsMem>>,
    /// `CONNTRACK` mapped into memory; `None` for an object whose table is a
    /// hash map (built before the table was an array).
    ct: Option<std::sync::Arc<ct_table::CtTable>>,
    ebpf: Ebpf,
    /// Interface -> the mode it was attached in.
    attached: BTreeMap<String, &'static str>,
    /// The links made by [`Dataplane::attach`], for [`Dataplane::detach_all`].
    links: Vec<(String, Link)>,
    /// The pin directory, when maps and links are pinned (the daemon).
    pins: Option<pins::PinPlan>,
    /// What was written to the service and backend maps, from which
    /// `NAT_SOURCES`, `BACKEND_F_SHARED` and `REPLY_PORTS` follow.
    book: NatBook,
    /// The `TRACE` ring buffer, while no `xlb trace` has it.
    trace_ring: Option<RingBuf<MapData>>,
    /// What `SOURCE_RULES` holds; `None` until first read (a pinned map may hold a previous
    /// daemon's rules).
    rules: Option<std::collections::HashMap<RuleId, u32>>,
    /// `[daemon] closed_ports = "drop"`: every `VIP_ADDRS` entry has `VIP_ADDR_F_CLOSED_DROP`.
    closed_drop: bool,
}

/// A `SOURCE_RULES` key: its prefix length (32 + the rule's) and its data.
pub type RuleId = (u32, SourceRuleKey);

/// The `ENCAP_SOURCES` entry of a prefix: its address and host bits, as words in
/// network order.
pub fn encap_source_entry(src: EncapSource) -> lb_common::EncapSource {
    let (addr, host) = match src.addr {
        std::net::IpAddr::V4(a) => {
            let host = u32::MAX.checked_shr(u32::from(src.prefix_len)).unwrap_or(0);
            (lb_common::addr_v4(a.octets()), lb_common::addr_v4(host.to_be_bytes()))
        }
        std::net::IpAddr::V6(a) => {
            let host = u128::MAX.checked_shr(u32::from(src.prefix_len)).unwrap_or(0);
            (lb_common::addr_v6(a.octets()), lb_common::addr_v6(host.to_be_bytes()))
        }
    };
    lb_common::EncapSource { addr, host }
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

/// Loads `xlb_encap` (ipip and gue) and puts it where `xlb` tail-calls it. An
/// object without it (built before ipip/gue) has no such services to serve.
fn load_encap(ebpf: &mut Ebpf) -> anyhow::Result<()> {
    let Some(prog) = ebpf.program_mut(lb_common::ENCAP_PROGRAM_NAME) else {
        log::debug!("the XDP object has no {} program: no ipip/gue", lb_common::ENCAP_PROGRAM_NAME);
        return Ok(());
    };
    let prog: &mut Xdp = prog.try_into()?;
    prog.load().context("the kernel refused the encapsulation program xlb_encap (verifier)")?;
    let fd = prog.fd()?.try_clone()?;
    let map = ebpf.map_mut(maps::ENCAP_PROG).context("the XDP object has no ENCAP_PROG map")?;
    let mut jump: ProgramArray<&mut MapData> = ProgramArray::try_from(map)?;
    jump.set(0, &fd, 0).context("writing ENCAP_PROG")?;
    Ok(())
}

impl Dataplane {
    /// Loads the embedded program (not attached yet) with maps sized by
    /// `sizes`, nothing pinned (benchmarks, tests).
    pub fn load(sizes: Sizes) -> anyhow::Result<Self> {
        Self::load_with(sizes, object()?, None)
    }

    /// The `max_entries` that `sizes` sets, by map name.
    pub fn size_overrides(sizes: Sizes) -> [(&'static str, u32); 3] {
        [
            (maps::CONNTRACK, lb_common::ct_slots(sizes.conntrack_entries) / lb_common::CT_WAYS),
            (maps::REVERSE_NAT, sizes.conntrack_entries),
            (maps::RING, sizes.ring_entries.max(1)),
        ]
    }

    /// Loads `object` with maps sized by `sizes`; with `pins`, the maps it
    /// planned are reused from or pinned in its directory.
    pub fn load_with(sizes: Sizes, object: &[u8], pins: Option<pins::PinPlan>) -> anyhow::Result<Self> {
        raise_memlock_limit();
        let mut loader = EbpfLoader::new();
        if std::env::var_os("XLB_VERIFIER_LOG").is_some() {
            // Full verifier output on load errors, for debugging the program.
            loader.verifier_log_level(aya::VerifierLogLevel::VERBOSE | aya::VerifierLogLevel::STATS);
        }
        for (name, n) in Self::size_overrides(sizes) {
            loader.map_max_entries(name, n);
        }
        // The program's copy of CONNTRACK's size (read-only data).
        let ct_slots = lb_common::ct_slots(sizes.conntrack_entries);
        loader.override_global("CT_SLOTS", &ct_slots, false);
        let pin_paths: Vec<(&str, std::path::PathBuf)> =
            pins.iter().flat_map(|p| p.maps.iter().map(|m| (m.name.as_str(), m.load_path(&p.dir)))).collect();
        for (name, path) in &pin_paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(object).context("loading the XDP object into the kernel")?;
        drop(pin_paths);
        let prog: &mut Xdp =
            ebpf.program_mut(lb_common::PROGRAM_NAME).context("the XDP object has no program `xlb`")?.try_into()?;
        prog.load().context("the kernel refused the XDP program (verifier)")?;
        if std::env::var_os("XLB_NO_ICMP").is_some() {
            // A test knob: the data path as before issue 11's ICMP handling.
            log::warn!("XLB_NO_ICMP is set: ICMP is left to the kernel (no PMTU errors to backends, no ping answers)");
            // A pinned ICMP_PROG may still hold a previous daemon's xlb_icmp.
            if let Some(map) = ebpf.map_mut(maps::ICMP_PROG) {
                let mut jump: ProgramArray<&mut MapData> = ProgramArray::try_from(map)?;
                let _ = jump.clear_index(&0);
            }
        } else {
            load_icmp(&mut ebpf)?;
        }
        load_encap(&mut ebpf)?;
        let ring = match ebpf.map(maps::RING) {
            Some(aya::maps::Map::Array(m)) => RingMem::map(m.fd(), sizes.ring_entries.max(1) as usize)
                .inspect_err(|e| log::warn!("{e:#}; writing Maglev tables slot by slot (slower)"))
                .ok(),
            _ => None,
        };
        let conns = match ebpf.map(maps::BACKEND_CONNS) {
            Some(aya::maps::Map::Array(m)) => conns::ConnsMem::map(m.fd(), lb_common::MAX_BACKENDS as usize)
                .inspect_err(|e| log::warn!("{e:#}; active connections will not be shown"))
                .ok()
                .map(std::sync::Arc::new),
            _ => None,
        };
        let ct = match ebpf.map(maps::CONNTRACK) {
            Some(aya::maps::Map::Array(m)) => Some(std::sync::Arc::new(
                ct_table::CtTable::map(m.fd(), ct_slots as usize).context("mapping the conntrack table")?,
            )),
            _ => None,
        };
        let trace_ring = ebpf.take_map(maps::TRACE).context("the XDP object has no TRACE map")?;
        let trace_ring = Some(RingBuf::try_from(trace_ring)?);
        Ok(Self {
            ring,
            conns,
            ct,
            ebpf,
            attached: BTreeMap::new(),
            links: Vec::new(),
            pins,
            book: NatBook::default(),
            trace_ring,
            rules: None,
            closed_drop: false,
        })
    }

    /// Records who runs on the pins (`pid`, 0 when none), the XDP modes and
    /// the drained backends in the pinned state map. A no-op when not pinned.
    pub fn write_state(&self, pid: u32, drains: Vec<(String, String)>) -> anyhow::Result<()> {
        let Some(plan) = &self.pins else { return Ok(()) };
        let state = pins::State {
            config: plan.who.config.display().to_string(),
            interfaces: plan.who.interfaces.clone(),
            modes: self.attached.iter().map(|(i, m)| (i.clone(), m.to_string())).collect(),
            pid,
            drains,
        };
        plan.state.write(&state)
    }

    /// The pin directory's plan, when pinned.
    pub fn pins(&self) -> Option<&pins::PinPlan> {
        self.pins.as_ref()
    }

    pub fn pins_mut(&mut self) -> Option<&mut pins::PinPlan> {
        self.pins.as_mut()
    }

    /// Whether the loaded object has the map `name` (a benchmark's baseline may predate it).
    pub fn has_map(&self, name: &str) -> bool {
        self.ebpf.map(name).is_some()
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
    /// A veth in native mode gets its packets back out of it redirected
    /// (`HAIRPIN_PORTS`) and the log says what its peer needs.
    pub fn attach(&mut self, iface: &str, mode: XdpModeConfig) -> anyhow::Result<&'static str> {
        let name = if self.pins.is_some() { self.attach_pinned(iface, mode)? } else { self.attach_new(iface, mode)? };
        // A taken-over link whose mode was not recorded ("pinned") may be native.
        if name != "generic" && veth::is_veth(iface) {
            if let Err(e) = self.hairpin_by_redirect(iface) {
                log::warn!("{iface}: packets back out of it leave with XDP_TX: {e:#}");
            }
            log::warn!("{}", veth::native_veth_advice(iface, veth::peer_ifindex(iface)));
        }
        Ok(name)
    }

    /// Not pinned: an aya link that lives as long as the process.
    fn attach_new(&mut self, iface: &str, mode: XdpModeConfig) -> anyhow::Result<&'static str> {
        let prog: &mut Xdp = self.ebpf.program_mut(lb_common::PROGRAM_NAME).expect("loaded").try_into()?;
        let (link, name) = attach_in_mode(prog, iface, mode).map_err(|(name, e)| {
            let hint = match mode {
                XdpModeConfig::Native => "; the driver may lack native XDP: try xdp_mode = \"generic\"",
                _ => "; does the interface exist in this network namespace?",
            };
            anyhow::Error::new(e).context(format!("attaching XDP to {iface} in {name} mode failed{hint}"))
        })?;
        self.links.push((iface.to_string(), Link::Aya(link)));
        self.attached.insert(iface.to_string(), name);
        Ok(name)
    }

    /// Lists `iface` in `HAIRPIN_PORTS`: packets that leave by it after
    /// coming in by it are redirected to it instead of sent with XDP_TX (a
    /// native-mode veth: see `veth`). [`Dataplane::attach`] does it for the
    /// veths it attaches to in native mode; public for the benchmarks.
    pub fn hairpin_by_redirect(&mut self, iface: &str) -> anyhow::Result<()> {
        let idx = veth::ifindex(iface).with_context(|| format!("index of {iface}"))?;
        let map = self.ebpf.map_mut(maps::HAIRPIN_PORTS).with_context(|| {
            format!(
                "the XDP object has no {} map (built before packets back out of a veth were redirected)",
                maps::HAIRPIN_PORTS
            )
        })?;
        let mut m: DevMapHash<&mut MapData> = DevMapHash::try_from(map)?;
        m.insert(idx, idx, None, 0).with_context(|| format!("writing HAIRPIN_PORTS[{iface}]"))?;
        // The entry first: the program looks in the map only once this is set.
        self.hairpin_lookups(true)?;
        log::debug!("{iface}: packets back out of it go by redirect (veth in native mode)");
        Ok(())
    }

    /// Whether the program looks in `HAIRPIN_PORTS` for packets back out of
    /// the interface they came in by (on once an interface is listed; off,
    /// they all leave with XDP_TX). Public for the benchmarks.
    pub fn hairpin_lookups(&mut self, on: bool) -> anyhow::Result<()> {
        let mut m: Array<&mut MapData, u32> = Array::try_from(self.map_mut(maps::SETTINGS))?;
        m.set(SETTING_HAIRPIN, u32::from(on), 0).context("writing SETTINGS")
    }

    /// Detaches the program from every interface it was attached to; the
    /// interfaces. Dropping the `Dataplane` detaches too: this one can be
    /// called while others still hold the balancer, and reports failures.
    pub fn detach_all(&mut self) -> anyhow::Result<Vec<String>> {
        let prog: &mut Xdp = self.ebpf.program_mut(lb_common::PROGRAM_NAME).expect("loaded").try_into()?;
        let mut done = Vec::new();
        let mut failed = Vec::new();
        for (iface, link) in self.links.drain(..) {
            let result = match link {
                Link::Aya(link) => prog.detach(link).map_err(anyhow::Error::from),
                Link::Pinned => {
                    let dir = &self.pins.as_ref().expect("pinned links come with pins").dir;
                    sys::obj_get(&pins::link_pin(dir, &iface))
                        .and_then(|l| sys::link_detach(std::os::fd::AsFd::as_fd(&l)))
                        .map_err(anyhow::Error::from)
                }
            };
            match result {
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

    /// Pinned: takes over the pinned link of `iface` (its program replaced
    /// atomically by this one), or attaches a new link and pins it.
    fn attach_pinned(&mut self, iface: &str, mode: XdpModeConfig) -> anyhow::Result<&'static str> {
        use std::os::fd::AsFd as _;
        let prog = self.program().fd().context("the program is not loaded")?.as_fd().try_clone_to_owned()?;
        let plan = self.pins.as_mut().expect("checked by the caller");
        if let Some(link) = plan.links.remove(iface) {
            let (old_id, _) = sys::link_prog_ifindex(link.as_fd()).context("reading the pinned link")?;
            let old_tag = sys::prog_tag_by_id(old_id).ok();
            let (_, new_tag) = sys::prog_id_tag(prog.as_fd())?;
            sys::link_update(link.as_fd(), prog.as_fd())
                .with_context(|| format!("replacing the program of the pinned XDP link on {iface}"))?;
            let how = if old_tag == Some(new_tag) { "same program" } else { "program changed" };
            log::info!(
                "took over the pinned XDP link on {iface}: program replaced atomically ({how}, tag {})",
                hex(&new_tag)
            );
            let name = match plan.previous.as_ref().and_then(|s| s.modes.get(iface)).map(String::as_str) {
                Some("native") => "native",
                Some("generic") => "generic",
                _ => "pinned",
            };
            self.links.push((iface.to_string(), Link::Pinned));
            self.attached.insert(iface.to_string(), name);
            return Ok(name);
        }
        let ifindex = sys::ifindex(iface)
            .with_context(|| format!("attaching XDP to {iface}: no such interface in this network namespace"))?;
        let mut last = None;
        for (flags, name) in modes_to_try(mode, sys::XDP_FLAGS_DRV_MODE, sys::XDP_FLAGS_SKB_MODE) {
            match sys::xdp_link_create(prog.as_fd(), ifindex, flags) {
                Ok(link) => {
                    let path = pins::link_pin(&plan.dir, iface);
                    if let Err(e) = sys::obj_pin(link.as_fd(), &path) {
                        let _ = sys::link_detach(link.as_fd());
                        return Err(anyhow::Error::new(e).context(format!("pinning {}", path.display())));
                    }
                    self.links.push((iface.to_string(), Link::Pinned));
                    self.attached.insert(iface.to_string(), name);
                    return Ok(name);
                }
                Err(e) => last = Some((name, e)),
            }
        }
        let (name, e) = last.expect("at least one mode tried");
        let hint = match mode {
            XdpModeConfig::Native => "; the driver may lack native XDP: try xdp_mode = \"generic\"",
            _ => "; is another XDP program attached to it?",
        };
        Err(anyhow::Error::new(e)).context(format!("attaching XDP to {iface} in {name} mode failed{hint}"))
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
        let value = VIP_ADDR_F_KNOWN
            | if ping { VIP_ADDR_F_PING } else { 0 }
            | if self.closed_drop { VIP_ADDR_F_CLOSED_DROP } else { 0 };
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
        let (word, value) = self.vip_port_word(port);
        let mut m: Array<&mut MapData, u64> = Array::try_from(self.map_mut(maps::VIP_PORTS))?;
        m.set(word, value, 0).context("writing VIP_PORTS")
    }

    /// The `VIP_PORTS` word holding `port` (host order): the services' ports, or every port
    /// while `closed_ports = "drop"` (packets to any port of a VIP address must reach the VIP
    /// path to be refused; the not-VIP path stays free of any check while it is off).
    fn vip_port_word(&self, port: u16) -> (u32, u64) {
        let (word, value) = port_word(self.book.services.values().map(|(k, _)| u16::from_be(k.port)), port);
        (word, if self.closed_drop { u64::MAX } else { value })
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

    /// Writes a round_robin sequence or least_conn list into `SCHED_SLOTS` at `offset`
    /// (a half of the service's region that its entry does not name yet).
    pub fn write_sched(&mut self, offset: u32, list: &[u32]) -> anyhow::Result<()> {
        if list.len() > SCHED_HALF as usize {
            bail!("scheduler list of {} entries is longer than {SCHED_HALF}", list.len());
        }
        let mut m: Array<&mut MapData, u32> = Array::try_from(self.map_mut(maps::SCHED_SLOTS))?;
        for (i, &v) in list.iter().enumerate() {
            m.set(offset + i as u32, v, 0).context("writing SCHED_SLOTS")?;
        }
        Ok(())
    }

    /// The services and backends the previous daemon left in the maps this
    /// one took over (empty when they were not reused). The NAT sources are
    /// taken into the book, so that a source keeps the backend it names.
    pub fn adopted_tables(&mut self) -> anyhow::Result<Adopted> {
        let mut out = Adopted::default();
        let Some(plan) = &self.pins else { return Ok(out) };
        if plan.previous.is_none() {
            return Ok(out);
        }
        let (services, backends, sources) =
            (plan.reused(maps::SERVICES), plan.reused(maps::BACKENDS), plan.reused(maps::NAT_SOURCES));
        if services {
            let m: HashMap<&MapData, VipKey, Service> = HashMap::try_from(self.map(maps::SERVICES))?;
            out.services = m.iter().filter_map(Result::ok).collect();
        }
        if backends {
            let m: Array<&MapData, Backend> = Array::try_from(self.map(maps::BACKENDS))?;
            out.backends =
                (0..m.len()).filter_map(|i| Some((i, m.get(&i, 0).ok()?))).filter(|(_, b)| b.port != 0).collect();
        }
        if sources {
            let m: HashMap<&MapData, VipKey, NatSource> = HashMap::try_from(self.map(maps::NAT_SOURCES))?;
            self.book.sources = m.iter().filter_map(Result::ok).collect();
        }
        Ok(out)
    }

    /// After the first tables of a daemon that took over pinned maps:
    /// removes what the previous daemon wrote and this one's config does not
    /// have (services, VIP addresses, NAT sources, port bits, backends), in
    /// that order. Returns how many entries went.
    pub fn prune_stale(&mut self) -> anyhow::Result<usize> {
        let mut gone = 0;
        let live: Vec<VipKey> = self.book.services.values().map(|(k, _)| *k).collect();
        let mut m: HashMap<&mut MapData, VipKey, Service> = HashMap::try_from(self.map_mut(maps::SERVICES))?;
        let stale: Vec<VipKey> = m.keys().filter_map(Result::ok).filter(|k| !live.contains(k)).collect();
        for k in &stale {
            m.remove(k).context("removing from SERVICES")?;
        }
        gone += stale.len();
        let mut a: HashMap<&mut MapData, VipAddrKey, u32> = HashMap::try_from(self.map_mut(maps::VIP_ADDRS))?;
        let stale: Vec<VipAddrKey> = a
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !live.iter().any(|l| l.addr == k.addr && l.family == k.family))
            .collect();
        for k in &stale {
            a.remove(k).context("removing from VIP_ADDRS")?;
        }
        gone += stale.len();
        let unwanted: Vec<VipKey> = self.book.sources.keys().filter(|k| self.book.want(k).is_none()).copied().collect();
        for k in unwanted {
            self.sync_nat_source(k)?;
            gone += 1;
        }
        let sources: Vec<VipKey> = self.book.sources.keys().copied().collect();
        let mut n: HashMap<&mut MapData, VipKey, NatSource> = HashMap::try_from(self.map_mut(maps::NAT_SOURCES))?;
        let stale: Vec<VipKey> = n.keys().filter_map(Result::ok).filter(|k| !sources.contains(k)).collect();
        for k in &stale {
            n.remove(k).context("removing from NAT_SOURCES")?;
        }
        gone += stale.len();
        for w in 0..lb_common::VIP_PORT_WORDS {
            let (word, value) = self.vip_port_word((w * 64) as u16);
            let mut m: Array<&mut MapData, u64> = Array::try_from(self.map_mut(maps::VIP_PORTS))?;
            if m.get(&word, 0)? != value {
                m.set(word, value, 0).context("writing VIP_PORTS")?;
                gone += 1;
            }
            let (word, value) = self.book.reply_port_word((w * 64) as u16);
            let mut m: Array<&mut MapData, u64> = Array::try_from(self.map_mut(maps::REPLY_PORTS))?;
            if m.get(&word, 0)? != value {
                m.set(word, value, 0).context("writing REPLY_PORTS")?;
                gone += 1;
            }
        }
        let m: Array<&MapData, Backend> = Array::try_from(self.map(maps::BACKENDS))?;
        let stale: Vec<u32> = (0..m.len())
            .filter(|i| !self.book.backends.contains_key(i) && m.get(i, 0).is_ok_and(|b| b != Backend::default()))
            .collect();
        for slot in stale {
            self.write_backend(slot)?;
            gone += 1;
        }
        Ok(gone)
    }

    /// One `RING` slot, read through the syscall (for tests and checks).
    pub fn read_ring_slot(&self, i: u32) -> anyhow::Result<u32> {
        let m: Array<&MapData, u32> = Array::try_from(self.map(maps::RING))?;
        Ok(m.get(&i, 0)?)
    }

    /// `[daemon] closed_ports`: every VIP address's `VIP_ADDR_F_CLOSED_DROP`, then the
    /// `SETTINGS` bit that makes the program look (cleared first when turned off).
    pub fn set_closed_drop(&mut self, drop: bool) -> anyhow::Result<()> {
        if drop == self.closed_drop && !drop {
            return Ok(());
        }
        // On: the address flags, the setting, then every port bit. Off: the reverse.
        if !drop {
            self.closed_drop = false;
            self.write_vip_ports()?;
            self.write_firewall_setting(0)?;
        }
        self.closed_drop = drop;
        let keys: Vec<VipKey> = self.book.services.values().map(|(k, _)| *k).collect();
        for k in &keys {
            self.sync_vip_addr(k)?;
        }
        if drop {
            self.write_firewall_setting(FIREWALL_F_CLOSED_DROP)?;
            self.write_vip_ports()?;
        }
        Ok(())
    }

    /// Every `VIP_PORTS` word.
    fn write_vip_ports(&mut self) -> anyhow::Result<()> {
        for w in 0..lb_common::VIP_PORT_WORDS {
            let (word, value) = self.vip_port_word((w * 64) as u16);
            let mut m: Array<&mut MapData, u64> = Array::try_from(self.map_mut(maps::VIP_PORTS))?;
            m.set(word, value, 0).context("writing VIP_PORTS")?;
        }
        Ok(())
    }

    fn write_firewall_setting(&mut self, value: u32) -> anyhow::Result<()> {
        let mut m: Array<&mut MapData, u32> = Array::try_from(self.map_mut(maps::SETTINGS))?;
        if m.len() <= SETTING_FIREWALL {
            // An object from before the firewall (a benchmark's baseline).
            return Ok(());
        }
        m.set(SETTING_FIREWALL, value, 0).context("writing SETTINGS")
    }

    /// The source rules held now (read from the map the first time: a pinned one may hold a
    /// previous daemon's).
    fn rules_book(&mut self) -> anyhow::Result<&mut std::collections::HashMap<RuleId, u32>> {
        if self.rules.is_none() {
            let mut book = std::collections::HashMap::new();
            if let Some(map) = self.ebpf.map(maps::SOURCE_RULES) {
                let m: LpmTrie<&MapData, SourceRuleKey, u32> = LpmTrie::try_from(map)?;
                for entry in m.iter() {
                    let (k, v) = entry.context("reading SOURCE_RULES")?;
                    book.insert((k.prefix_len(), k.data()), v);
                }
            }
            self.rules = Some(book);
        }
        Ok(self.rules.as_mut().expect("filled above"))
    }

    /// Writes the rules of `want` that `SOURCE_RULES` lacks or holds otherwise; with
    /// `prune`, then removes those `want` does not have.
    pub fn sync_source_rules(
        &mut self,
        want: &std::collections::HashMap<RuleId, u32>,
        prune: bool,
    ) -> anyhow::Result<()> {
        let book = self.rules_book()?.clone();
        let add: Vec<(RuleId, u32)> =
            want.iter().filter(|(k, v)| book.get(*k) != Some(*v)).map(|(k, v)| (*k, *v)).collect();
        let gone: Vec<RuleId> =
            if prune { book.keys().filter(|k| !want.contains_key(*k)).copied().collect() } else { Vec::new() };
        if add.is_empty() && gone.is_empty() {
            return Ok(());
        }
        let Some(map) = self.ebpf.map_mut(maps::SOURCE_RULES) else {
            bail!("this XDP object has no {} map: allow, deny and [daemon] deny need a newer one", maps::SOURCE_RULES);
        };
        let mut m: LpmTrie<&mut MapData, SourceRuleKey, u32> = LpmTrie::try_from(map)?;
        for ((len, data), v) in &add {
            m.insert(&LpmKey::new(*len, *data), *v, 0).context("writing SOURCE_RULES (at most 65536 rules)")?;
        }
        for (len, data) in &gone {
            m.remove(&LpmKey::new(*len, *data)).context("removing from SOURCE_RULES")?;
        }
        let book = self.rules.as_mut().expect("read above");
        for (k, v) in add {
            book.insert(k, v);
        }
        for k in gone {
            book.remove(&k);
        }
        Ok(())
    }

    pub fn set_flags(&mut self, flags: u32) -> anyhow::Result<()> {
        let mut m: Array<&mut MapData, u32> = Array::try_from(self.map_mut(maps::SETTINGS))?;
        m.set(SETTING_FLAGS, flags, 0).context("writing SETTINGS")
    }

    /// The conntrack guard's threshold (`SETTINGS[SETTING_GUARD]`): new flows per second per
    /// CPU above which new flows are forwarded without a conntrack entry; 0: off.
    pub fn set_guard_rate(&mut self, rate: u32) -> anyhow::Result<()> {
        let mut m: Array<&mut MapData, u32> = Array::try_from(self.map_mut(maps::SETTINGS))?;
        m.set(lb_common::SETTING_GUARD, rate, 0).context("writing SETTINGS")?;
        if rate == 0 {
            // Off: a NAT reply without an entry is again the kernel's (until
            // a full bucket evicts an open flow's entry).
            m.set(lb_common::SETTING_UNTRACKED_SEEN, 0, 0).context("writing SETTINGS")?;
        }
        Ok(())
    }

    /// Whether some CPU's conntrack guard refused to track a new flow in a window that began
    /// less than two windows ago (`NEW_FLOW_WINDOW` against `SETTINGS[SETTING_GUARD]`).
    pub fn guard_active(&self) -> anyhow::Result<bool> {
        let settings: Array<&MapData, u32> = Array::try_from(self.map(maps::SETTINGS))?;
        let rate = u64::from(settings.get(&lb_common::SETTING_GUARD, 0)?);
        if rate == 0 {
            return Ok(false);
        }
        let m: PerCpuArray<&MapData, lb_common::NewFlowWindow> =
            PerCpuArray::try_from(self.map(maps::NEW_FLOW_WINDOW))?;
        let now = sweep::now_ticks();
        let recent = 2 * lb_common::GUARD_WINDOW_TICKS;
        Ok(m.get(&0, 0)?.iter().any(|w| w.flows > rate && now.wrapping_sub(w.start_tick) < recent))
    }

    /// Writes the GUE port (`SETTINGS[SETTING_GUE_PORT]`) and the outer source
    /// prefixes (`ENCAP_SOURCES`; `None`: all zero, such packets are dropped). An
    /// object without `ENCAP_SOURCES` (built before ipip/gue) is left alone.
    pub fn set_encap(&mut self, gue_port: u16, v4: Option<EncapSource>, v6: Option<EncapSource>) -> anyhow::Result<()> {
        let mut m: Array<&mut MapData, u32> = Array::try_from(self.map_mut(maps::SETTINGS))?;
        if m.len() > SETTING_GUE_PORT {
            m.set(SETTING_GUE_PORT, u32::from(gue_port.to_be()), 0).context("writing SETTINGS")?;
        }
        let Some(map) = self.ebpf.map_mut(maps::ENCAP_SOURCES) else { return Ok(()) };
        let mut m: Array<&mut MapData, lb_common::EncapSource> = Array::try_from(map)?;
        for (i, src) in [(ENCAP_SOURCE_V4, v4), (ENCAP_SOURCE_V6, v6)] {
            m.set(i, src.map(encap_source_entry).unwrap_or_default(), 0).context("writing ENCAP_SOURCES")?;
        }
        Ok(())
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

    /// Sets every CPU's echo-reply token bucket (`PING_BUCKET`) to `bucket`: the
    /// differential fuzzer makes the rate limit's outcome known before a frame runs.
    pub fn set_ping_bucket(&mut self, bucket: lb_common::TokenBucket) -> anyhow::Result<()> {
        let mut m: PerCpuArray<&mut MapData, lb_common::TokenBucket> =
            PerCpuArray::try_from(self.map_mut(maps::PING_BUCKET))?;
        let n = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        m.set(0, aya::maps::PerCpuValues::try_from(vec![bucket; n])?, 0).context("writing PING_BUCKET")
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
        if let Some(c) = &self.conns {
            c.set(slot, 0);
        }
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
            non_syn: a.non_syn + s.non_syn,
            denied: a.denied + s.denied,
            rate_limited: a.rate_limited + s.rate_limited,
        }))
    }

    /// The conntrack table, mapped (an error for an object whose table is a hash map).
    pub fn conntrack(&self) -> anyhow::Result<&ct_table::CtTable> {
        self.ct.as_deref().context("the XDP object's CONNTRACK is not an mmapable array (an older build)")
    }

    /// Entries in the conntrack table (reads every slot: for status, not hot paths).
    pub fn conntrack_len(&self) -> anyhow::Result<usize> {
        Ok(self.conntrack()?.len() as usize)
    }

    /// Removes every conntrack entry; returns how many there were. For tests
    /// and the differential fuzzer, which start from a known table.
    pub fn clear_conntrack(&mut self) -> anyhow::Result<usize> {
        Ok(self.conntrack()?.clear())
    }

    /// `BACKEND_CONNS`, shared with the sweeper; `None` for an object without it.
    pub fn conns(&self) -> Option<std::sync::Arc<conns::ConnsMem>> {
        self.conns.clone()
    }

    /// Active connections of backend slot `slot` (0 without `BACKEND_CONNS`).
    pub fn active_connections(&self, slot: u32) -> u64 {
        self.conns.as_ref().map_or(0, |c| c.get(slot))
    }

    /// Writes `CONNTRACK_TIMEOUTS` (ticks by `ct::SYN` .. `ct::UDP`). A no-op
    /// for an object without it.
    pub fn set_conntrack_timeouts(&mut self, ticks: [u32; lb_common::ct::NUM_TIMEOUTS as usize]) -> anyhow::Result<()> {
        let Some(map) = self.ebpf.map_mut(maps::CONNTRACK_TIMEOUTS) else { return Ok(()) };
        let mut m: Array<&mut MapData, u32> = Array::try_from(map)?;
        for (i, t) in ticks.into_iter().enumerate() {
            m.set(i as u32, t, 0).context("writing CONNTRACK_TIMEOUTS")?;
        }
        self.tick_conntrack_clock()
    }

    /// Advances the conntrack clock (`SETTINGS[SETTING_CT_CLOCK]`) to now.
    pub fn tick_conntrack_clock(&mut self) -> anyhow::Result<()> {
        let mut m: Array<&mut MapData, u32> = Array::try_from(self.map_mut(maps::SETTINGS))?;
        m.set(lb_common::SETTING_CT_CLOCK, sweep::now_ticks(), 0).context("writing SETTINGS")
    }

    /// A descriptor of `SETTINGS`, for the clock task (which writes outside the balancer's lock).
    pub fn settings_fd(&self) -> anyhow::Result<std::os::fd::OwnedFd> {
        use std::os::fd::AsFd as _;
        let aya::maps::Map::Array(m) = self.map(maps::SETTINGS) else {
            bail!("{} is not an array", maps::SETTINGS);
        };
        m.fd().as_fd().try_clone_to_owned().context("duplicating the SETTINGS map descriptor")
    }

    /// The conntrack table and its slot count, shared, so that its entries
    /// can be counted and swept without holding the balancer (see
    /// `conntrack_count`, `sweep`).
    pub fn conntrack_table(&self) -> anyhow::Result<(std::sync::Arc<ct_table::CtTable>, u32)> {
        let t = self.ct.clone().context("the XDP object's CONNTRACK is not an mmapable array (an older build)")?;
        let slots = t.slots() as u32;
        Ok((t, slots))
    }
}

/// Entries found in maps taken over from a previous daemon.
#[derive(Clone, Debug, Default)]
pub struct Adopted {
    pub services: Vec<(VipKey, Service)>,
    /// Slot and entry of every backend in use.
    pub backends: Vec<(u32, Backend)>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The attach modes `mode` allows, in the order to try them (`auto`: native,
/// then generic), each as `native` or `generic` says it (aya's mode or the
/// raw link flags) and by name.
fn modes_to_try<T: Copy>(mode: XdpModeConfig, native: T, generic: T) -> impl Iterator<Item = (T, &'static str)> {
    let (n, g) = ((native, "native"), (generic, "generic"));
    let order = match mode {
        XdpModeConfig::Native => [Some(n), None],
        XdpModeConfig::Generic => [Some(g), None],
        XdpModeConfig::Auto => [Some(n), Some(g)],
    };
    order.into_iter().flatten()
}

/// Attaches `prog` to `iface` in the modes `mode` allows (`auto`: native,
/// then generic): the link and the mode's name, or the last mode tried and
/// why it failed.
pub(crate) fn attach_in_mode(
    prog: &mut Xdp,
    iface: &str,
    mode: XdpModeConfig,
) -> Result<(XdpLinkId, &'static str), (&'static str, aya::programs::ProgramError)> {
    let mut last = None;
    for (m, name) in modes_to_try(mode, XdpMode::Driver, XdpMode::Skb) {
        match prog.attach(iface, m) {
            Ok(link) => return Ok((link, name)),
            Err(e) => last = Some((name, e)),
        }
    }
    Err(last.expect("at least one mode tried"))
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; raise it so large
/// conntrack maps load there too (a no-op on newer kernels).
pub(crate) fn raise_memlock_limit() {
    let rlim = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: plain syscall with a valid pointer.
    let ret = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) };
    if ret != 0 {
        log::debug!("could not raise RLIMIT_MEMLOCK: {}", std::io::Error::last_os_error());
    }
}
