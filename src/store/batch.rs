//! Batch snapshots: several changes of one action in one ConfigMap.
//!
//! Written (a) by the webhook's group commit, when changes of the same action
//! are admitted while a snapshot write is already in flight, and (b) by
//! compaction, which folds the per-change ConfigMaps of a finished action
//! into batches. One API write then carries many snapshots, and one gzip
//! stream over many similar objects compresses far better than each alone.
//!
//! Layout (docs/API.md, "Batch snapshots"): a ConfigMap labelled
//! `app.kubernetes.io/managed-by=snapback`, `snapback.io/action=<id>`,
//! `snapback.io/record=batch` (and `snapback.io/guard` when an entry asks for
//! a guard; `snapback.io/compacted=true` when compaction wrote it), annotated
//! with the entry count, the sha256 of its payload, the capture time of its
//! newest entry (`snapback.io/timestamp`) and its objects' namespaces
//! (`snapback.io/namespaces`), so that the maintenance pass and the action
//! list learn an action's activity from metadata alone;
//! `binaryData["snapshots.json.gz"]` is the gzip of
//! `{"version": 1, "entries": [{"name", "labels", "annotations", "object"}]}`
//! where `labels` and `annotations` are exactly those a per-change ConfigMap
//! of that snapshot would carry, and `object` is the prior object (absent for
//! CREATE). In an entry, `snapback.io/payload-sha256` is the sha256 of the
//! object's JSON (not of a gzip stream), checked on every read.
//! Secrets are never batched.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::store::codec::{self, CodecError, sha256_hex};
use crate::store::model::*;

pub const RECORD_BATCH: &str = "batch";
pub const BATCH_KEY: &str = "snapshots.json.gz";
pub const ANN_ENTRIES: &str = "snapback.io/entries";
/// The namespaces of a batch's objects, sorted, comma-separated (empty when
/// all are cluster-scoped).
pub const ANN_NAMESPACES: &str = "snapback.io/namespaces";
/// Largest JSON document a batch may hold before compression: the decoder
/// refuses more than `codec::MAX_DECODED_SIZE`.
pub const MAX_BATCH_RAW: usize = 8 * 1024 * 1024;
/// Objects larger than this are never batched: they go alone (and chunked).
pub const MAX_ENTRY_RAW: usize = 256 * 1024;

/// One change to put in a batch.
#[derive(Debug, Clone)]
pub struct BatchEntry {
    pub meta: SnapshotMeta,
    /// The prior object's JSON, embedded in the batch as it is.
    pub prior: Option<Box<RawValue>>,
}

#[derive(Serialize)]
struct DocumentOut<'a> {
    version: u32,
    entries: Vec<EntryOut<'a>>,
}

#[derive(Serialize)]
struct EntryOut<'a> {
    name: &'a str,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    object: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct DocumentIn {
    version: u32,
    entries: Vec<EntryIn>,
}

#[derive(Deserialize)]
struct EntryIn {
    name: String,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    #[serde(default)]
    object: Option<Box<RawValue>>,
}

/// An encoded batch, ready to write.
#[derive(Debug, Clone)]
pub struct EncodedBatch {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub payload: Vec<u8>,
    /// Length of the JSON document before compression.
    pub raw_len: usize,
}

/// The name of a batch: its first snapshot's name and its size, so that the
/// same batch written twice (a retry) has the same name.
pub fn batch_name(first_snapshot: &str, entries: usize) -> String {
    format!("{first_snapshot}-b{entries}")
}

/// Sets each entry's payload sha256 (of the object's JSON) and chunk count;
/// returns the JSON of each prior object, for size decisions.
pub fn prepare(entries: &mut [BatchEntry]) -> Result<Vec<usize>, CodecError> {
    entries
        .iter_mut()
        .map(|e| match &e.prior {
            None => {
                e.meta.payload_sha256 = None;
                e.meta.chunks = 0;
                Ok(0)
            }
            Some(prior) => {
                let raw = prior.get().as_bytes();
                e.meta.payload_sha256 = Some(sha256_hex(raw));
                e.meta.chunks = 1;
                Ok(raw.len())
            }
        })
        .collect()
}

