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
    /// Access keys and registry passwords.
    Auth {
        #[command(subcommand)]
        command: AuthCommand,
    },
    /// Removes content no repository references, once, beside running servers (they take
    /// turns through a lease in storage). Prints a JSON summary; a progress bar on a terminal.
    Gc {
        /// Config file (TOML). Default: config/ferry.toml when it exists.
        #[arg(long, env = "FERRY_CONFIG")]
        config: Option<PathBuf>,
        /// Only report what would be removed.
        #[arg(long)]
        dry_run: bool,
    },
    /// Applies lifecycle policies and pull-through cache limits once, beside running servers
    /// (under the same lease as their schedule). Prints a JSON report of what expired.
    Lifecycle {
        #[command(subcommand)]
        command: LifecycleCommand,
    },
    /// Replication tools.
    Replication {
        #[command(subcommand)]
        command: ReplicationCommand,
    },
    /// The per-repository image index.
    Index {
        #[command(subcommand)]
        command: IndexCommand,
    },
    /// Shows what each repository and pull-through rule stores: repositories by size (shared
    /// layers counted in each), the total (each stored digest once), then the rules.
    Usage {
        /// Config file (TOML). Default: config/ferry.toml when it exists.
        #[arg(long, env = "FERRY_CONFIG")]
        config: Option<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ReplicationCommand {
    /// Replicates images pushed before the replication configuration existed (ECR never
    /// does), beside running servers. Images already complete at a destination are skipped,
    /// so running it again copies nothing twice. Prints a JSON report; a progress bar on a
    /// terminal, progress in the log otherwise.
    Backfill {
        /// Config file (TOML). Default: config/ferry.toml when it exists.
        #[arg(long, env = "FERRY_CONFIG")]
        config: Option<PathBuf>,
        /// Only repositories whose names start with this.
        #[arg(long)]
        repository: Option<String>,
        /// Only this destination: a registry id, or `<registry id>/<region>`.
        #[arg(long)]
        destination: Option<String>,
    },
}

#[derive(Subcommand)]
enum IndexCommand {
    /// Compares each repository's image index (the tags, size and subject kept in its manifest
    /// links) with its tag records and manifests, beside running servers. Prints a JSON report;
    /// exits 1 when something was wrong and was not repaired.
    Check {
        /// Config file (TOML). Default: config/ferry.toml when it exists.
        #[arg(long, env = "FERRY_CONFIG")]
        config: Option<PathBuf>,
        /// Only this repository.
        #[arg(long)]
        repository: Option<String>,
        /// Rewrite the links that are wrong.
        #[arg(long)]
        repair: bool,
    },
}

#[derive(Subcommand)]
enum LifecycleCommand {
    /// One lifecycle round.
    Run {
        /// Config file (TOML). Default: config/ferry.toml when it exists.
        #[arg(long, env = "FERRY_CONFIG")]
        config: Option<PathBuf>,
        /// Only this repository's policy (no cache limits).
        #[arg(long)]
        repository: Option<String>,
        /// Only report what would expire.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand)]
enum AuthCommand {
    /// Prints a new access key id, its secret (shown once) and the secret's argon2id hash for
    /// `[[auth.principals]]`.
    NewKey {
        /// The principal's name, for the config snippet.
        #[arg(long)]
        name: String,
    },
    /// Prints a registry password (`docker login --username AWS --password-stdin`), as
    /// `aws ecr get-login-password` does.
    Token {
        /// Config file (TOML). Default: config/ferry.toml when it exists.
        #[arg(long, env = "FERRY_CONFIG")]
        config: Option<PathBuf>,
        /// The principal's access key id.
        #[arg(long)]
        access_key_id: String,
        /// A file holding the secret access key.
        #[arg(long)]
        secret_file: PathBuf,
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
            match load(Some(file)).and_then(|c| ferry::validate(&c).map(|_| c)) {
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
        Command::Auth { command } => auth_command(command),
        Command::Gc { config, dry_run } => gc_command(config, dry_run),
        Command::Lifecycle { command: LifecycleCommand::Run { config, repository, dry_run } } => {
            lifecycle_command(config, repository, dry_run)
        }
        Command::Usage { config, json } => usage_command(config, json),
        Command::Index { command: IndexCommand::Check { config, repository, repair } } => {
            index_command(config, repository, repair)
        }
        Command::Replication { command: ReplicationCommand::Backfill { config, repository, destination } } => {
            backfill_command(config, repository, destination)
        }
        Command::Serve { config, listen, admin_listen, data_dir } => {
            let path = config.clone();
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
            runtime.block_on(serve(c, path))
        }
    }
}

async fn serve(config: Config, path: Option<PathBuf>) -> ExitCode {
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
    if let Some(authenticator) = server.auth_reloader() {
        tokio::spawn(reload_on_sighup(authenticator, path));
    }
    server.wait().await;
    ExitCode::SUCCESS
}

/// On SIGHUP, reads the config again and takes its principals and policies; a config that
/// does not validate is refused (logged), and the old one stays in force.
async fn reload_on_sighup(
    authenticator: std::sync::Arc<ferry::auth::authenticator::Authenticator>,
    path: Option<PathBuf>,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else { return };
    while hup.recv().await.is_some() {
        let reloaded = load(path.clone()).and_then(|c| {
            c.auth.validate()?;
            ferry::auth::check_config(&c.auth)?;
            authenticator.reload(&c.auth)
        });
        match reloaded {
            Ok(()) => tracing::info!("reloaded principals and policies"),
            Err(e) => tracing::warn!(error = %e, "SIGHUP: the config was not reloaded"),
        }
    }
}

fn auth_command(command: AuthCommand) -> ExitCode {
    match command {
        AuthCommand::NewKey { name } => match ferry::auth::secrets::new_key() {
            Ok(k) => {
                println!("access key id:     {}", k.access_key_id);
                println!("secret access key: {}", k.secret);
                println!();
                println!("[[auth.principals]]");
                println!("name = {name:?}");
                println!("access_key_id = {:?}", k.access_key_id);
                println!("secret_access_key_hash = {:?}", k.hash);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ferry: cannot hash the new secret: {e}");
                ExitCode::FAILURE
            }
        },
        AuthCommand::Token { config, access_key_id, secret_file } => {
            let c = match load(config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("ferry: {e}");
                    return ExitCode::from(2);
                }
            };
            let secret = match std::fs::read_to_string(&secret_file) {
                Ok(s) => s.trim_end_matches(['\n', '\r']).to_owned(),
                Err(e) => {
                    eprintln!("ferry: cannot read {}: {e}", secret_file.display());
                    return ExitCode::from(2);
                }
            };
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("ferry: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(ferry::issue_token(&c, &access_key_id, &secret)) {
                Ok((token, _)) => {
                    println!("{token}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("ferry: {e}");
                    ExitCode::from(2)
                }
            }
        }
    }
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

/// The config and a runtime for a one-shot command, or the exit code saying why not.
fn one_shot(config: Option<PathBuf>) -> Result<(Config, tokio::runtime::Runtime), ExitCode> {
    let c = load(config).map_err(|e| {
        eprintln!("ferry: {e}");
        ExitCode::from(2)
    })?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| {
        eprintln!("ferry: cannot start the runtime: {e}");
        ExitCode::FAILURE
    })?;
    Ok((c, runtime))
}

/// [`one_shot`] for a command that may be limited to one `--repository` (a bad name exits 2).
fn one_shot_for(
    config: Option<PathBuf>,
    repository: Option<String>,
) -> Result<(Config, tokio::runtime::Runtime, Option<ferry::oci::RepositoryName>), ExitCode> {
    let (c, runtime) = one_shot(config)?;
    let repository = repository.map(|r| ferry::oci::RepositoryName::parse(&r)).transpose().map_err(|e| {
        eprintln!("ferry: --repository: {e}");
        ExitCode::from(2)
    })?;
    Ok((c, runtime, repository))
}

fn lifecycle_command(config: Option<PathBuf>, repository: Option<String>, dry_run: bool) -> ExitCode {
    let (c, runtime, repository) = match one_shot_for(config, repository) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let clock = std::sync::Arc::new(ferry::clock::SystemClock);
    print_report(runtime.block_on(ferry::run_lifecycle(&c, repository.as_ref(), dry_run, clock)))
}

fn index_command(config: Option<PathBuf>, repository: Option<String>, repair: bool) -> ExitCode {
    let (c, runtime, repository) = match one_shot_for(config, repository) {
        Ok(x) => x,
        Err(code) => return code,
    };
    match runtime.block_on(ferry::index_check(&c, repository.as_ref(), repair)) {
        Ok(report) => {
            println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
            match report.wrong > 0 && !repair {
                true => ExitCode::FAILURE,
                false => ExitCode::SUCCESS,
            }
        }
        Err(e) => {
            eprintln!("ferry: {e}");
            ExitCode::FAILURE
        }
    }
}

fn usage_command(config: Option<PathBuf>, json: bool) -> ExitCode {
    let (c, runtime) = match one_shot(config) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let report = match runtime.block_on(ferry::usage(&c)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ferry: {e}");
            return ExitCode::FAILURE;
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
        return ExitCode::SUCCESS;
    }
    let width = report.repositories.iter().map(|r| r.repository.len()).max().unwrap_or(0).max(10);
    println!("{:<width$}  {:>9}  {:>7}  {:>14}  {:>10}", "REPOSITORY", "MANIFESTS", "BLOBS", "BYTES", "SIZE");
    for r in &report.repositories {
        println!(
            "{:<width$}  {:>9}  {:>7}  {:>14}  {:>10}",
            r.repository,
            r.manifests,
            r.blobs,
            r.bytes,
            human(r.bytes)
        );
    }
    println!(
        "total (each stored digest once): {} objects, {} bytes ({})",
        report.total_objects,
        report.total_bytes,
        human(report.total_bytes)
    );
    if !report.rules.is_empty() {
        println!();
        println!("{:<width$}  {:>12}  {:>14}  {:>10}", "PULL-THROUGH RULE", "REPOSITORIES", "BYTES", "SIZE");
        for r in &report.rules {
            println!("{:<width$}  {:>12}  {:>14}  {:>10}", r.rule, r.repositories, r.bytes, human(r.bytes));
        }
    }
    ExitCode::SUCCESS
}

/// Bytes in binary units, one decimal.
fn human(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < units.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", units[unit])
    }
}

fn gc_command(config: Option<PathBuf>, dry_run: bool) -> ExitCode {
    let (c, runtime) = match one_shot(config) {
        Ok(x) => x,
        Err(code) => return code,
    };
    // A progress bar only for a person watching; scripts get the JSON alone.
    let bar = std::io::IsTerminal::is_terminal(&std::io::stderr()).then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {pos}/{len}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    let progress = |p: ferry::gc::Progress| {
        let Some(bar) = &bar else { return };
        match p {
            ferry::gc::Progress::Mark(done, total) => {
                bar.set_message("marking repositories");
                bar.set_length(total);
                bar.set_position(done);
            }
            ferry::gc::Progress::Sweep(listed) => {
                bar.set_message("sweeping content");
                bar.set_length(listed);
                bar.set_position(listed);
            }
        }
    };
    let result = runtime.block_on(ferry::collect_garbage(&c, dry_run, &progress));
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    print_report(result)
}

fn backfill_command(config: Option<PathBuf>, repository: Option<String>, destination: Option<String>) -> ExitCode {
    let (c, runtime) = match one_shot(config) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    if !terminal {
        init_logging(&c);
    }
    let bar = terminal.then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} replicating images [{bar:30}] {pos}/{len} {elapsed}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    let progress = |done: usize, total: usize| {
        if let Some(bar) = &bar {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        }
    };
    let scope = ferry::replication::backfill::BackfillScope { repository_prefix: repository, destination };
    let result = runtime.block_on(ferry::replication_backfill(&c, &scope, &progress));
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    print_report(result)
}

/// Prints a one-shot command's report as JSON, or its error.
fn print_report<T: serde::Serialize>(result: Result<T, ferry::StartError>) -> ExitCode {
    match result {
        Ok(report) => {
            println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ferry: {e}");
            ExitCode::FAILURE
        }
    }
}
