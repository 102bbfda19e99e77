//! `xlb trace`: sampled data-path decisions, live.
//!
//! The XDP program writes a `TraceEvent` to the `TRACE` ring buffer for one
//! decision in N while `SETTINGS[SETTING_TRACE]` holds N (0: off, the
//! default, which costs the data path one array read on VIP packets). The
//! daemon serves `trace N COUNT SECONDS` on its admin socket: it turns the
//! setting on, streams one line per event, and turns it off again however
//! the stream ends (count reached, time up, client gone, error).

use std::{
    collections::HashMap,
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{bail, Context as _};
use aya::maps::{MapData, RingBuf};
use lb_common::{counter, trace, TraceEvent, FAMILY_V4, PROTO_TCP, PROTO_UDP};
use tokio::{
    io::{unix::AsyncFd, AsyncWrite, AsyncWriteExt, Interest},
    time::Instant,
};

use crate::balancer::Balancer;

/// Longest trace one request may ask for.
pub const MAX_SECONDS: u64 = 3600;

/// What one `xlb trace` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// One decision in `sample` is reported (1: all).
    pub sample: u32,
    /// Stop after this many events.
    pub max_events: u64,
    /// Stop after this long.
    pub max_duration: Duration,
}

impl Limits {
    /// The admin request line for these limits.
    pub fn request(&self) -> String {
        format!("trace {} {} {}", self.sample, self.max_events, self.max_duration.as_secs())
    }

    /// Parses the arguments of `trace N COUNT SECONDS`.
    pub fn parse(args: &str) -> anyhow::Result<Self> {
        let v: Vec<&str> = args.split_whitespace().collect();
        let [sample, count, seconds] = v[..] else {
            bail!("usage: trace SAMPLE COUNT SECONDS (got {args:?})");
        };
        let num = |name: &str, s: &str| -> anyhow::Result<u64> {
            s.parse().with_context(|| format!("{name} must be a whole number, got {s:?}"))
        };
        let (sample, count, seconds) = (num("sample", sample)?, num("count", count)?, num("seconds", seconds)?);
        if sample == 0 || sample > u64::from(u32::MAX) {
            bail!("sample must be between 1 (every decision) and {}, got {sample}", u32::MAX);
        }
        if count == 0 {
            bail!("count must be at least 1");
        }
        if seconds == 0 || seconds > MAX_SECONDS {
            bail!("seconds must be between 1 and {MAX_SECONDS}, got {seconds}");
        }
        Ok(Self { sample: sample as u32, max_events: count, max_duration: Duration::from_secs(seconds) })
    }
}

/// Service and backend names as they were when the trace started.
#[derive(Default)]
struct Names {
    services: HashMap<u32, String>,
    /// Backend slot -> (its service's name, its address).
    backends: HashMap<u32, (String, SocketAddr)>,
}

impl Names {
    fn of(bal: &Balancer) -> Self {
        let mut n = Self::default();
        for s in &bal.services {
            n.services.insert(s.id, s.cfg.name.clone());
            for b in &s.backends {
                n.backends.insert(b.slot, (s.cfg.name.clone(), b.cfg.address));
            }
        }
        n
    }
}

/// A running trace: tracing is on and the ring buffer is lent out until it
/// is dropped, which turns tracing off and gives the ring back.
pub struct Session {
    bal: Arc<Mutex<Balancer>>,
    ring: Option<AsyncFd<RingBuf<MapData>>>,
    names: Names,
}

