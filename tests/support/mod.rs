//! The local control plane harness: one real etcd + kube-apiserver per test
//! binary (started by `hack/cluster.sh`), snapback processes started from the
//! built binary, and helpers to drive real `kubectl`.
//!
//! A missing control plane is a test failure, never a skip.

#![allow(dead_code)]

pub mod faults;

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use kube::Client;
use serde_json::Value;
use snapback::store::kube_store::KubeStore;
use snapback::store::model::{ActionId, SnapshotMeta};

pub const ROOT: &str = env!("CARGO_MANIFEST_DIR");

pub struct Cluster {
    pub dir: PathBuf,
    pub kubeconfig: PathBuf,
    pub url: String,
    pub audit_log: PathBuf,
    pub certs: PathBuf,
    _tmp: tempfile::TempDir,
}

static CLUSTER: OnceLock<Cluster> = OnceLock::new();

pub fn cluster() -> &'static Cluster {
    cluster_of(false)
}

/// The control plane with a kube-controller-manager (namespace, service
/// account, garbage collector, Deployment and ReplicaSet controllers). The
/// first call in a test binary decides which of the two it gets.
pub fn cluster_with_controllers() -> &'static Cluster {
    cluster_of(true)
}

fn cluster_of(controllers: bool) -> &'static Cluster {
    CLUSTER.get_or_init(|| {
        snapback::tls::install_crypto_provider();
        let tmp = tempfile::Builder::new()
            .prefix("snapback-cp-")
            .tempdir()
            .expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let out = Command::new(format!("{ROOT}/hack/cluster.sh"))
            .arg("up")
            .arg(&dir)
            .env("OWNER_PID", std::process::id().to_string())
            .env("CONTROLLERS", if controllers { "1" } else { "0" })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .expect("running hack/cluster.sh");
        assert!(
            out.status.success(),
            "the local control plane did not start (tests need it; see issue #2):\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let env: BTreeMap<String, String> = std::fs::read_to_string(dir.join("env"))
            .expect("control plane env")
            .lines()
            .filter_map(|l| {
                l.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
            })
            .collect();
        let certs = tmp.path().join("snapback-certs");
        let status = Command::new(env!("CARGO_BIN_EXE_snapback"))
            .args(["certs", "--hosts", "localhost,127.0.0.1", "--out"])
            .arg(&certs)
            .status()
            .expect("snapback certs");
        assert!(status.success());
        let c = Cluster {
            kubeconfig: PathBuf::from(&env["KUBECONFIG"]),
            url: env["APISERVER_URL"].clone(),
            audit_log: PathBuf::from(&env["AUDIT_LOG"]),
            dir,
            certs,
            _tmp: tmp,
        };
        c.kubectl_ok(&["create", "namespace", "snapback-system"]);
        c.kubectl_ok(&["apply", "-f", &format!("{ROOT}/manifests/rbac.yaml")]);
        c.kubectl_ok(&[
            "create",
            "clusterrolebinding",
            "snapback-user",
            "--clusterrole=snapback",
            "--user=snapback",
        ]);
        c.kubectl_ok(&[
            "-n",
            "snapback-system",
            "create",
            "rolebinding",
            "snapback-user",
            "--role=snapback",
            "--user=snapback",
        ]);
        // An explicit role for test users: without a controller-manager the
        // aggregated edit/admin roles are empty.
        c.kubectl_apply_str(TEST_ROLES);
        c
    })
}

