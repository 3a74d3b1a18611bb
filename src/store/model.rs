//! The storage contract of SPEC §3: label and annotation keys, action ids, and
//! the metadata of one snapshot as it is written to and read back from the API.

use std::collections::BTreeMap;
use std::fmt;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const MANAGER: &str = "snapback";
pub const LABEL_ACTION: &str = "snapback.io/action";
pub const LABEL_OPERATION: &str = "snapback.io/operation";
/// Prefix of the label naming the uid of an object a snapshot's DELETE
/// deleted (`deleted.snapback.io/<uid>`, empty value).
pub const LABEL_DELETED_PREFIX: &str = "deleted.snapback.io/";
pub const LABEL_RESOURCE: &str = "snapback.io/resource";
pub const LABEL_RECORD: &str = "snapback.io/record";
pub const LABEL_STATE: &str = "snapback.io/state";
pub const LABEL_ORIGIN: &str = "snapback.io/origin";
pub const LABEL_CHUNK_OF: &str = "snapback.io/chunk-of";
/// On snapshots of objects annotated `snapback.io/guard: <duration>`.
pub const LABEL_GUARD: &str = "snapback.io/guard";
/// On batches written by compaction (their entries were stored alone first).
pub const LABEL_COMPACTED: &str = "snapback.io/compacted";
/// The annotation that puts a guard on an action.
pub const GUARD_ANNOTATION: &str = "snapback.io/guard";
pub const RECORD_ACTION: &str = "action";
/// On an action record, per namespace the action deleted:
/// `ns.snapback.io/<namespace>: <namespace uid>` (a namespace name is a DNS
/// label, so a valid label name; a uid a valid label value).
pub const LABEL_DELETED_NAMESPACE_PREFIX: &str = "ns.snapback.io/";
pub const RECORD_CHUNK: &str = "chunk";

/// The annotation a user puts on an object to name its action; also the
/// impersonation extra key a restore write carries.
pub const ACTION_ANNOTATION: &str = "snapback.io/action";
/// Where `kubectl apply` keeps the manifest it last applied.
pub const LAST_APPLIED_ANNOTATION: &str = "kubectl.kubernetes.io/last-applied-configuration";

pub const ANN_NAME: &str = "snapback.io/name";
pub const ANN_NAMESPACE: &str = "snapback.io/namespace";
pub const ANN_USER: &str = "snapback.io/user";
pub const ANN_TIMESTAMP: &str = "snapback.io/timestamp";
pub const ANN_REQUEST_UID: &str = "snapback.io/request-uid";
pub const ANN_GROUP: &str = "snapback.io/group";
pub const ANN_VERSION: &str = "snapback.io/version";
pub const ANN_KIND: &str = "snapback.io/kind";
pub const ANN_RESOURCE: &str = "snapback.io/resource";
pub const ANN_SUBRESOURCE: &str = "snapback.io/subresource";
pub const ANN_RESOURCE_VERSION: &str = "snapback.io/resource-version";
pub const ANN_UID: &str = "snapback.io/uid";
pub const ANN_PAYLOAD_SHA256: &str = "snapback.io/payload-sha256";
pub const ANN_AFTER_FINGERPRINT: &str = "snapback.io/after-fingerprint";
/// `spec.replicas` of the object after the change, when it has one.
pub const ANN_AFTER_REPLICAS: &str = "snapback.io/after-replicas";
pub const ANN_BEFORE_FINGERPRINT: &str = "snapback.io/before-fingerprint";
/// On a custom resource's Scale snapshot: where the custom resource keeps
/// its replicas (a JSON pointer, from its definition's `specReplicasPath`),
/// when the capture could read it.
pub const ANN_REPLICAS_PATH: &str = "snapback.io/replicas-path";
/// With `snapback.io/replicas-path`, on a Scale change from 0: `"true"`
/// when that field was not set at all before the change (the Scale shows
/// an unset count as 0), `"false"` when it was set to 0.
pub const ANN_REPLICAS_UNSET: &str = "snapback.io/replicas-unset";
pub const ANN_CHUNKS: &str = "snapback.io/chunks";
pub const ANN_CHUNK_INDEX: &str = "snapback.io/chunk-index";
pub const ANN_ACTION_ID: &str = "snapback.io/action-id";

