//! Running a rollback: single flight through the action record, planning
//! against the objects as the caller sees them, execution in dependency waves
//! with the failure policy, progress kept in the record so a restarted
//! snapshotter can finish, and the rollback recorded as an action of its own.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::{FailurePolicy, RollbackConfig};
use crate::metrics::Metrics;
use crate::restore::dynamic;
use crate::restore::plan::{self, Action, ObjectHistory, Outcome, RestoreOp, Step, Target};
use crate::restore::report::{ObjectResult, Report, Trigger, counts};
use crate::store::actions::{
    ActionRecord, ActionState, PRUNING_KEY, ROLLBACK_REQUESTED_BY_KEY, ROLLBACK_REQUESTED_KEY,
};
use crate::store::kube_store::{KubeStore, LoadedAction};
use crate::store::model::{
    ACTION_ANNOTATION, ActionId, LAST_APPLIED_ANNOTATION, ObjectRef, Operation, SnapshotMeta,
};
use crate::store::{StoreError, describe_kube_error};

/// Objects restored at the same time within one dependency wave.
/// Progress is written to the action record after this many objects.
const PROGRESS_BATCH: usize = 50;
/// A rolling-back record whose heartbeat is older than this is resumed.
pub const STALE_AFTER: Duration = Duration::from_secs(15);
const HEARTBEAT_EVERY: Duration = Duration::from_secs(3);
const PROGRESS_KEY: &str = "rollback";

/// The authenticated caller a rollback acts as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caller {
    pub user: String,
    #[serde(default)]
    pub groups: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Params {
    pub dry_run: bool,
    pub force: bool,
    pub failure_policy: FailurePolicy,
    /// Restore objects whose replace hits an immutable field by delete+create.
    pub recreate: bool,
}

/// Kept in the action record while a rollback runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Progress {
    rollback_action: ActionId,
    trigger: Trigger,
    params: Params,
    caller: Caller,
    started_at: Timestamp,
    heartbeat: Timestamp,
    instance: String,
    /// Why an automatic rollback happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    /// Objects in the rollback.
    #[serde(default)]
    total: usize,
    #[serde(default)]
    results: Vec<ObjectResult>,
    /// The action was cancelled before this rollback: a rollback that
    /// finds it restored leaves it `cancelled`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    was_cancelled: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum RollbackError {
    #[error("action {0} not found")]
    NotFound(ActionId),
    /// Claimed by a deletion (a DELETE, retention): what is left of it is
    /// not a whole action to restore.
    #[error(
        "action {0} is being deleted, so it cannot be rolled back (a DELETE that stopped part way is finished by DELETE-ing it again)"
    )]
    BeingDeleted(ActionId),
    #[error(
        "action {id} last changed {age} ago, outside the rollback window of {window}; use force=true to roll back anyway"
    )]
    TooOld {
        id: ActionId,
        age: String,
        window: String,
    },
    #[error("{} object(s) changed by someone else since the action began: {}; use force=true to overwrite", .0.len(), .0.join(", "))]
    Conflict(Vec<String>),
    #[error(
        "{} may not read any of this action's {} object(s), so cannot restore them: {}; nothing was changed",
        .user, .objects.len(), .objects.join("; ")
    )]
    Forbidden { user: String, objects: Vec<String> },
    /// The API server refused snapback itself the right to act as the
    /// caller (its ClusterRole lacks `impersonate` on what the caller is).
    #[error(
        "snapback may not act as {} (its own ClusterRole needs the impersonate verb on users, groups and serviceaccounts): {}; nothing was changed",
        .user, .objects.join("; ")
    )]
    CannotImpersonate { user: String, objects: Vec<String> },
    #[error("a rollback of action {0} is already running")]
    Running(ActionId),
    #[error("action {id} is {state}; only an open action can be cancelled")]
    NotOpen { id: ActionId, state: ActionState },
    #[error(
        "{} stored snapshot object(s) of this action cannot be read ({}); which objects they are of is unknown, so a rollback could restore a state from the middle of the action; use force=true to restore from the snapshots that can be read",
        .0.len(), .0.join("; ")
    )]
    Damaged(Vec<String>),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("building the impersonating client: {0}")]
    Client(String),
    #[error(
        "snapback is shutting down: the rollback of action {0} stopped after the objects in flight and is resumed by the next snapshotter (GET the action for its progress)"
    )]
    Interrupted(ActionId),
}

pub struct Restorer {
    store: Arc<KubeStore>,
    base: kube::Config,
    impersonate: bool,
    cfg: RollbackConfig,
    metrics: Metrics,
    instance: String,
    running: Mutex<HashSet<ActionId>>,
    /// snapback's own client, for Events on restored objects.
    events: Option<kube::Client>,
    /// Set on shutdown: running rollbacks stop after the objects in flight
    /// and stay `rolling-back`, with their progress, for the next
    /// snapshotter to finish (as after a crash, without failing anything).
    draining: std::sync::atomic::AtomicBool,
    /// Owner kinds resolved through discovery (a rollback recreating many
    /// objects with owners would otherwise ask once per reference).
    owner_kinds: OwnerKinds,
}

/// Served kinds found through discovery, for [`OWNER_KIND_TTL`]. Only kinds
/// found: one not served may be served a moment later (a definition this
/// rollback restores).
type OwnerKinds = Mutex<
    HashMap<
        kube::core::GroupVersionKind,
        (
            Instant,
            kube::discovery::ApiResource,
            kube::discovery::ApiCapabilities,
        ),
    >,
>;

const OWNER_KIND_TTL: Duration = Duration::from_secs(60);

