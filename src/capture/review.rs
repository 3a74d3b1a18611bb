//! Decoding an AdmissionReview body. The objects are kept as raw JSON so a
//! snapshot is exactly what the API server sent (no round trip through typed
//! metadata); the rest goes into kube's typed `AdmissionRequest`.

use std::borrow::Cow;

use k8s_openapi::api::authentication::v1::UserInfo;
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::core::admission::{AdmissionRequest, AdmissionReview, Operation};
use kube::core::{
    DynamicResourceScope, GroupVersionKind, GroupVersionResource, ObjectMeta, Resource, TypeMeta,
};
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

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

/// An object of a review kept as the JSON bytes the API server sent. It is
/// a [`Resource`] only so that kube's typed request can carry it; its
/// metadata stays in the JSON (`meta()` is empty).
#[derive(Debug, Clone)]
pub struct RawObject {
    pub raw: Box<RawValue>,
    meta: ObjectMeta,
}

impl<'de> Deserialize<'de> for RawObject {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(d)?;
        if !raw.get().starts_with('{') {
            return Err(serde::de::Error::custom("the object is not a JSON object"));
        }
        Ok(RawObject {
            raw,
            meta: ObjectMeta::default(),
        })
    }
}

impl serde::Serialize for RawObject {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.raw.serialize(s)
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
    request: Option<RequestIn>,
}

/// kube's `AdmissionRequest`, field for field, but with the object after
/// the change decoded as a JSON tree (it is read) and the prior object kept
/// as the JSON that was sent (it is only stored).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RequestIn {
    uid: String,
    kind: GroupVersionKind,
    resource: GroupVersionResource,
    #[serde(default)]
    sub_resource: Option<String>,
    #[serde(default)]
    request_kind: Option<GroupVersionKind>,
    #[serde(default)]
    request_resource: Option<GroupVersionResource>,
    #[serde(default)]
    request_sub_resource: Option<String>,
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    operation: Operation,
    user_info: UserInfo,
    #[serde(default)]
    object: Option<Value>,
    #[serde(default)]
    old_object: Option<RawObject>,
    #[serde(default)]
    dry_run: bool,
    #[serde(default)]
    options: Option<RawExtension>,
}

/// A decoded review: the typed request (with `object`/`oldObject` emptied),
/// the object after the change as a JSON value (its metadata and content
/// are read), and the prior object as the exact JSON the API server sent:
/// it is stored as it is, never parsed into a tree and serialised again.
#[derive(Debug, Clone)]
pub struct Review {
    pub request: AdmissionRequest<RawObject>,
    pub object: Option<Value>,
    pub old_object: Option<Box<RawValue>>,
    /// The identity fields of `old_object`.
    pub old_identity: Identity,
}

/// The identity fields of an object's metadata; a field that is absent or
/// not a string is `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    pub name: Option<String>,
    pub namespace: Option<String>,
    pub uid: Option<String>,
    pub resource_version: Option<String>,
}

impl Identity {
    /// Read from the object's JSON without building a tree of it, and
    /// without reading past `metadata` (the API server writes it third, so
    /// the spec and status are never scanned again: the review's decoding
    /// has already checked that the whole object is valid JSON).
    pub fn of_raw(raw: &RawValue) -> Identity {
        #[derive(Deserialize)]
        struct Meta<'a> {
            #[serde(borrow, default)]
            name: Option<Cow<'a, str>>,
            #[serde(borrow, default)]
            namespace: Option<Cow<'a, str>>,
            #[serde(borrow, default)]
            uid: Option<Cow<'a, str>>,
            #[serde(borrow, default, rename = "resourceVersion")]
            resource_version: Option<Cow<'a, str>>,
        }
        /// Reads the object's members up to `metadata`, then stops.
        struct UpToMetadata<'s>(&'s mut Option<Identity>);
        impl<'de> serde::de::Visitor<'de> for UpToMetadata<'_> {
            type Value = ();
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    if key != "metadata" {
                        map.next_value::<serde::de::IgnoredAny>()?;
                        continue;
                    }
                    let m: Meta = map.next_value()?;
                    let own = |f: Option<Cow<str>>| f.map(Cow::into_owned);
                    *self.0 = Some(Identity {
                        name: own(m.name),
                        namespace: own(m.namespace),
                        uid: own(m.uid),
                        resource_version: own(m.resource_version),
                    });
                    // Stopping here makes the parser report the unread rest
                    // as an error, which is ignored: the identity is read.
                    return Ok(());
                }
                *self.0 = Some(Identity::default());
                Ok(())
            }
        }
        let mut found = None;
        let mut de = serde_json::Deserializer::from_str(raw.get());
        let _ = serde::Deserializer::deserialize_map(&mut de, UpToMetadata(&mut found));
        match found {
            Some(identity) => identity,
            // A field of another type (or no object): read what is a
            // string, as from the tree.
            None => serde_json::from_str::<Value>(raw.get())
                .map(|v| Identity::of_value(&v))
                .unwrap_or_default(),
        }
    }

    pub fn of_value(object: &Value) -> Identity {
        let field = |f: &str| object.get("metadata")?.get(f)?.as_str().map(str::to_string);
        Identity {
            name: field("name"),
            namespace: field("namespace"),
            uid: field("uid"),
            resource_version: field("resourceVersion"),
        }
    }

    fn get(&self, field: &str) -> Option<&str> {
        match field {
            "name" => self.name.as_deref(),
            "namespace" => self.namespace.as_deref(),
            "uid" => self.uid.as_deref(),
            "resourceVersion" => self.resource_version.as_deref(),
            _ => None,
        }
    }
}

