//! Snapshot payload encoding: canonical JSON, gzip, sha256, chunking, and the
//! fingerprint used for conflict detection.

use std::io::Read;

use flate2::read::GzDecoder;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Largest payload one snapshot object carries. A ConfigMap's data may total
/// 1 MiB; the rest is headroom for labels, annotations and the envelope.
pub const CHUNK_SIZE: usize = 900 * 1024;

/// Decompressed payloads larger than this are refused: the API server never
/// stores an object over ~1.5 MiB, so anything far beyond is corrupt or hostile.
pub const MAX_DECODED_SIZE: u64 = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("payload sha256 mismatch: stored {stored}, computed {computed}")]
    Checksum { stored: String, computed: String },
    #[error("payload is not valid gzip: {0}")]
    Gzip(#[source] std::io::Error),
    #[error("decompressed payload exceeds {MAX_DECODED_SIZE} bytes")]
    TooLarge,
    #[error("payload is not valid JSON: {0}")]
    Json(#[source] serde_json::Error),
    #[error("serialising object: {0}")]
    Serialize(#[source] serde_json::Error),
}

/// An object ready to store: gzip bytes split into chunks, and the sha256 of
/// the whole compressed payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedPayload {
    pub chunks: Vec<Vec<u8>>,
    pub sha256: String,
    pub raw_len: usize,
}

impl EncodedPayload {
    pub fn compressed_len(&self) -> usize {
        self.chunks.iter().map(Vec::len).sum()
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// How hard to compress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effort {
    /// On the admission path: deflate level 1, several times faster than
    /// the default for most of its gain on JSON.
    Fast,
    /// Off the admission path (compaction): level 9, the smallest output.
    Best,
}

thread_local! {
    /// One compressor per thread and effort: allocating one costs more than
    /// compressing a typical (1–4 KiB) object. libdeflate compresses a whole
    /// buffer at once, which is all a snapshot needs, several times faster
    /// than a streaming zlib at the same level.
    static DEFLATE_FAST: std::cell::RefCell<libdeflater::Compressor> =
        std::cell::RefCell::new(libdeflater::Compressor::new(libdeflater::CompressionLvl::new(1).unwrap_or_else(|_| libdeflater::CompressionLvl::fastest())));
    static DEFLATE_BEST: std::cell::RefCell<libdeflater::Compressor> = std::cell::RefCell::new(
        libdeflater::Compressor::new(
            libdeflater::CompressionLvl::new(9).unwrap_or_else(|_| libdeflater::CompressionLvl::best()),
        ),
    );
}

/// gzip on the admission path ([`Effort::Fast`]).
pub fn gzip(raw: &[u8]) -> Result<Vec<u8>, CodecError> {
    gzip_with(raw, Effort::Fast)
}

/// A standard gzip (RFC 1952) member of `raw`.
pub fn gzip_with(raw: &[u8], effort: Effort) -> Result<Vec<u8>, CodecError> {
    let state = match effort {
        Effort::Fast => &DEFLATE_FAST,
        Effort::Best => &DEFLATE_BEST,
    };
    state.with(|c| {
        let mut c = c.borrow_mut();
        let mut out = vec![0; c.gzip_compress_bound(raw.len())];
        let n = c
            .gzip_compress(raw, &mut out)
            .map_err(|e| CodecError::Gzip(std::io::Error::other(format!("{e:?}"))))?;
        out.truncate(n);
        // The bound is about the input's size: keep only what was written.
        out.shrink_to_fit();
        Ok(out)
    })
}

/// gzip the JSON of `object` and split it into chunks of at most `chunk_size`.
pub fn encode(object: &Value, chunk_size: usize) -> Result<EncodedPayload, CodecError> {
    let raw = serde_json::to_vec(object).map_err(CodecError::Serialize)?;
    encode_json(&raw, chunk_size)
}

/// gzip an object's JSON as it is (the bytes the API server sent) and split
/// it into chunks of at most `chunk_size`.
pub fn encode_json(raw: &[u8], chunk_size: usize) -> Result<EncodedPayload, CodecError> {
    let compressed = gzip(raw)?;
    let sha256 = sha256_hex(&compressed);
    let chunks = compressed
        .chunks(chunk_size.max(1))
        .map(<[u8]>::to_vec)
        .collect();
    Ok(EncodedPayload {
        chunks,
        sha256,
        raw_len: raw.len(),
    })
}

/// Reassemble, verify and decompress a payload.
pub fn decode(chunks: &[&[u8]], expected_sha256: &str) -> Result<Value, CodecError> {
    let out = decode_bytes(chunks, expected_sha256)?;
    serde_json::from_slice(&out).map_err(CodecError::Json)
}

/// Reassemble, verify and decompress a payload into its JSON bytes.
pub fn decode_bytes(chunks: &[&[u8]], expected_sha256: &str) -> Result<Vec<u8>, CodecError> {
    let compressed: Vec<u8> = chunks.concat();
    let computed = sha256_hex(&compressed);
    if !computed.eq_ignore_ascii_case(expected_sha256) {
        return Err(CodecError::Checksum {
            stored: expected_sha256.to_string(),
            computed,
        });
    }
    let mut out = Vec::new();
    GzDecoder::new(compressed.as_slice())
        .take(MAX_DECODED_SIZE + 1)
        .read_to_end(&mut out)
        .map_err(CodecError::Gzip)?;
    if out.len() as u64 > MAX_DECODED_SIZE {
        return Err(CodecError::TooLarge);
    }
    Ok(out)
}

/// Fields that change without anyone changing the object's content.
const VOLATILE_METADATA: &[&str] = &["resourceVersion", "managedFields", "generation", "selfLink"];
/// Annotations written by controllers, not by the people whose changes we
/// track: the Deployment revision, volume binding and provisioning, the
/// status a v1 HorizontalPodAutoscaler keeps in annotations, leader election.
const CONTROLLER_ANNOTATION_PREFIXES: &[&str] = &[
    "deployment.kubernetes.io/",
    "pv.kubernetes.io/",
    // Not `volume.beta.kubernetes.io/` as a whole: `mount-options` and
    // `storage-class` there are their owners'.
    "volume.beta.kubernetes.io/storage-provisioner",
    "volume.kubernetes.io/",
    // An autoscaling/v1 HPA's view of the v2 status; `metrics` and
    // `behavior` there are its owner's spec.
    "autoscaling.alpha.kubernetes.io/conditions",
    "autoscaling.alpha.kubernetes.io/current-metrics",
    "control-plane.alpha.kubernetes.io/leader",
    // The API server's mark of a DaemonSet's template generation.
    "deprecated.daemonset.template.generation",
];

/// Whether an annotation is written by controllers
/// ([`CONTROLLER_ANNOTATION_PREFIXES`]).
pub fn controller_annotation(key: &str) -> bool {
    CONTROLLER_ANNOTATION_PREFIXES
        .iter()
        .any(|p| key.starts_with(p))
}

/// Fields that controllers fill in on objects people create, by kind: the
/// token controller's `secrets` of a ServiceAccount (before 1.24), the
/// binding of a claim and of a volume, the scheduler's node of a Pod.
/// `(kind, parent, field)`, parent `""` for the top level.
const CONTROLLER_FIELDS: &[(&str, &str, &str)] = &[
    ("ServiceAccount", "", "secrets"),
    ("PersistentVolumeClaim", "spec", "volumeName"),
    ("PersistentVolume", "spec", "claimRef"),
    ("Pod", "spec", "nodeName"),
];

fn controller_field(kind: &str, parent: &str, key: &str) -> bool {
    CONTROLLER_FIELDS
        .iter()
        .any(|&(k, p, f)| k == kind && p == parent && f == key)
}

/// The object's [`CONTROLLER_FIELDS`] of its kind, with the map holding each.
fn controller_field_holders<'a>(
    object: &'a mut Value,
) -> impl Iterator<Item = (&'static str, &'static str)> + 'a {
    let kind = object
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    CONTROLLER_FIELDS
        .iter()
        .filter(move |(k, _, _)| *k == kind)
        .map(|&(_, parent, field)| (parent, field))
}

