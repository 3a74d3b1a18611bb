//! `snapback serve`: wires the webhook, the snapshotter and the metrics port,
//! and shuts them down gracefully on SIGTERM.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum_server::Handle;

use crate::api::ApiState;
use crate::api::auth::Auth;
use crate::capture::attribution::Attribution;
use crate::capture::journaled::JournaledWrite;
use crate::capture::{CaptureService, handler, open_actions};
use crate::config::{AuthMode, CaptureAck, Config, WebhookConfigArgs};
use crate::metrics::Metrics;
use crate::restore::rollback::Restorer;
use crate::store::journal::Journal;
use crate::store::kube_store::KubeStore;
use crate::store::writer::WriterOptions;
use crate::tls::ServingTls;

/// Grace period for in-flight requests after SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// What /readyz reports: certificates loaded and the API server answering.
#[derive(Clone)]
pub struct Readiness {
    pub tls_loaded: Arc<AtomicBool>,
    pub api_reachable: Arc<AtomicBool>,
}

impl Readiness {
    pub fn ready(&self) -> bool {
        self.tls_loaded.load(Ordering::Relaxed) && self.api_reachable.load(Ordering::Relaxed)
    }
}

pub fn print_webhook_config(args: &WebhookConfigArgs) -> anyhow::Result<()> {
    let ca = std::fs::read(&args.ca).with_context(|| format!("reading {}", args.ca.display()))?;
    let yaml = crate::webhook_config::render(args, &ca).map_err(anyhow::Error::msg)?;
    print!("{yaml}");
    Ok(())
}

/// Bind one of `serve`'s ports, naming the flag when it cannot be had.
fn bind_listener(flag: &str, addr: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("cannot listen on {addr} ({flag})"))?;
    listener
        .set_nonblocking(true)
        .with_context(|| format!("cannot listen on {addr} ({flag})"))?;
    Ok(listener)
}

