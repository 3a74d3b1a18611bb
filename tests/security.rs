#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
//! Security and hostile input (issue #6): TLS versions, client certificates
//! on the webhook port, tokens never logged, and broken or hostile requests
//! to both ports answered with clear 4xx and no panic.

mod support;

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{Value, json};
use support::*;

fn s_client(port: u16, version: &str, extra: &[&str]) -> String {
    let c = cluster();
    let mut out = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            version,
            "-cipher",
            "DEFAULT@SECLEVEL=0",
            "-ign_eof",
        ])
        .arg("-CAfile")
        .arg(c.certs.join("ca.crt"))
        .args(extra)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("openssl s_client (Debian package openssl)");
    // Send a request, so the client also reads what the server answers
    // after the handshake (TLS 1.3 refuses a missing client certificate then).
    let mut stdin = out.stdin.take().unwrap();
    let _ = std::io::Write::write_all(&mut stdin, b"GET /healthz HTTP/1.0\r\n\r\n");
    drop(stdin);
    let out = out.wait_with_output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn only_tls_1_2_and_1_3_are_offered() {
    let sb = shared_snapback();
    for port in [sb.webhook_port, sb.api_port] {
        for old in ["-tls1", "-tls1_1"] {
            let out = s_client(port, old, &[]);
            // The client really offered the old version, and was refused.
            assert!(
                out.contains("Cipher is (NONE)"),
                "{old} on {port} was accepted:\n{out}"
            );
            assert!(out.contains("alert"), "{out}");
        }
        for (new, name) in [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")] {
            let out = s_client(port, new, &[]);
            assert!(
                out.contains(&format!("New, {name}, Cipher is")),
                "{new} on {port}:\n{out}"
            );
            assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
        }
    }
}

#[test]
fn the_webhook_port_can_require_a_client_certificate() {
    let c = cluster();
    let tag = format!("mtls{:06x}", rand::random::<u32>() & 0xffffff);
    let mut opts = SnapbackOpts::isolated(c, &tag);
    opts.register = false; // this API server presents no client certificate
    opts.extra_args = vec![
        "--webhook-client-ca".into(),
        c.certs.join("ca.crt").display().to_string(),
    ];
    let sb = Snapback::start(c, opts);
    let without = s_client(sb.webhook_port, "-tls1_3", &[]);
    assert!(without.contains("alert certificate required"), "{without}");
    let cert = c.certs.join("tls.crt").display().to_string();
    let key = c.certs.join("tls.key").display().to_string();
    let with = s_client(sb.webhook_port, "-tls1_3", &["-cert", &cert, "-key", &key]);
    assert!(
        with.contains("Verify return code: 0 (ok)") && !with.contains("certificate required"),
        "{with}"
    );
    // The API port is unaffected: callers authenticate with tokens.
    let api = s_client(sb.api_port, "-tls1_3", &[]);
    assert!(!api.contains("certificate required"), "{api}");
}

/// Requests tried and 5xx seen, printed at the end of the run.
static TRIED: AtomicUsize = AtomicUsize::new(0);

