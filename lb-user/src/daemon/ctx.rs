//! The control context: what the daemon's control tasks (admin requests,
//! reloads, signals) share, and the reload itself.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard},
};

use tokio_util::sync::CancellationToken;

use crate::{balancer::Balancer, config, health::Checker, monitor::SharedHistory};

pub struct Ctx {
    /// The maps and the backends' states.
    pub bal: Arc<Mutex<Balancer>>,
    /// The rate sampler's history, read by `status`.
    pub history: SharedHistory,
    /// The health checks (taken out at shutdown to be stopped).
    pub checker: Mutex<Option<Checker>>,
    /// The config file, read again on reload.
    pub config_path: PathBuf,
    /// The `[daemon]` settings the daemon runs with (a reload does not change them).
    pub daemon: config::DaemonConfig,
    /// Cancelled on SIGINT/SIGTERM: every task ends.
    pub cancel: CancellationToken,
    /// Cancelled by `xlb stop`: the daemon detaches, removes its pins and exits.
    pub stop: CancellationToken,
}

/// Locks `m`, also after a panic elsewhere (the state stays usable: every
/// write is checked before it is made).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Ctx {
    /// Writes the drained backends to the pinned state (they survive a restart).
    pub fn save_state(&self) {
        let bal = lock(&self.bal);
        if let Err(e) = bal.dp.write_state(std::process::id(), bal.drains()) {
            log::error!("saving the daemon state next to the pins: {e:#}; drains may not survive a restart");
        }
    }

    /// Makes the running health checks match the balancer's backends; how
    /// many run. Must run inside the tokio runtime.
    pub fn sync_checks(&self) -> usize {
        let targets = lock(&self.bal).health_targets();
        match lock(&self.checker).as_mut() {
            Some(c) => {
                c.sync(targets);
                c.len()
            }
            None => 0,
        }
    }

    /// Reloads the config file (SIGHUP, `xlb reload`): a valid config is
    /// applied by rewriting only what changed; an invalid one is refused and
    /// the running one keeps serving. Returns what was done.
    pub fn reload(&self) -> anyhow::Result<String> {
        let result = config::load(&self.config_path).map_err(anyhow::Error::from).and_then(|cfg| {
            tokio::task::block_in_place(|| lock(&self.bal).apply(&cfg))?;
            Ok(cfg)
        });
        let cfg = match result {
            Ok(cfg) => cfg,
            Err(e) => {
                log::error!("reload refused, still serving the previous configuration: {e:#}");
                return Err(e.context("reload refused, still serving the previous configuration"));
            }
        };
        self.sync_checks();
        self.save_state();
        let mut msg = format!(
            "reloaded {}: {} services, {} backends",
            self.config_path.display(),
            cfg.services.len(),
            cfg.backend_count()
        );
        // Timeouts, deny, closed_ports, gue_port and encap sources apply at once
        // (`Balancer::apply`); the rest at the next restart: say which.
        let restart = restart_keys(&self.daemon, &cfg.daemon);
        if !restart.is_empty() {
            msg += &format!("; [daemon] {} changed: applied at the next restart", restart.join(", "));
        }
        log::info!("{msg}");
        Ok(msg + "\n")
    }
}

/// The `[daemon]` keys that differ between `running` and `new` and that only a
/// restart applies (the others are applied by a reload).
fn restart_keys(running: &config::DaemonConfig, new: &config::DaemonConfig) -> Vec<&'static str> {
    let mut keys = Vec::new();
    let mut differs = |key, changed: bool| {
        if changed {
            keys.push(key);
        }
    };
    differs("interfaces", running.interfaces != new.interfaces);
    differs("xdp_mode", running.xdp_mode != new.xdp_mode);
    differs("admin_socket", running.admin_socket != new.admin_socket);
    differs("metrics", running.metrics != new.metrics);
    differs("conntrack_entries", running.conntrack_entries != new.conntrack_entries);
    differs("conntrack_guard_rate", running.conntrack_guard_rate != new.conntrack_guard_rate);
    differs("pin_path", running.pin_path != new.pin_path);
    differs("announce", running.announce != new.announce);
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    fn daemon(extra: &str) -> config::DaemonConfig {
        let text = format!(
            "[daemon]\ninterfaces = [\"eth0\"]\n{extra}\n[[service]]\nvip = \"198.18.0.10:80\"\n\
             [[service.backend]]\naddress = \"198.18.1.11:80\"\n"
        );
        config::parse(&text, "t.toml").expect("valid").daemon
    }

    #[test]
    fn a_reload_names_only_the_daemon_keys_that_wait_for_a_restart() {
        let running = daemon("");
        assert!(
            restart_keys(&running, &daemon("deny = [\"198.18.9.0/24\"]\nconntrack_timeout_syn = \"5s\"")).is_empty()
        );
        assert_eq!(
            restart_keys(&running, &daemon("metrics = \"127.0.0.1:9999\"\nclosed_ports = \"drop\"")),
            ["metrics"]
        );
    }
}
