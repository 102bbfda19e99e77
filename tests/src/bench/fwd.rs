//! Packets per second forwarded by the lb, driven by an XDP traffic generator.
//!
//! Method: `xlb_bench_gen` (lb-ebpf/src/bench_gen.rs) runs with
//! BPF_PROG_TEST_RUN in XDP live-frames mode in the client namespace: the
//! kernel hands it a copy of one UDP frame per iteration (ctx_in: an
//! `xdp_md` with data_end = frame length and ingress_ifindex = the client's
//! `eth0`), the program gives each frame the next of `flows` source ports
//! and returns XDP_TX, so the frame leaves the client's `eth0` towards the lb
//! at the rate one CPU can produce them. What the lb forwards out of its
//! `eth1` is counted and dropped by `xlb_bench_sink` on the switch's port
//! facing the lb (`p-lb`), which splits frames sent to the backends' subnet
//! from anything else. The rate is what reached the sink divided by the time
//! the generator ran.
//!
//! Without threaded NAPI on the interfaces involved, the whole chain runs on
//! the generator's CPU in lock-step: after each batch the kernel runs the
//! softirq work the batch caused (the lb's receive path, its transmit into
//! the next veth, the sink), so nothing is lost to queue overflows and the
//! generator thread's CPU time covers generator + lb + sink.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use aya::{
    maps::{Array, PerCpuArray},
    programs::{
        xdp::{XdpLinkId, XdpMode},
        TestRun, TestRunAttrs, TestRunOptions, Xdp,
    },
    Ebpf, EbpfLoader,
};
use lb_common::maps;

use crate::{bench::cpu::thread_cpu_ns, xdpbed::xdp_md, Netns};

const GEN: &str = "xlb_bench_gen";
const SINK: &str = "xlb_bench_sink";
/// Length of the generator's frames (lb-ebpf/src/bench_gen.rs).
pub const FRAME_LEN: usize = 64;
/// Frames per batch in live-frames mode (the kernel's default is 64).
const BATCH: u32 = 64;

/// The generator and the sink, loaded from the object embedded in xlb.
pub struct Generator {
    ebpf: Ebpf,
}

impl Generator {
    pub fn load() -> Result<Generator> {
        // The object's xlb maps are created too (never used here): keep them small.
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(maps::CONNTRACK, 1024)
            .map_max_entries(maps::REVERSE_NAT, 1024)
            .load(xlb::dataplane::object()?)
            .context("loading the XDP object for the generator")?;
        for name in [GEN, SINK] {
            let p: &mut Xdp =
                ebpf.program_mut(name).with_context(|| format!("no program {name} in the object"))?.try_into()?;
            p.load().with_context(|| format!("loading {name}"))?;
        }
        Ok(Generator { ebpf })
    }

    /// Every generated frame starts as `frame` ([`FRAME_LEN`] bytes:
    /// Ethernet, IPv4 without options, UDP with checksum 0).
    pub fn set_frame(&mut self, frame: &[u8]) -> Result<()> {
        let frame: [u8; FRAME_LEN] = frame
            .try_into()
            .map_err(|_| anyhow::anyhow!("the generator's frame must be {FRAME_LEN} bytes, not {}", frame.len()))?;
        let mut m: Array<_, [u8; FRAME_LEN]> =
            Array::try_from(self.ebpf.map_mut("BENCH_GEN_FRAME").context("no BENCH_GEN_FRAME")?)?;
        m.set(0, frame, 0)?;
        Ok(())
    }

    /// Frames get source ports `first_port .. first_port + flows`.
    pub fn set_flows(&mut self, flows: u32, first_port: u16) -> Result<()> {
        let mut conf: Array<_, u32> =
            Array::try_from(self.ebpf.map_mut("BENCH_GEN_CONF").context("no BENCH_GEN_CONF")?)?;
        conf.set(0, flows, 0)?;
        conf.set(1, u32::from(first_port), 0)?;
        Ok(())
    }

