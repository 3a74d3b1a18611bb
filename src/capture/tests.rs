//! Capture decisions on AdmissionReviews captured from a real API server
//! (tests/data/), with an in-memory store.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::*;
use crate::store::memory::MemoryStore;

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn service(store: Arc<MemoryStore>, failure: CaptureFailure) -> (CaptureService, Metrics) {
    let mut cfg = CaptureConfig::with_namespace("snapback-system");
    cfg.self_users = vec!["snapback".into()];
    cfg.capture_failure = failure;
    let metrics = Metrics::standalone();
    let svc = CaptureService::new(
        cfg,
        store,
        Arc::new(Attribution::new(Duration::from_secs(30))),
        metrics.clone(),
    );
    (svc, metrics)
}

fn response(answer: &Answer) -> &AdmissionResponse {
    match answer {
        Answer::Review(r) => r.response.as_ref().expect("response"),
        Answer::BadRequest(m) => panic!("bad request: {m}"),
    }
}

fn only_snapshot(store: &MemoryStore) -> crate::store::StoredSnapshot {
    let snaps = store.snapshots.lock().unwrap();
    assert_eq!(snaps.len(), 1, "{:?}", snaps.keys());
    snaps.values().next().unwrap().clone()
}

#[tokio::test]
async fn mutating_webhook_strips_the_annotation_and_hands_the_action_over() {
    let store = Arc::new(MemoryStore::default());
    let (svc, _) = service(store.clone(), CaptureFailure::Deny);
    let answer = svc.mutate(&fixture("mutate-create-configmap-annotated.json"));
    let resp = response(&answer);
    assert!(resp.allowed);
    let patch: Value = serde_json::from_slice(resp.patch.as_ref().expect("patch")).unwrap();
    assert_eq!(
        patch,
        json!([
            {"op": "remove", "path": "/metadata/annotations/snapback.io~1action"},
            // kubectl's copy of the manifest loses it too (and the map it
            // leaves empty), byte for byte as kubectl writes it otherwise.
            {"op": "replace", "path": "/metadata/annotations/kubectl.kubernetes.io~1last-applied-configuration",
             "value": "{\"apiVersion\":\"v1\",\"data\":{\"mode\":\"blue\"},\"kind\":\"ConfigMap\",\"metadata\":{\"name\":\"settings\",\"namespace\":\"fx\"}}\n"}
        ])
    );
    // The validating call of the same request (another uid) finds the action.
    let answer = svc
        .validate(&fixture("validate-create-configmap-annotated.json"))
        .await;
    assert!(response(&answer).allowed);
    let snap = only_snapshot(&store);
    assert_eq!(snap.meta.action.as_str(), "release-42");
    assert_eq!(snap.meta.operation, Operation::Create);
    assert!(snap.payload.is_none(), "CREATE has no prior state");
    assert!(snap.meta.uid.is_some(), "the uid the object got");
    let actions = store.actions.lock().unwrap();
    assert_eq!(actions["release-42"].origin, "annotation");
    assert_eq!(actions["release-42"].owner, "admin");
}

#[tokio::test]
async fn update_stores_the_prior_object_and_the_after_fingerprint() {
    let store = Arc::new(MemoryStore::default());
    let (svc, metrics) = service(store.clone(), CaptureFailure::Deny);
    let body = fixture("validate-update-configmap.json");
    assert!(svc.validate(&body).await.allowed());
    let snap = only_snapshot(&store);
    let review: Value = serde_json::from_slice(&body).unwrap();
    let payload = snap.payload.as_ref().unwrap();
    let chunks: Vec<&[u8]> = payload.chunks.iter().map(Vec::as_slice).collect();
    let prior = codec::decode(&chunks, &payload.sha256).unwrap();
    assert_eq!(prior, review["request"]["oldObject"]);
    assert_eq!(prior["data"]["mode"], "blue");
    let m = &snap.meta;
    assert_eq!(
        m.after_fingerprint.as_deref(),
        Some(codec::fingerprint(&review["request"]["object"]).as_str())
    );
    assert_eq!(
        m.resource_version.as_deref(),
        review["request"]["oldObject"]["metadata"]["resourceVersion"].as_str()
    );
    assert_eq!(m.labels()["snapback.io/resource"], "configmaps.core");
    assert_eq!(m.labels()["snapback.io/operation"], "update");
    assert_eq!(m.object.namespace.as_deref(), Some("fx"));
    assert!(
        m.action.as_str().starts_with("admin-"),
        "implicit session: {}",
        m.action
    );
    assert!(
        metrics
            .render()
            .contains("snapback_snapshots_stored_total{operation=\"update\"} 1")
    );
}

