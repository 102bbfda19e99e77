//! `xlb top`: the daemon's status, redrawn every second in the terminal's
//! alternate screen until Ctrl-C (or SIGTERM), which restores the screen and
//! exits 0.

use std::{io::Write as _, path::Path, time::Duration};

use anyhow::Context as _;
use tokio::signal::unix::{signal, SignalKind};

/// Enter the alternate screen, hide the cursor.
const ENTER: &str = "\x1b[?1049h\x1b[?25l";
/// Show the cursor, leave the alternate screen.
const LEAVE: &str = "\x1b[?25h\x1b[?1049l";
/// Cursor home, clear the screen.
const CLEAR: &str = "\x1b[H\x1b[2J";

/// Polls the daemon at `socket` every `every` until interrupted. An error
/// from the daemon (stopped, restarting) is shown and retried.
pub fn run(socket: &Path, every: Duration) -> anyhow::Result<()> {
    let rt =
        tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the tokio runtime")?;
    rt.block_on(watch(socket, every))
}

async fn watch(socket: &Path, every: Duration) -> anyhow::Result<()> {
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut out = std::io::stdout();
    write!(out, "{ENTER}")?;
    let mut tick = tokio::time::interval(every);
    let result = loop {
        tokio::select! {
            _ = int.recv() => break Ok(()),
            _ = term.recv() => break Ok(()),
            _ = tick.tick() => {
                let path = socket.to_path_buf();
                let answer = tokio::task::spawn_blocking(move || super::request(&path, "status")).await?;
                let now = humantime_now();
                let screen = match answer {
                    Ok(text) => format!("{CLEAR}xlb top - {now} - every {}s, Ctrl-C quits\n{text}", every.as_secs_f64()),
                    Err(e) => format!("{CLEAR}xlb top - {now}\nerror: {e:#} (retrying)\n"),
                };
                if let Err(e) = out.write_all(screen.as_bytes()).and_then(|_| out.flush()) {
                    break Err(anyhow::Error::new(e).context("writing to the terminal"));
                }
            }
        }
    };
    write!(out, "{LEAVE}")?;
    out.flush()?;
    result
}

/// The time of day, UTC (hh:mm:ss).
fn humantime_now() -> String {
    let s = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    format!("{:02}:{:02}:{:02} UTC", s / 3600 % 24, s / 60 % 60, s % 60)
}
