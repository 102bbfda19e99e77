//! `xlb status [--json]`: the daemon's state and counters, as the text table
//! or as the JSON document `/status.json` serves (see `monitor::status`).

use std::path::Path;

/// The admin request for the text table.
pub const TEXT: &str = "status";
/// The admin request for the JSON document.
pub const JSON: &str = "status json";

/// Asks the daemon at `socket` and prints its answer.
pub fn run(socket: &Path, json: bool) -> anyhow::Result<()> {
    print!("{}", super::request(socket, if json { JSON } else { TEXT })?);
    Ok(())
}
