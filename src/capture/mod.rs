//! Capture: the admission webhooks. The mutating webhook reads and strips the
//! action annotation; the validating webhook (which sees the final object)
//! decides whether to capture, attributes the change to an action and stores
//! the prior state.

pub mod attribution;
pub mod cascade;
pub mod crd;
pub mod decide;
pub mod handler;
pub mod journaled;
pub mod open_actions;
pub mod pending;
pub mod review;
pub mod scale;
pub mod stated_guard;

use std::sync::Arc;
use std::time::{Duration, Instant};

use json_patch::jsonptr::PointerBuf;
use json_patch::{Patch, PatchOperation, RemoveOperation, ReplaceOperation};
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionResponse, AdmissionReview, Operation as AdmissionOp};
use serde_json::Value;

use crate::capture::attribution::{Attribution, HintKey, Origin};
use crate::capture::cascade::NamespaceDeletions;
use crate::capture::decide::{Decision, Skip, classify, classify_cascade};
use crate::capture::pending::PendingWrites;
use crate::capture::review::Review;
use crate::config::{CaptureConfig, CaptureFailure};
use crate::metrics::Metrics;
use crate::store::actions::ActionRecord;
use crate::store::codec;
use crate::store::model::{
    ACTION_ANNOTATION, ActionId, LAST_APPLIED_ANNOTATION, ObjectRef, Operation, SnapshotMeta,
};
use crate::store::{NewSnapshot, SnapshotSink, StoreError};

/// Leave the API server's webhook timeout (10s by default) room to deliver
/// our own, clearer denial.
const STORE_TIMEOUT: Duration = Duration::from_secs(8);

/// How long a dependent's deletion by the garbage collector waits for the
/// writes of its owner's action this process still has queued or journaled.
const CASCADE_SETTLE: Duration = Duration::from_secs(5);

/// A queued snapshot write (`--capture-ack=queued`) has this long; nobody
/// waits on it but readers settling the action.
const QUEUED_STORE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Codec(#[from] codec::CodecError),
    #[error("the request carries no {0} to snapshot")]
    MissingObject(&'static str),
    #[error("{0}")]
    Action(#[from] crate::store::model::InvalidActionId),
    #[error("timed out after {0:?} writing the snapshot")]
    Timeout(Duration),
    #[error("encoding task failed: {0}")]
    Join(String),
    #[error("reading what the deletion deletes with it: {0}")]
    Contents(String),
    /// A controller's delete of what a captured change deleted with it (a
    /// namespace's contents, an owner's dependents) could not be told apart
    /// from any other of its deletes.
    #[error("cannot tell whether a captured change deleted this object's {0}")]
    Cascade(String),
}

impl CaptureError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            CaptureError::Store(e) => e.metric_label(),
            CaptureError::Codec(_) => "encode",
            CaptureError::MissingObject(_) => "missing_object",
            CaptureError::Action(_) => "invalid_action",
            CaptureError::Timeout(_) => "timeout",
            CaptureError::Join(_) => "internal",
            CaptureError::Contents(_) => "contents",
            CaptureError::Cascade(_) => "cascade",
        }
    }
}

/// The capture side of snapback, shared by the webhook handlers.
pub struct CaptureService {
    cfg: CaptureConfig,
    sink: Arc<dyn SnapshotSink>,
    attribution: Arc<Attribution>,
    metrics: Metrics,
    /// Set with `--capture-ack=queued` or `journaled`: answer once the
    /// snapshot is queued (or journaled).
    pending: Option<Arc<PendingWrites>>,
    /// Set with `--capture-ack=journaled`.
    journal: Option<Arc<crate::store::journal::Journal>>,
    /// Namespaces being emptied after a captured change deleted them.
    namespace_deletions: NamespaceDeletions,
    owner_deletions: cascade::OwnerDeletions,
    /// Reads a deleted CRD's custom resources (as the deleting user).
    crd_reader: Option<CrdReader>,
}

/// Builds clients acting as a given user, to read what a CRD's deletion
/// is about to delete.
pub struct CrdReader {
    base: kube::Config,
    impersonate: bool,
    /// snapback's own client, made once.
    own: std::sync::OnceLock<kube::Client>,
    /// Definitions' replicas fields, for custom resources' Scale changes.
    replica_paths: scale::ReplicaPaths,
}

