//! HTTP handlers: authenticate, authorise, translate. Decisions live in
//! `restore` and `store`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use jiff::Timestamp;
use serde_json::Value;

use crate::api::ApiState;
use crate::api::error::{ApiError, ErrorBody};
use crate::api::model::*;
use crate::config::FailurePolicy;
use crate::restore::plan::{GitPlacement, ObjectHistory, Target};
use crate::restore::report::{Report, Trigger};
use crate::restore::rollback::{Caller, Params, redact, redact_pair, strip_for_diff};
use crate::store::StoreError;
use crate::store::actions::{
    ActionRecord, ActionState, PRUNING_KEY, ROLLBACK_REQUESTED_BY_KEY, ROLLBACK_REQUESTED_KEY,
};
use crate::store::model::{ActionId, SnapshotMeta};

type Result<T, E = ApiError> = std::result::Result<T, E>;

/// The query parameters of `GET /api/v1/actions`.
const LIST_PARAMS: &[&str] = &["user", "namespace", "state", "since", "limit"];
/// The query parameters of `rollback` and `cancel`.
const ROLLBACK_PARAMS: &[&str] = &["dryRun", "force", "failurePolicy", "recreate"];

/// A request's query string. Each parameter at most once; a parameter with
/// an empty value (`limit=`, as a filled-in URL template leaves it) is as if
/// it were absent; a bare name (`?dryRun`) is a flag set to true. A name the
/// endpoint does not take is refused: `?dryrun=true` must not run a real
/// rollback because the parameter was misspelt.
#[derive(Debug, Default)]
pub(crate) struct Query {
    values: HashMap<String, String>,
    bare: std::collections::HashSet<String>,
}

impl Query {
    pub(crate) fn parse(raw: Option<&str>, known: &[&str]) -> Result<Query> {
        let mut q = Query::default();
        for piece in raw.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
            let Some((k, v)) = form_urlencoded::parse(piece.as_bytes()).next() else {
                continue;
            };
            if !known.contains(&k.as_ref()) {
                let hint = known
                    .iter()
                    .find(|n| n.eq_ignore_ascii_case(&k))
                    .map(|n| format!("; did you mean {n}?"))
                    .unwrap_or_else(|| {
                        if known.is_empty() {
                            "; this endpoint takes no query parameters".to_string()
                        } else {
                            format!("; this endpoint takes {}", known.join(", "))
                        }
                    });
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter {k:?}{hint}"
                )));
            }
            if q.values.contains_key(k.as_ref()) {
                return Err(ApiError::bad_request(format!(
                    "query parameter {k:?} given more than once"
                )));
            }
            if !piece.contains('=') {
                q.bare.insert(k.to_string());
            }
            q.values.insert(k.to_string(), v.to_string());
        }
        Ok(q)
    }

    /// The parameter's value, unless absent or empty.
    fn get(&self, name: &str) -> Option<&str> {
        self.values
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    fn flag(&self, name: &str) -> Result<bool> {
        if self.bare.contains(name) {
            return Ok(true);
        }
        match self.get(name).map(str::to_ascii_lowercase).as_deref() {
            None | Some("false") | Some("0") => Ok(false),
            Some("true") | Some("1") => Ok(true),
            Some(_) => Err(ApiError::bad_request(format!(
                "query parameter {name} must be true or false, not {:?}",
                self.get(name).unwrap_or_default()
            ))),
        }
    }
}

/// The body of a request to an endpoint that takes none (see [`no_body`]).
pub struct UnusedBody(std::result::Result<Bytes, BytesRejection>);

impl<S: Send + Sync> axum::extract::FromRequest<S> for UnusedBody {
    type Rejection = std::convert::Infallible;

    async fn from_request(
        req: axum::extract::Request,
        state: &S,
    ) -> std::result::Result<Self, Self::Rejection> {
        Ok(UnusedBody(Bytes::from_request(req, state).await))
    }
}

/// Endpoints whose parameters are in the query string take no body: one
/// that says something (`{"dryRun": true}`) is refused rather than ignored,
/// so that it never runs the real operation. Empty, `{}` and `null` are
/// nothing.
fn no_body(body: UnusedBody) -> Result<()> {
    let body = read_body(body.0)?;
    let text = String::from_utf8_lossy(&body);
    let text = text.trim();
    if text.is_empty()
        || text == "null"
        || serde_json::from_str::<Value>(text)
            .is_ok_and(|v| v.as_object().is_some_and(|o| o.is_empty()))
    {
        return Ok(());
    }
    Err(ApiError::bad_request(
        "this endpoint takes no request body: its parameters go in the query string (for example ?dryRun=true)",
    ))
}

fn action_id(id: &str) -> Result<ActionId> {
    ActionId::parse(id).map_err(|e| ApiError::bad_request(e.to_string()))
}

/// The `{id}` of a request path, as an action id. A path segment that does
/// not decode (not UTF-8) or is not a valid id is a 400 in the API's error
/// shape, once the caller is known to hold the endpoint's verb at all
/// ([`IdPath::authorize`]).
pub struct IdPath(std::result::Result<ActionId, ApiError>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for IdPath {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> std::result::Result<Self, Self::Rejection> {
        let id = match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(id)) => action_id(&id),
            Err(e) => Err(ApiError::bad_request(format!(
                "invalid action id: {}",
                e.body_text()
            ))),
        };
        Ok(IdPath(id))
    }
}

