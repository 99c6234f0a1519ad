//! A minimal Kubernetes TokenReview API on 127.0.0.1 for Vault's kubernetes
//! auth method: it says `authenticated: true` (as `namespace/name`) only for
//! the one JWT it was given, and counts the reviews. Stopped on Drop.

#![allow(dead_code)]

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

/// A service-account JWT as Kubernetes issues it (claims only: Vault checks
/// it through TokenReview, not by signature, when no `pem_keys` are set).
pub(crate) fn service_account_jwt(namespace: &str, name: &str, uid: &str) -> String {
    let header = json!({"alg": "RS256", "typ": "JWT", "kid": "test"});
    let claims = json!({
        "iss": "kubernetes/serviceaccount",
        "sub": format!("system:serviceaccount:{namespace}:{name}"),
        "kubernetes.io/serviceaccount/namespace": namespace,
        "kubernetes.io/serviceaccount/service-account.name": name,
        "kubernetes.io/serviceaccount/service-account.uid": uid,
    });
    let enc = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
    format!(
        "{}.{}.{}",
        enc(&header),
        enc(&claims),
        URL_SAFE_NO_PAD.encode(format!("signature-{uid}"))
    )
}

pub(crate) struct TokenReview {
    pub(crate) url: String,
    pub(crate) reviews: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TokenReview {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TokenReview {
    pub(crate) async fn start(jwt: String, namespace: &str, name: &str, uid: &str) -> TokenReview {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let reviews = Arc::new(AtomicUsize::new(0));
        let user = json!({
            "username": format!("system:serviceaccount:{namespace}:{name}"),
            "uid": uid,
            "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{namespace}"), "system:authenticated"],
        });
        let (jwt, user, counter) = (Arc::new(jwt), Arc::new(user), reviews.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (jwt, user, counter) = (jwt.clone(), user.clone(), counter.clone());
                let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let (jwt, user, counter) = (jwt.clone(), user.clone(), counter.clone());
                    async move {
                        let ok_path =
                            req.uri().path() == "/apis/authentication.k8s.io/v1/tokenreviews";
                        let body = req
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let review: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                        counter.fetch_add(1, Ordering::SeqCst);
                        let token = review["spec"]["token"].as_str().unwrap_or_default();
                        let status = if ok_path && token == jwt.as_str() {
                            json!({"authenticated": true, "user": *user})
                        } else {
                            json!({"authenticated": false, "error": "invalid bearer token"})
                        };
                        let reply = json!({
                            "kind": "TokenReview",
                            "apiVersion": "authentication.k8s.io/v1",
                            "metadata": {},
                            "spec": review["spec"],
                            "status": status,
                        });
                        Ok::<_, Infallible>(
                            Response::builder()
                                .status(201)
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from(reply.to_string())))
                                .unwrap(),
                        )
                    }
                });
                tokio::spawn(async move {
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        TokenReview { url, reviews, task }
    }

    pub(crate) fn reviews(&self) -> usize {
        self.reviews.load(Ordering::SeqCst)
    }
}
