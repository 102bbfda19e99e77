//! `xlb trace`: asks the daemon for a trace (see `monitor::trace`) and
//! prints its event lines as they come.

use std::{
    io::{BufRead as _, BufReader, Write},
    path::Path,
};

use anyhow::bail;

use crate::monitor::trace::Limits;

/// `xlb trace`: sends `limits` to the daemon at `socket` and copies the
/// event lines to `out` as they come.
pub fn follow(socket: &Path, limits: &Limits, out: &mut impl Write) -> anyhow::Result<()> {
    let mut s = super::connect(socket)?;
    s.write_all(format!("{}\n", limits.request()).as_bytes())?;
    let mut lines = BufReader::new(s).lines();
    match lines.next().transpose()?.as_deref() {
        Some("ok") => {}
        Some("error") => {
            let why: Vec<String> = lines.collect::<Result<_, _>>()?;
            bail!("{}", why.join("\n"));
        }
        other => bail!("unexpected answer from {}: {other:?}", socket.display()),
    }
    for line in lines {
        let line = line?;
        if let Some(e) = line.strip_prefix("error: ") {
            bail!("trace ended: {e}");
        }
        writeln!(out, "{line}")?;
        out.flush()?;
    }
    Ok(())
}