pub async fn run(cfg: Config) -> anyhow::Result<()> {
    crate::telemetry::init(cfg.log_format);
    cfg.check().map_err(anyhow::Error::msg)?;
    if cfg.auth == AuthMode::None {
        let mut listening = vec![("--metrics-addr", cfg.metrics_addr)];
        if cfg.role.snapshotter() {
            listening.push(("--api-addr", cfg.api_addr));
        }
        if cfg.role.webhook() {
            listening.push(("--webhook-addr", cfg.webhook_addr));
        }
        if let Some((flag, addr)) = listening.iter().find(|(_, a)| !a.ip().is_loopback()) {
            anyhow::bail!(
                "--auth=none is for local development only and refuses to listen on {addr} ({flag}; use a loopback address such as 127.0.0.1)",
            );
        }
    }
    // Every port first: a replica that cannot listen must not take the
    // maintenance lease, resume rollbacks or run guards before it dies.
    let webhook_listener = cfg
        .role
        .webhook()
        .then(|| bind_listener("--webhook-addr", cfg.webhook_addr))
        .transpose()?;
    let api_listener = cfg
        .role
        .snapshotter()
        .then(|| bind_listener("--api-addr", cfg.api_addr))
        .transpose()?;
    let metrics_listener = bind_listener("--metrics-addr", cfg.metrics_addr)?;
    let kube_config =
        crate::kube_client::config(cfg.kubeconfig.as_deref(), cfg.kube_context.as_deref())
            .await
            .context("reading the Kubernetes client configuration")?;
    let client =
        kube::Client::try_from(kube_config.clone()).context("building Kubernetes client")?;
    let metrics = Metrics::register(&prometheus::Registry::new());
    let tls =
        ServingTls::load(&cfg.tls_cert, &cfg.tls_key, None).context("loading TLS certificate")?;
    tls.spawn_reloader(
        cfg.tls_cert.clone(),
        cfg.tls_key.clone(),
        Duration::from_secs(2),
    );
    // The webhook port may require the API server's client certificate.
    let webhook_tls = match &cfg.webhook_client_ca {
        None => tls.clone(),
        Some(ca) => {
            let t = ServingTls::load(&cfg.tls_cert, &cfg.tls_key, Some(ca))
                .context("loading TLS certificate with the webhook client CA")?;
            t.spawn_reloader(
                cfg.tls_cert.clone(),
                cfg.tls_key.clone(),
                Duration::from_secs(2),
            );
            t
        }
    };

    let readiness = Readiness {
        tls_loaded: tls.loaded.clone(),
        api_reachable: Arc::new(AtomicBool::new(false)),
    };
    spawn_api_probe(
        client.clone(),
        cfg.capture.snapshot_namespace.clone(),
        readiness.api_reachable.clone(),
    );

    let handle: Handle<SocketAddr> = Handle::new();
    let mut leases = Vec::new();
    let mut servers = tokio::task::JoinSet::new();

    let store = Arc::new(KubeStore::with_writer(
        client.clone(),
        &cfg.capture.snapshot_namespace,
        WriterOptions {
            batching: cfg.snapshot_batching,
            window: cfg.batch_window(),
            api_writes: Some(metrics.snapshot_api_writes.clone()),
        },
    ));
    let attribution = Arc::new(Attribution::new(cfg.capture.session_idle));
    let pending = matches!(
        cfg.capture.capture_ack,
        CaptureAck::Queued | CaptureAck::Journaled
    )
    .then(|| {
        Arc::new(crate::capture::pending::PendingWrites::with_gauge(
            metrics.snapshot_writes_queued.clone(),
        ))
    });
    let mut journal: Option<Arc<Journal>> = None;
    if cfg.role.webhook() {
        tokio::spawn(open_actions::watch(
            client.clone(),
            cfg.capture.snapshot_namespace.clone(),
            attribution.clone(),
        ));
        let mut capture = CaptureService::new(
            cfg.capture.clone(),
            store.clone(),
            attribution.clone(),
            metrics.clone(),
        );
        capture = capture.with_crd_reader(crate::capture::CrdReader::new(
            kube_config.clone(),
            cfg.auth == AuthMode::Kubernetes,
        ));
        match (&pending, cfg.capture.capture_ack) {
            (Some(p), CaptureAck::Journaled) => {
                let dir = cfg
                    .journal_dir
                    .as_deref()
                    .context("--capture-ack=journaled needs --journal-dir")?;
                let (j, recovered) = Journal::open(dir)
                    .with_context(|| format!("opening the capture journal in {}", dir.display()))?;
                tracing::info!(dir = %dir.display(), recovered = recovered.entries.len(),
                    "--capture-ack=journaled: changes are admitted once their snapshot is in the journal");
                if recovered.unreadable > 0 {
                    metrics
                        .snapshot_failures
                        .with_label_values(&["journal"])
                        .inc_by(recovered.unreadable as u64);
                    metrics
                        .uncaptured_admitted
                        .inc_by(recovered.unreadable as u64);
                }
                if recovered.corrupt > 0 {
                    metrics
                        .snapshot_failures
                        .with_label_values(&["journal"])
                        .inc_by(recovered.corrupt as u64);
                }
                // What an earlier process journaled and did not write.
                for (appended, entry) in recovered.entries {
                    capture.note_replayed_deletion(&entry.meta);
                    let ticket = p.begin_unbounded(entry.meta.action.as_str(), entry.prior_len());
                    let write = JournaledWrite {
                        sink: store.clone(),
                        metrics: metrics.clone(),
                        journal: j.clone(),
                        record: entry.record.clone(),
                        snapshot: entry.snapshot(),
                    };
                    tokio::spawn(write.run(appended, Some(ticket)));
                }
                capture = capture.with_journal(j.clone(), p.clone());
                journal = Some(j);
            }
            (Some(p), _) => {
                tracing::info!(
                    "--capture-ack=queued: changes are admitted once their snapshot is queued"
                );
                capture = capture.with_queued_ack(p.clone());
            }
            (None, _) => {}
        }
        let capture = Arc::new(capture);
        let app = handler::router(capture, cfg.max_review_bytes);
        let listener = webhook_listener.context("the webhook's listener")?;
        let server = axum_server::from_tcp_rustls(listener, webhook_tls.config.clone())
            .with_context(|| format!("serving --webhook-addr {}", cfg.webhook_addr))?
            .handle(handle.clone())
            .serve(app.into_make_service());
        tracing::info!(addr = %cfg.webhook_addr, "webhook listening");
        servers.spawn(async move { server.await.context("webhook server") });
    }

    let mut draining: Option<Arc<Restorer>> = None;
    if cfg.role.snapshotter() {
        let restorer = Arc::new(
            Restorer::new(
                store.clone(),
                kube_config.clone(),
                cfg.auth == AuthMode::Kubernetes,
                cfg.rollback.clone(),
                metrics.clone(),
            )
            .with_events(client.clone()),
        );
        spawn_resumer(restorer.clone());
        draining = Some(restorer.clone());
        let leader = Arc::new(AtomicBool::new(false));
        let identity = std::env::var("POD_NAME")
            .or_else(|_| std::env::var("HOSTNAME"))
            .unwrap_or_else(|_| "snapback".into());
        let lease = crate::retention::spawn(
            client.clone(),
            store.clone(),
            crate::retention::RetentionConfig {
                retention: cfg.retention,
                max_actions: cfg.max_actions,
                session_idle: cfg.capture.session_idle,
                interval: cfg.maintenance_interval,
                lease_duration: cfg.lease_duration,
                compact: cfg.snapshot_batching,
                compact_after: cfg.compact_after,
            },
            metrics.clone(),
            format!("{identity}-{:08x}", rand::random::<u32>()),
            leader.clone(),
        );
        leases.push(lease);
        crate::guard::Guards {
            restorer: restorer.clone(),
            metrics: metrics.clone(),
            session_idle: cfg.capture.session_idle,
            leader: leader.clone(),
            interval: cfg.guard_interval,
        }
        .spawn();
        let state = Arc::new(ApiState {
            store: store.clone(),
            restorer,
            auth: match cfg.auth {
                AuthMode::Kubernetes => Auth::kubernetes(client.clone()),
                AuthMode::None => {
                    tracing::warn!(
                        "--auth=none: the rollback API is unauthenticated (local development only)"
                    );
                    Auth::None
                }
            },
            attribution: cfg.role.webhook().then(|| attribution.clone()),
            metrics: metrics.clone(),
            readiness: readiness.clone(),
            open_lock: tokio::sync::Mutex::new(()),
            alerts: crate::api::AlertConfig {
                window: cfg.alert_rollback_window,
                rollback_as: cfg.alert_rollback_as.clone(),
            },
            pending: pending.clone(),
        });
        let app = crate::api::router(state);
        let listener = api_listener.context("the rollback API's listener")?;
        let server = axum_server::from_tcp_rustls(listener, tls.config.clone())
            .with_context(|| format!("serving --api-addr {}", cfg.api_addr))?
            .handle(handle.clone())
            .serve(app.into_make_service());
        tracing::info!(addr = %cfg.api_addr, "rollback API listening");
        servers.spawn(async move { server.await.context("API server") });
    }

    let metrics_app = metrics_router(metrics.clone(), readiness.clone());
    let listener = tokio::net::TcpListener::from_std(metrics_listener)
        .with_context(|| format!("serving --metrics-addr {}", cfg.metrics_addr))?;
    tracing::info!(addr = %cfg.metrics_addr, "metrics listening");
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    servers.spawn(async move {
        axum::serve(listener, metrics_app)
            .with_graceful_shutdown(async move {
                let _ = stop_rx.wait_for(|stop| *stop).await;
            })
            .await
            .context("metrics server")
    });

    let shutdown = handle.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        // Running rollbacks stop after the objects in flight (resumed by
        // the next snapshotter) while the webhook still answers their
        // writes; then the servers stop.
        if let Some(restorer) = draining
            && !restorer.drain(SHUTDOWN_GRACE).await
        {
            tracing::warn!(
                "rollbacks still running at shutdown; they are resumed from their last saved progress"
            );
        }
        shutdown.graceful_shutdown(Some(SHUTDOWN_GRACE));
        let _ = stop_tx.send(true);
    });

    let result = wait_servers(&mut servers, &handle).await;
    if let Some(p) = &pending
        && !p.settle(None, SHUTDOWN_GRACE).await
    {
        match &journal {
            Some(j) => tracing::warn!(
                queued = p.len(),
                dir = %j.dir().display(),
                "exiting with journaled snapshots not yet written: the next start with this --journal-dir writes them"
            ),
            None => tracing::error!(
                queued = p.len(),
                "exiting with snapshot writes still queued: those changes stay uncaptured"
            ),
        }
    }
    if let Some(j) = &journal {
        j.close();
    }
    for lease in leases {
        lease.release().await;
    }
    result
}

