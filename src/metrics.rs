//! Every instrument of SPEC §6, registered on one explicit registry. Label
//! values are bounded: operations, outcomes, reasons, triggers; never object
//! or user names.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// labels: webhook (mutate|validate), operation, outcome
    pub admission_requests: IntCounterVec,
    /// labels: webhook
    pub admission_duration: HistogramVec,
    /// labels: operation
    pub snapshots_stored: IntCounterVec,
    /// labels: operation
    pub snapshot_bytes: IntCounterVec,
    /// labels: reason
    pub snapshot_failures: IntCounterVec,
    /// labels: reason (why a change was not captured)
    pub captures_skipped: IntCounterVec,
    /// Changes admitted without a snapshot under --capture-failure=allow.
    pub uncaptured_admitted: IntCounter,
    /// labels: trigger, outcome
    pub rollbacks: IntCounterVec,
    pub rollback_duration: Histogram,
    /// labels: operation, outcome
    pub objects_restored: IntCounterVec,
    pub rollback_conflicts: IntCounter,
    pub open_actions: IntGauge,
    /// Snapshots queued and not yet written (--capture-ack=queued or journaled).
    pub snapshot_writes_queued: IntGauge,
    /// labels: layout (single|batch): API objects created to store captured
    /// snapshots; snapshots_stored / this = snapshots per API write.
    pub snapshot_api_writes: IntCounterVec,
    pub snapshots_pruned: IntCounter,
    pub actions_pruned: IntCounter,
    /// Snapshots folded from their own ConfigMaps into batches.
    pub snapshots_compacted: IntCounter,
    /// labels: outcome (healthy, failed, rolled-back, rollback-failed)
    pub guards: IntCounterVec,
    /// labels: outcome (rolled-back, duplicate, ignored, failed)
    pub alerts: IntCounterVec,
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help).namespace("snapback"), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    registry
        .register(Box::new(c.clone()))
        .unwrap_or_else(|e| panic!("registering {name}: {e}"));
    c
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::with_opts(Opts::new(name, help).namespace("snapback"))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    registry
        .register(Box::new(c.clone()))
        .unwrap_or_else(|e| panic!("registering {name}: {e}"));
    c
}

