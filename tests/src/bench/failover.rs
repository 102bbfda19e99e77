//! Active-passive failover time: kill the primary, time until the VIP answers
//! from the backup.
//!
//! Method: xlb with HTTP checks (interval_ms = 200, fall = 2), web1 primary,
//! web2 `role = "backup"`. Once the VIP answers "web1", web1's nginx is
//! stopped and the client sends a fresh request (new connection, 300 ms cap)
//! every 10 ms; the figure is the time from the kill to the first "web2"
//! answer. A repetition gives up after [`GIVE_UP`]; then web1 is restarted
//! and the next repetition waits for the VIP to answer "web1" again.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::{
    bench::xlb_config,
    config::{web, BackendToml, ServiceToml},
    http_url, Client, Netns, Nginx,
};

/// A repetition without failover after this long counts as failed.
pub const GIVE_UP: Duration = Duration::from_secs(5);

/// The daemon configuration: web1 primary, web2 backup, HTTP checks every 200 ms.
pub fn config() -> String {
    xlb_config()
        .service(
            ServiceToml::new("www", "198.18.0.10:80".parse().unwrap())
                .set("forwarding", "nat")
                .quick_http_checks()
                .backend(BackendToml::new(web(1, 80)).role("primary"))
                .backend(BackendToml::new(web(2, 80)).role("backup")),
        )
        .to_string()
}

/// Waits until the VIP answers `body` (at most `limit`).
pub fn wait_for(client: &Netns, url: &str, body: &str, limit: Duration) -> bool {
    Client::new(client).until_answered(url, body, Instant::now(), Duration::from_millis(20), limit, |_| true).is_some()
}

/// One repetition: ms from stopping `primary` to the first answer of the backup.
pub fn measure(client: &Netns, primary: &mut Nginx, backup_body: &str) -> Result<f64> {
    let url = http_url("198.18.0.10".parse().unwrap(), 80, "/");
    primary.stop()?;
    let killed = Instant::now();
    let got =
        Client::new(client).until_answered(&url, backup_body, killed, Duration::from_millis(10), GIVE_UP, |_| true);
    match got {
        Some(t) => Ok(t.as_secs_f64() * 1000.0),
        None => bail!(
            "no answer from the backup within {} s of stopping the primary (are health checks implemented in this xlb?)",
            GIVE_UP.as_secs()
        ),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn config_is_valid() {
        let cfg = xlb::config::parse(&super::config(), "bench-failover.toml").unwrap();
        assert_eq!(cfg.services[0].health.interval_ms, 200);
        assert_eq!(cfg.services[0].backends.len(), 2);
    }
}