#[tokio::test]
async fn scale_is_captured_as_a_subresource_change_of_the_deployment() {
    let store = Arc::new(MemoryStore::default());
    let (svc, _) = service(store.clone(), CaptureFailure::Deny);
    assert!(
        svc.validate(&fixture("validate-update-deployment-scale.json"))
            .await
            .allowed()
    );
    let m = only_snapshot(&store).meta;
    assert_eq!(
        (
            m.object.group.as_str(),
            m.object.resource.as_str(),
            m.object.subresource.as_deref(),
            m.object.kind.as_str()
        ),
        ("apps", "deployments", Some("scale"), "Scale")
    );
    assert_eq!(m.labels()["snapback.io/resource"], "deployments.apps");
}

#[tokio::test]
async fn deletes_read_identity_from_the_old_object() {
    let store = Arc::new(MemoryStore::default());
    let (svc, _) = service(store.clone(), CaptureFailure::Deny);
    let mut review: Value =
        serde_json::from_slice(&fixture("validate-delete-configmap-collection.json")).unwrap();
    // DeleteCollection items may come with an empty name.
    review["request"]["name"] = json!("");
    assert!(
        svc.validate(&serde_json::to_vec(&review).unwrap())
            .await
            .allowed()
    );
    let snap = only_snapshot(&store);
    assert_eq!(snap.meta.operation, Operation::Delete);
    assert_eq!(snap.meta.object.name, "settings");
    assert!(snap.meta.after_fingerprint.is_none());
    assert!(snap.payload.is_some());
}

#[rstest::rstest]
#[case("validate-create-configmap-dryrun.json", "dry_run")]
#[case("validate-create-secret.json", "secret")]
#[tokio::test]
async fn skipped_changes_store_nothing(#[case] file: &str, #[case] reason: &str) {
    let store = Arc::new(MemoryStore::default());
    let (svc, metrics) = service(store.clone(), CaptureFailure::Deny);
    assert!(svc.validate(&fixture(file)).await.allowed());
    assert_eq!(store.snapshot_count(), 0);
    assert!(metrics.render().contains(&format!(
        "snapback_captures_skipped_total{{reason=\"{reason}\"}} 1"
    )));
}

#[tokio::test]
async fn namespaces_are_cluster_scoped() {
    let store = Arc::new(MemoryStore::default());
    let (svc, _) = service(store.clone(), CaptureFailure::Deny);
    assert!(
        svc.validate(&fixture("validate-create-namespace.json"))
            .await
            .allowed()
    );
    let m = only_snapshot(&store).meta;
    assert_eq!(m.object.namespace, None);
    assert_eq!(m.object.name, "fx");
}

#[tokio::test]
async fn the_snapshot_namespace_itself_is_not_captured() {
    // Its snapshot would have to go into it: on install, before it exists,
    // deny mode would refuse to create it.
    let store = Arc::new(MemoryStore::default());
    *store.fail_with.lock().unwrap() = Some("namespace fx not found".into());
    let mut cfg = CaptureConfig::with_namespace("fx");
    cfg.self_users = vec!["snapback".into()];
    let svc = CaptureService::new(
        cfg,
        store.clone(),
        Arc::new(Attribution::new(Duration::from_secs(30))),
        Metrics::standalone(),
    );
    assert!(
        svc.validate(&fixture("validate-create-namespace.json"))
            .await
            .allowed()
    );
    assert_eq!(store.snapshot_count(), 0);
}

