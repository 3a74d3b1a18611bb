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

/// The `matchConditions` (Kubernetes 1.28+) that keep the API server from
/// calling snapback for requests it never captures with its default
/// `--exclude-resources` and `--exclude-users`: the review kinds (never
/// stored, so nothing to capture; a TokenReview or SubjectAccessReview that
/// waits on snapback would make every webhook-authenticated component of
/// the cluster, snapback's own rollback API included, fail with it),
/// Leases (node heartbeats: a node whose lease cannot be renewed is marked
/// NotReady), Events, Endpoints and EndpointSlices (Service traffic), and
/// requests by nodes (kubelets) and by the API server itself (its start-up
/// reconciliation of built-in RBAC and priority classes). CEL, as the API server evaluates it; each
/// must hold for snapback to be called. `manifests/components/match-conditions/`
/// carries the same list.
pub fn match_conditions() -> Value {
    json!([
        {
            "name": "not-a-review-or-lease",
            "expression": "!(request.resource.group in ['authentication.k8s.io', 'authorization.k8s.io', 'coordination.k8s.io', 'events.k8s.io', 'discovery.k8s.io'])"
        },
        {
            "name": "not-events-or-endpoints",
            "expression": "!(request.resource.group == '' && request.resource.resource in ['events', 'endpoints'])"
        },
        {
            "name": "not-a-node-or-the-apiserver",
            "expression": "!request.userInfo.username.startsWith('system:node:') && request.userInfo.username != 'system:apiserver'"
        }
    ])
}

