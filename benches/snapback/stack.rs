//! In-process throughput through the webhook's own HTTPS stack: what one
//! core of a webhook process serves. The webhook (snapback's router, or the
//! no-op one) runs on a thread of its own (a current-thread runtime, as
//! one core), behind the same axum + rustls server snapback runs
//! (`axum_server::from_tcp_rustls` with snapback's TLS configuration); the
//! load comes from keep-alive HTTPS connections on other threads of the
//! same process, like the API server's calls. Only the server thread's CPU
//! (utime + stime of `/proc/<pid>/task/<tid>/stat`) is counted: reviews per
//! CPU-second of that thread is the per-core rate, whether or not the load
//! kept it busy all the time (its busy share is printed along).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};

/// Concurrent keep-alive connections of the load.
const CONNECTIONS: usize = 16;

pub struct Figures {
    /// Reviews answered per second of wall time.
    pub rate: f64,
    /// Reviews per CPU-second of the server's thread: the per-core rate.
    pub per_cpu_second: f64,
    /// Share of the wall time the server's thread was on a CPU.
    pub busy: f64,
}

/// The no-op webhook: decodes the review as a kube-rs webhook does
/// (`AdmissionReview<DynamicObject>`) and answers "allowed".
pub fn noop_router() -> Router {
    async fn answer(body: Bytes) -> Response {
        let review: AdmissionReview<DynamicObject> = match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
        };
        let request: AdmissionRequest<DynamicObject> = match review.try_into() {
            Ok(r) => r,
            Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}")).into_response(),
        };
        axum::Json(AdmissionResponse::from(&request).into_review()).into_response()
    }
    Router::new()
        .route("/mutate", post(answer))
        .route("/validate", post(answer))
}

/// Serve `app` on one thread, post `body` to `/validate` from
/// [`CONNECTIONS`] connections for `secs` (after a warm-up), and measure.
/// `housekeeping` runs every 50 ms on the load's side (to keep an
/// in-memory store from growing).
pub fn measure(
    app: Router,
    tls: &snapback::tls::ServingTls,
    ca_pem: &[u8],
    body: &[u8],
    secs: Duration,
    housekeeping: impl Fn() + Send + Sync + 'static,
) -> Figures {
    let (tx, rx) = std::sync::mpsc::channel();
    let config = tls.config.clone();
    let server = std::thread::Builder::new()
        .name("webhook".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                listener.set_nonblocking(true).unwrap();
                let port = listener.local_addr().unwrap().port();
                let handle = axum_server::Handle::new();
                let task = std::fs::read_link("/proc/thread-self").unwrap();
                tx.send((
                    port,
                    PathBuf::from("/proc").join(task).join("stat"),
                    handle.clone(),
                ))
                .unwrap();
                axum_server::from_tcp_rustls(listener, config)
                    .unwrap()
                    .handle(handle)
                    .serve(app.into_make_service())
                    .await
                    .unwrap();
            });
        })
        .unwrap();
    let (port, stat, handle) = rx.recv().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem).unwrap())
        .pool_max_idle_per_host(CONNECTIONS)
        .build()
        .unwrap();
    let url = format!("https://localhost:{port}/validate");
    let body = Bytes::copy_from_slice(body);
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let figures = rt.block_on(async {
        let mut tasks = Vec::new();
        for i in 0..CONNECTIONS {
            let (client, url, body) = (client.clone(), url.clone(), body.clone());
            let (done, stop) = (done.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let resp = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send()
                        .await
                        .unwrap();
                    assert!(resp.status().is_success(), "{}", resp.status());
                    let answer = resp.bytes().await.unwrap();
                    // The first answers of each connection: a review that
                    // allowed the change (the rest are the same request).
                    if n < 2 {
                        let v: serde_json::Value = serde_json::from_slice(&answer).unwrap();
                        assert_eq!(v["response"]["allowed"], true, "connection {i}: {v}");
                    }
                    n += 1;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        let keeping = Arc::new(housekeeping);
        let keeper = {
            let (stop, keeping) = (stop.clone(), keeping.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    keeping();
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(500).min(secs)).await;
        let (n0, c0, t0) = (
            done.load(Ordering::Relaxed),
            super::live::stat_cpu_secs(&stat),
            Instant::now(),
        );
        tokio::time::sleep(secs).await;
        let (n1, c1) = (
            done.load(Ordering::Relaxed),
            super::live::stat_cpu_secs(&stat),
        );
        let wall = t0.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.unwrap();
        }
        keeper.await.unwrap();
        let reviews = (n1 - n0) as f64;
        let cpu = c1 - c0;
        Figures {
            rate: reviews / wall,
            per_cpu_second: if cpu > 0.0 { reviews / cpu } else { f64::NAN },
            busy: cpu / wall,
        }
    });
    handle.shutdown();
    server.join().unwrap();
    figures
}