#[tokio::test]
async fn store_failure_denies_in_deny_mode_and_warns_in_allow_mode() {
    let body = fixture("validate-delete-deployment.json");
    let store = Arc::new(MemoryStore::default());
    *store.fail_with.lock().unwrap() = Some("disk on fire".into());
    let (svc, _) = service(store.clone(), CaptureFailure::Deny);
    let answer = svc.validate(&body).await;
    let resp = response(&answer);
    assert!(!resp.allowed);
    assert!(
        resp.result
            .message
            .starts_with("snapback could not record the prior state: "),
        "{}",
        resp.result.message
    );
    assert!(resp.result.message.contains("disk on fire"));

    let (svc, metrics) = service(store.clone(), CaptureFailure::Allow);
    let answer = svc.validate(&body).await;
    let resp = response(&answer);
    assert!(resp.allowed);
    assert!(resp.warnings.as_ref().unwrap()[0].contains("disk on fire"));
    assert!(
        metrics
            .render()
            .contains("snapback_uncaptured_changes_admitted_total 1")
    );
}

#[tokio::test]
async fn queued_acknowledgement_admits_before_the_write_and_counts_failed_writes() {
    let store = Arc::new(MemoryStore::default());
    *store.write_delay.lock().unwrap() = Duration::from_millis(200);
    let (svc, metrics) = service(store.clone(), CaptureFailure::Allow);
    let pending = Arc::new(PendingWrites::with_gauge(
        metrics.snapshot_writes_queued.clone(),
    ));
    let svc = svc.with_queued_ack(pending.clone());
    let body = fixture("validate-update-configmap.json");

    let answer = svc.validate(&body).await;
    assert!(response(&answer).allowed);
    assert!(response(&answer).warnings.is_none());
    assert_eq!(store.snapshot_count(), 0, "answered before the write");
    assert_eq!(pending.len(), 1);
    assert!(
        metrics
            .render()
            .contains("snapback_snapshot_writes_queued 1")
    );
    assert!(pending.settle(None, Duration::from_secs(5)).await);
    let snap = only_snapshot(&store);
    assert_eq!(snap.meta.operation, Operation::Update);
    let text = metrics.render();
    assert!(text.contains("snapback_snapshot_writes_queued 0"), "{text}");
    assert!(text.contains(r#"snapback_snapshots_stored_total{operation="update"} 1"#));

    // A write that fails after the answer is counted, never lost silently.
    *store.fail_with.lock().unwrap() = Some("disk on fire".into());
    let answer = svc
        .validate(&fixture("validate-delete-deployment.json"))
        .await;
    assert!(response(&answer).allowed);
    assert!(pending.settle(None, Duration::from_secs(5)).await);
    let text = metrics.render();
    assert!(
        text.contains("snapback_uncaptured_changes_admitted_total 1"),
        "{text}"
    );
    assert!(text.contains("snapback_snapshot_failures_total{reason=\"corrupt\"} 1"));
}

#[tokio::test]
async fn journaled_acknowledgement_admits_once_on_disk_and_retries_until_written() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemoryStore::default());
    // The API server refuses every write for now: deny mode still admits,
    // because the prior state is safe in the journal.
    *store.fail_with.lock().unwrap() = Some("etcd unavailable".into());
    let (svc, metrics) = service(store.clone(), CaptureFailure::Deny);
    let (journal, recovered) = crate::store::journal::Journal::open(dir.path()).unwrap();
    assert!(recovered.entries.is_empty());
    let pending = Arc::new(PendingWrites::with_gauge(
        metrics.snapshot_writes_queued.clone(),
    ));
    let svc = svc.with_journal(journal.clone(), pending.clone());

    let answer = svc
        .validate(&fixture("validate-update-configmap.json"))
        .await;
    assert!(response(&answer).allowed);
    assert_eq!(store.snapshot_count(), 0);
    assert_eq!(journal.outstanding(), 1, "in the journal until written");
    assert!(!pending.settle(None, Duration::from_millis(400)).await);
    let text = metrics.render();
    assert!(
        text.contains("snapback_snapshot_failures_total{reason=\"corrupt\"}"),
        "{text}"
    );
    assert!(text.contains("snapback_uncaptured_changes_admitted_total 0"));

    // The API server is back: the retry writes it, the journal lets it go.
    *store.fail_with.lock().unwrap() = None;
    assert!(pending.settle(None, Duration::from_secs(10)).await);
    let snap = only_snapshot(&store);
    assert_eq!(snap.meta.operation, Operation::Update);
    assert_eq!(journal.outstanding(), 0);
    assert_eq!(
        store.actions.lock().unwrap().len(),
        1,
        "its action record too"
    );
    let text = metrics.render();
    assert!(text.contains(r#"snapback_snapshots_stored_total{operation="update"} 1"#));
}

#[tokio::test]
async fn a_closed_journal_falls_back_to_writing_before_the_answer() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemoryStore::default());
    *store.fail_with.lock().unwrap() = Some("etcd unavailable".into());
    let (svc, metrics) = service(store.clone(), CaptureFailure::Deny);
    let (journal, _) = crate::store::journal::Journal::open(dir.path()).unwrap();
    journal.close();
    let svc = svc.with_journal(journal, Arc::new(PendingWrites::default()));
    let answer = svc
        .validate(&fixture("validate-update-configmap.json"))
        .await;
    assert!(
        !response(&answer).allowed,
        "not journaled and not written: denied"
    );
    assert!(
        metrics
            .render()
            .contains("snapback_snapshot_failures_total{reason=\"journal\"} 1")
    );
}

