#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
//! A chart-like application of the kinds real charts ship (ServiceAccount,
//! RBAC, ConfigMap, Services, Deployment, StatefulSet with a claim template,
//! CronJob, HorizontalPodAutoscaler, PodDisruptionBudget, Ingress,
//! NetworkPolicy), in the API versions a v1.20 API server serves: changed,
//! scaled, partly deleted and extended by one user through `kubectl`, rolled
//! back through the HTTP API, then redone by rolling the rollback back.

mod support;

use std::collections::BTreeMap;

use serde_json::{Value, json};
use support::*;

const KINDS: &[(&str, &str)] = &[
    ("serviceaccount", "shop"),
    ("role", "shop-reader"),
    ("rolebinding", "shop-reader"),
    ("configmap", "shop-config"),
    ("service", "shop"),
    ("service", "shop-db"),
    ("deployment", "shop"),
    ("statefulset", "shop-db"),
    ("cronjob", "shop-cleanup"),
    ("horizontalpodautoscaler", "shop"),
    ("poddisruptionbudget", "shop"),
    ("ingress", "shop"),
    ("networkpolicy", "shop"),
    ("configmap", "shop-flags"),
];

fn app(ns: &str, log_level: &str, image: &str, port: u32, max_replicas: u32) -> String {
    format!(
        r#"apiVersion: v1
kind: ServiceAccount
metadata: {{name: shop, namespace: {ns}, labels: {{app.kubernetes.io/name: shop}}}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: shop-reader, namespace: {ns}}}
rules:
  - apiGroups: [""]
    resources: [configmaps]
    verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: shop-reader, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: shop-reader}}
subjects: [{{kind: ServiceAccount, name: shop, namespace: {ns}}}]
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: shop-config, namespace: {ns}, labels: {{app.kubernetes.io/name: shop}}}}
data:
  LOG_LEVEL: {log_level}
  shop.yaml: |
    currency: EUR
    checkout: true
---
apiVersion: v1
kind: Service
metadata: {{name: shop, namespace: {ns}, labels: {{app: shop}}}}
spec:
  selector: {{app: shop}}
  ports: [{{name: http, port: {port}, targetPort: http}}]
---
apiVersion: v1
kind: Service
metadata: {{name: shop-db, namespace: {ns}}}
spec:
  clusterIP: None
  selector: {{app: shop-db}}
  ports: [{{name: pg, port: 5432}}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: shop, namespace: {ns}, labels: {{app: shop}}}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: shop}}}}
  strategy: {{type: RollingUpdate, rollingUpdate: {{maxSurge: 1, maxUnavailable: 0}}}}
  template:
    metadata:
      labels: {{app: shop}}
      annotations: {{prometheus.io/scrape: "true"}}
    spec:
      serviceAccountName: shop
      securityContext: {{runAsNonRoot: true, runAsUser: 101}}
      containers:
        - name: web
          image: "{image}"
          ports: [{{name: http, containerPort: 8080}}]
          envFrom: [{{configMapRef: {{name: shop-config}}}}]
          resources:
            requests: {{cpu: 100m, memory: 64Mi}}
            limits: {{memory: 128Mi}}
          readinessProbe: {{httpGet: {{path: /healthz, port: http}}, periodSeconds: 5}}
          volumeMounts: [{{name: config, mountPath: /etc/shop}}]
      volumes: [{{name: config, configMap: {{name: shop-config}}}}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: shop-db, namespace: {ns}}}
spec:
  serviceName: shop-db
  replicas: 1
  selector: {{matchLabels: {{app: shop-db}}}}
  template:
    metadata: {{labels: {{app: shop-db}}}}
    spec:
      containers:
        - name: postgres
          image: postgres:13
          ports: [{{name: pg, containerPort: 5432}}]
          volumeMounts: [{{name: data, mountPath: /var/lib/postgresql/data}}]
  volumeClaimTemplates:
    - metadata: {{name: data}}
      spec:
        accessModes: [ReadWriteOnce]
        resources: {{requests: {{storage: 1Gi}}}}
---
apiVersion: batch/v1beta1
kind: CronJob
metadata: {{name: shop-cleanup, namespace: {ns}}}
spec:
  schedule: "0 3 * * *"
  concurrencyPolicy: Forbid
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: OnFailure
          serviceAccountName: shop
          containers: [{{name: cleanup, image: "busybox:1.36", args: [sh, -c, "echo cleaning"]}}]
---
apiVersion: autoscaling/v2beta2
kind: HorizontalPodAutoscaler
metadata: {{name: shop, namespace: {ns}}}
spec:
  scaleTargetRef: {{apiVersion: apps/v1, kind: Deployment, name: shop}}
  minReplicas: 2
  maxReplicas: {max_replicas}
  metrics:
    - type: Resource
      resource: {{name: cpu, target: {{type: Utilization, averageUtilization: 80}}}}