impl CrdReader {
    /// `impersonate` false (`--auth=none`): snapback reads with its own
    /// identity.
    pub fn new(base: kube::Config, impersonate: bool) -> Self {
        CrdReader {
            base,
            impersonate,
            own: std::sync::OnceLock::new(),
            replica_paths: scale::ReplicaPaths::default(),
        }
    }

    fn client_as(&self, user: &str, groups: &[String]) -> Result<kube::Client, CaptureError> {
        let mut cfg = self.base.clone();
        if self.impersonate {
            cfg.auth_info.impersonate = Some(user.to_string());
            cfg.auth_info.impersonate_groups = Some(groups.to_vec()).filter(|g| !g.is_empty());
        }
        kube::Client::try_from(cfg).map_err(|e| CaptureError::Contents(e.to_string()))
    }

    /// snapback's own identity.
    fn own_client(&self) -> Result<kube::Client, CaptureError> {
        if let Some(c) = self.own.get() {
            return Ok(c.clone());
        }
        let c = kube::Client::try_from(self.base.clone())
            .map_err(|e| CaptureError::Contents(e.to_string()))?;
        Ok(self.own.get_or_init(|| c).clone())
    }
}

/// An answer to an AdmissionReview: a review to send with 200, or a bare 400
/// when the body had no request uid to answer to.
#[derive(Debug)]
pub enum Answer {
    Review(Box<AdmissionReview<DynamicObject>>),
    BadRequest(String),
}

impl Answer {
    fn from_response(resp: AdmissionResponse) -> Self {
        Answer::Review(Box::new(resp.into_review()))
    }

    pub fn allowed(&self) -> bool {
        match self {
            Answer::Review(r) => r.response.as_ref().is_some_and(|r| r.allowed),
            Answer::BadRequest(_) => false,
        }
    }
}

fn invalid(err: impl ToString, uid: Option<String>) -> Answer {
    match uid {
        Some(uid) => {
            let mut resp = AdmissionResponse::invalid(err.to_string());
            resp.uid = uid;
            Answer::from_response(resp)
        }
        None => Answer::BadRequest(err.to_string()),
    }
}

/// The last-applied manifest without the action annotation (and without an
/// `annotations` map left empty by that), as kubectl writes it: compact
/// JSON, its trailing newline kept. None when there is nothing to take out
/// or the annotation is not a JSON object.
fn without_action_annotation(last_applied: &str) -> Option<String> {
    let mut manifest: Value = serde_json::from_str(last_applied).ok()?;
    let metadata = manifest.get_mut("metadata")?.as_object_mut()?;
    let annotations = metadata.get_mut("annotations")?.as_object_mut()?;
    annotations.remove(ACTION_ANNOTATION)?;
    if annotations.is_empty() {
        metadata.remove("annotations");
    }
    let mut out = serde_json::to_string(&manifest).ok()?;
    if last_applied.ends_with('\n') {
        out.push('\n');
    }
    Some(out)
}

fn op_label(op: &AdmissionOp) -> &'static str {
    match op {
        AdmissionOp::Create => "create",
        AdmissionOp::Update => "update",
        AdmissionOp::Delete => "delete",
        AdmissionOp::Connect => "connect",
    }
}

impl CaptureService {
    pub fn new(
        cfg: CaptureConfig,
        sink: Arc<dyn SnapshotSink>,
        attribution: Arc<Attribution>,
        metrics: Metrics,
    ) -> Self {
        CaptureService {
            cfg,
            sink,
            attribution,
            metrics,
            pending: None,
            journal: None,
            namespace_deletions: NamespaceDeletions::default(),
            owner_deletions: cascade::OwnerDeletions::default(),
            crd_reader: None,
        }
    }

    /// Capture the custom resources a captured CRD deletion deletes.
    pub fn with_crd_reader(mut self, reader: CrdReader) -> Self {
        self.crd_reader = Some(reader);
        self
    }

    /// Answer for a captured change once its snapshot is queued, not
    /// written (`--capture-ack=queued`; fail-open only). Readers of an
    /// action settle `pending` first.
    pub fn with_queued_ack(mut self, pending: Arc<PendingWrites>) -> Self {
        self.pending = Some(pending);
        self
    }