#[tokio::test]
async fn queued_acknowledgement_is_ignored_in_deny_mode() {
    let store = Arc::new(MemoryStore::default());
    *store.fail_with.lock().unwrap() = Some("disk on fire".into());
    let (svc, _) = service(store.clone(), CaptureFailure::Deny);
    let svc = svc.with_queued_ack(Arc::new(PendingWrites::default()));
    let answer = svc
        .validate(&fixture("validate-update-configmap.json"))
        .await;
    assert!(!response(&answer).allowed, "deny mode waits for the write");
}

#[tokio::test]
async fn malformed_reviews_get_invalid_or_400_never_a_panic() {
    let store = Arc::new(MemoryStore::default());
    let (svc, _) = service(store.clone(), CaptureFailure::Deny);
    // No uid to answer to: 400.
    for body in [
        &b"not json"[..],
        b"{}",
        b"[]",
        b"{\"apiVersion\":\"admission.k8s.io/v1\"}",
    ] {
        assert!(matches!(svc.validate(body).await, Answer::BadRequest(_)));
        assert!(matches!(svc.mutate(body), Answer::BadRequest(_)));
    }
    // A uid but garbage elsewhere: an invalid response for that uid.
    let mut review: Value =
        serde_json::from_slice(&fixture("validate-update-configmap.json")).unwrap();
    review["request"]["operation"] = json!(42);
    let answer = svc.validate(&serde_json::to_vec(&review).unwrap()).await;
    let resp = response(&answer);
    assert!(!resp.allowed);
    assert_eq!(resp.uid, review["request"]["uid"].as_str().unwrap());
    // An UPDATE without oldObject cannot be captured: denied, clearly.
    let mut review: Value =
        serde_json::from_slice(&fixture("validate-update-configmap.json")).unwrap();
    review["request"]["oldObject"] = Value::Null;
    let answer = svc.validate(&serde_json::to_vec(&review).unwrap()).await;
    assert!(response(&answer).result.message.contains("no oldObject"));
    assert_eq!(store.snapshot_count(), 0);
}

#[tokio::test]
async fn invalid_annotation_is_denied_by_the_mutating_webhook() {
    let store = Arc::new(MemoryStore::default());
    let (svc, _) = service(store, CaptureFailure::Deny);
    let mut review: Value =
        serde_json::from_slice(&fixture("mutate-create-configmap-annotated.json")).unwrap();
    review["request"]["object"]["metadata"]["annotations"]["snapback.io/action"] =
        json!("no spaces allowed");
    let answer = svc.mutate(&serde_json::to_vec(&review).unwrap());
    let resp = response(&answer);
    assert!(!resp.allowed);
    assert!(
        resp.result.message.contains("invalid action id"),
        "{}",
        resp.result.message
    );
}

