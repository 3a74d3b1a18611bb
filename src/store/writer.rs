//! Writing snapshots, with group commit.
//!
//! Every admitted change needs its snapshot stored before the webhook
//! answers, and one API write per change costs the API server about as much
//! as the change itself. So snapshot writes are committed in groups: while a
//! round of writes is in flight, newly admitted changes queue; the next round
//! writes every queued change of one action as one batch ConfigMap
//! (`store::batch`) and answers all of their webhook calls together.
//!
//! A lone change (nothing else queued for its action, as with one client
//! applying manifests one by one) is written exactly as SPEC §3 says: one
//! ConfigMap (or Secret) of its own. Secrets, and objects too large to share
//! a ConfigMap, are always written alone.
//!
//! With a batch window (`--capture-batch-window`, only when the webhook
//! answers once a snapshot is queued), a round waits until its oldest
//! snapshot has been queued that long (or the round is full) before it is
//! written, so that each API write carries more snapshots. Nobody's change
//! waits for it; only the durability of the queued snapshots does.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use prometheus::IntCounterVec;
use tokio::sync::oneshot;

use crate::store::batch::{self, BatchEntry};
use crate::store::codec::CHUNK_SIZE;
use crate::store::model::*;
use crate::store::{INLINE_ENCODE_LIMIT, NewSnapshot, Result, StoreError, StoredSnapshot};

/// Secret type of snapshots of Secrets.
pub const SNAPSHOT_SECRET_TYPE: &str = "snapback.io/snapshot";

/// A create answered "already exists": the same write made before (a retry
/// after a lost response). Any other 409 is a failure like any other.
pub fn already_exists(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(e) if e.code == 409 && e.reason == "AlreadyExists")
}

/// Entries with their sizes prepared, the entry indices of each batch, the batches.
type Prepared = (Vec<BatchEntry>, Vec<Vec<usize>>, Vec<batch::EncodedBatch>);

struct Pending {
    snapshot: NewSnapshot,
    done: oneshot::Sender<Result<u64>>,
    queued_at: Instant,
}

/// A round stops waiting for its batch window once this many snapshots queue.
pub const WINDOW_FULL_ENTRIES: usize = 512;
/// ... or once their objects total this many bytes (about one batch ConfigMap).
pub const WINDOW_FULL_BYTES: usize = 2 * CHUNK_SIZE;

pub struct Writer {
    namespace: String,
    config_maps: Api<ConfigMap>,
    secrets: Api<Secret>,
    queue: Mutex<Vec<Pending>>,
    /// A flush task is running (it drains the queue until it is empty).
    running: AtomicBool,
    /// Batch writes happen at all (off: every change alone, as SPEC §3).
    batching: bool,
    /// How long a round waits for its oldest snapshot to have been queued
    /// before it is written (zero: write what is queued at once).
    window: Duration,
    /// Counts the API objects created for captured snapshots, by layout.
    api_writes: Option<IntCounterVec>,
}

/// How a store writes captured snapshots.
#[derive(Clone, Debug)]
pub struct WriterOptions {
    /// Batch writes happen at all (`--snapshot-batching`).
    pub batching: bool,
    /// `--capture-batch-window` (zero unless nobody waits for the write).
    pub window: Duration,
    /// `snapback_snapshot_api_writes_total`, when the process exports metrics.
    pub api_writes: Option<IntCounterVec>,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            batching: true,
            window: Duration::ZERO,
            api_writes: None,
        }
    }
}

impl Writer {
    pub fn new(client: kube::Client, namespace: &str, options: WriterOptions) -> Writer {
        Writer {
            namespace: namespace.to_string(),
            config_maps: Api::namespaced(client.clone(), namespace),
            secrets: Api::namespaced(client, namespace),
            queue: Mutex::default(),
            running: AtomicBool::new(false),
            batching: options.batching,
            window: options.window,
            api_writes: options.api_writes,
        }
    }