/// Encode entries (all of one action, already `prepare`d) as one batch.
pub fn encode(entries: &[BatchEntry], effort: codec::Effort) -> Result<EncodedBatch, CodecError> {
    let first = &entries[0].meta;
    let doc = DocumentOut {
        version: 1,
        entries: entries
            .iter()
            .map(|e| EntryOut {
                name: &e.meta.snapshot_name,
                labels: e.meta.labels(),
                annotations: e.meta.annotations(),
                object: e.prior.as_deref(),
            })
            .collect(),
    };
    let raw = serde_json::to_vec(&doc).map_err(CodecError::Serialize)?;
    let payload = codec::gzip_with(&raw, effort)?;
    let mut labels = BTreeMap::from([
        (MANAGED_BY.to_string(), MANAGER.to_string()),
        (LABEL_ACTION.to_string(), first.action.to_string()),
        (LABEL_RECORD.to_string(), RECORD_BATCH.to_string()),
    ]);
    if let Some(g) = entries.iter().find_map(|e| e.meta.guard.as_ref()) {
        labels.insert(LABEL_GUARD.to_string(), label_safe(g));
    }
    for key in entries.iter().filter_map(|e| e.meta.deleted_uid_label()) {
        labels.insert(key, String::new());
    }
    let mut annotations = BTreeMap::from([
        (ANN_ENTRIES.to_string(), entries.len().to_string()),
        (ANN_PAYLOAD_SHA256.to_string(), sha256_hex(&payload)),
    ]);
    if let Some(newest) = entries.iter().map(|e| e.meta.timestamp).max() {
        annotations.insert(ANN_TIMESTAMP.to_string(), format_timestamp(newest));
    }
    let namespaces: std::collections::BTreeSet<&str> = entries
        .iter()
        .filter_map(|e| e.meta.object.touched_namespace())
        .collect();
    annotations.insert(
        ANN_NAMESPACES.to_string(),
        namespaces.into_iter().collect::<Vec<_>>().join(","),
    );
    Ok(EncodedBatch {
        name: batch_name(&first.snapshot_name, entries.len()),
        labels,
        annotations,
        payload,
        raw_len: raw.len(),
    })
}

/// A decoded entry: its metadata, and its prior object or why it is unreadable.
pub type DecodedEntry = (SnapshotMeta, Result<Option<Value>, String>);

/// Verify and decode a stored batch. An entry whose own checksum fails
/// carries the reason; a batch whose payload fails its checksum is refused
/// whole (no entry of it can be trusted).
pub fn decode(
    batch: &str,
    annotations: &BTreeMap<String, String>,
    payload: &[u8],
) -> Result<Vec<DecodedEntry>, String> {
    let sha = annotations
        .get(ANN_PAYLOAD_SHA256)
        .ok_or_else(|| format!("batch {batch}: missing annotation {ANN_PAYLOAD_SHA256}"))?;
    let json = codec::decode_bytes(&[payload], sha).map_err(|e| format!("batch {batch}: {e}"))?;
    let doc: DocumentIn =
        serde_json::from_slice(&json).map_err(|e| format!("batch {batch}: {e}"))?;
    if doc.version != 1 {
        return Err(format!(
            "batch {batch}: unknown format version {}",
            doc.version
        ));
    }
    let mut out = Vec::with_capacity(doc.entries.len());
    for e in doc.entries {
        let mut meta = match SnapshotMeta::from_stored(&e.name, &e.labels, &e.annotations, false) {
            Ok(m) => m,
            Err(reason) => {
                tracing::warn!(batch, entry = %e.name, %reason, "skipping unreadable batch entry");
                continue;
            }
        };
        meta.batch = Some(batch.to_string());
        let prior = match (&meta.payload_sha256, e.object) {
            (None, _) => Ok(None),
            (Some(_), None) => Err(format!("snapshot {}: prior object is missing", e.name)),
            (Some(expected), Some(object)) => {
                // The entry's bytes as written: the API server's JSON, or
                // (batches of earlier versions and of compaction) the
                // serialisation whose hash was taken.
                let computed = sha256_hex(object.get().as_bytes());
                if computed.eq_ignore_ascii_case(expected) {
                    serde_json::from_str(object.get())
                        .map(Some)
                        .map_err(|err| format!("snapshot {}: prior object: {err}", e.name))
                } else {
                    Err(format!(
                        "snapshot {}: payload sha256 mismatch: stored {expected}, computed {computed}",
                        e.name
                    ))
                }
            }
        };
        out.push((meta, prior));
    }
    Ok(out)
}

