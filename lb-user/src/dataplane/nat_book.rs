//! The loader's book of what it wrote to the service and backend maps, and
//! the NAT reply state that follows from it.

use std::collections::{BTreeMap, HashMap as StdHashMap};

use lb_common::{reply_port_bit, Backend, NatSource, VipKey, BACKEND_F_SHARED, NAT_SOURCE_F_SHARED, SERVICE_F_DSR};

/// The loader's copy of the services and backends it wrote, from which the
/// NAT reply maps follow: a NAT backend (address, port, protocol) that serves
/// one service names that service's VIP in `NAT_SOURCES`; one that serves
/// several is `BACKEND_F_SHARED` (its flows keep reverse entries).
#[derive(Default)]
pub(super) struct NatBook {
    /// Slot -> entry as the planner wrote it (without `BACKEND_F_SHARED`).
    pub(super) backends: BTreeMap<u32, Backend>,
    /// Service id -> its VIP key and flags.
    pub(super) services: BTreeMap<u32, (VipKey, u32)>,
    /// `NAT_SOURCES` as written.
    pub(super) sources: StdHashMap<VipKey, NatSource>,
}

impl NatBook {
    /// The `NAT_SOURCES` key of a backend of a known NAT service.
    pub(super) fn key_of(&self, be: &Backend) -> Option<VipKey> {
        let (vip, flags) = self.services.get(&be.service)?;
        (be.port != 0 && flags & SERVICE_F_DSR == 0).then_some(VipKey {
            addr: be.addr,
            port: be.port,
            proto: vip.proto,
            family: be.family,
        })
    }

    pub(super) fn slots_of_service(&self, id: u32) -> Vec<u32> {
        self.backends.iter().filter(|(_, b)| b.service == id).map(|(s, _)| *s).collect()
    }

    pub(super) fn keys_of_service(&self, id: u32) -> Vec<VipKey> {
        let mut keys: Vec<VipKey> =
            self.slots_of_service(id).iter().filter_map(|s| self.key_of(&self.backends[s])).collect();
        keys.dedup();
        keys
    }

    /// Slots whose NAT source is `key`, lowest first.
    pub(super) fn members(&self, key: &VipKey) -> Vec<u32> {
        self.backends.iter().filter(|(_, b)| self.key_of(b).as_ref() == Some(key)).map(|(s, _)| *s).collect()
    }

    /// What `NAT_SOURCES[key]` should hold. A source that becomes shared
    /// keeps the service it had: its flows made before have no reverse entry.
    pub(super) fn want(&self, key: &VipKey) -> Option<NatSource> {
        let members = self.members(key);
        let shared = members.len() > 1;
        let prev = self.sources.get(key).filter(|p| members.contains(&p.backend));
        let slot = prev.map_or(*members.first()?, |p| p.backend);
        let (vip, _) = self.services[&self.backends[&slot].service];
        Some(NatSource {
            vip: vip.addr,
            vip_port: vip.port,
            _pad: 0,
            backend: slot,
            flags: if shared { NAT_SOURCE_F_SHARED } else { 0 },
        })
    }

    /// `BACKENDS[slot]` as the program needs it.
    pub(super) fn entry(&self, slot: u32) -> Backend {
        let Some(be) = self.backends.get(&slot) else {
            return Backend::default();
        };
        let shared =
            self.key_of(be).and_then(|k| self.sources.get(&k)).is_some_and(|s| s.flags & NAT_SOURCE_F_SHARED != 0);
        Backend { flags: be.flags | if shared { BACKEND_F_SHARED } else { 0 }, ..*be }
    }

    /// The `REPLY_PORTS` word holding `port` (host order), from the sources written.
    pub(super) fn reply_port_word(&self, port: u16) -> (u32, u64) {
        port_word(self.sources.keys().map(|k| u16::from_be(k.port)), port)
    }
}

