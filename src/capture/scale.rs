//! A custom resource's Scale shows 0 replicas both when the custom resource
//! has its replicas field at 0 and when it does not have the field at all
//! (its operator's default then applies). A rollback of `kubectl scale`
//! writes the prior Scale back, and a Scale of 0 sets the field to 0: the
//! operator may then scale the workload to nothing. So when a captured
//! Scale change of a custom resource starts from 0, the capture looks at
//! the custom resource itself, as it was before the change: which field
//! holds its replicas (its definition's `specReplicasPath`) and whether the
//! field was set. A rollback then removes a field that was not set.
//!
//! Best effort and bounded: anything that cannot be read in time (the
//! definition, the object as the user, an object already changed since the
//! Scale was read) leaves the snapshot as it was without this, and the
//! rollback says that an unset count may now be 0.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kube::Client;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::capture::review::Review;
use crate::restore::dynamic;
use crate::store::model::ObjectRef;

/// How long the capture waits for the two reads.
const READ_TIMEOUT: Duration = Duration::from_secs(1);

/// Built-in API groups whose workloads always have their replicas set.
const BUILT_IN_SCALE_GROUPS: [&str; 3] = ["", "apps", "extensions"];

/// Whether this change is one to look at: a change of a custom resource's
/// scale subresource.
pub fn of_custom_resource(review: &Review) -> bool {
    let req = &review.request;
    req.sub_resource.as_deref() == Some("scale")
        && !BUILT_IN_SCALE_GROUPS.contains(&req.resource.group.as_str())
}

/// The Scale before the change shows 0 replicas (a Scale leaves 0 out).
pub fn starts_from_zero(prior_scale: &RawValue) -> bool {
    serde_json::from_str::<Value>(prior_scale.get()).is_ok_and(|scale| {
        scale
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            == 0
    })
}

/// What the capture found: the custom resource's replicas field (a JSON
/// pointer) and, for a change from 0, whether the field was unset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicasField {
    pub pointer: String,
    pub unset: Option<bool>,
}

/// Where each served version of a definition keeps its replicas (a JSON
/// pointer), by group, resource and version, for [`PATHS_TTL`]: an
/// autoscaler that scales a custom resource every few seconds does not have
/// its definition read for every change it makes.
#[derive(Default)]
pub struct ReplicaPaths(Mutex<HashMap<PathKey, (Instant, String)>>);

/// Group, resource, version.
type PathKey = (String, String, String);

const PATHS_TTL: Duration = Duration::from_secs(60);