struct RunningGuard<'a>(&'a Restorer, ActionId);

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        lock(&self.0.running).remove(&self.1);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Restorer {
    /// `impersonate`: make every read and write of a rollback as the caller
    /// (false only under `--auth=none`).
    pub fn new(
        store: Arc<KubeStore>,
        base: kube::Config,
        impersonate: bool,
        cfg: RollbackConfig,
        metrics: Metrics,
    ) -> Self {
        Restorer {
            store,
            base,
            impersonate,
            cfg,
            metrics,
            instance: format!("{:016x}", rand::random::<u64>()),
            running: Mutex::default(),
            events: None,
            draining: std::sync::atomic::AtomicBool::new(false),
            owner_kinds: Mutex::default(),
        }
    }

    /// This snapshotter's instance id (in the records of its rollbacks).
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// A rollback of `id` is planning or running in this process.
    pub fn is_running(&self, id: &ActionId) -> bool {
        lock(&self.running).contains(id)
    }

    /// Shutting down: rollbacks stop taking new objects (see `draining`).
    /// Waits, at most `limit`, until none is running, and says whether
    /// that happened.
    pub async fn drain(&self, limit: Duration) -> bool {
        self.draining.store(true, Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + limit;
        while !lock(&self.running).is_empty() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        true
    }

    /// Record Events on restored objects with this (snapback's own) client.
    pub fn with_events(mut self, client: kube::Client) -> Self {
        self.events = Some(client);
        self
    }

    pub fn store(&self) -> &Arc<KubeStore> {
        &self.store
    }

    pub fn config(&self) -> &RollbackConfig {
        &self.cfg
    }

    /// A client acting as `caller`; restore writes also carry the rollback
    /// action in the impersonation extra, so admission attributes them.
    pub fn client_for(
        &self,
        caller: &Caller,
        action: Option<&ActionId>,
    ) -> Result<kube::Client, RollbackError> {
        let mut cfg = self.base.clone();
        if self.impersonate {
            cfg.auth_info.impersonate = Some(caller.user.clone());
            cfg.auth_info.impersonate_groups =
                Some(caller.groups.clone()).filter(|g| !g.is_empty());
            cfg.auth_info.impersonate_user_extra = action
                .map(|a| HashMap::from([(ACTION_ANNOTATION.to_string(), vec![a.to_string()])]));
        }
        kube::Client::try_from(cfg).map_err(|e| RollbackError::Client(e.to_string()))
    }

    /// The histories of an action's objects.
    pub async fn histories(&self, id: &ActionId) -> Result<Vec<ObjectHistory>, RollbackError> {
        let loaded = self.store.load_action(id).await?;
        Ok(plan::histories(loaded.snapshots))
    }

    /// Current state of every object (bounded concurrency), as the caller sees it.
    pub async fn current_states(
        &self,
        client: &kube::Client,
        histories: &[ObjectHistory],
    ) -> Vec<Result<Option<Value>, String>> {
        futures::stream::iter(0..histories.len())
            .map(|i| async move {
                current_of(client, &histories[i])
                    .await
                    .map_err(|e| format!("reading the current object: {}", describe_kube_error(&e)))
            })
            .buffered(self.cfg.parallelism.max(1) * 2)
            .collect()
            .await
    }

    /// Each object's current state (as the caller sees it) and the step
    /// that restores it: what a rollback and a resumed one both plan from.
    async fn plan_steps(
        &self,
        client: &kube::Client,
        histories: &mut [ObjectHistory],
        force: bool,
    ) -> (Vec<Result<Option<Value>, String>>, Vec<Step>) {
        let current = self.current_states(client, histories).await;
        accept_other_versions(client, histories, &current).await;
        plan::accept_recreated(histories, &current);
        let mut steps = Self::decide_all(histories, &current, force);
        settle_under_changed_definitions(client, histories, &current, &mut steps).await;
        (current, steps)
    }

    fn decide_all(
        histories: &[ObjectHistory],
        current: &[Result<Option<Value>, String>],
        force: bool,
    ) -> Vec<Step> {
        histories
            .iter()
            .zip(current)
            .map(|(h, c)| match c {
                Ok(c) => plan::decide(h, c.as_ref(), force),
                // Unreadable now: the operation the action's own changes
                // call for (it deleted the object: a create).
                Err(e) => Step {
                    operation: match h.target {
                        Target::Absent { .. } => RestoreOp::Delete,
                        Target::Present(_) if h.accepted.contains(plan::ABSENT) => {
                            RestoreOp::Create
                        }
                        _ => RestoreOp::Replace,
                    },
                    action: Action::None(Outcome::Failed, e.clone()),
                },
            })
            .collect()
    }

    /// A Namespace DELETE of this action that a later admission step
    /// refused (another webhook) is a phantom: restoring it would recreate
    /// a namespace someone else deleted later. Told apart by the records:
    /// another action noted a deletion of the same namespace (same uid)
    /// after this one, so the namespace was still there then. (Deletes of
    /// a namespace already being deleted are not noted.)
    /// Deleting a namespace the action created deletes everything in it,
    /// and deleting a definition deletes its custom resources: also what
    /// others created there after the action (another user's ConfigMap in
    /// the new namespace, a later release's objects). Those are changes by
    /// someone else since the action, like any other, so the deletion is a
    /// conflict naming them (SPEC §4), unless `force`. "Created by others"
    /// is what snapback captured being created there in another action
    /// and still exists (what controllers make is not captured, and is
    /// theirs to remake).
    async fn refuse_cascades_over_others(
        &self,
        client: &kube::Client,
        id: &ActionId,
        histories: &[ObjectHistory],
        steps: &mut [Step],
    ) {
        let containers: Vec<usize> = (0..steps.len())
            .filter(|&i| {
                matches!(steps[i].action, Action::Delete { .. })
                    && cascade_scope(&histories[i].object).is_some()
            })
            .collect();
        if containers.is_empty() {
            return;
        }
        let metas = match self.store.all_snapshot_metas().await {
            Ok(m) => m,
            Err(e) => {
                for i in containers {
                    steps[i].action = Action::None(
                        Outcome::Failed,
                        format!(
                            "cannot tell whether others created objects in it since the action (reading the snapshots: {e}); deleting it would delete those too"
                        ),
                    );
                }
                return;
            }
        };
        let ours: HashSet<_> = histories.iter().map(|h| h.object.object_key()).collect();
        for i in containers {
            let Some(scope) = cascade_scope(&histories[i].object) else {
                continue;
            };
            let mut seen = HashSet::new();
            let candidates: Vec<&SnapshotMeta> = metas
                .iter()
                .filter(|m| {
                    m.operation == Operation::Create
                        && m.action != *id
                        && m.object.subresource.is_none()
                        && scope.holds(&m.object)
                        && !ours.contains(&m.object.object_key())
                        && seen.insert(m.object.object_key())
                })
                .collect();
            let mut others = Vec::new();
            for m in candidates {
                let mut object = m.object.clone();
                object.kind.clear();
                match dynamic::get(client, &object).await {
                    Ok(None) => {}
                    Ok(Some(_)) => {
                        others.push(format!("{} (action {})", describe_ref(&m.object), m.action))
                    }
                    Err(e) => others.push(format!(
                        "{} (action {}; could not be read: {})",
                        describe_ref(&m.object),
                        m.action,
                        describe_kube_error(&e)
                    )),
                }
            }
            if !others.is_empty() {
                steps[i].action = Action::None(
                    Outcome::Conflict,
                    format!(
                        "deleting it would also delete what others created in it since the action: {}; roll those actions back first, or use force=true",
                        others.join(", ")
                    ),
                );
            }
        }
    }

    async fn leave_refused_namespace_deletions(
        &self,
        record: &ActionRecord,
        histories: &[ObjectHistory],
        steps: &mut [Step],
    ) {
        for (h, step) in histories.iter().zip(steps.iter_mut()) {
            let Some(ours) = record.deleted_namespaces.get(&h.object.name) else {
                continue;
            };
            if !(h.object.group.is_empty()
                && h.object.resource == "namespaces"
                && matches!(
                    step.action,
                    Action::Create(_) | Action::CreateWhenGone { .. }
                ))
            {
                continue;
            }
            let Ok(notes) = self
                .store
                .namespace_deletions(&h.object.name, &ours.uid)
                .await
            else {
                continue;
            };
            if let Some((later, _)) = notes
                .iter()
                .filter(|(id, n)| *id != record.id && n.at > ours.at)
                .min_by_key(|(_, n)| n.at)
            {
                step.action = Action::None(
                    Outcome::Unchanged,
                    format!(
                        "its deletion in this action was refused by a later admission step: the namespace was still there when action {later} deleted it"
                    ),
                );
            }
        }
    }

    /// What earlier rollbacks of this action wrote is no later change by
    /// someone else: their states join each object's accepted ones (a
    /// retried rollback finds what the failed one put back, or the
    /// namespace it recreated, without a conflict).
    async fn accept_earlier_rollbacks(
        &self,
        record: &ActionRecord,
        histories: &mut [ObjectHistory],
    ) {
        let rollbacks_of = |r: &ActionRecord| -> Vec<ActionId> {
            r.rollbacks
                .iter()
                .filter_map(|r| r.get("rollbackAction")?.as_str())
                .filter_map(|id| ActionId::parse(id).ok())
                .collect()
        };
        let earlier = rollbacks_of(record);
        // Redos (rollbacks of those rollbacks) made the action's objects
        // again: what they created is the action's object under a new uid.
        let mut redos = Vec::new();
        for rollback in &earlier {
            if let Ok(Some((r, _))) = self.store.get_action(rollback).await {
                redos.extend(rollbacks_of(&r));
            }
        }
        // When this action is itself a rollback (undoing it is a redo), the
        // other rollbacks of the same action restored the same prior states:
        // an object one of them created again (undo, redo, undo, then this
        // redo again) is this action's object under a new uid.
        if let Some(origin) = &record.rollback_of
            && let Ok(Some((o, _))) = self.store.get_action(origin).await
        {
            redos.extend(
                rollbacks_of(&o)
                    .into_iter()
                    .filter(|id| *id != record.id && !earlier.contains(id)),
            );
        }
        for (rollback, redo) in earlier
            .into_iter()
            .map(|id| (id, false))
            .chain(redos.into_iter().map(|id| (id, true)))
        {
            let Ok(loaded) = self.store.load_action(&rollback).await else {
                continue;
            };
            for l in loaded.snapshots {
                let o = &l.meta.object;
                let Some(h) = histories.iter_mut().find(|h| {
                    h.object.group == o.group
                        && h.object.resource == o.resource
                        && h.object.namespace == o.namespace
                        && h.object.name == o.name
                        && h.object.subresource == o.subresource
                }) else {
                    continue;
                };
                if redo
                    && l.meta.operation == crate::store::model::Operation::Create
                    && let Target::Absent { created_uids, .. } = &mut h.target
                    && let Some(uid) = &l.meta.uid
                {
                    created_uids.push(uid.clone());
                }
                match (l.meta.operation, &l.meta.after_fingerprint) {
                    (crate::store::model::Operation::Delete, _) => {
                        h.accepted.insert(plan::ABSENT.to_string());
                    }
                    (_, Some(fp)) => {
                        h.accepted.insert(fp.clone());
                    }
                    _ => {}
                }
            }
        }
    }

    /// The API server's own dry run (`dryRun=All`, as the caller) of each
    /// planned write, so that a dry run reports what the rollback would be
    /// refused (permissions, a field that cannot change, admission
    /// policies) instead of "planned". Creates in a namespace the plan
    /// itself creates, and objects of a kind the API server does not serve
    /// yet (a CRD the plan recreates) cannot be tried. Per step: None where
    /// the server accepted or nothing was tried.
    async fn server_dry_run(
        &self,
        client: &kube::Client,
        histories: &[ObjectHistory],
        steps: &[Step],
        recreate: bool,
    ) -> Vec<Option<DryRunVerdict>> {
        let created_namespaces: HashSet<&str> = histories
            .iter()
            .zip(steps)
            .filter(|(h, s)| {
                h.object.group.is_empty()
                    && h.object.resource == "namespaces"
                    && matches!(s.action, Action::Create(_) | Action::CreateWhenGone { .. })
            })
            .map(|(h, _)| h.object.name.as_str())
            .collect();
        let created_namespaces = &created_namespaces;
        // Definitions the plan writes (creates or restores): their kinds may
        // be served only once the plan has run.
        let defined: HashSet<&str> = histories
            .iter()
            .zip(steps)
            .filter(|(h, s)| {
                h.object.group == "apiextensions.k8s.io"
                    && h.object.resource == "customresourcedefinitions"
                    && !matches!(s.action, Action::None(..) | Action::Delete { .. })
            })
            .map(|(h, _)| h.object.name.as_str())
            .collect();
        let defined = &defined;
        futures::stream::iter(0..steps.len())
            .map(|i| {
                let (h, s) = (&histories[i], &steps[i]);
                let in_new_namespace = h
                    .object
                    .namespace
                    .as_deref()
                    .is_some_and(|n| created_namespaces.contains(n));
                async move {
                    let result = match &s.action {
                        Action::Create(body) if !in_new_namespace => {
                            create_restoring(client, &h.object, body, true)
                                .await
                                .map(|_| ())
                        }
                        Action::Replace(body) => {
                            dynamic::replace_with(client, &h.object, body, true)
                                .await
                                .map(|_| ())
                        }
                        Action::ReplaceScale(body) => restore_scale(client, h, body, true).await,
                        Action::Delete {
                            uid,
                            resource_version,
                        } => {
                            dynamic::delete_with(
                                client,
                                &h.object,
                                uid,
                                Some(resource_version),
                                true,
                            )
                            .await
                        }
                        _ => return None,
                    };
                    match result {
                        Ok(()) => None,
                        Err(kube::Error::Api(e))
                            if e.code == 422 && immutable_refusal(&e.message) =>
                        {
                            Some(if recreate && matches!(s.action, Action::Replace(_)) {
                                DryRunVerdict::Recreates(format!(
                                    "would recreate (delete and create) because a field is immutable: {}",
                                    e.message
                                ))
                            } else {
                                DryRunVerdict::Fails(format!(
                                    "would fail: {} (Invalid, 422). Use recreate=true to restore it by delete and create",
                                    e.message
                                ))
                            })
                        }
                        // A kind nothing serves, and no definition in the
                        // plan that would bring it back.
                        Err(ref e @ kube::Error::Api(ref status))
                            if crate::store::not_served(status)
                                && !defined.contains(
                                    format!("{}.{}", h.object.resource, h.object.group)
                                        .as_str(),
                                ) =>
                        {
                            Some(DryRunVerdict::Fails(format!(
                                "would fail: {}",
                                describe_kube_error(e)
                            )))
                        }
                        // Not served yet (its definition comes back first),
                        // or changed or gone since it was read: the rollback
                        // would look at it again.
                        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => None,
                        Err(e) => Some(DryRunVerdict::Fails(format!(
                            "would fail: {}",
                            describe_kube_error(&e)
                        ))),
                    }
                }
            })
            .buffered(self.cfg.parallelism.max(1))
            .collect()
            .await
    }

    /// Write `edit` of the action record with its resourceVersion as
    /// precondition (retention claims a record the same way before pruning
    /// it). When the record changed meanwhile for another reason (a session
    /// completed, a guard's state, maintenance, changes joining the action),
    /// read it again and retry; a rollback or a deletion under way stops it.
    /// Returns the record as read last (without the edit) and the new
    /// resourceVersion.
    async fn write_claim(
        &self,
        id: &ActionId,
        mut record: ActionRecord,
        mut rv: String,
        edit: impl Fn(&mut ActionRecord),
    ) -> Result<(ActionRecord, String), RollbackError> {
        for attempt in 0..8 {
            if attempt > 0 {
                // Writers of one record come in bursts: spread out, as
                // `modify` does.
                tokio::time::sleep(Duration::from_millis(20 + rand::random::<u64>() % 80)).await;
            }
            let mut claimed = record.clone();
            edit(&mut claimed);
            match self.store.update_action(&claimed, &rv).await {
                Ok(new_rv) => return Ok((record, new_rv)),
                Err(StoreError::Conflict(_)) => {
                    let (fresh, fresh_rv) = self
                        .store
                        .get_action(id)
                        .await?
                        .ok_or_else(|| RollbackError::NotFound(id.clone()))?;
                    if fresh.extensions.contains_key(PRUNING_KEY) {
                        return Err(RollbackError::BeingDeleted(id.clone()));
                    }
                    if fresh.state == ActionState::RollingBack {
                        return Err(RollbackError::Running(id.clone()));
                    }
                    (record, rv) = (fresh, fresh_rv);
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(RollbackError::Running(id.clone()))
    }

    /// Note on the record that a rollback was asked for (and by which
    /// snapshotter): the record as written and its new version.
    async fn mark_requested(
        &self,
        id: &ActionId,
        record: ActionRecord,
        rv: String,
        at: Timestamp,
    ) -> Result<(ActionRecord, String), RollbackError> {
        let note = |r: &mut ActionRecord| {
            r.extensions
                .insert(ROLLBACK_REQUESTED_KEY.into(), Value::from(at.to_string()));
            r.extensions.insert(
                ROLLBACK_REQUESTED_BY_KEY.into(),
                Value::from(self.instance.clone()),
            );
        };
        let (mut record, rv) = self.write_claim(id, record, rv, note).await?;
        note(&mut record);
        Ok((record, rv))
    }

    /// Roll an action back (or cancel it).
    #[tracing::instrument(skip_all, fields(action = %id, trigger = trigger.as_str(), user = %caller.user, dry_run = params.dry_run, outcome))]
    pub async fn rollback(
        &self,
        id: &ActionId,
        trigger: Trigger,
        params: Params,
        caller: &Caller,
        reason: Option<String>,
    ) -> Result<Report, RollbackError> {
        let dry_run = params.dry_run;
        let result = self
            .rollback_once(id, trigger, params, caller, reason)
            .await;
        if !dry_run
            && let Err(
                RollbackError::Conflict(_)
                | RollbackError::Forbidden { .. }
                | RollbackError::CannotImpersonate { .. }
                | RollbackError::Damaged(_)
                | RollbackError::Client(_)
                | RollbackError::Store(_),
            ) = &result
        {
            self.withdraw_request(id).await;
        }
        result
    }

    /// A rollback refused after it noted its request on the record (a
    /// conflict, a caller who may read nothing): the note goes, so that the
    /// other snapshotters do not take the action for one still planning
    /// (and refuse its deletion) for the next minute. Only this
    /// snapshotter's own note, and not while it runs another rollback of
    /// the action. Best effort: the note expires anyway.
    async fn withdraw_request(&self, id: &ActionId) {
        for _ in 0..4 {
            if lock(&self.running).contains(id) {
                return;
            }
            let Ok(Some((mut record, rv))) = self.store.get_action(id).await else {
                return;
            };
            let ours = record
                .extensions
                .get(ROLLBACK_REQUESTED_BY_KEY)
                .and_then(Value::as_str)
                == Some(self.instance.as_str());
            if !ours || record.state == ActionState::RollingBack {
                return;
            }
            record.extensions.remove(ROLLBACK_REQUESTED_KEY);
            record.extensions.remove(ROLLBACK_REQUESTED_BY_KEY);
            match self.store.update_action(&record, &rv).await {
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => {
                    tracing::debug!(action = %id, error = %e, "withdrawing the rollback request note");
                    return;
                }
                Ok(_) => return,
            }
        }
    }

    async fn rollback_once(
        &self,
        id: &ActionId,
        trigger: Trigger,
        params: Params,
        caller: &Caller,
        reason: Option<String>,
    ) -> Result<Report, RollbackError> {
        let started = Instant::now();
        let started_at = Timestamp::now();
        let (record, rv) = self
            .store
            .get_action(id)
            .await?
            .ok_or_else(|| RollbackError::NotFound(id.clone()))?;
        if record.state == ActionState::RollingBack || lock(&self.running).contains(id) {
            return Err(RollbackError::Running(id.clone()));
        }
        // Retention is deleting it.
        if record.extensions.contains_key(PRUNING_KEY) {
            return Err(RollbackError::BeingDeleted(id.clone()));
        }

        if trigger == Trigger::Cancel && record.state != ActionState::Open {
            return Err(RollbackError::NotOpen {
                id: id.clone(),
                state: record.state,
            });
        }
        let LoadedAction {
            snapshots: loaded,
            damaged,
        } = self.store.load_action(id).await?;
        // Without knowing which objects those snapshots are of, an object's
        // earliest snapshot may be among them, and a later one would restore
        // a state between the action's changes.
        if !damaged.is_empty() && !params.force {
            return Err(RollbackError::Damaged(damaged));
        }
        let last_change = loaded
            .iter()
            .map(|l| l.meta.timestamp)
            .max()
            .unwrap_or(record.created_at);
        let age = Timestamp::now().duration_since(last_change);
        let window =
            jiff::SignedDuration::try_from(self.cfg.window).unwrap_or(jiff::SignedDuration::MAX);
        // An action without changes has nothing to restore: closing it
        // (cancel) is never too late.
        if !params.force && age > window && !loaded.is_empty() {
            return Err(RollbackError::TooOld {
                id: id.clone(),
                age: crate::config::format_duration(age.unsigned_abs()),
                window: crate::config::format_duration(self.cfg.window),
            });
        }
        // Claim the action: one rollback at a time, across replicas too
        // (the record's state and progress, below), and in this process
        // from now on, so that a DELETE of the action is refused while it
        // plans (it is marked `rolling-back` only once planned).
        let _guard = if params.dry_run {
            None
        } else {
            let mut running = lock(&self.running);
            if !running.insert(id.clone()) {
                return Err(RollbackError::Running(id.clone()));
            }
            Some(RunningGuard(self, id.clone()))
        };
        // Keep retention off it while this rollback plans. Retention claims
        // a record the same way before it deletes anything: whichever is
        // first, the other sees it.
        let (record, rv) = if params.dry_run {
            (record, rv)
        } else {
            self.mark_requested(id, record, rv, started_at).await?
        };
        // The garbage collector deletes what a deleted object owned a moment
        // after it, and those deletes join the action: a rollback asked for
        // right after a deletion would plan without them, recreate the
        // owner under a new uid, and the collector would then delete the
        // dependents still pointing at the old one.
        let newest_delete = loaded
            .iter()
            .filter(|l| l.meta.operation == Operation::Delete)
            .map(|l| l.meta.timestamp)
            .max();
        let mut histories = plan::histories(loaded);
        let rollback_id = self
            .free_rollback_id(id, record.rollbacks.len() as u32 + 1)
            .await?;
        let client = self.client_for(caller, Some(&rollback_id))?;
        self.accept_earlier_rollbacks(&record, &mut histories).await;
        let collecting = match newest_delete {
            Some(t) => {
                let age = Timestamp::now().duration_since(t).unsigned_abs();
                match GC_SETTLE.checked_sub(age) {
                    Some(rest) if !rest.is_zero() => {
                        tokio::time::sleep(rest).await;
                        true
                    }
                    _ => false,
                }
            }
            None => false,
        };
        if wait_for_emptying_namespaces(&client, &histories).await || collecting {
            // The namespace controller's deletes made meanwhile joined the
            // action: plan with them (once the last queued ones are written).
            tokio::time::sleep(crate::config::MAX_BATCH_WINDOW).await;
            let LoadedAction { snapshots, damaged } = self.store.load_action(id).await?;
            if !damaged.is_empty() && !params.force {
                return Err(RollbackError::Damaged(damaged));
            }
            histories = plan::histories(snapshots);
            self.accept_earlier_rollbacks(&record, &mut histories).await;
        }
        let (current, mut steps) = self.plan_steps(&client, &mut histories, params.force).await;
        // The caller may not even read any of the objects: the rollback is
        // theirs to ask for, the objects are not theirs to restore. Refused
        // before anything is written or recorded (a rollback that could
        // only fail must not turn a rolled-back action into rollback-failed).
        // With some readable, the rollback goes ahead and the others fail
        // per the failure policy (best effort restores what the caller may).
        let unreadable: Vec<String> = histories
            .iter()
            .zip(&current)
            .filter_map(|(h, c)| match c {
                Err(e) if e.contains("(Forbidden, 403)") => Some(format!(
                    "{} ({})",
                    ObjectResult::new(h, RestoreOp::Replace, Outcome::Failed, String::new())
                        .display_name(),
                    e.trim_start_matches("reading the current object: ")
                )),
                _ => None,
            })
            .collect();
        if !unreadable.is_empty() && unreadable.len() == histories.len() {
            tracing::Span::current().record("outcome", "forbidden");
            if unreadable.iter().all(|e| e.contains("cannot impersonate")) {
                return Err(RollbackError::CannotImpersonate {
                    user: caller.user.clone(),
                    objects: unreadable,
                });
            }
            return Err(RollbackError::Forbidden {
                user: caller.user.clone(),
                objects: unreadable,
            });
        }
        self.leave_refused_namespace_deletions(&record, &histories, &mut steps)
            .await;
        if !params.force {
            self.refuse_cascades_over_others(&client, id, &histories, &mut steps)
                .await;
        }
        let conflicts: Vec<String> = histories
            .iter()
            .zip(&steps)
            .filter_map(|(h, s)| match &s.action {
                Action::None(Outcome::Conflict, message) => Some((h, message)),
                _ => None,
            })
            .map(|(h, message)| {
                let name =
                    ObjectResult::new(h, RestoreOp::Replace, Outcome::Conflict, String::new())
                        .display_name();
                // Not "after the action": say what it was.
                if message.contains("during the action") {
                    format!("{name} (changed by someone else during the action)")
                } else if message.contains("which scaled it") {
                    format!("{name} (scaled by someone else since the action scaled it)")
                } else if let Some(list) = message
                    .split_once("what others created in it since the action: ")
                    .and_then(|(_, rest)| rest.split_once("; roll those"))
                    .map(|(list, _)| list)
                {
                    format!(
                        "{name} (deleting it would delete what others created in it since: {list})"
                    )
                } else {
                    name
                }
            })
            .collect();
        if !conflicts.is_empty() {
            self.metrics.rollback_conflicts.inc();
            tracing::Span::current().record("outcome", "conflict");
            return Err(RollbackError::Conflict(conflicts));
        }
        if params.dry_run {
            let refusals = self
                .server_dry_run(&client, &histories, &steps, params.recreate)
                .await;
            let results = histories
                .iter()
                .zip(&steps)
                .zip(&current)
                .zip(refusals)
                .map(|(((h, s), c), verdict)| match verdict {
                    Some(DryRunVerdict::Fails(why)) => {
                        ObjectResult::new(h, s.operation, Outcome::Failed, why)
                    }
                    Some(DryRunVerdict::Recreates(how)) => {
                        let mut r = dry_run_result(h, s, c);
                        r.message = how;
                        r
                    }
                    None => dry_run_result(h, s, c),
                })
                .collect::<Vec<_>>();
            let mut results = results;
            sort_in_restore_order(&mut results);
            tracing::Span::current().record("outcome", "dry_run");
            return Ok(Report {
                action: id.to_string(),
                rollback_action: None,
                trigger,
                dry_run: true,
                state: record.state.to_string(),
                started_at,
                finished_at: Timestamp::now(),
                user: caller.user.clone(),
                reason,
                counts: counts(&results),
                results,
            });
        }

        let progress = Progress {
            rollback_action: rollback_id.clone(),
            trigger,
            params,
            caller: caller.clone(),
            started_at,
            heartbeat: started_at,
            instance: self.instance.clone(),
            reason,
            total: histories.len(),
            results: vec![],
            was_cancelled: record.state == ActionState::Cancelled,
        };
        // Marked `rolling-back` (see `write_claim`: only a rollback or a
        // deletion under way stops this one now).
        let (record, _) = self
            .write_claim(id, record, rv, |claimed| {
                claimed.state = ActionState::RollingBack;
                claimed.updated_at = started_at;
                claimed.extensions.insert(
                    PROGRESS_KEY.into(),
                    serde_json::to_value(&progress).unwrap_or(Value::Null),
                );
            })
            .await?;
        let report = self
            .execute(id, &record, progress, histories, steps, &client)
            .await?;
        self.observe(&report, started.elapsed());
        tracing::Span::current().record("outcome", report.state.as_str());
        Ok(report)
    }

    /// The id of the action's next rollback: `<id>-rollback-<n>`, or the
    /// next free number when an action of another origin already has that
    /// id (made before such ids were reserved): a rollback is always
    /// recorded as a new action, never into someone else's.
    async fn free_rollback_id(&self, id: &ActionId, n: u32) -> Result<ActionId, RollbackError> {
        let mut candidate = id.rollback_id(n);
        for next in n + 1..n + 100 {
            match self.store.get_action(&candidate).await? {
                Some((r, _)) if r.rollback_of.as_ref() != Some(id) => {
                    candidate = id.rollback_id(next);
                }
                _ => break,
            }
        }
        Ok(candidate)
    }

    fn observe(&self, report: &Report, elapsed: Duration) {
        let counts = counts(&report.results);
        tracing::info!(
            action = %report.action,
            rollback_action = report.rollback_action.as_deref().unwrap_or(""),
            trigger = report.trigger.as_str(),
            user = %report.user,
            state = %report.state,
            counts = %serde_json::to_string(&counts).unwrap_or_default(),
            seconds = elapsed.as_secs_f64(),
            "rollback finished"
        );
        self.metrics
            .rollbacks
            .with_label_values(&[report.trigger.as_str(), &report.state])
            .inc();
        self.metrics
            .rollback_duration
            .observe(elapsed.as_secs_f64());
        for r in &report.results {
            self.metrics
                .objects_restored
                .with_label_values(&[r.operation.as_str(), r.outcome.as_str()])
                .inc();
        }
    }

    /// Execute a claimed rollback to the end and record it.
    async fn execute(
        &self,
        id: &ActionId,
        record: &ActionRecord,
        progress: Progress,
        histories: Vec<ObjectHistory>,
        steps: Vec<Step>,
        client: &kube::Client,
    ) -> Result<Report, RollbackError> {
        let mut rollback_record = ActionRecord::new(
            progress.rollback_action.clone(),
            "rollback",
            &progress.caller.user,
            Timestamp::now(),
        );
        rollback_record.rollback_of = Some(id.clone());
        rollback_record.owner_groups = progress.caller.groups.clone();
        rollback_record.description = Some(format!(
            "{} of {id} ({})",
            if progress.trigger == Trigger::Cancel {
                "cancel"
            } else {
                "rollback"
            },
            progress.trigger.as_str()
        ));
        if let Err(e) = self.store.create_action(&rollback_record).await {
            tracing::warn!(error = %e, "creating the rollback action record");
        }

        let mut previous: HashMap<String, ObjectResult> = progress
            .results
            .iter()
            .map(|r| (r.key(), r.clone()))
            .collect();
        // A resumed rollback: objects written by the interrupted run after its
        // last progress save are known from the rollback action's snapshots.
        if progress.heartbeat != progress.started_at
            && let Ok(metas) = self.store.list_snapshots(&progress.rollback_action).await
        {
            for m in metas {
                let o = &m.object;
                let key = format!(
                    "{}/{}/{}/{}/{}",
                    o.group,
                    o.resource,
                    o.subresource.as_deref().unwrap_or(""),
                    o.namespace.as_deref().unwrap_or(""),
                    o.name
                );
                previous.entry(key).or_insert_with(|| ObjectResult {
                    group: o.group.clone(),
                    version: o.version.clone(),
                    resource: o.resource.clone(),
                    subresource: o.subresource.clone(),
                    namespace: o.namespace.clone(),
                    name: o.name.clone(),
                    operation: RestoreOp::Replace,
                    outcome: Outcome::Restored,
                    message: "restored before the snapshotter restarted".into(),
                    patch: None,
                });
            }
        }
        let mut results: Vec<Option<ObjectResult>> = vec![None; histories.len()];
        // Objects with nothing to do are settled up front.
        for (i, (h, s)) in histories.iter().zip(&steps).enumerate() {
            if let Action::None(outcome, msg) = &s.action
                && *outcome != Outcome::Failed
            {
                results[i] = Some(ObjectResult::new(h, s.operation, *outcome, msg.clone()));
            }
        }
        let stop = AtomicBool::new(false);
        let retries = match progress.params.failure_policy {
            FailurePolicy::Retry => self.cfg.retries,
            _ => 0,
        };
        let heartbeat = AbortOnDrop(self.spawn_heartbeat(id.clone()));
        let mut done_since_progress = 0usize;
        // Namespaces this rollback created again: what exists in them was
        // made after the rollback started, by it or by controllers reacting
        // to the new namespace (its default ServiceAccount, its
        // kube-root-ca.crt), and is no later change to protect.
        let mut recreated_namespaces: HashSet<String> = HashSet::new();
        for wave in plan::waves(&histories, &steps) {
            for batch in wave.chunks(PROGRESS_BATCH) {
                let recreated = &recreated_namespaces;
                let outcomes: Vec<(usize, Option<ObjectResult>)> = futures::stream::iter(batch.iter().copied())
                    .map(|i| {
                        let (h, s, stop, progress) = (&histories[i], &steps[i], &stop, &progress);
                        let in_recreated = h
                            .object
                            .namespace
                            .as_ref()
                            .is_some_and(|n| recreated.contains(n));
                        async move {
                            if self.draining.load(Ordering::SeqCst) {
                                return (i, None);
                            }
                            if stop.load(Ordering::SeqCst) {
                                return (i, Some(ObjectResult::new(h, s.operation, Outcome::Skipped,
                                    "not attempted: the rollback stopped after a failure (failurePolicy)".into())));
                            }
                            let r = self
                                .restore_one(client, h, s, progress, retries, id, in_recreated)
                                .await;
                            if r.outcome == Outcome::Failed
                                && progress.params.failure_policy != FailurePolicy::Continue
                            {
                                stop.store(true, Ordering::SeqCst);
                            }
                            (i, Some(r))
                        }
                    })
                    .buffer_unordered(self.cfg.parallelism.max(1))
                    .collect()
                    .await;
                let outcomes: Vec<(usize, ObjectResult)> = outcomes
                    .into_iter()
                    .filter_map(|(i, r)| Some((i, r?)))
                    .collect();
                if self.draining.load(Ordering::SeqCst) {
                    // Shutting down: what is done so far is saved; the
                    // action stays rolling-back for the next snapshotter.
                    for (i, r) in outcomes {
                        results[i] = Some(r);
                    }
                    self.save_progress(id, &results).await;
                    drop(heartbeat);
                    tracing::warn!(action = %id, "rollback interrupted by shutdown; the next snapshotter resumes it");
                    return Err(RollbackError::Interrupted(id.clone()));
                }
                for (i, r) in outcomes {
                    let h = &histories[i];
                    if r.outcome == Outcome::Restored
                        && r.operation == RestoreOp::Create
                        && h.object.group.is_empty()
                        && h.object.resource == "namespaces"
                    {
                        recreated_namespaces.insert(h.object.name.clone());
                    }
                    results[i] = Some(r);
                }
                done_since_progress += batch.len();
                if done_since_progress >= PROGRESS_BATCH {
                    done_since_progress = 0;
                    self.save_progress(id, &results).await;
                }
            }
        }
        // Owners restored in a later wave than what they own (a ConfigMap
        // owned by a custom resource): the references dropped then are
        // given back now that the owners exist.
        for (slot, h) in results.iter_mut().zip(&histories) {
            if let Some(r) = slot
                && r.outcome == Outcome::Restored
                && r.message.contains(DROPPED_OWNERS)
                && let Target::Present(prior) = &h.target
                && let Some(message) = self.reattach_owners(client, h, prior, &r.message).await
            {
                r.message = message;
            }
        }
        drop(heartbeat);
        let mut results: Vec<ObjectResult> = results
            .into_iter()
            .zip(&histories)
            .zip(&steps)
            .map(|((r, h), s)| {
                r.unwrap_or_else(|| {
                    ObjectResult::new(h, s.operation, Outcome::Skipped, "not attempted".into())
                })
            })
            .map(|mut r| {
                // A resumed rollback finds what it restored before unchanged now.
                if r.outcome == Outcome::Unchanged
                    && let Some(p) = previous.get(&r.key())
                    && p.outcome == Outcome::Restored
                {
                    r.outcome = Outcome::Restored;
                    r.message = p.message.clone();
                }
                r
            })
            .collect();
        sort_in_restore_order(&mut results);
        let failed = results.iter().any(|r| {
            matches!(r.outcome, Outcome::Failed | Outcome::Conflict)
                || (r.outcome == Outcome::Skipped && r.message.starts_with("not attempted"))
        });
        let state = match (failed, progress.trigger) {
            (true, _) => ActionState::RollbackFailed,
            (false, Trigger::Cancel) => ActionState::Cancelled,
            (false, _) if progress.was_cancelled => ActionState::Cancelled,
            (false, _) => ActionState::RolledBack,
        };
        let report = Report {
            action: id.to_string(),
            rollback_action: Some(progress.rollback_action.to_string()),
            trigger: progress.trigger,
            dry_run: false,
            state: state.to_string(),
            started_at: progress.started_at,
            finished_at: Timestamp::now(),
            user: progress.caller.user.clone(),
            reason: progress.reason.clone(),
            counts: counts(&results),
            results,
        };
        let report_json = serde_json::to_value(&report).unwrap_or(Value::Null);
        let finished = report.finished_at;
        let was_open = record.state == ActionState::Open;
        self.modify_record(id, |r| {
            r.state = state;
            r.updated_at = finished;
            if was_open || r.completed_at.is_none() {
                r.completed_at = Some(finished);
            }
            r.extensions.remove(PROGRESS_KEY);
            r.rollbacks.push(report_json.clone());
        })
        .await;
        self.modify_record(&progress.rollback_action, |r| {
            r.state = ActionState::Completed;
            r.completed_at = Some(finished);
            r.updated_at = finished;
        })
        .await;
        Ok(report)
    }

    /// Restore one object, retrying per the policy (and transient refusals
    /// a few times whatever the policy). `in_recreated`: the
    /// object's namespace was created again by this rollback, so an object
    /// found there was made since by a controller (a namespace's default
    /// ServiceAccount): not a conflict, it gets the prior content.
    #[allow(clippy::too_many_arguments)]
    async fn restore_one(
        &self,
        client: &kube::Client,
        h: &ObjectHistory,
        step: &Step,
        progress: &Progress,
        retries: u32,
        action: &ActionId,
        in_recreated: bool,
    ) -> ObjectResult {
        let params = &progress.params;
        let mut step = step.clone();
        let mut last_error = String::new();
        // The object changed between planning and writing (a 409): look at
        // it again once, whatever the policy; it may now be a conflict.
        let mut extra = 0;
        // The API server asked to come back (overloaded, timed out, a
        // Pod's service account token not made yet in a namespace this
        // rollback recreated): a few more attempts, whatever the policy.
        let mut transient = 0;
        let mut next = 0;
        while next <= retries + extra + transient {
            let attempt = next;
            next += 1;
            if attempt > 0 {
                let backoff = 200 * 2u64.pow(attempt.min(6).saturating_sub(1 + extra));
                tokio::time::sleep(Duration::from_millis(backoff)).await;
                match current_of(client, h).await {
                    Ok(current) => {
                        step = plan::decide(h, current.as_ref(), params.force || in_recreated)
                    }
                    Err(e) => {
                        last_error =
                            format!("reading the current object: {}", describe_kube_error(&e));
                        continue;
                    }
                }
            }
            match self.apply(client, h, &step, params.recreate).await {
                Ok(r) if r.outcome == Outcome::Restored => {
                    self.spawn_event(client, h, &step, action, progress);
                    return r;
                }
                Ok(r) if r.outcome != Outcome::Failed => return r,
                Ok(r) => last_error = r.message,
                Err(e) => {
                    if extra == 0 && e.contains(", 409)") {
                        extra = 1;
                    } else if transient < TRANSIENT_RETRIES && transient_error(&e) {
                        transient += 1;
                    }
                    // The API server refused the content itself: trying
                    // the same content again cannot help.
                    let invalid = e.contains("(Invalid, 422)");
                    last_error = e;
                    if invalid {
                        break;
                    }
                }
            }
        }
        let suffix = if next > 1 {
            format!(" (after {next} attempts)")
        } else {
            String::new()
        };
        ObjectResult::new(
            h,
            step.operation,
            Outcome::Failed,
            format!("{last_error}{suffix}"),
        )
    }

    async fn apply(
        &self,
        client: &kube::Client,
        h: &ObjectHistory,
        step: &Step,
        recreate: bool,
    ) -> Result<ObjectResult, String> {
        let ok =
            |msg: &str| ObjectResult::new(h, step.operation, Outcome::Restored, msg.to_string());
        let api_err = |e: kube::Error| describe_kube_error(&e);
        match &step.action {
            Action::None(outcome, msg) => {
                Ok(ObjectResult::new(h, step.operation, *outcome, msg.clone()))
            }
            Action::Delete {
                uid,
                resource_version,
            } => {
                dynamic::delete(client, &h.object, uid, Some(resource_version))
                    .await
                    .map_err(api_err)?;
                Ok(ok("deleted: it did not exist before the action"))
            }
            Action::Create(body) => {
                let (body, note) = self.fix_owner_references(client, h, body.clone()).await;
                let written = create_restoring(client, &h.object, &body, false)
                    .await
                    .map_err(api_err)?;
                let fresh = reallocated(&body, &written);
                let owners = restore_field_managers(client, h, written).await;
                // Its custom resources come in a later wave; the API server
                // serves them only once the definition is established.
                let established = if is_crd(&h.object) {
                    wait_established(client, &h.object).await
                } else {
                    String::new()
                };
                Ok(ok(&format!(
                    "recreated from its prior state{fresh}{note}{established}{owners}"
                )))
            }
            Action::CreateWhenGone { body, uid } => {
                wait_gone(client, &h.object, uid).await?;
                let (body, note) = self.fix_owner_references(client, h, body.clone()).await;
                let written = create_restoring(client, &h.object, &body, false)
                    .await
                    .map_err(api_err)?;
                let fresh = reallocated(&body, &written);
                let owners = restore_field_managers(client, h, written).await;
                Ok(ok(&format!(
                    "recreated from its prior state once its deletion finished{fresh}{note}{owners}"
                )))
            }
            Action::ReplaceScale(body) => {
                restore_scale(client, h, body, false)
                    .await
                    .map_err(api_err)?;
                Ok(ok(&match unset_replicas(h, body) {
                    Some(field) => format!(
                        "scale restored: {field} removed from the custom resource, as it was not set before the action"
                    ),
                    None => format!(
                        "scale restored through the scale subresource{}",
                        zero_scale_note(h, body)
                    ),
                }))
            }
            Action::Replace(body) => {
                let (body, note) = self.fix_owner_references(client, h, body.clone()).await;
                let scale = kept_scale(h, &body);
                match dynamic::replace(client, &h.object, &body).await {
                    Ok(written) => {
                        let owners = restore_field_managers(client, h, written).await;
                        Ok(ok(&format!(
                            "replaced with its prior state{scale}{note}{owners}"
                        )))
                    }
                    Err(kube::Error::Api(s))
                        if s.code == 422 && recreate && immutable_refusal(&s.message) =>
                    {
                        let uid = body["metadata"]["uid"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string();
                        let rv = body["metadata"]["resourceVersion"]
                            .as_str()
                            .map(str::to_string);
                        // What is deleted, to put it back if the create fails.
                        let was = dynamic::get(client, &h.object)
                            .await
                            .map_err(api_err)?
                            .filter(|w| w["metadata"]["uid"].as_str() == Some(uid.as_str()))
                            .ok_or_else(|| {
                                "the object changed while it was being restored".to_string()
                            })?;
                        dynamic::delete(client, &h.object, &uid, rv.as_deref())
                            .await
                            .map_err(api_err)?;
                        // Finalizers may keep it a while: create only once it is gone.
                        wait_gone(client, &h.object, &uid).await.map_err(|e| {
                            format!(
                                "deleted to recreate (immutable field: {}), but {e}",
                                s.message
                            )
                        })?;
                        let fresh = plan::for_create(&body);
                        let written = match dynamic::create(client, &h.object, &fresh).await {
                            Ok(written) => written,
                            Err(e) => {
                                let failed = format!(
                                    "deleted to recreate (immutable field: {}), but creating it failed: {}",
                                    s.message,
                                    describe_kube_error(&e)
                                );
                                // Neither version left: put back the one deleted.
                                return Err(
                                    match dynamic::create(
                                        client,
                                        &h.object,
                                        &plan::for_create(&was),
                                    )
                                    .await
                                    {
                                        Ok(_) => {
                                            format!(
                                                "{failed}; put back as it was before the rollback"
                                            )
                                        }
                                        Err(e2) => format!(
                                            "{failed}; putting it back as it was failed too: {} (its state before the rollback is in the rollback action's snapshot: rolling that back brings it back)",
                                            describe_kube_error(&e2)
                                        ),
                                    },
                                );
                            }
                        };
                        let owners = restore_field_managers(client, h, written).await;
                        Ok(ok(&format!(
                            "recreated (delete and create) because a field is immutable: {}{owners}",
                            s.message
                        )))
                    }
                    Err(kube::Error::Api(s)) if s.code == 422 && immutable_refusal(&s.message) => {
                        Err(format!(
                            "{} (Invalid, 422); the object was left unchanged. Use recreate=true to restore it by delete and create",
                            s.message
                        ))
                    }
                    Err(e) => Err(api_err(e)),
                }
            }
        }
    }

    /// Give a restored object back the owner references of its prior state
    /// whose owners exist now; the result's new message, None when nothing
    /// changed.
    async fn reattach_owners(
        &self,
        client: &kube::Client,
        h: &ObjectHistory,
        prior: &Value,
        message: &str,
    ) -> Option<String> {
        let refs = prior["metadata"]["ownerReferences"].as_array()?.clone();
        let mut current = dynamic::get(client, &h.object).await.ok().flatten()?;
        let mut wanted = current.clone();
        wanted["metadata"]["ownerReferences"] = Value::Array(refs);
        let (resolved, note) = self.fix_owner_references(client, h, wanted).await;
        let resolved_refs = resolved["metadata"]["ownerReferences"].clone();
        if resolved_refs.is_null() || resolved_refs == current["metadata"]["ownerReferences"] {
            return None;
        }
        current["metadata"]["ownerReferences"] = resolved_refs;
        let written = match dynamic::replace(client, &h.object, &current).await {
            Ok(written) => written,
            Err(e) => {
                return Some(format!(
                    "{message}; giving the owner references back once the owners were restored failed: {}",
                    describe_kube_error(&e)
                ));
            }
        };
        // That write made snapback the manager of the references: the
        // prior managers again, with the owners' new uids.
        let owners = restore_field_managers(client, h, written).await;
        let base = message.split(DROPPED_OWNERS).next().unwrap_or(message);
        Some(if note.is_empty() {
            format!("{base}; owner references given back once their owners were restored{owners}")
        } else {
            format!("{base}{note}{owners}")
        })
    }

    /// Keep owner references only where the owner exists, pointing at the
    /// owner's current uid (a restored owner gets a new one).
    async fn fix_owner_references(
        &self,
        client: &kube::Client,
        h: &ObjectHistory,
        mut body: Value,
    ) -> (Value, String) {
        let Some(refs) = body
            .get("metadata")
            .and_then(|m| m.get("ownerReferences"))
            .and_then(Value::as_array)
            .cloned()
        else {
            return (body, String::new());
        };
        let mut kept = Vec::new();
        let mut dropped = Vec::new();
        for r in refs {
            let api_version = r
                .get("apiVersion")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let kind = r.get("kind").and_then(Value::as_str).unwrap_or_default();
            let name = r.get("name").and_then(Value::as_str).unwrap_or_default();
            let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
            let gvk = kube::core::GroupVersionKind::gvk(group, version, kind);
            match owner_uid(
                client,
                &self.owner_kinds,
                &gvk,
                h.object.namespace.as_deref(),
                name,
            )
            .await
            {
                Ok(Some(uid)) => {
                    let mut r = r.clone();
                    r["uid"] = Value::String(uid);
                    kept.push(r);
                }
                Ok(None) => dropped.push(format!("{kind}/{name} (missing)")),
                // A reference kept unverified could name an owner that is
                // gone (or another object under its name), and the garbage
                // collector deletes what only gone owners own: dropped,
                // saying why.
                Err(e) => dropped.push(format!("{kind}/{name} (could not be read: {e})")),
            }
        }
        if let Some(meta) = body.get_mut("metadata").and_then(Value::as_object_mut) {
            if kept.is_empty() {
                meta.remove("ownerReferences");
            } else {
                meta.insert("ownerReferences".into(), Value::Array(kept));
            }
        }
        let note = if dropped.is_empty() {
            String::new()
        } else {
            format!("{DROPPED_OWNERS}{}", dropped.join(", "))
        };
        (body, note)
    }

    /// A Kubernetes Event on the restored object, so `kubectl describe`
    /// shows what happened. Written with snapback's own identity; failures
    /// are logged, never fail the restore.
    fn spawn_event(
        &self,
        client: &kube::Client,
        h: &ObjectHistory,
        step: &Step,
        action: &ActionId,
        progress: &Progress,
    ) {
        let Some(events) = self.events.clone() else {
            return;
        };
        let object = h.object.clone();
        let caller_client = client.clone();
        let deleted = matches!(step.action, Action::Delete { .. });
        let message = format!(
            "{} to the state before action {action} by {} (rollback action {}, trigger {})",
            if deleted {
                "Deleted (it did not exist before the action), restoring"
            } else {
                "Restored"
            },
            progress.caller.user,
            progress.rollback_action,
            progress.trigger.as_str()
        );
        let api_version = h
            .target_api_version()
            .unwrap_or_else(|| object.api_version());
        tokio::spawn(async move {
            let mut main = object.clone();
            main.subresource = None;
            let current = if deleted {
                None
            } else {
                dynamic::get(&caller_client, &main).await.ok().flatten()
            };
            let uid = current
                .as_ref()
                .and_then(|c| c["metadata"]["uid"].as_str())
                .map(str::to_string);
            let kind = current
                .as_ref()
                .and_then(|c| c["kind"].as_str())
                .map(str::to_string)
                .unwrap_or_else(|| object.kind.clone());
            let ns = object.namespace.clone().unwrap_or_else(|| "default".into());
            let now = Timestamp::now();
            let event = serde_json::json!({
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {"generateName": format!("{}.", object.name), "namespace": ns},
                "involvedObject": {
                    "apiVersion": api_version, "kind": kind, "name": object.name,
                    "namespace": object.namespace, "uid": uid,
                },
                "reason": "SnapbackRestored",
                "message": message,
                "type": "Normal",
                "source": {"component": "snapback"},
                "reportingComponent": "snapback",
                "reportingInstance": "snapback",
                "firstTimestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
                "lastTimestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
                "count": 1,
            });
            let target = crate::store::model::ObjectRef {
                group: String::new(),
                version: "v1".into(),
                resource: "events".into(),
                subresource: None,
                kind: "Event".into(),
                namespace: Some(ns),
                name: String::new(),
            };
            if let Err(e) = dynamic::create(&events, &target, &event).await {
                tracing::warn!(error = %describe_kube_error(&e), "recording the restore event");
            }
        });
    }

    /// Keep the claim alive, and only ours: if another instance took the
    /// rollback over, stop touching it.
    fn spawn_heartbeat(&self, id: ActionId) -> tokio::task::JoinHandle<()> {
        let store = self.store.clone();
        let me = self.instance.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(HEARTBEAT_EVERY).await;
                let mut ours = true;
                let _ = modify(&store, &id, |r| {
                    if let Some(p) = r.extensions.get_mut(PROGRESS_KEY) {
                        ours = p["instance"] == me.as_str();
                        if ours {
                            p["heartbeat"] =
                                serde_json::to_value(Timestamp::now()).unwrap_or(Value::Null);
                        }
                    }
                })
                .await;
                if !ours {
                    tracing::warn!(action = %id, "another instance took this rollback over");
                    return;
                }
            }
        })
    }

    async fn save_progress(&self, id: &ActionId, results: &[Option<ObjectResult>]) {
        let done: Vec<ObjectResult> = results.iter().flatten().cloned().collect();
        let done = serde_json::to_value(done).unwrap_or(Value::Null);
        self.modify_record(id, |r| {
            if let Some(p) = r.extensions.get_mut(PROGRESS_KEY) {
                p["results"] = done.clone();
                p["heartbeat"] = serde_json::to_value(Timestamp::now()).unwrap_or(Value::Null);
            }
        })
        .await;
    }

    async fn modify_record(&self, id: &ActionId, f: impl FnMut(&mut ActionRecord)) {
        if let Err(e) = modify(&self.store, id, f).await {
            tracing::error!(action = %id, error = %e, "updating the action record");
        }
    }

    /// Finish rollbacks whose snapshotter died: claim records stuck in
    /// rolling-back with a stale heartbeat and run them again (restores are
    /// idempotent; what was already restored is found unchanged).
    pub async fn resume_stale(&self) -> Result<usize, StoreError> {
        let mut resumed = 0;
        if self.draining.load(Ordering::SeqCst) {
            return Ok(resumed);
        }
        for (record, rv) in self
            .store
            .list_actions_cached(Some(ActionState::RollingBack))
            .await?
        {
            if lock(&self.running).contains(&record.id) {
                continue;
            }
            let Some(progress) = record
                .extensions
                .get(PROGRESS_KEY)
                .and_then(|p| serde_json::from_value::<Progress>(p.clone()).ok())
            else {
                continue;
            };
            let stale = jiff::SignedDuration::try_from(STALE_AFTER).unwrap_or_default();
            if Timestamp::now().duration_since(progress.heartbeat) < stale {
                continue;
            }
            let mut claimed = record.clone();
            let mut progress = progress;
            progress.heartbeat = Timestamp::now();
            progress.instance = self.instance.clone();
            claimed.extensions.insert(
                PROGRESS_KEY.into(),
                serde_json::to_value(&progress).unwrap_or(Value::Null),
            );
            match self.store.update_action(&claimed, &rv).await {
                Ok(_) => {}
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(e),
            }
            let _guard = {
                let mut running = lock(&self.running);
                if !running.insert(record.id.clone()) {
                    continue;
                }
                RunningGuard(self, record.id.clone())
            };
            tracing::info!(action = %record.id, "resuming an interrupted rollback");
            let started = Instant::now();
            let client = match self.client_for(&progress.caller, Some(&progress.rollback_action)) {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(error = %e, "cannot resume rollback");
                    continue;
                }
            };
            let histories = match self.histories(&record.id).await {
                Ok(h) => h,
                Err(e) => {
                    tracing::error!(error = %e, "cannot resume rollback");
                    continue;
                }
            };
            let mut histories = histories;
            let (_, steps) = self
                .plan_steps(&client, &mut histories, progress.params.force)
                .await;
            let mut original = record.clone();
            original.state = match progress.trigger {
                Trigger::Cancel => ActionState::Open,
                _ => ActionState::Completed,
            };
            let report = match self
                .execute(&record.id, &original, progress, histories, steps, &client)
                .await
            {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(action = %record.id, error = %e, "resumed rollback stopped");
                    continue;
                }
            };
            self.observe(&report, started.elapsed());
            resumed += 1;
        }
        Ok(resumed)
    }
}

