//! Health of an object, pure: what `kubectl rollout status` means for
//! Deployments, StatefulSets and DaemonSets, completion for Jobs, and the
//! `Ready` condition for anything else that has one.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Healthy,
    /// Not (yet) healthy: why.
    Progressing(String),
    /// Will not become healthy (a failed Job, a Deployment past its deadline).
    Failed(String),
}

fn int(v: &Value, path: &[&str]) -> i64 {
    let mut cur = v;
    for p in path {
        cur = match cur.get(p) {
            Some(c) => c,
            None => return 0,
        };
    }
    cur.as_i64().unwrap_or(0)
}

fn condition<'a>(v: &'a Value, kind: &str) -> Option<&'a Value> {
    v.get("status")?
        .get("conditions")?
        .as_array()?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(kind))
}

fn observed(v: &Value) -> Result<(), Health> {
    let generation = int(v, &["metadata", "generation"]);
    let observed = int(v, &["status", "observedGeneration"]);
    if observed < generation {
        return Err(Health::Progressing(format!(
            "observedGeneration {observed} < generation {generation}"
        )));
    }
    Ok(())
}

pub fn health(group: &str, resource: &str, v: &Value) -> Health {
    match (group, resource) {
        ("apps", "deployments") => deployment(v),
        ("apps", "statefulsets") => statefulset(v),
        ("apps", "daemonsets") => daemonset(v),
        ("batch", "jobs") => job(v),
        _ => match condition(v, "Ready") {
            None => Health::Healthy,
            Some(c) if c.get("status").and_then(Value::as_str) == Some("True") => Health::Healthy,
            Some(c) => Health::Progressing(format!(
                "condition Ready is {} ({})",
                c.get("status").and_then(Value::as_str).unwrap_or("Unknown"),
                c.get("reason")
                    .and_then(Value::as_str)
                    .unwrap_or("no reason")
            )),
        },
    }
}

fn deployment(v: &Value) -> Health {
    if let Err(h) = observed(v) {
        return h;
    }
    if let Some(c) = condition(v, "Progressing")
        && c.get("reason").and_then(Value::as_str) == Some("ProgressDeadlineExceeded")
    {
        return Health::Failed("progress deadline exceeded".into());
    }
    let want = v
        .get("spec")
        .and_then(|s| s.get("replicas"))
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let updated = int(v, &["status", "updatedReplicas"]);
    let total = int(v, &["status", "replicas"]);
    let available = int(v, &["status", "availableReplicas"]);
    if updated < want {
        return Health::Progressing(format!("{updated} of {want} replicas updated"));
    }
    if total > updated {
        return Health::Progressing(format!(
            "{} old replicas pending termination",
            total - updated
        ));
    }
    if available < updated {
        return Health::Progressing(format!(
            "{available} of {updated} updated replicas available"
        ));
    }
    Health::Healthy
}

fn statefulset(v: &Value) -> Health {
    if let Err(h) = observed(v) {
        return h;
    }
    let want = v
        .get("spec")
        .and_then(|s| s.get("replicas"))
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let ready = int(v, &["status", "readyReplicas"]);
    if ready < want {
        return Health::Progressing(format!("{ready} of {want} replicas ready"));
    }
    let rolling = v
        .pointer("/spec/updateStrategy/type")
        .and_then(Value::as_str)
        .is_none_or(|t| t == "RollingUpdate");
    let current = v.pointer("/status/currentRevision").and_then(Value::as_str);
    let update = v.pointer("/status/updateRevision").and_then(Value::as_str);
    if rolling && current != update {
        return Health::Progressing(format!(
            "revision {} not yet rolled out",
            update.unwrap_or("?")
        ));
    }
    Health::Healthy
}