impl IdPath {
    /// Authorise the caller for `verb` on this action, then hand out the
    /// id: a caller without the verb gets 403 before a 400 about the id
    /// (an invalid id is checked as the verb on any action).
    pub async fn authorize(
        self,
        state: &ApiState,
        headers: &HeaderMap,
        verb: &str,
    ) -> Result<(Caller, ActionId)> {
        match self.0 {
            Ok(id) => {
                let caller = state.auth.check(headers, verb, Some(id.as_str())).await?;
                Ok((caller, id))
            }
            Err(invalid) => {
                state.auth.check(headers, verb, None).await?;
                Err(invalid)
            }
        }
    }
}

/// How long a read waits for the snapshot writes queued before it
/// (`--capture-ack=queued`).
const SETTLE_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Let the snapshot writes queued before this request land first, so a read
/// right after a change sees its snapshot (`--capture-ack=queued` only).
pub(crate) async fn settle(state: &ApiState, id: Option<&ActionId>) {
    if let Some(p) = &state.pending
        && !p.settle(id.map(ActionId::as_str), SETTLE_LIMIT).await
    {
        tracing::warn!(
            action = id.map(ActionId::as_str),
            queued = p.len(),
            "snapshot writes queued before this request are still not written; reading without them"
        );
    }
}

async fn record(state: &ApiState, id: &ActionId) -> Result<(ActionRecord, String)> {
    settle(state, Some(id)).await;
    state
        .store
        .get_action(id)
        .await
        .map_err(|e| ApiError::from_store("reading the action", &e))?
        .ok_or_else(|| ApiError::not_found(format!("action {id} not found")))
}

/// List actions, newest first.
#[utoipa::path(get, path = "/api/v1/actions", tag = "actions",
    params(ListQuery),
    responses(
        (status = 200, body = ActionList),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    ))]
pub async fn list_actions(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Json<ActionList>> {
    state.auth.check(&headers, "list", None).await?;
    let q = Query::parse(raw.as_deref(), LIST_PARAMS)?;
    let filter_state = match q.get("state") {
        Some(s) => Some(ActionState::parse(s).ok_or_else(|| {
            ApiError::bad_request(format!(
                "state must be one of open, completed, cancelled, rolling-back, rolled-back, rollback-failed; not {s:?}"
            ))
        })?),
        None => None,
    };
    let since = match q.get("since") {
        Some(s) => Some(parse_since(s)?),
        None => None,
    };
    let limit = match q.get("limit") {
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=1000).contains(l))
            .ok_or_else(|| {
                ApiError::bad_request(format!("limit must be a number from 1 to 1000, not {l:?}"))
            })?,
        None => 100,
    };
    settle(&state, None).await;
    let records = state
        .store
        .list_actions(filter_state)
        .await
        .map_err(|e| ApiError::from_store("listing actions", &e))?;
    // From the snapshots' metadata (batches say what they hold in their
    // annotations), so the list reads no snapshot however many are stored.
    let activity = state
        .store
        .activity_by_action()
        .await
        .map_err(|e| ApiError::from_store("listing snapshots", &e))?;
    let mut actions: Vec<ActionSummary> = records
        .iter()
        .map(|(r, _)| ActionSummary::from_activity(r, activity.get(r.id.as_str())))
        // An empty user or namespace filters nothing.
        .filter(|a| q.get("user").is_none_or(|u| a.base.owner == u))
        .filter(|a| {
            q.get("namespace")
                .is_none_or(|ns| a.base.namespaces.contains(ns))
        })
        .filter(|a| since.is_none_or(|s| a.base.created_at >= s))
        .collect();
    actions.sort_by(|a, b| {
        b.base
            .created_at
            .cmp(&a.base.created_at)
            .then(b.base.id.cmp(&a.base.id))
    });
    let total = actions.len();
    actions.truncate(limit);
    Ok(Json(ActionList { actions, total }))
}

/// Query parameters of `GET /api/v1/actions` (for the OpenAPI description;
/// the query is parsed by hand for precise error messages). An empty value
/// is the same as none.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct ListQuery {
    /// Only actions owned by this user.
    user: Option<String>,
    /// Only actions that touched this namespace.
    namespace: Option<String>,
    /// Only actions in this state.
    #[param(schema_with = state_schema)]
    state: Option<String>,
    /// Created at or after this RFC 3339 time, or this long ago (`1h`).
    #[param(schema_with = since_schema)]
    since: Option<String>,
    /// At most this many (default 100).
    #[param(schema_with = limit_schema)]
    limit: Option<String>,
}

/// Query parameters of `rollback` and `cancel`. An empty value is the same
/// as none; a bare flag (`?dryRun`) is true.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code, non_snake_case)]
pub struct RollbackQuery {
    /// Return the plan (outcome `planned`, with a JSON patch per object) and
    /// change nothing.
    #[param(schema_with = flag_schema)]
    dryRun: Option<String>,
    /// Overwrite objects changed after the action, and ignore the rollback
    /// window.
    #[param(schema_with = flag_schema)]
    force: Option<String>,
    /// `abort` (default: `--rollback-failure-policy`), `continue` or `retry`.
    #[param(schema_with = failure_policy_schema)]
    failurePolicy: Option<String>,
    /// Restore objects whose replace hits an immutable field by delete and
    /// create.
    #[param(schema_with = flag_schema)]
    recreate: Option<String>,
}

