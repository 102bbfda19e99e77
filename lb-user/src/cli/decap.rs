//! `xlb decap`: on a backend of `forwarding = "ipip"` / `"gue"` services,
//! attach `xlb_decap` to an interface until SIGINT/SIGTERM, then detach and
//! print what it did.

use std::net::IpAddr;

use anyhow::Context as _;

use crate::{config::XdpModeConfig, dataplane::decap::Decap};

pub struct Options {
    pub interface: String,
    pub addresses: Vec<IpAddr>,
    pub gue_port: u16,
    pub xdp_mode: XdpModeConfig,
    pub object: Option<std::path::PathBuf>,
}

pub fn run(o: &Options) -> anyhow::Result<()> {
    let file = o.object.as_deref().map(crate::dataplane::ObjectFile::read).transpose()?;
    let object = match &file {
        Some(f) => f.bytes(),
        None => crate::dataplane::object()?,
    };
    let mut decap = Decap::load(object, &o.addresses, o.gue_port)?;
    let mode = decap.attach(&o.interface, o.xdp_mode)?;
    let list: Vec<String> = o.addresses.iter().map(IpAddr::to_string).collect();
    let gue = if o.gue_port == 0 { "gue off".to_string() } else { format!("gue port {}", o.gue_port) };
    log::info!("xlb_decap attached to {} ({mode}): ipip and {gue} to {}", o.interface, list.join(", "));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        anyhow::Ok(())
    })
    .context("waiting for SIGINT/SIGTERM")?;
    let counters = decap.counters();
    decap.detach()?;
    log::info!("xlb_decap detached from {}", o.interface);
    for (name, n) in counters? {
        println!("{name} {n}");
    }
    Ok(())
}
