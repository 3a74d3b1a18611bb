//! The command-line client of the rollback API, also a kubectl plugin
//! (`kubectl snapback …` when installed as `kubectl-snapback`).
//!
//! Exit codes (stable, for scripts): 0 success; 1 error (network, server);
//! 2 usage; 3 not found; 4 conflict (objects changed after the action, or a
//! rollback already running); 5 unauthenticated or forbidden; 6 the rollback
//! ran but objects failed or were skipped; 7 bad request (including an action
//! older than the rollback window).

pub mod output;
pub mod transport;

use std::io::{IsTerminal, Write};
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use http::{Method, StatusCode};
use serde_json::{Value, json};

use crate::client::output::*;
use crate::client::transport::{ConnectArgs, Transport};

pub const EXIT_ERROR: u8 = 1;
pub const EXIT_NOT_FOUND: u8 = 3;
pub const EXIT_CONFLICT: u8 = 4;
pub const EXIT_FORBIDDEN: u8 = 5;
pub const EXIT_ROLLBACK_FAILED: u8 = 6;
pub const EXIT_BAD_REQUEST: u8 = 7;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
    Yaml,
}

#[derive(Debug, Args)]
pub struct ClientArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Output format.
    #[arg(
        short = 'o',
        long,
        global = true,
        value_enum,
        default_value = "table",
        env = "SNAPBACK_OUTPUT"
    )]
    pub output: OutputFormat,
    /// Never colour the output.
    #[arg(long, global = true, env = "SNAPBACK_NO_COLOR")]
    pub no_color: bool,
}

#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// List actions, newest first.
    List {
        #[arg(long, env = "SNAPBACK_LIST_USER")]
        user: Option<String>,
        #[arg(long, short = 'n', env = "SNAPBACK_LIST_NAMESPACE")]
        namespace: Option<String>,
        #[arg(long, env = "SNAPBACK_LIST_STATE")]
        state: Option<String>,
        /// RFC 3339 time or a duration such as 1h.
        #[arg(long, env = "SNAPBACK_LIST_SINCE")]
        since: Option<String>,
        #[arg(long, env = "SNAPBACK_LIST_LIMIT")]
        limit: Option<u32>,
    },
    /// Show an action and its changes.
    Show { id: String },
    /// Prior vs current state of every object of the action.
    Diff { id: String },
    /// Roll an action back.
    Rollback {
        id: String,
        #[command(flatten)]
        opts: RollbackOpts,
    },
    /// Close an open action and roll it back.
    Cancel {
        id: String,
        #[command(flatten)]
        opts: RollbackOpts,
    },
    /// Open an action: your changes (deletes too) are grouped into it until you complete it.
    Open {
        #[arg(long, env = "SNAPBACK_OPEN_ID")]
        id: Option<String>,
        #[arg(long, env = "SNAPBACK_OPEN_DESCRIPTION")]
        description: Option<String>,
    },
    /// Complete an open action.
    Complete { id: String },
    /// Delete an action's snapshots.
    Delete { id: String },
    /// The prior state as multi-document YAML (`-o json`: one v1 List).
    Manifests { id: String },
}

/// A multi-document YAML stream as a `v1` List, pretty JSON.
fn manifests_as_list(yaml: &[u8]) -> Result<Vec<u8>, Failure> {
    use serde::Deserialize;
    let text = std::str::from_utf8(yaml).map_err(|e| fail(EXIT_ERROR, e.to_string()))?;
    let mut items = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let v = serde_json::Value::deserialize(doc)
            .map_err(|e| fail(EXIT_ERROR, format!("the manifests are not YAML: {e}")))?;
        if !v.is_null() {
            items.push(v);
        }
    }
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
    let mut out = serde_json::to_vec_pretty(&list).map_err(|e| fail(EXIT_ERROR, e.to_string()))?;
    out.push(b'\n');
    Ok(out)
}

