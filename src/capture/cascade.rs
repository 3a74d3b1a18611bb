//! Deleting a namespace deletes everything in it, but not through the
//! request that deleted the namespace: the namespace controller empties it
//! afterwards, one DELETE per object, as its own (excluded) identity. So that
//! rolling back `kubectl delete namespace` restores the namespace *with* its
//! contents, those deletes are captured into the action that deleted the
//! namespace:
//!
//! - a captured DELETE of a Namespace is noted in the action record (label
//!   `ns.snapback.io/<name>: <uid>`, and when), before the deletion is
//!   admitted; a later admission step may still refuse it, so when several
//!   actions are noted for one uid, the one admitted last before the API
//!   server committed the deletion is it;
//! - a DELETE by one of `--namespace-controller-users` of an object in a
//!   namespace that is being deleted is captured into the action whose
//!   record names that namespace and its uid (any replica finds it; a
//!   namespace deleted, restored and deleted again has another uid, so
//!   another action);
//! - the namespace controller's repeated deletes of an object already being
//!   deleted (its finalizers pending) are not captured again;
//! - objects with a controller owner (Pods of a ReplicaSet, ReplicaSets of
//!   a Deployment, Jobs of a CronJob) and service account token Secrets are
//!   left out: their controller, or the token controller for a restored
//!   ServiceAccount, makes them again (a restored token would name the old
//!   ServiceAccount's uid).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kube::core::admission::Operation as AdmissionOp;
use serde::Deserialize;

use crate::capture::decide::glob_match;
use crate::capture::review::Review;
use crate::config::CaptureConfig;
use crate::store::model::ActionId;
use crate::store::{SnapshotSink, StoreError};

/// How long this replica trusts that a namespace is being deleted, with its
/// uid: a second spares the API server's cache a read per delete while the
/// namespace controller empties it, and is far shorter than it takes to
/// delete a namespace, restore it and delete it again. That a namespace is
/// *not* being deleted is never kept: it may start any moment (a controller
/// manager without per-controller identities collects garbage under the
/// namespace controller's name in live namespaces; each such delete costs
/// a read from the API server's cache).
const NAMESPACE_TTL: Duration = Duration::from_secs(1);
/// Which action deleted a namespace (by uid) does not change once the
/// deletion is committed; kept this long.
const ACTION_TTL: Duration = Duration::from_secs(600);
const CACHE_LIMIT: usize = 10_000;

/// A namespace's name and uid.
type NamespaceKey = (String, String);
use crate::store::TerminatingNamespace as Terminating;

/// Which action is deleting which namespace, as far as this replica knows.
/// Only what was read back from the API server is kept: a deletion this
/// replica admitted may still be refused by a later admission step.
#[derive(Debug, Default)]
pub struct NamespaceDeletions {
    /// name → (uid and deletion time, read at) of namespaces being deleted.
    namespaces: Mutex<HashMap<String, (Terminating, Instant)>>,
    /// (name, uid) → (the action that deleted it, if captured; read at).
    actions: Mutex<HashMap<NamespaceKey, (Option<ActionId>, Instant)>>,
}

fn bounded<K: Eq + std::hash::Hash, V>(
    map: &mut HashMap<K, (V, Instant)>,
    ttl: Duration,
    now: Instant,
) {
    if map.len() >= CACHE_LIMIT {
        map.retain(|_, (_, at)| now.duration_since(*at) < ttl);
        if map.len() >= CACHE_LIMIT {
            map.clear();
        }
    }
}

impl NamespaceDeletions {
    /// The action deleting `namespace`, if it is being deleted and a
    /// captured change deleted it.
    pub async fn action_for(
        &self,
        namespace: &str,
        sink: &dyn SnapshotSink,
    ) -> Result<Option<ActionId>, StoreError> {
        let cached = {
            let known = self.namespaces.lock().unwrap_or_else(|p| p.into_inner());
            known
                .get(namespace)
                .filter(|(_, at)| at.elapsed() < NAMESPACE_TTL)
                .map(|(t, _)| t.clone())
        };
        let (uid, deleted_at) = match cached {
            Some(t) => t,
            None => match sink.terminating_namespace(namespace).await? {
                Some(t) => {
                    let now = Instant::now();
                    let mut known = self.namespaces.lock().unwrap_or_else(|p| p.into_inner());
                    bounded(&mut known, NAMESPACE_TTL, now);
                    known.insert(namespace.to_string(), (t.clone(), now));
                    t
                }
                None => return Ok(None),
            },
        };
        let key = (namespace.to_string(), uid);
        if let Some((action, at)) = self
            .actions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            && at.elapsed() < ACTION_TTL
        {
            return Ok(action.clone());
        }
        let action = sink
            .namespace_deleted_by(&key.0, &key.1, deleted_at)
            .await?;
        let now = Instant::now();
        let mut actions = self.actions.lock().unwrap_or_else(|p| p.into_inner());
        bounded(&mut actions, ACTION_TTL, now);
        actions.insert(key, (action.clone(), now));
        Ok(action)
    }
}

