//! An in-memory [`SnapshotSink`] for benchmarks and unit tests of the capture
//! path. The real store is [`crate::store::kube_store::KubeStore`].

use std::collections::BTreeMap;
use std::sync::Mutex;

use futures::future::BoxFuture;

use crate::store::actions::ActionRecord;
use crate::store::{NewSnapshot, Result, SnapshotSink, StoreError};

#[derive(Debug, Default)]
pub struct MemoryStore {
    pub actions: Mutex<BTreeMap<String, ActionRecord>>,
    pub snapshots: Mutex<BTreeMap<String, NewSnapshot>>,
    /// When set, every write fails with this message (to test deny mode).
    pub fail_with: Mutex<Option<String>>,
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

    fn put_snapshot<'a>(&'a self, snapshot: &'a NewSnapshot) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.check()?;
            self.snapshots
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(snapshot.meta.snapshot_name.clone(), snapshot.clone());
            Ok(())
        })
    }
}