/// Admission latencies: 250µs to 10s.
const ADMISSION_BUCKETS: &[f64] = &[
    0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Rollbacks: 10ms to 10 minutes.
const ROLLBACK_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

impl Metrics {
    /// Register every instrument on `registry`. Names are static, so a
    /// failure here is a programming error caught by the unit test below.
    pub fn register(registry: &Registry) -> Self {
        let admission_duration = HistogramVec::new(
            HistogramOpts::new(
                "admission_duration_seconds",
                "Time to answer an AdmissionReview, by webhook",
            )
            .namespace("snapback")
            .buckets(ADMISSION_BUCKETS.to_vec()),
            &["webhook"],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        registry
            .register(Box::new(admission_duration.clone()))
            .unwrap_or_else(|e| panic!("{e}"));
        let rollback_duration = Histogram::with_opts(
            HistogramOpts::new("rollback_duration_seconds", "Time a rollback took")
                .namespace("snapback")
                .buckets(ROLLBACK_BUCKETS.to_vec()),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        registry
            .register(Box::new(rollback_duration.clone()))
            .unwrap_or_else(|e| panic!("{e}"));
        let open_actions = IntGauge::with_opts(
            Opts::new("open_actions", "Actions currently open").namespace("snapback"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        registry
            .register(Box::new(open_actions.clone()))
            .unwrap_or_else(|e| panic!("{e}"));
        let snapshot_writes_queued = IntGauge::with_opts(
            Opts::new(
                "snapshot_writes_queued",
                "Snapshots of admitted changes queued and not yet written (--capture-ack=queued or journaled)",
            )
            .namespace("snapback"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        registry
            .register(Box::new(snapshot_writes_queued.clone()))
            .unwrap_or_else(|e| panic!("{e}"));
        let m = Metrics {
            admission_requests: counter_vec(
                registry,
                "admission_requests_total",
                "AdmissionReviews answered, by webhook, operation and outcome",
                &["webhook", "operation", "outcome"],
            ),
            admission_duration,
            snapshots_stored: counter_vec(
                registry,
                "snapshots_stored_total",
                "Snapshots written, by operation",
                &["operation"],
            ),
            snapshot_bytes: counter_vec(
                registry,
                "snapshot_bytes_total",
                "Compressed payload bytes written, by operation",
                &["operation"],
            ),
            snapshot_failures: counter_vec(
                registry,
                "snapshot_failures_total",
                "Snapshots that could not be stored, by reason",
                &["reason"],
            ),
            captures_skipped: counter_vec(
                registry,
                "captures_skipped_total",
                "Changes deliberately not captured, by reason",
                &["reason"],
            ),
            uncaptured_admitted: counter(
                registry,
                "uncaptured_changes_admitted_total",
                "Changes admitted without a snapshot (--capture-failure=allow)",
            ),
            rollbacks: counter_vec(
                registry,
                "rollbacks_total",
                "Rollbacks finished, by trigger and outcome",
                &["trigger", "outcome"],
            ),
            rollback_duration,
            objects_restored: counter_vec(
                registry,
                "objects_restored_total",
                "Objects handled by rollbacks, by operation and outcome",
                &["operation", "outcome"],
            ),
            rollback_conflicts: counter(
                registry,
                "rollback_conflicts_total",
                "Rollbacks refused because objects changed after the action",
            ),
            open_actions,
            snapshot_writes_queued,
            snapshot_api_writes: counter_vec(
                registry,
                "snapshot_api_writes_total",
                "API objects created to store captured snapshots, by layout: single (one change, SPEC §3) or batch (changes of one action written together)",
                &["layout"],
            ),
            snapshots_pruned: counter(
                registry,
                "snapshots_pruned_total",
                "Snapshots deleted by retention",
            ),
            actions_pruned: counter(
                registry,
                "actions_pruned_total",
                "Actions deleted by retention",
            ),
            snapshots_compacted: counter(
                registry,
                "snapshots_compacted_total",
                "Snapshots of finished actions folded into batch ConfigMaps",
            ),
            guards: counter_vec(
                registry,
                "guard_outcomes_total",
                "Guard outcomes of guarded actions",
                &["outcome"],
            ),
            alerts: counter_vec(
                registry,
                "alerts_total",
                "Alertmanager alerts received, by what was done",
                &["outcome"],
            ),
            registry: registry.clone(),
        };
        m.show_at_zero();
        m
    }

    /// Series of a vector exist only once a label value is used; the main
    /// ones are created at 0, so `/metrics` shows every instrument of SPEC §6
    /// (and a rate over a counter that has not moved yet) from the start.
    fn show_at_zero(&self) {
        const OPERATIONS: [&str; 3] = ["create", "update", "delete"];
        for op in OPERATIONS {
            for outcome in ["captured", "skipped", "denied"] {
                self.admission_requests
                    .with_label_values(&["validate", op, outcome]);
            }
            for outcome in ["allowed", "patched", "denied"] {
                self.admission_requests
                    .with_label_values(&["mutate", op, outcome]);
            }
            self.snapshots_stored.with_label_values(&[op]);
            self.snapshot_bytes.with_label_values(&[op]);
        }
        for webhook in ["mutate", "validate"] {
            self.admission_duration.with_label_values(&[webhook]);
        }
        for reason in [
            "forbidden",
            "too_large",
            "throttled",
            "server_error",
            "api_error",
            "unreachable",
            "timeout",
            "journal",
        ] {
            self.snapshot_failures.with_label_values(&[reason]);
        }
        for (trigger, outcome) in [
            ("request", "rolled-back"),
            ("request", "rollback-failed"),
            ("cancel", "cancelled"),
            ("cancel", "rollback-failed"),
        ] {
            self.rollbacks.with_label_values(&[trigger, outcome]);
        }
        use crate::restore::plan::{Outcome, RestoreOp};
        for op in [RestoreOp::Delete, RestoreOp::Replace, RestoreOp::Create] {
            // Planned is a dry run's; dry runs are not counted.
            for outcome in Outcome::ALL.iter().filter(|o| **o != Outcome::Planned) {
                self.objects_restored
                    .with_label_values(&[op.as_str(), outcome.as_str()]);
            }
        }
        for layout in ["single", "batch"] {
            self.snapshot_api_writes.with_label_values(&[layout]);
        }
        for outcome in ["healthy", "failed"] {
            self.guards.with_label_values(&[outcome]);
        }
        for outcome in [
            "resolved",
            "no-action",
            "duplicate",
            "error",
            "rolled-back",
            "rollback-failed",
        ] {
            self.alerts.with_label_values(&[outcome]);
        }
    }

    /// A fresh registry with every instrument, for tests and benchmarks.
    pub fn standalone() -> Self {
        Self::register(&Registry::new())
    }

    /// The Prometheus text exposition of the registry.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let families = self.registry.gather();
        if let Err(e) = TextEncoder::new().encode(&families, &mut buf) {
            tracing::error!(error = %e, "encoding metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_and_renders_with_prefix() {
        let m = Metrics::standalone();
        m.snapshots_stored.with_label_values(&["update"]).inc();
        m.admission_duration
            .with_label_values(&["validate"])
            .observe(0.002);
        let text = m.render();
        assert!(text.contains("snapback_snapshots_stored_total{operation=\"update\"} 1"));
        assert!(text.contains("snapback_admission_duration_seconds_bucket"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.starts_with("snapback_"), "{line}");
        }
    }

    #[test]
    fn every_instrument_of_spec_6_shows_before_it_is_used() {
        let text = Metrics::standalone().render();
        for name in [
            "snapback_admission_requests_total{",
            "snapback_admission_duration_seconds_bucket{",
            "snapback_snapshots_stored_total{",
            "snapback_snapshot_bytes_total{",
            "snapback_snapshot_failures_total{",
            "snapback_rollbacks_total{",
            "snapback_rollback_duration_seconds_bucket{",
            "snapback_objects_restored_total{",
            "snapback_rollback_conflicts_total ",
            "snapback_open_actions ",
            "snapback_snapshots_pruned_total ",
            "snapback_guard_outcomes_total{",
            "snapback_alerts_total{",
        ] {
            assert!(
                text.lines().any(|l| l.starts_with(name)),
                "{name} missing:\n{text}"
            );
        }
        assert!(text.contains("snapback_snapshot_failures_total{reason=\"forbidden\"} 0"));
    }
}
