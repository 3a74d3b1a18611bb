//! What to capture: pure decisions on a decoded review.

use kube::core::admission::Operation as AdmissionOp;

use crate::capture::review::Review;
use crate::config::CaptureConfig;
use crate::store::model::Operation;

/// Why a change is let through without a snapshot. Also a bounded metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    DryRun,
    Connect,
    SelfUser,
    SnapshotNamespace,
    ExcludedUser,
    ExcludedResource,
    Secret,
    Subresource,
    /// A DELETE of an object already being deleted.
    AlreadyDeleting,
}

impl Skip {
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::DryRun => "dry_run",
            Skip::Connect => "connect",
            Skip::SelfUser => "self",
            Skip::SnapshotNamespace => "snapshot_namespace",
            Skip::ExcludedUser => "excluded_user",
            Skip::ExcludedResource => "excluded_resource",
            Skip::Secret => "secret",
            Skip::Subresource => "subresource",
            Skip::AlreadyDeleting => "already_being_deleted",
        }
    }
}

/// The outcome of classification: skip, or capture as this operation (and
/// whether the snapshot must be stored as a Secret).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Skip(Skip),
    Capture { operation: Operation, secret: bool },
}

pub fn classify(review: &Review, cfg: &CaptureConfig) -> Decision {
    classify_with(review, cfg, true)
}

/// As [`classify`], but for a change that belongs to a captured action
/// whoever made it (the namespace controller emptying a namespace that a
/// captured change deleted): `--exclude-users` does not apply.
pub fn classify_cascade(review: &Review, cfg: &CaptureConfig) -> Decision {
    classify_with(review, cfg, false)
}

fn classify_with(review: &Review, cfg: &CaptureConfig, exclude_users: bool) -> Decision {
    let req = &review.request;
    let operation = match req.operation {
        AdmissionOp::Create => Operation::Create,
        AdmissionOp::Update => Operation::Update,
        AdmissionOp::Delete => Operation::Delete,
        AdmissionOp::Connect => return Decision::Skip(Skip::Connect),
    };
    if req.dry_run {
        return Decision::Skip(Skip::DryRun);
    }
    // Only updates through a subresource (scale) change the object itself; a
    // CREATE of pods/eviction or pods/binding is no object of its own to undo.
    if req.sub_resource.is_some() && operation != Operation::Update {
        return Decision::Skip(Skip::Subresource);
    }
    let user = review.username();
    if cfg.self_users.iter().any(|u| u == user) {
        return Decision::Skip(Skip::SelfUser);
    }
    let namespace = review.object_namespace();
    if namespace.as_deref() == Some(cfg.snapshot_namespace.as_str()) {
        return Decision::Skip(Skip::SnapshotNamespace);
    }
    // The snapshot namespace itself: its snapshot would have to be stored
    // in it (before it exists, on create: deny mode would refuse to let
    // snapback be installed).
    if req.resource.group.is_empty()
        && req.resource.resource == "namespaces"
        && req.name == cfg.snapshot_namespace
    {
        return Decision::Skip(Skip::SnapshotNamespace);
    }
    // A restore write made by snapback impersonating the caller is always
    // captured: it is what makes a rollback itself undoable.
    let restore_write = review
        .user_extra(crate::store::model::ACTION_ANNOTATION)
        .is_some();
    if exclude_users && !restore_write && cfg.exclude_users.iter().any(|p| glob_match(p, user)) {
        return Decision::Skip(Skip::ExcludedUser);
    }
    let resource = &req.resource.resource;
    let qualified = if req.resource.group.is_empty() {
        resource.clone()
    } else {
        format!("{resource}.{}", req.resource.group)
    };
    // `plural.group`; the core group's as `plural.core`, the way snapback's
    // own `snapback.io/resource` labels name them; a plural alone (no dot,
    // as SPEC §2 lists them: `leases`, `tokenreviews`) in every group.
    if cfg.exclude_resources.iter().any(|p| {
        glob_match(p, &qualified)
            || (!p.contains('.') && glob_match(p, resource))
            || (req.resource.group.is_empty()
                && p.strip_suffix(".core")
                    .is_some_and(|p| glob_match(p, resource)))
    }) {
        return Decision::Skip(Skip::ExcludedResource);
    }
    let secret = req.resource.group.is_empty() && resource == "secrets";
    if secret && !cfg.capture_secrets {
        return Decision::Skip(Skip::Secret);
    }
    Decision::Capture { operation, secret }
}

