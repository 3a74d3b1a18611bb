//! Feeds [`Attribution`] with the actions users opened explicitly, from a
//! watch on the action records (the snapshotter may run in another container).

use std::collections::HashMap;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};

use crate::capture::attribution::Attribution;
use crate::store::actions::{ActionRecord, ActionState, RECORD_KEY};
use crate::store::model::{ActionId, LABEL_ORIGIN, LABEL_RECORD, RECORD_ACTION};

fn parse(cm: &ConfigMap) -> Option<ActionRecord> {
    let json = cm.data.as_ref()?.get(RECORD_KEY)?;
    serde_json::from_str(json).ok()
}

/// Run forever (the watcher retries with backoff on errors). Explicit
/// actions feed the open actions; an implicit session that leaves `open`
/// (rolled back, cancelled, completed by the maintenance pass) ends the
/// user's session here too, so that their next change starts a new action
/// instead of joining one that was rolled back.
pub async fn watch(client: Client, namespace: String, attribution: Arc<Attribution>) {
    let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
    let cfg = watcher::Config::default().labels(&format!(
        "{LABEL_RECORD}={RECORD_ACTION},{LABEL_ORIGIN} in (explicit,session)"
    ));
    let stream = kube::runtime::watcher(api, cfg).default_backoff();
    futures::pin_mut!(stream);
    let mut initial: HashMap<String, ActionId> = HashMap::new();
    while let Some(event) = stream.next().await {
        match event {
            Ok(Event::Init) => initial.clear(),
            Ok(Event::InitApply(cm)) => {
                if let Some(r) =
                    parse(&cm).filter(|r| r.state == ActionState::Open && r.origin == "explicit")
                {
                    initial.insert(r.owner, r.id);
                }
            }
            Ok(Event::InitDone) => attribution.replace_open(std::mem::take(&mut initial)),
            Ok(Event::Apply(cm)) => {
                if let Some(r) = parse(&cm) {
                    match (r.origin.as_str(), r.state) {
                        ("explicit", ActionState::Open) => {
                            attribution.set_open(&r.owner, Some(r.id))
                        }
                        ("explicit", _) => attribution.close_if(&r.owner, &r.id),
                        (_, ActionState::Open) => {}
                        _ => attribution.end_session_if(&r.owner, &r.id),
                    }
                }
            }
            Ok(Event::Delete(cm)) => {
                if let Some(r) = parse(&cm) {
                    attribution.close_if(&r.owner, &r.id);
                    attribution.end_session_if(&r.owner, &r.id);
                }
            }
            Err(e) => tracing::warn!(error = %e, "watching action records"),
        }
    }
}
