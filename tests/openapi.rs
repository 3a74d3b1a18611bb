#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
//! `/openapi.json` against the router: every documented operation is routed,
//! and the documented set is exactly SPEC §5's table (issue #3).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::Value;
use snapback::api::{ApiState, auth::Auth};
use snapback::config::{FailurePolicy, RollbackConfig};
use snapback::metrics::Metrics;
use snapback::restore::rollback::Restorer;
use snapback::server::Readiness;
use snapback::store::kube_store::KubeStore;
use tower::ServiceExt;

fn state() -> Arc<ApiState> {
    snapback::tls::install_crypto_provider();
    // An API server that is not there: handlers that reach it answer 503,
    // which still proves the route exists.
    let config = kube::Config::new("https://127.0.0.1:1".parse().unwrap());
    let client = kube::Client::try_from(config.clone()).unwrap();
    let store = Arc::new(KubeStore::new(client, "snapback-system"));
    let metrics = Metrics::standalone();
    let restorer = Arc::new(Restorer::new(
        store.clone(),
        config,
        false,
        RollbackConfig {
            window: std::time::Duration::from_secs(3600),
            failure_policy: FailurePolicy::Abort,
            retries: 0,
            parallelism: 8,
        },
        metrics.clone(),
    ));
    Arc::new(ApiState {
        store,
        restorer,
        auth: Auth::None,
        attribution: None,
        metrics,
        readiness: Readiness {
            tls_loaded: Arc::new(AtomicBool::new(true)),
            api_reachable: Arc::new(AtomicBool::new(true)),
        },
        open_lock: tokio::sync::Mutex::new(()),
        alerts: snapback::api::AlertConfig {
            window: std::time::Duration::from_secs(3600),
            rollback_as: None,
        },
        pending: None,
    })
}

/// A program of the tools' virtualenv (`make tools`).
fn venv_tool(name: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(std::env::var("HOME").unwrap())
        .join(".cache/snapback/venv/bin")
        .join(name)
}

async fn send(router: &axum::Router, method: &str, path: &str) -> (StatusCode, Value) {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(Body::from(if method == "POST" { "{}" } else { "" }))
        .unwrap();
    let resp = router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn every_documented_operation_is_routed_and_matches_the_spec_table() {
    let router = snapback::api::router(state());
    let (status, spec) = send(&router, "GET", "/openapi.json").await;
    assert_eq!(status, 200);
    assert!(spec["openapi"].as_str().unwrap().starts_with("3."));
    let mut documented = BTreeSet::new();
    for (path, ops) in spec["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            documented.insert(format!("{} {path}", method.to_uppercase()));
            let concrete = path.replace("{id}", "some-action");
            let (status, body) = send(&router, &method.to_uppercase(), &concrete).await;
            assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            assert!(
                body["error"]["message"] != "no such endpoint",
                "{method} {path} is documented but not routed"
            );
        }
    }
    let spec_table: BTreeSet<String> = [
        "GET /api/v1/actions",
        "POST /api/v1/actions",
        "GET /api/v1/actions/{id}",
        "GET /api/v1/actions/{id}/diff",
        "GET /api/v1/actions/{id}/manifests",
        "POST /api/v1/actions/{id}/complete",
        "POST /api/v1/actions/{id}/rollback",
        "POST /api/v1/actions/{id}/cancel",
        "DELETE /api/v1/actions/{id}",
        "POST /api/v1/hooks/alertmanager",
        "GET /healthz",
        "GET /readyz",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(documented, spec_table);
    // The API server being down is the caller's cue to retry, not an
    // internal error.
    let (status, body) = send(&router, "GET", "/api/v1/actions").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "Unavailable", "{body}");
    // Undocumented routes do not exist.
    let (status, body) = send(&router, "GET", "/api/v1/secret-endpoint").await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "NotFound");
}

#[tokio::test]
async fn the_rollback_report_schema_has_the_spec_fields() {
    let router = snapback::api::router(state());
    let (_, spec) = send(&router, "GET", "/openapi.json").await;
    let report = &spec["components"]["schemas"]["Report"]["properties"];
    for field in [
        "action",
        "rollbackAction",
        "trigger",
        "dryRun",
        "state",
        "startedAt",
        "finishedAt",
        "results",
        "counts",
    ] {
        assert!(
            report.get(field).is_some(),
            "Report.{field} missing: {report}"
        );
    }
    let result = &spec["components"]["schemas"]["ObjectResult"]["properties"];
    for field in [
        "group",
        "version",
        "resource",
        "namespace",
        "name",
        "operation",
        "outcome",
        "message",
    ] {
        assert!(result.get(field).is_some(), "ObjectResult.{field} missing");
    }
    let error = &spec["components"]["schemas"]["ErrorBody"]["properties"]["error"];
    assert!(error.is_object());
}

