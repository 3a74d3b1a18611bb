//! Rollback planning, pure: from an action's snapshots to per-object targets,
//! and from a target and the object's current state to one step.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::store::codec;
use crate::store::model::{ObjectRef, Operation, SnapshotMeta};

/// Marker in the set of accepted states for "the object did not exist".
pub const ABSENT: &str = "absent";

/// One snapshot with its decoded prior object (or why it could not be read).
#[derive(Debug, Clone)]
pub struct Loaded {
    pub meta: SnapshotMeta,
    pub prior: Result<Option<Value>, String>,
}

/// What an object must become.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// Created by the action: delete it, but only an object with one of the
    /// uids the action's creates got (a rejected create and a retry both count).
    /// `last_create`: when the action's last create was admitted; an object
    /// of another uid made after that was made by someone else since.
    Absent {
        created_uids: Vec<String>,
        last_create: Option<jiff::Timestamp>,
    },
    /// Existed before: this content.
    Present(Value),
    /// Only its scale subresource changed: restore this Scale through it.
    Scale(Value),
    /// The snapshot needed to restore it cannot be used.
    Unreadable(String),
}

/// Everything the action did to one object.
#[derive(Debug, Clone)]
pub struct ObjectHistory {
    /// The object (subresource: `scale` when the target is a Scale).
    pub object: ObjectRef,
    pub target: Target,
    /// Conflict fingerprints of every state the action produced or started
    /// from (`ABSENT` for "did not exist"). A current state outside this set
    /// was made by someone else after the action.
    pub accepted: HashSet<String>,
    /// Dependency rank: lower is restored first, deleted last.
    pub rank: u8,
    /// Names of the snapshots, oldest first (for messages).
    pub snapshots: Vec<String>,
    /// The API groups and versions the action's changes to the object went
    /// through, other than `object`'s (an Ingress changed through v1beta1
    /// and v1, or through `extensions` and `networking.k8s.io`): their
    /// fingerprints are of those forms.
    pub other_versions: Vec<(String, String)>,
    /// `spec.replicas` the action's last change left, when recorded.
    pub last_after_replicas: Option<String>,
    /// Every `spec.replicas` the action started from or produced (a change
    /// a later admission step refused included).
    pub replica_states: Vec<u64>,
    /// One of the action's changes changed `spec.replicas` itself (a scale,
    /// or a manifest with other replicas).
    pub action_scaled: bool,
    /// The first of the action's changes that started from a state the
    /// action neither produced nor started from: someone else changed the
    /// object between two of the action's changes.
    pub interleaved: Option<String>,
    /// The identities (uid, creationTimestamp) the object had in the
    /// action's changes, from their prior states: a current object of
    /// another uid whose content is the state the action left was
    /// recreated since (by a rollback of a later action that deleted it),
    /// not changed (see [`accept_recreated`]).
    pub identities: Vec<(Value, Value)>,
    /// Conflict fingerprint of the state the action's last change to the
    /// object left, unless that change deleted it.
    pub last_after: Option<String>,
    /// A custom resource whose Scale the action changed: its replicas
    /// field (a JSON pointer), and for a change from 0 whether the field
    /// was unset before, when the capture could tell.
    pub prior_replicas_field: Option<(String, Option<bool>)>,
}

impl ObjectHistory {
    /// apiVersion of the object as it was captured.
    pub fn target_api_version(&self) -> Option<String> {
        match &self.target {
            Target::Present(p) => p
                .get("apiVersion")
                .and_then(Value::as_str)
                .map(str::to_string),
            _ => None,
        }
    }

    pub fn fetches_scale(&self) -> bool {
        matches!(self.target, Target::Scale(_))
    }
}

/// Build one history per object touched by the action.
pub fn histories(mut loaded: Vec<Loaded>) -> Vec<ObjectHistory> {
    loaded.sort_by_key(|l| l.meta.order_key());
    let mut by_object: BTreeMap<(String, String, Option<String>, String), Vec<Loaded>> =
        BTreeMap::new();
    for l in loaded {
        let (group, resource, namespace, name) = l.meta.object.object_key();
        let group = storage_group(&group, &resource).to_string();
        by_object
            .entry((group, resource, namespace, name))
            .or_default()
            .push(l);
    }
    by_object.into_values().map(history).collect()
}