async fn wait_servers(
    servers: &mut tokio::task::JoinSet<anyhow::Result<()>>,
    handle: &Handle<SocketAddr>,
) -> anyhow::Result<()> {
    while let Some(done) = servers.join_next().await {
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                handle.shutdown();
                return Err(e);
            }
            Err(e) => {
                handle.shutdown();
                return Err(anyhow::anyhow!("server task failed: {e}"));
            }
        }
    }
    Ok(())
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Finish rollbacks a crashed snapshotter left behind (claims are guarded
/// by the record's resourceVersion, so replicas do not both resume one).
fn spawn_resumer(restorer: Arc<Restorer>) {
    tokio::spawn(async move {
        loop {
            match restorer.resume_stale().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(resumed = n, "resumed interrupted rollbacks"),
                Err(e) => tracing::warn!(error = %e, "looking for interrupted rollbacks"),
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    });
}

/// Create the missing snapshot namespace, labelled so that the webhook
/// configurations leave it out (`snapback.io/exclude`: a Namespace object
/// is matched against its own labels, so its creation is not sent either).
async fn create_snapshot_namespace(
    namespaces: &kube::Api<k8s_openapi::api::core::v1::Namespace>,
    name: &str,
) -> Result<(), String> {
    let ns: k8s_openapi::api::core::v1::Namespace = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {
            "snapback.io/exclude": "true",
            "app.kubernetes.io/managed-by": "snapback",
        }},
    }))
    .map_err(|e| e.to_string())?;
    let params = kube::api::PostParams::default();
    let create = namespaces.create(&params, &ns);
    match tokio::time::timeout(Duration::from_secs(5), create).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(kube::Error::Api(s))) if s.code == 409 => Ok(()),
        Ok(Err(e)) => Err(crate::store::describe_kube_error(&e)),
        Err(_) => Err("no answer within 5s".into()),
    }
}