---
apiVersion: policy/v1beta1
kind: PodDisruptionBudget
metadata: {{name: shop, namespace: {ns}}}
spec:
  minAvailable: 1
  selector: {{matchLabels: {{app: shop}}}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {{name: shop, namespace: {ns}, annotations: {{nginx.ingress.kubernetes.io/proxy-body-size: 8m}}}}
spec:
  rules:
    - host: shop.example.com
      http:
        paths:
          - path: /
            pathType: Prefix
            backend: {{service: {{name: shop, port: {{name: http}}}}}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: shop, namespace: {ns}}}
spec:
  podSelector: {{matchLabels: {{app: shop}}}}
  policyTypes: [Ingress]
  ingress: [{{from: [{{podSelector: {{}}}}], ports: [{{port: 8080}}]}}]
"#
    )
}

/// The kinds deleted inside the action (`kubectl delete -f` of part of the chart).
fn deleted_part(ns: &str) -> String {
    app(ns, "debug", "nginx:1.26", 8081, 8)
        .split("\n---\n")
        .filter(|doc| {
            [
                "kind: ServiceAccount",
                "kind: Role\n",
                "kind: RoleBinding",
                "kind: StatefulSet",
                "kind: CronJob",
                "kind: PodDisruptionBudget",
                "kind: Ingress",
                "kind: NetworkPolicy",
            ]
            .iter()
            .any(|k| doc.contains(k))
        })
        .collect::<Vec<_>>()
        .join("\n---\n")
}

fn state(c: &Cluster, ns: &str) -> BTreeMap<String, Option<Value>> {
    KINDS
        .iter()
        .map(|(kind, name)| {
            let out = c.kubectl("admin", &["-n", ns, "get", kind, name, "-o", "json"]);
            let v = out
                .status
                .success()
                .then(|| content(&serde_json::from_slice(&out.stdout).unwrap()));
            (format!("{kind}/{name}"), v)
        })
        .collect()
}

