//! The ConfigMap/Secret store in the snapshot namespace.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::future::BoxFuture;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::api::{DeleteParams, GetParams, ListParams, ObjectMeta, PostParams};
use kube::{Api, Client};
use serde_json::Value;

use crate::store::actions::{ActionRecord, ActionState, DeletedNamespace, RECORD_KEY};
use crate::store::batch::{self, RECORD_BATCH};
use crate::store::codec;
use crate::store::model::*;
use crate::store::{NewSnapshot, Result, SnapshotSink, StoreError};

pub use crate::store::writer::SNAPSHOT_SECRET_TYPE;
use crate::store::writer::{Writer, WriterOptions, already_exists};

/// How long an action record is assumed to exist after we saw or made it.
const KNOWN_ACTION_TTL: Duration = Duration::from_secs(300);

pub struct KubeStore {
    namespace: String,
    namespaces: Api<Namespace>,
    nodes: Api<k8s_openapi::api::core::v1::Node>,
    config_maps: Api<ConfigMap>,
    secrets: Api<Secret>,
    known_actions: Mutex<HashMap<String, Instant>>,
    writer: Arc<Writer>,
    /// Decoded metadata of batches by name (batches are never modified).
    batch_metas: Mutex<HashMap<String, Arc<Vec<SnapshotMeta>>>>,
}

/// Selects every snapshot stored alone.
const ALL_SNAPSHOTS: &str =
    "app.kubernetes.io/managed-by=snapback,snapback.io/action,!snapback.io/record";

/// How fresh a LIST must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Read {
    /// From etcd (a quorum read): what an API caller just did is in it.
    Consistent,
    /// From the API server's watch cache (`resourceVersion=0`): possibly a
    /// moment behind, and far cheaper for the API server.
    Cached,
}

impl Read {
    fn params(self, selector: &str) -> ListParams {
        let lp = ListParams::default().labels(selector);
        match self {
            Read::Consistent => lp,
            Read::Cached => lp.match_any(),
        }
    }
}

/// Snapshot metadata the maintenance pass reads at a time.
const ACTIVITY_PAGE: u32 = 1000;

/// What the maintenance pass and the action list need to know of an
/// action's snapshots, learnt from metadata alone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Activity {
    /// Capture time of its latest change.
    pub last: Option<jiff::Timestamp>,
    pub snapshots: usize,
    /// Snapshots compaction could fold into a batch.
    pub singles: usize,
    /// Namespaces of the objects it changed.
    pub namespaces: std::collections::BTreeSet<String>,
}

impl Activity {
    fn add(&mut self, timestamp: Option<jiff::Timestamp>, single: bool, namespace: Option<&str>) {
        self.add_many(timestamp, 1, usize::from(single));
        if let Some(ns) = namespace {
            self.add_namespace(ns);
        }
    }

    fn add_many(&mut self, timestamp: Option<jiff::Timestamp>, snapshots: usize, singles: usize) {
        self.last = self.last.max(timestamp);
        self.snapshots += snapshots;
        self.singles += singles;
    }

    fn add_namespace(&mut self, ns: &str) {
        if !ns.is_empty() && !self.namespaces.contains(ns) {
            self.namespaces.insert(ns.to_string());
        }
    }
}

/// Snapshots compaction reads at a time.
const COMPACT_PAGE: u32 = 500;

/// Batches whose metadata is kept decoded, and entries in them at most
/// (about 1 KiB each); beyond, the cache starts over.
const BATCH_CACHE: usize = 4096;
const BATCH_CACHE_ENTRIES: usize = 20_000;

fn is_status(err: &kube::Error, code: u16) -> bool {
    matches!(err, kube::Error::Api(e) if e.code == code)
}

impl KubeStore {
    /// A store that batches concurrent snapshots of an action (group commit).
    pub fn new(client: Client, namespace: &str) -> Self {
        Self::with_writer(client, namespace, WriterOptions::default())
    }

