//! Auth methods: token (renewal), AppRole, Kubernetes.

use super::*;

#[tokio::test]
async fn token_auth_renews_a_short_lived_token() {
    bounded(async {
        let bao = Bao::dev().await;
        let m = Mounts::new(&bao).await;
        let cfg = config(&bao, &m);

        let err = VaultStore::open_with_token(&cfg, SecretString::from("s.not-a-token".to_owned()))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Refused(_)), "{err:?}");

        // A child of root (same policy) that lives 3 s unless renewed.
        let created = bao
            .must(
                "POST",
                "auth/token/create",
                Some(json!({"ttl": "3s", "explicit_max_ttl": "5m", "renewable": true})),
            )
            .await;
        let token = created["auth"]["client_token"].as_str().unwrap();
        let accessor = created["auth"]["accessor"].as_str().unwrap().to_owned();
        let started = Instant::now();
        let store = open_token(&cfg, token).await;
        put(&store, "t1/a", 1, Cas::Absent).await.unwrap();

        eventually(Duration::from_secs(20), "two renewals", || async {
            store.auth_stats().renewals >= 2
        })
        .await;
        assert!(
            started.elapsed() > Duration::from_secs(3),
            "outlived its first TTL"
        );
        assert_eq!(store.auth_stats().logins, 0);
        put(&store, "t1/a", 2, Cas::Version(1)).await.unwrap();
        let info = bao
            .must(
                "POST",
                "auth/token/lookup-accessor",
                Some(json!({"accessor": accessor})),
            )
            .await;
        assert!(info["data"]["ttl"].as_u64().unwrap() > 0);
    })
    .await;
}

/// AppRole mount + role issuing tokens with only the credgate policy.
async fn approle(bao: &Bao, m: &Mounts, dir: &Path, ttl: &str) -> VaultConfig {
    let mount = unique("approle");
    let policy = write_policy(bao, m).await;
    bao.must(
        "POST",
        &format!("sys/auth/{mount}"),
        Some(json!({"type": "approle"})),
    )
    .await;
    bao.must(
        "POST",
        &format!("auth/{mount}/role/credgate"),
        Some(json!({
            "token_policies": [policy],
            "token_no_default_policy": true,
            "token_ttl": ttl,
            "token_max_ttl": "10m",
        })),
    )
    .await;
    let role_id = bao
        .must("GET", &format!("auth/{mount}/role/credgate/role-id"), None)
        .await;
    let secret_id = bao
        .must(
            "POST",
            &format!("auth/{mount}/role/credgate/secret-id"),
            None,
        )
        .await;
    VaultConfig {
        auth: VaultAuth::Approle,
        approle_mount: mount,
        role_id_file: Some(write_file(
            dir,
            "role_id",
            &format!("{}\n", role_id["data"]["role_id"].as_str().unwrap()),
        )),
        secret_id_file: Some(write_file(
            dir,
            "secret_id",
            secret_id["data"]["secret_id"].as_str().unwrap(),
        )),
        ..config(bao, m)
    }
}