/// `/openapi.json` is a valid OpenAPI document by an independent validator
/// (openapi-spec-validator, from PyPI; `make tools` installs it), not only by
/// what this crate's generator thinks: every response has its description,
/// every reference resolves.
#[tokio::test]
async fn the_served_document_passes_an_openapi_validator() {
    let validator = std::env::var("SNAPBACK_OPENAPI_VALIDATOR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| venv_tool("openapi-spec-validator"));
    assert!(
        validator.exists(),
        "{} is missing: run `make tools` (CI installs it)",
        validator.display()
    );
    let router = snapback::api::router(state());
    let (status, spec) = send(&router, "GET", "/openapi.json").await;
    assert_eq!(status, 200);
    for (path, ops) in spec["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            for (code, response) in op["responses"].as_object().unwrap() {
                let described = response["description"].as_str().unwrap_or_default();
                assert!(
                    !described.trim().is_empty(),
                    "{method} {path} {code} has no description"
                );
            }
            if path.starts_with("/api/") {
                assert!(
                    op["responses"].get("503").is_some(),
                    "{method} {path} does not document 503"
                );
            }
        }
    }
    let file = std::env::temp_dir().join(format!("snapback-openapi-{}.json", std::process::id()));
    std::fs::write(&file, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
    let out = std::process::Command::new(&validator)
        .arg(&file)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&file);
    assert!(
        out.status.success(),
        "openapi-spec-validator refused /openapi.json:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The documented schema of `since` takes exactly what the server takes
/// (checked with jsonschema from the same venv, formats enforced): a client
/// or proxy that validates requests against `/openapi.json` neither refuses
/// a value the server accepts nor lets through one it refuses.
#[tokio::test]
async fn the_since_schema_agrees_with_the_server() {
    let python = venv_tool("python");
    assert!(
        python.exists(),
        "{} is missing: run `make tools` (CI installs it)",
        python.display()
    );
    let router = snapback::api::router(state());
    let (_, spec) = send(&router, "GET", "/openapi.json").await;
    let since = spec["paths"]["/api/v1/actions"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "since")
        .expect("a since parameter")["schema"]
        .clone();
    let values = [
        "1h",
        "90s",
        "500ms",
        "7d",
        "1h30m",
        "1.5h",
        "2026-11-24T09:00:00Z",
        "2026-11-24T09:00:00.123456+01:00",
        "",
        "garbage",
        "1x",
        "h",
        "-1h",
        "1h-",
        "2026-13-45T99:00:00Z",
        "0ms",
        "0",
        " 1h",
        "1h ",
        "999999d",
        "1234567h",
        "1h1h1h1h",
        "1h1h1h1h1h",
        ".5h",
        "1.h",
        "1..5h",
        "1.5.5h",
    ];
    let script = "import json, sys, jsonschema\n\
        schema, values = json.load(sys.stdin)\n\
        v = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)\n\
        print(json.dumps([v.is_valid(x) for x in values]))\n";
    let mut child = std::process::Command::new(&python)
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&serde_json::to_vec(&(since, values)).unwrap())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let valid: Vec<bool> = serde_json::from_slice(&out.stdout).unwrap();
    for (value, schema_ok) in values.iter().zip(valid) {
        // No API server behind this router: a value the handler accepts
        // goes on to the store and meets 503; a refused one is a 400.
        let query: String = url_encode(value);
        let (status, body) = send(&router, "GET", &format!("/api/v1/actions?since={query}")).await;
        let server_ok = status != StatusCode::BAD_REQUEST;
        assert_eq!(
            schema_ok, server_ok,
            "since={value:?}: schema says {schema_ok}, server answered {status} {body}"
        );
    }
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The other listeners answer unknown paths and methods in the same error
/// shape as the rollback API: metrics and probes, and the webhook.
#[tokio::test]
async fn every_listener_answers_unknown_paths_and_methods_in_the_error_shape() {
    let readiness = Readiness {
        tls_loaded: Arc::new(AtomicBool::new(true)),
        api_reachable: Arc::new(AtomicBool::new(true)),
    };
    let metrics = snapback::server::metrics_router(Metrics::standalone(), readiness);
    let state = state();
    let webhook = snapback::capture::handler::router(
        Arc::new(snapback::capture::CaptureService::new(
            snapback::config::CaptureConfig::with_namespace("snapback-system"),
            state.store.clone(),
            Arc::new(snapback::capture::attribution::Attribution::new(
                std::time::Duration::from_secs(30),
            )),
            Metrics::standalone(),
        )),
        1 << 20,
    );
    for (router, method, path, want) in [
        (&metrics, "GET", "/nothing", StatusCode::NOT_FOUND),
        (&metrics, "POST", "/healthz", StatusCode::METHOD_NOT_ALLOWED),
        (&webhook, "GET", "/nothing", StatusCode::NOT_FOUND),
        (&webhook, "GET", "/validate", StatusCode::METHOD_NOT_ALLOWED),
    ] {
        let (status, body) = send(router, method, path).await;
        assert_eq!(status, want, "{method} {path}: {body}");
        assert!(
            body["error"]["code"].is_string() && body["error"]["message"].is_string(),
            "{method} {path}: {body}"
        );
    }
}
