//! `xlb decap`'s data path: the `xlb_decap` program of the same object, which
//! strips ipip / gue headers of packets to its addresses (see lb-ebpf's
//! `decap.rs`). Loaded without pins: it lives as long as the command.

use std::net::IpAddr;

use anyhow::Context as _;
use aya::{
    maps::{HashMap, MapData, PerCpuArray},
    programs::{xdp::XdpLinkId, Xdp},
    Ebpf, EbpfLoader,
};
use lb_common::{decap, maps, DecapPort, VipAddrKey, FAMILY_V4, FAMILY_V6};

use crate::config::XdpModeConfig;

/// The loaded decapsulation program and its maps.
pub struct Decap {
    ebpf: Ebpf,
    link: Option<XdpLinkId>,
}

/// `DECAP_ADDRS` key of an address.
pub fn addr_key(a: IpAddr) -> VipAddrKey {
    match a {
        IpAddr::V4(a) => VipAddrKey { addr: lb_common::addr_v4(a.octets()), family: FAMILY_V4, _pad: [0; 3] },
        IpAddr::V6(a) => VipAddrKey { addr: lb_common::addr_v6(a.octets()), family: FAMILY_V6, _pad: [0; 3] },
    }
}

impl Decap {
    /// Loads `xlb_decap` from `object`, decapsulating at `addresses`; GUE to
    /// `gue_port` (0: ipip only). The balancer's big maps are made tiny: only
    /// the decapsulation's are used.
    pub fn load(object: &[u8], addresses: &[IpAddr], gue_port: u16) -> anyhow::Result<Self> {
        if addresses.is_empty() {
            anyhow::bail!("no addresses to decapsulate at; give at least one --address");
        }
        if addresses.len() > lb_common::MAX_DECAP_ADDRS as usize {
            anyhow::bail!("{} addresses; at most {} are supported", addresses.len(), lb_common::MAX_DECAP_ADDRS);
        }
        super::raise_memlock_limit();
        let mut loader = EbpfLoader::new();
        for name in [maps::CONNTRACK, maps::REVERSE_NAT, maps::RING] {
            loader.map_max_entries(name, 1);
        }
        let mut ebpf = loader.load(object).context("loading the XDP object into the kernel")?;
        let prog: &mut Xdp = ebpf
            .program_mut(lb_common::DECAP_PROGRAM_NAME)
            .context("the XDP object has no xlb_decap program (built before ipip/gue)")?
            .try_into()?;
        prog.load().context("the kernel refused the decapsulation program xlb_decap (verifier)")?;
        let map = ebpf.map_mut(maps::DECAP_ADDRS).context("the XDP object has no DECAP_ADDRS map")?;
        let mut addrs: HashMap<&mut MapData, VipAddrKey, DecapPort> = HashMap::try_from(map)?;
        for a in addresses {
            addrs
                .insert(addr_key(*a), DecapPort::from(gue_port), 0)
                .with_context(|| format!("writing DECAP_ADDRS[{a}]"))?;
        }
        Ok(Self { ebpf, link: None })
    }

    pub fn program(&self) -> &Xdp {
        self.ebpf
            .program(lb_common::DECAP_PROGRAM_NAME)
            .and_then(|p| <&Xdp>::try_from(p).ok())
            .expect("loaded in Decap::load")
    }

    /// Attaches to `iface` (auto: native, else generic); the mode used.
    pub fn attach(&mut self, iface: &str, mode: XdpModeConfig) -> anyhow::Result<&'static str> {
        let prog: &mut Xdp = self.ebpf.program_mut(lb_common::DECAP_PROGRAM_NAME).expect("loaded").try_into()?;
        let (link, name) = super::attach_in_mode(prog, iface, mode).map_err(|(name, e)| {
            anyhow::Error::new(e).context(format!(
                "attaching xlb_decap to {iface} in {name} mode failed; does the interface exist, and is another XDP program attached to it?"
            ))
        })?;
        self.link = Some(link);
        Ok(name)
    }

    /// Detaches (also done when dropped).
    pub fn detach(&mut self) -> anyhow::Result<()> {
        if let Some(link) = self.link.take() {
            let prog: &mut Xdp = self.ebpf.program_mut(lb_common::DECAP_PROGRAM_NAME).expect("loaded").try_into()?;
            prog.detach(link).context("detaching xlb_decap")?;
        }
        Ok(())
    }

    /// The counters, by name (`decap::NAMES`), summed over CPUs.
    pub fn counters(&self) -> anyhow::Result<Vec<(&'static str, u64)>> {
        let map = self.ebpf.map(maps::DECAP_COUNTERS).context("the XDP object has no DECAP_COUNTERS map")?;
        let m: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(map)?;
        decap::NAMES.iter().map(|&(i, name)| Ok((name, m.get(&i, 0)?.iter().sum()))).collect()
    }
}
