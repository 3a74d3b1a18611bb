//! Snapshot writes still in flight after their change was admitted
//! (`--capture-ack=queued`).
//!
//! In that mode the webhook answers as soon as a change's snapshot is queued
//! for writing, like the API server's own audit webhook in batch mode. The
//! queue is bounded (past the bound the webhook waits for the write, as in
//! `written` mode), and whatever reads an action in this process (the
//! rollback API, shutdown) first waits for the writes that were queued
//! before it, so a rollback asked for right after a change still sees the
//! change's snapshot.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;

/// At most this many snapshots queued and not yet written.
pub const MAX_QUEUED: usize = 10_000;
/// At most this many bytes of admission reviews behind the queued snapshots.
pub const MAX_QUEUED_BYTES: usize = 128 * 1024 * 1024;

#[derive(Debug, Default)]
struct Queued {
    next: u64,
    /// Outstanding writes: sequence number → (action, bytes).
    writes: BTreeMap<u64, (String, usize)>,
    bytes: usize,
}

#[derive(Debug, Default)]
pub struct PendingWrites {
    queued: Mutex<Queued>,
    done: Notify,
    /// Mirrors the number of queued writes (`snapback_snapshot_writes_queued`).
    gauge: Option<prometheus::IntGauge>,
}

/// One queued write; dropping it (written or failed) ends it.
#[derive(Debug)]
pub struct Ticket {
    pending: std::sync::Arc<PendingWrites>,
    seq: u64,
}

impl PendingWrites {
    /// A queue whose length `gauge` shows.
    pub fn with_gauge(gauge: prometheus::IntGauge) -> Self {
        PendingWrites {
            gauge: Some(gauge),
            ..Default::default()
        }
    }

    fn show(&self, q: &Queued) {
        if let Some(g) = &self.gauge {
            g.set(q.writes.len() as i64);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queued> {
        self.queued.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queue a write of `bytes` for `action`; `None` when the queue is full
    /// (the caller then writes and waits, as without queueing).
    pub fn begin(self: &std::sync::Arc<Self>, action: &str, bytes: usize) -> Option<Ticket> {
        {
            let q = self.lock();
            if q.writes.len() >= MAX_QUEUED || q.bytes + bytes > MAX_QUEUED_BYTES {
                return None;
            }
        }
        Some(self.begin_unbounded(action, bytes))
    }

    /// Queue a write whatever the queue holds: one already admitted (a
    /// journaled snapshot a restart writes), which readers must wait for.
    pub fn begin_unbounded(self: &std::sync::Arc<Self>, action: &str, bytes: usize) -> Ticket {
        let mut q = self.lock();
        let seq = q.next;
        q.next += 1;
        q.bytes += bytes;
        q.writes.insert(seq, (action.to_string(), bytes));
        self.show(&q);
        Ticket {
            pending: self.clone(),
            seq,
        }
    }

    fn end(&self, seq: u64) {
        let mut q = self.lock();
        if let Some((_, bytes)) = q.writes.remove(&seq) {
            q.bytes -= bytes;
        }
        self.show(&q);
        drop(q);
        self.done.notify_waiters();
    }

    /// Snapshots queued and not yet written.
    pub fn len(&self) -> usize {
        self.lock().writes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Wait until every write of `action` (of any action when `None`)
    /// queued before this call has ended, at most `limit`. Writes queued
    /// later are not waited for, so a busy action cannot starve a reader.
    /// False when the limit passed first.
    pub async fn settle(&self, action: Option<&str>, limit: Duration) -> bool {
        let horizon = self.lock().next;
        let outstanding = || {
            self.lock()
                .writes
                .range(..horizon)
                .any(|(_, (a, _))| action.is_none_or(|want| want == a))
        };
        let wait = async {
            loop {
                let notified = self.done.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if !outstanding() {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(limit, wait).await.is_ok()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.pending.end(self.seq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn settle_waits_for_earlier_writes_of_the_action_only() {
        let p = Arc::new(PendingWrites::default());
        let a1 = p.begin("a", 10).unwrap();
        let b1 = p.begin("b", 10).unwrap();
        assert_eq!(p.len(), 2);
        // b's write does not hold up a reader of a.
        let settled = {
            let p = p.clone();
            tokio::spawn(async move { p.settle(Some("a"), Duration::from_secs(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!settled.is_finished(), "a's write is still queued");
        drop(a1);
        assert!(settled.await.unwrap());
        // A write queued after the reader started is not waited for.
        let waiter = {
            let p = p.clone();
            tokio::spawn(async move { p.settle(None, Duration::from_secs(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let later = p.begin("b", 10).unwrap();
        drop(b1);
        assert!(waiter.await.unwrap());
        assert_eq!(p.len(), 1);
        drop(later);
        assert!(p.is_empty());
    }

    #[tokio::test]
    async fn settle_gives_up_after_the_limit() {
        let p = Arc::new(PendingWrites::default());
        let _t = p.begin("a", 1).unwrap();
        assert!(!p.settle(Some("a"), Duration::from_millis(30)).await);
        assert!(p.settle(Some("other"), Duration::from_millis(30)).await);
    }

    #[test]
    fn the_queue_is_bounded_by_count_and_bytes() {
        let p = Arc::new(PendingWrites::default());
        assert!(p.begin("a", MAX_QUEUED_BYTES + 1).is_none());
        let big = p.begin("a", MAX_QUEUED_BYTES).unwrap();
        assert!(p.begin("a", 1).is_none(), "bytes bound");
        drop(big);
        let tickets: Vec<_> = (0..MAX_QUEUED).map(|_| p.begin("a", 0).unwrap()).collect();
        assert!(p.begin("a", 0).is_none(), "count bound");
        drop(tickets);
        assert!(p.begin("a", 0).is_some());
    }
}
