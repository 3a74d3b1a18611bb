//! Deleting a CustomResourceDefinition deletes every custom resource of it,
//! but not through admission: the API server's finalizer removes them from
//! storage directly, so no webhook ever sees those deletes. Rolling back
//! `kubectl delete crd` would bring back an empty definition. So when a
//! captured change deletes a CRD, its custom resources are read (as the
//! user who deletes it: snapback itself has no read access to objects) and
//! stored as deleted by the same action, before the deletion is admitted.
//! If another admission step then refuses the deletion, those snapshots
//! are phantoms and restore to nothing (the resources are still there, in
//! their prior state).

use kube::api::{ApiResource, DynamicObject, ListParams};
use kube::{Api, Client};
use serde_json::Value;

/// A CRD's resources as the API server serves them (its storage version).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Definition {
    pub group: String,
    pub version: String,
    pub plural: String,
    pub kind: String,
}

impl Definition {
    /// From the CRD object (`apiextensions.k8s.io/v1` or `v1beta1`).
    pub fn of(crd: &Value) -> Option<Definition> {
        let spec = crd.get("spec")?;
        let names = spec.get("names")?;
        let versions = spec.get("versions").and_then(Value::as_array);
        let version = versions
            .and_then(|vs| {
                vs.iter()
                    .find(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
                    .or_else(|| vs.first())
            })
            .and_then(|v| v.get("name"))
            .or_else(|| spec.get("version"))
            .and_then(Value::as_str)?;
        Some(Definition {
            group: spec.get("group")?.as_str()?.to_string(),
            version: version.to_string(),
            plural: names.get("plural")?.as_str()?.to_string(),
            kind: names.get("kind")?.as_str()?.to_string(),
        })
    }

    fn api_resource(&self) -> ApiResource {
        ApiResource {
            group: self.group.clone(),
            version: self.version.clone(),
            api_version: format!("{}/{}", self.group, self.version),
            kind: self.kind.clone(),
            plural: self.plural.clone(),
        }
    }
}

/// Every custom resource of the definition, in every namespace, read with
/// `client` (the deleting user's identity), a page at a time.
pub async fn list_all(client: &Client, def: &Definition) -> Result<Vec<Value>, kube::Error> {
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &def.api_resource());
    let mut out = Vec::new();
    let mut params = ListParams::default().limit(500);
    loop {
        let page = api.list(&params).await?;
        for item in page.items {
            let mut v = serde_json::to_value(&item).map_err(kube::Error::SerdeError)?;
            // A list's items carry no type; the stored prior state must.
            if let Some(map) = v.as_object_mut() {
                map.insert(
                    "apiVersion".into(),
                    Value::String(def.api_resource().api_version),
                );
                map.insert("kind".into(), Value::String(def.kind.clone()));
            }
            out.push(v);
        }
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_storage_version_is_read() {
        let crd = json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "widgets.example.com"},
            "spec": {"group": "example.com", "scope": "Namespaced",
                     "names": {"plural": "widgets", "kind": "Widget"},
                     "versions": [{"name": "v1beta1", "served": true, "storage": false},
                                  {"name": "v1", "served": true, "storage": true}]}});
        assert_eq!(
            Definition::of(&crd),
            Some(Definition {
                group: "example.com".into(),
                version: "v1".into(),
                plural: "widgets".into(),
                kind: "Widget".into()
            })
        );
        let legacy = json!({"spec": {"group": "g.io", "version": "v2",
                                     "names": {"plural": "things", "kind": "Thing"}}});
        assert_eq!(Definition::of(&legacy).unwrap().version, "v2");
        assert_eq!(Definition::of(&json!({"spec": {}})), None);
    }
}
