#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
//! Operations (issue #4): metrics, retention under a Lease, the manifests.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_captures_skips_and_rollbacks_exactly() {
    let c = cluster();
    let tag = format!("met{:06x}", rand::random::<u32>() & 0xffffff);
    let sb = Snapback::start(c, SnapbackOpts::isolated(c, &tag));
    let ns = c.namespace("metrics", &[]);
    sb.adopt_namespace(c, &ns);
    let before = sb.metrics();
    let action = format!("m-{tag}");
    let annotated = |v: &str| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cm, namespace: {ns}, annotations: {{snapback.io/action: {action}}}}}\ndata: {{v: \"{v}\"}}\n"
        )
    };
    for v in ["1", "2", "3"] {
        c.apply_as("admin", &annotated(v));
    }
    c.kubectl_ok(&["-n", &ns, "create", "configmap", "dry", "--dry-run=server"]);
    let api = sb.api(c);
    let (status, report) = api
        .call(
            "POST",
            &format!("/api/v1/actions/{action}/rollback"),
            Some(&c.token("admin")),
            None,
        )
        .await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["counts"]["restored"], 1, "{report}");
    let after = sb.metrics();
    let delta = |sample: &str| metric(&after, sample) - metric(&before, sample);
    // The action: one create and two updates; the rollback's delete of the
    // created ConfigMap is captured too (it belongs to the rollback action).
    assert_eq!(
        delta(r#"snapback_snapshots_stored_total{operation="create"}"#),
        1.0
    );
    assert_eq!(
        delta(r#"snapback_snapshots_stored_total{operation="update"}"#),
        2.0
    );
    assert_eq!(
        delta(r#"snapback_snapshots_stored_total{operation="delete"}"#),
        1.0
    );
    assert_eq!(
        delta(r#"snapback_captures_skipped_total{reason="dry_run"}"#),
        1.0
    );
    assert_eq!(
        delta(
            r#"snapback_admission_requests_total{operation="update",outcome="patched",webhook="mutate"}"#
        ),
        2.0
    );
    assert_eq!(
        delta(r#"snapback_rollbacks_total{outcome="rolled-back",trigger="request"}"#),
        1.0
    );
    assert_eq!(
        delta(r#"snapback_objects_restored_total{operation="delete",outcome="restored"}"#),
        1.0
    );
    assert_eq!(delta("snapback_rollback_duration_seconds_count"), 1.0);
    assert!(delta(r#"snapback_snapshot_bytes_total{operation="update"}"#) > 0.0);
    // Captured: the create, two updates and the rollback's delete. Every
    // review is timed (snapback's own Event for the restored object is also
    // reviewed, and skipped, at a moment of its own).
    let captured: f64 = ["create", "update", "delete"]
        .iter()
        .map(|op| {
            delta(&format!(
                r#"snapback_admission_requests_total{{operation="{op}",outcome="captured",webhook="validate"}}"#
            ))
        })
        .sum();
    assert_eq!(captured, 4.0);
    assert!(delta(r#"snapback_admission_duration_seconds_count{webhook="validate"}"#) >= 5.0);
    // Bounded labels: no object, namespace or user names anywhere.
    assert!(!after.contains(&ns) && !after.contains("admin") && !after.contains(&action));
    sb.unregister(c);
}

fn leader_of(c: &Cluster, ns: &str) -> String {
    c.kubectl_ok(&[
        "-n",
        ns,
        "get",
        "lease",
        "snapback-maintenance",
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ])
}

fn pruned(sb: &Snapback) -> f64 {
    metric(&sb.metrics(), "snapback_actions_pruned_total")
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_prunes_on_one_replica_and_another_takes_over() {
    let c = cluster();
    let tag = format!("ret{:06x}", rand::random::<u32>() & 0xffffff);
    let mut opts = SnapbackOpts::isolated(c, &tag);
    opts.extra_args = [
        "--retention=4s",
        "--session-idle=1s",
        "--maintenance-interval=1s",
        "--lease-duration=3s",
    ]
    .map(String::from)
    .to_vec();
    let mut a = Snapback::start(c, opts.clone());
    let mut second = opts.clone();
    second.register = false;
    let mut b = Snapback::start(c, second);
    let ns = c.namespace("retention", &[]);
    a.adopt_namespace(c, &ns);
    let store = a.store(c).await;

    // An explicitly opened action: never pruned, however old.
    let open_id = snapback::store::model::ActionId::parse(&format!("open-{tag}")).unwrap();
    let rec = snapback::store::actions::ActionRecord::new(
        open_id.clone(),
        "explicit",
        "carol",
        jiff::Timestamp::now(),
    );
    assert!(store.create_action(&rec).await.unwrap());
    let make_action = |name: &str| {
        c.apply_as("admin", &format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}, namespace: {ns}, annotations: {{snapback.io/action: {name}}}}}\ndata: {{v: \"1\"}}\n"));
    };
    make_action("first");
    let first = snapback::store::model::ActionId::parse("first").unwrap();
    // Idle sessions complete, then the action expires and is pruned by the leader only.
    let deadline = Instant::now() + Duration::from_secs(40);
    while store.get_action(&first).await.unwrap().is_some() {
        assert!(
            Instant::now() < deadline,
            "not pruned; logs:\n{}\n{}",
            a.log_tail(),
            b.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(
        store.list_snapshots(&first).await.unwrap().is_empty(),
        "snapshots pruned with the action"
    );
    let (pa, pb) = (pruned(&a), pruned(&b));
    assert!(pa + pb >= 1.0);
    assert!(
        pa == 0.0 || pb == 0.0,
        "exactly one replica prunes (a={pa}, b={pb})"
    );
    let leader = leader_of(c, &opts.snapshot_namespace);
    let (leader_sb, other) = if pa > 0.0 {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    assert!(metric(&leader_sb.metrics(), "snapback_snapshots_pruned_total") >= 1.0);

    // The leader dies without releasing the lease: the other takes over.
    leader_sb.kill();
    // The webhook Service would now route to the surviving replica.
    other.register(c);
    other.wait_capturing(c, &ns);
    make_action("second");
    let second_id = snapback::store::model::ActionId::parse("second").unwrap();
    let deadline = Instant::now() + Duration::from_secs(40);
    while store.get_action(&second_id).await.unwrap().is_some() {
        assert!(
            Instant::now() < deadline,
            "the other replica did not take over; log:\n{}",
            other.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(pruned(other) >= 1.0);
    assert_ne!(leader_of(c, &opts.snapshot_namespace), leader);
    assert!(
        store.get_action(&open_id).await.unwrap().is_some(),
        "open actions are never pruned"
    );
    a.unregister(c);
}

/// An isolated snapback that keeps at most two actions, with sessions and
/// maintenance passes of a second.
/// The ids of every action in the store.
async fn action_ids(store: &snapback::store::kube_store::KubeStore) -> Vec<String> {
    store
        .list_actions(None)
        .await
        .unwrap()
        .into_iter()
        .map(|(r, _)| r.id.to_string())
        .collect()
}

fn keeping_two_actions(c: &Cluster, tag: &str) -> Snapback {
    let mut opts = SnapbackOpts::isolated(c, tag);
    opts.extra_args = [
        "--max-actions=2",
        "--session-idle=1s",
        "--maintenance-interval=1s",
        "--lease-duration=3s",
    ]
    .map(String::from)
    .to_vec();
    Snapback::start(c, opts)
}

#[tokio::test(flavor = "multi_thread")]
async fn max_actions_keeps_the_newest() {
    let c = cluster();
    let tag = format!("max{:06x}", rand::random::<u32>() & 0xffffff);
    let sb = keeping_two_actions(c, &tag);
    let ns = c.namespace("maxactions", &[]);
    sb.adopt_namespace(c, &ns);
    let store = sb.store(c).await;
    for name in ["a1", "a2", "a3", "a4"] {
        c.apply_as("admin", &format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}, namespace: {ns}, annotations: {{snapback.io/action: {name}}}}}\n"));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ids = action_ids(&store).await;
        if ids.len() <= 2 {
            // The newest survive (the probe's session is older than a1..a4).
            assert!(
                ids.contains(&"a4".to_string()) && ids.contains(&"a3".to_string()),
                "{ids:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still {ids:?}; log:\n{}",
            sb.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Both rolled back: they are kept (a rollback was asked for), and so
    // are their rollbacks' own actions, the way to redo them, though that
    // makes four of at most two (they were pruned at once, the newest
    // first to go).
    let api = sb.api(c);
    let token = c.token("admin");
    for id in ["a3", "a4"] {
        api.ok("POST", &format!("/api/v1/actions/{id}/rollback"), &token)
            .await;
    }
    // A few maintenance passes (one a second).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let ids = action_ids(&store).await;
    for id in ["a3", "a4", "a3-rollback-1", "a4-rollback-1"] {
        assert!(ids.contains(&id.to_string()), "{id} pruned: {ids:?}");
    }
    sb.unregister(c);
}

fn kustomize(dir: &str) -> Vec<Value> {
    let out = Command::new("kubectl")
        .args(["kustomize", &format!("{ROOT}/{dir}")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .split("\n---\n")
        .map(|d| serde_yaml::from_str::<Value>(d).unwrap())
        .collect()
}

#[test]
fn manifests_pass_server_side_dry_run() {
    let c = cluster();
    let docs = kustomize("manifests");
    let kinds: Vec<String> = docs
        .iter()
        .map(|d| d["kind"].as_str().unwrap().to_string())
        .collect();
    for k in [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Deployment",
        "Service",
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
        "PodDisruptionBudget",
        "ServiceMonitor",
        "PrometheusRule",
        "ConfigMap",
    ] {
        assert!(
            kinds.iter().any(|x| x == k),
            "{k} missing from manifests/: {kinds:?}"
        );
    }
    for mut doc in docs {
        let kind = doc["kind"].as_str().unwrap().to_string();
        let api = doc["apiVersion"].as_str().unwrap().to_string();
        if api.starts_with("monitoring.coreos.com/") {
            // CRD-backed (Prometheus operator): checked by parsing.
            assert!(doc["spec"].is_object(), "{kind} has a spec");
            if kind == "PrometheusRule" {
                let rules = doc["spec"]["groups"][0]["rules"].as_array().unwrap();
                assert!(
                    rules.iter().all(|r| r["alert"].is_string()
                        && r["expr"].as_str().unwrap().contains("snapback_"))
                );
            }
            continue;
        }
        if kind == "PodDisruptionBudget" {
            // The local API server (1.20) serves policy/v1beta1 only.
            assert_eq!(api, "policy/v1");
            doc["apiVersion"] = "policy/v1beta1".into();
        }
        if kind == "Deployment" {
            let pod = &doc["spec"]["template"]["spec"];
            assert_eq!(doc["spec"]["replicas"], 2);
            assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
            for ctr in pod["containers"].as_array().unwrap() {
                assert_eq!(ctr["securityContext"]["readOnlyRootFilesystem"], true);
                assert!(ctr["readinessProbe"].is_object() && ctr["livenessProbe"].is_object());
                assert!(ctr["resources"]["requests"].is_object());
            }
        }
        if kind == "Service" && doc["metadata"]["name"] == "snapback-webhook" {
            // Both calls of one request, and a user's session, on one replica.
            assert_eq!(doc["spec"]["sessionAffinity"], "ClientIP");
        }
        if kind.ends_with("WebhookConfiguration") {
            let wh = &doc["webhooks"][0];
            assert_eq!(wh["sideEffects"], "NoneOnDryRun");
            assert_eq!(wh["failurePolicy"], "Fail");
            assert!(
                wh["rules"][0]["resources"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|r| r == "*/scale")
            );
        }
        let out = c.kubectl_stdin(
            "admin",
            &["apply", "--dry-run=server", "-f", "-"],
            &serde_json::to_string(&doc).unwrap(),
        );
        assert!(
            out.status.success(),
            "{kind} {} fails server-side dry run: {}",
            doc["metadata"]["name"],
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The cert-manager overlay injects the CA into both webhooks.
    let overlay = kustomize("certs/cert-manager");
    let injected = overlay
        .iter()
        .filter(|d| {
            d["metadata"]["annotations"]["cert-manager.io/inject-ca-from"]
                == "snapback-system/snapback"
        })
        .count();
    assert_eq!(injected, 2);
    assert!(
        overlay
            .iter()
            .any(|d| d["kind"] == "Certificate" && d["spec"]["secretName"] == "snapback-tls")
    );
}

#[test]
fn auth_none_refuses_non_loopback_addresses() {
    let out = Command::new(env!("CARGO_BIN_EXE_snapback"))
        .args([
            "serve",
            "--auth",
            "none",
            "--api-addr",
            "0.0.0.0:9443",
            "--tls-cert",
            "x",
            "--tls-key",
            "y",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--auth=none") && err.contains("loopback"),
        "{err}"
    );
    // The webhook and metrics listeners too, not only the API's.
    for (flag, loopback) in [
        (
            "--webhook-addr",
            [
                "--api-addr",
                "127.0.0.1:9443",
                "--metrics-addr",
                "127.0.0.1:9090",
            ],
        ),
        (
            "--metrics-addr",
            [
                "--api-addr",
                "127.0.0.1:9443",
                "--webhook-addr",
                "127.0.0.1:8443",
            ],
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_snapback"))
            .args([
                "serve",
                "--auth",
                "none",
                "--tls-cert",
                "x",
                "--tls-key",
                "y",
            ])
            .args(loopback)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("--auth=none") && err.contains(flag) && err.contains("0.0.0.0"),
            "{err}"
        );
    }
}

/// A port that cannot be had stops `serve` before anything starts (no
/// maintenance lease taken, no rollback resumed), with the flag named.
#[test]
fn a_busy_port_is_refused_by_its_flag_before_anything_starts() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = busy.local_addr().unwrap().to_string();
    for (flag, others) in [
        ("--api-addr", ["--webhook-addr", "--metrics-addr"]),
        ("--webhook-addr", ["--api-addr", "--metrics-addr"]),
        ("--metrics-addr", ["--api-addr", "--webhook-addr"]),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_snapback"))
            .args(["serve", flag, &taken])
            .args([others[0], "127.0.0.1:0", others[1], "127.0.0.1:0"])
            // Nothing else is looked at first: not even the kubeconfig.
            .args([
                "--kubeconfig",
                "/nonexistent",
                "--tls-cert",
                "x",
                "--tls-key",
                "y",
            ])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{flag}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("cannot listen on {taken} ({flag})")),
            "{flag}: {err}"
        );
    }
}

#[test]
fn serve_takes_the_client_context_flag_as_its_kube_context() {
    let out = Command::new(env!("CARGO_BIN_EXE_snapback"))
        .args(["serve", "--context", "one", "--kube-context", "two"])
        .args(["--tls-cert", "x", "--tls-key", "y"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--context one and --kube-context two"),
        "{err}"
    );
    // Alone, it is the context used: an unknown one is refused by name.
    let kubeconfig = cluster().kubeconfig.clone();
    let out = Command::new(env!("CARGO_BIN_EXE_snapback"))
        .args(["serve", "--context", "no-such-context", "--kubeconfig"])
        .arg(&kubeconfig)
        .args(["--api-addr", "127.0.0.1:0", "--webhook-addr", "127.0.0.1:0"])
        .args([
            "--metrics-addr",
            "127.0.0.1:0",
            "--tls-cert",
            "x",
            "--tls-key",
            "y",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no-such-context"), "{err}");
}

/// Snapshots whose action record is gone (the action deleted through the
/// snapshotter while a webhook process, which caches that the action exists,
/// kept capturing into it) get a record back from the maintenance pass: they
/// are listed, can be rolled back, and are pruned like any other.
#[tokio::test(flavor = "multi_thread")]
async fn snapshots_without_a_record_get_one_back() {
    let c = cluster();
    let tag = format!("orph{:06x}", rand::random::<u32>() & 0xffffff);
    let mut opts = SnapbackOpts::isolated(c, &tag);
    opts.extra_args = ["--maintenance-interval=1s", "--lease-duration=3s"]
        .map(String::from)
        .to_vec();
    let snapshot_ns = opts.snapshot_namespace.clone();
    let sb = Snapback::start(c, opts);
    let ns = c.namespace("orphans", &[]);
    sb.adopt_namespace(c, &ns);
    let action = format!("orphan-{tag}");
    c.kubectl_ok(&[
        "-n",
        &ns,
        "create",
        "configmap",
        "cm",
        "--from-literal=v=before",
    ]);
    c.apply_as("admin", &format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cm, namespace: {ns}, annotations: {{snapback.io/action: {action}}}}}\ndata: {{v: after}}\n"));
    let store = sb.store(c).await;
    let id = snapback::store::model::ActionId::parse(&action).unwrap();
    assert!(store.get_action(&id).await.unwrap().is_some());
    // The record goes; the snapshot stays.
    c.kubectl_ok(&[
        "-n",
        &snapshot_ns,
        "delete",
        "configmap",
        "-l",
        &format!("snapback.io/record=action,snapback.io/action={action}"),
    ]);
    assert!(store.get_action(&id).await.unwrap().is_none());
    let deadline = Instant::now() + Duration::from_secs(30);
    let record = loop {
        if let Some((r, _)) = store.get_action(&id).await.unwrap() {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "no record again; log:\n{}",
            sb.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(record.owner, "admin");
    assert_eq!(record.origin, "annotation");
    // And it rolls back.
    let api = sb.api(c);
    let report = api
        .ok(
            "POST",
            &format!("/api/v1/actions/{action}/rollback"),
            &c.token("admin"),
        )
        .await;
    assert_eq!(report["state"], "rolled-back", "{report}");
    let v = c.kubectl_ok(&["-n", &ns, "get", "cm", "cm", "-o", "jsonpath={.data.v}"]);
    assert_eq!(v, "before");
    sb.unregister(c);
}

/// SPEC §3: retention never deletes an action that is rolling back, also
/// while its rollback is still planning and has not yet marked it
/// `rolling-back`: the rollback notes `rollbackRequestedAt` on the record
/// first, retention notes `pruning` before it deletes (each with the
/// record's resourceVersion as precondition, so whichever is second sees
/// the first). Both halves, against the real API server.
#[tokio::test(flavor = "multi_thread")]
async fn retention_and_a_rollback_never_both_go_ahead() {
    use snapback::store::model::ActionId;
    let c = cluster();
    let tag = format!("prr{:06x}", rand::random::<u32>() & 0xffffff);
    let sb = keeping_two_actions(c, &tag);
    let api = sb.api(c);
    let admin = c.token("admin");
    let ns = c.namespace("prune-race", &[]);
    sb.adopt_namespace(c, &ns);
    let store = sb.store(c).await;
    let change = |name: &str| {
        c.kubectl_apply_str(&format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}, namespace: {ns}, annotations: {{snapback.io/action: {tag}-{name}}}}}\n"
        ));
        ActionId::parse(&format!("{tag}-{name}")).unwrap()
    };
    // The oldest action, with a rollback asked for and still planning.
    let asked = change("asked");
    let (mut record, rv) = store.get_action(&asked).await.unwrap().unwrap();
    record.extensions.insert(
        "rollbackRequestedAt".into(),
        Value::from(jiff::Timestamp::now().to_string()),
    );
    store.update_action(&record, &rv).await.unwrap();
    // More newer actions than --max-actions=2 keeps.
    let fills: Vec<ActionId> = (0..4).map(|n| change(&format!("fill-{n}"))).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while store.get_action(&fills[0]).await.unwrap().is_some() {
        assert!(
            Instant::now() < deadline,
            "retention never ran:\n{}",
            sb.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(
        store.get_action(&asked).await.unwrap().is_some(),
        "pruned under its rollback:\n{}",
        sb.log_tail()
    );
    // An action retention has claimed: a rollback finds nothing to restore.
    let claimed = &fills[3];
    let (mut record, rv) = store.get_action(claimed).await.unwrap().unwrap();
    record.extensions.insert(
        "pruning".into(),
        Value::from(jiff::Timestamp::now().to_string()),
    );
    store.update_action(&record, &rv).await.unwrap();
    let (status, body) = api
        .call(
            "POST",
            &format!("/api/v1/actions/{claimed}/rollback"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, 404, "{body}");
    sb.unregister(c);
}

/// A rollback refused for a conflict leaves no trace on the action's record
/// that another replica would take for a rollback still planning: the
/// action can be deleted through either replica at once (it used to be 409
/// "has not finished planning" there for a minute).
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_rollback_does_not_hold_the_action_on_another_replica() {
    let c = cluster();
    let tag = format!("rfz{:06x}", rand::random::<u32>() & 0xffffff);
    let opts = SnapbackOpts::isolated(c, &tag);
    let a = Snapback::start(c, opts.clone());
    let mut second = opts;
    second.register = false;
    let b = Snapback::start(c, second);
    let ns = c.namespace("refused", &[]);
    a.adopt_namespace(c, &ns);
    let id = format!("refused-{tag}");
    c.action_changed_since("admin", &ns, &id);
    let token = c.token("admin");
    let (status, body) = a
        .api(c)
        .call(
            "POST",
            &format!("/api/v1/actions/{id}/rollback"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, 409, "{body}");
    let (status, body) = b
        .api(c)
        .call(
            "DELETE",
            &format!("/api/v1/actions/{id}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, 204, "{body}\n{}", b.log_tail());
}

/// A DELETE that stops part way (here: snapback may delete the action's
/// Secret snapshots but not its ConfigMaps) keeps the action claimed for
/// deletion: what is left of it is not a whole action, and a rollback from
/// it could restore a state from the middle of the action, so rollbacks
/// are refused; a second DELETE finishes it.
#[tokio::test(flavor = "multi_thread")]
async fn a_deletion_that_stops_part_way_keeps_the_rest_out_of_rollbacks() {
    let c = cluster();
    let tag = format!("dpw{:06x}", rand::random::<u32>() & 0xffffff);
    let mut opts = SnapbackOpts::isolated(c, &tag);
    opts.extra_args = vec!["--capture-secrets".into()];
    let store_ns = opts.snapshot_namespace.clone();
    let sb = Snapback::start(c, opts);
    let ns = c.namespace("partway", &[]);
    sb.adopt_namespace(c, &ns);
    let id = format!("partway-{tag}");
    c.apply_as("admin", &format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cm, namespace: {ns}, annotations: {{snapback.io/action: {id}}}}}\ndata: {{v: \"1\"}}\n---\napiVersion: v1\nkind: Secret\nmetadata: {{name: s, namespace: {ns}, annotations: {{snapback.io/action: {id}}}}}\nstringData: {{v: \"1\"}}\n"));
    let role = |configmap_verbs: &str| {
        format!(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: snapback, namespace: {store_ns}}}\nrules:\n- apiGroups: [\"\"]\n  resources: [secrets]\n  verbs: [get, list, watch, create, update, delete, deletecollection]\n- apiGroups: [\"\"]\n  resources: [configmaps]\n  verbs: [{configmap_verbs}]\n"
        )
    };
    // The authorizer sees a changed Role a moment later.
    let can_delete_all = |yes: bool| {
        let store_ns = store_ns.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let out = c.kubectl(
                    "admin",
                    &[
                        "auth",
                        "can-i",
                        "deletecollection",
                        "configmaps",
                        "-n",
                        &store_ns,
                        "--as",
                        "snapback",
                    ],
                );
                if String::from_utf8_lossy(&out.stdout).trim() == if yes { "yes" } else { "no" } {
                    return;
                }
                assert!(Instant::now() < deadline, "RBAC never took the change");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    c.kubectl_apply_str(&role("get, list, watch, create, update, delete"));
    can_delete_all(false).await;
    let api = sb.api(c);
    let token = c.token("admin");
    let path = format!("/api/v1/actions/{id}");
    let (status, body) = api.call("DELETE", &path, Some(&token), None).await;
    assert!(status >= 500, "{status} {body}");
    assert!(error_message(&body).contains("stopped part way"), "{body}");
    let (status, body) = api
        .call("POST", &format!("{path}/rollback"), Some(&token), None)
        .await;
    assert_eq!(status, 404, "{body}");
    assert!(error_message(&body).contains("is being deleted"), "{body}");
    assert!(
        c.get_json(&["-n", &ns, "configmap", "cm"]).is_some(),
        "the rollback deleted what the action created"
    );
    c.kubectl_apply_str(&role(
        "get, list, watch, create, update, delete, deletecollection",
    ));
    can_delete_all(true).await;
    let (status, body) = api.call("DELETE", &path, Some(&token), None).await;
    assert_eq!(status, 204, "{body}");
    let (status, _) = api.call("GET", &path, Some(&token), None).await;
    assert_eq!(status, 404);
}