impl Session {
    /// Turns tracing on at one decision in `sample`. Fails if a trace is already running.
    pub fn start(bal: &Arc<Mutex<Balancer>>, sample: u32) -> anyhow::Result<Self> {
        let mut b = bal.lock().unwrap_or_else(|e| e.into_inner());
        let ring = b.dp.take_trace_ring().context("a trace is already running; try again when it ends")?;
        // SAFETY: the ring buffer owns its map's fd (and its mapping) until
        // `into_inner` gives it back; the fd never changes.
        let ring = match unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) } {
            Ok(r) => r,
            Err(e) => {
                let (ring, e) = e.into_parts();
                b.dp.return_trace_ring(ring);
                bail!("watching the trace ring buffer: {e}");
            }
        };
        if let Err(e) = b.dp.set_trace(sample) {
            b.dp.return_trace_ring(ring.into_inner());
            return Err(e);
        }
        let names = Names::of(&b);
        drop(b);
        log::info!("trace started: one decision in {sample}");
        // From here on, Drop turns tracing off and returns the ring.
        Ok(Self { bal: bal.clone(), ring: Some(ring), names })
    }

    /// Writes one line per event to `out` until `limits` are reached; the
    /// number of events written.
    pub async fn run(&mut self, limits: Limits, out: &mut (impl AsyncWrite + Unpin)) -> anyhow::Result<u64> {
        let deadline = Instant::now() + limits.max_duration;
        let mut written = 0;
        let mut first_ns = None;
        while written < limits.max_events {
            let fd = self.ring.as_mut().expect("ring held until drop");
            let Ok(guard) = tokio::time::timeout_at(deadline, fd.readable_mut()).await else {
                break;
            };
            let mut guard = guard.context("waiting for trace events")?;
            let mut lines = String::new();
            let ring = guard.get_inner_mut();
            while written < limits.max_events {
                let Some(item) = ring.next() else { break };
                if item.len() < std::mem::size_of::<TraceEvent>() {
                    continue;
                }
                // SAFETY: the program writes whole `TraceEvent`s; read unaligned from the ring.
                let ev: TraceEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
                drop(item);
                let start = *first_ns.get_or_insert(ev.ns);
                let _ = writeln!(lines, "{}", format_event(&ev, start, &self.names));
                written += 1;
            }
            guard.clear_ready();
            out.write_all(lines.as_bytes()).await?;
            out.flush().await?;
        }
        Ok(written)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let mut b = self.bal.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = b.dp.set_trace(0) {
            log::error!("turning tracing off failed: {e:#}");
        }
        if let Some(ring) = self.ring.take() {
            let mut ring = ring.into_inner();
            // Events written after the final read are not the next trace's.
            while ring.next().is_some() {}
            b.dp.return_trace_ring(ring);
        }
        log::info!("trace stopped");
    }
}

/// Enables tracing, streams events to `out` until `limits` are reached, and
/// always disables tracing at the end. The number of events written.
pub async fn stream(
    bal: &Arc<Mutex<Balancer>>,
    limits: Limits,
    out: &mut (impl AsyncWrite + Unpin),
) -> anyhow::Result<u64> {
    let mut session = Session::start(bal, limits.sample)?;
    session.run(limits, out).await
}

/// The admin socket's `trace N COUNT SECONDS`: `ok` and the event lines, or
/// `error` and why the trace could not start. An error after the start ends
/// the stream with an `error: ...` line.
pub async fn serve(args: &str, bal: &Arc<Mutex<Balancer>>, out: &mut (impl AsyncWrite + Unpin)) -> anyhow::Result<()> {
    let started = Limits::parse(args).and_then(|l| Ok((l, Session::start(bal, l.sample)?)));
    match started {
        Err(e) => out.write_all(format!("error\n{e:#}\n").as_bytes()).await?,
        Ok((limits, mut session)) => {
            out.write_all(b"ok\n").await?;
            out.flush().await?;
            if let Err(e) = session.run(limits, out).await {
                out.write_all(format!("error: {e:#}\n").as_bytes()).await?;
            }
        }
    }
    out.shutdown().await?;
    Ok(())
}

fn addr(words: [u32; 4], family: u8) -> IpAddr {
    if family == FAMILY_V4 {
        IpAddr::V4(Ipv4Addr::from(words[0].to_ne_bytes()))
    } else {
        let mut o = [0u8; 16];
        for (i, w) in words.iter().enumerate() {
            o[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
        }
        IpAddr::V6(Ipv6Addr::from(o))
    }
}

fn action_name(action: u32) -> &'static str {
    match action {
        0 => "aborted",
        1 => "drop",
        2 => "pass",
        3 => "tx",
        4 => "redirect",
        _ => "unknown",
    }
}