pub fn render(args: &WebhookConfigArgs, ca_pem: &[u8]) -> Result<String, String> {
    check_ca(ca_pem).map_err(|e| format!("--ca {}: {e}", args.ca.display()))?;
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
    check_url(base)?;
    if !(1..=30).contains(&args.timeout_seconds) {
        return Err(format!(
            "--timeout-seconds must be between 1 and 30 (got {}): the API server refuses other values",
            args.timeout_seconds
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
        let mut hook = json!({
            "name": name,
            "admissionReviewVersions": ["v1"],
            "clientConfig": {"url": format!("{base}{path}"), "caBundle": ca},
            "rules": rules(&args.scope, operations),
            "failurePolicy": args.failure_policy,
            "sideEffects": "NoneOnDryRun",
            "timeoutSeconds": args.timeout_seconds,
            "namespaceSelector": selector,
            "matchPolicy": "Equivalent",
        });
        if args.match_conditions {
            hook["matchConditions"] = match_conditions();
        }
        hook
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

/// What the API server takes as a webhook URL (admissionregistration
/// validation): https, a host, no user information, query or fragment.
fn check_url(base: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("--url {base:?}: {why}"));
    let uri: http::Uri = match base.parse() {
        Ok(u) => u,
        Err(e) => return bad(&format!("not a URL ({e})")),
    };
    let Some(authority) = uri.authority() else {
        return bad("no host");
    };
    if authority.as_str().contains('@') {
        return bad("user information is not allowed");
    }
    if authority.host().is_empty() {
        return bad("no host");
    }
    if uri.query().is_some() || base.contains('#') {
        return bad("query parameters and fragments are not allowed");
    }
    Ok(())
}

/// The caBundle must be PEM certificates, and nothing else: a private key
/// put there by mistake would be published in a cluster-readable object,
/// and a bundle the API server cannot use makes every captured write fail.
fn check_ca(pem: &[u8]) -> Result<(), String> {
    let mut anchors = rustls::RootCertStore::empty();
    for item in rustls_pemfile::read_all(&mut &pem[..]) {
        match item.map_err(|e| format!("not PEM: {e}"))? {
            rustls_pemfile::Item::X509Certificate(cert) => anchors
                .add(cert)
                .map_err(|e| format!("not a usable certificate: {e}"))?,
            rustls_pemfile::Item::Pkcs1Key(_)
            | rustls_pemfile::Item::Pkcs8Key(_)
            | rustls_pemfile::Item::Sec1Key(_) => {
                return Err(
                    "is a private key, not the CA certificate (it would be published in the webhook configuration)"
                        .into(),
                );
            }
            _ => {}
        }
    }
    if anchors.is_empty() {
        return Err("holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into());
    }
    Ok(())
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

    /// Whether the API server would call snapback for this request, by the
    /// match conditions (CEL, evaluated by an independent implementation).
    fn called(group: &str, resource: &str, user: &str) -> bool {
        let request = json!({
            "resource": {"group": group, "version": "v1", "resource": resource},
            "userInfo": {"username": user},
        });
        match_conditions().as_array().unwrap().iter().all(|c| {
            let program =
                cel_interpreter::Program::compile(c["expression"].as_str().unwrap()).unwrap();
            let mut ctx = cel_interpreter::Context::default();
            ctx.add_variable("request", request.clone()).unwrap();
            match program.execute(&ctx).unwrap() {
                cel_interpreter::Value::Bool(b) => b,
                other => panic!("{} is not a condition: {other:?}", c["name"]),
            }
        })
    }

    #[test]
    fn match_conditions_leave_out_what_is_never_captured_and_nothing_else() {
        for (group, resource, user) in [
            (
                "authentication.k8s.io",
                "tokenreviews",
                "system:serviceaccount:snapback-system:snapback",
            ),
            ("authorization.k8s.io", "subjectaccessreviews", "alice"),
            ("authorization.k8s.io", "selfsubjectaccessreviews", "alice"),
            ("coordination.k8s.io", "leases", "system:node:worker-1"),
            ("coordination.k8s.io", "leases", "system:kube-scheduler"),
            (
                "",
                "events",
                "system:serviceaccount:kube-system:replicaset-controller",
            ),
            ("events.k8s.io", "events", "alice"),
            (
                "",
                "endpoints",
                "system:serviceaccount:kube-system:endpoint-controller",
            ),
            (
                "discovery.k8s.io",
                "endpointslices",
                "system:serviceaccount:kube-system:endpointslice-controller",
            ),
            ("", "pods", "system:node:worker-1"),
            ("", "nodes", "system:node:worker-1"),
            (
                "rbac.authorization.k8s.io",
                "clusterroles",
                "system:apiserver",
            ),
        ] {
            assert!(
                !called(group, resource, user),
                "{group}/{resource} by {user}"
            );
        }
        for (group, resource, user) in [
            ("", "configmaps", "alice"),
            ("", "secrets", "alice"),
            ("", "namespaces", "alice"),
            ("apps", "deployments", "alice"),
            // The namespace controller's deletes in a deleted namespace are
            // captured into the action that deleted it.
            (
                "",
                "configmaps",
                "system:serviceaccount:kube-system:namespace-controller",
            ),
            ("rbac.authorization.k8s.io", "clusterroles", "alice"),
            ("apiextensions.k8s.io", "customresourcedefinitions", "alice"),
            (
                "example.com",
                "widgets",
                "system:serviceaccount:ops:deployer",
            ),
            ("", "services", "system:nodeadmin"),
        ] {
            assert!(
                called(group, resource, user),
                "{group}/{resource} by {user}"
            );
        }
    }

    /// The documents `snapback webhook-config` prints with these flags.
    fn docs(extra: &[&str]) -> Vec<Value> {
        let mut argv = vec!["x", "--url", "https://127.0.0.1:8443", "--ca", "ca.crt"];
        argv.extend_from_slice(extra);
        let cli = Cli::parse_from(argv);
        render(&cli.args, test_ca().0.as_bytes())
            .unwrap()
            .split("---\n")
            .filter(|d| !d.trim().is_empty())
            .map(|d| serde_yaml::from_str(d).unwrap())
            .collect()
    }

    /// A self-signed certificate and its key, PEM.
    fn test_ca() -> (String, String) {
        let ck = rcgen::generate_simple_self_signed(vec!["snapback".into()]).unwrap();
        (ck.cert.pem(), ck.signing_key.serialize_pem())
    }

    #[test]
    fn the_ca_must_be_certificates_and_never_a_key() {
        let cli = Cli::parse_from(["x", "--url", "https://127.0.0.1:8443", "--ca", "ca.crt"]);
        let (cert, key) = test_ca();
        assert!(render(&cli.args, cert.as_bytes()).is_ok());
        for (bad, why) in [
            (key.clone(), "private key"),
            (format!("{cert}{key}"), "private key"),
            ("hello\n".to_string(), "no PEM certificate"),
            (String::new(), "no PEM certificate"),
            (
                "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n".into(),
                "not a usable certificate",
            ),
        ] {
            let err = render(&cli.args, bad.as_bytes()).unwrap_err();
            assert!(
                err.starts_with("--ca ca.crt: ") && err.contains(why),
                "{bad}: {err}"
            );
        }
    }

    /// What the API server would refuse is refused here, by flag.
    #[test]
    fn urls_and_timeouts_the_api_server_refuses_are_refused() {
        let (cert, _) = test_ca();
        let render_with = |extra: &[&str]| {
            let mut argv = vec!["x", "--ca", "ca.crt"];
            argv.extend_from_slice(extra);
            render(&Cli::parse_from(argv).args, cert.as_bytes())
        };
        for url in [
            "https://127.0.0.1:8443/x?y=1",
            "https://127.0.0.1:8443/x#f",
            "https://user:pw@127.0.0.1:8443",
            "https://host with space",
            "https://",
        ] {
            let err = render_with(&["--url", url]).unwrap_err();
            assert!(err.starts_with("--url"), "{url}: {err}");
        }
        for ok in [
            "https://127.0.0.1:8443",
            "https://snapback.example.com/base/",
            "https://[::1]:8443",
        ] {
            render_with(&["--url", ok]).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for t in ["0", "31", "60"] {
            let err = render_with(&["--url", "https://127.0.0.1:8443", "--timeout-seconds", t])
                .unwrap_err();
            assert!(err.starts_with("--timeout-seconds"), "{t}: {err}");
        }
        render_with(&["--url", "https://127.0.0.1:8443", "--timeout-seconds", "30"]).unwrap();
    }

    #[test]
    fn match_conditions_are_added_only_when_asked_for() {
        for doc in docs(&[]) {
            assert!(doc["webhooks"][0].get("matchConditions").is_none(), "{doc}");
        }
        for doc in docs(&["--match-conditions"]) {
            assert_eq!(doc["webhooks"][0]["matchConditions"], match_conditions());
        }
    }

    /// `manifests/components/match-conditions/` patches in the same conditions.
    #[test]
    fn the_manifests_overlay_carries_the_same_conditions() {
        let overlay: Value = serde_yaml::from_str(include_str!(
            "../manifests/components/match-conditions/kustomization.yaml"
        ))
        .unwrap();
        let patches = overlay["patches"].as_array().unwrap();
        assert_eq!(patches.len(), 2);
        for patch in patches {
            let ops: Value = serde_yaml::from_str(patch["patch"].as_str().unwrap()).unwrap();
            assert_eq!(ops[0]["path"], "/webhooks/0/matchConditions");
            assert_eq!(ops[0]["value"], match_conditions());
        }
    }

    #[test]
    fn the_mutating_webhook_is_not_called_for_deletes() {
        let docs = docs(&[]);
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