fn holder_mut<'a>(
    object: &'a mut Value,
    parent: &str,
) -> Option<&'a mut serde_json::Map<String, Value>> {
    if parent.is_empty() {
        object.as_object_mut()
    } else {
        object.get_mut(parent).and_then(Value::as_object_mut)
    }
}

/// Give `body` the fields controllers fill in ([`CONTROLLER_FIELDS`]) as
/// they are in `current`: what a controller did since (a Pod scheduled, a
/// claim bound, tokens made) is the controllers' to undo, and most of it
/// cannot be taken back by an update anyway.
pub fn take_controller_fields(body: &mut Value, current: &Value) {
    let fields: Vec<_> = controller_field_holders(body).collect();
    for (parent, field) in fields {
        let now = if parent.is_empty() {
            current.get(field)
        } else {
            current.get(parent).and_then(|p| p.get(field))
        };
        if let Some(holder) = holder_mut(body, parent) {
            match now {
                Some(v) => holder.insert(field.into(), v.clone()),
                None => holder.remove(field),
            };
        }
    }
}
/// Identity fields a recreated object gets anew.
const IDENTITY_METADATA: &[&str] = &[
    "uid",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
];

/// The conflict fingerprint: a stable hash of the object's content
/// (canonical JSON, sorted keys) without status, resourceVersion,
/// managedFields, generation, controller annotations and the fields
/// controllers fill in ([`CONTROLLER_FIELDS`]). Outside `Scale` objects
/// `spec.replicas` is left out too: autoscalers and scale-subresource writes
/// change it constantly, and a scale inside an action is checked through the
/// subresource's own fingerprint.
pub fn fingerprint(object: &Value) -> String {
    let kind = object.get("kind").and_then(Value::as_str).unwrap_or("");
    let mut hasher = Sha256::new();
    match without_read_time_defaults(kind, object) {
        Some(normalized) => write_fingerprint(&normalized, &mut hasher, &[], kind),
        None => write_fingerprint(object, &mut hasher, &[], kind),
    }
    hex::encode(hasher.finalize())
}

/// Finalizers the volume protection controllers put on claims and volumes.
const PROTECTION_FINALIZERS: &[&str] = &[
    "kubernetes.io/pvc-protection",
    "kubernetes.io/pv-protection",
];

/// The uid of the account a token Secret is for, set by the token controller.
const SERVICE_ACCOUNT_UID_ANNOTATION: &str = "kubernetes.io/service-account.uid";