    /// A store whose snapshot writer works as `options` say (batching or
    /// not, the batch window, the write counter).
    pub fn with_writer(client: Client, namespace: &str, options: WriterOptions) -> Self {
        KubeStore {
            namespace: namespace.to_string(),
            namespaces: Api::all(client.clone()),
            nodes: Api::all(client.clone()),
            config_maps: Api::namespaced(client.clone(), namespace),
            secrets: Api::namespaced(client.clone(), namespace),
            known_actions: Mutex::default(),
            writer: Arc::new(Writer::new(client, namespace, options)),
            batch_metas: Mutex::default(),
        }
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    fn meta(
        &self,
        name: &str,
        labels: BTreeMap<String, String>,
        annotations: BTreeMap<String, String>,
    ) -> ObjectMeta {
        self.writer.meta(name, labels, annotations)
    }

    fn record_to_cm(
        &self,
        record: &ActionRecord,
        resource_version: Option<String>,
    ) -> Result<ConfigMap> {
        let mut labels = BTreeMap::from([
            (MANAGED_BY.to_string(), MANAGER.to_string()),
            (LABEL_RECORD.to_string(), RECORD_ACTION.to_string()),
            (LABEL_ACTION.to_string(), record.id.to_string()),
            (LABEL_STATE.to_string(), record.state.to_string()),
            (LABEL_ORIGIN.to_string(), record.origin.clone()),
        ]);
        for (name, deleted) in &record.deleted_namespaces {
            labels.insert(
                format!("{LABEL_DELETED_NAMESPACE_PREFIX}{name}"),
                deleted.uid.clone(),
            );
        }
        let annotations = BTreeMap::from([
            (ANN_ACTION_ID.to_string(), record.id.to_string()),
            (ANN_USER.to_string(), record.owner.clone()),
        ]);
        let mut metadata = self.meta(&record.id.record_name(), labels, annotations);
        metadata.resource_version = resource_version;
        let json = serde_json::to_string(record).map_err(codec::CodecError::Serialize)?;
        Ok(ConfigMap {
            metadata,
            data: Some(BTreeMap::from([(RECORD_KEY.to_string(), json)])),
            ..Default::default()
        })
    }

    /// Create an action record; false when one with that id already exists.
    pub async fn create_action(&self, record: &ActionRecord) -> Result<bool> {
        let cm = self.record_to_cm(record, None)?;
        match self.config_maps.create(&PostParams::default(), &cm).await {
            Ok(_) => Ok(true),
            Err(e) if already_exists(&e) => Ok(false),
            Err(e) => Err(StoreError::Kube(e)),
        }
    }

    /// Every action noted as deleting the namespace `name` with this uid
    /// (`ns.snapback.io/<name>` on its record), with when.
    pub async fn namespace_deletions(
        &self,
        name: &str,
        uid: &str,
    ) -> Result<Vec<(ActionId, DeletedNamespace)>> {
        let selector =
            format!("{LABEL_RECORD}={RECORD_ACTION},{LABEL_DELETED_NAMESPACE_PREFIX}{name}={uid}");
        let list = self
            .config_maps
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(StoreError::Kube)?;
        Ok(list
            .items
            .iter()
            .filter_map(|cm| parse_record(cm).ok())
            .filter_map(|(record, _)| {
                let noted = record.deleted_namespace(name, uid)?.clone();
                Some((record.id, noted))
            })
            .collect())
    }

    /// Read an action record with its resourceVersion (for optimistic updates).
    pub async fn get_action(&self, id: &ActionId) -> Result<Option<(ActionRecord, String)>> {
        match self.config_maps.get_opt(&id.record_name()).await {
            // Another id's record under the same name (a hash collision):
            // not this action's.
            Ok(Some(cm)) => Ok(Some(parse_record(&cm)?).filter(|(r, _)| r.id == *id)),
            Ok(None) => Ok(None),
            Err(e) => Err(StoreError::Kube(e)),
        }
    }

    /// Replace an action record; `Conflict` when it changed since it was read.
    pub async fn update_action(
        &self,
        record: &ActionRecord,
        resource_version: &str,
    ) -> Result<String> {
        let cm = self.record_to_cm(record, Some(resource_version.to_string()))?;
        match self
            .config_maps
            .replace(&record.id.record_name(), &PostParams::default(), &cm)
            .await
        {
            Ok(cm) => Ok(cm.metadata.resource_version.unwrap_or_default()),
            Err(e) if is_status(&e, 409) => {
                Err(StoreError::Conflict(format!("action {}", record.id)))
            }
            Err(e) if is_status(&e, 404) => {
                Err(StoreError::NotFound(format!("action {}", record.id)))
            }
            Err(e) => Err(StoreError::Kube(e)),
        }
    }

    /// All action records, optionally only those in one state.
    pub async fn list_actions(
        &self,
        state: Option<ActionState>,
    ) -> Result<Vec<(ActionRecord, String)>> {
        self.list_actions_from(state, Read::Consistent).await
    }

    /// Like `list_actions`, from the API server's watch cache: for loops
    /// that poll (guards, maintenance, resuming rollbacks), which must not
    /// make the API server read the whole snapshot namespace from etcd every
    /// few seconds.
    pub async fn list_actions_cached(
        &self,
        state: Option<ActionState>,
    ) -> Result<Vec<(ActionRecord, String)>> {
        self.list_actions_from(state, Read::Cached).await
    }

    async fn list_actions_from(
        &self,
        state: Option<ActionState>,
        read: Read,
    ) -> Result<Vec<(ActionRecord, String)>> {
        let mut selector = format!("{LABEL_RECORD}={RECORD_ACTION}");
        if let Some(st) = state {
            selector.push_str(&format!(",{LABEL_STATE}={st}"));
        }
        let list = self
            .config_maps
            .list(&read.params(&selector))
            .await
            .map_err(StoreError::Kube)?;
        let mut out = Vec::with_capacity(list.items.len());
        for cm in &list.items {
            match parse_record(cm) {
                Ok(r) => out.push(r),
                Err(e) => tracing::warn!(error = %e, "skipping unreadable action record"),
            }
        }
        Ok(out)
    }

    /// The snapshot metadata of one action (payloads are loaded separately).
    pub async fn list_snapshots(&self, action: &ActionId) -> Result<Vec<SnapshotMeta>> {
        let mut out = self
            .metas(
                &format!("{LABEL_ACTION}={action},!{LABEL_RECORD}"),
                Read::Consistent,
            )
            .await?;
        out.sort_by_key(SnapshotMeta::order_key);
        Ok(out)
    }

    /// Snapshot metadata matching a label selector, from ConfigMaps and
    /// Secrets. An entry whose labels or annotations were damaged is skipped
    /// with a warning rather than failing the whole listing.
    async fn metas(&self, selector: &str, read: Read) -> Result<Vec<SnapshotMeta>> {
        let lp = read.params(selector);
        let (cms, _) = meta_page(&self.config_maps, &lp).await?;
        let (secrets, _) = meta_page(&self.secrets, &lp).await?;
        let tagged = cms.into_iter().map(|m| (m, false));
        let tagged = tagged.chain(secrets.into_iter().map(|m| (m, true)));
        let mut out: Vec<SnapshotMeta> = tagged
            .filter_map(|(metadata, secret)| match meta_of(&metadata, secret) {
                Ok(m) => Some(m),
                Err(e) => {
                    tracing::warn!(error = %e, "skipping unreadable snapshot");
                    None
                }
            })
            .collect();
        // Batches: the same selector, for batch ConfigMaps instead.
        let batch_selector = selector.replace(
            &format!("!{LABEL_RECORD}"),
            &format!("{LABEL_RECORD}={RECORD_BATCH}"),
        );
        out.extend(self.batched_metas(&batch_selector, read).await?);
        Ok(dedupe(out, |m| &m.snapshot_name))
    }

    /// The entries of the batches matching a selector (decoded once, cached).
    async fn batched_metas(&self, batch_selector: &str, read: Read) -> Result<Vec<SnapshotMeta>> {
        let mut out = Vec::new();
        self.visit_batched_metas(batch_selector, read, |m| out.push(m.clone()))
            .await?;
        Ok(out)
    }

    /// Visit the entries of the batches matching a selector, batch by batch,
    /// without gathering them: the whole store's batches can hold far more
    /// entries than should sit in memory at once.
    async fn visit_batched_metas(
        &self,
        batch_selector: &str,
        read: Read,
        mut visit: impl FnMut(&SnapshotMeta),
    ) -> Result<()> {
        let (batches, _) = meta_page(&self.config_maps, &read.params(batch_selector)).await?;
        let names: Vec<String> = batches.into_iter().filter_map(|b| b.name).collect();
        self.visit_named_batches(names, &mut visit).await;
        Ok(())
    }

    /// Visit the entries of the named batches, a few batches at a time.
    async fn visit_named_batches(&self, names: Vec<String>, mut visit: impl FnMut(&SnapshotMeta)) {
        let mut decoded = futures::stream::iter(names)
            .map(|name| async move { self.batch_metas(&name).await })
            .buffered(4);
        while let Some(metas) = decoded.next().await {
            match metas {
                Ok(m) => m.iter().for_each(&mut visit),
                Err(StoreError::NotFound(_)) => {} // deleted since the listing
                Err(e) => tracing::warn!(error = %e, "skipping unreadable batch"),
            }
        }
    }

    /// The metadata of a batch's entries, decoded once and cached.
    async fn batch_metas(&self, name: &str) -> Result<Arc<Vec<SnapshotMeta>>> {
        if let Some(m) = self.lock_batch_metas().get(name) {
            return Ok(m.clone());
        }
        let entries = self.batch_entries(name).await?;
        let metas = Arc::new(entries.into_iter().map(|(m, _)| m).collect::<Vec<_>>());
        let mut cache = self.lock_batch_metas();
        let held: usize = cache.values().map(|m| m.len()).sum();
        if cache.len() >= BATCH_CACHE || held + metas.len() > BATCH_CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(name.to_string(), metas.clone());
        Ok(metas)
    }

    fn lock_batch_metas(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Vec<SnapshotMeta>>>> {
        self.batch_metas.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Read and decode one batch (on the blocking pool).
    async fn batch_entries(&self, name: &str) -> Result<Vec<batch::DecodedEntry>> {
        let cm = self
            .config_maps
            .get_opt(name)
            .await
            .map_err(StoreError::Kube)?
            .ok_or_else(|| StoreError::NotFound(format!("batch {name}")))?;
        let annotations = cm.metadata.annotations.unwrap_or_default();
        let payload = cm
            .binary_data
            .and_then(|mut d| d.remove(batch::BATCH_KEY))
            .map(|b| b.0)
            .unwrap_or_default();
        let owned = name.to_string();
        tokio::task::spawn_blocking(move || batch::decode(&owned, &annotations, &payload))
            .await
            .map_err(|e| StoreError::Corrupt {
                name: name.to_string(),
                reason: e.to_string(),
            })?
            .map_err(|reason| StoreError::Corrupt {
                name: name.to_string(),
                reason,
            })
    }

    /// Metadata of every snapshot (not chunks or records), for listing actions.
    pub async fn all_snapshot_metas(&self) -> Result<Vec<SnapshotMeta>> {
        self.metas(ALL_SNAPSHOTS, Read::Consistent).await
    }

    /// Per action: its latest change, how many snapshots it has, how many
    /// of them compaction could fold (alone in a ConfigMap, one chunk), and
    /// the namespaces it touched; for the maintenance pass and the action
    /// list. Metadata only, read from etcd in pages (the watch cache of an
    /// API server before 1.27 does not page) and reduced as it goes, so
    /// memory stays bounded however many snapshots are stored; what a caller
    /// just did is in it. (A snapshot an interrupted compaction left both
    /// alone and in a batch counts twice until the next pass deletes the
    /// original.)
    pub async fn activity_by_action(&self) -> Result<HashMap<String, Activity>> {
        let mut out: HashMap<String, Activity> = HashMap::new();
        for secret in [false, true] {
            let visit = |om: ObjectMeta| {
                let label = |k: &str| om.labels.as_ref().and_then(|l| l.get(k));
                let ann = |k: &str| om.annotations.as_ref().and_then(|a| a.get(k));
                let Some(action) = label(LABEL_ACTION) else {
                    return;
                };
                let chunks: u32 = ann(ANN_CHUNKS).and_then(|c| c.parse().ok()).unwrap_or(0);
                let ts = ann(ANN_TIMESTAMP).and_then(|t| t.parse::<jiff::Timestamp>().ok());
                // A Namespace's own name counts as the namespace it touched.
                let namespace =
                    if label(LABEL_RESOURCE).map(String::as_str) == Some("namespaces.core") {
                        ann(ANN_NAME)
                    } else {
                        ann(ANN_NAMESPACE)
                    };
                out.entry(action.clone()).or_default().add(
                    ts,
                    !secret && chunks <= 1,
                    namespace.map(String::as_str),
                );
            };
            if secret {
                for_each_meta(&self.secrets, ALL_SNAPSHOTS, visit).await?;
            } else {
                for_each_meta(&self.config_maps, ALL_SNAPSHOTS, visit).await?;
            }
        }
        // Batches: their annotations say how many entries they hold, when
        // the newest was captured and which namespaces, so no batch is read.
        // Batches written before those annotations existed are decoded (and
        // cached).
        let mut legacy = Vec::new();
        let batches = format!("{MANAGED_BY}={MANAGER},{LABEL_RECORD}={RECORD_BATCH}");
        for_each_meta(&self.config_maps, &batches, |om| {
            let label = |k: &str| om.labels.as_ref().and_then(|l| l.get(k));
            let ann = |k: &str| om.annotations.as_ref().and_then(|a| a.get(k));
            let (Some(action), Some(name)) = (label(LABEL_ACTION), om.name.as_ref()) else {
                return;
            };
            let entries = ann(batch::ANN_ENTRIES).and_then(|n| n.parse::<usize>().ok());
            let newest = ann(ANN_TIMESTAMP).and_then(|t| t.parse::<jiff::Timestamp>().ok());
            match (entries, newest, ann(batch::ANN_NAMESPACES)) {
                (Some(n), Some(ts), Some(namespaces)) => {
                    let a = out.entry(action.clone()).or_default();
                    a.add_many(Some(ts), n, 0);
                    namespaces.split(',').for_each(|ns| a.add_namespace(ns));
                }
                _ => legacy.push(name.clone()),
            }
        })
        .await?;
        self.visit_named_batches(legacy, |m| {
            out.entry(m.action.to_string()).or_default().add(
                Some(m.timestamp),
                false,
                m.object.touched_namespace(),
            );
        })
        .await;
        Ok(out)
    }

    /// Metadata of snapshots whose object asked for a guard (watch cache:
    /// the guard loop polls it).
    pub async fn guarded_snapshot_metas(&self) -> Result<Vec<SnapshotMeta>> {
        self.metas(&format!("{LABEL_GUARD},!{LABEL_RECORD}"), Read::Cached)
            .await
    }

    /// Load and verify the prior object of a snapshot (None for CREATE).
    pub async fn load_payload(&self, meta: &SnapshotMeta) -> Result<Option<Value>> {
        let Some(sha) = &meta.payload_sha256 else {
            return Ok(None);
        };
        if let Some(b) = &meta.batch {
            let entries = self.batch_entries(b).await?;
            let (_, prior) = entries
                .into_iter()
                .find(|(m, _)| m.snapshot_name == meta.snapshot_name)
                .ok_or_else(|| StoreError::Corrupt {
                    name: b.clone(),
                    reason: format!("no entry {}", meta.snapshot_name),
                })?;
            return prior.map_err(|reason| StoreError::Corrupt {
                name: b.clone(),
                reason,
            });
        }
        let mut chunks: Vec<Vec<u8>> = Vec::with_capacity(meta.chunks.max(1) as usize);
        for i in 0..meta.chunks.max(1) {
            let name = if i == 0 {
                meta.snapshot_name.clone()
            } else {
                format!("{}-{i}", meta.snapshot_name)
            };
            let bytes = if meta.secret {
                self.secrets
                    .get_opt(&name)
                    .await
                    .map_err(StoreError::Kube)?
                    .and_then(|s| s.data)
                    .and_then(|mut d| d.remove(PAYLOAD_KEY))
            } else {
                self.config_maps
                    .get_opt(&name)
                    .await
                    .map_err(StoreError::Kube)?
                    .and_then(|c| c.binary_data)
                    .and_then(|mut d| d.remove(PAYLOAD_KEY))
            };
            let bytes = bytes.ok_or_else(|| StoreError::Corrupt {
                name: name.clone(),
                reason: format!("payload chunk {i} is missing"),
            })?;
            chunks.push(bytes.0);
        }
        let sha = sha.clone();
        let decoded = tokio::task::spawn_blocking(move || {
            let refs: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
            codec::decode(&refs, &sha)
        })
        .await
        .map_err(|e| StoreError::Corrupt {
            name: meta.snapshot_name.clone(),
            reason: e.to_string(),
        })?;
        decoded.map(Some).map_err(|e| StoreError::Corrupt {
            name: meta.snapshot_name.clone(),
            reason: e.to_string(),
        })
    }

    /// Every snapshot of an action with its decoded prior object, in two LIST
    /// calls (ConfigMaps and Secrets) rather than one GET per snapshot. A
    /// snapshot whose payload cannot be decoded carries the reason instead
    /// of failing the whole action; stored objects that cannot even say
    /// which object they are of (damaged metadata, a batch that fails its
    /// checksum) are in `damaged`.
    pub async fn load_action(&self, action: &ActionId) -> Result<LoadedAction> {
        let lp = ListParams::default().labels(&format!("{LABEL_ACTION}={action}"));
        let mut raw: Vec<(ObjectMeta, Option<Vec<u8>>, bool)> = Vec::new();
        for cm in self
            .config_maps
            .list(&lp)
            .await
            .map_err(StoreError::Kube)?
            .items
        {
            let batch = cm
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(LABEL_RECORD))
                == Some(&RECORD_BATCH.to_string());
            let key = if batch { batch::BATCH_KEY } else { PAYLOAD_KEY };
            let payload = cm.binary_data.and_then(|mut d| d.remove(key)).map(|b| b.0);
            raw.push((cm.metadata, payload, false));
        }
        for s in self
            .secrets
            .list(&lp)
            .await
            .map_err(StoreError::Kube)?
            .items
        {
            let payload = s.data.and_then(|mut d| d.remove(PAYLOAD_KEY)).map(|b| b.0);
            raw.push((s.metadata, payload, true));
        }
        let (all, damaged) = tokio::task::spawn_blocking(move || assemble(raw))
            .await
            .map_err(|e| StoreError::Corrupt {
                name: action.to_string(),
                reason: e.to_string(),
            })?;
        Ok(LoadedAction {
            snapshots: dedupe(all, |l| &l.meta.snapshot_name),
            damaged,
        })
    }

    /// Fold the per-change ConfigMaps of a finished action into batches
    /// (`store::batch`): fewer objects, and far fewer bytes, for the same
    /// snapshots. The batches are written first and the originals deleted
    /// after, so every snapshot exists at every moment (readers drop the
    /// duplicate in between, and a pass that stopped half-way is finished by
    /// the next). Secrets and chunked snapshots stay as they are. Returns how
    /// many snapshots were folded.
    pub async fn compact_action(&self, action: &ActionId) -> Result<usize> {
        let selector = format!("{LABEL_ACTION}={action},!{LABEL_RECORD}");
        // Snapshots an earlier pass folded but did not get to delete. Only
        // compaction batches can hold them (group-commit batches hold
        // changes never stored alone), so only those are read. (Batches
        // compacted before the label existed are not: a snapshot left
        // behind in one is folded again, and readers drop the duplicate.)
        let mut in_batches = std::collections::HashSet::new();
        self.visit_batched_metas(
            &format!(
                "{LABEL_ACTION}={action},{LABEL_RECORD}={RECORD_BATCH},{LABEL_COMPACTED}=true"
            ),
            Read::Consistent,
            |m| {
                in_batches.insert(m.snapshot_name.clone());
            },
        )
        .await?;
        // Page by page, so that an action of many thousands of changes never
        // sits in memory whole.
        let mut folded = 0;
        let mut token: Option<String> = None;
        loop {
            let mut lp = ListParams::default().labels(&selector).limit(COMPACT_PAGE);
            if let Some(t) = &token {
                lp = lp.continue_token(t);
            }
            let page = self.config_maps.list(&lp).await.map_err(StoreError::Kube)?;
            folded += self.compact_page(action, page.items, &in_batches).await?;
            token = page.metadata.continue_.filter(|t| !t.is_empty());
            if token.is_none() {
                return Ok(folded);
            }
        }
    }

    async fn compact_page(
        &self,
        action: &ActionId,
        singles: Vec<ConfigMap>,
        in_batches: &std::collections::HashSet<String>,
    ) -> Result<usize> {
        let raw = singles
            .into_iter()
            .map(|cm| {
                let payload = cm
                    .binary_data
                    .and_then(|mut d| d.remove(PAYLOAD_KEY))
                    .map(|b| b.0);
                (cm.metadata, payload, false)
            })
            .collect();
        let (loaded, _damaged) = tokio::task::spawn_blocking(move || assemble(raw))
            .await
            .map_err(|e| StoreError::Corrupt {
                name: action.to_string(),
                reason: e.to_string(),
            })?;
        let mut done: Vec<String> = Vec::new();
        let mut entries = Vec::new();
        for l in loaded {
            if in_batches.contains(&l.meta.snapshot_name) {
                done.push(l.meta.snapshot_name); // an earlier pass batched it
            } else if l.meta.chunks <= 1
                && let Ok(prior) = l.prior
            {
                entries.push(batch::BatchEntry {
                    meta: l.meta,
                    prior: prior.as_ref().map(super::prior_json).transpose()?,
                });
            }
        }
        entries.sort_by_key(|e| e.meta.order_key());
        let folded = if entries.len() >= 2 {
            let (encoded, names) = tokio::task::spawn_blocking(move || {
                let sizes = batch::prepare(&mut entries)?;
                let mut out = Vec::new();
                let mut names = Vec::new();
                for range in batch::groups(&sizes, codec::CHUNK_SIZE) {
                    if range.len() < 2 {
                        continue;
                    }
                    let mut b = batch::encode(&entries[range.clone()], codec::Effort::Best)?;
                    b.labels
                        .insert(LABEL_COMPACTED.to_string(), "true".to_string());
                    // Incompressible objects that do not fit together stay alone.
                    if b.payload.len() <= codec::CHUNK_SIZE {
                        out.push(b);
                        names.extend(entries[range].iter().map(|e| e.meta.snapshot_name.clone()));
                    }
                }
                Ok::<_, StoreError>((out, names))
            })
            .await
            .map_err(|e| StoreError::Corrupt {
                name: action.to_string(),
                reason: e.to_string(),
            })??;
            for b in &encoded {
                self.writer.write_batch(b).await?;
            }
            names
        } else {
            Vec::new()
        };
        let count = folded.len();
        for name in done.iter().chain(&folded) {
            match self
                .config_maps
                .delete(name, &DeleteParams::default())
                .await
            {
                Ok(_) => {}
                Err(e) if is_status(&e, 404) => {}
                Err(e) => return Err(StoreError::Kube(e)),
            }
        }
        Ok(count)
    }

    /// Delete everything stored for an action: snapshots, chunks, then the
    /// record (last: a maintenance pass meanwhile must not find snapshots
    /// without a record and give them one back).
    pub async fn delete_action(&self, action: &ActionId) -> Result<()> {
        let lp = ListParams::default().labels(&format!("{LABEL_ACTION}={action}"));
        let dp = DeleteParams::background();
        self.secrets
            .delete_collection(&dp, &lp)
            .await
            .map_err(StoreError::Kube)?;
        let snapshots = ListParams::default().labels(&format!(
            "{LABEL_ACTION}={action},{LABEL_RECORD}!={RECORD_ACTION}"
        ));
        self.config_maps
            .delete_collection(&dp, &snapshots)
            .await
            .map_err(StoreError::Kube)?;
        match self
            .config_maps
            .delete(&action.record_name(), &DeleteParams::default())
            .await
        {
            Ok(_) => {}
            Err(e) if is_status(&e, 404) => {}
            Err(e) => return Err(StoreError::Kube(e)),
        }
        self.known_actions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(action.as_str());
        Ok(())
    }
}

/// One page of object metadata, and the token of the next page if any.
async fn meta_page<K>(api: &Api<K>, lp: &ListParams) -> Result<(Vec<ObjectMeta>, Option<String>)>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let list = api.list_metadata(lp).await.map_err(StoreError::Kube)?;
    let next = list.metadata.continue_.filter(|t| !t.is_empty());
    Ok((list.items.into_iter().map(|i| i.metadata).collect(), next))
}

/// Every object's metadata matching `selector`, read from etcd in pages of
/// [`ACTIVITY_PAGE`], handed to `visit` one at a time.
async fn for_each_meta<K>(
    api: &Api<K>,
    selector: &str,
    mut visit: impl FnMut(ObjectMeta),
) -> Result<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut token: Option<String> = None;
    loop {
        let mut lp = ListParams::default().labels(selector).limit(ACTIVITY_PAGE);
        if let Some(t) = &token {
            lp = lp.continue_token(t);
        }
        let (items, next) = meta_page(api, &lp).await?;
        items.into_iter().for_each(&mut visit);
        token = next;
        if token.is_none() {
            return Ok(());
        }
    }
}

