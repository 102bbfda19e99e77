use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

/// xlb: a layer-4 load balancer whose data path is an XDP program.
#[derive(Parser, Debug)]
#[command(name = "xlb", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the daemon: load and attach the XDP program, fill the maps, serve.
    Run {
        /// Configuration file (TOML).
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Validate a configuration; print the plan, or every problem found.
    Check {
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Ask the running daemon: services, backends, health, role, counters.
    Status {
        /// Admin socket (default: the config's admin_socket, else /run/xlb/xlb.sock).
        #[arg(long)]
        socket: Option<PathBuf>,
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Print sampled data-path decisions of the running daemon, live: flow,
    /// service, conntrack hit or miss, backend, action or drop reason.
    Trace {
        /// Admin socket (default: the config's admin_socket, else /run/xlb/xlb.sock).
        #[arg(long)]
        socket: Option<PathBuf>,
        #[arg(short, long)]
        config: Option<PathBuf>,
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
        #[arg(short, long)]
        config: PathBuf,
        /// Client address and port, e.g. 198.18.0.1:40000 or [2001:db8::1]:40000.
        client: String,
        /// VIP address and port, e.g. 198.18.0.10:80.
        vip: String,
        /// tcp or udp.
        #[arg(default_value = "tcp")]
        protocol: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let result = match cli.command {
        Command::Run { config } => xlb::daemon::run(&config),
        Command::Check { config } => xlb::check::run(&config),
        Command::Status { socket, config } => xlb::admin::socket_path(socket, config.as_deref())
            .and_then(|p| xlb::admin::request(&p, "status"))
            .map(|t| print!("{t}")),
        Command::Trace { socket, config, sample, count, seconds } => {
            let limits = xlb::trace::Limits {
                sample,
                max_events: count,
                max_duration: std::time::Duration::from_secs(seconds),
            };
            xlb::admin::socket_path(socket, config.as_deref())
                .and_then(|p| xlb::trace::follow(&p, &limits, &mut std::io::stdout().lock()))
        }
        Command::Explain { config, client, vip, protocol } => {
            xlb::explain::run(&config, &client, &vip, &protocol)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