/// `{"type": "string", "maxLength": 0}`: a parameter given with no value.
fn empty_value() -> utoipa::openapi::schema::Object {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .max_length(Some(0))
        .build()
}

/// One of these strings, or none.
fn words_schema(words: &[&str]) -> utoipa::openapi::schema::Schema {
    let mut all: Vec<&str> = words.to_vec();
    all.push("");
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(all))
        .into()
}

fn state_schema() -> utoipa::openapi::schema::Schema {
    words_schema(&[
        "open",
        "completed",
        "cancelled",
        "rolling-back",
        "rolled-back",
        "rollback-failed",
    ])
}

fn failure_policy_schema() -> utoipa::openapi::schema::Schema {
    words_schema(&["abort", "continue", "retry"])
}

fn flag_schema() -> utoipa::openapi::schema::Schema {
    words_schema(&["true", "false", "1", "0"])
}

fn limit_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
    OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(1))
                .maximum(Some(1000)),
        )
        .item(empty_value())
        .build()
        .into()
}

fn since_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{AnyOfBuilder, KnownFormat, ObjectBuilder, SchemaFormat, Type};
    // anyOf, not oneOf: a duration is also a string, and validators that
    // do not check formats take any string for a date-time.
    let any_of = AnyOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime))),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(DURATION_PATTERN)),
        )
        .item(empty_value())
        .build();
    utoipa::openapi::schema::Schema::AnyOf(any_of)
}

/// A duration as the API accepts it: one or more numbers with a unit
/// (`30s`, `15m`, `1h30m`, `1.5h`, `7d`, `500ms`), as `config::parse_duration`
/// reads them (a zero duration is refused with a 400 all the same).
pub const DURATION_PATTERN: &str = r"^(([0-9]{1,6}(\.[0-9]{0,6})?|\.[0-9]{1,6})(ms|s|m|h|d)){1,4}$";

/// Whether `s` has the shape [`DURATION_PATTERN`] describes (the server
/// takes exactly what the document says, no more).
fn duration_shape(s: &str) -> bool {
    let mut parts = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number = &rest[..len];
        let number_ok = match number.split_once('.') {
            None => (1..=6).contains(&number.len()),
            Some((int, frac)) => {
                !frac.contains('.')
                    && (((1..=6).contains(&int.len()) && frac.len() <= 6)
                        || (int.is_empty() && (1..=6).contains(&frac.len())))
            }
        };
        if !number_ok {
            return false;
        }
        rest = &rest[len..];
        let Some(unit) = ["ms", "s", "m", "h", "d"]
            .into_iter()
            .find(|u| rest.starts_with(u))
        else {
            return false;
        };
        rest = &rest[unit.len()..];
        parts += 1;
        if parts > 4 {
            return false;
        }
    }
    parts > 0
}

fn parse_since(s: &str) -> Result<Timestamp> {
    if let Ok(t) = s.parse::<Timestamp>() {
        return Ok(t);
    }
    // `?since=2026-11-25T10:00:00+01:00` written without encoding the `+`:
    // the query string's form decoding made it a space.
    if s.contains(' ')
        && let Ok(t) = s.replace(' ', "+").parse::<Timestamp>()
    {
        return Ok(t);
    }
    let bad = || {
        ApiError::bad_request(format!(
            "since must be an RFC 3339 time or a duration such as 1h or 1h30m, not {s:?}"
        ))
    };
    if !duration_shape(s) {
        return Err(bad());
    }
    let d = crate::config::parse_duration(s).map_err(|_| bad())?;
    let d = jiff::SignedDuration::try_from(d)
        .map_err(|_| ApiError::bad_request("since is out of range"))?;
    Timestamp::now()
        .checked_sub(d)
        .map_err(|_| ApiError::bad_request("since is out of range"))
}

/// Open an action for the caller: their changes (DELETEs included) are grouped
/// into it until it is completed.
#[utoipa::path(post, path = "/api/v1/actions", tag = "actions",
    request_body(content = Option<OpenAction>, description = "optional id, description and guard; the body may be left out", content_type = "application/json"),
    responses(
        (status = 201, body = ActionSummary),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "the caller already has an open action, or the id is taken"),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
    ))]