/// Labels a Job read back carries from its template (API server-made).
const JOB_READ_BACK_LABELS: &[&str] = &[
    "controller-uid",
    "job-name",
    "batch.kubernetes.io/controller-uid",
    "batch.kubernetes.io/job-name",
];

/// What the API server fills in only when it reads an object back: defaults
/// applied on decoding to what was added after the request's own defaulting
/// (by admission plugins and the create strategy). The validating webhook
/// sees a CREATE without them, every later read with them, so without this
/// a Pod or a Job an action created would be a conflict to its own rollback:
/// - a Pod's service account token volume, injected by the admission
///   plugin, gets its `defaultMode` (420) only on reading back (Pod volumes
///   cannot change, so `defaultMode` never tells a user's change);
/// - a Job's `metadata.labels` are defaulted from its template's labels on
///   reading back, after the create strategy added the uid labels there.
///
/// `None` when the object has nothing of the sort (no copy is made).
fn without_read_time_defaults(kind: &str, object: &Value) -> Option<Value> {
    const SOURCES: [&str; 4] = ["secret", "configMap", "projected", "downwardAPI"];
    match kind {
        "Pod" => {
            let volumes = object.pointer("/spec/volumes")?.as_array()?;
            let has = |v: &Value| SOURCES.iter().any(|s| v[*s].get("defaultMode").is_some());
            if !volumes.iter().any(has) {
                return None;
            }
            let mut copy = object.clone();
            for v in copy
                .pointer_mut("/spec/volumes")?
                .as_array_mut()?
                .iter_mut()
            {
                for s in SOURCES {
                    if let Some(source) = v.get_mut(s).and_then(Value::as_object_mut) {
                        source.remove("defaultMode");
                    }
                }
            }
            Some(copy)
        }
        // autoscaling/v2beta1 and v2beta2 are stored as v1 (metrics in an
        // annotation, CPU utilisation in its own field): read back, the
        // CPU metric comes last whatever order it was written in. The
        // order of an autoscaler's metrics means nothing (the largest
        // recommendation wins): compared sorted.
        "HorizontalPodAutoscaler" => {
            let metrics = object.pointer("/spec/metrics")?.as_array()?;
            if metrics.len() < 2 {
                return None;
            }
            let mut sorted = metrics.clone();
            sorted.sort_by_cached_key(|m| m.to_string());
            let mut copy = object.clone();
            *copy.pointer_mut("/spec/metrics")? = Value::Array(sorted);
            Some(copy)
        }
        // The volume protection controllers add their finalizer to a claim
        // or volume once it exists (or the admission plugin at its create,
        // where it is enabled): not its owner's change.
        "PersistentVolumeClaim" | "PersistentVolume" => {
            let finalizers = object.pointer("/metadata/finalizers")?.as_array()?;
            let protection = |f: &Value| {
                f.as_str()
                    .is_some_and(|f| PROTECTION_FINALIZERS.contains(&f))
            };
            if !finalizers.iter().any(protection) {
                return None;
            }
            let mut copy = object.clone();
            let meta = copy.get_mut("metadata")?.as_object_mut()?;
            let kept: Vec<Value> = finalizers
                .iter()
                .filter(|f| !protection(f))
                .cloned()
                .collect();
            if kept.is_empty() {
                meta.remove("finalizers");
            } else {
                meta.insert("finalizers".into(), Value::Array(kept));
            }
            Some(copy)
        }
        // A service account token Secret gets its token, CA and namespace
        // (`data`) and the account's uid from the token controller: a
        // manifest that creates one is no conflict to its own rollback.
        "Secret" => {
            if object.get("type").and_then(Value::as_str)
                != Some("kubernetes.io/service-account-token")
            {
                return None;
            }
            let mut copy = object.clone();
            let map = copy.as_object_mut()?;
            map.remove("data");
            if let Some(meta) = map.get_mut("metadata").and_then(Value::as_object_mut) {
                let mut empty = false;
                if let Some(a) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
                    a.remove(SERVICE_ACCOUNT_UID_ANNOTATION);
                    empty = a.is_empty();
                }
                if empty {
                    meta.remove("annotations");
                }
            }
            Some(copy)
        }
        "Job" => {
            let labels = object.pointer("/metadata/labels")?.as_object()?;
            if !labels
                .keys()
                .any(|k| JOB_READ_BACK_LABELS.contains(&k.as_str()))
            {
                return None;
            }
            let mut copy = object.clone();
            let labels = copy.pointer_mut("/metadata/labels")?.as_object_mut()?;
            for key in JOB_READ_BACK_LABELS {
                labels.remove(*key);
            }
            if labels.is_empty() {
                copy["metadata"].as_object_mut().map(|m| m.remove("labels"));
            }
            Some(copy)
        }
        _ => None,
    }
}