    /// Answer for a captured change once its snapshot is in the local
    /// journal (`--capture-ack=journaled`); the write to the API server
    /// follows, retried until it succeeds. Readers of an action settle
    /// `pending` first, as with `queued`.
    pub fn with_journal(
        mut self,
        journal: Arc<crate::store::journal::Journal>,
        pending: Arc<PendingWrites>,
    ) -> Self {
        self.journal = Some(journal);
        self.pending = Some(pending);
        self
    }

    /// A deletion replayed from the journal at start: the garbage
    /// collector's deletes of its dependents join its action, as they would
    /// have in the process that admitted it.
    pub fn note_replayed_deletion(&self, meta: &SnapshotMeta) {
        if meta.operation == Operation::Delete
            && let Some(uid) = &meta.uid
        {
            self.owner_deletions.note(uid, &meta.action);
        }
    }

    pub fn attribution(&self) -> &Arc<Attribution> {
        &self.attribution
    }

    fn record(&self, webhook: &str, op: &str, outcome: &str, started: Instant) {
        self.metrics
            .admission_requests
            .with_label_values(&[webhook, op, outcome])
            .inc();
        self.metrics
            .admission_duration
            .with_label_values(&[webhook])
            .observe(started.elapsed().as_secs_f64());
    }

    /// Mutating webhook: validate and strip the action annotation, and hand
    /// the action over to the validating call of the same request.
    pub fn mutate(&self, body: &[u8]) -> Answer {
        let started = Instant::now();
        let review = match Review::from_slice(body) {
            Ok(r) => r,
            Err((e, uid)) => {
                self.record("mutate", "unknown", "invalid", started);
                return invalid(e, uid);
            }
        };
        let op = op_label(&review.request.operation);
        let resp = AdmissionResponse::from(&review.request);
        let annotation = review.object.as_ref().and_then(|o| {
            o.get("metadata")?
                .get("annotations")?
                .get(ACTION_ANNOTATION)
        });
        let Some(annotation) = annotation else {
            self.record("mutate", op, "allowed", started);
            return Answer::from_response(resp);
        };
        let action = match annotation.as_str().map(ActionId::parse_chosen) {
            Some(Ok(a)) => a,
            Some(Err(e)) => {
                self.record("mutate", op, "denied", started);
                return Answer::from_response(
                    resp.deny(format!("snapback: annotation {ACTION_ANNOTATION}: {e}")),
                );
            }
            None => {
                self.record("mutate", op, "denied", started);
                return Answer::from_response(resp.deny(format!(
                    "snapback: annotation {ACTION_ANNOTATION} must be a string"
                )));
            }
        };
        if !review.request.dry_run {
            tracing::debug!(%action, name = %review.object_name(), op, "action annotation handed over");
            let content = attribution::content_digest(review.object.as_ref());
            for key in hint_keys(&review, true) {
                self.attribution.leave_hint(key, action.clone(), content);
            }
        }
        let path = PointerBuf::from_tokens(["metadata", "annotations", ACTION_ANNOTATION]);
        let mut ops = vec![PatchOperation::Remove(RemoveOperation { path })];
        // `kubectl apply` also keeps the manifest, annotation included, in
        // its last-applied annotation: take it out there too, so that the
        // action's name persists nowhere on the object.
        if let Some(stripped) = review
            .object
            .as_ref()
            .and_then(|o| {
                o.get("metadata")?
                    .get("annotations")?
                    .get(LAST_APPLIED_ANNOTATION)?
                    .as_str()
            })
            .and_then(without_action_annotation)
        {
            ops.push(PatchOperation::Replace(ReplaceOperation {
                path: PointerBuf::from_tokens(["metadata", "annotations", LAST_APPLIED_ANNOTATION]),
                value: Value::String(stripped),
            }));
        }
        let patch = Patch(ops);
        match resp.clone().with_patch(patch) {
            Ok(r) => {
                self.record("mutate", op, "patched", started);
                Answer::from_response(r)
            }
            Err(e) => {
                self.record("mutate", op, "error", started);
                Answer::from_response(resp.deny(format!("snapback: building patch: {e}")))
            }
        }
    }