/// An action's stored snapshots, read back.
#[derive(Debug, Default)]
pub struct LoadedAction {
    pub snapshots: Vec<crate::restore::plan::Loaded>,
    /// Stored objects of the action that cannot be read at all (which
    /// objects their snapshots are of is unknown), each with the reason.
    pub damaged: Vec<String>,
}

/// Pair snapshots with their chunks and decode them; also the stored
/// objects that cannot be read at all.
fn assemble(
    raw: Vec<(ObjectMeta, Option<Vec<u8>>, bool)>,
) -> (Vec<crate::restore::plan::Loaded>, Vec<String>) {
    let mut chunks: HashMap<(String, u32), Vec<u8>> = HashMap::new();
    let mut mains = Vec::new();
    let mut batched = Vec::new();
    let mut damaged = Vec::new();
    for (om, payload, secret) in raw {
        let labels = om.labels.clone().unwrap_or_default();
        match labels.get(LABEL_RECORD).map(String::as_str) {
            Some(RECORD_CHUNK) => {
                let index = om
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(ANN_CHUNK_INDEX))
                    .and_then(|i| i.parse().ok());
                if let (Some(of), Some(i), Some(p)) = (labels.get(LABEL_CHUNK_OF), index, payload) {
                    chunks.insert((of.clone(), i), p);
                }
            }
            Some(RECORD_BATCH) => {
                let name = om.name.clone().unwrap_or_default();
                let annotations = om.annotations.clone().unwrap_or_default();
                match batch::decode(&name, &annotations, &payload.unwrap_or_default()) {
                    Ok(entries) => batched.extend(entries),
                    Err(e) => {
                        tracing::warn!(error = %e, "skipping unreadable batch");
                        damaged.push(format!("batch {name}: {e}"));
                    }
                }
            }
            Some(_) => {}
            None => mains.push((om, payload, secret)),
        }
    }
    let singles = mains.into_iter().filter_map(|(om, payload, secret)| {
        let meta = match meta_of(&om, secret) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "skipping unreadable snapshot");
                damaged.push(format!(
                    "snapshot {}: {e}",
                    om.name.as_deref().unwrap_or("?")
                ));
                return None;
            }
        };
        let prior = decode_payload(&meta, payload, &mut chunks);
        Some(crate::restore::plan::Loaded { meta, prior })
    });
    let loaded = singles
        .collect::<Vec<_>>()
        .into_iter()
        .chain(
            batched
                .into_iter()
                .map(|(meta, prior)| crate::restore::plan::Loaded { meta, prior }),
        )
        .collect();
    (loaded, damaged)
}

