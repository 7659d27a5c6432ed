//! The `ferry` command: a thin CLI over the library.

use clap::{Parser, Subcommand};
use ferry::config::{Config, LogFormat};
use std::path::PathBuf;
use std::process::ExitCode;

// jemalloc, not glibc's malloc: with glibc, blobs and manifests of every size passing through
// the hot tier left the heap fragmented, and RSS grew without bound beside a full hot tier
// (measured by `cargo bench --bench soak`); jemalloc keeps it flat.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(name = "ferry", version, about = "A container registry and pull-through cache")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the registry.
    Serve {
        /// Config file (TOML). Default: config/ferry.toml when it exists.
        #[arg(long, env = "FERRY_CONFIG")]
        config: Option<PathBuf>,
        /// Registry address, e.g. 127.0.0.1:5000 (overrides server.listen).
        #[arg(long)]
        listen: Option<String>,
        /// Admin address for /metrics and health (overrides server.admin_listen).
        #[arg(long)]
        admin_listen: Option<String>,
        /// Data directory (overrides storage.data_dir).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validates a config file and prints the effective settings, secrets redacted.
    Check {
        /// The config file.
        file: PathBuf,
    },
}

fn load(path: Option<PathBuf>) -> Result<Config, ferry::config::ConfigError> {
    let default = PathBuf::from("config/ferry.toml");
    let path = path.or_else(|| default.is_file().then_some(default));
    Config::load(path.as_deref(), std::env::vars())
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log.level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only on a terminal: logs written to a file or a pipe stay plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Config { command: ConfigCommand::Check { file } } => {
            match load(Some(file)).and_then(|c| c.validate().map(|_| c)) {
                Ok(c) => {
                    print!("{}", c.to_redacted_toml());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("ferry: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Serve { config, listen, admin_listen, data_dir } => {
            let mut c = match load(config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("ferry: {e}");
                    return ExitCode::from(2);
                }
            };
            if let Some(v) = listen {
                c.server.listen = v;
            }
            if let Some(v) = admin_listen {
                c.server.admin_listen = v;
            }
            if let Some(v) = data_dir {
                c.storage.data_dir = v;
            }
            if let Err(e) = c.validate() {
                eprintln!("ferry: {e}");
                return ExitCode::from(2);
            }
            init_logging(&c);
            let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("ferry: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            runtime.block_on(serve(c))
        }
    }
}

async fn serve(config: Config) -> ExitCode {
    let server = match ferry::start(config).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ferry: {e}");
            return ExitCode::from(2);
        }
    };
    let trigger = server.shutdown_trigger();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down: finishing in-flight requests");
        let _ = trigger.send(true);
    });
    server.wait().await;
    ExitCode::SUCCESS
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