    /// Validating webhook: capture the prior state of the change.
    #[tracing::instrument(skip_all, fields(request_uid, kind, operation, action, outcome))]
    pub async fn validate(&self, body: &[u8]) -> Answer {
        let started = Instant::now();
        let mut review = match Review::from_slice(body) {
            Ok(r) => r,
            Err((e, uid)) => {
                self.record("validate", "unknown", "invalid", started);
                tracing::warn!(error = %e, "malformed AdmissionReview");
                return invalid(e, uid);
            }
        };
        let span = tracing::Span::current();
        span.record("request_uid", review.request.uid.as_str());
        span.record("kind", review.request.kind.kind.as_str());
        let op = op_label(&review.request.operation);
        span.record("operation", op);
        let resp = AdmissionResponse::from(&review.request);
        let mut decision = classify(&review, &self.cfg);
        // The namespace controller emptying a namespace a captured change
        // deleted: its deletes belong to that change's action.
        let mut cascade = None;
        if decision == Decision::Skip(Skip::ExcludedUser) {
            match self.cascade_action(&review).await {
                Ok(Some(action)) => {
                    decision = classify_cascade(&review, &self.cfg);
                    cascade = Some(action);
                }
                Ok(None) => {}
                // The controller retries a denied delete: in deny mode none
                // of a captured deletion's cascade goes by unrecorded.
                Err(e) => return self.not_recorded(resp, op, started, &span, e),
            }
        }
        // A DELETE of an object already being deleted changes nothing the
        // first one did not: the API server admits some deletes twice in
        // one request (a graceful deletion's update, then the deletion: a
        // Pod, a Namespace), and a repeated `kubectl delete` of an object
        // held by finalizers is the same. The first was captured.
        if review.request.operation == AdmissionOp::Delete
            && matches!(decision, Decision::Capture { .. })
            && review
                .old_object
                .as_ref()
                .is_some_and(|o| cascade::already_being_deleted(o.get()))
        {
            decision = Decision::Skip(Skip::AlreadyDeleting);
        }
        let (operation, secret) = match decision {
            Decision::Skip(reason) => {
                self.metrics
                    .captures_skipped
                    .with_label_values(&[reason.as_str()])
                    .inc();
                self.record("validate", op, "skipped", started);
                span.record("outcome", "skipped");
                return Answer::from_response(resp);
            }
            Decision::Capture { operation, secret } => (operation, secret),
        };
        match self
            .capture(&mut review, operation, secret, body.len(), cascade)
            .await
        {
            Ok(action) => {
                span.record("action", action.as_str());
                span.record("outcome", "captured");
                self.record("validate", op, "captured", started);
                Answer::from_response(resp)
            }
            Err(e) => self.not_recorded(resp, op, started, &span, e),
        }
    }

    /// A change whose prior state could not be recorded: denied, or with
    /// `--capture-failure=allow` admitted, counted and warned about.
    fn not_recorded(
        &self,
        resp: AdmissionResponse,
        op: &'static str,
        started: Instant,
        span: &tracing::Span,
        e: CaptureError,
    ) -> Answer {
        count_failed(&self.metrics, &e);
        match self.cfg.capture_failure {
            CaptureFailure::Deny => {
                span.record("outcome", "denied");
                tracing::warn!(error = %e, "denying change: snapshot not stored");
                self.record("validate", op, "denied", started);
                Answer::from_response(
                    resp.deny(format!("snapback could not record the prior state: {e}")),
                )
            }
            CaptureFailure::Allow => {
                span.record("outcome", "uncaptured");
                tracing::error!(error = %e, "admitting change without snapshot (--capture-failure=allow)");
                self.metrics.uncaptured_admitted.inc();
                self.record("validate", op, "uncaptured", started);
                let mut resp = resp;
                resp.warnings = Some(vec![format!(
                    "snapback could not record the prior state: {e}"
                )]);
                Answer::from_response(resp)
            }
        }
    }

