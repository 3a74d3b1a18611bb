//! Request and response bodies of the HTTP API.

use std::collections::BTreeSet;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::store::actions::ActionRecord;
use crate::store::kube_store::Activity;
use crate::store::model::SnapshotMeta;

/// `POST /api/v1/actions`. Unknown fields are refused (a typo would
/// otherwise silently open an action without what was meant).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OpenAction {
    /// Label-safe id (at most 63 characters of `[A-Za-z0-9_.-]`, alphanumeric
    /// at both ends; not ending in `-rollback-<number>`, the form of rollback
    /// ids); generated when absent.
    #[schema(pattern = r"^(?!.+-rollback-[0-9]+$)[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")]
    pub id: Option<String>,
    #[schema(max_length = 4096)]
    pub description: Option<String>,
    /// Watch the objects once the action completes; roll back (or report) if
    /// they do not become healthy within the timeout.
    pub guard: Option<crate::guard::GuardSpec>,
}

/// What every answer about an action says.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActionBase {
    pub id: String,
    /// open, completed, cancelled, rolling-back, rolled-back, rollback-failed
    pub state: String,
    /// explicit, annotation, session or rollback
    pub origin: String,
    pub owner: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub completed_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_change_at: Option<Timestamp>,
    /// Number of captured changes.
    pub change_count: usize,
    /// Namespaces of the objects the action touched, and the Namespaces
    /// it created, changed or deleted themselves.
    pub namespaces: BTreeSet<String>,
    /// For a rollback action: the action it rolled back.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollback_of: Option<String>,
    pub rollbacks: usize,
    /// The guard of a guarded action: its state and outcome.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guard: Option<crate::guard::GuardStatus>,
}

/// An action as listed (and as `open` and `complete` answer).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActionSummary {
    #[serde(flatten)]
    pub base: ActionBase,
    /// Number of captured changes (the same as `changeCount`).
    pub changes: usize,
}

impl ActionSummary {
    pub fn new(r: &ActionRecord, snaps: &[&SnapshotMeta]) -> Self {
        Self::of(ActionBase::new(r, snaps))
    }

    /// From what the store's metadata says of the action's snapshots
    /// (the action list: no snapshot is read).
    pub fn from_activity(r: &ActionRecord, activity: Option<&Activity>) -> Self {
        Self::of(match activity {
            Some(a) => ActionBase::with(r, a.last, a.snapshots, a.namespaces.clone()),
            None => ActionBase::with(r, None, 0, BTreeSet::new()),
        })
    }

    fn of(base: ActionBase) -> Self {
        ActionSummary {
            changes: base.change_count,
            base,
        }
    }
}

impl ActionBase {
    pub fn new(r: &ActionRecord, snaps: &[&SnapshotMeta]) -> Self {
        Self::with(
            r,
            snaps.iter().map(|s| s.timestamp).max(),
            snaps.len(),
            snaps
                .iter()
                .filter_map(|s| s.object.touched_namespace().map(str::to_string))
                .collect(),
        )
    }

    fn with(
        r: &ActionRecord,
        last_change_at: Option<Timestamp>,
        changes: usize,
        namespaces: BTreeSet<String>,
    ) -> Self {
        ActionBase {
            id: r.id.to_string(),
            state: r.state.to_string(),
            origin: r.origin.clone(),
            owner: r.owner.clone(),
            description: r.description.clone(),
            created_at: r.created_at,
            updated_at: r.updated_at,
            completed_at: r.completed_at,
            last_change_at,
            change_count: changes,
            namespaces,
            rollback_of: r.rollback_of.as_ref().map(|a| a.to_string()),
            rollbacks: r.rollbacks.len(),
            guard: crate::guard::GuardStatus::of(r),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ActionList {
    pub actions: Vec<ActionSummary>,
    /// How many actions match the filters; more than `actions` holds when
    /// `limit` cut the list.
    pub total: usize,
}

/// One captured change.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Change {
    pub snapshot: String,
    /// create, update or delete
    pub operation: String,
    pub group: String,
    pub version: String,
    pub resource: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subresource: Option<String>,
    pub kind: String,
    /// null for a cluster-scoped object.
    pub namespace: Option<String>,
    pub name: String,
    pub user: String,
    #[schema(value_type = String, format = DateTime)]
    pub timestamp: Timestamp,
}

impl From<&SnapshotMeta> for Change {
    fn from(m: &SnapshotMeta) -> Self {
        Change {
            snapshot: m.snapshot_name.clone(),
            operation: m.operation.to_string(),
            group: m.object.group.clone(),
            version: m.object.version.clone(),
            resource: m.object.resource.clone(),
            subresource: m.object.subresource.clone(),
            kind: m.object.kind.clone(),
            namespace: m.object.namespace.clone(),
            name: m.object.name.clone(),
            user: m.user.clone(),
            timestamp: m.timestamp,
        }
    }
}

/// `GET /api/v1/actions/{id}`: the action and its changes.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActionDetail {
    #[serde(flatten)]
    pub base: ActionBase,
    /// Every captured change, oldest first.
    pub changes: Vec<Change>,
    /// Reports of the rollbacks of this action, oldest first.
    #[schema(value_type = Vec<Object>)]
    pub rollback_reports: Vec<Value>,
    /// While a rollback runs: how far it got.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    pub rollback_action: String,
    /// Objects settled so far (saved every few dozen objects).
    pub done: usize,
    pub total: usize,
}

impl Progress {
    pub fn of(record: &ActionRecord) -> Option<Self> {
        let p = record.extensions.get("rollback")?;
        Some(Progress {
            rollback_action: p.get("rollbackAction")?.as_str()?.to_string(),
            done: p
                .get("results")
                .and_then(Value::as_array)
                .map_or(0, Vec::len),
            total: p.get("total").and_then(Value::as_u64).unwrap_or(0) as usize,
        })
    }
}

/// One object in `GET /api/v1/actions/{id}/diff`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObjectDiff {
    pub group: String,
    pub version: String,
    pub resource: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subresource: Option<String>,
    pub kind: String,
    /// null for a cluster-scoped object.
    pub namespace: Option<String>,
    pub name: String,
    /// created (did not exist before the action), modified, deleted (does not
    /// exist now), unchanged, or error
    pub change: String,
    /// Unified diff from the prior state to the current one (YAML).
    pub diff: String,
    /// RFC 6902 JSON patch from the current object to its prior state: what a
    /// rollback applies.
    #[schema(value_type = Vec<Object>)]
    pub patch: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DiffResponse {
    pub action: String,
    pub objects: Vec<ObjectDiff>,
}