/// binaryData key of the gzip JSON payload.
pub const PAYLOAD_KEY: &str = "object.json.gz";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    Create,
    Update,
    Delete,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Create => "create",
            Operation::Update => "update",
            Operation::Delete => "delete",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "create" => Some(Operation::Create),
            "update" => Some(Operation::Update),
            "delete" => Some(Operation::Delete),
            _ => None,
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An action id is used as a label value, so it must be label-safe.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ActionId(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid action id {id:?}: {reason}")]
pub struct InvalidActionId {
    pub id: String,
    pub reason: &'static str,
}

impl ActionId {
    pub fn parse(id: &str) -> Result<Self, InvalidActionId> {
        let fail = |reason| {
            Err(InvalidActionId {
                id: id.chars().take(100).collect(),
                reason,
            })
        };
        if id.is_empty() {
            return fail("must not be empty");
        }
        if id.len() > 63 {
            return fail("must be at most 63 characters");
        }
        let bytes = id.as_bytes();
        if !bytes[0].is_ascii_alphanumeric() || !bytes[bytes.len() - 1].is_ascii_alphanumeric() {
            return fail("must start and end with a letter or digit");
        }
        if !bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return fail("may contain only letters, digits, '-', '_' and '.'");
        }
        Ok(ActionId(id.to_string()))
    }

    /// An id a user chose (`POST /api/v1/actions`, the action annotation):
    /// valid, and not of the form of rollback ids (`…-rollback-<n>`), which
    /// are snapback's: an action opened under the id a coming rollback will
    /// take would have that rollback recorded into it.
    pub fn parse_chosen(id: &str) -> Result<Self, InvalidActionId> {
        let parsed = Self::parse(id)?;
        if parsed.is_rollback_form() {
            return Err(InvalidActionId {
                id: id.chars().take(100).collect(),
                reason: "ids ending in -rollback-<number> are reserved for rollback actions",
            });
        }
        Ok(parsed)
    }

    /// Whether the id has the form of a rollback id: `…-rollback-<digits>`.
    pub fn is_rollback_form(&self) -> bool {
        self.0.rsplit_once("-rollback-").is_some_and(|(base, n)| {
            !base.is_empty() && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())
        })
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Name of the action record ConfigMap. Object names must be lowercase
    /// DNS labels, action ids need not be: when the id is not already a valid
    /// name, a short hash of the exact id keeps different ids apart. An id
    /// that is a valid name but ends like such a hash (`-` and 8 hex
    /// digits) is hashed too: `upper-9cba1c65` would otherwise be the
    /// record of `UPPER`.
    pub fn record_name(&self) -> String {
        let normalized: String = self
            .0
            .chars()
            .map(|c| match c {
                'A'..='Z' => c.to_ascii_lowercase(),
                // `a..b` is a valid label value but not a valid object name.
                '_' | '.' => '-',
                c => c,
            })
            .collect();
        let ends_like_a_hash = self.0.len() > 9 && {
            let tail = &self.0.as_bytes()[self.0.len() - 9..];
            tail[0] == b'-'
                && tail[1..]
                    .iter()
                    .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        };
        if normalized == self.0 && !ends_like_a_hash {
            format!("action-{normalized}")
        } else {
            format!("action-{normalized}-{}", &short_hash(&self.0)[..8])
        }
    }

    /// The id of the `n`th rollback of this action: `<id>-rollback-<n>`, kept
    /// label-safe by shortening the base when needed.
    /// The id of this action's `n`th rollback: `<id>-rollback-<n>`. When
    /// that is longer than a label value may be, the id is shortened and
    /// followed by 8 hex digits of its sha256, so that two long ids sharing
    /// a prefix (the sessions of one service account, say), or an action
    /// and its own rollback, never get the same rollback id.
    pub fn rollback_id(&self, n: u32) -> ActionId {
        let suffix = format!("-rollback-{n}");
        if self.0.len() + suffix.len() <= 63 {
            return ActionId(format!("{}{suffix}", self.0));
        }
        let hash = &short_hash(&self.0)[..8];
        let base: String = self.0.chars().take(63 - suffix.len() - 9).collect();
        let base = base.trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
        ActionId(format!("{base}-{hash}{suffix}"))
    }
}

