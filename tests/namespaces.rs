#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
//! `kubectl delete namespace`, undone. The control plane of this binary runs
//! a real kube-controller-manager: the namespace controller empties the
//! deleted namespace (as its own service account, an excluded user), the
//! service account controllers fill a new one, the Deployment and ReplicaSet
//! controllers make the Pods. Rolling the deletion back must bring back the
//! namespace with what was in it.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use support::*;

const NAMESPACE_CONTROLLER: &str = "system:serviceaccount:kube-system:namespace-controller";

fn app(ns: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: ConfigMap
metadata: {{name: settings, namespace: {ns}, labels: {{app: shop}}}}
data: {{LOG_LEVEL: info, shop.yaml: "currency: EUR\n"}}
---
apiVersion: v1
kind: Secret
metadata: {{name: db, namespace: {ns}}}
type: Opaque
stringData: {{password: s3cr3t-value}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {{name: shop, namespace: {ns}}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: shop-reader, namespace: {ns}}}
rules: [{{apiGroups: [""], resources: [configmaps], verbs: [get, list]}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: shop-reader, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: shop-reader}}
subjects: [{{kind: ServiceAccount, name: shop, namespace: {ns}}}]
---
apiVersion: v1
kind: Service
metadata: {{name: shop, namespace: {ns}}}
spec:
  selector: {{app: shop}}
  ports: [{{name: http, port: 80, targetPort: 8080}}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: shop, namespace: {ns}, labels: {{app: shop}}}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: shop}}}}
  template:
    metadata: {{labels: {{app: shop}}}}
    spec:
      serviceAccountName: shop
      containers:
        - name: web
          image: nginx:1.25
          envFrom: [{{configMapRef: {{name: settings}}}}]
"#
    )
}

const OBJECTS: &[(&str, &str)] = &[
    ("configmap", "settings"),
    ("secret", "db"),
    ("serviceaccount", "shop"),
    ("role", "shop-reader"),
    ("rolebinding", "shop-reader"),
    ("service", "shop"),
    ("deployment", "shop"),
    ("serviceaccount", "default"),
];

fn get(c: &Cluster, ns: &str, kind: &str, name: &str) -> Option<Value> {
    let out = c.kubectl("admin", &["-n", ns, "get", kind, name, "-o", "json"]);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).unwrap())
}

/// What a user cares about in each object. A ServiceAccount's token list
/// is the token controller's (a new namespace gets new tokens); its image
/// pull secrets are the user's.
fn state(c: &Cluster, ns: &str) -> BTreeMap<String, Option<Value>> {
    OBJECTS
        .iter()
        .map(|(kind, name)| {
            let v = get(c, ns, kind, name).map(|o| {
                let mut v = content(&o);
                v.as_object_mut().unwrap().remove("secrets");
                if let Some(pull) = o.get("imagePullSecrets") {
                    v["imagePullSecrets"] = pull.clone();
                }
                if *kind == "secret" {
                    v["type"] = o["type"].clone();
                }
                v
            });
            (format!("{kind}/{name}"), v)
        })
        .collect()
}

/// The only instance on this control plane: its webhooks see every
/// namespace and cluster-scoped objects (the Namespace) too. bob, carol,
/// alice and user1 to user6 may do anything: they delete namespaces, then
/// undo that. Each user changes things in one test only: a user's changes
/// in a row share an action, and an action a user opened takes all of
/// theirs (tests run in parallel).
fn namespace_snapback() -> &'static Snapback {
    static SB: std::sync::OnceLock<Snapback> = std::sync::OnceLock::new();
    SB.get_or_init(|| {
        let c = cluster_with_controllers();
        let opts = SnapbackOpts {
            extra_args: vec!["--capture-secrets".into()],
            ..SnapbackOpts::shared()
        };
        let sb = Snapback::start(c, opts);
        for user in [
            "bob", "carol", "alice", "user1", "user2", "user3", "user4", "user5", "user6", "user7",
            "user8", "user9", "user10", "user11",
        ] {
            c.grant_api(user);
            c.kubectl_ok(&[
                "create",
                "clusterrolebinding",
                &format!("{user}-cluster-admin"),
                "--clusterrole=cluster-admin",
                &format!("--user={user}"),
            ]);
        }
        // The authorizer sees new bindings a moment later.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while String::from_utf8_lossy(
            &c.kubectl(
                "admin",
                &["auth", "can-i", "create", "namespaces", "--as", "user11"],
            )
            .stdout,
        )
        .trim()
            != "yes"
        {
            assert!(
                std::time::Instant::now() < deadline,
                "RBAC never granted: {:?}",
                c.kubectl(
                    "admin",
                    &["auth", "can-i", "create", "namespaces", "--as", "user11"]
                )
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        sb
    })
}