const TEST_ROLES: &str = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: test-editor
rules:
  - apiGroups: ["", "apps", "batch", "example.com", "networking.k8s.io", "extensions", "autoscaling"]
    resources: ["*"]
    verbs: ["*"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: test-cluster-editor
rules:
  - apiGroups: ["", "apiextensions.k8s.io", "rbac.authorization.k8s.io"]
    resources: ["namespaces", "customresourcedefinitions", "clusterroles", "clusterrolebindings"]
    verbs: ["*"]
"#;

impl Cluster {
    pub fn kubectl(&self, context: &str, args: &[&str]) -> Output {
        Command::new("kubectl")
            .env("KUBECONFIG", &self.kubeconfig)
            .arg("--context")
            .arg(context)
            .args(args)
            .output()
            .expect("running kubectl")
    }

    /// kubectl as admin; panics with kubectl's output on failure.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        self.kubectl_as_ok("admin", args)
    }

    pub fn kubectl_as_ok(&self, context: &str, args: &[&str]) -> String {
        let out = self.kubectl(context, args);
        assert!(
            out.status.success(),
            "kubectl --context {context} {} failed:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn kubectl_stdin(&self, context: &str, args: &[&str], stdin: &str) -> Output {
        use std::io::Write;
        let mut child = Command::new("kubectl")
            .env("KUBECONFIG", &self.kubeconfig)
            .arg("--context")
            .arg(context)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning kubectl");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin.as_bytes())
            .expect("writing to kubectl");
        child.wait_with_output().expect("kubectl")
    }

    /// Wait until the API server serves the CustomResourceDefinition `name`.
    pub fn wait_established(&self, name: &str) {
        self.kubectl_ok(&[
            "wait",
            "--for=condition=established",
            "--timeout=30s",
            &format!("crd/{name}"),
        ]);
    }

    /// `kubectl get ARGS -o json` as admin; None when kubectl fails (the
    /// object does not exist).
    pub fn get_json(&self, args: &[&str]) -> Option<Value> {
        let mut full = vec!["get"];
        full.extend_from_slice(args);
        full.extend_from_slice(&["-o", "json"]);
        let out = self.kubectl("admin", &full);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).unwrap())
    }

    /// `kubectl apply -f -` as admin; panics with kubectl's output on failure.
    pub fn kubectl_apply_str(&self, yaml: &str) -> String {
        self.apply_as("admin", yaml)
    }

    /// An action `id` of `user` that changed ConfigMap `cm` in `ns` (v 1 →
    /// 2), and a change by admin after it (v 3): a rollback of it is a
    /// conflict.
    pub fn action_changed_since(&self, user: &str, ns: &str, id: &str) {
        self.kubectl_as_ok(
            user,
            &["-n", ns, "create", "configmap", "cm", "--from-literal=v=1"],
        );
        self.apply_as(user, &format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cm, namespace: {ns}, annotations: {{snapback.io/action: {id}}}}}\ndata: {{v: \"2\"}}\n"));
        self.kubectl_ok(&[
            "-n",
            ns,
            "patch",
            "configmap",
            "cm",
            "-p",
            r#"{"data":{"v":"3"}}"#,
        ]);
    }

    /// `kubectl apply -f -` as `user`; panics with kubectl's output on failure.
    pub fn apply_as(&self, user: &str, yaml: &str) -> String {
        let out = self.kubectl_stdin(user, &["apply", "-f", "-"], yaml);
        assert!(
            out.status.success(),
            "kubectl apply as {user} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub async fn client(&self, context: &str) -> Client {
        snapback::kube_client::client(Some(&self.kubeconfig), Some(context))
            .await
            .expect("kube client")
    }

    /// A fresh namespace where `users` may edit (explicit RBAC).
    pub fn namespace(&self, prefix: &str, users: &[&str]) -> String {
        let name = format!("{prefix}-{:06x}", rand::random::<u32>() & 0xffffff);
        self.kubectl_ok(&["create", "namespace", &name]);
        for user in users {
            self.kubectl_ok(&[
                "-n",
                &name,
                "create",
                "rolebinding",
                &format!("edit-{user}"),
                "--clusterrole=test-editor",
                &format!("--user={user}"),
            ]);
        }
        name
    }
}

/// A port nothing listens on, never the same one twice in this process: the
/// kernel may hand a just-released port out again, and two of one process's
/// ports (webhook and metrics) then collided.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<BTreeSet<u16>> = std::sync::Mutex::new(BTreeSet::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .expect("binding a free port")
            .local_addr()
            .expect("local addr")
            .port();
        if GIVEN.lock().unwrap_or_else(|p| p.into_inner()).insert(port) {
            return port;
        }
    }
}