impl fmt::Display for ActionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

pub fn short_hash(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// A user name as a label/name-safe slug (lowercase, `[a-z0-9-]`).
pub fn user_slug(user: &str, max: usize) -> String {
    let mut slug = String::with_capacity(user.len());
    let mut last_dash = true;
    for c in user.chars() {
        if c.is_ascii_alphanumeric() {
            slug.push(c.to_ascii_lowercase());
            last_dash = false;
        } else if !last_dash {
            slug.push('-');
            last_dash = true;
        }
    }
    let slug: String = slug.chars().take(max).collect();
    let slug = slug.trim_matches('-').to_string();
    if slug.is_empty() {
        "user".to_string()
    } else {
        slug
    }
}

/// `plural.group` for the `snapback.io/resource` label, `core` for the core
/// group; shortened with a hash suffix when it does not fit a label value.
pub fn resource_label(resource: &str, group: &str) -> String {
    let group = if group.is_empty() { "core" } else { group };
    let full = format!("{resource}.{group}");
    label_safe(&full)
}

/// Make any string a valid label value (≤63 chars, alnum ends, `[-_.a-zA-Z0-9]`).
pub fn label_safe(s: &str) -> String {
    let cleaned: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let trimmed = cleaned.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    if trimmed.len() <= 63 && trimmed == s {
        return trimmed.to_string();
    }
    let head: String = trimmed.chars().take(54).collect();
    let head = head.trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
    format!("{head}-{}", &short_hash(s)[..8])
}

/// Group/version/resource of the object a change was made to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ObjectRef {
    pub group: String,
    pub version: String,
    pub resource: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subresource: Option<String>,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
}

impl ObjectRef {
    /// The namespace the change concerns: the object's, or a Namespace's
    /// own name (so that listing actions by namespace finds the one that
    /// deleted or created it).
    pub fn touched_namespace(&self) -> Option<&str> {
        if self.group.is_empty() && self.resource == "namespaces" {
            return Some(self.name.as_str());
        }
        self.namespace.as_deref()
    }

    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Identity of the object regardless of the subresource written.
    pub fn object_key(&self) -> (String, String, Option<String>, String) {
        (
            self.group.clone(),
            self.resource.clone(),
            self.namespace.clone(),
            self.name.clone(),
        )
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let group = if self.group.is_empty() {
            String::new()
        } else {
            format!(".{}", self.group)
        };
        match &self.namespace {
            Some(ns) => write!(f, "{}{}/{} in {}", self.resource, group, self.name, ns)?,
            None => write!(f, "{}{}/{}", self.resource, group, self.name)?,
        }
        if let Some(sub) = &self.subresource {
            write!(f, " ({sub})")?;
        }
        Ok(())
    }
}