    fn count_api_writes(&self, layout: &str, n: u64) {
        if let Some(c) = &self.api_writes {
            c.with_label_values(&[layout]).inc_by(n);
        }
    }

    pub fn meta(
        &self,
        name: &str,
        labels: BTreeMap<String, String>,
        annotations: BTreeMap<String, String>,
    ) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(self.namespace.clone()),
            labels: Some(labels),
            annotations: Some(annotations),
            ..Default::default()
        }
    }

    /// Store one snapshot; resolves once it is durably written (alone or in
    /// a batch). Returns its compressed bytes (its share of a batch).
    pub async fn put(self: &std::sync::Arc<Self>, snapshot: NewSnapshot) -> Result<u64> {
        if !self.batching || snapshot.meta.secret {
            return self.write_alone(snapshot).await;
        }
        let (done, result) = oneshot::channel();
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Pending {
                snapshot,
                done,
                queued_at: Instant::now(),
            });
        if !self.running.swap(true, Ordering::AcqRel) {
            // The flush runs in its own task: a webhook call that times out
            // (and is dropped) must not take the writes of others with it.
            tokio::spawn(self.clone().flush());
        }
        result.await.unwrap_or_else(|_| {
            Err(StoreError::Shared {
                message: "the snapshot writer stopped".into(),
                label: "internal",
            })
        })
    }

    /// Drain the queue round by round until it is empty.
    async fn flush(self: std::sync::Arc<Self>) {
        /// Should a flush ever die, the next put starts another.
        struct Running<'a>(&'a AtomicBool);
        impl Drop for Running<'_> {
            fn drop(&mut self) {
                if std::thread::panicking() {
                    self.0.store(false, Ordering::Release);
                }
            }
        }
        let _running = Running(&self.running);
        loop {
            if let Some(wait) = self.window_left() {
                tokio::time::sleep(wait).await;
                continue;
            }
            let round = std::mem::take(&mut *self.queue.lock().unwrap_or_else(|p| p.into_inner()));
            if round.is_empty() {
                self.running.store(false, Ordering::Release);
                // A put that queued after the take saw `running` and left the
                // work to us: take it up again unless another flush has.
                let empty = self
                    .queue
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .is_empty();
                if empty || self.running.swap(true, Ordering::AcqRel) {
                    return;
                }
                continue;
            }
            let mut by_action: HashMap<String, Vec<Pending>> = HashMap::new();
            for p in round {
                by_action
                    .entry(p.snapshot.meta.action.to_string())
                    .or_default()
                    .push(p);
            }
            futures::future::join_all(by_action.into_values().map(|group| self.write_group(group)))
                .await;
        }
    }

    /// How much longer the queued round should wait for its batch window:
    /// none once the oldest snapshot is `window` old or the round is full.
    fn window_left(&self) -> Option<Duration> {
        if self.window.is_zero() {
            return None;
        }
        let queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        let oldest = queue.first()?.queued_at;
        let bytes: usize = queue.iter().map(|p| p.snapshot.prior_len()).sum();
        if queue.len() >= WINDOW_FULL_ENTRIES || bytes >= WINDOW_FULL_BYTES {
            return None;
        }
        // Short sleeps: a round that fills up meanwhile is not held back long.
        let left = self.window.checked_sub(oldest.elapsed())?;
        (!left.is_zero()).then(|| left.min(Duration::from_millis(5)))
    }

    /// The queued changes of one action: alone when one, batched otherwise.
    async fn write_group(&self, group: Vec<Pending>) {
        let (large, mut small): (Vec<Pending>, Vec<Pending>) = group
            .into_iter()
            .partition(|p| p.snapshot.prior_len() > batch::MAX_ENTRY_RAW);
        let alone = futures::future::join_all(large.into_iter().map(|p| async move {
            let r = self.write_alone(p.snapshot).await;
            let _ = p.done.send(r);
        }));
        let batched = async {
            match small.len() {
                0 => {}
                1 => {
                    let p = small.remove(0);
                    let r = self.write_alone(p.snapshot).await;
                    let _ = p.done.send(r);
                }
                _ => self.write_batches(small).await,
            }
        };
        futures::future::join(alone, batched).await;
    }

    async fn write_batches(&self, pending: Vec<Pending>) {
        let total_hint: usize = pending.iter().map(|p| p.snapshot.prior_len()).sum();
        let (mut entries, waiters): (Vec<BatchEntry>, Vec<oneshot::Sender<Result<u64>>>) = pending
            .into_iter()
            .map(|p| {
                (
                    BatchEntry {
                        meta: p.snapshot.meta,
                        prior: p.snapshot.prior,
                    },
                    p.done,
                )
            })
            .unzip();
        let encode = move || -> Result<Prepared> {
            let sizes = batch::prepare(&mut entries)?;
            let mut encoded = Vec::new();
            let mut ranges = Vec::new();
            for range in batch::groups(&sizes, CHUNK_SIZE) {
                ranges.push(range.clone().collect());
                encoded.push(batch::encode(
                    &entries[range],
                    crate::store::codec::Effort::Fast,
                )?);
            }
            Ok((entries, ranges, encoded))
        };
        let prepared = if total_hint < INLINE_ENCODE_LIMIT {
            encode()
        } else {
            tokio::task::spawn_blocking(encode)
                .await
                .unwrap_or_else(|e| {
                    Err(StoreError::Shared {
                        message: format!("encoding task failed: {e}"),
                        label: "internal",
                    })
                })
        };
        let (entries, ranges, encoded) = match prepared {
            Ok(p) => p,
            Err(e) => {
                for w in waiters {
                    let _ = w.send(Err(e.share()));
                }
                return;
            }
        };
        let mut waiters: Vec<Option<oneshot::Sender<Result<u64>>>> =
            waiters.into_iter().map(Some).collect();
        let mut writes = Vec::new();
        for (indices, enc) in ranges.into_iter().zip(encoded) {
            let mine: Vec<_> = indices.iter().map(|&i| waiters[i].take()).collect();
            // A group of one (its neighbours filled a batch), or objects that
            // do not compress into one ConfigMap together: each alone.
            let alone: Vec<BatchEntry> = if indices.len() == 1 || enc.payload.len() > CHUNK_SIZE {
                indices.iter().map(|&i| entries[i].clone()).collect()
            } else {
                Vec::new()
            };
            writes.push(async move {
                if !alone.is_empty() {
                    let results = futures::future::join_all(alone.into_iter().map(|e| {
                        self.write_alone(NewSnapshot {
                            meta: e.meta,
                            prior: e.prior,
                        })
                    }))
                    .await;
                    for (w, r) in mine.into_iter().zip(results) {
                        if let Some(w) = w {
                            let _ = w.send(r);
                        }
                    }
                    return;
                }
                let result = self.write_batch(&enc).await;
                if result.is_ok() {
                    self.count_api_writes("batch", 1);
                }
                let n = mine.len().max(1) as u64;
                for w in mine.into_iter().flatten() {
                    let _ = w.send(match &result {
                        Ok(bytes) => Ok(bytes / n),
                        Err(e) => Err(e.share()),
                    });
                }
            });
        }
        futures::future::join_all(writes).await;
    }

    pub async fn write_batch(&self, enc: &batch::EncodedBatch) -> Result<u64> {
        if enc.payload.len() > CHUNK_SIZE {
            return Err(StoreError::Shared {
                message: format!(
                    "batch {} compresses to {} bytes, more than one ConfigMap holds",
                    enc.name,
                    enc.payload.len()
                ),
                label: "too_large",
            });
        }
        let om = self.meta(&enc.name, enc.labels.clone(), enc.annotations.clone());
        self.create_cm(&ConfigMap {
            metadata: om,
            binary_data: Some(BTreeMap::from([(
                batch::BATCH_KEY.to_string(),
                ByteString(enc.payload.clone()),
            )])),
            ..Default::default()
        })
        .await?;
        Ok(enc.payload.len() as u64)
    }

    /// Encode and write one snapshot in the per-change layout.
    pub async fn write_alone(&self, snapshot: NewSnapshot) -> Result<u64> {
        let stored = crate::store::encode_single(snapshot).await?;
        self.write_single(&stored).await?;
        let objects = stored.payload.as_ref().map_or(1, |p| p.chunks.len().max(1));
        self.count_api_writes("single", objects as u64);
        Ok(stored
            .payload
            .as_ref()
            .map_or(0, |p| p.compressed_len() as u64))
    }

    /// Write a snapshot in the per-change layout of SPEC §3.
    pub async fn write_single(&self, snap: &StoredSnapshot) -> Result<()> {
        let meta = &snap.meta;
        let name = &meta.snapshot_name;
        let chunks: &[Vec<u8>] = snap
            .payload
            .as_ref()
            .map(|p| p.chunks.as_slice())
            .unwrap_or(&[]);
        // Extra chunks first: the main object is written last, so a snapshot
        // that exists is always complete.
        for (i, chunk) in chunks.iter().enumerate().skip(1) {
            let chunk_name = format!("{name}-{i}");
            let labels = BTreeMap::from([
                (MANAGED_BY.to_string(), MANAGER.to_string()),
                (LABEL_RECORD.to_string(), RECORD_CHUNK.to_string()),
                (LABEL_ACTION.to_string(), meta.action.to_string()),
                (LABEL_CHUNK_OF.to_string(), name.clone()),
            ]);
            let annotations = BTreeMap::from([(ANN_CHUNK_INDEX.to_string(), i.to_string())]);
            let om = self.meta(&chunk_name, labels, annotations);
            self.create_payload_object(om, meta.secret, chunk.clone())
                .await?;
        }
        let om = self.meta(name, meta.labels(), meta.annotations());
        match chunks.first() {
            Some(first) => {
                self.create_payload_object(om, meta.secret, first.clone())
                    .await
            }
            None if meta.secret => {
                self.create_secret(&Secret {
                    metadata: om,
                    type_: Some(SNAPSHOT_SECRET_TYPE.into()),
                    ..Default::default()
                })
                .await
            }
            None => {
                self.create_cm(&ConfigMap {
                    metadata: om,
                    ..Default::default()
                })
                .await
            }
        }
    }

    async fn create_payload_object(
        &self,
        om: ObjectMeta,
        secret: bool,
        bytes: Vec<u8>,
    ) -> Result<()> {
        let data = BTreeMap::from([(PAYLOAD_KEY.to_string(), ByteString(bytes))]);
        if secret {
            self.create_secret(&Secret {
                metadata: om,
                type_: Some(SNAPSHOT_SECRET_TYPE.into()),
                data: Some(data),
                ..Default::default()
            })
            .await
        } else {
            self.create_cm(&ConfigMap {
                metadata: om,
                binary_data: Some(data),
                ..Default::default()
            })
            .await
        }
    }

    /// Create; an object that already exists under that name is the same
    /// write retried and counts as success.
    pub async fn create_cm(&self, cm: &ConfigMap) -> Result<()> {
        match self.config_maps.create(&PostParams::default(), cm).await {
            Ok(_) => Ok(()),
            Err(e) if already_exists(&e) => Ok(()),
            Err(e) => Err(StoreError::Kube(e)),
        }
    }

    async fn create_secret(&self, s: &Secret) -> Result<()> {
        match self.secrets.create(&PostParams::default(), s).await {
            Ok(_) => Ok(()),
            Err(e) if already_exists(&e) => Ok(()),
            Err(e) => Err(StoreError::Kube(e)),
        }
    }
}
