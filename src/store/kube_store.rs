//! The ConfigMap/Secret store in the snapshot namespace.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::{Api, Client};
use serde_json::Value;

use crate::store::actions::{ActionRecord, ActionState, RECORD_KEY};
use crate::store::codec;
use crate::store::model::*;
use crate::store::{NewSnapshot, Result, SnapshotSink, StoreError};

/// Secret type of snapshots of Secrets.
pub const SNAPSHOT_SECRET_TYPE: &str = "snapback.io/snapshot";

/// How long an action record is assumed to exist after we saw or made it.
const KNOWN_ACTION_TTL: Duration = Duration::from_secs(300);

pub struct KubeStore {
    namespace: String,
    config_maps: Api<ConfigMap>,
    secrets: Api<Secret>,
    known_actions: Mutex<HashMap<String, Instant>>,
}

fn is_status(err: &kube::Error, code: u16) -> bool {
    matches!(err, kube::Error::Api(e) if e.code == code)
}

/// A create answered "already exists": the same write made before (a retry
/// after a lost response). Any other 409 is a failure like any other.
fn already_exists(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(e) if e.code == 409 && e.reason == "AlreadyExists")
}

impl KubeStore {
    pub fn new(client: Client, namespace: &str) -> Self {
        KubeStore {
            namespace: namespace.to_string(),
            config_maps: Api::namespaced(client.clone(), namespace),
            secrets: Api::namespaced(client, namespace),
            known_actions: Mutex::default(),
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
        ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(self.namespace.clone()),
            labels: Some(labels),
            annotations: Some(annotations),
            ..Default::default()
        }
    }

    /// Create; an object that already exists under that name is the same
    /// write retried and counts as success.
    async fn create_cm(&self, cm: &ConfigMap) -> Result<()> {
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

    async fn write_snapshot(&self, snap: &NewSnapshot) -> Result<()> {
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
            let data = BTreeMap::from([(PAYLOAD_KEY.to_string(), ByteString(chunk.clone()))]);
            if meta.secret {
                self.create_secret(&Secret {
                    metadata: om,
                    type_: Some(SNAPSHOT_SECRET_TYPE.into()),
                    data: Some(data),
                    ..Default::default()
                })
                .await?;
            } else {
                self.create_cm(&ConfigMap {
                    metadata: om,
                    binary_data: Some(data),
                    ..Default::default()
                })
                .await?;
            }
        }
        let om = self.meta(name, meta.labels(), meta.annotations());
        let data = chunks
            .first()
            .map(|c| BTreeMap::from([(PAYLOAD_KEY.to_string(), ByteString(c.clone()))]));
        if meta.secret {
            self.create_secret(&Secret {
                metadata: om,
                type_: Some(SNAPSHOT_SECRET_TYPE.into()),
                data,
                ..Default::default()
            })
            .await
        } else {
            self.create_cm(&ConfigMap {
                metadata: om,
                binary_data: data,
                ..Default::default()
            })
            .await
        }
    }

