//! Degraded mode: sealed, killed, unreachable or silent Vault, and a store
//! opened before Vault is up.

use super::*;

/// A CA and a server certificate for 127.0.0.1, as PEM (ca, cert, key).
fn tls_material() -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "credgate test CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .unwrap();
    let cert = params.signed_by(&key, &ca).unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}

/// vault/config.hcl with its paths and addresses pointed at `dir` and free
/// ports on 127.0.0.1.
fn production_config(dir: &Path, port: u16, cluster_port: u16) -> PathBuf {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("vault/config.hcl"))
            .unwrap();
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let mut out = text;
    for (from, to) in [
        ("/vault/data", data.display().to_string()),
        (
            "/vault/tls/tls.crt",
            dir.join("tls.crt").display().to_string(),
        ),
        (
            "/vault/tls/tls.key",
            dir.join("tls.key").display().to_string(),
        ),
        ("0.0.0.0:8200", format!("127.0.0.1:{port}")),
        ("0.0.0.0:8201", format!("127.0.0.1:{cluster_port}")),
        (
            "https://vault.credgate.svc:8200",
            format!("https://127.0.0.1:{port}"),
        ),
        (
            "https://vault.credgate.svc:8201",
            format!("https://127.0.0.1:{cluster_port}"),
        ),
    ] {
        assert!(out.contains(from), "vault/config.hcl no longer has {from}");
        out = out.replace(from, &to);
    }
    let path = dir.join("config.hcl");
    std::fs::write(&path, out).unwrap();
    path
}

async fn unseal(bao: &Bao, key: &str) {
    bao.must("PUT", "sys/unseal", Some(json!({"key": key})))
        .await;
    eventually(Duration::from_secs(30), "an active node", || async {
        bao.call(None, "GET", "sys/health", None).await.0 == 200
    })
    .await;
}

async fn unavailable_within<T: std::fmt::Debug>(
    bound: Duration,
    f: impl Future<Output = Result<T, StoreError>>,
) -> String {
    let started = Instant::now();
    let result = f.await;
    let took = started.elapsed();
    match result {
        Err(StoreError::Unavailable(why)) if took < bound => why,
        other => panic!("expected Unavailable within {bound:?}, got {other:?} after {took:?}"),
    }
}

#[tokio::test]
async fn sealed_or_killed_vault_is_unavailable_then_recovers() {
    bounded(async {
        // The production config (raft storage, TLS) so state survives a
        // restart; VAULT_CACERT is how credgate trusts it.
        let dir = tempfile::tempdir().unwrap();
        let (ca, cert, key) = tls_material();
        std::fs::write(dir.path().join("tls.crt"), &cert).unwrap();
        std::fs::write(dir.path().join("tls.key"), &key).unwrap();
        let ca_file = write_file(dir.path(), "ca.pem", &ca);
        let port = openbao::free_port_pair();
        let cluster_port = port + 1;
        let conf = production_config(dir.path(), port, cluster_port);
        let addr = format!("https://127.0.0.1:{port}");
        let mut bao = Bao::with_config(&conf, addr.clone(), ca.as_bytes(), dir).await;

        let init = bao
            .must(
                "PUT",
                "sys/init",
                Some(json!({"secret_shares": 1, "secret_threshold": 1})),
            )
            .await;
        let unseal_key = init["keys"][0].as_str().unwrap().to_owned();
        bao.root_token = init["root_token"].as_str().unwrap().to_owned();
        unseal(&bao, &unseal_key).await;
        let m = Mounts::new(&bao).await;
        let cfg = VaultConfig {
            ca_cert: Some(ca_file),
            timeout_ms: 5000,
            max_retries: 2,
            ..config(&bao, &m)
        };
        let store = open_token(&cfg, &bao.root_token).await;
        save_new(&store, "acme", "github", "tok").await;

        // Without the CA, TLS verification fails: Unavailable, not a crash.
        let untrusted = open_token(
            &VaultConfig {
                ca_cert: None,
                ..cfg.clone()
            },
            &bao.root_token,
        )
        .await;
        let why = unavailable_within(Duration::from_secs(5), untrusted.health()).await;
        assert!(why.contains("cannot reach vault"), "{why}");

        // Sealed: 503 → Unavailable, health names it.
        bao.must("PUT", "sys/seal", None).await;
        let why = unavailable_within(Duration::from_secs(5), store.health()).await;
        assert!(why.contains("sealed"), "{why}");
        let why = unavailable_within(Duration::from_secs(5), store.read("acme/github")).await;
        assert!(why.contains("sealed"), "{why}");
        unseal(&bao, &unseal_key).await;
        eventually(Duration::from_secs(30), "the store to recover", || async {
            store.health().await.is_ok() && store.read("acme/github").await.is_ok()
        })
        .await;
        assert!(loads(&store, "acme", "github").await);

        // Killed: connection refused → Unavailable promptly (retries included).
        bao.kill();
        unavailable_within(Duration::from_secs(3), store.read("acme/github")).await;
        unavailable_within(Duration::from_secs(3), store.health()).await;
        unavailable_within(
            Duration::from_secs(3),
            credentials::save(&store, "acme", "slack", &credential("x", None), Cas::Absent),
        )
        .await;

        // Restarted (sealed until unsealed), same store instance: works again,
        // with the data from before.
        bao.restart(&[503]).await;
        unavailable_within(Duration::from_secs(5), store.read("acme/github")).await;
        unseal(&bao, &unseal_key).await;
        eventually(Duration::from_secs(30), "the store to recover", || async {
            store.health().await.is_ok() && store.read("acme/github").await.is_ok()
        })
        .await;
        let s = credentials::load(&store, "acme", "github")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(s.credential.access_token.expose_secret(), "tok");
        save_new(&store, "acme", "slack", "x").await;
    })
    .await;
}

