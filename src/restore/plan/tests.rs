use serde_json::json;

use super::*;
use crate::store::model::ActionId;

fn obj(name: &str, v: &str, uid: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": name, "namespace": "ns", "uid": uid, "resourceVersion": "10",
                        "creationTimestamp": "2026-01-01T00:00:00Z"},
           "data": {"v": v}})
}

fn snap(
    n: u32,
    op: Operation,
    name: &str,
    before: Option<&Value>,
    after: Option<&Value>,
) -> Loaded {
    snap_sub(n, op, name, None, before, after)
}

fn snap_sub(
    n: u32,
    op: Operation,
    name: &str,
    sub: Option<&str>,
    before: Option<&Value>,
    after: Option<&Value>,
) -> Loaded {
    let uid = before
        .or(after)
        .and_then(|o| o["metadata"]["uid"].as_str())
        .map(str::to_string);
    Loaded {
        meta: SnapshotMeta {
            snapshot_name: format!("snap-{n}"),
            action: ActionId::parse("a").unwrap(),
            operation: op,
            object: ObjectRef {
                group: if sub.is_some() {
                    "apps".into()
                } else {
                    "".into()
                },
                version: "v1".into(),
                resource: if sub.is_some() {
                    "deployments".into()
                } else {
                    "configmaps".into()
                },
                subresource: sub.map(str::to_string),
                kind: if sub.is_some() {
                    "Scale".into()
                } else {
                    "ConfigMap".into()
                },
                namespace: Some("ns".into()),
                name: name.into(),
            },
            user: "alice".into(),
            timestamp: jiff::Timestamp::from_second(1_000 + n as i64).unwrap(),
            request_uid: format!("r{n}"),
            resource_version: before.map(|_| n.to_string()),
            uid,
            payload_sha256: before.map(|_| "x".into()),
            after_fingerprint: after.map(codec::fingerprint),
            // As captured now: derived from the prior object when planning.
            before_fingerprint: None,
            after_replicas: after
                .and_then(|a| a.pointer("/spec/replicas"))
                .map(|r| r.to_string()),
            replicas_path: None,
            replicas_unset: None,
            chunks: u32::from(before.is_some()),
            secret: false,
            guard: None,
            batch: None,
        },
        prior: Ok(before.cloned()),
    }
}

/// A Deployment `web` at `replicas` running `image`.
fn dep(replicas: u32, image: &str) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment",
           "metadata": {"name": "web", "namespace": "ns", "uid": "d1", "resourceVersion": "10"},
           "spec": {"replicas": replicas, "template": {"spec": {"containers": [{"name": "c", "image": image}]}}}})
}

fn only(loaded: Vec<Loaded>) -> ObjectHistory {
    let mut h = histories(loaded);
    assert_eq!(h.len(), 1);
    h.remove(0)
}

#[test]
fn created_object_is_deleted_only_with_its_own_uid() {
    let created = obj("c", "1", "u1");
    let h = only(vec![snap(1, Operation::Create, "c", None, Some(&created))]);
    assert!(
        matches!(&h.target, Target::Absent { created_uids, .. } if created_uids == &vec!["u1".to_string()]),
        "{:?}",
        h.target
    );
    let step = decide(&h, Some(&created), false);
    assert_eq!(
        step.action,
        Action::Delete {
            uid: "u1".into(),
            resource_version: "10".into()
        }
    );
    assert_eq!(step.operation, RestoreOp::Delete);
    // Already gone (or a phantom create that never happened).
    assert!(matches!(
        decide(&h, None, false).action,
        Action::None(Outcome::Unchanged, _)
    ));
    // Someone recreated it: never delete that one, even with force.
    let other = obj("c", "1", "u2");
    assert!(matches!(
        decide(&h, Some(&other), true).action,
        Action::None(Outcome::Skipped, _)
    ));
}

#[test]
fn updated_object_is_replaced_with_prior_content_and_current_resource_version() {
    let before = obj("c", "1", "u1");
    let mut after = obj("c", "2", "u1");
    let h = only(vec![snap(
        1,
        Operation::Update,
        "c",
        Some(&before),
        Some(&after),
    )]);
    after["metadata"]["resourceVersion"] = json!("99");
    after["status"] = json!({"observed": true});
    let step = decide(&h, Some(&after), false);
    let Action::Replace(body) = step.action else {
        panic!("{step:?}")
    };
    assert_eq!(body["data"]["v"], "1");
    assert_eq!(body["metadata"]["resourceVersion"], "99");
    assert_eq!(
        body["status"],
        json!({"observed": true}),
        "status left to controllers"
    );
    assert!(body["metadata"].get("managedFields").is_none());
}

#[test]
fn someone_elses_later_change_is_a_conflict_unless_forced() {
    let before = obj("c", "1", "u1");
    let after = obj("c", "2", "u1");
    let h = only(vec![snap(
        1,
        Operation::Update,
        "c",
        Some(&before),
        Some(&after),
    )]);
    let later = obj("c", "3", "u1");
    assert!(matches!(
        decide(&h, Some(&later), false).action,
        Action::None(Outcome::Conflict, _)
    ));
    assert!(matches!(
        decide(&h, Some(&later), true).action,
        Action::Replace(_)
    ));
    // Deleted by someone after the action: also a conflict.
    let step = decide(&h, None, false);
    assert!(matches!(step.action, Action::None(Outcome::Conflict, ref m) if m.contains("deleted")));
}

/// Undoing newest first: a later action deleted the object, its rollback
/// recreated it (new uid, new creationTimestamp) with the very content this
/// action left. Rolling this action back is no conflict; a recreated
/// object with other content still is.
#[test]
fn an_object_recreated_with_the_content_the_action_left_is_no_conflict() {
    let before = obj("c", "1", "u1");
    let after = obj("c", "2", "u1");
    let mut hs = vec![only(vec![snap(
        1,
        Operation::Update,
        "c",
        Some(&before),
        Some(&after),
    )])];
    let recreated = |v: &str| {
        let mut o = obj("c", v, "u2");
        o["metadata"]["creationTimestamp"] = json!("2026-02-02T00:00:00Z");
        o["metadata"]["resourceVersion"] = json!("99");
        o
    };
    let same = recreated("2");
    assert!(matches!(
        decide(&hs[0], Some(&same), false).action,
        Action::None(Outcome::Conflict, _)
    ));
    let mut other_content = hs.clone();
    accept_recreated(&mut hs, &[Ok(Some(same.clone()))]);
    let Action::Replace(body) = decide(&hs[0], Some(&same), false).action else {
        panic!("not a replace");
    };
    // Replaced in place: the current object's identity, the prior content.
    assert_eq!(body["metadata"]["uid"], "u2");
    assert_eq!(body["data"]["v"], "1");
    let changed = recreated("3");
    accept_recreated(&mut other_content, &[Ok(Some(changed.clone()))]);
    assert!(matches!(
        decide(&other_content[0], Some(&changed), false).action,
        Action::None(Outcome::Conflict, _)
    ));
    // The same uid with other content was changed, not recreated.
    let mut same_uid = vec![only(vec![snap(
        1,
        Operation::Update,
        "c",
        Some(&before),
        Some(&after),
    )])];
    let edited = obj("c", "3", "u1");
    accept_recreated(&mut same_uid, &[Ok(Some(edited.clone()))]);
    assert!(matches!(
        decide(&same_uid[0], Some(&edited), false).action,
        Action::None(Outcome::Conflict, _)
    ));
    // Only the state the action left counts: not one from its middle, and
    // nothing when it ended by deleting the object (what is there now was
    // made by someone else since).
    let third = obj("c", "3", "u1");
    let mut middle = vec![only(vec![
        snap(1, Operation::Update, "c", Some(&before), Some(&after)),
        snap(2, Operation::Update, "c", Some(&after), Some(&third)),
    ])];
    accept_recreated(&mut middle, &[Ok(Some(same.clone()))]);
    assert!(matches!(
        decide(&middle[0], Some(&same), false).action,
        Action::None(Outcome::Conflict, _)
    ));
    let mut deleted = vec![only(vec![
        snap(1, Operation::Update, "c", Some(&before), Some(&after)),
        snap(2, Operation::Delete, "c", Some(&after), None),
    ])];
    accept_recreated(&mut deleted, &[Ok(Some(same.clone()))]);
    assert!(matches!(
        decide(&deleted[0], Some(&same), false).action,
        Action::None(Outcome::Conflict, _)
    ));
}