    /// The action deleting the namespace of the object the namespace
    /// controller deletes, if a captured change deleted that namespace.
    async fn cascade_action(&self, review: &Review) -> Result<Option<ActionId>, CaptureError> {
        if let Some(gc) = cascade::gc_candidate(review, &self.cfg) {
            let owner_error = |e: StoreError| CaptureError::Cascade(format!("owner: {e}"));
            let found = match self
                .owner_deletions
                .action_for(&gc.owners, &*self.sink)
                .await
                .map_err(owner_error)?
            {
                // Only into an action that still exists (it may have been
                // deleted since its change): never a record made for it.
                // The owner's deletion may have been admitted before its
                // snapshot and record were written (`queued`, `journaled`):
                // those writes first.
                Some(action) => {
                    if let Some(p) = &self.pending {
                        p.settle(Some(action.as_str()), CASCADE_SETTLE).await;
                    }
                    self.sink
                        .action_exists(&action)
                        .await
                        .map_err(owner_error)?
                        .then_some(action)
                }
                None => None,
            };
            if let Some(action) = found {
                if gc.capture {
                    return Ok(Some(action));
                }
                // Its controller makes it again; what it owned without a
                // controller is this action's, when the collector gets to it.
                if let Some(uid) = &review.old_identity.uid {
                    self.owner_deletions.note(uid, &action);
                }
                return Ok(None);
            }
        }
        let Some(namespace) = cascade::candidate(review, &self.cfg) else {
            return Ok(None);
        };
        self.namespace_deletions
            .action_for(&namespace, &*self.sink)
            .await
            .map_err(|e| CaptureError::Cascade(format!("namespace {namespace}: {e}")))
    }

    /// Capture the change; takes the prior object out of `review`. `cascade`:
    /// the action it belongs to, already known.
    /// A Node's prior state. The API server (1.20 at least) sends a Node
    /// PATCH's `oldObject` with the patch already applied (`kubectl cordon`,
    /// `taint`, `label`: the prior state would be the changed one); when
    /// `oldObject` has the same content as the object, the Node is read as
    /// it was at `oldObject`'s resourceVersion. If that cannot be read (the
    /// history compacted), `oldObject` it is: no worse than before.
    async fn node_prior(
        &self,
        old: Box<serde_json::value::RawValue>,
        after: Option<&Value>,
        review: &Review,
    ) -> Box<serde_json::value::RawValue> {
        let (Some(after), Some(rv)) = (after, review.old_identity.resource_version.as_deref())
        else {
            return old;
        };
        let Ok(parsed) = serde_json::from_str::<Value>(old.get()) else {
            return old;
        };
        if codec::fingerprint(&parsed) != codec::fingerprint(after) {
            return old;
        }
        let name = review.object_name();
        let read = tokio::time::timeout(Duration::from_secs(2), self.sink.node_at(&name, rv)).await;
        match read {
            Ok(Ok(Some(node))) => serde_json::value::to_raw_value(&node).unwrap_or(old),
            Ok(Ok(None)) => old,
            Ok(Err(e)) => {
                tracing::warn!(node = %name, error = %e, "reading the Node's prior state; keeping oldObject");
                old
            }
            Err(_) => {
                tracing::warn!(node = %name, "reading the Node's prior state timed out; keeping oldObject");
                old
            }
        }
    }