#[derive(Debug, Args)]
pub struct RollbackOpts {
    /// Show the plan; change nothing (`--dry-run`, or `=true|false`, or
    /// kubectl's `=server|client|none`).
    #[arg(long, env = "SNAPBACK_DRY_RUN", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false",
          action = clap::ArgAction::Set, value_parser = dry_run_value)]
    pub dry_run: bool,
    /// Overwrite objects changed after the action; ignore the rollback window.
    #[arg(long, env = "SNAPBACK_FORCE", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false",
          action = clap::ArgAction::Set, value_parser = bool_value)]
    pub force: bool,
    /// abort, continue or retry (default: the server's).
    #[arg(long, env = "SNAPBACK_FAILURE_POLICY")]
    pub failure_policy: Option<String>,
    /// Restore objects with immutable-field changes by delete and create.
    #[arg(long, env = "SNAPBACK_RECREATE", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false",
          action = clap::ArgAction::Set, value_parser = bool_value)]
    pub recreate: bool,
}

/// `--force=true`, `--force=false` (any case; also 1/0, yes/no).
fn bool_value(v: &str) -> Result<bool, String> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(format!("{v:?} is not true or false")),
    }
}

/// As [`bool_value`], and kubectl's `--dry-run=server|client|none`: a
/// dry run of a rollback is always the server's plan (`client` too: never
/// a real rollback when a dry run was asked for).
fn dry_run_value(v: &str) -> Result<bool, String> {
    match v.to_ascii_lowercase().as_str() {
        "server" | "client" => Ok(true),
        "none" => Ok(false),
        _ => bool_value(v).map_err(|_| format!("{v:?} is not true, false, server, client or none")),
    }
}

/// A failed command: what to print and the exit code.
pub struct Failure {
    pub message: String,
    pub code: u8,
}

fn fail(code: u8, message: impl Into<String>) -> Failure {
    Failure {
        message: message.into(),
        code,
    }
}

fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

struct Ctx {
    transport: Transport,
    output: OutputFormat,
    color: bool,
}

impl Ctx {
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, Failure> {
        let (status, bytes) = self.raw(method, path, body).await?;
        if status.is_success() {
            if bytes.is_empty() {
                return Ok(Value::Null);
            }
            return serde_json::from_slice(&bytes).map_err(|e| {
                fail(
                    EXIT_ERROR,
                    format!("unexpected answer from the server: {e}"),
                )
            });
        }
        Err(self.server_error(status, &bytes))
    }

    /// A refused call: with `-o json|yaml`, snapback's error answer (the
    /// objects in conflict of a 409 included) also goes to standard output,
    /// for scripts; the message goes to standard error as always.
    fn server_error(&self, status: StatusCode, bytes: &[u8]) -> Failure {
        if self.output != OutputFormat::Table
            && let Ok(v) = serde_json::from_slice::<Value>(bytes)
            && v.get("error").is_some_and(Value::is_object)
        {
            self.structured(&v);
        }
        server_error(status, bytes)
    }

    async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(StatusCode, Vec<u8>), Failure> {
        let body = body.map(|b| b.to_string().into_bytes());
        self.transport
            .call(method, path, body)
            .await
            .map_err(|e| fail(EXIT_ERROR, e.to_string()))
    }

    /// Print a JSON/YAML answer when asked; true when done.
    fn structured(&self, v: &Value) -> bool {
        match self.output {
            OutputFormat::Table => false,
            OutputFormat::Json => {
                println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
                true
            }
            OutputFormat::Yaml => {
                print!("{}", crate::yaml::to_string(v));
                true
            }
        }
    }
}

/// The server's own message, and the exit code for its status.
fn server_error(status: StatusCode, body: &[u8]) -> Failure {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    // A Kubernetes Status is the API server's proxy speaking, not snapback:
    // the Service, its endpoints or the user's access to the proxy is missing.
    if let Some(st) = parsed.as_ref().filter(|v| v["kind"] == "Status") {
        let message = st["message"]
            .as_str()
            .unwrap_or("the API server refused the request");
        let code = if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
            EXIT_FORBIDDEN
        } else {
            EXIT_ERROR
        };
        return fail(
            code,
            format!(
                "API server service proxy: {message} (is snapback running? use --server to reach it directly)"
            ),
        );
    }
    let mut message = parsed
        .as_ref()
        .and_then(|v| v["error"]["message"].as_str())
        .map(str::to_string)
        .unwrap_or_else(|| {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            if text.is_empty() {
                status.to_string()
            } else {
                format!("{status}: {}", text.chars().take(300).collect::<String>())
            }
        });
    if status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::BAD_GATEWAY {
        message.push_str(" (is snapback running? use --server to reach it directly)");
    }
    let message = as_flags(&message);
    let code = match status {
        StatusCode::NOT_FOUND => EXIT_NOT_FOUND,
        StatusCode::CONFLICT => EXIT_CONFLICT,
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => EXIT_FORBIDDEN,
        StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE => EXIT_BAD_REQUEST,
        _ => EXIT_ERROR,
    };
    fail(code, message)
}

