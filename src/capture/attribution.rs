//! Which action a change belongs to (SPEC §2, first match wins):
//! 0. the impersonation extra of a restore write,
//! 1. the `snapback.io/action` annotation (handed over from the mutating
//!    webhook, which strips it before the object is stored),
//! 2. an action the user opened explicitly and has not completed,
//! 3. the user's implicit session.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use jiff::Timestamp;

use crate::store::model::{ActionId, user_slug};

/// How the action of a change was determined; also the action's origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Rollback,
    Annotation,
    Explicit,
    Session,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Rollback => "rollback",
            Origin::Annotation => "annotation",
            Origin::Explicit => "explicit",
            Origin::Session => "session",
        }
    }
}

/// Identifies one admission request across the mutating and validating calls
/// (their request uids differ, the API server makes one per webhook call).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HintKey {
    pub user: String,
    pub operation: &'static str,
    pub group: String,
    pub resource: String,
    pub subresource: Option<String>,
    pub namespace: Option<String>,
    /// The object name, or `gen:<generateName>` when the name is not chosen yet.
    pub name: String,
}

/// Longer than any webhook timeout (at most 30s), short enough that the hint
/// of a request rejected after the mutating call does not linger.
const HINT_TTL: Duration = Duration::from_secs(15);
const HINT_LIMIT: usize = 100_000;

/// A digest of what a change writes, the same in its mutating call (once
/// snapback's patch took the annotation out) and its validating call: the
/// object without `metadata` (the annotation, the name generated between
/// the two calls) and `status`.
pub fn content_digest(object: Option<&serde_json::Value>) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    if let Some(map) = object.and_then(serde_json::Value::as_object) {
        for (k, v) in map {
            if k != "metadata" && k != "status" {
                k.hash(&mut h);
                v.to_string().hash(&mut h);
            }
        }
    }
    h.finish()
}

/// (action, the change's content digest, when left).
type Hint = (ActionId, u64, Instant);

#[derive(Debug)]
struct Session {
    action: ActionId,
    last_seen: Instant,
}

/// In-memory attribution state shared by the webhook handlers.
#[derive(Debug)]
pub struct Attribution {
    session_idle: Duration,
    /// Per key, oldest first.
    hints: Mutex<HashMap<HintKey, VecDeque<Hint>>>,
    sessions: Mutex<HashMap<String, Session>>,
    /// user → explicitly opened action, fed from the action records.
    open: Mutex<HashMap<String, ActionId>>,
}

impl Attribution {
    pub fn new(session_idle: Duration) -> Self {
        Attribution {
            session_idle,
            hints: Mutex::default(),
            sessions: Mutex::default(),
            open: Mutex::default(),
        }
    }

    /// The mutating webhook saw `action` on the incoming object, whose
    /// content (see [`content_digest`]) is `content`.
    pub fn leave_hint(&self, key: HintKey, action: ActionId, content: u64) {
        let now = Instant::now();
        let mut hints = lock(&self.hints);
        if hints.len() >= HINT_LIMIT {
            hints.retain(|_, q| {
                q.retain(|(_, _, at)| now.duration_since(*at) < HINT_TTL);
                !q.is_empty()
            });
        }
        hints
            .entry(key)
            .or_default()
            .push_back((action, content, now));
    }

    /// The hint of this change: among the live ones under `key`, the one
    /// left for the same content (parallel creates by one user with one
    /// generateName and different annotations: their validating calls need
    /// not come in the order of their mutating calls), else the oldest (the
    /// content changed on the way: another mutating webhook).
    fn take_hint(&self, key: &HintKey, content: &dyn Fn() -> u64) -> Option<ActionId> {
        let now = Instant::now();
        let mut hints = lock(&self.hints);
        let queue = hints.get_mut(key)?;
        queue.retain(|(_, _, at)| now.duration_since(*at) < HINT_TTL);
        let found = match queue.len() {
            0 => None,
            // The usual case: nothing to choose from, no digest needed.
            1 => queue.pop_front().map(|(action, _, _)| action),
            _ => {
                let digest = content();
                let at = queue.iter().position(|(_, c, _)| *c == digest).unwrap_or(0);
                queue.remove(at).map(|(action, _, _)| action)
            }
        };
        if queue.is_empty() {
            hints.remove(key);
        }
        found
    }

    /// Replace the set of explicitly opened actions (from a watch on records).
    pub fn set_open(&self, user: &str, action: Option<ActionId>) {
        let mut open = lock(&self.open);
        match action {
            Some(a) => {
                open.insert(user.to_string(), a);
            }
            None => {
                open.remove(user);
            }
        }
    }

    /// Forget `action` as the user's open action (completed or deleted).
    pub fn close_if(&self, user: &str, action: &ActionId) {
        let mut open = lock(&self.open);
        if open.get(user) == Some(action) {
            open.remove(user);
        }
    }