/// Split prepared entries (with their raw sizes) into groups that each fit
/// one batch: at most `max_raw` bytes of objects. Compression only shrinks
/// that, so a group also fits one ConfigMap once compressed, unless the
/// objects are incompressible; `encode` callers check the compressed size.
pub fn groups(sizes: &[usize], max_raw: usize) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut total) = (0, 0);
    for (i, &s) in sizes.iter().enumerate() {
        let s = s + 1024; // metadata of the entry
        if i > start && total + s > max_raw {
            out.push(start..i);
            start = i;
            total = 0;
        }
        total += s;
    }
    if start < sizes.len() {
        out.push(start..sizes.len());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::model::{ActionId, ObjectRef, Operation};
    use serde_json::json;

    fn entry(i: usize, op: Operation) -> BatchEntry {
        let ts = "2026-11-23T01:02:03.123456Z"
            .parse::<jiff::Timestamp>()
            .unwrap()
            + jiff::SignedDuration::from_secs(i as i64);
        BatchEntry {
            meta: SnapshotMeta {
                resource_version: (op != Operation::Create).then(|| "41".into()),
                uid: Some(format!("u-{i}")),
                guard: (i == 1).then(|| "5m".into()),
                ..SnapshotMeta::new(
                    ActionId::parse("release-7").unwrap(),
                    op,
                    ObjectRef {
                        group: "".into(),
                        version: "v1".into(),
                        resource: "configmaps".into(),
                        subresource: None,
                        kind: "ConfigMap".into(),
                        namespace: Some("shop".into()),
                        name: format!("cm-{i}"),
                    },
                    "alice",
                    ts,
                    format!("uid-{i}"),
                )
            },
            prior: (op != Operation::Create).then(|| {
                // Keys in the API server's order, not sorted: stored as sent.
                let raw = format!(
                    r#"{{"kind":"ConfigMap","apiVersion":"v1","metadata":{{"name":"cm-{i}","namespace":"shop"}},"data":{{"k":"{}","f":0.1}}}}"#,
                    "v".repeat(i)
                );
                RawValue::from_string(raw).unwrap()
            }),
        }
    }

    fn sample() -> (EncodedBatch, Vec<BatchEntry>) {
        let mut entries = vec![
            entry(0, Operation::Create),
            entry(1, Operation::Update),
            entry(2, Operation::Delete),
        ];
        prepare(&mut entries).unwrap();
        (encode(&entries, codec::Effort::Fast).unwrap(), entries)
    }

    #[test]
    fn a_batch_round_trips_every_entry() {
        let (batch, entries) = sample();
        assert_eq!(batch.labels[LABEL_RECORD], RECORD_BATCH);
        assert_eq!(batch.labels[LABEL_ACTION], "release-7");
        assert_eq!(batch.labels[LABEL_GUARD], "5m");
        assert_eq!(batch.annotations[ANN_ENTRIES], "3");
        // The newest entry's capture time, for the maintenance pass.
        let newest = entries.iter().map(|e| e.meta.timestamp).max().unwrap();
        assert_eq!(batch.annotations[ANN_TIMESTAMP], format_timestamp(newest));
        assert_ne!(
            newest, entries[0].meta.timestamp,
            "a sample with distinct times"
        );
        assert_eq!(batch.annotations[ANN_NAMESPACES], "shop");
        let decoded = decode(&batch.name, &batch.annotations, &batch.payload).unwrap();
        assert_eq!(decoded.len(), 3);
        for ((meta, prior), e) in decoded.iter().zip(&entries) {
            let mut expected = e.meta.clone();
            expected.batch = Some(batch.name.clone());
            assert_eq!(meta, &expected);
            let sent: Option<Value> = e
                .prior
                .as_ref()
                .map(|p| serde_json::from_str(p.get()).unwrap());
            assert_eq!(prior.as_ref().unwrap(), &sent);
        }
    }

    #[test]
    fn a_damaged_batch_is_refused_and_a_damaged_entry_is_reported() {
        let (batch, _) = sample();
        let mut bad = batch.payload.clone();
        let n = bad.len();
        bad[n / 2] ^= 0xff;
        let err = decode(&batch.name, &batch.annotations, &bad).unwrap_err();
        assert!(err.contains("sha256 mismatch"), "{err}");

        // An entry whose object was altered (a re-encoded batch with a stale
        // per-entry checksum) fails alone.
        let mut entries = vec![entry(1, Operation::Update), entry(2, Operation::Delete)];
        prepare(&mut entries).unwrap();
        let tampered = entries[0]
            .prior
            .as_ref()
            .unwrap()
            .get()
            .replace("\"v\"", "\"w\"");
        entries[0].prior = Some(RawValue::from_string(tampered).unwrap());
        let b = encode(&entries, codec::Effort::Fast).unwrap();
        let decoded = decode(&b.name, &b.annotations, &b.payload).unwrap();
        assert!(decoded[0].1.as_ref().unwrap_err().contains("mismatch"));
        assert!(decoded[1].1.as_ref().unwrap().is_some());
    }

    #[test]
    fn batches_of_earlier_versions_still_decode() {
        // Earlier versions embedded each object re-serialised from a JSON
        // tree (sorted keys) and hashed that serialisation.
        let (_, entries) = sample();
        let object = json!({"metadata": {"name": "cm-1", "namespace": "shop"},
                            "kind": "ConfigMap", "apiVersion": "v1", "data": {"k": "v"}});
        let mut meta = entries[1].meta.clone();
        meta.payload_sha256 = Some(sha256_hex(&serde_json::to_vec(&object).unwrap()));
        let doc = json!({"version": 1, "entries": [{
            "name": meta.snapshot_name, "labels": meta.labels(),
            "annotations": meta.annotations(), "object": object}]});
        let payload = codec::gzip(&serde_json::to_vec(&doc).unwrap()).unwrap();
        let annotations = BTreeMap::from([(ANN_PAYLOAD_SHA256.to_string(), sha256_hex(&payload))]);
        let decoded = decode("legacy", &annotations, &payload).unwrap();
        assert_eq!(decoded.len(), 1);
        assert_eq!(decoded[0].1.as_ref().unwrap().as_ref(), Some(&object));
    }

    #[test]
    fn groups_respect_the_size_limit() {
        assert_eq!(groups(&[10, 10, 10], 100_000), vec![0..3]);
        assert_eq!(groups(&[3000, 3000, 3000], 8200), vec![0..2, 2..3]);
        // One entry larger than the limit still forms its own group.
        assert_eq!(groups(&[50_000, 10], 8200), vec![0..1, 1..2]);
        assert!(groups(&[], 10).is_empty());
    }

    #[test]
    fn similar_objects_compress_far_better_together() {
        let mut entries: Vec<BatchEntry> = (1..40).map(|i| entry(i, Operation::Update)).collect();
        let sizes = prepare(&mut entries).unwrap();
        let raw: usize = sizes.iter().sum();
        // Per change: its own gzip stream, and its metadata uncompressed in
        // labels and annotations.
        let alone: usize = entries
            .iter()
            .map(|e| {
                let meta = serde_json::to_vec(&(e.meta.labels(), e.meta.annotations())).unwrap();
                codec::encode_json(
                    e.prior.as_ref().unwrap().get().as_bytes(),
                    codec::CHUNK_SIZE,
                )
                .unwrap()
                .compressed_len()
                    + meta.len()
            })
            .sum();
        let together = encode(&entries, codec::Effort::Fast).unwrap().payload.len();
        assert!(together * 4 < alone, "{together} vs {alone}");
        assert!(together < raw, "{together} vs {raw}");
    }
}
