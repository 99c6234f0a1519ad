//! Hardening against a hostile or misconfigured Vault: no redirect is followed with the
//! token, and credgate's own records are written with check-and-set (`cas_required`
//! mounts). See docs/RELIABILITY.md, items 15 and 17.

use super::*;

/// A raw HTTP/1.1 server: answers every request with `answer(path)` and
/// keeps each request head it got.
async fn raw_server(
    answer: impl Fn(&str) -> String + Send + Sync + 'static,
) -> (
    String,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    tokio::task::JoinHandle<()>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (log, answer) = (seen.clone(), std::sync::Arc::new(answer));
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let (log, answer) = (log.clone(), answer.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf).into_owned();
                let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
                log.lock().unwrap().push(head);
                let _ = s.write_all(answer(&path).as_bytes()).await;
            });
        }
    });
    (addr, seen, task)
}

#[tokio::test]
async fn the_vault_client_never_follows_a_redirect_with_the_token() {
    bounded(async {
        // Where a hostile or misconfigured Vault address would send the token.
        let (elsewhere, received, t1) = raw_server(|_| {
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}".into()
        })
        .await;
        let target = elsewhere.clone();
        let (vault, asked, t2) = raw_server(move |path| {
            format!(
                "HTTP/1.1 307 Temporary Redirect\r\nLocation: {target}{path}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
        })
        .await;
        let cfg = VaultConfig {
            address: vault,
            timeout_ms: 2000,
            max_retries: 1,
            ..VaultConfig::default()
        };
        // Opening looks the token up; a 307 there is a refusal, not a hop.
        if let Ok(store) =
            VaultStore::open_with_token(&cfg, SecretString::from("s.the-vault-token")).await
        {
            assert!(store.read("t1/a").await.is_err(), "a 307 is not an answer");
            let mut data = Map::new();
            data.insert("k".into(), json!(1));
            let written = store
                .write("t1/a", data, BTreeMap::new(), Cas::Absent)
                .await;
            assert!(written.is_err());
        }
        assert!(
            asked
                .lock()
                .unwrap()
                .iter()
                .any(|h| h.contains("s.the-vault-token")),
            "the redirecting server was never asked"
        );
        let leaked = received.lock().unwrap().clone();
        assert!(
            leaked.is_empty(),
            "the Vault client followed a redirect: {} requests reached the other server",
            leaked.len()
        );
        t1.abort();
        t2.abort();
    })
    .await;
}

#[tokio::test]
async fn overwrite_uses_check_and_set_on_a_cas_required_mount() {
    bounded(async {
        let (bao, m, store) = setup().await;
        bao.must(
            "POST",
            &format!("{}/config", m.kv),
            Some(json!({"cas_required": true})),
        )
        .await;
        let data = obj(json!({"changedAt": "now"}));
        // What revocations and the change marker used to do: refused here.
        assert!(
            store
                .write("_credgate/x", data.clone(), BTreeMap::new(), Cas::Any)
                .await
                .is_err()
        );
        let path = "_credgate/oauth-changes";
        assert_eq!(
            credgate::store::overwrite(&store, path, data.clone())
                .await
                .unwrap(),
            1
        );
        assert_eq!(
            credgate::store::overwrite(&store, path, data)
                .await
                .unwrap(),
            2
        );
    })
    .await;
}