/// What the API server's dry run of a planned write said, where it
/// changes the plan's report.
enum DryRunVerdict {
    /// Refused: the rollback would fail here.
    Fails(String),
    /// Refused as immutable, and `recreate=true` would delete and create it.
    Recreates(String),
}

/// In the order of the restore: creates and replaces by dependency rank
/// (namespaces first), then deletes in reverse. Dry runs list their plan
/// the same way.
fn sort_in_restore_order(results: &mut [ObjectResult]) {
    results.sort_by_key(|r| {
        let rank = plan::rank(&r.group, &r.resource);
        match r.operation {
            RestoreOp::Delete => (1, u8::MAX - rank, r.key()),
            _ => (0, rank, r.key()),
        }
    });
}

/// How a restore result says owner references were left out.
const DROPPED_OWNERS: &str = "; owner reference(s) dropped: ";

/// How long a restore waits for an object's deletion to finish (finalizers)
/// before it creates the object anew.
const DELETION_WAIT: Duration = Duration::from_secs(30);

/// How long a rollback waits, before it plans, for namespaces the action
/// deleted to be emptied.
const NAMESPACE_EMPTYING_WAIT: Duration = Duration::from_secs(60);

/// Namespaces the action deleted that the namespace controller is still
/// emptying: wait (up to [`NAMESPACE_EMPTYING_WAIT`]) until they are gone,
/// so that the plan has the controller's deletes of their contents (they
/// join the action as they happen) and does not find objects it has not
/// reached yet in their prior state (and then lose them to it). Only while
/// a namespace controller works on it: it reports its progress in the
/// namespace's status conditions, and starts within moments of the
/// deletion; with none, nothing would finish it. True when it waited.
async fn wait_for_emptying_namespaces(client: &kube::Client, histories: &[ObjectHistory]) -> bool {
    let deadline = tokio::time::Instant::now() + NAMESPACE_EMPTYING_WAIT;
    let deleted_namespaces = histories.iter().filter(|h| {
        h.object.group.is_empty()
            && h.object.resource == "namespaces"
            && h.object.subresource.is_none()
            && matches!(h.target, Target::Present(_))
            && h.accepted.contains(plan::ABSENT)
    });
    let mut waited = false;
    for h in deleted_namespaces {
        while tokio::time::Instant::now() < deadline {
            match dynamic::get(client, &h.object).await {
                Ok(Some(ns)) if being_emptied(&ns, Timestamp::now()) => {
                    waited = true;
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                _ => break,
            }
        }
    }
    waited
}

/// How long after its deletion a namespace without progress conditions is
/// still taken to be about to be emptied.
const NAMESPACE_CONTROLLER_START: jiff::SignedDuration = jiff::SignedDuration::from_secs(20);

/// A namespace being deleted that a namespace controller is emptying (it
/// reports conditions) or is about to (deleted moments ago).
fn being_emptied(ns: &Value, now: Timestamp) -> bool {
    let Some(deleted) = ns["metadata"]["deletionTimestamp"].as_str() else {
        return false;
    };
    let reported = ns["status"]["conditions"]
        .as_array()
        .is_some_and(|c| !c.is_empty());
    let recent = deleted
        .parse::<Timestamp>()
        .is_ok_and(|at| now.duration_since(at) < NAMESPACE_CONTROLLER_START);
    reported || recent
}

/// Wait until the object with this uid is gone; an error if it is still
/// being deleted after [`DELETION_WAIT`], or another object took its name.
async fn wait_gone(
    client: &kube::Client,
    object: &crate::store::model::ObjectRef,
    uid: &str,
) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + DELETION_WAIT;
    loop {
        match dynamic::get(client, object).await {
            Ok(None) => return Ok(()),
            Ok(Some(o)) if !uid.is_empty() && o["metadata"]["uid"].as_str() != Some(uid) => {
                return Err(
                    "another object with this name appeared; the prior state is still in the snapshot"
                        .into(),
                );
            }
            Ok(Some(o)) if tokio::time::Instant::now() >= deadline => {
                return Err(format!(
                    "it is still being deleted after {}s ({}); roll back again once it is gone",
                    DELETION_WAIT.as_secs(),
                    what_holds(&o)
                ));
            }
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(format!(
                    "reading it while waiting for its deletion: {}",
                    describe_kube_error(&e)
                ));
            }
            _ => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// What keeps an object from going: its finalizers (a namespace's are in
/// its spec) and, for a namespace, what its controller reports (content
/// with finalizers of its own).
fn what_holds(o: &Value) -> String {
    let names = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut finalizers = names(&o["metadata"]["finalizers"]);
    finalizers.extend(names(&o["spec"]["finalizers"]));
    let mut out = if finalizers.is_empty() {
        "no finalizers left".to_string()
    } else {
        format!("finalizers: {}", finalizers.join(", "))
    };
    let reports: Vec<&str> = o["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["status"] == "True")
        .filter_map(|c| c["message"].as_str())
        .collect();
    if !reports.is_empty() {
        out.push_str(&format!("; {}", reports.join("; ")));
    }
    out
}

/// How long a restore waits for a recreated CustomResourceDefinition to be
/// established before it goes on to the custom resources.
const CRD_ESTABLISH_WAIT: Duration = Duration::from_secs(30);

/// Create an object from its prior state (or the API server's dry run of
/// it). A CustomResourceDefinition made through `apiextensions.k8s.io/v1beta1`
/// that `v1` refuses to create (no schema, `preserveUnknownFields: true`) is
/// created through `v1beta1` while the API server still serves it.
async fn create_restoring(
    client: &kube::Client,
    obj: &crate::store::model::ObjectRef,
    body: &Value,
    dry_run: bool,
) -> Result<Value, kube::Error> {
    let mut body = std::borrow::Cow::Borrowed(body);
    // The cluster IP, then the node ports: at most one refusal each.
    for _ in 0..2 {
        match create_restoring_as_is(client, obj, &body, dry_run).await {
            // A Service's cluster IP or node port handed to another Service
            // since it was deleted: recreated with new ones (what refers to
            // the Service by name, DNS, keeps working), and the result says
            // so ([`reallocated`]).
            Err(kube::Error::Api(s))
                if s.code == 422
                    && obj.group.is_empty()
                    && obj.resource == "services"
                    && s.message.contains("already allocated") =>
            {
                let mut fresh = body.clone().into_owned();
                if s.message.contains("provided IP is already allocated")
                    && let Some(spec) = fresh.get_mut("spec").and_then(Value::as_object_mut)
                    && !matches!(spec.get("clusterIP").and_then(Value::as_str), Some("None"))
                {
                    spec.remove("clusterIP");
                    spec.remove("clusterIPs");
                }
                if s.message.contains("provided port is already allocated")
                    && let Some(ports) = fresh
                        .pointer_mut("/spec/ports")
                        .and_then(Value::as_array_mut)
                {
                    for port in ports.iter_mut().filter_map(Value::as_object_mut) {
                        port.remove("nodePort");
                    }
                }
                if fresh == *body {
                    return Err(kube::Error::Api(s));
                }
                body = std::borrow::Cow::Owned(fresh);
            }
            other => return other,
        }
    }
    create_restoring_as_is(client, obj, &body, dry_run).await
}

/// What changed between the prior state and the object a restore created:
/// a Service's cluster IP or node ports given out anew because the old
/// ones were taken.
fn reallocated(prior: &Value, written: &Value) -> String {
    let mut notes = Vec::new();
    let ip = |v: &Value| {
        v.pointer("/spec/clusterIP")
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    if let (Some(was), Some(now)) = (ip(prior), ip(written))
        && was != now
    {
        notes.push(format!("cluster IP {now} (its old one, {was}, was taken)"));
    }
    let node_ports = |v: &Value| -> Vec<u64> {
        v.pointer("/spec/ports")
            .and_then(Value::as_array)
            .map(|ps| ps.iter().filter_map(|p| p["nodePort"].as_u64()).collect())
            .unwrap_or_default()
    };
    let (was, now) = (node_ports(prior), node_ports(written));
    if !was.is_empty() && was != now {
        notes.push(format!(
            "node ports {now:?} (its old ones, {was:?}, were taken)"
        ));
    }
    if notes.is_empty() {
        String::new()
    } else {
        format!(", with a new {}", notes.join(" and "))
    }
}

async fn create_restoring_as_is(
    client: &kube::Client,
    obj: &crate::store::model::ObjectRef,
    body: &Value,
    dry_run: bool,
) -> Result<Value, kube::Error> {
    match dynamic::create_with(client, obj, body, dry_run).await {
        Err(kube::Error::Api(s)) if s.code == 422 && is_crd(obj) && plan::legacy_crd(body) => {
            let mut legacy = obj.clone();
            legacy.version = "v1beta1".into();
            match dynamic::create_with(client, &legacy, &plan::crd_as_v1beta1(body), dry_run).await
            {
                // Not served (Kubernetes 1.22+): v1's refusal says why.
                Err(e) if dynamic::is_not_found(&e) => Err(kube::Error::Api(s)),
                other => other,
            }
        }
        other => other,
    }
}

/// A custom resource whose definition the action changed too: its prior
/// state may hold what the definition of then did not keep (a field the
/// action's new schema defaulted when the object was read for a later
/// change). Restored under the definition of before, the API server prunes
/// it: the object is in its prior state as the API server keeps it, never
/// byte for byte, and every rollback would write it again and report it
/// `restored`. Once the definition is back as it was (its own step is
/// `unchanged`: not on the first rollback, whose dry run would still see
/// the action's schema), a server-side dry run of the replace tells: if it
/// would leave the object as it is, it is `unchanged`. That holds for a
/// conflict too: what an earlier rollback wrote may be read differently
/// from how its capture saw it (the API server swaps in the restored
/// schema's handler a moment after the definition's write, so the
/// resource's write may have gone through the action's schema, kept the
/// defaulted field, and every read since prunes it): no state of anyone's
/// is overwritten by a restore that leaves the object as it is.
async fn settle_under_changed_definitions(
    client: &kube::Client,
    histories: &[ObjectHistory],
    current: &[Result<Option<Value>, String>],
    steps: &mut [Step],
) {
    let definitions: HashSet<&str> = histories
        .iter()
        .zip(steps.iter())
        .filter(|(h, s)| {
            is_crd(&h.object) && matches!(s.action, Action::None(Outcome::Unchanged, _))
        })
        .map(|(h, _)| h.object.name.as_str())
        .collect();
    if definitions.is_empty() {
        return;
    }
    for ((h, c), step) in histories.iter().zip(current).zip(steps.iter_mut()) {
        let Ok(Some(now)) = c else {
            continue;
        };
        if !definitions.contains(format!("{}.{}", h.object.resource, h.object.group).as_str()) {
            continue;
        }
        let forced;
        let body = match &step.action {
            Action::Replace(body) => body,
            Action::None(Outcome::Conflict, _) => {
                forced = plan::decide(h, Some(now), true);
                match &forced.action {
                    Action::Replace(body) => body,
                    _ => continue,
                }
            }
            _ => continue,
        };
        // Content as a replace compares it (spec.replicas included).
        if let Ok(would) = dynamic::replace_with(client, &h.object, body, true).await
            && crate::store::codec::same_content(&would, now)
        {
            step.action = Action::None(
                Outcome::Unchanged,
                "already in its prior state, as its definition keeps it now".into(),
            );
        }
    }
}

fn is_crd(o: &crate::store::model::ObjectRef) -> bool {
    o.group == "apiextensions.k8s.io" && o.resource == "customresourcedefinitions"
}

/// Wait until a CustomResourceDefinition has the condition `Established`
/// (what `kubectl wait --for condition=established` waits for); a note for
/// the report if it did not come.
async fn wait_established(client: &kube::Client, crd: &crate::store::model::ObjectRef) -> String {
    let deadline = tokio::time::Instant::now() + CRD_ESTABLISH_WAIT;
    loop {
        let established = match dynamic::get(client, crd).await {
            Ok(Some(o)) => o["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Established" && c["status"] == "True"),
            _ => false,
        };
        if established {
            return String::new();
        }
        if tokio::time::Instant::now() >= deadline {
            return format!(
                "; not yet established after {}s, so its custom resources may fail to restore",
                CRD_ESTABLISH_WAIT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Give a restored object back the field managers of its prior state.
/// A restore write is an update by snapback: the API server hands every
/// field it changed to snapback (`operation: Update`) and a recreated
/// object has no other manager. For objects managed by server-side apply
/// (kubectl --server-side, Flux, Argo CD) that is a behaviour change: the
/// next apply no longer removes the fields its manifest dropped, and
/// conflicts with "snapback". A second write that changes only
/// `metadata.managedFields` sets them exactly (the API server takes a
/// client's managedFields as given, and the write changes no field that
/// could be handed to anyone). Done when the prior state or the written
/// object has an `Apply` manager; a failure leaves the restored content in
/// place and is said in the result's message. Only possible where the
/// captured prior state has its managedFields: a deleted object's always
/// has; Kubernetes 1.20 leaves them out of an update's `oldObject`.
/// Attempts, after the first, at giving a recreated object its field
/// managers back while controllers keep writing it (about 3 s in all).
const FIELD_MANAGER_RETRIES: u32 = 6;

async fn restore_field_managers(
    client: &kube::Client,
    h: &ObjectHistory,
    written: Value,
) -> String {
    let Target::Present(prior) = &h.target else {
        return String::new();
    };
    if h.object.subresource.is_some() || written.get("apiVersion") != prior.get("apiVersion") {
        return String::new();
    }
    let managers = |v: &Value| v.pointer("/metadata/managedFields").cloned();
    let Some(wanted) = managers(prior).filter(|m| m.as_array().is_some_and(|a| !a.is_empty()))
    else {
        return String::new();
    };
    let applied = |m: &Option<Value>| {
        m.as_ref()
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|e| e["operation"] == "Apply"))
    };
    let now = managers(&written);
    if now.as_ref() == Some(&wanted) || !(applied(&Some(wanted.clone())) || applied(&now)) {
        return String::new();
    }
    // Owner references pointed at a restored owner's new uid: the managers'
    // field sets name them by uid (`k:{"uid":…}`), so they follow.
    let moved: Vec<(String, String)> = prior
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|old| {
            let new = written
                .pointer("/metadata/ownerReferences")?
                .as_array()?
                .iter()
                .find(|r| r["kind"] == old["kind"] && r["name"] == old["name"])?;
            let (o, n) = (old["uid"].as_str()?, new["uid"].as_str()?);
            (o != n && !o.is_empty()).then(|| (o.to_string(), n.to_string()))
        })
        .collect();
    let wanted = if moved.is_empty() {
        wanted
    } else {
        let mut text = wanted.to_string();
        for (o, n) in &moved {
            text = text.replace(o.as_str(), n);
        }
        serde_json::from_str(&text).unwrap_or(wanted)
    };
    let mut body = written;
    body["metadata"]["managedFields"] = wanted.clone();
    let mut result = dynamic::replace(client, &h.object, &body).await;
    // A controller wrote the object meanwhile (a Deployment's controller
    // writes its revision and status several times right after it is
    // created): again, on what it is now, until the controllers settle.
    let mut pause = Duration::from_millis(50);
    for _ in 0..FIELD_MANAGER_RETRIES {
        if !matches!(&result, Err(kube::Error::Api(s)) if s.code == 409) {
            break;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(1));
        result = match dynamic::get(client, &h.object).await {
            Ok(Some(mut now)) => {
                now["metadata"]["managedFields"] = wanted.clone();
                dynamic::replace(client, &h.object, &now).await
            }
            Ok(None) => {
                return "; it was deleted before its field managers could be given back".into();
            }
            Err(e) => Err(e),
        };
    }
    match result {
        Ok(_) => String::new(),
        Err(e) => format!(
            "; its field managers (server-side apply ownership) could not be given back: {}",
            describe_kube_error(&e)
        ),
    }
}

/// Said of a replace that keeps the replicas someone else (an autoscaler)
/// scaled the object to since the action, instead of the prior ones.
fn kept_scale(h: &ObjectHistory, body: &Value) -> String {
    let replicas = |v: &Value| plan::replicas(v).and_then(Value::as_u64);
    match &h.target {
        Target::Present(prior) => match (replicas(prior), replicas(body)) {
            (Some(before), Some(now)) if before != now => format!(
                ", at the {now} replicas it was scaled to since the action (the prior state had {before})"
            ),
            _ => String::new(),
        },
        _ => String::new(),
    }
}

/// Whether a 422 refuses a change to a field that cannot change in place:
/// Kubernetes says so in several ways ("field is immutable", a Service's
/// clusterIP "may not change once set", ...).
fn immutable_refusal(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    [
        "immutable",
        "may not change once set",
        "cannot be changed",
        "may not be changed",
        // RoleBinding, ClusterRoleBinding
        "cannot change roleref",
        // StatefulSet: "updates to statefulset spec for fields other than … are forbidden"
        "for fields other than",
        // Pod: "pod updates may not change fields other than …"
        "may not change fields other than",
        // Pod: "existing toleration can not be modified except its tolerationSeconds"
        "can not be modified",
        // StorageClass: "updates to parameters are forbidden" (provisioner,
        // reclaimPolicy); PVC: "spec is immutable after creation…"
        "updates to parameters are forbidden",
        "updates to provisioner are forbidden",
        "updates to reclaimpolicy are forbidden",
    ]
    .iter()
    .any(|p| m.contains(p))
}

/// Stops a background task when the owner goes away, even by panic.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Read-modify-write of a record with optimistic concurrency, retried on conflict.
pub async fn modify(
    store: &KubeStore,
    id: &ActionId,
    mut f: impl FnMut(&mut ActionRecord),
) -> Result<ActionRecord, StoreError> {
    let mut last = None;
    for _ in 0..8 {
        let (mut record, rv) = store
            .get_action(id)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("action {id}")))?;
        f(&mut record);
        match store.update_action(&record, &rv).await {
            Ok(_) => return Ok(record),
            Err(StoreError::Conflict(m)) => last = Some(StoreError::Conflict(m)),
            Err(e) => return Err(e),
        }
        tokio::time::sleep(Duration::from_millis(20 + rand::random::<u64>() % 80)).await;
    }
    Err(last.unwrap_or_else(|| StoreError::Conflict(format!("action {id}"))))
}

fn dry_run_result(
    h: &ObjectHistory,
    s: &Step,
    current: &Result<Option<Value>, String>,
) -> ObjectResult {
    match &s.action {
        Action::None(outcome, msg) => ObjectResult::new(h, s.operation, *outcome, msg.clone()),
        action => {
            let cur = current
                .as_ref()
                .ok()
                .cloned()
                .flatten()
                .unwrap_or(Value::Null);
            let target = match action {
                Action::Delete { .. } => Value::Null,
                _ => s.target_body().cloned().unwrap_or(Value::Null),
            };
            let (cur, target) = redact_pair(
                Some(strip_for_diff(&cur)).filter(|v| !v.is_null()),
                Some(strip_for_diff(&target)).filter(|v| !v.is_null()),
            );
            let null = Value::Null;
            let patch = json_patch::diff(
                cur.as_ref().unwrap_or(&null),
                target.as_ref().unwrap_or(&null),
            );
            let mut r = ObjectResult::new(h, s.operation, Outcome::Planned, describe(h, s));
            r.patch = serde_json::to_value(patch).ok();
            r
        }
    }
}

/// A custom resource's Scale shows 0 replicas where `spec.replicas` is not
/// set at all (its operator's default applies), and a write of the Scale
/// sets it: restoring a prior Scale of 0 replicas says so, since it may
/// scale the workload to nothing (README, "Known limits"). Built-in
/// workloads always have their replicas set.
fn zero_scale_note(h: &ObjectHistory, body: &Value) -> &'static str {
    let custom = !matches!(h.object.group.as_str(), "" | "apps" | "extensions");
    // The capture read the custom resource: it was set (to 0).
    let set = matches!(h.prior_replicas_field, Some((_, Some(false))));
    if custom
        && !set
        && body
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            == 0
    {
        "; to 0 replicas: if spec.replicas was not set before the action, it is now set to 0 (a custom resource's scale shows an unset count as 0)"
    } else {
        ""
    }
}

/// How long after an action's last deletion a rollback of it waits before
/// planning, for the garbage collector's deletes of the dependents (which
/// join the action).
const GC_SETTLE: Duration = Duration::from_secs(3);

/// What deleting an object deletes with it: a namespace its contents, a
/// custom resource definition its custom resources.
enum CascadeScope<'a> {
    Namespace(&'a str),
    Definition { group: &'a str, plural: &'a str },
}

impl CascadeScope<'_> {
    fn holds(&self, o: &ObjectRef) -> bool {
        match self {
            CascadeScope::Namespace(ns) => o.namespace.as_deref() == Some(*ns),
            CascadeScope::Definition { group, plural } => {
                o.group == *group && o.resource == *plural
            }
        }
    }
}

fn cascade_scope(o: &ObjectRef) -> Option<CascadeScope<'_>> {
    match (o.group.as_str(), o.resource.as_str()) {
        ("", "namespaces") => Some(CascadeScope::Namespace(&o.name)),
        ("apiextensions.k8s.io", "customresourcedefinitions") => {
            let (plural, group) = o.name.split_once('.')?;
            Some(CascadeScope::Definition { group, plural })
        }
        _ => None,
    }
}

