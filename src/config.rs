//! Command line: one clap-derive struct, every flag also a `SNAPBACK_*`
//! environment variable, turned into a plain [`Config`] that tests can build.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(name = "snapback", version, about = "An undo button for Kubernetes")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    #[command(flatten)]
    pub client: crate::client::ClientArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the admission webhook and/or the snapshotter (rollback API, retention).
    Serve(Box<ServeArgs>),
    /// Write a CA and a serving certificate for local use.
    Certs(CertsArgs),
    /// Print the Mutating/ValidatingWebhookConfiguration for a snapback at URL.
    WebhookConfig(WebhookConfigArgs),
    /// Print a shell completion script.
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    #[command(flatten)]
    Client(crate::client::ClientCommand),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Role {
    All,
    Webhook,
    Snapshotter,
}

impl Role {
    pub fn webhook(self) -> bool {
        matches!(self, Role::All | Role::Webhook)
    }
    pub fn snapshotter(self) -> bool {
        matches!(self, Role::All | Role::Snapshotter)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CaptureFailure {
    /// Deny a change whose prior state could not be recorded.
    Deny,
    /// Let it through and count it.
    Allow,
}

/// When the validating webhook answers for a captured change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CaptureAck {
    /// Once the snapshot is written to the API server (the default).
    Written,
    /// Once the snapshot is queued for writing (needs
    /// --capture-failure=allow): a failed write is counted, not denied.
    Queued,
    /// Once the snapshot is flushed to the local journal (--journal-dir);
    /// the write to the API server follows, retried until it succeeds, and
    /// a restart writes what a crash left in the journal.
    Journaled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuthMode {
    /// Bearer token checked with TokenReview, calls authorised with SubjectAccessReview.
    Kubernetes,
    /// No authentication: local development only, loopback addresses only.
    None,
}

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    ValueEnum,
    serde::Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum FailurePolicy {
    Abort,
    Continue,
    Retry,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The namespace controller's identities: with
/// `--use-service-account-credentials` (kubeadm, most distributions) and
/// without.
pub const DEFAULT_NAMESPACE_CONTROLLER_USERS: &str =
    "system:serviceaccount:kube-system:namespace-controller,system:kube-controller-manager";

/// The garbage collector's identity, with and without
/// `--use-service-account-credentials`.
pub const DEFAULT_GARBAGE_COLLECTOR_USERS: &str =
    "system:serviceaccount:kube-system:generic-garbage-collector,system:kube-controller-manager";

/// SPEC §2's list, and the API server's own writes (`system:apiserver`:
/// the APIService it registers for each CRD group, its bootstrap RBAC and
/// priority classes), which nobody asked for and no user should undo.
pub const DEFAULT_EXCLUDE_USERS: &str =
    "system:node:*,system:kube-*,system:serviceaccount:kube-system:*,system:apiserver";
pub const DEFAULT_EXCLUDE_RESOURCES: &str = "events.core,events.events.k8s.io,leases.coordination.k8s.io,endpoints.core,endpointslices.discovery.k8s.io,tokenreviews.authentication.k8s.io,selfsubjectreviews.authentication.k8s.io,subjectaccessreviews.authorization.k8s.io,selfsubjectaccessreviews.authorization.k8s.io,localsubjectaccessreviews.authorization.k8s.io,selfsubjectrulesreviews.authorization.k8s.io,imagereviews.imagepolicy.k8s.io";

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Which servers this process runs.
    #[arg(long, env = "SNAPBACK_ROLE", value_enum, default_value = "all")]
    pub role: Role,
    #[arg(long, env = "SNAPBACK_WEBHOOK_ADDR", default_value = "0.0.0.0:8443")]
    pub webhook_addr: SocketAddr,
    #[arg(long, env = "SNAPBACK_API_ADDR", default_value = "0.0.0.0:9443")]
    pub api_addr: SocketAddr,
    /// Plain HTTP: /metrics, /healthz, /readyz.
    #[arg(long, env = "SNAPBACK_METRICS_ADDR", default_value = "0.0.0.0:9090")]
    pub metrics_addr: SocketAddr,
    /// PEM serving certificate (reloaded when the file changes).
    #[arg(long, env = "SNAPBACK_TLS_CERT")]
    pub tls_cert: PathBuf,
    /// PEM private key (reloaded when the file changes).
    #[arg(long, env = "SNAPBACK_TLS_KEY")]
    pub tls_key: PathBuf,
    /// Require a client certificate signed by this CA on the webhook port
    /// (the API server presents one when its admission configuration says so).
    #[arg(long, env = "SNAPBACK_WEBHOOK_CLIENT_CA")]
    pub webhook_client_ca: Option<PathBuf>,
    /// Kubeconfig to use instead of the in-cluster config (KUBECONFIG is honoured too).
    #[arg(long, env = "SNAPBACK_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context to use (default: the current context).
    #[arg(long, env = "SNAPBACK_KUBE_CONTEXT")]
    pub kube_context: Option<String>,
    #[arg(
        long,
        env = "SNAPBACK_SNAPSHOT_NAMESPACE",
        default_value = "snapback-system"
    )]
    pub snapshot_namespace: String,
    /// Changes by one user with gaps shorter than this share an implicit action.
    #[arg(long, env = "SNAPBACK_SESSION_IDLE", default_value = "30s", value_parser = parse_duration)]
    pub session_idle: Duration,
    /// Users whose changes are not captured (glob `*`), comma-separated.
    #[arg(long, env = "SNAPBACK_EXCLUDE_USERS", value_delimiter = ',', default_value = DEFAULT_EXCLUDE_USERS)]
    pub exclude_users: Vec<String>,
    /// Identities of the namespace controller (glob `*`), comma-separated:
    /// the objects they delete in a namespace that a captured change deleted
    /// are captured into that change's action, excluded users or not, so
    /// that rolling it back restores the namespace with its contents. Empty
    /// turns this off.
    #[arg(long, env = "SNAPBACK_NAMESPACE_CONTROLLER_USERS", value_delimiter = ',', default_value = DEFAULT_NAMESPACE_CONTROLLER_USERS)]
    pub namespace_controller_users: Vec<String>,
    /// Identities of the garbage collector (glob `*`), comma-separated: an
    /// object they delete because its owner is gone is captured into the
    /// action that deleted the owner (when a captured change did), excluded
    /// users or not, unless a controller owns it (that controller makes it
    /// again). Empty turns this off.
    #[arg(long, env = "SNAPBACK_GARBAGE_COLLECTOR_USERS", value_delimiter = ',', default_value = DEFAULT_GARBAGE_COLLECTOR_USERS)]
    pub garbage_collector_users: Vec<String>,
    /// Resources not captured, comma-separated (glob `*`): `plural.group`
    /// (the core group's as `plural.core`), or a plural alone for that
    /// resource in every group.
    #[arg(long, env = "SNAPBACK_EXCLUDE_RESOURCES", value_delimiter = ',', default_value = DEFAULT_EXCLUDE_RESOURCES)]
    pub exclude_resources: Vec<String>,
    /// snapback's own identity (never captured). Defaults to the pod's service account.
    #[arg(long, env = "SNAPBACK_SELF_USER", value_delimiter = ',')]
    pub self_user: Vec<String>,
    /// Capture Secrets too (stored as Secrets, never in ConfigMaps).
    #[arg(long, env = "SNAPBACK_CAPTURE_SECRETS")]
    pub capture_secrets: bool,
    #[arg(
        long,
        env = "SNAPBACK_CAPTURE_FAILURE",
        value_enum,
        default_value = "deny"
    )]
    pub capture_failure: CaptureFailure,
    /// When the webhook admits a captured change: once its snapshot is
    /// `written`, or once it is `queued` for writing (fail-open only: needs
    /// --capture-failure=allow; the write follows within milliseconds, and
    /// a failed one is counted in snapback_snapshot_failures_total and
    /// snapback_uncaptured_changes_admitted_total), or once it is
    /// `journaled`: flushed to a local journal (--journal-dir) from which
    /// it is written, retried until it succeeds, also after a crash.
    #[arg(
        long,
        env = "SNAPBACK_CAPTURE_ACK",
        value_enum,
        default_value = "written"
    )]
    pub capture_ack: CaptureAck,
    /// With --capture-ack=queued or journaled: how long a queued snapshot may wait for
    /// others of its action, so that one API write stores them together
    /// (at most 1s; 0 writes at once). Changes do not wait for it; a rollback
    /// asked for meanwhile waits for the queued writes as always.
    #[arg(long, env = "SNAPBACK_CAPTURE_BATCH_WINDOW", default_value = "50ms", value_parser = parse_duration)]
    pub capture_batch_window: Duration,
    /// With --capture-ack=journaled: the directory of the capture journal
    /// (one per process; in a pod, an emptyDir volume: it survives the
    /// container's restarts, not the pod's deletion).
    #[arg(long, env = "SNAPBACK_JOURNAL_DIR")]
    pub journal_dir: Option<PathBuf>,
    /// Store the snapshots of changes admitted together (same action, while
    /// a snapshot write is in flight) as one batch ConfigMap, and fold the
    /// snapshots of finished actions into batches. `false`: one ConfigMap per
    /// change, always (SPEC §3 only).
    #[arg(long, env = "SNAPBACK_SNAPSHOT_BATCHING", default_value_t = true, action = clap::ArgAction::Set)]
    pub snapshot_batching: bool,
    /// How long an action stays finished (and unchanged) before compaction
    /// folds its per-change ConfigMaps into batches: until then they are
    /// exactly as SPEC §3 stores them, for whoever inspects a recent action.
    /// 0: as soon as it is finished.
    #[arg(long, env = "SNAPBACK_COMPACT_AFTER", default_value = "1h", value_parser = parse_duration)]
    pub compact_after: Duration,
    #[arg(long, env = "SNAPBACK_RETENTION", default_value = "168h", value_parser = parse_duration)]
    pub retention: Duration,
    #[arg(long, env = "SNAPBACK_MAX_ACTIONS", default_value_t = 1000)]
    pub max_actions: usize,
    /// How often the maintenance pass (idle sessions, retention) runs.
    #[arg(long, env = "SNAPBACK_MAINTENANCE_INTERVAL", default_value = "60s", value_parser = parse_duration)]
    pub maintenance_interval: Duration,
    /// How often guarded actions are checked.
    #[arg(long, env = "SNAPBACK_GUARD_INTERVAL", default_value = "2s", value_parser = parse_duration)]
    pub guard_interval: Duration,
    /// An alert naming only a namespace rolls back the newest completed action
    /// that touched it, if it is younger than this.
    #[arg(long, env = "SNAPBACK_ALERT_ROLLBACK_WINDOW", default_value = "1h", value_parser = parse_duration)]
    pub alert_rollback_window: Duration,
    /// Roll back on alerts as this user (impersonated), instead of as the
    /// caller of the Alertmanager hook.
    #[arg(long, env = "SNAPBACK_ALERT_ROLLBACK_AS")]
    pub alert_rollback_as: Option<String>,
    /// Duration of the maintenance Lease; another replica takes over after it.
    #[arg(long, env = "SNAPBACK_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    pub lease_duration: Duration,
    #[arg(long, env = "SNAPBACK_ROLLBACK_WINDOW", default_value = "24h", value_parser = parse_duration)]
    pub rollback_window: Duration,
    #[arg(
        long,
        env = "SNAPBACK_ROLLBACK_FAILURE_POLICY",
        value_enum,
        default_value = "abort"
    )]
    pub rollback_failure_policy: FailurePolicy,
    #[arg(long, env = "SNAPBACK_ROLLBACK_RETRIES", default_value_t = 3)]
    pub rollback_retries: u32,
    /// Objects restored at once within one dependency wave (1 restores them
    /// one by one).
    #[arg(long, env = "SNAPBACK_ROLLBACK_PARALLELISM", default_value_t = 8,
          value_parser = clap::value_parser!(u16).range(1..=256))]
    pub rollback_parallelism: u16,
    #[arg(long, env = "SNAPBACK_AUTH", value_enum, default_value = "kubernetes")]
    pub auth: AuthMode,
    /// Largest AdmissionReview body accepted. The default takes the largest
    /// review the API server can send: an UPDATE of an object at etcd's
    /// 1.5 MiB limit, object and oldObject, every byte JSON-escaped (`<`,
    /// `>`, `&` and control characters become six bytes each).
    #[arg(long, env = "SNAPBACK_MAX_REVIEW_BYTES", default_value_t = 20 * 1024 * 1024)]
    pub max_review_bytes: usize,
    #[arg(long, env = "SNAPBACK_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