    async fn capture(
        &self,
        review: &mut Review,
        operation: Operation,
        secret: bool,
        body_len: usize,
        cascade: Option<ActionId>,
    ) -> Result<ActionId, CaptureError> {
        let now = jiff::Timestamp::now();
        let keys = hint_keys(review, false);
        let (name, namespace) = (review.object_name(), review.object_namespace());
        let prior = match operation {
            Operation::Create => None,
            _ => Some(
                review
                    .old_object
                    .take()
                    .ok_or(CaptureError::MissingObject("oldObject"))?,
            ),
        };
        let review: &Review = review;
        let user = review.username();
        let (action, origin) = match cascade {
            // Its record exists: the namespace's deletion created it.
            Some(action) => (action, Origin::Session),
            None => self.attribution.attribute_content(
                user,
                review.user_extra(ACTION_ANNOTATION),
                &keys,
                &|| attribution::content_digest(review.object.as_ref()),
                now,
            )?,
        };
        let after = match operation {
            Operation::Delete => None,
            _ => Some(
                review
                    .object
                    .as_ref()
                    .ok_or(CaptureError::MissingObject("object"))?,
            ),
        };
        let prior = match prior {
            Some(p)
                if operation == Operation::Update
                    && review.request.resource.group.is_empty()
                    && review.request.resource.resource == "nodes"
                    && review.request.sub_resource.is_none() =>
            {
                Some(self.node_prior(p, after, review).await)
            }
            p => p,
        };
        // A custom resource's Scale: where its replicas are, and for a
        // Scale of 0 whether they were set at all.
        let reading = Instant::now();
        let replicas_field = match (&prior, &self.crd_reader) {
            (Some(p), Some(reader))
                if operation == Operation::Update && scale::of_custom_resource(review) =>
            {
                let groups = review.request.user_info.groups.as_deref().unwrap_or(&[]);
                match (reader.own_client(), reader.client_as(user, groups)) {
                    (Ok(own), Ok(as_user)) => {
                        scale::replicas_field(
                            &own,
                            &reader.replica_paths,
                            &as_user,
                            review,
                            scale::starts_from_zero(p),
                        )
                        .await
                    }
                    _ => None,
                }
            }
            _ => None,
        };
        // What those reads took comes out of the write's time.
        let store_timeout = STORE_TIMEOUT.saturating_sub(reading.elapsed());
        let uid_of = |o: &Value| o.get("metadata")?.get("uid")?.as_str().map(str::to_string);
        let req = &review.request;
        let meta = SnapshotMeta {
            snapshot_name: SnapshotMeta::object_name(now, &req.uid),
            action: action.clone(),
            operation,
            object: ObjectRef {
                group: req.resource.group.clone(),
                version: req.resource.version.clone(),
                resource: req.resource.resource.clone(),
                subresource: req.sub_resource.clone(),
                kind: req.kind.kind.clone(),
                namespace,
                name,
            },
            user: user.to_string(),
            timestamp: now,
            request_uid: req.uid.clone(),
            resource_version: prior
                .is_some()
                .then(|| review.old_identity.resource_version.clone())
                .flatten(),
            uid: match prior {
                Some(_) => review.old_identity.uid.clone(),
                None => after.and_then(uid_of),
            },
            payload_sha256: None,
            after_fingerprint: after.map(codec::fingerprint),
            // Computed from the stored prior object when a rollback plans.
            before_fingerprint: None,
            // What the rollback compares the current replicas with: a
            // scale since the action (an autoscaler) is kept.
            after_replicas: after
                .filter(|_| matches!(req.sub_resource.as_deref(), None | Some("scale")))
                .and_then(|o| o.get("spec")?.get("replicas"))
                .filter(|r| r.is_u64())
                .map(|r| r.to_string()),
            replicas_unset: replicas_field.as_ref().and_then(|f| f.unset),
            replicas_path: replicas_field.map(|f| f.pointer),
            chunks: 0,
            secret,
            guard: stated_guard::stated_guard(
                operation,
                after,
                prior.as_deref(),
                req.options.as_ref().map(|o| &o.0),
                now,
            )
            // Only a guard the guard loop accepts (above 0, at most 168h).
            .filter(|g| {
                crate::guard::GuardSpec {
                    timeout: g.to_string(),
                    on_failure: crate::guard::OnFailure::Rollback,
                }
                .validate()
                .is_ok()
            })
            .map(str::to_string),
            batch: None,
        };
        tracing::debug!(
            name = %meta.object.name,
            namespace = meta.object.namespace.as_deref().unwrap_or(""),
            resource = %meta.object.resource,
            "capturing"
        );
        let mut record = ActionRecord::new(action.clone(), origin.as_str(), user, now);
        record.owner_groups = req.user_info.groups.clone().unwrap_or_default();
        // A CRD's deletion takes its custom resources with it, past
        // admission: they are read and stored now, in the same action.
        let deleted_crd = match (&self.crd_reader, operation, &prior) {
            (Some(reader), Operation::Delete, Some(old))
                if req.resource.group == "apiextensions.k8s.io"
                    && req.resource.resource == "customresourcedefinitions"
                    && req.sub_resource.is_none() =>
            {
                let definition = serde_json::from_str::<Value>(old.get())
                    .ok()
                    .as_ref()
                    .and_then(crd::Definition::of);
                match definition {
                    Some(d) => Some((
                        reader.client_as(user, req.user_info.groups.as_deref().unwrap_or(&[]))?,
                        d,
                    )),
                    None => None,
                }
            }
            _ => None,
        };
        // A namespace's deletion is noted in its action's record before it
        // is admitted: the namespace controller's deletes of its contents,
        // on whichever replica, are captured into this action.
        // (Not a namespace already being deleted: deleting it again changes
        // nothing, and its noted deletion is the first.)
        let notes_namespace = cascade::deletes_namespace(review)
            && !self.cfg.namespace_controller_users.is_empty()
            && !review
                .old_object
                .as_ref()
                .or(prior.as_ref())
                .is_some_and(|o| cascade::already_being_deleted(o.get()));
        let deleted_namespace = notes_namespace.then(|| {
            (
                meta.object.name.clone(),
                crate::store::actions::DeletedNamespace {
                    uid: review.old_identity.uid.clone().unwrap_or_default(),
                    at: now,
                },
            )
        });
        // The garbage collector's deletes of its dependents join this action.
        if operation == Operation::Delete
            && let Some(uid) = &meta.uid
        {
            self.owner_deletions.note(uid, &action);
        }
        let deletes_crd = deleted_crd.is_some();
        let contents_of = deleted_crd
            .is_some()
            .then(|| (meta.request_uid.clone(), meta.user.clone()));
        let mut snapshot = NewSnapshot { meta, prior };
        // Journaled: admitted once the snapshot is on local disk. Not a
        // Secret (its data never goes to disk in the clear), nor a change
        // whose action must be marked before it is admitted.
        if let (Some(journal), Some(pending)) = (&self.journal, &self.pending)
            && !snapshot.meta.secret
            && !notes_namespace
            && !deletes_crd
            && let Some(ticket) = pending.begin(action.as_str(), body_len)
        {
            let entry = crate::store::journal::encode(&record, &snapshot)
                .map_err(|e| CaptureError::Codec(codec::CodecError::Serialize(e)))?;
            let write = journaled::JournaledWrite {
                sink: self.sink.clone(),
                metrics: self.metrics.clone(),
                journal: journal.clone(),
                record,
                snapshot,
            };
            match write.journal(entry, ticket).await {
                journaled::Appending::Journaled => return Ok(action),
                journaled::Appending::Lost => {
                    return Err(CaptureError::Join("the journaling task stopped".into()));
                }
                journaled::Appending::Refused(e, write) => {
                    // Written before answering instead, as with `written`.
                    self.metrics
                        .snapshot_failures
                        .with_label_values(&["journal"])
                        .inc();
                    tracing::warn!(error = %e, journal = %journal.dir().display(),
                        "could not append to the capture journal; writing the snapshot before answering");
                    record = write.record;
                    snapshot = write.snapshot;
                }
            }
        }
        let sink = self.sink.clone();
        let marked = action.clone();
        // Only a definition's deletion counts inside the write (cloning the
        // metrics' two dozen handles for every review showed in profiles).
        let metrics = deleted_crd.as_ref().map(|_| self.metrics.clone());
        let write = async move {
            sink.ensure_action(&record).await?;
            let bytes = sink.put_snapshot(snapshot).await?;
            if let Some((name, deleted)) = &deleted_namespace {
                sink.mark_namespace_deletion(&marked, name, deleted).await?;
            }
            if let (Some((client, definition)), Some((request_uid, user)), Some(metrics)) =
                (deleted_crd, contents_of, metrics)
            {
                let resources = crd::list_all(&client, &definition).await.map_err(|e| {
                    CaptureError::Contents(format!(
                        "listing {}.{}: {}",
                        definition.plural,
                        definition.group,
                        crate::store::describe_kube_error(&e)
                    ))
                })?;
                let puts = resources.into_iter().enumerate().map(|(i, object)| {
                    let sink = sink.clone();
                    let snapshot = contents_snapshot(
                        &definition,
                        &marked,
                        &request_uid,
                        &user,
                        now,
                        i,
                        object,
                    );
                    async move {
                        sink.put_snapshot(snapshot?)
                            .await
                            .map_err(CaptureError::from)
                    }
                });
                for stored in futures::future::join_all(puts).await {
                    count_stored(&metrics, Operation::Delete, stored?);
                }
            }
            Ok::<u64, CaptureError>(bytes)
        };
        let queued = self.pending.as_ref().filter(|_| {
            self.journal.is_none() &&
            // Only fail-open may admit before the write (config check), and
            // a namespace's contents must not be deleted before its
            // deletion is noted.
            self.cfg.capture_failure == CaptureFailure::Allow && !notes_namespace && !deletes_crd
        });
        if let Some(ticket) = queued.and_then(|p| p.begin(action.as_str(), body_len)) {
            let metrics = self.metrics.clone();
            let request_uid = req.uid.clone();
            tokio::spawn(async move {
                let result = tokio::time::timeout(QUEUED_STORE_TIMEOUT, write)
                    .await
                    .map_err(|_| CaptureError::Timeout(QUEUED_STORE_TIMEOUT))
                    .and_then(|r| r);
                match result {
                    Ok(bytes) => count_stored(&metrics, operation, bytes),
                    Err(e) => {
                        count_failed(&metrics, &e);
                        metrics.uncaptured_admitted.inc();
                        tracing::error!(error = %e, %request_uid,
                            "queued snapshot not written: the change was admitted without one (--capture-ack=queued)");
                    }
                }
                drop(ticket);
            });
            return Ok(action);
        }
        let bytes = tokio::time::timeout(store_timeout, write)
            .await
            .map_err(|_| CaptureError::Timeout(store_timeout))??;
        count_stored(&self.metrics, operation, bytes);
        Ok(action)
    }
}

