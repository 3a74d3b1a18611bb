//! Decoding an AdmissionReview body. The objects are kept as raw JSON so a
//! snapshot is exactly what the API server sent (no round trip through typed
//! metadata); the rest goes into kube's typed `AdmissionRequest`.

use std::borrow::Cow;

use kube::core::admission::{AdmissionRequest, AdmissionReview};
use kube::core::{DynamicResourceScope, ObjectMeta, Resource, TypeMeta};
use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("body is not JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    #[error("AdmissionReview has no request")]
    NoRequest,
    #[error("unsupported AdmissionReview apiVersion {0:?} (only admission.k8s.io/v1)")]
    Version(String),
    #[error("malformed AdmissionReview request: {0}")]
    Malformed(#[source] serde_json::Error),
}

impl ReviewError {
    /// The request uid, when the body got far enough to have one, so the
    /// answer can be an `invalid` review rather than a bare 400.
    pub fn uid_of(body: &Value) -> Option<String> {
        body.get("request")?
            .get("uid")?
            .as_str()
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    }
}

/// An object of a review kept as the JSON value the API server sent. It is
/// a [`Resource`] only so that kube's typed request can carry it; its
/// metadata stays in the value (`meta()` is empty).
#[derive(Debug, Clone, Default)]
pub struct RawObject {
    pub value: Value,
    meta: ObjectMeta,
}

impl<'de> Deserialize<'de> for RawObject {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(d)?;
        if !value.is_object() {
            return Err(serde::de::Error::custom("the object is not a JSON object"));
        }
        Ok(RawObject {
            value,
            meta: ObjectMeta::default(),
        })
    }
}

impl serde::Serialize for RawObject {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.value.serialize(s)
    }
}

impl Resource for RawObject {
    type DynamicType = ();
    type Scope = DynamicResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("")
    }
    fn group(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("")
    }
    fn version(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("")
    }
    fn plural(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("")
    }
    fn meta(&self) -> &ObjectMeta {
        &self.meta
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.meta
    }
}

/// The review envelope, decoded in one pass (kube's `AdmissionReview`
/// flattens its type fields, which makes serde buffer the whole body first).
#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "apiVersion", default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    request: Option<AdmissionRequest<RawObject>>,
}

/// A decoded review: the typed request (with `object`/`oldObject` emptied)
/// and the raw objects.
#[derive(Debug, Clone)]
pub struct Review {
    pub request: AdmissionRequest<RawObject>,
    pub object: Option<Value>,
    pub old_object: Option<Value>,
}

impl Review {
    pub fn from_slice(body: &[u8]) -> Result<Self, (ReviewError, Option<String>)> {
        // The common case in one pass; anything unusual is decoded again
        // below, slowly, for a precise error.
        if let Ok(Envelope {
            api_version,
            kind,
            request: Some(mut request),
        }) = serde_json::from_slice::<Envelope>(body)
            && api_version == "admission.k8s.io/v1"
            && !request.uid.is_empty()
        {
            request.types = TypeMeta { api_version, kind };
            let object = request.object.take().map(|o| o.value);
            let old_object = request.old_object.take().map(|o| o.value);
            return Ok(Review {
                request,
                object,
                old_object,
            });
        }
        let value: Value =
            serde_json::from_slice(body).map_err(|e| (ReviewError::NotJson(e), None))?;
        Self::from_value(value)
    }

    pub fn from_value(mut value: Value) -> Result<Self, (ReviewError, Option<String>)> {
        let uid = ReviewError::uid_of(&value);
        let api_version = value
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if api_version != "admission.k8s.io/v1" {
            return Err((ReviewError::Version(api_version), uid));
        }
        let Some(request) = value.get_mut("request").and_then(Value::as_object_mut) else {
            return Err((ReviewError::NoRequest, uid));
        };
        let take = |req: &mut serde_json::Map<String, Value>, key: &str| {
            req.remove(key).filter(|v| !v.is_null())
        };
        let object = take(request, "object");
        let old_object = take(request, "oldObject");
        for (name, obj) in [("object", &object), ("oldObject", &old_object)] {
            if let Some(o) = obj
                && !o.is_object()
            {
                let err = serde::de::Error::custom(format!("{name} is not a JSON object"));
                return Err((ReviewError::Malformed(err), uid));
            }
        }
        let review: AdmissionReview<RawObject> =
            serde_json::from_value(value).map_err(|e| (ReviewError::Malformed(e), uid.clone()))?;
        let request: AdmissionRequest<RawObject> = review
            .try_into()
            .map_err(|_| (ReviewError::NoRequest, uid.clone()))?;
        if request.uid.is_empty() {
            let err = serde::de::Error::custom("request.uid is empty");
            return Err((ReviewError::Malformed(err), None));
        }
        Ok(Review {
            request,
            object,
            old_object,
        })
    }