/// How conflicts name an object.
fn describe_ref(o: &ObjectRef) -> String {
    super::report::display_name(&o.group, &o.resource, o.namespace.as_deref(), &o.name)
}

/// The object as it is now (its Scale when only that changed). The API
/// server (1.20 at least) refuses to read the Scale of a custom resource
/// whose replicas field is not set ("the spec replicas field … does not
/// exist", 500): for one whose field was unset before the action, that is
/// a Scale of 0, as its prior Scale showed; it is read from the object.
async fn current_of(
    client: &kube::Client,
    h: &ObjectHistory,
) -> Result<Option<Value>, kube::Error> {
    let err = match dynamic::get(client, &h.object).await {
        Err(kube::Error::Api(s))
            if s.code == 500
                && s.message.contains("spec replicas field")
                && s.message.contains("does not exist") =>
        {
            kube::Error::Api(s)
        }
        read => return read,
    };
    let (Target::Scale(prior), Some((field, Some(true)))) = (&h.target, &h.prior_replicas_field)
    else {
        return Err(err);
    };
    let mut parent = h.object.clone();
    parent.subresource = None;
    let Some(object) = dynamic::get(client, &parent).await? else {
        return Ok(None);
    };
    if object.pointer(field).is_some() {
        return Err(err);
    }
    let mut scale = prior.clone();
    if let (Some(meta), Some(now)) = (
        scale.get_mut("metadata").and_then(Value::as_object_mut),
        object.get("metadata"),
    ) {
        for key in ["uid", "resourceVersion", "creationTimestamp"] {
            match now.get(key) {
                Some(v) => meta.insert(key.into(), v.clone()),
                None => meta.remove(key),
            };
        }
    }
    if let Some(spec) = scale.get_mut("spec").and_then(Value::as_object_mut) {
        spec.remove("replicas");
    }
    Ok(Some(scale))
}