/// Canonical JSON of `value` into `out`, leaving out what [`fingerprint`]
/// ignores, without copying the object. `path` is the keys leading here,
/// `kind` the object's.
fn write_fingerprint(value: &Value, out: &mut Sha256, path: &[&str], kind: &str) {
    let Value::Object(map) = value else {
        return write_canonical(value, out);
    };
    let scale = kind == "Scale";
    let skip = |key: &str, v: &Value| -> bool {
        match path {
            [] => key == "status" || controller_field(kind, "", key),
            ["metadata"] => {
                VOLATILE_METADATA.contains(&key)
                    || (key == "annotations"
                        && v.as_object()
                            .is_some_and(|a| a.keys().all(|k| controller_annotation(k))))
            }
            ["metadata", "annotations"] => controller_annotation(key),
            ["spec"] => (!scale && key == "replicas") || controller_field(kind, "spec", key),
            _ => false,
        }
    };
    write_object(
        map,
        |k, v| !skip(k, v),
        out,
        |key, v, out| {
            if path.len() < 2 {
                let mut next: Vec<&str> = path.to_vec();
                next.push(key);
                write_fingerprint(v, out, &next, kind);
            } else {
                write_canonical(v, out);
            }
        },
    );
}

/// `{"k":v,...}` with sorted keys (maps keep insertion order here: serde_json's
/// `preserve_order` is on), the kept members only, each value by `value`.
fn write_object(
    map: &serde_json::Map<String, Value>,
    keep: impl Fn(&str, &Value) -> bool,
    out: &mut Sha256,
    mut value: impl FnMut(&str, &Value, &mut Sha256),
) {
    let mut keys: Vec<&String> = map.keys().filter(|k| keep(k, &map[*k])).collect();
    keys.sort();
    out.update(b"{");
    for (i, key) in keys.into_iter().enumerate() {
        if i > 0 {
            out.update(b",");
        }
        write_key(key, out);
        out.update(b":");
        value(key, &map[key], out);
    }
    out.update(b"}");
}

fn write_key(key: &str, out: &mut Sha256) {
    // JSON string escaping, as serde_json writes it.
    let _ = serde_json::to_writer(HashWriter(out), key);
}

struct HashWriter<'a>(&'a mut Sha256);

impl std::io::Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The object without status, volatile metadata and controller annotations.
pub fn strip_volatile(object: &Value) -> Value {
    let mut copy = object.clone();
    if let Some(map) = copy.as_object_mut() {
        map.remove("status");
        if let Some(meta) = map.get_mut("metadata").and_then(Value::as_object_mut) {
            for key in VOLATILE_METADATA {
                meta.remove(*key);
            }
            let mut empty = false;
            if let Some(ann) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
                ann.retain(|k, _| {
                    !CONTROLLER_ANNOTATION_PREFIXES
                        .iter()
                        .any(|p| k.starts_with(p))
                });
                empty = ann.is_empty();
            }
            if empty {
                meta.remove("annotations");
            }
        }
    }
    copy
}

/// Labels the API server puts on a Job's pod template, and in its selector,
/// from the Job's uid.
const JOB_UID_LABELS: &[&str] = &["controller-uid", "batch.kubernetes.io/controller-uid"];

/// Unless `spec.manualSelector` is true, a Job's selector and its template's
/// `controller-uid` labels are generated from its uid when it is created: a
/// create that carries them is refused ("selector not auto-generated"), and
/// a Job recreated from its prior state gets new ones. Removes them from a
/// `batch` Job (nothing else is touched).
pub fn strip_generated_job_selector(v: &mut Value) {
    let is_job = v.get("kind").and_then(Value::as_str) == Some("Job")
        && v.get("apiVersion")
            .and_then(Value::as_str)
            .is_some_and(|a| a.starts_with("batch/"));
    let Some(spec) = v.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    if !is_job || spec.get("manualSelector").and_then(Value::as_bool) == Some(true) {
        return;
    }
    spec.remove("selector");
    if let Some(labels) = spec
        .get_mut("template")
        .and_then(|t| t.get_mut("metadata"))
        .and_then(|m| m.get_mut("labels"))
        .and_then(Value::as_object_mut)
    {
        for key in JOB_UID_LABELS {
            labels.remove(*key);
        }
    }
    // The Job's own labels, when they are the ones the API server derived
    // from the template (old uid included), are derived again.
    if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut)
        && let Some(labels) = meta.get_mut("labels").and_then(Value::as_object_mut)
    {
        for key in JOB_READ_BACK_LABELS {
            labels.remove(*key);
        }
        if labels.is_empty() {
            meta.remove("labels");
        }
    }
}