pub async fn create_action(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let body = read_body(body)?;
    require_json(&headers)?;
    let req: OpenAction = if body.iter().all(u8::is_ascii_whitespace) {
        OpenAction::default()
    } else {
        let value: Value = serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
        match value {
            // `null` is an absent body.
            Value::Null => OpenAction::default(),
            Value::Object(_) => serde_json::from_value(value)
                .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?,
            _ => return Err(ApiError::bad_request("the body must be a JSON object")),
        }
    };
    if let Some(d) = &req.description
        && d.len() > 4096
    {
        return Err(ApiError::bad_request(
            "description must be at most 4096 bytes",
        ));
    }
    if let Some(g) = &req.guard {
        g.validate().map_err(ApiError::bad_request)?;
    }
    let caller = state
        .auth
        .check(&headers, "create", req.id.as_deref())
        .await?;
    // It takes none (`?dryRun=true` must not open a real action).
    Query::parse(raw.as_deref(), &[])?;
    let now = Timestamp::now();
    let id = match &req.id {
        Some(id) => ActionId::parse_chosen(id).map_err(|e| ApiError::bad_request(e.to_string()))?,
        None => crate::capture::attribution::session_id(&caller.user, now, rand::random()),
    };
    let _serial = state.open_lock.lock().await;
    let open = state
        .store
        .list_actions(Some(ActionState::Open))
        .await
        .map_err(|e| ApiError::from_store("listing actions", &e))?;
    if let Some((r, _)) = open
        .iter()
        .find(|(r, _)| r.origin == "explicit" && r.owner == caller.user)
    {
        return Err(ApiError::conflict(format!(
            "{} already has an open action {}; complete or cancel it first",
            caller.user, r.id
        )));
    }
    let mut record = ActionRecord::new(id.clone(), "explicit", &caller.user, now);
    record.description = req.description.clone();
    record.owner_groups = caller.groups.clone();
    if let Some(guard) = &req.guard {
        record.extensions.insert(
            crate::guard::GUARD_KEY.into(),
            serde_json::to_value(crate::guard::GuardStatus::new(guard.clone())).unwrap_or_default(),
        );
    }
    let created = state
        .store
        .create_action(&record)
        .await
        .map_err(|e| ApiError::from_store("creating the action", &e))?;
    if !created {
        return Err(ApiError::conflict(format!("action {id} already exists")));
    }
    // Another replica may have opened one for the same caller meanwhile
    // (the lock above is this process's only). Each looks again once its
    // own record exists and gives way to any other: of two creates the
    // API server orders, the later one's look always finds the earlier,
    // so two are never both kept (both may give way in a close race; the
    // caller asks again).
    if let Some(other) = other_open_action(&state, &record).await {
        if let Err(e) = state.store.delete_action(&id).await {
            tracing::warn!(action = %id, error = %e, "withdrawing an action opened twice");
        }
        return Err(ApiError::conflict(format!(
            "{} already has an open action {other} (opened at the same moment through another replica); complete or cancel it first, or try again",
            caller.user
        )));
    }
    if let Some(a) = &state.attribution {
        a.set_open(&caller.user, Some(id.clone()));
    }
    Ok((StatusCode::CREATED, Json(ActionSummary::new(&record, &[]))).into_response())
}

/// Another explicit action of the same owner that is open, if there is
/// one. A failed read is none: the check before the create already ran.
async fn other_open_action(state: &ApiState, ours: &ActionRecord) -> Option<ActionId> {
    let open = state
        .store
        .list_actions(Some(ActionState::Open))
        .await
        .ok()?;
    open.into_iter()
        .map(|(r, _)| r)
        .find(|r| r.origin == "explicit" && r.owner == ours.owner && r.id != ours.id)
        .map(|r| r.id)
}

/// JSON endpoints take a JSON body under `application/json` (or `+json`), no
/// content type, or the types command-line tools send by default
/// (`curl -d` says `application/x-www-form-urlencoded`, others
/// `text/plain`); the body must parse as JSON either way. Any other type
/// (YAML, a form upload…) is 415.
pub fn require_json(headers: &HeaderMap) -> Result<()> {
    match headers
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or(""))
    {
        None => Ok(()),
        Some(ct) => {
            let essence = ct
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            if essence == "application/json"
                || essence.ends_with("+json")
                || essence == "application/x-www-form-urlencoded"
                || essence == "text/plain"
            {
                Ok(())
            } else {
                Err(ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    format!("Content-Type must be application/json, not {ct:?}"),
                ))
            }
        }
    }
}

fn read_body(body: std::result::Result<Bytes, BytesRejection>) -> Result<Bytes> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "request body too large")
        } else {
            ApiError::bad_request(format!("reading the request body: {e}"))
        }
    })
}

/// An action with its changes and rollback reports.
#[utoipa::path(get, path = "/api/v1/actions/{id}", tag = "actions",
    params(("id" = String, Path, description = "action id", pattern = r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")),
    responses(
        (status = 200, body = ActionDetail),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
    ))]
pub async fn get_action(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    id: IdPath,
    RawQuery(raw): RawQuery,
) -> Result<Json<ActionDetail>> {
    let (_, id) = id.authorize(&state, &headers, "get").await?;
    Query::parse(raw.as_deref(), &[])?;
    let (record, _) = record(&state, &id).await?;
    let metas = state
        .store
        .list_snapshots(&id)
        .await
        .map_err(|e| ApiError::from_store("listing snapshots", &e))?;
    let refs: Vec<&SnapshotMeta> = metas.iter().collect();
    Ok(Json(ActionDetail {
        base: ActionBase::new(&record, &refs),
        changes: metas.iter().map(Change::from).collect(),
        rollback_reports: record.rollbacks.clone(),
        progress: Progress::of(&record),
    }))
}

/// Per object: the prior state against the current one, as the caller sees it.
#[utoipa::path(get, path = "/api/v1/actions/{id}/diff", tag = "actions",
    params(("id" = String, Path, description = "action id", pattern = r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")),
    responses(
        (status = 200, body = DiffResponse),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
    ))]
