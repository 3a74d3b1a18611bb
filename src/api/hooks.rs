//! `POST /api/v1/hooks/alertmanager`: Alertmanager's webhook payload. A firing
//! alert labelled `snapback_action` rolls that action back; one labelled only
//! `namespace` rolls back the newest completed action that touched the
//! namespace, if younger than `--alert-rollback-window`. Duplicate and
//! resolved notifications do nothing twice: the alerts that triggered are
//! remembered in the action record.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::HeaderMap;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::api::ApiState;
use crate::api::error::{ApiError, ErrorBody};
use crate::restore::report::Trigger;
use crate::restore::rollback::{Caller, Params, RollbackError, modify};
use crate::store::actions::ActionState;
use crate::store::model::ActionId;

const ALERTS_KEY: &str = "alerts";

/// Alertmanager's webhook payload (version 4); unknown fields are ignored.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AlertmanagerPayload {
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub alerts: Vec<Alert>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub starts_at: String,
    #[serde(default)]
    pub fingerprint: String,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AlertOutcome {
    pub alert: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// rolled-back, rollback-failed, duplicate, resolved, no-action, error
    pub outcome: String,
    pub message: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AlertResponse {
    pub alerts: Vec<AlertOutcome>,
}

/// Roll back the actions firing alerts point at.
#[utoipa::path(post, path = "/api/v1/hooks/alertmanager", tag = "hooks",
    request_body(content = AlertmanagerPayload, description = "Alertmanager webhook payload (version 4)", content_type = "application/json"),
    responses(
        (status = 200, body = AlertResponse, description = "what was done for each alert"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
    ))]
pub async fn alertmanager(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    axum::extract::RawQuery(raw): axum::extract::RawQuery,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<AlertResponse>, ApiError> {
    let body = body.map_err(|e| {
        if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(e.status(), "request body too large")
        } else {
            ApiError::bad_request(e.to_string())
        }
    })?;
    crate::api::handlers::require_json(&headers)?;
    let value: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("not an Alertmanager webhook payload: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::bad_request(
            "not an Alertmanager webhook payload: expected a JSON object",
        ));
    }
    let payload: AlertmanagerPayload = serde_json::from_value(value)
        .map_err(|e| ApiError::bad_request(format!("not an Alertmanager webhook payload: {e}")))?;
    let hook_caller = state.auth.check(&headers, "rollback", None).await?;
    crate::api::handlers::Query::parse(raw.as_deref(), &[])?;
    let caller = match &state.alerts.rollback_as {
        Some(user) => Caller {
            user: user.clone(),
            groups: vec![],
        },
        None => hook_caller,
    };
    let mut outcomes = Vec::new();
    for alert in &payload.alerts {
        let name = alert
            .labels
            .get("alertname")
            .cloned()
            .unwrap_or_else(|| "alert".into());
        let outcome = |action: Option<&ActionId>, outcome: &str, message: String| AlertOutcome {
            alert: name.clone(),
            action: action.map(|a| a.to_string()),
            outcome: outcome.into(),
            message,
        };
        if alert.status != "firing" {
            state.metrics.alerts.with_label_values(&["resolved"]).inc();
            outcomes.push(outcome(
                None,
                "resolved",
                "resolved alerts do nothing".into(),
            ));
            continue;
        }
        let key = format!("{}@{}", alert.fingerprint, alert.starts_at);
        let target = match find_action(&state, alert, &key).await {
            Ok(Some(id)) => id,
            Ok(None) => {
                state.metrics.alerts.with_label_values(&["no-action"]).inc();
                outcomes.push(outcome(None, "no-action", "no snapback_action label, and no recent completed action in the alert's namespace".into()));
                continue;
            }
            Err(e) => {
                state.metrics.alerts.with_label_values(&["error"]).inc();
                outcomes.push(outcome(None, "error", e.message));
                continue;
            }
        };
        // Remember the alert on the action first, so duplicates (retries,
        // repeat_interval, other replicas) find it and do nothing.
        let mut duplicate = false;
        let remembered = modify(state.restorer.store(), &target, |r| {
            let seen = r
                .extensions
                .entry(ALERTS_KEY.to_string())
                .or_insert_with(|| serde_json::json!([]));
            duplicate = seen
                .as_array()
                .is_some_and(|a| a.iter().any(|k| k == key.as_str()))
                || matches!(r.state, ActionState::RollingBack | ActionState::RolledBack);
            if !duplicate && let Some(a) = seen.as_array_mut() {
                a.push(serde_json::Value::String(key.clone()));
            }
        })
        .await;
        if let Err(e) = remembered {
            state.metrics.alerts.with_label_values(&["error"]).inc();
            outcomes.push(outcome(Some(&target), "error", e.to_string()));
            continue;
        }
        if duplicate {
            state.metrics.alerts.with_label_values(&["duplicate"]).inc();
            outcomes.push(outcome(
                Some(&target),
                "duplicate",
                "this alert was handled before, or the action is already rolled back or rolling back (its rollback reports say how)".into(),
            ));
            continue;
        }
        let params = Params {
            dry_run: false,
            // Never overwrite someone else's later change automatically.
            force: false,
            failure_policy: state.restorer.config().failure_policy,
            recreate: false,
        };
        let reason = Some(format!("alert {name} firing since {}", alert.starts_at));
        let restorer = state.restorer.clone();
        let (id, caller2) = (target.clone(), caller.clone());
        let result = tokio::spawn(async move {
            restorer
                .rollback(&id, Trigger::Alert, params, &caller2, reason)
                .await
        })
        .await
        .map_err(|e| ApiError::internal("alert rollback task", &e))?;
        match result {
            Ok(report) => {
                state
                    .metrics
                    .alerts
                    .with_label_values(&[report.state.as_str()])
                    .inc();
                outcomes.push(outcome(
                    Some(&target),
                    &report.state,
                    format!("recorded as {}", report.rollback_action.unwrap_or_default()),
                ));
            }
            Err(RollbackError::Running(_)) => {
                state.metrics.alerts.with_label_values(&["duplicate"]).inc();
                outcomes.push(outcome(
                    Some(&target),
                    "duplicate",
                    "a rollback of the action is already running".into(),
                ));
            }
            Err(e) => {
                state.metrics.alerts.with_label_values(&["error"]).inc();
                outcomes.push(outcome(Some(&target), "error", e.to_string()));
            }
        }
    }
    Ok(Json(AlertResponse { alerts: outcomes }))
}