/// One line for one event, e.g.
/// `+0.000412s tcp 198.18.0.1:40000 -> 198.18.0.10:80 service=www conntrack=miss backend=198.18.1.11:80 action=redirect`.
pub fn format_event(ev: &TraceEvent, start_ns: u64, names: &impl NameLookup) -> String {
    let proto = match ev.proto {
        PROTO_TCP => "tcp".to_string(),
        PROTO_UDP => "udp".to_string(),
        lb_common::PROTO_ICMP => "icmp".to_string(),
        lb_common::PROTO_ICMPV6 => "icmpv6".to_string(),
        p => format!("proto-{p}"),
    };
    let (src, dst) = (addr(ev.src, ev.family), addr(ev.dst, ev.family));
    let t = ev.ns.saturating_sub(start_ns) as f64 / 1e9;
    let mut o = if (ev.kind == trace::DROP && ev.service == u32::MAX && ev.sport == 0 && ev.dport == 0)
        || ev.kind == trace::ICMP
    {
        // Refused while parsing: no ports known.
        format!("+{t:.6}s {proto} {src} -> {dst}")
    } else {
        let (s, d) = (SocketAddr::new(src, u16::from_be(ev.sport)), SocketAddr::new(dst, u16::from_be(ev.dport)));
        format!("+{t:.6}s {proto} {s} -> {d}")
    };
    let backend = names.backend(ev.backend);
    let service = names.service(ev.service).or_else(|| backend.as_ref().map(|(s, _)| s.clone()));
    if let Some(s) = service {
        let _ = write!(o, " service={s}");
    }
    let decision = match ev.kind {
        trace::HIT => "conntrack=hit",
        trace::MISS => "conntrack=miss",
        trace::REPICK => "conntrack=repick",
        trace::REPLY => "nat-reply",
        trace::DROP => "refused",
        trace::NON_SYN => "conntrack=non_syn",
        trace::ICMP => "icmp",
        trace::UNTRACKED => "conntrack=untracked",
        _ => "unknown",
    };
    let _ = write!(o, " {decision}");
    if let Some((_, a)) = backend {
        let _ = write!(o, " backend={a}");
    }
    let _ = write!(o, " action={}", action_name(ev.action));
    if let Some(reason) = counter::drop_name(ev.reason) {
        let _ = write!(o, " reason={reason}");
    }
    o
}

/// Names of services and backends by their ids in the maps.
pub trait NameLookup {
    fn service(&self, id: u32) -> Option<String>;
    /// (service name, address) of a backend slot.
    fn backend(&self, slot: u32) -> Option<(String, SocketAddr)>;
}