pub async fn diff_action(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    id: IdPath,
    RawQuery(raw): RawQuery,
) -> Result<Json<DiffResponse>> {
    let (caller, id) = id.authorize(&state, &headers, "get").await?;
    Query::parse(raw.as_deref(), &[])?;
    record(&state, &id).await?;
    let histories = visible(&state, &caller, state.restorer.histories(&id).await?).await?;
    let client = state.restorer.client_for(&caller, None)?;
    let current = state.restorer.current_states(&client, &histories).await;
    let objects = histories
        .iter()
        .zip(current)
        .map(|(h, cur)| {
            let o = &h.object;
            let mut d = ObjectDiff {
                group: o.group.clone(),
                version: o.version.clone(),
                resource: o.resource.clone(),
                subresource: o.subresource.clone(),
                kind: o.kind.clone(),
                namespace: o.namespace.clone(),
                name: o.name.clone(),
                change: String::new(),
                diff: String::new(),
                patch: Value::Array(vec![]),
                error: None,
            };
            // The action's create of it was refused (it existed already):
            // the action did not change it.
            let phantom = matches!(&cur, Ok(Some(c)) if crate::restore::plan::phantom_create(h, c));
            let prior = match &h.target {
                Target::Present(p) | Target::Scale(p) => Some(strip_for_diff(p)),
                Target::Absent { .. } if phantom => match &cur {
                    Ok(Some(c)) => Some(strip_for_diff(c)),
                    _ => None,
                },
                Target::Absent { .. } => None,
                Target::Unreadable(e) => {
                    d.change = "error".into();
                    d.error = Some(e.clone());
                    return d;
                }
            };
            let cur = match cur {
                Ok(c) => c.map(|c| strip_for_diff(&c)),
                Err(e) => {
                    d.change = "error".into();
                    d.error = Some(e);
                    return d;
                }
            };
            d.change = match (&prior, &cur) {
                (None, None) => "unchanged",
                (None, Some(_)) => "created",
                (Some(_), None) => "deleted",
                (Some(p), Some(c)) if crate::store::codec::same_content(p, c) => "unchanged",
                _ => "modified",
            }
            .into();
            // Secret values shown only as changed or not.
            let (prior, cur) = redact_pair(prior, cur);
            let yaml =
                |v: &Option<Value>| v.as_ref().map(crate::yaml::to_string).unwrap_or_default();
            let (py, cy) = (yaml(&prior), yaml(&cur));
            d.diff = similar::TextDiff::from_lines(&py, &cy)
                .unified_diff()
                .context_radius(3)
                .header("prior", "current")
                .to_string();
            let null = Value::Null;
            // What a rollback applies: nothing to an unchanged object, whose
            // only differences are what controllers and the API server fill
            // in (a Job's generated selector, a ServiceAccount's tokens),
            // which the diff still shows.
            d.patch = if d.change == "unchanged" {
                Value::Array(Vec::new())
            } else {
                serde_json::to_value(json_patch::diff(
                    cur.as_ref().unwrap_or(&null),
                    prior.as_ref().unwrap_or(&null),
                ))
                .unwrap_or(Value::Null)
            };
            d
        })
        .collect();
    Ok(Json(DiffResponse {
        action: id.to_string(),
        objects,
    }))
}

