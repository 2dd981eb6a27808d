//! `ccstream [--config FILE]`: parses the command line, loads the configuration, starts
//! telemetry and runs the service until SIGINT or SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Rule engine and observation-ingest stream processor of the Cloud Connect IoT platform.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// TOML configuration file; every key can also be set with CCSTREAM_<SECTION>__<KEY>.
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match ccstream::config::Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ccstream: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = ccstream::telemetry::init_logs(&config.log) {
        eprintln!("ccstream: {e:#}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ccstream: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let metrics = ccstream::telemetry::init_metrics()?;
        ccstream::server::run(config, metrics, ccstream::shutdown::signal()).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "ccstream failed");
            eprintln!("ccstream: {e:#}");
            ExitCode::FAILURE
        }
    }
}