fn differences(
    want: &BTreeMap<String, Option<Value>>,
    got: &BTreeMap<String, Option<Value>>,
) -> Vec<String> {
    want.iter()
        .filter(|(k, v)| got.get(*k) != Some(v))
        .map(|(k, v)| format!("{k}:\n  want {v:?}\n  got  {:?}", got.get(k)))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chart_changed_scaled_and_partly_deleted_rolls_back_and_redoes() {
    let c = cluster();
    let sb = shared_snapback();
    let api = sb.api(c);
    let user = "alice";
    c.grant_api(user);
    c.kubectl_ok(&[
        "create",
        "clusterrolebinding",
        "alice-cluster-admin",
        "--clusterrole=cluster-admin",
        "--user=alice",
    ]);
    let token = c.token(user);
    let ns = c.namespace("shop", &[]);
    c.apply_as("admin", &app(&ns, "info", "nginx:1.25", 80, 5));
    let before = state(c, &ns);
    assert!(before["configmap/shop-flags"].is_none());
    assert!(
        before
            .iter()
            .filter(|(k, _)| *k != "configmap/shop-flags")
            .all(|(_, v)| v.is_some()),
        "{before:#?}"
    );

    // The action: an upgrade, a scale, part of the chart deleted, one new object.
    let id = format!("chart-{:06x}", rand::random::<u32>() & 0xffffff);
    api.open_action(&token, &id).await;
    c.apply_as(user, &app(&ns, "debug", "nginx:1.26", 8081, 8));
    c.kubectl_as_ok(
        user,
        &["-n", &ns, "scale", "deployment", "shop", "--replicas=4"],
    );
    let out = c.kubectl_stdin(user, &["delete", "-f", "-"], &deleted_part(&ns));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    c.kubectl_as_ok(
        user,
        &[
            "-n",
            &ns,
            "create",
            "configmap",
            "shop-flags",
            "--from-literal=beta=on",
        ],
    );
    api.ok("POST", &format!("/api/v1/actions/{id}/complete"), &token)
        .await;
    let after = state(c, &ns);
    for (k, v) in &after {
        let deleted = [
            "serviceaccount/",
            "role/",
            "rolebinding/",
            "statefulset/",
            "cronjob/",
            "poddisruptionbudget/",
            "ingress/",
            "networkpolicy/",
        ]
        .iter()
        .any(|p| k.starts_with(p));
        assert_eq!(v.is_none(), deleted, "{k}: {v:?}");
    }
    assert_eq!(
        after["deployment/shop"].as_ref().unwrap()["spec"]["replicas"],
        4
    );

    // Undo.
    let report = api
        .ok("POST", &format!("/api/v1/actions/{id}/rollback"), &token)
        .await;
    assert_eq!(report["state"], "rolled-back", "{report:#}");
    assert_eq!(report["counts"]["failed"], 0, "{report:#}");
    assert_eq!(report["counts"]["conflict"], 0, "{report:#}");
    let undone = state(c, &ns);
    let diff = differences(&before, &undone);
    assert!(
        diff.is_empty(),
        "not as before the action:\n{}",
        diff.join("\n")
    );

    // Idempotent: every recreated or replaced object is recognised as
    // being in its prior state.
    let again = api
        .ok("POST", &format!("/api/v1/actions/{id}/rollback"), &token)
        .await;
    let not_unchanged = again["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["outcome"] != "unchanged")
        .collect::<Vec<_>>();
    assert!(not_unchanged.is_empty(), "{not_unchanged:#?}");
    assert_eq!(differences(&before, &state(c, &ns)), Vec::<String>::new());

    // Redo: the rollback is an action of its own.
    let rollback_id = report["rollbackAction"].as_str().unwrap().to_string();
    let redo = api
        .ok(
            "POST",
            &format!("/api/v1/actions/{rollback_id}/rollback"),
            &token,
        )
        .await;
    assert_eq!(redo["state"], "rolled-back", "{redo:#}");
    let redone = state(c, &ns);
    let diff = differences(&after, &redone);
    assert!(
        diff.is_empty(),
        "not as after the action:\n{}",
        diff.join("\n")
    );
}

/// An object the action deleted whose deletion has not finished (a
/// finalizer, as a namespace emptying or a claim in use has): the rollback
/// waits for it to be gone, then creates it anew.
#[tokio::test(flavor = "multi_thread")]
async fn an_object_still_being_deleted_is_recreated_once_its_deletion_finishes() {
    let c = cluster();
    let sb = shared_snapback();
    let api = sb.api(c);
    let user = "bob";
    c.grant_api(user);
    let token = c.token(user);
    let ns = c.namespace("finalizer", &[user]);
    c.apply_as(
        "admin",
        &format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: held, namespace: {ns}, finalizers: [example.com/hold]}}\ndata: {{v: before}}\n"
        ),
    );
    let id = format!("held-{:06x}", rand::random::<u32>() & 0xffffff);
    api.open_action(&token, &id).await;
    c.kubectl_as_ok(
        user,
        &["-n", &ns, "delete", "configmap", "held", "--wait=false"],
    );
    api.ok("POST", &format!("/api/v1/actions/{id}/complete"), &token)
        .await;
    let old_uid = c.kubectl_ok(&[
        "-n",
        &ns,
        "get",
        "configmap",
        "held",
        "-o",
        "jsonpath={.metadata.uid}",
    ]);
    let rollback = {
        let api = sb.api(c);
        let (token, id) = (token.clone(), id.clone());
        tokio::spawn(async move {
            api.call(
                "POST",
                &format!("/api/v1/actions/{id}/rollback"),
                Some(&token),
                None,
            )
            .await
        })
    };
    // Whoever holds the finalizer lets go a little later (after the 3 s a
    // rollback right after a deletion waits for the garbage collector, so
    // that it plans while the object is still held).
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    assert!(
        !rollback.is_finished(),
        "the rollback waits for the deletion"
    );
    let_go(c, &ns);
    let (status, report) = rollback.await.unwrap();
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["state"], "rolled-back", "{report:#}");
    assert_eq!(report["results"][0]["operation"], "create", "{report:#}");
    assert!(
        report["results"][0]["message"]
            .as_str()
            .unwrap()
            .contains("once its deletion finished"),
        "{report:#}"
    );
    let now: Value =
        serde_json::from_str(&c.kubectl_ok(&["-n", &ns, "get", "configmap", "held", "-o", "json"]))
            .unwrap();
    assert_eq!(now["data"]["v"], "before");
    assert_ne!(now["metadata"]["uid"], old_uid.as_str());
    // Its prior state had the finalizer: so does the restored object.
    assert_eq!(now["metadata"]["finalizers"], json!(["example.com/hold"]));
    let_go(c, &ns);
}

