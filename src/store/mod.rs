//! Storage: the snapshot codec, the storage contract (labels, annotations,
//! action records) and the stores that write them.

pub mod actions;
pub mod batch;
pub mod codec;
pub mod kube_store;
pub mod memory;
pub mod model;
pub mod writer;

use futures::future::BoxFuture;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::store::actions::ActionRecord;
use crate::store::codec::EncodedPayload;
use crate::store::model::{ActionId, SnapshotMeta};

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
    /// One failure reported to every snapshot of a batch.
    #[error("{message}")]
    Shared {
        message: String,
        label: &'static str,
    },
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
            StoreError::Shared { label, .. } => label,
        }
    }

    /// The same failure again, for each snapshot of a batch that failed.
    pub fn share(&self) -> StoreError {
        match self {
            StoreError::Kube(kube::Error::Api(e)) => StoreError::Kube(kube::Error::Api(e.clone())),
            other => StoreError::Shared {
                message: other.to_string(),
                label: other.metric_label(),
            },
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

/// One change ready to be written. The store encodes it: alone (gzip of
/// the object, SPEC §3) or, with other changes of its action, in a batch.
#[derive(Debug, Clone)]
pub struct NewSnapshot {
    /// `payload_sha256` and `chunks` are set by the store when it encodes.
    pub meta: SnapshotMeta,
    /// The prior object, as the JSON the API server sent; none for CREATE.
    pub prior: Option<Box<RawValue>>,
}

impl NewSnapshot {
    /// Bytes of the prior object's JSON (0 for CREATE): what there is to
    /// compress and store.
    pub fn prior_len(&self) -> usize {
        self.prior.as_ref().map_or(0, |p| p.get().len())
    }
}

/// A snapshot encoded for the per-change layout.
#[derive(Debug, Clone)]
pub struct StoredSnapshot {
    pub meta: SnapshotMeta,
    pub payload: Option<EncodedPayload>,
}

/// Objects at least this large are compressed on the blocking pool.
pub const INLINE_ENCODE_LIMIT: usize = 64 * 1024;

/// Encode a snapshot for the per-change layout: gzip, sha256 and chunks of
/// the prior object, recorded in its metadata.
pub async fn encode_single(snapshot: NewSnapshot) -> Result<StoredSnapshot> {
    let NewSnapshot { mut meta, prior } = snapshot;
    let payload = match prior {
        None => None,
        Some(prior) if prior.get().len() < INLINE_ENCODE_LIMIT => Some(codec::encode_json(
            prior.get().as_bytes(),
            codec::CHUNK_SIZE,
        )?),
        Some(prior) => Some(
            tokio::task::spawn_blocking(move || {
                codec::encode_json(prior.get().as_bytes(), codec::CHUNK_SIZE)
            })
            .await
            .map_err(|e| StoreError::Shared {
                message: format!("encoding task failed: {e}"),
                label: "internal",
            })??,
        ),
    };
    meta.payload_sha256 = payload.as_ref().map(|p| p.sha256.clone());
    meta.chunks = payload.as_ref().map_or(0, |p| p.chunks.len() as u32);
    Ok(StoredSnapshot { meta, payload })
}

/// The JSON of an object as a prior to store (for priors that were read
/// back or built, not taken from a review).
pub fn prior_json(object: &Value) -> Result<Box<RawValue>> {
    serde_json::value::to_raw_value(object).map_err(|e| codec::CodecError::Serialize(e).into())
}

/// Where the webhook writes. Behind a trait so the capture path can be
/// measured and tested without an API server.
pub trait SnapshotSink: Send + Sync + 'static {
    /// Create the action record if it does not exist yet (never overwrites).
    fn ensure_action<'a>(&'a self, record: &'a ActionRecord) -> BoxFuture<'a, Result<()>>;
    /// Store one snapshot; idempotent for the same snapshot name. Returns
    /// the compressed bytes stored for it (its share of a batch).
    fn put_snapshot(&self, snapshot: NewSnapshot) -> BoxFuture<'_, Result<u64>>;
    /// Note that `action` deleted namespace `namespace` (uid `uid`), so that
    /// any replica can attribute the namespace controller's deletes of its
    /// contents to it. The action record exists already.
    fn mark_namespace_deletion<'a>(
        &'a self,
        action: &'a ActionId,
        namespace: &'a str,
        uid: &'a str,
    ) -> BoxFuture<'a, Result<()>>;
    /// The namespace's uid, if it exists and is being deleted (its contents
    /// emptied); read from the API server's cache.
    fn terminating_namespace<'a>(
        &'a self,
        namespace: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>>>;
    /// The action whose change deleted the namespace with this uid, if a
    /// captured change did.
    fn namespace_deleted_by<'a>(
        &'a self,
        namespace: &'a str,
        uid: &'a str,
    ) -> BoxFuture<'a, Result<Option<ActionId>>>;
}
