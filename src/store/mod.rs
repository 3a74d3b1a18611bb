//! Storage: the snapshot codec, the storage contract (labels, annotations,
//! action records) and the stores that write them.

pub mod actions;
pub mod batch;
pub mod codec;
pub mod journal;
pub mod kube_store;
pub mod memory;
pub mod model;
pub mod writer;

use futures::future::BoxFuture;
use jiff::Timestamp;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::store::actions::{ActionRecord, DeletedNamespace};
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
/// A 404 that is not about an object: the API server serves nothing at
/// that path (no CustomResourceDefinition or API service for the kind), and
/// answers in plain text rather than with a Status.
pub fn not_served(status: &kube::core::Status) -> bool {
    status.code == 404 && status.message.contains("page not found")
}

pub fn describe_kube_error(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) if not_served(status) => format!(
            "{} (NotFound, 404: the API server serves nothing at this path; for a custom resource, its CustomResourceDefinition does not exist)",
            status.message.trim()
        ),
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
        deleted: &'a DeletedNamespace,
    ) -> BoxFuture<'a, Result<()>>;
    /// The namespace's uid and the time its deletion was committed, if it
    /// exists and is being deleted (its contents emptied); read from the
    /// API server's cache.
    fn terminating_namespace<'a>(
        &'a self,
        namespace: &'a str,
    ) -> BoxFuture<'a, Result<Option<TerminatingNamespace>>>;
    /// The action whose change deleted the namespace with this uid, if a
    /// captured change did: of the actions noted as deleting it, the last
    /// one admitted before the deletion was committed (`deleted_at`), as
    /// other admission steps may have refused earlier ones.
    fn namespace_deleted_by<'a>(
        &'a self,
        namespace: &'a str,
        uid: &'a str,
        deleted_at: Option<Timestamp>,
    ) -> BoxFuture<'a, Result<Option<ActionId>>>;
    /// Whether the action's record exists.
    fn action_exists<'a>(&'a self, action: &'a ActionId) -> BoxFuture<'a, Result<bool>>;
    /// The action whose captured change deleted the object with this uid
    /// (recently: the stored snapshot of the DELETE is labelled with it).
    fn deleted_by<'a>(&'a self, uid: &'a str) -> BoxFuture<'a, Result<Option<ActionId>>>;
    /// The Node as it was at exactly this resourceVersion (from etcd's
    /// history; None once compacted away or when it did not exist then).
    fn node_at<'a>(
        &'a self,
        name: &'a str,
        resource_version: &'a str,
    ) -> BoxFuture<'a, Result<Option<serde_json::Value>>>;
}

/// A namespace being deleted: its uid, and when the API server committed the
/// deletion.
pub type TerminatingNamespace = (String, Option<Timestamp>);

/// Of the actions noted as deleting a namespace (uid already matched), the
/// one whose deletion was committed: the last admitted at most a little
/// after `deleted_at` (the API server's clock, whole seconds), or, without
/// one (clocks apart), the first.
pub fn deleting_action<'a>(
    noted: impl IntoIterator<Item = (&'a ActionId, &'a DeletedNamespace)>,
    deleted_at: Option<Timestamp>,
) -> Option<ActionId> {
    let noted: Vec<(&ActionId, &DeletedNamespace)> = noted.into_iter().collect();
    let slack = jiff::SignedDuration::from_secs(2);
    let before = deleted_at.and_then(|d| {
        noted
            .iter()
            .filter(|(_, n)| n.at <= d + slack)
            .max_by_key(|(_, n)| n.at)
            .map(|(a, _)| (*a).clone())
    });
    before.or_else(|| {
        noted
            .iter()
            .min_by_key(|(_, n)| n.at)
            .map(|(a, _)| (*a).clone())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_deletion_is_the_last_admitted_before_it() {
        let t = |s: &str| s.parse::<Timestamp>().unwrap();
        let (a, b, c) = (
            ActionId::parse("refused").unwrap(),
            ActionId::parse("committed").unwrap(),
            ActionId::parse("later-attempt").unwrap(),
        );
        let noted = [
            (
                &a,
                DeletedNamespace {
                    uid: "u".into(),
                    at: t("2026-11-23T10:00:00.100Z"),
                },
            ),
            (
                &b,
                DeletedNamespace {
                    uid: "u".into(),
                    at: t("2026-11-23T10:00:05.900Z"),
                },
            ),
            (
                &c,
                DeletedNamespace {
                    uid: "u".into(),
                    at: t("2026-11-23T10:00:30Z"),
                },
            ),
        ];
        let of = |at: Option<Timestamp>| deleting_action(noted.iter().map(|(a, d)| (*a, d)), at);
        // The API server's deletionTimestamp has whole seconds.
        assert_eq!(of(Some(t("2026-11-23T10:00:05Z"))), Some(b.clone()));
        // Clocks apart (snapback's ahead by more than the slack): the first.
        assert_eq!(of(Some(t("2026-11-23T09:59:00Z"))), Some(a.clone()));
        assert_eq!(of(None), Some(a));
        assert_eq!(deleting_action([], Some(t("2026-11-23T10:00:05Z"))), None);
    }
}