/// What the holder of the finalizer does once it is done.
fn let_go(c: &Cluster, ns: &str) {
    c.kubectl_ok(&[
        "-n",
        ns,
        "patch",
        "configmap",
        "held",
        "--type=json",
        "-p",
        r#"[{"op": "remove", "path": "/metadata/finalizers"}]"#,
    ]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_change_after_its_session_was_rolled_back_starts_a_new_action() {
    let c = cluster();
    let sb = shared_snapback();
    let api = sb.api(c);
    let user = "carol";
    c.grant_api(user);
    let token = c.token(user);
    let ns = c.namespace("again", &[user]);
    c.kubectl_as_ok(user, &["-n", &ns, "create", "configmap", "first"]);
    let session = eventually(
        "carol's session",
        std::time::Duration::from_secs(10),
        || async {
            let list = api
                .ok("GET", &format!("/api/v1/actions?user={user}"), &token)
                .await;
            list["actions"][0]["id"].as_str().map(str::to_string)
        },
    )
    .await;
    let report = api
        .ok(
            "POST",
            &format!("/api/v1/actions/{session}/rollback"),
            &token,
        )
        .await;
    assert_eq!(report["state"], "rolled-back", "{report:#}");
    // Well within --session-idle (the webhook hears of the rollback
    // through its watch on the records, within moments): before, this
    // joined the rolled-back session, and its next rollback would have
    // deleted it.
    std::thread::sleep(std::time::Duration::from_secs(1));
    c.kubectl_as_ok(user, &["-n", &ns, "create", "configmap", "second"]);
    let detail = api
        .ok("GET", &format!("/api/v1/actions/{session}"), &token)
        .await;
    assert!(
        !detail["changes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|ch| ch["name"] == "second"),
        "{detail:#}"
    );
    let list = api
        .ok("GET", &format!("/api/v1/actions?user={user}"), &token)
        .await;
    let newest = list["actions"][0]["id"].as_str().unwrap();
    assert_ne!(newest, session, "{list:#}");
    assert_eq!(list["actions"][0]["state"], "open", "{list:#}");
}

/// `kubectl delete crd` deletes every custom resource of it, past admission
/// (the API server's finalizer removes them from storage): snapback reads
/// them when the deletion is admitted, so the rollback brings back the
/// definition *and* its resources.
#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_definition_comes_back_with_the_resources_it_took_along() {
    let c = cluster();
    let sb = shared_snapback();
    let api = sb.api(c);
    let user = "user1";
    c.grant_api(user);
    c.grant_cluster_edit(user);
    let token = c.token(user);
    let crd = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: gizmos.example.com
spec:
  group: example.com
  scope: Namespaced
  names: {plural: gizmos, singular: gizmo, kind: Gizmo}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
"#;
    c.kubectl_apply_str(crd);
    c.wait_established("gizmos.example.com");
    let (ns1, ns2) = (c.namespace("gizmo", &[user]), c.namespace("gizmo", &[user]));
    c.apply_as(
        "admin",
        &format!(
            "apiVersion: example.com/v1\nkind: Gizmo\nmetadata: {{name: g1, namespace: {ns1}, labels: {{tier: gold}}}}\nspec: {{size: 3, colour: \"yes\"}}\n---\napiVersion: example.com/v1\nkind: Gizmo\nmetadata: {{name: g2, namespace: {ns2}}}\nspec: {{size: 5}}\n"
        ),
    );
    let id = format!("gizmos-{:06x}", rand::random::<u32>() & 0xffffff);
    api.open_action(&token, &id).await;
    c.kubectl_as_ok(user, &["delete", "crd", "gizmos.example.com"]);
    api.ok("POST", &format!("/api/v1/actions/{id}/complete"), &token)
        .await;
    assert!(
        !c.kubectl("admin", &["get", "crd", "gizmos.example.com"])
            .status
            .success()
    );
    let detail = api
        .ok("GET", &format!("/api/v1/actions/{id}"), &token)
        .await;
    let changed = change_list(&detail);
    assert_eq!(
        changed,
        [
            "delete customresourcedefinitions/gizmos.example.com",
            "delete gizmos/g1",
            "delete gizmos/g2"
        ],
        "{detail:#}"
    );

    // The dry run cannot ask the API server about resources of a kind it
    // does not serve yet: planned, like the rest (not "would fail").
    let plan = api
        .ok(
            "POST",
            &format!("/api/v1/actions/{id}/rollback?dryRun=true"),
            &token,
        )
        .await;
    assert_eq!(nonzero(&plan["counts"]), json!({"planned": 3}), "{plan:#}");
    let report = api
        .ok("POST", &format!("/api/v1/actions/{id}/rollback"), &token)
        .await;
    assert_eq!(report["state"], "rolled-back", "{report:#}");
    assert_eq!(
        nonzero(&report["counts"]),
        json!({"restored": 3}),
        "{report:#}"
    );
    for (ns, name, size) in [(&ns1, "g1", 3), (&ns2, "g2", 5)] {
        let out = c.kubectl_ok(&["-n", ns, "get", "gizmo", name, "-o", "json"]);
        let g: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(g["spec"]["size"], size, "{g}");
    }
    let g1: Value =
        serde_json::from_str(&c.kubectl_ok(&["-n", &ns1, "get", "gizmo", "g1", "-o", "json"]))
            .unwrap();
    assert_eq!(g1["spec"]["colour"], "yes");
    assert_eq!(g1["metadata"]["labels"]["tier"], "gold");
}

/// A definition made through `apiextensions.k8s.io/v1beta1` without a schema
/// (as calico's in Kubernetes 1.20's addons) cannot be created through `v1`:
/// its rollback creates it through `v1beta1`, then its resources, and the
/// prior manifests give that form too.
#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_v1beta1_definition_without_a_schema_comes_back() {
    let c = cluster();
    let sb = shared_snapback();
    let api = sb.api(c);
    let user = "user3";
    c.grant_api(user);
    // Deleting a definition deletes its resources: the deleting user must
    // be able to read them (snapback reads them as that user).
    c.kubectl_ok(&[
        "create",
        "clusterrolebinding",
        "user3-cluster-admin",
        "--clusterrole=cluster-admin",
        "--user=user3",
    ]);
    let token = c.token(user);
    c.kubectl_apply_str(
        r#"
apiVersion: apiextensions.k8s.io/v1beta1
kind: CustomResourceDefinition
metadata:
  name: ippools.legacy.example.com
spec:
  group: legacy.example.com
  scope: Cluster
  version: v1
  names: {plural: ippools, singular: ippool, kind: IPPool}
  additionalPrinterColumns:
    - {name: CIDR, type: string, JSONPath: .spec.cidr}
"#,
    );
    c.wait_established("ippools.legacy.example.com");
    c.kubectl_apply_str(
        "apiVersion: legacy.example.com/v1\nkind: IPPool\nmetadata: {name: default-pool}\nspec: {cidr: 192.168.0.0/16, anything: {goes: [1, 2]}}\n",
    );
    let id = format!("legacy-{:06x}", rand::random::<u32>() & 0xffffff);
    api.open_action(&token, &id).await;
    c.kubectl_as_ok(user, &["delete", "crd", "ippools.legacy.example.com"]);
    api.ok("POST", &format!("/api/v1/actions/{id}/complete"), &token)
        .await;

    let manifests = api
        .call(
            "GET",
            &format!("/api/v1/actions/{id}/manifests"),
            Some(&token),
            None,
        )
        .await
        .1;
    let manifests = manifests.as_str().unwrap().to_string();
    assert!(
        manifests.contains("apiVersion: apiextensions.k8s.io/v1beta1"),
        "{manifests}"
    );
    let plan = api
        .ok(
            "POST",
            &format!("/api/v1/actions/{id}/rollback?dryRun=true"),
            &token,
        )
        .await;
    assert_eq!(plan["counts"]["failed"], 0, "{plan:#}");
    let report = api
        .ok("POST", &format!("/api/v1/actions/{id}/rollback"), &token)
        .await;
    assert_eq!(report["state"], "rolled-back", "{report:#}");
    assert_eq!(
        nonzero(&report["counts"]),
        json!({"restored": 2}),
        "{report:#}"
    );
    let pool: Value = serde_json::from_str(&c.kubectl_ok(&[
        "get",
        "ippools.legacy.example.com",
        "default-pool",
        "-o",
        "json",
    ]))
    .unwrap();
    assert_eq!(pool["spec"]["anything"], json!({"goes": [1, 2]}), "{pool}");
    let crd: Value = serde_json::from_str(&c.kubectl_ok(&[
        "get",
        "crd",
        "ippools.legacy.example.com",
        "-o",
        "json",
    ]))
    .unwrap();
    assert_eq!(crd["spec"]["preserveUnknownFields"], true, "{crd}");
    assert_eq!(
        crd["spec"]["versions"][0]["additionalPrinterColumns"][0]["jsonPath"], ".spec.cidr",
        "{crd}"
    );
    c.kubectl_ok(&["delete", "crd", "ippools.legacy.example.com"]);
}

/// An object the action created, deleted and created again by someone else
/// since (`kubectl replace --force`), is a change after the action: 409,
/// and forced, it is still not deleted (it is not the action's object).
#[tokio::test(flavor = "multi_thread")]
async fn an_object_created_again_after_the_action_is_a_conflict() {
    let c = cluster();
    let sb = shared_snapback();
    let api = sb.api(c);
    let token = c.token("admin");
    let ns = c.namespace("again", &[]);
    let id = format!("again-{:06x}", rand::random::<u32>() & 0xffffff);
    c.apply_as("admin", &format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: foo, namespace: {ns}, annotations: {{snapback.io/action: {id}}}}}\ndata: {{v: \"1\"}}\n"));
    // creationTimestamp has whole seconds: made again in a later second.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let out = c.kubectl_stdin("admin", &["replace", "--force", "-f", "-"], &format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: foo, namespace: {ns}}}\ndata: {{v: \"2\"}}\n"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, body) = api
        .call(
            "POST",
            &format!("/api/v1/actions/{id}/rollback"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, 409, "{body:#}");
    assert!(error_message(&body).contains("configmaps/foo"), "{body:#}");
    let report = api
        .ok(
            "POST",
            &format!("/api/v1/actions/{id}/rollback?force=true"),
            &token,
        )
        .await;
    assert_eq!(report["results"][0]["outcome"], "skipped", "{report:#}");
    let foo: Value =
        serde_json::from_str(&c.kubectl_ok(&["-n", &ns, "get", "configmap", "foo", "-o", "json"]))
            .unwrap();
    assert_eq!(foo["data"]["v"], "2");
}

/// `kubectl cordon`, `taint` and `label` of a Node are undone: the API
/// server (1.20) sends a Node PATCH's `oldObject` already patched, so the
/// prior state is read as of its resourceVersion instead.
#[tokio::test(flavor = "multi_thread")]
async fn node_cordon_taint_and_label_are_undone() {
    let c = cluster();
    let sb = shared_snapback();
    let api = sb.api(c);
    let user = "user4";
    c.grant_api(user);
    c.kubectl_ok(&[
        "create",
        "clusterrolebinding",
        "user4-cluster-admin",
        "--clusterrole=cluster-admin",
        "--user=user4",
    ]);
    let token = c.token(user);
    let node = format!("node-{:06x}", rand::random::<u32>() & 0xffffff);
    c.kubectl_apply_str(&format!(
        "apiVersion: v1\nkind: Node\nmetadata: {{name: {node}, labels: {{zone: a}}}}\nspec: {{}}\n"
    ));
    let before: Value =
        serde_json::from_str(&c.kubectl_ok(&["get", "node", &node, "-o", "json"])).unwrap();
    let id = format!("nodes-{:06x}", rand::random::<u32>() & 0xffffff);
    api.open_action(&token, &id).await;
    c.kubectl_as_ok(user, &["cordon", &node]);
    c.kubectl_as_ok(
        user,
        &["taint", "node", &node, "dedicated=infra:NoSchedule"],
    );
    c.kubectl_as_ok(
        user,
        &[
            "label",
            "node",
            &node,
            "role=infra",
            "zone=b",
            "--overwrite",
        ],
    );
    api.ok("POST", &format!("/api/v1/actions/{id}/complete"), &token)
        .await;
    let report = api
        .ok("POST", &format!("/api/v1/actions/{id}/rollback"), &token)
        .await;
    assert_eq!(report["state"], "rolled-back", "{report:#}");
    let after: Value =
        serde_json::from_str(&c.kubectl_ok(&["get", "node", &node, "-o", "json"])).unwrap();
    assert_eq!(after["spec"], before["spec"], "{after:#}");
    assert_eq!(
        after["metadata"]["labels"], before["metadata"]["labels"],
        "{after:#}"
    );
    c.kubectl_ok(&["delete", "node", &node]);
}

/// One object changed through two API versions in one action (an Ingress
/// applied as v1beta1, then labelled through v1, kubectl's preferred
/// version) is not a conflict to the action's rollback.
#[tokio::test(flavor = "multi_thread")]
async fn an_object_changed_through_two_api_versions_rolls_back_without_a_conflict() {
    changed_through_two_api_versions("networking.k8s.io/v1beta1", "user5").await;
}

/// The same through two API groups: up to Kubernetes 1.21 an Ingress is
/// served as `extensions/v1beta1` too (and the namespace controller
/// deletes through either). Both are one object with one history.
#[tokio::test(flavor = "multi_thread")]
async fn an_object_changed_through_two_api_groups_rolls_back_without_a_conflict() {
    changed_through_two_api_versions("extensions/v1beta1", "user7").await;
}

async fn changed_through_two_api_versions(api_version: &str, user: &str) {
    let c = cluster();
    let sb = shared_snapback();
    let api = sb.api(c);
    c.grant_api(user);
    let ns = c.namespace("versions", &[user]);
    let token = c.token(user);
    let ingress = |note: &str| {
        format!(
            "apiVersion: {api_version}\nkind: Ingress\nmetadata:\n  name: web\n  namespace: {ns}\n  annotations: {{note: {note}}}\nspec:\n  backend: {{serviceName: web, servicePort: 80}}\n"
        )
    };
    c.apply_as("admin", &ingress("before"));
    let read = || -> Value {
        serde_json::from_str(&c.kubectl_ok(&[
            "-n",
            &ns,
            "get",
            "ingresses.v1.networking.k8s.io",
            "web",
            "-o",
            "json",
        ]))
        .unwrap()
    };
    let before = read();
    let id = format!("versions-{:06x}", rand::random::<u32>() & 0xffffff);
    api.open_action(&token, &id).await;
    c.apply_as(user, &ingress("after"));
    c.kubectl_as_ok(user, &["-n", &ns, "label", "ingress", "web", "team=x"]);
    api.ok("POST", &format!("/api/v1/actions/{id}/complete"), &token)
        .await;
    let detail = api
        .ok("GET", &format!("/api/v1/actions/{id}"), &token)
        .await;
    let versions: std::collections::BTreeSet<String> = detail["changes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|ch| {
            Some(format!(
                "{}/{}",
                ch["group"].as_str()?,
                ch["version"].as_str()?
            ))
        })
        .collect();
    assert_eq!(versions.len(), 2, "{detail:#}");
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
    let after = read();
    assert_eq!(
        after["metadata"]["annotations"]["note"], "before",
        "{after:#}"
    );
    assert_eq!(
        after["metadata"]["labels"], before["metadata"]["labels"],
        "{after:#}"
    );
    assert_eq!(after["spec"], before["spec"]);
}