/// A custom resource the deletion of its CRD deletes, as a DELETE snapshot
/// of the same action (request uid `<the CRD's>/<n>`).
fn contents_snapshot(
    definition: &crd::Definition,
    action: &ActionId,
    request_uid: &str,
    user: &str,
    now: jiff::Timestamp,
    n: usize,
    object: Value,
) -> Result<NewSnapshot, CaptureError> {
    let identity = review::Identity::of_value(&object);
    let request_uid = format!("{request_uid}/{n}");
    let object_ref = ObjectRef {
        group: definition.group.clone(),
        version: definition.version.clone(),
        resource: definition.plural.clone(),
        subresource: None,
        kind: definition.kind.clone(),
        namespace: identity.namespace.clone(),
        name: identity.name.clone().unwrap_or_default(),
    };
    let meta = SnapshotMeta {
        resource_version: identity.resource_version.clone(),
        uid: identity.uid.clone(),
        ..SnapshotMeta::new(
            action.clone(),
            Operation::Delete,
            object_ref,
            user,
            now,
            request_uid,
        )
    };
    let prior = crate::store::prior_json(&object)?;
    Ok(NewSnapshot {
        meta,
        prior: Some(prior),
    })
}

fn count_failed(metrics: &Metrics, e: &CaptureError) {
    metrics
        .snapshot_failures
        .with_label_values(&[e.metric_label()])
        .inc();
}

