//! Whether a change asks for a guard on its action (`snapback.io/guard`).
//!
//! The annotation stays on the object, so it cannot simply be read from the
//! object after every change: whoever changes the object later (`kubectl
//! label`, `kubectl scale`, an edit of something else) would arm a guard
//! that somebody else planted, and a failing guard rolls back the whole
//! action. A change asks for the guard only when it states it:
//!
//! * a CREATE of an object carrying it;
//! * an UPDATE that sets it or changes its value;
//! * an UPDATE by an apply whose configuration carries it: client-side
//!   `kubectl apply` (the `last-applied-configuration` it writes has it) or
//!   server-side apply (the request's field manager owns the annotation as
//!   an `Apply` manager), so that every release applied from a manifest
//!   with the annotation is guarded.
//!
//! The guard loop also honours it only on the action owner's own changes
//! (`crate::guard`): nobody guards, and so rolls back, someone else's action.

use serde_json::Value;
use serde_json::value::RawValue;

use crate::store::model::{GUARD_ANNOTATION, LAST_APPLIED_ANNOTATION, Operation};

fn annotation<'a>(object: &'a Value, key: &str) -> Option<&'a str> {
    object
        .get("metadata")?
        .get("annotations")?
        .get(key)?
        .as_str()
}

/// The guard duration the change asks for, as written on the object (not
/// validated here).
pub fn stated_guard<'a>(
    operation: Operation,
    after: Option<&'a Value>,
    prior: Option<&RawValue>,
    options: Option<&Value>,
    now: jiff::Timestamp,
) -> Option<&'a str> {
    let after = after?;
    let guard = annotation(after, GUARD_ANNOTATION)?;
    match operation {
        Operation::Create => Some(guard),
        Operation::Delete => None,
        Operation::Update => {
            // Parsed only for objects that carry the annotation.
            let prior: Value = serde_json::from_str(prior?.get()).ok()?;
            let stated = annotation(&prior, GUARD_ANNOTATION) != Some(guard)
                || client_side_apply_states(&prior, after, options)
                || server_side_apply_states(after, options, now);
            stated.then_some(guard)
        }
    }
}

/// The field manager `kubectl apply` (client-side) writes as.
const CLIENT_SIDE_APPLY: &str = "kubectl-client-side-apply";

/// This change is a client-side `kubectl apply` (its field manager; it
/// wrote a new `last-applied-configuration`) of a configuration that has
/// the guard. Not another kubectl verb that carries the annotation along
/// (`kubectl edit` rewrites one somebody may have planted).
fn client_side_apply_states(prior: &Value, after: &Value, options: Option<&Value>) -> bool {
    if options.and_then(|o| o.get("fieldManager")?.as_str()) != Some(CLIENT_SIDE_APPLY) {
        return false;
    }
    let Some(applied) = annotation(after, LAST_APPLIED_ANNOTATION) else {
        return false;
    };
    if annotation(prior, LAST_APPLIED_ANNOTATION) == Some(applied) {
        return false;
    }
    serde_json::from_str::<Value>(applied)
        .ok()
        .is_some_and(|config| annotation(&config, GUARD_ANNOTATION).is_some())
}

/// An `Apply` entry stamped longer ago than this is an earlier apply's.
const APPLIED_NOW: jiff::SignedDuration = jiff::SignedDuration::from_secs(3);

