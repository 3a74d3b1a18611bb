//! Maintenance on one replica at a time (a `coordination.k8s.io/v1` Lease):
//! implicit sessions that went idle are completed, and actions past
//! `--retention` or beyond `--max-actions` are pruned. Open and rolling-back
//! actions are never pruned.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};

use crate::metrics::Metrics;
use crate::restore::rollback::modify;
use crate::store::actions::{
    ActionRecord, ActionState, PRUNING_KEY, ROLLBACK_REQUEST_GRACE, ROLLBACK_REQUESTED_KEY,
};
use crate::store::kube_store::KubeStore;

pub const LEASE_NAME: &str = "snapback-maintenance";
/// Actions compacted per maintenance pass at most.
const COMPACT_PER_PASS: usize = 20;

#[derive(Debug, Clone)]
pub struct RetentionConfig {
    pub retention: Duration,
    pub max_actions: usize,
    pub session_idle: Duration,
    pub interval: Duration,
    pub lease_duration: Duration,
    /// Fold the snapshots of finished actions into batches.
    pub compact: bool,
    /// ... once they have been finished and unchanged this long.
    pub compact_after: Duration,
}

/// A Lease held by at most one replica; taken over when not renewed in time.
pub struct LeaderLease {
    api: Api<Lease>,
    identity: String,
    duration: Duration,
}

impl LeaderLease {
    pub fn new(client: Client, namespace: &str, identity: String, duration: Duration) -> Self {
        LeaderLease {
            api: Api::namespaced(client, namespace),
            identity,
            duration,
        }
    }