/// Whether the review is the namespace controller deleting an object of a
/// namespace (the candidates for [`NamespaceDeletions::action_for`]):
/// a DELETE, by one of `--namespace-controller-users`, of a namespaced
/// object that no controller makes again.
pub fn candidate(review: &Review, cfg: &CaptureConfig) -> Option<String> {
    let old = deleted_by_one_of(review, &cfg.namespace_controller_users)?;
    let namespace = review.object_namespace()?;
    let prior = Prior::of(old);
    (!prior.made_by_a_controller() && !prior.being_deleted()).then_some(namespace)
}

/// The prior object of a DELETE (not of a subresource) made by one of
/// `users` (globs).
fn deleted_by_one_of<'r>(review: &'r Review, users: &[String]) -> Option<&'r str> {
    if review.request.operation != AdmissionOp::Delete || review.request.sub_resource.is_some() {
        return None;
    }
    let user = review.username();
    if !users.iter().any(|p| glob_match(p, user)) {
        return None;
    }
    Some(review.old_object.as_ref()?.get())
}

/// Which action deleted which object (by uid), as far as this replica
/// captured it: the garbage collector's deletes of its dependents, which
/// follow within seconds, usually reach the same replica. Others look at
/// the snapshots' `deleted.snapback.io/<uid>` labels.
#[derive(Debug, Default)]
pub struct OwnerDeletions {
    deleted: Mutex<HashMap<String, (ActionId, Instant)>>,
}

impl OwnerDeletions {
    pub fn note(&self, uid: &str, action: &ActionId) {
        let now = Instant::now();
        let mut deleted = self.deleted.lock().unwrap_or_else(|p| p.into_inner());
        bounded(&mut deleted, ACTION_TTL, now);
        deleted.insert(uid.to_string(), (action.clone(), now));
    }

    /// The action that deleted one of `owners`, if a captured change did.
    pub async fn action_for(
        &self,
        owners: &[String],
        sink: &dyn SnapshotSink,
    ) -> Result<Option<ActionId>, StoreError> {
        {
            let deleted = self.deleted.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((action, _)) = owners
                .iter()
                .filter_map(|u| deleted.get(u))
                .find(|(_, at)| at.elapsed() < ACTION_TTL)
            {
                return Ok(Some(action.clone()));
            }
        }
        for uid in owners {
            if let Some(action) = sink.deleted_by(uid).await? {
                self.note(uid, &action);
                return Ok(Some(action));
            }
        }
        Ok(None)
    }
}

/// The garbage collector deleting an object whose owners are gone.
pub struct GcDelete {
    /// The owners' uids (for [`OwnerDeletions::action_for`]).
    pub owners: Vec<String>,
    /// Captured when an owner's deletion was: no controller makes it again.
    /// A controller-owned one is not (its controller does), but its own
    /// dependents' deletes still join the action.
    pub capture: bool,
}

/// Whether the review is the garbage collector deleting an object whose
/// owners are gone: a DELETE, by one of `--garbage-collector-users`, of an
/// object with owners, not already being deleted.
pub fn gc_candidate(review: &Review, cfg: &CaptureConfig) -> Option<GcDelete> {
    let prior = Prior::of(deleted_by_one_of(review, &cfg.garbage_collector_users)?);
    if prior.being_deleted() {
        return None;
    }
    let capture = !prior.made_by_a_controller();
    let owners: Vec<String> = prior
        .metadata
        .owner_references
        .into_iter()
        .map(|r| r.uid)
        .filter(|u| !u.is_empty())
        .collect();
    (!owners.is_empty()).then_some(GcDelete { owners, capture })
}