/// Where the service account admission plugin mounts a Pod's API token.
const TOKEN_MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// A Pod's service account token volume, as the admission plugin injected
/// it (a `<account>-token-*` Secret before Kubernetes 1.24's bound tokens, a
/// projected `kube-api-access-*` volume since), and its mounts: recreated
/// as it was, a Pod would mount a token Secret that went with its namespace
/// or account. Left out, the plugin injects the current one. Nothing is
/// removed from a Pod that opted out of the automatic token.
pub fn strip_injected_token_volume(body: &mut Value) {
    if body.get("kind").and_then(Value::as_str) != Some("Pod")
        || body.get("apiVersion").and_then(Value::as_str) != Some("v1")
    {
        return;
    }
    let Some(spec) = body.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    if spec.get("automountServiceAccountToken") == Some(&Value::Bool(false)) {
        return;
    }
    let account = spec
        .get("serviceAccountName")
        .and_then(Value::as_str)
        .unwrap_or("default")
        .to_string();
    const CONTAINER_LISTS: [&str; 3] = ["containers", "initContainers", "ephemeralContainers"];
    let mounted: std::collections::BTreeSet<String> = CONTAINER_LISTS
        .iter()
        .filter_map(|l| spec.get(*l)?.as_array())
        .flatten()
        .filter_map(|c| c.get("volumeMounts")?.as_array())
        .flatten()
        .filter(|m| m.get("mountPath").and_then(Value::as_str) == Some(TOKEN_MOUNT_PATH))
        .filter_map(|m| m.get("name")?.as_str().map(str::to_string))
        .collect();
    let injected = |v: &Value| -> bool {
        let Some(name) = v.get("name").and_then(Value::as_str) else {
            return false;
        };
        if !mounted.contains(name) {
            return false;
        }
        let legacy = v
            .pointer("/secret/secretName")
            .and_then(Value::as_str)
            .is_some_and(|s| s.starts_with(&format!("{account}-token-")));
        let bound = name.starts_with("kube-api-access-") && v.get("projected").is_some();
        legacy || bound
    };
    let Some(volumes) = spec.get_mut("volumes").and_then(Value::as_array_mut) else {
        return;
    };
    let removed: Vec<String> = volumes
        .iter()
        .filter(|v| injected(v))
        .filter_map(|v| v.get("name")?.as_str().map(str::to_string))
        .collect();
    if removed.is_empty() {
        return;
    }
    volumes.retain(|v| !injected(v));
    if volumes.is_empty() {
        spec.remove("volumes");
    }
    for list in CONTAINER_LISTS {
        for c in spec
            .get_mut(list)
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            if let Some(mounts) = c.get_mut("volumeMounts").and_then(Value::as_array_mut) {
                mounts.retain(|m| {
                    !m.get("name")
                        .and_then(Value::as_str)
                        .is_some_and(|n| removed.iter().any(|r| r == n))
                });
                if mounts.is_empty() {
                    c.as_object_mut().map(|o| o.remove("volumeMounts"));
                }
            }
        }
    }
}

/// Whether two versions of an object have the same content, as a rollback
/// sees it: everything but status, volatile and identity metadata, what
/// the API server derives from the uid (ownerReferences' uids, a Job's
/// generated selector), a Pod's injected token volume (a recreated Pod gets
/// the current token) and the fields controllers fill in
/// ([`CONTROLLER_FIELDS`]: a recreated ServiceAccount gets new tokens).
/// Unlike the fingerprint this includes `spec.replicas`.
pub fn same_content(a: &Value, b: &Value) -> bool {
    let strip = |v: &Value| {
        let mut s = strip_volatile(v);
        strip_generated_job_selector(&mut s);
        strip_injected_token_volume(&mut s);
        let fields: Vec<_> = controller_field_holders(&mut s).collect();
        for (parent, field) in fields {
            if let Some(holder) = holder_mut(&mut s, parent) {
                holder.remove(field);
            }
        }
        if let Some(meta) = s.get_mut("metadata").and_then(Value::as_object_mut) {
            for key in IDENTITY_METADATA {
                meta.remove(*key);
            }
            if let Some(refs) = meta
                .get_mut("ownerReferences")
                .and_then(Value::as_array_mut)
            {
                for r in refs.iter_mut().filter_map(Value::as_object_mut) {
                    r.remove("uid");
                }
            }
        }
        s
    };
    strip(a) == strip(b)
}

