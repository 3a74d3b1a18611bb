//! The benchmarks that need the local control plane and real processes:
//! admission overhead through the API server, rollback speed, memory.
//!
//!   cargo bench --bench snapback -- live KUBECONFIG SNAPBACK_BIN WORKDIR [--smoke]
//!
//! KUBECONFIG is the local control plane's (contexts admin and snapback, the
//! snapback user bound to snapback's RBAC); SNAPBACK_BIN a release build of
//! snapback. `--smoke` runs every part with tiny sizes (CI), so that the
//! suite cannot rot; its numbers mean nothing.
//!
//! For a quick look at one part: `BENCH_CLIENTS=32` (comma-separated client
//! counts), `BENCH_ROUNDS=1`, `BENCH_ADMISSION_ONLY=1` (no rollbacks),
//! `BENCH_QUEUED_WINDOW=0` (the queued setup's `--capture-batch-window`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

pub struct Live {
    kubeconfig: PathBuf,
    bin: PathBuf,
    work: PathBuf,
    smoke: bool,
}

/// A child process killed when dropped.
struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Mode {
    NoWebhook,
    Noop,
    /// snapback with `--snapshot-batching=false`: one API write per change.
    PerChange,
    Snapback,
    /// snapback with `--capture-failure=allow --capture-ack=queued`.
    Queued,
    /// snapback with `--capture-ack=journaled` (and the default
    /// `--capture-failure=deny`).
    Journaled,
}

const MODES: [Mode; 6] = [
    Mode::NoWebhook,
    Mode::Noop,
    Mode::PerChange,
    Mode::Snapback,
    Mode::Queued,
    Mode::Journaled,
];

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::NoWebhook => "no webhook",
            Mode::Noop => "no-op webhook",
            Mode::PerChange => "snapback, batching off (one write per change)",
            Mode::Snapback => "snapback",
            Mode::Queued => "snapback, `--capture-ack=queued` (fail-open)",
            Mode::Journaled => "snapback, `--capture-ack=journaled` (deny)",
        }
    }
}

/// One measurement of one setup: latencies inside the measured window, and
/// the CPU time each process spent over the whole cell (warm-up included)
/// with the number of writes made in it.
struct Cell {
    lat: Vec<Duration>,
    secs: f64,
    ops: u64,
    cpu: [f64; 4],
    /// snapback's own count over the cell: snapshots stored, and the API
    /// objects created to store them (`snapback_snapshot_api_writes_total`).
    snapshots: [f64; 2],
}

impl Cell {
    fn rate(&self) -> f64 {
        self.lat.len() as f64 / self.secs
    }
}

/// The rounds of one setup at one client count.
struct Summary {
    mode: Mode,
    clients: usize,
    rates: Vec<f64>,
    p50: f64,
    p95: f64,
    p99: f64,
    /// Microseconds of CPU per write: API server, etcd, webhook, load generator.
    cpu_us: [f64; 4],
    /// Snapshots stored per API write (snapback setups).
    per_write: Option<f64>,
}

impl Summary {
    fn new(mode: Mode, clients: usize, cells: &[Cell]) -> Summary {
        let mut lat: Vec<Duration> = cells.iter().flat_map(|c| c.lat.iter().copied()).collect();
        lat.sort();
        let ops: u64 = cells.iter().map(|c| c.ops).sum::<u64>().max(1);
        let mut cpu_us = [0.0; 4];
        for (i, v) in cpu_us.iter_mut().enumerate() {
            *v = cells.iter().map(|c| c.cpu[i]).sum::<f64>() * 1e6 / ops as f64;
        }
        let stored: f64 = cells.iter().map(|c| c.snapshots[0]).sum();
        let writes: f64 = cells.iter().map(|c| c.snapshots[1]).sum();
        Summary {
            per_write: (writes > 0.0).then(|| stored / writes),
            mode,
            clients,
            rates: cells.iter().map(Cell::rate).collect(),
            p50: percentile(&lat, 0.50),
            p95: percentile(&lat, 0.95),
            p99: percentile(&lat, 0.99),
            cpu_us,
        }
    }