#[test]
fn a_recorded_before_fingerprint_is_still_honoured() {
    // Snapshots written before the fingerprint moved to planning carry it in
    // an annotation: the state it names is accepted even when the
    // snapshot's later states differ.
    let (v1, v2, v3) = (
        obj("c", "1", "u1"),
        obj("c", "2", "u1"),
        obj("c", "3", "u1"),
    );
    let first = snap(1, Operation::Update, "c", Some(&v1), Some(&v2));
    let mut phantom = snap(2, Operation::Update, "c", Some(&v2), Some(&v3));
    phantom.meta.before_fingerprint = Some(codec::fingerprint(&v2));
    phantom.prior = Err("unreadable".into());
    let h = only(vec![first, phantom]);
    assert!(matches!(
        decide(&h, Some(&v2), false).action,
        Action::Replace(_)
    ));
    assert!(matches!(
        decide(&h, Some(&obj("c", "4", "u1")), false).action,
        Action::None(Outcome::Conflict, _)
    ));
}

#[test]
fn phantom_snapshots_restore_to_a_no_op() {
    // The change was rejected by a later admission step: the object is still as before.
    let before = obj("c", "1", "u1");
    let after = obj("c", "2", "u1");
    let h = only(vec![snap(
        1,
        Operation::Update,
        "c",
        Some(&before),
        Some(&after),
    )]);
    assert!(matches!(
        decide(&h, Some(&before), false).action,
        Action::None(Outcome::Unchanged, _)
    ));
    // A real change followed by a phantom one: the current state is the
    // phantom's "before", which the action produced, so no conflict.
    let (v1, v2, v3) = (
        obj("c", "1", "u1"),
        obj("c", "2", "u1"),
        obj("c", "3", "u1"),
    );
    let h = only(vec![
        snap(1, Operation::Update, "c", Some(&v1), Some(&v2)),
        snap(2, Operation::Update, "c", Some(&v2), Some(&v3)),
    ]);
    let Action::Replace(body) = decide(&h, Some(&v2), false).action else {
        panic!()
    };
    assert_eq!(body["data"]["v"], "1");
}

#[test]
fn deleted_object_is_created_without_server_owned_fields() {
    let mut before = obj("c", "1", "u1");
    before["metadata"]["managedFields"] = json!([{"manager": "kubectl"}]);
    before["metadata"]["generation"] = json!(4);
    let h = only(vec![snap(1, Operation::Delete, "c", Some(&before), None)]);
    let step = decide(&h, None, false);
    assert_eq!(step.operation, RestoreOp::Create);
    let Action::Create(body) = step.action else {
        panic!()
    };
    for key in [
        "uid",
        "resourceVersion",
        "creationTimestamp",
        "generation",
        "managedFields",
    ] {
        assert!(body["metadata"].get(key).is_none(), "{key}");
    }
    assert_eq!(body["data"]["v"], "1");
}

#[test]
fn earliest_change_wins_even_when_snapshots_arrive_out_of_order() {
    let (v1, v2, v3) = (
        obj("c", "1", "u1"),
        obj("c", "2", "u1"),
        obj("c", "3", "u1"),
    );
    let loaded = vec![
        snap(3, Operation::Update, "c", Some(&v2), Some(&v3)),
        snap(1, Operation::Update, "c", Some(&v1), Some(&v2)),
    ];
    let h = only(loaded);
    assert_eq!(h.target, Target::Present(v1.clone()));
    assert_eq!(h.snapshots, vec!["snap-1", "snap-3"]);
    // Created, updated, deleted within the action: it did not exist before.
    let h = only(vec![
        snap(9, Operation::Delete, "c", Some(&v2), None),
        snap(5, Operation::Update, "c", Some(&v1), Some(&v2)),
        snap(2, Operation::Create, "c", None, Some(&v1)),
    ]);
    assert!(matches!(h.target, Target::Absent { .. }));
    assert!(matches!(
        decide(&h, None, false).action,
        Action::None(Outcome::Unchanged, _)
    ));
}

#[test]
fn scale_only_changes_restore_through_the_subresource() {
    let scale = |r: u32| {
        json!({"apiVersion": "autoscaling/v1", "kind": "Scale",
        "metadata": {"name": "web", "namespace": "ns", "uid": "d1", "resourceVersion": r.to_string()},
        "spec": {"replicas": r}})
    };
    let h = only(vec![snap_sub(
        1,
        Operation::Update,
        "web",
        Some("scale"),
        Some(&scale(1)),
        Some(&scale(3)),
    )]);
    assert!(h.fetches_scale());
    assert_eq!(h.object.subresource.as_deref(), Some("scale"));
    let Action::ReplaceScale(body) = decide(&h, Some(&scale(3)), false).action else {
        panic!()
    };
    assert_eq!(body["spec"]["replicas"], 1);
    assert_eq!(body["metadata"]["resourceVersion"], "3");
    assert!(matches!(
        decide(&h, Some(&scale(1)), false).action,
        Action::None(Outcome::Unchanged, _)
    ));
    assert!(matches!(
        decide(&h, Some(&scale(5)), false).action,
        Action::None(Outcome::Conflict, _)
    ));
}