/// A Deployment scaled by someone else after the action (an autoscaler,
/// another operator) keeps that scale when the action (which changed its
/// image) is rolled back; the image comes back.
#[tokio::test(flavor = "multi_thread")]
async fn a_scale_since_the_action_is_kept_by_its_rollback() {
    let c = cluster();
    let sb = shared_snapback();
    let api = sb.api(c);
    let user = "user6";
    c.grant_api(user);
    let ns = c.namespace("scaled", &[user]);
    let token = c.token(user);
    c.kubectl_ok(&[
        "-n",
        &ns,
        "create",
        "deployment",
        "hp",
        "--image=app:1",
        "--replicas=2",
    ]);
    let id = format!("img-{:06x}", rand::random::<u32>() & 0xffffff);
    api.open_action(&token, &id).await;
    c.kubectl_as_ok(
        user,
        &["-n", &ns, "set", "image", "deployment/hp", "app=app:2"],
    );
    api.ok("POST", &format!("/api/v1/actions/{id}/complete"), &token)
        .await;
    c.kubectl_ok(&["-n", &ns, "scale", "deployment", "hp", "--replicas=9"]);
    let report = api
        .ok("POST", &format!("/api/v1/actions/{id}/rollback"), &token)
        .await;
    assert_eq!(report["state"], "rolled-back", "{report:#}");
    let dep: Value =
        serde_json::from_str(&c.kubectl_ok(&["-n", &ns, "get", "deployment", "hp", "-o", "json"]))
            .unwrap();
    assert_eq!(dep["spec"]["replicas"], 9, "{dep:#}");
    assert_eq!(
        dep["spec"]["template"]["spec"]["containers"][0]["image"], "app:1",
        "{dep:#}"
    );
}