impl NameLookup for Names {
    fn service(&self, id: u32) -> Option<String> {
        self.services.get(&id).cloned()
    }
    fn backend(&self, slot: u32) -> Option<(String, SocketAddr)> {
        self.backends.get(&slot).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_common::{addr_v4, FAMILY_V4};

    struct Fixed;
    impl NameLookup for Fixed {
        fn service(&self, id: u32) -> Option<String> {
            (id == 3).then(|| "www".to_string())
        }
        fn backend(&self, slot: u32) -> Option<(String, SocketAddr)> {
            (slot == 7).then(|| ("www".to_string(), "198.18.1.11:8080".parse().unwrap()))
        }
    }

    fn event(kind: u8, service: u32, backend: u32, action: u32, reason: u32) -> TraceEvent {
        TraceEvent {
            ns: 2_000_500_000,
            src: addr_v4([198, 18, 0, 1]),
            dst: addr_v4([198, 18, 0, 10]),
            sport: 40000u16.to_be(),
            dport: 80u16.to_be(),
            proto: PROTO_TCP,
            family: FAMILY_V4,
            kind,
            _pad: 0,
            service,
            backend,
            action,
            reason,
        }
    }

    #[test]
    fn lines_name_flow_service_decision_backend_and_action() {
        let miss = format_event(&event(trace::MISS, 3, 7, 4, u32::MAX), 2_000_000_000, &Fixed);
        assert_eq!(
            miss,
            "+0.000500s tcp 198.18.0.1:40000 -> 198.18.0.10:80 service=www conntrack=miss backend=198.18.1.11:8080 action=redirect"
        );
        let reply = format_event(&event(trace::REPLY, u32::MAX, 7, 4, u32::MAX), 2_000_500_000, &Fixed);
        assert!(reply.contains(" service=www nat-reply backend=198.18.1.11:8080 action=redirect"), "{reply}");
        // Refused while parsing: the program knows no ports.
        let mut ev = event(trace::DROP, u32::MAX, u32::MAX, 1, counter::DROP_TRUNCATED);
        (ev.sport, ev.dport) = (0, 0);
        let refused = format_event(&ev, 0, &Fixed);
        assert!(refused.ends_with("tcp 198.18.0.1 -> 198.18.0.10 refused action=drop reason=truncated"), "{refused}");
        let non_syn = format_event(&event(trace::NON_SYN, 3, 7, 4, u32::MAX), 2_000_000_000, &Fixed);
        assert!(
            non_syn.contains(" service=www conntrack=non_syn backend=198.18.1.11:8080 action=redirect"),
            "{non_syn}"
        );
        let untracked = format_event(&event(trace::UNTRACKED, 3, 7, 4, u32::MAX), 2_000_000_000, &Fixed);
        assert!(
            untracked.contains(" service=www conntrack=untracked backend=198.18.1.11:8080 action=redirect"),
            "{untracked}"
        );
        let bad_source = format_event(&event(trace::DROP, u32::MAX, u32::MAX, 1, counter::DROP_BAD_SOURCE), 0, &Fixed);
        assert!(
            bad_source.ends_with("tcp 198.18.0.1:40000 -> 198.18.0.10:80 refused action=drop reason=bad_source"),
            "{bad_source}"
        );
        let mut ev = event(trace::DROP, u32::MAX, u32::MAX, 1, counter::DROP_BAD_FLAGS);
        (ev.sport, ev.dport) = (0, 0);
        let bad_flags = format_event(&ev, 0, &Fixed);
        assert!(
            bad_flags.ends_with("tcp 198.18.0.1 -> 198.18.0.10 refused action=drop reason=bad_flags"),
            "{bad_flags}"
        );
        let mut e = event(trace::DROP, u32::MAX, u32::MAX, 1, counter::DROP_ICMP_FRAGMENT);
        (e.proto, e.sport, e.dport) = (lb_common::PROTO_ICMP, 0, 0);
        let icmp_drop = format_event(&e, 0, &Fixed);
        assert!(
            icmp_drop.ends_with("icmp 198.18.0.1 -> 198.18.0.10 refused action=drop reason=icmp_fragment"),
            "{icmp_drop}"
        );
        let mut e = event(trace::ICMP, u32::MAX, 7, 4, u32::MAX);
        (e.proto, e.sport, e.dport) = (lb_common::PROTO_ICMP, 0, 0);
        let sent = format_event(&e, 0, &Fixed);
        assert!(
            sent.ends_with("icmp 198.18.0.1 -> 198.18.0.10 service=www icmp backend=198.18.1.11:8080 action=redirect"),
            "{sent}"
        );
    }

    #[test]
    fn requests_round_trip_and_bad_ones_say_why() {
        let l = Limits { sample: 10, max_events: 5, max_duration: Duration::from_secs(3) };
        assert_eq!(Limits::parse(l.request().strip_prefix("trace").unwrap()).unwrap(), l);
        for (args, want) in [
            ("0 5 3", "sample must be between 1"),
            ("1 0 3", "count must be at least 1"),
            ("1 5 0", "seconds must be between 1 and 3600"),
            ("1 x 3", "count must be a whole number"),
            ("1 5", "usage: trace SAMPLE COUNT SECONDS"),
        ] {
            let e = format!("{:#}", Limits::parse(args).unwrap_err());
            assert!(e.contains(want), "{args:?}: {e}");
        }
    }
}