#[test]
fn a_scale_before_a_full_change_puts_the_earlier_replicas_into_the_target() {
    let dep = |r: u32, image: &str| {
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "ns", "uid": "d1"},
        "spec": {"replicas": r, "template": {"image": image}}})
    };
    let scale = |r: u32| json!({"kind": "Scale", "metadata": {"name": "web", "uid": "d1"}, "spec": {"replicas": r}});
    let mut full = snap(
        2,
        Operation::Update,
        "web",
        Some(&dep(3, "a")),
        Some(&dep(3, "b")),
    );
    full.meta.object.group = "apps".into();
    full.meta.object.resource = "deployments".into();
    let h = only(vec![
        snap_sub(
            1,
            Operation::Update,
            "web",
            Some("scale"),
            Some(&scale(1)),
            Some(&scale(3)),
        ),
        full,
    ]);
    let Target::Present(t) = &h.target else {
        panic!()
    };
    assert_eq!(t["spec"]["replicas"], 1);
    assert_eq!(t["spec"]["template"]["image"], "a");
    assert_eq!(h.object.kind, "Deployment");
}

/// A Scale leaves a count of 0 out: a Deployment scaled up from 0 and then
/// edited is 0 again in the target, not at the count the edit started from.
#[test]
fn a_scale_up_from_zero_before_a_full_change_puts_zero_into_the_target() {
    let dep = |r: u32, image: &str| {
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "ns", "uid": "d1"},
        "spec": {"replicas": r, "template": {"image": image}}})
    };
    let zero = json!({"kind": "Scale", "metadata": {"name": "web", "uid": "d1"}, "spec": {}});
    let three =
        json!({"kind": "Scale", "metadata": {"name": "web", "uid": "d1"}, "spec": {"replicas": 3}});
    let mut full = snap(
        2,
        Operation::Update,
        "web",
        Some(&dep(3, "a")),
        Some(&dep(3, "b")),
    );
    full.meta.object.group = "apps".into();
    full.meta.object.resource = "deployments".into();
    let scale = snap_sub(
        1,
        Operation::Update,
        "web",
        Some("scale"),
        Some(&zero),
        Some(&three),
    );
    let h = only(vec![scale.clone(), full.clone()]);
    let Target::Present(t) = &h.target else {
        panic!()
    };
    assert_eq!(t["spec"]["replicas"], 0);
    assert_eq!(t["spec"]["template"]["image"], "a");

    // A custom resource whose field was not set: taken out; one that keeps
    // its count elsewhere (spec.size): set there.
    let mut unset = scale.clone();
    unset.meta.replicas_path = Some("/spec/replicas".into());
    unset.meta.replicas_unset = Some(true);
    let h = only(vec![unset, full.clone()]);
    let Target::Present(t) = &h.target else {
        panic!()
    };
    assert_eq!(t["spec"].get("replicas"), None, "{t}");
    let mut sized = scale;
    sized.meta.replicas_path = Some("/spec/size".into());
    full.prior = Ok(Some(
        json!({"kind": "Cog", "metadata": {"name": "web", "uid": "d1"},
        "spec": {"size": 3, "teeth": 12}}),
    ));
    let h = only(vec![sized, full]);
    let Target::Present(t) = &h.target else {
        panic!()
    };
    assert_eq!(t["spec"], json!({"size": 0, "teeth": 12}));
}

/// The replicas field of a custom resource is a JSON pointer (its
/// definition's dotted path, escaped): set with the objects on the way made,
/// removed where it is.
#[test]
fn json_pointers_set_and_remove_object_fields() {
    use json_patch::jsonptr::Pointer;
    let mut v = json!({"spec": {"a/b": 1}});
    let _ = Pointer::parse("/spec/size/count")
        .unwrap()
        .assign(&mut v, json!(2));
    assert_eq!(v, json!({"spec": {"a/b": 1, "size": {"count": 2}}}));
    let ab = Pointer::parse("/spec/a~1b").unwrap();
    assert!(ab.delete(&mut v).is_some());
    assert!(ab.delete(&mut v).is_none());
    assert!(
        Pointer::parse("/status/x")
            .unwrap()
            .delete(&mut v)
            .is_none()
    );
    assert_eq!(v, json!({"spec": {"size": {"count": 2}}}));
}

#[test]
fn unreadable_snapshots_fail_their_object_only() {
    let mut l = snap(
        1,
        Operation::Update,
        "c",
        Some(&obj("c", "1", "u")),
        Some(&obj("c", "2", "u")),
    );
    l.prior = Err("payload sha256 mismatch".into());
    let h = histories(vec![
        l,
        snap(2, Operation::Create, "d", None, Some(&obj("d", "1", "u9"))),
    ]);
    let current = [obj("c", "2", "u"), obj("d", "1", "u9")];
    let steps: Vec<Step> = h
        .iter()
        .zip(&current)
        .map(|(h, c)| decide(h, Some(c), false))
        .collect();
    assert!(matches!(&steps[0].action, Action::None(Outcome::Failed, m) if m.contains("sha256")));
    assert!(matches!(steps[1].action, Action::Delete { .. }));
}

#[test]
fn waves_follow_dependency_order_and_reverse_it_for_deletes() {
    let mk = |group: &str, resource: &str, op: Operation, n: u32| {
        let mut l = if op == Operation::Create {
            snap(
                n,
                op,
                &format!("o{n}"),
                None,
                Some(&obj("x", "1", &format!("u{n}"))),
            )
        } else {
            snap(n, op, &format!("o{n}"), Some(&obj("x", "1", "u")), None)
        };
        l.meta.object.group = group.into();
        l.meta.object.resource = resource.into();
        l
    };
    let h = histories(vec![
        mk("apps", "deployments", Operation::Delete, 1),
        mk("", "namespaces", Operation::Delete, 2),
        mk("", "configmaps", Operation::Delete, 3),
        mk("", "namespaces", Operation::Create, 4),
        mk("apps", "deployments", Operation::Create, 5),
    ]);
    let steps: Vec<Step> = h
        .iter()
        .map(|h| match &h.target {
            Target::Absent { created_uids, .. } => {
                decide(h, Some(&obj("x", "1", &created_uids[0])), false)
            }
            _ => decide(h, None, false),
        })
        .collect();
    let order: Vec<String> = waves(&h, &steps)
        .into_iter()
        .flatten()
        .map(|i| format!("{}:{}", steps[i].operation.as_str(), h[i].object.resource))
        .collect();
    assert_eq!(
        order,
        vec![
            "create:namespaces",
            "create:configmaps",
            "create:deployments",
            "delete:deployments",
            "delete:namespaces",
        ]
    );
}

#[test]
fn a_retried_create_is_still_the_actions_object() {
    // The first create was rejected by a later admission step (a phantom
    // with a uid that never existed); the second one made the object.
    let first = obj("c", "1", "phantom");
    let second = obj("c", "1", "real");
    let h = only(vec![
        snap(1, Operation::Create, "c", None, Some(&first)),
        snap(2, Operation::Create, "c", None, Some(&second)),
    ]);
    assert!(
        matches!(decide(&h, Some(&second), false).action, Action::Delete { ref uid, .. } if uid == "real")
    );
}