    fn rate(&self) -> f64 {
        median(&self.rates)
    }
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// CPU seconds used so far by a process (utime + stime of /proc/PID/stat).
fn cpu_secs(pid: u32) -> f64 {
    stat_cpu_secs(std::path::Path::new(&format!("/proc/{pid}/stat")))
}

/// CPU seconds (utime + stime) in a `/proc` `stat` file: a process's, or a
/// thread's (`/proc/PID/task/TID/stat`).
pub fn stat_cpu_secs(path: &std::path::Path) -> f64 {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // Fields 14 and 15 of the line; 11 and 12 after the command name.
    (ticks(11) + ticks(12)) as f64 / clock_ticks()
}

fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// The one process whose command name is `comm`, if exactly one runs.
fn pid_of(comm: &str) -> Option<u32> {
    let mut found = None;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if name.trim() == comm {
            if found.is_some() {
                return None;
            }
            found = Some(pid);
        }
    }
    found
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

impl Live {
    pub fn new(args: &[String]) -> Live {
        Live {
            kubeconfig: PathBuf::from(&args[0]),
            bin: PathBuf::from(&args[1]),
            work: PathBuf::from(&args[2]),
            smoke: args.iter().any(|a| a == "--smoke"),
        }
    }

    fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> String {
        let mut cmd = Command::new("kubectl");
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--context")
            .arg("admin")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let mut child = cmd.spawn().expect("kubectl");
        if let Some(input) = stdin {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
        }
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn snapback(&self, args: &[&str]) -> String {
        let out = Command::new(&self.bin)
            .args(args)
            .output()
            .expect("snapback");
        assert!(
            out.status.success(),
            "snapback {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts `snapback serve` with extra flags; returns it and its webhook,
    /// API and metrics ports.
    fn serve(&self, name: &str, extra: &[&str]) -> (Proc, u16, u16, u16) {
        let (wh, api, met) = (free_port(), free_port(), free_port());
        let certs = self.work.join("certs");
        let log = std::fs::File::create(self.work.join(format!("{name}.log"))).unwrap();
        let child = Command::new(&self.bin)
            .arg("serve")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["--kube-context", "snapback", "--self-user", "snapback"])
            .arg("--tls-cert")
            .arg(certs.join("tls.crt"))
            .arg("--tls-key")
            .arg(certs.join("tls.key"))
            .args(["--webhook-addr", &format!("127.0.0.1:{wh}")])
            .args(["--api-addr", &format!("127.0.0.1:{api}")])
            .args(["--metrics-addr", &format!("127.0.0.1:{met}")])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("snapback serve");
        let proc = Proc(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !http_ok(met, "/readyz") {
            assert!(Instant::now() < deadline, "{name} never became ready");
            std::thread::sleep(Duration::from_millis(100));
        }
        (proc, wh, api, met)
    }

    fn register(&self, mode: Mode, ports: &Ports) {
        match mode {
            Mode::NoWebhook => {
                self.kubectl(
                    &[
                        "delete",
                        "--ignore-not-found",
                        "mutatingwebhookconfiguration/snapback",
                        "validatingwebhookconfiguration/snapback",
                    ],
                    None,
                );
            }
            Mode::Noop | Mode::PerChange | Mode::Snapback | Mode::Queued | Mode::Journaled => {
                let port = match mode {
                    Mode::Noop => ports.noop,
                    Mode::PerChange => ports.per_change,
                    Mode::Queued => ports.queued,
                    Mode::Journaled => ports.journaled,
                    _ => ports.snapback,
                };
                let ca = self.work.join("certs/ca.crt");
                let config = self.snapback(&[
                    "webhook-config",
                    "--url",
                    &format!("https://127.0.0.1:{port}"),
                    "--ca",
                    ca.to_str().unwrap(),
                ]);
                self.kubectl(&["apply", "-f", "-"], Some(&config));
            }
        }
        // The API server picks webhook configurations up through an informer.
        std::thread::sleep(Duration::from_secs(if self.smoke { 2 } else { 3 }));
    }

    pub fn run(&self) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        std::fs::create_dir_all(&self.work).unwrap();
        self.snapback(&[
            "certs",
            "--out",
            self.work.join("certs").to_str().unwrap(),
            "--hosts",
            "localhost,127.0.0.1",
        ]);
        let noop_port = free_port();
        let certs = self.work.join("certs");
        let noop = Proc(
            Command::new(std::env::current_exe().unwrap())
                .args(["noop-webhook", certs.join("tls.crt").to_str().unwrap()])
                .arg(certs.join("tls.key"))
                .arg(noop_port.to_string())
                .spawn()
                .expect("no-op webhook"),
        );
        let (sb, sb_webhook, sb_api, sb_metrics) = self.serve("snapback", &[]);
        let (_per_change, per_change_webhook, _, per_change_metrics) =
            self.serve("per-change", &["--snapshot-batching=false"]);
        // BENCH_QUEUED_WINDOW: the queued setup's --capture-batch-window
        // (its default otherwise), to compare windows.
        let window = std::env::var("BENCH_QUEUED_WINDOW")
            .ok()
            .filter(|w| !w.is_empty())
            .map(|w| format!("--capture-batch-window={w}"));
        let mut queued_args = vec!["--capture-failure=allow", "--capture-ack=queued"];
        queued_args.extend(window.as_deref());
        let (queued, queued_webhook, _, queued_metrics) = self.serve("queued", &queued_args);
        let journal_dir = self.work.join("journal");
        let mut journaled_args = vec![
            "--capture-ack=journaled",
            "--journal-dir",
            journal_dir.to_str().unwrap(),
        ];
        journaled_args.extend(window.as_deref());
        let (journaled, journaled_webhook, _, journaled_metrics) =
            self.serve("journaled", &journaled_args);
        let ports = Ports {
            noop: noop_port,
            per_change: per_change_webhook,
            snapback: sb_webhook,
            queued: queued_webhook,
            journaled: journaled_webhook,
        };
        // Whose CPU each cell accounts: API server, etcd, the webhook of the
        // setup, this process (the load generator).
        let apiserver = pid_of("kube-apiserver");
        let etcd = pid_of("etcd");
        let webhook_pid = |mode: Mode| match mode {
            Mode::NoWebhook => None,
            Mode::Noop => Some(noop.0.id()),
            Mode::PerChange => Some(_per_change.0.id()),
            Mode::Snapback => Some(sb.0.id()),
            Mode::Queued => Some(queued.0.id()),
            Mode::Journaled => Some(journaled.0.id()),
        };
        let metrics_port = |mode: Mode| match mode {
            Mode::NoWebhook | Mode::Noop => None,
            Mode::PerChange => Some(per_change_metrics),
            Mode::Snapback => Some(sb_metrics),
            Mode::Queued => Some(queued_metrics),
            Mode::Journaled => Some(journaled_metrics),
        };
        // Snapshots stored and API objects written for them, so far.
        let snapshot_counts = |mode: Mode| {
            metrics_port(mode).map_or([0.0; 2], |port| {
                let text = http_get(port, "/metrics").unwrap_or_default();
                [
                    metric_sum(&text, "snapback_snapshots_stored_total"),
                    metric_sum(&text, "snapback_snapshot_api_writes_total"),
                ]
            })
        };
        std::thread::sleep(Duration::from_secs(2));
        let idle_kib = rss_kib(sb.0.id(), "VmRSS:");

        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let clients: Vec<usize> = match env("BENCH_CLIENTS") {
            Some(list) => list.split(',').map(|n| n.trim().parse().unwrap()).collect(),
            None if self.smoke => vec![1, 2],
            None => vec![1, 8, 32],
        };
        let secs = if self.smoke { 1.0 } else { 6.0 };
        let rounds = match env("BENCH_ROUNDS") {
            Some(n) => n.parse().unwrap(),
            None if self.smoke => 1,
            None => 3,
        };
        let mut peaks: Vec<(Mode, u64)> = Vec::new();
        let client = rt.block_on(self.client("admin"));
        rt.block_on(ensure_namespace(&client, "bench-load"));
        let mut summaries = Vec::new();
        let mut load_peak_kib = 0;
        let mut cell_no = 0;
        for &n in &clients {
            let mut cells: Vec<Vec<Cell>> = MODES.iter().map(|_| Vec::new()).collect();
            // Interleaved rounds, each in a rotated order, so that the
            // machine's drift spreads over every setup alike.
            for round in 0..rounds {
                for k in 0..MODES.len() {
                    let i = (k + round) % MODES.len();
                    let mode = MODES[i];
                    self.register(mode, &ports);
                    let sampler = webhook_pid(mode).map(RssSampler::start);
                    let pids = [apiserver, etcd, webhook_pid(mode), Some(std::process::id())];
                    let counted = snapshot_counts(mode);
                    let before = pids.map(|p| p.map_or(0.0, cpu_secs));
                    cell_no += 1;
                    let mut cell = rt.block_on(self.load(mode, n, secs, cell_no));
                    let after = pids.map(|p| p.map_or(0.0, cpu_secs));
                    for j in 0..4 {
                        cell.cpu[j] = after[j] - before[j];
                    }
                    // Queued snapshots are written within a batch window.
                    std::thread::sleep(Duration::from_millis(300));
                    let now = snapshot_counts(mode);
                    cell.snapshots = [now[0] - counted[0], now[1] - counted[1]];
                    let peak = sampler.map_or(0, RssSampler::stop);
                    if Some(&n) == clients.last() {
                        match peaks.iter_mut().find(|(m, _)| *m == mode) {
                            Some((_, p)) => *p = (*p).max(peak),
                            None => peaks.push((mode, peak)),
                        }
                        if mode == Mode::Snapback {
                            load_peak_kib = load_peak_kib.max(peak);
                        }
                    }
                    eprintln!(
                        "  round {round}: {} at {n} clients: {:.0} writes/s, webhook RSS peak {:.1} MiB",
                        mode.label(),
                        cell.rate(),
                        peak as f64 / 1024.0
                    );
                    cells[i].push(cell);
                }
            }
            for (i, mode) in MODES.iter().enumerate() {
                summaries.push(Summary::new(*mode, n, &cells[i]));
            }
        }
        self.print_admission(&summaries, secs, rounds);
        if env("BENCH_ADMISSION_ONLY").is_some() {
            return;
        }

        // Rollback speed: snapback (parallel), snapback one object at a time,
        // and kubectl apply -f of the prior manifests.
        self.register(Mode::Snapback, &ports);
        let (_seq, _, seq_api, _) = self.serve(
            "sequential",
            &["--role", "snapshotter", "--rollback-parallelism", "1"],
        );
        let sizes: &[usize] = if self.smoke { &[12] } else { &[100, 1000] };
        let mut rows = Vec::new();
        for &size in sizes {
            rows.push(rt.block_on(self.rollbacks(&client, size, sb_api, seq_api)));
        }
        self.print_rollbacks(&rows);

        let idle_after = rss_kib(sb.0.id(), "VmRSS:");
        let hwm = rss_kib(sb.0.id(), "VmHWM:");
        println!("## Memory (resident set of the snapback process)\n");
        println!("| when | RSS |");
        println!("|---|---|");
        println!(
            "| idle, after start | {:.1} MiB |",
            idle_kib as f64 / 1024.0
        );
        println!(
            "| peak under the {}-client load (sampled every 100 ms) | {:.1} MiB |",
            clients.last().unwrap(),
            load_peak_kib as f64 / 1024.0
        );
        for (mode, peak) in &peaks {
            if !matches!(mode, Mode::Snapback | Mode::NoWebhook) {
                println!(
                    "| for comparison, {} under the same load | {:.1} MiB |",
                    mode.label(),
                    *peak as f64 / 1024.0
                );
            }
        }
        println!(
            "| idle, after all benchmarks | {:.1} MiB |",
            idle_after as f64 / 1024.0
        );
        println!(
            "| high-water mark over the whole run (VmHWM, includes rollbacks) | {:.1} MiB |",
            hwm as f64 / 1024.0
        );
        println!();
        self.register(Mode::NoWebhook, &ports);
    }

    async fn client(&self, context: &str) -> kube::Client {
        snapback::kube_client::client(Some(&self.kubeconfig), Some(context))
            .await
            .unwrap()
    }

    /// `clients` workers, each on its own connection, writing for `secs`.
    async fn load(&self, mode: Mode, clients: usize, secs: f64, round: usize) -> Cell {
        let warmup = Duration::from_secs_f64((secs / 5.0).min(1.0));
        let start = Instant::now() + warmup;
        let end = start + Duration::from_secs_f64(secs);
        let mut tasks = tokio::task::JoinSet::new();
        for w in 0..clients {
            let client = self.client("admin").await;
            let prefix = format!("r{round}-{}-w{w}", mode as u8);
            tasks.spawn(async move { worker(client, prefix, start, end).await });
        }
        let mut lat = Vec::new();
        let mut ops = 0;
        while let Some(r) = tasks.join_next().await {
            let (l, n) = r.unwrap();
            lat.extend(l);
            ops += n;
        }
        Cell {
            lat,
            secs,
            ops,
            cpu: [0.0; 4],
            snapshots: [0.0; 2],
        }
    }

    fn print_admission(&self, rows: &[Summary], secs: f64, rounds: usize) {
        println!(
            "## Admission overhead through the API server ({rounds} interleaved rounds of {secs:.0} s per setup after a warm-up, each round in a rotated order; writes: create, update, delete of ConfigMaps and Deployments, in turn)\n"
        );
        println!(
            "Throughput: the median of the rounds (all rounds in brackets). Latency: percentiles over every write of all rounds.\n"
        );
        println!("| clients | setup | writes/s | p50 ms | p95 ms | p99 ms |");
        println!("|---|---|---|---|---|---|");
        for r in rows {
            let all: Vec<String> = r.rates.iter().map(|x| format!("{x:.0}")).collect();
            println!(
                "| {} | {} | {:.0} ({}) | {:.2} | {:.2} | {:.2} |",
                r.clients,
                r.mode.label(),
                r.rate(),
                all.join(", "),
                r.p50,
                r.p95,
                r.p99
            );
        }
        println!();
        println!(
            "Ratios of throughput are taken round by round (each setup against the no-op webhook of the same round); the median, and the range over the rounds.\n"
        );
        println!(
            "| clients | snapback / no webhook | snapback / no-op | p50 added over no-op (ms) | p99 snapback / no-op | before: batching off / no-op | queued ack / no-op | queued: p50 added over no-op (ms) | journaled ack / no-op | journaled: p50 added over no-op (ms) |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|");
        let ratio = |a: &Summary, b: &Summary| {
            let per_round: Vec<f64> = a.rates.iter().zip(&b.rates).map(|(x, y)| x / y).collect();
            let lo = per_round.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = per_round.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            if per_round.len() > 1 {
                format!("{:.2} ({lo:.2}–{hi:.2})", median(&per_round))
            } else {
                format!("{:.2}", median(&per_round))
            }
        };
        for group in rows.chunks(MODES.len()) {
            let (none, noop, per_change, sb, queued, journaled) = (
                &group[0], &group[1], &group[2], &group[3], &group[4], &group[5],
            );
            println!(
                "| {} | {} | {} | {:.2} | {:.2} | {} | {} | {:.2} | {} | {:.2} |",
                sb.clients,
                ratio(sb, none),
                ratio(sb, noop),
                sb.p50 - noop.p50,
                sb.p99 / noop.p99,
                ratio(per_change, noop),
                ratio(queued, noop),
                queued.p50 - noop.p50,
                ratio(journaled, noop),
                journaled.p50 - noop.p50,
            );
        }
        println!();
        println!(
            "CPU time per write (µs, over whole cells including warm-up; user + system from /proc): where each setup's cost lands.\n"
        );
        println!(
            "| clients | setup | kube-apiserver | etcd | webhook process | load generator | total | snapshots per snapshot API write |"
        );
        println!("|---|---|---|---|---|---|---|---|");
        for r in rows {
            let [api, etcd, hook, load] = r.cpu_us;
            println!(
                "| {} | {} | {api:.0} | {etcd:.0} | {} | {load:.0} | {:.0} | {} |",
                r.clients,
                r.mode.label(),
                if r.mode == Mode::NoWebhook {
                    "–".to_string()
                } else {
                    format!("{hook:.0}")
                },
                api + etcd + hook + load,
                r.per_write.map_or("–".to_string(), |p| format!("{p:.2}"))
            );
        }
        println!();
    }

    /// One action of `size` changes (a third each created, updated,
    /// deleted), restored three ways from the same state.
    async fn rollbacks(
        &self,
        client: &kube::Client,
        size: usize,
        api: u16,
        seq_api: u16,
    ) -> RollbackRow {
        let ns = format!("bench-rollback-{size}-{:04x}", rand::random::<u16>());
        ensure_namespace(client, &ns).await;
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
        let prior: Vec<Value> = (0..size)
            .filter(|i| i % 3 != 0)
            .map(|i| configmap(&ns, i, "prior"))
            .collect();
        for_each(&prior, |o| {
            let cms = cms.clone();
            async move {
                cms.create(&PostParams::default(), &serde_json::from_value(o).unwrap())
                    .await
                    .unwrap();
            }
        })
        .await;
        let http = api_client();
        let token = self.token("admin");

        // 1. snapback, parallel. A rollback asked for within 3 s of the
        // action's last deletion first waits for the garbage collector
        // (docs/API.md): the timed rollbacks are asked for after that.
        let id = self.act(&http, &token, client, &ns, size, api, "a").await;
        tokio::time::sleep(GC_SETTLE).await;
        let t = Instant::now();
        rollback(&http, &token, api, &id, size).await;
        let parallel = t.elapsed();
        self.check_prior(&cms, size).await;

        // 2. snapback, one object at a time (a second snapshotter).
        let id = self.act(&http, &token, client, &ns, size, api, "b").await;
        tokio::time::sleep(GC_SETTLE).await;
        let t = Instant::now();
        rollback(&http, &token, seq_api, &id, size).await;
        let sequential = t.elapsed();
        self.check_prior(&cms, size).await;

        // 3. What a user without snapback has: the prior manifests applied
        // with kubectl, and the created objects deleted with kubectl.
        self.act(&http, &token, client, &ns, size, api, "c").await;
        let manifests = self.work.join(format!("prior-{size}.json"));
        std::fs::write(
            &manifests,
            serde_json::to_vec(&json!({"apiVersion": "v1", "kind": "List", "items": prior}))
                .unwrap(),
        )
        .unwrap();
        let created: Vec<String> = (0..size)
            .filter(|i| i % 3 == 0)
            .map(|i| format!("configmap/cm-{i}"))
            .collect();
        let t = Instant::now();
        self.kubectl(&["apply", "-f", manifests.to_str().unwrap()], None);
        let mut args = vec!["-n", ns.as_str(), "delete"];
        args.extend(created.iter().map(String::as_str));
        self.kubectl(&args, None);
        let kubectl = t.elapsed();
        self.check_prior(&cms, size).await;

        let nsapi: Api<Namespace> = Api::all(client.clone());
        let _ = nsapi.delete(&ns, &DeleteParams::default()).await;
        RollbackRow {
            size,
            parallel,
            sequential,
            kubectl,
        }
    }

    fn token(&self, user: &str) -> String {
        let tokens = self.kubeconfig.with_file_name("tokens.csv");
        let text = std::fs::read_to_string(tokens).unwrap();
        text.lines()
            .find(|l| l.split(',').nth(1) == Some(user))
            .and_then(|l| l.split(',').next())
            .unwrap()
            .to_string()
    }

    /// Opens an action, makes its changes, completes it; returns its id.
    #[allow(clippy::too_many_arguments)]
    async fn act(
        &self,
        http: &reqwest::Client,
        token: &str,
        client: &kube::Client,
        ns: &str,
        size: usize,
        api: u16,
        tag: &str,
    ) -> String {
        let id = format!(
            "bench-{size}-{tag}-{:06x}",
            rand::random::<u32>() & 0xffffff
        );
        let url = format!("https://127.0.0.1:{api}/api/v1/actions");
        let r = http
            .post(&url)
            .bearer_auth(token)
            .json(&json!({"id": id}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
        let indices: Vec<usize> = (0..size).collect();
        let ns = ns.to_string();
        for_each(&indices, |i| {
            let (cms, ns) = (cms.clone(), ns.clone());
            async move {
                let name = format!("cm-{i}");
                match i % 3 {
                    0 => {
                        let obj = configmap(&ns, i, "created");
                        cms.create(
                            &PostParams::default(),
                            &serde_json::from_value(obj).unwrap(),
                        )
                        .await
                        .unwrap();
                    }
                    1 => {
                        let patch = json!({"data": {"value": format!("updated {tag}")}});
                        cms.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                            .await
                            .unwrap();
                    }
                    _ => {
                        cms.delete(&name, &DeleteParams::default()).await.unwrap();
                    }
                }
            }
        })
        .await;
        let r = http
            .post(format!("{url}/{id}/complete"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
        id
    }

    /// The namespace holds exactly the prior objects, with their prior data.
    async fn check_prior(&self, cms: &Api<ConfigMap>, size: usize) {
        let list = cms.list(&ListParams::default()).await.unwrap();
        let mut names: Vec<String> = Vec::new();
        for cm in &list.items {
            let name = cm.metadata.name.clone().unwrap_or_default();
            if name == "kube-root-ca.crt" {
                continue;
            }
            let value = cm.data.as_ref().and_then(|d| d.get("value")).cloned();
            assert_eq!(value.as_deref(), Some("prior"), "{name}");
            names.push(name);
        }
        assert_eq!(names.len(), size - size.div_ceil(3), "{names:?}");
    }

    fn print_rollbacks(&self, rows: &[RollbackRow]) {
        println!(
            "## Rollback speed (one action: a third of the objects created, a third updated, a third deleted; ConfigMaps)\n"
        );
        println!(
            "| objects | snapback (parallelism 8) | snapback sequential (parallelism 1) | kubectl apply -f prior + kubectl delete created | snapback vs kubectl | snapback vs sequential |"
        );
        println!("|---|---|---|---|---|---|");
        for r in rows {
            let ops = |d: Duration| r.size as f64 / d.as_secs_f64();
            println!(
                "| {} | {:.2} s ({:.0} objects/s) | {:.2} s ({:.0} objects/s) | {:.2} s ({:.0} objects/s) | {:.1}× faster | {:.1}× faster |",
                r.size,
                r.parallel.as_secs_f64(),
                ops(r.parallel),
                r.sequential.as_secs_f64(),
                ops(r.sequential),
                r.kubectl.as_secs_f64(),
                ops(r.kubectl),
                r.kubectl.as_secs_f64() / r.parallel.as_secs_f64(),
                r.sequential.as_secs_f64() / r.parallel.as_secs_f64(),
            );
        }
        println!();
    }
}

struct Ports {
    noop: u16,
    per_change: u16,
    snapback: u16,
    queued: u16,
    journaled: u16,
}

struct RollbackRow {
    size: usize,
    parallel: Duration,
    sequential: Duration,
    kubectl: Duration,
}

fn configmap(ns: &str, i: usize, value: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": format!("cm-{i}"), "namespace": ns, "labels": {"app": "bench"}},
           "data": {"value": value, "settings": "log-level=info\nworkers=4\ncache=on\n"}})
}

/// Runs `f` over the items, eight at a time.
async fn for_each<T: Clone, F, Fut>(items: &[T], f: F)
where
    F: Fn(T) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    use futures::StreamExt;
    futures::stream::iter(items.iter().cloned().map(f))
        .buffer_unordered(8)
        .collect::<Vec<()>>()
        .await;
}

fn api_client() -> reqwest::Client {
    reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(600))
        .build()
        .unwrap()
}

/// How long after an action's last deletion a rollback waits for the
/// garbage collector (`GC_SETTLE` in src/restore/rollback.rs).
const GC_SETTLE: Duration = Duration::from_secs(3);

async fn rollback(http: &reqwest::Client, token: &str, port: u16, id: &str, size: usize) {
    let r = http
        .post(format!(
            "https://127.0.0.1:{port}/api/v1/actions/{id}/rollback"
        ))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let report: Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{report}");
    let restored = report["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["outcome"] == "restored")
        .count();
    assert_eq!(restored, size, "{}", report["counts"]);
}

async fn ensure_namespace(client: &kube::Client, name: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    match api.create(&PostParams::default(), &ns).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => panic!("namespace {name}: {e}"),
    }
}

/// One client's loop: ConfigMap create, update, delete, then the same for a
/// Deployment, until `end`; latencies recorded from `start` on.
/// Writes in turn until `end`; the latencies of those started inside
/// [start, end), and how many writes were made in all.
async fn worker(
    client: kube::Client,
    prefix: String,
    start: Instant,
    end: Instant,
) -> (Vec<Duration>, u64) {
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "bench-load");
    let deps: Api<Deployment> = Api::namespaced(client, "bench-load");
    let pp = PostParams::default();
    let mut lat = Vec::new();
    let mut ops = 0u64;
    let mut i = 0u64;
    loop {
        let name = format!("{prefix}-{i}");
        i += 1;
        let cm: ConfigMap = serde_json::from_value(configmap("bench-load", 0, "x"))
            .map(|mut c: ConfigMap| {
                c.metadata.name = Some(name.clone());
                c
            })
            .unwrap();
        let dep: Deployment = serde_json::from_value(deployment(&name)).unwrap();
        let patch = json!({"data": {"value": "y"}});
        let dpatch = json!({"spec": {"template": {"metadata": {"annotations": {"rev": "2"}}}}});
        let dp = DeleteParams::default();
        let mp = PatchParams::default();
        macro_rules! timed {
            ($write:expr) => {{
                let t = Instant::now();
                $write.await.map(drop).unwrap();
                ops += 1;
                if t >= start && t < end {
                    lat.push(t.elapsed());
                }
            }};
        }
        timed!(cms.create(&pp, &cm));
        timed!(cms.patch(&name, &mp, &Patch::Merge(&patch)));
        timed!(cms.delete(&name, &dp));
        timed!(deps.create(&pp, &dep));
        timed!(deps.patch(&name, &mp, &Patch::Merge(&dpatch)));
        timed!(deps.delete(&name, &dp));
        if Instant::now() >= end {
            return (lat, ops);
        }
    }
}

fn deployment(name: &str) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment",
           "metadata": {"name": name, "labels": {"app": "bench"}},
           "spec": {"replicas": 2, "selector": {"matchLabels": {"app": name}},
                    "template": {"metadata": {"labels": {"app": name}},
                                 "spec": {"containers": [{"name": "web", "image": "nginx:1.25",
                                     "ports": [{"containerPort": 80}],
                                     "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}}}})
}

fn http_ok(port: u16, path: &str) -> bool {
    http_get(port, path).is_some()
}

/// The body of a plain-HTTP GET that answered 200.
fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    if !(out.starts_with("HTTP/1.1 200") || out.starts_with("HTTP/1.0 200")) {
        return None;
    }
    out.split_once("\r\n\r\n").map(|(_, body)| body.to_string())
}

/// The sum of every series of a metric in Prometheus text.
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Samples a process's resident set in the background; `stop` gives the peak.
struct RssSampler {
    stop: Arc<std::sync::atomic::AtomicBool>,
    handle: std::thread::JoinHandle<u64>,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut peak = 0;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(rss_kib(pid, "VmRSS:"));
                std::thread::sleep(Duration::from_millis(100));
            }
            peak
        });
        RssSampler { stop, handle }
    }

    fn stop(self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.handle.join().unwrap()
    }
}

/// The floor any webhook pays: axum + rustls (the same server stack and TLS
/// configuration as snapback), decoding the review and answering "allowed".
pub fn noop_webhook(cert: &Path, key: &Path, port: u16) {
    use axum::Router;
    use axum::routing::post;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let tls = snapback::tls::ServingTls::load(cert, key, None).unwrap();
        let answer = |body: axum::body::Bytes| async move {
            let review: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let uid = review["request"]["uid"].clone();
            axum::Json(json!({
                "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                "response": {"uid": uid, "allowed": true}
            }))
        };
        let app = Router::new()
            .route("/mutate", post(answer))
            .route("/validate", post(answer));
        axum_server::bind_rustls(
            std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            tls.config.clone(),
        )
        .serve(app.into_make_service())
        .await
        .unwrap();
    });
}