    fn spec(&self, now: Timestamp, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.duration.as_secs().max(1) as i32),
            acquire_time: Some(MicroTime(now)),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    /// Acquire or renew; true when this replica holds the lease now.
    pub async fn try_acquire(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let Some(mut lease) = self.api.get_opt(LEASE_NAME).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(LEASE_NAME.into()),
                    ..Default::default()
                },
                spec: Some(self.spec(now, 0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let expires = spec.renew_time.as_ref().map(|t| t.0).and_then(|t| {
            t.checked_add(jiff::SignedDuration::from_secs(
                spec.lease_duration_seconds.unwrap_or(15) as i64,
            ))
            .ok()
        });
        let mine = holder == self.identity;
        let free = holder.is_empty() || expires.is_none_or(|e| e < now);
        if !mine && !free {
            return Ok(false);
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!mine);
        let mut new_spec = self.spec(now, transitions);
        if mine {
            new_spec.acquire_time = spec.acquire_time.clone();
        }
        lease.spec = Some(new_spec);
        // The resourceVersion in `lease` makes this a compare-and-swap.
        match self
            .api
            .replace(LEASE_NAME, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Give the lease up (on shutdown) so another replica takes over at once.
    pub async fn release(&self) {
        if let Ok(Some(mut lease)) = self.api.get_opt(LEASE_NAME).await
            && lease
                .spec
                .as_ref()
                .and_then(|s| s.holder_identity.as_deref())
                == Some(&self.identity)
        {
            if let Some(spec) = lease.spec.as_mut() {
                spec.holder_identity = None;
            }
            let _ = self
                .api
                .replace(LEASE_NAME, &PostParams::default(), &lease)
                .await;
        }
    }
}

/// One maintenance pass. Returns (sessions completed, actions pruned, snapshots pruned).
pub async fn maintain(
    store: &KubeStore,
    cfg: &RetentionConfig,
    metrics: &Metrics,
) -> Result<(usize, usize, usize), crate::store::StoreError> {
    let now = Timestamp::now();
    let records = store.list_actions_cached(None).await?;
    let by_action = store.activity_by_action().await?;
    // Activity is when the action began and when its changes were made;
    // completing it (which this pass itself does) or rolling it back is not.
    let last_activity = |r: &crate::store::actions::ActionRecord| {
        by_action
            .get(r.id.as_str())
            .and_then(|a| a.last)
            .unwrap_or(r.created_at)
            .max(r.created_at)
    };
    let since = |t: Timestamp| now.duration_since(t).unsigned_abs();

    // Snapshots whose action has no record (a webhook process that knew the
    // action kept writing after the action was deleted through another
    // process): give them a record, so that they are listed, can be rolled
    // back, and are pruned like any other. (Open: they complete when idle.)
    let known: std::collections::HashSet<&str> =
        records.iter().map(|(r, _)| r.id.as_str()).collect();
    for id in by_action.keys().filter(|id| !known.contains(id.as_str())) {
        if let Err(e) = adopt(store, id).await {
            tracing::warn!(action = %id, error = %e, "giving orphan snapshots a record");
        }
    }

    // Implicit sessions and annotation actions complete when they go idle.
    let mut completed = 0;
    for (r, _) in &records {
        if r.state == ActionState::Open
            && matches!(r.origin.as_str(), "session" | "annotation")
            && since(last_activity(r)) > cfg.session_idle
        {
            let done = modify(store, &r.id, |rec| {
                if rec.state == ActionState::Open {
                    rec.state = ActionState::Completed;
                    rec.completed_at = Some(now);
                    rec.updated_at = now;
                }
            })
            .await;
            if done.is_ok() {
                completed += 1;
            }
        }
    }

    // Prunable: neither open nor rolling back, oldest activity first.
    let mut prunable: Vec<_> = records
        .iter()
        .filter(|(r, _)| !matches!(r.state, ActionState::Open | ActionState::RollingBack))
        .map(|(r, _)| (last_activity(r), r))
        .collect();
    prunable.sort_by_key(|(t, _)| *t);
    let total = records.len();
    let mut excess = total.saturating_sub(cfg.max_actions);
    let mut pruned_actions = 0;
    let mut pruned_snapshots = 0;
    for (activity, r) in prunable {
        let expired = since(activity) > cfg.retention;
        // A pruning that failed half way is finished whatever the count.
        let claimed = r.extensions.contains_key(PRUNING_KEY);
        if !expired && excess == 0 && !claimed {
            continue;
        }
        // A rollback's own action is how it is undone (redo): not pruned
        // for the count while it is new, however many actions there are
        // (expiry by `--retention` still applies).
        if !expired
            && !claimed
            && r.origin == "rollback"
            && since(r.created_at) < ROLLBACK_REQUEST_GRACE
        {
            continue;
        }
        let snapshots = by_action.get(r.id.as_str()).map_or(0, |a| a.snapshots);
        // The list is from the start of the pass: a rollback may have started
        // since. Claimed for pruning with the record's resourceVersion as
        // precondition, so that a rollback requested meanwhile (it marks
        // the record the same way before it plans) and this deletion never
        // both go ahead.
        let (mut fresh, rv) = match store.get_action(&r.id).await {
            Ok(Some((fresh, rv)))
                if !matches!(fresh.state, ActionState::Open | ActionState::RollingBack) =>
            {
                (fresh, rv)
            }
            _ => continue,
        };
        let requested = fresh
            .extensions
            .get(ROLLBACK_REQUESTED_KEY)
            .and_then(|v| v.as_str())
            .and_then(|t| t.parse::<Timestamp>().ok());
        if requested.is_some_and(|t| since(t) < ROLLBACK_REQUEST_GRACE) {
            continue;
        }
        fresh
            .extensions
            .insert(PRUNING_KEY.into(), serde_json::json!(now.to_string()));
        if store.update_action(&fresh, &rv).await.is_err() {
            continue;
        }
        match store.delete_action(&r.id).await {
            Ok(()) => {
                tracing::info!(action = %r.id, snapshots, expired, "pruned action");
                pruned_actions += 1;
                pruned_snapshots += snapshots;
                excess = excess.saturating_sub(1);
                metrics.actions_pruned.inc();
                metrics.snapshots_pruned.inc_by(snapshots as u64);
            }
            Err(e) => tracing::warn!(action = %r.id, error = %e, "pruning action"),
        }
    }
    // Finished actions: their snapshots folded into batches, a few actions
    // per pass so that the API server never sees a burst.
    let mut compacted_actions = 0;
    for (r, _) in &records {
        if !cfg.compact || compacted_actions >= COMPACT_PER_PASS {
            break;
        }
        let activity = by_action.get(r.id.as_str());
        let singles = activity.map_or(0, |a| a.singles);
        if singles < 2 || matches!(r.state, ActionState::Open | ActionState::RollingBack) {
            continue;
        }
        // Recent actions keep SPEC §3's layout for a while: they are the
        // ones people inspect.
        let last = activity
            .and_then(|a| a.last)
            .map_or(r.updated_at, |l| l.max(r.updated_at));
        if !settled_for(last, cfg.compact_after) {
            continue;
        }
        match store.get_action(&r.id).await {
            Ok(Some((fresh, _)))
                if !matches!(fresh.state, ActionState::Open | ActionState::RollingBack) => {}
            _ => continue,
        }
        compacted_actions += 1;
        match store.compact_action(&r.id).await {
            Ok(n) => {
                if n > 0 {
                    tracing::info!(action = %r.id, snapshots = n, "compacted action");
                }
                metrics.snapshots_compacted.inc_by(n as u64);
            }
            Err(e) => tracing::warn!(action = %r.id, error = %e, "compacting action"),
        }
    }

    let open = records
        .iter()
        .filter(|(r, _)| r.state == ActionState::Open)
        .count()
        .saturating_sub(completed);
    metrics.open_actions.set(open as i64);
    Ok((completed, pruned_actions, pruned_snapshots))
}

/// Run maintenance forever while holding the lease.
pub fn spawn(
    client: Client,
    store: Arc<KubeStore>,
    cfg: RetentionConfig,
    metrics: Metrics,
    identity: String,
    is_leader: Arc<std::sync::atomic::AtomicBool>,
) -> Arc<LeaderLease> {
    let lease = Arc::new(LeaderLease::new(
        client,
        store.namespace(),
        identity,
        cfg.lease_duration,
    ));
    let handle = lease.clone();
    tokio::spawn(async move {
        let mut was_leader = false;
        let mut last_pass: Option<std::time::Instant> = None;
        loop {
            let leader = match lease.try_acquire().await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "maintenance lease");
                    false
                }
            };
            if leader != was_leader {
                tracing::info!(leader, "maintenance leadership changed");
                was_leader = leader;
            }
            is_leader.store(leader, std::sync::atomic::Ordering::Relaxed);
            // snapback_open_actions: the leader's count, fresh at every
            // renewal (however many replicas serve opens and completes);
            // the others say 0, so that max() over replicas is the count.
            // From the API server's watch cache: a consistent read would
            // make it read the whole snapshot namespace from etcd.
            let open = if leader {
                match store.list_actions_cached(Some(ActionState::Open)).await {
                    Ok(open) => Some(open.len() as i64),
                    Err(e) => {
                        tracing::debug!(error = %e, "counting open actions");
                        None
                    }
                }
            } else {
                Some(0)
            };
            if let Some(n) = open {
                metrics.open_actions.set(n);
            }
            let due = last_pass.is_none_or(|t| t.elapsed() >= cfg.interval);
            if leader && due {
                last_pass = Some(std::time::Instant::now());
                // A pass may outlast the lease (a large store to compact or
                // prune): renew it meanwhile, and stop the pass if another
                // replica took it over (SPEC §3: one replica at a time). A
                // pass stopped halfway leaves what a crash would, which the
                // next pass finishes.
                let pass = maintain(&store, &cfg, &metrics);
                tokio::pin!(pass);
                let renew_every = (cfg.lease_duration / 3).max(Duration::from_millis(200));
                loop {
                    tokio::select! {
                        result = &mut pass => {
                            if let Err(e) = result {
                                tracing::warn!(error = %e, "maintenance pass");
                            }
                            break;
                        }
                        () = tokio::time::sleep(renew_every) => {
                            let still = lease.try_acquire().await.unwrap_or_else(|e| {
                                tracing::warn!(error = %e, "renewing the maintenance lease");
                                false
                            });
                            if !still {
                                tracing::warn!("maintenance leadership lost during a pass; the pass stops");
                                was_leader = false;
                                is_leader.store(false, std::sync::atomic::Ordering::Relaxed);
                                break;
                            }
                        }
                    }
                }
            }
            // Renew well within the lease duration.
            let pause = cfg.interval.min(cfg.lease_duration / 3);
            tokio::time::sleep(pause.max(Duration::from_millis(200))).await;
        }
    });
    handle
}

/// A record for an action that has snapshots but none: its owner is the
/// user of its first change, its origin what its id looks like.
async fn adopt(store: &KubeStore, id: &str) -> Result<(), crate::store::StoreError> {
    let Ok(action) = crate::store::model::ActionId::parse(id) else {
        return Ok(());
    };
    let snapshots = store.list_snapshots(&action).await?;
    let Some(first) = snapshots.iter().min_by_key(|m| m.timestamp) else {
        return Ok(());
    };
    let origin = if crate::capture::attribution::looks_like_session(id) {
        "session"
    } else {
        "annotation"
    };
    let record = ActionRecord::new(action, origin, &first.user, first.timestamp);
    if store.create_action(&record).await? {
        tracing::info!(action = %id, snapshots = snapshots.len(), "gave orphan snapshots a record");
    }
    Ok(())
}

/// Whether `since` is at least `age` ago.
fn settled_for(since: jiff::Timestamp, age: Duration) -> bool {
    let Ok(age) = jiff::SignedDuration::try_from(age) else {
        return false;
    };
    jiff::Timestamp::now().duration_since(since).ge(&age)
}
