//! The HTTP client credgate talks to token endpoints with: never follows a
//! redirect, bounded in time, and reads at most [`MAX_ANSWER_BYTES`] of an
//! answer, so a hostile or broken provider cannot take the process's memory.

use std::future::Future;
use std::pin::Pin;

use oauth2::{AsyncHttpClient, HttpRequest, HttpResponse};

/// A token endpoint answer larger than this is a refresh failure.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Why a provider call failed below OAuth: never carries a secret.
#[derive(Debug, thiserror::Error)]
pub enum ProviderHttpError {
    #[error("provider answer over {MAX_ANSWER_BYTES} bytes")]
    TooLarge,
    #[error("{0}")]
    Transport(String),
}

/// `reqwest::Client` with the answer size cap (`oauth2`'s own impl reads any size).
pub struct LimitedClient<'a>(pub &'a reqwest::Client);

impl<'c> AsyncHttpClient<'c> for LimitedClient<'_> {
    type Error = ProviderHttpError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, Self::Error>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(async move {
            let request = reqwest::Request::try_from(request)
                .map_err(|e| ProviderHttpError::Transport(format!("request: {e}")))?;
            let mut response = self
                .0
                .execute(request)
                .await
                // Without the URL: a provider URL may carry a query the operator set.
                .map_err(|e| ProviderHttpError::Transport(e.without_url().to_string()))?;
            if response
                .content_length()
                .is_some_and(|n| n > MAX_ANSWER_BYTES as u64)
            {
                return Err(ProviderHttpError::TooLarge);
            }
            let mut builder = http::Response::builder().status(response.status());
            for (name, value) in response.headers() {
                builder = builder.header(name, value);
            }
            let mut body = Vec::new();
            while let Some(chunk) = response
                .chunk()
                .await
                .map_err(|e| ProviderHttpError::Transport(e.without_url().to_string()))?
            {
                if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                    return Err(ProviderHttpError::TooLarge);
                }
                body.extend_from_slice(&chunk);
            }
            builder
                .body(body)
                .map_err(|e| ProviderHttpError::Transport(e.to_string()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A token endpoint on 127.0.0.1 that answers every request with `answer`.
    async fn endpoint(answer: Vec<u8>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/token", listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let answer = answer.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = s.read(&mut buf).await;
                    let _ = s.write_all(&answer).await;
                });
            }
        });
        url
    }

    async fn ask(url: &str) -> Result<HttpResponse, ProviderHttpError> {
        let http = reqwest::Client::new();
        let req = http::Request::post(url)
            .body(b"grant_type=x".to_vec())
            .unwrap();
        LimitedClient(&http).call(req).await
    }

    #[tokio::test]
    async fn answers_over_64_kib_are_refused_whatever_their_framing() {
        let body = vec![b'a'; MAX_ANSWER_BYTES + 1];
        let mut declared = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        declared.extend_from_slice(&body);
        let url = endpoint(declared).await;
        assert!(matches!(ask(&url).await, Err(ProviderHttpError::TooLarge)));

        // Chunked, no length: cut off while reading.
        let mut chunked =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
        for part in body.chunks(8192) {
            chunked.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
            chunked.extend_from_slice(part);
            chunked.extend_from_slice(b"\r\n");
        }
        chunked.extend_from_slice(b"0\r\n\r\n");
        let url = endpoint(chunked).await;
        assert!(matches!(ask(&url).await, Err(ProviderHttpError::TooLarge)));

        // At the limit is fine.
        let ok = vec![b'a'; MAX_ANSWER_BYTES];
        let mut exact =
            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", ok.len()).into_bytes();
        exact.extend_from_slice(&ok);
        let url = endpoint(exact).await;
        assert_eq!(ask(&url).await.unwrap().body().len(), MAX_ANSWER_BYTES);
    }
}
