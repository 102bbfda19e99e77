//! `xlb run`: load, fill the maps, attach, then serve until SIGINT/SIGTERM.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context as _;
use tokio::signal::unix::{signal, SignalKind};

use crate::{admin, balancer::Balancer, config, health::Checker};

/// What the daemon's tasks share: the balancer (maps and backend states), the
/// health checks, and the config file and daemon settings it runs with.
pub struct Ctx {
    pub bal: Arc<Mutex<Balancer>>,
    pub checker: Mutex<Checker>,
    pub config_path: PathBuf,
    pub daemon: Mutex<config::DaemonConfig>,
}

impl Ctx {
    /// Reloads the config file (SIGHUP, `xlb reload`): a valid config is
    /// applied by rewriting only what changed; an invalid one is refused and
    /// the running one keeps serving. Returns what was done.
    pub fn reload(&self) -> anyhow::Result<String> {
        let result = crate::check::load(&self.config_path).and_then(|cfg| {
            tokio::task::block_in_place(|| self.bal.lock().unwrap().apply(&cfg))?;
            Ok(cfg)
        });
        let cfg = match result {
            Ok(cfg) => cfg,
            Err(e) => {
                log::error!("reload refused, still serving the previous configuration: {e:#}");
                return Err(e.context("reload refused, still serving the previous configuration"));
            }
        };
        self.checker.lock().unwrap().sync(&self.bal);
        let mut msg = format!(
            "reloaded {}: {} services, {} backends",
            self.config_path.display(),
            cfg.services.len(),
            cfg.backend_count()
        );
        let running = self.daemon.lock().unwrap();
        if *running != cfg.daemon {
            msg += "; [daemon] settings changed: they apply at the next restart";
        }
        log::info!("{msg}");
        Ok(msg + "\n")
    }
}

pub fn run(path: &Path) -> anyhow::Result<()> {
    let cfg = config::load(path)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(serve(path, cfg))
}

async fn serve(path: &Path, cfg: config::Config) -> anyhow::Result<()> {
    let mut bal = Balancer::load(&cfg)?;
    bal.apply(&cfg)?;
    // Maps are complete before the first packet can reach the program.
    for iface in &cfg.daemon.interfaces {
        let mode = bal.dp.attach(iface, cfg.daemon.xdp_mode)?;
        log::info!("attached to {iface} ({mode} mode)");
    }
    warm_neighbours(&cfg);
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

    let listener = admin::bind(&cfg.daemon.admin_socket)?;
    let bal = Arc::new(Mutex::new(bal));
    let ctx = Arc::new(Ctx {
        bal: bal.clone(),
        checker: Mutex::new(Checker::default()),
        config_path: path.to_path_buf(),
        daemon: Mutex::new(cfg.daemon.clone()),
    });
    ctx.checker.lock().unwrap().sync(&bal);
    let checks = ctx.checker.lock().unwrap().len();
    if checks > 0 {
        log::info!("health checks started for {checks} backends");
    }
    let admin_task = tokio::spawn(admin::serve(listener, ctx.clone()));

    let neigh_task = tokio::spawn(refresh_next_hops(bal.clone()));
    // Monitoring (metrics.rs): rate sampler, /metrics and the status page.
    let monitor = crate::metrics::Monitor::start(&cfg.daemon, bal.clone()).await?;

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    log::info!("xlb running (pid {})", std::process::id());
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                let ctx = ctx.clone();
                tokio::spawn(async move { let _ = ctx.reload(); });
            }
        }
    }
    for t in [admin_task, neigh_task] {
        t.abort();
        let _ = t.await;
    }
    monitor.stop().await;
    ctx.checker.lock().unwrap().stop();
    drop(ctx);
    let _ = std::fs::remove_file(&cfg.daemon.admin_socket);
    let bal = Arc::try_unwrap(bal).map_err(|_| anyhow::anyhow!("balancer still shared at shutdown"))?;
    let bal = bal.into_inner().unwrap_or_else(|e| e.into_inner());
    let ifaces: Vec<String> = bal.dp.attached().keys().cloned().collect();
    drop(bal);
    log::info!("detached from {}; bye", ifaces.join(", "));
    Ok(())
}

/// Keeps the backends' next hops (egress interface, MACs) in step with the
/// kernel's route and neighbour tables, once a second.
async fn refresh_next_hops(bal: Arc<Mutex<Balancer>>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let ips = bal.lock().unwrap().backend_ips();
        let Ok(hops) = tokio::task::spawn_blocking(move || crate::neigh::resolve(&ips)).await else { continue };
        match bal.lock().unwrap().set_next_hops(&hops) {
            Ok(0) => {}
            Ok(n) => log::info!("next hops updated for {n} backends ({} resolved)", hops.len()),
            Err(e) => log::error!("writing next hops: {e:#}"),
        }
    }
}

/// Resolves each backend's link-layer address before traffic needs it: the
/// XDP program forwards only to known neighbours (it hands the packet to the
/// kernel otherwise, which DSR cannot use). A TCP connect makes the kernel
/// resolve the neighbour; its result does not matter.
fn warm_neighbours(cfg: &config::Config) {
    for s in &cfg.services {
        for b in &s.backends {
            let addr = b.address;
            tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_millis(500), tokio::net::TcpStream::connect(addr)).await;
            });
        }
    }
}