/// An object restored before its owner (a ConfigMap owned by a Deployment:
/// config maps come back in an earlier wave) gets its owner reference back,
/// pointing at the owner's new uid, once the owner is restored.
#[tokio::test(flavor = "multi_thread")]
async fn owner_references_are_given_back_once_the_owner_is_restored() {
    let c = cluster();
    let sb = shared_snapback();
    let api = sb.api(c);
    let user = "user2";
    c.grant_api(user);
    let token = c.token(user);
    let ns = c.namespace("owned", &[user]);
    let uid = owner_and_child(c, &ns, user);
    let id = format!("owned-{:06x}", rand::random::<u32>() & 0xffffff);
    api.open_action(&token, &id).await;
    c.kubectl_as_ok(user, &["-n", &ns, "delete", "configmap", "child"]);
    c.kubectl_as_ok(user, &["-n", &ns, "delete", "deployment", "owner"]);
    api.ok("POST", &format!("/api/v1/actions/{id}/complete"), &token)
        .await;
    let report = api
        .ok("POST", &format!("/api/v1/actions/{id}/rollback"), &token)
        .await;
    assert_eq!(report["state"], "rolled-back", "{report:#}");
    assert!(
        result_named(&report, "child")["message"]
            .as_str()
            .unwrap()
            .contains("given back"),
        "{report:#}"
    );
    let new_uid = c.kubectl_ok(&[
        "-n",
        &ns,
        "get",
        "deployment",
        "owner",
        "-o",
        "jsonpath={.metadata.uid}",
    ]);
    assert_ne!(new_uid, uid);
    let child = c.get_json(&["-n", &ns, "configmap", "child"]).unwrap();
    assert_eq!(
        child["metadata"]["ownerReferences"][0]["uid"],
        new_uid.as_str(),
        "{child}"
    );
    assert_eq!(child["metadata"]["ownerReferences"][0]["name"], "owner");
}

