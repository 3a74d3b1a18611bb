#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
//! Guarded actions, Alertmanager triggers and Events (issue #8). There is no
//! controller-manager: the tests play the controllers' part by writing the
//! status subresource.

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::*;

fn deployment(ns: &str, image: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web, namespace: {ns}}}\nspec:\n  replicas: 1\n  selector: {{matchLabels: {{app: web}}}}\n  template:\n    metadata: {{labels: {{app: web}}}}\n    spec: {{containers: [{{name: web, image: \"{image}\"}}]}}\n"
    )
}

fn image(c: &Cluster, ns: &str) -> String {
    c.kubectl_ok(&[
        "-n",
        ns,
        "get",
        "deployment",
        "web",
        "-o",
        "jsonpath={.spec.template.spec.containers[0].image}",
    ])
}

/// Play the Deployment controller: report the current generation as observed,
/// with `available` of its one replica available.
fn report_status(c: &Cluster, ns: &str, available: i64) {
    let generation: i64 = c
        .kubectl_ok(&[
            "-n",
            ns,
            "get",
            "deployment",
            "web",
            "-o",
            "jsonpath={.metadata.generation}",
        ])
        .parse()
        .unwrap();
    let status = json!({"status": {"observedGeneration": generation, "replicas": 1, "updatedReplicas": 1,
        "readyReplicas": available, "availableReplicas": available}});
    c.kubectl_ok(&[
        "-n",
        ns,
        "patch",
        "deployment",
        "web",
        "--subresource=status",
        "--type=merge",
        "-p",
        &status.to_string(),
    ]);
}

/// A guarded action by `user` that moves web from nginx:1.25 to nginx:1.26.
async fn guarded_change(
    c: &Cluster,
    api: &ApiClient,
    user: &str,
    ns: &str,
    timeout: &str,
) -> String {
    let token = c.token(user);
    c.kubectl_apply_str(&deployment(ns, "nginx:1.25"));
    let id = format!("guarded-{:06x}", rand::random::<u32>() & 0xffffff);
    let body =
        json!({"id": id, "guard": {"timeout": timeout, "onFailure": "rollback"}}).to_string();
    let (status, created) = api
        .call("POST", "/api/v1/actions", Some(&token), Some(&body))
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["guard"]["state"], "pending", "{created}");
    tokio::time::sleep(Duration::from_millis(700)).await;
    c.apply_as(user, &deployment(ns, "nginx:1.26"));
    api.ok("POST", &format!("/api/v1/actions/{id}/complete"), &token)
        .await;
    id
}

/// An isolated snapback whose guards check every second (and whose
/// maintenance Lease, which the guard loop needs, is taken quickly).
fn guarding_snapback(c: &Cluster, prefix: &str, extra: &[&str]) -> Snapback {
    let tag = format!("{prefix}{:06x}", rand::random::<u32>() & 0xffffff);
    let mut opts = SnapbackOpts::isolated(c, &tag);
    opts.extra_args = ["--guard-interval=1s", "--lease-duration=3s"]
        .iter()
        .chain(extra)
        .map(|a| a.to_string())
        .collect();
    Snapback::start(c, opts)
}

async fn guard_of(api: &ApiClient, token: &str, id: &str) -> Value {
    let (_, detail) = api
        .call("GET", &format!("/api/v1/actions/{id}"), Some(token), None)
        .await;
    detail
}

async fn wait_guard(
    api: &ApiClient,
    token: &str,
    id: &str,
    states: &[&str],
    timeout: Duration,
) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let detail = guard_of(api, token, id).await;
        if states.iter().any(|s| detail["guard"]["state"] == *s) {
            return detail;
        }
        assert!(
            Instant::now() < deadline,
            "guard never reached {states:?}: {detail:#}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deployment_that_never_becomes_available_is_rolled_back_after_the_timeout() {
    let c = cluster();
    let sb = shared_snapback();
    let api = sb.api(c);
    let user = "user1";
    c.grant_api(user);
    let ns = c.namespace("guard-fail", &[user]);
    let id = guarded_change(c, &api, user, &ns, "4s").await;
    report_status(c, &ns, 0);
    let token = c.token(user);
    let watching = wait_guard(
        &api,
        &token,
        &id,
        &["watching", "failed", "rolled-back"],
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        image(c, &ns),
        "nginx:1.26",
        "not before the timeout: {watching:#}"
    );
    let detail = wait_guard(&api, &token, &id, &["rolled-back"], Duration::from_secs(60)).await;
    assert_eq!(image(c, &ns), "nginx:1.25");
    assert_eq!(detail["state"], "rolled-back");
    let reason = detail["guard"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("deployments.apps/web")
            && reason.contains("0 of 1 updated replicas available")
            && reason.contains("4s"),
        "{reason}"
    );
    let report = &detail["rollbackReports"][0];
    assert_eq!(report["trigger"], "guard");
    assert_eq!(report["reason"], reason);
    assert_eq!(report["user"], user, "rolled back as the action's owner");
    assert!(
        sb.metrics()
            .contains("snapback_rollbacks_total{outcome=\"rolled-back\",trigger=\"guard\"}")
    );
    // The CLI shows it.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_snapback"))
        .env("KUBECONFIG", &c.kubeconfig)
        .args([
            "show",
            &id,
            "--context",
            user,
            "--server",
            &format!("https://127.0.0.1:{}", sb.api_port),
        ])
        .arg("--ca-file")
        .arg(c.certs.join("ca.crt"))
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("Guard:") && shown.contains("rolled-back (timeout 4s, on failure rollback)"),
        "{shown}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deployment_that_becomes_available_is_left_alone() {
    let c = cluster();
    let sb = shared_snapback();
    let api = sb.api(c);
    let user = "user2";
    c.grant_api(user);
    let ns = c.namespace("guard-ok", &[user]);
    let id = guarded_change(c, &api, user, &ns, "20s").await;
    report_status(c, &ns, 0);
    tokio::time::sleep(Duration::from_secs(3)).await;
    report_status(c, &ns, 1);
    let detail = wait_guard(
        &api,
        &c.token(user),
        &id,
        &["healthy", "rolled-back", "failed"],
        Duration::from_secs(40),
    )
    .await;
    assert_eq!(detail["guard"]["state"], "healthy", "{detail:#}");
    assert_eq!(detail["state"], "completed");
    assert_eq!(image(c, &ns), "nginx:1.26");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_in_the_middle_of_a_guard_still_ends_in_the_right_outcome() {
    let c = cluster();
    let tag = format!("grd{:06x}", rand::random::<u32>() & 0xffffff);
    let mut opts = SnapbackOpts::isolated(c, &tag);
    opts.extra_args = vec!["--lease-duration=3s".into(), "--guard-interval=1s".into()];
    let mut sb = Snapback::start(c, opts.clone());
    let api = sb.api(c);
    let user = "user3";
    c.grant_api(user);
    let ns = c.namespace("guard-restart", &[user]);
    sb.adopt_namespace(c, &ns);
    let id = guarded_change(c, &api, user, &ns, "8s").await;
    report_status(c, &ns, 0);
    let token = c.token(user);
    wait_guard(&api, &token, &id, &["watching"], Duration::from_secs(30)).await;
    sb.kill();
    assert_eq!(image(c, &ns), "nginx:1.26");
    // The webhook must answer while the new process starts: stop sending it changes.
    sb.unregister(c);
    let sb2 = Snapback::start(c, opts);
    let api2 = sb2.api(c);
    let detail = wait_guard(
        &api2,
        &token,
        &id,
        &["rolled-back"],
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(detail["rollbackReports"][0]["trigger"], "guard");
    assert_eq!(image(c, &ns), "nginx:1.25");
    sb2.unregister(c);
}

fn alert_payload(labels: Value, fingerprint: &str) -> String {
    // The shape of Alertmanager's webhook notification (version 4).
    json!({
        "version": "4",
        "groupKey": "{}:{alertname=\"HighErrorRate\"}",
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "snapback",
        "groupLabels": {"alertname": "HighErrorRate"},
        "commonLabels": labels,
        "commonAnnotations": {"summary": "error rate above 5%"},
        "externalURL": "http://alertmanager.monitoring:9093",
        "alerts": [{
            "status": "firing",
            "labels": labels,
            "annotations": {"summary": "error rate above 5%"},
            "startsAt": "2026-11-22T10:00:00.000Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus.monitoring:9090/graph?g0.expr=rate",
            "fingerprint": fingerprint
        }]
    })
    .to_string()
}

/// Deliver an Alertmanager notification to the hook; it must answer 200.
async fn deliver(api: &ApiClient, token: &str, payload: &str) -> Value {
    let (status, body) = api
        .call(
            "POST",
            "/api/v1/hooks/alertmanager",
            Some(token),
            Some(payload),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test(flavor = "multi_thread")]
async fn an_alert_rolls_back_its_action_once_even_when_delivered_three_times() {
    let c = cluster();
    let sb = shared_snapback();
    let api = sb.api(c);
    let user = "user4";
    c.grant_api(user);
    let token = c.token(user);
    let ns = c.namespace("alert", &[user]);
    c.kubectl_ok(&[
        "-n",
        &ns,
        "create",
        "configmap",
        "cm",
        "--from-literal=v=before",
    ]);
    let id = format!("alerted-{:06x}", rand::random::<u32>() & 0xffffff);
    c.apply_as(user, &format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cm, namespace: {ns}, annotations: {{snapback.io/action: {id}}}}}\ndata: {{v: after}}\n"));
    let payload = alert_payload(
        json!({"alertname": "HighErrorRate", "snapback_action": id, "severity": "critical"}),
        "f00d",
    );
    let mut outcomes = vec![];
    for _ in 0..3 {
        let body = deliver(&api, &token, &payload).await;
        outcomes.push(body["alerts"][0]["outcome"].as_str().unwrap().to_string());
    }
    assert_eq!(outcomes, vec!["rolled-back", "duplicate", "duplicate"]);
    let (_, detail) = api
        .call("GET", &format!("/api/v1/actions/{id}"), Some(&token), None)
        .await;
    assert_eq!(detail["rollbacks"], 1);
    assert_eq!(detail["rollbackReports"][0]["trigger"], "alert");
    assert!(
        detail["rollbackReports"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("HighErrorRate")
    );
    assert_eq!(
        c.kubectl_ok(&["-n", &ns, "get", "cm", "cm", "-o", "jsonpath={.data.v}"]),
        "before"
    );

    // A resolved notification does nothing; no token is refused.
    let resolved = payload.replace("\"firing\"", "\"resolved\"");
    let (_, body) = api
        .call(
            "POST",
            "/api/v1/hooks/alertmanager",
            Some(&token),
            Some(&resolved),
        )
        .await;
    assert_eq!(body["alerts"][0]["outcome"], "resolved");
    let (status, _) = api
        .call("POST", "/api/v1/hooks/alertmanager", None, Some(&payload))
        .await;
    assert_eq!(status, 401);
    let (status, _) = api
        .call(
            "POST",
            "/api/v1/hooks/alertmanager",
            Some(&token),
            Some("{not json"),
        )
        .await;
    assert_eq!(status, 400);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_namespace_alert_rolls_back_the_newest_completed_action_there() {
    let c = cluster();
    let sb = shared_snapback();
    let api = sb.api(c);
    let user = "user5";
    c.grant_api(user);
    let token = c.token(user);
    let ns = c.namespace("alert-ns", &[user]);
    c.kubectl_ok(&["-n", &ns, "create", "configmap", "cm", "--from-literal=v=1"]);
    let mut ids = vec![];
    for v in ["2", "3"] {
        let id = format!("nsalert-{v}-{:06x}", rand::random::<u32>() & 0xffffff);
        let (status, _) = api
            .call(
                "POST",
                "/api/v1/actions",
                Some(&token),
                Some(&json!({"id": id}).to_string()),
            )
            .await;
        assert_eq!(status, 201);
        tokio::time::sleep(Duration::from_millis(700)).await;
        c.kubectl_as_ok(
            user,
            &[
                "-n",
                &ns,
                "patch",
                "configmap",
                "cm",
                "-p",
                &format!(r#"{{"data":{{"v":"{v}"}}}}"#),
            ],
        );
        api.ok("POST", &format!("/api/v1/actions/{id}/complete"), &token)
            .await;
        ids.push(id);
    }
    let payload = alert_payload(
        json!({"alertname": "PodCrashLooping", "namespace": ns}),
        "beef",
    );
    let body = deliver(&api, &token, &payload).await;
    assert_eq!(body["alerts"][0]["action"], ids[1].as_str(), "{body}");
    assert_eq!(
        c.kubectl_ok(&["-n", &ns, "get", "cm", "cm", "-o", "jsonpath={.data.v}"]),
        "2"
    );
    // Alertmanager delivers a firing alert again every repeat_interval: the
    // same alert, not a reason to roll back the next older action.
    for _ in 0..2 {
        let body = deliver(&api, &token, &payload).await;
        assert_eq!(body["alerts"][0]["outcome"], "duplicate", "{body}");
        assert_eq!(body["alerts"][0]["action"], ids[1].as_str(), "{body}");
    }
    assert_eq!(
        c.kubectl_ok(&["-n", &ns, "get", "cm", "cm", "-o", "jsonpath={.data.v}"]),
        "2"
    );
    let metrics = sb.metrics();
    assert!(
        metric(&metrics, "snapback_alerts_total{outcome=\"duplicate\"}") >= 2.0,
        "{metrics}"
    );
    assert!(
        metric(&metrics, "snapback_alerts_total{outcome=\"rolled-back\"}") >= 1.0,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn events_appear_on_restored_objects() {
    let c = cluster();
    let sb = shared_snapback();
    let api = sb.api(c);
    let ns = c.namespace("events", &[]);
    c.kubectl_ok(&["-n", &ns, "create", "configmap", "cm", "--from-literal=v=1"]);
    let id = format!("ev-{:06x}", rand::random::<u32>() & 0xffffff);
    c.apply_as("admin", &format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cm, namespace: {ns}, annotations: {{snapback.io/action: {id}}}}}\ndata: {{v: \"2\"}}\n"));
    let (status, _) = api
        .call(
            "POST",
            &format!("/api/v1/actions/{id}/rollback"),
            Some(&c.token("admin")),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let events: Value =
            serde_json::from_str(&c.kubectl_ok(&["-n", &ns, "get", "events", "-o", "json"]))
                .unwrap();
        let found = events["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["reason"] == "SnapbackRestored");
        if let Some(e) = found {
            assert_eq!(e["involvedObject"]["name"], "cm");
            assert_eq!(e["involvedObject"]["kind"], "ConfigMap");
            let msg = e["message"].as_str().unwrap();
            assert!(
                msg.contains(&format!(
                    "Restored to the state before action {id} by admin"
                )),
                "{msg}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "no event: {events}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // kubectl describe shows it.
    let described = c.kubectl_ok(&["-n", &ns, "describe", "configmap", "cm"]);
    assert!(described.contains("SnapbackRestored"), "{described}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_guard_annotation_guards_an_implicit_action() {
    let c = cluster();
    let sb = guarding_snapback(c, "ann", &["--session-idle=2s"]);
    let api = sb.api(c);
    let ns = c.namespace("guard-annotation", &[]);
    sb.adopt_namespace(c, &ns);
    c.kubectl_apply_str(&deployment(&ns, "nginx:1.25"));
    tokio::time::sleep(Duration::from_secs(3)).await; // a session of its own
    // A change annotated with a guard, in user9's implicit session.
    c.grant_api("user9");
    c.kubectl_ok(&[
        "-n",
        &ns,
        "create",
        "rolebinding",
        "edit-user9",
        "--clusterrole=test-editor",
        "--user=user9",
    ]);
    let annotated = deployment(&ns, "nginx:1.26").replace(
        "metadata: {name: web, namespace:",
        "metadata: {annotations: {snapback.io/guard: 3s}, name: web, namespace:",
    );
    c.apply_as("user9", &annotated);
    report_status(c, &ns, 0);
    let token = c.token("user9");
    let (_, list) = api
        .call("GET", "/api/v1/actions?user=user9", Some(&token), None)
        .await;
    let id = list["actions"][0]["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("user9-"), "{list}");
    let detail = wait_guard(&api, &token, &id, &["rolled-back"], Duration::from_secs(60)).await;
    assert_eq!(detail["guard"]["timeout"], "3s");
    assert_eq!(detail["rollbackReports"][0]["trigger"], "guard");
    assert_eq!(image(c, &ns), "nginx:1.25");
    sb.unregister(c);
}

/// A guard reads and rolls back as the action's owner, so only the owner's
/// own changes that state the annotation arm one: not someone else's change
/// joined through the action annotation, and not the owner's change of an
/// object that somebody else annotated (a planted trap).
#[tokio::test(flavor = "multi_thread")]
async fn guards_are_armed_only_by_the_owners_changes_that_state_them() {
    let c = cluster();
    let sb = guarding_snapback(c, "own", &[]);
    let api = sb.api(c);
    let (owner, outsider) = ("user6", "user8");
    let ns = c.namespace("guard-owner", &[owner, outsider]);
    c.grant_api(owner);
    // Planted before snapback captures here: a Deployment that never becomes
    // available (no controller), annotated with a short guard.
    let trap = deployment(&ns, "nginx:1.25")
        .replace("name: web,", "name: trap,")
        .replace(
            "metadata: {name: trap,",
            "metadata: {annotations: {snapback.io/guard: 1s}, name: trap,",
        );
    c.kubectl_apply_str(&trap);
    for cm in ["cm-x", "cm-y"] {
        c.kubectl_ok(&["-n", &ns, "create", "configmap", cm, "--from-literal=v=1"]);
    }
    sb.adopt_namespace(c, &ns);
    let token = c.token(owner);
    let open = |id: &str| json!({"id": id}).to_string();
    let patch = |cm: &str| {
        c.kubectl_as_ok(
            owner,
            &[
                "-n",
                &ns,
                "patch",
                "configmap",
                cm,
                "-p",
                r#"{"data":{"v":"2"}}"#,
            ],
        );
    };
    let suffix = format!("{:06x}", rand::random::<u32>() & 0xffffff);
    let (x, y, z) = (
        format!("trap-{suffix}"),
        format!("joined-{suffix}"),
        format!("own-{suffix}"),
    );
    // X: the owner changes a ConfigMap and labels the trapped Deployment.
    let (status, body) = api
        .call("POST", "/api/v1/actions", Some(&token), Some(&open(&x)))
        .await;
    assert_eq!(status, 201, "{body}");
    patch("cm-x");
    c.kubectl_as_ok(owner, &["-n", &ns, "label", "deployment", "trap", "team=x"]);
    api.ok("POST", &format!("/api/v1/actions/{x}/complete"), &token)
        .await;
    // Y: the owner changes a ConfigMap; someone else joins a guarded,
    // never-available Deployment through the action annotation.
    let (status, body) = api
        .call("POST", "/api/v1/actions", Some(&token), Some(&open(&y)))
        .await;
    assert_eq!(status, 201, "{body}");
    patch("cm-y");
    api.ok("POST", &format!("/api/v1/actions/{y}/complete"), &token)
        .await;
    let bait = deployment(&ns, "nginx:1.25")
        .replace("name: web,", "name: bait,")
        .replace(
            "metadata: {name: bait,",
            &format!(
                "metadata: {{annotations: {{snapback.io/guard: 1s, snapback.io/action: {y}}}, name: bait,"
            ),
        );
    c.apply_as(outsider, &bait);
    // Z, the control: the owner's own guarded Deployment is rolled back.
    let (status, body) = api
        .call("POST", "/api/v1/actions", Some(&token), Some(&open(&z)))
        .await;
    assert_eq!(status, 201, "{body}");
    let own = deployment(&ns, "nginx:1.25")
        .replace("name: web,", "name: own,")
        .replace(
            "metadata: {name: own,",
            "metadata: {annotations: {snapback.io/guard: 1s}, name: own,",
        );
    c.apply_as(owner, &own);
    api.ok("POST", &format!("/api/v1/actions/{z}/complete"), &token)
        .await;
    wait_guard(&api, &token, &z, &["rolled-back"], Duration::from_secs(60)).await;
    // Every guard pass since has seen X and Y completed: neither is guarded.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for id in [&x, &y] {
        let detail = guard_of(&api, &token, id).await;
        assert!(detail["guard"].is_null(), "{id} got a guard: {detail:#}");
        assert_eq!(detail["state"], "completed", "{detail:#}");
    }
    for cm in ["cm-x", "cm-y"] {
        let v = c.kubectl_ok(&[
            "-n",
            &ns,
            "get",
            "configmap",
            cm,
            "-o",
            "jsonpath={.data.v}",
        ]);
        assert_eq!(v, "2", "{cm} was rolled back");
    }
    let team = c.kubectl_ok(&[
        "-n",
        &ns,
        "get",
        "deployment",
        "trap",
        "-o",
        "jsonpath={.metadata.labels.team}",
    ]);
    assert_eq!(team, "x");
    sb.unregister(c);
}

/// A guard written in the manifests a team applies guards every release
/// applied from them, client-side and server-side alike (the annotation's
/// value does not change from one release to the next).
#[tokio::test(flavor = "multi_thread")]
async fn a_guard_in_the_applied_manifest_guards_every_release() {
    let c = cluster();
    let sb = guarding_snapback(c, "rel", &["--session-idle=2s"]);
    let api = sb.api(c);
    let user = "user7";
    let ns = c.namespace("guard-release", &[user]);
    c.grant_api(user);
    sb.adopt_namespace(c, &ns);
    let token = c.token(user);
    let release = |image: &str| {
        deployment(&ns, image).replace(
            "metadata: {name: web, namespace:",
            "metadata: {annotations: {snapback.io/guard: 3s}, name: web, namespace:",
        )
    };
    let newest = || async {
        let (_, list) = api
            .call(
                "GET",
                &format!("/api/v1/actions?user={user}&limit=1"),
                Some(&token),
                None,
            )
            .await;
        list["actions"][0]["id"].as_str().unwrap().to_string()
    };
    // Release 1 comes up healthy.
    c.apply_as(user, &release("nginx:1.25"));
    report_status(c, &ns, 1);
    let first = newest().await;
    wait_guard(&api, &token, &first, &["healthy"], Duration::from_secs(60)).await;
    // Release 2, client-side apply of the same manifest with a new image:
    // never available, rolled back.
    c.apply_as(user, &release("nginx:1.26"));
    report_status(c, &ns, 0);
    let second = newest().await;
    assert_ne!(first, second);
    let detail = wait_guard(
        &api,
        &token,
        &second,
        &["rolled-back"],
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(detail["guard"]["timeout"], "3s");
    assert_eq!(image(c, &ns), "nginx:1.25");
    // Release 3 by server-side apply: the same.
    tokio::time::sleep(Duration::from_secs(3)).await; // a session of its own
    let out = c.kubectl_stdin(
        user,
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=release-bot",
            "-f",
            "-",
        ],
        &release("nginx:1.27"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    report_status(c, &ns, 0);
    let third = newest().await;
    assert_ne!(third, second);
    wait_guard(
        &api,
        &token,
        &third,
        &["rolled-back"],
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(image(c, &ns), "nginx:1.25");
    sb.unregister(c);
}
