#![allow(clippy::unwrap_used)]

use super::*;
use crate::store::model::{ActionId, ObjectRef, Operation};

fn snapshot(n: usize, prior: Option<&str>) -> (ActionRecord, NewSnapshot) {
    let now: jiff::Timestamp = "2026-11-24T10:00:00.123456Z".parse().unwrap();
    let action = ActionId::parse("alice-1").unwrap();
    let operation = if prior.is_some() {
        Operation::Update
    } else {
        Operation::Create
    };
    let object = ObjectRef {
        group: String::new(),
        version: "v1".into(),
        resource: "configmaps".into(),
        subresource: None,
        kind: "ConfigMap".into(),
        namespace: Some("default".into()),
        name: format!("cm-{n}"),
    };
    let meta = SnapshotMeta {
        resource_version: prior.map(|_| "42".into()),
        uid: Some("u-1".into()),
        after_fingerprint: Some("f".into()),
        ..SnapshotMeta::new(
            action.clone(),
            operation,
            object,
            "alice",
            now,
            format!("uid-{n}"),
        )
    };
    let record = ActionRecord::new(action, "session", "alice", now);
    let prior = prior.map(|p| RawValue::from_string(p.to_string()).unwrap());
    (record, NewSnapshot { meta, prior })
}

async fn append(journal: &Journal, n: usize, prior: Option<&str>) -> Appended {
    let (record, snap) = snapshot(n, prior);
    journal
        .append(encode(&record, &snap).unwrap(), &snap.meta.snapshot_name)
        .await
        .unwrap()
}

fn segment_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("segment-"))
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn entries_not_released_are_recovered_by_the_next_open() {
    let dir = tempfile::tempdir().unwrap();
    let prior =
        r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"cm-1"},"data":{"k":"v"}}"#;
    {
        let (journal, recovered) = Journal::open(dir.path()).unwrap();
        assert!(recovered.entries.is_empty());
        let a = append(&journal, 0, None).await;
        let _b = append(&journal, 1, Some(prior)).await;
        journal.release(a);
        assert_eq!(journal.outstanding(), 1);
        // Dropped without close: as a crash leaves it.
    }
    let (journal, recovered) = Journal::open(dir.path()).unwrap();
    assert_eq!(recovered.torn, 0);
    // The released entry is still in the segment, with its release mark:
    // only the other comes back.
    let names: Vec<String> = recovered
        .entries
        .iter()
        .map(|(_, e)| e.meta.object.name.clone())
        .collect();
    assert_eq!(names, ["cm-1"]);
    let (_, second) = &recovered.entries[0];
    let (record, snap) = snapshot(1, Some(prior));
    assert_eq!(second.meta, snap.meta);
    assert_eq!(second.record, record);
    assert_eq!(second.snapshot().prior.unwrap().get(), prior);
    // Once every recovered entry is released, its segment is gone; only the
    // new one (appended to) is left.
    for (appended, _) in recovered.entries {
        journal.release(appended);
    }
    assert_eq!(segment_files(dir.path()).len(), 1);
    assert_eq!(journal.outstanding(), 0);
}

#[tokio::test]
async fn close_deletes_what_was_written_and_keeps_what_was_not() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (journal, _) = Journal::open(dir.path()).unwrap();
        let a = append(&journal, 0, None).await;
        journal.release(a);
        journal.close();
        assert!(segment_files(dir.path()).is_empty());
        assert!(journal.append(b"{}".to_vec(), "x").await.is_err(), "closed");
    }
    {
        let (journal, recovered) = Journal::open(dir.path()).unwrap();
        assert!(recovered.entries.is_empty());
        let _kept = append(&journal, 1, None).await;
        journal.close();
        assert_eq!(segment_files(dir.path()).len(), 1);
    }
    let (_journal, recovered) = Journal::open(dir.path()).unwrap();
    assert_eq!(recovered.entries.len(), 1);
    assert_eq!(recovered.entries[0].1.meta.object.name, "cm-1");
}

#[tokio::test]
async fn a_torn_last_frame_ends_the_segment_and_the_rest_is_recovered() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (journal, _) = Journal::open(dir.path()).unwrap();
        let _a = append(&journal, 0, None).await;
        let _b = append(&journal, 1, None).await;
    }
    let file = dir.path().join(&segment_files(dir.path())[0]);
    let len = fs::metadata(&file).unwrap().len();
    // A crash in the middle of the second append: half its frame on disk.
    let bytes = fs::read(&file).unwrap();
    let frames = read_frames(&bytes).frames;
    let second = frames[1].len() as u64 + FRAME_HEADER as u64;
    OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(len - second / 2)
        .unwrap();
    let (_journal, recovered) = Journal::open(dir.path()).unwrap();
    assert_eq!(recovered.torn, 1);
    assert_eq!(recovered.entries.len(), 1);
    assert_eq!(recovered.entries[0].1.meta.object.name, "cm-0");
}

