//! The deployment files: init-vault.sh and its policy, and namespaces.

use super::*;

#[tokio::test]
async fn init_script_policy_is_sufficient_and_narrow() {
    bounded(async {
        let bao = Bao::dev().await;
        let dir = tempfile::tempdir().unwrap();
        let jwt = service_account_jwt("credgate", "credgate", "uid-7");
        let review = TokenReview::start(jwt.clone(), "credgate", "credgate", "uid-7").await;
        let ca = write_file(dir.path(), "k8s-ca.pem", &ca_pem());
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("vault/scripts/init-vault.sh");
        let bin_dir = openbao::bao_bin().parent().unwrap().to_owned();
        let run = || {
            let mut cmd = std::process::Command::new("bash");
            cmd.arg(&script)
                .env_clear()
                .env("PATH", format!("{}:/usr/bin:/bin", bin_dir.display()))
                .env("HOME", dir.path())
                .env("BAO_ADDR", &bao.addr)
                .env("BAO_TOKEN", &bao.root_token)
                .env("KUBERNETES_HOST", &review.url)
                .env("KUBERNETES_CA_CERT", &ca)
                .env("KUBERNETES_DISABLE_LOCAL_CA_JWT", "true")
                .env("TOKEN_TTL", "30s");
            cmd
        };
        for attempt in 1..=2 {
            let mut cmd = run();
            let out = tokio::task::spawn_blocking(move || cmd.output())
                .await
                .unwrap()
                .unwrap();
            assert!(
                out.status.success(),
                "init-vault.sh run {attempt}: {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }

        // AppRole with the script's role: a token with only the policy.
        let role_id = bao
            .must("GET", "auth/approle/role/credgate/role-id", None)
            .await;
        let role_id = role_id["data"]["role_id"].as_str().unwrap().to_owned();
        let secret_id = bao
            .must("POST", "auth/approle/role/credgate/secret-id", None)
            .await;
        let secret_id = secret_id["data"]["secret_id"].as_str().unwrap().to_owned();
        let cfg = VaultConfig {
            address: bao.addr.clone(),
            auth: VaultAuth::Approle,
            role_id_file: Some(write_file(dir.path(), "role_id", &role_id)),
            secret_id_file: Some(write_file(dir.path(), "secret_id", &secret_id)),
            timeout_ms: 2000,
            max_retries: 1,
            ..VaultConfig::default()
        };
        let store = VaultStore::open(&cfg, None).await.expect("approle open");

        // Everything the store does is allowed.
        store.health().await.unwrap();
        credentials::save(
            &store,
            "acme",
            "github",
            &credential("a", Some("r")),
            Cas::Absent,
        )
        .await
        .unwrap();
        save_new(&store, "acme", "slack", "b").await;
        let mut c = credential("a2", Some("r2"));
        c.refresh_count = 1;
        credentials::save(&store, "acme", "github", &c, Cas::Version(1))
            .await
            .unwrap();
        assert!(loads(&store, "acme", "github").await);
        put(&store, "_credgate/clients/c1", 1, Cas::Absent)
            .await
            .unwrap();
        let ct = store
            .encrypt("_credgate", "_credgate/keys/k1", &[b"k"])
            .await
            .unwrap();
        store
            .decrypt("_credgate", "_credgate/keys/k1", &[&ct[0]])
            .await
            .unwrap();
        assert_eq!(store.list("acme").await.unwrap(), ["github", "slack"]);
        assert_eq!(store.list("").await.unwrap(), ["_credgate/", "acme/"]);
        bao.must("POST", "transit/keys/acme/rotate", None).await; // the operator rotates
        assert_eq!(store.rewrap_tenant("acme").await.unwrap(), 2);
        store.delete("acme/slack").await.unwrap();
        assert_eq!(store.read("acme/slack").await.unwrap(), None);
        assert_eq!(store.auth_stats().logins, 1, "no 403 along the way");

        // And nothing else.
        let login = bao
            .call(
                None,
                "POST",
                "auth/approle/login",
                Some(json!({"role_id": role_id, "secret_id": secret_id})),
            )
            .await
            .1;
        let token = login["auth"]["client_token"].as_str().unwrap().to_owned();
        assert_eq!(login["auth"]["token_policies"], json!(["credgate"]));
        for (method, path, body) in [
            ("GET", "sys/mounts", None),
            ("GET", "sys/policies/acl/credgate", None),
            ("POST", "auth/token/create", Some(json!({}))),
            ("POST", "transit/keys/acme/rotate", None),
            (
                "POST",
                "transit/keys/acme/config",
                Some(json!({"deletion_allowed": true})),
            ),
            ("DELETE", "transit/keys/acme", None),
            ("GET", "transit/export/encryption-key/acme", None),
            (
                "POST",
                "transit/datakey/plaintext/acme",
                Some(json!({"context": "YQ=="})),
            ),
            (
                "POST",
                "secret/destroy/acme/github",
                Some(json!({"versions": [1]})),
            ),
            (
                "POST",
                "secret/undelete/acme/github",
                Some(json!({"versions": [1]})),
            ),
            ("GET", "secret/metadata/acme/github", None),
            (
                "POST",
                "secret/metadata/new/record",
                Some(json!({"custom_metadata": {}})),
            ),
            ("GET", "cubbyhole/x", None),
            ("GET", "auth/approle/role/credgate/role-id", None),
        ] {
            let (code, reply) = bao.call(Some(&token), method, path, body).await;
            assert_eq!(code, 403, "{method} {path} should be denied: {reply}");
        }
        // A store pointed at a mount outside the policy is refused.
        bao.must(
            "POST",
            "sys/mounts/other",
            Some(json!({"type": "kv", "options": {"version": "2"}})),
        )
        .await;
        let outside = VaultStore::open(
            &VaultConfig {
                kv_mount: "other".into(),
                ..cfg
            },
            None,
        )
        .await
        .unwrap();
        let err = put(&outside, "acme/github", 1, Cas::Absent)
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::Refused(ref m) if m.contains("permission denied")),
            "{err:?}"
        );

        // The script's Kubernetes role logs in through TokenReview too.
        let k8s = VaultStore::open(
            &VaultConfig {
                auth: VaultAuth::Kubernetes,
                role: Some("credgate".into()),
                jwt_file: write_file(dir.path(), "jwt", &jwt),
                ..VaultConfig {
                    address: bao.addr.clone(),
                    ..VaultConfig::default()
                }
            },
            None,
        )
        .await
        .expect("kubernetes open");
        assert!(loads(&k8s, "acme", "github").await);
        assert!(review.reviews() >= 1);
    })
    .await;
}

