#![allow(clippy::unwrap_used)] // a benchmark: a failed unwrap is a failed run
//! `make bench`: what snapback costs. Results are ratios against baselines
//! measured in the same run (see BENCHMARKS.md).
//!
//!   cargo bench --bench snapback -- inprocess
//!   cargo bench --bench snapback -- storage CORPUS_DIR KUBECONFIG
//!   cargo bench --bench snapback -- live KUBECONFIG SNAPBACK_BIN WORKDIR [--smoke]
//!
//! inprocess: AdmissionReviews per second on one core (a current-thread
//! runtime), snapback's validating path with an in-memory store vs a no-op
//! webhook that only decodes the review and answers "allowed".
//! storage: every object of a corpus of real-world manifests stored as a
//! snapshot in a real API server, measured as the API server serves it, vs
//! the object's raw JSON and vs Helm's release encoding of the same objects.

#[path = "snapback/live.rs"]
mod live;
#[path = "snapback/stack.rs"]
mod stack;

// The allocator snapback itself runs with, set up the same way (src/main.rs,
// src/memory.rs), for the no-op webhook process and the in-process
// measurements alike.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use flate2::{Compression, write::GzEncoder};
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use serde_json::{Value, json};
use snapback::capture::CaptureService;
use snapback::capture::attribution::Attribution;
use snapback::capture::review::Review;
use snapback::config::CaptureConfig;
use snapback::metrics::Metrics;
use snapback::store::memory::MemoryStore;

fn main() {
    let _ = snapback::memory::no_transparent_huge_pages();
    snapback::tls::install_crypto_provider();
    // `cargo test --all-targets` runs this binary without `--bench`: then
    // only a smoke run, to prove it works.
    let under_test = !std::env::args().any(|a| a == "--bench");
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    match args.first().map(String::as_str) {
        Some("inprocess") | None => inprocess(under_test || args.iter().any(|a| a == "--smoke")),
        Some("storage") => storage(&args[1], &args[2]),
        Some("live") => live::Live::new(&args[1..]).run(),
        Some("noop-webhook") => live::noop_webhook(
            std::path::Path::new(&args[1]),
            std::path::Path::new(&args[2]),
            args[3].parse().unwrap(),
        ),
        Some(other) => eprintln!("unknown benchmark {other}"),
    }
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"))).expect("fixture")
}