/// One item per snapshot name: a snapshot can be found twice, alone and in
/// the batch compaction wrote, when compaction stopped between the two.
fn dedupe<T>(items: Vec<T>, name: impl Fn(&T) -> &String) -> Vec<T> {
    let mut seen = std::collections::HashSet::new();
    items
        .into_iter()
        .filter(|i| seen.insert(name(i).clone()))
        .collect()
}

fn decode_payload(
    meta: &SnapshotMeta,
    first: Option<Vec<u8>>,
    chunks: &mut HashMap<(String, u32), Vec<u8>>,
) -> std::result::Result<Option<Value>, String> {
    let Some(sha) = &meta.payload_sha256 else {
        return Ok(None);
    };
    let name = &meta.snapshot_name;
    let mut parts = vec![first.ok_or_else(|| format!("snapshot {name}: payload is missing"))?];
    for i in 1..meta.chunks {
        parts.push(
            chunks
                .remove(&(name.clone(), i))
                .ok_or_else(|| format!("snapshot {name}: chunk {i} is missing"))?,
        );
    }
    let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    codec::decode(&refs, sha)
        .map(Some)
        .map_err(|e| format!("snapshot {name}: {e}"))
}

fn meta_of(om: &ObjectMeta, secret: bool) -> Result<SnapshotMeta> {
    let name = om.name.clone().unwrap_or_default();
    let empty = BTreeMap::new();
    SnapshotMeta::from_stored(
        &name,
        om.labels.as_ref().unwrap_or(&empty),
        om.annotations.as_ref().unwrap_or(&empty),
        secret,
    )
    .map_err(|reason| StoreError::Corrupt { name, reason })
}

