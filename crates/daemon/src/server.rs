//! The HTTP server under the API, with the limits that keep slow or hostile clients from
//! holding the daemon: a bound on open connections (past it a client gets 503 and the
//! connection is closed), a header read timeout (hyper's, also for idle keep-alive
//! connections), a body read timeout and size limit (a request whose announced body never
//! arrives gets 408 and is closed), and a graceful shutdown that always ends within a bound.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;

use crate::supervisor::log;

/// Limits of the server.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Most connections open at once.
    pub max_connections: usize,
    /// Longest wait for a request's headers (and between requests on a kept-alive connection).
    pub header_timeout: Duration,
    /// Longest wait for a request's whole body.
    pub body_timeout: Duration,
    /// Largest body, bytes.
    pub max_body: usize,
    /// Longest wait for open requests when shutting down.
    pub shutdown_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 256,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            max_body: 2 * 1024 * 1024,
            shutdown_timeout: Duration::from_secs(5),
        }
    }
}

fn json_error(status: StatusCode, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "error": message }).to_string();
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// An error reply that also closes the connection (the rest of its body is not read).
fn closing(status: StatusCode, message: &str) -> Response<Body> {
    let mut r = json_error(status, message);
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// Reads the whole body within the time and size limits, then hands the request on: the
/// handlers see a complete body, and a client that announces a body and never sends it
/// holds nothing past the timeout.
async fn buffered(
    router: Router,
    limits: Arc<Limits>,
    req: Request<hyper::body::Incoming>,
) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let announced = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > limits.max_body as u64) {
        return closing(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("the body is over the limit of {} bytes", limits.max_body),
        );
    }
    let limited = http_body_util::Limited::new(body, limits.max_body);
    let bytes = match tokio::time::timeout(limits.body_timeout, limited.collect()).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) => {
            let too_large = e
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some();
            return if too_large {
                closing(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &format!("the body is over the limit of {} bytes", limits.max_body),
                )
            } else {
                closing(
                    StatusCode::BAD_REQUEST,
                    "the request body could not be read",
                )
            };
        }
        Err(_) => {
            return closing(
                StatusCode::REQUEST_TIMEOUT,
                &format!(
                    "the request body did not arrive within {:?}",
                    limits.body_timeout
                ),
            );
        }
    };
    let req = Request::from_parts(parts, Body::from(bytes));
    match router.oneshot(req).await {
        Ok(r) => r,
        Err(e) => match e {},
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then lets open requests finish
/// for at most `limits.shutdown_timeout`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let limits = Arc::new(limits);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(64 * 1024);
    tokio::pin!(shutdown);
    loop {
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait and go on.
                    log(&format!("http: accept failed: {e}"));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            // Over the connection limit: say so and close, without reading the request.
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                let body = r#"{"error":"too many connections"}"#;
                let reply = format!(
                    "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let mut stream = stream;
                let _ = tokio::time::timeout(
                    Duration::from_secs(1),
                    stream.write_all(reply.as_bytes()),
                )
                .await;
            });
            continue;
        };
        let (router, limits) = (router.clone(), limits.clone());
        let service = hyper::service::service_fn(move |req| {
            let (router, limits) = (router.clone(), limits.clone());
            async move { Ok::<_, Infallible>(buffered(router, limits, req).await) }
        });
        let conn = http.serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.shutdown_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        log("http: open requests did not finish in time; closing them");
    }
    Ok(())
}