fn count_stored(metrics: &Metrics, operation: Operation, bytes: u64) {
    metrics
        .snapshots_stored
        .with_label_values(&[operation.as_str()])
        .inc();
    metrics
        .snapshot_bytes
        .with_label_values(&[operation.as_str()])
        .inc_by(bytes);
}

/// The keys under which the mutating call of a request leaves its hint and
/// the validating call looks for it.
fn hint_keys(review: &Review, mutating: bool) -> Vec<HintKey> {
    let req = &review.request;
    let base = |name: String| HintKey {
        user: review.username().to_string(),
        operation: op_label(&req.operation),
        group: req.resource.group.clone(),
        resource: req.resource.resource.clone(),
        subresource: req.sub_resource.clone(),
        namespace: review.object_namespace(),
        name,
    };
    let generate_name = review
        .object
        .as_ref()
        .and_then(|o| o.get("metadata")?.get("generateName")?.as_str())
        .filter(|s| !s.is_empty());
    let name = review.object_name();
    let mut keys = Vec::with_capacity(2);
    if mutating {
        // Before the name is generated, only generateName is known.
        match (name.is_empty(), generate_name) {
            (true, Some(g)) => keys.push(base(format!("gen:{g}"))),
            _ => keys.push(base(name)),
        }
    } else {
        keys.push(base(name));
        if let Some(g) = generate_name {
            keys.push(base(format!("gen:{g}")));
        }
    }
    keys
}

#[cfg(test)]
mod tests;