/// The replicas field to remove rather than writing a Scale of 0: a
/// custom resource's field that the capture found unset before the action.
fn unset_replicas<'h>(h: &'h ObjectHistory, body: &Value) -> Option<&'h str> {
    match &h.prior_replicas_field {
        Some((field, Some(true)))
            if body
                .pointer("/spec/replicas")
                .and_then(Value::as_i64)
                .unwrap_or(0)
                == 0 =>
        {
            Some(field)
        }
        _ => None,
    }
}

/// Write the prior Scale back through the scale subresource, or take out
/// a custom resource's replicas field that was not set (conditional on the
/// resourceVersion the plan read: the Scale's is the custom resource's).
async fn restore_scale(
    client: &kube::Client,
    h: &ObjectHistory,
    body: &Value,
    dry_run: bool,
) -> Result<(), kube::Error> {
    match unset_replicas(h, body) {
        Some(field) => {
            let mut parent = h.object.clone();
            parent.subresource = None;
            let rv = body
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .unwrap_or_default();
            dynamic::remove_field(client, &parent, field, rv, dry_run)
                .await
                .map(|_| ())
        }
        None => dynamic::replace_with(client, &h.object, body, dry_run)
            .await
            .map(|_| ()),
    }
}

fn describe(h: &ObjectHistory, s: &Step) -> String {
    match s.action {
        Action::Delete { .. } => "would delete: it did not exist before the action".into(),
        Action::Create(_) => "would recreate from its prior state".into(),
        Action::CreateWhenGone { .. } => {
            "would recreate from its prior state once its deletion (finalizers pending) finishes"
                .into()
        }
        Action::Replace(_) => "would replace with its prior state".into(),
        Action::ReplaceScale(ref body) => match unset_replicas(h, body) {
            Some(field) => format!(
                "would restore the scale by removing {field} from the custom resource: it was not set before the action"
            ),
            None => format!(
                "would restore the scale subresource{}",
                zero_scale_note(h, body)
            ),
        },
        Action::None(..) => String::new(),
    }
}