pub async fn run(args: ClientArgs, cmd: ClientCommand) -> Result<(), Failure> {
    let transport = Transport::new(&args.connect)
        .await
        .map_err(|e| fail(EXIT_ERROR, e.to_string()))?;
    let ctx = Ctx {
        transport,
        output: args.output,
        color: color_enabled(args.no_color),
    };
    let now = jiff::Timestamp::now();
    match cmd {
        ClientCommand::List {
            user,
            namespace,
            state,
            since,
            limit,
        } => {
            let mut q = vec![];
            for (k, v) in [
                ("user", user),
                ("namespace", namespace),
                ("state", state),
                ("since", since),
            ] {
                if let Some(v) = v {
                    q.push(format!("{k}={}", enc(&v)));
                }
            }
            if let Some(l) = limit {
                q.push(format!("limit={l}"));
            }
            let path = format!("/api/v1/actions?{}", q.join("&"));
            let v = ctx.call(Method::GET, &path, None).await?;
            if ctx.structured(&v) {
                return Ok(());
            }
            let rows: Vec<Vec<String>> = v["actions"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or(&[])
                .iter()
                .map(|a| {
                    let namespaces: Vec<&str> = a["namespaces"]
                        .as_array()
                        .map(|n| n.iter().filter_map(Value::as_str).collect())
                        .unwrap_or_default();
                    vec![
                        str_of(a, "id").to_string(),
                        str_of(a, "state").to_string(),
                        str_of(a, "origin").to_string(),
                        str_of(a, "owner").to_string(),
                        a["changes"].to_string(),
                        if namespaces.is_empty() {
                            "<none>".into()
                        } else {
                            namespaces.join(",")
                        },
                        age(a["createdAt"].as_str(), now),
                    ]
                })
                .collect();
            if rows.is_empty() {
                eprintln!("No actions found.");
            } else {
                print!(
                    "{}",
                    table(
                        &[
                            "ID",
                            "STATE",
                            "ORIGIN",
                            "OWNER",
                            "CHANGES",
                            "NAMESPACES",
                            "AGE"
                        ],
                        &rows
                    )
                );
                if let Some(total) = v["total"].as_u64()
                    && total > rows.len() as u64
                {
                    eprintln!(
                        "Showing the newest {} of {total} matching actions (--limit shows more).",
                        rows.len()
                    );
                }
            }
        }
        ClientCommand::Show { id } => {
            let v = ctx
                .call(Method::GET, &format!("/api/v1/actions/{}", enc(&id)), None)
                .await?;
            if ctx.structured(&v) {
                return Ok(());
            }
            print_show(&v, now);
        }
        ClientCommand::Diff { id } => {
            let v = ctx
                .call(
                    Method::GET,
                    &format!("/api/v1/actions/{}/diff", enc(&id)),
                    None,
                )
                .await?;
            if ctx.structured(&v) {
                return Ok(());
            }
            for o in v["objects"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
                let ns = str_of(o, "namespace");
                let header = format!(
                    "# {} {}{}",
                    str_of(o, "change"),
                    object_name(o),
                    if ns.is_empty() {
                        String::new()
                    } else {
                        format!(" -n {ns}")
                    }
                );
                println!(
                    "{}",
                    if ctx.color {
                        format!("\x1b[1m{header}\x1b[0m")
                    } else {
                        header
                    }
                );
                if let Some(e) = o["error"].as_str() {
                    println!("  error: {e}");
                }
                print!("{}", colorize_diff(str_of(o, "diff"), ctx.color));
            }
        }
        ClientCommand::Rollback { id, opts } => {
            return rollback(&ctx, &id, "rollback", &opts).await;
        }
        ClientCommand::Cancel { id, opts } => return rollback(&ctx, &id, "cancel", &opts).await,
        ClientCommand::Open { id, description } => {
            let mut body = json!({});
            if let Some(id) = id {
                body["id"] = json!(id);
            }
            if let Some(d) = description {
                body["description"] = json!(d);
            }
            let v = ctx
                .call(Method::POST, "/api/v1/actions", Some(body))
                .await?;
            if !ctx.structured(&v) {
                println!(
                    "action {} opened; your changes are recorded in it until `kubectl snapback complete {}`",
                    str_of(&v, "id"),
                    str_of(&v, "id")
                );
            }
        }
        ClientCommand::Complete { id } => {
            let v = ctx
                .call(
                    Method::POST,
                    &format!("/api/v1/actions/{}/complete", enc(&id)),
                    None,
                )
                .await?;
            if !ctx.structured(&v) {
                let n = v["changes"].as_u64().unwrap_or(0);
                println!(
                    "action {} completed ({n} change{})",
                    str_of(&v, "id"),
                    if n == 1 { "" } else { "s" }
                );
            }
        }
        ClientCommand::Delete { id } => {
            ctx.call(
                Method::DELETE,
                &format!("/api/v1/actions/{}", enc(&id)),
                None,
            )
            .await?;
            if !ctx.structured(&json!({"deleted": id})) {
                println!("action {id} deleted");
            }
        }
        ClientCommand::Manifests { id } => {
            let (status, bytes) = ctx
                .raw(
                    Method::GET,
                    &format!("/api/v1/actions/{}/manifests", enc(&id)),
                    None,
                )
                .await?;
            if !status.is_success() {
                return Err(ctx.server_error(status, &bytes));
            }
            let out = match ctx.output {
                // The stream as served: YAML documents with the comments
                // that name what has no manifest.
                OutputFormat::Table | OutputFormat::Yaml => bytes.to_vec(),
                // One `v1` List of the documents (what `kubectl apply -f`
                // and `kubectl get -o json` know); the comments are lost.
                OutputFormat::Json => manifests_as_list(&bytes)?,
            };
            std::io::stdout()
                .write_all(&out)
                .map_err(|e| fail(EXIT_ERROR, e.to_string()))?;
        }
    }
    Ok(())
}

fn print_show(v: &Value, now: jiff::Timestamp) {
    let field = |k: &str, val: String| println!("{:<14}{}", format!("{k}:"), printable(&val));
    field("Action", str_of(v, "id").into());
    field("State", str_of(v, "state").into());
    field("Origin", str_of(v, "origin").into());
    field("Owner", str_of(v, "owner").into());
    if let Some(d) = v["description"].as_str() {
        field("Description", d.into());
    }
    field(
        "Created",
        format!(
            "{} ({} ago)",
            str_of(v, "createdAt"),
            age(v["createdAt"].as_str(), now)
        ),
    );
    if let Some(r) = v["rollbackOf"].as_str() {
        field("Rollback of", r.into());
    }
    if let Some(g) = v.get("guard").filter(|g| g.is_object()) {
        let reason = g["reason"]
            .as_str()
            .map(|r| format!(": {r}"))
            .unwrap_or_default();
        field(
            "Guard",
            format!(
                "{} (timeout {}, on failure {}){reason}",
                str_of(g, "state"),
                str_of(g, "timeout"),
                str_of(g, "onFailure")
            ),
        );
    }
    if let Some(p) = v.get("progress").filter(|p| p.is_object()) {
        field(
            "Rolling back",
            format!(
                "{}/{} objects ({})",
                p["done"],
                p["total"],
                str_of(p, "rollbackAction")
            ),
        );
    }
    println!("\nChanges ({}):", v["changeCount"]);
    let rows: Vec<Vec<String>> = v["changes"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
        .iter()
        .map(|c| {
            vec![
                str_of(c, "operation").to_string(),
                object_name(c),
                str_of(c, "namespace").to_string(),
                str_of(c, "user").to_string(),
                age(c["timestamp"].as_str(), now),
            ]
        })
        .collect();
    for line in table(&["OPERATION", "OBJECT", "NAMESPACE", "USER", "AGE"], &rows).lines() {
        println!("  {line}");
    }
    if let Some(reports) = v["rollbackReports"].as_array().filter(|r| !r.is_empty()) {
        println!("\nRollbacks:");
        let rows: Vec<Vec<String>> = reports
            .iter()
            .map(|r| {
                vec![
                    str_of(r, "rollbackAction").to_string(),
                    str_of(r, "trigger").to_string(),
                    str_of(r, "state").to_string(),
                    str_of(r, "user").to_string(),
                    counts_text(&r["counts"]),
                    age(r["finishedAt"].as_str(), now),
                ]
            })
            .collect();
        for line in table(
            &["ROLLBACK", "TRIGGER", "RESULT", "BY", "COUNTS", "AGE"],
            &rows,
        )
        .lines()
        {
            println!("  {line}");
        }
    }
}

async fn rollback(ctx: &Ctx, id: &str, verb: &str, opts: &RollbackOpts) -> Result<(), Failure> {
    let mut q = vec![];
    if opts.dry_run {
        q.push("dryRun=true".to_string());
    }
    if opts.force {
        q.push("force=true".into());
    }
    if opts.recreate {
        q.push("recreate=true".into());
    }
    if let Some(p) = &opts.failure_policy {
        q.push(format!("failurePolicy={}", enc(p)));
    }
    let path = format!("/api/v1/actions/{}/{verb}?{}", enc(id), q.join("&"));
    let request = ctx.call(Method::POST, &path, None);
    let show_progress =
        !opts.dry_run && std::io::stderr().is_terminal() && ctx.output == OutputFormat::Table;
    let report = if show_progress {
        let progress = async {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                if let Ok(v) = ctx
                    .call(Method::GET, &format!("/api/v1/actions/{}", enc(id)), None)
                    .await
                    && let Some(p) = v.get("progress").filter(|p| p.is_object())
                {
                    eprint!("\rrolling back {id}: {}/{} objects", p["done"], p["total"]);
                }
            }
        };
        tokio::select! {
            r = request => { eprint!("\r\x1b[K"); r }
            () = progress => unreachable!("the progress loop never ends"),
        }
    } else {
        request.await
    };
    let report = match report {
        Ok(r) => r,
        Err(f) => {
            return Err(f);
        }
    };
    if !ctx.structured(&report) {
        print_report(&report);
    }
    let bad = report["results"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
        .iter()
        .any(|r| {
            matches!(r["outcome"].as_str(), Some("failed" | "conflict"))
                || (r["outcome"] == "skipped" && str_of(r, "message").starts_with("not attempted"))
        });
    if report["dryRun"] == true {
        // Nothing ran: a plan in which objects cannot be restored is 6, a
        // clean plan 0, whatever the state of earlier rollbacks.
        if bad {
            return Err(fail(
                EXIT_ROLLBACK_FAILED,
                format!("dry run of {verb} of {id}: some objects could not be restored"),
            ));
        }
        return Ok(());
    }
    if bad || report["state"] == "rollback-failed" {
        return Err(fail(
            EXIT_ROLLBACK_FAILED,
            format!(
                "{verb} of {id} finished with failures (state {})",
                str_of(&report, "state")
            ),
        ));
    }
    Ok(())
}

fn print_report(r: &Value) {
    let rows: Vec<Vec<String>> = r["results"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
        .iter()
        .map(|o| {
            vec![
                str_of(o, "operation").to_string(),
                object_name(o),
                str_of(o, "namespace").to_string(),
                str_of(o, "outcome").to_string(),
                as_flags(str_of(o, "message")),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &["OPERATION", "OBJECT", "NAMESPACE", "OUTCOME", "MESSAGE"],
            &rows
        )
    );
    let counts = counts_text(&r["counts"]);
    if r["dryRun"] == true {
        println!(
            "\ndry run of {}: {counts}; nothing was changed",
            str_of(r, "action")
        );
    } else {
        println!(
            "\n{} {}: {} ({counts}); recorded as action {}",
            if r["trigger"] == "cancel" {
                "cancel of"
            } else {
                "rollback of"
            },
            str_of(r, "action"),
            str_of(r, "state"),
            str_of(r, "rollbackAction")
        );
    }
}

/// A report's counts as "3 restored, 1 unchanged": outcomes with no object
/// are left out.
fn counts_text(counts: &Value) -> String {
    let parts: Vec<String> = counts
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, v)| v.as_u64() != Some(0))
        .map(|(k, v)| format!("{v} {k}"))
        .collect();
    if parts.is_empty() {
        "no objects".to_string()
    } else {
        parts.join(", ")
    }
}

/// The server's messages name its query parameters; here they are flags.
fn as_flags(message: &str) -> String {
    message
        .replace("force=true", "--force")
        .replace("recreate=true", "--recreate")
}