#[derive(Debug, Args)]
pub struct CertsArgs {
    /// Directory to write ca.crt, tls.crt and tls.key into.
    #[arg(long, env = "SNAPBACK_CERTS_OUT")]
    pub out: PathBuf,
    /// DNS names and IP addresses the serving certificate is valid for.
    #[arg(
        long,
        env = "SNAPBACK_CERTS_HOSTS",
        value_delimiter = ',',
        default_value = "localhost,127.0.0.1"
    )]
    pub hosts: Vec<String>,
}

#[derive(Debug, Args)]
pub struct WebhookConfigArgs {
    /// Base URL of the webhook server, e.g. https://127.0.0.1:8443
    #[arg(long, env = "SNAPBACK_WEBHOOK_URL")]
    pub url: String,
    /// CA certificate (PEM) that signed the serving certificate.
    #[arg(long, env = "SNAPBACK_WEBHOOK_CA")]
    pub ca: PathBuf,
    /// Name of the webhook configurations.
    #[arg(long, env = "SNAPBACK_WEBHOOK_NAME", default_value = "snapback")]
    pub name: String,
    /// Namespaces whose changes are never sent to snapback (by their
    /// `kubernetes.io/metadata.name` label, which API servers set from 1.21
    /// on; on older ones, label them with --exclude-label instead).
    #[arg(
        long,
        env = "SNAPBACK_WEBHOOK_EXCLUDE_NAMESPACES",
        value_delimiter = ',',
        default_value = "snapback-system,kube-system,kube-node-lease"
    )]
    pub exclude_namespaces: Vec<String>,
    /// Namespaces carrying this label are never sent to snapback.
    #[arg(
        long,
        env = "SNAPBACK_WEBHOOK_EXCLUDE_LABEL",
        default_value = "snapback.io/exclude"
    )]
    pub exclude_label: String,
    /// Only send namespaced changes from namespaces with this label (key=value).
    #[arg(long, env = "SNAPBACK_WEBHOOK_NAMESPACE_LABEL")]
    pub namespace_label: Option<String>,
    /// Admission failurePolicy: Fail (matches --capture-failure=deny) or Ignore.
    #[arg(long, env = "SNAPBACK_WEBHOOK_FAILURE_POLICY", default_value = "Fail")]
    pub failure_policy: String,
    #[arg(long, env = "SNAPBACK_WEBHOOK_TIMEOUT_SECONDS", default_value_t = 10)]
    pub timeout_seconds: u32,
    /// Which objects the rules match: `*`, `Namespaced` or `Cluster`.
    #[arg(long, env = "SNAPBACK_WEBHOOK_SCOPE", default_value = "*")]
    pub scope: String,
    /// Kubernetes 1.28+: add matchConditions so that the API server does not
    /// call snapback at all for what it never captures by default (review
    /// kinds such as TokenReview and SubjectAccessReview, Leases, Events,
    /// Endpoints, EndpointSlices, requests by nodes). Writes of those keep
    /// working while snapback is down. API servers before 1.28 do not know
    /// the field (kubectl's validation refuses it there).
    #[arg(long, env = "SNAPBACK_WEBHOOK_MATCH_CONDITIONS")]
    pub match_conditions: bool,
}

