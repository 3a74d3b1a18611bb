#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
//! The command-line client as a kubectl plugin (`kubectl snapback …`) against
//! the real stack (issue #5).

mod support;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::OnceLock;

use serde_json::Value;
use support::*;

/// A directory with `kubectl-snapback` in it, for PATH.
fn plugin_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = cluster().dir.join("plugin-bin");
        std::fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_snapback"), dir.join("kubectl-snapback"))
            .unwrap();
        dir
    })
}

/// `kubectl snapback ARGS` as `user`, reaching the API with --server.
fn kubectl_snapback(user: &str, args: &[&str]) -> Output {
    let c = cluster();
    let sb = shared_snapback();
    let path = format!(
        "{}:{}",
        plugin_dir().display(),
        std::env::var("PATH").unwrap()
    );
    Command::new("kubectl")
        .env("PATH", path)
        .env("KUBECONFIG", &c.kubeconfig)
        .arg("snapback")
        .args(args)
        .args([
            "--context",
            user,
            "--server",
            &format!("https://127.0.0.1:{}", sb.api_port),
        ])
        .arg("--ca-file")
        .arg(c.certs.join("ca.crt"))
        .output()
        .unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json_of(out: &Output) -> Value {
    serde_json::from_str(&ok(out)).unwrap()
}

#[test]
fn a_session_through_kubectl_snapback() {
    let c = cluster();
    let user = "user6";
    c.grant_api(user);
    let ns = c.namespace("cli", &[user]);
    c.kubectl_as_ok(
        user,
        &[
            "-n",
            &ns,
            "create",
            "configmap",
            "app",
            "--from-literal=mode=blue",
            // Strings a YAML 1.1 reader (kubectl's) takes for something
            // else unless they are quoted.
            "--from-literal=enabled=yes",
            "--from-literal=debug=Off",
            "--from-literal=workers=1_000",
            "--from-literal=since=2026-01-01",
            "--from-literal=window=1:20",
            "--from-literal=app.yaml=listen: 8080\nname: shop\n",
        ],
    );

    // open → change → complete
    let id = format!("cli-{:06x}", rand::random::<u32>() & 0xffffff);
    let out = ok(&kubectl_snapback(
        user,
        &["open", "--id", &id, "--description", "switch to green"],
    ));
    assert!(out.contains(&id), "{out}");
    std::thread::sleep(std::time::Duration::from_millis(700));
    c.kubectl_as_ok(
        user,
        &[
            "-n",
            &ns,
            "patch",
            "configmap",
            "app",
            "-p",
            r#"{"data":{"mode":"green"}}"#,
        ],
    );
    c.kubectl_as_ok(user, &["-n", &ns, "delete", "configmap", "app"]);
    ok(&kubectl_snapback(user, &["complete", &id]));

    // list: a table by default, JSON that parses back with -o json.
    let table = ok(&kubectl_snapback(user, &["list", "--user", user]));
    let header = table.lines().next().unwrap();
    assert!(
        header.starts_with("ID") && header.contains("STATE") && header.contains("AGE"),
        "{table}"
    );
    let row = table
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(row.contains("completed") && row.contains(&ns), "{row}");
    let listed = json_of(&kubectl_snapback(
        user,
        &["list", "--namespace", &ns, "-o", "json"],
    ));
    let mine = listed["actions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == id.as_str())
        .unwrap();
    assert_eq!(mine["changes"], 2);
    // Every flag also as a SNAPBACK_* variable (SPEC §7).
    let c = cluster();
    let sb = shared_snapback();
    let out = Command::new(env!("CARGO_BIN_EXE_snapback"))
        .env("KUBECONFIG", &c.kubeconfig)
        .env("SNAPBACK_CONTEXT", user)
        .env(
            "SNAPBACK_SERVER",
            format!("https://127.0.0.1:{}", sb.api_port),
        )
        .env("SNAPBACK_CA_FILE", c.certs.join("ca.crt"))
        .env("SNAPBACK_OUTPUT", "json")
        .env("SNAPBACK_LIST_NAMESPACE", &ns)
        .arg("list")
        .output()
        .unwrap();
    let by_env = json_of(&out);
    let ids: Vec<&str> = by_env["actions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["id"].as_str())
        .collect();
    assert!(ids.contains(&id.as_str()), "{by_env}");
    // The namespace filter came from SNAPBACK_LIST_NAMESPACE.
    for a in by_env["actions"].as_array().unwrap() {
        assert!(
            a["namespaces"]
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n == ns.as_str()),
            "{a}"
        );
    }
    let yaml = ok(&kubectl_snapback(user, &["show", &id, "-o", "yaml"]));
    let shown: Value = serde_yaml::from_str(&yaml).unwrap();
    assert_eq!(shown["description"], "switch to green");

    // show and diff
    let show = ok(&kubectl_snapback(user, &["show", &id]));
    assert!(
        show.contains("completed") && show.contains("configmaps/app") && show.contains("delete"),
        "{show}"
    );
    let diff = ok(&kubectl_snapback(user, &["diff", &id]));
    assert!(diff.contains("# deleted configmaps/app"), "{diff}");
    assert!(diff.contains("-  mode: blue"), "{diff}");
    assert!(
        !diff.contains('\x1b'),
        "no colour when stdout is not a terminal"
    );

    // dry run, then the rollback, with a summary table
    let plan = ok(&kubectl_snapback(user, &["rollback", &id, "--dry-run"]));
    assert!(
        plan.contains("planned") && plan.contains("nothing was changed"),
        "{plan}"
    );
    assert!(
        c.kubectl(user, &["-n", &ns, "get", "configmap", "app"])
            .status
            .code()
            != Some(0)
    );
    let done = ok(&kubectl_snapback(user, &["rollback", &id]));
    assert!(
        done.contains("OUTCOME") && done.contains("restored") && done.contains("rolled-back"),
        "{done}"
    );
    assert_eq!(
        c.kubectl_ok(&["-n", &ns, "get", "cm", "app", "-o", "jsonpath={.data.mode}"]),
        "blue"
    );

    // manifests: YAML a user can commit, and apply back as it was
    let manifests = ok(&kubectl_snapback(user, &["manifests", &id]));
    assert!(manifests.contains("mode: blue"), "{manifests}");
    let out = c.kubectl_stdin(
        user,
        &["apply", "--dry-run=server", "-o", "json", "-f", "-"],
        &manifests,
    );
    assert!(
        out.status.success(),
        "{manifests}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let applied: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        applied["data"],
        serde_json::json!({
            "mode": "blue", "enabled": "yes", "debug": "Off", "workers": "1_000",
            "since": "2026-01-01", "window": "1:20", "app.yaml": "listen: 8080\nname: shop\n"
        }),
        "{manifests}"
    );
    // -o json: the same documents as one v1 List, which kubectl applies too.
    let list = json_of(&kubectl_snapback(user, &["manifests", &id, "-o", "json"]));
    assert_eq!(list["kind"], "List", "{list:#}");
    assert_eq!(list["items"][0]["data"]["mode"], "blue", "{list:#}");
    let out = c.kubectl_stdin(
        user,
        &["apply", "--dry-run=server", "-f", "-"],
        &list.to_string(),
    );
    assert!(
        out.status.success(),
        "{list:#}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn exit_codes_scripts_can_trust() {
    let c = cluster();
    let user = "user7";
    c.grant_api(user);
    let ns = c.namespace("cli-codes", &[user]);
    let locked = c.namespace("cli-locked", &[]);

    // 3: unknown action
    let out = kubectl_snapback(user, &["show", "no-such-action"]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "error: action no-such-action not found"
    );

    // 4: conflict, naming the object; the server's message, not a stack of errors
    let id = format!("clic-{:06x}", rand::random::<u32>() & 0xffffff);
    c.action_changed_since(user, &ns, &id);
    let out = kubectl_snapback(user, &["rollback", &id]);
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error: ") && err.contains(&format!("configmaps/cm in namespace {ns}")),
        "{err}"
    );
    // The way out is named as the flag, not as the API's parameter.
    assert!(
        err.contains("use --force") && !err.contains("force=true"),
        "{err}"
    );
    // -o json: the server's answer, the objects in conflict included, on
    // standard output for scripts (and the message on standard error).
    let out = kubectl_snapback(user, &["rollback", &id, "-o", "json"]);
    assert_eq!(out.status.code(), Some(4));
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(answer["error"]["code"], "Conflict", "{answer:#}");
    assert!(
        answer["error"]["objects"][0]
            .as_str()
            .is_some_and(|o| o.contains("configmaps/cm")),
        "{answer:#}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("error: "));
    // Flags take values the way kubectl's do; --dry-run=false is a real
    // rollback (refused: the conflict), --dry-run=server the plan.
    let out = kubectl_snapback(user, &["rollback", &id, "--dry-run=false"]);
    assert_eq!(out.status.code(), Some(4));
    let out = kubectl_snapback(
        user,
        &[
            "rollback",
            &id,
            "--dry-run=server",
            "--force=true",
            "-o",
            "json",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["dryRun"], true, "{plan:#}");
    assert_eq!(
        c.get_json(&["-n", &ns, "configmap", "cm"]).unwrap()["data"]["v"],
        "3",
        "a dry run changed it"
    );
    let out = kubectl_snapback(user, &["rollback", &id, "--dry-run=maybe"]);
    assert_eq!(out.status.code(), Some(2), "a usage error");

    // A reader that goes away (`| head -1`): a quiet exit, not a panic.
    let c2 = cluster();
    let sb = shared_snapback();
    let mut child = Command::new(env!("CARGO_BIN_EXE_snapback"))
        .env("KUBECONFIG", &c2.kubeconfig)
        .args(["show", &id, "--context", user])
        .arg("--server")
        .arg(format!("https://127.0.0.1:{}", sb.api_port))
        .arg("--ca-file")
        .arg(c2.certs.join("ca.crt"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(out.status.code(), Some(141), "{err}");

    // 6: a rollback that ran but could not restore an object (RBAC)
    let id2 = format!("clif-{:06x}", rand::random::<u32>() & 0xffffff);
    c.kubectl_ok(&[
        "-n",
        &locked,
        "create",
        "configmap",
        "cm",
        "--from-literal=v=1",
    ]);
    c.apply_as("admin", &format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cm, namespace: {locked}, annotations: {{snapback.io/action: {id2}}}}}\ndata: {{v: \"2\"}}\n"));
    // 5 (403) when the caller may read none of the action's objects:
    // nothing is tried.
    let out = kubectl_snapback(user, &["rollback", &id2]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(err.contains("may not read any"), "{err}");
    // Read, but not write: the rollback runs and fails the object.
    c.kubectl_ok(&[
        "-n",
        &locked,
        "create",
        "role",
        "reader",
        "--verb=get,list",
        "--resource=configmaps",
    ]);
    c.kubectl_ok(&[
        "-n",
        &locked,
        "create",
        "rolebinding",
        &format!("reader-{user}"),
        "--role=reader",
        &format!("--user={user}"),
    ]);
    let out = kubectl_snapback(user, &["rollback", &id2, "-o", "json"]);
    assert_eq!(
        out.status.code(),
        Some(6),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["results"][0]["outcome"], "failed");
    // A clean dry run afterwards (by someone who may) is 0: the earlier
    // rollback's failure is not the plan's.
    let out = kubectl_snapback("admin", &["rollback", &id2, "--dry-run"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The same plan for someone who may not touch the object: 6.
    let out = kubectl_snapback(user, &["rollback", &id2, "--dry-run"]);
    assert_eq!(
        out.status.code(),
        Some(6),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // 5: not allowed to use the API
    let out = kubectl_snapback("user8", &["list"]);
    assert_eq!(
        out.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("may not list"));

    // 7: bad parameter
    let out = kubectl_snapback(user, &["rollback", &id, "--failure-policy", "sometimes"]);
    assert_eq!(out.status.code(), Some(7));

    // 2: usage
    let out = kubectl_snapback(user, &["rollback"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn shell_completion() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(env!("CARGO_BIN_EXE_snapback"))
            .args(["completion", shell])
            .output()
            .unwrap();
        let script = ok(&out);
        assert!(
            script.contains("rollback")
                && (script.contains("--dry-run") || script.contains("-l dry-run")),
            "{shell}"
        );
    }
}

/// The bash completion completes past the subcommand, for the plugin's
/// name (`kubectl-snapback`, hyphenated) as for `snapback`: run in a real
/// bash the way bash runs it on TAB.
#[test]
fn bash_completion_completes_flags_and_values_of_subcommands() {
    let plugin = plugin_dir().join("kubectl-snapback");
    for (bin, name) in [
        (plugin.clone(), "kubectl-snapback"),
        (PathBuf::from(env!("CARGO_BIN_EXE_snapback")), "snapback"),
    ] {
        let out = Command::new(&bin)
            .args(["completion", "bash"])
            .output()
            .unwrap();
        let script = ok(&out);
        let complete = |line: &str| -> Vec<String> {
            let words: Vec<&str> = line.split(' ').collect();
            let program = format!(
                "{script}\nCOMP_WORDS=({words}); COMP_CWORD={cword}; COMP_LINE='{line}'; COMP_POINT=${{#COMP_LINE}}\n\
                 func=$(complete -p {name} | sed -E 's/.*-F ([^ ]+).*/\\1/')\n\
                 $func {name} '{cur}' '{prev}'\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"\n",
                words = words
                    .iter()
                    .map(|w| format!("'{w}'"))
                    .collect::<Vec<_>>()
                    .join(" "),
                cword = words.len() - 1,
                cur = words[words.len() - 1],
                prev = words[words.len() - 2],
            );
            let out = Command::new("bash")
                .args(["-c", &program])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect()
        };
        let flags = complete(&format!("{name} rollback --f"));
        assert!(
            flags.contains(&"--force".to_string())
                && flags.contains(&"--failure-policy".to_string()),
            "{name} rollback --f<TAB>: {flags:?}"
        );
        let outputs = complete(&format!("{name} show x -o "));
        assert!(
            outputs.contains(&"json".to_string()) && outputs.contains(&"yaml".to_string()),
            "{name} show x -o <TAB>: {outputs:?}"
        );
    }
}

#[test]
fn the_service_proxy_path_goes_through_the_api_server_with_the_users_credentials() {
    // The API server refuses Endpoints on loopback addresses, so no backend
    // can be reached this way here; what is checked is that the client goes
    // through the API server's service proxy as the user (RBAC applies) and
    // reports the proxy's answer clearly.
    let c = cluster();
    let user = "user9";
    c.kubectl_apply_str(
        &std::fs::read_to_string(format!("{ROOT}/manifests/user-roles.yaml")).unwrap(),
    );
    c.kubectl_ok(&[
        "-n",
        "snapback-system",
        "create",
        "service",
        "clusterip",
        "snapback-api",
        "--tcp=443:9443",
    ]);
    let path = format!(
        "{}:{}",
        plugin_dir().display(),
        std::env::var("PATH").unwrap()
    );
    let run = || {
        Command::new("kubectl")
            .env("PATH", &path)
            .env("KUBECONFIG", &c.kubeconfig)
            .args(["snapback", "list", "--context", user])
            .output()
            .unwrap()
    };
    let out = run();
    assert_eq!(
        out.status.code(),
        Some(5),
        "without RBAC for the proxy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("services"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    c.kubectl_ok(&[
        "-n",
        "snapback-system",
        "create",
        "rolebinding",
        "proxy-user9",
        "--role=snapback-api-proxy",
        &format!("--user={user}"),
    ]);
    let out = run();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("API server service proxy") && err.contains("is snapback running?"),
        "{err}"
    );
}

/// Through the service proxy, the API server strips `Authorization`, so the
/// client also sends its credential as `X-Snapback-Authorization`: whatever
/// kube would authenticate to the API server with, an exec plugin's token
/// here (EKS, GKE and OIDC kubeconfigs work that way), not only a token
/// written in the kubeconfig (exec kubeconfigs used to send nothing, and
/// snapback answered 401). A stand-in for the API server records what
/// arrives at the proxy path.
#[tokio::test(flavor = "multi_thread")]
async fn the_proxy_path_forwards_an_exec_plugins_token() {
    use std::sync::{Arc, Mutex};
    /// Path, Authorization, X-Snapback-Authorization of each request.
    type Seen = Vec<(String, Option<String>, Option<String>)>;
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let app = {
        let seen = seen.clone();
        axum::Router::new().fallback(move |req: axum::extract::Request| {
            let seen = seen.clone();
            async move {
                let header = |name: &str| {
                    req.headers()
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string)
                };
                seen.lock().unwrap().push((
                    req.uri().path().to_string(),
                    header("authorization"),
                    header("x-snapback-authorization"),
                ));
                axum::Json(serde_json::json!({"actions": [], "total": 0}))
            }
        })
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let dir = tempfile::tempdir().unwrap();
    let plugin = dir.path().join("token-plugin");
    std::fs::write(
        &plugin,
        "#!/bin/sh\necho '{\"apiVersion\": \"client.authentication.k8s.io/v1beta1\", \"kind\": \"ExecCredential\", \"status\": {\"token\": \"exec-token-123\"}}'\n",
    )
    .unwrap();
    std::fs::set_permissions(&plugin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: \"http://{addr}\"}}\nusers:\n- name: u\n  user:\n    exec:\n      apiVersion: client.authentication.k8s.io/v1beta1\n      command: {}\ncontexts:\n- name: x\n  context: {{cluster: c, user: u}}\ncurrent-context: x\n",
            plugin.display()
        ),
    )
    .unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_snapback"))
        .args(["list", "-o", "json", "--kubeconfig"])
        .arg(&kubeconfig)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![(
            "/api/v1/namespaces/snapback-system/services/https:snapback-api:443/proxy/api/v1/actions"
                .to_string(),
            Some("Bearer exec-token-123".to_string()),
            Some("Bearer exec-token-123".to_string()),
        )],
    );
}
