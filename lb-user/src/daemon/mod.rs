//! `xlb run`: load, bind, fill the maps, attach, then serve until
//! SIGINT/SIGTERM, and stop in order.
//!
//! Every task belongs to a `JoinSet` and watches one cancellation token. On
//! SIGINT/SIGTERM the token is cancelled and the tasks are awaited in order:
//! the admin connections (a running trace turns tracing off), reloads, the
//! health checks, then the report applier, monitoring and next-hop tasks.
//! Then the data path is left running on its pinned link and maps (the next
//! `xlb run` takes it over), or, with `--detach-on-exit` or after `xlb stop`,
//! detached and its pins removed.

use std::{
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context as _;
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::mpsc,
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;

use self::ctx::{lock, Ctx};
use crate::{
    balancer::Balancer,
    config,
    health::{Checker, Report, REPORT_QUEUE},
    monitor::{self, SharedHistory},
};

pub mod admin;
pub mod announce;
pub mod ctx;
pub mod notify;
pub mod privileges;

/// How long each group of tasks has to end at shutdown before it is aborted.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// `xlb run`'s options besides the config file.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Detach XDP and remove the pins when the daemon exits (foreground use).
    pub detach_on_exit: bool,
    /// Load this XDP object instead of the embedded one.
    pub object: Option<std::path::PathBuf>,
}