/// Everything stored about one change except the payload itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// Name of the snapshot object in the snapshot namespace.
    pub snapshot_name: String,
    pub action: ActionId,
    pub operation: Operation,
    pub object: ObjectRef,
    pub user: String,
    pub timestamp: Timestamp,
    pub request_uid: String,
    /// resourceVersion before the change (none for CREATE).
    pub resource_version: Option<String>,
    /// uid of the object: the one it had before, or the one it got on CREATE.
    pub uid: Option<String>,
    /// sha256 of the stored gzip payload (none for CREATE).
    pub payload_sha256: Option<String>,
    /// Fingerprint of the object after the change (none for DELETE).
    pub after_fingerprint: Option<String>,
    /// Fingerprint of the object before the change (none for CREATE).
    pub before_fingerprint: Option<String>,
    /// `spec.replicas` after the change, when the object has one (the
    /// fingerprint leaves replicas out): a later scale by someone else
    /// (an autoscaler) is told from the action's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_replicas: Option<String>,
    /// A custom resource's Scale change: the JSON pointer of the replicas
    /// field in the custom resource (its definition's `specReplicasPath`),
    /// when the capture could read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas_path: Option<String>,
    /// A custom resource's Scale change from 0 replicas: whether the field
    /// was not set at all before the change (the Scale cannot tell "0" from
    /// "not set"; a rollback then removes it rather than setting 0), when
    /// the capture could read the object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas_unset: Option<bool>,
    pub chunks: u32,
    /// Stored as a Secret rather than a ConfigMap.
    pub secret: bool,
    /// Guard timeout requested by the object's `snapback.io/guard` annotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard: Option<String>,
    /// The batch ConfigMap holding this snapshot, when it is one of several
    /// in a batch (see `store::batch`); derived when read, never stored.
    #[serde(skip)]
    pub batch: Option<String>,
}

impl SnapshotMeta {
    /// The snapshot of one admission request, named after it, with nothing
    /// else known yet (identity, fingerprints, guard: set by the caller).
    pub fn new(
        action: ActionId,
        operation: Operation,
        object: ObjectRef,
        user: impl Into<String>,
        timestamp: Timestamp,
        request_uid: impl Into<String>,
    ) -> Self {
        let request_uid = request_uid.into();
        SnapshotMeta {
            snapshot_name: Self::object_name(timestamp, &request_uid),
            action,
            operation,
            object,
            user: user.into(),
            timestamp,
            request_uid,
            resource_version: None,
            uid: None,
            payload_sha256: None,
            after_fingerprint: None,
            before_fingerprint: None,
            after_replicas: None,
            replicas_path: None,
            replicas_unset: None,
            chunks: 0,
            secret: false,
            guard: None,
            batch: None,
        }
    }

    /// A name that sorts by capture time and is unique per admission request.
    pub fn object_name(timestamp: Timestamp, request_uid: &str) -> String {
        let stamp = timestamp.strftime("%Y%m%d%H%M%S%6f").to_string();
        format!("snap-{stamp}-{}", &short_hash(request_uid)[..12])
    }

    pub fn labels(&self) -> BTreeMap<String, String> {
        let mut labels = BTreeMap::from([
            (MANAGED_BY.to_string(), MANAGER.to_string()),
            (LABEL_ACTION.to_string(), self.action.to_string()),
            (LABEL_OPERATION.to_string(), self.operation.to_string()),
            (
                LABEL_RESOURCE.to_string(),
                resource_label(&self.object.resource, &self.object.group),
            ),
        ]);
        if let Some(g) = &self.guard {
            labels.insert(LABEL_GUARD.to_string(), label_safe(g));
        }
        if let Some(key) = self.deleted_uid_label() {
            labels.insert(key, String::new());
        }
        labels
    }

    /// For a DELETE: the label `deleted.snapback.io/<uid>` that finds the
    /// action that deleted the object with that uid (the garbage
    /// collector's deletes of its dependents join that action, whichever
    /// replica they reach).
    pub fn deleted_uid_label(&self) -> Option<String> {
        let uid = self.uid.as_deref()?;
        let valid = !uid.is_empty()
            && uid.len() <= 63
            && uid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && uid.starts_with(|c: char| c.is_ascii_alphanumeric())
            && uid.ends_with(|c: char| c.is_ascii_alphanumeric());
        (self.operation == Operation::Delete && valid)
            .then(|| format!("{LABEL_DELETED_PREFIX}{uid}"))
    }