/// The action an alert is about: the one its `snapback_action` label
/// names, the one that already handled this very alert (`key`: a
/// re-delivery, every `repeat_interval`, must not move on to the next older
/// action once the first was rolled back), or the newest completed action
/// that changed the alert's `namespace` within the window.
async fn find_action(
    state: &ApiState,
    alert: &Alert,
    key: &str,
) -> Result<Option<ActionId>, ApiError> {
    crate::api::handlers::settle(state, None).await;
    if let Some(id) = alert.labels.get("snapback_action") {
        let id = ActionId::parse(id).map_err(|e| ApiError::bad_request(e.to_string()))?;
        return match state.store.get_action(&id).await {
            Ok(Some(_)) => Ok(Some(id)),
            Ok(None) => Err(ApiError::not_found(format!("action {id} not found"))),
            Err(e) => Err(ApiError::from_store("reading the action", &e)),
        };
    }
    let Some(ns) = alert.labels.get("namespace") else {
        return Ok(None);
    };
    let records = state
        .store
        .list_actions(None)
        .await
        .map_err(|e| ApiError::from_store("listing actions", &e))?;
    if let Some((handled, _)) = records.iter().find(|(r, _)| {
        r.extensions
            .get(ALERTS_KEY)
            .and_then(serde_json::Value::as_array)
            .is_some_and(|seen| seen.iter().any(|k| k == key))
    }) {
        return Ok(Some(handled.id.clone()));
    }
    let records: Vec<_> = records
        .into_iter()
        .filter(|(r, _)| r.state == ActionState::Completed)
        .collect();
    // Candidates from metadata alone (no batch is read): completed actions
    // that touched the namespace and whose latest change, anywhere, is in
    // the window. Only their snapshots are read, for the latest change in
    // this namespace.
    let activity = state
        .store
        .activity_by_action()
        .await
        .map_err(|e| ApiError::from_store("listing snapshots", &e))?;
    let window =
        jiff::SignedDuration::try_from(state.alerts.window).unwrap_or(jiff::SignedDuration::MAX);
    let now = Timestamp::now();
    let in_window = |t: Timestamp| now.duration_since(t) <= window;
    let mut newest: Option<(Timestamp, ActionId)> = None;
    for (record, _) in records.iter().filter(|(r, _)| r.origin != "rollback") {
        let Some(a) = activity.get(record.id.as_str()) else {
            continue;
        };
        if !a.namespaces.contains(ns.as_str()) || !a.last.is_some_and(in_window) {
            continue;
        }
        let metas = state
            .store
            .list_snapshots(&record.id)
            .await
            .map_err(|e| ApiError::from_store("listing snapshots", &e))?;
        let last = metas
            .iter()
            .filter(|m| m.object.namespace.as_deref() == Some(ns.as_str()))
            .map(|m| m.timestamp)
            .max();
        if let Some(last) = last.filter(|t| in_window(*t)) {
            newest = newest.max(Some((last, record.id.clone())));
        }
    }
    Ok(newest.map(|(_, id)| id))
}
