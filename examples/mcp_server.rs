//! A minimal MCP server for the README walkthrough and the interop tests, built on `rmcp`
//! (the official Rust MCP SDK), Streamable HTTP transport at `/mcp`.
//!
//! It plays the part of an MCP server that credgate protects: it accepts exactly one
//! upstream bearer token (the tenant's credential that credgate injects) and answers 401
//! to anything else. Its one tool, `whoami`, reports the `Authorization` header it
//! received, so a caller can see which credential credgate injected.
//!
//! ```sh
//! cargo run --example mcp_server -- --port 3000 --token gho_example_upstream_token
//! ```
//!
//! The token may also come from the `MCP_ACCEPTED_TOKEN` environment variable.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ListToolsResult,
    PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde_json::json;

const USAGE: &str = "usage: mcp_server --port PORT --token TOKEN   (or MCP_ACCEPTED_TOKEN=TOKEN)";

#[derive(Clone)]
struct Whoami;

impl ServerHandler for Whoami {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let schema = json!({"type": "object", "properties": {}});
        let serde_json::Value::Object(schema) = schema else {
            unreachable!("a JSON object literal")
        };
        Ok(ListToolsResult::with_all_items(vec![Tool::new(
            "whoami",
            "Report the Authorization header this server received",
            schema,
        )]))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        if request.name != "whoami" {
            return Err(ErrorData::invalid_params(
                format!("unknown tool {}", request.name),
                None,
            ));
        }
        let header = |name: &str| {
            context
                .extensions
                .get::<http::request::Parts>()
                .and_then(|p| p.headers.get(name))
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        Ok(CallToolResult::structured(json!({
            "authorization": header("authorization"),
            "x_request_id": header("x-request-id"),
            "x_forwarded_for": header("x-forwarded-for"),
        }))
        .into())
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn unauthorized() -> Response<Body> {
    let mut resp =
        Response::new(Full::new(Bytes::from_static(b"{\"error\":\"invalid_token\"}\n")).boxed());
    *resp.status_mut() = StatusCode::UNAUTHORIZED;
    resp.headers_mut().insert(
        http::header::WWW_AUTHENTICATE,
        http::HeaderValue::from_static("Bearer error=\"invalid_token\""),
    );
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

fn not_found() -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from_static(b"not found\n")).boxed());
    *resp.status_mut() = StatusCode::NOT_FOUND;
    resp
}

fn args() -> Result<(u16, String), String> {
    let mut port = None;
    let mut token = std::env::var("MCP_ACCEPTED_TOKEN").ok();
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--port" => {
                let v = it.next().ok_or("--port needs a value")?;
                port = Some(v.parse::<u16>().map_err(|e| format!("--port {v}: {e}"))?);
            }
            "--token" => token = Some(it.next().ok_or("--token needs a value")?),
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unexpected argument {other:?}\n{USAGE}")),
        }
    }
    let port = port.ok_or(USAGE)?;
    let token = token.filter(|t| !t.is_empty()).ok_or(USAGE)?;
    Ok((port, token))
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let (port, token) = args().unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(2)
    });
    let expected: Arc<str> = format!("Bearer {token}").into();
    let mcp = Arc::new(StreamableHttpService::new(
        || Ok(Whoami),
        Arc::new(LocalSessionManager::default()),
        // Stateless with plain JSON answers: every request stands alone, so one `curl`
        // with a `tools/call` is enough (no session to open first).
        StreamableHttpServerConfig::default()
            .with_legacy_session_mode(false)
            .with_json_response(true),
    ));
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .unwrap_or_else(|e| {
            eprintln!("cannot listen on {addr}: {e}");
            std::process::exit(1)
        });
    println!("MCP server on http://{addr}/mcp (whoami tool; one accepted bearer token)");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (mcp, expected) = (mcp.clone(), expected.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let (mcp, expected) = (mcp.clone(), expected.clone());
                async move {
                    if req.uri().path() != "/mcp" {
                        return Ok::<_, Infallible>(not_found());
                    }
                    let authorized = req
                        .headers()
                        .get(http::header::AUTHORIZATION)
                        .is_some_and(|v| v.as_bytes() == expected.as_bytes());
                    if !authorized {
                        return Ok(unauthorized());
                    }
                    Ok(mcp.handle(req).await)
                }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
