//! Guarded actions: once an action completes, watch every object it touched
//! until each is healthy or the guard's timeout passes; on failure, roll the
//! action back (trigger `guard`) or only report. The guard's state lives in
//! the action record, so a restarted snapshotter carries on; the loop runs
//! only on the replica holding the maintenance Lease.

pub mod health;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::config::parse_duration;
use crate::guard::health::{Health, health};
use crate::metrics::Metrics;
use crate::restore::report::Trigger;
use crate::restore::rollback::{Caller, Params, Restorer, RollbackError, modify};
use crate::store::actions::{ActionRecord, ActionState};
use crate::store::model::{ActionId, SnapshotMeta};

pub const GUARD_KEY: &str = "guard";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// Roll the action back (trigger `guard`).
    #[default]
    Rollback,
    /// Only report.
    None,
}

/// The longest a guard watches (the default retention: an action is not
/// watched longer than it is kept).
pub const MAX_GUARD_TIMEOUT: Duration = Duration::from_secs(168 * 3600);

/// A guard as requested: `POST /api/v1/actions` `{"guard": {...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GuardSpec {
    /// How long the touched objects have to become healthy, e.g. `5m`.
    #[schema(example = "5m", pattern = "^[1-9][0-9]{0,5}(ms|s|m|h|d)$")]
    pub timeout: String,
    #[serde(default)]
    pub on_failure: OnFailure,
}

impl GuardSpec {
    pub fn validate(&self) -> Result<Duration, String> {
        let d = parse_duration(&self.timeout).map_err(|e| format!("guard.timeout: {e}"))?;
        if d.is_zero() {
            return Err("guard.timeout must be more than 0".into());
        }
        if d > MAX_GUARD_TIMEOUT {
            return Err(format!(
                "guard.timeout must be at most 168h, not {:?}",
                self.timeout
            ));
        }
        Ok(d)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum GuardState {
    /// The action is still open.
    Pending,
    /// Watching the objects until they are healthy or the timeout passes.
    Watching,
    Healthy,
    /// Not healthy in time (onFailure none, or the rollback not started yet).
    Failed,
    RolledBack,
    RollbackFailed,
}

impl GuardState {
    pub fn is_final(self) -> bool {
        matches!(
            self,
            GuardState::Healthy | GuardState::RolledBack | GuardState::RollbackFailed
        )
    }
    pub fn as_str(self) -> &'static str {
        match self {
            GuardState::Pending => "pending",
            GuardState::Watching => "watching",
            GuardState::Healthy => "healthy",
            GuardState::Failed => "failed",
            GuardState::RolledBack => "rolled-back",
            GuardState::RollbackFailed => "rollback-failed",
        }
    }
}

/// The guard as stored on the action and shown by `GET /api/v1/actions/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GuardStatus {
    pub timeout: String,
    pub on_failure: OnFailure,
    pub state: GuardState,
    /// When watching started (the action completed or its session went idle).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub started_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub finished_at: Option<Timestamp>,
    /// Which object, which condition, for how long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Objects not healthy yet, with what is missing.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub unhealthy: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_action: Option<String>,
}

impl GuardStatus {
    pub fn new(spec: GuardSpec) -> Self {
        GuardStatus {
            timeout: spec.timeout,
            on_failure: spec.on_failure,
            state: GuardState::Pending,
            started_at: None,
            finished_at: None,
            reason: None,
            unhealthy: BTreeMap::new(),
            rollback_action: None,
        }
    }

    pub fn of(record: &ActionRecord) -> Option<Self> {
        serde_json::from_value(record.extensions.get(GUARD_KEY)?.clone()).ok()
    }
}

pub struct Guards {
    pub restorer: Arc<Restorer>,
    pub metrics: Metrics,
    pub session_idle: Duration,
    pub leader: Arc<AtomicBool>,
    pub interval: Duration,
}