/// The prior state of every object the action touched, as multi-document
/// YAML (server-owned fields stripped): ready to commit to git.
#[utoipa::path(get, path = "/api/v1/actions/{id}/manifests", tag = "actions",
    params(("id" = String, Path, description = "action id", pattern = r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")),
    responses(
        (status = 200, content_type = "text/plain", body = String, description = "a multi-document YAML stream: one document per object that existed before the action; comments at the top name the others"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
    ))]
pub async fn manifests(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    id: IdPath,
    RawQuery(raw): RawQuery,
) -> Result<Response> {
    let (caller, id) = id.authorize(&state, &headers, "get").await?;
    Query::parse(raw.as_deref(), &[])?;
    record(&state, &id).await?;
    let histories = visible(&state, &caller, state.restorer.histories(&id).await?).await?;
    // Where each prior state goes, decided once; a default ServiceAccount
    // of its owner's right before the workloads, after everything else of
    // its namespace's.
    let mut placed: Vec<(Option<GitPlacement>, ObjectHistory)> = histories
        .into_iter()
        .map(|h| match &h.target {
            Target::Present(p) => (Some(crate::restore::plan::git_placement(&h, p)), h),
            _ => (None, h),
        })
        .collect();
    let workloads = crate::restore::plan::rank("apps", "deployments");
    placed.sort_by(|(pa, a), (pb, b)| {
        let rank = |place: &Option<GitPlacement>, h: &ObjectHistory| match place {
            Some(GitPlacement::BeforeWorkloads) => workloads - 1,
            _ => h.rank,
        };
        (rank(pa, a), &a.object.namespace, &a.object.name).cmp(&(
            rank(pb, b),
            &b.object.namespace,
            &b.object.name,
        ))
    });
    // Every document is an object (a YAML reader gets no empty documents);
    // what has no manifest is said in the comments at the top.
    let mut notes = Vec::new();
    let mut docs = Vec::new();
    let yaml = |v: &Value| -> Result<String> {
        Ok(crate::yaml::to_string(&redact(
            &crate::restore::plan::for_git(v),
        )))
    };
    let mut client = None;
    for (place, h) in &placed {
        let o = &h.object;
        match &h.target {
            // Made through apiextensions.k8s.io/v1beta1 and not valid as
            // a v1 create: the form kubectl can apply (up to 1.21).
            Target::Present(p)
                if o.group == "apiextensions.k8s.io"
                    && o.resource == "customresourcedefinitions"
                    && crate::restore::plan::legacy_crd(p) =>
            {
                docs.push(format!(
                    "# {o}: made through apiextensions.k8s.io/v1beta1 (no schema or preserveUnknownFields), which v1 refuses to create\n{}",
                    yaml(&crate::restore::plan::crd_as_v1beta1(p))?
                ))
            }
            Target::Present(p) => match place.as_ref().unwrap_or(&GitPlacement::InOrder) {
                GitPlacement::InOrder => docs.push(yaml(p)?),
                GitPlacement::BeforeWorkloads => docs.push(format!(
                    "# {o}: after the rest of its namespace (the cluster makes it when the namespace is created), before the workloads\n{}",
                    yaml(p)?
                )),
                GitPlacement::LeftOut(why) => notes.push(format!("{o}: left out, {why}")),
            },
            Target::Scale(scale) => {
                // Only its scale changed: the object as it is now, with the
                // replicas it had before the action.
                // A Scale leaves out a zero (omitempty).
                let replicas = scale
                    .get("spec")
                    .and_then(|s| s.get("replicas"))
                    .cloned()
                    .unwrap_or(Value::from(0));
                let client = match &client {
                    Some(c) => c,
                    None => client.insert(state.restorer.client_for(&caller, None)?),
                };
                let mut parent = o.clone();
                parent.subresource = None;
                match crate::restore::dynamic::get(client, &parent).await {
                    Ok(Some(mut current)) => {
                        if let Some(spec) = current.get_mut("spec").and_then(Value::as_object_mut) {
                            spec.insert("replicas".into(), replicas.clone());
                        }
                        docs.push(format!(
                            "# {parent}: only its scale changed; its current manifest with the replicas it had before ({replicas})\n{}",
                            yaml(&current)?
                        ));
                    }
                    Ok(None) => notes.push(format!(
                        "{parent}: only its scale changed (replicas before: {replicas}); it no longer exists"
                    )),
                    Err(e) => notes.push(format!(
                        "{parent}: only its scale changed (replicas before: {replicas}); reading it now failed: {}",
                        crate::store::describe_kube_error(&e)
                    )),
                }
            }
            Target::Absent { created_uids, .. } => {
                // Only an object the action knows it created can be told
                // from one that was there already: read it only then.
                let phantom = !created_uids.is_empty() && {
                    let client = match &client {
                        Some(c) => c,
                        None => client.insert(state.restorer.client_for(&caller, None)?),
                    };
                    matches!(
                        crate::restore::dynamic::get(client, o).await,
                        Ok(Some(c)) if crate::restore::plan::phantom_create(h, &c)
                    )
                };
                notes.push(if phantom {
                    format!(
                        "{o}: not changed by the action (its create was refused: the object existed already)"
                    )
                } else {
                    format!("{o}: did not exist before the action")
                })
            }
            Target::Unreadable(e) => notes.push(format!("{o}: no manifest: {e}")),
        }
    }
    let mut out = format!("# Prior state of the objects of action {id}, captured by snapback.\n");
    for n in notes {
        out.push_str(&format!("# {}\n", n.replace('\n', " ")));
    }
    for d in docs {
        out.push_str("---\n");
        out.push_str(&d);
    }
    Ok((
        // A multi-document YAML stream, served as text: generic clients
        // and schema checkers that parse `application/yaml` expect one
        // document.
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        out,
    )
        .into_response())
}

/// Only the objects the caller may `get`: a prior state is shown to those
/// who could read the object, nobody else. Hidden objects are listed by
/// name only (their names are in the action's changes anyway).
async fn visible(
    state: &ApiState,
    caller: &crate::restore::rollback::Caller,
    histories: Vec<crate::restore::plan::ObjectHistory>,
) -> Result<Vec<crate::restore::plan::ObjectHistory>> {
    let mut out = Vec::with_capacity(histories.len());
    for mut h in histories {
        let mut object = h.object.clone();
        object.subresource = None;
        if !state.auth.can(caller, "get", &object).await? {
            h.target = Target::Unreadable(format!("{} may not get this object", caller.user));
        }
        out.push(h);
    }
    Ok(out)
}

/// Close an open action.
#[utoipa::path(post, path = "/api/v1/actions/{id}/complete", tag = "actions",
    params(("id" = String, Path, description = "action id", pattern = r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")),
    responses(
        (status = 200, body = ActionSummary),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "the action is not open"),
    ))]
pub async fn complete_action(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    id: IdPath,
    RawQuery(raw): RawQuery,
    body: UnusedBody,
) -> Result<Json<ActionSummary>> {
    let (_, id) = id.authorize(&state, &headers, "update").await?;
    Query::parse(raw.as_deref(), &[])?;
    no_body(body)?;
    let (mut rec, rv) = record(&state, &id).await?;
    if rec.state != ActionState::Open {
        return Err(ApiError::conflict(format!(
            "action {id} is {}, not open",
            rec.state
        )));
    }
    let now = Timestamp::now();
    rec.state = ActionState::Completed;
    rec.completed_at = Some(now);
    rec.updated_at = now;
    state
        .store
        .update_action(&rec, &rv)
        .await
        .map_err(|e| ApiError::from_store("completing the action", &e))?;
    if let Some(a) = &state.attribution {
        a.close_if(&rec.owner, &id);
    }
    let metas = state.store.list_snapshots(&id).await.unwrap_or_default();
    let refs: Vec<&SnapshotMeta> = metas.iter().collect();
    Ok(Json(ActionSummary::new(&rec, &refs)))
}

fn rollback_params(state: &ApiState, q: &Query) -> Result<Params> {
    let failure_policy = match q.get("failurePolicy") {
        None => state.restorer.config().failure_policy,
        Some("abort") => FailurePolicy::Abort,
        Some("continue") => FailurePolicy::Continue,
        Some("retry") => FailurePolicy::Retry,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "failurePolicy must be abort, continue or retry, not {other:?}"
            )));
        }
    };
    Ok(Params {
        dry_run: q.flag("dryRun")?,
        force: q.flag("force")?,
        failure_policy,
        recreate: q.flag("recreate")?,
    })
}