    pub fn annotations(&self) -> BTreeMap<String, String> {
        let mut a = BTreeMap::from([
            (ANN_NAME.to_string(), self.object.name.clone()),
            (ANN_USER.to_string(), self.user.clone()),
            (ANN_TIMESTAMP.to_string(), format_timestamp(self.timestamp)),
            (ANN_REQUEST_UID.to_string(), self.request_uid.clone()),
            (ANN_GROUP.to_string(), self.object.group.clone()),
            (ANN_VERSION.to_string(), self.object.version.clone()),
            (ANN_KIND.to_string(), self.object.kind.clone()),
            (ANN_RESOURCE.to_string(), self.object.resource.clone()),
            (ANN_CHUNKS.to_string(), self.chunks.to_string()),
        ]);
        let optional = [
            (ANN_NAMESPACE, &self.object.namespace),
            (ANN_SUBRESOURCE, &self.object.subresource),
            (ANN_RESOURCE_VERSION, &self.resource_version),
            (ANN_UID, &self.uid),
            (ANN_PAYLOAD_SHA256, &self.payload_sha256),
            (ANN_AFTER_FINGERPRINT, &self.after_fingerprint),
            (ANN_BEFORE_FINGERPRINT, &self.before_fingerprint),
            (ANN_AFTER_REPLICAS, &self.after_replicas),
            (ANN_REPLICAS_PATH, &self.replicas_path),
        ];
        for (key, value) in optional {
            if let Some(v) = value {
                a.insert(key.to_string(), v.clone());
            }
        }
        if let Some(unset) = self.replicas_unset {
            a.insert(ANN_REPLICAS_UNSET.to_string(), unset.to_string());
        }
        a
    }

    /// Read the metadata back from a stored object's labels and annotations.
    pub fn from_stored(
        snapshot_name: &str,
        labels: &BTreeMap<String, String>,
        annotations: &BTreeMap<String, String>,
        secret: bool,
    ) -> Result<Self, String> {
        let ann = |k: &str| annotations.get(k).cloned();
        let need = |k: &str| ann(k).ok_or_else(|| format!("missing annotation {k}"));
        let action = labels
            .get(LABEL_ACTION)
            .ok_or_else(|| format!("missing label {LABEL_ACTION}"))?;
        let operation = labels
            .get(LABEL_OPERATION)
            .and_then(|o| Operation::parse(o))
            .ok_or_else(|| format!("missing or invalid label {LABEL_OPERATION}"))?;
        let timestamp = need(ANN_TIMESTAMP)?
            .parse::<Timestamp>()
            .map_err(|e| format!("invalid {ANN_TIMESTAMP}: {e}"))?;
        let chunks = ann(ANN_CHUNKS)
            .map(|c| c.parse::<u32>())
            .transpose()
            .map_err(|e| format!("invalid {ANN_CHUNKS}: {e}"))?
            .unwrap_or(0);
        Ok(SnapshotMeta {
            snapshot_name: snapshot_name.to_string(),
            action: ActionId::parse(action).map_err(|e| e.to_string())?,
            operation,
            object: ObjectRef {
                group: ann(ANN_GROUP).unwrap_or_default(),
                version: need(ANN_VERSION)?,
                resource: need(ANN_RESOURCE)?,
                subresource: ann(ANN_SUBRESOURCE),
                kind: need(ANN_KIND)?,
                namespace: ann(ANN_NAMESPACE),
                name: need(ANN_NAME)?,
            },
            user: ann(ANN_USER).unwrap_or_default(),
            timestamp,
            request_uid: ann(ANN_REQUEST_UID).unwrap_or_default(),
            resource_version: ann(ANN_RESOURCE_VERSION),
            uid: ann(ANN_UID),
            payload_sha256: ann(ANN_PAYLOAD_SHA256),
            after_fingerprint: ann(ANN_AFTER_FINGERPRINT),
            before_fingerprint: ann(ANN_BEFORE_FINGERPRINT),
            after_replicas: ann(ANN_AFTER_REPLICAS),
            replicas_path: ann(ANN_REPLICAS_PATH),
            replicas_unset: ann(ANN_REPLICAS_UNSET).and_then(|u| u.parse().ok()),
            chunks,
            secret,
            guard: labels.get(LABEL_GUARD).cloned(),
            batch: None,
        })
    }