#[test]
fn the_last_applied_manifest_loses_only_the_action_annotation() {
    let with_others = r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"annotations":{"team":"web","snapback.io/action":"r1"},"name":"c"}}"#;
    assert_eq!(
        without_action_annotation(with_others).as_deref(),
        Some(
            r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"annotations":{"team":"web"},"name":"c"}}"#
        )
    );
    // Nothing to take out, or not a manifest: left alone.
    assert_eq!(
        without_action_annotation(r#"{"metadata":{"annotations":{"team":"web"}}}"#),
        None
    );
    assert_eq!(without_action_annotation("not json"), None);
    assert_eq!(without_action_annotation(r#"{"metadata":[]}"#), None);
}

/// A DELETE review as the API server sends it (`oldObject` set, no `object`).
fn delete_review(user: &str, resource: &str, ns: Option<&str>, name: &str, old: Value) -> Vec<u8> {
    let kind = match resource {
        "namespaces" => "Namespace",
        "pods" => "Pod",
        "secrets" => "Secret",
        "events" => "Event",
        _ => "ConfigMap",
    };
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": format!("uid-{name}-{}", rand::random::<u32>()),
            "kind": {"group": "", "version": "v1", "kind": kind},
            "resource": {"group": "", "version": "v1", "resource": resource},
            "name": name,
            "namespace": ns.unwrap_or(if resource == "namespaces" { name } else { "" }),
            "operation": "DELETE",
            "userInfo": {"username": user, "groups": ["system:authenticated"]},
            "oldObject": old,
            "dryRun": false
        }
    }))
    .unwrap()
}

/// The API server committed the deletion of namespace `name` (`uid`) now.
fn terminating(store: &MemoryStore, name: &str, uid: &str) {
    store.terminating.lock().unwrap().insert(
        name.to_string(),
        (uid.to_string(), Some(jiff::Timestamp::now())),
    );
}

fn object(kind: &str, ns: &str, name: &str, uid: &str) -> Value {
    json!({"apiVersion": "v1", "kind": kind,
           "metadata": {"name": name, "namespace": ns, "uid": uid, "resourceVersion": "7"}})
}

const NAMESPACE_CONTROLLER: &str = "system:serviceaccount:kube-system:namespace-controller";

