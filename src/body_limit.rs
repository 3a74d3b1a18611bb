//! Refusing oversized request bodies so that the client actually sees the 413.
//!
//! A server that answers before it has read the body, then closes the
//! connection, leaves a client that is still writing with a broken pipe or a
//! reset instead of the answer (hyper does not linger on close). So, as nginx
//! does with its lingering close, an oversized body is read and discarded,
//! up to [`DRAIN_MAX`] bytes and for at most [`DRAIN_TIME`], before the 413 is
//! sent. A client that sends more than that, or too slowly, is cut off.
//!
//! Bodies within the limit are buffered here and handed on, so handlers that
//! take `Bytes` see exactly what was sent; `DefaultBodyLimit` stays in place
//! behind this layer as a second line.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;

/// How much of an oversized body is read and thrown away before answering.
pub const DRAIN_MAX: u64 = 64 * 1024 * 1024;
/// How long draining an oversized body may take.
pub const DRAIN_TIME: Duration = Duration::from_secs(10);

/// The middleware; its state is the body limit in bytes.
pub async fn refuse_oversized(State(limit): State<usize>, req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let (parts, body) = req.into_parts();
    if declared.is_some_and(|n| n > limit as u64) {
        drain(body, 0).await;
        return too_large(limit);
    }
    match read_limited(body, limit).await {
        Ok(bytes) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Err(Refused::TooLarge(body, seen)) => {
            drain(body, seen).await;
            too_large(limit)
        }
        Err(Refused::Broken(e)) => error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!("reading the request body: {e}"),
        ),
    }
}

enum Refused {
    /// The body passed the limit; what is left of it, and how much was read.
    TooLarge(Body, u64),
    Broken(axum::Error),
}

async fn read_limited(mut body: Body, limit: usize) -> Result<Bytes, Refused> {
    // Most bodies arrive in one frame: hand that on without copying.
    let mut frames: Vec<Bytes> = Vec::new();
    let mut len = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(Refused::Broken)?;
        if let Ok(data) = frame.into_data() {
            len += data.len();
            if len > limit {
                return Err(Refused::TooLarge(body, len as u64));
            }
            frames.push(data);
        }
    }
    Ok(match frames.len() {
        0 => Bytes::new(),
        1 => frames.pop().unwrap_or_default(),
        _ => Bytes::from(frames.concat()),
    })
}

/// Read and discard, within the byte and time budgets.
async fn drain(mut body: Body, mut seen: u64) {
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        while seen < DRAIN_MAX {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        seen += data.len() as u64;
                    }
                }
                _ => break,
            }
        }
    })
    .await;
}

fn too_large(limit: usize) -> Response {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "PayloadTooLarge",
        format!("request body too large (the limit is {limit} bytes)"),
    )
}

fn error(status: StatusCode, code: &str, message: String) -> Response {
    (
        status,
        axum::Json(serde_json::json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::routing::post;
    use tower::ServiceExt;

    fn app(limit: usize) -> Router {
        Router::new()
            .route("/", post(|b: Bytes| async move { b.len().to_string() }))
            .layer(axum::middleware::from_fn_with_state(
                limit,
                refuse_oversized,
            ))
    }

    async fn send(limit: usize, body: Body, length: Option<usize>) -> (StatusCode, String) {
        let mut req = Request::post("/");
        if let Some(n) = length {
            req = req.header(header::CONTENT_LENGTH, n);
        }
        let resp = app(limit).oneshot(req.body(body).unwrap()).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    #[tokio::test]
    async fn bodies_within_the_limit_reach_the_handler_unchanged() {
        let (status, text) = send(10, Body::from("0123456789"), Some(10)).await;
        assert_eq!((status, text.as_str()), (StatusCode::OK, "10"));
    }

    #[tokio::test]
    async fn a_declared_oversized_body_is_drained_and_refused() {
        let (status, text) = send(10, Body::from("0123456789A"), Some(11)).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(text.contains("PayloadTooLarge"), "{text}");
        assert!(text.contains("limit is 10 bytes"), "{text}");
    }

    #[tokio::test]
    async fn an_undeclared_oversized_body_is_refused_too() {
        let chunks: Vec<Result<Bytes, std::io::Error>> =
            vec![Ok(Bytes::from("012345")), Ok(Bytes::from("6789AB"))];
        let body = Body::from_stream(futures::stream::iter(chunks));
        let (status, _) = send(10, body, None).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[tokio::test]
    async fn a_broken_body_is_a_bad_request() {
        let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
            Ok(Bytes::from("01")),
            Err(std::io::Error::other("connection reset")),
        ];
        let body = Body::from_stream(futures::stream::iter(chunks));
        let (status, text) = send(10, body, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(text.contains("connection reset"), "{text}");
    }
}
