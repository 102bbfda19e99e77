//! Where log lines go and how they look.
//!
//! On a terminal: timestamped lines, coloured (unless `NO_COLOR`). Into a
//! file or a pipe: the same without colour. Under systemd, when stderr is the
//! journal (`JOURNAL_STREAM` names stderr's device and inode, see
//! systemd.exec(5)): no timestamp (the journal has its own) and no colour,
//! and each line starts with its syslog priority (`<3>` error ... `<7>`
//! debug), which journald reads, so `journalctl -p warning` works; every
//! line of a multi-line message carries it (journald splits at newlines).
//! `RUST_LOG` sets the filter as usual (default `info`).

use std::{io::Write as _, sync::OnceLock};

/// The style [`init`] chose.
static STYLE: OnceLock<Style> = OnceLock::new();

/// How the lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    /// Timestamps; colour when stderr is a terminal.
    Plain,
    /// For journald: priority prefix, no timestamp, no colour.
    Journal,
}

/// Installs the logger for the whole process.
pub fn init() {
    let style = *STYLE.get_or_init(|| if stderr_is_journal() { Style::Journal } else { Style::Plain });
    let mut b = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    match style {
        Style::Plain => {
            b.format_timestamp_millis();
        }
        Style::Journal => {
            b.write_style(env_logger::WriteStyle::Never).format(|f, rec| {
                let text = format!("{} {}: {}", rec.level(), rec.target(), rec.args());
                f.write_all(journal_lines(priority(rec.level()), &text).as_bytes())
            });
        }
    }
    b.init();
}

/// Prints a command's final error on stderr: `error: ...`, each line marked
/// as an error for journald when stderr is the journal.
pub fn print_error(text: &str) {
    let text = format!("error: {text}");
    let out = match STYLE.get() {
        Some(Style::Journal) => journal_lines(3, &text),
        _ => format!("{text}\n"),
    };
    let _ = std::io::stderr().write_all(out.as_bytes());
}

/// `text` with `<priority>` in front of each of its lines, newline-terminated.
pub fn journal_lines(priority: u8, text: &str) -> String {
    text.lines().map(|l| format!("<{priority}>{l}\n")).collect()
}

/// The syslog priority journald gives a line of this level.
pub fn priority(level: log::Level) -> u8 {
    match level {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug | log::Level::Trace => 7,
    }
}

/// Whether stderr is connected to the journal: `JOURNAL_STREAM` is set and
/// names stderr (a child that redirected stderr keeps the variable but not
/// the stream).
fn stderr_is_journal() -> bool {
    let Some(var) = std::env::var_os("JOURNAL_STREAM") else { return false };
    // SAFETY: fstat writes into the zeroed struct we own; fd 2 may be closed (then it fails).
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(2, &mut st) } != 0 {
        return false;
    }
    names_stream(&var.to_string_lossy(), st.st_dev, st.st_ino)
}

/// Whether `JOURNAL_STREAM`'s value `DEV:INODE` (decimal) names this device and inode.
pub fn names_stream(value: &str, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = value.trim().split_once(':') else { return false };
    d.parse::<u64>() == Ok(dev) && i.parse::<u64>() == Ok(ino)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_stream_names_device_and_inode() {
        assert!(names_stream("8:12345", 8, 12345));
        assert!(!names_stream("8:12345", 8, 12346), "another inode is another stream");
        assert!(!names_stream("9:12345", 8, 12345), "another device is another stream");
        assert!(!names_stream("", 8, 12345));
        assert!(!names_stream("8", 8, 12345));
        assert!(!names_stream("x:y", 8, 12345));
    }

    #[test]
    fn every_line_carries_the_priority() {
        assert_eq!(
            journal_lines(3, "error: invalid configuration x\nx: a\nx: b"),
            "<3>error: invalid configuration x\n<3>x: a\n<3>x: b\n"
        );
        assert_eq!(journal_lines(6, "one"), "<6>one\n");
    }

    #[test]
    fn priorities_follow_syslog() {
        let got: Vec<u8> =
            [log::Level::Error, log::Level::Warn, log::Level::Info, log::Level::Debug].map(priority).to_vec();
        assert_eq!(got, [3, 4, 6, 7], "error, warning, info, debug as syslog(3) numbers them");
    }
}
