//! The webhook's HTTP surface: parse nothing, decide nothing, only translate.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;

use crate::capture::{Answer, CaptureService};

pub fn router(service: Arc<CaptureService>, max_body: usize) -> Router {
    crate::api::error::with_error_fallbacks(
        Router::new()
            .route("/mutate", post(mutate))
            .route("/validate", post(validate)),
    )
    .layer(DefaultBodyLimit::max(max_body))
    .layer(axum::middleware::from_fn_with_state(
        max_body,
        crate::body_limit::refuse_oversized,
    ))
    .with_state(service)
}

fn respond(answer: Answer) -> Response {
    match answer {
        Answer::Review(review) => axum::Json(review).into_response(),
        Answer::BadRequest(msg) => (
            StatusCode::BAD_REQUEST,
            axum::Json(serde_json::json!({"error": {"code": "BadRequest", "message": msg}})),
        )
            .into_response(),
    }
}

async fn mutate(State(svc): State<Arc<CaptureService>>, body: Bytes) -> Response {
    respond(svc.mutate(&body))
}

async fn validate(State(svc): State<Arc<CaptureService>>, body: Bytes) -> Response {
    respond(svc.validate(&body).await)
}