impl ReplicaPaths {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PathKey, (Instant, String)>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The replicas field of the custom resource, and for a change from 0
/// (`from_zero`) whether it was unset before the change; None when not
/// even the field can be told. `own`: snapback's identity (reads the
/// definition, unless `paths` knows it); `as_user`: the changing user's
/// (reads the object, as they could).
pub async fn replicas_field(
    own: &Client,
    paths: &ReplicaPaths,
    as_user: &Client,
    review: &Review,
    from_zero: bool,
) -> Option<ReplicasField> {
    let req = &review.request;
    let name = review.object_name();
    let key = (
        req.resource.group.clone(),
        req.resource.resource.clone(),
        req.resource.version.clone(),
    );
    let known = paths
        .lock()
        .get(&key)
        .filter(|(at, _)| at.elapsed() < PATHS_TTL)
        .map(|(_, pointer)| pointer.clone());
    let definition = format!(
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{}.{}",
        req.resource.resource, req.resource.group
    );
    let pointer = async {
        let crd = own
            .request::<Value>(
                http::Request::get(definition)
                    .body(Vec::new())
                    .map_err(|e| e.to_string())?,
            )
            .await
            .map_err(|e| format!("reading the definition: {e}"))?;
        let path = spec_replicas_path(&crd, &req.resource.version)
            .ok_or("the definition has no specReplicasPath for this version")?;
        pointer_of(&path).ok_or_else(|| format!("unusable specReplicasPath {path}"))
    };
    let read = async {
        match known {
            Some(p) => Ok(p),
            None => pointer.await.inspect(|p| {
                paths
                    .lock()
                    .insert(key.clone(), (Instant::now(), p.clone()));
            }),
        }
    };
    let pointer = match tokio::time::timeout(READ_TIMEOUT, read).await {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => {
            tracing::info!(resource = %req.resource.resource, %name, error = %e,
                "cannot tell where the custom resource keeps its replicas");
            return None;
        }
        Err(_) => {
            tracing::info!(resource = %req.resource.resource, %name,
                "reading the definition behind a Scale change timed out");
            return None;
        }
    };
    if !from_zero {
        return Some(ReplicasField {
            pointer,
            unset: None,
        });
    }
    let parent = ObjectRef {
        group: req.resource.group.clone(),
        version: req.resource.version.clone(),
        resource: req.resource.resource.clone(),
        subresource: None,
        kind: String::new(),
        namespace: review.object_namespace(),
        name: name.clone(),
    };
    let prior_rv = review.old_identity.resource_version.as_deref();
    let unset = async {
        let object = dynamic::get(as_user, &parent)
            .await
            .map_err(|e| format!("reading the object: {e}"))?
            .ok_or("the object is gone")?;
        let rv = object
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str);
        if rv.is_none() || rv != prior_rv {
            return Err(format!(
                "the object changed since its Scale was read ({} → {})",
                prior_rv.unwrap_or("?"),
                rv.unwrap_or("?")
            ));
        }
        Ok::<_, String>(object.pointer(&pointer).is_none())
    };
    let unset = match tokio::time::timeout(READ_TIMEOUT, unset).await {
        Ok(Ok(unset)) => Some(unset),
        Ok(Err(e)) => {
            tracing::info!(resource = %req.resource.resource, %name, error = %e,
                "cannot tell whether the custom resource's replicas were set");
            None
        }
        Err(_) => {
            tracing::info!(resource = %req.resource.resource, %name,
                "reading the custom resource behind a Scale change timed out");
            None
        }
    };
    Some(ReplicasField { pointer, unset })
}

/// `subresources.scale.specReplicasPath` of the definition's `version`
/// (`apiextensions.k8s.io/v1`: per version).
pub fn spec_replicas_path(crd: &Value, version: &str) -> Option<String> {
    crd.pointer("/spec/versions")?
        .as_array()?
        .iter()
        .find(|v| v.get("name").and_then(Value::as_str) == Some(version))?
        .pointer("/subresources/scale/specReplicasPath")?
        .as_str()
        .map(str::to_string)
}

/// `.spec.replicas` → `/spec/replicas` (a specReplicasPath is a dotted
/// path of field names, no array indexes).
pub fn pointer_of(path: &str) -> Option<String> {
    let fields: Vec<&str> = path.strip_prefix('.')?.split('.').collect();
    if fields.iter().any(|f| f.is_empty() || f.contains('[')) {
        return None;
    }
    Some(json_patch::jsonptr::PointerBuf::from_tokens(fields).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_path_is_the_served_versions() {
        let crd = json!({"spec": {"versions": [
            {"name": "v1", "subresources": {"scale": {"specReplicasPath": ".spec.replicas"}}},
            {"name": "v2", "subresources": {"scale": {"specReplicasPath": ".spec.size.count"}}},
            {"name": "v3"}]}});
        assert_eq!(
            spec_replicas_path(&crd, "v1").as_deref(),
            Some(".spec.replicas")
        );
        assert_eq!(
            spec_replicas_path(&crd, "v2").as_deref(),
            Some(".spec.size.count")
        );
        assert_eq!(spec_replicas_path(&crd, "v3"), None);
        assert_eq!(spec_replicas_path(&crd, "v4"), None);
    }

    #[test]
    fn dotted_paths_become_pointers() {
        assert_eq!(
            pointer_of(".spec.replicas").as_deref(),
            Some("/spec/replicas")
        );
        assert_eq!(pointer_of(".spec.a/b~c").as_deref(), Some("/spec/a~1b~0c"));
        assert_eq!(pointer_of("spec.replicas"), None);
        assert_eq!(pointer_of(".spec..replicas"), None);
        assert_eq!(pointer_of(".spec.items[0]"), None);
    }
}
