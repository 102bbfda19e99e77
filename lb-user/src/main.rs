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
    /// The daemon's status, refreshed every second until Ctrl-C.
    Top {
        /// Admin socket (default: the config's admin_socket, else /run/xlb/xlb.sock).
        #[arg(long)]
        socket: Option<PathBuf>,
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Seconds between refreshes.
        #[arg(long, default_value_t = 1.0, value_parser = parse_interval)]
        interval: f64,
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

/// A refresh interval: 0.1 to 3600 seconds.
fn parse_interval(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.1..=3600.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a number of seconds from 0.1 to 3600")),
    }
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
        Command::Top { socket, config, interval } => xlb::admin::socket_path(socket, config.as_deref())
            .and_then(|p| xlb::top::run(&p, std::time::Duration::from_secs_f64(interval))),
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