/// Options for one snapback process.
#[derive(Clone)]
pub struct SnapbackOpts {
    pub snapshot_namespace: String,
    /// Webhook configuration name (unique per instance).
    pub webhook_name: String,
    /// Only namespaces with this label (key=value) are sent to this instance,
    /// and only namespaced objects (so an instance a test breaks cannot block
    /// other tests).
    pub namespace_label: Option<String>,
    pub extra_args: Vec<String>,
    /// Register the webhooks (false: a second replica sharing the first's).
    pub register: bool,
    /// RUST_LOG for the process (default `info,snapback=debug`).
    pub log_level: Option<String>,
    /// Listen on this webhook port (default: a free one).
    pub webhook_port: Option<u16>,
    /// Kubeconfig for snapback (default: the cluster's, context `snapback`).
    pub kubeconfig: Option<PathBuf>,
    /// Register the webhooks at this URL (a load balancer) instead of the port.
    pub webhook_url: Option<String>,
}

impl SnapbackOpts {
    pub fn shared() -> Self {
        SnapbackOpts {
            snapshot_namespace: "snapback-system".into(),
            webhook_name: "snapback".into(),
            namespace_label: None,
            extra_args: vec![],
            register: true,
            log_level: None,
            webhook_port: None,
            kubeconfig: None,
            webhook_url: None,
        }
    }

    /// An instance of its own: own snapshot namespace, own webhook scoped to
    /// namespaces labelled `snapback-test=<id>`.
    pub fn isolated(cluster: &Cluster, id: &str) -> Self {
        let ns = format!("sb-{id}");
        cluster.kubectl_ok(&["create", "namespace", &ns]);
        cluster.kubectl_ok(&[
            "-n",
            &ns,
            "create",
            "role",
            "snapback",
            "--resource=configmaps,secrets",
            "--verb=get,list,watch,create,update,delete,deletecollection",
        ]);
        cluster.kubectl_ok(&[
            "-n",
            &ns,
            "create",
            "role",
            "snapback-lease",
            "--resource=leases.coordination.k8s.io",
            "--verb=get,create,update",
        ]);
        cluster.kubectl_ok(&[
            "-n",
            &ns,
            "create",
            "rolebinding",
            "snapback-lease",
            "--role=snapback-lease",
            "--user=snapback",
        ]);
        cluster.kubectl_ok(&[
            "-n",
            &ns,
            "create",
            "rolebinding",
            "snapback",
            "--role=snapback",
            "--user=snapback",
        ]);
        SnapbackOpts {
            snapshot_namespace: ns,
            webhook_name: format!("snapback-{id}"),
            namespace_label: Some(format!("snapback-test={id}")),
            extra_args: vec![],
            register: true,
            log_level: None,
            webhook_port: None,
            kubeconfig: None,
            webhook_url: None,
        }
    }
}

pub struct Snapback {
    pub child: Child,
    pub opts: SnapbackOpts,
    pub webhook_port: u16,
    pub api_port: u16,
    pub metrics_port: u16,
    pub log: PathBuf,
}

impl Snapback {
    pub fn start(cluster: &Cluster, opts: SnapbackOpts) -> Snapback {
        let (webhook_port, api_port, metrics_port) = (
            opts.webhook_port.unwrap_or_else(free_port),
            free_port(),
            free_port(),
        );
        let log = cluster
            .dir
            .join(format!("snapback-{}-{webhook_port}.log", opts.webhook_name));
        let log_file = std::fs::File::create(&log).expect("log file");
        let certs = &cluster.certs;
        let child = Command::new(env!("CARGO_BIN_EXE_snapback"))
            .arg("serve")
            .arg("--kubeconfig")
            .arg(opts.kubeconfig.as_ref().unwrap_or(&cluster.kubeconfig))
            .args(["--kube-context", "snapback", "--self-user", "snapback"])
            .arg("--tls-cert")
            .arg(certs.join("tls.crt"))
            .arg("--tls-key")
            .arg(certs.join("tls.key"))
            .args(["--webhook-addr", &format!("127.0.0.1:{webhook_port}")])
            .args(["--api-addr", &format!("127.0.0.1:{api_port}")])
            .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
            .args(["--snapshot-namespace", &opts.snapshot_namespace])
            .args(&opts.extra_args)
            .env(
                "RUST_LOG",
                opts.log_level.as_deref().unwrap_or("info,snapback=debug"),
            )
            .stdout(log_file.try_clone().expect("log"))
            .stderr(log_file)
            .spawn()
            .expect("starting snapback");
        // The control plane's watchdog stops every process with a pid file in
        // its directory when the test binary exits (statics are never dropped).
        let _ = std::fs::write(
            cluster
                .dir
                .join(format!("snapback-{webhook_port}-{api_port}.pid")),
            child.id().to_string(),
        );
        let sb = Snapback {
            child,
            opts,
            webhook_port,
            api_port,
            metrics_port,
            log,
        };
        sb.wait_ready();
        if sb.opts.register {
            sb.register(cluster);
        }
        sb
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(body) = http_get(self.metrics_port, "/readyz")
                && body.starts_with("ok")
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("snapback did not become ready; log:\n{}", self.log_tail());
    }