#[tokio::test]
async fn approle_logs_in_renews_and_logs_in_again_when_revoked() {
    bounded(async {
        let bao = Bao::dev().await;
        let m = Mounts::new(&bao).await;
        let dir = tempfile::tempdir().unwrap();
        let cfg = approle(&bao, &m, dir.path(), "3s").await;

        let store = VaultStore::open(&cfg, None).await.expect("approle open");
        assert_eq!(store.auth_stats().logins, 1);
        let c = credential("tok", Some("ref"));
        credentials::save(&store, "acme", "github", &c, Cas::Absent)
            .await
            .unwrap();

        let started = Instant::now();
        eventually(Duration::from_secs(20), "a renewal", || async {
            store.auth_stats().renewals >= 2
        })
        .await;
        assert!(started.elapsed() > Duration::from_secs(3));
        assert_eq!(store.auth_stats().logins, 1, "renewed, not replaced");
        assert!(loads(&store, "acme", "github").await);

        // Revoke every token of the mount: the next call gets 403, logs in
        // again, and succeeds.
        bao.must(
            "PUT",
            &format!("sys/leases/revoke-prefix/auth/{}/login", cfg.approle_mount),
            Some(json!({"sync": true})),
        )
        .await;
        assert!(loads(&store, "acme", "github").await);
        assert_eq!(store.auth_stats().logins, 2);

        // Bad or missing credentials fail at open, naming the problem.
        let wrong = VaultConfig {
            secret_id_file: Some(write_file(dir.path(), "wrong", "not-the-secret-id")),
            ..cfg.clone()
        };
        let err = VaultStore::open(&wrong, None).await.unwrap_err();
        assert!(
            matches!(err, StoreError::Refused(ref m) if m.contains("invalid")),
            "{err:?}"
        );
        let missing = VaultConfig {
            role_id_file: Some(dir.path().join("absent")),
            ..cfg.clone()
        };
        let err = VaultStore::open(&missing, None).await.unwrap_err();
        assert!(
            matches!(err, StoreError::Refused(ref m) if m.contains("cannot read")),
            "{err:?}"
        );
        let unset = VaultConfig {
            secret_id_file: None,
            ..cfg
        };
        assert!(matches!(
            VaultStore::open(&unset, None).await,
            Err(StoreError::Refused(_))
        ));
    })
    .await;
}

#[tokio::test]
async fn kubernetes_login_goes_through_token_review() {
    bounded(async {
        let bao = Bao::dev().await;
        let m = Mounts::new(&bao).await;
        let dir = tempfile::tempdir().unwrap();
        let jwt = service_account_jwt("credgate", "credgate", "uid-1");
        let review = TokenReview::start(jwt.clone(), "credgate", "credgate", "uid-1").await;

        let mount = unique("kubernetes");
        let policy = write_policy(&bao, &m).await;
        bao.must(
            "POST",
            &format!("sys/auth/{mount}"),
            Some(json!({"type": "kubernetes"})),
        )
        .await;
        bao.must(
            "POST",
            &format!("auth/{mount}/config"),
            Some(json!({
                "kubernetes_host": review.url,
                "kubernetes_ca_cert": ca_pem(),
                "disable_local_ca_jwt": true,
            })),
        )
        .await;
        bao.must(
            "POST",
            &format!("auth/{mount}/role/credgate"),
            Some(json!({
                "bound_service_account_names": ["credgate"],
                "bound_service_account_namespaces": ["credgate"],
                "token_policies": [policy],
                "token_no_default_policy": true,
                "token_ttl": "1m",
            })),
        )
        .await;
        let cfg = VaultConfig {
            auth: VaultAuth::Kubernetes,
            kubernetes_mount: mount,
            role: Some("credgate".into()),
            jwt_file: write_file(dir.path(), "token", &jwt),
            ..config(&bao, &m)
        };
        let store = VaultStore::open(&cfg, None).await.expect("kubernetes open");
        assert_eq!(store.auth_stats().logins, 1);
        assert!(review.reviews() >= 1, "Vault asked the TokenReview API");
        save_new(&store, "acme", "github", "t").await;
        assert!(loads(&store, "acme", "github").await);

        // Another service account's JWT is turned away.
        let other = VaultConfig {
            jwt_file: write_file(
                dir.path(),
                "other",
                &service_account_jwt("credgate", "intruder", "uid-2"),
            ),
            ..cfg.clone()
        };
        assert!(matches!(
            VaultStore::open(&other, None).await,
            Err(StoreError::Refused(_))
        ));
        // A role that does not exist.
        let norole = VaultConfig {
            role: Some("nope".into()),
            ..cfg
        };
        assert!(matches!(
            VaultStore::open(&norole, None).await,
            Err(StoreError::Refused(_))
        ));
    })
    .await;
}