fn history(snaps: Vec<Loaded>) -> ObjectHistory {
    let (main, subs): (Vec<&Loaded>, Vec<&Loaded>) = snaps
        .iter()
        .partition(|l| l.meta.object.subresource.is_none());
    let names = snaps.iter().map(|l| l.meta.snapshot_name.clone()).collect();
    let mut accepted = HashSet::new();
    let fingerprints = |set: &mut HashSet<String>, list: &[&Loaded]| {
        for l in list {
            let Some(before) = before_fp(l) else { continue };
            set.insert(before);
            let Some(after) = after_fp(l) else { continue };
            set.insert(after);
        }
    };
    if main.is_empty() {
        // Only subresource writes (scale): restore through the subresource.
        let first = subs[0];
        fingerprints(&mut accepted, &subs);
        let mut object = first.meta.object.clone();
        object.subresource = Some(first.meta.object.subresource.clone().unwrap_or_default());
        let target = match &first.prior {
            Ok(Some(prior)) => Target::Scale(prior.clone()),
            Ok(None) => Target::Unreadable(format!(
                "snapshot {} has no prior state",
                first.meta.snapshot_name
            )),
            Err(e) => Target::Unreadable(e.clone()),
        };
        return ObjectHistory {
            rank: rank(&object.group, &object.resource),
            object,
            target,
            accepted,
            snapshots: names,
            other_versions: Vec::new(),
            last_after_replicas: None,
            replica_states: Vec::new(),
            action_scaled: false,
            interleaved: None,
            identities: Vec::new(),
            last_after: None,
            prior_replicas_field: replicas_field(first),
        };
    };
    fingerprints(&mut accepted, &main);
    let start = first_real(&main)
        .and_then(|real| main.iter().position(|l| std::ptr::eq(*l, real)))
        .unwrap_or(0);
    let first_main = main[start];
    let mut object = first_main.meta.object.clone();
    object.subresource = None;
    let target = match (first_main.meta.operation, &first_main.prior) {
        (Operation::Create, _) => Target::Absent {
            created_uids: main
                .iter()
                .filter(|l| l.meta.operation == Operation::Create)
                .filter_map(|l| l.meta.uid.clone())
                .collect(),
            last_create: main
                .iter()
                .filter(|l| l.meta.operation == Operation::Create)
                .map(|l| l.meta.timestamp)
                .max(),
        },
        (_, Ok(Some(prior))) => {
            let mut prior = prior.clone();
            // Scale writes made before the first full change: the full prior
            // already has the changed replicas; put the earlier value back
            // (a Scale leaves out a count of 0), or take out a custom
            // resource's replicas field that was not set.
            if let Some(scale) = subs
                .iter()
                .find(|s| s.meta.order_key() < first_main.meta.order_key())
                && let Ok(Some(scale_prior)) = &scale.prior
            {
                let replicas = scale_prior
                    .pointer("/spec/replicas")
                    .cloned()
                    .unwrap_or_else(|| Value::from(0));
                let field = replicas_field(scale);
                let at = field
                    .as_ref()
                    .and_then(|(f, _)| json_patch::jsonptr::Pointer::parse(f).ok());
                match (at, field.as_ref().and_then(|(_, unset)| *unset)) {
                    (Some(at), Some(true)) => {
                        at.delete(&mut prior);
                    }
                    (Some(at), _) => {
                        // A dotted path of field names: only objects on the way.
                        let _ = at.assign(&mut prior, replicas);
                    }
                    (None, _) => {
                        if let Some(spec) = prior.get_mut("spec").and_then(Value::as_object_mut) {
                            spec.insert("replicas".into(), replicas);
                        }
                    }
                }
            }
            Target::Present(prior)
        }
        (_, Ok(None)) => Target::Unreadable(format!(
            "snapshot {} has no prior state",
            first_main.meta.snapshot_name
        )),
        (_, Err(e)) => Target::Unreadable(e.clone()),
    };
    if let Some(kind) = match &target {
        Target::Present(p) => p.get("kind").and_then(Value::as_str).map(str::to_string),
        _ => None,
    } {
        object.kind = kind;
    }
    let mut other_versions: Vec<(String, String)> = main
        .iter()
        .map(|l| (l.meta.object.group.clone(), l.meta.object.version.clone()))
        .filter(|(g, v)| *g != object.group || *v != object.version)
        .collect();
    other_versions.sort();
    other_versions.dedup();
    ObjectHistory {
        rank: rank(&object.group, &object.resource),
        object,
        target,
        accepted,
        snapshots: names,
        // Scale subresource writes included: they change replicas too.
        last_after_replicas: snaps
            .iter()
            .rev()
            .find_map(|l| l.meta.after_replicas.clone()),
        replica_states: snaps
            .iter()
            .flat_map(|l| {
                let (before, after) = replica_change(l);
                [before, after]
            })
            .flatten()
            .collect(),
        action_scaled: snaps.iter().any(|l| match replica_change(l) {
            (Some(before), Some(after)) => before != after,
            _ => false,
        }),
        interleaved: if other_versions.is_empty() {
            interleaved(&main, start)
        } else {
            // Fingerprints are per API version: not comparable.
            None
        },
        other_versions,
        identities: identities(&main),
        last_after: main
            .last()
            .and_then(|l| after_fp(l))
            .filter(|fp| fp != ABSENT),
        prior_replicas_field: None,
    }
}

/// What the capture of a custom resource's Scale change found about its
/// replicas field.
fn replicas_field(l: &Loaded) -> Option<(String, Option<bool>)> {
    l.meta
        .replicas_path
        .clone()
        .filter(|p| p.starts_with('/'))
        .map(|p| (p, l.meta.replicas_unset))
}

/// The (uid, creationTimestamp) pairs of the object's prior states.
fn identities(main: &[&Loaded]) -> Vec<(Value, Value)> {
    let mut out: Vec<(Value, Value)> = Vec::new();
    for l in main {
        if let Ok(Some(prior)) = &l.prior
            && let Some(meta) = prior.get("metadata")
            && let Some(uid) = meta.get("uid")
        {
            let pair = (
                uid.clone(),
                meta.get("creationTimestamp")
                    .cloned()
                    .unwrap_or(Value::Null),
            );
            if !out.contains(&pair) {
                out.push(pair);
            }
        }
    }
    out
}