    /// Register the webhooks and wait until the API server calls them.
    pub fn register(&self, cluster: &Cluster) {
        let mut args = vec![
            "webhook-config".to_string(),
            "--url".into(),
            self.opts
                .webhook_url
                .clone()
                .unwrap_or_else(|| format!("https://127.0.0.1:{}", self.webhook_port)),
            "--ca".into(),
            cluster.certs.join("ca.crt").display().to_string(),
            "--name".into(),
            self.opts.webhook_name.clone(),
            "--exclude-namespaces".into(),
            format!("{},kube-system", self.opts.snapshot_namespace),
        ];
        match &self.opts.namespace_label {
            Some(label) => args.extend([
                "--namespace-label".into(),
                label.clone(),
                "--scope".into(),
                "Namespaced".into(),
            ]),
            // The shared instance leaves the namespaces of isolated instances
            // alone (its mutating webhook would strip their annotations first).
            None => args.extend(["--exclude-label".into(), "snapback-test".into()]),
        }
        let out = Command::new(env!("CARGO_BIN_EXE_snapback"))
            .args(&args)
            .output()
            .expect("webhook-config");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        cluster.kubectl_apply_str(&String::from_utf8_lossy(&out.stdout));
    }

    /// Wait until changes in `ns` reach this instance (webhook registration
    /// and namespace labels take effect asynchronously in the API server).
    /// Probe changes are made as admin, in an action of their own.
    pub fn wait_capturing(&self, cluster: &Cluster, ns: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut n = 0;
        loop {
            let probe = format!("snapback-probe-{n}");
            n += 1;
            let _ = cluster.kubectl("admin", &["-n", ns, "create", "configmap", &probe]);
            // Any decision on a change (captured, or denied/uncaptured when a
            // test broke the store on purpose) shows the webhook is called.
            let captured = self.metrics().lines().any(|l| {
                l.starts_with("snapback_admission_requests_total")
                    && l.contains("webhook=\"validate\"")
                    && ["captured", "denied", "uncaptured"]
                        .iter()
                        .any(|o| l.contains(&format!("outcome=\"{o}\"")))
            });
            let _ = cluster.kubectl(
                "admin",
                &[
                    "-n",
                    ns,
                    "delete",
                    "configmap",
                    &probe,
                    "--ignore-not-found",
                ],
            );
            if captured {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "snapback never received changes in {ns}; log:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Label `ns` for this (isolated) instance and wait until it captures there.
    pub fn adopt_namespace(&self, cluster: &Cluster, ns: &str) {
        let label = self
            .opts
            .namespace_label
            .as_deref()
            .expect("an isolated instance");
        cluster.kubectl_ok(&["label", "namespace", ns, label, "--overwrite"]);
        self.wait_capturing(cluster, ns);
    }

    pub fn unregister(&self, cluster: &Cluster) {
        let name = &self.opts.webhook_name;
        let _ = cluster.kubectl(
            "admin",
            &[
                "delete",
                "mutatingwebhookconfiguration",
                name,
                "--ignore-not-found",
            ],
        );
        let _ = cluster.kubectl(
            "admin",
            &[
                "delete",
                "validatingwebhookconfiguration",
                name,
                "--ignore-not-found",
            ],
        );
    }

    pub fn metrics(&self) -> String {
        http_get(self.metrics_port, "/metrics").expect("scraping metrics")
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    pub async fn store(&self, cluster: &Cluster) -> KubeStore {
        KubeStore::new(cluster.client("admin").await, &self.opts.snapshot_namespace)
    }
}

impl Drop for Snapback {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

static SHARED: OnceLock<Snapback> = OnceLock::new();

/// The binary's shared snapback (all namespaces, cluster-scoped objects too).
/// Tests using it isolate themselves by namespace and by action or user.
pub fn shared_snapback() -> &'static Snapback {
    SHARED.get_or_init(|| {
        let c = cluster();
        let sb = Snapback::start(c, SnapbackOpts::shared());
        let _ = c.kubectl("admin", &["create", "namespace", "snapback-probe"]);
        sb.wait_capturing(c, "snapback-probe");
        sb
    })
}

/// A tiny blocking HTTP/1.1 GET for the plain metrics port.
pub fn http_get(port: u16, path: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let (head, body) = buf.split_once("\r\n\r\n").unwrap_or((&buf, ""));
    if !head.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(
            head.lines().next().unwrap_or("").to_string(),
        ));
    }
    Ok(body.to_string())
}

/// All snapshots of an action, with their decoded prior objects.
pub async fn snapshots(store: &KubeStore, action: &str) -> Vec<(SnapshotMeta, Option<Value>)> {
    let id = ActionId::parse(action).expect("action id");
    let metas = store.list_snapshots(&id).await.expect("listing snapshots");
    let mut out = Vec::new();
    for m in metas {
        let payload = store.load_payload(&m).await.expect("loading payload");
        out.push((m, payload));
    }
    out
}

/// Snapshots of changes in one namespace (stored alone or in batches),
/// in capture order. Secrets' snapshots are included.
pub async fn snapshots_in_namespace(
    client: &Client,
    snapshot_ns: &str,
    namespace: &str,
) -> Vec<SnapshotMeta> {
    let store = KubeStore::new(client.clone(), snapshot_ns);
    let mut out: Vec<SnapshotMeta> = store
        .all_snapshot_metas()
        .await
        .expect("listing snapshots")
        .into_iter()
        .filter(|m| m.object.namespace.as_deref() == Some(namespace))
        .collect();
    out.sort_by_key(SnapshotMeta::order_key);
    out
}

/// Poll `f` until it returns Some or the deadline passes.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn data_path(name: &str) -> PathBuf {
    Path::new(ROOT).join("tests/data").join(name)
}

impl Cluster {
    /// The bearer token of a test user.
    pub fn token(&self, user: &str) -> String {
        std::fs::read_to_string(self.dir.join("tokens.csv"))
            .expect("tokens.csv")
            .lines()
            .find_map(|l| {
                let mut f = l.split(',');
                let token = f.next()?;
                (f.next()? == user).then(|| token.to_string())
            })
            .unwrap_or_else(|| panic!("no token for {user}"))
    }

