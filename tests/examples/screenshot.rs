//! `cargo xtask screenshot [OUTPUT.png]`: the README's picture of the status
//! page (docs/status-page.png by default), taken by headless Chromium from a
//! live daemon showing every backend state (the scene the status-page test
//! checks) while traffic and a few malformed frames flow.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use xlb_testbed::{is_root, status_page::StatusScene, xlb::TempDir};

fn main() -> Result<()> {
    if !is_root() {
        bail!("the screenshot needs network namespaces and XDP: run it as root");
    }
    let dest = std::env::args_os().nth(1).map(PathBuf::from).context("usage: screenshot OUTPUT.png")?;
    println!("== building the scene: www4 and www6 over web1..web3, web2 stopped, web1 drained in www6");
    let scene = StatusScene::start()?;
    let dir = TempDir::new("screenshot")?;
    let png = dir.path().join("status-page.png");
    println!("== screenshot of {} while 4000 requests flow", scene.url());
    scene.screenshot(&dir.path().join("profile"), &png)?;
    std::fs::copy(&png, &dest).with_context(|| format!("copying the screenshot to {}", dest.display()))?;
    println!("wrote {}", dest.display());
    Ok(())
}