/// An object deleted after the action and brought back with the very
/// content the action left (undoing, newest first, a later action that
/// deleted it: its rollback recreates it) differs from that state only in
/// its identity, which the conflict fingerprint includes. Compared under
/// each identity the object had in the action, such an object is the state
/// the action's last change left: its current fingerprint is accepted, so
/// the rollback is no conflict. Only that last state counts (not a state
/// from the middle of the action, nor "absent" when the action ended by
/// deleting the object: an object created after that is someone else's),
/// and only an object that existed before the action (its identities come
/// from prior states).
pub fn accept_recreated(
    histories: &mut [ObjectHistory],
    current: &[Result<Option<Value>, String>],
) {
    for (h, c) in histories.iter_mut().zip(current) {
        let Ok(Some(c)) = c else { continue };
        let Some(uid) = c.pointer("/metadata/uid") else {
            continue;
        };
        if h.last_after.is_none()
            || h.identities.is_empty()
            || h.identities.iter().any(|(u, _)| u == uid)
        {
            continue;
        }
        let here = codec::fingerprint(c);
        if h.accepted.contains(&here) {
            continue;
        }
        let recreated_from_ours = h.identities.iter().any(|(uid, created)| {
            let mut as_ours = c.clone();
            if let Some(meta) = as_ours.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.insert("uid".into(), uid.clone());
                match created {
                    Value::Null => meta.remove("creationTimestamp"),
                    t => meta.insert("creationTimestamp".into(), t.clone()),
                };
            }
            h.last_after.as_deref() == Some(codec::fingerprint(&as_ours).as_str())
        });
        if recreated_from_ours {
            h.accepted.insert(here);
        }
    }
}

/// `spec.replicas` before and after one change, where known (a Scale's
/// prior omits zero).
fn replica_change(l: &Loaded) -> (Option<u64>, Option<u64>) {
    let before = match &l.prior {
        Ok(Some(p)) => replicas(p)
            .and_then(Value::as_u64)
            .or_else(|| (l.meta.object.subresource.as_deref() == Some("scale")).then_some(0)),
        _ => None,
    };
    let after = l
        .meta
        .after_replicas
        .as_deref()
        .and_then(|r| r.parse().ok());
    (before, after)
}

/// Conflict fingerprint of the state a change started from (`ABSENT` for a
/// create); None when it cannot be known.
fn before_fp(l: &Loaded) -> Option<String> {
    match (&l.meta.before_fingerprint, l.meta.operation, &l.prior) {
        (_, Operation::Create, _) => Some(ABSENT.to_string()),
        (Some(fp), _, _) => Some(fp.clone()),
        // Not recorded at capture (it costs the admission path a second
        // fingerprint): the stored prior object gives it.
        (None, _, Ok(Some(prior))) => Some(crate::store::codec::fingerprint(prior)),
        (None, _, _) => None,
    }
}

/// Conflict fingerprint of the state a change left (`ABSENT` for a delete).
fn after_fp(l: &Loaded) -> Option<String> {
    match (&l.meta.after_fingerprint, l.meta.operation) {
        (_, Operation::Delete) => Some(ABSENT.to_string()),
        (Some(fp), _) => Some(fp.clone()),
        (None, _) => None,
    }
}

/// Whether someone else changed the object between two of the action's
/// changes (`main`, oldest first, the action's real history from `start`):
/// each change must start from a state the action produced or started from
/// (a change a later admission step refused leaves the state as it was, so
/// both count). Unknown when a fingerprint is missing.
fn interleaved(main: &[&Loaded], start: usize) -> Option<String> {
    let mut seen = HashSet::new();
    let mut deleted = false;
    for (i, l) in main.iter().enumerate().skip(start) {
        let (before, after) = (before_fp(l)?, after_fp(l)?);
        if i > start && !seen.contains(&before) {
            match l.meta.operation {
                // A create of an object that exists (`kubectl create … ||
                // true` run again) is refused after admission: a phantom.
                // A create that follows someone else's delete is no change
                // of theirs to undo either.
                Operation::Create => continue,
                // After the action's own delete, an object its finalizers
                // hold (deletionTimestamp set, finalizers being removed) is
                // in the state that delete made.
                _ if deleted && being_deleted(l) => {}
                _ => return Some(l.meta.snapshot_name.clone()),
            }
        }
        deleted |= l.meta.operation == Operation::Delete;
        seen.insert(before);
        seen.insert(after);
    }
    None
}

/// The change's prior state is an object whose deletion has begun.
fn being_deleted(l: &Loaded) -> bool {
    matches!(&l.prior, Ok(Some(p)) if p.pointer("/metadata/deletionTimestamp").is_some_and(|d| !d.is_null()))
}

/// The snapshot whose prior state is the object's before the action, when
/// that is not the first one: creates the API server refused after
/// admission (`kubectl create` of an object that already exists passes
/// admission, with a fresh uid, and then fails with AlreadyExists). If the
/// first update or delete in the action is of an object none of the
/// action's creates made, that object existed before the action, and the
/// creates before it never happened. None: the first snapshot it is.
fn first_real<'a>(main: &[&'a Loaded]) -> Option<&'a Loaded> {
    let mut created = HashSet::new();
    for l in main {
        match (l.meta.operation, &l.meta.uid) {
            (Operation::Create, Some(uid)) => {
                created.insert(uid.as_str());
            }
            (Operation::Create, None) => return None,
            (_, Some(uid)) if !created.is_empty() && !created.contains(uid.as_str()) => {
                return Some(l);
            }
            _ => return None,
        }
    }
    None
}