#[tokio::test]
async fn the_namespace_controllers_deletes_join_the_action_that_deleted_the_namespace() {
    let store = Arc::new(MemoryStore::default());
    let (svc, metrics) = service(store.clone(), CaptureFailure::Deny);
    // Before: the namespace controller deleting in a namespace nobody
    // deleted through a captured change is an excluded user, as always.
    let early = delete_review(
        NAMESPACE_CONTROLLER,
        "configmaps",
        Some("shop"),
        "settings",
        object("ConfigMap", "shop", "settings", "cm-0"),
    );
    assert!(svc.validate(&early).await.allowed());
    assert_eq!(store.snapshot_count(), 0);

    let ns = delete_review(
        "bob",
        "namespaces",
        None,
        "shop",
        json!({"apiVersion": "v1", "kind": "Namespace",
               "metadata": {"name": "shop", "uid": "ns-uid-1", "resourceVersion": "5"}}),
    );
    assert!(svc.validate(&ns).await.allowed());
    let action = only_snapshot(&store).meta.action.clone();
    let noted = store.actions.lock().unwrap()[action.as_str()]
        .deleted_namespaces
        .clone();
    assert_eq!(
        noted.keys().collect::<Vec<_>>(),
        ["shop"],
        "the record names the namespace"
    );
    assert_eq!(noted["shop"].uid, "ns-uid-1");
    // The API server commits the deletion; the namespace controller starts.
    terminating(&store, "shop", "ns-uid-1");

    // Its contents, deleted by the namespace controller: captured into bob's
    // action, except what a controller owner makes again and what is never
    // captured (events; Secrets without --capture-secrets).
    let mut owned = object("Pod", "shop", "web-1", "pod-1");
    owned["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web", "uid": "rs-1", "controller": true}]);
    for (resource, name, old) in [
        (
            "configmaps",
            "settings",
            object("ConfigMap", "shop", "settings", "cm-1"),
        ),
        ("pods", "web-1", owned),
        ("events", "e1", object("Event", "shop", "e1", "ev-1")),
        ("secrets", "token", object("Secret", "shop", "token", "s-1")),
    ] {
        let body = delete_review(NAMESPACE_CONTROLLER, resource, Some("shop"), name, old);
        assert!(svc.validate(&body).await.allowed(), "{resource}/{name}");
    }
    // Elsewhere, and by someone else, nothing changes.
    let other = delete_review(
        NAMESPACE_CONTROLLER,
        "configmaps",
        Some("other"),
        "x",
        object("ConfigMap", "other", "x", "cm-2"),
    );
    assert!(svc.validate(&other).await.allowed());
    let gc = delete_review(
        "system:serviceaccount:kube-system:generic-garbage-collector",
        "configmaps",
        Some("shop"),
        "y",
        object("ConfigMap", "shop", "y", "cm-3"),
    );
    assert!(svc.validate(&gc).await.allowed());

    let snaps = store.snapshots.lock().unwrap();
    let mut captured: Vec<(String, String, String)> = snaps
        .values()
        .map(|s| {
            (
                s.meta.object.resource.clone(),
                s.meta.object.name.clone(),
                s.meta.user.clone(),
            )
        })
        .collect();
    captured.sort();
    assert_eq!(
        captured,
        vec![
            (
                "configmaps".to_string(),
                "settings".to_string(),
                NAMESPACE_CONTROLLER.to_string()
            ),
            (
                "namespaces".to_string(),
                "shop".to_string(),
                "bob".to_string()
            ),
        ]
    );
    assert!(snaps.values().all(|s| s.meta.action == action));
    drop(snaps);
    // Each counted under the reason it was left out for.
    let text = metrics.render();
    for sample in [
        "snapback_captures_skipped_total{reason=\"excluded_user\"} 4",
        "snapback_captures_skipped_total{reason=\"excluded_resource\"} 1",
        "snapback_captures_skipped_total{reason=\"secret\"} 1",
    ] {
        assert!(text.contains(sample), "{sample}:\n{text}");
    }
}

#[tokio::test]
async fn without_namespace_controller_users_a_namespaces_contents_are_not_followed() {
    let store = Arc::new(MemoryStore::default());
    let mut cfg = CaptureConfig::with_namespace("snapback-system");
    cfg.namespace_controller_users = vec![];
    let svc = CaptureService::new(
        cfg,
        store.clone(),
        Arc::new(Attribution::new(Duration::from_secs(30))),
        Metrics::standalone(),
    );
    let ns = delete_review(
        "bob",
        "namespaces",
        None,
        "shop",
        json!({"apiVersion": "v1", "kind": "Namespace",
               "metadata": {"name": "shop", "uid": "ns-uid-1", "resourceVersion": "5"}}),
    );
    assert!(svc.validate(&ns).await.allowed());
    let action = only_snapshot(&store).meta.action.clone();
    assert!(
        store.actions.lock().unwrap()[action.as_str()]
            .deleted_namespaces
            .is_empty()
    );
    terminating(&store, "shop", "ns-uid-1");
    let body = delete_review(
        NAMESPACE_CONTROLLER,
        "configmaps",
        Some("shop"),
        "settings",
        object("ConfigMap", "shop", "settings", "cm-1"),
    );
    assert!(svc.validate(&body).await.allowed());
    assert_eq!(store.snapshot_count(), 1);
}

#[tokio::test]
async fn a_namespace_deletion_that_cannot_be_noted_is_denied() {
    // deny mode: the namespace's contents would be deleted uncaptured.
    let store = Arc::new(MemoryStore::default());
    let (svc, _) = service(store.clone(), CaptureFailure::Deny);
    *store.fail_with.lock().unwrap() = Some("etcd is down".into());
    let ns = delete_review(
        "bob",
        "namespaces",
        None,
        "shop",
        json!({"apiVersion": "v1", "kind": "Namespace",
               "metadata": {"name": "shop", "uid": "ns-uid-1", "resourceVersion": "5"}}),
    );
    let answer = svc.validate(&ns).await;
    assert!(!answer.allowed());
    assert!(
        response(&answer)
            .result
            .message
            .contains("snapback could not record the prior state")
    );
}