/// A Deployment `owner` and a ConfigMap `child` it owns (no controller
/// owns the child), made by `user`; the owner's uid.
fn owner_and_child(c: &Cluster, ns: &str, user: &str) -> String {
    c.kubectl_as_ok(
        user,
        &[
            "-n",
            ns,
            "create",
            "deployment",
            "owner",
            "--image=nginx:1.25",
        ],
    );
    let uid = c.kubectl_ok(&[
        "-n",
        ns,
        "get",
        "deployment",
        "owner",
        "-o",
        "jsonpath={.metadata.uid}",
    ]);
    c.apply_as(
        user,
        &format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: child\n  namespace: {ns}\n  ownerReferences: [{{apiVersion: apps/v1, kind: Deployment, name: owner, uid: {uid}}}]\ndata: {{k: v}}\n"
        ),
    );
    uid
}

/// An owner the caller may not read: whether it exists is unknown, and a
/// reference kept unverified could name a gone owner (the garbage collector
/// then deletes the restored object), so it is dropped, and the result says
/// it could not be read (not that the owner is missing).
#[tokio::test(flavor = "multi_thread")]
async fn an_owner_reference_the_caller_cannot_check_is_dropped_saying_why() {
    let c = cluster();
    let sb = shared_snapback();
    let api = sb.api(c);
    let user = "user11";
    c.grant_api(user);
    let token = c.token(user);
    let ns = c.namespace("unreadable-owner", &[]);
    // The user may do anything with config maps here, and nothing else.
    c.kubectl_ok(&[
        "-n",
        &ns,
        "create",
        "role",
        "configmaps-only",
        "--verb=*",
        "--resource=configmaps",
    ]);
    c.kubectl_ok(&[
        "-n",
        &ns,
        "create",
        "rolebinding",
        "configmaps-only",
        "--role=configmaps-only",
        &format!("--user={user}"),
    ]);
    owner_and_child(c, &ns, "admin");
    let id = format!("unreadable-{:06x}", rand::random::<u32>() & 0xffffff);
    api.open_action(&token, &id).await;
    c.kubectl_as_ok(user, &["-n", &ns, "delete", "configmap", "child"]);
    api.ok("POST", &format!("/api/v1/actions/{id}/complete"), &token)
        .await;
    let report = api
        .ok("POST", &format!("/api/v1/actions/{id}/rollback"), &token)
        .await;
    assert_eq!(report["state"], "rolled-back", "{report:#}");
    let message = report["results"][0]["message"].as_str().unwrap();
    assert!(
        message.contains("Deployment/owner (could not be read:") && message.contains("forbidden"),
        "{report:#}"
    );
    let child = c.get_json(&["-n", &ns, "configmap", "child"]).unwrap();
    assert_eq!(child["data"]["k"], "v", "{child}");
    assert!(
        child["metadata"].get("ownerReferences").is_none(),
        "{child}"
    );
}

