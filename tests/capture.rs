#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
//! Capture on a real kube-apiserver, driven by real kubectl (issue #2).

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Api;
use kube::api::ListParams;
use serde_json::{Value, json};
use snapback::store::actions::{ActionRecord, ActionState};
use snapback::store::codec::Effort;
use snapback::store::model::{ActionId, Operation, SnapshotMeta};
use support::*;

fn app(ns: &str, image: &str) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: {ns}, labels: {{app: web}}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers: [{{name: web, image: "{image}"}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: {ns}}}
spec:
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: 8080}}]
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: settings, namespace: {ns}}}
data: {{mode: blue}}
---
apiVersion: example.com/v1
kind: Widget
metadata: {{name: w1, namespace: {ns}}}
spec: {{size: 3}}
"#
    )
}

fn ensure_crd(c: &Cluster) {
    c.kubectl_apply_str(WIDGET_CRD);
    c.wait_established("widgets.example.com");
}

fn summary(m: &SnapshotMeta) -> (Operation, String, String, Option<String>) {
    (
        m.operation,
        m.object.resource.clone(),
        m.object.name.clone(),
        m.object.subresource.clone(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_changes_are_captured_in_one_session_with_their_prior_states() {
    let c = cluster();
    let sb = shared_snapback();
    ensure_crd(c);
    let user = "user9";
    let ns = c.namespace("capture", &[user]);

    c.apply_as(user, &app(&ns, "nginx:1.25"));
    c.apply_as(user, &app(&ns, "nginx:1.26"));
    c.kubectl_as_ok(
        user,
        &[
            "-n",
            &ns,
            "patch",
            "configmap",
            "settings",
            "-p",
            r#"{"data":{"mode":"green"}}"#,
        ],
    );
    c.kubectl_as_ok(
        user,
        &["-n", &ns, "scale", "deployment", "web", "--replicas=3"],
    );
    c.kubectl_as_ok(user, &["-n", &ns, "delete", "deployment", "web"]);
    c.kubectl_as_ok(
        user,
        &["-n", &ns, "create", "configmap", "a", "--from-literal=k=a"],
    );
    c.kubectl_as_ok(
        user,
        &["-n", &ns, "create", "configmap", "b", "--from-literal=k=b"],
    );
    // Server-side dry runs are never captured.
    c.kubectl_as_ok(
        user,
        &[
            "-n",
            &ns,
            "create",
            "configmap",
            "dry",
            "--from-literal=k=v",
            "--dry-run=server",
        ],
    );
    c.kubectl_as_ok(
        user,
        &[
            "-n",
            &ns,
            "patch",
            "configmap",
            "a",
            "--dry-run=server",
            "-p",
            r#"{"data":{"k":"x"}}"#,
        ],
    );
    // DeleteCollection: every item admitted on its own with an empty name.
    c.kubectl_as_ok(user, &["-n", &ns, "delete", "configmaps", "--all"]);

    let client = c.client("admin").await;
    let mut snaps = snapshots_in_namespace(&client, &sb.opts.snapshot_namespace, &ns).await;
    // The namespace's rolebinding was created by admin, not the user.
    snaps.retain(|m| m.user == user);
    let got: Vec<_> = snaps.iter().map(summary).collect();
    let s = |op, r: &str, n: &str, sub: Option<&str>| {
        (op, r.to_string(), n.to_string(), sub.map(str::to_string))
    };
    use Operation::*;
    let mut expected = vec![
        s(Create, "deployments", "web", None),
        s(Create, "services", "web", None),
        s(Create, "configmaps", "settings", None),
        s(Create, "widgets", "w1", None),
        s(Update, "deployments", "web", None),
        s(Update, "configmaps", "settings", None),
        s(Update, "deployments", "web", Some("scale")),
        s(Delete, "deployments", "web", None),
        s(Create, "configmaps", "a", None),
        s(Create, "configmaps", "b", None),
    ];
    assert_eq!(
        &got[..expected.len().min(got.len())],
        &expected[..],
        "all: {got:#?}"
    );
    let mut deleted: Vec<_> = got[expected.len()..].to_vec();
    deleted.sort();
    let mut want_deleted = vec![
        s(Delete, "configmaps", "a", None),
        s(Delete, "configmaps", "b", None),
        s(Delete, "configmaps", "settings", None),
    ];
    want_deleted.sort();
    assert_eq!(deleted, want_deleted);
    expected.extend(want_deleted);
    assert_eq!(got.len(), expected.len());

    // One implicit session for the whole sequence, named after the user.
    let action = snaps[0].action.clone();
    assert!(action.as_str().starts_with("user9-"), "{action}");
    assert!(snaps.iter().all(|m| m.action == action && m.user == user));
    let store = sb.store(c).await;
    let (record, _) = store
        .get_action(&action)
        .await
        .unwrap()
        .expect("action record");
    assert_eq!(record.origin, "session");
    assert_eq!(record.owner, user);

    // Prior states decode to the objects as they were.
    let loaded = snapshots(&store, action.as_str()).await;
    let prior = |op: Operation, resource: &str, name: &str, sub: Option<&str>| -> Option<Value> {
        loaded
            .iter()
            .find(|(m, _)| {
                m.operation == op
                    && m.object.resource == resource
                    && m.object.name == name
                    && m.object.subresource.as_deref() == sub
                    && m.object.namespace.as_deref() == Some(ns.as_str())
            })
            .unwrap_or_else(|| panic!("no {op} snapshot of {resource}/{name}"))
            .1
            .clone()
    };
    assert_eq!(
        prior(Create, "deployments", "web", None),
        None,
        "create has no prior"
    );
    let before_image = prior(Update, "deployments", "web", None).unwrap();
    assert_eq!(
        before_image["spec"]["template"]["spec"]["containers"][0]["image"],
        "nginx:1.25"
    );
    assert_eq!(
        prior(Update, "configmaps", "settings", None).unwrap()["data"],
        json!({"mode": "blue"})
    );
    let scale = prior(Update, "deployments", "web", Some("scale")).unwrap();
    assert_eq!(scale["kind"], "Scale");
    assert_eq!(scale["spec"]["replicas"], 1);
    let deleted_dep = prior(Delete, "deployments", "web", None).unwrap();
    assert_eq!(deleted_dep["spec"]["replicas"], 3);
    assert_eq!(
        deleted_dep["spec"]["template"]["spec"]["containers"][0]["image"],
        "nginx:1.26"
    );
    assert_eq!(
        prior(Delete, "configmaps", "settings", None).unwrap()["data"],
        json!({"mode": "green"})
    );
    assert_eq!(
        prior(Delete, "configmaps", "a", None).unwrap()["data"],
        json!({"k": "a"})
    );

    // Metadata for rollback: the uid of created objects and the "after" fingerprint.
    let widget = loaded
        .iter()
        .find(|(m, _)| m.object.resource == "widgets")
        .expect("widget snapshot");
    assert_eq!(widget.0.object.group, "example.com");
    assert_eq!(widget.0.object.kind, "Widget");
    assert!(widget.0.uid.is_some() && widget.0.after_fingerprint.is_some());
    let del = loaded.iter().find(|(m, _)| m.operation == Delete).unwrap();
    assert!(del.0.after_fingerprint.is_none() && del.0.payload_sha256.is_some());
    assert!(del.0.resource_version.is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn annotation_names_the_action_and_never_persists() {
    let c = cluster();
    let sb = shared_snapback();
    let ns = c.namespace("annot", &[]);
    let action = format!("release-{:06x}", rand::random::<u32>() & 0xffffff);
    let cm = |v: &str| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cfg\n  namespace: {ns}\n  annotations:\n    snapback.io/action: {action}\n    team: web\ndata:\n  v: \"{v}\"\n"
        )
    };
    c.kubectl_apply_str(&cm("1"));
    c.kubectl_apply_str(&cm("2"));
    let live: Value =
        serde_json::from_str(&c.kubectl_ok(&["-n", &ns, "get", "cm", "cfg", "-o", "json"]))
            .unwrap();
    let annotations = live["metadata"]["annotations"].as_object().unwrap();
    assert!(
        !annotations.contains_key("snapback.io/action"),
        "{annotations:?}"
    );
    assert_eq!(annotations["team"], "web");
    // Nor in kubectl's copy of the manifest.
    let last: Value = serde_json::from_str(
        annotations["kubectl.kubernetes.io/last-applied-configuration"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        last["metadata"]["annotations"],
        serde_json::json!({"team": "web"}),
        "{last}"
    );
    assert!(!live.to_string().contains(&action), "{live}");

    let store = sb.store(c).await;
    let snaps = snapshots(&store, &action).await;
    let ops: Vec<_> = snaps.iter().map(|(m, _)| m.operation).collect();
    assert_eq!(ops, vec![Operation::Create, Operation::Update]);
    assert_eq!(snaps[1].1.as_ref().unwrap()["data"]["v"], "1");
    let (record, _) = store
        .get_action(&ActionId::parse(&action).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.origin, "annotation");

    // An action id that cannot be a label value is refused with a clear message.
    let bad = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: bad\n  namespace: {ns}\n  annotations:\n    snapback.io/action: \"not a/valid id\"\n"
    );
    let out = c.kubectl_stdin("admin", &["apply", "-f", "-"], &bad);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("snapback.io/action") && err.contains("invalid action id"),
        "{err}"
    );
    assert!(
        !c.kubectl("admin", &["-n", &ns, "get", "cm", "bad"])
            .status
            .success()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_explicitly_opened_action_collects_the_users_changes_including_deletes() {
    let c = cluster();
    let sb = shared_snapback();
    let ns = c.namespace("explicit", &["alice"]);
    c.kubectl_as_ok(
        "alice",
        &[
            "-n",
            &ns,
            "create",
            "configmap",
            "keep",
            "--from-literal=a=1",
        ],
    );
    // What POST /api/v1/actions does: an open, explicit record owned by alice.
    let store = sb.store(c).await;
    let id = ActionId::parse(&format!("maint-{:06x}", rand::random::<u32>() & 0xffffff)).unwrap();
    let mut record = ActionRecord::new(id.clone(), "explicit", "alice", jiff::Timestamp::now());
    record.description = Some("maintenance".into());
    assert!(store.create_action(&record).await.unwrap());
    tokio::time::sleep(Duration::from_millis(500)).await; // the webhook's watch

    c.kubectl_as_ok("alice", &["-n", &ns, "delete", "configmap", "keep"]);
    let snaps = snapshots(&store, id.as_str()).await;
    assert_eq!(snaps.len(), 1, "{snaps:?}");
    assert_eq!(snaps[0].0.operation, Operation::Delete);
    assert_eq!(snaps[0].1.as_ref().unwrap()["data"]["a"], "1");

    // Completed: later changes fall back to alice's implicit session.
    let (mut rec, rv) = store.get_action(&id).await.unwrap().unwrap();
    rec.state = ActionState::Completed;
    store.update_action(&rec, &rv).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.kubectl_as_ok(
        "alice",
        &[
            "-n",
            &ns,
            "create",
            "configmap",
            "later",
            "--from-literal=a=2",
        ],
    );
    assert_eq!(snapshots(&store, id.as_str()).await.len(), 1);
    let client = c.client("admin").await;
    let in_ns = snapshots_in_namespace(&client, &sb.opts.snapshot_namespace, &ns).await;
    let later = in_ns.iter().find(|m| m.object.name == "later").unwrap();
    assert!(
        later.action.as_str().starts_with("alice-"),
        "{}",
        later.action
    );
}

/// Random bytes as base64: compresses to ~75%, so big ones need chunks.
fn incompressible(len: usize) -> String {
    let bytes: Vec<u8> = (0..len * 3 / 4).map(|_| rand::random::<u8>()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[tokio::test(flavor = "multi_thread")]
async fn large_objects_round_trip_including_chunked_ones() {
    let c = cluster();
    let sb = shared_snapback();
    ensure_crd(c);
    let ns = c.namespace("large", &[]);
    let action = format!("big-{:06x}", rand::random::<u32>() & 0xffffff);
    let client = c.client("admin").await;

    // A ~900 KiB ConfigMap, updated.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let big = incompressible(900 * 1024);
    let mut cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "big", "annotations": {"snapback.io/action": action}},
        "data": {"blob": big}
    }))
    .unwrap();
    cms.create(&Default::default(), &cm).await.unwrap();
    cm.data = Some(BTreeMap::from([(
        "blob".to_string(),
        "small now".to_string(),
    )]));
    cms.replace("big", &Default::default(), &cm).await.unwrap();

    // A ~1 MiB ConfigMap of characters the API server's JSON escapes (`<`
    // is sent as `\u003c`), changed but still as large: object and
    // oldObject make a review of about 12 MiB.
    let escaped = "<&>".repeat(1024 * 1024 / 3);
    let mut html: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "html", "annotations": {"snapback.io/action": action}},
        "data": {"page": escaped}
    }))
    .unwrap();
    cms.create(&Default::default(), &html).await.unwrap();
    html.data = Some(BTreeMap::from([(
        "page".to_string(),
        format!("{escaped}!"),
    )]));
    cms.replace("html", &Default::default(), &html)
        .await
        .unwrap();

    // A custom resource near the API server's request size limit (etcd's
    // 1.5 MiB), whose compressed form does not fit one ConfigMap.
    let widgets: Api<kube::core::DynamicObject> = Api::namespaced_with(
        client.clone(),
        &ns,
        &kube::discovery::ApiResource {
            group: "example.com".into(),
            version: "v1".into(),
            api_version: "example.com/v1".into(),
            kind: "Widget".into(),
            plural: "widgets".into(),
        },
    );
    let huge = incompressible(1_400 * 1024);
    let w: kube::core::DynamicObject = serde_json::from_value(json!({
        "apiVersion": "example.com/v1", "kind": "Widget",
        "metadata": {"name": "huge", "annotations": {"snapback.io/action": action}},
        "spec": {"blob": huge}
    }))
    .unwrap();
    let created = widgets.create(&Default::default(), &w).await.unwrap();
    let mut small = created.clone();
    small.data["spec"] = json!({"blob": "small now"});
    small.metadata.annotations = Some(BTreeMap::from([(
        "snapback.io/action".to_string(),
        action.clone(),
    )]));
    widgets
        .replace("huge", &Default::default(), &small)
        .await
        .unwrap();

    let store = sb.store(c).await;
    let snaps = snapshots(&store, &action).await;
    let update = snaps
        .iter()
        .find(|(m, _)| m.operation == Operation::Update && m.object.name == "big")
        .expect("configmap update snapshot");
    assert_eq!(update.1.as_ref().unwrap()["data"]["blob"], big);
    let page = snaps
        .iter()
        .find(|(m, _)| m.operation == Operation::Update && m.object.name == "html")
        .expect("escaped configmap update snapshot");
    assert_eq!(page.1.as_ref().unwrap()["data"]["page"], escaped);
    let deleted = snaps
        .iter()
        .find(|(m, _)| m.operation == Operation::Update && m.object.resource == "widgets")
        .expect("widget update snapshot");
    assert!(
        deleted.0.chunks >= 2,
        "expected a chunked snapshot, got {} chunk(s)",
        deleted.0.chunks
    );
    assert_eq!(deleted.1.as_ref().unwrap()["spec"]["blob"], huge);
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_never_reach_a_configmap() {
    let c = cluster();
    let sb = shared_snapback();
    let ns = c.namespace("secret", &[]);
    let marker = format!("s3cr3t-{:08x}", rand::random::<u32>());
    c.kubectl_ok(&[
        "-n",
        &ns,
        "create",
        "secret",
        "generic",
        "creds",
        &format!("--from-literal=password={marker}"),
    ]);
    c.kubectl_ok(&[
        "-n",
        &ns,
        "patch",
        "secret",
        "creds",
        "-p",
        r#"{"stringData":{"password":"rotated"}}"#,
    ]);
    c.kubectl_ok(&["-n", &ns, "delete", "secret", "creds"]);

    // No snapshot of any Secret, and no payload anywhere with its data.
    let client = c.client("admin").await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &sb.opts.snapshot_namespace);
    let encoded = base64::engine::general_purpose::STANDARD.encode(&marker);
    for cm in cms.list(&ListParams::default()).await.unwrap() {
        let text = serde_json::to_string(&cm).unwrap();
        assert!(!text.contains(&marker) && !text.contains(&encoded));
        let labels = cm.metadata.labels.clone().unwrap_or_default();
        assert_ne!(
            labels.get("snapback.io/resource").map(String::as_str),
            Some("secrets.core")
        );
        if let Some(bin) = cm
            .binary_data
            .as_ref()
            .and_then(|b| b.get("object.json.gz"))
        {
            let mut out = String::new();
            use std::io::Read;
            // Chunked payloads are partial gzip streams; read what decodes.
            let _ = flate2::read::GzDecoder::new(bin.0.as_slice()).read_to_string(&mut out);
            assert!(!out.contains(&marker) && !out.contains(&encoded));
        }
    }

    // With --capture-secrets, Secret snapshots are Secrets, never ConfigMaps.
    let id = format!("sec{:06x}", rand::random::<u32>() & 0xffffff);
    let mut opts = SnapbackOpts::isolated(c, &id);
    opts.extra_args = vec!["--capture-secrets".into()];
    let iso = Snapback::start(c, opts);
    let ns2 = c.namespace("secret2", &[]);
    iso.adopt_namespace(c, &ns2);
    // Applied: kubectl also keeps the manifest, value included, in an annotation.
    c.kubectl_apply_str(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: creds, namespace: {ns2}}}\nstringData: {{password: {marker}}}\n"
    ));
    c.kubectl_ok(&[
        "-n",
        &ns2,
        "patch",
        "secret",
        "creds",
        "-p",
        // An action of its own (the create before it is in admin's session).
        r#"{"metadata":{"annotations":{"snapback.io/action":"rotate-creds"}},"stringData":{"password":"rotated"}}"#,
    ]);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &iso.opts.snapshot_namespace);
    let stored = secrets
        .list(
            &ListParams::default()
                .labels("snapback.io/resource=secrets.core,snapback.io/operation=update"),
        )
        .await
        .unwrap();
    assert_eq!(stored.items.len(), 1, "one Secret snapshot of the update");
    assert_eq!(
        stored.items[0].type_.as_deref(),
        Some("snapback.io/snapshot")
    );
    let iso_cms: Api<ConfigMap> = Api::namespaced(client.clone(), &iso.opts.snapshot_namespace);
    for cm in iso_cms.list(&ListParams::default()).await.unwrap() {
        let labels = cm.metadata.labels.clone().unwrap_or_default();
        assert_ne!(
            labels.get("snapback.io/resource").map(String::as_str),
            Some("secrets.core")
        );
    }
    let store = iso.store(c).await;
    let action = SnapshotMeta::from_stored(
        "x",
        stored.items[0].metadata.labels.as_ref().unwrap(),
        stored.items[0].metadata.annotations.as_ref().unwrap(),
        true,
    )
    .unwrap()
    .action;
    let loaded = snapshots(&store, action.as_str()).await;
    let update = loaded
        .iter()
        .find(|(m, _)| m.operation == Operation::Update)
        .unwrap();
    assert!(update.0.secret);
    assert_eq!(
        update.1.as_ref().unwrap()["data"]["password"],
        base64::engine::general_purpose::STANDARD.encode(&marker)
    );
    // Its value never leaves through the API: diff, manifests, a dry run's patch.
    let api = iso.api(c);
    let admin = c.token("admin");
    for (method, path) in [
        ("GET", format!("/api/v1/actions/{action}/diff")),
        ("GET", format!("/api/v1/actions/{action}/manifests")),
        (
            "POST",
            format!("/api/v1/actions/{action}/rollback?dryRun=true"),
        ),
    ] {
        let (status, body) = api.call(method, &path, Some(&admin), None).await;
        assert_eq!(status, 200, "{path}: {body}");
        let text = body.to_string();
        assert!(
            !text.contains(&marker) && !text.contains(&encoded),
            "{path} shows the secret: {text}"
        );
        if method == "GET" {
            assert!(text.contains("<redacted"), "{path}: {text}");
        }
    }
    iso.unregister(c);
}