/// What the cascades read of a deleted object's prior state, in one parse
/// (an object that does not parse has none of it).
#[derive(Deserialize, Default)]
struct Prior {
    #[serde(default)]
    metadata: PriorMeta,
    #[serde(default, rename = "type")]
    type_: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct PriorMeta {
    #[serde(default)]
    deletion_timestamp: Option<String>,
    #[serde(default)]
    owner_references: Vec<OwnerRef>,
}

#[derive(Deserialize)]
struct OwnerRef {
    #[serde(default)]
    uid: String,
    #[serde(default)]
    controller: Option<bool>,
}

impl Prior {
    fn of(object: &str) -> Prior {
        serde_json::from_str(object).unwrap_or_default()
    }

    /// Being deleted already (finalizers pending): the namespace controller
    /// deletes it again on every pass until it is gone, and its state
    /// before the first of those deletes was captured then.
    fn being_deleted(&self) -> bool {
        self.metadata.deletion_timestamp.is_some()
    }

    /// A controller makes it again once what it derives from is restored:
    /// it names a controller owner, or it is a service account token.
    fn made_by_a_controller(&self) -> bool {
        self.type_.as_deref() == Some("kubernetes.io/service-account-token")
            || self
                .metadata
                .owner_references
                .iter()
                .any(|r| r.controller == Some(true))
    }
}

/// Whether the object was being deleted already (see
/// [`Prior::being_deleted`]). The key appears literally in any object that
/// has it: most DELETEs are of objects that do not, and skip the parse.
pub fn already_being_deleted(object: &str) -> bool {
    object.contains("\"deletionTimestamp\"") && Prior::of(object).being_deleted()
}

#[cfg(test)]
fn made_by_a_controller(object: &str) -> bool {
    Prior::of(object).made_by_a_controller()
}

#[cfg(test)]
fn owner_uids(object: &str) -> Vec<String> {
    Prior::of(object)
        .metadata
        .owner_references
        .into_iter()
        .map(|r| r.uid)
        .filter(|u| !u.is_empty())
        .collect()
}

/// Whether the review deletes a Namespace.
pub fn deletes_namespace(review: &Review) -> bool {
    let r = &review.request;
    r.operation == AdmissionOp::Delete
        && r.resource.group.is_empty()
        && r.resource.resource == "namespaces"
        && r.sub_resource.is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controller_owners_are_told_apart_from_other_owners() {
        assert!(made_by_a_controller(
            r#"{"metadata":{"name":"p","ownerReferences":[{"kind":"ReplicaSet","controller":true}]}}"#
        ));
        assert!(!made_by_a_controller(
            r#"{"metadata":{"name":"p","ownerReferences":[{"kind":"ConfigMap"}]}}"#
        ));
        assert!(!made_by_a_controller(
            r#"{"metadata":{"name":"p","ownerReferences":[{"kind":"X","controller":false}]}}"#
        ));
        assert!(!made_by_a_controller(r#"{"metadata":{"name":"p"}}"#));
        assert!(!made_by_a_controller(r#"{"kind":"ConfigMap"}"#));
    }

    #[test]
    fn deletes_of_objects_already_being_deleted_are_told_apart() {
        assert!(already_being_deleted(
            r#"{"metadata":{"name":"w","deletionTimestamp":"2026-11-23T20:00:00Z","finalizers":["x/y"]}}"#
        ));
        assert!(!already_being_deleted(r#"{"metadata":{"name":"w"}}"#));
        assert!(!already_being_deleted(
            r#"{"metadata":{"name":"w","deletionTimestamp":null}}"#
        ));
    }

    #[test]
    fn owners_are_read_from_the_prior_object() {
        assert_eq!(
            owner_uids(
                r#"{"metadata":{"name":"c","ownerReferences":[{"kind":"ConfigMap","uid":"u1"},{"kind":"X","uid":"u2"}]}}"#
            ),
            vec!["u1".to_string(), "u2".to_string()]
        );
        assert!(owner_uids(r#"{"metadata":{"name":"c"}}"#).is_empty());
        assert!(owner_uids("not json").is_empty());
    }

    #[test]
    fn service_account_tokens_are_the_token_controllers() {
        assert!(made_by_a_controller(
            r#"{"kind":"Secret","metadata":{"name":"default-token-x"},"type":"kubernetes.io/service-account-token"}"#
        ));
        assert!(!made_by_a_controller(
            r#"{"kind":"Secret","metadata":{"name":"db"},"type":"Opaque"}"#
        ));
    }
}