    /// A service account `ns/name` that may edit in `ns` (the
    /// `test-editor` role), and a token for it from a TokenRequest (what
    /// `kubectl create token` does, sent so that any kubectl can).
    pub fn service_account(&self, ns: &str, name: &str) -> String {
        self.kubectl_ok(&["-n", ns, "create", "serviceaccount", name]);
        self.kubectl_ok(&[
            "-n",
            ns,
            "create",
            "rolebinding",
            &format!("{name}-edit"),
            "--clusterrole=test-editor",
            &format!("--serviceaccount={ns}:{name}"),
        ]);
        let out = self.kubectl_stdin(
            "admin",
            &[
                "create",
                "--raw",
                &format!("/api/v1/namespaces/{ns}/serviceaccounts/{name}/token"),
                "-f",
                "-",
            ],
            r#"{"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}}"#,
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let requested: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("a TokenRequest");
        requested["status"]["token"]
            .as_str()
            .expect("a token")
            .to_string()
    }

    /// kubectl authenticated by `token` alone (no kubeconfig user); panics
    /// with its output on failure.
    pub fn kubectl_with_token_ok(&self, token: &str, args: &[&str]) -> String {
        let out = Command::new("kubectl")
            .env_remove("KUBECONFIG")
            .args(["--kubeconfig=/dev/null", "--server", &self.url])
            .arg("--certificate-authority")
            .arg(self.apiserver_ca())
            .args(["--token", token])
            .args(args)
            .output()
            .expect("running kubectl");
        assert!(
            out.status.success(),
            "kubectl --token … {} failed:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A developer of their own: a new namespace, a service account `dev`
    /// that may edit in it and call every verb of the rollback API, so that
    /// its actions and sessions are nobody else's. The namespace and the
    /// account's token.
    pub fn developer(&self, prefix: &str) -> (String, String) {
        let ns = self.namespace(prefix, &[]);
        let token = self.service_account(&ns, "dev");
        self.grant_api(&format!("system:serviceaccount:{ns}:dev"));
        (ns, token)
    }

    /// Let `user` call every verb of the rollback API.
    pub fn grant_api(&self, user: &str) {
        // Once per binary: concurrent applies of one new object race.
        static ROLE: OnceLock<()> = OnceLock::new();
        ROLE.get_or_init(|| {
            self.kubectl_apply_str(API_ROLE);
        });
        let _ = self.kubectl(
            "admin",
            &[
                "create",
                "clusterrolebinding",
                &format!("snapback-api-{user}"),
                "--clusterrole=snapback-api-user",
                &format!("--user={user}"),
            ],
        );
    }

    /// Let `user` edit everything the tests use, in every namespace.
    pub fn grant_cluster_edit(&self, user: &str) {
        for role in ["test-editor", "test-cluster-editor"] {
            let _ = self.kubectl(
                "admin",
                &[
                    "create",
                    "clusterrolebinding",
                    &format!("{role}-{user}"),
                    &format!("--clusterrole={role}"),
                    &format!("--user={user}"),
                ],
            );
        }
    }
}

const API_ROLE: &str = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: snapback-api-user
rules:
  - apiGroups: ["snapback.io"]
    resources: ["actions"]
    verbs: ["list", "get", "create", "update", "rollback", "cancel", "delete"]
"#;

/// A client of snapback's HTTP API (TLS, trusting the test CA).
pub struct ApiClient {
    pub base: String,
    http: reqwest::Client,
}

impl ApiClient {
    pub fn new(cluster: &Cluster, port: u16) -> Self {
        snapback::tls::install_crypto_provider();
        let ca = std::fs::read(cluster.certs.join("ca.crt")).expect("ca.crt");
        let http = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("ca pem"))
            .timeout(Duration::from_secs(300))
            .build()
            .expect("http client");
        ApiClient {
            base: format!("https://127.0.0.1:{port}"),
            http,
        }
    }

    /// Send a request; returns the status and the body (JSON when it parses,
    /// else a JSON string).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = req.send().await.expect("API request");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("API body");
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    /// A request without a body that must answer 200; returns the body.
    pub async fn ok(&self, method: &str, path: &str, token: &str) -> Value {
        let (status, body) = self.call(method, path, Some(token), None).await;
        assert_eq!(status, 200, "{method} {path}: {body}");
        body
    }

    /// Open an action with this id as the token's user; it must succeed.
    pub async fn open_action(&self, token: &str, id: &str) {
        let body = serde_json::json!({ "id": id }).to_string();
        let (status, answer) = self
            .call("POST", "/api/v1/actions", Some(token), Some(&body))
            .await;
        assert_eq!(status, 201, "opening action {id}: {answer}");
    }

    /// Any request, with raw headers and body; returns the status.
    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> u16 {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .body(body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send().await.expect("request").status().as_u16()
    }

    /// Like `call`, for a request whose server may die under it.
    pub async fn try_call(
        &self,
        method: &str,
        path: &str,
        token: &str,
    ) -> Result<u16, reqwest::Error> {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let resp = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token)
            .send()
            .await?;
        Ok(resp.status().as_u16())
    }
}

impl Snapback {
    pub fn api(&self, cluster: &Cluster) -> ApiClient {
        ApiClient::new(cluster, self.api_port)
    }

    /// Kill with SIGKILL (no graceful shutdown).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stop with SIGTERM (graceful shutdown, as Kubernetes stops a pod) and
    /// wait until the process is gone.
    pub fn terminate(&mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success());
        let _ = self.child.wait();
    }
}

/// Assert the SPEC error shape and return the message.
pub fn error_message(body: &Value) -> String {
    let err = body
        .get("error")
        .unwrap_or_else(|| panic!("no error object in {body}"));
    assert!(err["code"].is_string(), "{body}");
    err["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no message in {body}"))
        .to_string()
}

/// The value of one sample (`name{labels}` exactly as exposed), 0 when absent.
pub fn metric(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(sample)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

impl Cluster {
    /// A kubeconfig for snapback (context `snapback`) reaching the API server at `server`.
    pub fn snapback_kubeconfig(&self, server: &str, name: &str) -> PathBuf {
        let path = self.dir.join(format!("{name}.kubeconfig"));
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {server}\n    certificate-authority: {}\nusers:\n- name: snapback\n  user:\n    token: {}\ncontexts:\n- name: snapback\n  context: {{cluster: c, user: snapback}}\ncurrent-context: snapback\n",
            self.certs.join("ca.crt").display(),
            self.token("snapback")
        );
        std::fs::write(&path, text).expect("kubeconfig");
        path
    }

    pub fn apiserver_ca(&self) -> PathBuf {
        self.dir.join("pki/ca.crt")
    }
}

/// Append a figure line (faults injected, snapshots found, …) to the file
/// `make test` prints at the end of the run, and print it.
pub fn record_figure(line: &str) {
    println!("{line}");
    let path = std::env::var("SNAPBACK_FIGURES")
        .map(PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir().join("snapback-figures.txt"));
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        use std::io::Write;
        let _ = writeln!(f, "{line}");
    }
}