#[tokio::test]
async fn an_unreachable_or_silent_vault_fails_fast_and_does_not_block_open() {
    bounded(async {
        // Nothing listens: open still succeeds (credgate can start and serve
        // /readyz), calls are Unavailable at once.
        let closed = openbao::free_port();
        let cfg = VaultConfig {
            address: format!("http://127.0.0.1:{closed}"),
            timeout_ms: 500,
            max_retries: 3,
            ..VaultConfig::default()
        };
        let store = open_token(&cfg, "s.token").await;
        let why = unavailable_within(Duration::from_secs(3), store.read("t1/a")).await;
        assert!(why.contains("cannot reach vault"), "{why}");

        let approle_cfg = VaultConfig {
            auth: VaultAuth::Approle,
            role_id_file: Some(PathBuf::from("/dev/null")),
            secret_id_file: Some(PathBuf::from("/dev/null")),
            ..cfg.clone()
        };
        // Unreadable (empty) credentials are a misconfiguration, not an outage.
        assert!(matches!(
            VaultStore::open(&approle_cfg, None).await,
            Err(StoreError::Refused(_))
        ));

        // Accepts connections but never answers: bounded by timeout_ms, not
        // retried (the whole budget was spent).
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = silent.local_addr().unwrap();
        let hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = silent.accept().await {
                held.push(s);
            }
        });
        let store = open_token(
            &VaultConfig {
                address: format!("http://{addr}"),
                ..cfg
            },
            "s.token",
        )
        .await;
        let why = unavailable_within(Duration::from_millis(1500), store.read("t1/a")).await;
        assert!(why.contains("did not answer within 500 ms"), "{why}");
        hold.abort();
    })
    .await;
}

#[tokio::test]
async fn a_store_opened_before_vault_starts_logs_in_once_it_is_up() {
    bounded(async {
        let port = openbao::free_port_pair();
        let dir = tempfile::tempdir().unwrap();
        let (role_id, secret_id) = (unique("role"), unique("secret"));
        let (kv, transit) = (unique("kv"), unique("transit"));
        let cfg = VaultConfig {
            address: format!("http://127.0.0.1:{port}"),
            kv_mount: kv.clone(),
            transit_mount: transit.clone(),
            auth: VaultAuth::Approle,
            role_id_file: Some(write_file(dir.path(), "role_id", &role_id)),
            secret_id_file: Some(write_file(dir.path(), "secret_id", &secret_id)),
            timeout_ms: 1000,
            max_retries: 2,
            ..VaultConfig::default()
        };
        let store = VaultStore::open(&cfg, None)
            .await
            .expect("opens while vault is down");
        assert_eq!(store.auth_stats().logins, 0);
        // Concurrent calls share one failed login instead of queueing for
        // their own.
        let started = Instant::now();
        let calls = futures_util::future::join_all((0..8).map(|i| {
            let store = &store;
            async move { store.read(&format!("t1/x{i}")).await }
        }))
        .await;
        assert!(
            calls
                .iter()
                .all(|r| matches!(r, Err(StoreError::Unavailable(_))))
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );

        // Vault comes up and is set up to accept those credentials.
        let bao = Bao::dev_on(port).await;
        let m = Mounts::named(&bao, kv, transit).await;
        let policy = write_policy(&bao, &m).await;
        bao.must("POST", "sys/auth/approle", Some(json!({"type": "approle"})))
            .await;
        bao.must(
            "POST",
            "auth/approle/role/credgate",
            Some(json!({"token_policies": [policy], "token_no_default_policy": true})),
        )
        .await;
        bao.must(
            "POST",
            "auth/approle/role/credgate/role-id",
            Some(json!({"role_id": role_id})),
        )
        .await;
        bao.must(
            "POST",
            "auth/approle/role/credgate/custom-secret-id",
            Some(json!({"secret_id": secret_id})),
        )
        .await;
        // No restart, no reopen: the next call logs in.
        eventually(Duration::from_secs(15), "the store to log in", || async {
            store.read("acme/github").await.is_ok()
        })
        .await;
        assert_eq!(store.auth_stats().logins, 1);
        save_new(&store, "acme", "github", "t").await;
        assert!(loads(&store, "acme", "github").await);
        store.health().await.unwrap();
    })
    .await;
}