/// Where a Secret holds values: every key of `data` and `stringData`, and
/// the copy of its manifest `kubectl apply` keeps in an annotation. None
/// for other kinds.
fn secret_value_paths(v: &Value) -> Option<Vec<Vec<&str>>> {
    if v.get("kind").and_then(Value::as_str) != Some("Secret") {
        return None;
    }
    let mut paths: Vec<Vec<&str>> = ["data", "stringData"]
        .into_iter()
        .filter_map(|key| Some((key, v.get(key)?.as_object()?)))
        .flat_map(|(key, map)| map.keys().map(move |k| vec![key, k.as_str()]))
        .collect();
    if v["metadata"]["annotations"]
        .get(LAST_APPLIED_ANNOTATION)
        .is_some()
    {
        paths.push(vec!["metadata", "annotations", LAST_APPLIED_ANNOTATION]);
    }
    Some(paths)
}

fn value_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |at, key| at.get(*key))
}

/// `v` with each Secret value replaced by what `shown` says for its path.
fn redacted_with(v: &Value, shown: impl Fn(&[&str]) -> String) -> Value {
    let Some(paths) = secret_value_paths(v) else {
        return v.clone();
    };
    let mut out = v.clone();
    for path in paths {
        let at = path.iter().fold(&mut out, |at, key| &mut at[*key]);
        *at = Value::String(shown(&path));
    }
    out
}