fn parse_record(cm: &ConfigMap) -> Result<(ActionRecord, String)> {
    let name = cm.metadata.name.clone().unwrap_or_default();
    let json = cm
        .data
        .as_ref()
        .and_then(|d| d.get(RECORD_KEY))
        .ok_or_else(|| StoreError::Corrupt {
            name: name.clone(),
            reason: format!("no {RECORD_KEY}"),
        })?;
    let record: ActionRecord = serde_json::from_str(json).map_err(|e| StoreError::Corrupt {
        name: name.clone(),
        reason: e.to_string(),
    })?;
    Ok((
        record,
        cm.metadata.resource_version.clone().unwrap_or_default(),
    ))
}

impl SnapshotSink for KubeStore {
    fn ensure_action<'a>(&'a self, record: &'a ActionRecord) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let key = record.id.to_string();
            let now = Instant::now();
            {
                let known = self.known_actions.lock().unwrap_or_else(|p| p.into_inner());
                if known
                    .get(&key)
                    .is_some_and(|at| now.duration_since(*at) < KNOWN_ACTION_TTL)
                {
                    return Ok(());
                }
            }
            self.create_action(record).await?;
            let mut known = self.known_actions.lock().unwrap_or_else(|p| p.into_inner());
            if known.len() > 50_000 {
                known.retain(|_, at| now.duration_since(*at) < KNOWN_ACTION_TTL);
            }
            known.insert(key, now);
            Ok(())
        })
    }

    fn put_snapshot(&self, snapshot: NewSnapshot) -> BoxFuture<'_, Result<u64>> {
        Box::pin(self.writer.put(snapshot))
    }

    fn mark_namespace_deletion<'a>(
        &'a self,
        action: &'a ActionId,
        namespace: &'a str,
        deleted: &'a DeletedNamespace,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            // Read-modify-write of the record; others update it too (a loop
            // of `kubectl delete ns` in parallel, one action): back off a
            // random few milliseconds between tries so they spread out.
            for attempt in 0..10u64 {
                if attempt > 0 {
                    let jitter = rand::random::<u64>() % (5 * attempt);
                    tokio::time::sleep(Duration::from_millis(attempt * 5 + jitter)).await;
                }
                let (mut record, rv) = self
                    .get_action(action)
                    .await?
                    .ok_or_else(|| StoreError::NotFound(format!("action {action}")))?;
                record
                    .deleted_namespaces
                    .insert(namespace.to_string(), deleted.clone());
                match self.update_action(&record, &rv).await {
                    Err(StoreError::Conflict(_)) => continue,
                    other => return other.map(|_| ()),
                }
            }
            Err(StoreError::Conflict(format!("action {action}")))
        })
    }

    fn terminating_namespace<'a>(
        &'a self,
        namespace: &'a str,
    ) -> BoxFuture<'a, Result<Option<crate::store::TerminatingNamespace>>> {
        Box::pin(async move {
            // From the watch cache: the namespace controller only deletes in
            // a namespace whose deletion was committed before. A cache that
            // does not show it yet lags (several API servers, each with its
            // own): read again from etcd.
            let terminating = |ns: k8s_openapi::api::core::v1::Namespace| {
                let meta = ns.metadata;
                meta.deletion_timestamp
                    .and_then(|at| meta.uid.map(|uid| (uid, Some(at.0))))
            };
            let cached = match self.namespaces.get_with(namespace, &GetParams::any()).await {
                Ok(ns) => terminating(ns),
                Err(e) if is_status(&e, 404) => None,
                Err(e) => return Err(StoreError::Kube(e)),
            };
            if cached.is_some() {
                return Ok(cached);
            }
            match self.namespaces.get(namespace).await {
                Ok(ns) => Ok(terminating(ns)),
                Err(e) if is_status(&e, 404) => Ok(None),
                Err(e) => Err(StoreError::Kube(e)),
            }
        })
    }

    fn node_at<'a>(
        &'a self,
        name: &'a str,
        resource_version: &'a str,
    ) -> BoxFuture<'a, Result<Option<serde_json::Value>>> {
        Box::pin(async move {
            let params = kube::api::ListParams::default()
                .fields(&format!("metadata.name={name}"))
                .at(resource_version)
                .matching(kube::api::VersionMatch::Exact);
            match self.nodes.list(&params).await {
                Ok(list) => Ok(list
                    .items
                    .into_iter()
                    .next()
                    .and_then(|n| serde_json::to_value(n).ok())),
                // 410 Gone: compacted away.
                Err(e) if is_status(&e, 410) => Ok(None),
                Err(e) => Err(StoreError::Kube(e)),
            }
        })
    }

    fn action_exists<'a>(&'a self, action: &'a ActionId) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move { Ok(self.get_action(action).await?.is_some()) })
    }

    fn deleted_by<'a>(&'a self, uid: &'a str) -> BoxFuture<'a, Result<Option<ActionId>>> {
        Box::pin(async move {
            // From the API server's cache (metadata only): the snapshot was
            // written before the owner's deletion was admitted, long before
            // the garbage collector sees the owner gone.
            let selector = format!("{}{uid}", crate::store::model::LABEL_DELETED_PREFIX);
            let list = self
                .config_maps
                .list_metadata(&ListParams::default().labels(&selector).match_any())
                .await
                .map_err(StoreError::Kube)?;
            Ok(list.items.iter().find_map(|cm| {
                let action = cm.metadata.labels.as_ref()?.get(LABEL_ACTION)?;
                ActionId::parse(action).ok()
            }))
        })
    }

    fn namespace_deleted_by<'a>(
        &'a self,
        namespace: &'a str,
        uid: &'a str,
        deleted_at: Option<Timestamp>,
    ) -> BoxFuture<'a, Result<Option<ActionId>>> {
        Box::pin(async move {
            // A consistent read: the label was written before the deletion
            // was admitted.
            let noted = self.namespace_deletions(namespace, uid).await?;
            Ok(crate::store::deleting_action(
                noted.iter().map(|(id, d)| (id, d)),
                deleted_at,
            ))
        })
    }
}