pub fn run(path: &Path, opts: &RunOptions) -> anyhow::Result<()> {
    // The same load as `xlb check` and reloads: every problem, before anything needs root.
    let cfg = config::load(path)?;
    // Bound, loaded and attached before any other thread exists: the admin
    // socket's umask and the capabilities dropped next are per process only
    // while there is one thread (capabilities are per thread in Linux; the
    // runtime's threads inherit the reduced set).
    let started = start(path, &cfg, opts)?;
    match privileges::drop_unneeded() {
        Ok(kept) => log::info!("capabilities after attaching: {kept}"),
        Err(e) => log::warn!("could not drop capabilities after attaching: {e:#}"),
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(serve(path, cfg, opts, started))
}

/// What `xlb run` sets up before it serves: the bound admin socket and
/// metrics listener, and the balancer with its maps filled and XDP attached.
struct Started {
    admin_socket: admin::AdminSocket,
    metrics: Option<std::net::TcpListener>,
    bal: Balancer,
}

fn start(path: &Path, cfg: &config::Config, opts: &RunOptions) -> anyhow::Result<Started> {
    let file = opts.object.as_deref().map(crate::dataplane::ObjectFile::read).transpose()?;
    let object = match &file {
        Some(f) => f.bytes(),
        None => crate::dataplane::object()?,
    };
    // The addresses first: one that is taken fails before any traffic or pin is touched.
    let admin_socket = admin::bind(&cfg.daemon.admin_socket)?;
    let metrics = monitor::bind_metrics(&cfg.daemon)?;
    let mut bal = Balancer::load_pinned(cfg, path, object)?;
    bal.apply(cfg)?;
    bal.dp.set_guard_rate(cfg.daemon.conntrack_guard_rate)?;
    let adopting = bal.dp.pins().is_some_and(|p| p.previous.is_some());
    if adopting {
        let n = bal.dp.prune_stale()?;
        if n > 0 {
            log::info!("removed {n} entries the previous daemon wrote that this config does not have");
        }
    }
    if let Some(p) = bal.dp.pins() {
        p.migrate(false)?;
    }
    // Maps are complete before the first packet can reach the program.
    for iface in &cfg.daemon.interfaces {
        let mode = bal.dp.attach(iface, cfg.daemon.xdp_mode)?;
        log::info!("attached to {iface} ({mode} mode)");
    }
    if let Some(p) = bal.dp.pins_mut() {
        // Flows the old program tracked while the new one was being set up.
        p.migrate(true)?;
        p.commit()?;
    }
    bal.dp.write_state(std::process::id(), bal.drains())?;
    Ok(Started { admin_socket, metrics, bal })
}

async fn serve(path: &Path, cfg: config::Config, opts: &RunOptions, started: Started) -> anyhow::Result<()> {
    let Started { admin_socket, metrics, bal } = started;
    let cancel = CancellationToken::new();
    // Background tasks: awaited last.
    let mut back = JoinSet::new();
    warm_neighbours(&cfg, &mut back);
    for s in &bal.services {
        log::info!(
            "service {} {} {} {}: {} backends",
            s.cfg.name,
            s.cfg.protocol.as_str(),
            s.cfg.vip,
            s.cfg.forwarding.as_str(),
            s.backends.len()
        );
    }
    let conntrack = match bal.dp.conntrack_table() {
        Ok(c) => Some(c),
        Err(e) => {
            log::warn!("conntrack entries will not be counted: {e:#}");
            None
        }
    };
    let sweeper = match (bal.dp.conntrack_table(), bal.dp.conns()) {
        (Ok((table, _)), Some(conns)) => {
            Some(crate::dataplane::sweep::Sweeper::new(table, conns, cfg.daemon.conntrack_timeouts.ticks()))
        }
        (Err(e), _) => {
            log::warn!("conntrack entries will not be expired by the daemon: {e:#}");
            None
        }
        (_, None) => None,
    };

    let n = bal.services.len();
    let serving =
        format!("serving {n} service{} on {}", if n == 1 { "" } else { "s" }, cfg.daemon.interfaces.join(", "));
    let bal = Arc::new(Mutex::new(bal));
    let history = SharedHistory::default();
    let (reports, reports_rx) = mpsc::channel(REPORT_QUEUE);
    let ctx = Arc::new(Ctx {
        bal: bal.clone(),
        history: history.clone(),
        checker: Mutex::new(Some(Checker::new(reports))),
        config_path: path.to_path_buf(),
        daemon: cfg.daemon.clone(),
        cancel: cancel.clone(),
        stop: CancellationToken::new(),
    });
    back.spawn(apply_reports(reports_rx, bal.clone(), cancel.clone()));
    let checks = ctx.sync_checks();
    if checks > 0 {
        log::info!("health checks started for {checks} backends");
    }
    let mut admin = JoinSet::new();
    admin.spawn(admin::serve(admin_socket, ctx.clone()));
    back.spawn(refresh_next_hops(bal.clone(), cancel.clone()));
    if let Some(a) = &cfg.daemon.announce {
        log::info!("announcing VIPs through BIRD at {} (protocols {})", a.socket.display(), a.protocol);
        back.spawn(announce::run(a.clone(), bal.clone(), cancel.clone()));
    }
    if let Some(sweeper) = sweeper {
        back.spawn(sweep_conntrack(bal.clone(), sweeper, cancel.clone()));
    }
    match lock(&bal).dp.settings_fd() {
        Ok(fd) => {
            back.spawn(conntrack_clock(fd, cancel.clone()));
        }
        Err(e) => log::warn!("conntrack entries will not expire: {e:#}"),
    }
    back.spawn(monitor::rates::sample(bal.clone(), conntrack, history.clone(), cancel.clone()));
    if let (Some(listener), Some(addr)) = (metrics, cfg.daemon.metrics) {
        log::info!("metrics on http://{addr}/metrics, status page on http://{addr}/");
        back.spawn(monitor::http::serve(listener, bal.clone(), history, cancel.clone()));
    }

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut reloads = JoinSet::new();
    log::info!("xlb running (pid {})", std::process::id());
    // After the signal handlers: systemd may send SIGHUP as soon as it hears this.
    notify::ready(&serving);
    let why = loop {
        tokio::select! {
            _ = term.recv() => break "SIGTERM",
            _ = int.recv() => break "SIGINT",
            _ = ctx.stop.cancelled() => break "xlb stop",
            _ = hup.recv() => {
                notify::reloading();
                let ctx = ctx.clone();
                let serving = serving.clone();
                reloads.spawn(async move {
                    let status = match ctx.reload() {
                        Ok(msg) => msg,
                        Err(e) => format!("{serving}; {e:#}"),
                    };
                    notify::reloaded(status.trim_end());
                });
            }
            Some(_) = reloads.join_next(), if !reloads.is_empty() => {}
        }
    };

    let detach = opts.detach_on_exit || ctx.stop.is_cancelled();
    log::info!("{why}: stopping");
    notify::stopping(why);
    cancel.cancel();
    join("admin connections", &mut admin).await;
    join("reloads", &mut reloads).await;
    let checker = lock(&ctx.checker).take();
    if let Some(mut checker) = checker {
        checker.stop().await;
    }
    join("background tasks", &mut back).await;
    drop(ctx);
    // Every task has ended: nothing writes to the maps any more.
    let mut bal = lock(&bal);
    let dir = cfg.daemon.pin_path.display();
    if detach {
        let ifaces = bal.dp.detach_all()?;
        crate::dataplane::pins::remove(&cfg.daemon.pin_path)?;
        log::info!("removed the pins in {dir}");
        log::info!("detached from {}; bye", ifaces.join(", "));
    } else {
        bal.dp.write_state(0, bal.drains())?;
        let ifaces: Vec<&str> = bal.dp.attached().keys().map(String::as_str).collect();
        log::info!(
            "XDP stays attached to {} and keeps forwarding with the last tables (pinned in {dir}); the next \
             `xlb run` takes it over; `xlb stop` detaches it; bye",
            ifaces.join(", ")
        );
    }
    Ok(())
}

/// Waits for every task of `set` to end, for at most [`SHUTDOWN_GRACE`];
/// then aborts the rest (and waits for them).
async fn join(what: &str, set: &mut JoinSet<()>) {
    let all = async {
        while let Some(r) = set.join_next().await {
            if let Err(e) = r {
                if e.is_panic() {
                    log::error!("{what}: a task panicked: {e}");
                }
            }
        }
    };
    if tokio::time::timeout(SHUTDOWN_GRACE, all).await.is_err() {
        log::warn!("{what}: {} still running after {SHUTDOWN_GRACE:?}; aborting them", set.len());
        set.shutdown().await;
    }
}

/// Applies the health checks' reports, the only writer of health states:
/// rise/fall hysteresis, and the tables rewritten when a backend changes
/// state. Reports that queued up meanwhile are applied under one lock.
async fn apply_reports(mut reports: mpsc::Receiver<Report>, bal: Arc<Mutex<Balancer>>, cancel: CancellationToken) {
    loop {
        let first = tokio::select! {
            _ = cancel.cancelled() => return,
            r = reports.recv() => match r {
                Some(r) => r,
                None => return,
            },
        };
        let mut batch = vec![first];
        while let Ok(r) = reports.try_recv() {
            batch.push(r);
        }
        // Applying may rewrite a table: a few ms of map writes.
        tokio::task::block_in_place(|| {
            let mut b = lock(&bal);
            for r in batch {
                // A report of a backend removed meanwhile finds nothing: its check is being stopped.
                if let Err(e) = b.record_check(r.target.service, r.target.address, &r.probe) {
                    log::error!("applying a health check result for {}: {e:#}", r.target.address);
                }
            }
        });
    }
}

/// Keeps the backends' next hops (egress interface, MACs) in step with the
/// kernel's route and neighbour tables, once a second.
async fn refresh_next_hops(bal: Arc<Mutex<Balancer>>, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let ips = lock(&bal).backend_ips();
        let resolved = tokio::select! {
            _ = cancel.cancelled() => return,
            r = tokio::task::spawn_blocking(move || crate::dataplane::neigh::resolve(&ips)) => r,
        };
        let Ok(hops) = resolved else { continue };
        match lock(&bal).set_next_hops(&hops) {
            Ok(0) => {}
            Ok(n) => log::info!("next hops updated for {n} backends ({} resolved)", hops.len()),
            Err(e) => log::error!("writing next hops: {e:#}"),
        }
    }
}