/// Secret values never leave snapback through the API: each is shown as
/// `<redacted>`.
pub fn redact(v: &Value) -> Value {
    redacted_with(v, |_| "<redacted>".into())
}

/// Two states of one object to show side by side (diff, a dry run's
/// patch): a Secret's values are redacted, each as `<redacted>` where both
/// states have the same value and `<redacted: before>` / `<redacted: after>`
/// where they differ, so that what changes is visible and no value is.
pub fn redact_pair(a: Option<Value>, b: Option<Value>) -> (Option<Value>, Option<Value>) {
    let side = |own: &Option<Value>, other: &Option<Value>, label: &str| {
        own.as_ref().map(|v| {
            redacted_with(v, |path| {
                let theirs = other.as_ref().and_then(|o| value_at(o, path));
                if theirs.is_some() && theirs == value_at(v, path) {
                    "<redacted>".to_string()
                } else {
                    format!("<redacted: {label}>")
                }
            })
        })
    };
    (side(&a, &b, "before"), side(&b, &a, "after"))
}

/// Leave out what a rollback does not change, so a patch shows the content.
pub fn strip_for_diff(v: &Value) -> Value {
    if v.is_null() {
        return Value::Null;
    }
    let mut s = v.clone();
    if let Some(map) = s.as_object_mut() {
        map.remove("status");
        if let Some(meta) = map.get_mut("metadata").and_then(Value::as_object_mut) {
            // Identity too: an object recreated from its prior state is
            // "unchanged", and its new uid is no difference worth showing.
            for k in [
                "resourceVersion",
                "managedFields",
                "generation",
                "selfLink",
                "uid",
                "creationTimestamp",
            ] {
                meta.remove(k);
            }
        }
    }
    s
}

