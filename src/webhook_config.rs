//! `snapback webhook-config`: the admission registrations for a snapback
//! reachable at a URL (local setups; in-cluster ones live in `manifests/`).

use base64::Engine;
use serde_json::{Value, json};

use crate::config::WebhookConfigArgs;

/// Rules: every resource of every group, plus the scale subresources
/// (`*` alone matches no subresource). The mutating webhook only strips the
/// action annotation from an incoming object: it has nothing to do on a
/// DELETE (as in `manifests/webhooks.yaml`).
pub fn rules(scope: &str, operations: &[&str]) -> Value {
    json!([{
        "apiGroups": ["*"],
        "apiVersions": ["*"],
        "operations": operations,
        "resources": ["*", "*/scale"],
        "scope": scope
    }])
}

pub fn render(args: &WebhookConfigArgs, ca_pem: &[u8]) -> Result<String, String> {
    let base = args.url.trim_end_matches('/');
    if !base.starts_with("https://") {
        return Err(format!("--url must be https:// (got {base:?})"));
    }
    if !matches!(args.failure_policy.as_str(), "Fail" | "Ignore") {
        return Err(format!(
            "--failure-policy must be Fail or Ignore (got {:?})",
            args.failure_policy
        ));
    }
    if !matches!(args.scope.as_str(), "*" | "Namespaced" | "Cluster") {
        return Err(format!(
            "--scope must be *, Namespaced or Cluster (got {:?})",
            args.scope
        ));
    }
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let mut expressions = vec![json!({
        "key": "kubernetes.io/metadata.name",
        "operator": "NotIn",
        "values": args.exclude_namespaces,
    })];
    let mut match_labels = json!({});
    if let Some(label) = &args.namespace_label {
        let (k, v) = label
            .split_once('=')
            .ok_or_else(|| format!("--namespace-label must be key=value (got {label:?})"))?;
        match_labels = json!({ k: v });
    }
    // kubernetes.io/metadata.name is set by the API server from 1.21 on; on
    // older servers the expression is simply never matched, so also exclude
    // by the label that `manifests/` puts on snapback's own namespace.
    expressions.push(json!({"key": args.exclude_label, "operator": "DoesNotExist"}));
    let selector = json!({"matchExpressions": expressions, "matchLabels": match_labels});
    let webhook = |name: &str, path: &str, operations: &[&str]| {
        json!({
            "name": name,
            "admissionReviewVersions": ["v1"],
            "clientConfig": {"url": format!("{base}{path}"), "caBundle": ca},
            "rules": rules(&args.scope, operations),
            "failurePolicy": args.failure_policy,
            "sideEffects": "NoneOnDryRun",
            "timeoutSeconds": args.timeout_seconds,
            "namespaceSelector": selector,
            "matchPolicy": "Equivalent",
        })
    };
    let mut mutate_hook = webhook("mutate.snapback.io", "/mutate", &["CREATE", "UPDATE"]);
    mutate_hook["reinvocationPolicy"] = json!("Never");
    let mutating = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": args.name, "labels": {"app.kubernetes.io/managed-by": "snapback"}},
        "webhooks": [mutate_hook],
    });
    let validating = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": args.name, "labels": {"app.kubernetes.io/managed-by": "snapback"}},
        "webhooks": [webhook(
            "validate.snapback.io",
            "/validate",
            &["CREATE", "UPDATE", "DELETE"],
        )],
    });
    let mut out = String::new();
    for doc in [mutating, validating] {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&doc).map_err(|e| e.to_string())?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: WebhookConfigArgs,
    }

    #[test]
    fn the_mutating_webhook_is_not_called_for_deletes() {
        let cli = Cli::parse_from(["x", "--url", "https://127.0.0.1:8443", "--ca", "ca.crt"]);
        let yaml = render(&cli.args, b"-----BEGIN CERTIFICATE-----").unwrap();
        let docs: Vec<Value> = yaml
            .split("---\n")
            .filter(|d| !d.trim().is_empty())
            .map(|d| serde_yaml::from_str(d).unwrap())
            .collect();
        let operations = |doc: &Value| doc["webhooks"][0]["rules"][0]["operations"].clone();
        assert_eq!(docs[0]["kind"], "MutatingWebhookConfiguration");
        assert_eq!(operations(&docs[0]), json!(["CREATE", "UPDATE"]));
        assert_eq!(docs[1]["kind"], "ValidatingWebhookConfiguration");
        assert_eq!(operations(&docs[1]), json!(["CREATE", "UPDATE", "DELETE"]));
        assert_eq!(
            docs[1]["webhooks"][0]["clientConfig"]["url"],
            "https://127.0.0.1:8443/validate"
        );
    }
}