#[test]
fn objects_being_deleted_are_recreated_once_gone_unless_someone_else_deleted_them() {
    let before = obj("c", "1", "u1");
    let mut dying = obj("c", "1", "u1");
    dying["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    dying["metadata"]["finalizers"] = json!(["kubernetes.io/pvc-protection"]);
    // Deleted by the action, its deletion not finished: recreated once gone.
    let h = only(vec![snap(1, Operation::Delete, "c", Some(&before), None)]);
    let step = decide(&h, Some(&dying), false);
    assert_eq!(step.operation, RestoreOp::Create);
    assert!(
        matches!(step.action, Action::CreateWhenGone { ref body, ref uid } if uid == "u1" && body["data"]["v"] == "1" && body["metadata"].get("uid").is_none()),
        "{step:?}"
    );
    // Changed by the action, deleted by someone else after it: a conflict.
    let after = obj("c", "2", "u1");
    let h = only(vec![snap(
        1,
        Operation::Update,
        "c",
        Some(&before),
        Some(&after),
    )]);
    assert!(matches!(
        decide(&h, Some(&dying), false).action,
        Action::None(Outcome::Conflict, _)
    ));
    assert!(matches!(
        decide(&h, Some(&dying), true).action,
        Action::CreateWhenGone { .. }
    ));
    let created = only(vec![snap(1, Operation::Create, "c", None, Some(&before))]);
    assert!(matches!(
        decide(&created, Some(&dying), false).action,
        Action::None(Outcome::Unchanged, _)
    ));
}

fn job(uid: &str, manual: bool) -> Value {
    let mut j = json!({"apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "migrate", "namespace": "ns", "uid": uid, "resourceVersion": "7"},
        "spec": {
            "backoffLimit": 2,
            "selector": {"matchLabels": {"controller-uid": uid}},
            "template": {"metadata": {"labels": {"controller-uid": uid, "job-name": "migrate", "app": "db"}},
                         "spec": {"restartPolicy": "Never", "containers": [{"name": "m", "image": "busybox"}]}}}});
    if manual {
        j["spec"]["manualSelector"] = json!(true);
    }
    j
}

#[test]
fn a_deleted_job_is_created_without_its_generated_selector() {
    let h = only(vec![snap(
        1,
        Operation::Delete,
        "migrate",
        Some(&job("u1", false)),
        None,
    )]);
    let Action::Create(body) = decide(&h, None, false).action else {
        panic!("a create")
    };
    // The API server refuses a selector it did not generate, and generates
    // a new one (with new controller-uid labels) from the new uid.
    assert!(body["spec"].get("selector").is_none(), "{body}");
    let labels = &body["spec"]["template"]["metadata"]["labels"];
    assert!(labels.get("controller-uid").is_none(), "{labels}");
    assert_eq!(labels["app"], "db");
    assert_eq!(labels["job-name"], "migrate");
    assert_eq!(body["spec"]["backoffLimit"], 2);
}

#[test]
fn a_job_with_a_manual_selector_keeps_it() {
    let h = only(vec![snap(
        1,
        Operation::Delete,
        "migrate",
        Some(&job("u1", true)),
        None,
    )]);
    let Action::Create(body) = decide(&h, None, false).action else {
        panic!("a create")
    };
    assert_eq!(
        body["spec"]["selector"]["matchLabels"]["controller-uid"],
        "u1"
    );
}

#[test]
fn a_recreated_job_is_already_in_its_prior_state() {
    // Restored by a first rollback: same content, new uid and selector.
    let h = only(vec![snap(
        1,
        Operation::Delete,
        "migrate",
        Some(&job("u1", false)),
        None,
    )]);
    let step = decide(&h, Some(&job("u2", false)), false);
    assert_eq!(
        step.action,
        Action::None(Outcome::Unchanged, "already in its prior state".into())
    );
    // A real difference still counts.
    let mut other = job("u2", false);
    other["spec"]["backoffLimit"] = json!(5);
    assert_ne!(
        decide(&h, Some(&other), true).action,
        Action::None(Outcome::Unchanged, "already in its prior state".into())
    );
}

#[test]
fn an_updated_job_is_replaced_with_its_selector() {
    // The selector is immutable: a replace must carry it unchanged.
    let prior = job("u1", false);
    let mut after = job("u1", false);
    after["metadata"]["labels"] = json!({"team": "x"});
    let h = only(vec![snap(
        1,
        Operation::Update,
        "migrate",
        Some(&prior),
        Some(&after),
    )]);
    let Action::Replace(body) = decide(&h, Some(&after), false).action else {
        panic!("a replace")
    };
    assert_eq!(
        body["spec"]["selector"]["matchLabels"]["controller-uid"],
        "u1"
    );
    assert_eq!(
        body["spec"]["template"]["metadata"]["labels"]["controller-uid"],
        "u1"
    );
}

#[test]
fn a_refused_create_of_an_existing_object_does_not_hide_later_changes() {
    // `kubectl create` of an object that already exists (uid "old") passes
    // admission with a fresh uid and then fails with AlreadyExists; the
    // action then changes the existing object.
    let phantom = obj("c", "x", "never-existed");
    let (v1, v2) = (obj("c", "1", "old"), obj("c", "2", "old"));
    let h = only(vec![
        snap(1, Operation::Create, "c", None, Some(&phantom)),
        snap(2, Operation::Update, "c", Some(&v1), Some(&v2)),
    ]);
    assert_eq!(h.target, Target::Present(v1.clone()));
    let Action::Replace(body) = decide(&h, Some(&v2), false).action else {
        panic!("a replace")
    };
    assert_eq!(body["data"]["v"], "1");
    // Created by the action, deleted and created again, then changed: it
    // did not exist before the action.
    let (a, b1, b2) = (obj("c", "1", "a"), obj("c", "1", "b"), obj("c", "2", "b"));
    let h = only(vec![
        snap(1, Operation::Create, "c", None, Some(&a)),
        snap(2, Operation::Delete, "c", Some(&a), None),
        snap(3, Operation::Create, "c", None, Some(&b1)),
        snap(4, Operation::Update, "c", Some(&b1), Some(&b2)),
    ]);
    assert!(matches!(h.target, Target::Absent { .. }), "{:?}", h.target);
}

#[test]
fn policies_come_back_before_what_they_constrain() {
    let r = |g: &str, res: &str| rank(g, res);
    let workloads = r("apps", "deployments");
    for (g, res) in [
        ("", "limitranges"),
        ("", "resourcequotas"),
        ("scheduling.k8s.io", "priorityclasses"),
        ("networking.k8s.io", "networkpolicies"),
        ("policy", "poddisruptionbudgets"),
    ] {
        assert!(r(g, res) < workloads, "{res}");
        assert!(r(g, res) > r("", "namespaces"), "{res}");
    }
    // Admission-time policies before anything they could apply to.
    assert!(r("", "limitranges") < r("", "configmaps"));
    assert!(r("", "pods") < r("example.com", "widgets"));
}

#[test]
fn a_service_accounts_tokens_are_left_to_the_token_controller() {
    let prior = json!({"apiVersion": "v1", "kind": "ServiceAccount",
                       "metadata": {"name": "app", "namespace": "ns", "uid": "old"},
                       "secrets": [{"name": "app-token-gone"}],
                       "imagePullSecrets": [{"name": "registry"}]});
    let created = for_create(&prior);
    assert!(created.get("secrets").is_none(), "{created}");
    assert_eq!(created["imagePullSecrets"][0]["name"], "registry");
    let current = json!({"apiVersion": "v1", "kind": "ServiceAccount",
                         "metadata": {"name": "app", "namespace": "ns", "uid": "new", "resourceVersion": "9"},
                         "secrets": [{"name": "app-token-new"}]});
    let replaced = for_replace(&prior, &current);
    assert_eq!(replaced["secrets"], json!([{"name": "app-token-new"}]));
    assert_eq!(replaced["imagePullSecrets"][0]["name"], "registry");
    assert_eq!(replaced["metadata"]["resourceVersion"], "9");
}

#[test]
fn what_controllers_make_in_every_namespace_is_no_conflict() {
    // kube-root-ca.crt deleted with its namespace, made again by the root
    // CA publisher once the namespace was back: its prior state, no
    // conflict. Any other object there again is a conflict.
    for (name, conflict) in [("kube-root-ca.crt", false), ("settings", true)] {
        let prior = obj(name, "ca-old", "u1");
        let h = only(vec![snap(1, Operation::Delete, name, Some(&prior), None)]);
        let now = obj(name, "ca-new", "u2");
        let step = decide(&h, Some(&now), false);
        assert_eq!(
            matches!(step.action, Action::None(Outcome::Conflict, _)),
            conflict,
            "{name}: {step:?}"
        );
    }
}

#[test]
fn a_recreated_pod_gets_a_current_token_instead_of_its_old_one() {
    let pod = |automount: Option<bool>, token_volume: Value| {
        let mut p = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "bare", "namespace": "ns", "uid": "u1"},
        "spec": {
            "serviceAccountName": "default",
            "containers": [{"name": "c", "image": "busybox", "volumeMounts": [
                {"name": "data", "mountPath": "/data"},
                {"name": token_volume["name"].clone(), "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}
            ]}],
            "volumes": [{"name": "data", "emptyDir": {}}, token_volume]
        }});
        if let Some(a) = automount {
            p["spec"]["automountServiceAccountToken"] = json!(a);
        }
        p
    };
    let legacy = json!({"name": "default-token-m456b", "secret": {"secretName": "default-token-m456b", "defaultMode": 420}});
    let bound = json!({"name": "kube-api-access-x7k2p", "projected": {"sources": [{"serviceAccountToken": {"path": "token"}}]}});
    for token in [legacy.clone(), bound] {
        let body = for_create(&pod(None, token.clone()));
        assert_eq!(
            body["spec"]["volumes"],
            json!([{"name": "data", "emptyDir": {}}]),
            "{body}"
        );
        assert_eq!(
            body["spec"]["containers"][0]["volumeMounts"],
            json!([{"name": "data", "mountPath": "/data"}]),
            "{body}"
        );
    }
    // A Pod that opted out mounts what it chose itself.
    let body = for_create(&pod(Some(false), legacy.clone()));
    assert_eq!(body["spec"]["volumes"].as_array().unwrap().len(), 2);
    // A Secret of another account's name at that path is not the injected one.
    let other = json!({"name": "mine", "secret": {"secretName": "builder-token-abcde"}});
    let body = for_create(&pod(None, other));
    assert_eq!(body["spec"]["volumes"].as_array().unwrap().len(), 2);
}