/// Everything `serve` needs, as plain data.
#[derive(Debug, Clone)]
pub struct Config {
    pub role: Role,
    pub webhook_addr: SocketAddr,
    pub api_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    pub webhook_client_ca: Option<PathBuf>,
    pub kubeconfig: Option<PathBuf>,
    pub snapshot_batching: bool,
    /// `--compact-after`.
    pub compact_after: Duration,
    /// How long a round of queued snapshot writes gathers snapshots (only
    /// with `--capture-ack=queued`; see [`Config::batch_window`]).
    pub capture_batch_window: Duration,
    /// `--journal-dir` (used with `--capture-ack=journaled`).
    pub journal_dir: Option<PathBuf>,
    pub kube_context: Option<String>,
    pub capture: CaptureConfig,
    pub retention: Duration,
    pub max_actions: usize,
    pub maintenance_interval: Duration,
    pub lease_duration: Duration,
    pub guard_interval: Duration,
    pub alert_rollback_window: Duration,
    pub alert_rollback_as: Option<String>,
    pub rollback: RollbackConfig,
    pub auth: AuthMode,
    pub max_review_bytes: usize,
    pub log_format: LogFormat,
}

/// What the webhook captures and how.
#[derive(Debug, Clone)]
pub struct CaptureConfig {
    pub snapshot_namespace: String,
    pub session_idle: Duration,
    pub exclude_users: Vec<String>,
    pub namespace_controller_users: Vec<String>,
    pub garbage_collector_users: Vec<String>,
    pub exclude_resources: Vec<String>,
    pub self_users: Vec<String>,
    pub capture_secrets: bool,
    pub capture_failure: CaptureFailure,
    pub capture_ack: CaptureAck,
}