/// Advances the data path's conntrack clock (`SETTINGS[SETTING_CT_CLOCK]`)
/// every `ct::CLOCK_PERIOD_MS`, through its own descriptor (no lock).
async fn conntrack_clock(settings: std::os::fd::OwnedFd, cancel: CancellationToken) {
    use std::os::fd::AsFd as _;
    let mut tick = tokio::time::interval(Duration::from_millis(lb_common::ct::CLOCK_PERIOD_MS));
    let key = lb_common::SETTING_CT_CLOCK.to_ne_bytes();
    let mut warned = false;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = crate::dataplane::sweep::now_ticks().to_ne_bytes();
        if let Err(e) = crate::dataplane::sys::update(settings.as_fd(), &key, &now, 0) {
            if !warned {
                log::error!("advancing the conntrack clock: {e}");
                warned = true;
            }
        }
    }
}

/// How often the conntrack sweeper runs, and how many entries a pass reads at most.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
const SWEEP_BUDGET: usize = 65536;

/// Expires idle conntrack entries and corrects the active-connection counts
/// (see `dataplane::sweep`), off the packet path and outside the balancer's
/// lock (which is held only to read the backends' slots).
async fn sweep_conntrack(
    bal: Arc<Mutex<Balancer>>,
    mut sweeper: crate::dataplane::sweep::Sweeper,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = sweeper.stats;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let (slots, timeouts) = {
            let b = lock(&bal);
            (b.backend_slots(), b.conntrack_ticks)
        };
        let pass = tokio::task::spawn_blocking(move || {
            let r = sweeper.pass_with(&slots, timeouts, SWEEP_BUDGET);
            (sweeper, r)
        });
        let (s, result) = tokio::select! {
            _ = cancel.cancelled() => return,
            r = pass => match r {
                Ok(r) => r,
                Err(e) => {
                    log::error!("conntrack sweeper stopped: {e}");
                    return;
                }
            },
        };
        sweeper = s;
        if let Err(e) = result {
            log::warn!("conntrack sweep: {e}");
        }
        let now = sweeper.stats;
        if now != last && (now.expired != last.expired || now.corrected != last.corrected) {
            log::debug!(
                "conntrack sweep: {} entries expired ({} still counted), counts corrected by {} so far",
                now.expired,
                now.expired_counted,
                now.corrected
            );
        }
        last = now;
    }
}

/// Resolves each backend's link-layer address before traffic needs it: the
/// XDP program forwards only to known neighbours (it hands the packet to the
/// kernel otherwise, which DSR cannot use). A TCP connect makes the kernel
/// resolve the neighbour; its result does not matter.
fn warm_neighbours(cfg: &config::Config, tasks: &mut JoinSet<()>) {
    for s in &cfg.services {
        for b in &s.backends {
            let addr = b.address;
            tasks.spawn(async move {
                let _ = tokio::time::timeout(Duration::from_millis(500), tokio::net::TcpStream::connect(addr)).await;
            });
        }
    }
}
