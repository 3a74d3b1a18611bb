//! An in-memory [`SnapshotSink`] for benchmarks and unit tests of the capture
//! path. The real store is [`crate::store::kube_store::KubeStore`]. It
//! encodes every snapshot as the per-change layout does, so that the capture
//! path measured with it pays for compression.

use std::collections::BTreeMap;
use std::sync::Mutex;

use futures::future::BoxFuture;

use jiff::Timestamp;

use crate::store::actions::{ActionRecord, DeletedNamespace};
use crate::store::model::ActionId;
use crate::store::{
    NewSnapshot, Result, SnapshotSink, StoreError, StoredSnapshot, deleting_action, encode_single,
};

#[derive(Debug, Default)]
pub struct MemoryStore {
    pub actions: Mutex<BTreeMap<String, ActionRecord>>,
    pub snapshots: Mutex<BTreeMap<String, StoredSnapshot>>,
    /// When set, every write fails with this message (to test deny mode).
    pub fail_with: Mutex<Option<String>>,
    /// Every snapshot write takes this long (to test queued acknowledgement).
    pub write_delay: Mutex<std::time::Duration>,
    /// Namespaces being deleted: name → (uid, when the deletion was
    /// committed), as a test says (there is no API server here).
    pub terminating: Mutex<BTreeMap<String, crate::store::TerminatingNamespace>>,
}

impl MemoryStore {
    fn check(&self) -> Result<()> {
        match &*self.fail_with.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(msg) => Err(StoreError::Corrupt {
                name: "memory".into(),
                reason: msg.clone(),
            }),
            None => Ok(()),
        }
    }

    pub fn snapshot_count(&self) -> usize {
        self.snapshots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }
}

impl SnapshotSink for MemoryStore {
    fn ensure_action<'a>(&'a self, record: &'a ActionRecord) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.check()?;
            self.actions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(record.id.to_string())
                .or_insert_with(|| record.clone());
            Ok(())
        })
    }

    fn put_snapshot(&self, snapshot: NewSnapshot) -> BoxFuture<'_, Result<u64>> {
        Box::pin(async move {
            let delay = *self.write_delay.lock().unwrap_or_else(|p| p.into_inner());
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            self.check()?;
            let stored = encode_single(snapshot).await?;
            let bytes = stored
                .payload
                .as_ref()
                .map_or(0, |p| p.compressed_len() as u64);
            self.snapshots
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(stored.meta.snapshot_name.clone(), stored);
            Ok(bytes)
        })
    }

    fn mark_namespace_deletion<'a>(
        &'a self,
        action: &'a ActionId,
        namespace: &'a str,
        deleted: &'a DeletedNamespace,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.check()?;
            let mut actions = self.actions.lock().unwrap_or_else(|p| p.into_inner());
            let record = actions
                .get_mut(action.as_str())
                .ok_or_else(|| StoreError::NotFound(format!("action {action}")))?;
            record
                .deleted_namespaces
                .insert(namespace.to_string(), deleted.clone());
            Ok(())
        })
    }

    fn action_exists<'a>(&'a self, action: &'a ActionId) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            self.check()?;
            Ok(self
                .actions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(action.as_str()))
        })
    }

    fn deleted_by<'a>(&'a self, uid: &'a str) -> BoxFuture<'a, Result<Option<ActionId>>> {
        Box::pin(async move {
            self.check()?;
            let snapshots = self.snapshots.lock().unwrap_or_else(|p| p.into_inner());
            Ok(snapshots
                .values()
                .find(|s| {
                    s.meta.operation == crate::store::model::Operation::Delete
                        && s.meta.uid.as_deref() == Some(uid)
                })
                .map(|s| s.meta.action.clone()))
        })
    }

    fn node_at<'a>(
        &'a self,
        _name: &'a str,
        _resource_version: &'a str,
    ) -> BoxFuture<'a, Result<Option<serde_json::Value>>> {
        Box::pin(async move {
            self.check()?;
            Ok(None)
        })
    }

    fn terminating_namespace<'a>(
        &'a self,
        namespace: &'a str,
    ) -> BoxFuture<'a, Result<Option<crate::store::TerminatingNamespace>>> {
        Box::pin(async move {
            self.check()?;
            Ok(self
                .terminating
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(namespace)
                .cloned())
        })
    }

    fn namespace_deleted_by<'a>(
        &'a self,
        namespace: &'a str,
        uid: &'a str,
        deleted_at: Option<Timestamp>,
    ) -> BoxFuture<'a, Result<Option<ActionId>>> {
        Box::pin(async move {
            self.check()?;
            let actions = self.actions.lock().unwrap_or_else(|p| p.into_inner());
            Ok(deleting_action(
                actions
                    .values()
                    .filter_map(|r| Some((&r.id, r.deleted_namespace(namespace, uid)?))),
                deleted_at,
            ))
        })
    }
}