/// Reviews per second over `duration`, and the per-review CPU time.
fn rate(duration: Duration, mut f: impl FnMut()) -> f64 {
    // Warm up.
    for _ in 0..200 {
        f();
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < duration {
        for _ in 0..100 {
            f();
        }
        n += 100;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn inprocess(smoke: bool) {
    let secs = Duration::from_secs_f64(if smoke { 0.2 } else { 3.0 });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let bodies = [
        (
            "update ConfigMap",
            fixture("validate-update-configmap.json"),
        ),
        (
            "create Deployment",
            fixture("validate-create-deployment.json"),
        ),
        (
            "delete Deployment",
            fixture("validate-delete-deployment.json"),
        ),
    ];
    println!("## In-process webhook throughput (one core)\n");
    println!(
        "Two no-op webhooks: one decodes the review the way a kube-rs webhook does (`AdmissionReview<DynamicObject>`, the admission types of the stack), the other with snapback's own decoder (objects kept as raw JSON values). Both answer \"allowed\".\n"
    );
    println!(
        "| review | no-op, kube-rs decode (reviews/s) | no-op, snapback's decode (reviews/s) | snapback (reviews/s) | snapback / no-op kube-rs | snapback / no-op snapback's decode | CPU per review (snapback) |"
    );
    println!("|---|---|---|---|---|---|---|");
    let mut parts = Vec::new();
    for (name, body) in &bodies {
        let typed = rate(secs, || {
            let review: AdmissionReview<DynamicObject> = serde_json::from_slice(body).unwrap();
            let request: AdmissionRequest<DynamicObject> = review.try_into().unwrap();
            let resp = AdmissionResponse::from(&request).into_review();
            std::hint::black_box(serde_json::to_vec(&resp).unwrap());
        });
        let noop = rate(secs, || {
            let review = Review::from_slice(body).ok().unwrap();
            let resp = AdmissionResponse::from(&review.request).into_review();
            std::hint::black_box(serde_json::to_vec(&resp).unwrap());
        });
        let (store, svc) = memory_capture();
        let snap = rate(secs, || {
            let answer = rt.block_on(svc.validate(body));
            let snapback::capture::Answer::Review(r) = answer else {
                panic!("bad review")
            };
            std::hint::black_box(serde_json::to_vec(&r).unwrap());
            keep_small(&store);
        });
        println!(
            "| {name} ({} bytes) | {typed:.0} | {noop:.0} | {snap:.0} | {:.2} | {:.2} | {:.1} µs |",
            body.len(),
            snap / typed,
            snap / noop,
            1e6 / snap
        );
        parts.push((*name, snap, review_parts(secs, body)));
    }
    println!(
        "\nWhere snapback's time per review goes (the same run; each part timed alone, the rest is attribution, bookkeeping, metrics and the answer):\n"
    );
    println!(
        "| review | snapback, whole review | decode | fingerprint of the object after the change | gzip + sha256 of the prior object | the rest |"
    );
    println!("|---|---|---|---|---|---|");
    for (name, snap, [decode, fingerprint, encode]) in parts {
        let whole = 1e6 / snap;
        let us = |rate: f64| if rate > 0.0 { 1e6 / rate } else { 0.0 };
        let (d, f, e) = (us(decode), us(fingerprint), us(encode));
        let pct = |x: f64| 100.0 * x / whole;
        println!(
            "| {name} | {whole:.1} µs | {d:.1} µs ({:.0}%) | {f:.1} µs ({:.0}%) | {e:.1} µs ({:.0}%) | {:.1} µs ({:.0}%) |",
            pct(d),
            pct(f),
            pct(e),
            whole - d - f - e,
            pct(whole - d - f - e)
        );
    }
    inprocess_stack(secs, &bodies);
}

/// snapback's validating path as `serve` sets it up, over an in-memory
/// store that encodes like the real one.
fn memory_capture() -> (Arc<MemoryStore>, CaptureService) {
    let store = Arc::new(MemoryStore::default());
    let mut cfg = CaptureConfig::with_namespace("snapback-system");
    cfg.self_users = vec!["snapback".into()];
    let svc = CaptureService::new(
        cfg,
        store.clone(),
        Arc::new(Attribution::new(Duration::from_secs(30))),
        Metrics::standalone(),
    );
    (store, svc)
}

/// Keep the in-memory store from growing without bound.
fn keep_small(store: &MemoryStore) {
    if store.snapshot_count() > 10_000 {
        store.snapshots.lock().unwrap().clear();
    }
}

/// Part 2 again, through the webhook's own HTTPS stack (`stack.rs`): the
/// same reviews, each an HTTPS request to a server on one thread.
fn inprocess_stack(secs: Duration, bodies: &[(&str, Vec<u8>)]) {
    let dir = tempfile::tempdir().unwrap();
    snapback::certs::generate(dir.path(), &["localhost".into(), "127.0.0.1".into()]).unwrap();
    let tls = snapback::tls::ServingTls::load(
        &dir.path().join("tls.crt"),
        &dir.path().join("tls.key"),
        None,
    )
    .unwrap();
    let ca = std::fs::read(dir.path().join("ca.crt")).unwrap();
    println!("\n### Through the webhook's HTTPS stack (one server thread)\n");
    println!(
        "Each review an HTTPS request (keep-alive HTTP/1.1, as the API server calls webhooks) to the webhook's router served by the same axum + rustls server snapback runs, on a thread of its own (a current-thread runtime); the load comes from other threads. The per-core rate is reviews per CPU-second of the server thread (its share of the wall time on a CPU is the \"busy\" column). The no-op decodes as a kube-rs webhook does; snapback runs its validating path with the in-memory store.\n"
    );
    println!(
        "| review | no-op (reviews per CPU-second) | snapback (reviews per CPU-second) | snapback / no-op | CPU per review: no-op, snapback | busy: no-op, snapback | reviews/s of wall time: no-op, snapback |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (name, body) in bodies {
        let noop = stack::measure(stack::noop_router(), &tls, &ca, body, secs, || {});
        let (store, svc) = memory_capture();
        let app = snapback::capture::handler::router(Arc::new(svc), 20 << 20);
        let snap = stack::measure(app, &tls, &ca, body, secs, move || keep_small(&store));
        println!(
            "| {name} | {:.0} | {:.0} | {:.2} | {:.1} µs, {:.1} µs | {:.0}%, {:.0}% | {:.0}, {:.0} |",
            noop.per_cpu_second,
            snap.per_cpu_second,
            snap.per_cpu_second / noop.per_cpu_second,
            1e6 / noop.per_cpu_second,
            1e6 / snap.per_cpu_second,
            100.0 * noop.busy,
            100.0 * snap.busy,
            noop.rate,
            snap.rate,
        );
    }
}

/// The rates of the parts of a review: decoding it, fingerprinting the
/// object after the change, compressing and hashing the prior object (0
/// where the review has no such object).
fn review_parts(secs: Duration, body: &[u8]) -> [f64; 3] {
    let review = Review::from_slice(body).ok().unwrap();
    let decode = rate(secs / 3, || {
        std::hint::black_box(Review::from_slice(body).ok().unwrap());
    });
    let fingerprint = match &review.object {
        Some(o) => rate(secs / 3, || {
            std::hint::black_box(snapback::store::codec::fingerprint(o));
        }),
        None => 0.0,
    };
    let encode = match &review.old_object {
        Some(o) => rate(secs / 3, || {
            let raw = o.get().as_bytes();
            std::hint::black_box(
                snapback::store::codec::encode_json(raw, snapback::store::codec::CHUNK_SIZE)
                    .unwrap(),
            );
        }),
        None => 0.0,
    };
    [decode, fingerprint, encode]
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

fn storage(corpus: &str, kubeconfig: &str) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = snapback::kube_client::client(Some(std::path::Path::new(kubeconfig)), Some("admin")).await.unwrap();
        let ns = "snapback-bench";
        let nsapi: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(client.clone());
        let _ = nsapi
            .create(&Default::default(), &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap())
            .await;
        let store = snapback::store::kube_store::KubeStore::new(client.clone(), ns);
        let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> = kube::Api::namespaced(client.clone(), ns);
        let cms: kube::Api<k8s_openapi::api::core::v1::ConfigMap> = kube::Api::namespaced(client.clone(), ns);
        let mut objects = Vec::new();
        for entry in walk(std::path::Path::new(corpus)) {
            let text = std::fs::read_to_string(&entry).unwrap_or_default();
            // Some addon files are templates (Salt/Jinja placeholders): keep the
            // documents before the first one that does not parse; the
            // multi-document iterator does not advance past an error.
            for doc in serde_yaml::Deserializer::from_str(&text) {
                match <Value as serde::Deserialize>::deserialize(doc) {
                    Ok(v) if v.get("kind").is_some() && v.get("metadata").is_some() => objects.push(v),
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        }
        let (mut raw, mut helm) = (0usize, 0usize);
        let action = snapback::store::model::ActionId::parse("bench").unwrap();
        for (i, obj) in objects.iter().enumerate() {
            let raw_json = serde_json::to_vec(obj).unwrap();
            raw += raw_json.len();
            // snapback: one snapshot of an update whose prior state is the
            // object, written one at a time (as one client applying changes).
            let now = jiff::Timestamp::now();
            let meta = snapback::store::model::SnapshotMeta {
                snapshot_name: snapback::store::model::SnapshotMeta::object_name(now, &format!("bench-{i}")),
                action: action.clone(),
                operation: snapback::store::model::Operation::Update,
                object: snapback::store::model::ObjectRef {
                    group: "apps".into(),
                    version: "v1".into(),
                    resource: "deployments".into(),
                    subresource: None,
                    kind: obj["kind"].as_str().unwrap_or("X").into(),
                    namespace: Some("kube-system".into()),
                    name: obj["metadata"]["name"].as_str().unwrap_or("x").into(),
                },
                user: "system:serviceaccount:ci:deployer".into(),
                timestamp: now,
                request_uid: format!("{:032x}", rand::random::<u128>()),
                resource_version: Some("123456".into()),
                uid: Some(format!("{:032x}", rand::random::<u128>())),
                payload_sha256: None,
                after_fingerprint: Some(snapback::store::codec::fingerprint(obj)),
                before_fingerprint: Some(snapback::store::codec::fingerprint(obj)),
                after_replicas: None,
                replicas_path: None,
                replicas_unset: None,
                chunks: 0,
                secret: false,
                guard: None,
                batch: None,
            };
            snapback::store::SnapshotSink::put_snapshot(
                &store,
                snapback::store::NewSnapshot { meta, prior: Some(snapback::store::prior_json(obj).unwrap()) },
            )
            .await
            .unwrap();
            // Helm 3: the release JSON (with the manifest as YAML), gzip, base64, in a Secret.
            let release = json!({"name": format!("r{i}"), "namespace": "kube-system", "version": 1,
                "info": {"status": "deployed", "first_deployed": now.to_string(), "last_deployed": now.to_string()},
                "manifest": serde_yaml::to_string(obj).unwrap()});
            let encoded = base64::engine::general_purpose::STANDARD.encode(gzip(&serde_json::to_vec(&release).unwrap()));
            let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({
                "metadata": {"name": format!("sh.helm.release.v1.r{i}.v1"),
                             "labels": {"name": format!("r{i}"), "owner": "helm", "status": "deployed", "version": "1"}},
                "type": "helm.sh/release.v1",
                "data": {"release": base64::engine::general_purpose::STANDARD.encode(encoded.as_bytes())}
            }))
            .unwrap();
            let created = secrets.create(&Default::default(), &secret).await.unwrap();
            helm += serde_json::to_vec(&created).unwrap().len();
        }
        let stored = served_bytes(&cms, "snapback.io/action=bench").await;
        store.compact_action(&action).await.unwrap();
        let compacted = served_bytes(&cms, "snapback.io/action=bench").await;
        println!("## Storage (corpus: {} objects, {} bytes of raw JSON)\n", objects.len(), raw);
        println!("| encoding | bytes as the API server serves them | / raw JSON |");
        println!("|---|---|---|");
        println!("| raw JSON of the prior objects | {raw} | 1.00 |");
        println!("| snapback, one ConfigMap per change (as captured one by one, SPEC §3) | {stored} | {:.2} |", stored as f64 / raw as f64);
        println!("| snapback, the finished action compacted into batches | {compacted} | {:.2} |", compacted as f64 / raw as f64);
        println!("| Helm release encoding (Secrets) | {helm} | {:.2} |", helm as f64 / raw as f64);
        let _ = nsapi.delete(ns, &Default::default()).await;
    });
}

/// Every object matching `selector`, measured as the API server serves it.
async fn served_bytes(
    cms: &kube::Api<k8s_openapi::api::core::v1::ConfigMap>,
    selector: &str,
) -> usize {
    let names = cms
        .list_metadata(&kube::api::ListParams::default().labels(selector))
        .await
        .unwrap();
    let mut total = 0;
    for item in names.items {
        let served = cms
            .get(item.metadata.name.as_deref().unwrap())
            .await
            .unwrap();
        total += serde_json::to_vec(&served).unwrap().len();
    }
    total
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}