async fn expect_4xx(
    api: &ApiClient,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> u16 {
    TRIED.fetch_add(1, Ordering::Relaxed);
    let status = api.raw(method, path, headers, body).await;
    assert!((400..500).contains(&status), "{method} {path} → {status}");
    status
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_input_gets_a_clear_4xx_and_never_a_panic() {
    let c = cluster();
    let sb = shared_snapback();
    let api = sb.api(c);
    let token = c.token("admin");
    let auth = format!("Bearer {token}");
    let h = [
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    let deep = "[".repeat(100_000) + &"]".repeat(100_000);
    let deep_obj = format!("{}1{}", "{\"a\":".repeat(5000), "}".repeat(5000));

    // The rollback API.
    assert_eq!(
        expect_4xx(
            &api,
            "POST",
            "/api/v1/actions",
            &h,
            deep.clone().into_bytes()
        )
        .await,
        413
    );
    assert_eq!(
        expect_4xx(
            &api,
            "POST",
            "/api/v1/actions",
            &h,
            deep_obj.clone().into_bytes()
        )
        .await,
        400
    );
    assert_eq!(
        expect_4xx(
            &api,
            "POST",
            "/api/v1/actions",
            &h,
            vec![0xff, 0xfe, 0x7b, 0x7d]
        )
        .await,
        400
    );
    assert_eq!(
        expect_4xx(&api, "POST", "/api/v1/actions", &h, b"[1,2,3]".to_vec()).await,
        400
    );
    let yaml = [
        ("authorization", auth.as_str()),
        ("content-type", "application/yaml"),
    ];
    assert_eq!(
        expect_4xx(&api, "POST", "/api/v1/actions", &yaml, b"{}".to_vec()).await,
        415
    );
    // What `curl -d` sends: the JSON body is read (and here its id refused).
    let form = [
        ("authorization", auth.as_str()),
        ("content-type", "application/x-www-form-urlencoded"),
    ];
    assert_eq!(
        expect_4xx(
            &api,
            "POST",
            "/api/v1/actions",
            &form,
            br#"{"id": "bad id!"}"#.to_vec()
        )
        .await,
        400
    );
    let label_unsafe = json!({"id": "Ünïcödé/../../etc"}).to_string();
    assert_eq!(
        expect_4xx(
            &api,
            "POST",
            "/api/v1/actions",
            &h,
            label_unsafe.into_bytes()
        )
        .await,
        400
    );
    let long_id = "a".repeat(253);
    for path in [
        format!("/api/v1/actions/{long_id}"),
        format!("/api/v1/actions/{long_id}/rollback"),
        "/api/v1/actions/%00%01".to_string(),
        // Not UTF-8 once decoded.
        "/api/v1/actions/%FF%FE".to_string(),
        "/api/v1/actions/..%2F..%2Fetc".to_string(),
        format!("/api/v1/actions?state={}", "x".repeat(10_000)),
        format!("/api/v1/actions?limit={}", "9".repeat(400)),
        "/api/v1/actions?since=%ff%fe".to_string(),
        // Each part of the duration fits, the sum overflows.
        "/api/v1/actions?since=4000000000000000h4000000000000000h".to_string(),
        "/api/v1/actions/x/rollback?force=maybe".to_string(),
    ] {
        let method = if path.contains("rollback") {
            "POST"
        } else {
            "GET"
        };
        expect_4xx(&api, method, &path, &h, vec![]).await;
    }
    let bad_auth = [
        ("authorization", "Basic YWRtaW46YWRtaW4="),
        ("content-type", "application/json"),
    ];
    assert_eq!(
        expect_4xx(&api, "GET", "/api/v1/actions", &bad_auth, vec![]).await,
        401
    );
    let huge = format!("Bearer {}", "t".repeat(20_000));
    assert_eq!(
        expect_4xx(
            &api,
            "GET",
            "/api/v1/actions",
            &[("authorization", huge.as_str())],
            vec![]
        )
        .await,
        401
    );

    // The webhook port: malformed reviews are refused, oversized ones 413.
    let webhook = ApiClient::new(c, sb.webhook_port);
    for body in [
        b"not json".to_vec(),
        deep.clone().into_bytes(),
        vec![0xc3, 0x28],
        b"{}".to_vec(),
    ] {
        let status = webhook
            .raw(
                "POST",
                "/validate",
                &[("content-type", "application/json")],
                body,
            )
            .await;
        TRIED.fetch_add(1, Ordering::Relaxed);
        assert!((400..500).contains(&status) || status == 200, "{status}");
    }
    let oversized = vec![b' '; 21 * 1024 * 1024];
    TRIED.fetch_add(1, Ordering::Relaxed);
    assert_eq!(webhook.raw("POST", "/validate", &[], oversized).await, 413);

    // An oversized body is refused with a 413 the client can read, not a
    // connection closed while it is still writing (a broken pipe): repeated,
    // because that race is lost only now and then.
    for _ in 0..10 {
        let big = vec![b'x'; 2 * 1024 * 1024];
        assert_eq!(
            expect_4xx(&api, "POST", "/api/v1/actions", &h, big).await,
            413
        );
    }

    // Objects at the limits are captured and round-trip: a 253-character
    // name and a 63-character label value.
    let ns = c.namespace("limits", &[]);
    let name = format!("x{}", "y".repeat(252));
    let label = "v".repeat(63);
    let action = format!("limits-{:06x}", rand::random::<u32>() & 0xffffff);
    c.apply_as("admin", &format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: {ns}\n  labels: {{k: {label}}}\n  annotations: {{snapback.io/action: {action}}}\ndata: {{a: b}}\n"));
    let detail = api
        .ok("GET", &format!("/api/v1/actions/{action}"), &token)
        .await;
    assert_eq!(detail["changes"][0]["name"], name.as_str());
    let report = api
        .ok(
            "POST",
            &format!("/api/v1/actions/{action}/rollback"),
            &token,
        )
        .await;
    assert_eq!(report["results"][0]["outcome"], "restored", "{report}");

    // Still alive and healthy after all of it.
    assert_eq!(http_get(sb.metrics_port, "/healthz").unwrap(), "ok");
    let tried = TRIED.load(Ordering::Relaxed);
    record_figure(&format!("hostile inputs: {tried} tried, 0 answered 5xx"));
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_are_never_logged() {
    let c = cluster();
    let tag = format!("tok{:06x}", rand::random::<u32>() & 0xffffff);
    let mut opts = SnapbackOpts::isolated(c, &tag);
    opts.register = false;
    opts.log_level = Some("trace".into());
    let sb = Snapback::start(c, opts);
    let api = sb.api(c);
    let admin = c.token("admin");
    let fake = "sb-fake-token-0123456789abcdef";
    api.call("GET", "/api/v1/actions", Some(&admin), None).await;
    api.call("GET", "/api/v1/actions", Some(fake), None).await;
    api.raw(
        "GET",
        "/api/v1/actions",
        &[("x-snapback-authorization", &format!("Bearer {admin}"))],
        vec![],
    )
    .await;
    api.call("POST", "/api/v1/actions/nope/rollback", Some(&admin), None)
        .await;
    let log = std::fs::read_to_string(&sb.log).unwrap();
    assert!(log.lines().count() > 20, "trace logging is on");
    assert!(!log.contains(&admin), "the admin token appears in the log");
    assert!(!log.contains(fake), "a rejected token appears in the log");
    // snapback's own token is not logged either.
    assert!(!log.contains(&c.token("snapback")));
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_leave_no_trace_without_capture_secrets() {
    let c = cluster();
    let sb = shared_snapback();
    let ns = c.namespace("nosecret", &[]);
    let marker = format!("s3cr3t-{:08x}", rand::random::<u32>());
    c.kubectl_ok(&[
        "-n",
        &ns,
        "create",
        "secret",
        "generic",
        "s",
        &format!("--from-literal=k={marker}"),
    ]);
    c.kubectl_ok(&[
        "-n",
        &ns,
        "patch",
        "secret",
        "s",
        "-p",
        r#"{"stringData":{"k":"other"}}"#,
    ]);
    c.kubectl_ok(&["-n", &ns, "delete", "secret", "s"]);
    // Not in any object of the snapshot namespace, not in the log.
    let all = c.kubectl_ok(&[
        "-n",
        &sb.opts.snapshot_namespace,
        "get",
        "configmaps,secrets",
        "-o",
        "json",
    ]);
    let v: Value = serde_json::from_str(&all).unwrap();
    let encoded = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &marker);
    for item in v["items"].as_array().unwrap() {
        let text = item.to_string();
        assert!(
            !text.contains(&marker) && !text.contains(&encoded),
            "{}",
            item["metadata"]["name"]
        );
        assert_ne!(
            item["metadata"]["labels"]["snapback.io/resource"],
            "secrets.core"
        );
    }
    assert!(!std::fs::read_to_string(&sb.log).unwrap().contains(&marker));
}

#[tokio::test(flavor = "multi_thread")]
async fn prior_states_are_shown_only_to_those_who_may_read_the_object() {
    let c = cluster();
    let sb = shared_snapback();
    let api = sb.api(c);
    c.grant_api("alice");
    c.grant_api("bob");
    let ns = c.namespace("private", &["alice"]);
    let marker = format!("private-{:08x}", rand::random::<u32>());
    c.kubectl_as_ok(
        "alice",
        &[
            "-n",
            &ns,
            "create",
            "configmap",
            "cm",
            &format!("--from-literal=v={marker}"),
        ],
    );
    let id = format!("priv-{:06x}", rand::random::<u32>() & 0xffffff);
    c.apply_as("alice", &format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cm, namespace: {ns}, annotations: {{snapback.io/action: {id}}}}}\ndata: {{v: changed}}\n"));
    // bob may use the API but not read alice's namespace.
    for path in [
        format!("/api/v1/actions/{id}/diff"),
        format!("/api/v1/actions/{id}/manifests"),
    ] {
        let (status, body) = api.call("GET", &path, Some(&c.token("bob")), None).await;
        assert_eq!(status, 200, "{body}");
        assert!(
            !body.to_string().contains(&marker),
            "{path} leaked the prior state to bob: {body}"
        );
    }
    let (_, diff) = api
        .call(
            "GET",
            &format!("/api/v1/actions/{id}/diff"),
            Some(&c.token("bob")),
            None,
        )
        .await;
    assert!(
        diff["objects"][0]["error"]
            .as_str()
            .unwrap()
            .contains("may not get"),
        "{diff}"
    );
    // alice sees it.
    let (_, diff) = api
        .call(
            "GET",
            &format!("/api/v1/actions/{id}/diff"),
            Some(&c.token("alice")),
            None,
        )
        .await;
    assert!(diff.to_string().contains(&marker), "{diff}");
}

/// SPEC §5: 401 for no or an invalid token. A caller without one learns
/// nothing about its parameters, body or ids; a caller without the right
/// learns nothing either (403 before 400).
#[tokio::test(flavor = "multi_thread")]
async fn callers_are_authenticated_and_authorised_before_their_input_is_read() {
    let c = cluster();
    let sb = shared_snapback();
    let api = sb.api(c);
    let json = [("content-type", "application/json")];
    let xml = [("content-type", "text/xml")];
    let none: [(&str, &str); 0] = [];
    for (method, path, headers, body) in [
        (
            "POST",
            "/api/v1/actions/a1/rollback?dryRun=maybe",
            &none[..],
            &b""[..],
        ),
        ("POST", "/api/v1/actions", &json[..], &b"{"[..]),
        ("POST", "/api/v1/actions", &xml[..], &b"x"[..]),
        ("GET", "/api/v1/actions/a%2Fb", &none[..], &b""[..]),
        ("GET", "/api/v1/actions?limit=abc", &none[..], &b""[..]),
        (
            "DELETE",
            "/api/v1/actions/x?dryRun=true",
            &none[..],
            &b""[..],
        ),
        ("POST", "/api/v1/hooks/alertmanager", &json[..], &b""[..]),
    ] {
        assert_eq!(
            api.raw(method, path, headers, body.to_vec()).await,
            401,
            "{method} {path} without a token"
        );
    }
    // user8 is authenticated and may do nothing with actions.
    let nobody = format!("Bearer {}", c.token("user8"));
    for (method, path) in [
        ("GET", "/api/v1/actions?limit=abc"),
        ("POST", "/api/v1/actions/x/rollback?failurePolicy=bogus"),
        ("POST", "/api/v1/actions/x/cancel?dryRun=maybe"),
        // An invalid id is a 400 only for a caller who holds the verb.
        ("GET", "/api/v1/actions/a%20b"),
        ("GET", "/api/v1/actions/a%20b/diff"),
        ("POST", "/api/v1/actions/a%20b/complete"),
        ("POST", "/api/v1/actions/a%20b/rollback"),
        ("DELETE", "/api/v1/actions/a%20b"),
    ] {
        assert_eq!(
            api.raw(method, path, &[("authorization", nobody.as_str())], vec![])
                .await,
            403,
            "{method} {path} by a caller without the right"
        );
    }
    let admin = format!("Bearer {}", c.token("admin"));
    assert_eq!(
        api.raw(
            "GET",
            "/api/v1/actions/a%20b",
            &[("authorization", admin.as_str())],
            vec![]
        )
        .await,
        400,
        "an invalid id, by a caller who may read actions"
    );
    // One credential per call.
    assert_eq!(
        api.raw(
            "GET",
            "/api/v1/actions",
            &[
                ("authorization", nobody.as_str()),
                ("authorization", admin.as_str())
            ],
            vec![]
        )
        .await,
        401,
        "two Authorization headers"
    );
}

/// A misspelt or foreign query parameter never runs the real operation
/// (`DELETE …?dryRun=true` must not delete), and ids of the form of
/// rollback ids cannot be taken: a rollback is always recorded as a new
/// action of its own (SPEC §1), never into one someone opened under the id
/// it was going to take.
#[tokio::test(flavor = "multi_thread")]
async fn unknown_parameters_change_nothing_and_rollback_ids_are_reserved() {
    let c = cluster();
    let sb = shared_snapback();
    let api = sb.api(c);
    let token = c.token("admin");
    let ns = c.namespace("reserved", &[]);
    let id = format!("resv-{:06x}", rand::random::<u32>() & 0xffffff);
    c.apply_as("admin", &format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cm, namespace: {ns}, annotations: {{snapback.io/action: {id}}}}}\ndata: {{v: one}}\n"));
    for (method, path) in [
        ("DELETE", format!("/api/v1/actions/{id}?dryRun=true")),
        ("GET", format!("/api/v1/actions/{id}?verbose=1")),
        ("GET", format!("/api/v1/actions/{id}/diff?context=3")),
        ("POST", format!("/api/v1/actions/{id}/complete?force=true")),
    ] {
        let (status, body) = api.call(method, &path, Some(&token), None).await;
        assert_eq!(status, 400, "{method} {path}: {body}");
        assert!(
            error_message(&body).contains("unknown query parameter"),
            "{body}"
        );
    }
    api.ok("GET", &format!("/api/v1/actions/{id}"), &token)
        .await;
    // Nor does a POST with a body: no action is opened, no alert handled.
    let unopened = format!("{id}-dry");
    for (path, body) in [
        (
            "/api/v1/actions?dryRun=true".to_string(),
            json!({ "id": unopened }),
        ),
        (
            "/api/v1/hooks/alertmanager?bogus=1".to_string(),
            json!({"version": "4", "status": "firing", "alerts": [
                {"status": "firing", "labels": {"snapback_action": id}}]}),
        ),
    ] {
        let (status, answer) = api
            .call("POST", &path, Some(&token), Some(&body.to_string()))
            .await;
        assert_eq!(status, 400, "POST {path}: {answer}");
        assert!(
            error_message(&answer).contains("unknown query parameter"),
            "{answer}"
        );
    }
    let (status, _) = api
        .call(
            "GET",
            &format!("/api/v1/actions/{unopened}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, 404, "?dryRun=true opened an action");
    // Parameters sent in a body rather than the query string are refused,
    // not ignored: `{"dryRun": true}` must not run the real rollback or
    // delete. An empty body, `{}` and `null` are nothing.
    for (method, path) in [
        ("POST", format!("/api/v1/actions/{id}/rollback")),
        ("POST", format!("/api/v1/actions/{id}/cancel")),
        ("POST", format!("/api/v1/actions/{id}/complete")),
        ("DELETE", format!("/api/v1/actions/{id}")),
    ] {
        let (status, answer) = api
            .call(method, &path, Some(&token), Some(r#"{"dryRun": true}"#))
            .await;
        assert_eq!(status, 400, "{method} {path}: {answer}");
        assert!(
            error_message(&answer).contains("takes no request body"),
            "{answer}"
        );
    }
    for (body, flag) in [(Some("{}"), "True"), (Some(" null "), "TRUE"), (None, "1")] {
        let (status, plan) = api
            .call(
                "POST",
                &format!("/api/v1/actions/{id}/rollback?dryRun={flag}"),
                Some(&token),
                body,
            )
            .await;
        assert_eq!(status, 200, "dryRun={flag}, body {body:?}: {plan}");
        assert_eq!(plan["dryRun"], true, "{plan}");
    }
    assert_eq!(
        get_cm(c, &ns, "cm").expect("the ConfigMap")["data"]["v"],
        "one",
        "a refused or dry-run rollback changed it"
    );
    let record = api
        .ok("GET", &format!("/api/v1/actions/{id}"), &token)
        .await;
    assert_eq!(record["rollbacks"], 0, "the alert rolled it back: {record}");

    let taken = format!("{id}-rollback-1");
    let (status, body) = api
        .call(
            "POST",
            "/api/v1/actions",
            Some(&token),
            Some(&json!({ "id": taken }).to_string()),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(error_message(&body).contains("reserved"), "{body}");
    let out = c.kubectl_stdin("admin", &["apply", "-f", "-"], &format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: other, namespace: {ns}, annotations: {{snapback.io/action: {taken}}}}}\ndata: {{v: x}}\n"));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("reserved for rollback actions"), "{stderr}");
    assert!(get_cm(c, &ns, "other").is_none());

    let report = api
        .ok("POST", &format!("/api/v1/actions/{id}/rollback"), &token)
        .await;
    assert_eq!(report["rollbackAction"], taken.as_str(), "{report}");
    let rollback = api
        .ok("GET", &format!("/api/v1/actions/{taken}"), &token)
        .await;
    assert_eq!(rollback["rollbackOf"], id.as_str(), "{rollback}");
    assert_eq!(rollback["origin"], "rollback", "{rollback}");

    // A list cut by its limit says how many matched.
    let list = api
        .ok("GET", "/api/v1/actions?user=admin&limit=1", &token)
        .await;
    assert_eq!(list["actions"].as_array().unwrap().len(), 1, "{list}");
    assert!(list["total"].as_u64().unwrap() >= 2, "{list}");
}

fn get_cm(c: &Cluster, ns: &str, name: &str) -> Option<Value> {
    let out = c.kubectl("admin", &["-n", ns, "get", "configmap", name, "-o", "json"]);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).unwrap())
}

/// A service account calls the API (a CI system, Alertmanager): snapback acts
/// as it, which takes the impersonate right on `serviceaccounts` as well as
/// on users and groups (`manifests/rbac.yaml`).
#[tokio::test(flavor = "multi_thread")]
async fn a_service_account_caller_rolls_back_as_itself() {
    let c = cluster();
    let sb = shared_snapback();
    let api = sb.api(c);
    let ns = c.namespace("sa-caller", &[]);
    let user = format!("system:serviceaccount:{ns}:robot");
    let token = c.service_account(&ns, "robot");
    c.grant_api(&user);
    c.kubectl_with_token_ok(
        &token,
        &[
            "-n",
            &ns,
            "create",
            "configmap",
            "robo",
            "--from-literal=v=1",
        ],
    );
    let (_, list) = api
        .call(
            "GET",
            &format!("/api/v1/actions?namespace={ns}"),
            Some(&token),
            None,
        )
        .await;
    let id = list["actions"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(list["actions"][0]["owner"], user.as_str(), "{list}");
    let (status, report) = api
        .call(
            "POST",
            &format!("/api/v1/actions/{id}/rollback"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["state"], "rolled-back", "{report}");
    assert_eq!(report["results"][0]["outcome"], "restored", "{report}");
    assert!(get_cm(c, &ns, "robo").is_none(), "robo is still there");
}