#[derive(Debug, Clone)]
pub struct RollbackConfig {
    pub window: Duration,
    pub failure_policy: FailurePolicy,
    pub retries: u32,
    /// Objects restored at once within a wave.
    pub parallelism: usize,
}

impl Config {
    /// Combinations of flags that contradict each other.
    pub fn check(&self) -> Result<(), String> {
        if self.capture.capture_ack == CaptureAck::Queued
            && self.capture.capture_failure == CaptureFailure::Deny
        {
            return Err(
                "--capture-ack=queued needs --capture-failure=allow: with deny, a change \
                 is admitted only once its snapshot is written"
                    .into(),
            );
        }
        if self.max_actions == 0 {
            return Err(
                "--max-actions must be at least 1 (0 would delete every finished action at the next maintenance pass)"
                    .into(),
            );
        }
        for (flag, value, why) in [
            (
                "--retention",
                self.retention,
                "every finished action would be deleted at once",
            ),
            (
                "--rollback-window",
                self.rollback.window,
                "every rollback would need force=true",
            ),
            (
                "--session-idle",
                self.capture.session_idle,
                "no two changes would share an implicit action",
            ),
            (
                "--maintenance-interval",
                self.maintenance_interval,
                "the maintenance pass would never pause",
            ),
            (
                "--lease-duration",
                self.lease_duration,
                "the maintenance Lease would expire as it is taken",
            ),
            (
                "--guard-interval",
                self.guard_interval,
                "the guard check would never pause",
            ),
        ] {
            if value.is_zero() {
                return Err(format!("{flag} must be more than 0 ({why})"));
            }
        }
        if self.lease_duration < Duration::from_secs(1) {
            return Err(format!(
                "--lease-duration must be at least 1s (got {:?}): the Lease's duration is kept in whole seconds",
                self.lease_duration
            ));
        }
        if let Err(why) = dns_label(&self.capture.snapshot_namespace) {
            return Err(format!(
                "--snapshot-namespace {:?} is not a namespace name: {why}",
                self.capture.snapshot_namespace
            ));
        }
        if self.capture.capture_ack == CaptureAck::Journaled && self.journal_dir.is_none() {
            return Err(
                "--capture-ack=journaled needs --journal-dir: the directory the journal lives in \
                 (in a pod, an emptyDir volume)"
                    .into(),
            );
        }
        if self.role.webhook() && self.max_review_bytes < MIN_REVIEW_BYTES {
            return Err(format!(
                "--max-review-bytes must be at least {MIN_REVIEW_BYTES} (got {}): a smaller limit refuses ordinary reviews, and with failurePolicy Fail every change to the cluster",
                self.max_review_bytes
            ));
        }
        if self.capture_batch_window > MAX_BATCH_WINDOW {
            return Err(format!(
                "--capture-batch-window must be at most {MAX_BATCH_WINDOW:?} (got {:?})",
                self.capture_batch_window
            ));
        }
        Ok(())
    }

