//! `snapback webhook-config`: the admission registrations for a snapback
//! reachable at a URL (local setups; in-cluster ones live in `manifests/`).

use base64::Engine;
use serde_json::{Value, json};

use crate::config::WebhookConfigArgs;

/// Rules: every resource of every group, plus the scale subresources
/// (`*` alone matches no subresource).
pub fn rules(scope: &str) -> Value {
    json!([{
        "apiGroups": ["*"],
        "apiVersions": ["*"],
        "operations": ["CREATE", "UPDATE", "DELETE"],
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
    let webhook = |name: &str, path: &str| {
        json!({
            "name": name,
            "admissionReviewVersions": ["v1"],
            "clientConfig": {"url": format!("{base}{path}"), "caBundle": ca},
            "rules": rules(&args.scope),
            "failurePolicy": args.failure_policy,
            "sideEffects": "NoneOnDryRun",
            "timeoutSeconds": args.timeout_seconds,
            "namespaceSelector": selector,
            "matchPolicy": "Equivalent",
        })
    };
    let mut mutate_hook = webhook("mutate.snapback.io", "/mutate");
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
        "webhooks": [webhook("validate.snapback.io", "/validate")],
    });
    let mut out = String::new();
    for doc in [mutating, validating] {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&doc).map_err(|e| e.to_string())?);
    }
    Ok(out)
}
