//! The action record: ConfigMap `action-<id>` labelled
//! `snapback.io/record: action` and `snapback.io/state: <state>`, holding the
//! owner, timestamps and the history of rollbacks with their reports.

use std::collections::BTreeMap;
use std::fmt;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::store::model::ActionId;

/// binaryData-free key of the record's JSON document.
pub const RECORD_KEY: &str = "action.json";

/// Record extension set by retention, with the record's resourceVersion as
/// precondition, before it deletes an action's snapshots: a rollback that
/// finds it answers "not found" instead of restoring from a store being
/// emptied.
pub const PRUNING_KEY: &str = "pruning";

/// Record extension set by a rollback (not a dry run), with the record's
/// resourceVersion as precondition, before it plans: retention leaves the
/// action alone from then on (for [`ROLLBACK_REQUEST_GRACE`]), so nothing
/// is pruned under a rollback that has not yet marked its action
/// `rolling-back`.
pub const ROLLBACK_REQUESTED_KEY: &str = "rollbackRequestedAt";

/// Record extension beside [`ROLLBACK_REQUESTED_KEY`]: the snapshotter
/// (its instance id) that asked, so that another replica knows the
/// rollback is not its own.
pub const ROLLBACK_REQUESTED_BY_KEY: &str = "rollbackRequestedBy";

/// How long a requested rollback keeps its action from being pruned.
pub const ROLLBACK_REQUEST_GRACE: std::time::Duration = std::time::Duration::from_secs(3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ActionState {
    Open,
    Completed,
    Cancelled,
    RollingBack,
    RolledBack,
    RollbackFailed,
}

impl ActionState {
    pub const ALL: [ActionState; 6] = [
        ActionState::Open,
        ActionState::Completed,
        ActionState::Cancelled,
        ActionState::RollingBack,
        ActionState::RolledBack,
        ActionState::RollbackFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ActionState::Open => "open",
            ActionState::Completed => "completed",
            ActionState::Cancelled => "cancelled",
            ActionState::RollingBack => "rolling-back",
            ActionState::RolledBack => "rolled-back",
            ActionState::RollbackFailed => "rollback-failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

impl fmt::Display for ActionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A namespace deletion an action made, as its webhook admitted it (a later
/// admission step may still have refused it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletedNamespace {
    pub uid: String,
    /// When it was admitted (snapback's clock).
    pub at: Timestamp,
}

/// The stored record of an action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActionRecord {
    pub id: ActionId,
    pub state: ActionState,
    /// How the action came to be: explicit, annotation, session or rollback.
    pub origin: String,
    /// The user the action belongs to (who opened it or made its first change).
    pub owner: String,
    /// The owner's groups, to act as the owner later (guards).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub owner_groups: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Timestamp>,
    /// For a rollback action: the action it rolled back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_of: Option<ActionId>,
    /// Rollbacks of this action, oldest first, each with its report.
    #[serde(default)]
    pub rollbacks: Vec<serde_json::Value>,
    /// Namespaces this action deleted, by name: the objects the namespace
    /// controller deletes in them belong to this action. Also a label
    /// `ns.snapback.io/<name>: <uid>` on the record, for any replica to find
    /// the action.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub deleted_namespaces: BTreeMap<String, DeletedNamespace>,
    /// Free-form extension data (guards, in-progress rollback progress).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extensions: BTreeMap<String, serde_json::Value>,
}

impl ActionRecord {
    /// This action's deletion of namespace `name`, if it deleted the one
    /// with this uid.
    pub fn deleted_namespace(&self, name: &str, uid: &str) -> Option<&DeletedNamespace> {
        self.deleted_namespaces.get(name).filter(|d| d.uid == uid)
    }

    pub fn new(id: ActionId, origin: &str, owner: &str, now: Timestamp) -> Self {
        ActionRecord {
            id,
            state: ActionState::Open,
            origin: origin.to_string(),
            owner: owner.to_string(),
            owner_groups: vec![],
            description: None,
            created_at: now,
            updated_at: now,
            completed_at: None,
            rollback_of: None,
            rollbacks: vec![],
            deleted_namespaces: BTreeMap::new(),
            extensions: BTreeMap::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_as_spec_names() {
        for st in ActionState::ALL {
            assert_eq!(ActionState::parse(st.as_str()), Some(st));
            assert_eq!(
                serde_json::to_value(st).unwrap(),
                serde_json::Value::String(st.as_str().into())
            );
        }
        assert_eq!(ActionState::RollbackFailed.as_str(), "rollback-failed");
        assert_eq!(ActionState::parse("bogus"), None);
    }
}
