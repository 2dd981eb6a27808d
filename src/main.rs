//! `ccstream [--config FILE] [check-config | healthcheck [--ready] | dead-letter list|replay |
//! credentials create|list|revoke | directory import | reindex]`:
//! parses the command line, loads the configuration, and runs the service until SIGINT or
//! SIGTERM, checks the configuration, probes a running service, or lists and replays the webhook
//! dead letters.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use ccstream::config::Config;
use ccstream::credentials;
use ccstream::dead_letters::{self, Selection};
use clap::{Parser, Subcommand};

/// Rule engine and observation-ingest stream processor of the Cloud Connect IoT platform.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// TOML configuration file; every key can also be set with CCSTREAM_<SECTION>__<KEY>.
    #[arg(long, short, value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Load and check the configuration (file and environment), print it with secrets hidden,
    /// and exit: 0 when it is valid, 2 with the offending key when it is not.
    CheckConfig,
    /// Ask the running service's /healthz (or /readyz) on api.listen: exit 0 on 200, else 1.
    /// For container health checks in images without curl.
    Healthcheck {
        /// Ask /readyz instead of /healthz.
        #[arg(long)]
        ready: bool,
        /// Seconds to wait for the answer.
        #[arg(long, default_value_t = 5)]
        timeout_secs: u64,
    },
    /// Webhook firings that could not be delivered (`webhook.dead_letter_dir`).
    DeadLetter {
        #[command(subcommand)]
        action: DeadLetterAction,
    },
    /// Static access keys for `api.auth = "sigv4"` (in the rule store, secrets sealed under
    /// `api.sigv4.master_key`).
    Credentials {
        #[command(subcommand)]
        action: CredentialsAction,
    },
    /// Index the stored objects' records into search.url again (a gap, or a whole index);
    /// documents are overwritten, never doubled. Prints {"objects", "records", "indexed", ...}.
    Reindex(ccstream::reindex::ReindexArgs),
    /// The directory of things and domains.
    Directory {
        #[command(subcommand)]
        action: DirectoryAction,
    },
}

#[derive(Debug, Subcommand)]
enum DirectoryAction {
    /// Load every thing from the platform's ThingLambda (FIND, paged) into the store; prints
    /// {"things", "domains", "pages", "skipped"}.
    Import(ccstream::resolver::import::ImportArgs),
}

#[derive(Debug, Subcommand)]
enum CredentialsAction {
    /// Make a key and print {"accessKeyId", "secretAccessKey"}: the only time the secret is shown.
    Create {
        #[arg(long)]
        user: String,
        /// Read or ReadWrite.
        #[arg(long)]
        role: String,
        /// The domain the key's caller belongs to (it sees that domain and its subdomains).
        #[arg(long)]
        domain: String,
    },
    /// Every key with its user, role, domain and dates (never a secret).
    List {
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Refuse the key from now on (every replica within a second).
    Revoke { access_key_id: String },
}

#[derive(Debug, Subcommand)]
enum DeadLetterAction {
    /// Summarise the dead letters by rule, destination and reason.
    List {
        #[command(flatten)]
        selection: Selection,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Send the selected dead letters not replayed yet again, through the same path as the
    /// service (SSRF guard, retries, breakers, their Idempotency-Key), and mark them replayed;
    /// those that fail again become new dead letters. Prints a JSON report.
    Replay {
        #[command(flatten)]
        selection: Selection,
        /// List what would be replayed; send nothing.
        #[arg(long)]
        dry_run: bool,
        /// Seconds to wait for the deliveries; what is not finished then is not marked.
        #[arg(long, default_value_t = 300)]
        wait_secs: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ccstream: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        None => run(config),
        Some(Command::CheckConfig) => check_config(&config),
        Some(Command::Healthcheck {
            ready,
            timeout_secs,
        }) => healthcheck(&config, ready, Duration::from_secs(timeout_secs)),
        Some(Command::DeadLetter { action }) => dead_letter(&config, action),
        Some(Command::Credentials { action }) => credentials(&config, action),
        Some(Command::Directory {
            action: DirectoryAction::Import(args),
        }) => directory_import(&config, &args),
        Some(Command::Reindex(args)) => reindex(&config, &args),
    }
}

fn reindex(config: &Config, args: &ccstream::reindex::ReindexArgs) -> ExitCode {
    let Some(runtime) = runtime(&mut tokio::runtime::Builder::new_multi_thread()) else {
        return ExitCode::FAILURE;
    };
    printed(runtime.block_on(ccstream::reindex::run(config, args)))
}

fn directory_import(config: &Config, args: &ccstream::resolver::import::ImportArgs) -> ExitCode {
    let Some(runtime) = runtime(&mut tokio::runtime::Builder::new_current_thread()) else {
        return ExitCode::FAILURE;
    };
    printed(runtime.block_on(ccstream::resolver::import::run(config, args)))
}

fn credentials(config: &Config, action: CredentialsAction) -> ExitCode {
    let Some(runtime) = runtime(&mut tokio::runtime::Builder::new_current_thread()) else {
        return ExitCode::FAILURE;
    };
    let result = runtime.block_on(async {
        match action {
            CredentialsAction::Create { user, role, domain } => {
                credentials::create(config, &user, &role, &domain).await
            }
            CredentialsAction::List { json } => credentials::list(config, json).await,
            CredentialsAction::Revoke { access_key_id } => {
                credentials::revoke(config, &access_key_id).await
            }
        }
    });
    printed(result)
}

/// Prints a command's output, or its error on stderr.
fn printed(result: anyhow::Result<String>) -> ExitCode {
    match result {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ccstream: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dead_letter(config: &Config, action: DeadLetterAction) -> ExitCode {
    let Some(runtime) = runtime(&mut tokio::runtime::Builder::new_multi_thread()) else {
        return ExitCode::FAILURE;
    };
    let result = match action {
        DeadLetterAction::List { selection, json } => dead_letters::list(config, &selection, json),
        DeadLetterAction::Replay {
            selection,
            dry_run,
            wait_secs,
        } => runtime.block_on(dead_letters::replay(
            config,
            &selection,
            dry_run,
            Duration::from_secs(wait_secs),
        )),
    };
    printed(result)
}

fn run(config: Config) -> ExitCode {
    if let Err(e) = ccstream::telemetry::init_logs(&config.log) {
        eprintln!("ccstream: {e:#}");
        return ExitCode::from(2);
    }
    let Some(runtime) = runtime(&mut tokio::runtime::Builder::new_multi_thread()) else {
        return ExitCode::FAILURE;
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

fn check_config(config: &Config) -> ExitCode {
    match config.redacted().to_toml() {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ccstream: the configuration is valid but cannot be printed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn healthcheck(config: &Config, ready: bool, timeout: Duration) -> ExitCode {
    let Some(runtime) = runtime(&mut tokio::runtime::Builder::new_current_thread()) else {
        return ExitCode::FAILURE;
    };
    let path = if ready { "/readyz" } else { "/healthz" };
    match runtime.block_on(ccstream::healthcheck::probe(
        config.api.listen,
        path,
        timeout,
    )) {
        Ok(body) => {
            print!("{body}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ccstream: {e}");
            ExitCode::FAILURE
        }
    }
}

fn runtime(builder: &mut tokio::runtime::Builder) -> Option<tokio::runtime::Runtime> {
    match builder.enable_all().build() {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("ccstream: cannot start the runtime: {e}");
            None
        }
    }
}
