//! Writing a journaled snapshot to the API server (`--capture-ack=journaled`).
//!
//! The change was admitted once its snapshot was in the journal
//! (`store::journal`); this writes it, as the webhook would have, and
//! retries until it is written. Only a failure that no retry can mend (the
//! API server refuses the snapshot object itself) gives up: then the change
//! stays uncaptured, and is counted and logged as such.

use std::sync::Arc;
use std::time::Duration;

use crate::capture::pending::Ticket;
use crate::metrics::Metrics;
use crate::store::actions::ActionRecord;
use crate::store::journal::{Appended, Journal};
use crate::store::{NewSnapshot, SnapshotSink, StoreError};

/// One attempt may take this long.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Attempts a refusal of the snapshot object itself takes to be final.
const PERMANENT_AFTER: u32 = 3;

/// A failure retrying cannot mend: the API server refuses the snapshot
/// object itself (invalid, too large) or it cannot be encoded.
fn permanent(e: &StoreError) -> bool {
    match e {
        StoreError::Kube(kube::Error::Api(s)) => matches!(s.code, 400 | 413 | 422),
        StoreError::Codec(_) => true,
        StoreError::Shared { label, .. } => matches!(*label, "too_large" | "encode"),
        _ => false,
    }
}

/// Everything needed to write one journaled snapshot.
pub struct JournaledWrite {
    pub sink: Arc<dyn SnapshotSink>,
    pub metrics: Metrics,
    pub journal: Arc<Journal>,
    pub record: ActionRecord,
    pub snapshot: NewSnapshot,
}

/// What became of an append: journaled (the write follows in its task), or
/// not, with the write handed back to be made before the answer.
pub enum Appending {
    Journaled,
    Refused(std::io::Error, Box<JournaledWrite>),
    /// The journaling task ended without a word (it panicked): the change
    /// is neither journaled nor can it be written here.
    Lost,
}

impl JournaledWrite {
    /// Append `entry` to the journal and, once it is there, write it. Both
    /// in a task of their own: a webhook call dropped meanwhile (the API
    /// server's timeout) must not strand an entry that reached the disk.
    /// Resolves once the append is done.
    pub async fn journal(self, entry: Vec<u8>, ticket: Ticket) -> Appending {
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            match self
                .journal
                .append(entry, &self.snapshot.meta.snapshot_name)
                .await
            {
                Ok(appended) => {
                    let _ = tx.send(None);
                    self.run(appended, Some(ticket)).await;
                }
                Err(e) => {
                    drop(ticket);
                    let _ = tx.send(Some((e, Box::new(self))));
                }
            }
        });
        match rx.await {
            Ok(None) => Appending::Journaled,
            Ok(Some((e, write))) => Appending::Refused(e, write),
            Err(_) => Appending::Lost,
        }
    }

    /// Write until written (then release the entry and the ticket).
    pub async fn run(self, appended: Appended, ticket: Option<Ticket>) {
        let operation = self.snapshot.meta.operation;
        let request_uid = self.snapshot.meta.request_uid.clone();
        let mut backoff = FIRST_BACKOFF;
        let mut attempt = 1u32;
        loop {
            let write = async {
                self.sink.ensure_action(&self.record).await?;
                self.sink.put_snapshot(self.snapshot.clone()).await
            };
            let result = match tokio::time::timeout(ATTEMPT_TIMEOUT, write).await {
                Ok(r) => r,
                Err(_) => Err(StoreError::Shared {
                    message: format!("timed out after {ATTEMPT_TIMEOUT:?} writing the snapshot"),
                    label: "timeout",
                }),
            };
            match result {
                Ok(bytes) => {
                    super::count_stored(&self.metrics, operation, bytes);
                    if attempt > 1 {
                        tracing::info!(%request_uid, attempt, "journaled snapshot written");
                    }
                    break;
                }
                Err(e) => {
                    // Counted once per snapshot, not once per retry.
                    if attempt == 1 {
                        self.metrics
                            .snapshot_failures
                            .with_label_values(&[e.metric_label()])
                            .inc();
                    }
                    // A refusal of a batch may be its neighbours' doing:
                    // the retries group it differently before it is final.
                    if permanent(&e) && attempt >= PERMANENT_AFTER {
                        self.metrics.uncaptured_admitted.inc();
                        tracing::error!(error = %e, %request_uid,
                            "journaled snapshot refused by the API server: the change stays uncaptured");
                        break;
                    }
                    tracing::warn!(error = %e, %request_uid, attempt, retry_in = ?backoff,
                        "journaled snapshot not written yet; it stays in the journal and is retried");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    attempt += 1;
                }
            }
        }
        self.journal.release(appended);
        drop(ticket);
    }
}