#[test]
fn an_object_created_again_by_someone_else_is_a_conflict_a_refused_create_is_not() {
    // The action created `c` (uid u1) at 1001 s.
    let created = obj("c", "1", "u1");
    let h = only(vec![snap(1, Operation::Create, "c", None, Some(&created))]);
    let other = |uid: &str, created_at: &str| {
        let mut o = obj("c", "2", uid);
        o["metadata"]["creationTimestamp"] = json!(created_at);
        o
    };
    // Deleted and made again after the action: a change after it.
    let since = other("u9", "1970-01-01T00:20:00Z");
    let step = decide(&h, Some(&since), false);
    assert!(
        matches!(&step.action, Action::None(Outcome::Conflict, m) if m.contains("created again")),
        "{step:?}"
    );
    // Forced: still never deleted, it is not the action's object.
    let step = decide(&h, Some(&since), true);
    assert!(
        matches!(&step.action, Action::None(Outcome::Skipped, _)),
        "{step:?}"
    );
    // There before the action's create (which the API server then refused
    // with AlreadyExists): nothing to undo.
    let before = other("u0", "1970-01-01T00:10:00Z");
    let step = decide(&h, Some(&before), false);
    assert!(
        matches!(&step.action, Action::None(Outcome::Skipped, m) if m.contains("left alone")),
        "{step:?}"
    );
}

#[test]
fn a_definition_made_through_v1beta1_is_created_again_through_it() {
    // How the API server serves, in v1, a CRD created through v1beta1
    // without a schema (calico's, in Kubernetes 1.20's addons).
    let served = json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "ippools.crd.projectcalico.org"},
        "spec": {"group": "crd.projectcalico.org", "scope": "Cluster",
                 "names": {"plural": "ippools", "kind": "IPPool"},
                 "preserveUnknownFields": true,
                 "conversion": {"strategy": "Webhook", "webhook": {
                     "clientConfig": {"url": "https://conv.example.com"},
                     "conversionReviewVersions": ["v1beta1"]}},
                 "versions": [{"name": "v1", "served": true, "storage": true,
                               "additionalPrinterColumns": [{"name": "CIDR", "type": "string", "jsonPath": ".spec.cidr"}]}]}
    });
    assert!(legacy_crd(&served));
    let legacy = crd_as_v1beta1(&served);
    assert_eq!(legacy["apiVersion"], "apiextensions.k8s.io/v1beta1");
    // One version: what it has goes top-level, as v1beta1 wants it.
    assert_eq!(
        legacy["spec"]["additionalPrinterColumns"][0],
        json!({"name": "CIDR", "type": "string", "JSONPath": ".spec.cidr"})
    );
    assert!(
        legacy["spec"]["versions"][0]
            .get("additionalPrinterColumns")
            .is_none()
    );
    // Versions that differ keep their own.
    let mut two = served.clone();
    two["spec"]["versions"] = json!([
        {"name": "v1", "served": true, "storage": true,
         "additionalPrinterColumns": [{"name": "A", "type": "string", "jsonPath": ".a"}]},
        {"name": "v2", "served": true, "storage": false,
         "additionalPrinterColumns": [{"name": "B", "type": "string", "jsonPath": ".b"}]}
    ]);
    let legacy_two = crd_as_v1beta1(&two);
    assert!(legacy_two["spec"].get("additionalPrinterColumns").is_none());
    assert_eq!(
        legacy_two["spec"]["versions"][1]["additionalPrinterColumns"][0]["JSONPath"],
        ".b"
    );
    assert_eq!(
        legacy["spec"]["conversion"],
        json!({"strategy": "Webhook", "webhookClientConfig": {"url": "https://conv.example.com"},
               "conversionReviewVersions": ["v1beta1"]})
    );
    assert_eq!(legacy["spec"]["preserveUnknownFields"], true);
    // A v1 definition with schemas is created as it is.
    let mut modern = served.clone();
    modern["spec"]["preserveUnknownFields"] = json!(false);
    modern["spec"]["versions"][0]["schema"] = json!({"openAPIV3Schema": {"type": "object"}});
    assert!(!legacy_crd(&modern));
}

