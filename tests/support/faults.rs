//! Test-only network parts: a fault-injecting HTTPS proxy in front of the API
//! server, and a TCP load balancer with failover in front of webhook replicas.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use futures::StreamExt;

#[derive(Debug, Default)]
pub struct FaultCounts {
    pub requests: AtomicUsize,
    pub delayed: AtomicUsize,
    pub errors_500: AtomicUsize,
    pub throttled_429: AtomicUsize,
    pub conflicts_409: AtomicUsize,
    /// Forwarded, but the answer never reached snapback.
    pub lost_responses: AtomicUsize,
}

impl FaultCounts {
    pub fn injected(&self) -> usize {
        self.delayed.load(Ordering::Relaxed)
            + self.errors_500.load(Ordering::Relaxed)
            + self.throttled_429.load(Ordering::Relaxed)
            + self.conflicts_409.load(Ordering::Relaxed)
            + self.lost_responses.load(Ordering::Relaxed)
    }

    pub fn summary(&self) -> String {
        format!(
            "{} requests, {} faults ({} delayed, {} x 500, {} x 429, {} x 409, {} responses lost)",
            self.requests.load(Ordering::Relaxed),
            self.injected(),
            self.delayed.load(Ordering::Relaxed),
            self.errors_500.load(Ordering::Relaxed),
            self.throttled_429.load(Ordering::Relaxed),
            self.conflicts_409.load(Ordering::Relaxed),
            self.lost_responses.load(Ordering::Relaxed),
        )
    }
}

/// Share of requests (0.0–1.0) that get each fault.
#[derive(Debug, Clone, Copy)]
pub struct FaultRates {
    pub delay: f64,
    pub error_500: f64,
    pub throttle_429: f64,
    pub conflict_409: f64,
    pub lose_response: f64,
}

impl FaultRates {
    pub const NONE: FaultRates = FaultRates {
        delay: 0.0,
        error_500: 0.0,
        throttle_429: 0.0,
        conflict_409: 0.0,
        lose_response: 0.0,
    };
}

/// Holds back POSTs whose path contains `path` until the gate opens.
#[derive(Clone)]
pub struct Gate {
    path: String,
    open: tokio::sync::watch::Receiver<bool>,
}

impl Gate {
    /// A closed gate for POSTs to paths containing `path`, and its opener.
    pub fn closed(path: &str) -> (Gate, tokio::sync::watch::Sender<bool>) {
        let (tx, rx) = tokio::sync::watch::channel(false);
        (
            Gate {
                path: path.to_string(),
                open: rx,
            },
            tx,
        )
    }
}

struct ProxyState {
    upstream: String,
    http: reqwest::Client,
    rates: FaultRates,
    counts: Arc<FaultCounts>,
    gate: Option<Gate>,
}

fn status(code: u16, reason: &str) -> Response {
    let body = serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
        "message": format!("injected fault: {reason}"), "reason": reason, "code": code});
    let mut resp = Response::new(Body::from(body.to_string()));
    *resp.status_mut() = axum::http::StatusCode::from_u16(code).unwrap_or_default();
    resp.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    if code == 429 {
        resp.headers_mut()
            .insert("retry-after", "1".parse().unwrap());
    }
    resp
}