#[test]
fn frames_with_a_bad_checksum_or_header_are_not_read() {
    let entry = |n: u8| {
        let mut p = vec![ENTRY_TAG];
        p.extend(format!("{{\"n\":{n}}}").bytes());
        p
    };
    let (a, b, c) = (entry(1), entry(2), entry(3));
    let mut bytes = MAGIC.to_vec();
    bytes.extend(frame(&a));
    let second = bytes.len();
    bytes.extend(frame(&b));
    assert_eq!(read_frames(&bytes).frames.len(), 2);
    // The last frame's checksum fails: a torn tail.
    let mut torn = bytes.clone();
    let last = torn.len() - 1;
    torn[last] ^= 1;
    let read = read_frames(&torn);
    assert_eq!(read.frames, [a.as_slice()]);
    assert_eq!(read.torn, Some(second));
    assert!(read.corrupt.is_empty());
    // A corrupt frame between intact ones: skipped, the rest still read.
    let mut middle = bytes.clone();
    middle.extend(frame(&c));
    middle[second + FRAME_HEADER + 3] ^= 0x20;
    let read = read_frames(&middle);
    assert_eq!(read.frames, [a.as_slice(), c.as_slice()]);
    assert_eq!(read.corrupt, [second]);
    assert_eq!(read.torn, None);
    // A garbled header: what follows is still read.
    let mut header = middle.clone();
    header[0] = b'X';
    header[second + FRAME_HEADER + 3] ^= 0x20;
    let read = read_frames(&header);
    assert_eq!(read.frames, [a.as_slice(), b.as_slice(), c.as_slice()]);
    assert_eq!(read.corrupt, [0]);
    // A length that runs past the end.
    let mut long = MAGIC.to_vec();
    long.extend(u32::MAX.to_le_bytes());
    long.extend(0u32.to_le_bytes());
    let read = read_frames(&long);
    assert!(read.frames.is_empty());
    assert_eq!(read.torn, Some(MAGIC.len()));
    // A tail of zeros (extended before its data reached the disk): a clean end.
    let mut zeros = MAGIC.to_vec();
    zeros.extend(frame(&a));
    zeros.extend([0u8; 64]);
    let read = read_frames(&zeros);
    assert_eq!(read.frames, [a.as_slice()]);
    assert_eq!((read.torn, read.corrupt.len()), (None, 0));
    // Not a segment at all.
    assert_eq!(read_frames(b"hello").torn, Some(0));
}

#[tokio::test]
async fn one_process_per_directory() {
    let dir = tempfile::tempdir().unwrap();
    let (_journal, _) = Journal::open(dir.path()).unwrap();
    let err = Journal::open(dir.path()).err().unwrap();
    assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    assert!(
        err.to_string().contains("in use by another process"),
        "{err}"
    );
}

#[tokio::test]
async fn a_segment_whose_entries_are_all_written_starts_over() {
    let dir = tempfile::tempdir().unwrap();
    let big = format!(r#"{{"data":"{}"}}"#, "x".repeat(64 << 10));
    let (journal, _) = Journal::open(dir.path()).unwrap();
    for n in 0..5 {
        let a = append(&journal, n, Some(&big)).await;
        journal.release(a);
    }
    // Past RESTART_BYTES with nothing outstanding, an append cuts the
    // segment back first (here the fifth): the file stays small.
    let _kept = append(&journal, 9, None).await;
    assert!(journal.bytes() < RESTART_BYTES, "{}", journal.bytes());
    let file = dir.path().join(&segment_files(dir.path())[0]);
    assert!(fs::metadata(&file).unwrap().len() < RESTART_BYTES);
    drop(journal);
    let (_journal, recovered) = Journal::open(dir.path()).unwrap();
    let names: Vec<String> = recovered
        .entries
        .iter()
        .map(|(_, e)| e.meta.object.name.clone())
        .collect();
    assert_eq!(names, ["cm-9"]);
}

#[tokio::test]
async fn concurrent_appends_share_flushes_and_all_land() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = Journal::open(dir.path()).unwrap();
    let appends = (0..200).map(|n| {
        let journal = journal.clone();
        tokio::spawn(async move { append(&journal, n, None).await })
    });
    let done = futures::future::join_all(appends).await;
    assert_eq!(done.len(), 200);
    assert_eq!(journal.outstanding(), 200);
    drop(done);
    drop(journal);
    let (_journal, recovered) = Journal::open(dir.path()).unwrap();
    let mut names: Vec<String> = recovered
        .entries
        .iter()
        .map(|(_, e)| e.meta.object.name.clone())
        .collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 200);
}