/// Restore every object the action touched to its state before the action.
#[utoipa::path(post, path = "/api/v1/actions/{id}/rollback", tag = "actions",
    params(
        ("id" = String, Path, description = "action id", pattern = r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"),
        RollbackQuery,
    ),
    responses(
        (status = 200, body = Report),
        (status = 400, body = ErrorBody, description = "bad parameter, or the action is older than the rollback window"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "objects changed after the action (named), or a rollback is already running"),
    ))]
pub async fn rollback_action(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    id: IdPath,
    RawQuery(raw): RawQuery,
    body: UnusedBody,
) -> Result<Json<Report>> {
    run_rollback(state, headers, id, raw, body, Trigger::Request, "rollback").await
}

/// Close an open action and roll it back (trigger `cancel`).
#[utoipa::path(post, path = "/api/v1/actions/{id}/cancel", tag = "actions",
    params(
        ("id" = String, Path, description = "action id", pattern = r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"),
        RollbackQuery,
    ),
    responses(
        (status = 200, body = Report),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "the action is not open, objects changed after it, or a rollback is running"),
    ))]
pub async fn cancel_action(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    id: IdPath,
    RawQuery(raw): RawQuery,
    body: UnusedBody,
) -> Result<Json<Report>> {
    run_rollback(state, headers, id, raw, body, Trigger::Cancel, "cancel").await
}

async fn run_rollback(
    state: Arc<ApiState>,
    headers: HeaderMap,
    id: IdPath,
    raw: Option<String>,
    body: UnusedBody,
    trigger: Trigger,
    verb: &str,
) -> Result<Json<Report>> {
    let (caller, id) = id.authorize(&state, &headers, verb).await?;
    let q = Query::parse(raw.as_deref(), ROLLBACK_PARAMS)?;
    no_body(body)?;
    let params = rollback_params(&state, &q)?;
    settle(&state, Some(&id)).await;
    // Run detached: a client that disconnects does not abandon a rollback halfway.
    let restorer = state.restorer.clone();
    let task =
        tokio::spawn(async move { restorer.rollback(&id, trigger, params, &caller, None).await });
    let report = task
        .await
        .map_err(|e| ApiError::internal("rollback task", &e))??;
    Ok(Json(report))
}

/// Delete the action's snapshots and its record.
#[utoipa::path(delete, path = "/api/v1/actions/{id}", tag = "actions",
    params(("id" = String, Path, description = "action id", pattern = r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")),
    responses(
        (status = 204, description = "deleted"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "a rollback of the action is running"),
    ))]
pub async fn delete_action(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    id: IdPath,
    RawQuery(raw): RawQuery,
    body: UnusedBody,
) -> Result<StatusCode> {
    let (_, id) = id.authorize(&state, &headers, "delete").await?;
    Query::parse(raw.as_deref(), &[])?;
    no_body(body)?;
    let (mut rec, mut rv) = record(&state, &id).await?;
    // Claimed first, with the record's resourceVersion as precondition,
    // the way retention claims what it prunes: a rollback marks the record
    // the same way before it plans (it is `rolling-back` only once planned),
    // so the two never both go ahead.
    let mut tries = 0;
    loop {
        if rec.state == ActionState::RollingBack || state.restorer.is_running(&id) {
            return Err(ApiError::conflict(format!(
                "a rollback of action {id} is running"
            )));
        }
        // Asked for on another replica and still planning there.
        if rollback_planning(&rec, state.restorer.instance()) {
            return Err(ApiError::conflict(format!(
                "a rollback of action {id} was asked for less than {}s ago and has not finished planning; try again shortly",
                PLANNING_GRACE.as_secs()
            )));
        }
        let mut claimed = rec.clone();
        claimed.extensions.insert(
            PRUNING_KEY.into(),
            Value::from(Timestamp::now().to_string()),
        );
        match state.store.update_action(&claimed, &rv).await {
            Ok(_) => break,
            // Changed meanwhile (a change of the open action, a rollback
            // starting elsewhere): look again.
            Err(StoreError::Conflict(_)) if tries < 5 => {
                tries += 1;
                (rec, rv) = record(&state, &id).await?;
            }
            Err(StoreError::Conflict(_)) => {
                return Err(ApiError::conflict(format!(
                    "action {id} kept changing while it was being deleted; try again"
                )));
            }
            Err(e) => return Err(ApiError::from_store("deleting the action", &e)),
        }
    }
    let stored = snapshot_count(&state, &id).await;
    if let Err(e) = state.store.delete_action(&id).await {
        // Nothing deleted: the claim is withdrawn, so that the action stays
        // usable (rollback, cancel, retention by its own rules) and the
        // caller may try again. Partly deleted (or unknown): the claim
        // stays. A rollback from what is left could restore an object from
        // a later snapshot than its first, a state from the middle of the
        // action; so the action stays out of rollbacks until a DELETE (or
        // retention, for a finished action) completes it.
        let untouched = stored.is_some() && snapshot_count(&state, &id).await == stored;
        if !untouched {
            tracing::warn!(action = %id, error = %e, "deleting the action failed part way; it stays claimed for deletion");
            let mut err = ApiError::from_store("deleting the action", &e);
            err.message = format!(
                "{}; the deletion of action {id} stopped part way: what is left of it cannot be rolled back; DELETE it again to finish",
                err.message
            );
            return Err(err);
        }
        if let Ok(Some((mut now, now_rv))) = state.store.get_action(&id).await
            && now.extensions.remove(PRUNING_KEY).is_some()
            && let Err(e2) = state.store.update_action(&now, &now_rv).await
        {
            tracing::warn!(action = %id, error = %e2, "withdrawing the deletion claim of an action not deleted");
        }
        return Err(ApiError::from_store("deleting the action", &e));
    }
    if rec.state == ActionState::Open
        && let Some(a) = &state.attribution
    {
        a.close_if(&rec.owner, &id);
    }
    Ok(StatusCode::NO_CONTENT)
}