    /// Sort key for "which change came first": capture time, then the
    /// resourceVersion the change started from (etcd revisions grow).
    pub fn order_key(&self) -> (Timestamp, u64, String) {
        let rv = self
            .resource_version
            .as_deref()
            .and_then(|rv| rv.parse().ok())
            .unwrap_or(0);
        (self.timestamp, rv, self.snapshot_name.clone())
    }
}

/// UTC with microseconds, e.g. `2026-11-22T23:45:52.123456Z`.
pub fn format_timestamp(ts: Timestamp) -> String {
    ts.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case("release-42", true)]
    #[case("alice-20261122T234552Z-1a2b", true)]
    #[case("a", true)]
    #[case("", false)]
    #[case("-leading", false)]
    #[case("trailing.", false)]
    #[case("has space", false)]
    #[case("slash/y", false)]
    #[case(&"x".repeat(64), false)]
    #[case(&"x".repeat(63), true)]
    fn action_ids(#[case] id: &str, #[case] ok: bool) {
        assert_eq!(ActionId::parse(id).is_ok(), ok, "{id}");
    }

    #[test]
    fn record_names_are_valid_and_distinct() {
        let a = ActionId::parse("Deploy_1").unwrap();
        let b = ActionId::parse("deploy-1").unwrap();
        assert_eq!(b.record_name(), "action-deploy-1");
        assert!(a.record_name().starts_with("action-deploy-1-"));
        assert_ne!(a.record_name(), b.record_name());
        // A valid name spelled like another id's hashed record name.
        for upper in ["UPPER", "Zed", "Release_7"] {
            let hashed = ActionId::parse(upper).unwrap().record_name();
            let lookalike = ActionId::parse(hashed.trim_start_matches("action-")).unwrap();
            assert_ne!(lookalike.record_name(), hashed, "{upper}");
        }
        // Ids that merely end in hex letters keep their plain names.
        assert_eq!(
            ActionId::parse("fix-cafe").unwrap().record_name(),
            "action-fix-cafe"
        );
        for odd in ["a..b", "a.-b", "v1.2.3", "A_B.c"] {
            let name = ActionId::parse(odd).unwrap().record_name();
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
                "{name}"
            );
            assert!(name.len() <= 253);
        }
    }

    #[test]
    fn rollback_ids_are_reserved() {
        for reserved in ["a-rollback-1", "x.y-rollback-12", "long-id-rollback-007"] {
            let err = ActionId::parse_chosen(reserved).unwrap_err();
            assert!(err.reason.contains("reserved"), "{reserved}: {err}");
            assert!(ActionId::parse(reserved).unwrap().is_rollback_form());
        }
        for free in [
            "rollback-1",
            "a-rollback",
            "a-rollback-x",
            "a-rollback-1b",
            "release-2",
        ] {
            assert!(ActionId::parse_chosen(free).is_ok(), "{free}");
        }
        let long = ActionId::parse(&"a".repeat(63)).unwrap();
        assert!(long.rollback_id(3).is_rollback_form());
        assert!(long.rollback_id(3).rollback_id(1).is_rollback_form());
    }

    #[test]
    fn rollback_ids_stay_label_safe() {
        let long = ActionId::parse(&"a".repeat(63)).unwrap();
        let rb = long.rollback_id(12);
        assert!(ActionId::parse(rb.as_str()).is_ok());
        assert!(rb.as_str().ends_with("-rollback-12"));
        let short = ActionId::parse("x1").unwrap();
        assert_eq!(short.rollback_id(1).as_str(), "x1-rollback-1");
        let fits = ActionId::parse(&"b".repeat(52)).unwrap();
        assert_eq!(
            fits.rollback_id(1).as_str(),
            format!("{}-rollback-1", "b".repeat(52))
        );
    }

    #[test]
    fn long_ids_never_share_a_rollback_id() {
        // Two sessions of one long service account name, the same hour.
        let a = ActionId::parse("system-serviceaccount-argocd-argocd-appli-20261123T1015-a1b2")
            .unwrap();
        let b = ActionId::parse("system-serviceaccount-argocd-argocd-appli-20261123T1016-c3d4")
            .unwrap();
        assert_ne!(a.rollback_id(1), b.rollback_id(1));
        let (c, d) = (
            ActionId::parse(&"b".repeat(60)).unwrap(),
            ActionId::parse(&format!("{}c", "b".repeat(59))).unwrap(),
        );
        assert_ne!(c.rollback_id(1), d.rollback_id(1));
        // Redo: the rollback of a rollback is another action, at every length.
        for len in [1, 40, 52, 53, 63] {
            let id = ActionId::parse(&"r".repeat(len)).unwrap();
            let first = id.rollback_id(1);
            let redo = first.rollback_id(1);
            assert_ne!(redo, first, "{len}");
            assert_ne!(redo, id, "{len}");
            assert!(ActionId::parse(redo.as_str()).is_ok());
            assert!(redo.as_str().len() <= 63);
        }
    }

    #[rstest]
    #[case(
        "system:serviceaccount:default:builder",
        "system-serviceaccount-default-builder"
    )]
    #[case("Alice@Example.com", "alice-example-com")]
    #[case("::", "user")]
    fn slugs(#[case] user: &str, #[case] slug: &str) {
        assert_eq!(user_slug(user, 41), slug);
    }

    #[test]
    fn resource_labels() {
        assert_eq!(resource_label("configmaps", ""), "configmaps.core");
        assert_eq!(resource_label("deployments", "apps"), "deployments.apps");
        let long = resource_label(&"widgets".repeat(5), &"example".repeat(6));
        assert!(long.len() <= 63);
        assert!(ActionId::parse(&long).is_ok());
    }

    #[test]
    fn meta_round_trips_through_labels_and_annotations() {
        let meta = SnapshotMeta {
            snapshot_name: "snap-1".into(),
            action: ActionId::parse("a-1").unwrap(),
            operation: Operation::Update,
            object: ObjectRef {
                group: "apps".into(),
                version: "v1".into(),
                resource: "deployments".into(),
                subresource: Some("scale".into()),
                kind: "Scale".into(),
                namespace: Some("ns".into()),
                name: "web".into(),
            },
            user: "alice".into(),
            timestamp: "2026-11-22T10:00:00.123456Z".parse().unwrap(),
            request_uid: "uid-1".into(),
            resource_version: Some("42".into()),
            uid: Some("u".into()),
            payload_sha256: Some("ab".into()),
            after_fingerprint: Some("cd".into()),
            before_fingerprint: Some("ef".into()),
            after_replicas: Some("3".into()),
            replicas_path: Some("/spec/size".into()),
            replicas_unset: Some(true),
            chunks: 1,
            secret: false,
            guard: None,
            batch: None,
        };
        let back = SnapshotMeta::from_stored("snap-1", &meta.labels(), &meta.annotations(), false)
            .unwrap();
        assert_eq!(back, meta);
        assert_eq!(
            meta.annotations()[ANN_TIMESTAMP],
            "2026-11-22T10:00:00.123456Z"
        );
    }
}