/// This change is a server-side apply by a field manager whose applied
/// configuration owns the guard annotation: that manager's `Apply` entry
/// owns it and was stamped by this request (the API server stamps the
/// entry of the request's manager; an entry left by an earlier apply under
/// the same manager name, say someone's apply as `kubectl-edit`, keeps its
/// old time when this request is an ordinary update).
fn server_side_apply_states(after: &Value, options: Option<&Value>, now: jiff::Timestamp) -> bool {
    // The API server hands admission an apply's options as `UpdateOptions`
    // (the patch has become an update by then): the field manager it names
    // is what tells.
    let Some(manager) = options.and_then(|o| o.get("fieldManager")?.as_str()) else {
        return false;
    };
    let field = format!("f:{GUARD_ANNOTATION}");
    let entries: Vec<&Value> = after
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|m| m["manager"] == manager)
        .collect();
    let time = |m: &Value| {
        m["time"]
            .as_str()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
    };
    // An ordinary update by this manager stamps its `Update` entry: then
    // the `Apply` entry is not this request's, however recent.
    let updated = entries
        .iter()
        .filter(|m| m["operation"] == "Update")
        .filter_map(|m| time(m))
        .max();
    entries
        .iter()
        .filter(|m| m["operation"] == "Apply")
        .filter(|m| {
            time(m).is_some_and(|t| {
                now.duration_since(t).abs() <= APPLIED_NOW && updated.is_none_or(|u| t > u)
            })
        })
        .any(|m| {
            m.pointer("/fieldsV1/f:metadata/f:annotations")
                .and_then(Value::as_object)
                .is_some_and(|a| a.contains_key(&field))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn now() -> jiff::Timestamp {
        "2026-11-24T06:00:00Z".parse().unwrap()
    }

    /// What an update from `prior` to `after`, without options, states.
    fn update<'a>(prior: &Value, after: &'a Value) -> Option<&'a str> {
        stated_guard(
            Operation::Update,
            Some(after),
            Some(&raw(prior)),
            None,
            now(),
        )
    }

    fn raw(v: &Value) -> Box<RawValue> {
        serde_json::value::to_raw_value(v).unwrap()
    }

    fn object(guard: Option<&str>, image: &str) -> Value {
        let mut o =
            json!({"metadata": {"name": "web", "annotations": {}}, "spec": {"image": image}});
        if let Some(g) = guard {
            o["metadata"]["annotations"][GUARD_ANNOTATION] = json!(g);
        }
        o
    }

    fn applied(mut o: Value, config: &Value) -> Value {
        o["metadata"]["annotations"][LAST_APPLIED_ANNOTATION] = json!(config.to_string());
        o
    }

    #[test]
    fn a_create_with_the_annotation_states_it() {
        let after = object(Some("5m"), "a");
        assert_eq!(
            stated_guard(Operation::Create, Some(&after), None, None, now()),
            Some("5m")
        );
        let plain = object(None, "a");
        assert_eq!(
            stated_guard(Operation::Create, Some(&plain), None, None, now()),
            None
        );
    }

    #[test]
    fn an_update_that_sets_or_changes_it_states_it() {
        let after = object(Some("5m"), "b");
        for prior in [object(None, "a"), object(Some("1m"), "a")] {
            assert_eq!(update(&prior, &after), Some("5m"));
        }
    }

    #[test]
    fn an_update_that_leaves_someone_elses_annotation_alone_does_not() {
        // `kubectl label`, `scale`, `edit` of something else: a planted guard
        // is not armed by whoever changes the object next.
        let prior = object(Some("1s"), "a");
        let after = object(Some("1s"), "b");
        assert_eq!(update(&prior, &after), None);
        // Not even when the object was applied once with it (the old
        // last-applied-configuration is left as it was).
        let config = object(Some("1s"), "a");
        let (prior, after) = (applied(prior, &config), applied(after, &config));
        assert_eq!(update(&prior, &after), None);
    }

    #[test]
    fn a_client_side_apply_of_a_manifest_with_it_states_it() {
        let by = |m: &str| json!({"kind": "UpdateOptions", "fieldManager": m});
        let stated = |prior: &Value, after: &Value, manager: &str| {
            stated_guard(
                Operation::Update,
                Some(after),
                Some(&raw(prior)),
                Some(&by(manager)),
                now(),
            )
            .map(str::to_string)
        };
        let prior = applied(object(Some("5m"), "a"), &object(Some("5m"), "a"));
        let after = applied(object(Some("5m"), "b"), &object(Some("5m"), "b"));
        assert_eq!(
            stated(&prior, &after, "kubectl-client-side-apply").as_deref(),
            Some("5m")
        );
        // `kubectl edit` rewrites a last-applied-configuration somebody may
        // have planted the guard into: not an apply of it.
        assert_eq!(stated(&prior, &after, "kubectl-edit"), None);
        // An apply of a manifest without it (a 3-way merge keeps what it
        // never managed): not stated.
        let after = applied(object(Some("5m"), "b"), &object(None, "b"));
        assert_eq!(stated(&prior, &after, "kubectl-client-side-apply"), None);
    }

    #[test]
    fn a_server_side_apply_by_the_manager_that_owns_it_states_it() {
        let prior = object(Some("5m"), "a");
        let mut after = object(Some("5m"), "b");
        after["metadata"]["managedFields"] = json!([
            {"manager": "release-bot", "operation": "Apply", "time": "2026-11-24T05:59:59Z",
             "fieldsV1": {"f:metadata": {"f:annotations": {"f:snapback.io/guard": {}}}}},
            {"manager": "kubectl-label", "operation": "Update",
             "fieldsV1": {"f:metadata": {"f:labels": {"f:team": {}}}}}
        ]);
        // As a 1.20 API server sends an apply's options to admission.
        let options = |m: &str| json!({"kind": "UpdateOptions", "fieldManager": m});
        let stated = |o: &Value| {
            stated_guard(
                Operation::Update,
                Some(&after),
                Some(&raw(&prior)),
                Some(o),
                now(),
            )
        };
        assert_eq!(stated(&options("release-bot")), Some("5m"));
        assert_eq!(stated(&options("kubectl-label")), None);
        assert_eq!(stated(&json!({"kind": "UpdateOptions"})), None);
        // An ordinary update by the manager that once applied the guard
        // (its Update entry stamped now): not this request's apply.
        let mut updated = after.clone();
        updated["metadata"]["managedFields"]
            .as_array_mut()
            .unwrap()
            .push(json!({"manager": "release-bot", "operation": "Update",
                         "time": "2026-11-24T06:00:00Z", "fieldsV1": {}}));
        assert_eq!(
            stated_guard(
                Operation::Update,
                Some(&updated),
                Some(&raw(&prior)),
                Some(&options("release-bot")),
                now()
            ),
            None
        );
        // An Apply entry left by someone's earlier apply under the name of
        // the manager this request uses for an ordinary update (planted as
        // `kubectl-client-side-apply`, say): not this request's apply.
        let mut planted = after.clone();
        planted["metadata"]["managedFields"][0]["time"] = json!("2026-11-24T05:40:00Z");
        assert_eq!(
            stated_guard(
                Operation::Update,
                Some(&planted),
                Some(&raw(&prior)),
                Some(&options("release-bot")),
                now()
            ),
            None
        );
    }

    #[test]
    fn deletes_and_unreadable_priors_never_state_it() {
        let o = object(Some("5m"), "a");
        assert_eq!(
            stated_guard(Operation::Delete, Some(&o), None, None, now()),
            None
        );
        let junk = RawValue::from_string("[1]".into()).unwrap();
        let after = object(Some("5m"), "b");
        // A prior that is no object: the annotation differs, so it is stated.
        assert_eq!(
            stated_guard(Operation::Update, Some(&after), Some(&junk), None, now()),
            Some("5m")
        );
        assert_eq!(
            stated_guard(Operation::Update, Some(&after), None, None, now()),
            None
        );
    }
}