/// A create the API server refused because the object existed already
/// (`kubectl create` of a name taken) leaves a phantom snapshot: the
/// action did not change the object, and its diff and manifests say so
/// (they said "created", with a patch deleting the live object, and "did
/// not exist before the action"), like its rollback.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_create_is_not_shown_as_created_by_the_action() {
    let c = cluster();
    let sb = shared_snapback();
    let api = sb.api(c);
    let user = "user9";
    c.grant_api(user);
    let ns = c.namespace("phantom", &[user]);
    let token = c.token(user);
    c.kubectl_as_ok(
        user,
        &[
            "-n",
            &ns,
            "create",
            "configmap",
            "taken",
            "--from-literal=a=1",
        ],
    );
    let id = format!("phantom-{:06x}", rand::random::<u32>() & 0xffffff);
    api.open_action(&token, &id).await;
    let out = c.kubectl(
        user,
        &[
            "-n",
            &ns,
            "create",
            "configmap",
            "taken",
            "--from-literal=a=2",
        ],
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already exists"),
        "{out:?}"
    );
    api.ok("POST", &format!("/api/v1/actions/{id}/complete"), &token)
        .await;
    let detail = api
        .ok("GET", &format!("/api/v1/actions/{id}"), &token)
        .await;
    assert_eq!(
        detail["changeCount"], 1,
        "the refused create was captured: {detail:#}"
    );
    let diff = api
        .ok("GET", &format!("/api/v1/actions/{id}/diff"), &token)
        .await;
    let o = &diff["objects"][0];
    assert_eq!(o["change"], "unchanged", "{diff:#}");
    assert_eq!(o["patch"], serde_json::json!([]), "{diff:#}");
    let (status, text) = api
        .call(
            "GET",
            &format!("/api/v1/actions/{id}/manifests"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, 200, "{text}");
    let text = text.as_str().unwrap_or_default().to_string();
    assert!(
        text.contains("not changed by the action") && !text.contains("did not exist"),
        "{text}"
    );
    let report = api
        .ok("POST", &format!("/api/v1/actions/{id}/rollback"), &token)
        .await;
    assert_eq!(report["state"], "rolled-back", "{report:#}");
    let now = c.kubectl_ok(&[
        "-n",
        &ns,
        "get",
        "configmap",
        "taken",
        "-o",
        "jsonpath={.data.a}",
    ]);
    assert_eq!(now, "1");
}