#[test]
fn a_deleted_service_account_token_stays_revoked() {
    let token = json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/service-account-token",
        "metadata": {"name": "worker-token-flxtl", "namespace": "ns", "uid": "t1", "resourceVersion": "3",
                     "annotations": {"kubernetes.io/service-account.name": "worker"}},
        "data": {"token": "c2VjcmV0"}});
    let h = only(vec![snap(
        1,
        Operation::Delete,
        "worker-token-flxtl",
        Some(&token),
        None,
    )]);
    for force in [false, true] {
        let step = decide(&h, None, force);
        assert!(
            matches!(&step.action, Action::None(Outcome::Skipped, m) if m.contains("revoked")),
            "{step:?}"
        );
    }
    // Nor does a bootstrap token.
    let mut bootstrap = token.clone();
    bootstrap["type"] = json!("bootstrap.kubernetes.io/token");
    bootstrap["metadata"]["namespace"] = json!("kube-system");
    let h = only(vec![snap(
        1,
        Operation::Delete,
        "bootstrap-token-abcdef",
        Some(&bootstrap),
        None,
    )]);
    let step = decide(&h, None, true);
    assert!(
        matches!(&step.action, Action::None(Outcome::Skipped, m) if m.contains("bootstrap token")),
        "{step:?}"
    );
    // Any other Secret comes back.
    let mut opaque = token.clone();
    opaque["type"] = json!("Opaque");
    let h = only(vec![snap(
        1,
        Operation::Delete,
        "worker-token-flxtl",
        Some(&opaque),
        None,
    )]);
    assert!(matches!(decide(&h, None, false).action, Action::Create(_)));
}

#[test]
fn a_recreated_volume_and_claim_are_bound_anew() {
    let pv = json!({"apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": "pv-data", "uid": "v1", "annotations": {"pv.kubernetes.io/bound-by-controller": "yes"}},
        "spec": {"capacity": {"storage": "1Gi"}, "hostPath": {"path": "/data"},
                 "persistentVolumeReclaimPolicy": "Retain",
                 "claimRef": {"kind": "PersistentVolumeClaim", "namespace": "st", "name": "data-db-0",
                              "uid": "old-claim", "resourceVersion": "42", "apiVersion": "v1"}}});
    let body = for_create(&pv);
    assert_eq!(
        body["spec"]["claimRef"],
        json!({"kind": "PersistentVolumeClaim", "namespace": "st", "name": "data-db-0", "apiVersion": "v1"})
    );
    assert_eq!(body["spec"]["hostPath"]["path"], "/data");
    let pvc = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "data-db-0", "namespace": "st", "uid": "old-claim",
                     "annotations": {"pv.kubernetes.io/bind-completed": "yes", "pv.kubernetes.io/bound-by-controller": "yes", "team": "db"}},
        "spec": {"volumeName": "pv-data", "resources": {"requests": {"storage": "1Gi"}}}});
    let body = for_create(&pvc);
    assert_eq!(body["metadata"]["annotations"], json!({"team": "db"}));
    assert_eq!(body["spec"]["volumeName"], "pv-data");
}

#[test]
fn a_scale_by_someone_else_since_the_action_is_kept() {
    let body = |step: &Step| match &step.action {
        Action::Replace(b) => b.clone(),
        other => panic!("{other:?}"),
    };
    // The action changed the image only; an autoscaler went to 9 since.
    let h = only(vec![snap(
        1,
        Operation::Update,
        "web",
        Some(&dep(2, "a")),
        Some(&dep(2, "b")),
    )]);
    let b = body(&decide(&h, Some(&dep(9, "b")), false));
    assert_eq!(b["spec"]["replicas"], 9);
    assert_eq!(b["spec"]["template"]["spec"]["containers"][0]["image"], "a");
    // Not scaled since: the prior replicas.
    let b = body(&decide(&h, Some(&dep(2, "b")), false));
    assert_eq!(b["spec"]["replicas"], 2);
    // The action scaled it itself (2 → 5) and nobody since: back to 2.
    let h = only(vec![snap(
        1,
        Operation::Update,
        "web",
        Some(&dep(2, "a")),
        Some(&dep(5, "b")),
    )]);
    let b = body(&decide(&h, Some(&dep(5, "b")), false));
    assert_eq!(b["spec"]["replicas"], 2);
    // ... and someone scaled it since (2 → 5 by the action, 9 since): their
    // change to what the action did is a conflict; forced, back to 2.
    let step = decide(&h, Some(&dep(9, "b")), false);
    assert!(
        matches!(&step.action, Action::None(Outcome::Conflict, m) if m.contains("scaled to 9 replicas since the action, which scaled it to 5")),
        "{step:?}"
    );
    let b = body(&decide(&h, Some(&dep(9, "b")), true));
    assert_eq!(b["spec"]["replicas"], 2);
    assert_eq!(b["spec"]["template"]["spec"]["containers"][0]["image"], "a");
    // Only the image differs from the prior state at the current scale, and
    // that is restored; at the prior image already, it is unchanged.
    let h = only(vec![snap(
        1,
        Operation::Update,
        "web",
        Some(&dep(2, "a")),
        Some(&dep(2, "b")),
    )]);
    assert!(matches!(
        decide(&h, Some(&dep(9, "a")), false).action,
        Action::None(Outcome::Unchanged, _)
    ));
}

