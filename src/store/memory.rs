//! An in-memory [`SnapshotSink`] for benchmarks and unit tests of the capture
//! path. The real store is [`crate::store::kube_store::KubeStore`]. It
//! encodes every snapshot as the per-change layout does, so that the capture
//! path measured with it pays for compression.

use std::collections::BTreeMap;
use std::sync::Mutex;

use futures::future::BoxFuture;

use crate::store::actions::ActionRecord;
use crate::store::model::ActionId;
use crate::store::{NewSnapshot, Result, SnapshotSink, StoreError, StoredSnapshot, encode_single};

#[derive(Debug, Default)]
pub struct MemoryStore {
    pub actions: Mutex<BTreeMap<String, ActionRecord>>,
    pub snapshots: Mutex<BTreeMap<String, StoredSnapshot>>,
    /// When set, every write fails with this message (to test deny mode).
    pub fail_with: Mutex<Option<String>>,
    /// Every snapshot write takes this long (to test queued acknowledgement).
    pub write_delay: Mutex<std::time::Duration>,
    /// Namespaces being deleted (name → uid, the action that deleted it),
    /// as `mark_namespace_deletion` notes them. Nothing finishes their
    /// deletion here.
    pub namespace_deletions: Mutex<BTreeMap<String, (String, ActionId)>>,
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
        uid: &'a str,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.check()?;
            let mut actions = self.actions.lock().unwrap_or_else(|p| p.into_inner());
            let record = actions
                .get_mut(action.as_str())
                .ok_or_else(|| StoreError::NotFound(format!("action {action}")))?;
            record
                .deleted_namespaces
                .insert(namespace.to_string(), uid.to_string());
            self.namespace_deletions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(namespace.to_string(), (uid.to_string(), action.clone()));
            Ok(())
        })
    }

    fn terminating_namespace<'a>(
        &'a self,
        namespace: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>>> {
        Box::pin(async move {
            self.check()?;
            Ok(self
                .namespace_deletions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(namespace)
                .map(|(uid, _)| uid.clone()))
        })
    }

    fn namespace_deleted_by<'a>(
        &'a self,
        namespace: &'a str,
        uid: &'a str,
    ) -> BoxFuture<'a, Result<Option<ActionId>>> {
        Box::pin(async move {
            self.check()?;
            Ok(self
                .namespace_deletions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(namespace)
                .filter(|(u, _)| u == uid)
                .map(|(_, action)| action.clone()))
        })
    }
}
