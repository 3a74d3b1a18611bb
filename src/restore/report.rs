//! The rollback report of SPEC §5.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::restore::plan::{ObjectHistory, Outcome, RestoreOp};

/// What started a rollback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    Request,
    Cancel,
    /// The action's guard saw an object not become healthy in time.
    Guard,
    /// An Alertmanager notification.
    Alert,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Request => "request",
            Trigger::Cancel => "cancel",
            Trigger::Guard => "guard",
            Trigger::Alert => "alert",
        }
    }
}

/// One object of a rollback.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObjectResult {
    pub group: String,
    pub version: String,
    pub resource: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subresource: Option<String>,
    /// null for a cluster-scoped object.
    #[serde(default)]
    pub namespace: Option<String>,
    pub name: String,
    #[schema(value_type = String, example = "replace")]
    pub operation: RestoreOp,
    #[schema(value_type = String, example = "restored")]
    pub outcome: Outcome,
    #[serde(default)]
    pub message: String,
    /// Dry run: RFC 6902 JSON patch from the current object to the target
    /// (for a delete, the whole object is removed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Object>>)]
    pub patch: Option<Value>,
}

impl ObjectResult {
    pub fn new(h: &ObjectHistory, operation: RestoreOp, outcome: Outcome, message: String) -> Self {
        let o = &h.object;
        ObjectResult {
            group: o.group.clone(),
            version: o.version.clone(),
            resource: o.resource.clone(),
            subresource: o.subresource.clone(),
            namespace: o.namespace.clone(),
            name: o.name.clone(),
            operation,
            outcome,
            message,
            patch: None,
        }
    }

    /// Identity of the object across a resumed rollback.
    pub fn key(&self) -> String {
        format!(
            "{}/{}/{}/{}/{}",
            self.group,
            self.resource,
            self.subresource.as_deref().unwrap_or(""),
            self.namespace.as_deref().unwrap_or(""),
            self.name
        )
    }

    pub fn display_name(&self) -> String {
        display_name(
            &self.group,
            &self.resource,
            self.namespace.as_deref(),
            &self.name,
        )
    }
}

/// `configmaps/x in namespace y`, `gears.example.com/g`: how reports and
/// conflicts name an object.
pub fn display_name(group: &str, resource: &str, namespace: Option<&str>, name: &str) -> String {
    let group = if group.is_empty() {
        String::new()
    } else {
        format!(".{group}")
    };
    match namespace {
        Some(ns) => format!("{resource}{group}/{name} in namespace {ns}"),
        None => format!("{resource}{group}/{name}"),
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub action: String,
    /// The action that recorded the restore writes (none for a dry run).
    pub rollback_action: Option<String>,
    pub trigger: Trigger,
    pub dry_run: bool,
    /// The action's state after the rollback.
    pub state: String,
    #[schema(value_type = String, format = DateTime)]
    pub started_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub finished_at: Timestamp,
    /// The caller the restore writes were made as.
    #[serde(default)]
    pub user: String,
    /// Why an automatic rollback happened (guard, alert).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub results: Vec<ObjectResult>,
    /// Objects per outcome.
    pub counts: BTreeMap<String, usize>,
}

/// Objects per outcome, every outcome present (0 where none), so a reader
/// can ask for `counts.failed` without checking that the key exists.
pub fn counts(results: &[ObjectResult]) -> BTreeMap<String, usize> {
    let mut c: BTreeMap<String, usize> = Outcome::ALL
        .iter()
        .map(|o| (o.as_str().to_string(), 0))
        .collect();
    for r in results {
        *c.entry(r.outcome.as_str().to_string()).or_insert(0) += 1;
    }
    c
}