#[test]
fn a_change_by_someone_else_between_two_of_the_actions_is_a_conflict_unless_forced() {
    // The action: v1 → v2; bob: v2 → b; the action again: b → v3.
    let (v1, v2, b, v3) = (
        obj("c", "1", "u1"),
        obj("c", "2", "u1"),
        obj("c", "bob", "u1"),
        obj("c", "3", "u1"),
    );
    let h = only(vec![
        snap(1, Operation::Update, "c", Some(&v1), Some(&v2)),
        snap(2, Operation::Update, "c", Some(&b), Some(&v3)),
    ]);
    assert_eq!(h.interleaved.as_deref(), Some("snap-2"));
    let step = decide(&h, Some(&v3), false);
    assert!(
        matches!(&step.action, Action::None(Outcome::Conflict, m) if m.contains("during the action") && m.contains("snap-2")),
        "{step:?}"
    );
    let Action::Replace(body) = decide(&h, Some(&v3), true).action else {
        panic!("forced: a replace")
    };
    assert_eq!(body["data"]["v"], "1");
    // Without anyone in between (and with a change a later admission step
    // refused: its successor starts from the state before it), no conflict.
    let h = only(vec![
        snap(1, Operation::Update, "c", Some(&v1), Some(&v2)),
        snap(2, Operation::Update, "c", Some(&v2), Some(&b)),
        snap(3, Operation::Update, "c", Some(&v2), Some(&v3)),
    ]);
    assert_eq!(h.interleaved, None);
    assert!(matches!(
        decide(&h, Some(&v3), false).action,
        Action::Replace(_)
    ));
    // Deleted and created again by the action: the create starts from "did
    // not exist", which the delete left.
    let again = obj("c", "1", "u2");
    let h = only(vec![
        snap(1, Operation::Delete, "c", Some(&v1), None),
        snap(2, Operation::Create, "c", None, Some(&again)),
    ]);
    assert_eq!(h.interleaved, None);
}

#[test]
fn manifests_for_git_leave_out_what_the_cluster_filled_in() {
    let svc = json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "ns", "uid": "s1", "resourceVersion": "3",
                     "annotations": {"team": "shop"}},
        "spec": {"clusterIP": "10.0.0.7", "clusterIPs": ["10.0.0.7"], "ports": [{"port": 80}]}});
    let git = for_git(&svc);
    assert_eq!(git["spec"], json!({"ports": [{"port": 80}]}));
    assert_eq!(git["metadata"]["annotations"], json!({"team": "shop"}));
    assert!(git["metadata"].get("uid").is_none());
    // A headless Service keeps its "None"; a restore keeps the IP.
    let mut headless = svc.clone();
    headless["spec"]["clusterIP"] = json!("None");
    assert_eq!(for_git(&headless)["spec"]["clusterIP"], "None");
    assert_eq!(for_create(&svc)["spec"]["clusterIP"], "10.0.0.7");
    let dep = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "annotations": {"deployment.kubernetes.io/revision": "4"}},
        "spec": {"replicas": 2}});
    assert!(for_git(&dep)["metadata"].get("annotations").is_none());
    let pvc = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "data", "finalizers": ["kubernetes.io/pvc-protection", "example.com/keep"],
                     "annotations": {"pv.kubernetes.io/bind-completed": "yes"}},
        "spec": {"resources": {"requests": {"storage": "1Gi"}}}});
    let git = for_git(&pvc);
    assert_eq!(git["metadata"]["finalizers"], json!(["example.com/keep"]));
    assert!(git["metadata"].get("annotations").is_none());
    // Bound by the volume controller, classed by the admission plugin.
    let mut bound = pvc.clone();
    bound["spec"]["volumeName"] = json!("pv-1");
    bound["spec"]["storageClassName"] = json!("standard");
    let git = for_git(&bound);
    assert!(
        git["spec"].get("volumeName").is_none() && git["spec"].get("storageClassName").is_none()
    );
    // What the user's applied manifest states stays.
    let mut pinned = svc.clone();
    pinned["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"] =
        json!(r#"{"spec":{"clusterIP":"10.0.0.7"}}"#);
    assert_eq!(for_git(&pinned)["spec"]["clusterIP"], "10.0.0.7");
    // Node ports: the one a manifest asked for stays, allocated ones go;
    // so does an allocated health check port.
    let lb = json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "lb", "annotations": {"kubectl.kubernetes.io/last-applied-configuration":
            r#"{"spec":{"type":"LoadBalancer","ports":[{"port":80,"nodePort":30080},{"port":443}]}}"#}},
        "spec": {"type": "LoadBalancer", "clusterIP": "10.0.0.9", "healthCheckNodePort": 31000,
                 "externalTrafficPolicy": "Local",
                 "ports": [{"port": 80, "nodePort": 30080}, {"port": 443, "nodePort": 31443}]}});
    let git = for_git(&lb);
    assert_eq!(
        git["spec"]["ports"],
        json!([{"port": 80, "nodePort": 30080}, {"port": 443}])
    );
    assert!(
        git["spec"].get("healthCheckNodePort").is_none() && git["spec"].get("clusterIP").is_none()
    );
    let sts = json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db"},
        "spec": {"volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {}, "status": {"phase": "Pending"}}]}});
    assert!(
        for_git(&sts)["spec"]["volumeClaimTemplates"][0]
            .get("status")
            .is_none()
    );
}

/// A namespace's deletion in manifests: what the cluster makes in every
/// namespace is left out (a re-apply would race its controllers, or put an
/// old CA back), a default ServiceAccount with its owner's pull secrets goes
/// right before the workloads (without the token Secrets it listed); a
/// DaemonSet's template generation mark is its controller's.
#[test]
fn manifests_leave_per_namespace_objects_to_the_cluster() {
    let in_ns = |resource: &str, name: &str, prior: &Value| {
        let mut h = only(vec![snap(1, Operation::Delete, name, Some(prior), None)]);
        h.object.resource = resource.into();
        h
    };
    let ca = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "kube-root-ca.crt", "namespace": "ns", "uid": "u"},
        "data": {"ca.crt": "-----BEGIN CERTIFICATE-----"}});
    assert!(matches!(
        git_placement(&in_ns("configmaps", "kube-root-ca.crt", &ca), &ca),
        GitPlacement::LeftOut(_)
    ));
    let plain = json!({"apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": "default", "namespace": "ns", "uid": "u", "resourceVersion": "3",
                     "creationTimestamp": "2026-01-01T00:00:00Z"},
        "secrets": [{"name": "default-token-x7k2p"}]});
    assert!(matches!(
        git_placement(&in_ns("serviceaccounts", "default", &plain), &plain),
        GitPlacement::LeftOut(_)
    ));
    let mut pulls = plain.clone();
    pulls["imagePullSecrets"] = json!([{"name": "registry"}]);
    assert_eq!(
        git_placement(&in_ns("serviceaccounts", "default", &pulls), &pulls),
        GitPlacement::BeforeWorkloads
    );
    let git = for_git(&pulls);
    assert!(git.get("secrets").is_none(), "{git}");
    assert_eq!(git["imagePullSecrets"][0]["name"], "registry");
    // Any other service account: in order.
    let mut app = plain.clone();
    app["metadata"]["name"] = json!("app");
    assert_eq!(
        git_placement(&in_ns("serviceaccounts", "app", &app), &app),
        GitPlacement::InOrder
    );
    // Other objects of the same names elsewhere are anybody's.
    let mut named = in_ns("configmaps", "kube-root-ca.crt", &ca);
    named.object.group = "example.com".into();
    assert_eq!(git_placement(&named, &ca), GitPlacement::InOrder);
    let secret = json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "db", "namespace": "ns", "uid": "u"},
        "data": {"password": "czNjcjN0"}, "type": "Opaque"});
    let GitPlacement::LeftOut(why) = git_placement(&in_ns("secrets", "db", &secret), &secret)
    else {
        panic!("a Secret in the manifests")
    };
    assert!(
        why.contains("password: <redacted>") && !why.contains("czNjcjN0"),
        "{why}"
    );
    let ds = json!({"apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": "agent", "annotations": {"deprecated.daemonset.template.generation": "1"}},
        "spec": {}});
    assert!(for_git(&ds)["metadata"].get("annotations").is_none());
}