/// Dependency order: namespaces, CRDs, the policies the API server applies
/// when objects are created (limit ranges, quotas, priority classes),
/// service accounts, RBAC, config maps and secrets, storage, services, the
/// policies that constrain workloads (network policies, disruption
/// budgets), workloads, their children, the rest. (SPEC §4 leaves the
/// policies to "the rest": restored after the workloads, a namespace came
/// back with pods created without their limits.)
/// The group an object is kept under where the API server serves one
/// resource in two groups (up to Kubernetes 1.21, an Ingress is both
/// `extensions/v1beta1` and `networking.k8s.io`; earlier, Deployments and
/// NetworkPolicies were in `extensions` too): the same object, whichever
/// group a change went through, so one history of it. The namespace
/// controller and the garbage collector pick either.
pub fn storage_group<'a>(group: &'a str, resource: &str) -> &'a str {
    match (group, resource) {
        ("extensions", "ingresses" | "networkpolicies") => "networking.k8s.io",
        ("extensions", "deployments" | "daemonsets" | "replicasets") => "apps",
        ("extensions", "podsecuritypolicies") => "policy",
        _ => group,
    }
}

pub fn rank(group: &str, resource: &str) -> u8 {
    let group = storage_group(group, resource);
    match (group, resource) {
        ("", "namespaces") => 0,
        ("apiextensions.k8s.io", "customresourcedefinitions") => 1,
        ("", "limitranges" | "resourcequotas") | ("scheduling.k8s.io", "priorityclasses") => 2,
        ("", "serviceaccounts") => 3,
        ("rbac.authorization.k8s.io", "clusterroles" | "roles") => 4,
        ("rbac.authorization.k8s.io", "clusterrolebindings" | "rolebindings") => 5,
        ("", "configmaps" | "secrets") => 6,
        ("", "persistentvolumes") => 7,
        ("", "persistentvolumeclaims") => 8,
        ("", "services") => 9,
        ("networking.k8s.io", "networkpolicies") | ("policy", "poddisruptionbudgets") => 10,
        ("apps", "deployments" | "statefulsets" | "daemonsets") | ("batch", "cronjobs") => 11,
        ("apps", "replicasets") | ("batch", "jobs") => 12,
        ("", "pods") => 13,
        _ => 14,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RestoreOp {
    Delete,
    Replace,
    Create,
}

impl RestoreOp {
    pub fn as_str(self) -> &'static str {
        match self {
            RestoreOp::Delete => "delete",
            RestoreOp::Replace => "replace",
            RestoreOp::Create => "create",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Restored,
    Unchanged,
    Planned,
    Conflict,
    Failed,
    Skipped,
}

impl Outcome {
    pub const ALL: [Outcome; 6] = [
        Outcome::Restored,
        Outcome::Unchanged,
        Outcome::Planned,
        Outcome::Conflict,
        Outcome::Failed,
        Outcome::Skipped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Restored => "restored",
            Outcome::Unchanged => "unchanged",
            Outcome::Planned => "planned",
            Outcome::Conflict => "conflict",
            Outcome::Failed => "failed",
            Outcome::Skipped => "skipped",
        }
    }
}

/// What to do with one object, decided from its history and current state.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Nothing to do: `Unchanged`, `Conflict`, `Skipped` or `Failed`.
    None(Outcome, String),
    /// Delete, preconditioned on the uid and the resourceVersion seen.
    Delete {
        uid: String,
        resource_version: String,
    },
    /// Create from this body (server-owned fields already stripped).
    Create(Value),
    /// The object is being deleted (finalizers pending): wait, bounded, until
    /// the one with this uid is gone, then create from this body.
    CreateWhenGone { body: Value, uid: String },
    /// Replace with this body (current resourceVersion and identity set).
    Replace(Value),
    /// Replace the scale subresource with this body.
    ReplaceScale(Value),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub operation: RestoreOp,
    pub action: Action,
}

impl Step {
    pub fn is_write(&self) -> bool {
        !matches!(self.action, Action::None(..))
    }

    /// The state the object will be in after the step (None: absent), for
    /// dry-run patches.
    pub fn target_body(&self) -> Option<&Value> {
        match &self.action {
            Action::Create(b)
            | Action::CreateWhenGone { body: b, .. }
            | Action::Replace(b)
            | Action::ReplaceScale(b) => Some(b),
            _ => None,
        }
    }
}

fn conflict_fp(current: Option<&Value>) -> String {
    current
        .map(codec::fingerprint)
        .unwrap_or_else(|| ABSENT.to_string())
}

/// Decide the step for one object. `current` is the object now (for a Scale
/// target: its scale subresource), None when it does not exist.
pub fn decide(h: &ObjectHistory, current: Option<&Value>, force: bool) -> Step {
    // The action never changed the replicas: whatever scaled the object
    // since it began (an autoscaler, `kubectl scale`, during the action or
    // after it) is kept: the prior content, at the current replicas.
    let at_current_scale;
    let target = match (&h.target, current) {
        // If the action scaled it itself, a scale by someone else is a
        // change to what the action did (a conflict, below), and with force
        // the prior replicas come back too.
        (Target::Present(t), Some(c))
            if h.last_after_replicas.is_some()
                && !h.action_scaled
                && replicas(c).is_some()
                && replicas(c) != replicas(t) =>
        {
            let mut t = t.clone();
            if let Some(spec) = t.get_mut("spec").and_then(Value::as_object_mut) {
                spec.insert("replicas".into(), c["spec"]["replicas"].clone());
            }
            at_current_scale = Target::Present(t);
            &at_current_scale
        }
        _ => &h.target,
    };
    let op = match (target, current) {
        (Target::Absent { .. }, _) => RestoreOp::Delete,
        (Target::Present(_), None) => RestoreOp::Create,
        _ => RestoreOp::Replace,
    };
    let none = |outcome, msg: String| Step {
        operation: op,
        action: Action::None(outcome, msg),
    };
    // An object on its way out (finalizers): neither in its prior state nor
    // restorable until it is gone.
    let terminating = current.is_some_and(|c| {
        c.get("metadata")
            .and_then(|m| m.get("deletionTimestamp"))
            .is_some_and(|d| !d.is_null())
    });
    match (target, terminating) {
        (Target::Absent { .. }, true) => {
            return none(Outcome::Unchanged, "already being deleted".into());
        }
        // Deleted by the action (or, with force, by anyone), its deletion
        // not finished yet (a namespace emptying, a claim's protection):
        // recreated once it is gone.
        // Decided as if it were gone (a conflict if the action did not
        // delete it), the create waiting for that.
        (Target::Present(_), true) => {
            let mut step = decide(h, None, force);
            if let Action::Create(body) = step.action {
                step.action = Action::CreateWhenGone {
                    body,
                    uid: current.and_then(uid_of).unwrap_or_default().to_string(),
                };
            }
            return step;
        }
        (Target::Scale(_), true) => {
            return none(
                Outcome::Failed,
                "the object is being deleted (finalizers pending); its scale cannot be restored"
                    .into(),
            );
        }
        _ => {}
    }
    // Already in the target state: idempotence, and phantom snapshots of
    // changes a later admission step rejected.
    match (target, current) {
        (Target::Unreadable(reason), _) => {
            return none(Outcome::Failed, format!("snapshot refused: {reason}"));
        }
        (Target::Absent { .. }, None) => return none(Outcome::Unchanged, "does not exist".into()),
        (Target::Present(t), Some(c)) if codec::same_content(t, c) => {
            return none(Outcome::Unchanged, "already in its prior state".into());
        }
        (Target::Scale(t), Some(c)) if replicas(t) == replicas(c) => {
            return none(Outcome::Unchanged, "already at its prior scale".into());
        }
        (Target::Scale(_), None) => {
            return none(
                Outcome::Skipped,
                "the object no longer exists; its scale cannot be restored".into(),
            );
        }
        (
            Target::Absent {
                created_uids,
                last_create,
            },
            Some(c),
        ) if !created_uids.is_empty()
            && !created_uids.iter().any(|u| Some(u.as_str()) == uid_of(c)) =>
        {
            // Made after the action's create (whole seconds, so surely
            // after): deleted and created again by someone else since, a
            // change after the action. Made before: the action's create
            // was refused because it existed (a phantom), nothing to undo.
            let made_since = created_after(c, *last_create);
            if made_since && !force {
                return none(
                    Outcome::Conflict,
                    format!(
                        "deleted and created again after the action (now uid {}, created {}); use force=true to leave it as it is",
                        uid_of(c).unwrap_or("?"),
                        c.pointer("/metadata/creationTimestamp")
                            .and_then(Value::as_str)
                            .unwrap_or("?")
                    ),
                );
            }
            return none(
                Outcome::Skipped,
                format!(
                    "left alone: the object with this name (uid {}) is not the one the action created (uid {}); either that create was refused (an object of this name already existed) or the object was deleted and created again since",
                    uid_of(c).unwrap_or("?"),
                    created_uids.join(", ")
                ),
            );
        }
        _ => {}
    }
    // A deleted token Secret is a revoked credential: recreating it would
    // make the token valid again. A service account's (the token controller
    // makes new ones for the account) or a bootstrap token (`kubeadm token
    // delete`, or its expiry by the token cleaner).
    if let (Target::Present(t), None) = (target, current)
        && t.get("kind").and_then(Value::as_str) == Some("Secret")
    {
        match t.get("type").and_then(Value::as_str) {
            Some("kubernetes.io/service-account-token") => return none(
                Outcome::Skipped,
                "not brought back: a service account token Secret's deletion revoked the token; the token controller makes new ones".into(),
            ),
            Some("bootstrap.kubernetes.io/token") => return none(
                Outcome::Skipped,
                "not brought back: a bootstrap token Secret's deletion revoked the token; make a new one (kubeadm token create)".into(),
            ),
            _ => {}
        }
    }
    let force = force || made_for_every_namespace(h);
    if !force && !h.accepted.contains(&conflict_fp(current)) {
        let what = if current.is_some() {
            "changed after the action"
        } else {
            "deleted after the action"
        };
        return none(
            Outcome::Conflict,
            format!("{what} (use force=true to overwrite)"),
        );
    }
    if !force && let Some(snapshot) = &h.interleaved {
        return none(
            Outcome::Conflict,
            format!(
                "changed by someone else during the action, before its change {snapshot}; restoring the prior state would undo that change too (use force=true to overwrite)"
            ),
        );
    }
    if !force
        && h.action_scaled
        && let Some(c) = current
        && scaled_since(h, c)
    {
        return none(
            Outcome::Conflict,
            format!(
                "scaled to {} replicas since the action, which scaled it to {} (use force=true to overwrite)",
                replicas(c).map(Value::to_string).unwrap_or_default(),
                h.last_after_replicas.as_deref().unwrap_or("?")
            ),
        );
    }
    let action = match (target, current) {
        (Target::Absent { .. }, Some(c)) => Action::Delete {
            uid: uid_of(c).unwrap_or_default().to_string(),
            resource_version: c
                .get("metadata")
                .and_then(|m| m.get("resourceVersion"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
        },
        (Target::Present(t), None) => Action::Create(for_create(t)),
        (Target::Present(t), Some(c)) => Action::Replace(for_replace(t, c)),
        (Target::Scale(t), Some(c)) => Action::ReplaceScale(for_replace(t, c)),
        _ => return none(Outcome::Unchanged, "nothing to do".into()),
    };
    Step {
        operation: op,
        action,
    }
}

/// What controllers make in every namespace, whenever it exists: the
/// `default` ServiceAccount and the `kube-root-ca.crt` ConfigMap. Deleted by
/// the action (with their namespace) and there again, they are the
/// controllers', not a later change: they get their prior state (a
/// customised default ServiceAccount's image pull secrets) without a
/// conflict, also when a rollback that recreated the namespace is retried.
fn made_for_every_namespace(h: &ObjectHistory) -> bool {
    let o = &h.object;
    o.group.is_empty()
        && o.namespace.is_some()
        && o.subresource.is_none()
        && matches!(
            (o.resource.as_str(), o.name.as_str()),
            ("serviceaccounts", "default") | ("configmaps", "kube-root-ca.crt")
        )
        && h.accepted.contains(ABSENT)
}

/// Whether the object was created after `at` (its creationTimestamp has
/// whole seconds, so this is sure).
fn created_after(c: &Value, at: Option<jiff::Timestamp>) -> bool {
    at.is_some_and(|at| {
        c.pointer("/metadata/creationTimestamp")
            .and_then(Value::as_str)
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            .is_some_and(|created| created > at)
    })
}

/// Whether the object's replicas are not those the action's last change
/// left (the fingerprint does not look at them): changed since by someone
/// else. Unknown (snapshots from before this was recorded): no.
fn scaled_since(h: &ObjectHistory, current: &Value) -> bool {
    h.last_after_replicas.is_some()
        && replicas(current)
            .and_then(Value::as_u64)
            .is_some_and(|now| !h.replica_states.contains(&now))
}

/// `spec.replicas`, where an object has it.
pub fn replicas(v: &Value) -> Option<&Value> {
    v.get("spec")?.get("replicas")
}

/// The action's create of this object was refused because it already
/// existed (a phantom snapshot): `current` is not one the action created
/// and was made before the action's create. Nothing to undo, nothing the
/// action changed.
pub fn phantom_create(h: &ObjectHistory, current: &Value) -> bool {
    match &h.target {
        Target::Absent {
            created_uids,
            last_create,
        } => {
            !created_uids.is_empty()
                && !created_uids
                    .iter()
                    .any(|u| Some(u.as_str()) == uid_of(current))
                && !created_after(current, *last_create)
        }
        _ => false,
    }
}

fn uid_of(v: &Value) -> Option<&str> {
    v.get("metadata")?.get("uid")?.as_str()
}

/// Fields the API server owns and a create must not carry.
const SERVER_OWNED: &[&str] = &[
    "uid",
    "resourceVersion",
    "creationTimestamp",
    "generation",
    "managedFields",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "selfLink",
];

/// The prior object stripped of server-owned fields and status, and of what
/// the API server generates from an object's uid on create (a Job's
/// selector): the body that creates it anew.
pub fn for_create(target: &Value) -> Value {
    let mut body = without_server_owned(target);
    codec::strip_generated_job_selector(&mut body);
    // A ServiceAccount's token Secrets (before Kubernetes 1.24) went with
    // it; the token controller makes a new one for the new account.
    if is_service_account(&body)
        && let Some(map) = body.as_object_mut()
    {
        map.remove("secrets");
    }
    codec::strip_injected_token_volume(&mut body);
    unbind_volume(&mut body);
    body
}

/// The prior object as a manifest to commit and apply again (`GET
/// …/manifests`): [`for_create`]'s body without what the cluster filled in
/// that a manifest must not pin. A Service's allocated cluster IPs (kept by
/// a restore, which brings the same Service back; in a manifest they make
/// the team's own manifest, without them, unappliable: "primary clusterIP
/// can not be unset"), the annotations and finalizers controllers add
/// (`deployment.kubernetes.io/revision`, the volume controller's marks and
/// protection finalizers), a claim template's status.
pub fn for_git(target: &Value) -> Value {
    let mut body = for_create(target);
    if let Some(meta) = body.get_mut("metadata").and_then(Value::as_object_mut) {
        if let Some(annotations) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
            annotations.retain(|k, _| !codec::controller_annotation(k));
            if annotations.is_empty() {
                meta.remove("annotations");
            }
        }
        if let Some(finalizers) = meta.get_mut("finalizers").and_then(Value::as_array_mut) {
            finalizers.retain(|f| {
                !matches!(
                    f.as_str(),
                    Some("kubernetes.io/pv-protection" | "kubernetes.io/pvc-protection")
                )
            });
            if finalizers.is_empty() {
                meta.remove("finalizers");
            }
        }
    }
    let kind = body
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let core = body.get("apiVersion").and_then(Value::as_str) == Some("v1");
    // What the user's own applied manifest states stays (a pinned cluster
    // IP such as kube-dns's).
    let applied = last_applied(target);
    let stated = |pointer: &str| {
        applied
            .as_ref()
            .is_some_and(|a| a.pointer(pointer).is_some())
    };
    if core
        && kind == "Service"
        && !stated("/spec/clusterIP")
        && let Some(spec) = body.get_mut("spec").and_then(Value::as_object_mut)
        && spec.get("clusterIP").and_then(Value::as_str) != Some("None")
    {
        spec.remove("clusterIP");
        spec.remove("clusterIPs");
    }
    // Allocated ports: the health check port of a LoadBalancer with
    // externalTrafficPolicy Local, and node ports no manifest asked for.
    if core
        && kind == "Service"
        && let Some(spec) = body.get_mut("spec").and_then(Value::as_object_mut)
    {
        if !stated("/spec/healthCheckNodePort") {
            spec.remove("healthCheckNodePort");
        }
        let asked: Vec<Value> = applied
            .as_ref()
            .and_then(|a| a.pointer("/spec/ports"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|p| p.get("nodePort").is_some())
            .map(|p| p["port"].clone())
            .collect();
        for port in spec
            .get_mut("ports")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
            .filter_map(Value::as_object_mut)
        {
            if !port.get("port").is_some_and(|p| asked.contains(p)) {
                port.remove("nodePort");
            }
        }
    }
    // A claim's binding (the volume controller's) and the class the
    // default-class admission plugin filled in: immutable, so a team's
    // manifest without them could not be applied over the export.
    if core
        && kind == "PersistentVolumeClaim"
        && let Some(spec) = body.get_mut("spec").and_then(Value::as_object_mut)
    {
        if !stated("/spec/volumeName") {
            spec.remove("volumeName");
        }
        if !stated("/spec/storageClassName") {
            spec.remove("storageClassName");
        }
    }
    if kind == "StatefulSet"
        && let Some(templates) = body
            .pointer_mut("/spec/volumeClaimTemplates")
            .and_then(Value::as_array_mut)
    {
        for t in templates.iter_mut().filter_map(Value::as_object_mut) {
            t.remove("status");
        }
    }
    body
}

/// Where an object's prior state goes in an action's manifests.
#[derive(Debug, PartialEq, Eq)]
pub enum GitPlacement {
    /// In dependency order, with the others.
    InOrder,
    /// Right before the workloads: the `default` ServiceAccount with
    /// something of its owner's (image pull secrets…). The service account
    /// controller makes it as soon as its namespace exists, so right after
    /// the Namespace in a `kubectl apply` of the stream to a new namespace
    /// it would race the controller ("already exists"); later, it is
    /// usually there and the apply updates it. Before the workloads, so that
    /// their Pods are admitted with its image pull secrets.
    BeforeWorkloads,
    /// Not written: what the cluster makes in every namespace, nothing of
    /// anyone's in it (`kube-root-ca.crt` is the cluster's CA, kept up to
    /// date by the root CA publisher; an old copy applied over it is wrong),
    /// and Secrets: their values are never shown, and a manifest with
    /// redacted values would not apply (or, worse, would).
    LeftOut(String),
}

/// Where `prior` (the object before the action, as `for_git` writes it)
/// goes in the manifests.
pub fn git_placement(h: &ObjectHistory, prior: &Value) -> GitPlacement {
    let o = &h.object;
    if !o.group.is_empty() || o.namespace.is_none() || o.subresource.is_some() {
        return GitPlacement::InOrder;
    }
    match (o.resource.as_str(), o.name.as_str()) {
        ("secrets", _) => {
            let mut keys: Vec<&str> = ["data", "stringData"]
                .iter()
                .filter_map(|f| prior.get(*f).and_then(Value::as_object))
                .flat_map(|m| m.keys().map(String::as_str))
                .collect();
            keys.sort();
            keys.dedup();
            let keys = if keys.is_empty() {
                "none".to_string()
            } else {
                keys.iter()
                    .map(|k| format!("{k}: <redacted>"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            GitPlacement::LeftOut(format!(
                "a Secret's values are never shown ({keys}); a rollback brings it back"
            ))
        }
        ("configmaps", "kube-root-ca.crt") => GitPlacement::LeftOut(
            "the cluster's CA, which the cluster puts in every namespace".into(),
        ),
        ("serviceaccounts", "default") => {
            let git = for_git(prior);
            let own_fields = git.as_object().is_some_and(|b| {
                b.keys()
                    .any(|k| !matches!(k.as_str(), "apiVersion" | "kind" | "metadata"))
            });
            let own_meta = git
                .get("metadata")
                .and_then(Value::as_object)
                .is_some_and(|m| {
                    m.keys()
                        .any(|k| !matches!(k.as_str(), "name" | "namespace"))
                });
            if own_fields || own_meta {
                GitPlacement::BeforeWorkloads
            } else {
                GitPlacement::LeftOut("the cluster makes it in every namespace".into())
            }
        }
        _ => GitPlacement::InOrder,
    }
}

/// The manifest `kubectl apply` last applied to the object, if any.
fn last_applied(target: &Value) -> Option<Value> {
    let text = target
        .pointer("/metadata/annotations")?
        .get(crate::store::model::LAST_APPLIED_ANNOTATION)?
        .as_str()?;
    serde_json::from_str(text).ok()
}

/// A PersistentVolume or claim created again is bound anew by the volume
/// controller: a volume keeps its claim's name and namespace (pre-bound to
/// it) but not the uid of the claim that went away, and a claim loses the
/// controller's "bind completed" marks (it keeps `volumeName`). Recreated as
/// they were, the volume stays `Released` and the claim `Lost`.
fn unbind_volume(body: &mut Value) {
    let kind = body.get("kind").and_then(Value::as_str).unwrap_or_default();
    if body.get("apiVersion").and_then(Value::as_str) != Some("v1") {
        return;
    }
    match kind {
        "PersistentVolume" => {
            if let Some(claim) = body
                .pointer_mut("/spec/claimRef")
                .and_then(Value::as_object_mut)
            {
                claim.remove("uid");
                claim.remove("resourceVersion");
            }
        }
        "PersistentVolumeClaim" => {
            if let Some(annotations) = body
                .pointer_mut("/metadata/annotations")
                .and_then(Value::as_object_mut)
            {
                annotations.remove("pv.kubernetes.io/bind-completed");
                annotations.remove("pv.kubernetes.io/bound-by-controller");
            }
        }
        _ => {}
    }
}

fn is_service_account(v: &Value) -> bool {
    v.get("kind").and_then(Value::as_str) == Some("ServiceAccount")
        && v.get("apiVersion").and_then(Value::as_str) == Some("v1")
}

fn without_server_owned(target: &Value) -> Value {
    let mut body = target.clone();
    if let Some(map) = body.as_object_mut() {
        map.remove("status");
        if let Some(meta) = map.get_mut("metadata").and_then(Value::as_object_mut) {
            for key in SERVER_OWNED {
                meta.remove(*key);
            }
        }
    }
    body
}

/// The prior content on top of the current object's identity and
/// resourceVersion (optimistic concurrency); status stays as it is.
pub fn for_replace(target: &Value, current: &Value) -> Value {
    let mut body = without_server_owned(target);
    let cur_meta = current.get("metadata");
    if let Some(meta) = body.get_mut("metadata").and_then(Value::as_object_mut) {
        for key in ["resourceVersion", "uid", "creationTimestamp"] {
            if let Some(v) = cur_meta.and_then(|m| m.get(key)) {
                meta.insert(key.into(), v.clone());
            }
        }
    }
    if let (Some(map), Some(status)) = (body.as_object_mut(), current.get("status")) {
        map.insert("status".into(), status.clone());
    }
    // What controllers filled in, as it is now (the prior state may name
    // tokens that are gone; a Pod scheduled after the action stays on its
    // node, a claim or volume bound since stays bound).
    codec::take_controller_fields(&mut body, current);
    body
}

/// Execution order: creates and replaces by ascending rank, then deletes by
/// descending rank (failed-at-planning objects included). Returns indices into `steps`, grouped in waves that may
/// run concurrently.
pub fn waves(histories: &[ObjectHistory], steps: &[Step]) -> Vec<Vec<usize>> {
    let mut upserts: BTreeMap<u8, Vec<usize>> = BTreeMap::new();
    let mut deletes: BTreeMap<u8, Vec<usize>> = BTreeMap::new();
    for (i, (h, s)) in histories.iter().zip(steps).enumerate() {
        // Failures found while planning take their place in the order, so
        // that `abort` stops there.
        let failed = matches!(s.action, Action::None(Outcome::Failed, _));
        if !s.is_write() && !failed {
            continue;
        }
        match s.action {
            Action::Delete { .. } => deletes.entry(h.rank).or_default().push(i),
            _ => upserts.entry(h.rank).or_default().push(i),
        }
    }
    upserts
        .into_values()
        .chain(deletes.into_values().rev())
        .collect()
}

#[cfg(test)]
mod tests;

/// Whether a CustomResourceDefinition (as `apiextensions.k8s.io/v1` serves
/// it) is one that only `v1beta1` can create: made through `v1beta1`, it
/// keeps `preserveUnknownFields: true` or versions without a schema, which
/// `v1` refuses on create ("schemas are required").
pub fn legacy_crd(crd: &Value) -> bool {
    let spec = &crd["spec"];
    spec["preserveUnknownFields"] == Value::Bool(true)
        || spec["versions"]
            .as_array()
            .is_some_and(|vs| vs.iter().any(|v| v["schema"]["openAPIV3Schema"].is_null()))
}

/// The same definition in `apiextensions.k8s.io/v1beta1` form, the way to
/// create a [`legacy_crd`] again while the API server serves that version
/// (up to Kubernetes 1.21): printer columns say `JSONPath`, a conversion
/// webhook's client config sits in `webhookClientConfig`.
pub fn crd_as_v1beta1(crd: &Value) -> Value {
    let mut out = crd.clone();
    out["apiVersion"] = Value::String("apiextensions.k8s.io/v1beta1".into());
    let mut top_level = Vec::new();
    if let Some(versions) = out["spec"]["versions"].as_array_mut() {
        for v in versions.iter_mut() {
            if let Some(columns) = v
                .get_mut("additionalPrinterColumns")
                .and_then(Value::as_array_mut)
            {
                for c in columns.iter_mut().filter_map(Value::as_object_mut) {
                    if let Some(path) = c.remove("jsonPath") {
                        c.insert("JSONPath".into(), path);
                    }
                }
            }
            if v["schema"]["openAPIV3Schema"].is_null()
                && let Some(map) = v.as_object_mut()
            {
                map.remove("schema");
            }
        }
        // v1beta1 refuses per-version schemas, subresources and printer
        // columns that are the same in every version: those go top-level
        // (`schema` as `validation`).
        for (per_version, top) in [
            ("schema", "validation"),
            ("subresources", "subresources"),
            ("additionalPrinterColumns", "additionalPrinterColumns"),
        ] {
            let first = versions.first().and_then(|v| v.get(per_version)).cloned();
            if let Some(shared) = first
                && versions.iter().all(|v| v.get(per_version) == Some(&shared))
            {
                for v in versions.iter_mut().filter_map(Value::as_object_mut) {
                    v.remove(per_version);
                }
                top_level.push((top, shared));
            }
        }
    }
    for (top, shared) in top_level {
        out["spec"][top] = shared;
    }
    if let Some(conversion) = out["spec"]
        .get_mut("conversion")
        .and_then(Value::as_object_mut)
        && let Some(Value::Object(mut webhook)) = conversion.remove("webhook")
    {
        if let Some(cc) = webhook.remove("clientConfig") {
            conversion.insert("webhookClientConfig".into(), cc);
        }
        if let Some(versions) = webhook.remove("conversionReviewVersions") {
            conversion.insert("conversionReviewVersions".into(), versions);
        }
    }
    out
}