    /// Attaches the sink (native mode) to `iface` in `ns`; detached by
    /// [`Generator::detach_sink`] or when the generator is dropped.
    pub fn attach_sink(&mut self, ns: &Netns, iface: &str) -> Result<XdpLinkId> {
        let prog: &mut Xdp = self.ebpf.program_mut(SINK).context("no sink")?.try_into()?;
        ns.run_in(|| prog.attach(iface, XdpMode::Driver))?
            .with_context(|| format!("attaching {SINK} to {iface} in {}", ns.name()))
    }

    pub fn detach_sink(&mut self, link: XdpLinkId) -> Result<()> {
        let prog: &mut Xdp = self.ebpf.program_mut(SINK).context("no sink")?.try_into()?;
        prog.detach(link).context("detaching the sink")
    }

    /// Frames the sink has counted: (to the backends' subnet, other).
    pub fn sink_counts(&self) -> Result<(u64, u64)> {
        let sink: PerCpuArray<_, u64> = PerCpuArray::try_from(self.ebpf.map("BENCH_SINK").context("no BENCH_SINK")?)?;
        let sum = |i: u32| -> Result<u64> { Ok(sink.get(&i, 0)?.iter().sum()) };
        Ok((sum(0)?, sum(1)?))
    }

    /// Sends `frames` generated frames out of `iface` in `ns`; returns how
    /// long the generator ran and the CPU time of its thread.
    pub fn send(&self, ns: &Netns, iface: &str, frames: u32) -> Result<(Duration, Duration)> {
        let prog: &Xdp = self.ebpf.program(GEN).context("no generator")?.try_into()?;
        let ifindex = ns.ifindex(iface)?;
        let frame = [0u8; FRAME_LEN];
        let ctx = xdp_md(frame.len(), ifindex);
        // In live-frames mode the kernel reports no return value: the sink's
        // counters show what was sent.
        ns.run_in(|| -> Result<(Duration, Duration)> {
            let (started, cpu0) = (Instant::now(), thread_cpu_ns());
            prog.test_run(TestRunOptions {
                data_in: Some(&frame),
                ctx_in: Some(&ctx),
                repeat: frames,
                attrs: TestRunAttrs::new().xdp_live_frames(BATCH),
                ..Default::default()
            })
            .context("BPF_PROG_TEST_RUN in live-frames mode")?;
            let cpu = Duration::from_nanos(thread_cpu_ns() - cpu0);
            Ok((started.elapsed(), cpu))
        })?
    }
}

/// One measured run: frames offered, frames the sink counted, time.
#[derive(Debug, Clone, Copy)]
pub struct FwdRun {
    pub offered: u64,
    pub to_backends: u64,
    pub other: u64,
    /// Wall-clock time the generator ran.
    pub took: Duration,
    /// CPU time of the generator's thread, including the softirq work it
    /// triggered on its CPU (see `cpu::softirq_charged_to_task`).
    pub cpu: Duration,
}

impl FwdRun {
    /// Frames forwarded to the backends per second.
    pub fn pps(&self) -> f64 {
        self.to_backends as f64 / self.took.as_secs_f64()
    }

    /// CPU ns of the generator's thread per frame counted by `counted`.
    pub fn cpu_ns_per_frame(&self, counted: u64) -> Option<f64> {
        (counted > 0).then(|| self.cpu.as_nanos() as f64 / counted as f64)
    }
}

/// Runs the generator once and counts what reached the sink (after a short
/// drain of the queues).
pub fn run_once(g: &Generator, client: &Netns, iface: &str, frames: u32) -> Result<FwdRun> {
    let (b0, o0) = g.sink_counts()?;
    let (took, cpu) = g.send(client, iface, frames)?;
    std::thread::sleep(Duration::from_millis(20));
    let (b1, o1) = g.sink_counts()?;
    Ok(FwdRun { offered: u64::from(frames), to_backends: b1 - b0, other: o1 - o0, took, cpu })
}
