//! Storage: the snapshot codec, the storage contract (labels, annotations,
//! action records) and the stores that write them.

pub mod actions;
pub mod codec;
pub mod kube_store;
pub mod memory;
pub mod model;

use futures::future::BoxFuture;

use crate::store::actions::ActionRecord;
use crate::store::codec::EncodedPayload;
use crate::store::model::SnapshotMeta;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{}", describe_kube_error(.0))]
    Kube(#[source] kube::Error),
    #[error("{0}")]
    Codec(#[from] codec::CodecError),
    #[error("stored object {name} is unreadable: {reason}")]
    Corrupt { name: String, reason: String },
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} was changed concurrently")]
    Conflict(String),
}

impl StoreError {
    /// A bounded label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            StoreError::Kube(kube::Error::Api(e)) if e.code == 403 => "forbidden",
            StoreError::Kube(kube::Error::Api(e)) if e.code == 413 => "too_large",
            StoreError::Kube(kube::Error::Api(e)) if e.code == 429 => "throttled",
            StoreError::Kube(kube::Error::Api(e)) if e.code >= 500 => "server_error",
            StoreError::Kube(kube::Error::Api(_)) => "api_error",
            StoreError::Kube(_) => "unreachable",
            StoreError::Codec(_) => "encode",
            StoreError::Corrupt { .. } => "corrupt",
            StoreError::NotFound(_) => "not_found",
            StoreError::Conflict(_) => "conflict",
        }
    }
}

/// The API server's own words for an API error; the client's for the rest.
pub fn describe_kube_error(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) => {
            let reason = if status.reason.is_empty() {
                "Error"
            } else {
                status.reason.as_str()
            };
            format!("{} ({reason}, {})", status.message, status.code)
        }
        other => format!("Kubernetes API unreachable: {other}"),
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// One change ready to be written.
#[derive(Debug, Clone)]
pub struct NewSnapshot {
    pub meta: SnapshotMeta,
    /// The prior object, encoded; none for CREATE.
    pub payload: Option<EncodedPayload>,
}

/// Where the webhook writes. Behind a trait so the capture path can be
/// measured and tested without an API server.
pub trait SnapshotSink: Send + Sync + 'static {
    /// Create the action record if it does not exist yet (never overwrites).
    fn ensure_action<'a>(&'a self, record: &'a ActionRecord) -> BoxFuture<'a, Result<()>>;
    /// Store one snapshot; idempotent for the same snapshot name.
    fn put_snapshot<'a>(&'a self, snapshot: &'a NewSnapshot) -> BoxFuture<'a, Result<()>>;
}
