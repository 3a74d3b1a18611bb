//! The JSON error model of SPEC §5: `{"error": {"code", "message"}}`.
//! Internal details are logged, never sent.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::restore::rollback::RollbackError;
use crate::store::StoreError;

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// BadRequest, Unauthorized, Forbidden, NotFound, MethodNotAllowed,
    /// Conflict, PayloadTooLarge, UnsupportedMediaType, Unavailable,
    /// Internal
    pub code: String,
    pub message: String,
    /// For conflicts: the objects changed after the action.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub objects: Option<Vec<String>>,
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub objects: Option<Vec<String>>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            objects: None,
        }
    }
    pub fn bad_request(m: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, m)
    }
    pub fn not_found(m: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, m)
    }
    pub fn conflict(m: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, m)
    }
    pub fn unauthorized(m: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, m)
    }
    pub fn forbidden(m: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, m)
    }
    /// Log the cause, answer with a generic message.
    pub fn internal(context: &str, cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "{context}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{context} failed; details are in snapback's log"),
        )
    }

    /// A call to the Kubernetes API server failed: 503 when the server
    /// could not be reached or answered that it cannot serve now (the
    /// caller may retry), otherwise a 500 like any internal failure.
    pub fn kube(context: &str, e: &kube::Error) -> Self {
        if unavailable(e) {
            tracing::warn!(error = %e, "{context}: the Kubernetes API server is unavailable");
            return Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{context} failed: the Kubernetes API server is unavailable; retry later"),
            );
        }
        Self::internal(context, e)
    }

    fn code(&self) -> &'static str {
        match self.status {
            StatusCode::BAD_REQUEST => "BadRequest",
            StatusCode::UNAUTHORIZED => "Unauthorized",
            StatusCode::FORBIDDEN => "Forbidden",
            StatusCode::NOT_FOUND => "NotFound",
            StatusCode::METHOD_NOT_ALLOWED => "MethodNotAllowed",
            StatusCode::CONFLICT => "Conflict",
            StatusCode::PAYLOAD_TOO_LARGE => "PayloadTooLarge",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "UnsupportedMediaType",
            StatusCode::SERVICE_UNAVAILABLE => "Unavailable",
            _ => "Internal",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code().to_string(),
                message: self.message,
                objects: self.objects,
            },
        };
        let mut resp = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}

impl From<RollbackError> for ApiError {
    fn from(e: RollbackError) -> Self {
        match e {
            RollbackError::NotFound(_) | RollbackError::BeingDeleted(_) => {
                ApiError::not_found(e.to_string())
            }
            RollbackError::TooOld { .. } => ApiError::bad_request(e.to_string()),
            RollbackError::Forbidden { ref objects, .. }
            | RollbackError::CannotImpersonate { ref objects, .. } => ApiError {
                status: StatusCode::FORBIDDEN,
                objects: Some(objects.clone()),
                message: e.to_string(),
            },
            RollbackError::Conflict(ref objects) => ApiError {
                status: StatusCode::CONFLICT,
                objects: Some(objects.clone()),
                message: e.to_string(),
            },
            RollbackError::Running(_)
            | RollbackError::NotOpen { .. }
            | RollbackError::Damaged(_) => ApiError::conflict(e.to_string()),
            RollbackError::Store(ref s) => ApiError::from_store("rollback", s),
            RollbackError::Client(_) => ApiError::internal("rollback", &e),
            RollbackError::Interrupted(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
            }
        }
    }
}

impl ApiError {
    pub fn from_store(context: &str, e: &StoreError) -> Self {
        match e {
            StoreError::NotFound(m) => ApiError::not_found(format!("{m} not found")),
            StoreError::Conflict(m) => {
                ApiError::conflict(format!("{m} was changed concurrently; retry"))
            }
            StoreError::Kube(k) => ApiError::kube(context, k),
            _ => ApiError::internal(context, e),
        }
    }
}

/// Whether a failed call never reached a working API server: no connection,
/// a timeout, an answer that it is overloaded or unavailable, or that an
/// admission webhook it had to call is.
pub fn unavailable(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => {
            matches!(s.code, 429 | 502 | 503 | 504)
                // An admission webhook in front of the review kinds is down
                // (snapback's own, where matchConditions cannot be used).
                || (s.code == 500 && s.message.contains("failed calling webhook"))
        }
        kube::Error::HyperError(_) | kube::Error::Service(_) => true,
        _ => false,
    }
}

/// Unknown paths and methods answer in the API's error shape, on every
/// listener (the rollback API, the webhook, metrics and probes).
pub fn with_error_fallbacks<S: Clone + Send + Sync + 'static>(
    router: axum::Router<S>,
) -> axum::Router<S> {
    router
        .fallback(|| async { ApiError::not_found("no such endpoint").into_response() })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this endpoint",
            )
            .into_response()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16, message: &str) -> kube::Error {
        kube::Error::Api(Box::new(kube::core::Status {
            code,
            message: message.into(),
            ..Default::default()
        }))
    }

    #[test]
    fn an_api_server_that_cannot_serve_now_is_a_503() {
        for e in [
            api(503, "service unavailable"),
            api(429, "too many requests"),
            api(
                500,
                "Internal error occurred: failed calling webhook \"mutate.snapback.io\": connection refused",
            ),
        ] {
            assert!(unavailable(&e), "{e}");
            assert_eq!(
                ApiError::kube("authenticating", &e).status,
                StatusCode::SERVICE_UNAVAILABLE
            );
        }
        let e = api(500, "etcd corrupted");
        assert!(!unavailable(&e));
        assert_eq!(
            ApiError::kube("authenticating", &e).status,
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
}