#[tokio::test]
async fn segments_go_oldest_first_so_release_marks_outlive_their_entries() {
    let dir = tempfile::tempdir().unwrap();
    let big = format!(r#"{{"data":"{}"}}"#, "x".repeat(3 << 20));
    {
        let (journal, _) = Journal::open(dir.path()).unwrap();
        let first = append(&journal, 0, None).await;
        // Fill three segments (8 MiB each) with entries written at once:
        // their release marks land in later segments than theirs.
        for n in 1..10 {
            let a = append(&journal, n, Some(&big)).await;
            journal.release(a);
        }
        let _last = append(&journal, 10, None).await;
        let files = segment_files(dir.path());
        assert!(files.len() >= 3, "{files:?}");
        // The oldest still has an entry not written: nothing after it goes.
        drop(first);
        drop(journal);
    }
    // A crash now: only the two entries not released come back.
    let (journal, recovered) = Journal::open(dir.path()).unwrap();
    let names: Vec<String> = recovered
        .entries
        .iter()
        .map(|(_, e)| e.meta.object.name.clone())
        .collect();
    assert_eq!(names, ["cm-0", "cm-10"]);
    for (a, _) in recovered.entries {
        journal.release(a);
    }
    assert_eq!(segment_files(dir.path()).len(), 1, "only the new one");
}

#[tokio::test]
async fn a_corrupt_entry_between_intact_ones_loses_only_itself_and_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (journal, _) = Journal::open(dir.path()).unwrap();
        for n in 0..3 {
            let _ = append(&journal, n, None).await;
        }
    }
    let file = dir.path().join(&segment_files(dir.path())[0]);
    let mut bytes = fs::read(&file).unwrap();
    let frames = read_frames(&bytes).frames;
    // A byte of the second entry changed on disk.
    let second = MAGIC.len() + FRAME_HEADER + frames[0].len();
    bytes[second + FRAME_HEADER + 10] ^= 0x01;
    fs::write(&file, &bytes).unwrap();
    let (_journal, recovered) = Journal::open(dir.path()).unwrap();
    let names: Vec<String> = recovered
        .entries
        .iter()
        .map(|(_, e)| e.meta.object.name.clone())
        .collect();
    assert_eq!(names, ["cm-0", "cm-2"]);
    assert_eq!((recovered.corrupt, recovered.torn), (1, 0));
    assert!(
        file.with_extension("log.corrupt").exists(),
        "a copy is kept"
    );
}

#[tokio::test]
async fn when_appends_pause_release_marks_are_written_and_the_segment_cut_back() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, _) = Journal::open(dir.path()).unwrap();
    let a = append(&journal, 0, Some(r#"{"data":{"token":"PRIOR-STATE"}}"#)).await;
    journal.release(a);
    // Nothing else is appended: within the idle time the segment holds
    // nothing written any more (no prior state lingers on disk).
    let file = dir.path().join(&segment_files(dir.path())[0]);
    let deadline = std::time::Instant::now() + IDLE * 4;
    while fs::metadata(&file).unwrap().len() > MAGIC.len() as u64 {
        assert!(std::time::Instant::now() < deadline, "never cut back");
        tokio::time::sleep(IDLE / 10).await;
    }
    let bytes = fs::read(&file).unwrap();
    assert!(!String::from_utf8_lossy(&bytes).contains("PRIOR-STATE"));
}

#[test]
fn an_existing_directory_is_made_private_and_a_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let open_dir = dir.path().join("j");
    fs::create_dir(&open_dir).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&open_dir, fs::Permissions::from_mode(0o777)).unwrap();
        let _j = Journal::open(&open_dir).unwrap();
        let mode = fs::metadata(&open_dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }
    let file = dir.path().join("f");
    fs::write(&file, b"x").unwrap();
    let err = Journal::open(&file).err().unwrap();
    assert!(err.to_string().contains("is not a directory"), "{err}");
}