/// An object the action changed through several API versions (an Ingress
/// applied as v1beta1, then labelled through v1, or deleted through
/// `extensions` by the namespace controller): its fingerprints are of each
/// version's form, the current object is read in one. Read in the others
/// too; if it is, in one of them, a state the action produced or started
/// from, its form in the version read is accepted as well.
async fn accept_other_versions(
    client: &kube::Client,
    histories: &mut [ObjectHistory],
    current: &[Result<Option<Value>, String>],
) {
    for (h, c) in histories.iter_mut().zip(current) {
        let Ok(Some(c)) = c else { continue };
        if h.other_versions.is_empty() {
            continue;
        }
        let here = crate::store::codec::fingerprint(c);
        if h.accepted.contains(&here) {
            continue;
        }
        for (group, version) in h.other_versions.clone() {
            let mut other = h.object.clone();
            other.group = group;
            other.version = version;
            if let Ok(Some(o)) = dynamic::get(client, &other).await
                && h.accepted.contains(&crate::store::codec::fingerprint(&o))
            {
                h.accepted.insert(here);
                break;
            }
        }
    }
}

/// Extra attempts at an object the API server refused for now.
const TRANSIENT_RETRIES: u32 = 4;

/// The uid of the owner an owner reference names (`None`: it does not
/// exist, or its kind is not served). Refusals for now (throttling, an
/// unavailable or timed-out API server) are tried again a few times; what
/// stays unreadable is an error, told apart from a missing owner.
async fn owner_uid(
    client: &kube::Client,
    kinds: &OwnerKinds,
    gvk: &kube::core::GroupVersionKind,
    namespace: Option<&str>,
    name: &str,
) -> Result<Option<String>, String> {
    let mut attempt = 0;
    loop {
        let known = lock(kinds)
            .get(gvk)
            .filter(|(at, _, _)| at.elapsed() < OWNER_KIND_TTL)
            .map(|(_, ar, caps)| (ar.clone(), caps.clone()));
        let found = match known {
            Some(k) => Ok(k),
            None => kube::discovery::pinned_kind(client, gvk)
                .await
                .inspect(|(ar, caps)| {
                    lock(kinds).insert(gvk.clone(), (Instant::now(), ar.clone(), caps.clone()));
                }),
        };
        let error = match found {
            Ok((ar, caps)) => {
                let owner = crate::store::model::ObjectRef {
                    group: ar.group,
                    version: ar.version,
                    resource: ar.plural,
                    subresource: None,
                    kind: ar.kind,
                    namespace: match caps.scope {
                        kube::discovery::Scope::Namespaced => namespace.map(str::to_string),
                        kube::discovery::Scope::Cluster => None,
                    },
                    name: name.to_string(),
                };
                match dynamic::get(client, &owner).await {
                    Ok(o) => {
                        return Ok(
                            o.and_then(|o| o["metadata"]["uid"].as_str().map(str::to_string))
                        );
                    }
                    Err(e) => describe_kube_error(&e),
                }
            }
            // A kind the API server does not serve has no objects.
            Err(kube::Error::Discovery(_)) => return Ok(None),
            Err(e) if dynamic::is_not_found(&e) => return Ok(None),
            Err(e) => describe_kube_error(&e),
        };
        if attempt >= TRANSIENT_RETRIES || !transient_error(&error) {
            return Err(error);
        }
        attempt += 1;
        tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
    }
}

/// Whether a write's error (as `describe_kube_error` words it: "message
/// (Reason, code)") says to try again later rather than that it cannot be
/// done: throttling, a server or gateway timeout, an unavailable server,
/// or the service account admission plugin waiting for a token
/// ("retry after the token is automatically created").
fn transient_error(e: &str) -> bool {
    [
        ", 429)",
        ", 503)",
        ", 504)",
        "(ServerTimeout, ",
        "(Timeout, ",
    ]
    .iter()
    .any(|m| e.contains(m))
        || e.contains("retry after the token is automatically created")
        || e.contains("Kubernetes API unreachable")
}

#[cfg(test)]
mod tests {
    use super::{cascade_scope, describe_ref, immutable_refusal, redact, transient_error};
    use crate::store::model::ObjectRef;
    use serde_json::json;

    fn object(group: &str, resource: &str, namespace: Option<&str>, name: &str) -> ObjectRef {
        ObjectRef {
            group: group.into(),
            version: "v1".into(),
            resource: resource.into(),
            subresource: None,
            kind: String::new(),
            namespace: namespace.map(str::to_string),
            name: name.into(),
        }
    }

    #[test]
    fn a_namespace_holds_its_contents_and_a_definition_its_resources() {
        let ns = object("", "namespaces", None, "shop");
        let scope = cascade_scope(&ns).unwrap();
        assert!(scope.holds(&object("", "configmaps", Some("shop"), "c")));
        assert!(scope.holds(&object("apps", "deployments", Some("shop"), "d")));
        assert!(!scope.holds(&object("", "configmaps", Some("other"), "c")));
        assert!(!scope.holds(&object("", "namespaces", None, "shop")));
        let crd = object(
            "apiextensions.k8s.io",
            "customresourcedefinitions",
            None,
            "gears.example.com",
        );
        let scope = cascade_scope(&crd).unwrap();
        assert!(scope.holds(&object("example.com", "gears", Some("a"), "g")));
        assert!(!scope.holds(&object("example.com", "cogs", Some("a"), "g")));
        assert!(!scope.holds(&object("other.com", "gears", None, "g")));
        assert!(cascade_scope(&object("", "configmaps", Some("shop"), "c")).is_none());
        assert_eq!(
            describe_ref(&object("example.com", "gears", Some("a"), "g")),
            "gears.example.com/g in namespace a"
        );
    }

    #[test]
    fn transient_refusals_are_told_from_final_ones() {
        for e in [
            "No API token found for service account \"default\", retry after the token is automatically created and added to the service account (ServerTimeout, 500)",
            "the server has received too many requests (TooManyRequests, 429)",
            "etcdserver: request timed out (Timeout, 504)",
            "Kubernetes API unreachable: ServiceError: connection refused",
        ] {
            assert!(transient_error(e), "{e}");
        }
        for e in [
            "configmaps \"x\" is forbidden: User \"bob\" cannot create (Forbidden, 403)",
            "Service \"s\" is invalid: spec.clusterIP: may not change once set (Invalid, 422)",
            "internal error (InternalError, 500)",
        ] {
            assert!(!transient_error(e), "{e}");
        }
    }

    #[test]
    fn secret_values_are_redacted_everywhere_they_appear() {
        let secret = json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "api", "annotations": {
                "kubectl.kubernetes.io/last-applied-configuration": "{\"stringData\":{\"token\":\"TOPSECRET\"}}",
                "team": "web"}},
            "data": {"token": "VE9QU0VDUkVU"}, "stringData": {"extra": "TOPSECRET"}});
        let shown = redact(&secret).to_string();
        assert!(
            !shown.contains("TOPSECRET") && !shown.contains("VE9QU0VDUkVU"),
            "{shown}"
        );
        assert!(shown.contains("\"team\":\"web\""), "{shown}");
        // Other kinds are shown as they are.
        let cm = json!({"kind": "ConfigMap", "data": {"token": "visible"}});
        assert_eq!(redact(&cm), cm);
    }

    #[test]
    fn a_pair_of_secret_states_shows_which_values_changed_and_no_value() {
        let before = json!({"kind": "Secret", "data": {"a": "QQ==", "b": "Qg=="}});
        let after = json!({"kind": "Secret", "data": {"a": "QQ==", "b": "Qw==", "c": "RA=="}});
        let (b, a) = super::redact_pair(Some(before), Some(after));
        assert_eq!(
            b,
            Some(json!({"kind": "Secret", "data": {"a": "<redacted>", "b": "<redacted: before>"}}))
        );
        assert_eq!(
            a,
            Some(
                json!({"kind": "Secret", "data": {"a": "<redacted>", "b": "<redacted: after>", "c": "<redacted: after>"}})
            )
        );
        // Created or deleted: one side only.
        let (none, only) = super::redact_pair(
            None,
            Some(json!({"kind": "Secret", "stringData": {"x": "y"}})),
        );
        assert_eq!(none, None);
        assert_eq!(
            only,
            Some(json!({"kind": "Secret", "stringData": {"x": "<redacted: after>"}}))
        );
        let cm = Some(json!({"kind": "ConfigMap", "data": {"x": "y"}}));
        assert_eq!(super::redact_pair(cm.clone(), None), (cm, None));
    }

    #[test]
    fn the_api_servers_ways_of_saying_a_field_cannot_change() {
        for message in [
            r#"Service "db" is invalid: spec.clusterIP: Invalid value: "10.0.0.9": field is immutable"#,
            r#"Service "db" is invalid: spec.clusterIP: Invalid value: "": may not change once set"#,
            r#"Job.batch "m" is invalid: spec.selector: Invalid value: {}: field is immutable"#,
            r#"RoleBinding.rbac.authorization.k8s.io "rb" is invalid: roleRef: Invalid value: {}: cannot change roleRef"#,
            r#"StatefulSet.apps "web" is invalid: spec: Forbidden: updates to statefulset spec for fields other than 'replicas', 'template', 'updateStrategy' and 'minReadySeconds' are forbidden"#,
            r#"Pod "p" is invalid: spec: Forbidden: pod updates may not change fields other than `spec.containers[*].image`"#,
            r#"PersistentVolumeClaim "data" is invalid: spec: Forbidden: spec is immutable after creation except resources.requests for bound claims"#,
            r#"Pod "debug" is invalid: spec.tolerations: Forbidden: existing toleration can not be modified except its tolerationSeconds"#,
            r#"StorageClass.storage.k8s.io "manual" is invalid: parameters: Forbidden: updates to parameters are forbidden."#,
            r#"StorageClass.storage.k8s.io "manual" is invalid: provisioner: Forbidden: updates to provisioner are forbidden."#,
        ] {
            assert!(immutable_refusal(message), "{message}");
        }
        for message in [
            r#"ConfigMap "c" is invalid: data[a b]: Invalid value: "a b": a valid config key must consist of alphanumeric characters"#,
            r#"Deployment.apps "web" is invalid: spec.replicas: Invalid value: -1: must be greater than or equal to 0"#,
        ] {
            assert!(!immutable_refusal(message), "{message}");
        }
    }
}
