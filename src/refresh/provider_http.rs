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
