use std::{path::PathBuf, process::ExitCode};

use clap::{CommandFactory as _, Parser, Subcommand};
use xlb::config::DEFAULT_CONFIG;

/// A layer-4 load balancer whose data path is an XDP program.
#[derive(Parser, Debug)]
#[command(name = "xlb", version = env!("XLB_VERSION"))]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the daemon: load and attach the XDP program, fill the maps, serve.
    /// On SIGTERM/SIGINT the data path stays attached (pinned in
    /// `[daemon] pin_path`) and the next `xlb run` takes it over.
    Run {
        /// Configuration file (TOML).
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Detach XDP and remove the pins when the daemon exits.
        #[arg(long)]
        detach_on_exit: bool,
        /// Load this XDP object instead of the one built into xlb.
        #[arg(long, value_name = "FILE")]
        object: Option<PathBuf>,
    },
    /// Detach XDP and remove the pinned maps and links (a running daemon is
    /// told to exit first): the host is left as before xlb ran.
    Stop {
        #[command(flatten)]
        daemon: DaemonArgs,
        /// The pin directory (default: the config's pin_path, else /sys/fs/bpf/xlb).
        #[arg(long, value_name = "DIR")]
        pin_path: Option<PathBuf>,
    },
    /// Withdraw every VIP of the config from BGP: disable its protocol in BIRD
    /// (`[daemon.announce]`). The daemon does it when it stops; this is for a
    /// daemon that died (the unit's ExecStopPost).
    Withdraw {
        /// Configuration file (TOML).
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Validate a configuration; print the plan, or every problem found.
    Check {
        /// Configuration file (TOML).
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Ask the running daemon: services, backends, health, role, counters.
    Status {
        #[command(flatten)]
        daemon: DaemonArgs,
        /// Print the JSON document `/status.json` serves instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Stop sending new flows to a backend; its established flows continue.
    Drain {
        /// Service name.
        service: String,
        /// Backend address:port (or the address alone when unique in the service).
        backend: String,
        #[command(flatten)]
        daemon: DaemonArgs,
    },
    /// Let a drained backend take new flows again (while healthy).
    Enable {
        service: String,
        backend: String,
        #[command(flatten)]
        daemon: DaemonArgs,
    },
    /// Make the daemon reload its config file (like SIGHUP); a broken file is
    /// refused, with every problem, and the running config keeps serving.
    Reload {
        #[command(flatten)]
        daemon: DaemonArgs,
    },
    /// The daemon's status, refreshed every second until Ctrl-C.
    Top {
        #[command(flatten)]
        daemon: DaemonArgs,
        /// Seconds between refreshes.
        #[arg(long, default_value_t = 1.0, value_parser = parse_interval)]
        interval: f64,
    },
    /// Print sampled data-path decisions of the running daemon, live: flow,
    /// service, conntrack hit or miss, backend, action or drop reason.
    Trace {
        #[command(flatten)]
        daemon: DaemonArgs,
        /// Report one decision in N.
        #[arg(long, default_value_t = 1)]
        sample: u32,
        /// Stop after this many events.
        #[arg(long, default_value_t = 100)]
        count: u64,
        /// Stop after this many seconds (at most 3600).
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Which backend a new flow would get, computed with the kernel's hash.
    Explain {
        /// Configuration file (TOML).
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Client address and port, e.g. 198.18.0.1:40000 or [2001:db8::1]:40000.
        client: String,
        /// VIP address and port, e.g. 198.18.0.10:80.
        vip: String,
        /// tcp or udp.
        #[arg(default_value = "tcp")]
        protocol: String,
    },
    /// On a backend of ipip/gue services: strip the outer headers of packets
    /// to ADDRESS (IP in IP, and GUE to --gue-port) with an XDP program on
    /// INTERFACE and pass the inner packets up, until SIGINT/SIGTERM; then
    /// detach and print the counters.
    Decap {
        /// The interface the encapsulated packets arrive on.
        #[arg(short, long)]
        interface: String,
        /// An outer destination to decapsulate at (the backend's address in
        /// the lb's config); repeat for more.
        #[arg(short, long = "address", value_name = "ADDRESS", required = true)]
        addresses: Vec<std::net::IpAddr>,
        /// GUE's UDP port, as the lb's `[daemon] gue_port`; 0: ipip only.
        #[arg(long, default_value_t = lb_common::DEFAULT_GUE_PORT)]
        gue_port: u16,
        /// auto, native or generic.
        #[arg(long, default_value = "auto", value_parser = parse_xdp_mode)]
        xdp_mode: xlb::config::XdpModeConfig,
        /// Load this XDP object instead of the one built into xlb.
        #[arg(long, value_name = "FILE")]
        object: Option<PathBuf>,
    },
    /// Print a shell completion script, e.g. `xlb completions bash > /etc/bash_completion.d/xlb`.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Write the man pages (xlb.1 and one per command) into a directory.
    Manpages {
        /// The directory (created if missing).
        dir: PathBuf,
    },
}

/// How to reach the running daemon.
#[derive(clap::Args, Debug)]
struct DaemonArgs {
    /// Admin socket (default: the config's admin_socket, else /run/xlb/xlb.sock).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// The daemon's config file, to find its admin socket (default: /etc/xlb/xlb.toml when it exists).
    #[arg(short, long)]
    config: Option<PathBuf>,
}

impl DaemonArgs {
    /// The admin socket to use.
    fn socket(self) -> anyhow::Result<PathBuf> {
        xlb::cli::socket_path(self.socket, self.config.as_deref())
    }

    /// Sends `req` to the daemon and prints its answer.
    fn ask(self, req: &str) -> anyhow::Result<()> {
        print!("{}", xlb::cli::request(&self.socket()?, req)?);
        Ok(())
    }
}

/// A refresh interval: 0.1 to 3600 seconds.
fn parse_interval(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.1..=3600.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a number of seconds from 0.1 to 3600")),
    }
}

fn parse_xdp_mode(s: &str) -> Result<xlb::config::XdpModeConfig, String> {
    xlb::config::XdpModeConfig::CHOICES
        .iter()
        .find(|(n, _)| *n == s)
        .map(|(_, m)| *m)
        .ok_or_else(|| format!("{s:?}: expected auto, native or generic"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    xlb::logging::init();
    let result = match cli.command {
        Command::Run { config, detach_on_exit, object } => {
            xlb::daemon::run(&config, &xlb::daemon::RunOptions { detach_on_exit, object })
        }
        Command::Stop { daemon, pin_path } => xlb::cli::stop::run(daemon.socket, daemon.config.as_deref(), pin_path),
        Command::Check { config } => xlb::cli::check::run(&config),
        Command::Withdraw { config } => xlb::config::load(&config)
            .map_err(anyhow::Error::from)
            .and_then(|cfg| xlb::daemon::announce::withdraw_all(&cfg))
            .map(|out| print!("{out}")),
        Command::Status { daemon, json } => daemon.socket().and_then(|p| xlb::cli::status::run(&p, json)),
        Command::Drain { service, backend, daemon } => daemon.ask(&format!("drain {service} {backend}")),
        Command::Enable { service, backend, daemon } => daemon.ask(&format!("enable {service} {backend}")),
        Command::Reload { daemon } => daemon.ask("reload"),
        Command::Top { daemon, interval } => {
            daemon.socket().and_then(|p| xlb::cli::top::run(&p, std::time::Duration::from_secs_f64(interval)))
        }
        Command::Trace { daemon, sample, count, seconds } => {
            let limits = xlb::monitor::trace::Limits {
                sample,
                max_events: count,
                max_duration: std::time::Duration::from_secs(seconds),
            };
            daemon.socket().and_then(|p| xlb::cli::trace::follow(&p, &limits, &mut std::io::stdout().lock()))
        }
        Command::Explain { config, client, vip, protocol } => xlb::cli::explain::run(&config, &client, &vip, &protocol),
        Command::Decap { interface, addresses, gue_port, xdp_mode, object } => {
            xlb::cli::decap::run(&xlb::cli::decap::Options { interface, addresses, gue_port, xdp_mode, object })
        }
        Command::Completions { shell } => xlb::cli::docs::completions(shell, Cli::command(), &mut std::io::stdout()),
        Command::Manpages { dir } => xlb::cli::docs::manpages(Cli::command(), &dir).map(|_| ()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            xlb::logging::print_error(&format!("{e:#}"));
            ExitCode::from(1)
        }
    }
}