impl Guards {
    pub fn spawn(self) {
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(self.interval).await;
                if !self.leader.load(Ordering::Relaxed) {
                    continue;
                }
                if let Err(e) = self.tick().await {
                    tracing::warn!(error = %e, "guard pass");
                }
            }
        });
    }

    /// One pass over every guarded action.
    pub async fn tick(&self) -> Result<(), crate::store::StoreError> {
        let store = self.restorer.store();
        let records = store.list_actions_cached(None).await?;
        let annotated = store.guarded_snapshot_metas().await?;
        let mut by_action: BTreeMap<&str, Vec<&SnapshotMeta>> = BTreeMap::new();
        for m in &annotated {
            by_action.entry(m.action.as_str()).or_default().push(m);
        }
        for (record, _) in records {
            // A rollback restores objects with their guard annotations: a
            // guard on it would roll back the rollback, and so on.
            if record.origin == "rollback" {
                continue;
            }
            let status = GuardStatus::of(&record).or_else(|| {
                // Annotation guards: the longest timeout any change asked
                // for, of the owner's own changes only. A change by someone
                // else (joined through the action annotation) never guards
                // the owner's action: the guard reads and rolls back as the
                // owner, with rights its author may not have.
                let metas = by_action.get(record.id.as_str())?;
                let timeout = metas
                    .iter()
                    .filter(|m| m.user == record.owner)
                    .filter_map(|m| m.guard.as_deref())
                    .max_by_key(|g| parse_duration(g).unwrap_or_default())?;
                Some(GuardStatus::new(GuardSpec {
                    timeout: timeout.to_string(),
                    on_failure: OnFailure::Rollback,
                }))
            });
            let Some(status) = status else { continue };
            if status.state.is_final() {
                continue;
            }
            if let Err(e) = self.check(&record, status).await {
                tracing::warn!(action = %record.id, error = %e, "guard check");
            }
        }
        Ok(())
    }

    async fn save(
        &self,
        id: &ActionId,
        status: &GuardStatus,
    ) -> Result<(), crate::store::StoreError> {
        let value = serde_json::to_value(status).unwrap_or_default();
        modify(self.restorer.store(), id, |r| {
            r.extensions.insert(GUARD_KEY.into(), value.clone());
        })
        .await
        .map(|_| ())
    }

    async fn check(
        &self,
        record: &ActionRecord,
        mut status: GuardStatus,
    ) -> Result<(), RollbackError> {
        let now = Timestamp::now();
        let timeout = GuardSpec {
            timeout: status.timeout.clone(),
            on_failure: status.on_failure,
        }
        .validate()
        .map_err(|e| {
            RollbackError::Store(crate::store::StoreError::Corrupt {
                name: record.id.to_string(),
                reason: e,
            })
        })?;
        // Rolled back meanwhile (by hand, or by a rollback this guard started
        // before a restart): settle the guard from the record.
        if status.state == GuardState::Failed && status.on_failure == OnFailure::Rollback {
            match record.state {
                ActionState::RolledBack | ActionState::Cancelled => {
                    return self.finish(record, status, GuardState::RolledBack).await;
                }
                ActionState::RollbackFailed => {
                    return self
                        .finish(record, status, GuardState::RollbackFailed)
                        .await;
                }
                ActionState::RollingBack => return Ok(()),
                _ => return self.roll_back(record, status).await,
            }
        }
        if matches!(
            record.state,
            ActionState::RollingBack
                | ActionState::RolledBack
                | ActionState::RollbackFailed
                | ActionState::Cancelled
        ) {
            // Someone rolled it back by hand: nothing left to guard.
            return self.finish(record, status, GuardState::RolledBack).await;
        }
        let histories = self.restorer.histories(&record.id).await?;
        let last_change = self
            .last_change(&record.id)
            .await
            .unwrap_or(record.updated_at);
        let started = match record.state {
            ActionState::Completed => Some(record.completed_at.unwrap_or(record.updated_at)),
            ActionState::Open if record.origin != "explicit" => {
                let idle = jiff::SignedDuration::try_from(self.session_idle).unwrap_or_default();
                last_change.checked_add(idle).ok().filter(|t| *t <= now)
            }
            _ => None,
        };
        let Some(started) = started else {
            if status.state != GuardState::Pending {
                status.state = GuardState::Pending;
                self.save(&record.id, &status).await?;
            }
            return Ok(());
        };
        let caller = Caller {
            user: record.owner.clone(),
            groups: record.owner_groups.clone(),
        };
        let client = self.restorer.client_for(&caller, None)?;
        let mut unhealthy = BTreeMap::new();
        let mut failed = None;
        // Every object the action touched that exists now (deleted ones have no health).
        for h in &histories {
            let mut object = h.object.clone();
            object.subresource = None;
            let current = match crate::restore::dynamic::get(&client, &object).await {
                Ok(c) => c,
                Err(e) => {
                    unhealthy.insert(
                        object.to_string(),
                        format!("cannot be read: {}", crate::store::describe_kube_error(&e)),
                    );
                    continue;
                }
            };
            let Some(current) = current else { continue };
            match health(&object.group, &object.resource, &current) {
                Health::Healthy => {}
                Health::Progressing(why) => {
                    unhealthy.insert(object.to_string(), why);
                }
                Health::Failed(why) => {
                    failed = Some(format!("{object}: {why}"));
                    unhealthy.insert(object.to_string(), why);
                }
            }
        }
        let waited = now.duration_since(started).unsigned_abs();
        status.started_at = Some(started);
        if unhealthy.is_empty() {
            self.metrics.guards.with_label_values(&["healthy"]).inc();
            status.unhealthy.clear();
            return self.finish(record, status, GuardState::Healthy).await;
        }
        if failed.is_some() || waited >= timeout {
            let detail = unhealthy
                .iter()
                .map(|(o, why)| format!("{o}: {why}"))
                .collect::<Vec<_>>()
                .join("; ");
            status.reason = Some(match failed {
                Some(f) => format!("{f} (after {})", crate::config::format_duration(waited)),
                None => format!(
                    "not healthy within {}: {detail}",
                    crate::config::format_duration(timeout)
                ),
            });
            status.unhealthy = unhealthy;
            status.state = GuardState::Failed;
            status.finished_at = Some(now);
            self.metrics.guards.with_label_values(&["failed"]).inc();
            tracing::warn!(action = %record.id, reason = status.reason.as_deref().unwrap_or(""), "guard failed");
            self.save(&record.id, &status).await?;
            if status.on_failure == OnFailure::Rollback {
                return self.roll_back(record, status).await;
            }
            return Ok(());
        }
        if status.state != GuardState::Watching || status.unhealthy != unhealthy {
            status.state = GuardState::Watching;
            status.unhealthy = unhealthy;
            self.save(&record.id, &status).await?;
        }
        Ok(())
    }

    async fn last_change(&self, id: &ActionId) -> Option<Timestamp> {
        let metas = self.restorer.store().list_snapshots(id).await.ok()?;
        metas.iter().map(|m| m.timestamp).max()
    }

    async fn roll_back(
        &self,
        record: &ActionRecord,
        mut status: GuardStatus,
    ) -> Result<(), RollbackError> {
        let caller = Caller {
            user: record.owner.clone(),
            groups: record.owner_groups.clone(),
        };
        let params = Params {
            dry_run: false,
            // Never overwrite someone else's later change automatically.
            force: false,
            failure_policy: self.restorer.config().failure_policy,
            recreate: false,
        };
        let reason = status.reason.clone();
        let result = self
            .restorer
            .rollback(&record.id, Trigger::Guard, params, &caller, reason)
            .await;
        let state = match &result {
            Ok(report) => {
                status.rollback_action = report.rollback_action.clone();
                if report.state == ActionState::RolledBack.as_str() {
                    GuardState::RolledBack
                } else {
                    GuardState::RollbackFailed
                }
            }
            Err(RollbackError::Running(_)) => return Ok(()),
            Err(e) => {
                status.reason = Some(format!(
                    "{}; the rollback failed: {e}",
                    status.reason.unwrap_or_default()
                ));
                GuardState::RollbackFailed
            }
        };
        self.metrics
            .guards
            .with_label_values(&[state.as_str()])
            .inc();
        self.finish(record, status, state).await
    }

    async fn finish(
        &self,
        record: &ActionRecord,
        mut status: GuardStatus,
        state: GuardState,
    ) -> Result<(), RollbackError> {
        status.state = state;
        status.finished_at.get_or_insert_with(Timestamp::now);
        self.save(&record.id, &status).await?;
        tracing::info!(action = %record.id, guard = state.as_str(), "guard finished");
        Ok(())
    }
}