/// `*` matches any run of characters; everything else matches itself.
/// (Runs for every pattern on every review: it allocates nothing.)
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let Some((first, after_first)) = pattern.split_once('*') else {
        return pattern == text;
    };
    let (middle, last) = after_first.rsplit_once('*').unwrap_or(("", after_first));
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for part in middle.split('*') {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;
    use serde_json::{Value, json};

    fn review(op: &str, group: &str, resource: &str, ns: &str, user: &str, dry: bool) -> Review {
        let v = json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "u", "kind": {"group": group, "version": "v1", "kind": "X"},
                "resource": {"group": group, "version": "v1", "resource": resource},
                "name": "n", "namespace": ns, "operation": op,
                "userInfo": {"username": user}, "dryRun": dry,
                "object": {"metadata": {"name": "n", "namespace": ns}}
            }
        });
        Review::from_value(v).unwrap()
    }

    fn cfg() -> CaptureConfig {
        let mut c = CaptureConfig::with_namespace("snapback-system");
        c.self_users = vec!["system:serviceaccount:snapback-system:snapback".into()];
        c
    }

    #[rstest]
    #[case("CREATE", "", "configmaps", "ns", "alice", false, Decision::Capture { operation: Operation::Create, secret: false })]
    #[case("UPDATE", "apps", "deployments", "ns", "alice", false, Decision::Capture { operation: Operation::Update, secret: false })]
    #[case("DELETE", "", "configmaps", "ns", "alice", false, Decision::Capture { operation: Operation::Delete, secret: false })]
    #[case(
        "CREATE",
        "",
        "configmaps",
        "ns",
        "alice",
        true,
        Decision::Skip(Skip::DryRun)
    )]
    #[case(
        "CONNECT",
        "",
        "pods",
        "ns",
        "alice",
        false,
        Decision::Skip(Skip::Connect)
    )]
    #[case(
        "CREATE",
        "",
        "configmaps",
        "snapback-system",
        "alice",
        false,
        Decision::Skip(Skip::SnapshotNamespace)
    )]
    #[case(
        "CREATE",
        "",
        "configmaps",
        "ns",
        "system:serviceaccount:snapback-system:snapback",
        false,
        Decision::Skip(Skip::SelfUser)
    )]
    #[case(
        "UPDATE",
        "",
        "nodes",
        "",
        "system:node:worker-1",
        false,
        Decision::Skip(Skip::ExcludedUser)
    )]
    #[case(
        "UPDATE",
        "",
        "configmaps",
        "ns",
        "system:kube-scheduler",
        false,
        Decision::Skip(Skip::ExcludedUser)
    )]
    #[case(
        "UPDATE",
        "",
        "configmaps",
        "ns",
        "system:serviceaccount:kube-system:generic",
        false,
        Decision::Skip(Skip::ExcludedUser)
    )]
    #[case(
        "CREATE",
        "",
        "events",
        "ns",
        "alice",
        false,
        Decision::Skip(Skip::ExcludedResource)
    )]
    #[case(
        "CREATE",
        "events.k8s.io",
        "events",
        "ns",
        "alice",
        false,
        Decision::Skip(Skip::ExcludedResource)
    )]
    #[case(
        "UPDATE",
        "coordination.k8s.io",
        "leases",
        "ns",
        "alice",
        false,
        Decision::Skip(Skip::ExcludedResource)
    )]
    #[case(
        "CREATE",
        "authorization.k8s.io",
        "subjectaccessreviews",
        "",
        "alice",
        false,
        Decision::Skip(Skip::ExcludedResource)
    )]
    #[case(
        "CREATE",
        "authentication.k8s.io",
        "tokenreviews",
        "",
        "alice",
        false,
        Decision::Skip(Skip::ExcludedResource)
    )]
    #[case(
        "UPDATE",
        "",
        "endpoints",
        "ns",
        "alice",
        false,
        Decision::Skip(Skip::ExcludedResource)
    )]
    #[case(
        "CREATE",
        "authorization.k8s.io",
        "selfsubjectrulesreviews",
        "",
        "alice",
        false,
        Decision::Skip(Skip::ExcludedResource)
    )]
    // RBAC's group ends like authorization's: captured.
    #[case(
        "DELETE",
        "rbac.authorization.k8s.io",
        "roles",
        "ns",
        "alice",
        false,
        Decision::Capture { operation: Operation::Delete, secret: false }
    )]
    #[case(
        "CREATE",
        "authorization.k8s.io",
        "localsubjectaccessreviews",
        "ns",
        "alice",
        false,
        Decision::Skip(Skip::ExcludedResource)
    )]
    // Custom resources named like reviews are objects like any other.
    #[case(
        "UPDATE",
        "bookinfo.example.com",
        "reviews",
        "ns",
        "alice",
        false,
        Decision::Capture { operation: Operation::Update, secret: false }
    )]
    #[case(
        "DELETE",
        "reviews.acme.io",
        "codereviews",
        "ns",
        "alice",
        false,
        Decision::Capture { operation: Operation::Delete, secret: false }
    )]
    #[case(
        "UPDATE",
        "",
        "secrets",
        "ns",
        "alice",
        false,
        Decision::Skip(Skip::Secret)
    )]
    fn classifies(
        #[case] op: &str,
        #[case] group: &str,
        #[case] resource: &str,
        #[case] ns: &str,
        #[case] user: &str,
        #[case] dry: bool,
        #[case] expected: Decision,
    ) {
        assert_eq!(
            classify(&review(op, group, resource, ns, user, dry), &cfg()),
            expected
        );
    }

    #[test]
    fn core_resources_are_excluded_by_plural_or_plural_dot_core() {
        for pattern in ["configmaps", "configmaps.core", "config*.core", "*.core"] {
            let mut c = cfg();
            c.exclude_resources = vec![pattern.into()];
            assert_eq!(
                classify(
                    &review("CREATE", "", "configmaps", "ns", "alice", false),
                    &c
                ),
                Decision::Skip(Skip::ExcludedResource),
                "{pattern}"
            );
            // Not a resource of another group.
            assert_eq!(
                classify(
                    &review("CREATE", "apps", "deployments", "ns", "alice", false),
                    &c
                ),
                Decision::Capture {
                    operation: Operation::Create,
                    secret: false
                },
                "{pattern}"
            );
        }
    }

    #[test]
    fn a_plural_alone_is_excluded_in_every_group_a_qualified_one_in_its_own() {
        let leases = review(
            "UPDATE",
            "coordination.k8s.io",
            "leases",
            "ns",
            "alice",
            false,
        );
        for (pattern, excluded) in [
            ("leases", true),
            ("lea*", true),
            ("leases.coordination.k8s.io", true),
            ("leases.*", true),
            ("leases.core", false),
            ("leases.apps", false),
            ("configmaps", false),
        ] {
            let mut c = cfg();
            c.exclude_resources = vec![pattern.into()];
            let skipped = classify(&leases, &c) == Decision::Skip(Skip::ExcludedResource);
            assert_eq!(skipped, excluded, "{pattern}");
        }
    }

    #[test]
    fn secrets_are_captured_as_secrets_when_enabled() {
        let mut c = cfg();
        c.capture_secrets = true;
        assert_eq!(
            classify(&review("UPDATE", "", "secrets", "ns", "alice", false), &c),
            Decision::Capture {
                operation: Operation::Update,
                secret: true
            }
        );
    }

    #[test]
    fn restore_writes_are_captured_even_for_excluded_users() {
        let mut v: Value = json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "u", "kind": {"group": "", "version": "v1", "kind": "ConfigMap"},
                "resource": {"group": "", "version": "v1", "resource": "configmaps"},
                "name": "n", "namespace": "ns", "operation": "UPDATE",
                "userInfo": {"username": "system:kube-admin", "extra": {"snapback.io/action": ["a-rollback-1"]}},
                "object": {"metadata": {"name": "n"}}, "oldObject": {"metadata": {"name": "n"}}
            }
        });
        let r = Review::from_value(v.take()).unwrap();
        assert!(matches!(classify(&r, &cfg()), Decision::Capture { .. }));
    }

    #[rstest]
    #[case("system:node:*", "system:node:a", true)]
    #[case("system:node:*", "system:nodes", false)]
    #[case("*reviews", "tokenreviews", true)]
    #[case("*reviews.*", "tokenreviews.authentication.k8s.io", true)]
    #[case("a*b*c", "aXXbYYc", true)]
    #[case("a*b*c", "aXXcYYb", false)]
    #[case("exact", "exact", true)]
    #[case("exact", "exactly", false)]
    #[case("*", "", true)]
    #[case("ab*ba", "aba", false)]
    #[case("a**c", "abc", true)]
    #[case("a*b*c*d", "aXbYcZd", true)]
    #[case("a*b*c*d", "aXcYbZd", false)]
    #[case("*.apps", "deployments.apps", true)]
    fn globs(#[case] p: &str, #[case] t: &str, #[case] m: bool) {
        assert_eq!(glob_match(p, t), m);
    }
}
