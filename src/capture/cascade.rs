//! Deleting a namespace deletes everything in it, but not through the
//! request that deleted the namespace: the namespace controller empties it
//! afterwards, one DELETE per object, as its own (excluded) identity. So that
//! rolling back `kubectl delete namespace` restores the namespace *with* its
//! contents, those deletes are captured into the action that deleted the
//! namespace:
//!
//! - a captured DELETE of a Namespace is noted in the action record (label
//!   `ns.snapback.io/<name>: <uid>`), before the deletion is admitted;
//! - a DELETE by one of `--namespace-controller-users` of an object in a
//!   namespace that is being deleted is captured into the action whose
//!   record names that namespace and its uid (any replica finds it; a
//!   namespace deleted, restored and deleted again has another uid);
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
use crate::store::{NamespaceDeletion, SnapshotSink, StoreError};

/// How long an answer is trusted. A namespace being deleted stays so until
/// it is gone (by the same action), but it may then be created and deleted
/// again under the same name: answers about one being deleted are checked
/// again after a while. One not being deleted may start to be any moment
/// (the namespace controller does not delete in it then, but a controller
/// manager without per-controller identities collects garbage under the
/// same name): that answer saves lookups for a second only.
const DELETING_TTL: Duration = Duration::from_secs(30);
const NOT_DELETING_TTL: Duration = Duration::from_secs(1);
const CACHE_LIMIT: usize = 10_000;

/// Which action is deleting which namespace, as far as this replica knows.
#[derive(Debug, Default)]
pub struct NamespaceDeletions {
    known: Mutex<HashMap<String, (NamespaceDeletion, Instant)>>,
}

impl NamespaceDeletions {
    /// This replica captured `action` deleting `namespace`.
    pub fn remember(&self, namespace: &str, action: ActionId) {
        self.put(namespace, NamespaceDeletion::By(Some(action)));
    }

    fn put(&self, namespace: &str, found: NamespaceDeletion) {
        let now = Instant::now();
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if known.len() >= CACHE_LIMIT {
            known.retain(|_, (_, at)| now.duration_since(*at) < DELETING_TTL);
        }
        known.insert(namespace.to_string(), (found, now));
    }

    /// The action deleting `namespace`, if a captured change deleted it and
    /// it is still being emptied.
    pub async fn action_for(
        &self,
        namespace: &str,
        sink: &dyn SnapshotSink,
    ) -> Result<Option<ActionId>, StoreError> {
        {
            let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((found, at)) = known.get(namespace) {
                let (ttl, action) = match found {
                    NamespaceDeletion::NotBeingDeleted => (NOT_DELETING_TTL, None),
                    NamespaceDeletion::By(action) => (DELETING_TTL, action.clone()),
                };
                if at.elapsed() < ttl {
                    return Ok(action);
                }
            }
        }
        let found = sink.namespace_deletion(namespace).await?;
        let action = match &found {
            NamespaceDeletion::NotBeingDeleted => None,
            NamespaceDeletion::By(action) => action.clone(),
        };
        self.put(namespace, found);
        Ok(action)
    }
}

/// Whether the review is the namespace controller deleting an object of a
/// namespace (the candidates for [`NamespaceDeletions::action_for`]):
/// a DELETE, by one of `--namespace-controller-users`, of a namespaced
/// object that no controller makes again.
pub fn candidate(review: &Review, cfg: &CaptureConfig) -> Option<String> {
    if review.request.operation != AdmissionOp::Delete || review.request.sub_resource.is_some() {
        return None;
    }
    let user = review.username();
    if !cfg
        .namespace_controller_users
        .iter()
        .any(|p| glob_match(p, user))
    {
        return None;
    }
    let namespace = review.object_namespace()?;
    let old = review.old_object.as_ref()?;
    (!made_by_a_controller(old.get())).then_some(namespace)
}

/// Whether a controller makes the object again once what it derives from
/// is restored: it names a controller owner, or it is a service account
/// token.
fn made_by_a_controller(object: &str) -> bool {
    #[derive(Deserialize)]
    struct Object<'a> {
        #[serde(default)]
        metadata: Meta,
        #[serde(default, borrow, rename = "type")]
        type_: Option<std::borrow::Cow<'a, str>>,
    }
    #[derive(Deserialize, Default)]
    #[serde(rename_all = "camelCase")]
    struct Meta {
        #[serde(default)]
        owner_references: Vec<OwnerRef>,
    }
    #[derive(Deserialize)]
    struct OwnerRef {
        #[serde(default)]
        controller: Option<bool>,
    }
    serde_json::from_str::<Object>(object).is_ok_and(|o| {
        o.type_.as_deref() == Some("kubernetes.io/service-account-token")
            || o.metadata
                .owner_references
                .iter()
                .any(|r| r.controller == Some(true))
    })
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
    fn service_account_tokens_are_the_token_controllers() {
        assert!(made_by_a_controller(
            r#"{"kind":"Secret","metadata":{"name":"default-token-x"},"type":"kubernetes.io/service-account-token"}"#
        ));
        assert!(!made_by_a_controller(
            r#"{"kind":"Secret","metadata":{"name":"db"},"type":"Opaque"}"#
        ));
    }
}