    /// The batch window the snapshot writer uses: `--capture-batch-window`
    /// when the webhook answers before the write (`--capture-ack=queued` or
    /// `journaled`),
    /// none otherwise (a change that waits for its snapshot would wait for
    /// the window too).
    pub fn batch_window(&self) -> Duration {
        match self.capture.capture_ack {
            CaptureAck::Queued | CaptureAck::Journaled => self.capture_batch_window,
            CaptureAck::Written => Duration::ZERO,
        }
    }
}

/// A Kubernetes namespace name (RFC 1123 label): at most 63 characters,
/// lower-case letters, digits and `-`, starting and ending with a letter or
/// digit.
fn dns_label(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 63 {
        return Err("it must be 1 to 63 characters long");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err("it may contain only lower-case letters, digits and '-'");
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err("it must start and end with a letter or digit");
    }
    Ok(())
}

/// Longest `--capture-batch-window`: a queued snapshot is not durable until
/// written, and readers of an action wait for it.
pub const MAX_BATCH_WINDOW: Duration = Duration::from_secs(1);

impl CaptureConfig {
    /// Defaults of the command line, for tests and benchmarks.
    pub fn with_namespace(ns: &str) -> Self {
        CaptureConfig {
            snapshot_namespace: ns.to_string(),
            session_idle: Duration::from_secs(30),
            exclude_users: split(DEFAULT_EXCLUDE_USERS),
            namespace_controller_users: split(DEFAULT_NAMESPACE_CONTROLLER_USERS),
            garbage_collector_users: split(DEFAULT_GARBAGE_COLLECTOR_USERS),
            exclude_resources: split(DEFAULT_EXCLUDE_RESOURCES),
            self_users: vec![],
            capture_secrets: false,
            capture_failure: CaptureFailure::Deny,
            capture_ack: CaptureAck::Written,
        }
    }
}

