//! Transit: the record layout in KV and Transit, existing keys, rewrap.

use super::*;

#[tokio::test]
async fn credential_records_have_the_spec_layout_in_kv_and_transit() {
    bounded(async {
        let (bao, m, store) = setup().await;
        let c = credential("gho_access_123", Some("ghr_refresh_456"));
        let v = credentials::save(&store, "acme", "github", &c, Cas::Absent)
            .await
            .unwrap();
        assert_eq!(v, 1);

        let raw = bao
            .must("GET", &format!("{}/data/acme/github", m.kv), None)
            .await;
        let data = raw["data"]["data"].as_object().unwrap();
        let mut fields: Vec<&str> = data.keys().map(String::as_str).collect();
        fields.sort_unstable();
        assert_eq!(
            fields,
            [
                "accessToken",
                "expiresAt",
                "integration",
                "refreshToken",
                "scopes",
                "tokenType"
            ]
        );
        let access = data["accessToken"].as_str().unwrap();
        let refresh = data["refreshToken"].as_str().unwrap();
        for ct in [access, refresh] {
            assert!(ct.starts_with("vault:v1:"), "{ct}");
        }
        assert!(!raw.to_string().contains("gho_access_123"));
        assert!(!raw.to_string().contains("ghr_refresh_456"));
        assert_eq!(data["expiresAt"], "2030-01-02T03:04:05Z");
        assert_eq!(data["scopes"], json!(["repo", "read:org"]));
        assert_eq!(data["tokenType"], "Bearer");
        assert_eq!(data["integration"], "github");
        assert_eq!(
            raw["data"]["metadata"]["custom_metadata"],
            json!({
                "createdBy": "admin:ops",
                "integration": "github",
                "autoRefresh": "true",
                "refreshCount": "0",
                "status": "active",
            })
        );

        // A derived key named after the tenant; context = base64(path).
        let key = bao
            .must("GET", &format!("{}/keys/acme", m.transit), None)
            .await;
        assert_eq!(key["data"]["derived"], true);
        let plain = bao
            .must(
                "POST",
                &format!("{}/decrypt/acme", m.transit),
                Some(json!({"ciphertext": access, "context": B64.encode("acme/github")})),
            )
            .await;
        assert_eq!(
            B64.decode(plain["data"]["plaintext"].as_str().unwrap())
                .unwrap(),
            b"gho_access_123"
        );
        let (code, _) = bao
            .root(
                "POST",
                &format!("{}/decrypt/acme", m.transit),
                Some(json!({"ciphertext": access})),
            )
            .await;
        assert_eq!(code, 400, "a derived key needs the context");

        let stored = credentials::load(&store, "acme", "github")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stored.version, 1);
        assert_eq!(
            stored.credential.access_token.expose_secret(),
            "gho_access_123"
        );
        assert_eq!(
            stored
                .credential
                .refresh_token
                .as_ref()
                .unwrap()
                .expose_secret(),
            "ghr_refresh_456"
        );
        assert_eq!(stored.credential.created_by, "admin:ops");
        assert!(stored.credential.auto_refresh);

        // A refresh: new version, metadata follows.
        let mut next = credential("gho_access_789", Some("ghr_refresh_000"));
        next.refresh_count = 1;
        assert!(matches!(
            credentials::save(&store, "acme", "github", &next, Cas::Absent).await,
            Err(StoreError::Conflict)
        ));
        let v = credentials::save(&store, "acme", "github", &next, Cas::Version(1))
            .await
            .unwrap();
        assert_eq!(v, 2);
        let raw = bao
            .must("GET", &format!("{}/data/acme/github", m.kv), None)
            .await;
        assert_eq!(
            raw["data"]["metadata"]["custom_metadata"]["refreshCount"],
            "1"
        );
        let stored = credentials::load(&store, "acme", "github")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            stored.credential.access_token.expose_secret(),
            "gho_access_789"
        );
        assert_eq!(stored.credential.refresh_count, 1);
    })
    .await;
}

#[tokio::test]
async fn an_existing_non_derived_key_is_used_without_context() {
    bounded(async {
        let (bao, m, store) = setup().await;
        bao.must(
            "POST",
            &format!("{}/keys/legacy", m.transit),
            Some(json!({"derived": false})),
        )
        .await;
        let ct = store
            .encrypt("legacy", "legacy/github", &[b"tok"])
            .await
            .unwrap()
            .remove(0);
        // Readable without any context: it was encrypted without one.
        let plain = bao
            .must(
                "POST",
                &format!("{}/decrypt/legacy", m.transit),
                Some(json!({"ciphertext": ct})),
            )
            .await;
        assert_eq!(plain["data"]["plaintext"], B64.encode("tok"));
        let got = store
            .decrypt("legacy", "legacy/github", &[&ct])
            .await
            .unwrap();
        assert_eq!(got[0].as_slice(), b"tok");
        // The key was left as it was.
        let key = bao
            .must("GET", &format!("{}/keys/legacy", m.transit), None)
            .await;
        assert_eq!(key["data"]["derived"], false);
    })
    .await;
}

#[tokio::test]
async fn rewrap_after_rotation_moves_ciphertexts_to_the_latest_version() {
    bounded(async {
        let (bao, m, store) = setup().await;
        credentials::save(
            &store,
            "acme",
            "github",
            &credential("a1", Some("r1")),
            Cas::Absent,
        )
        .await
        .unwrap();
        save_new(&store, "acme", "slack", "a2").await;
        put(&store, "acme/x/deep", 1, Cas::Absent).await.unwrap(); // a folder: skipped
        assert_eq!(
            store.rewrap_tenant("acme").await.unwrap(),
            0,
            "nothing to do yet"
        );

        bao.must("POST", &format!("{}/keys/acme/rotate", m.transit), None)
            .await;
        assert_eq!(store.rewrap_tenant("acme").await.unwrap(), 2);

        for (name, fields) in [("github", 2), ("slack", 1)] {
            let raw = bao
                .must("GET", &format!("{}/data/acme/{name}", m.kv), None)
                .await;
            assert_eq!(raw["data"]["metadata"]["version"], 2, "{name}");
            let data = raw["data"]["data"].as_object().unwrap();
            let cts: Vec<&str> = ["accessToken", "refreshToken"]
                .iter()
                .filter_map(|f| data.get(*f)?.as_str())
                .collect();
            assert_eq!(cts.len(), fields);
            assert!(cts.iter().all(|c| c.starts_with("vault:v2:")), "{cts:?}");
            assert_eq!(
                raw["data"]["metadata"]["custom_metadata"]["createdBy"],
                "admin:ops"
            );
        }
        // Old key versions can go: everything decrypts with v2 alone.
        bao.must(
            "POST",
            &format!("{}/keys/acme/config", m.transit),
            Some(json!({"min_decryption_version": 2})),
        )
        .await;
        let s = credentials::load(&store, "acme", "github")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(s.credential.access_token.expose_secret(), "a1");
        assert_eq!(s.credential.refresh_token.unwrap().expose_secret(), "r1");
        let s = credentials::load(&store, "acme", "slack")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(s.credential.access_token.expose_secret(), "a2");

        assert_eq!(store.rewrap_tenant("acme").await.unwrap(), 0);
        assert_eq!(store.rewrap_tenant("nobody").await.unwrap(), 0);
    })
    .await;
}
