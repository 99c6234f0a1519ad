//! The `credgate` binary: parse the command line, load config, run.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use credgate::config::{Config, LogFormat};
use credgate::server::{self, Listeners};
use credgate::state::AppState;
use secrecy::SecretString;
use tokio::sync::watch;
use tracing_subscriber::EnvFilter;

// Small, frequent allocations on the request path (headers, bodies, futures)
// cost less with mimalloc's per-thread free lists than with glibc's arenas.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "credgate",
    about = "Credential-injecting sidecar proxy for MCP servers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy and ops listeners.
    Serve {
        #[arg(long, short)]
        config: PathBuf,
        /// Bootstrap admin bearer token.
        #[arg(long, env = "CREDGATE_ADMIN_TOKEN", hide_env_values = true)]
        admin_token: Option<SecretString>,
    },
    /// Validate a config file and print it with defaults filled in.
    CheckConfig {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Make a new signing key the active one (old keys stay published).
    /// Running replicas pick it up within `store.sync_interval_seconds`.
    RotateSigningKey {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Re-encrypt a tenant's credentials under the newest version of its key,
    /// after the key was rotated in Vault Transit.
    Rewrap {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        tenant: String,
    },
    /// Print the version.
    Version,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => {
            println!("credgate {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::RotateSigningKey { config } => {
            let result = Config::load(&config)
                .map_err(|e| anyhow::anyhow!("{}: {e}", config.display()))
                .and_then(|c| {
                    tokio::runtime::Runtime::new()?.block_on(async {
                        let state = AppState::build(c, None).await?;
                        Ok(state.authority.rotate_signing_key().await?)
                    })
                });
            match result {
                Ok(kid) => {
                    println!("active signing key: {kid}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("credgate: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Rewrap { config, tenant } => {
            let result = credgate::ids::validate(&tenant)
                .map_err(anyhow::Error::from)
                .and_then(|_| {
                    Config::load(&config).map_err(|e| anyhow::anyhow!("{}: {e}", config.display()))
                })
                .and_then(|c| {
                    tokio::runtime::Runtime::new()?.block_on(async {
                        let store = credgate::store::open(&c.store).await?;
                        Ok(store.rewrap_tenant(&tenant).await?)
                    })
                });
            match result {
                Ok(n) => {
                    println!("rewrapped {n} credential record(s) of {tenant}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("credgate: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::CheckConfig { config } => match Config::load(&config) {
            Ok(c) => {
                print!("{}", c.to_redacted_toml());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("credgate: {}: {e}", config.display());
                ExitCode::FAILURE
            }
        },
        Command::Serve {
            config,
            admin_token,
        } => {
            let config_path = config;
            let config = match Config::load(&config_path) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("credgate: {}: {e}", config_path.display());
                    return ExitCode::FAILURE;
                }
            };
            let log_level = init_tracing(&config);
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("credgate: cannot start runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(serve(config, config_path, admin_token, log_level)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("credgate: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Sets the log filter to a reloaded `log.level`; `None` when `RUST_LOG` is
/// set (it wins over the file, also on reload).
type SetLogLevel = Option<LevelSetter>;
type LevelSetter = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

fn init_tracing(config: &Config) -> SetLogLevel {
    let from_env = EnvFilter::try_from_default_env().ok();
    let env_wins = from_env.is_some();
    let filter = from_env.unwrap_or_else(|| EnvFilter::new(&config.log.level));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let set: LevelSetter = match config.log.format {
        LogFormat::Json => {
            let builder = builder.json().with_filter_reloading();
            let handle = builder.reload_handle();
            builder.init();
            Box::new(move |level| {
                let filter = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
                handle.reload(filter).map_err(|e| e.to_string())
            })
        }
        LogFormat::Pretty => {
            let builder = builder.with_filter_reloading();
            let handle = builder.reload_handle();
            builder.init();
            Box::new(move |level| {
                let filter = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
                handle.reload(filter).map_err(|e| e.to_string())
            })
        }
    };
    (!env_wins).then_some(set)
}

async fn serve(
    config: Config,
    config_path: PathBuf,
    admin_token: Option<SecretString>,
    log_level: SetLogLevel,
) -> anyhow::Result<()> {
    if admin_token.is_none() {
        tracing::warn!(
            "CREDGATE_ADMIN_TOKEN is not set: only admin-scoped client tokens can use the admin API"
        );
    }
    let state = Arc::new(
        AppState::build(config, admin_token)
            .await
            .context("starting credgate")?,
    );
    let listeners = Listeners::bind(&state.config)
        .await
        .context("binding listeners")?;
    tracing::info!(
        proxy = %listeners.proxy.local_addr()?,
        ops = %listeners.ops.local_addr()?,
        store = state.store.backend(),
        "credgate listening"
    );
    let _scheduler = credgate::refresh::schedule::start(
        state.credentials.clone(),
        std::time::Duration::from_secs(state.config.refresh.interval_seconds.max(1)),
        state.config.refresh.before_seconds as i64,
    )
    .await
    .map_err(|e| anyhow::anyhow!("refresh scheduler: {e}"))?;
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(state.authority.clone().sync_loop(stop_rx.clone()));
    let limits = state.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
        loop {
            tick.tick().await;
            limits.live.load().rate_limits.evict_idle();
        }
    });
    tokio::spawn(reload_on_sighup(state.clone(), config_path, log_level));
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down: no new connections, draining");
        let _ = stop_tx.send(true);
    });
    server::serve(state, listeners, stop_rx).await?;
    tracing::info!("stopped");
    Ok(())
}

/// SIGHUP: re-read the config file; a bad one is logged and the running
/// config kept. Applies what can be applied live and names every other
/// changed key (see `credgate::reload`).
async fn reload_on_sighup(state: Arc<AppState>, path: PathBuf, log_level: SetLogLevel) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return;
    };
    while hup.recv().await.is_some() {
        match Config::load(&path)
            .map_err(|e| e.to_string())
            .and_then(|c| {
                let restart = state.reload(&c, log_level.is_some())?;
                if let Some(set) = &log_level {
                    set(&c.log.level).map_err(|e| format!("log.level: {e}"))?;
                }
                Ok(restart)
            }) {
            Ok(restart) if restart.is_empty() => tracing::info!("configuration reloaded"),
            Ok(restart) => tracing::warn!(
                needs_restart = %restart.join(", "),
                "configuration reloaded, except changed settings that apply only after a restart: {}",
                restart.join(", ")
            ),
            Err(e) => {
                tracing::error!(error = %e, "new configuration refused; keeping the running one")
            }
        }
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