fn write_canonical(value: &Value, out: &mut Sha256) {
    match value {
        Value::Object(map) => {
            write_object(map, |_, _| true, out, |_, v, out| write_canonical(v, out))
        }
        Value::Array(items) => {
            out.update(b"[");
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.update(b",");
                }
                write_canonical(item, out);
            }
            out.update(b"]");
        }
        other => {
            let _ = serde_json::to_writer(HashWriter(out), other);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trips_small_object() {
        let obj = json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {"a": "b"}});
        let enc = encode(&obj, CHUNK_SIZE).unwrap();
        assert_eq!(enc.chunks.len(), 1);
        let chunks: Vec<&[u8]> = enc.chunks.iter().map(Vec::as_slice).collect();
        assert_eq!(decode(&chunks, &enc.sha256).unwrap(), obj);
    }

    #[test]
    fn splits_and_reassembles_incompressible_payload() {
        // Pseudo-random hex does not compress below ~50%, so 3 MiB of it needs chunks.
        let mut s = String::new();
        let mut x: u64 = 0x9e3779b97f4a7c15;
        while s.len() < 3 * 1024 * 1024 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            s.push_str(&format!("{x:016x}"));
        }
        let obj = json!({"data": {"blob": s}});
        let enc = encode(&obj, CHUNK_SIZE).unwrap();
        assert!(
            enc.chunks.len() > 1,
            "expected chunks, got {}",
            enc.chunks.len()
        );
        assert!(enc.chunks.iter().all(|c| c.len() <= CHUNK_SIZE));
        let chunks: Vec<&[u8]> = enc.chunks.iter().map(Vec::as_slice).collect();
        assert_eq!(decode(&chunks, &enc.sha256).unwrap(), obj);
    }

    /// The streaming fingerprint must equal the plain definition: strip,
    /// then hash the canonical JSON.
    fn reference_fingerprint(object: &Value) -> String {
        let mut stripped = strip_volatile(object);
        let kind = object.get("kind").and_then(Value::as_str).unwrap_or("");
        if kind != "Scale"
            && let Some(spec) = stripped.get_mut("spec").and_then(Value::as_object_mut)
        {
            spec.remove("replicas");
        }
        for &(k, parent, field) in CONTROLLER_FIELDS {
            let at = if parent.is_empty() {
                stripped.as_object_mut()
            } else {
                stripped.get_mut(parent).and_then(Value::as_object_mut)
            };
            if k == kind
                && let Some(map) = at
            {
                map.remove(field);
            }
        }
        let mut hasher = Sha256::new();
        write_canonical(&stripped, &mut hasher);
        hex::encode(hasher.finalize())
    }

    #[test]
    fn streaming_fingerprint_matches_the_definition() {
        let fixtures = [
            "validate-update-configmap.json",
            "validate-create-deployment.json",
            "validate-update-deployment-scale.json",
        ];
        for f in fixtures {
            let path = format!("{}/tests/data/{f}", env!("CARGO_MANIFEST_DIR"));
            let review: Value =
                serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
            for key in ["object", "oldObject"] {
                let obj = &review["request"][key];
                if obj.is_object() {
                    assert_eq!(fingerprint(obj), reference_fingerprint(obj), "{f} {key}");
                }
            }
        }
        let odd = json!({"kind": "X", "metadata": {"annotations": {"deployment.kubernetes.io/revision": "3"},
                         "name": "a\"b", "managedFields": []}, "spec": {"replicas": 2, "x": [1, 2.5, null, "é"]},
                         "status": {"y": 1}});
        assert_eq!(fingerprint(&odd), reference_fingerprint(&odd));
        for controlled in [
            json!({"kind": "ServiceAccount", "metadata": {"name": "sa"}, "secrets": [{"name": "sa-token-x"}]}),
            json!({"kind": "PersistentVolumeClaim", "metadata": {"name": "c", "annotations": {"pv.kubernetes.io/bind-completed": "yes"}},
                   "spec": {"volumeName": "pv-1", "resources": {"requests": {"storage": "1Gi"}}}}),
            json!({"kind": "Pod", "metadata": {"name": "p"}, "spec": {"nodeName": "n1", "containers": []}}),
        ] {
            assert_eq!(
                fingerprint(&controlled),
                reference_fingerprint(&controlled),
                "{controlled}"
            );
        }
    }

    #[test]
    fn fingerprint_ignores_what_controllers_fill_in() {
        // A ServiceAccount as created, and after the token controller (before
        // Kubernetes 1.24) added its token Secret.
        let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "app"}});
        let mut with_token = sa.clone();
        with_token["secrets"] = json!([{"name": "app-token-abcde"}]);
        assert_eq!(fingerprint(&sa), fingerprint(&with_token));
        // A claim as created, and once bound.
        let pvc = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data"},
                         "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}});
        let mut bound = pvc.clone();
        bound["spec"]["volumeName"] = json!("pvc-1234");
        bound["metadata"]["annotations"] = json!({"pv.kubernetes.io/bind-completed": "yes",
            "volume.beta.kubernetes.io/storage-provisioner": "rancher.io/local-path"});
        assert_eq!(fingerprint(&pvc), fingerprint(&bound));
        // A Pod as created, and once scheduled.
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
                         "spec": {"containers": [{"name": "c", "image": "nginx"}]}});
        let mut scheduled = pod.clone();
        scheduled["spec"]["nodeName"] = json!("node-1");
        assert_eq!(fingerprint(&pod), fingerprint(&scheduled));
        // ... and with the protection controllers' finalizers (a volume too);
        // another finalizer is someone's.
        let mut protected = pvc.clone();
        protected["metadata"]["finalizers"] = json!(["kubernetes.io/pvc-protection"]);
        assert_eq!(fingerprint(&pvc), fingerprint(&protected));
        protected["metadata"]["finalizers"] =
            json!(["kubernetes.io/pvc-protection", "example.com/backup"]);
        let mut own = pvc.clone();
        own["metadata"]["finalizers"] = json!(["example.com/backup"]);
        assert_eq!(fingerprint(&own), fingerprint(&protected));
        assert_ne!(fingerprint(&own), fingerprint(&pvc));
        let pv = json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "v"},
                        "spec": {"capacity": {"storage": "1Gi"}, "hostPath": {"path": "/d"}}});
        let mut pv_protected = pv.clone();
        pv_protected["metadata"]["finalizers"] = json!(["kubernetes.io/pv-protection"]);
        assert_eq!(fingerprint(&pv), fingerprint(&pv_protected));
        // A token Secret as created from a manifest, and once the token
        // controller filled it in; other Secrets' data is their owners'.
        let token = json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/service-account-token",
            "metadata": {"name": "bot-token", "annotations": {"kubernetes.io/service-account.name": "bot"}}});
        let mut filled = token.clone();
        filled["data"] = json!({"token": "dG9r", "ca.crt": "Y2E=", "namespace": "bnM="});
        filled["metadata"]["annotations"]["kubernetes.io/service-account.uid"] = json!("u-1");
        assert_eq!(fingerprint(&token), fingerprint(&filled));
        let mut other_account = token.clone();
        other_account["metadata"]["annotations"]["kubernetes.io/service-account.name"] = json!("x");
        assert_ne!(fingerprint(&token), fingerprint(&other_account));
        let opaque = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}});
        let mut with_data = opaque.clone();
        with_data["data"] = json!({"k": "dg=="});
        assert_ne!(fingerprint(&opaque), fingerprint(&with_data));
        // The same fields on other kinds, and people's changes, still count.
        let mut cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}});
        let plain = fingerprint(&cm);
        cm["secrets"] = json!([{"name": "x"}]);
        assert_ne!(fingerprint(&cm), plain);
        let mut bigger = bound.clone();
        bigger["spec"]["resources"]["requests"]["storage"] = json!("2Gi");
        assert_ne!(fingerprint(&bigger), fingerprint(&bound));
        // An autoscaling/v1 HPA: the v2 status in annotations is the
        // controller's, the v2 spec (`metrics`, `behavior`) its owner's.
        let hpa = |ann: Value| {
            json!({"apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler",
                   "metadata": {"name": "web", "annotations": ann},
                   "spec": {"maxReplicas": 5, "scaleTargetRef": {"kind": "Deployment", "name": "web"}}})
        };
        let base = hpa(
            json!({"autoscaling.alpha.kubernetes.io/behavior": "{\"ScaleDown\":{\"StabilizationWindowSeconds\":60}}"}),
        );
        let mut with_status = base.clone();
        with_status["metadata"]["annotations"]["autoscaling.alpha.kubernetes.io/conditions"] =
            json!("[]");
        with_status["metadata"]["annotations"]["autoscaling.alpha.kubernetes.io/current-metrics"] =
            json!("[]");
        assert_eq!(fingerprint(&base), fingerprint(&with_status));
        let slower = hpa(
            json!({"autoscaling.alpha.kubernetes.io/behavior": "{\"ScaleDown\":{\"StabilizationWindowSeconds\":600}}"}),
        );
        assert_ne!(fingerprint(&base), fingerprint(&slower));
        let mut metrics = base.clone();
        metrics["metadata"]["annotations"]["autoscaling.alpha.kubernetes.io/metrics"] = json!("[]");
        assert_ne!(fingerprint(&base), fingerprint(&metrics));
        // A volume's mount options are its owner's.
        let pv = |opts: &str| {
            json!({"apiVersion": "v1", "kind": "PersistentVolume",
                   "metadata": {"name": "pv1", "annotations": {"volume.beta.kubernetes.io/mount-options": opts}},
                   "spec": {"capacity": {"storage": "1Gi"}}})
        };
        assert_ne!(fingerprint(&pv("ro")), fingerprint(&pv("rw,noatime")));
    }

    #[test]
    fn gzip_framing_is_standard() {
        let obj = json!({"data": {"k": "v".repeat(5000)}});
        let enc = encode(&obj, CHUNK_SIZE).unwrap();
        let mut out = String::new();
        GzDecoder::new(enc.chunks[0].as_slice())
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), obj);
        // Reused compressor state: a second, different payload is independent.
        let other = json!({"data": {"z": "w"}});
        let enc2 = encode(&other, CHUNK_SIZE).unwrap();
        let chunks: Vec<&[u8]> = enc2.chunks.iter().map(Vec::as_slice).collect();
        assert_eq!(decode(&chunks, &enc2.sha256).unwrap(), other);
    }

    #[test]
    fn floats_round_trip_exactly() {
        // Found by the snapshot_payload fuzz target: without exact float
        // parsing, a large number came back slightly different.
        let obj: Value =
            serde_json::from_str(r#"{"spec": {"x": 3845599999438954550533899, "y": 0.1}}"#)
                .unwrap();
        let enc = encode(&obj, CHUNK_SIZE).unwrap();
        let chunks: Vec<&[u8]> = enc.chunks.iter().map(Vec::as_slice).collect();
        assert_eq!(decode(&chunks, &enc.sha256).unwrap(), obj);
    }

    #[test]
    fn tampered_payload_is_refused() {
        let obj = json!({"data": {"a": "b"}});
        let mut enc = encode(&obj, CHUNK_SIZE).unwrap();
        let last = enc.chunks[0].len() - 1;
        enc.chunks[0][last] ^= 0xff;
        let chunks: Vec<&[u8]> = enc.chunks.iter().map(Vec::as_slice).collect();
        assert!(matches!(
            decode(&chunks, &enc.sha256),
            Err(CodecError::Checksum { .. })
        ));
    }

    #[test]
    fn corrupt_gzip_with_matching_checksum_is_an_error_not_a_panic() {
        let garbage = b"not gzip at all".to_vec();
        let sha = sha256_hex(&garbage);
        assert!(matches!(
            decode(&[garbage.as_slice()], &sha),
            Err(CodecError::Gzip(_))
        ));
    }

    #[test]
    fn fingerprint_ignores_volatile_fields_and_key_order() {
        let a = json!({"metadata": {"name": "x", "resourceVersion": "1", "generation": 1,
                        "managedFields": [{"manager": "kubectl"}]},
                       "spec": {"a": 1, "b": 2}, "status": {"ready": true}});
        let b = json!({"spec": {"b": 2, "a": 1},
                       "metadata": {"resourceVersion": "9", "name": "x", "generation": 4}});
        assert_eq!(fingerprint(&a), fingerprint(&b));
        let c = json!({"metadata": {"name": "x"}, "spec": {"a": 1, "b": 3}});
        assert_ne!(fingerprint(&a), fingerprint(&c));
    }

    #[test]
    fn fingerprint_ignores_replicas_and_controller_annotations_except_on_scale() {
        let dep = |r: u32, ann: Value| {
            json!({"kind": "Deployment", "metadata": {"name": "w", "annotations": ann},
                   "spec": {"replicas": r, "template": {}}})
        };
        assert_eq!(
            fingerprint(&dep(1, json!({}))),
            fingerprint(&dep(3, json!({"deployment.kubernetes.io/revision": "2"})))
        );
        assert_ne!(
            fingerprint(&dep(1, json!({}))),
            fingerprint(&dep(1, json!({"team": "a"})))
        );
        let scale =
            |r: u32| json!({"kind": "Scale", "metadata": {"name": "w"}, "spec": {"replicas": r}});
        assert_ne!(fingerprint(&scale(1)), fingerprint(&scale(3)));
    }

    #[test]
    fn fingerprint_ignores_what_the_api_server_defaults_only_on_reading_back() {
        // A Pod as the validating webhook sees its CREATE (the token volume
        // injected after defaulting) and as it is read back afterwards.
        let pod = |mode: Option<u32>, image: &str| {
            let mut secret = json!({"secretName": "default-token-abcde"});
            if let Some(m) = mode {
                secret["defaultMode"] = json!(m);
            }
            json!({"kind": "Pod", "metadata": {"name": "p1"},
                   "spec": {"containers": [{"name": "c", "image": image}],
                            "volumes": [{"name": "default-token-abcde", "secret": secret}]}})
        };
        assert_eq!(
            fingerprint(&pod(None, "busybox")),
            fingerprint(&pod(Some(420), "busybox"))
        );
        assert_ne!(
            fingerprint(&pod(Some(420), "busybox")),
            fingerprint(&pod(Some(420), "busybox:1.36"))
        );
        // A Job created without labels, and as read back: labelled from its
        // template, uid labels included.
        let job = |labels: Value| {
            json!({"kind": "Job", "metadata": {"name": "j1", "labels": labels},
                   "spec": {"template": {"metadata": {"labels": {"controller-uid": "u1", "job-name": "j1"}}}}})
        };
        let mut seen = job(json!({}));
        seen["metadata"].as_object_mut().unwrap().remove("labels");
        let read_back = job(json!({"controller-uid": "u1", "job-name": "j1"}));
        assert_eq!(fingerprint(&seen), fingerprint(&read_back));
        let relabelled = job(json!({"controller-uid": "u1", "job-name": "j1", "team": "a"}));
        assert_ne!(fingerprint(&read_back), fingerprint(&relabelled));
        // An autoscaler's metrics in another order: the same.
        let hpa = |metrics: Value| {
            json!({"kind": "HorizontalPodAutoscaler", "apiVersion": "autoscaling/v2beta2",
                   "metadata": {"name": "h"}, "spec": {"maxReplicas": 10, "metrics": metrics}})
        };
        let cpu = json!({"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 60}}});
        let mem = json!({"type": "Resource", "resource": {"name": "memory", "target": {"type": "AverageValue", "averageValue": "500Mi"}}});
        assert_eq!(
            fingerprint(&hpa(json!([cpu.clone(), mem.clone()]))),
            fingerprint(&hpa(json!([mem.clone(), cpu.clone()])))
        );
        assert_ne!(
            fingerprint(&hpa(json!([cpu.clone(), mem]))),
            fingerprint(&hpa(json!([cpu])))
        );
        // Other kinds keep those fields.
        let cm = |labels: Value| json!({"kind": "ConfigMap", "metadata": {"name": "c", "labels": labels}});
        assert_ne!(
            fingerprint(&cm(json!({}))),
            fingerprint(&cm(json!({"job-name": "j1"})))
        );
    }

    #[test]
    fn same_content_ignores_identity_but_not_replicas() {
        let a = json!({"metadata": {"name": "w", "uid": "1", "creationTimestamp": "t1",
                        "ownerReferences": [{"kind": "X", "name": "o", "uid": "old"}]},
                       "spec": {"replicas": 1}});
        let b = json!({"metadata": {"name": "w", "uid": "2", "creationTimestamp": "t2",
                        "ownerReferences": [{"kind": "X", "name": "o", "uid": "new"}]},
                       "spec": {"replicas": 1}, "status": {"x": 1}});
        assert!(same_content(&a, &b));
        let mut c = b.clone();
        c["spec"]["replicas"] = json!(2);
        assert!(!same_content(&a, &c));
    }

    #[test]
    fn same_content_ignores_what_controllers_fill_in() {
        // A ServiceAccount created again: the token controller gives it a
        // new token; its image pull secrets are still the user's.
        let sa = |token: &str, pull: &str| {
            json!({"kind": "ServiceAccount", "metadata": {"name": "default"},
                   "secrets": [{"name": token}], "imagePullSecrets": [{"name": pull}]})
        };
        assert!(same_content(
            &sa("default-token-old", "registry"),
            &sa("default-token-new", "registry")
        ));
        assert!(!same_content(
            &sa("default-token-old", "registry"),
            &sa("default-token-old", "other")
        ));
        let pvc = |volume: &str, size: &str| {
            json!({"kind": "PersistentVolumeClaim", "metadata": {"name": "data"},
                   "spec": {"volumeName": volume, "resources": {"requests": {"storage": size}}}})
        };
        assert!(same_content(&pvc("pv-1", "1Gi"), &pvc("pv-2", "1Gi")));
        assert!(!same_content(&pvc("pv-1", "1Gi"), &pvc("pv-1", "2Gi")));
    }
}