#[tokio::test]
async fn a_namespace_deleted_again_belongs_to_the_new_action_on_every_replica() {
    // Two replicas sharing one store; the first saw the first deletion.
    let store = Arc::new(MemoryStore::default());
    let (first, _) = service(store.clone(), CaptureFailure::Deny);
    let (second, _) = service(store.clone(), CaptureFailure::Deny);
    let namespace = |uid: &str| {
        json!({"apiVersion": "v1", "kind": "Namespace",
               "metadata": {"name": "shop", "uid": uid, "resourceVersion": "5"}})
    };
    let emptied = |name: &str| {
        delete_review(
            NAMESPACE_CONTROLLER,
            "configmaps",
            Some("shop"),
            name,
            object("ConfigMap", "shop", name, name),
        )
    };
    let action_of = |name: &str| {
        let snaps = store.snapshots.lock().unwrap();
        snaps
            .values()
            .find(|s| s.meta.object.name == name)
            .map(|s| s.meta.action.to_string())
            .unwrap_or_else(|| panic!("{name} not captured"))
    };
    let body = delete_review("bob", "namespaces", None, "shop", namespace("uid-1"));
    assert!(first.validate(&body).await.allowed());
    terminating(&store, "shop", "uid-1");
    assert!(first.validate(&emptied("a")).await.allowed());
    let bobs = action_of("shop");
    assert_eq!(action_of("a"), bobs);
    // Restored, then deleted again by carol, through the other replica.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let body = delete_review("carol", "namespaces", None, "shop", namespace("uid-2"));
    assert!(second.validate(&body).await.allowed());
    terminating(&store, "shop", "uid-2");
    assert!(first.validate(&emptied("b")).await.allowed());
    assert!(action_of("b").starts_with("carol-"), "{}", action_of("b"));
    assert_ne!(action_of("b"), bobs);
}

#[tokio::test]
async fn a_namespace_deletion_refused_after_snapback_admitted_it_claims_nothing() {
    // bob's deletion passes snapback and is refused by another webhook;
    // carol's, later, is committed: the namespace's contents are carol's.
    let store = Arc::new(MemoryStore::default());
    let (svc, _) = service(store.clone(), CaptureFailure::Deny);
    let namespace = json!({"apiVersion": "v1", "kind": "Namespace",
                           "metadata": {"name": "shop", "uid": "uid-1", "resourceVersion": "5"}});
    let bobs = delete_review("bob", "namespaces", None, "shop", namespace.clone());
    assert!(svc.validate(&bobs).await.allowed());
    tokio::time::sleep(Duration::from_millis(20)).await;
    let carols = delete_review("carol", "namespaces", None, "shop", namespace);
    assert!(svc.validate(&carols).await.allowed());
    terminating(&store, "shop", "uid-1");
    let body = delete_review(
        NAMESPACE_CONTROLLER,
        "configmaps",
        Some("shop"),
        "settings",
        object("ConfigMap", "shop", "settings", "cm-1"),
    );
    assert!(svc.validate(&body).await.allowed());
    let snaps = store.snapshots.lock().unwrap();
    let settings = snaps
        .values()
        .find(|s| s.meta.object.name == "settings")
        .unwrap();
    assert!(
        settings.meta.action.as_str().starts_with("carol-"),
        "{}",
        settings.meta.action
    );
}

#[tokio::test]
async fn a_delete_of_an_object_already_being_deleted_is_not_captured_again() {
    let store = Arc::new(MemoryStore::default());
    let (svc, metrics) = service(store.clone(), CaptureFailure::Deny);
    let pod = object("Pod", "shop", "lone", "u1");
    // The API server admits a Pod's deletion twice in one request: before
    // its graceful deletion's update, and before the deletion itself.
    let first = svc
        .validate(&delete_review(
            "alice",
            "pods",
            Some("shop"),
            "lone",
            pod.clone(),
        ))
        .await;
    assert!(response(&first).allowed);
    let mut deleting = pod;
    deleting["metadata"]["deletionTimestamp"] = json!("2026-11-24T00:12:19Z");
    deleting["metadata"]["deletionGracePeriodSeconds"] = json!(0);
    let second = svc
        .validate(&delete_review(
            "alice",
            "pods",
            Some("shop"),
            "lone",
            deleting,
        ))
        .await;
    assert!(response(&second).allowed);
    assert_eq!(store.snapshot_count(), 1);
    assert!(
        metrics
            .render()
            .contains("snapback_captures_skipped_total{reason=\"already_being_deleted\"} 1"),
        "{}",
        metrics.render()
    );
}