    /// End the user's implicit session if it is `action` (rolled back,
    /// cancelled, completed or deleted): their next change starts a new one.
    pub fn end_session_if(&self, user: &str, action: &ActionId) {
        let mut sessions = lock(&self.sessions);
        if sessions.get(user).is_some_and(|s| &s.action == action) {
            sessions.remove(user);
        }
    }

    /// Replace all open actions at once (after a relist).
    pub fn replace_open(&self, all: HashMap<String, ActionId>) {
        *lock(&self.open) = all;
    }

    pub fn open_action(&self, user: &str) -> Option<ActionId> {
        lock(&self.open).get(user).cloned()
    }

    /// Decide the action of a change. `keys` are the hint keys the change may
    /// have been registered under by the mutating webhook.
    pub fn attribute(
        &self,
        user: &str,
        impersonation_extra: Option<&str>,
        keys: &[HintKey],
        now: Timestamp,
    ) -> Result<(ActionId, Origin), crate::store::model::InvalidActionId> {
        self.attribute_content(user, impersonation_extra, keys, &|| 0, now)
    }

    /// [`Self::attribute`], telling hints apart by the change's content
    /// digest (computed only when there is a choice).
    pub fn attribute_content(
        &self,
        user: &str,
        impersonation_extra: Option<&str>,
        keys: &[HintKey],
        content: &dyn Fn() -> u64,
        now: Timestamp,
    ) -> Result<(ActionId, Origin), crate::store::model::InvalidActionId> {
        if let Some(extra) = impersonation_extra {
            return Ok((ActionId::parse(extra)?, Origin::Rollback));
        }
        if let Some(hinted) = keys.iter().find_map(|k| self.take_hint(k, content)) {
            return Ok((hinted, Origin::Annotation));
        }
        if let Some(open) = self.open_action(user) {
            return Ok((open, Origin::Explicit));
        }
        Ok((self.session(user, now), Origin::Session))
    }

    fn session(&self, user: &str, now: Timestamp) -> ActionId {
        let instant = Instant::now();
        let mut sessions = lock(&self.sessions);
        if let Some(s) = sessions.get_mut(user)
            && instant.duration_since(s.last_seen) < self.session_idle
        {
            s.last_seen = instant;
            return s.action.clone();
        }
        if sessions.len() > 10_000 {
            let idle = self.session_idle;
            sessions.retain(|_, s| instant.duration_since(s.last_seen) < idle);
        }
        let action = session_id(user, now, rand::random::<u16>());
        sessions.insert(
            user.to_string(),
            Session {
                action: action.clone(),
                last_seen: instant,
            },
        );
        action
    }
}

