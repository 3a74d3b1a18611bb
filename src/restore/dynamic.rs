//! Raw JSON reads and writes of any object, through kube's request builder:
//! what was captured is written back byte for byte, no typed round trip.

use kube::Client;
use kube::api::{DeleteParams, GetParams, PostParams, Preconditions};
use kube::core::Request;
use serde_json::Value;

use crate::store::model::ObjectRef;

fn collection(obj: &ObjectRef) -> String {
    let base = if obj.group.is_empty() {
        format!("/api/{}", obj.version)
    } else {
        format!("/apis/{}/{}", obj.group, obj.version)
    };
    match &obj.namespace {
        Some(ns) => format!("{base}/namespaces/{ns}/{}", obj.resource),
        None => format!("{base}/{}", obj.resource),
    }
}

fn request(obj: &ObjectRef) -> Request {
    Request::new(collection(obj))
}

fn body(v: &Value) -> Result<Vec<u8>, kube::Error> {
    serde_json::to_vec(v).map_err(kube::Error::SerdeError)
}

pub fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// The object (or its scale subresource when `obj.subresource` is `scale`);
/// None when it does not exist.
pub async fn get(client: &Client, obj: &ObjectRef) -> Result<Option<Value>, kube::Error> {
    let req = match obj.subresource.as_deref() {
        Some(sub) => request(obj).get_subresource(sub, &obj.name),
        None => request(obj).get(&obj.name, &GetParams::default()),
    }
    .map_err(kube::Error::BuildRequest)?;
    match client.request::<Value>(req).await {
        Ok(v) => Ok(Some(v)),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The field manager of restore writes: server-side apply then names
/// snapback as the manager of what a rollback restored, not "unknown".
pub const FIELD_MANAGER: &str = "snapback";

fn post_params(dry_run: bool) -> PostParams {
    PostParams {
        dry_run,
        field_manager: Some(FIELD_MANAGER.to_string()),
    }
}

pub async fn create(client: &Client, obj: &ObjectRef, v: &Value) -> Result<Value, kube::Error> {
    create_with(client, obj, v, false).await
}

/// A create, or the API server's dry run of it (`dryRun=All`: admission
/// and validation, nothing stored).
pub async fn create_with(
    client: &Client,
    obj: &ObjectRef,
    v: &Value,
    dry_run: bool,
) -> Result<Value, kube::Error> {
    let req = request(obj)
        .create(&post_params(dry_run), body(v)?)
        .map_err(kube::Error::BuildRequest)?;
    client.request::<Value>(req).await
}

pub async fn replace(client: &Client, obj: &ObjectRef, v: &Value) -> Result<Value, kube::Error> {
    replace_with(client, obj, v, false).await
}

/// A replace, or the API server's dry run of it.
pub async fn replace_with(
    client: &Client,
    obj: &ObjectRef,
    v: &Value,
    dry_run: bool,
) -> Result<Value, kube::Error> {
    let pp = post_params(dry_run);
    let req = match obj.subresource.as_deref() {
        Some(sub) => request(obj).replace_subresource(sub, &obj.name, &pp, body(v)?),
        None => request(obj).replace(&obj.name, &pp, body(v)?),
    }
    .map_err(kube::Error::BuildRequest)?;
    client.request::<Value>(req).await
}

/// Remove one field (a JSON pointer) from the object, only while it is at
/// `resource_version` (a JSON patch that sets the resourceVersion is
/// conditional on it: 409 otherwise); or the API server's dry run of that.
pub async fn remove_field(
    client: &Client,
    obj: &ObjectRef,
    pointer: &str,
    resource_version: &str,
    dry_run: bool,
) -> Result<Value, kube::Error> {
    let patch = serde_json::json!([
        {"op": "replace", "path": "/metadata/resourceVersion", "value": resource_version},
        {"op": "remove", "path": pointer},
    ]);
    let mut url = format!(
        "{}/{}?fieldManager={FIELD_MANAGER}",
        collection(obj),
        obj.name
    );
    if dry_run {
        url.push_str("&dryRun=All");
    }
    let req = http::Request::patch(url)
        .header(http::header::CONTENT_TYPE, "application/json-patch+json")
        .body(body(&patch)?)
        .map_err(|e| kube::Error::BuildRequest(kube::core::request::Error::BuildRequest(e)))?;
    client.request::<Value>(req).await
}

/// Delete, but only the object with this uid (and, when given, this
/// resourceVersion: unchanged since it was looked at).
pub async fn delete(
    client: &Client,
    obj: &ObjectRef,
    uid: &str,
    resource_version: Option<&str>,
) -> Result<(), kube::Error> {
    delete_with(client, obj, uid, resource_version, false).await
}

/// A delete, or the API server's dry run of it.
pub async fn delete_with(
    client: &Client,
    obj: &ObjectRef,
    uid: &str,
    resource_version: Option<&str>,
    dry_run: bool,
) -> Result<(), kube::Error> {
    let dp = DeleteParams {
        dry_run,
        preconditions: Some(Preconditions {
            uid: Some(uid.to_string()),
            resource_version: resource_version
                .filter(|rv| !rv.is_empty())
                .map(str::to_string),
        }),
        ..DeleteParams::background()
    };
    let req = request(obj)
        .delete(&obj.name, &dp)
        .map_err(kube::Error::BuildRequest)?;
    match client.request::<Value>(req).await {
        Ok(_) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let mut o = ObjectRef {
            group: "".into(),
            version: "v1".into(),
            resource: "configmaps".into(),
            subresource: None,
            kind: "ConfigMap".into(),
            namespace: Some("ns".into()),
            name: "x".into(),
        };
        assert_eq!(collection(&o), "/api/v1/namespaces/ns/configmaps");
        o.group = "apps".into();
        o.resource = "deployments".into();
        assert_eq!(collection(&o), "/apis/apps/v1/namespaces/ns/deployments");
        o.namespace = None;
        o.group = "".into();
        o.resource = "namespaces".into();
        assert_eq!(collection(&o), "/api/v1/namespaces");
    }
}