#[tokio::test]
async fn a_cascade_that_cannot_be_looked_up_is_denied_or_counted_never_silently_let_by() {
    let gc_user = "system:serviceaccount:kube-system:generic-garbage-collector";
    let mut owned = object("ConfigMap", "shop", "dependent", "cm-9");
    owned["metadata"]["ownerReferences"] =
        json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": "owner-uid"}]);
    let reviews = [
        delete_review(
            NAMESPACE_CONTROLLER,
            "configmaps",
            Some("shop"),
            "settings",
            object("ConfigMap", "shop", "settings", "cm-1"),
        ),
        delete_review(gc_user, "configmaps", Some("shop"), "dependent", owned),
    ];
    for failure in [CaptureFailure::Deny, CaptureFailure::Allow] {
        let store = Arc::new(MemoryStore::default());
        let (svc, metrics) = service(store.clone(), failure);
        // The API server cannot be read: is the namespace being deleted by
        // a captured change, was the owner?
        *store.fail_with.lock().unwrap() = Some("the API server is unavailable".into());
        for body in &reviews {
            let answer = svc.validate(body).await;
            let message = &response(&answer).result.message;
            match failure {
                CaptureFailure::Deny => {
                    assert!(!answer.allowed());
                    assert!(
                        message.contains("cannot tell whether a captured change deleted"),
                        "{message}"
                    );
                }
                CaptureFailure::Allow => assert!(answer.allowed()),
            }
        }
        let text = metrics.render();
        assert!(
            text.contains("snapback_snapshot_failures_total{reason=\"cascade\"} 2"),
            "{text}"
        );
        if failure == CaptureFailure::Allow {
            assert!(
                text.contains("snapback_uncaptured_changes_admitted_total 2"),
                "{text}"
            );
        }
    }
}

#[tokio::test]
async fn a_deletion_replayed_from_the_journal_takes_its_dependents_along() {
    let gc_user = "system:serviceaccount:kube-system:generic-garbage-collector";
    let store = Arc::new(MemoryStore::default());
    let (svc, metrics) = service(store.clone(), CaptureFailure::Deny);
    let action = ActionId::parse("release-9").unwrap();
    let now: jiff::Timestamp = "2026-11-24T10:00:00Z".parse().unwrap();
    // The replayed record is written (the replay's write landed).
    store.actions.lock().unwrap().insert(
        action.to_string(),
        ActionRecord::new(action.clone(), "annotation", "alice", now),
    );
    let owner_ref = ObjectRef {
        group: String::new(),
        version: "v1".into(),
        resource: "configmaps".into(),
        subresource: None,
        kind: "ConfigMap".into(),
        namespace: Some("shop".into()),
        name: "owner".into(),
    };
    let owner = SnapshotMeta {
        resource_version: Some("7".into()),
        uid: Some("owner-uid".into()),
        ..SnapshotMeta::new(
            action.clone(),
            Operation::Delete,
            owner_ref,
            "alice",
            now,
            "uid-owner-delete",
        )
    };
    svc.note_replayed_deletion(&owner);
    let mut owned = object("ConfigMap", "shop", "dependent", "cm-9");
    owned["metadata"]["ownerReferences"] =
        json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": "owner-uid"}]);
    let answer = svc
        .validate(&delete_review(
            gc_user,
            "configmaps",
            Some("shop"),
            "dependent",
            owned,
        ))
        .await;
    assert!(response(&answer).allowed);
    let snap = only_snapshot(&store);
    assert_eq!(snap.meta.action, action, "{}", metrics.render());
    assert_eq!(snap.meta.object.name, "dependent");
}