/// How many snapshots of the action are stored (None when that cannot be
/// read).
async fn snapshot_count(state: &ApiState, id: &ActionId) -> Option<usize> {
    state.store.list_snapshots(id).await.ok().map(|s| s.len())
}

/// How long after a rollback was asked for (its record marked, before it
/// plans) a DELETE of the action waits for it, when the rollback runs on
/// another replica (in this one, `Restorer::is_running` knows).
const PLANNING_GRACE: std::time::Duration = std::time::Duration::from_secs(60);

/// A rollback of this action was asked for by another snapshotter than
/// `own` within [`PLANNING_GRACE`] and has neither been marked
/// `rolling-back` nor left a report (the report's `startedAt` is the time
/// of the request).
fn rollback_planning(rec: &ActionRecord, own: &str) -> bool {
    if rec
        .extensions
        .get(ROLLBACK_REQUESTED_BY_KEY)
        .and_then(Value::as_str)
        .is_some_and(|by| by == own)
    {
        return false;
    }
    let Some(asked) = rec
        .extensions
        .get(ROLLBACK_REQUESTED_KEY)
        .and_then(Value::as_str)
        .and_then(|t| t.parse::<Timestamp>().ok())
    else {
        return false;
    };
    let recent = Timestamp::now()
        .duration_since(asked)
        .unsigned_abs()
        .lt(&PLANNING_GRACE);
    recent
        && !rec.rollbacks.iter().any(|r| {
            r.get("startedAt")
                .and_then(Value::as_str)
                .and_then(|t| t.parse::<Timestamp>().ok())
                == Some(asked)
        })
}

/// Liveness.
#[utoipa::path(get, path = "/healthz", tag = "probes", security(()), responses((status = 200, body = String)))]
pub async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: certificates loaded and the API server answering.
#[utoipa::path(get, path = "/readyz", tag = "probes", security(()),
    responses((status = 200, body = String), (status = 503, body = String)))]
pub async fn readyz(State(state): State<Arc<ApiState>>) -> (StatusCode, &'static str) {
    if state.readiness.ready() {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_times_with_offsets_and_durations() {
        let t: Timestamp = "2026-11-25T09:00:00Z".parse().unwrap();
        assert_eq!(parse_since("2026-11-25T10:00:00+01:00").unwrap(), t);
        // The `+` unencoded in the query string arrives as a space.
        assert_eq!(parse_since("2026-11-25T10:00:00 01:00").unwrap(), t);
        assert_eq!(parse_since("2026-11-25T09:00:00Z").unwrap(), t);
        let hour_ago = parse_since("1h").unwrap();
        let age = Timestamp::now().duration_since(hour_ago).as_secs();
        assert!((3599..=3601).contains(&age), "{age}");
        for bad in ["yesterday", "2026-11-25 10:00", "1 h", ""] {
            assert!(parse_since(bad).is_err(), "{bad:?}");
        }
    }

    fn asked(at: Timestamp, by: &str) -> ActionRecord {
        let mut rec = ActionRecord::new(ActionId::parse("a").unwrap(), "explicit", "alice", at);
        rec.extensions
            .insert(ROLLBACK_REQUESTED_KEY.into(), Value::from(at.to_string()));
        rec.extensions
            .insert(ROLLBACK_REQUESTED_BY_KEY.into(), Value::from(by));
        rec
    }

    #[test]
    fn a_rollback_asked_for_elsewhere_is_planning_until_its_report_or_the_grace() {
        let now = Timestamp::now();
        // Another replica asked a moment ago, no report yet.
        assert!(rollback_planning(&asked(now, "other"), "me"));
        // This replica's own: the in-process claim knows better.
        assert!(!rollback_planning(&asked(now, "me"), "me"));
        // Finished: its report starts at the time it was asked.
        let mut done = asked(now, "other");
        done.rollbacks
            .push(serde_json::json!({"startedAt": now.to_string()}));
        assert!(!rollback_planning(&done, "me"));
        // An earlier report does not count.
        let mut earlier = asked(now, "other");
        earlier.rollbacks.push(serde_json::json!({
            "startedAt": (now - jiff::SignedDuration::from_secs(300)).to_string()
        }));
        assert!(rollback_planning(&earlier, "me"));
        // Past the grace (a rollback that ended without a report).
        let old = now - jiff::SignedDuration::from_secs(PLANNING_GRACE.as_secs() as i64 + 5);
        assert!(!rollback_planning(&asked(old, "other"), "me"));
        // Never asked.
        let plain = ActionRecord::new(ActionId::parse("a").unwrap(), "explicit", "alice", now);
        assert!(!rollback_planning(&plain, "me"));
    }
}