/// A Pending Pod's image fixed in an action, scheduled since: the rollback
/// puts the image back on the node it runs on (a Pod's node cannot be
/// taken back), and a claim bound since stays bound.
#[test]
fn a_replace_keeps_what_controllers_filled_in_since() {
    let pod = |image: &str, node: Option<&str>| {
        let mut p = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "ns", "uid": "p1", "resourceVersion": "5"},
            "spec": {"containers": [{"name": "c", "image": image}]}});
        if let Some(n) = node {
            p["spec"]["nodeName"] = json!(n);
        }
        p
    };
    let body = for_replace(&pod("busybox:1", None), &pod("busybox:3", Some("node-1")));
    assert_eq!(body["spec"]["nodeName"], "node-1");
    assert_eq!(body["spec"]["containers"][0]["image"], "busybox:1");
    let claim = |volume: Option<&str>| {
        let mut c = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": "d", "namespace": "ns", "uid": "c1", "resourceVersion": "5",
                         "labels": {"v": "1"}},
            "spec": {"accessModes": ["ReadWriteOnce"]}});
        if let Some(v) = volume {
            c["spec"]["volumeName"] = json!(v);
        }
        c
    };
    assert_eq!(
        for_replace(&claim(None), &claim(Some("pv-9")))["spec"]["volumeName"],
        "pv-9"
    );
    // Nothing filled in since: nothing added.
    assert!(
        for_replace(&pod("busybox:1", None), &pod("busybox:3", None))["spec"]
            .get("nodeName")
            .is_none()
    );
}

#[test]
fn changes_the_action_made_itself_are_no_conflict_of_someone_elses() {
    // `kubectl create ns foo || true; kubectl label ns foo …`, twice in one
    // action, foo there before: the creates were refused (phantoms).
    let (v1, v2, v3) = (
        obj("c", "1", "old"),
        obj("c", "2", "old"),
        obj("c", "3", "old"),
    );
    let (p1, p2) = (obj("c", "x", "fresh1"), obj("c", "x", "fresh2"));
    let h = only(vec![
        snap(1, Operation::Create, "c", None, Some(&p1)),
        snap(2, Operation::Update, "c", Some(&v1), Some(&v2)),
        snap(3, Operation::Create, "c", None, Some(&p2)),
        snap(4, Operation::Update, "c", Some(&v2), Some(&v3)),
    ]);
    assert_eq!(h.interleaved, None);
    // Deleted by the action, held by a finalizer, and the finalizer taken off
    // by the user: that update starts from the state the delete made.
    let mut held = obj("c", "1", "old");
    held["metadata"]["finalizers"] = json!(["example.com/cleanup"]);
    let mut terminating = held.clone();
    terminating["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:01:00Z");
    let mut released = terminating.clone();
    released["metadata"]["finalizers"] = json!([]);
    let h = only(vec![
        snap(1, Operation::Delete, "c", Some(&held), None),
        snap(
            2,
            Operation::Update,
            "c",
            Some(&terminating),
            Some(&released),
        ),
    ]);
    assert_eq!(h.interleaved, None);
}

#[test]
fn a_scale_in_a_change_a_later_admission_step_refused_is_no_conflict() {
    // The image changed at 3 replicas; then an apply to 50 was refused.
    let h = only(vec![
        snap(
            1,
            Operation::Update,
            "web",
            Some(&dep(3, "a")),
            Some(&dep(3, "b")),
        ),
        snap(
            2,
            Operation::Update,
            "web",
            Some(&dep(3, "b")),
            Some(&dep(50, "b")),
        ),
    ]);
    let Action::Replace(body) = decide(&h, Some(&dep(3, "b")), false).action else {
        panic!("a replace")
    };
    assert_eq!(body["spec"]["replicas"], 3);
    assert_eq!(
        body["spec"]["template"]["spec"]["containers"][0]["image"],
        "a"
    );
}

#[test]
fn a_scale_by_someone_else_during_an_action_that_never_scaled_is_kept() {
    // set image at 1 replica; an autoscaler goes to 3; rollout restart at 3.
    let h = only(vec![
        snap(
            1,
            Operation::Update,
            "web",
            Some(&dep(1, "a")),
            Some(&dep(1, "b")),
        ),
        snap(
            2,
            Operation::Update,
            "web",
            Some(&dep(3, "b")),
            Some(&dep(3, "c")),
        ),
    ]);
    assert!(!h.action_scaled);
    let Action::Replace(body) = decide(&h, Some(&dep(3, "c")), false).action else {
        panic!("a replace")
    };
    assert_eq!(body["spec"]["replicas"], 3);
    assert_eq!(
        body["spec"]["template"]["spec"]["containers"][0]["image"],
        "a"
    );
}

#[test]
fn an_ingress_changed_through_both_of_its_groups_is_one_object() {
    let ingress = |api: &str, host: &str| {
        json!({"apiVersion": api, "kind": "Ingress",
               "metadata": {"name": "web", "namespace": "ns", "uid": "i1", "resourceVersion": "10"},
               "spec": {"rules": [{"host": host}]}})
    };
    let through = |mut l: Loaded, group: &str, version: &str| {
        l.meta.object.group = group.into();
        l.meta.object.version = version.into();
        l.meta.object.resource = "ingresses".into();
        l.meta.object.kind = "Ingress".into();
        l
    };
    let (a, b) = (
        ingress("networking.k8s.io/v1", "a.example.com"),
        ingress("networking.k8s.io/v1", "b.example.com"),
    );
    let b_ext = ingress("extensions/v1beta1", "b.example.com");
    // Applied through networking.k8s.io, then deleted through extensions
    // (the namespace controller's choice on 1.20).
    let h = only(vec![
        through(
            snap(1, Operation::Update, "web", Some(&a), Some(&b)),
            "networking.k8s.io",
            "v1",
        ),
        through(
            snap(2, Operation::Delete, "web", Some(&b_ext), None),
            "extensions",
            "v1beta1",
        ),
    ]);
    assert_eq!(h.target, Target::Present(a));
    assert_eq!(h.object.group, "networking.k8s.io");
    assert_eq!(
        h.other_versions,
        vec![("extensions".to_string(), "v1beta1".to_string())]
    );
    assert_eq!(h.rank, rank("networking.k8s.io", "ingresses"));
    // Other resources of the same name in those groups stay apart.
    assert_eq!(
        storage_group("extensions", "ingresses"),
        "networking.k8s.io"
    );
    assert_eq!(storage_group("extensions", "deployments"), "apps");
    assert_eq!(storage_group("example.com", "ingresses"), "example.com");
}