async fn proxy(State(st): State<Arc<ProxyState>>, req: Request) -> Response {
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let streaming = path.contains("watch=") || path.contains("/watch/");
    // Authentication and authorisation of API callers are not what is tested here.
    let exempt =
        streaming || path.contains("tokenreviews") || path.contains("subjectaccessreviews");
    st.counts.requests.fetch_add(1, Ordering::Relaxed);
    if let Some(gate) = &st.gate
        && req.method() == axum::http::Method::POST
        && path.contains(&gate.path)
    {
        let _ = gate.open.clone().wait_for(|open| *open).await;
    }
    let roll = |rate: f64| !exempt && rand::random::<f64>() < rate;
    if roll(st.rates.delay) {
        st.counts.delayed.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(500 + rand::random::<u64>() % 1500)).await;
    }
    if roll(st.rates.error_500) {
        st.counts.errors_500.fetch_add(1, Ordering::Relaxed);
        return status(500, "InternalError");
    }
    if roll(st.rates.throttle_429) {
        st.counts.throttled_429.fetch_add(1, Ordering::Relaxed);
        return status(429, "TooManyRequests");
    }
    if roll(st.rates.conflict_409) && req.method() != axum::http::Method::GET {
        st.counts.conflicts_409.fetch_add(1, Ordering::Relaxed);
        return status(409, "Conflict");
    }
    let lose = req.method() != axum::http::Method::GET && roll(st.rates.lose_response);
    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 16 << 20).await else {
        return status(400, "BadRequest");
    };
    let mut up = st
        .http
        .request(parts.method.clone(), format!("{}{path}", st.upstream))
        .body(bytes);
    for (k, v) in &parts.headers {
        if k != "host" && k != "content-length" && k != "connection" {
            up = up.header(k, v);
        }
    }
    let resp = match up.send().await {
        Ok(r) => r,
        Err(_) => return status(502, "BadGateway"),
    };
    if lose {
        st.counts.lost_responses.fetch_add(1, Ordering::Relaxed);
        return status(504, "Timeout");
    }
    let mut out = Response::builder().status(resp.status().as_u16());
    for (k, v) in resp.headers() {
        if k != "transfer-encoding" && k != "connection" && k != "content-length" {
            out = out.header(k, v);
        }
    }
    let body = Body::from_stream(
        resp.bytes_stream()
            .map(|r| r.map_err(std::io::Error::other)),
    );
    out.body(body).unwrap_or_else(|_| status(502, "BadGateway"))
}

/// Start the proxy; returns its address and counters.
pub async fn start_fault_proxy(
    upstream: &str,
    upstream_ca: &std::path::Path,
    cert: &std::path::Path,
    key: &std::path::Path,
    rates: FaultRates,
) -> (SocketAddr, Arc<FaultCounts>) {
    start_proxy(upstream, upstream_ca, cert, key, rates, None).await
}

/// Start a proxy that injects no faults but holds back the POSTs `gate` names.
pub async fn start_gated_proxy(
    upstream: &str,
    upstream_ca: &std::path::Path,
    cert: &std::path::Path,
    key: &std::path::Path,
    gate: Gate,
) -> SocketAddr {
    start_proxy(
        upstream,
        upstream_ca,
        cert,
        key,
        FaultRates::NONE,
        Some(gate),
    )
    .await
    .0
}

async fn start_proxy(
    upstream: &str,
    upstream_ca: &std::path::Path,
    cert: &std::path::Path,
    key: &std::path::Path,
    rates: FaultRates,
    gate: Option<Gate>,
) -> (SocketAddr, Arc<FaultCounts>) {
    snapback::tls::install_crypto_provider();
    let ca = std::fs::read(upstream_ca).unwrap();
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .timeout(Duration::from_secs(600))
        .build()
        .unwrap();
    let counts = Arc::new(FaultCounts::default());
    let state = Arc::new(ProxyState {
        upstream: upstream.trim_end_matches('/').to_string(),
        http,
        rates,
        counts: counts.clone(),
        gate,
    });
    let app = axum::Router::new().fallback(proxy).with_state(state);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let tls = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
        .await
        .unwrap();
    tokio::spawn(async move {
        axum_server::from_tcp_rustls(listener, tls)
            .unwrap()
            .serve(app.into_make_service())
            .await
            .unwrap();
    });
    (addr, counts)
}

/// A TCP load balancer: each connection goes to the next backend that accepts it.
pub async fn start_balancer(backends: Vec<u16>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let next = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                continue;
            };
            let backends = backends.clone();
            let next = next.clone();
            tokio::spawn(async move {
                let start = next.fetch_add(1, Ordering::Relaxed);
                for i in 0..backends.len() {
                    let port = backends[(start + i) % backends.len()];
                    if let Ok(mut outbound) =
                        tokio::net::TcpStream::connect(("127.0.0.1", port)).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        return;
                    }
                }
            });
        }
    });
    port
}