impl Review {
    pub fn from_slice(body: &[u8]) -> Result<Self, (ReviewError, Option<String>)> {
        // The common case in one pass; anything unusual is decoded again
        // below, slowly, for a precise error.
        if let Ok(Envelope {
            api_version,
            kind,
            request: Some(r),
        }) = serde_json::from_slice::<Envelope>(body)
            && api_version == "admission.k8s.io/v1"
            && !r.uid.is_empty()
            && r.object.as_ref().is_none_or(|o| o.is_object())
        {
            let old_object = r.old_object.map(|o| o.raw);
            let old_identity = old_object
                .as_deref()
                .map(Identity::of_raw)
                .unwrap_or_default();
            let request = AdmissionRequest {
                types: TypeMeta { api_version, kind },
                uid: r.uid,
                kind: r.kind,
                resource: r.resource,
                sub_resource: r.sub_resource,
                request_kind: r.request_kind,
                request_resource: r.request_resource,
                request_sub_resource: r.request_sub_resource,
                name: r.name,
                namespace: r.namespace,
                operation: r.operation,
                user_info: r.user_info,
                object: None,
                old_object: None,
                dry_run: r.dry_run,
                options: r.options,
            };
            return Ok(Review {
                request,
                object: r.object,
                old_object,
                old_identity,
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
        let old_identity = old_object
            .as_ref()
            .map(Identity::of_value)
            .unwrap_or_default();
        let old_object = old_object
            .map(|o| serde_json::value::to_raw_value(&o))
            .transpose()
            .map_err(|e| (ReviewError::Malformed(e), uid.clone()))?;
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
            old_identity,
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
        let from_object = self
            .object
            .as_ref()
            .and_then(|o| o.get("metadata")?.get(field)?.as_str());
        from_object
            .or_else(|| self.old_identity.get(field))
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
        assert_eq!(r.old_identity.name.as_deref(), Some("from-old"));
        let old: Value = serde_json::from_str(r.old_object.unwrap().get()).unwrap();
        assert_eq!(old["metadata"]["name"], "from-old");
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
            let parse = |r: &Review| {
                r.old_object
                    .as_ref()
                    .map(|o| serde_json::from_str::<Value>(o.get()).unwrap())
            };
            assert_eq!(parse(&fast), parse(&careful), "{name}");
            assert_eq!(fast.old_identity, careful.old_identity, "{name}");
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
    fn identity_is_read_from_the_raw_object_as_from_the_tree() {
        let cases = [
            r#"{"kind":"ConfigMap","metadata":{"name":"a","namespace":"n","uid":"u","resourceVersion":"7"},"data":{"x":"y"}}"#,
            r#"{"spec":{"metadata":{"name":"inner"}},"metadata":{"name":"a","uid":"u"}}"#,
            r#"{"metadata":{"name":5,"namespace":"n","uid":"u"}}"#,
            r#"{"metadata":{"name":"a\u0041","labels":{"name":"x"}}}"#,
            r#"{"metadata":"not an object"}"#,
            r#"{"kind":"ConfigMap"}"#,
            r#"{}"#,
        ];
        for raw in cases {
            let value: Value = serde_json::from_str(raw).unwrap();
            let raw = RawValue::from_string(raw.to_string()).unwrap();
            assert_eq!(Identity::of_raw(&raw), Identity::of_value(&value), "{raw}");
        }
        let raw = RawValue::from_string(
            r#"{"kind":"X","metadata":{"name":"a","resourceVersion":"7"},"spec":{}}"#.into(),
        )
        .unwrap();
        let id = Identity::of_raw(&raw);
        assert_eq!(id.name.as_deref(), Some("a"));
        assert_eq!(id.resource_version.as_deref(), Some("7"));
        assert_eq!(id.uid, None);
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