/// `<user-slug>-<yyyymmddThhmmssZ>-<4 hex>`, at most 63 characters.
/// Whether an id has the shape of [`session_id`]'s: `<slug>-<yyyymmddThhmmssZ>-<4 hex>`.
pub fn looks_like_session(id: &str) -> bool {
    let mut parts = id.rsplitn(3, '-');
    let (Some(hex), Some(stamp), Some(slug)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    hex.len() == 4
        && hex.bytes().all(|b| b.is_ascii_hexdigit())
        && stamp.len() == 16
        && stamp.as_bytes()[8] == b'T'
        && stamp.ends_with('Z')
        && stamp[..8].bytes().all(|b| b.is_ascii_digit())
        && stamp[9..15].bytes().all(|b| b.is_ascii_digit())
        && !slug.is_empty()
}

pub fn session_id(user: &str, now: Timestamp, random: u16) -> ActionId {
    let stamp = now.strftime("%Y%m%dT%H%M%SZ");
    // 63 - len("-20261122T234552Z-1a2b") = 41
    let slug = user_slug(user, 41);
    let id = format!("{slug}-{stamp}-{random:04x}");
    ActionId::parse(&id).unwrap_or_else(|_| {
        // user_slug only yields [a-z0-9-] with alphanumeric ends, so this is unreachable;
        // fall back to a fixed safe prefix rather than panic.
        ActionId::parse(&format!("user-{stamp}-{random:04x}")).unwrap_or_else(|e| panic!("{e}"))
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain maps behind; the
    // data is still consistent, so keep serving.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> HintKey {
        HintKey {
            user: "alice".into(),
            operation: "create",
            group: "".into(),
            resource: "configmaps".into(),
            subresource: None,
            namespace: Some("ns".into()),
            name: name.into(),
        }
    }

    fn now() -> Timestamp {
        "2026-11-22T23:45:52Z".parse().unwrap()
    }

    #[test]
    fn parallel_hints_under_one_key_go_to_the_change_with_their_content() {
        let a = Attribution::new(Duration::from_secs(30));
        let (x, y) = (
            ActionId::parse("gen-x").unwrap(),
            ActionId::parse("gen-y").unwrap(),
        );
        let (cx, cy) = (
            content_digest(Some(
                &serde_json::json!({"kind": "ConfigMap", "data": {"a": "x"}}),
            )),
            content_digest(Some(
                &serde_json::json!({"kind": "ConfigMap", "data": {"a": "y"}}),
            )),
        );
        assert_ne!(cx, cy);
        a.leave_hint(key("gen:rc-"), x.clone(), cx);
        a.leave_hint(key("gen:rc-"), y.clone(), cy);
        // The second create's validating call comes first.
        let (got, _) = a
            .attribute_content("alice", None, &[key("gen:rc-")], &|| cy, now())
            .unwrap();
        assert_eq!(got, y);
        let (got, _) = a
            .attribute_content("alice", None, &[key("gen:rc-")], &|| cx, now())
            .unwrap();
        assert_eq!(got, x);
        // The digest leaves metadata out (the name generated in between,
        // the annotation taken out).
        assert_eq!(
            content_digest(Some(
                &serde_json::json!({"metadata": {"generateName": "rc-"}, "data": {"a": "x"}})
            )),
            content_digest(Some(
                &serde_json::json!({"metadata": {"name": "rc-abcde"}, "data": {"a": "x"}})
            )),
        );
    }

    #[test]
    fn session_ids_are_recognised_by_their_shape() {
        let id = session_id("system:serviceaccount:argocd:controller", now(), 0x1a2b);
        assert!(looks_like_session(id.as_str()), "{id}");
        for other in [
            "release-42",
            "a-20261122T234552Z",
            "x-20261122-1a2b",
            "x-20261122T234552Z-zzzz",
        ] {
            assert!(!looks_like_session(other), "{other}");
        }
    }

    #[test]
    fn precedence_extra_then_annotation_then_open_then_session() {
        let a = Attribution::new(Duration::from_secs(30));
        a.leave_hint(key("x"), ActionId::parse("from-annotation").unwrap(), 1);
        a.set_open("alice", Some(ActionId::parse("opened").unwrap()));
        let (id, o) = a
            .attribute("alice", Some("rb-1"), &[key("x")], now())
            .unwrap();
        assert_eq!((id.as_str(), o), ("rb-1", Origin::Rollback));
        let (id, o) = a.attribute("alice", None, &[key("x")], now()).unwrap();
        assert_eq!((id.as_str(), o), ("from-annotation", Origin::Annotation));
        // The hint is consumed once.
        let (id, o) = a.attribute("alice", None, &[key("x")], now()).unwrap();
        assert_eq!((id.as_str(), o), ("opened", Origin::Explicit));
        a.set_open("alice", None);
        let (id, o) = a.attribute("alice", None, &[key("x")], now()).unwrap();
        assert_eq!(o, Origin::Session);
        assert!(id.as_str().starts_with("alice-20261122T234552Z-"));
    }

    #[test]
    fn sessions_group_by_user_and_expire_when_idle() {
        let a = Attribution::new(Duration::from_millis(50));
        let (s1, _) = a.attribute("alice", None, &[], now()).unwrap();
        let (s2, _) = a.attribute("alice", None, &[], now()).unwrap();
        let (b1, _) = a.attribute("bob", None, &[], now()).unwrap();
        assert_eq!(s1, s2);
        assert_ne!(s1, b1);
        std::thread::sleep(Duration::from_millis(80));
        let (s3, _) = a.attribute("alice", None, &[], now()).unwrap();
        assert_ne!(s1, s3);
    }

    #[test]
    fn a_session_that_ended_elsewhere_is_not_joined_again() {
        let a = Attribution::new(Duration::from_secs(30));
        let (s1, _) = a.attribute("alice", None, &[], now()).unwrap();
        // Someone else's session ending changes nothing.
        a.end_session_if("alice", &ActionId::parse("other").unwrap());
        assert_eq!(a.attribute("alice", None, &[], now()).unwrap().0, s1);
        // Rolled back: the next change starts a new session.
        a.end_session_if("alice", &s1);
        let (s2, o) = a.attribute("alice", None, &[], now()).unwrap();
        assert_eq!(o, Origin::Session);
        assert_ne!(s1, s2);
    }

    #[test]
    fn invalid_impersonation_extra_is_an_error() {
        let a = Attribution::new(Duration::from_secs(30));
        assert!(
            a.attribute("alice", Some("not valid!"), &[], now())
                .is_err()
        );
    }

    #[test]
    fn session_ids_fit_a_label() {
        let id = session_id(&"system:serviceaccount:".repeat(10), now(), 0xbeef);
        assert!(id.as_str().len() <= 63);
        assert!(id.as_str().ends_with("-20261122T234552Z-beef"));
    }
}