fn daemonset(v: &Value) -> Health {
    if let Err(h) = observed(v) {
        return h;
    }
    let desired = int(v, &["status", "desiredNumberScheduled"]);
    let updated = int(v, &["status", "updatedNumberScheduled"]);
    let available = int(v, &["status", "numberAvailable"]);
    if updated < desired {
        return Health::Progressing(format!("{updated} of {desired} pods updated"));
    }
    if available < desired {
        return Health::Progressing(format!("{available} of {desired} updated pods available"));
    }
    Health::Healthy
}

fn job(v: &Value) -> Health {
    let is = |kind| {
        condition(v, kind)
            .and_then(|c| c.get("status"))
            .and_then(Value::as_str)
            == Some("True")
    };
    if is("Complete") {
        Health::Healthy
    } else if is("Failed") {
        Health::Failed(
            condition(v, "Failed")
                .and_then(|c| c.get("reason"))
                .and_then(Value::as_str)
                .map(|r| format!("job failed ({r})"))
                .unwrap_or_else(|| "job failed".into()),
        )
    } else {
        Health::Progressing("job not complete".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;
    use serde_json::json;

    fn dep(
        generation: i64,
        obs: i64,
        want: i64,
        total: i64,
        updated: i64,
        available: i64,
    ) -> Value {
        json!({"metadata": {"generation": generation}, "spec": {"replicas": want},
               "status": {"observedGeneration": obs, "replicas": total, "updatedReplicas": updated, "availableReplicas": available}})
    }

    #[rstest]
    #[case(dep(2, 2, 3, 3, 3, 3), true)]
    #[case(dep(2, 1, 3, 3, 3, 3), false)]
    #[case(dep(2, 2, 3, 3, 2, 3), false)]
    #[case(dep(2, 2, 3, 4, 3, 3), false)]
    #[case(dep(2, 2, 3, 3, 3, 2), false)]
    #[case(dep(1, 1, 0, 0, 0, 0), true)]
    fn deployments_like_rollout_status(#[case] v: Value, #[case] healthy: bool) {
        assert_eq!(
            health("apps", "deployments", &v) == Health::Healthy,
            healthy,
            "{v}"
        );
    }

    #[test]
    fn deadline_exceeded_is_a_failure() {
        let mut v = dep(2, 2, 1, 1, 0, 0);
        v["status"]["conditions"] = json!([{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}]);
        assert!(matches!(
            health("apps", "deployments", &v),
            Health::Failed(_)
        ));
    }

    #[test]
    fn statefulsets_daemonsets_jobs_and_ready_conditions() {
        let sts = json!({"metadata": {"generation": 1}, "spec": {"replicas": 2},
            "status": {"observedGeneration": 1, "readyReplicas": 2, "currentRevision": "a", "updateRevision": "a"}});
        assert_eq!(health("apps", "statefulsets", &sts), Health::Healthy);
        let mut rolling = sts.clone();
        rolling["status"]["updateRevision"] = json!("b");
        assert!(matches!(
            health("apps", "statefulsets", &rolling),
            Health::Progressing(_)
        ));
        let ds = json!({"metadata": {"generation": 1}, "status": {"observedGeneration": 1,
            "desiredNumberScheduled": 3, "updatedNumberScheduled": 3, "numberAvailable": 2}});
        assert!(matches!(
            health("apps", "daemonsets", &ds),
            Health::Progressing(_)
        ));
        let done = json!({"status": {"conditions": [{"type": "Complete", "status": "True"}]}});
        assert_eq!(health("batch", "jobs", &done), Health::Healthy);
        let failed = json!({"status": {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]}});
        assert!(
            matches!(health("batch", "jobs", &failed), Health::Failed(m) if m.contains("Backoff"))
        );
        let ready = json!({"status": {"conditions": [{"type": "Ready", "status": "False", "reason": "Waiting"}]}});
        assert!(
            matches!(health("example.com", "widgets", &ready), Health::Progressing(m) if m.contains("Waiting"))
        );
        assert_eq!(
            health("", "configmaps", &json!({"data": {}})),
            Health::Healthy
        );
    }
}