#[tokio::test(flavor = "multi_thread")]
async fn deny_mode_rejects_a_change_whose_snapshot_cannot_be_stored() {
    let c = cluster();
    let id = format!("deny{:06x}", rand::random::<u32>() & 0xffffff);
    let opts = SnapbackOpts::isolated(c, &id);
    // Take away snapback's write access to its snapshot namespace.
    c.kubectl_ok(&[
        "-n",
        &opts.snapshot_namespace,
        "delete",
        "rolebinding",
        "snapback",
    ]);
    let ns = c.namespace("deny", &[]);
    c.kubectl_ok(&[
        "-n",
        &ns,
        "create",
        "configmap",
        "cfg",
        "--from-literal=v=before",
    ]);
    let sb = Snapback::start(c, opts);
    sb.adopt_namespace(c, &ns);

    let out = c.kubectl(
        "admin",
        &[
            "-n",
            &ns,
            "patch",
            "configmap",
            "cfg",
            "-p",
            r#"{"data":{"v":"after"}}"#,
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the change must be denied");
    assert!(
        err.contains("snapback could not record the prior state"),
        "{err}"
    );
    assert!(
        err.contains("forbidden") || err.contains("Forbidden"),
        "{err}"
    );
    let v = c.kubectl_ok(&["-n", &ns, "get", "cm", "cfg", "-o", "jsonpath={.data.v}"]);
    assert_eq!(v, "before");
    let metrics = sb.metrics();
    assert!(
        metric(
            &metrics,
            "snapback_snapshot_failures_total{reason=\"forbidden\"}"
        ) >= 1.0,
        "{metrics}"
    );
    sb.unregister(c);
}

#[tokio::test(flavor = "multi_thread")]
async fn allow_mode_admits_and_counts_uncaptured_changes() {
    let c = cluster();
    let id = format!("allow{:06x}", rand::random::<u32>() & 0xffffff);
    let mut opts = SnapbackOpts::isolated(c, &id);
    opts.extra_args = vec!["--capture-failure=allow".into()];
    c.kubectl_ok(&[
        "-n",
        &opts.snapshot_namespace,
        "delete",
        "rolebinding",
        "snapback",
    ]);
    let ns = c.namespace("allow", &[]);
    c.kubectl_ok(&[
        "-n",
        &ns,
        "create",
        "configmap",
        "cfg",
        "--from-literal=v=before",
    ]);
    let sb = Snapback::start(c, opts);
    sb.adopt_namespace(c, &ns);
    let before = uncaptured(&sb);
    let out = c.kubectl(
        "admin",
        &[
            "-n",
            &ns,
            "patch",
            "configmap",
            "cfg",
            "-p",
            r#"{"data":{"v":"after"}}"#,
        ],
    );
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("snapback could not record the prior state")
    );
    assert_eq!(uncaptured(&sb), before + 1);
    sb.unregister(c);
}

#[tokio::test(flavor = "multi_thread")]
async fn parallel_writers_each_change_has_exactly_one_snapshot_in_the_right_action() {
    const WRITERS: usize = 8;
    const CHANGES: usize = 50;
    let c = cluster();
    let sb = shared_snapback();
    let users: Vec<String> = (1..=WRITERS).map(|i| format!("user{i}")).collect();
    let user_refs: Vec<&str> = users.iter().map(String::as_str).collect();
    let ns = c.namespace("parallel", &user_refs);

    let handles: Vec<_> = users
        .iter()
        .cloned()
        .map(|user| {
            let ns = ns.clone();
            std::thread::spawn(move || {
                let c = cluster();
                let name = format!("w-{user}");
                c.kubectl_as_ok(
                    &user,
                    &[
                        "-n",
                        &ns,
                        "create",
                        "configmap",
                        &name,
                        "--from-literal=n=0",
                    ],
                );
                for j in 1..=CHANGES {
                    c.kubectl_as_ok(
                        &user,
                        &[
                            "-n",
                            &ns,
                            "patch",
                            "configmap",
                            &name,
                            "-p",
                            &format!(r#"{{"data":{{"n":"{j}"}}}}"#),
                        ],
                    );
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("writer thread");
    }

    let client = c.client("admin").await;
    let mut snaps = snapshots_in_namespace(&client, &sb.opts.snapshot_namespace, &ns).await;
    snaps.retain(|m| m.object.resource == "configmaps");
    assert_eq!(
        snaps.len(),
        WRITERS * (CHANGES + 1),
        "one snapshot per admitted change"
    );
    let store = sb.store(c).await;
    for user in &users {
        let mine: Vec<&SnapshotMeta> = snaps
            .iter()
            .filter(|m| m.object.name == format!("w-{user}"))
            .collect();
        assert_eq!(mine.len(), CHANGES + 1, "{user}");
        assert!(mine.iter().all(|m| &m.user == user));
        let action = &mine[0].action;
        assert!(action.as_str().starts_with(&format!("{user}-")), "{action}");
        assert!(
            mine.iter().all(|m| &m.action == action),
            "{user}'s changes split across actions"
        );
        // Each prior state is the value just before that change, in order.
        let loaded = snapshots(&store, action.as_str()).await;
        let priors: Vec<String> = loaded
            .iter()
            .filter(|(m, _)| m.operation == Operation::Update)
            .map(|(_, p)| {
                p.as_ref().unwrap()["data"]["n"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        let want: Vec<String> = (0..CHANGES).map(|j| j.to_string()).collect();
        assert_eq!(priors, want, "{user}");
    }
}

fn uncaptured(sb: &Snapback) -> u64 {
    sb.metrics()
        .lines()
        .find_map(|l| l.strip_prefix("snapback_uncaptured_changes_admitted_total "))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0)
}

/// Changes of one action admitted together share snapshot writes (group
/// commit, docs/API.md "Batch snapshots"): every change is still captured
/// exactly once, readable through the API, and rolled back.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_changes_of_one_action_share_batch_writes_and_all_roll_back() {
    const WRITERS: usize = 8;
    const EACH: usize = 25;
    let c = cluster();
    let sb = shared_snapback();
    let user = "carol";
    c.grant_api(user);
    let ns = c.namespace("batched", &[user]);
    let api = sb.api(c);
    let token = c.token(user);
    let id = format!("batched-{:06x}", rand::random::<u32>() & 0xffffff);
    api.open_action(&token, &id).await;

    // Eight clients, each on its own connection, creating at once.
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..WRITERS {
        let cms: Api<ConfigMap> = Api::namespaced(c.client(user).await, &ns);
        writers.spawn(async move {
            for i in 0..EACH {
                let cm: ConfigMap = serde_json::from_value(json!({
                    "metadata": {"name": format!("w{w}-{i}")},
                    "data": {"i": i.to_string(), "settings": "a=1\nb=2\n".repeat(20)}
                }))
                .unwrap();
                cms.create(&Default::default(), &cm).await.expect("create");
            }
        });
    }
    while let Some(r) = writers.join_next().await {
        r.expect("writer");
    }
    api.ok("POST", &format!("/api/v1/actions/{id}/complete"), &token)
        .await;

    let (status, detail) = api
        .call("GET", &format!("/api/v1/actions/{id}"), Some(&token), None)
        .await;
    assert_eq!(status, 200, "{detail}");
    let changes = detail["changes"].as_array().expect("changes");
    let names: std::collections::BTreeSet<&str> =
        changes.iter().filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(changes.len(), WRITERS * EACH, "one snapshot per change");
    assert_eq!(names.len(), WRITERS * EACH, "no change twice");
    // The action list counts the batched changes from the batches' metadata.
    let (status, list) = api
        .call(
            "GET",
            &format!("/api/v1/actions?namespace={ns}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, 200, "{list}");
    let listed = list["actions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == id.as_str())
        .unwrap_or_else(|| panic!("{id} not listed for {ns}: {list}"));
    assert_eq!(listed["changes"], WRITERS * EACH, "{listed}");

    // Fewer API objects than changes: some were written together.
    let objects = stored_objects(c, &sb.opts.snapshot_namespace, &id).await;
    let batches = objects
        .iter()
        .filter(|o| {
            o.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("snapback.io/record"))
                == Some(&"batch".to_string())
        })
        .count();
    assert!(
        objects.len() < WRITERS * EACH && batches > 0,
        "{} changes from {WRITERS} concurrent clients took {} API objects ({batches} batches)",
        WRITERS * EACH,
        objects.len()
    );
    record_figure(&format!(
        "group commit: {} changes of one action from {WRITERS} concurrent clients stored in {} API objects ({batches} batches)",
        WRITERS * EACH,
        objects.len()
    ));

    let report = api
        .ok("POST", &format!("/api/v1/actions/{id}/rollback"), &token)
        .await;
    let restored = report["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["outcome"] == "restored" && r["operation"] == "delete")
        .count();
    assert_eq!(restored, WRITERS * EACH, "{}", report["counts"]);
    assert_none_left(c, &ns, "w").await;
}

/// With `--capture-ack=queued`, `--capture-batch-window` lets a round of
/// snapshot writes wait for more snapshots of its action: one client's
/// changes made one after another share API writes too (without the window
/// each would mostly be written alone). Every change is still captured once
/// and rolled back.
#[tokio::test(flavor = "multi_thread")]
async fn a_batch_window_gathers_one_clients_changes_into_fewer_writes() {
    const CHANGES: usize = 12;
    const WINDOW: Duration = Duration::from_secs(1);
    let c = cluster();
    let mut opts = SnapbackOpts::isolated(c, "window");
    opts.extra_args = vec![
        "--capture-failure=allow".into(),
        "--capture-ack=queued".into(),
        format!("--capture-batch-window={}ms", WINDOW.as_millis()),
    ];
    let snapshot_ns = opts.snapshot_namespace.clone();
    let sb = Snapback::start(c, opts);
    let ns = c.namespace("window", &[]);
    sb.adopt_namespace(c, &ns);
    let api = sb.api(c);
    let token = c.token("admin");
    let id = format!("window-{:06x}", rand::random::<u32>() & 0xffffff);
    api.open_action(&token, &id).await;

    // The probes that showed the webhook is called are captured too: let
    // their snapshots be written first.
    eventually(
        "the probes' snapshots written",
        Duration::from_secs(10),
        || async {
            (metric(&sb.metrics(), "snapback_snapshot_writes_queued") == 0.0).then_some(())
        },
    )
    .await;
    // One client, one change after another.
    let [stored_before, writes_before] = snapshot_counts(&sb);
    let cms: Api<ConfigMap> = Api::namespaced(c.client("admin").await, &ns);
    let started = std::time::Instant::now();
    for i in 0..CHANGES {
        let cm: ConfigMap = serde_json::from_value(json!({
            "metadata": {"name": format!("win-{i}")},
            "data": {"i": i.to_string()}
        }))
        .unwrap();
        cms.create(&Default::default(), &cm).await.expect("create");
    }
    let took = started.elapsed();
    api.ok("POST", &format!("/api/v1/actions/{id}/complete"), &token)
        .await;

    // The API read waited for the queued writes: every change is there.
    let detail = api
        .ok("GET", &format!("/api/v1/actions/{id}"), &token)
        .await;
    let changes = detail["changes"].as_array().expect("changes");
    assert_eq!(changes.len(), CHANGES, "one snapshot per change: {detail}");

    // A round is written once its oldest snapshot is WINDOW old, so the
    // changes made within one window share one write.
    let objects = stored_objects(c, &snapshot_ns, &id).await;
    let windows = (took.as_secs_f64() / WINDOW.as_secs_f64()).ceil() as usize;
    assert!(
        objects.len() <= windows + 1,
        "{CHANGES} changes made in {took:?} took {} API objects; a {WINDOW:?} window allows {}",
        objects.len(),
        windows + 1
    );
    record_figure(&format!(
        "batch window {WINDOW:?}: {CHANGES} changes of one client in {took:?} stored in {} API objects",
        objects.len()
    ));
    // The metrics tell operators the same: snapshots per API write.
    let [stored_after, writes_after] = snapshot_counts(&sb);
    assert_eq!(stored_after - stored_before, CHANGES as f64);
    assert_eq!(writes_after - writes_before, objects.len() as f64);

    let report = api
        .ok("POST", &format!("/api/v1/actions/{id}/rollback"), &token)
        .await;
    assert_eq!(report["counts"]["restored"], CHANGES, "{report}");
    assert_none_left(c, &ns, "win-").await;
}

/// The snapshot objects (alone or batches) stored for an action.
async fn stored_objects(
    c: &Cluster,
    snapshot_ns: &str,
    action: &str,
) -> Vec<kube::core::PartialObjectMeta<ConfigMap>> {
    let stored: Api<ConfigMap> = Api::namespaced(c.client("admin").await, snapshot_ns);
    stored
        .list_metadata(&ListParams::default().labels(&format!(
            "snapback.io/action={action},snapback.io/record!=action"
        )))
        .await
        .unwrap()
        .items
}

/// After a rollback, no ConfigMap the action created remains in `ns`.
async fn assert_none_left(c: &Cluster, ns: &str, prefix: &str) {
    let left: Api<ConfigMap> = Api::namespaced(c.client("admin").await, ns);
    let left = left.list_metadata(&ListParams::default()).await.unwrap();
    assert!(
        left.items
            .iter()
            .all(|o| !o.metadata.name.as_deref().unwrap_or("").starts_with(prefix)),
        "created objects remain after the rollback"
    );
}

/// The maintenance pass learns each action's activity (how many snapshots,
/// when the newest was captured) from the batches' annotations, without
/// reading them; a batch written before those annotations existed is read.
#[tokio::test(flavor = "multi_thread")]
async fn activity_of_batched_actions_comes_from_batch_metadata() {
    use snapback::store::batch::{self, BatchEntry};
    use snapback::store::model::{ANN_TIMESTAMP, ObjectRef};
    let c = cluster();
    let ns = c.namespace("activity", &[]);
    c.kubectl_ok(&["label", "namespace", &ns, "snapback.io/exclude=true"]);
    let client = c.client("admin").await;
    let base: jiff::Timestamp = "2026-11-23T08:00:00.000001Z".parse().unwrap();
    let entries = |action: &str, n: usize| -> Vec<BatchEntry> {
        let mut out: Vec<BatchEntry> = (0..n)
            .map(|i| {
                let ts = base + jiff::SignedDuration::from_secs(i as i64);
                BatchEntry {
                    meta: SnapshotMeta {
                        resource_version: Some("7".into()),
                        ..SnapshotMeta::new(
                            ActionId::parse(action).unwrap(),
                            Operation::Update,
                            ObjectRef {
                                group: "".into(),
                                version: "v1".into(),
                                resource: "configmaps".into(),
                                subresource: None,
                                kind: "ConfigMap".into(),
                                namespace: Some("shop".into()),
                                name: format!("cm-{i}"),
                            },
                            "alice",
                            ts,
                            format!("{action}-{i}"),
                        )
                    },
                    prior: Some(
                        snapback::store::prior_json(
                            &json!({"apiVersion": "v1", "kind": "ConfigMap",
                            "metadata": {"name": format!("cm-{i}"), "namespace": "shop"},
                            "data": {"i": i.to_string()}}),
                        )
                        .unwrap(),
                    ),
                }
            })
            .collect();
        batch::prepare(&mut out).unwrap();
        out
    };
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let write = |b: batch::EncodedBatch| {
        let cms = cms.clone();
        async move {
            let cm: ConfigMap = serde_json::from_value(json!({
                "metadata": {"name": b.name, "labels": b.labels, "annotations": b.annotations},
                "binaryData": {batch::BATCH_KEY: base64::engine::general_purpose::STANDARD.encode(&b.payload)}
            }))
            .unwrap();
            cms.create(&Default::default(), &cm)
                .await
                .expect("writing a batch");
        }
    };
    // Today's batches carry the newest entry's time, so their payload is
    // not read (here it could not be) ...
    let mut current = batch::encode(&entries("current-1", 5), Effort::Fast).unwrap();
    assert!(current.annotations.contains_key(ANN_TIMESTAMP));
    current.payload = b"not read by the maintenance pass".to_vec();
    write(current).await;
    // ... older ones do not, and are read instead.
    let mut legacy = batch::encode(&entries("legacy-1", 3), Effort::Fast).unwrap();
    legacy.annotations.remove(ANN_TIMESTAMP);
    write(legacy).await;

    let store = snapback::store::kube_store::KubeStore::new(client, &ns);
    let activity = store.activity_by_action().await.expect("activity");
    for (action, n) in [("current-1", 5), ("legacy-1", 3)] {
        let a = &activity[action];
        assert_eq!(a.snapshots, n, "{action}: {a:?}");
        assert_eq!(a.singles, 0, "{action}: batched entries are not singles");
        assert_eq!(
            a.namespaces.iter().collect::<Vec<_>>(),
            ["shop"],
            "{action}: the namespaces of its objects"
        );
        assert_eq!(
            a.last,
            Some(base + jiff::SignedDuration::from_secs(n as i64 - 1)),
            "{action}: the newest entry's time"
        );
    }
}

/// Snapshots stored, and API objects created to store them, so far.
fn snapshot_counts(sb: &Snapback) -> [f64; 2] {
    let text = sb.metrics();
    let sum = |name: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    [
        sum("snapback_snapshots_stored_total"),
        sum("snapback_snapshot_api_writes_total"),
    ]
}

/// A finished action's snapshots are folded into batches by the maintenance
/// pass; diff, manifests and rollback read them as before.
#[tokio::test(flavor = "multi_thread")]
async fn a_finished_action_is_compacted_and_still_rolls_back() {
    let c = cluster();
    let mut opts = SnapbackOpts::isolated(c, "compact");
    opts.extra_args = vec![
        "--maintenance-interval=1s".into(),
        "--session-idle=1s".into(),
        "--compact-after=10s".into(),
    ];
    let snapshot_ns = opts.snapshot_namespace.clone();
    let sb = Snapback::start(c, opts);
    let ns = c.namespace("compact", &[]);
    sb.adopt_namespace(c, &ns);
    let action = format!("compact-{:06x}", rand::random::<u32>() & 0xffffff);
    for i in 0..6 {
        c.kubectl_ok(&[
            "-n",
            &ns,
            "create",
            "configmap",
            &format!("cm-{i}"),
            &format!("--from-literal=v=prior-{i}"),
        ]);
    }
    // One by one: each change is written alone (SPEC §3) first.
    for i in 0..6 {
        c.apply_as(
            "admin",
            &format!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm-{i}\n  namespace: {ns}\n  annotations: {{snapback.io/action: {action}}}\ndata: {{v: changed-{i}}}\n"
            ),
        );
    }
    let stored: Api<ConfigMap> = Api::namespaced(c.client("admin").await, &snapshot_ns);
    let selector = format!("snapback.io/action={action},snapback.io/record!=action");
    let count = |batch: bool| {
        let stored = stored.clone();
        let selector = selector.clone();
        async move {
            stored
                .list_metadata(&ListParams::default().labels(&selector))
                .await
                .unwrap()
                .items
                .iter()
                .filter(|o| {
                    (o.metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get("snapback.io/record"))
                        == Some(&"batch".to_string()))
                        == batch
                })
                .count()
        }
    };
    // The annotation action completes when idle; for --compact-after it
    // keeps SPEC §3's layout, then it is compacted.
    let api = sb.api(c);
    let token = c.token("admin");
    eventually("the action completed", Duration::from_secs(30), || async {
        let (status, a) = api
            .call(
                "GET",
                &format!("/api/v1/actions/{action}"),
                Some(&token),
                None,
            )
            .await;
        (status == 200 && a["state"] == "completed").then_some(())
    })
    .await;
    let completed = std::time::Instant::now();
    // Several maintenance passes (one a second), well inside the 10s.
    tokio::time::sleep(Duration::from_secs(3)).await;
    if completed.elapsed() < Duration::from_secs(8) {
        assert_eq!(
            count(false).await,
            6,
            "finished but recent: still one per change"
        );
        assert_eq!(count(true).await, 0);
    }
    eventually("the action compacted", Duration::from_secs(60), || async {
        (count(false).await == 0 && count(true).await == 1).then_some(())
    })
    .await;
    assert!(
        metric(&sb.metrics(), "snapback_snapshots_compacted_total") >= 6.0,
        "{}",
        sb.metrics()
    );
    // Marked as compaction's, the only batches a later pass must read.
    let compacted = stored
        .list_metadata(&ListParams::default().labels(&format!(
            "snapback.io/action={action},snapback.io/compacted=true"
        )))
        .await
        .unwrap();
    assert_eq!(
        compacted.items.len(),
        1,
        "the batch carries snapback.io/compacted"
    );

    let diff = api
        .ok("GET", &format!("/api/v1/actions/{action}/diff"), &token)
        .await;
    assert!(diff.to_string().contains("prior-3"), "{diff}");
    let report = api
        .ok(
            "POST",
            &format!("/api/v1/actions/{action}/rollback"),
            &token,
        )
        .await;
    assert_eq!(report["counts"]["restored"], 6, "{report}");
    for i in 0..6 {
        let v = c.kubectl_ok(&[
            "-n",
            &ns,
            "get",
            "configmap",
            &format!("cm-{i}"),
            "-o",
            "jsonpath={.data.v}",
        ]);
        assert_eq!(v, format!("prior-{i}"));
    }
}
