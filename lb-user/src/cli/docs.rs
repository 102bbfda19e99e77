//! Documentation generated from the clap definitions: shell completion
//! scripts (`xlb completions SHELL`) and man pages (`xlb manpages DIR`, which
//! `cargo xtask deb` runs). `main` passes its `clap::Command` in.

use std::{
    io::Write,
    path::{Path, PathBuf},
};

use anyhow::Context as _;

/// The man page sections after the generated ones, in roff.
const XLB_1_EXTRA: &str = r#".SH FILES
.TP
\fI/etc/xlb/xlb.toml\fR
The configuration, TOML; the default of \fB\-\-config\fR for every command that takes one.
.TP
\fI/run/xlb/xlb.sock\fR
The running daemon's admin socket (the configuration's \fBadmin_socket\fR), which \fBstatus\fR, \fBtop\fR, \fBtrace\fR, \fBdrain\fR, \fBenable\fR and \fBreload\fR use.
.SH SIGNALS
.TP
\fBSIGHUP\fR
\fBxlb run\fR reloads its configuration file. A valid one is applied without dropping established flows to backends that remain; a broken one is refused with every problem in the log, and the running configuration keeps serving.
.TP
\fBSIGTERM\fR, \fBSIGINT\fR
\fBxlb run\fR stops.
.SH ENVIRONMENT
.TP
\fBRUST_LOG\fR
Log filter, e.g. \fBdebug\fR or \fBxlb=debug\fR (default \fBinfo\fR).
.TP
\fBNO_COLOR\fR
No colour in the log even on a terminal.
.TP
\fBNOTIFY_SOCKET\fR, \fBJOURNAL_STREAM\fR
Set by systemd: \fBxlb run\fR reports readiness, reloads and shutdown (Type=notify), and writes log lines without timestamps and with their priority for the journal.
.SH SEE ALSO
\fBsystemctl\fR(1), \fBjournalctl\fR(1), \fBsystemd.service\fR(5)
"#;

/// Writes the completion script for `shell` to `out`.
pub fn completions(shell: clap_complete::Shell, mut cmd: clap::Command, out: &mut dyn Write) -> anyhow::Result<()> {
    let name = cmd.get_name().to_owned();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, name, &mut script);
    out.write_all(&script).and_then(|()| out.flush()).context("writing the completion script")
}

/// Writes `NAME.1` and `NAME-COMMAND.1` for every visible command of `cmd`
/// into `dir` (created if missing); the files written.
pub fn manpages(cmd: clap::Command, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let source = format!("{} {}", cmd.get_name(), cmd.get_version().unwrap_or_default());
    let page = |c: clap::Command| clap_mangen::Man::new(c).source(source.clone()).manual("xlb manual");
    let mut written = Vec::new();

    let top = page(cmd.clone());
    let path = dir.join(top.get_filename());
    let mut roff = Vec::new();
    top.render_title(&mut roff)?;
    top.render_name_section(&mut roff)?;
    top.render_synopsis_section(&mut roff)?;
    top.render_description_section(&mut roff)?;
    top.render_options_section(&mut roff)?;
    top.render_subcommands_section(&mut roff)?;
    roff.extend_from_slice(XLB_1_EXTRA.as_bytes());
    top.render_version_section(&mut roff)?;
    std::fs::write(&path, roff).with_context(|| format!("writing {}", path.display()))?;
    written.push(path);

    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let man = page(sub.clone());
        let path = man.generate_to(dir).with_context(|| format!("writing a man page into {}", dir.display()))?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demo() -> clap::Command {
        clap::Command::new("xlb")
            .version("9.9.9")
            .about("demo")
            .subcommand(clap::Command::new("run").about("runs").arg(clap::arg!(-c --config <FILE> "the file")))
            .subcommand(clap::Command::new("secret").hide(true))
    }

    #[test]
    fn one_page_per_visible_command() {
        let dir = std::env::temp_dir().join(format!("xlb-docs-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let written = manpages(demo(), &dir).unwrap();
        let names: Vec<String> =
            written.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
        let top = std::fs::read_to_string(dir.join("xlb.1")).unwrap();
        let run = std::fs::read_to_string(dir.join("xlb-run.1")).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(names, ["xlb.1", "xlb-run.1"], "the top page and one per visible command, none for a hidden one");
        for section in [".SH NAME", ".SH SYNOPSIS", ".SH FILES", ".SH SIGNALS", ".SH VERSION"] {
            assert!(top.contains(section), "xlb.1 has no {section}:\n{top}");
        }
        assert!(top.contains("9.9.9"), "xlb.1 names the version:\n{top}");
        assert!(run.contains("config"), "xlb-run.1 documents --config:\n{run}");
    }

    #[test]
    fn completions_name_the_commands() {
        let mut out = Vec::new();
        completions(clap_complete::Shell::Bash, demo(), &mut out).unwrap();
        let script = String::from_utf8(out).unwrap();
        assert!(script.contains("complete -F _xlb"), "a bash completion for xlb:\n{script}");
        // The words offered after `xlb `: the first `opts=` list naming commands.
        let top = script.lines().map(str::trim).find(|l| l.starts_with("opts=") && l.contains("run"));
        assert!(top.is_some(), "no list of commands offering run:\n{script}");
    }
}
