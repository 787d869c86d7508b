//! `starling`: the XMPP server binary.
//!
//! Loads and validates the configuration (or uses embedded defaults), opens the store, starts
//! the modules, the listeners and the control socket, and runs until `starlingctl stop`,
//! SIGTERM or SIGINT. Startup failures print what is wrong and where, and exit non-zero.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use std::io::IsTerminal;

use clap::Parser;
use starling_config::Config;
use tracing_subscriber::EnvFilter;

/// Command-line options.
#[derive(Parser, Debug)]
#[command(name = "starling", version, about = "Starling XMPP server")]
struct Cli {
    /// Configuration file (ejabberd.yml-shaped). Without one, embedded defaults serve
    /// `localhost` on ports 5222 (STARTTLS) and 5223 (direct TLS).
    #[arg(short, long, env = "STARLING_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory (database, generated certificate, control socket); overrides `data_dir`.
    #[arg(long, env = "STARLING_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Validate the configuration and exit.
    #[arg(long)]
    check_config: bool,
    /// Check the configuration, certificates, DNS records, listener ports and data directory
    /// (like `prosodyctl check`); one line per finding, exit 1 if anything is an error.
    #[arg(long)]
    check: bool,
    /// With --check: do not query DNS.
    #[arg(long, requires = "check")]
    no_dns: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let catalogue = starling_modules::catalogue();
    let specs = starling_modules::specs();
    let mut config = match &cli.config {
        Some(path) => match starling_config::load_file(path, &specs) {
            Ok(c) => c,
            Err(diagnostics) => {
                eprintln!("{diagnostics}");
                eprintln!("starling: the configuration has errors; nothing was started");
                return ExitCode::from(1);
            }
        },
        None => Config::embedded_default(&specs),
    };
    if let Some(dir) = cli.data_dir {
        config.data_dir = dir;
    }
    if cli.check {
        // The report lists the config's warnings itself; no log output in between.
        return check(&config, !cli.no_dns);
    }
    init_logging(&config);
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    if cli.check_config {
        println!("configuration OK ({} warnings)", config.warnings.len());
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("starling: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(config, catalogue)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("starling: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn init_logging(config: &Config) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(format!(
            "{},sqlx=warn,rustls=warn",
            config.loglevel.tracing_directive()
        ))
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}

async fn run(
    config: Config,
    catalogue: Vec<Arc<dyn starling_core::module::Module>>,
) -> anyhow::Result<()> {
    let node = starling_server::start(config, &catalogue).await?;
    node.run_until(shutdown_signal()).await;
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            std::future::pending::<()>().await;
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// `--check`: prints the findings, exit 1 if any is an error.
fn check(config: &Config, dns: bool) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("starling: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let options = starling_server::check::Options { dns, ports: true };
    let report = runtime.block_on(starling_server::check::run(config, options));
    for finding in &report.findings {
        println!("{finding}");
    }
    println!(
        "{} errors, {} warnings",
        report.count(starling_server::check::Level::Error),
        report.count(starling_server::check::Level::Warning)
    );
    if report.failed() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