    fn record_to_cm(
        &self,
        record: &ActionRecord,
        resource_version: Option<String>,
    ) -> Result<ConfigMap> {
        let labels = BTreeMap::from([
            (MANAGED_BY.to_string(), MANAGER.to_string()),
            (LABEL_RECORD.to_string(), RECORD_ACTION.to_string()),
            (LABEL_ACTION.to_string(), record.id.to_string()),
            (LABEL_STATE.to_string(), record.state.to_string()),
            (LABEL_ORIGIN.to_string(), record.origin.clone()),
        ]);
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

    /// Read an action record with its resourceVersion (for optimistic updates).
    pub async fn get_action(&self, id: &ActionId) -> Result<Option<(ActionRecord, String)>> {
        match self.config_maps.get_opt(&id.record_name()).await {
            Ok(Some(cm)) => Ok(Some(parse_record(&cm)?)),
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
        let mut selector = format!("{LABEL_RECORD}={RECORD_ACTION}");
        if let Some(st) = state {
            selector.push_str(&format!(",{LABEL_STATE}={st}"));
        }
        let list = self
            .config_maps
            .list(&ListParams::default().labels(&selector))
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
            .metas(&format!("{LABEL_ACTION}={action},!{LABEL_RECORD}"))
            .await?;
        out.sort_by_key(SnapshotMeta::order_key);
        Ok(out)
    }

    /// Snapshot metadata matching a label selector, from ConfigMaps and
    /// Secrets. An entry whose labels or annotations were damaged is skipped
    /// with a warning rather than failing the whole listing.
    async fn metas(&self, selector: &str) -> Result<Vec<SnapshotMeta>> {
        let lp = ListParams::default().labels(selector);
        let cms = self
            .config_maps
            .list_metadata(&lp)
            .await
            .map_err(StoreError::Kube)?;
        let secrets = self
            .secrets
            .list_metadata(&lp)
            .await
            .map_err(StoreError::Kube)?;
        let tagged = cms.items.into_iter().map(|i| (i.metadata, false));
        let tagged = tagged.chain(secrets.items.into_iter().map(|i| (i.metadata, true)));
        Ok(tagged
            .filter_map(|(metadata, secret)| match meta_of(&metadata, secret) {
                Ok(m) => Some(m),
                Err(e) => {
                    tracing::warn!(error = %e, "skipping unreadable snapshot");
                    None
                }
            })
            .collect())
    }

    /// Metadata of every snapshot (not chunks or records), for listing actions.
    pub async fn all_snapshot_metas(&self) -> Result<Vec<SnapshotMeta>> {
        self.metas(&format!(
            "{MANAGED_BY}={MANAGER},{LABEL_ACTION},!{LABEL_RECORD}"
        ))
        .await
    }

    /// Metadata of snapshots whose object asked for a guard.
    pub async fn guarded_snapshot_metas(&self) -> Result<Vec<SnapshotMeta>> {
        self.metas(&format!("{LABEL_GUARD},!{LABEL_RECORD}")).await
    }

    /// Load and verify the prior object of a snapshot (None for CREATE).
    pub async fn load_payload(&self, meta: &SnapshotMeta) -> Result<Option<Value>> {
        let Some(sha) = &meta.payload_sha256 else {
            return Ok(None);
        };
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
    /// snapshot that cannot be decoded carries the reason instead of failing
    /// the whole action.
    pub async fn load_action(
        &self,
        action: &ActionId,
    ) -> Result<Vec<crate::restore::plan::Loaded>> {
        let lp = ListParams::default().labels(&format!("{LABEL_ACTION}={action}"));
        let mut raw: Vec<(ObjectMeta, Option<Vec<u8>>, bool)> = Vec::new();
        for cm in self
            .config_maps
            .list(&lp)
            .await
            .map_err(StoreError::Kube)?
            .items
        {
            let payload = cm
                .binary_data
                .and_then(|mut d| d.remove(PAYLOAD_KEY))
                .map(|b| b.0);
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
        tokio::task::spawn_blocking(move || assemble(raw))
            .await
            .map_err(|e| StoreError::Corrupt {
                name: action.to_string(),
                reason: e.to_string(),
            })
    }

    /// Delete everything stored for an action: snapshots, chunks, the record.
    pub async fn delete_action(&self, action: &ActionId) -> Result<()> {
        let lp = ListParams::default().labels(&format!("{LABEL_ACTION}={action}"));
        let dp = DeleteParams::background();
        self.secrets
            .delete_collection(&dp, &lp)
            .await
            .map_err(StoreError::Kube)?;
        self.config_maps
            .delete_collection(&dp, &lp)
            .await
            .map_err(StoreError::Kube)?;
        self.known_actions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(action.as_str());
        Ok(())
    }
}

/// Pair snapshots with their chunks and decode them.
fn assemble(raw: Vec<(ObjectMeta, Option<Vec<u8>>, bool)>) -> Vec<crate::restore::plan::Loaded> {
    let mut chunks: HashMap<(String, u32), Vec<u8>> = HashMap::new();
    let mut mains = Vec::new();
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
            Some(_) => {}
            None => mains.push((om, payload, secret)),
        }
    }
    mains
        .into_iter()
        .filter_map(|(om, payload, secret)| {
            let meta = match meta_of(&om, secret) {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "skipping unreadable snapshot");
                    return None;
                }
            };
            let prior = decode_payload(&meta, payload, &mut chunks);
            Some(crate::restore::plan::Loaded { meta, prior })
        })
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

    fn put_snapshot<'a>(&'a self, snapshot: &'a NewSnapshot) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.write_snapshot(snapshot))
    }
}