/// Ready when the API server answers and the snapshot namespace exists
/// (without it no snapshot can be stored, and in deny mode every captured
/// change would be refused; a missing one is created when snapback may).
/// Says why in the log when that changes.
fn spawn_api_probe(client: kube::Client, namespace: String, reachable: Arc<AtomicBool>) {
    tokio::spawn(async move {
        let namespaces: kube::Api<k8s_openapi::api::core::v1::Namespace> =
            kube::Api::all(client.clone());
        let mut last: Option<String> = None;
        loop {
            // A hung API server (accepting connections, never answering)
            // is as unavailable as one that refuses them.
            let read = tokio::time::timeout(Duration::from_secs(5), namespaces.get_opt(&namespace));
            let problem = match read
                .await
                .unwrap_or_else(|_| Err(kube::Error::Service("no answer within 5s".into())))
            {
                Ok(Some(_)) => None,
                Ok(None) => match create_snapshot_namespace(&namespaces, &namespace).await {
                    Ok(()) => {
                        tracing::info!(%namespace, "created the snapshot namespace");
                        None
                    }
                    Err(why) => Some(format!(
                        "the snapshot namespace {namespace} does not exist and snapback could not create it ({why}): no snapshot can be stored (create it, labelled snapback.io/exclude=true, or set --snapshot-namespace)"
                    )),
                },
                // Not allowed to look: the API server answers, that is all
                // this can tell.
                Err(kube::Error::Api(s)) if s.code == 403 => None,
                Err(e) => Some(format!(
                    "the Kubernetes API server cannot be reached: {}",
                    crate::store::describe_kube_error(&e)
                )),
            };
            if problem != last {
                match &problem {
                    Some(p) => tracing::warn!("not ready: {p}"),
                    None if last.is_some() => tracing::info!("ready"),
                    None => {}
                }
                last = problem.clone();
            }
            let ok = problem.is_none();
            reachable.store(ok, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_secs(if ok { 10 } else { 1 })).await;
        }
    });
}

pub fn metrics_router(metrics: Metrics, readiness: Readiness) -> Router {
    let router = Router::new()
        .route(
            "/metrics",
            get(|State((m, _)): State<(Metrics, Readiness)>| async move {
                ([("content-type", "text/plain; version=0.0.4")], m.render())
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State((_, r)): State<(Metrics, Readiness)>| async move {
                if r.ready() {
                    (StatusCode::OK, "ok")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not ready")
                }
            }),
        )
        .with_state((metrics, readiness));
    crate::api::error::with_error_fallbacks(router)
}