/// Index and value of the port-bitmap word holding `port`, with the bits of
/// `ports` (all host order).
pub(super) fn port_word(ports: impl Iterator<Item = u16>, port: u16) -> (u32, u64) {
    let (word, _) = reply_port_bit(port);
    let value = ports.map(reply_port_bit).filter(|&(w, _)| w == word).fold(0, |acc, (_, bit)| acc | bit);
    (word, value)
}

#[cfg(test)]
mod tests {
    use lb_common::{addr_v4, FAMILY_V4, PROTO_TCP};

    use super::*;

    fn vip(last: u8, port: u16) -> VipKey {
        VipKey { addr: addr_v4([198, 18, 0, last]), port: port.to_be(), proto: PROTO_TCP, family: FAMILY_V4 }
    }

    fn backend(service: u32, last: u8, port: u16) -> Backend {
        Backend {
            addr: addr_v4([198, 18, 1, last]),
            port: port.to_be(),
            family: FAMILY_V4,
            service,
            flags: lb_common::BACKEND_F_UP,
            ..Backend::default()
        }
    }

    /// Keeps `book.sources` as `Dataplane::sync_nat_source` would.
    fn sync(book: &mut NatBook) {
        let keys: Vec<VipKey> =
            book.backends.values().filter_map(|b| book.key_of(b)).chain(book.sources.keys().copied()).collect();
        for k in keys {
            match book.want(&k) {
                Some(s) => book.sources.insert(k, s),
                None => book.sources.remove(&k),
            };
        }
    }

    #[test]
    fn port_word_sets_the_bits_of_the_ports_in_that_word_only() {
        // 80 and 127 share word 1 (ports 64..128); 443 is in word 6.
        let ports = [80u16, 127, 443];
        assert_eq!(port_word(ports.into_iter(), 80), (1, 1 << 16 | 1 << 63));
        assert_eq!(port_word(ports.into_iter(), 443), (6, 1 << 59));
        assert_eq!(port_word(ports.into_iter(), 22), (0, 0));
    }

    #[test]
    fn nat_sources_name_the_one_service_and_mark_shared_backends() {
        let mut book = NatBook::default();
        book.services.insert(1, (vip(30, 80), 0));
        book.services.insert(2, (vip(20, 80), SERVICE_F_DSR));
        book.backends.insert(10, backend(1, 11, 80));
        book.backends.insert(11, backend(2, 11, 80)); // same address, DSR: no NAT source
        sync(&mut book);
        let key = book.key_of(&book.backends[&10]).unwrap();
        assert_eq!(book.sources.len(), 1);
        assert_eq!(
            book.sources[&key],
            NatSource { vip: vip(30, 80).addr, vip_port: 80u16.to_be(), _pad: 0, backend: 10, flags: 0 }
        );
        assert_eq!(book.entry(10).flags, lb_common::BACKEND_F_UP);
        assert_eq!(book.reply_port_word(80), (1, 1 << 16));

        // A second NAT service on the same backend: shared, keeping the first service's VIP.
        book.services.insert(3, (vip(31, 80), 0));
        book.backends.insert(12, backend(3, 11, 80));
        sync(&mut book);
        assert_eq!(book.sources[&key].flags, NAT_SOURCE_F_SHARED);
        assert_eq!(book.sources[&key].backend, 10);
        for slot in [10, 12] {
            assert_eq!(book.entry(slot).flags, lb_common::BACKEND_F_UP | BACKEND_F_SHARED, "slot {slot}");
        }
        assert_eq!(book.entry(11).flags, lb_common::BACKEND_F_UP, "the DSR backend is not shared");

        // The first service's backend leaves: the other one owns the source alone.
        book.backends.remove(&10);
        sync(&mut book);
        assert_eq!(book.sources[&key].backend, 12);
        assert_eq!(book.sources[&key].vip, vip(31, 80).addr);
        assert_eq!(book.sources[&key].flags, 0);
        book.backends.remove(&12);
        sync(&mut book);
        assert!(book.sources.is_empty());
        assert_eq!(book.reply_port_word(80), (1, 0));
    }
}