#[tokio::test]
async fn the_namespace_header_scopes_every_call() {
    bounded(async {
        let bao = Bao::dev().await;
        bao.must("POST", "sys/namespaces/team1", None).await;
        let in_ns = |method: &str, path: &str, body: Option<Value>| {
            let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
            let mut req = bao
                .http
                .request(method, format!("{}/v1/{path}", bao.addr))
                .header("X-Vault-Token", &bao.root_token)
                .header("X-Vault-Namespace", "team1");
            if let Some(b) = body {
                req = req.json(&b);
            }
            async move {
                let resp = req.send().await.unwrap();
                let code = resp.status().as_u16();
                (code, resp.json::<Value>().await.unwrap_or(Value::Null))
            }
        };
        let (code, _) = in_ns(
            "POST",
            "sys/mounts/kv",
            Some(json!({"type": "kv", "options": {"version": "2"}})),
        )
        .await;
        assert_eq!(code, 204);
        let (code, _) = in_ns(
            "POST",
            "sys/mounts/transit",
            Some(json!({"type": "transit"})),
        )
        .await;
        assert_eq!(code, 204);

        let cfg = VaultConfig {
            address: bao.addr.clone(),
            namespace: Some("team1".into()),
            kv_mount: "kv".into(),
            transit_mount: "transit".into(),
            ..VaultConfig::default()
        };
        let store = open_token(&cfg, &bao.root_token).await;
        save_new(&store, "acme", "github", "t").await;
        let (code, raw) = in_ns("GET", "kv/data/acme/github", None).await;
        assert_eq!(code, 200);
        assert!(
            raw["data"]["data"]["accessToken"]
                .as_str()
                .unwrap()
                .starts_with("vault:v1:")
        );
        let (code, _) = in_ns("GET", "transit/keys/acme", None).await;
        assert_eq!(code, 200);
        // Nothing landed in the root namespace.
        assert_eq!(bao.root("GET", "kv/data/acme/github", None).await.0, 404);
        assert!(loads(&store, "acme", "github").await);
    })
    .await;
}