/// A namespaced custom resource for the tests (kind Widget, group example.com).
pub const WIDGET_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          x-kubernetes-preserve-unknown-fields: true
"#;

/// The result of the object named `name` in a rollback report (Null when
/// the report has none).
pub fn result_named<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["results"]
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["name"] == name))
        .unwrap_or(&Value::Null)
}

/// A report's `counts` without the outcomes no object had (every outcome is
/// in the report, most of them 0).
pub fn nonzero(counts: &Value) -> Value {
    Value::Object(
        counts
            .as_object()
            .expect("counts is an object")
            .iter()
            .filter(|(_, v)| v.as_u64() != Some(0))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    )
}

/// What a restore must bring back of an object: its content (spec, data,
/// RBAC rules and bindings, a ServiceAccount's fields, labels, annotations),
/// not server-owned fields. A Service's clusterIP is left out: recreated, it
/// may be allocated anew.
pub fn content(v: &Value) -> Value {
    let mut out = serde_json::json!({});
    for key in [
        "spec",
        "data",
        "binaryData",
        "rules",
        "roleRef",
        "subjects",
        "secrets",
        "automountServiceAccountToken",
    ] {
        if let Some(x) = v.get(key) {
            out[key] = x.clone();
        }
    }
    if let Some(spec) = out.get_mut("spec").and_then(Value::as_object_mut) {
        spec.remove("clusterIP");
        spec.remove("clusterIPs");
    }
    let meta = &v["metadata"];
    out["labels"] = meta.get("labels").cloned().unwrap_or(serde_json::json!({}));
    let mut ann = meta
        .get("annotations")
        .cloned()
        .unwrap_or(serde_json::json!({}));
    if let Some(a) = ann.as_object_mut() {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
    out["annotations"] = ann;
    out
}

/// An action's changes (from `GET /api/v1/actions/{id}`) as sorted
/// `"<operation> <resource>/<name>"` lines.
pub fn change_list(detail: &Value) -> Vec<String> {
    let mut changes: Vec<String> = detail["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .map(|ch| {
            format!(
                "{} {}/{}",
                ch["operation"].as_str().unwrap_or("?"),
                ch["resource"].as_str().unwrap_or("?"),
                ch["name"].as_str().unwrap_or("?")
            )
        })
        .collect();
    changes.sort();
    changes
}
