//! KV v2 behaviour the contract does not cover: versions Vault itself
//! deleted or destroyed, and `updated_at` as Vault reports it.

use super::*;

#[tokio::test]
async fn soft_deleted_and_destroyed_versions_read_as_none() {
    bounded(async {
        let (bao, m, store) = setup().await;
        put(&store, "t1/github", 1, Cas::Absent).await.unwrap();
        put(&store, "t1/github", 2, Cas::Version(1)).await.unwrap();

        // Soft delete of the current version, as `bao kv delete` does.
        bao.must("DELETE", &format!("{}/data/t1/github", m.kv), None)
            .await;
        assert_eq!(store.read("t1/github").await.unwrap(), None);
        // Still listed (its metadata exists) but absent to readers, so
        // `Absent` may write over it; the version count carries on.
        assert_eq!(store.list("t1").await.unwrap(), ["github"]);
        assert_eq!(put(&store, "t1/github", 3, Cas::Absent).await.unwrap(), 3);
        assert_eq!(store.read("t1/github").await.unwrap().unwrap().data["n"], 3);
        assert!(matches!(
            put(&store, "t1/github", 4, Cas::Absent).await,
            Err(StoreError::Conflict)
        ));

        // Destroyed version.
        bao.must(
            "POST",
            &format!("{}/destroy/t1/github", m.kv),
            Some(json!({"versions": [3]})),
        )
        .await;
        assert_eq!(store.read("t1/github").await.unwrap(), None);
        assert_eq!(
            put(&store, "t1/github", 4, Cas::Version(3)).await.unwrap(),
            4
        );
    })
    .await;
}

#[tokio::test]
async fn updated_at_is_the_versions_created_time() {
    bounded(async {
        let (bao, m, store) = setup().await;
        put(&store, "t1/github", 1, Cas::Absent).await.unwrap();
        put(&store, "t1/github", 2, Cas::Version(1)).await.unwrap();
        let r = store.read("t1/github").await.unwrap().unwrap();
        assert_eq!(r.version, 2);

        // updated_at is the version's created_time, as Vault reports it.
        let raw = bao
            .must("GET", &format!("{}/metadata/t1/github", m.kv), None)
            .await;
        assert_eq!(raw["data"]["current_version"], 2);
        assert_eq!(
            raw["data"]["versions"]["2"]["created_time"],
            r.updated_at.as_str()
        );
        assert!(OffsetDateTime::parse(&r.updated_at, &Rfc3339).is_ok());
    })
    .await;
}