    pub fn username(&self) -> &str {
        self.request.user_info.username.as_deref().unwrap_or("")
    }

    pub fn user_extra(&self, key: &str) -> Option<&str> {
        self.request
            .user_info
            .extra
            .as_ref()?
            .get(key)?
            .first()
            .map(String::as_str)
    }

    /// The object's metadata field from whichever object the request carries
    /// (DeleteCollection items have an empty `request.name`).
    pub fn meta_str(&self, field: &str) -> Option<&str> {
        [&self.object, &self.old_object]
            .into_iter()
            .flatten()
            .find_map(|o| o.get("metadata")?.get(field)?.as_str())
            .filter(|s| !s.is_empty())
    }

    pub fn object_name(&self) -> String {
        if !self.request.name.is_empty() {
            return self.request.name.clone();
        }
        self.meta_str("name").unwrap_or_default().to_string()
    }

    pub fn object_namespace(&self) -> Option<String> {
        // The API server reports a Namespace's own name as request.namespace;
        // the object itself is cluster-scoped.
        let resource = &self.request.resource;
        if resource.group.is_empty() && resource.resource == "namespaces" {
            return None;
        }
        self.request
            .namespace
            .clone()
            .filter(|s| !s.is_empty())
            .or_else(|| self.meta_str("namespace").map(str::to_string))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn review(request: Value) -> Value {
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request})
    }

    fn base_request() -> Value {
        json!({
            "uid": "u-1",
            "kind": {"group": "", "version": "v1", "kind": "ConfigMap"},
            "resource": {"group": "", "version": "v1", "resource": "configmaps"},
            "name": "", "namespace": "ns", "operation": "DELETE",
            "userInfo": {"username": "alice", "extra": {"snapback.io/action": ["rb-1"]}},
            "oldObject": {"apiVersion": "v1", "kind": "ConfigMap",
                          "metadata": {"name": "from-old", "namespace": "ns"}},
            "object": null, "dryRun": false
        })
    }

    #[test]
    fn keeps_raw_objects_and_reads_names_from_old_object() {
        let r = Review::from_value(review(base_request())).unwrap();
        assert_eq!(r.object_name(), "from-old");
        assert!(r.object.is_none());
        assert_eq!(r.old_object.unwrap()["metadata"]["name"], "from-old");
    }

    #[test]
    fn reads_impersonation_extra() {
        let r = Review::from_value(review(base_request())).unwrap();
        assert_eq!(r.user_extra("snapback.io/action"), Some("rb-1"));
        assert_eq!(r.username(), "alice");
    }

    #[test]
    fn errors_carry_uid_when_known() {
        let mut req = base_request();
        req["operation"] = json!("EXPLODE");
        let (err, uid) = Review::from_value(review(req)).unwrap_err();
        assert!(matches!(err, ReviewError::Malformed(_)));
        assert_eq!(uid.as_deref(), Some("u-1"));
    }

    #[test]
    fn rejects_other_versions_and_missing_request() {
        let mut v = review(base_request());
        v["apiVersion"] = json!("admission.k8s.io/v1beta1");
        assert!(matches!(
            Review::from_value(v).unwrap_err().0,
            ReviewError::Version(_)
        ));
        let v = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"});
        assert!(matches!(
            Review::from_value(v).unwrap_err().0,
            ReviewError::NoRequest
        ));
        assert!(matches!(
            Review::from_slice(b"{nope").unwrap_err().0,
            ReviewError::NotJson(_)
        ));
    }

    #[test]
    fn the_one_pass_decoder_agrees_with_the_careful_one() {
        for name in [
            "validate-update-configmap.json",
            "validate-create-deployment.json",
            "validate-delete-deployment.json",
        ] {
            let path = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
            let body = std::fs::read(&path).unwrap();
            let fast = Review::from_slice(&body).unwrap();
            let careful = Review::from_value(serde_json::from_slice(&body).unwrap()).unwrap();
            assert_eq!(fast.object, careful.object, "{name}");
            assert_eq!(fast.old_object, careful.old_object, "{name}");
            assert_eq!(
                serde_json::to_value(&fast.request).unwrap(),
                serde_json::to_value(&careful.request).unwrap(),
                "{name}"
            );
            assert_eq!(fast.request.types.api_version, "admission.k8s.io/v1");
        }
        // Through the slow path, errors keep their precision.
        let mut req = base_request();
        req["object"] = json!(["not", "an", "object"]);
        let body = serde_json::to_vec(&review(req)).unwrap();
        assert!(matches!(
            Review::from_slice(&body).unwrap_err().0,
            ReviewError::Malformed(_)
        ));
    }

    #[test]
    fn non_object_payload_is_malformed() {
        let mut req = base_request();
        req["oldObject"] = json!("a string");
        assert!(matches!(
            Review::from_value(review(req)).unwrap_err().0,
            ReviewError::Malformed(_)
        ));
    }
}