fn names(c: &Cluster, ns: &str, kind: &str) -> Vec<String> {
    let out = c.kubectl_ok(&["-n", ns, "get", kind, "-o", "name"]);
    out.lines().map(str::to_string).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_namespace_comes_back_with_its_contents() {
    let c = cluster_with_controllers();
    let sb = namespace_snapback();
    let api = sb.api(c);
    let token = c.token("bob");
    let ns = c.namespace("shop", &[]);
    c.kubectl_ok(&["label", "namespace", &ns, "team=shop"]);
    sb.wait_capturing(c, &ns);
    // The service account controller gives every namespace its default
    // ServiceAccount; the team added their registry credentials to it.
    eventually(
        "the default ServiceAccount",
        Duration::from_secs(60),
        || async { get(c, &ns, "serviceaccount", "default") },
    )
    .await;
    c.apply_as("admin", &app(&ns));
    c.kubectl_ok(&[
        "-n",
        &ns,
        "patch",
        "serviceaccount",
        "default",
        "-p",
        r#"{"imagePullSecrets": [{"name": "registry"}]}"#,
    ]);
    eventually("the Deployment's pods", Duration::from_secs(60), || async {
        (names(c, &ns, "pods").len() == 2).then_some(())
    })
    .await;
    // A bare Pod, with the token volume the admission plugin injects (once
    // the token controller made the default ServiceAccount's token).
    eventually("a bare Pod", Duration::from_secs(60), || async {
        let out = c.kubectl(
            "admin",
            &[
                "-n",
                &ns,
                "run",
                "bare",
                "--image=busybox",
                "--restart=Never",
            ],
        );
        out.status.success().then_some(())
    })
    .await;
    let token_secret = |pod: &Value| -> Option<String> {
        pod["spec"]["volumes"]
            .as_array()?
            .iter()
            .find_map(|v| v["secret"]["secretName"].as_str().map(str::to_string))
    };
    let bare_before = get(c, &ns, "pod", "bare").unwrap();
    assert!(token_secret(&bare_before).is_some(), "{bare_before:#}");
    let before = state(c, &ns);
    assert!(before.values().all(Option::is_some), "{before:#?}");
    let tokens_before: Vec<String> = names(c, &ns, "secrets")
        .into_iter()
        .filter(|s| s.contains("-token-"))
        .collect();
    assert!(!tokens_before.is_empty(), "the token controller runs");

    // The mistake. kubectl waits until the namespace controller has emptied
    // the namespace and it is gone.
    let out = c.kubectl("bob", &["delete", "namespace", &ns, "--timeout=120s"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !c.kubectl("admin", &["get", "namespace", &ns])
            .status
            .success()
    );

    // One action: bob's deletion and everything the namespace controller
    // deleted for it, except what controllers make again.
    let list = api.ok("GET", "/api/v1/actions?user=bob", &token).await;
    let id = list["actions"][0]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no action of bob: {list:#}\n{}", sb.log_tail()))
        .to_string();
    // Found by the namespace it deleted, too.
    let by_namespace = api
        .ok("GET", &format!("/api/v1/actions?namespace={ns}"), &token)
        .await;
    assert!(
        by_namespace["actions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["id"] == id.as_str()),
        "{by_namespace:#}"
    );
    let detail = api
        .ok("GET", &format!("/api/v1/actions/{id}"), &token)
        .await;
    let changes = detail["changes"].as_array().unwrap();
    let by = |resource: &str, name: &str| {
        changes
            .iter()
            .find(|ch| ch["resource"] == resource && ch["name"] == name)
            .unwrap_or_else(|| panic!("no change of {resource}/{name} in {detail:#}"))
    };
    assert_eq!(by("namespaces", &ns)["user"], "bob");
    for (resource, name) in [
        ("configmaps", "settings"),
        ("secrets", "db"),
        ("serviceaccounts", "shop"),
        ("serviceaccounts", "default"),
        ("roles", "shop-reader"),
        ("rolebindings", "shop-reader"),
        ("services", "shop"),
        ("deployments", "shop"),
    ] {
        let change = by(resource, name);
        assert_eq!(change["operation"], "delete", "{change:#}");
        assert_eq!(change["user"], NAMESPACE_CONTROLLER, "{change:#}");
    }
    for ch in changes {
        let resource = ch["resource"].as_str().unwrap();
        let name = ch["name"].as_str().unwrap();
        assert!(
            (!["pods", "replicasets", "events"].contains(&resource) || name == "bare")
                && !name.contains("-token-"),
            "made again by a controller, not to be restored: {ch:#}"
        );
    }

    // Undo.
    let report = api
        .ok("POST", &format!("/api/v1/actions/{id}/rollback"), &token)
        .await;
    assert_eq!(report["state"], "rolled-back", "{report:#}");
    assert_eq!(report["counts"]["failed"], 0, "{report:#}");
    assert_eq!(report["counts"]["conflict"], 0, "{report:#}");
    let namespace = get(c, "default", "namespace", &ns).expect("the namespace is back");
    assert_eq!(
        namespace["metadata"]["labels"]["team"], "shop",
        "with its labels: {namespace:#}"
    );
    let after = state(c, &ns);
    let diff: Vec<String> = before
        .iter()
        .filter(|(k, v)| after.get(*k) != Some(v))
        .map(|(k, v)| format!("{k}:\n  want {v:?}\n  got  {:?}", after.get(k)))
        .collect();
    assert!(
        diff.is_empty(),
        "not as before the deletion:\n{}",
        diff.join("\n")
    );
    // The bare Pod is back, mounting a token that exists (the one it had
    // went with the namespace), its own volumes as they were.
    let bare = get(c, &ns, "pod", "bare").expect("the bare Pod is back");
    let mounted = token_secret(&bare).expect("a token volume");
    assert_ne!(Some(mounted.clone()), token_secret(&bare_before));
    assert!(
        get(c, &ns, "secret", &mounted).is_some(),
        "the restored Pod mounts {mounted}, which does not exist"
    );
    assert_eq!(
        bare["spec"]["containers"][0]["image"],
        bare_before["spec"]["containers"][0]["image"]
    );
    // The controllers take it from there: new pods for the restored
    // Deployment, new tokens for the restored ServiceAccounts.
    eventually(
        "pods of the restored Deployment",
        Duration::from_secs(60),
        || async { (names(c, &ns, "pods").len() == 3).then_some(()) },
    )
    .await;
    eventually(
        "tokens of the restored ServiceAccounts",
        Duration::from_secs(60),
        || async {
            let tokens: Vec<String> = names(c, &ns, "secrets")
                .into_iter()
                .filter(|s| s.contains("-token-"))
                .collect();
            (tokens.len() >= 2 && tokens.iter().all(|t| !tokens_before.contains(t))).then_some(())
        },
    )
    .await;

    // A second rollback finds everything in its prior state.
    let again = api
        .ok("POST", &format!("/api/v1/actions/{id}/rollback"), &token)
        .await;
    let not_unchanged: Vec<&Value> = again["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["outcome"] != "unchanged")
        .collect();
    assert!(not_unchanged.is_empty(), "{not_unchanged:#?}");

    // The deletion's prior state as manifests, applied to a copy of the
    // team's namespace: what the cluster makes in every namespace is left
    // to it (its CA, a plain default account, Secrets are never shown),
    // the default account with the team's pull secrets comes before the
    // workloads, so their Pods get its pull secrets.
    let (status, manifests) = api
        .call(
            "GET",
            &format!("/api/v1/actions/{id}/manifests"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, 200, "{manifests}");
    let manifests = manifests.as_str().unwrap().to_string();
    assert!(
        !manifests.contains("name: kube-root-ca.crt\n"),
        "{manifests}"
    );
    let copy = format!("{ns}-copy");
    c.kubectl_ok(&["create", "namespace", &copy]);
    eventually(
        "the copy's default ServiceAccount",
        Duration::from_secs(60),
        || async { get(c, &copy, "serviceaccount", "default") },
    )
    .await;
    let default_at = manifests.find("kind: ServiceAccount\nmetadata:\n  name: default");
    let workloads_at = manifests.find("kind: Deployment");
    assert!(
        default_at.is_some() && default_at < workloads_at,
        "the default ServiceAccount before the workloads:\n{manifests}"
    );
    let out = c.kubectl_stdin(
        "admin",
        &["apply", "-f", "-"],
        &manifests.replace(&ns, &copy),
    );
    assert!(
        out.status.success(),
        "the manifests do not apply to a copy of the namespace:\n{}\n{manifests}",
        String::from_utf8_lossy(&out.stderr)
    );
    let default = get(c, &copy, "serviceaccount", "default").unwrap();
    assert_eq!(
        default["imagePullSecrets"][0]["name"], "registry",
        "{default:#}"
    );
    assert!(get(c, &copy, "deployment", "shop").is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rollback_asked_while_the_namespace_is_emptied_waits_for_it() {
    let c = cluster_with_controllers();
    let sb = namespace_snapback();
    let api = sb.api(c);
    let token = c.token("carol");
    let ns = c.namespace("held", &[]);
    sb.wait_capturing(c, &ns);
    let plain: Vec<String> = (0..20).map(|i| format!("plain-{i}")).collect();
    let mut manifest = format!(
        r#"apiVersion: v1
kind: ConfigMap
metadata: {{name: held, namespace: {ns}, finalizers: [example.com/hold]}}
data: {{k: v}}
"#
    );
    for name in &plain {
        manifest.push_str(&format!(
            "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}, namespace: {ns}}}\ndata: {{k: v}}\n"
        ));
    }
    c.apply_as("admin", &manifest);
    // --wait=false, and the rollback asked at once: the namespace
    // controller has barely started (and cannot finish while the
    // ConfigMap's finalizer holds the namespace).
    c.kubectl_as_ok("carol", &["delete", "namespace", &ns, "--wait=false"]);
    let list = api.ok("GET", "/api/v1/actions?user=carol", &token).await;
    let id = list["actions"][0]["id"].as_str().unwrap().to_string();
    // The finalizer's owner lets go a few seconds after the namespace
    // controller deleted the held ConfigMap (on a slow machine that can be
    // later than the rollback was asked; a release before that delete would
    // make the captured state one without the finalizer).
    let release = {
        let ns = ns.clone();
        std::thread::spawn(move || {
            let c = cluster_with_controllers();
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while get(c, &ns, "configmap", "held")
                .is_some_and(|cm| cm["metadata"]["deletionTimestamp"].is_null())
            {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the namespace controller never deleted the held ConfigMap"
                );
                std::thread::sleep(Duration::from_millis(200));
            }
            std::thread::sleep(Duration::from_secs(3));
            c.kubectl_ok(&[
                "-n",
                &ns,
                "patch",
                "configmap",
                "held",
                "--type=merge",
                "-p",
                r#"{"metadata":{"finalizers":null}}"#,
            ]);
        })
    };
    let report = api
        .ok("POST", &format!("/api/v1/actions/{id}/rollback"), &token)
        .await;
    release.join().unwrap();
    assert_eq!(report["state"], "rolled-back", "{report:#}");
    assert_eq!(report["counts"]["failed"], 0, "{report:#}");
    // Planned once the namespace was gone: everything was created anew.
    let namespace = report["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["resource"] == "namespaces")
        .unwrap();
    assert_eq!(
        namespace["message"], "recreated from its prior state",
        "{report:#}"
    );
    for name in plain.iter().map(String::as_str).chain(["held"]) {
        let cm = get(c, &ns, "configmap", name).expect(name);
        assert_eq!(cm["data"]["k"], "v");
    }
    // The namespace controller deleted the held ConfigMap again on every
    // pass while it waited; one change was captured, not one per pass.
    let detail = api
        .ok("GET", &format!("/api/v1/actions/{id}"), &token)
        .await;
    let held_changes = detail["changes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|ch| ch["name"] == "held")
        .count();
    assert_eq!(held_changes, 1, "{detail:#}");
    // The held ConfigMap is back as it was, finalizer included.
    assert_eq!(
        get(c, &ns, "configmap", "held").unwrap()["metadata"]["finalizers"][0],
        "example.com/hold"
    );
    c.kubectl_ok(&[
        "-n",
        &ns,
        "patch",
        "configmap",
        "held",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ]);
}

/// A namespace deletion that snapback admitted and a policy webhook then
/// refused is a phantom: rolling it back must not recreate the namespace
/// that someone else really deleted afterwards.
#[tokio::test(flavor = "multi_thread")]
async fn a_namespace_deletion_another_webhook_refused_restores_nothing() {
    let c = cluster_with_controllers();
    let sb = namespace_snapback();
    let api = sb.api(c);
    let token = c.token("user1");
    let ns = c.namespace("guarded", &[]);
    c.kubectl_ok(&["label", "namespace", &ns, "protected=true"]);
    sb.wait_capturing(c, &ns);
    // A policy that refuses deleting protected namespaces (fails closed:
    // its server is down).
    let policy = format!("protect-{ns}");
    c.kubectl_apply_str(&format!(
        r#"apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingWebhookConfiguration
metadata: {{name: {policy}}}
webhooks:
  - name: protect.example.com
    admissionReviewVersions: ["v1"]
    clientConfig: {{url: "https://127.0.0.1:1/protect"}}
    rules: [{{apiGroups: [""], apiVersions: ["v1"], operations: ["DELETE"], resources: ["namespaces"]}}]
    objectSelector: {{matchLabels: {{protected: "true"}}}}
    failurePolicy: Fail
    sideEffects: None
    timeoutSeconds: 2
"#
    ));
    // In force once a server-side dry run of the deletion is refused.
    eventually("the policy in force", Duration::from_secs(30), || async {
        let out = c.kubectl("admin", &["delete", "namespace", &ns, "--dry-run=server"]);
        (!out.status.success()).then_some(())
    })
    .await;
    let out = c.kubectl("user1", &["delete", "namespace", &ns, "--wait=false"]);
    assert!(!out.status.success(), "the policy refuses it");
    // Lifted; user6 deletes it for real.
    c.kubectl_ok(&["label", "namespace", &ns, "protected-"]);
    c.kubectl_ok(&["delete", "validatingwebhookconfiguration", &policy]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let out = c.kubectl("user6", &["delete", "namespace", &ns, "--timeout=120s"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let list = api.ok("GET", "/api/v1/actions?user=user1", &token).await;
    let id = list["actions"][0]["id"].as_str().unwrap().to_string();
    let report = api
        .ok("POST", &format!("/api/v1/actions/{id}/rollback"), &token)
        .await;
    assert_eq!(report["state"], "rolled-back", "{report:#}");
    let namespace = report["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["resource"] == "namespaces")
        .unwrap();
    assert_eq!(namespace["outcome"], "unchanged", "{report:#}");
    assert!(
        namespace["message"].as_str().unwrap().contains("refused"),
        "{report:#}"
    );
    assert!(
        get(c, "default", "namespace", &ns).is_none(),
        "not recreated"
    );
}

/// A Pod and a Job an action created are not conflicts to its rollback:
/// the API server reads them back with what it defaults only then (the
/// token volume's `defaultMode`, a Job's labels from its template), which
/// the validating webhook never saw on their CREATE.
#[tokio::test(flavor = "multi_thread")]
async fn pods_and_jobs_an_action_created_roll_back_without_a_false_conflict() {
    let c = cluster_with_controllers();
    let sb = namespace_snapback();
    let api = sb.api(c);
    let token = c.token("user2");
    let ns = c.namespace("made", &[]);
    sb.wait_capturing(c, &ns);
    // Pods need the default ServiceAccount's token (Kubernetes 1.20).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while c
        .kubectl(
            "admin",
            &[
                "-n",
                &ns,
                "get",
                "serviceaccount",
                "default",
                "-o",
                "jsonpath={.secrets[0].name}",
            ],
        )
        .stdout
        .is_empty()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no token for the default ServiceAccount"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let id = format!("made-{:06x}", rand::random::<u32>() & 0xffffff);
    api.open_action(&token, &id).await;
    c.kubectl_as_ok(
        "user2",
        &[
            "-n",
            &ns,
            "create",
            "job",
            "j1",
            "--image=busybox",
            "--",
            "true",
        ],
    );
    c.kubectl_as_ok(
        "user2",
        &["-n", &ns, "run", "p1", "--image=busybox", "--restart=Never"],
    );
    api.ok("POST", &format!("/api/v1/actions/{id}/complete"), &token)
        .await;
    // What made them conflicts: read back, they carry what the webhook
    // did not see.
    let pod = get(c, &ns, "pod", "p1").expect("pod p1");
    assert!(
        pod["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["secret"]["defaultMode"] == 420),
        "{pod:#}"
    );
    let job = get(c, &ns, "job", "j1").expect("job j1");
    assert_eq!(job["metadata"]["labels"]["job-name"], "j1", "{job:#}");

    let (status, report) = api
        .call(
            "POST",
            &format!("/api/v1/actions/{id}/rollback"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, 200, "{report:#}");
    assert_eq!(report["state"], "rolled-back", "{report:#}");
    assert_eq!(report["counts"]["restored"], 2, "{report:#}");
    assert!(get(c, &ns, "pod", "p1").is_none());
    assert!(get(c, &ns, "job", "j1").is_none());
}

/// The API server calls the validating webhook more than once for some
/// deletes (a Pod's graceful deletion, then the deletion itself, in one
/// request): one change is captured, not one per call.
#[tokio::test(flavor = "multi_thread")]
async fn one_delete_is_one_change() {
    let c = cluster_with_controllers();
    let sb = namespace_snapback();
    let api = sb.api(c);
    let token = c.token("alice");
    let ns = c.namespace("onedel", &[]);
    sb.wait_capturing(c, &ns);
    eventually(
        "the default ServiceAccount",
        Duration::from_secs(60),
        || async { get(c, &ns, "serviceaccount", "default") },
    )
    .await;
    c.apply_as(
        "admin",
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: lone, namespace: {ns}}}\nspec: {{automountServiceAccountToken: false, containers: [{{name: c, image: busybox}}]}}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: plain, namespace: {ns}}}\ndata: {{k: v}}\n"
        ),
    );
    let id = format!("onedel-{:06x}", rand::random::<u32>() & 0xffffff);
    api.open_action(&token, &id).await;
    c.kubectl_as_ok(
        "alice",
        &["-n", &ns, "delete", "pod/lone", "configmap/plain"],
    );
    api.ok("POST", &format!("/api/v1/actions/{id}/complete"), &token)
        .await;
    let detail = api
        .ok("GET", &format!("/api/v1/actions/{id}"), &token)
        .await;
    let changes = change_list(&detail);
    assert_eq!(
        changes,
        ["delete configmaps/plain", "delete pods/lone"],
        "{detail:#}"
    );
}

/// A PersistentVolume and its claim deleted and restored are bound again
/// by the volume controller: recreated as they were, the volume named the
/// uid of a claim that is gone (Released) and the claim was Lost.
#[tokio::test(flavor = "multi_thread")]
async fn a_restored_volume_and_claim_are_bound_again() {
    let c = cluster_with_controllers();
    let sb = namespace_snapback();
    let api = sb.api(c);
    let token = c.token("user5");
    let ns = c.namespace("vol", &[]);
    sb.wait_capturing(c, &ns);
    let pv = format!("pv-{ns}");
    let manifest = format!(
        "apiVersion: v1\nkind: PersistentVolume\nmetadata: {{name: {pv}}}\nspec: {{capacity: {{storage: 1Gi}}, accessModes: [ReadWriteOnce], persistentVolumeReclaimPolicy: Retain, storageClassName: manual, hostPath: {{path: /tmp/{pv}}}}}\n---\napiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {{name: data, namespace: {ns}}}\nspec: {{accessModes: [ReadWriteOnce], storageClassName: manual, volumeName: {pv}, resources: {{requests: {{storage: 1Gi}}}}}}\n"
    );
    c.apply_as("admin", &manifest);
    let phase = |kind: &str, name: &str, namespace: &str| {
        get(c, namespace, kind, name)
            .and_then(|o| o["status"]["phase"].as_str().map(str::to_string))
    };
    eventually("the claim bound", Duration::from_secs(60), || async {
        (phase("pvc", "data", &ns).as_deref() == Some("Bound")).then_some(())
    })
    .await;
    let id = format!("vol-{:06x}", rand::random::<u32>() & 0xffffff);
    api.open_action(&token, &id).await;
    c.kubectl_as_ok(
        "user5",
        &["-n", &ns, "delete", "pvc", "data", "--timeout=60s"],
    );
    c.kubectl_as_ok("user5", &["delete", "pv", &pv, "--timeout=60s"]);
    api.ok("POST", &format!("/api/v1/actions/{id}/complete"), &token)
        .await;
    let report = api
        .ok("POST", &format!("/api/v1/actions/{id}/rollback"), &token)
        .await;
    assert_eq!(report["state"], "rolled-back", "{report:#}");
    eventually(
        "the restored claim bound again",
        Duration::from_secs(60),
        || async {
            (phase("pvc", "data", &ns).as_deref() == Some("Bound")
                && phase("pv", &pv, "default").as_deref() == Some("Bound"))
            .then_some(())
        },
    )
    .await;
    c.kubectl_ok(&["-n", &ns, "delete", "pvc", "data", "--wait=false"]);
    c.kubectl_ok(&["delete", "pv", &pv, "--wait=false"]);
}

/// Without its snapshot namespace snapback can store nothing (and in deny
/// mode every captured change would be refused): it is not ready, and says
/// why, until the namespace is there again. Where it may, it creates the
/// namespace itself, labelled to be left out of capture.
#[tokio::test(flavor = "multi_thread")]
async fn not_ready_while_the_snapshot_namespace_is_missing() {
    let c = cluster_with_controllers();
    let tag = format!("rdy{:06x}", rand::random::<u32>() & 0xffffff);
    let opts = SnapbackOpts {
        register: false,
        ..SnapbackOpts::isolated(c, &tag)
    };
    let ns = opts.snapshot_namespace.clone();
    let sb = Snapback::start(c, opts);
    let ready = || http_get(sb.metrics_port, "/readyz").is_ok();
    assert!(ready());
    c.kubectl_ok(&["delete", "namespace", &ns, "--timeout=60s"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while ready() {
        assert!(
            std::time::Instant::now() < deadline,
            "still ready without namespace {ns}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        sb.log_tail().contains(&format!(
            "the snapshot namespace {ns} does not exist and snapback could not create it"
        )),
        "{}",
        sb.log_tail()
    );
    c.kubectl_ok(&["create", "namespace", &ns]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !ready() {
        assert!(
            std::time::Instant::now() < deadline,
            "not ready again once {ns} was created"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Allowed to create namespaces, snapback makes its own again.
    c.kubectl_ok(&["delete", "namespace", &ns, "--timeout=60s"]);
    let grant = format!("{tag}-create-namespaces");
    c.kubectl_ok(&[
        "create",
        "clusterrole",
        &grant,
        "--verb=create",
        "--resource=namespaces",
    ]);
    c.kubectl_ok(&[
        "create",
        "clusterrolebinding",
        &grant,
        &format!("--clusterrole={grant}"),
        "--user=snapback",
    ]);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let created = loop {
        match c.get_json(&["namespace", &ns]) {
            Some(n) if n["metadata"]["deletionTimestamp"].is_null() => break n,
            _ => {}
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{ns} not created by snapback: {}",
            sb.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    c.kubectl_ok(&["delete", "clusterrolebinding,clusterrole", &grant]);
    assert_eq!(
        created["metadata"]["labels"]["snapback.io/exclude"], "true",
        "{created:#}"
    );
    assert!(
        sb.log_tail().contains("created the snapshot namespace"),
        "{}",
        sb.log_tail()
    );
}

/// The garbage collector deletes what an object owns once the object is
/// gone, as its own (excluded) identity: those deletes join the action that
/// deleted the owner, so its rollback brings the dependents back, pointed at
/// the owner's new uid. What a controller owns is left to the controller.
#[tokio::test(flavor = "multi_thread")]
async fn what_the_garbage_collector_deletes_with_an_owner_comes_back_with_it() {
    let c = cluster_with_controllers();
    let sb = namespace_snapback();
    let api = sb.api(c);
    let user = "user3";
    let token = c.token(user);
    let ns = c.namespace("gc", &[]);
    c.kubectl_ok(&[
        "-n",
        &ns,
        "create",
        "configmap",
        "parent",
        "--from-literal=a=1",
    ]);
    let uid_of = |name: &str| {
        c.kubectl_ok(&[
            "-n",
            &ns,
            "get",
            "configmap",
            name,
            "-o",
            "jsonpath={.metadata.uid}",
        ])
    };
    let parent_uid = uid_of("parent");
    // child: server-side applied by an operator, `op`; controlled: owned by
    // parent as its controller; grandchild: owned by controlled.
    let owned = |name: &str, owner: &str, uid: &str, controller: bool| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: {ns}\n  ownerReferences:\n  - {{apiVersion: v1, kind: ConfigMap, name: {owner}, uid: {uid}, controller: {controller}}}\ndata: {{important: \"yes\"}}\n"
        )
    };
    let out = c.kubectl_stdin(
        "admin",
        &["apply", "--server-side", "--field-manager=op", "-f", "-"],
        &owned("child", "parent", &parent_uid, false),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    c.kubectl_apply_str(&owned("controlled", "parent", &parent_uid, true));
    let controlled_uid = uid_of("controlled");
    c.kubectl_apply_str(&owned("grandchild", "controlled", &controlled_uid, false));
    let id = format!("gc-{:06x}", rand::random::<u32>() & 0xffffff);
    let (status, body) = api
        .call(
            "POST",
            "/api/v1/actions",
            Some(&token),
            Some(&serde_json::json!({ "id": id }).to_string()),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    tokio::time::sleep(Duration::from_millis(700)).await;
    c.kubectl_as_ok(user, &["-n", &ns, "delete", "configmap", "parent"]);
    let exists = |name: &str| {
        c.kubectl("admin", &["-n", &ns, "get", "configmap", name])
            .status
            .success()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while exists("child") || exists("controlled") || exists("grandchild") {
        assert!(
            std::time::Instant::now() < deadline,
            "the garbage collector did not delete the dependents"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    api.ok("POST", &format!("/api/v1/actions/{id}/complete"), &token)
        .await;
    let detail = api
        .ok("GET", &format!("/api/v1/actions/{id}"), &token)
        .await;
    let changes = change_list(&detail);
    assert!(
        changes.iter().any(|c| c.contains("child")),
        "the collector's delete of child is not in the action: {detail:#}"
    );
    assert!(
        !changes.iter().any(|c| c.contains("controlled")),
        "{detail:#}"
    );

    let report = api
        .ok("POST", &format!("/api/v1/actions/{id}/rollback"), &token)
        .await;
    assert_eq!(report["state"], "rolled-back", "{report:#}");
    let new_parent = uid_of("parent");
    assert_ne!(new_parent, parent_uid);
    let child = c.kubectl_ok(&["-n", &ns, "get", "configmap", "child", "-o", "json"]);
    let child: Value = serde_json::from_str(&child).unwrap();
    assert_eq!(child["data"]["important"], "yes", "{child:#}");
    assert_eq!(
        child["metadata"]["ownerReferences"][0]["uid"],
        new_parent.as_str(),
        "{child:#}"
    );
    // Its manager is the operator's, as before, and its field set names the
    // owner's new uid.
    let managed = c.kubectl_ok(&[
        "-n",
        &ns,
        "get",
        "configmap",
        "child",
        "--show-managed-fields",
        "-o",
        "jsonpath={.metadata.managedFields}",
    ]);
    let managed: Value = serde_json::from_str(&managed).unwrap();
    let managers: Vec<(&str, &str)> = managed
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["manager"].as_str().unwrap(),
                m["operation"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(managers, vec![("op", "Apply")], "{managed:#}");
    assert!(
        managed.to_string().contains(&new_parent) && !managed.to_string().contains(&parent_uid),
        "{managed:#}"
    );
    assert!(!exists("controlled"));
    // What controlled owned without a controller is the action's: back,
    // without its reference to the owner nobody restored.
    let grandchild = c.kubectl_ok(&["-n", &ns, "get", "configmap", "grandchild", "-o", "json"]);
    let grandchild: Value = serde_json::from_str(&grandchild).unwrap();
    assert_eq!(grandchild["data"]["important"], "yes", "{grandchild:#}");
    // Another replica finds the owner's action through the snapshot's label.
    let store = sb.store(c).await;
    let found = snapback::store::SnapshotSink::deleted_by(&store, &parent_uid)
        .await
        .unwrap();
    assert_eq!(found.map(|a| a.to_string()), Some(id));

    // An action deleted before the collector gets to a dependent (its owner
    // held by a finalizer): the dependent's delete is not captured, and no
    // action record comes back for it.
    c.kubectl_apply_str(&format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: held, namespace: {ns}, finalizers: [example.com/hold]}}\n"
    ));
    let held_uid = uid_of("held");
    c.kubectl_apply_str(&owned("late", "held", &held_uid, false));
    let id2 = format!("gcdel-{:06x}", rand::random::<u32>() & 0xffffff);
    let (status, body) = api
        .call(
            "POST",
            "/api/v1/actions",
            Some(&token),
            Some(&serde_json::json!({ "id": id2 }).to_string()),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    tokio::time::sleep(Duration::from_millis(700)).await;
    c.kubectl_as_ok(
        user,
        &["-n", &ns, "delete", "configmap", "held", "--wait=false"],
    );
    api.ok("POST", &format!("/api/v1/actions/{id2}/complete"), &token)
        .await;
    let (status, _) = api
        .call(
            "DELETE",
            &format!("/api/v1/actions/{id2}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, 204);
    c.kubectl_ok(&[
        "-n",
        &ns,
        "patch",
        "configmap",
        "held",
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
    ]);
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while exists("late") {
        assert!(
            std::time::Instant::now() < deadline,
            "late was not collected"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (status, body) = api
        .call("GET", &format!("/api/v1/actions/{id2}"), Some(&token), None)
        .await;
    assert_eq!(status, 404, "the deleted action came back: {body:#}");
}

/// A Deployment applied server-side and deleted in an action comes back
/// with its server-side apply ownership, though the deployment controller
/// writes it several times right after it is recreated (one retry lost
/// that race every time).
#[tokio::test(flavor = "multi_thread")]
async fn a_recreated_deployment_gets_its_field_managers_back_from_under_its_controller() {
    let c = cluster_with_controllers();
    let sb = namespace_snapback();
    let api = sb.api(c);
    let user = "user4";
    let token = c.token(user);
    let ns = c.namespace("ssa", &[]);
    let manifest = format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  namespace: {ns}\n  labels: {{app: web, tier: front}}\nspec:\n  replicas: 1\n  selector: {{matchLabels: {{app: web}}}}\n  template:\n    metadata: {{labels: {{app: web}}}}\n    spec:\n      containers:\n      - {{name: c, image: nginx:1.19, env: [{{name: A, value: \"1\"}}]}}\n"
    );
    let out = c.kubectl_stdin("admin", &["apply", "--server-side", "-f", "-"], &manifest);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let managers = || -> Vec<(String, String)> {
        let managed = c.kubectl_ok(&[
            "-n",
            &ns,
            "get",
            "deployment",
            "web",
            "--show-managed-fields",
            "-o",
            "jsonpath={.metadata.managedFields}",
        ]);
        let managed: Value = serde_json::from_str(&managed).unwrap();
        managed
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["manager"].as_str().unwrap().to_string(),
                    m["operation"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let applied = ("kubectl".to_string(), "Apply".to_string());
    assert!(managers().contains(&applied), "{:?}", managers());
    // Let the controller write its revision and status first.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let id = format!("ssa-{:06x}", rand::random::<u32>() & 0xffffff);
    let (status, body) = api
        .call(
            "POST",
            "/api/v1/actions",
            Some(&token),
            Some(&serde_json::json!({ "id": id }).to_string()),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    tokio::time::sleep(Duration::from_millis(700)).await;
    c.kubectl_as_ok(user, &["-n", &ns, "delete", "deployment", "web"]);
    api.ok("POST", &format!("/api/v1/actions/{id}/complete"), &token)
        .await;
    let report = api
        .ok("POST", &format!("/api/v1/actions/{id}/rollback"), &token)
        .await;
    assert_eq!(report["state"], "rolled-back", "{report:#}");
    assert!(
        !report.to_string().contains("could not be given back"),
        "{report:#}"
    );
    let now = managers();
    assert!(now.contains(&applied), "{now:?}");
}

/// What the volume protection controllers and the token controller add to
/// objects an action created (their finalizers; a token Secret's token and
/// account uid) is not a change by someone else: the rollback deletes them
/// without `force` (it used to be a 409 naming the claim, the volume and the
/// Secret).
#[tokio::test(flavor = "multi_thread")]
async fn what_controllers_fill_in_on_created_objects_is_no_conflict() {
    let c = cluster_with_controllers();
    let sb = namespace_snapback();
    let api = sb.api(c);
    let user = "user7";
    let token = c.token(user);
    let ns = c.namespace("filled", &[]);
    let id = format!("filled-{:06x}", rand::random::<u32>() & 0xffffff);
    c.apply_as(user, &format!(
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {{name: data, namespace: {ns}, annotations: {{snapback.io/action: {id}}}}}\nspec: {{accessModes: [ReadWriteOnce], storageClassName: none-such, resources: {{requests: {{storage: 1Gi}}}}}}\n---\napiVersion: v1\nkind: PersistentVolume\nmetadata: {{name: {id}, annotations: {{snapback.io/action: {id}}}}}\nspec: {{capacity: {{storage: 1Gi}}, accessModes: [ReadWriteOnce], hostPath: {{path: /tmp/{id}}}, storageClassName: other}}\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: bot, namespace: {ns}, annotations: {{snapback.io/action: {id}}}}}\n---\napiVersion: v1\nkind: Secret\nmetadata: {{name: bot-token, namespace: {ns}, annotations: {{snapback.io/action: {id}, kubernetes.io/service-account.name: bot}}}}\ntype: kubernetes.io/service-account-token\n"));
    let filled_in = || {
        let finalizer = |args: &[&str], f: &str| {
            c.get_json(args).is_some_and(|o| {
                o["metadata"]["finalizers"]
                    .as_array()
                    .is_some_and(|fs| fs.iter().any(|x| x == f))
            })
        };
        finalizer(&["-n", &ns, "pvc", "data"], "kubernetes.io/pvc-protection")
            && finalizer(&["pv", &id], "kubernetes.io/pv-protection")
            && c.get_json(&["-n", &ns, "secret", "bot-token"])
                .is_some_and(|s| s["data"]["token"].is_string())
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !filled_in() {
        assert!(
            std::time::Instant::now() < deadline,
            "the controllers never filled them in"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let report = api
        .ok("POST", &format!("/api/v1/actions/{id}/rollback"), &token)
        .await;
    assert_eq!(report["state"], "rolled-back", "{report:#}");
    assert_eq!(
        nonzero(&report["counts"]),
        serde_json::json!({"restored": 4}),
        "{report:#}"
    );
    let gone = |args: &[&str]| {
        c.get_json(args)
            .is_none_or(|o| !o["metadata"]["deletionTimestamp"].is_null())
    };
    assert!(gone(&["-n", &ns, "pvc", "data"]));
    assert!(gone(&["pv", &id]));
    assert!(gone(&["-n", &ns, "secret", "bot-token"]));
    assert!(gone(&["-n", &ns, "serviceaccount", "bot"]));
}

/// Rolling back the action that created a namespace deletes the namespace,
/// and with it everything in it: also what another user created there
/// since. That is a change by someone else after the action, so the
/// rollback (and its dry run) is a 409 naming those objects; with them
/// rolled back first (or `force=true`), the namespace goes.
#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_created_namespace_over_others_objects_is_a_conflict() {
    let c = cluster_with_controllers();
    let sb = namespace_snapback();
    let api = sb.api(c);
    let (creator, other) = ("user8", "user9");
    let (creator_token, other_token) = (c.token(creator), c.token(other));
    let tag = format!("{:06x}", rand::random::<u32>() & 0xffffff);
    let (ns, id) = (format!("made-{tag}"), format!("mkns-{tag}"));
    c.apply_as(creator, &format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}, annotations: {{snapback.io/action: {id}}}}}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: mine, namespace: {ns}, annotations: {{snapback.io/action: {id}}}}}\ndata: {{a: \"1\"}}\n"));
    c.kubectl_as_ok(
        other,
        &[
            "-n",
            &ns,
            "create",
            "configmap",
            "theirs",
            "--from-literal=important=data",
        ],
    );
    for path in [
        format!("/api/v1/actions/{id}/rollback?dryRun=true"),
        format!("/api/v1/actions/{id}/rollback"),
    ] {
        let (status, body) = api.call("POST", &path, Some(&creator_token), None).await;
        assert_eq!(status, 409, "{path}: {body}");
        let message = error_message(&body);
        assert!(
            message.contains(&format!("namespaces/{ns} (deleting it would delete"))
                && message.contains(&format!("configmaps/theirs in namespace {ns}")),
            "{message}"
        );
    }
    assert!(
        c.get_json(&["namespace", &ns]).unwrap()["metadata"]["deletionTimestamp"].is_null(),
        "the refused rollback deleted the namespace"
    );
    let plan = api
        .ok(
            "POST",
            &format!("/api/v1/actions/{id}/rollback?dryRun=true&force=true"),
            &creator_token,
        )
        .await;
    assert_eq!(result_named(&plan, &ns)["outcome"], "planned", "{plan:#}");
    // The other user's session undone first: then the namespace is the
    // creator's alone again.
    let sessions = api
        .ok(
            "GET",
            &format!("/api/v1/actions?user={other}"),
            &other_token,
        )
        .await;
    let session = sessions["actions"][0]["id"].as_str().unwrap().to_string();
    let undone = api
        .ok(
            "POST",
            &format!("/api/v1/actions/{session}/rollback"),
            &other_token,
        )
        .await;
    assert_eq!(undone["state"], "rolled-back", "{undone:#}");
    let report = api
        .ok(
            "POST",
            &format!("/api/v1/actions/{id}/rollback"),
            &creator_token,
        )
        .await;
    assert_eq!(report["state"], "rolled-back", "{report:#}");
    assert!(
        c.get_json(&["namespace", &ns])
            .is_none_or(|n| !n["metadata"]["deletionTimestamp"].is_null())
    );
}

/// A rollback asked for right after the action deleted an owner: the
/// garbage collector has not deleted the dependents yet. The rollback waits
/// for it (their deletes join the action) before it plans, so a dependent
/// comes back pointing at its recreated owner, instead of being left for
/// the collector to delete once the owner has its new uid.
#[tokio::test(flavor = "multi_thread")]
async fn a_rollback_right_after_deleting_an_owner_keeps_its_dependents() {
    let c = cluster_with_controllers();
    let sb = namespace_snapback();
    let api = sb.api(c);
    let user = "user10";
    let token = c.token(user);
    let ns = c.namespace("gc-quick", &[]);
    c.kubectl_ok(&[
        "-n",
        &ns,
        "create",
        "deployment",
        "parent",
        "--image=nginx:1.25",
    ]);
    let parent = c.get_json(&["-n", &ns, "deployment", "parent"]).unwrap();
    let uid = parent["metadata"]["uid"].as_str().unwrap().to_string();
    c.kubectl_apply_str(&format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: child\n  namespace: {ns}\n  ownerReferences:\n  - {{apiVersion: apps/v1, kind: Deployment, name: parent, uid: {uid}}}\ndata: {{important: \"yes\"}}\n"
    ));
    let id = format!("gcq-{:06x}", rand::random::<u32>() & 0xffffff);
    api.open_action(&token, &id).await;
    c.kubectl_as_ok(
        user,
        &["-n", &ns, "delete", "deployment", "parent", "--wait=false"],
    );
    api.ok("POST", &format!("/api/v1/actions/{id}/complete"), &token)
        .await;
    let report = api
        .ok("POST", &format!("/api/v1/actions/{id}/rollback"), &token)
        .await;
    assert_eq!(report["state"], "rolled-back", "{report:#}");
    // Long enough for the collector to act on a dependent of a gone uid.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let parent = c
        .get_json(&["-n", &ns, "deployment", "parent"])
        .expect("parent back");
    let child = c
        .get_json(&["-n", &ns, "configmap", "child"])
        .unwrap_or_else(|| panic!("the child is gone: {report:#}"));
    assert_eq!(
        child["metadata"]["ownerReferences"][0]["uid"], parent["metadata"]["uid"],
        "{child:#}"
    );
}

/// The diff's `patch` is what a rollback applies: nothing for an object
/// that is `unchanged`, though the token controller gave the recreated
/// ServiceAccount a new token (the diff text still shows that).
#[tokio::test(flavor = "multi_thread")]
async fn an_unchanged_object_has_an_empty_patch_in_the_diff() {
    let c = cluster_with_controllers();
    let sb = namespace_snapback();
    let api = sb.api(c);
    let user = "user11";
    let token = c.token(user);
    let ns = c.namespace("sa-diff", &[]);
    c.kubectl_ok(&["-n", &ns, "create", "serviceaccount", "bot"]);
    let has_token = || {
        c.get_json(&["-n", &ns, "serviceaccount", "bot"])
            .is_some_and(|sa| sa["secrets"].as_array().is_some_and(|s| !s.is_empty()))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !has_token() {
        assert!(std::time::Instant::now() < deadline, "no token");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let id = format!("sa-diff-{:06x}", rand::random::<u32>() & 0xffffff);
    api.open_action(&token, &id).await;
    c.kubectl_as_ok(user, &["-n", &ns, "delete", "serviceaccount", "bot"]);
    api.ok("POST", &format!("/api/v1/actions/{id}/complete"), &token)
        .await;
    let report = api
        .ok("POST", &format!("/api/v1/actions/{id}/rollback"), &token)
        .await;
    assert_eq!(report["state"], "rolled-back", "{report:#}");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !has_token() {
        assert!(std::time::Instant::now() < deadline, "no new token");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let diff = api
        .ok("GET", &format!("/api/v1/actions/{id}/diff"), &token)
        .await;
    let bot = diff["objects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "bot")
        .unwrap_or_else(|| panic!("{diff:#}"));
    assert_eq!(bot["change"], "unchanged", "{diff:#}");
    assert_eq!(bot["patch"], serde_json::json!([]), "{diff:#}");
}