fn split(s: &str) -> Vec<String> {
    s.split(',').map(str::to_string).collect()
}

/// The service account identity when running in a pod.
fn default_self_users(snapshot_namespace: &str) -> Vec<String> {
    let sa = std::env::var("SNAPBACK_SERVICE_ACCOUNT").unwrap_or_else(|_| "snapback".into());
    let ns = std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| snapshot_namespace.to_string());
    vec![format!("system:serviceaccount:{ns}:{sa}")]
}

impl From<ServeArgs> for Config {
    fn from(a: ServeArgs) -> Self {
        let clean = |v: Vec<String>| -> Vec<String> {
            v.into_iter()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        };
        let self_users = clean(a.self_user);
        let self_users = if self_users.is_empty() {
            default_self_users(&a.snapshot_namespace)
        } else {
            self_users
        };
        Config {
            role: a.role,
            webhook_addr: a.webhook_addr,
            api_addr: a.api_addr,
            metrics_addr: a.metrics_addr,
            tls_cert: a.tls_cert,
            tls_key: a.tls_key,
            webhook_client_ca: a.webhook_client_ca,
            kubeconfig: a.kubeconfig,
            snapshot_batching: a.snapshot_batching,
            compact_after: a.compact_after,
            capture_batch_window: a.capture_batch_window,
            journal_dir: a.journal_dir,
            kube_context: a.kube_context,
            capture: CaptureConfig {
                snapshot_namespace: a.snapshot_namespace,
                session_idle: a.session_idle,
                exclude_users: clean(a.exclude_users),
                namespace_controller_users: clean(a.namespace_controller_users),
                garbage_collector_users: clean(a.garbage_collector_users),
                exclude_resources: clean(a.exclude_resources),
                self_users,
                capture_secrets: a.capture_secrets,
                capture_failure: a.capture_failure,
                capture_ack: a.capture_ack,
            },
            retention: a.retention,
            max_actions: a.max_actions,
            maintenance_interval: a.maintenance_interval,
            lease_duration: a.lease_duration,
            guard_interval: a.guard_interval,
            alert_rollback_window: a.alert_rollback_window,
            alert_rollback_as: a.alert_rollback_as,
            rollback: RollbackConfig {
                window: a.rollback_window,
                failure_policy: a.rollback_failure_policy,
                retries: a.rollback_retries,
                parallelism: usize::from(a.rollback_parallelism),
            },
            auth: a.auth,
            max_review_bytes: a.max_review_bytes,
            log_format: a.log_format,
        }
    }
}

