#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
//! Rollback and cancel through the HTTP API, on a real kube-apiserver, with
//! the changes made by real kubectl (issue #3).

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::*;

async fn open_action(api: &ApiClient, token: &str, id: &str) {
    let (status, body) = api
        .call(
            "POST",
            "/api/v1/actions",
            Some(token),
            Some(&json!({"id": id, "description": "test"}).to_string()),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["state"], "open");
    // The webhook learns about it through its watch on the records.
    tokio::time::sleep(Duration::from_millis(700)).await;
}

async fn complete(api: &ApiClient, token: &str, id: &str) {
    let body = api
        .ok("POST", &format!("/api/v1/actions/{id}/complete"), token)
        .await;
    assert_eq!(body["state"], "completed");
}

/// Play the namespace controller (there is none): finish a namespace deletion.
fn finalize_namespace(c: &Cluster, ns: &str) {
    if let Some(mut obj) = c.get_json(&["namespace", ns]) {
        obj["spec"]["finalizers"] = json!([]);
        let out = c.kubectl_stdin(
            "admin",
            &[
                "replace",
                "--raw",
                &format!("/api/v1/namespaces/{ns}/finalize"),
                "-f",
                "-",
            ],
            &obj.to_string(),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while c.get_json(&["namespace", ns]).is_some() {
        assert!(Instant::now() < deadline, "namespace {ns} not gone");
        std::thread::sleep(Duration::from_millis(100));
    }
}

const GADGET_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: gadgets.example.com
spec:
  group: example.com
  scope: Namespaced
  names: {plural: gadgets, singular: gadget, kind: Gadget}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
"#;

const SPROCKET_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: sprockets.example.com
spec:
  group: example.com
  scope: Namespaced
  names: {plural: sprockets, singular: sprocket, kind: Sprocket}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
"#;

/// A namespaced custom resource definition with a scale subresource whose
/// count is at `replicas_path` (`.spec.replicas`, `.spec.size`).
fn scale_crd(plural: &str, kind: &str, replicas_path: &str) -> String {
    let status_path = replicas_path.replacen(".spec.", ".status.", 1);
    format!(
        "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata: {{name: {plural}.example.com}}\nspec:\n  group: example.com\n  scope: Namespaced\n  names: {{plural: {plural}, singular: {singular}, kind: {kind}}}\n  versions:\n    - name: v1\n      served: true\n      storage: true\n      schema:\n        openAPIV3Schema: {{type: object, x-kubernetes-preserve-unknown-fields: true}}\n      subresources:\n        scale: {{specReplicasPath: {replicas_path}, statusReplicasPath: {status_path}}}\n",
        singular = kind.to_ascii_lowercase(),
    )
}

/// `kubectl scale` of custom resources: a Scale shows a replicas field
/// that is not set as 0, so the capture reads the custom resource and its
/// definition, and the rollback takes out a field that was not set (an
/// operator's default applies again) instead of setting 0; a field set to
/// 0 is 0 again, without the "may now be 0" note. A scale followed by an
/// edit in the same action restores the field the definition names
/// (`spec.size`), not `spec.replicas`.
#[tokio::test(flavor = "multi_thread")]
async fn rolling_back_kubectl_scale_of_custom_resources_restores_an_unset_count_as_unset() {
    let c = cluster();
    let sb = shared_snapback();
    let api = sb.api(c);
    let user = "user12";
    c.grant_api(user);
    c.grant_cluster_edit(user);
    let token = c.token(user);
    let ns = c.namespace("gear-scale", &[user]);
    c.kubectl_apply_str(&scale_crd("gears", "Gear", ".spec.replicas"));
    c.kubectl_apply_str(&scale_crd("cogs", "Cog", ".spec.size"));
    c.wait_established("gears.example.com");
    c.wait_established("cogs.example.com");
    let gear = |name: &str, spec: &str| {
        format!(
            "apiVersion: example.com/v1\nkind: Gear\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{teeth: 12{spec}}}\n---\n"
        )
    };
    c.kubectl_apply_str(&format!(
        "{}{}{}{}apiVersion: example.com/v1\nkind: Cog\nmetadata: {{name: sized, namespace: {ns}}}\nspec: {{teeth: 12, size: 2}}\n",
        gear("unset", ""),
        gear("zero", ", replicas: 0"),
        gear("two", ", replicas: 2"),
        gear("mixed", ""),
    ));
    let id = format!("gear-scale-{:06x}", rand::random::<u32>() & 0xffffff);
    open_action(&api, &token, &id).await;
    for name in ["unset", "zero", "two", "mixed"] {
        c.kubectl_as_ok(user, &["-n", &ns, "scale", "gear", name, "--replicas=3"]);
    }
    c.kubectl_as_ok(user, &["-n", &ns, "scale", "cog", "sized", "--replicas=5"]);
    let teeth = r#"{"spec":{"teeth":13}}"#;
    c.kubectl_as_ok(
        user,
        &[
            "-n",
            &ns,
            "patch",
            "gear",
            "mixed",
            "--type=merge",
            "-p",
            teeth,
        ],
    );
    c.kubectl_as_ok(
        user,
        &[
            "-n",
            &ns,
            "patch",
            "cog",
            "sized",
            "--type=merge",
            "-p",
            teeth,
        ],
    );
    complete(&api, &token, &id).await;
    let note = "if spec.replicas was not set before the action, it is now set to 0";
    let message = |report: &Value, name: &str| -> String {
        result_named(report, name)["message"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let plan = api
        .ok(
            "POST",
            &format!("/api/v1/actions/{id}/rollback?dryRun=true"),
            &token,
        )
        .await;
    assert!(
        message(&plan, "unset").contains("removing /spec/replicas"),
        "{plan:#}"
    );
    for name in ["zero", "two"] {
        assert!(!message(&plan, name).contains(note), "{name}: {plan:#}");
    }
    let report = api
        .ok("POST", &format!("/api/v1/actions/{id}/rollback"), &token)
        .await;
    assert_eq!(report["state"], "rolled-back", "{report:#}");
    assert!(
        message(&report, "unset").contains("/spec/replicas removed"),
        "{report:#}"
    );
    assert!(!message(&report, "zero").contains(note), "{report:#}");
    let spec =
        |kind: &str, name: &str| c.get_json(&["-n", &ns, kind, name]).unwrap()["spec"].clone();
    assert_eq!(spec("gear", "unset"), json!({"teeth": 12}));
    assert_eq!(spec("gear", "zero"), json!({"teeth": 12, "replicas": 0}));
    assert_eq!(spec("gear", "two"), json!({"teeth": 12, "replicas": 2}));
    assert_eq!(spec("gear", "mixed"), json!({"teeth": 12}));
    assert_eq!(spec("cog", "sized"), json!({"teeth": 12, "size": 2}));
    // Done: a second rollback finds every object as it was.
    let again = api
        .ok("POST", &format!("/api/v1/actions/{id}/rollback"), &token)
        .await;
    for name in ["unset", "zero", "two", "mixed", "sized"] {
        assert_eq!(
            result_named(&again, name)["outcome"],
            "unchanged",
            "{name}: {again:#}"
        );
    }
}

/// A definition deleted with its custom resources, and a Job: the rollback
/// creates the definition, waits until it is served, then its resources;
/// the Job is created without the selector the API server generated for
/// the old one (it refuses one it did not generate).
#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_definition_with_its_resources_and_a_deleted_job_come_back() {
    let c = cluster();
    let sb = shared_snapback();
    let api = sb.api(c);
    let user = "user9";
    c.grant_api(user);
    c.grant_cluster_edit(user);
    let token = c.token(user);
    let ns = c.namespace("crd-job", &[user]);
    c.kubectl_apply_str(SPROCKET_CRD);
    c.wait_established("sprockets.example.com");
    c.apply_as(
        "admin",
        &format!(
            "apiVersion: example.com/v1\nkind: Sprocket\nmetadata: {{name: s1, namespace: {ns}}}\nspec: {{teeth: 12}}\n"
        ),
    );
    c.kubectl_ok(&[
        "-n",
        &ns,
        "create",
        "job",
        "migrate",
        "--image=busybox:1.36",
    ]);
    let old_job = c.get_json(&["-n", &ns, "job", "migrate"]).expect("the job");
    let old_uid = old_job["metadata"]["uid"].as_str().unwrap().to_string();

    // The definition and its resource: the resource is restored in the
    // wave right after the definition's.
    let id = format!("crd-{:06x}", rand::random::<u32>() & 0xffffff);
    open_action(&api, &token, &id).await;
    c.kubectl_as_ok(user, &["-n", &ns, "delete", "sprocket", "s1"]);
    c.kubectl_as_ok(user, &["delete", "crd", "sprockets.example.com"]);
    complete(&api, &token, &id).await;
    assert!(c.get_json(&["crd", "sprockets.example.com"]).is_none());
    let report = api
        .ok("POST", &format!("/api/v1/actions/{id}/rollback"), &token)
        .await;
    assert_eq!(report["state"], "rolled-back", "{report:#}");
    assert_eq!(
        nonzero(&report["counts"]),
        json!({"restored": 2}),
        "{report:#}"
    );
    let s1 = c
        .get_json(&["-n", &ns, "sprocket", "s1"])
        .expect("the custom resource is back");
    assert_eq!(s1["spec"]["teeth"], 12);

    // The Job.
    let id = format!("job-{:06x}", rand::random::<u32>() & 0xffffff);
    open_action(&api, &token, &id).await;
    c.kubectl_as_ok(user, &["-n", &ns, "delete", "job", "migrate"]);
    complete(&api, &token, &id).await;
    let report = api
        .ok("POST", &format!("/api/v1/actions/{id}/rollback"), &token)
        .await;
    assert_eq!(report["state"], "rolled-back", "{report:#}");
    let job = c
        .get_json(&["-n", &ns, "job", "migrate"])
        .expect("the job is back");
    let uid = job["metadata"]["uid"].as_str().unwrap();
    assert_ne!(uid, old_uid);
    assert_eq!(
        job["spec"]["selector"]["matchLabels"]["controller-uid"],
        uid
    );
    assert_eq!(
        job["spec"]["template"]["spec"]["containers"][0]["image"],
        "busybox:1.36"
    );
    // A second rollback finds it in its prior state.
    let again = api
        .ok("POST", &format!("/api/v1/actions/{id}/rollback"), &token)
        .await;
    assert_eq!(
        nonzero(&again["counts"]),
        json!({"unchanged": 1}),
        "{again:#}"
    );

    // A change to the custom resource, then its definition deleted outside
    // the action: nothing in the plan serves the kind again, so the dry run
    // says the create would fail, and both say why in words.
    let admin = c.token("admin");
    let id = format!("spr-{:06x}", rand::random::<u32>() & 0xffffff);
    c.apply_as(
        "admin",
        &format!(
            "apiVersion: example.com/v1\nkind: Sprocket\nmetadata: {{name: s1, namespace: {ns}, annotations: {{snapback.io/action: {id}}}}}\nspec: {{teeth: 13}}\n"
        ),
    );
    c.kubectl_ok(&["delete", "crd", "sprockets.example.com"]);
    for dry_run in [true, false] {
        let (status, report) = api
            .call(
                "POST",
                &format!("/api/v1/actions/{id}/rollback?force=true&dryRun={dry_run}"),
                Some(&admin),
                None,
            )
            .await;
        assert_eq!(status, 200, "{report:#}");
        let result = &report["results"][0];
        assert_eq!(result["outcome"], "failed", "dry run {dry_run}: {report:#}");
        assert!(
            result["message"]
                .as_str()
                .unwrap()
                .contains("its CustomResourceDefinition does not exist"),
            "dry run {dry_run}: {report:#}"
        );
    }
}

/// A stored snapshot that cannot say which object it is of (its labels were
/// damaged): the rollback refuses rather than restore from a later snapshot
/// a state from the middle of the action, unless forced.
#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_snapshot_stops_the_rollback_unless_forced() {
    let c = cluster();
    let sb = shared_snapback();
    let api = sb.api(c);
    let user = "user7";
    c.grant_api(user);
    let token = c.token(user);
    let ns = c.namespace("damaged", &[user]);
    c.apply_as("admin", &configmap(&ns, "cm", "v1"));
    let id = format!("damaged-{:06x}", rand::random::<u32>() & 0xffffff);
    open_action(&api, &token, &id).await;
    c.apply_as(user, &configmap(&ns, "cm", "v2"));
    c.apply_as(user, &configmap(&ns, "cm", "v3"));
    complete(&api, &token, &id).await;
    // The first change's snapshot (prior v1) loses its operation label.
    let snapshots = c
        .get_json(&[
            "-n",
            &sb.opts.snapshot_namespace,
            "configmaps",
            "-l",
            &format!("snapback.io/action={id},!snapback.io/record"),
        ])
        .expect("the snapshots");
    let mut items: Vec<&Value> = snapshots["items"].as_array().unwrap().iter().collect();
    assert_eq!(items.len(), 2, "{snapshots:#}");
    items.sort_by_key(|i| {
        i["metadata"]["annotations"]["snapback.io/timestamp"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    });
    let first = items[0]["metadata"]["name"].as_str().unwrap();
    c.kubectl_ok(&[
        "-n",
        &sb.opts.snapshot_namespace,
        "label",
        "--overwrite",
        "configmap",
        first,
        "snapback.io/operation=bogus",
    ]);
    let (status, body) = api
        .call(
            "POST",
            &format!("/api/v1/actions/{id}/rollback"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, 409, "{body}");
    let message = error_message(&body);
    assert!(
        message.contains(first) && message.contains("force=true"),
        "{message}"
    );
    assert_eq!(value_of(c, &ns, "cm"), "v3", "nothing was restored");
    // Forced: what can be read is restored (here the later snapshot's prior).
    let report = api
        .ok(
            "POST",
            &format!("/api/v1/actions/{id}/rollback?force=true"),
            &token,
        )
        .await;
    assert_eq!(report["state"], "rolled-back", "{report:#}");
    assert_eq!(value_of(c, &ns, "cm"), "v2");
}

fn deployment(ns: &str, name: &str, image: &str, replicas: u32) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {name}, namespace: {ns}, labels: {{app: {name}}}}}\nspec:\n  replicas: {replicas}\n  selector: {{matchLabels: {{app: {name}}}}}\n  template:\n    metadata: {{labels: {{app: {name}}}}}\n    spec: {{containers: [{{name: main, image: \"{image}\"}}]}}\n"
    )
}

fn service(ns: &str, name: &str, port: u32) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{selector: {{app: {name}}}, ports: [{{port: {port}}}]}}\n"
    )
}

fn configmap(ns: &str, name: &str, v: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}, namespace: {ns}, labels: {{tier: web}}}}\ndata: {{v: \"{v}\"}}\n"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_multi_kind_action_rolls_back_to_its_prior_state_and_redo_restores_it() {
    let c = cluster();
    let sb = shared_snapback();
    let api = sb.api(c);
    let user = "carol";
    c.grant_api(user);
    c.grant_cluster_edit(user);
    let token = c.token(user);
    c.kubectl_apply_str(WIDGET_CRD);
    c.wait_established("widgets.example.com");

    // Before the action (as admin).
    let ns = c.namespace("multi", &[]);
    let ns2 = format!("{ns}-extra");
    c.apply_as("admin", &deployment(&ns, "api", "nginx:1.25", 2));
    c.apply_as("admin", &service(&ns, "api", 80));
    c.apply_as("admin", &configmap(&ns, "cfg", "old"));
    c.apply_as("admin", &configmap(&ns, "doomed", "keep me"));
    c.apply_as("admin",
        &format!(
            "apiVersion: example.com/v1\nkind: Widget\nmetadata: {{name: w1, namespace: {ns}}}\nspec: {{size: 1}}\n"
        ),
    );
    let watched: Vec<Vec<&str>> = vec![
        vec!["-n", &ns, "deployment", "api"],
        vec!["-n", &ns, "deployment", "fresh"],
        vec!["-n", &ns, "service", "api"],
        vec!["-n", &ns, "service", "fresh"],
        vec!["-n", &ns, "configmap", "cfg"],
        vec!["-n", &ns, "configmap", "doomed"],
        vec!["-n", &ns, "widget", "w1"],
        vec!["namespace", &ns2],
        vec!["-n", &ns2, "configmap", "inner"],
        vec!["crd", "gadgets.example.com"],
    ];
    let snapshot_all = |c: &Cluster| -> Vec<Option<Value>> {
        watched
            .iter()
            .map(|a| c.get_json(a).map(|v| content(&v)))
            .collect()
    };
    let before = snapshot_all(c);

    // The action, by carol, through an explicitly opened action.
    let id = format!("multi-{:06x}", rand::random::<u32>() & 0xffffff);
    open_action(&api, &token, &id).await;
    c.apply_as(user, &deployment(&ns, "api", "nginx:1.26", 2));
    c.apply_as(user, &deployment(&ns, "fresh", "redis:7", 1));
    c.kubectl_as_ok(user, &["-n", &ns, "delete", "service", "api"]);
    c.apply_as(user, &service(&ns, "fresh", 6379));
    c.apply_as(user, &configmap(&ns, "cfg", "new"));
    c.kubectl_as_ok(user, &["-n", &ns, "delete", "configmap", "doomed"]);
    c.kubectl_as_ok(
        user,
        &[
            "-n",
            &ns,
            "patch",
            "widget",
            "w1",
            "--type=merge",
            "-p",
            r#"{"spec":{"size":9}}"#,
        ],
    );
    c.kubectl_as_ok(user, &["create", "namespace", &ns2]);
    c.apply_as(user, &configmap(&ns2, "inner", "x"));
    c.apply_as(user, GADGET_CRD);
    c.wait_established("gadgets.example.com");
    c.apply_as(user,
        &format!(
            "apiVersion: example.com/v1\nkind: Gadget\nmetadata: {{name: g1, namespace: {ns}}}\nspec: {{on: true}}\n"
        ),
    );
    c.kubectl_as_ok(
        user,
        &["-n", &ns, "scale", "deployment", "api", "--replicas=5"],
    );
    complete(&api, &token, &id).await;
    let after = snapshot_all(c);
    assert_ne!(before, after);

    let (status, detail) = api
        .call("GET", &format!("/api/v1/actions/{id}"), Some(&token), None)
        .await;
    assert_eq!(status, 200, "{detail}");
    assert_eq!(detail["changeCount"], 12, "{detail:#}");

    let report = api
        .ok("POST", &format!("/api/v1/actions/{id}/rollback"), &token)
        .await;
    assert_eq!(report["state"], "rolled-back", "{report:#}");
    assert_eq!(report["trigger"], "request");
    assert_eq!(report["dryRun"], false);
    let rollback_id = report["rollbackAction"].as_str().unwrap().to_string();
    assert_eq!(rollback_id, format!("{id}-rollback-1"));
    assert!(
        report["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["outcome"] == "restored"),
        "{report:#}"
    );
    // The namespace the action created is being deleted; finish what the
    // namespace controller would do.
    finalize_namespace(c, &ns2);
    assert_eq!(snapshot_all(c), before, "rolled back to the prior state");
    assert!(c.get_json(&["-n", &ns, "gadget", "g1"]).is_none());

    // Redo: rolling back the rollback restores the post-action state.
    let redo = api
        .ok(
            "POST",
            &format!("/api/v1/actions/{rollback_id}/rollback"),
            &token,
        )
        .await;
    assert_eq!(redo["state"], "rolled-back", "{redo:#}");
    let mut redone = snapshot_all(c);
    let mut expected = after.clone();
    // A recreated Service gets a new clusterIP, removed by content(); the
    // scale lives in the Deployment's replicas, compared as content.
    assert_eq!(redone.len(), expected.len());
    redone
        .iter_mut()
        .zip(expected.iter_mut())
        .for_each(|(r, e)| {
            if let (Some(r), Some(e)) = (r, e) {
                r.as_object_mut().unwrap().remove("status");
                e.as_object_mut().unwrap().remove("status");
            }
        });
    assert_eq!(redone, expected, "redo restores the post-action state");

    // The records show the history.
    let (_, detail) = api
        .call("GET", &format!("/api/v1/actions/{id}"), Some(&token), None)
        .await;
    assert_eq!(detail["state"], "rolled-back");
    assert_eq!(detail["rollbackReports"].as_array().unwrap().len(), 1);
    let (_, rb) = api
        .call(
            "GET",
            &format!("/api/v1/actions/{rollback_id}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(rb["origin"], "rollback");
    assert_eq!(rb["rollbackOf"], id.as_str());
    assert_eq!(rb["owner"], user);

    // Undo again after the redo: what the redo made again (new uids) is the
    // action's own, not someone else's later change (no 409).
    let again = api
        .ok("POST", &format!("/api/v1/actions/{id}/rollback"), &token)
        .await;
    assert_eq!(again["state"], "rolled-back", "{again:#}");
    finalize_namespace(c, &ns2);
    assert_eq!(
        snapshot_all(c),
        before,
        "rolled back again to the prior state"
    );

    // And redo again through the same rollback: what the second undo made
    // again (the deleted Service and ConfigMap, new uids) is what the first
    // rollback made, not someone else's later change (no 409).
    let (status, again) = api
        .call(
            "POST",
            &format!("/api/v1/actions/{rollback_id}/rollback"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, 200, "{again:#}");
    assert_eq!(again["state"], "rolled-back", "{again:#}");
    let mut redone_again = snapshot_all(c);
    redone_again.iter_mut().flatten().for_each(|r| {
        r.as_object_mut().unwrap().remove("status");
    });
    assert_eq!(
        redone_again, expected,
        "redone again to the post-action state"
    );
}

/// An action of one ConfigMap change, attributed by annotation.
fn annotated_change(c: &Cluster, ns: &str, name: &str, action: &str) {
    c.kubectl_ok(&[
        "-n",
        ns,
        "create",
        "configmap",
        name,
        "--from-literal=v=before",
    ]);
    c.apply_as("admin", &format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}, namespace: {ns}, annotations: {{snapback.io/action: {action}}}}}\ndata: {{v: after}}\n"));
}

fn value_of(c: &Cluster, ns: &str, name: &str) -> String {
    c.kubectl_ok(&[
        "-n",
        ns,
        "get",
        "configmap",
        name,
        "-o",
        "jsonpath={.data.v}",
    ])
}

#[tokio::test(flavor = "multi_thread")]
async fn a_later_change_by_someone_else_is_a_named_conflict_unless_forced() {
    let c = cluster();
    let sb = shared_snapback();
    let api = sb.api(c);
    let admin = c.token("admin");
    let ns = c.namespace("conflict", &[]);
    let id = format!("conf-{:06x}", rand::random::<u32>() & 0xffffff);
    annotated_change(c, &ns, "cm", &id);
    c.kubectl_ok(&[
        "-n",
        &ns,
        "create",
        "configmap",
        "other",
        "--from-literal=v=1",
    ]);
    // Someone else changes it afterwards (outside the action).
    c.kubectl_as_ok(
        "admin",
        &[
            "-n",
            &ns,
            "patch",
            "configmap",
            "cm",
            "-p",
            r#"{"data":{"v":"someone else"}}"#,
        ],
    );

    let (status, body) = api
        .call(
            "POST",
            &format!("/api/v1/actions/{id}/rollback"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, 409, "{body}");
    let msg = error_message(&body);
    assert!(
        msg.contains(&format!("configmaps/cm in namespace {ns}")),
        "{msg}"
    );
    assert_eq!(
        body["error"]["objects"][0],
        format!("configmaps/cm in namespace {ns}")
    );
    assert_eq!(
        value_of(c, &ns, "cm"),
        "someone else",
        "nothing was changed"
    );

    let body = api
        .ok(
            "POST",
            &format!("/api/v1/actions/{id}/rollback?force=true"),
            &admin,
        )
        .await;
    assert_eq!(body["results"][0]["outcome"], "restored");
    assert_eq!(value_of(c, &ns, "cm"), "before");
}

#[tokio::test(flavor = "multi_thread")]
async fn dry_run_changes_nothing_and_a_second_rollback_reports_unchanged() {
    let c = cluster();
    let sb = shared_snapback();
    let api = sb.api(c);
    let admin = c.token("admin");
    let ns = c.namespace("dryrun", &[]);
    let id = format!("dry-{:06x}", rand::random::<u32>() & 0xffffff);
    annotated_change(c, &ns, "cm", &id);

    let plan = api
        .ok(
            "POST",
            &format!("/api/v1/actions/{id}/rollback?dryRun=true"),
            &admin,
        )
        .await;
    assert_eq!(plan["dryRun"], true);
    assert!(plan["rollbackAction"].is_null());
    let r = &plan["results"][0];
    assert_eq!(
        (r["operation"].as_str(), r["outcome"].as_str()),
        (Some("replace"), Some("planned"))
    );
    // kubectl apply added its last-applied annotation: the plan takes it away too.
    assert_eq!(
        r["patch"],
        json!([{"op": "replace", "path": "/data/v", "value": "before"}, {"op": "remove", "path": "/metadata/annotations"}])
    );
    assert_eq!(value_of(c, &ns, "cm"), "after", "dry run changed nothing");
    let (_, detail) = api
        .call("GET", &format!("/api/v1/actions/{id}"), Some(&admin), None)
        .await;
    assert_eq!(detail["rollbacks"], 0);

    let (_, first) = api
        .call(
            "POST",
            &format!("/api/v1/actions/{id}/rollback"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(first["results"][0]["outcome"], "restored", "{first}");
    assert_eq!(value_of(c, &ns, "cm"), "before");
    let second = api
        .ok("POST", &format!("/api/v1/actions/{id}/rollback"), &admin)
        .await;
    assert_eq!(second["results"][0]["outcome"], "unchanged", "{second}");
    assert_eq!(second["state"], "rolled-back");
    // Every outcome is counted, 0 where no object had it.
    assert_eq!(
        second["counts"],
        json!({"restored": 0, "unchanged": 1, "planned": 0, "conflict": 0, "failed": 0, "skipped": 0})
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn actions_older_than_the_window_need_force() {
    let c = cluster();
    let id = format!("win{:06x}", rand::random::<u32>() & 0xffffff);
    let mut opts = SnapbackOpts::isolated(c, &id);
    opts.extra_args = vec!["--rollback-window=2s".into()];
    let sb = Snapback::start(c, opts);
    let api = sb.api(c);
    let admin = c.token("admin");
    let ns = c.namespace("window", &[]);
    sb.adopt_namespace(c, &ns);
    annotated_change(c, &ns, "cm", "old-one");
    // Opened and never used: nothing to restore, so never too old to cancel.
    api.open_action(&admin, "empty-one").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let cancelled = api
        .ok("POST", "/api/v1/actions/empty-one/cancel", &admin)
        .await;
    assert_eq!(cancelled["state"], "cancelled", "{cancelled}");
    let (status, body) = api
        .call(
            "POST",
            "/api/v1/actions/old-one/rollback",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(error_message(&body).contains("rollback window"), "{body}");
    assert_eq!(value_of(c, &ns, "cm"), "after");
    api.ok(
        "POST",
        "/api/v1/actions/old-one/rollback?force=true",
        &admin,
    )
    .await;
    assert_eq!(value_of(c, &ns, "cm"), "before");
    sb.unregister(c);
}

/// An action touching a ConfigMap in `locked` (restored first: lower rank)
/// and a Service and a Deployment in `open`; alice may write only in `open`.
async fn mixed_permission_action(c: &Cluster, api: &ApiClient) -> (String, String, String) {
    // A user of its own: an explicit action collects all of its owner's changes.
    let owner = "user4";
    c.grant_api(owner);
    c.grant_cluster_edit(owner);
    let admin = c.token(owner);
    let open_ns = c.namespace("policy-open", &["alice"]);
    let locked_ns = c.namespace("policy-locked", &[]);
    let id = format!("pol-{:06x}", rand::random::<u32>() & 0xffffff);
    c.kubectl_ok(&[
        "-n",
        &locked_ns,
        "create",
        "configmap",
        "cm",
        "--from-literal=v=before",
    ]);
    c.apply_as("admin", &service(&open_ns, "svc", 80));
    c.apply_as("admin", &deployment(&open_ns, "dep", "nginx:1.25", 1));
    api.open_action(&admin, &id).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    c.kubectl_as_ok(
        owner,
        &[
            "-n",
            &locked_ns,
            "patch",
            "configmap",
            "cm",
            "-p",
            r#"{"data":{"v":"after"}}"#,
        ],
    );
    c.kubectl_as_ok(
        owner,
        &[
            "-n",
            &open_ns,
            "patch",
            "service",
            "svc",
            "-p",
            r#"{"metadata":{"labels":{"changed":"yes"}}}"#,
        ],
    );
    c.kubectl_as_ok(
        owner,
        &[
            "-n",
            &open_ns,
            "patch",
            "deployment",
            "dep",
            "-p",
            r#"{"metadata":{"labels":{"changed":"yes"}}}"#,
        ],
    );
    complete(api, &admin, &id).await;
    (id, open_ns, locked_ns)
}

fn outcome_of<'a>(report: &'a Value, resource: &str) -> &'a str {
    report["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["resource"] == resource)
        .and_then(|r| r["outcome"].as_str())
        .unwrap_or_else(|| panic!("no {resource} in {report}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn failure_policies_abort_continue_and_retry() {
    let c = cluster();
    let sb = shared_snapback();
    let api = sb.api(c);
    c.grant_api("alice");
    let alice = c.token("alice");
    let labelled = |c: &Cluster, ns: &str, kind: &str, name: &str| {
        c.kubectl_ok(&[
            "-n",
            ns,
            "get",
            kind,
            name,
            "-o",
            "jsonpath={.metadata.labels.changed}",
        ])
    };

    // abort: the forbidden ConfigMap fails first; nothing after it is attempted.
    let (id, open_ns, locked_ns) = mixed_permission_action(c, &api).await;
    let report = api
        .ok(
            "POST",
            &format!("/api/v1/actions/{id}/rollback?failurePolicy=abort"),
            &alice,
        )
        .await;
    assert_eq!(report["state"], "rollback-failed");
    assert_eq!(outcome_of(&report, "configmaps"), "failed");
    let cm = report["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["resource"] == "configmaps")
        .unwrap();
    assert!(
        cm["message"].as_str().unwrap().contains("forbidden"),
        "{cm}"
    );
    assert_eq!(outcome_of(&report, "services"), "skipped");
    assert_eq!(outcome_of(&report, "deployments"), "skipped");
    assert_eq!(
        labelled(c, &open_ns, "service", "svc"),
        "yes",
        "abort left it alone"
    );
    assert_eq!(value_of(c, &locked_ns, "cm"), "after");

    // continue: everything else is restored, the failure reported.
    let (id, open_ns, locked_ns) = mixed_permission_action(c, &api).await;
    let (_, report) = api
        .call(
            "POST",
            &format!("/api/v1/actions/{id}/rollback?failurePolicy=continue"),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(report["state"], "rollback-failed", "{report}");
    assert_eq!(outcome_of(&report, "configmaps"), "failed");
    assert_eq!(outcome_of(&report, "services"), "restored");
    assert_eq!(outcome_of(&report, "deployments"), "restored");
    assert_eq!(labelled(c, &open_ns, "service", "svc"), "");
    assert_eq!(value_of(c, &locked_ns, "cm"), "after");

    // retry: the failure is retried, then the rollback aborts.
    let (id, open_ns, _) = mixed_permission_action(c, &api).await;
    let started = Instant::now();
    let (_, report) = api
        .call(
            "POST",
            &format!("/api/v1/actions/{id}/rollback?failurePolicy=retry"),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(report["state"], "rollback-failed", "{report}");
    let cm = report["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["resource"] == "configmaps")
        .unwrap();
    assert_eq!(cm["outcome"], "failed");
    assert!(
        cm["message"].as_str().unwrap().contains("after 4 attempts"),
        "{cm}"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(200 + 400 + 800),
        "backoff between attempts"
    );
    assert_eq!(outcome_of(&report, "services"), "skipped");
    assert_eq!(labelled(c, &open_ns, "service", "svc"), "yes");
}

#[tokio::test(flavor = "multi_thread")]
async fn nobody_undoes_what_they_could_not_have_done() {
    let c = cluster();
    let sb = shared_snapback();
    let api = sb.api(c);
    c.grant_api("alice");
    c.grant_api("bob");
    let (alice, bob) = (c.token("alice"), c.token("bob"));
    let ns = c.namespace("identity", &["alice"]);
    let id = format!("alice-{:06x}", rand::random::<u32>() & 0xffffff);
    c.kubectl_as_ok(
        "alice",
        &[
            "-n",
            &ns,
            "create",
            "configmap",
            "cm",
            "--from-literal=v=before",
        ],
    );
    c.apply_as("alice", &format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cm, namespace: {ns}, annotations: {{snapback.io/action: {id}}}}}\ndata: {{v: after}}\n"));

    // bob may use the API but may not even read alice's namespace: 403,
    // dry run or not, and nothing is written or recorded (the action stays
    // as it was, no rollback action is made).
    for query in ["?dryRun=true", ""] {
        let (status, body) = api
            .call(
                "POST",
                &format!("/api/v1/actions/{id}/rollback{query}"),
                Some(&bob),
                None,
            )
            .await;
        assert_eq!(status, 403, "{body}");
        assert_eq!(body["error"]["code"], "Forbidden", "{body}");
        assert!(error_message(&body).contains("bob"), "{body}");
        assert!(
            body["error"]["objects"][0]
                .as_str()
                .unwrap()
                .starts_with(&format!("configmaps/cm in namespace {ns}")),
            "{body}"
        );
    }
    let (_, detail) = api
        .call("GET", &format!("/api/v1/actions/{id}"), Some(&alice), None)
        .await;
    assert_eq!(detail["rollbacks"], 0, "{detail:#}");
    assert_ne!(detail["state"], "rollback-failed", "{detail:#}");
    assert_eq!(value_of(c, &ns, "cm"), "after");
    // user5 has no right on the API at all.
    let (status, body) = api
        .call(
            "POST",
            &format!("/api/v1/actions/{id}/rollback"),
            Some(&c.token("user5")),
            None,
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(error_message(&body).contains("user5"));
    // No token, or a wrong one.
    let (status, body) = api
        .call(
            "POST",
            &format!("/api/v1/actions/{id}/rollback"),
            None,
            None,
        )
        .await;
    assert_eq!(status, 401, "{body}");
    error_message(&body);
    let (status, _) = api
        .call("GET", "/api/v1/actions", Some("not-a-token"), None)
        .await;
    assert_eq!(status, 401);
    assert_eq!(value_of(c, &ns, "cm"), "after");

    // alice can, and the write is recorded as hers, made through snapback's impersonation.
    let report = api
        .ok("POST", &format!("/api/v1/actions/{id}/rollback"), &alice)
        .await;
    assert_eq!(report["results"][0]["outcome"], "restored", "{report}");
    assert_eq!(value_of(c, &ns, "cm"), "before");
    let audit = std::fs::read_to_string(&c.audit_log).unwrap();
    let write = audit
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| {
            e["verb"] == "update"
                && e["objectRef"]["namespace"] == ns.as_str()
                && e["objectRef"]["name"] == "cm"
        })
        .find(|e| e["impersonatedUser"]["username"] == "alice")
        .expect("an impersonated update in the audit log");
    assert_eq!(write["user"]["username"], "snapback");
    // bob's refused attempt recorded nothing: alice's is rollback 1.
    assert_eq!(report["rollbackAction"], format!("{id}-rollback-1"));
    assert_eq!(
        write["impersonatedUser"]["extra"]["snapback.io/action"][0],
        format!("{id}-rollback-1")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_closes_an_open_action_and_rolls_it_back() {
    let c = cluster();
    let sb = shared_snapback();
    let api = sb.api(c);
    let user = "user1";
    c.grant_api(user);
    let token = c.token(user);
    let ns = c.namespace("cancel", &[user]);
    c.kubectl_ok(&[
        "-n",
        &ns,
        "create",
        "configmap",
        "cm",
        "--from-literal=v=before",
    ]);
    let id = format!("cxl-{:06x}", rand::random::<u32>() & 0xffffff);
    open_action(&api, &token, &id).await;
    c.kubectl_as_ok(
        user,
        &[
            "-n",
            &ns,
            "patch",
            "configmap",
            "cm",
            "-p",
            r#"{"data":{"v":"after"}}"#,
        ],
    );
    c.kubectl_as_ok(
        user,
        &[
            "-n",
            &ns,
            "create",
            "configmap",
            "extra",
            "--from-literal=v=1",
        ],
    );
    c.kubectl_as_ok(user, &["-n", &ns, "delete", "configmap", "cm"]);

    let report = api
        .ok("POST", &format!("/api/v1/actions/{id}/cancel"), &token)
        .await;
    assert_eq!(report["trigger"], "cancel");
    assert_eq!(report["state"], "cancelled", "{report}");
    assert_eq!(value_of(c, &ns, "cm"), "before");
    assert!(
        !c.kubectl("admin", &["-n", &ns, "get", "configmap", "extra"])
            .status
            .success()
    );
    let (_, detail) = api
        .call("GET", &format!("/api/v1/actions/{id}"), Some(&token), None)
        .await;
    assert_eq!(detail["state"], "cancelled");
    // Only an open action can be cancelled.
    let (status, body) = api
        .call(
            "POST",
            &format!("/api/v1/actions/{id}/cancel"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, 409, "{body}");
    // A rollback of it afterwards finds everything restored: still cancelled.
    let again = api
        .ok("POST", &format!("/api/v1/actions/{id}/rollback"), &token)
        .await;
    assert_eq!(again["state"], "cancelled", "{again}");
    let (_, detail) = api
        .call("GET", &format!("/api/v1/actions/{id}"), Some(&token), None)
        .await;
    assert_eq!(detail["state"], "cancelled", "{detail}");
    // The user's next change is no longer in the cancelled action.
    c.kubectl_as_ok(
        user,
        &[
            "-n",
            &ns,
            "create",
            "configmap",
            "later",
            "--from-literal=v=1",
        ],
    );
    let (_, detail) = api
        .call("GET", &format!("/api/v1/actions/{id}"), Some(&token), None)
        .await;
    assert_eq!(detail["changeCount"], 3);
    assert_eq!(detail["changes"].as_array().map(Vec::len), Some(3));
}

async fn create_many(c: &Cluster, ns: &str, names: Vec<String>, action: &str) {
    let client = c.client("admin").await;
    let cms: kube::Api<k8s_openapi::api::core::v1::ConfigMap> = kube::Api::namespaced(client, ns);
    let action = action.to_string();
    futures::stream::iter(names)
        .map(|name| {
            let (cms, action) = (cms.clone(), action.clone());
            async move {
                let mut ann = std::collections::BTreeMap::new();
                if !action.is_empty() {
                    ann.insert("snapback.io/action".to_string(), action);
                }
                let cm: k8s_openapi::api::core::v1::ConfigMap = serde_json::from_value(json!({
                    "metadata": {"name": name, "annotations": ann}, "data": {"v": "before"}
                }))
                .unwrap();
                cms.create(&Default::default(), &cm).await.unwrap();
            }
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
}

async fn patch_many(c: &Cluster, ns: &str, names: Vec<String>, action: &str) {
    let client = c.client("admin").await;
    let cms: kube::Api<k8s_openapi::api::core::v1::ConfigMap> = kube::Api::namespaced(client, ns);
    let action = action.to_string();
    futures::stream::iter(names)
        .map(|name| {
            let (cms, action) = (cms.clone(), action.clone());
            async move {
                let patch = json!({"metadata": {"annotations": {"snapback.io/action": action}}, "data": {"v": "after"}});
                cms.patch(&name, &Default::default(), &kube::api::Patch::Merge(&patch)).await.unwrap();
            }
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
}

async fn delete_many(c: &Cluster, ns: &str, names: Vec<String>) {
    let client = c.client("user2").await;
    let cms: kube::Api<k8s_openapi::api::core::v1::ConfigMap> = kube::Api::namespaced(client, ns);
    futures::stream::iter(names)
        .map(|name| {
            let cms = cms.clone();
            async move {
                cms.delete(&name, &Default::default()).await.unwrap();
            }
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
}

use futures::StreamExt;

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_object_action_rolls_back_correctly() {
    let c = cluster();
    let sb = shared_snapback();
    let api = sb.api(c);
    let user = "user2";
    c.grant_api(user);
    let token = c.token(user);
    let ns = c.namespace("thousand", &[user]);
    let names = |p: &str, n: usize| (0..n).map(|i| format!("{p}-{i:04}")).collect::<Vec<_>>();
    create_many(c, &ns, names("upd", 400), "").await;
    create_many(c, &ns, names("del", 300), "").await;
    // One explicit action of user2: 400 updates, 300 creates and 300 deletes.
    let id = format!("k-{:06x}", rand::random::<u32>() & 0xffffff);
    open_action(&api, &token, &id).await;
    let client = c.client(user).await;
    let cms: kube::Api<k8s_openapi::api::core::v1::ConfigMap> = kube::Api::namespaced(client, &ns);
    futures::stream::iter(names("upd", 400))
        .map(|n| {
            let cms = cms.clone();
            async move {
                let patch = json!({"data": {"v": "after"}});
                cms.patch(&n, &Default::default(), &kube::api::Patch::Merge(&patch))
                    .await
                    .unwrap();
            }
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
    futures::stream::iter(names("new", 300))
        .map(|n| {
            let cms = cms.clone();
            async move {
                let cm =
                    serde_json::from_value(json!({"metadata": {"name": n}, "data": {"v": "new"}}))
                        .unwrap();
                cms.create(&Default::default(), &cm).await.unwrap();
            }
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
    delete_many(c, &ns, names("del", 300)).await;
    complete(&api, &token, &id).await;

    let report = api
        .ok("POST", &format!("/api/v1/actions/{id}/rollback"), &token)
        .await;
    assert_eq!(report["state"], "rolled-back", "{}", report["counts"]);
    assert_eq!(nonzero(&report["counts"]), json!({"restored": 1000}));
    let list: Value =
        serde_json::from_str(&c.kubectl_ok(&["-n", &ns, "get", "configmaps", "-o", "json"]))
            .unwrap();
    let items = list["items"].as_array().unwrap();
    let names_now: std::collections::BTreeSet<&str> = items
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names_now.len(), 700);
    assert!(
        names_now
            .iter()
            .all(|n| n.starts_with("upd-") || n.starts_with("del-"))
    );
    assert!(items.iter().all(|i| i["data"]["v"] == "before"));
}

/// Wait until the action is rolling back with at least `done` objects in
/// its recorded progress.
async fn wait_for_progress(
    store: &snapback::store::kube_store::KubeStore,
    id: &snapback::store::model::ActionId,
    done: usize,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (rec, _) = store.get_action(id).await.unwrap().unwrap();
        let recorded = rec
            .extensions
            .get("rollback")
            .and_then(|p| p["results"].as_array())
            .map_or(0, Vec::len);
        if rec.state.as_str() == "rolling-back" && recorded >= done {
            return;
        }
        assert!(
            rec.state.as_str() != "rolled-back",
            "the rollback finished before it could be interrupted"
        );
        assert!(Instant::now() < deadline, "no progress recorded");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Wait until a restarted snapback has finished the interrupted rollback.
async fn wait_until_resumed(
    store: &snapback::store::kube_store::KubeStore,
    id: &snapback::store::model::ActionId,
    sb: &Snapback,
) -> snapback::store::actions::ActionRecord {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (rec, _) = store.get_action(id).await.unwrap().unwrap();
        if rec.state.as_str() != "rolling-back" {
            return rec;
        }
        assert!(
            Instant::now() < deadline,
            "the rollback was not resumed; log:\n{}",
            sb.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// SIGTERM (a pod being stopped) in the middle of a rollback: the rollback
/// stops after the objects in flight, fails none of them, and the next
/// snapshotter finishes it (SPEC §4 resumable, §7 graceful shutdown).
#[tokio::test(flavor = "multi_thread")]
async fn a_rollback_interrupted_by_sigterm_fails_nothing_and_is_finished_after_restart() {
    let c = cluster();
    let tag = format!("term{:06x}", rand::random::<u32>() & 0xffffff);
    let opts = SnapbackOpts::isolated(c, &tag);
    let mut sb = Snapback::start(c, opts.clone());
    let admin = c.token("admin");
    let ns = c.namespace("term", &[]);
    sb.adopt_namespace(c, &ns);
    let names: Vec<String> = (0..400).map(|i| format!("cm-{i:03}")).collect();
    create_many(c, &ns, names.clone(), "").await;
    patch_many(c, &ns, names.clone(), "big").await;
    let rollback = {
        let api = sb.api(c);
        let admin = admin.clone();
        tokio::spawn(async move {
            api.call("POST", "/api/v1/actions/big/rollback", Some(&admin), None)
                .await
        })
    };
    let store = sb.store(c).await;
    let id = snapback::store::model::ActionId::parse("big").unwrap();
    wait_for_progress(&store, &id, 50).await;
    sb.terminate();
    let (status, body) = rollback.await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(error_message(&body).contains("resumed"), "{body}");
    let (rec, _) = store.get_action(&id).await.unwrap().unwrap();
    assert_eq!(
        rec.state.as_str(),
        "rolling-back",
        "left for the next snapshotter"
    );
    let results = rec.extensions["rollback"]["results"].as_array().unwrap();
    assert!(
        results.iter().all(|r| r["outcome"] == "restored"),
        "nothing failed or was skipped: {results:?}"
    );

    let sb2 = Snapback::start(c, opts);
    let rec = wait_until_resumed(&store, &id, &sb2).await;
    assert_eq!(rec.state.as_str(), "rolled-back");
    let report = rec.rollbacks.last().unwrap();
    assert_eq!(
        nonzero(&report["counts"]),
        json!({"restored": 400}),
        "{report}"
    );
    assert!(names.iter().all(|n| value_of(c, &ns, n) == "before"));
    sb2.unregister(c);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_snapshotter_finishes_the_rollback_after_restart_and_concurrent_requests_get_409()
{
    let c = cluster();
    let tag = format!("kill{:06x}", rand::random::<u32>() & 0xffffff);
    let opts = SnapbackOpts::isolated(c, &tag);
    let mut sb = Snapback::start(c, opts.clone());
    let admin = c.token("admin");
    let ns = c.namespace("kill", &[]);
    sb.adopt_namespace(c, &ns);
    let names: Vec<String> = (0..500).map(|i| format!("cm-{i:03}")).collect();
    create_many(c, &ns, names.clone(), "").await;
    patch_many(c, &ns, names.clone(), "big").await;

    let api = sb.api(c);
    let rollback = {
        let api = sb.api(c);
        let admin = admin.clone();
        tokio::spawn(async move {
            api.try_call("POST", "/api/v1/actions/big/rollback", &admin)
                .await
        })
    };
    // Wait until the rollback has recorded progress, then check single flight and kill it.
    let store = sb.store(c).await;
    let id = snapback::store::model::ActionId::parse("big").unwrap();
    wait_for_progress(&store, &id, 50).await;
    let (status, body) = api
        .call("POST", "/api/v1/actions/big/rollback", Some(&admin), None)
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(error_message(&body).contains("already running"));
    sb.kill();
    let _ = rollback.await; // the client sees the connection drop
    let (rec, _) = store.get_action(&id).await.unwrap().unwrap();
    assert_eq!(rec.state.as_str(), "rolling-back", "interrupted mid-way");
    let restored_before_kill = names
        .iter()
        .filter(|n| value_of(c, &ns, n) == "before")
        .count();
    assert!(restored_before_kill < 500, "interrupted before the end");

    // Restart: the new process finds the stale rollback and finishes it.
    let sb2 = Snapback::start(c, opts);
    let rec = wait_until_resumed(&store, &id, &sb2).await;
    assert_eq!(rec.state.as_str(), "rolled-back");
    let report = rec.rollbacks.last().unwrap();
    assert_eq!(
        nonzero(&report["counts"]),
        json!({"restored": 500}),
        "{report}"
    );
    let list: Value =
        serde_json::from_str(&c.kubectl_ok(&["-n", &ns, "get", "configmaps", "-o", "json"]))
            .unwrap();
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 500);
    assert!(items.iter().all(|i| i["data"]["v"] == "before"));
    sb2.unregister(c);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_status_code_comes_with_the_json_error_body() {
    let c = cluster();
    let sb = shared_snapback();
    let api = sb.api(c);
    let user = "user3";
    c.grant_api(user);
    let token = c.token(user);
    let t = Some(token.as_str());

    // 200, 201, 204
    let (s, list) = api.call("GET", "/api/v1/actions?limit=5", t, None).await;
    assert_eq!(s, 200, "{list}");
    assert!(list["actions"].is_array());
    let id = format!("codes-{:06x}", rand::random::<u32>() & 0xffffff);
    let (s, _) = api
        .call(
            "POST",
            "/api/v1/actions",
            t,
            Some(&json!({"id": id}).to_string()),
        )
        .await;
    assert_eq!(s, 201);
    // 409: one open action per user; completing twice.
    let (s, b) = api.call("POST", "/api/v1/actions", t, Some("{}")).await;
    assert_eq!(s, 409, "{b}");
    assert!(error_message(&b).contains(&id));
    let (s, _) = api
        .call("POST", &format!("/api/v1/actions/{id}/complete"), t, None)
        .await;
    assert_eq!(s, 200);
    let (s, b) = api
        .call("POST", &format!("/api/v1/actions/{id}/complete"), t, None)
        .await;
    assert_eq!(s, 409, "{b}");
    error_message(&b);
    let (s, b) = api
        .call(
            "POST",
            "/api/v1/actions",
            t,
            Some(&json!({"id": id}).to_string()),
        )
        .await;
    assert_eq!(s, 409, "id taken: {b}");
    // 400s
    for (method, path, body) in [
        ("GET", "/api/v1/actions?state=bogus", None),
        ("GET", "/api/v1/actions?limit=0", None),
        ("GET", "/api/v1/actions?since=yesterday", None),
        (
            "POST",
            &*format!("/api/v1/actions/{id}/rollback?failurePolicy=sometimes"),
            None,
        ),
        (
            "POST",
            &*format!("/api/v1/actions/{id}/rollback?dryRun=perhaps"),
            None,
        ),
        // A misspelt flag is refused, not ignored (it would run a real rollback).
        (
            "POST",
            &*format!("/api/v1/actions/{id}/rollback?dryrun=true"),
            None,
        ),
        ("GET", "/api/v1/actions?owner=alice", None),
        ("GET", "/api/v1/actions/not%20valid", None),
        ("POST", "/api/v1/actions", Some("this is not json")),
        ("POST", "/api/v1/actions", Some(r#"{"id": "bad id!"}"#)),
        ("POST", "/api/v1/actions", Some(r#"{"id": 42}"#)),
    ] {
        let (s, b) = api.call(method, path, t, body).await;
        assert_eq!(s, 400, "{method} {path}: {b}");
        error_message(&b);
    }
    // The URL template of SPEC §5 with nothing filled in lists everything.
    let (s, b) = api
        .call(
            "GET",
            "/api/v1/actions?user=&namespace=&state=&since=&limit=",
            t,
            None,
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert!(
        b["actions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["id"] == id.as_str()),
        "{b}"
    );
    // 404s: unknown action on every endpoint, unknown route.
    for (method, path) in [
        ("GET", "/api/v1/actions/nope"),
        ("GET", "/api/v1/actions/nope/diff"),
        ("GET", "/api/v1/actions/nope/manifests"),
        ("POST", "/api/v1/actions/nope/complete"),
        ("POST", "/api/v1/actions/nope/rollback"),
        ("POST", "/api/v1/actions/nope/cancel"),
        ("DELETE", "/api/v1/actions/nope"),
        ("GET", "/api/v2/whatever"),
    ] {
        let (s, b) = api.call(method, path, t, None).await;
        assert_eq!(s, 404, "{method} {path}: {b}");
        error_message(&b);
    }
    // 413
    let big = json!({"description": "x".repeat(80 * 1024)}).to_string();
    let (s, b) = api.call("POST", "/api/v1/actions", t, Some(&big)).await;
    assert_eq!(s, 413, "{b}");
    error_message(&b);
    // 405
    let (s, b) = api.call("PUT", "/api/v1/actions", t, None).await;
    assert_eq!(s, 405, "{b}");
    error_message(&b);
    // 204 and then 404
    let (s, _) = api
        .call("DELETE", &format!("/api/v1/actions/{id}"), t, None)
        .await;
    assert_eq!(s, 204);
    let (s, _) = api
        .call("GET", &format!("/api/v1/actions/{id}"), t, None)
        .await;
    assert_eq!(s, 404);
    // probes and the description need no token
    for path in ["/healthz", "/readyz", "/openapi.json"] {
        let (s, _) = api.call("GET", path, None, None).await;
        assert_eq!(s, 200, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn diff_and_manifests_show_the_prior_state() {
    let c = cluster();
    let sb = shared_snapback();
    let api = sb.api(c);
    let admin = c.token("admin");
    let ns = c.namespace("diff", &[]);
    let id = format!("diff-{:06x}", rand::random::<u32>() & 0xffffff);
    annotated_change(c, &ns, "cm", &id);
    let diff = api
        .ok("GET", &format!("/api/v1/actions/{id}/diff"), &admin)
        .await;
    let cm = diff["objects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "cm")
        .unwrap();
    assert_eq!(cm["change"], "modified");
    let text = cm["diff"].as_str().unwrap();
    assert!(
        text.contains("-  v: before") && text.contains("+  v: after"),
        "{text}"
    );
    assert_eq!(
        cm["patch"][0],
        json!({"op": "replace", "path": "/data/v", "value": "before"})
    );

    let resp = reqwest_text(&api, &format!("/api/v1/actions/{id}/manifests"), &admin).await;
    let docs: Vec<Value> = resp
        .split("\n---\n")
        .filter_map(|d| serde_yaml::from_str::<Value>(d).ok())
        .filter(|d| d.is_object())
        .collect();
    let cm = docs
        .iter()
        .find(|d| d["metadata"]["name"] == "cm")
        .expect("the ConfigMap manifest");
    assert_eq!(cm["data"]["v"], "before");
    assert!(cm["metadata"].get("uid").is_none() && cm["metadata"].get("resourceVersion").is_none());
    // The manifests apply cleanly with kubectl.
    let out = c.kubectl_stdin("admin", &["apply", "--dry-run=server", "-f", "-"], &resp);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn manifests_hold_one_object_per_document_and_name_the_rest() {
    use serde::Deserialize;
    let c = cluster();
    let sb = shared_snapback();
    let api = sb.api(c);
    let user = "user8";
    c.grant_api(user);
    let token = c.token(user);
    let ns = c.namespace("manifests", &[user]);
    c.kubectl_ok(&[
        "-n",
        &ns,
        "create",
        "configmap",
        "old",
        "--from-literal=v=before",
    ]);
    c.kubectl_ok(&[
        "-n",
        &ns,
        "create",
        "deployment",
        "web",
        "--image=nginx:1.25",
        "--replicas=2",
    ]);
    let id = format!("manifests-{:06x}", rand::random::<u32>() & 0xffffff);
    api.open_action(&token, &id).await;
    c.kubectl_as_ok(
        user,
        &[
            "-n",
            &ns,
            "patch",
            "configmap",
            "old",
            "-p",
            r#"{"data":{"v":"after"}}"#,
        ],
    );
    c.kubectl_as_ok(
        user,
        &[
            "-n",
            &ns,
            "create",
            "configmap",
            "new",
            "--from-literal=v=1",
        ],
    );
    c.kubectl_as_ok(
        user,
        &["-n", &ns, "scale", "deployment", "web", "--replicas=5"],
    );
    api.ok("POST", &format!("/api/v1/actions/{id}/complete"), &token)
        .await;

    let text = reqwest_text(&api, &format!("/api/v1/actions/{id}/manifests"), &token).await;
    // Every document of the stream is an object: a YAML reader sees no empty ones.
    let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde_yaml::Value::deserialize(d).expect("a YAML document"))
        .collect();
    let docs: Vec<Value> = docs
        .into_iter()
        .map(|d| serde_json::to_value(d).unwrap())
        .collect();
    assert_eq!(docs.len(), 2, "{text}");
    for d in &docs {
        assert!(d["kind"].is_string(), "a document without a kind:\n{text}");
    }
    let find = |kind: &str, name: &str| {
        docs.iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("{kind} {name} in\n{text}"))
    };
    assert_eq!(find("ConfigMap", "old")["data"]["v"], "before");
    // Only its scale changed: its manifest with the replicas it had before.
    assert_eq!(find("Deployment", "web")["spec"]["replicas"], 2, "{text}");
    // What the action created has no prior manifest; a comment names it.
    assert!(
        text.contains(&format!(
            "# configmaps/new in {ns}: did not exist before the action"
        )),
        "{text}"
    );
    let out = c.kubectl_stdin(user, &["apply", "--dry-run=server", "-f", "-"], &text);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn reqwest_text(api: &ApiClient, path: &str, token: &str) -> String {
    let (s, v) = api.call("GET", path, Some(token), None).await;
    assert_eq!(s, 200);
    v.as_str().expect("a text body").to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_immutable_field_fails_clearly_and_recreate_restores_it() {
    let c = cluster();
    let sb = shared_snapback();
    let api = sb.api(c);
    let user = "user6";
    c.grant_api(user);
    let token = c.token(user);
    let ns = c.namespace("immutable", &[user]);
    let svc = |ip: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: db, namespace: {ns}}}\nspec: {{clusterIP: {ip}, selector: {{app: db}}, ports: [{{port: 5432}}]}}\n"
        )
    };
    let ip = |c: &Cluster| {
        c.kubectl_ok(&[
            "-n",
            &ns,
            "get",
            "service",
            "db",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ])
    };
    // Services of tests running alongside get random clusterIPs: an address
    // already taken is tried again with another.
    let mut octet = 0;
    let mut before = String::new();
    for _ in 0..8 {
        octet = 100 + u32::from(rand::random::<u8>() % 50);
        before = format!("10.0.0.{octet}");
        let out = c.kubectl_stdin("admin", &["apply", "-f", "-"], &svc(&before));
        if out.status.success() {
            break;
        }
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("already allocated"), "{err}");
        before.clear();
    }
    assert!(!before.is_empty(), "no free cluster IP for the Service");
    // The action replaces the Service by one with another clusterIP
    // (kubectl replace --force: a delete and a create, both in the action).
    let id = format!("ip-{:06x}", rand::random::<u32>() & 0xffffff);
    api.open_action(&token, &id).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    // Services of tests running alongside get random clusterIPs: an address
    // already taken is tried again with another.
    let mut after = String::new();
    for attempt in 0..5u32 {
        after = format!("10.0.0.{}", octet + 60 + attempt * 7);
        let out = c.kubectl_stdin(user, &["replace", "--force", "-f", "-"], &svc(&after));
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            break;
        }
        assert!(
            stderr.contains("already allocated") && attempt < 4,
            "{stderr}"
        );
    }
    assert_eq!(ip(c), after);
    api.ok("POST", &format!("/api/v1/actions/{id}/complete"), &token)
        .await;

    // The dry run says so first: the API server's own dry run of the
    // replace refuses it (before, the plan said "planned").
    let plan = api
        .ok(
            "POST",
            &format!("/api/v1/actions/{id}/rollback?dryRun=true"),
            &token,
        )
        .await;
    let r = &plan["results"][0];
    assert_eq!(r["outcome"], "failed", "{plan}");
    let msg = r["message"].as_str().unwrap();
    assert!(
        msg.starts_with("would fail")
            && msg.contains("may not change once set")
            && msg.contains("recreate=true"),
        "{msg}"
    );
    let plan = api
        .ok(
            "POST",
            &format!("/api/v1/actions/{id}/rollback?dryRun=true&recreate=true"),
            &token,
        )
        .await;
    assert_eq!(plan["results"][0]["outcome"], "planned", "{plan}");
    assert_eq!(ip(c), after);

    // Without recreate: failed, with the API server's reason, object left alone.
    let report = api
        .ok("POST", &format!("/api/v1/actions/{id}/rollback"), &token)
        .await;
    let r = &report["results"][0];
    assert_eq!(r["outcome"], "failed", "{report}");
    let msg = r["message"].as_str().unwrap();
    assert!(
        msg.contains("may not change once set") && msg.contains("recreate=true"),
        "{msg}"
    );
    assert_eq!(ip(c), after);
    // The retry policy does not retry a refusal of the content itself.
    let report = api
        .ok(
            "POST",
            &format!("/api/v1/actions/{id}/rollback?failurePolicy=retry"),
            &token,
        )
        .await;
    let msg = report["results"][0]["message"].as_str().unwrap();
    assert!(
        msg.contains("may not change once set") && !msg.contains("attempts"),
        "{msg}"
    );
    // With recreate, while someone else holds the prior clusterIP: the
    // create fails, and the Service deleted for it is put back as it was
    // (before, neither version was left).
    c.kubectl_apply_str(&format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: squatter, namespace: {ns}}}\nspec: {{clusterIP: {before}, ports: [{{port: 5432}}]}}\n"
    ));
    let report = api
        .ok(
            "POST",
            &format!("/api/v1/actions/{id}/rollback?recreate=true"),
            &token,
        )
        .await;
    let r = &report["results"][0];
    assert_eq!(r["outcome"], "failed", "{report}");
    assert!(
        r["message"]
            .as_str()
            .unwrap()
            .contains("put back as it was before the rollback"),
        "{report}"
    );
    assert_eq!(ip(c), after);
    c.kubectl_ok(&["-n", &ns, "delete", "service", "squatter"]);
    // With recreate: delete and create, back to the prior clusterIP.
    let report = api
        .ok(
            "POST",
            &format!("/api/v1/actions/{id}/rollback?recreate=true"),
            &token,
        )
        .await;
    assert_eq!(report["results"][0]["outcome"], "restored", "{report}");
    assert!(
        report["results"][0]["message"]
            .as_str()
            .unwrap()
            .contains("recreated"),
        "{report}"
    );
    assert_eq!(ip(c), before);
}

/// Server-side apply: which manager owns which field decides what the next
/// apply removes. A rollback gives a deleted object back its prior field
/// managers, so the owner's next apply of a trimmed manifest prunes as it
/// would have without snapback (a recreated object's fields would all be
/// "snapback"'s). (An updated object's too where the API server sends
/// managedFields in an update's oldObject; 1.20 does not.)
#[tokio::test(flavor = "multi_thread")]
async fn server_side_applied_objects_get_their_field_managers_back() {
    let c = cluster();
    let sb = shared_snapback();
    let api = sb.api(c);
    // A user of its own: an explicit action collects all of its owner's
    // changes (carol has one open in another test).
    let user = "user10";
    c.grant_api(user);
    let token = c.token(user);
    let ns = c.namespace("ssa", &[user]);
    let ssa = |name: &str, data: &str, labels: &str, manager: &str| {
        let yaml = format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}, namespace: {ns}{labels}}}\ndata: {data}\n"
        );
        let out = c.kubectl_stdin(
            user,
            &[
                "apply",
                "--server-side",
                "--force-conflicts",
                &format!("--field-manager={manager}"),
                "-f",
                "-",
            ],
            &yaml,
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let managers = |name: &str| -> Vec<Value> {
        let cm = c
            .get_json(&["-n", &ns, "configmap", name, "--show-managed-fields"])
            .unwrap_or_else(|| panic!("configmap {name} is missing"));
        let mut m: Vec<Value> = cm["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| json!([e["manager"], e["operation"], e["fieldsV1"]]))
            .collect();
        m.sort_by_key(|v| v.to_string());
        m
    };
    ssa(
        "kept",
        r#"{a: "1", b: "2"}"#,
        ", labels: {l: one}",
        "gitops",
    );
    ssa(
        "gone",
        r#"{a: "1", b: "2"}"#,
        ", labels: {l: one}",
        "gitops",
    );
    let gone_before = managers("gone");

    let id = format!("ssa-{:06x}", rand::random::<u32>() & 0xffffff);
    open_action(&api, &token, &id).await;
    ssa("kept", r#"{a: "1", b: "3", c: "4"}"#, "", "someone-else");
    c.kubectl_as_ok(user, &["-n", &ns, "delete", "configmap", "gone"]);
    complete(&api, &token, &id).await;

    let report = api
        .ok("POST", &format!("/api/v1/actions/{id}/rollback"), &token)
        .await;
    assert_eq!(report["state"], "rolled-back", "{report:#}");
    assert_eq!(managers("gone"), gone_before, "{report:#}");
    let kept = c.get_json(&["-n", &ns, "configmap", "kept"]).unwrap();
    assert_eq!(kept["data"], json!({"a": "1", "b": "2"}), "{kept:#}");

    // The owner drops `b` and the label from its manifest: they go.
    ssa("gone", r#"{a: "1"}"#, "", "gitops");
    let cm = c.get_json(&["-n", &ns, "configmap", "gone"]).unwrap();
    assert_eq!(cm["data"], json!({"a": "1"}), "{cm:#}");
    assert!(cm["metadata"].get("labels").is_none(), "{cm:#}");
}

/// SPEC §4's conflicts inside an action: a change by someone else between
/// two of the action's changes is not undone silently with them, and a
/// scale by someone else of what the action scaled is not silently kept.
#[tokio::test(flavor = "multi_thread")]
async fn changes_by_others_during_the_action_or_to_its_scale_are_conflicts() {
    let c = cluster();
    let sb = shared_snapback();
    let api = sb.api(c);
    let admin = c.token("admin");
    let ns = c.namespace("interleave", &["bob"]);
    let suffix = format!("{:06x}", rand::random::<u32>() & 0xffffff);
    let (x, y) = (format!("during-{suffix}"), format!("scaled-{suffix}"));
    c.kubectl_ok(&[
        "-n",
        &ns,
        "create",
        "configmap",
        "cm",
        "--from-literal=v=base",
    ]);
    c.kubectl_ok(&[
        "-n",
        &ns,
        "create",
        "deployment",
        "web",
        "--image=nginx:1.21",
        "--replicas=3",
    ]);
    let patch = |who: &str, kind: &str, action: Option<&str>, body: Value| {
        let mut body = body;
        if let Some(a) = action {
            body["metadata"] = json!({"annotations": {"snapback.io/action": a}});
        }
        c.kubectl_as_ok(
            who,
            &[
                "-n",
                &ns,
                "patch",
                kind,
                if kind == "configmap" { "cm" } else { "web" },
                "-p",
                &body.to_string(),
            ],
        );
    };
    // X: admin, bob in between, admin again.
    patch(
        "admin",
        "configmap",
        Some(&x),
        json!({"data": {"admin1": "x"}}),
    );
    patch(
        "bob",
        "configmap",
        None,
        json!({"data": {"bob": "on-call fix"}}),
    );
    patch(
        "admin",
        "configmap",
        Some(&x),
        json!({"data": {"admin2": "y"}}),
    );
    // Y: admin changes the image and scales 3 → 4; bob scales to 9 since.
    patch(
        "admin",
        "deployment",
        Some(&y),
        json!({"spec": {"template": {"spec": {"containers": [{"name": "nginx", "image": "nginx:1.25"}]}}}}),
    );
    patch(
        "admin",
        "deployment",
        Some(&y),
        json!({"spec": {"replicas": 4}}),
    );
    patch("bob", "deployment", None, json!({"spec": {"replicas": 9}}));

    for (id, why) in [
        (&x, "changed by someone else during the action"),
        (&y, "scaled by someone else since the action scaled it"),
    ] {
        let (status, body) = api
            .call(
                "POST",
                &format!("/api/v1/actions/{id}/rollback"),
                Some(&admin),
                None,
            )
            .await;
        assert_eq!(status, 409, "{body}");
        let named = body["error"]["objects"][0].as_str().unwrap_or_default();
        assert!(named.contains(why), "{body}");
    }
    let cm = c.kubectl_ok(&[
        "-n",
        &ns,
        "get",
        "configmap",
        "cm",
        "-o",
        "jsonpath={.data}",
    ]);
    assert!(cm.contains("on-call fix") && cm.contains("admin2"), "{cm}");
    let replicas = |c: &Cluster| {
        c.kubectl_ok(&[
            "-n",
            &ns,
            "get",
            "deployment",
            "web",
            "-o",
            "jsonpath={.spec.replicas}",
        ])
    };
    assert_eq!(replicas(c), "9");

    // Forced: the state before each action, bob's changes included.
    for id in [&x, &y] {
        let report = api
            .ok(
                "POST",
                &format!("/api/v1/actions/{id}/rollback?force=true"),
                &admin,
            )
            .await;
        assert_eq!(report["state"], "rolled-back", "{report}");
    }
    let cm = c.kubectl_ok(&[
        "-n",
        &ns,
        "get",
        "configmap",
        "cm",
        "-o",
        "jsonpath={.data}",
    ]);
    assert_eq!(cm, r#"{"v":"base"}"#);
    assert_eq!(replicas(c), "3");
}

/// `manifests` are for committing and applying again: a deleted Service's
/// manifest leaves out the cluster IP the cluster allocated, so applying it
/// does not pin that IP into `last-applied-configuration`, and the team's
/// own manifest (without one) still applies afterwards.
#[tokio::test(flavor = "multi_thread")]
async fn manifests_of_a_deleted_service_apply_and_leave_the_teams_manifest_appliable() {
    let c = cluster();
    let sb = shared_snapback();
    let api = sb.api(c);
    let admin = c.token("admin");
    let ns = c.namespace("gitsvc", &[]);
    let own = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: {ns}}}\nspec:\n  selector: {{app: web}}\n  ports: [{{port: 80}}]\n"
    );
    c.kubectl_apply_str(&own);
    // Deleted by a service account of this test alone: its implicit
    // session holds nothing else.
    let token = c.service_account(&ns, "deployer");
    c.kubectl_with_token_ok(&token, &["-n", &ns, "delete", "service", "web"]);
    let user = format!("system:serviceaccount:{ns}:deployer");
    let list = api
        .ok("GET", &format!("/api/v1/actions?user={user}"), &admin)
        .await;
    let id = list["actions"][0]["id"].as_str().unwrap().to_string();
    let text = reqwest_text(&api, &format!("/api/v1/actions/{id}/manifests"), &admin).await;
    assert!(text.contains("name: web"), "{text}");
    assert!(!text.contains("clusterIP"), "{text}");
    for manifest in [text.as_str(), own.as_str()] {
        let out = c.kubectl_stdin("admin", &["apply", "-f", "-"], manifest);
        assert!(
            out.status.success(),
            "{manifest}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Undo, newest first, two actions of one developer: the later one deleted
/// a ConfigMap the earlier one had changed. Rolling the later one back
/// recreates it (a new uid) exactly as the earlier one left it, so rolling
/// the earlier one back is no conflict and brings the first value back.
#[tokio::test(flavor = "multi_thread")]
async fn actions_undone_newest_first_need_no_force() {
    let c = cluster();
    let sb = shared_snapback();
    let api = sb.api(c);
    let (ns, token) = c.developer("lifo");
    c.kubectl_ok(&["-n", &ns, "create", "configmap", "cm", "--from-literal=v=1"]);
    let tag = format!("{:06x}", rand::random::<u32>() & 0xffffff);
    let (first, second) = (format!("lifo-a-{tag}"), format!("lifo-b-{tag}"));

    open_action(&api, &token, &first).await;
    c.kubectl_with_token_ok(
        &token,
        &[
            "-n",
            &ns,
            "patch",
            "configmap",
            "cm",
            "-p",
            r#"{"data":{"v":"2"}}"#,
        ],
    );
    complete(&api, &token, &first).await;
    open_action(&api, &token, &second).await;
    c.kubectl_with_token_ok(&token, &["-n", &ns, "delete", "configmap", "cm"]);
    complete(&api, &token, &second).await;

    let report = api
        .ok(
            "POST",
            &format!("/api/v1/actions/{second}/rollback"),
            &token,
        )
        .await;
    assert_eq!(report["results"][0]["outcome"], "restored", "{report:#}");
    assert_eq!(value_of(c, &ns, "cm"), "2");

    let (status, report) = api
        .call(
            "POST",
            &format!("/api/v1/actions/{first}/rollback"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, 200, "{report:#}");
    assert_eq!(report["results"][0]["outcome"], "restored", "{report:#}");
    assert_eq!(value_of(c, &ns, "cm"), "1");
}

/// A Pending Pod's image fixed in an action, then scheduled (the scheduler
/// binds it to a node): rolling the fix back puts the old image back on the
/// Pod where it now runs, instead of failing on the node it cannot leave.
#[tokio::test(flavor = "multi_thread")]
async fn a_pod_scheduled_after_the_action_is_rolled_back_in_place() {
    let c = cluster();
    let sb = shared_snapback();
    let api = sb.api(c);
    let (ns, token) = c.developer("podfix");
    c.apply_as(
        "admin",
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: p, namespace: {ns}}}\nspec: {{serviceAccountName: dev, automountServiceAccountToken: false, containers: [{{name: c, image: 'busybox:1.35'}}]}}\n"
        ),
    );
    let id = format!("podfix-{:06x}", rand::random::<u32>() & 0xffffff);
    open_action(&api, &token, &id).await;
    c.kubectl_with_token_ok(
        &token,
        &["-n", &ns, "set", "image", "pod/p", "c=busybox:1.36"],
    );
    complete(&api, &token, &id).await;
    // Scheduled since (no scheduler here: bound the way it binds).
    let out = c.kubectl_stdin(
        "admin",
        &["create", "--raw", &format!("/api/v1/namespaces/{ns}/pods/p/binding"), "-f", "-"],
        r#"{"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "p"}, "target": {"apiVersion": "v1", "kind": "Node", "name": "node-1"}}"#,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let report = api
        .ok("POST", &format!("/api/v1/actions/{id}/rollback"), &token)
        .await;
    assert_eq!(report["results"][0]["outcome"], "restored", "{report:#}");
    let pod = c.get_json(&["-n", &ns, "pod", "p"]).unwrap();
    assert_eq!(pod["spec"]["containers"][0]["image"], "busybox:1.35");
    assert_eq!(pod["spec"]["nodeName"], "node-1");
}

/// A DELETE of an action while its rollback plans (before the action is
/// marked `rolling-back`) is refused: the two never both go ahead. (It
/// answered 204 and the rollback went on, its action and report gone.)
#[tokio::test(flavor = "multi_thread")]
async fn an_action_is_not_deleted_under_a_rollback_that_is_still_planning() {
    let c = cluster();
    let tag = format!("del{:06x}", rand::random::<u32>() & 0xffffff);
    let sb = Snapback::start(c, SnapbackOpts::isolated(c, &tag));
    let admin = c.token("admin");
    let ns = c.namespace("delplan", &[]);
    sb.adopt_namespace(c, &ns);
    let names: Vec<String> = (0..200).map(|i| format!("cm-{i:03}")).collect();
    create_many(c, &ns, names.clone(), "").await;
    patch_many(c, &ns, names.clone(), "big").await;
    let api = sb.api(c);
    let rollback = {
        let api = sb.api(c);
        let admin = admin.clone();
        tokio::spawn(async move {
            api.call("POST", "/api/v1/actions/big/rollback", Some(&admin), None)
                .await
        })
    };
    // Within the rollback's planning (200 objects read first).
    tokio::time::sleep(Duration::from_millis(30)).await;
    let (deleted, body) = api
        .call("DELETE", "/api/v1/actions/big", Some(&admin), None)
        .await;
    let (rolled_back, report) = rollback.await.unwrap();
    assert!(
        [204, 409].contains(&deleted),
        "DELETE answered {deleted}: {body}"
    );
    if deleted == 204 {
        // The deletion came first: the rollback found nothing to restore.
        assert_eq!(rolled_back, 404, "{report}");
    } else {
        assert!(error_message(&body).contains("is running"), "{body}");
        assert_eq!(rolled_back, 200, "{report}");
        assert_eq!(report["state"], "rolled-back", "{report}");
        let (status, action) = api
            .call("GET", "/api/v1/actions/big", Some(&admin), None)
            .await;
        assert_eq!(status, 200, "the action and its report are kept: {action}");
    }
    sb.unregister(c);
}

/// The CLI reports snapback's 503 for a rollback stopped by a shutdown as
/// it is, once: kube's default client retried the POST and the retry was
/// answered "already running" (exit 4) while the first was still draining.
#[tokio::test(flavor = "multi_thread")]
async fn the_cli_reports_a_rollback_stopped_by_a_shutdown_without_sending_it_again() {
    let c = cluster();
    let tag = format!("cliterm{:06x}", rand::random::<u32>() & 0xffffff);
    let opts = SnapbackOpts::isolated(c, &tag);
    let mut sb = Snapback::start(c, opts.clone());
    let ns = c.namespace("cliterm", &[]);
    sb.adopt_namespace(c, &ns);
    let names: Vec<String> = (0..400).map(|i| format!("cm-{i:03}")).collect();
    create_many(c, &ns, names.clone(), "").await;
    patch_many(c, &ns, names.clone(), "big").await;
    let cli = std::process::Command::new(env!("CARGO_BIN_EXE_snapback"))
        .args(["rollback", "big", "--context", "admin", "--kubeconfig"])
        .arg(&c.kubeconfig)
        .args(["--server", &format!("https://127.0.0.1:{}", sb.api_port)])
        .arg("--ca-file")
        .arg(c.certs.join("ca.crt"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let store = sb.store(c).await;
    let id = snapback::store::model::ActionId::parse("big").unwrap();
    wait_for_progress(&store, &id, 50).await;
    sb.terminate();
    let out = tokio::task::spawn_blocking(move || cli.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("shutting down") && err.contains("resumed"),
        "{err}"
    );
    // The next snapshotter finishes it.
    let sb2 = Snapback::start(c, opts);
    let rec = wait_until_resumed(&store, &id, &sb2).await;
    assert_eq!(rec.state.as_str(), "rolled-back");
    sb2.unregister(c);
}

/// A definition changed in the same action as one of its resources, its
/// new schema defaulting a field: the resource's prior state was read
/// with the default, which the definition of before prunes. The first
/// rollback restores both; a second finds them in their prior state
/// (SPEC §4) instead of writing the resource again and again, and no
/// conflict either when the first one's write of the resource went through
/// the action's schema (the API server swaps in the restored definition's
/// handler a moment after its write; about one run in twenty under load).
#[tokio::test(flavor = "multi_thread")]
async fn a_resource_whose_definition_the_action_changed_converges_after_its_rollback() {
    let c = cluster();
    let sb = shared_snapback();
    let api = sb.api(c);
    let admin = c.token("admin");
    let ns = c.namespace("crd-default", &[]);
    let id = format!("crddef-{:06x}", rand::random::<u32>() & 0xffffff);
    let crd = |defaulted: bool, action: &str| {
        let size = if defaulted {
            "\n                size: {type: string, default: M}"
        } else {
            ""
        };
        format!(
            r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: doohickeys.example.com
  annotations: {{{action}}}
spec:
  group: example.com
  scope: Namespaced
  names: {{plural: doohickeys, singular: doohickey, kind: Doohickey}}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              properties:
                color: {{type: string}}{size}
"#
        )
    };
    c.kubectl_apply_str(&crd(false, ""));
    c.wait_established("doohickeys.example.com");
    let thing = |labels: &str, action: &str| {
        format!(
            "apiVersion: example.com/v1\nkind: Doohickey\nmetadata: {{name: d1, namespace: {ns}, labels: {{{labels}}}, annotations: {{{action}}}}}\nspec: {{color: blue}}\n"
        )
    };
    c.kubectl_apply_str(&thing("", ""));
    let annotation = format!("snapback.io/action: {id}");
    c.kubectl_apply_str(&crd(true, &annotation));
    // Read under the new schema: the default is in the prior state.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = c.get_json(&["-n", &ns, "doohickey", "d1"]).unwrap();
        if now["spec"]["size"] == "M" {
            break;
        }
        assert!(Instant::now() < deadline, "the default never showed: {now}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // The API server swaps the resource's handler for the new schema's a
    // while after serving the first read with it: a write in between goes
    // through the old one and stores the object without the default, which
    // every later read adds (a change after the action, to the conflict
    // check). Let it settle.
    std::thread::sleep(Duration::from_secs(3));
    c.kubectl_apply_str(&thing("team: x", &annotation));
    let rollback = || {
        let api = &api;
        let admin = &admin;
        let path = format!("/api/v1/actions/{id}/rollback");
        async move { api.call("POST", &path, Some(admin), None).await }
    };
    let (status, first) = rollback().await;
    assert_eq!(status, 200, "{first:#}");
    assert_eq!(first["state"], "rolled-back", "{first:#}");
    let now = c.get_json(&["-n", &ns, "doohickey", "d1"]).unwrap();
    assert_eq!(now["spec"], json!({"color": "blue"}), "{now:#}");
    assert!(now["metadata"].get("labels").is_none(), "{now:#}");
    let (status, second) = rollback().await;
    assert_eq!(status, 200, "{second:#}");
    let outcomes: Vec<&str> = second["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert!(
        !outcomes.is_empty() && outcomes.iter().all(|o| *o == "unchanged"),
        "{second:#}"
    );
    c.kubectl_ok(&["delete", "crd", "doohickeys.example.com"]);
}

/// A deleted Service whose cluster IP and node port went to another Service
/// since: recreated with new ones (clients reach it by name), and the
/// report says so, instead of failing with "already allocated".
#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_service_whose_ip_and_port_were_taken_comes_back_with_new_ones() {
    let c = cluster();
    let sb = shared_snapback();
    let api = sb.api(c);
    let user = "user11";
    c.grant_api(user);
    c.grant_cluster_edit(user);
    let token = c.token(user);
    let ns = c.namespace("svc-taken", &[user]);
    c.kubectl_ok(&[
        "-n",
        &ns,
        "create",
        "service",
        "nodeport",
        "web",
        "--tcp=80:8080",
    ]);
    let old = c.get_json(&["-n", &ns, "service", "web"]).unwrap();
    let (ip, port) = (
        old["spec"]["clusterIP"].as_str().unwrap().to_string(),
        old["spec"]["ports"][0]["nodePort"].as_u64().unwrap(),
    );
    let id = format!("svc-taken-{:06x}", rand::random::<u32>() & 0xffffff);
    open_action(&api, &token, &id).await;
    c.kubectl_as_ok(user, &["-n", &ns, "delete", "service", "web"]);
    complete(&api, &token, &id).await;
    c.kubectl_apply_str(&format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: thief, namespace: {ns}}}\nspec: {{type: NodePort, clusterIP: {ip}, ports: [{{port: 80, targetPort: 8080, nodePort: {port}}}]}}\n"
    ));
    let report = api
        .ok("POST", &format!("/api/v1/actions/{id}/rollback"), &token)
        .await;
    assert_eq!(report["state"], "rolled-back", "{report:#}");
    let message = result_named(&report, "web")["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        message.contains(&format!("(its old one, {ip}, was taken)"))
            && message.contains(&format!("{port}]")),
        "{message}"
    );
    let web = c.get_json(&["-n", &ns, "service", "web"]).unwrap();
    assert_ne!(web["spec"]["clusterIP"], ip.as_str());
    assert_eq!(web["spec"]["type"], "NodePort");
}
