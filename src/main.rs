//! The `credgate` binary: parse the command line, load config, run.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use credgate::config::{Config, ConfigError, ENV_ADMIN_TOKEN, LogFormat, StoreBackend};
use credgate::reload::ReloadError;
use credgate::secrets::Secrets;
use credgate::server::{self, Listeners};
use credgate::shutdown::Background;
use credgate::state::AppState;
use secrecy::ExposeSecret;
use tracing_subscriber::EnvFilter;

// Small, frequent allocations on the request path (headers, bodies, futures)
// cost less with mimalloc's per-thread free lists than with glibc's arenas.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CONFIG_HELP: &str = "Path of the TOML configuration file (see config/credgate.toml and \
     docs/configuration.md); relative paths inside it are resolved against its folder";

#[derive(Parser)]
#[command(
    name = "credgate",
    version,
    about = "Credential-injecting sidecar proxy for MCP servers",
    after_help = "Secrets come from the environment only: CREDGATE_ADMIN_TOKEN, \
                  CREDGATE_MASTER_KEY, <INTEGRATION>_CLIENT_SECRET, VAULT_*. Any config key \
                  can be overridden as CREDGATE_<SECTION>__<KEY>."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy and ops listeners.
    /// The bootstrap admin token comes from `CREDGATE_ADMIN_TOKEN` only (never from
    /// the command line, where `ps` would show it).
    Serve {
        #[arg(long, short, help = CONFIG_HELP)]
        config: PathBuf,
    },
    /// Validate a config file and print it with defaults filled in.
    CheckConfig {
        #[arg(long, short, help = CONFIG_HELP)]
        config: PathBuf,
    },
    /// Make a new signing key the active one (old keys stay published).
    /// Running replicas pick it up within `store.sync_interval_seconds`.
    RotateSigningKey {
        #[arg(long, short, help = CONFIG_HELP)]
        config: PathBuf,
    },
    /// Re-encrypt a tenant's credentials under the newest version of its key,
    /// after the key was rotated in Vault Transit.
    Rewrap {
        #[arg(long, short, help = CONFIG_HELP)]
        config: PathBuf,
        /// The tenant whose credentials to re-encrypt.
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
            let Some(c) = load_config(&config) else {
                return ExitCode::FAILURE;
            };
            let result = tokio::runtime::Runtime::new()
                .map_err(anyhow::Error::from)
                .and_then(|rt| {
                    rt.block_on(async {
                        let secrets = Arc::new(Secrets::from_env(std::env::vars()));
                        let state = AppState::build(c, secrets).await?;
                        Ok(state.authority.rotate_signing_key().await?)
                    })
                });
            match result {
                Ok(kid) => {
                    println!("active signing key: {kid}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e),
            }
        }
        Command::Rewrap { config, tenant } => {
            if let Err(e) = credgate::ids::validate(&tenant) {
                eprintln!("credgate: --tenant: {e}");
                return ExitCode::FAILURE;
            }
            let Some(c) = load_config(&config) else {
                return ExitCode::FAILURE;
            };
            let result = tokio::runtime::Runtime::new()
                .map_err(anyhow::Error::from)
                .and_then(|rt| {
                    rt.block_on(async {
                        let secrets = Secrets::from_env(std::env::vars());
                        let store = credgate::store::open(&c.store, &secrets).await?;
                        Ok(store.rewrap_tenant(&tenant).await?)
                    })
                });
            match result {
                Ok(n) => {
                    println!("rewrapped {n} credential record(s) of {tenant}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e),
            }
        }
        Command::CheckConfig { config } => match load_config(&config) {
            Some(c) => {
                print!("{}", c.to_redacted_toml());
                ExitCode::SUCCESS
            }
            None => ExitCode::FAILURE,
        },
        Command::Serve { config } => {
            let config_path = std::path::absolute(&config).unwrap_or(config);
            let Some(config) = load_config(&config_path) else {
                return ExitCode::FAILURE;
            };
            let filter = match log_filter(&config) {
                Ok(f) => f,
                Err(e) => {
                    eprintln!("credgate: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let log_level = init_tracing(&config, filter);
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("credgate: cannot start runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(serve(config, config_path, log_level)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&e),
            }
        }
    }
}

/// Loads and validates the config, and checks `RUST_LOG`; on error prints one line
/// (which file or which environment variable, what is wrong) and returns `None`.
fn load_config(path: &Path) -> Option<Config> {
    let result = Config::load(path).and_then(|c| {
        log_filter(&c).map_err(ConfigError::Invalid)?;
        Ok(c)
    });
    match result {
        Ok(c) => Some(c),
        // These name what is wrong themselves (the file, or the variable).
        Err(e @ (ConfigError::Read { .. } | ConfigError::Env(_))) => {
            eprintln!("credgate: {e}");
            None
        }
        Err(e) => {
            eprintln!("credgate: {}: {e}", path.display());
            None
        }
    }
}

/// Prints a start-up error once: each cause of the chain that its parent does not
/// already say, then a hint naming what to change.
fn fail(e: &anyhow::Error) -> ExitCode {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
    }
    eprintln!("credgate: {line}");
    if let Some(hint) = hint(&line) {
        eprintln!("hint: {hint}");
    }
    ExitCode::FAILURE
}

fn hint(message: &str) -> Option<&'static str> {
    let m = message.to_ascii_lowercase();
    Some(if m.contains("address already in use") {
        "another process listens on that address: stop it, or change `proxy.listen` / \
         `ops.listen` (e.g. CREDGATE_PROXY__LISTEN=127.0.0.1:8081, and `proxy.public_url` \
         to match)"
    } else if m.contains("cannot assign requested address") {
        "that IP is not on this machine: change `proxy.listen` / `ops.listen`"
    } else if m.contains("permission denied") && m.contains("bind") {
        "ports below 1024 need privileges: choose another port in `proxy.listen` / `ops.listen`"
    } else if m.contains("master key") {
        "the embedded store's master key comes from CREDGATE_MASTER_KEY (32 bytes, base64) \
         or `store.master_key_file`; it must be the key the store was created with"
    } else if m.contains("store") && m.contains("permission denied") {
        "credgate cannot write `store.path` (or its key file): fix the folder's permissions \
         or change `store.path`"
    } else if m.contains("audit log") {
        "check `audit.path` (\"-\" writes the audit log to stdout)"
    } else if m.contains("vault") {
        "check `[store.vault]` and the VAULT_* variables (VAULT_ADDR, VAULT_TOKEN, …)"
    } else {
        return None;
    })
}

/// The log filter: `RUST_LOG` when set, else `log.level`. A filter that names no
/// level (`verbose`) is refused rather than silencing every log line.
fn log_filter(config: &Config) -> Result<EnvFilter, String> {
    let (source, text) = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => ("RUST_LOG", v),
        _ => ("log.level", config.log.level.clone()),
    };
    level_filter(&text).map_err(|e| format!("{source} = {text:?}: {e}"))
}

fn level_filter(text: &str) -> Result<EnvFilter, String> {
    credgate::config::check_log_filter(text)?;
    EnvFilter::try_new(text).map_err(|e| e.to_string())
}

/// Sets the log filter to a reloaded `log.level`; `None` when `RUST_LOG` is
/// set (it wins over the file, also on reload).
type SetLogLevel = Option<LevelSetter>;
type LevelSetter = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

fn init_tracing(config: &Config, filter: EnvFilter) -> SetLogLevel {
    let env_wins = std::env::var("RUST_LOG").is_ok_and(|v| !v.trim().is_empty());
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let set = match config.log.format {
        LogFormat::Json => {
            let builder = builder.json().with_filter_reloading();
            let set = level_setter(builder.reload_handle());
            builder.init();
            set
        }
        LogFormat::Pretty => {
            let builder = builder.with_filter_reloading();
            let set = level_setter(builder.reload_handle());
            builder.init();
            set
        }
    };
    (!env_wins).then_some(set)
}

fn level_setter<S: 'static>(
    handle: tracing_subscriber::reload::Handle<EnvFilter, S>,
) -> LevelSetter {
    Box::new(move |level| {
        handle
            .reload(level_filter(level)?)
            .map_err(|e| e.to_string())
    })
}

/// Start-up warnings about a config that works but probably not as meant.
fn startup_warnings(config: &Config, secrets: &Secrets) {
    if secrets
        .admin_token()
        .is_none_or(|t| t.expose_secret().is_empty())
    {
        tracing::warn!(
            "{ENV_ADMIN_TOKEN} is not set: every /api/admin call will answer 401; set it (at \
             least 32 random characters) and restart"
        );
    }
    for var in credgate::config::unmatched_env_vars(std::env::vars()) {
        tracing::warn!(
            variable = %var,
            "environment variable matches no configuration key and is ignored (overrides \
             are CREDGATE_<SECTION>__<KEY>, with two underscores: e.g. CREDGATE_PROXY__LISTEN)"
        );
    }
    if let Some(w) = public_url_mismatch(config) {
        tracing::warn!("{w}");
    }
    for (name, integration) in &config.integrations {
        if integration.client_id.is_none() {
            continue;
        }
        let var = integration.client_secret_env(name);
        if secrets
            .client_secret(name, integration)
            .is_none_or(|v| v.expose_secret().is_empty())
        {
            tracing::warn!(
                integration = %name,
                variable = %var,
                "the integration's OAuth client secret is not set: refreshing its credentials \
                 will fail until it is"
            );
        }
    }
}

/// `proxy.listen` on loopback with a `public_url` on loopback but another port: the
/// metadata URLs and the token issuer would point at the wrong port.
fn public_url_mismatch(config: &Config) -> Option<String> {
    let listen = config.proxy.listen;
    if !(listen.ip().is_loopback() || listen.ip().is_unspecified()) {
        return None;
    }
    let url: http::Uri = config.proxy.public_url.parse().ok()?;
    let host = url.host()?.trim_start_matches('[').trim_end_matches(']');
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    let port = url.port_u16().unwrap_or(match url.scheme_str() {
        Some("https") => 443,
        _ => 80,
    });
    (loopback && port != listen.port()).then(|| {
        format!(
            "proxy.listen is {listen} but proxy.public_url is {} (port {port}): metadata \
             URLs, resource URLs and the token issuer use public_url; set proxy.public_url \
             (CREDGATE_PROXY__PUBLIC_URL) to match",
            config.proxy.public_url
        )
    })
}

async fn serve(config: Config, config_path: PathBuf, log_level: SetLogLevel) -> anyhow::Result<()> {
    // Read once: the same environment the config overrides came from.
    let secrets = Arc::new(Secrets::from_env(std::env::vars()));
    let (backend, store_location) = match config.store.backend {
        StoreBackend::Embedded => ("embedded", config.store.path.display().to_string()),
        StoreBackend::Vault => ("vault", config.store.vault.address.clone()),
    };
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        config = %config_path.display(),
        store = backend,
        store_location = %store_location,
        "credgate starting"
    );
    startup_warnings(&config, &secrets);
    let state = Arc::new(
        AppState::build(config, secrets)
            .await
            .context("starting credgate")?,
    );
    let telemetry = credgate::telemetry::init(&state.config.tracing, &state.metrics)
        .map_err(|e| anyhow::anyhow!(e))?;
    let listeners = Listeners::bind(&state.config)
        .await
        .context("binding listeners")?;
    tracing::info!(
        proxy = %listeners.proxy.local_addr()?,
        ops = %listeners.ops.local_addr()?,
        store = state.store.backend(),
        "credgate listening"
    );
    credgate::refresh::schedule::load(
        &state.credentials,
        state.config.refresh.before_seconds as i64,
    )
    .await;
    let mut background = Background::new();
    background.spawn(
        "refresh scheduler",
        credgate::refresh::schedule::run(
            state.credentials.clone(),
            std::time::Duration::from_secs(state.config.refresh.interval_seconds),
        ),
    );
    background.spawn(
        "oauth sync",
        state.authority.clone().sync_loop(background.signal()),
    );
    let limits = state.clone();
    background.spawn("rate-limit eviction", async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
        loop {
            tick.tick().await;
            limits.live.load().rate_limits.evict_idle();
        }
    });
    background.spawn(
        "sighup reload",
        reload_on_sighup(state.clone(), config_path, log_level),
    );
    let trigger = background.trigger();
    background.spawn("signal handler", async move {
        wait_for_signal().await;
        tracing::info!("shutting down: no new connections, draining");
        trigger.stop();
    });
    server::serve(state, listeners, background.signal()).await?;
    background.stop().await;
    if let Some(t) = telemetry {
        t.shutdown().await;
    }
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
            .map_err(ReloadError::from)
            .and_then(|c| {
                let restart = state.reload(&c, log_level.is_some())?;
                if let Some(set) = &log_level {
                    set(&c.log.level).map_err(ReloadError::LogLevel)?;
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
