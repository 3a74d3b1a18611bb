//! Labels and annotations read back from the API server (possibly edited by
//! hand): parsing the snapshot metadata and the action id never panics.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use snapback::store::model::{ActionId, SnapshotMeta};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = ActionId::parse(text).map(|id| (id.record_name(), id.rollback_id(3)));
    let mut labels = BTreeMap::new();
    let mut annotations = BTreeMap::new();
    for (i, part) in text.split('\n').enumerate() {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        if i % 2 == 0 {
            labels.insert(k.to_string(), v.to_string());
        } else {
            annotations.insert(k.to_string(), v.to_string());
        }
    }
    if let Ok(meta) = SnapshotMeta::from_stored("snap-x", &labels, &annotations, false) {
        let _ = (meta.labels(), meta.annotations(), meta.order_key());
    }
});