/// Parse a Go-style duration: `30s`, `5m`, `168h`, `1h30m`, `250ms`.
/// The smallest `--max-review-bytes` accepted (1 MiB).
pub const MIN_REVIEW_BYTES: usize = 1024 * 1024;

pub fn parse_duration(input: &str) -> Result<Duration, String> {
    let s = input.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("duration {input:?} is missing a unit (s, m, h, ms)"))?;
        if digits == 0 {
            return Err(format!("invalid duration {input:?}"));
        }
        let value: f64 = rest[..digits]
            .parse()
            .map_err(|_| format!("invalid number in duration {input:?}"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let secs = match unit {
            "ms" => value / 1000.0,
            "s" => value,
            "m" => value * 60.0,
            "h" => value * 3600.0,
            "d" => value * 86400.0,
            other => return Err(format!("unknown unit {other:?} in duration {input:?}")),
        };
        let out_of_range = || format!("duration {input:?} is out of range");
        total = Duration::try_from_secs_f64(secs)
            .ok()
            .and_then(|d| total.checked_add(d))
            .ok_or_else(out_of_range)?;
    }
    Ok(total)
}

/// Format a duration the way `parse_duration` reads it.
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs == 0 {
        return format!("{}ms", d.as_millis());
    }
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 || out.is_empty() {
        out.push_str(&format!("{s}s"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case("30s", 30_000)]
    #[case("5m", 300_000)]
    #[case("168h", 604_800_000)]
    #[case("1h30m", 5_400_000)]
    #[case("250ms", 250)]
    #[case("1.5s", 1_500)]
    #[case("0", 0)]
    fn durations(#[case] s: &str, #[case] ms: u128) {
        assert_eq!(parse_duration(s).unwrap().as_millis(), ms);
    }

    #[rstest]
    #[case("")]
    #[case("30")]
    #[case("s")]
    #[case("5x")]
    #[case("-5s")]
    #[case("1e400s")]
    // Each part fits, their sum does not: an error, not a panic.
    #[case("4000000000000000h4000000000000000h")]
    fn bad_durations(#[case] s: &str) {
        assert!(parse_duration(s).is_err(), "{s}");
    }

    #[test]
    fn format_round_trips() {
        for s in ["30s", "5m", "1h30m", "168h"] {
            let d = parse_duration(s).unwrap();
            assert_eq!(parse_duration(&format_duration(d)).unwrap(), d);
        }
    }

    #[test]
    fn cli_defaults_match_spec() {
        let cli = Cli::try_parse_from([
            "snapback",
            "serve",
            "--tls-cert",
            "c",
            "--tls-key",
            "k",
            "--self-user",
            "me",
        ])
        .unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("expected serve")
        };
        let cfg = Config::from(*args);
        assert_eq!(cfg.webhook_addr.port(), 8443);
        assert_eq!(cfg.api_addr.port(), 9443);
        assert_eq!(cfg.metrics_addr.port(), 9090);
        assert_eq!(cfg.capture.snapshot_namespace, "snapback-system");
        assert_eq!(cfg.capture.session_idle, Duration::from_secs(30));
        assert_eq!(cfg.retention, Duration::from_secs(168 * 3600));
        assert_eq!(cfg.max_actions, 1000);
        assert_eq!(cfg.rollback.window, Duration::from_secs(24 * 3600));
        assert_eq!(cfg.capture.capture_failure, CaptureFailure::Deny);
        assert_eq!(cfg.capture.capture_ack, CaptureAck::Written);
        assert_eq!(cfg.check(), Ok(()));
        assert_eq!(cfg.capture.self_users, vec!["me".to_string()]);
        for user in ["system:node:*", "system:apiserver"] {
            assert!(
                cfg.capture.exclude_users.contains(&user.to_string()),
                "{user}"
            );
        }
        assert_eq!(
            cfg.capture.namespace_controller_users,
            vec![
                "system:serviceaccount:kube-system:namespace-controller".to_string(),
                "system:kube-controller-manager".to_string()
            ]
        );
    }

    #[test]
    fn zero_limits_and_bad_namespace_names_are_refused() {
        let check = |extra: &[&str]| {
            let mut argv = vec!["snapback", "serve", "--tls-cert", "c", "--tls-key", "k"];
            argv.extend_from_slice(extra);
            let Command::Serve(args) = Cli::try_parse_from(argv).unwrap().command else {
                panic!("expected serve")
            };
            Config::from(*args).check()
        };
        for (flag, value) in [
            ("--max-actions", "0"),
            ("--retention", "0s"),
            ("--rollback-window", "0s"),
            ("--session-idle", "0s"),
            ("--maintenance-interval", "0s"),
            ("--lease-duration", "0s"),
            ("--lease-duration", "500ms"),
            ("--guard-interval", "0s"),
            ("--max-review-bytes", "10"),
        ] {
            let err = check(&[flag, value]).unwrap_err();
            assert!(err.starts_with(flag), "{flag}: {err}");
        }
        for bad in ["Bad_NS", "-x", "x-", &"a".repeat(64), ""] {
            let err = check(&[&format!("--snapshot-namespace={bad}")]).unwrap_err();
            assert!(err.contains("not a namespace name"), "{bad}: {err}");
        }
        for good in ["snapback-system", "a", "ns-1", &"a".repeat(63)] {
            assert_eq!(check(&["--snapshot-namespace", good]), Ok(()), "{good}");
        }
        assert_eq!(check(&["--max-actions", "1", "--retention", "1s"]), Ok(()));
    }

    #[test]
    fn queued_acknowledgement_needs_fail_open() {
        let parse = |extra: &[&str]| {
            let mut argv = vec!["snapback", "serve", "--tls-cert", "c", "--tls-key", "k"];
            argv.extend_from_slice(extra);
            let Command::Serve(args) = Cli::try_parse_from(argv).unwrap().command else {
                panic!("expected serve")
            };
            Config::from(*args)
        };
        let err = parse(&["--capture-ack", "queued"]).check().unwrap_err();
        assert!(err.contains("--capture-failure=allow"), "{err}");
        let cfg = parse(&["--capture-ack", "queued", "--capture-failure", "allow"]);
        assert_eq!(cfg.capture.capture_ack, CaptureAck::Queued);
        assert_eq!(cfg.check(), Ok(()));
        // The batch window applies only where nobody waits for the write.
        assert_eq!(cfg.batch_window(), Duration::from_millis(50));
        let written = parse(&["--capture-batch-window", "50ms"]);
        assert_eq!(written.batch_window(), Duration::ZERO);
        let wide = parse(&[
            "--capture-ack",
            "queued",
            "--capture-failure",
            "allow",
            "--capture-batch-window",
            "2s",
        ]);
        let err = wide.check().unwrap_err();
        assert!(err.contains("--capture-batch-window"), "{err}");
    }
}
