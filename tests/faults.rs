#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
//! Faults and restarts (issue #6): a fault-injecting proxy between snapback
//! and the API server, SIGKILL during a burst of captures, and two replicas
//! behind one webhook URL with one killed under load. In `deny` mode every
//! change the API server admits must have its snapshot.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use serde_json::{Value, json};
use snapback::store::model::Operation;
use support::faults::*;
use support::*;

/// For each writer's ConfigMap: the values written, and whether the API
/// server admitted each write.
type Writes = BTreeMap<String, Vec<(u32, bool)>>;

async fn write_burst(
    c: &Cluster,
    ns: &str,
    writers: usize,
    changes: u32,
    pause: Duration,
) -> Writes {
    let client = c.client("admin").await;
    let cms: Api<ConfigMap> = Api::namespaced(client, ns);
    for w in 0..writers {
        let cm: ConfigMap = serde_json::from_value(
            json!({"metadata": {"name": format!("w{w}")}, "data": {"n": "0"}}),
        )
        .unwrap();
        // Creation may be denied while faults are injected; retry until admitted.
        for _ in 0..50 {
            if cms.create(&Default::default(), &cm).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let results = futures::stream::iter(0..writers)
        .map(|w| {
            let cms = cms.clone();
            async move {
                let name = format!("w{w}");
                let mut log = Vec::new();
                for j in 1..=changes {
                    let patch = json!({"data": {"n": j.to_string()}});
                    let ok = cms
                        .patch(&name, &Default::default(), &kube::api::Patch::Merge(&patch))
                        .await
                        .is_ok();
                    log.push((j, ok));
                    tokio::time::sleep(pause).await;
                }
                (name, log)
            }
        })
        .buffer_unordered(writers)
        .collect::<Vec<_>>()
        .await;
    results.into_iter().collect()
}

/// Every admitted write has a snapshot whose prior state is the value just
/// before it. Returns (admitted, snapshots found, lost).
async fn check_zero_lost(
    c: &Cluster,
    sb: &Snapback,
    ns: &str,
    writes: &Writes,
) -> (usize, usize, usize) {
    let client = c.client("admin").await;
    let store = sb.store(c).await;
    let metas = snapshots_in_namespace(&client, &sb.opts.snapshot_namespace, ns).await;
    let actions: BTreeSet<String> = metas.iter().map(|m| m.action.to_string()).collect();
    let mut priors: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut found = 0;
    for a in actions {
        let loaded = store
            .load_action(&snapback::store::model::ActionId::parse(&a).unwrap())
            .await
            .unwrap();
        assert!(loaded.damaged.is_empty(), "{:?}", loaded.damaged);
        for l in loaded.snapshots {
            if l.meta.operation != Operation::Update
                || l.meta.object.namespace.as_deref() != Some(ns)
            {
                continue;
            }
            let prior: Value = l.prior.unwrap().unwrap();
            priors
                .entry(l.meta.object.name.clone())
                .or_default()
                .insert(prior["data"]["n"].as_str().unwrap_or("").to_string());
            found += 1;
        }
    }
    let (mut admitted, mut lost) = (0, 0);
    for (name, log) in writes {
        let mut current = "0".to_string();
        for (j, ok) in log {
            if !ok {
                continue;
            }
            admitted += 1;
            if !priors.get(name).is_some_and(|p| p.contains(&current)) {
                lost += 1;
                eprintln!("LOST: {name} write {j} (prior {current}) has no snapshot");
            }
            current = j.to_string();
        }
    }
    (admitted, found, lost)
}

#[tokio::test(flavor = "multi_thread")]
async fn under_injected_faults_no_admitted_change_loses_its_snapshot_and_rollback_reports_accurately()
 {
    let c = cluster();
    let rates = FaultRates {
        delay: 0.05,
        error_500: 0.08,
        throttle_429: 0.08,
        conflict_409: 0.05,
        lose_response: 0.08,
    };
    let (addr, counts) = start_fault_proxy(
        &c.url,
        &c.apiserver_ca(),
        &c.certs.join("tls.crt"),
        &c.certs.join("tls.key"),
        rates,
    )
    .await;
    let tag = format!("flt{:06x}", rand::random::<u32>() & 0xffffff);
    let mut opts = SnapbackOpts::isolated(c, &tag);
    opts.kubeconfig = Some(c.snapback_kubeconfig(&format!("https://{addr}"), &tag));
    opts.extra_args = vec!["--rollback-retries=6".into()];
    let sb = Snapback::start(c, opts);
    let ns = c.namespace("faults", &[]);
    sb.adopt_namespace(c, &ns);

    // Bursts of writes, each in a namespace of its own, until the faults
    // have reached the capture path: some changes were denied, or snapshots
    // were stored for changes whose write then failed (phantoms, restored as
    // no-ops). With group commit few snapshot writes carry many changes, so
    // one burst's faults may all land on snapback's other requests. Every
    // burst must lose nothing.
    let (mut attempted, mut admitted, mut found) = (0, 0, 0);
    for burst in 0..3 {
        let burst_ns = if burst == 0 {
            ns.clone()
        } else {
            let other = c.namespace("faults", &[]);
            sb.adopt_namespace(c, &other);
            other
        };
        let writes = write_burst(c, &burst_ns, 4, 40, Duration::from_millis(0)).await;
        let tried: usize = writes.values().map(Vec::len).sum();
        let (ok, stored, lost) = check_zero_lost(c, &sb, &burst_ns, &writes).await;
        record_figure(&format!(
            "faults/capture: {tried} changes attempted, {ok} admitted, {stored} snapshots found, {lost} lost; proxy so far: {}",
            counts.summary()
        ));
        assert_eq!(lost, 0);
        (attempted, admitted, found) = (attempted + tried, admitted + ok, found + stored);
        if admitted < attempted || found > admitted {
            break;
        }
    }
    assert!(admitted > 0, "nothing admitted");
    assert!(
        admitted < attempted || found > admitted,
        "faults were injected in three bursts but neither denied a change nor left a phantom snapshot"
    );
    assert!(counts.injected() > 10);

    // A rollback with retry under the same faults: it finishes or stops, and
    // every object not back in its prior state is reported as not restored.
    let action = format!("faulty-{tag}");
    let client = c.client("admin").await;
    let cms: Api<ConfigMap> = Api::namespaced(client, &ns);
    let mut changed = Vec::new();
    for i in 0..30 {
        let name = format!("rb{i}");
        let cm: ConfigMap =
            serde_json::from_value(json!({"metadata": {"name": name}, "data": {"v": "before"}}))
                .unwrap();
        if cms.create(&Default::default(), &cm).await.is_err() {
            continue;
        }
        let patch = json!({"metadata": {"annotations": {"snapback.io/action": action}}, "data": {"v": "after"}});
        if cms
            .patch(&name, &Default::default(), &kube::api::Patch::Merge(&patch))
            .await
            .is_ok()
        {
            changed.push(name);
        }
    }
    assert!(!changed.is_empty());
    let api = sb.api(c);
    let admin = c.token("admin");
    let mut report = Value::Null;
    // A rollback interrupted by the faults is resumed once its heartbeat is
    // stale (15 s), and the resumed one meets the faults too: on a loaded
    // machine that takes a while.
    for _ in 0..45 {
        let (status, body) = api
            .call(
                "POST",
                &format!("/api/v1/actions/{action}/rollback?failurePolicy=retry"),
                Some(&admin),
                None,
            )
            .await;
        if status == 200 {
            report = body;
            break;
        }
        // 5xx: snapback could not read its own records through the faults;
        // 409: a rollback interrupted by them is being resumed.
        assert!(status >= 500 || status == 409, "{status} {body}");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    assert!(report.is_object(), "no rollback report after retries");
    let mut unreported = vec![];
    for name in &changed {
        let now = cms.get(name).await.unwrap();
        let at_prior = now
            .data
            .as_ref()
            .and_then(|d| d.get("v"))
            .map(String::as_str)
            == Some("before");
        let outcome = result_named(&report, name)["outcome"]
            .as_str()
            .unwrap_or("missing")
            .to_string();
        match outcome.as_str() {
            "restored" | "unchanged" => {
                assert!(at_prior, "{name} reported {outcome} but not restored")
            }
            "failed" | "skipped" | "conflict" => {}
            other => panic!("{name}: unexpected outcome {other}"),
        }
        if !at_prior && !matches!(outcome.as_str(), "failed" | "skipped" | "conflict") {
            unreported.push(name.clone());
        }
    }
    assert!(
        unreported.is_empty(),
        "left half-restored without being reported: {unreported:?}"
    );
    record_figure(&format!(
        "faults/rollback: {} objects, report {} ({}); proxy: {}",
        changed.len(),
        report["state"],
        report["counts"],
        counts.summary()
    ));
    sb.unregister(c);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_during_a_burst_of_captures_loses_no_admitted_change() {
    let c = cluster();
    let tag = format!("kil{:06x}", rand::random::<u32>() & 0xffffff);
    let mut opts = SnapbackOpts::isolated(c, &tag);
    opts.webhook_port = Some(free_port());
    let mut sb = Snapback::start(c, opts.clone());
    let ns = c.namespace("sigkill", &[]);
    sb.adopt_namespace(c, &ns);
    let burst = {
        let ns = ns.clone();
        tokio::spawn(
            async move { write_burst(cluster(), &ns, 4, 60, Duration::from_millis(25)).await },
        )
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    sb.kill();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let mut again = opts;
    again.register = false; // same port, same registration
    let sb2 = Snapback::start(c, again);
    let writes = burst.await.unwrap();
    let attempted: usize = writes.values().map(Vec::len).sum();
    let (admitted, found, lost) = check_zero_lost(c, &sb2, &ns, &writes).await;
    record_figure(&format!(
        "sigkill/capture: {attempted} changes attempted, {admitted} admitted, {found} snapshots found, {lost} lost"
    ));
    assert_eq!(lost, 0);
    assert!(
        admitted < attempted,
        "some changes were denied while snapback was down"
    );
    sb2.unregister(c);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_behind_one_url_keep_writes_flowing_when_one_is_killed() {
    let c = cluster();
    let tag = format!("two{:06x}", rand::random::<u32>() & 0xffffff);
    let mut a_opts = SnapbackOpts::isolated(c, &tag);
    let (a_port, b_port) = (free_port(), free_port());
    let lb = start_balancer(vec![a_port, b_port]).await;
    a_opts.webhook_port = Some(a_port);
    a_opts.webhook_url = Some(format!("https://127.0.0.1:{lb}"));
    let mut b_opts = a_opts.clone();
    b_opts.webhook_port = Some(b_port);
    b_opts.register = false;
    let mut a = Snapback::start(c, a_opts);
    let b = Snapback::start(c, b_opts);
    let ns = c.namespace("replicas", &[]);
    c.kubectl_ok(&["label", "namespace", &ns, &format!("snapback-test={tag}")]);
    // The API server keeps its connection to one replica: either may answer.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let captured = |sb: &Snapback| {
        metric(
            &sb.metrics(),
            r#"snapback_admission_requests_total{operation="create",outcome="captured",webhook="validate"}"#,
        ) > 0.0
    };
    let mut n = 0;
    while !captured(&a) && !captured(&b) {
        assert!(
            std::time::Instant::now() < deadline,
            "webhooks never called"
        );
        let _ = c.kubectl(
            "admin",
            &["-n", &ns, "create", "configmap", &format!("probe{n}")],
        );
        n += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let burst = {
        let ns = ns.clone();
        tokio::spawn(
            async move { write_burst(cluster(), &ns, 4, 60, Duration::from_millis(25)).await },
        )
    };
    tokio::time::sleep(Duration::from_millis(1200)).await;
    a.kill();
    let writes = burst.await.unwrap();
    let attempted: usize = writes.values().map(Vec::len).sum();
    let failed = writes.values().flatten().filter(|(_, ok)| !ok).count();
    let (admitted, found, lost) = check_zero_lost(c, &b, &ns, &writes).await;
    record_figure(&format!(
        "replicas: {attempted} changes attempted, {failed} failed (in flight on the killed replica), {admitted} admitted, {found} snapshots, {lost} lost"
    ));
    assert_eq!(lost, 0);
    assert!(
        failed <= 4,
        "writes kept flowing through the surviving replica ({failed} failed)"
    );
    // The later writes all went through.
    for log in writes.values() {
        assert!(log.iter().rev().take(20).all(|(_, ok)| *ok), "{log:?}");
    }
    a.unregister(c);
}

/// A proxy to the API server that holds back the POSTs `gate` names.
async fn gated_proxy(c: &Cluster, gate: Gate) -> std::net::SocketAddr {
    start_gated_proxy(
        &c.url,
        &c.apiserver_ca(),
        &c.certs.join("tls.crt"),
        &c.certs.join("tls.key"),
        gate,
    )
    .await
}

/// ConfigMaps a (v=1) and b (v=2) created, then changed to v=changed in
/// `action`.
fn create_and_change(c: &Cluster, ns: &str, action: &str) {
    for (name, before) in [("a", "1"), ("b", "2")] {
        c.kubectl_ok(&[
            "-n",
            ns,
            "create",
            "configmap",
            name,
            &format!("--from-literal=v={before}"),
        ]);
        c.apply_as("admin", &format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}, namespace: {ns}, annotations: {{snapback.io/action: {action}}}}}\ndata: {{v: changed}}\n"));
    }
}

/// a and b back at what `create_and_change` created them with.
fn assert_prior_values(c: &Cluster, ns: &str) {
    for (name, before) in [("a", "1"), ("b", "2")] {
        let v = c.kubectl_ok(&[
            "-n",
            ns,
            "get",
            "configmap",
            name,
            "-o",
            "jsonpath={.data.v}",
        ]);
        assert_eq!(v, before, "configmap {name}");
    }
}

/// `--capture-ack=queued` (fail-open only): the webhook admits a change once
/// its snapshot is queued, before the write reaches the API server; a
/// rollback asked for before the write has landed waits for it.
#[tokio::test(flavor = "multi_thread")]
async fn queued_acknowledgement_admits_before_the_write_and_a_rollback_waits_for_it() {
    let c = cluster();
    let tag = format!("qack{:06x}", rand::random::<u32>() & 0xffffff);
    let mut opts = SnapbackOpts::isolated(c, &tag);
    // Every snapshot write (a POST of a ConfigMap in the snapshot namespace)
    // is held at the proxy until the test opens the gate.
    let (gate, open) = Gate::closed(&format!(
        "/namespaces/{}/configmaps",
        opts.snapshot_namespace
    ));
    let addr = gated_proxy(c, gate).await;
    opts.kubeconfig = Some(c.snapback_kubeconfig(&format!("https://{addr}"), &tag));
    opts.extra_args = vec![
        "--capture-failure=allow".into(),
        "--capture-ack=queued".into(),
    ];
    let sb = Snapback::start(c, opts);
    let ns = c.namespace("qack", &[]);
    sb.adopt_namespace(c, &ns);
    let action = format!("queued-{tag}");
    create_and_change(c, &ns, &action);

    // Admitted while no snapshot could be written yet.
    let admin_client = c.client("admin").await;
    let stored: Api<ConfigMap> = Api::namespaced(admin_client, &sb.opts.snapshot_namespace);
    let written = stored
        .list_metadata(&kube::api::ListParams::default())
        .await
        .unwrap();
    assert!(written.items.is_empty(), "the gate let a write through");
    let queued = metric(&sb.metrics(), "snapback_snapshot_writes_queued");
    assert!(queued >= 4.0, "4 changes admitted, {queued} writes queued");

    // The rollback waits for the queued writes, so it finds the action.
    let rollback = {
        let api = sb.api(c);
        let admin = c.token("admin");
        let path = format!("/api/v1/actions/{action}/rollback");
        tokio::spawn(async move { api.call("POST", &path, Some(&admin), None).await })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !rollback.is_finished(),
        "the rollback answered before the snapshots it needs were written"
    );
    open.send(true).unwrap();
    let (status, report) = rollback.await.unwrap();
    assert_eq!(status, 200, "{report}");
    assert_eq!(
        nonzero(&report["counts"]),
        json!({"restored": 2}),
        "{report}"
    );
    assert_prior_values(c, &ns);
    let text = sb.metrics();
    assert_eq!(metric(&text, "snapback_snapshot_writes_queued"), 0.0);
    assert_eq!(
        metric(&text, "snapback_uncaptured_changes_admitted_total"),
        0.0,
        "no write failed"
    );
    sb.unregister(c);
}

/// `--capture-ack=journaled` (deny mode): the webhook admits a change once
/// its snapshot is flushed to the local journal, before the write reaches
/// the API server. When the process dies before the write (SIGKILL here),
/// the next start with the same `--journal-dir` writes what the journal
/// holds, and the action rolls back as if nothing had happened.
#[tokio::test(flavor = "multi_thread")]
async fn journaled_snapshots_survive_a_crash_and_the_next_start_writes_them() {
    let c = cluster();
    let tag = format!("jnl{:06x}", rand::random::<u32>() & 0xffffff);
    let mut opts = SnapbackOpts::isolated(c, &tag);
    // The first process's snapshot writes never get through (the gate is
    // never opened): only the journal has them.
    let (gate, _never_opened) = Gate::closed(&format!(
        "/namespaces/{}/configmaps",
        opts.snapshot_namespace
    ));
    let addr = gated_proxy(c, gate).await;
    let journal = c.dir.join(format!("journal-{tag}"));
    let journal_args: Vec<String> = vec![
        "--capture-ack=journaled".into(),
        "--journal-dir".into(),
        journal.to_str().unwrap().into(),
    ];
    let mut restart = opts.clone();
    restart.extra_args = journal_args.clone();
    opts.kubeconfig = Some(c.snapback_kubeconfig(&format!("https://{addr}"), &tag));
    opts.extra_args = journal_args;
    let mut sb = Snapback::start(c, opts);
    let ns = c.namespace("jnl", &[]);
    sb.adopt_namespace(c, &ns);
    let action = format!("journaled-{tag}");
    create_and_change(c, &ns, &action);

    // Admitted in deny mode although no snapshot could be written.
    let admin_client = c.client("admin").await;
    let stored: Api<ConfigMap> = Api::namespaced(admin_client, &sb.opts.snapshot_namespace);
    let written = stored
        .list_metadata(&kube::api::ListParams::default())
        .await
        .unwrap();
    assert!(written.items.is_empty(), "the gate let a write through");
    let text = sb.metrics();
    assert!(
        metric(&text, "snapback_snapshot_writes_queued") >= 4.0,
        "4 changes admitted: {text}"
    );
    assert_eq!(
        metric(&text, "snapback_uncaptured_changes_admitted_total"),
        0.0
    );
    sb.kill();

    // The next start, straight to the API server, writes the journal.
    let sb = Snapback::start(c, restart);
    let api = sb.api(c);
    let (status, report) = api
        .call(
            "POST",
            &format!("/api/v1/actions/{action}/rollback"),
            Some(&c.token("admin")),
            None,
        )
        .await;
    assert_eq!(status, 200, "{report}\n{}", sb.log_tail());
    assert_eq!(
        nonzero(&report["counts"]),
        json!({"restored": 2}),
        "{report}"
    );
    assert_prior_values(c, &ns);
    let text = sb.metrics();
    for op in ["create", "update"] {
        let sample = format!("snapback_snapshots_stored_total{{operation=\"{op}\"}}");
        assert!(metric(&text, &sample) >= 2.0, "{text}");
    }
    assert_eq!(metric(&text, "snapback_snapshot_writes_queued"), 0.0);
    // Written entries leave the journal: the old segment is gone, only the
    // one the new process appends to is left.
    let segments = std::fs::read_dir(&journal)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("segment-"))
        .count();
    assert_eq!(segments, 1);
    sb.unregister(c);
}

/// An API server that takes connections but does not answer (overloaded,
/// stopped): an API call is a 503 once its TokenReview has waited its
/// time, not a request left without any answer; once the API server
/// answers again, so does snapback.
#[tokio::test(flavor = "multi_thread")]
async fn an_api_server_that_does_not_answer_makes_api_calls_503_not_hang() {
    let c = cluster();
    let tag = format!("hang{:06x}", rand::random::<u32>() & 0xffffff);
    let mut opts = SnapbackOpts::isolated(c, &tag);
    // Every TokenReview is held at the proxy until the test opens the gate.
    let (gate, open) = Gate::closed("/tokenreviews");
    let addr = start_gated_proxy(
        &c.url,
        &c.apiserver_ca(),
        &c.certs.join("tls.crt"),
        &c.certs.join("tls.key"),
        gate,
    )
    .await;
    opts.kubeconfig = Some(c.snapback_kubeconfig(&format!("https://{addr}"), &tag));
    let sb = Snapback::start(c, opts);
    let api = sb.api(c);
    let token = c.token("admin");
    let (status, body) = api
        .call("GET", "/api/v1/actions?limit=1", Some(&token), None)
        .await;
    assert_eq!(status, 503, "{body}");
    let message = error_message(&body);
    assert!(
        message.contains("TokenReview") && message.contains("did not answer"),
        "{body}"
    );
    open.send(true).unwrap();
    let (status, body) = api
        .call("GET", "/api/v1/actions?limit=1", Some(&token), None)
        .await;
    assert_eq!(status, 200, "{body}");
    sb.unregister(c);
}

/// SPEC §5: opening an action answers 409 if the caller has one open, also
/// when two opens of one caller reach two replicas at once. Replica B's
/// create of the record is held at a proxy after B found nothing open;
/// replica A opens one meanwhile; once B's create lands, B finds A's and
/// gives way (it used to answer 201 too: two open actions for one user).
#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_never_open_two_actions_for_one_caller() {
    let c = cluster();
    let tag = format!("opn{:06x}", rand::random::<u32>() & 0xffffff);
    let opts = SnapbackOpts::isolated(c, &tag);
    let a = Snapback::start(c, opts.clone());
    let (gate, open_gate) = Gate::closed(&format!(
        "/namespaces/{}/configmaps",
        opts.snapshot_namespace
    ));
    let addr = gated_proxy(c, gate).await;
    let mut second = opts;
    second.register = false;
    second.kubeconfig = Some(c.snapback_kubeconfig(&format!("https://{addr}"), &tag));
    let b = Snapback::start(c, second);
    let token = c.token("admin");
    let through_b = {
        let api = b.api(c);
        let token = token.clone();
        tokio::spawn(async move {
            api.call("POST", "/api/v1/actions", Some(&token), Some("{}"))
                .await
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!through_b.is_finished(), "B's create was not held");
    let (status, opened) = a
        .api(c)
        .call("POST", "/api/v1/actions", Some(&token), Some("{}"))
        .await;
    assert_eq!(status, 201, "{opened}");
    open_gate.send(true).unwrap();
    let (status, body) = through_b.await.unwrap();
    assert_eq!(status, 409, "{body}");
    assert!(
        error_message(&body).contains(opened["id"].as_str().unwrap()),
        "{body}"
    );
    // Only A's is open.
    let list = a
        .api(c)
        .ok("GET", "/api/v1/actions?state=open", &token)
        .await;
    let explicit: Vec<&Value> = list["actions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["origin"] == "explicit" && x["owner"] == "admin")
        .collect();
    assert_eq!(explicit.len(), 1, "{list:#}");
    assert_eq!(explicit[0]["id"], opened["id"]);
}
