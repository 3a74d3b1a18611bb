//! The capture journal (`--capture-ack=journaled`).
//!
//! A change must not be admitted before its prior state is safe somewhere,
//! and one API write per change costs the API server about as much as the
//! change itself. The journal makes the prior state durable on local disk
//! first: the webhook appends the change's snapshot (and its action's
//! record) to an append-only file and answers once the append is flushed to
//! disk (`fdatasync`); the snapshot is then written to the API server
//! off the change's latency, group-committed with others into batch
//! ConfigMaps as in `--capture-ack=queued`. Appends of concurrent reviews
//! share one flush (group commit on a thread of its own, off the async
//! threads).
//!
//! An entry is released once its snapshot is in the API server: a release
//! mark (the snapshot's name) is appended after it, flushed with the next
//! appends. A failed write is retried; the entry stays in the journal until
//! it succeeds, and when the process dies first (a crash, an OOM kill) the
//! next start with the same directory writes every entry it finds without a
//! release mark (`open`). A mark not yet flushed at a crash makes its entry
//! written twice, which is harmless: snapshot names are derived from the
//! admission request, an existing one counts as written, and reads drop
//! duplicates. (Only an action deleted in the last moments before a crash
//! could come back that way.)
//!
//! On disk: numbered segment files `segment-<n>.log`, each a magic header
//! then frames of `length (u32 LE) | crc32 (u32 LE) | payload`, the payload
//! `E` and the JSON entry, or `R` and the name of a released snapshot.
//! Segments are deleted oldest first, each once it is no longer the one
//! appended to and all of its entries are released (so a release mark is
//! never deleted before the entry it releases). A frame torn by a
//! crash (short, zero or with a bad checksum) ends its segment: its append
//! was never acknowledged.
//! Only one process may use a directory at a time (an exclusive lock on
//! `LOCK`). Secrets never enter the journal: their snapshots are written
//! before the webhook answers, as always.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::oneshot;

use crate::store::NewSnapshot;
use crate::store::actions::ActionRecord;
use crate::store::model::SnapshotMeta;

/// The first bytes of every segment.
const MAGIC: &[u8; 8] = b"snapjnl1";
/// Length and checksum before each entry.
const FRAME_HEADER: usize = 8;
/// A segment stops taking appends past this size.
pub const SEGMENT_BYTES: u64 = 8 << 20;
/// Past this many bytes of live segments, appends are refused (the webhook
/// then writes the snapshot before answering, as with `written`).
pub const MAX_JOURNAL_BYTES: u64 = 512 << 20;
/// An entry larger than this is never journaled (written directly instead).
pub const MAX_ENTRY_BYTES: usize = 4 << 20;
/// Appends flushed together at most.
const MAX_GROUP: usize = 4096;
/// A segment whose entries are all released is cut back to its header once
/// it holds this many bytes.
const RESTART_BYTES: u64 = 256 << 10;
/// After this long without appends, release marks are written and a
/// segment whose entries are all released is cut back.
const IDLE: std::time::Duration = std::time::Duration::from_secs(1);

/// One journaled change: what writing its snapshot needs.
#[derive(Debug, Deserialize)]
pub struct Entry {
    pub record: ActionRecord,
    pub meta: SnapshotMeta,
    pub prior: Option<Box<RawValue>>,
}

impl Entry {
    /// Bytes of the prior object's JSON.
    pub fn prior_len(&self) -> usize {
        self.prior.as_ref().map_or(0, |p| p.get().len())
    }

    pub fn snapshot(&self) -> NewSnapshot {
        NewSnapshot {
            meta: self.meta.clone(),
            prior: self.prior.clone(),
        }
    }
}

#[derive(Serialize)]
struct EntryRef<'a> {
    record: &'a ActionRecord,
    meta: &'a SnapshotMeta,
    prior: Option<&'a RawValue>,
}

/// The JSON of a journal entry.
pub fn encode(record: &ActionRecord, snapshot: &NewSnapshot) -> serde_json::Result<Vec<u8>> {
    serde_json::to_vec(&EntryRef {
        record,
        meta: &snapshot.meta,
        prior: snapshot.prior.as_deref(),
    })
}

/// A journaled entry not yet released. Release it (`Journal::release`) once
/// its snapshot is written; dropping it leaves the entry in the journal.
#[derive(Debug)]
#[must_use = "an entry stays in the journal until it is released"]
pub struct Appended {
    segment: u64,
    /// The snapshot's name: what its release mark says.
    name: String,
}

#[derive(Debug, Default)]
struct Segment {
    /// Entries appended and not yet released.
    outstanding: usize,
    bytes: u64,
    /// No longer appended to: deleted once `outstanding` is 0.
    sealed: bool,
}

#[derive(Debug, Default)]
struct Segments {
    live: BTreeMap<u64, Segment>,
    /// Bytes of all live segments.
    bytes: u64,
    /// Shut down: every append fails.
    closed: bool,
}

struct Message {
    frame: Vec<u8>,
    name: String,
    done: oneshot::Sender<io::Result<Appended>>,
}

/// Once a flush carried more than one append (concurrent reviews), the
/// next waits this long for more, so that fewer flushes carry them all.
/// (A lone client's appends never wait.)
const GATHER: std::time::Duration = std::time::Duration::from_micros(300);

const ENTRY_TAG: u8 = b'E';
const RELEASE_TAG: u8 = b'R';

pub struct Journal {
    dir: PathBuf,
    appends: Mutex<Option<mpsc::Sender<Message>>>,
    /// Release marks not yet written: the next appends take them along.
    marks: Arc<Mutex<Vec<u8>>>,
    /// The appending thread, joined by `close`.
    appender: Mutex<Option<std::thread::JoinHandle<()>>>,
    segments: Arc<Mutex<Segments>>,
    /// Held for the journal's life: one process per directory.
    _lock: File,
}

fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("segment-{n:020}.log"))
}

fn segment_number(name: &str) -> Option<u64> {
    name.strip_prefix("segment-")?
        .strip_suffix(".log")?
        .parse()
        .ok()
}

fn lock(segments: &Mutex<Segments>) -> std::sync::MutexGuard<'_, Segments> {
    segments.lock().unwrap_or_else(|p| p.into_inner())
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(FRAME_HEADER + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

fn tagged(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(1 + body.len());
    payload.push(tag);
    payload.extend_from_slice(body);
    frame(&payload)
}

/// Delete, oldest first, the segments no longer appended to whose entries
/// are all released: a later segment may hold the release marks of an
/// earlier one's entries, so it never goes first.
fn collect(dir: &Path, s: &mut Segments) {
    while let Some((&n, seg)) = s.live.first_key_value() {
        if !(seg.sealed && seg.outstanding == 0) {
            return;
        }
        remove_segment(dir, s, n);
    }
}

/// What a segment's bytes hold.
#[derive(Debug, PartialEq, Eq)]
pub struct Frames<'a> {
    /// The payloads of the intact frames, in order.
    pub frames: Vec<&'a [u8]>,
    /// Where corrupt stretches start that intact frames follow: not a
    /// crash's torn tail (the disk, or a hand, changed acknowledged bytes).
    pub corrupt: Vec<usize>,
    /// Where a torn tail starts (an append a crash interrupted, never
    /// acknowledged); a tail of zeros is a clean end.
    pub torn: Option<usize>,
}

/// The intact frame at `at`, if there is one: its payload and its end.
fn frame_at(bytes: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let header = bytes.get(at..at.checked_add(FRAME_HEADER)?)?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    // A zero length is never written (crc32 of nothing is 0: zeros would
    // read as frames).
    if len == 0 {
        return None;
    }
    let start = at + FRAME_HEADER;
    let end = start.checked_add(len)?;
    let payload = bytes.get(start..end)?;
    (crc32fast::hash(payload) == crc).then_some((payload, end))
}

/// The next intact frame after a corrupt stretch starting at `at`. Only
/// offsets whose payload starts the way written payloads do are checksummed.
fn resync(bytes: &[u8], at: usize) -> Option<usize> {
    (at + 1..bytes.len().saturating_sub(FRAME_HEADER)).find(|&off| {
        let tag = bytes.get(off + FRAME_HEADER).copied();
        let plausible = match tag {
            Some(ENTRY_TAG) => bytes.get(off + FRAME_HEADER + 1) == Some(&b'{'),
            Some(RELEASE_TAG) => true,
            _ => false,
        };
        plausible && frame_at(bytes, off).is_some()
    })
}

/// Read a segment: every intact frame, skipping corrupt stretches that
/// intact frames follow.
pub fn read_frames(bytes: &[u8]) -> Frames<'_> {
    let mut out = Frames {
        frames: Vec::new(),
        corrupt: Vec::new(),
        torn: None,
    };
    let mut at = if bytes.starts_with(MAGIC) {
        MAGIC.len()
    } else {
        0
    };
    if at == 0 {
        match resync(bytes, 0) {
            Some(next) => {
                out.corrupt.push(0);
                at = next;
            }
            None => {
                out.torn = Some(0);
                return out;
            }
        }
    }
    while at < bytes.len() {
        if let Some((payload, end)) = frame_at(bytes, at) {
            out.frames.push(payload);
            at = end;
            continue;
        }
        if bytes[at..].iter().all(|&b| b == 0) {
            break;
        }
        match resync(bytes, at) {
            Some(next) => {
                out.corrupt.push(at);
                at = next;
            }
            None => {
                out.torn = Some(at);
                break;
            }
        }
    }
    out
}

fn create_segment(dir: &Path, n: u64) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.create_new(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(segment_path(dir, n))?;
    file.write_all(MAGIC)?;
    file.sync_all()?;
    // The new name must survive a crash as well as its contents.
    File::open(dir)?.sync_all()?;
    Ok(file)
}

/// What `Journal::open` found left by an earlier process.
pub struct Recovered {
    pub entries: Vec<(Appended, Entry)>,
    /// Entries whose frames were intact but whose JSON this build cannot
    /// read (dropped, each logged).
    pub unreadable: usize,
    /// Segments that ended in a torn frame (a crash's interrupted append).
    pub torn: usize,
    /// Corrupt stretches between intact frames (acknowledged entries lost).
    pub corrupt: usize,
}

impl Journal {
    /// Open (creating) the journal in `dir`: take its lock, read what an
    /// earlier process left (to be written and released by the caller),
    /// and start a new segment for appends.
    pub fn open(dir: &Path) -> io::Result<(Arc<Journal>, Recovered)> {
        let mut builder = fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        if dir.exists() && !dir.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} exists and is not a directory", dir.display()),
            ));
        }
        builder.create(dir)?;
        // Prior states are in it: only this user, also for a directory
        // that existed already.
        #[cfg(unix)]
        fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        let mut lock_options = OpenOptions::new();
        lock_options.create(true).truncate(false).write(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut lock_options, 0o600);
        let lock_file = lock_options.open(dir.join("LOCK"))?;
        match lock_file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    format!(
                        "{} is in use by another process (each snapback process needs a journal directory of its own)",
                        dir.display()
                    ),
                ));
            }
            Err(fs::TryLockError::Error(e)) => return Err(e),
        }
        let mut numbers: Vec<u64> = fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| segment_number(e.file_name().to_str()?))
            .collect();
        numbers.sort_unstable();
        let mut segments = Segments::default();
        let mut recovered = Recovered {
            entries: Vec::new(),
            unreadable: 0,
            torn: 0,
            corrupt: 0,
        };
        let mut contents = Vec::new();
        let mut released = std::collections::HashSet::new();
        for &n in &numbers {
            let path = segment_path(dir, n);
            let bytes = fs::read(&path)?;
            let read = read_frames(&bytes);
            if let Some(at) = read.torn {
                recovered.torn += 1;
                tracing::warn!(segment = %path.display(), offset = at, len = bytes.len(),
                    "journal segment ends in a torn frame (an append a crash interrupted, never acknowledged)");
            }
            if !read.corrupt.is_empty() {
                recovered.corrupt += read.corrupt.len();
                // Kept for inspection: `segment-<n>.log.corrupt` is not a segment.
                let copy = path.with_extension("log.corrupt");
                let kept = fs::copy(&path, &copy).is_ok();
                tracing::error!(segment = %path.display(), offsets = ?read.corrupt,
                    copy = kept.then(|| copy.display().to_string()),
                    "journal segment has corrupt stretches between intact frames (changed on disk after it was written): the entries in them are lost, those around them are written");
            }
            let mut entries = Vec::new();
            for f in read.frames {
                match f.split_first() {
                    Some((&RELEASE_TAG, name)) => {
                        released.insert(String::from_utf8_lossy(name).into_owned());
                    }
                    Some((&ENTRY_TAG, json)) => match serde_json::from_slice::<Entry>(json) {
                        Ok(entry) => entries.push(entry),
                        Err(e) => {
                            recovered.unreadable += 1;
                            tracing::error!(segment = %path.display(), error = %e,
                                "journal entry unreadable by this build: its snapshot is lost");
                        }
                    },
                    _ => {
                        recovered.unreadable += 1;
                        tracing::error!(segment = %path.display(),
                            "journal frame of an unknown kind: skipped");
                    }
                }
            }
            contents.push((n, bytes.len() as u64, entries));
        }
        for (n, len, entries) in contents {
            let mut outstanding = 0;
            for entry in entries {
                if released.contains(&entry.meta.snapshot_name) {
                    continue;
                }
                outstanding += 1;
                let name = entry.meta.snapshot_name.clone();
                recovered
                    .entries
                    .push((Appended { segment: n, name }, entry));
            }
            segments.bytes += len;
            segments.live.insert(
                n,
                Segment {
                    outstanding,
                    bytes: len,
                    sealed: true,
                },
            );
        }
        collect(dir, &mut segments);
        let first = numbers.last().map_or(1, |n| n + 1);
        let file = create_segment(dir, first)?;
        segments.bytes += MAGIC.len() as u64;
        segments.live.insert(
            first,
            Segment {
                bytes: MAGIC.len() as u64,
                ..Default::default()
            },
        );
        let segments = Arc::new(Mutex::new(segments));
        let marks = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let appender = Appender {
            dir: dir.to_path_buf(),
            segments: segments.clone(),
            marks: marks.clone(),
            last_group: 0,
            file,
            number: first,
            len: MAGIC.len() as u64,
            broken: false,
        };
        let thread = std::thread::Builder::new()
            .name("snapback-journal".into())
            .spawn(move || appender.run(rx))?;
        Ok((
            Arc::new(Journal {
                dir: dir.to_path_buf(),
                appends: Mutex::new(Some(tx)),
                marks,
                appender: Mutex::new(Some(thread)),
                segments,
                _lock: lock_file,
            }),
            recovered,
        ))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Append the entry of the snapshot `name`; resolves once it is on disk.
    pub async fn append(&self, entry: Vec<u8>, name: &str) -> io::Result<Appended> {
        if entry.len() > MAX_ENTRY_BYTES {
            return Err(io::Error::other(format!(
                "entry of {} bytes is larger than a journal entry may be ({MAX_ENTRY_BYTES})",
                entry.len()
            )));
        }
        let (done, result) = oneshot::channel();
        let sent = self
            .appends
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|tx| {
                tx.send(Message {
                    frame: tagged(ENTRY_TAG, &entry),
                    name: name.to_string(),
                    done,
                })
            });
        if !matches!(sent, Some(Ok(()))) {
            return Err(io::Error::other("the journal is closed"));
        }
        result
            .await
            .unwrap_or_else(|_| Err(io::Error::other("the journal's writer stopped")))
    }

    /// The entry's snapshot is written (or can never be): it leaves the
    /// journal; its segment goes once nothing in it is outstanding.
    pub fn release(&self, appended: Appended) {
        self.marks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(tagged(RELEASE_TAG, appended.name.as_bytes()));
        let mut s = lock(&self.segments);
        let Some(seg) = s.live.get_mut(&appended.segment) else {
            return;
        };
        seg.outstanding = seg.outstanding.saturating_sub(1);
        collect(&self.dir, &mut s);
    }

    /// Entries appended and not yet released.
    pub fn outstanding(&self) -> usize {
        lock(&self.segments)
            .live
            .values()
            .map(|s| s.outstanding)
            .sum()
    }

    /// Bytes of the live segments.
    pub fn bytes(&self) -> u64 {
        lock(&self.segments).bytes
    }

    /// Take no more appends (those already sent are finished first) and
    /// delete every segment with nothing outstanding; what is left is
    /// written by the next start. Blocks while the last appends flush.
    pub fn close(&self) {
        self.appends
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let thread = self
            .appender
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(t) = thread {
            let _ = t.join();
        }
        let mut s = lock(&self.segments);
        s.closed = true;
        for seg in s.live.values_mut() {
            seg.sealed = true;
        }
        collect(&self.dir, &mut s);
    }
}

impl Drop for Journal {
    /// Dropped without `close` (as at a crash, but orderly): the appends
    /// and release marks already sent still reach the file.
    fn drop(&mut self) {
        self.appends
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(t) = self
            .appender
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            let _ = t.join();
        }
    }
}

fn remove_segment(dir: &Path, s: &mut Segments, n: u64) {
    if let Some(seg) = s.live.remove(&n) {
        s.bytes = s.bytes.saturating_sub(seg.bytes);
    }
    let path = segment_path(dir, n);
    if let Err(e) = fs::remove_file(&path) {
        tracing::warn!(segment = %path.display(), error = %e, "could not delete a written journal segment");
    }
}

/// The thread that appends: everything queued meanwhile goes to disk with
/// one write and one flush.
struct Appender {
    dir: PathBuf,
    segments: Arc<Mutex<Segments>>,
    marks: Arc<Mutex<Vec<u8>>>,
    /// Appends the last flush carried.
    last_group: usize,
    file: File,
    number: u64,
    len: u64,
    /// A failed append could not be cut off: append nothing more here.
    broken: bool,
}

impl Appender {
    fn run(mut self, rx: mpsc::Receiver<Message>) {
        loop {
            let first = match rx.recv_timeout(IDLE) {
                Ok(m) => m,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    self.idle();
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            };
            let mut group = vec![first];
            while group.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(m) => group.push(m),
                    Err(_) => break,
                }
            }
            if self.last_group > 1 {
                let deadline = std::time::Instant::now() + GATHER;
                while group.len() < MAX_GROUP {
                    let left = deadline.saturating_duration_since(std::time::Instant::now());
                    match rx.recv_timeout(left) {
                        Ok(m) => group.push(m),
                        Err(_) => break,
                    }
                }
            }
            self.last_group = group.len();
            // Release marks go first (they need no flush of their own; this
            // one takes them along).
            self.write_marks();
            let frames: Vec<&[u8]> = group.iter().map(|m| m.frame.as_slice()).collect();
            let result = self.write(&frames);
            for (m, r) in group.into_iter().zip(result) {
                let _ = m.done.send(r.map(|segment| Appended {
                    segment,
                    name: m.name,
                }));
            }
        }
        // Closed: the last release marks.
        self.write_marks();
    }

    /// No appends for a while: write the release marks (a crash of the
    /// process then finds them; a written entry is not written again) and,
    /// when everything is written, cut the segment back, so that prior
    /// states already in the API server do not linger on disk.
    fn idle(&mut self) {
        self.write_marks();
        if self.all_written()
            && self.len > MAGIC.len() as u64
            && !self.broken
            && self.restart().is_err()
        {
            self.broken = true;
        }
    }

    fn write_marks(&mut self) {
        let marks = std::mem::take(&mut *self.marks.lock().unwrap_or_else(|p| p.into_inner()));
        if !marks.is_empty() {
            self.mark(&marks);
        }
    }

    /// Cut off what a failed write may have left after the last intact
    /// frame (a later append behind a torn frame would be unreadable); when
    /// even that fails, nothing more is appended to this segment.
    fn cut_back_failed_write(&mut self) {
        if self
            .file
            .set_len(self.len)
            .and_then(|()| self.file.sync_data())
            .is_err()
        {
            self.broken = true;
        }
    }

    /// Append release marks, unflushed (the next appends' flush takes them
    /// along; a crash before loses at worst a double write).
    fn mark(&mut self, marks: &[u8]) {
        if self.broken {
            return;
        }
        if self.file.write_all(marks).is_err() {
            self.cut_back_failed_write();
            return;
        }
        self.len += marks.len() as u64;
        let mut s = lock(&self.segments);
        s.bytes += marks.len() as u64;
        if let Some(seg) = s.live.get_mut(&self.number) {
            seg.bytes += marks.len() as u64;
        }
    }

    /// Append and flush; the segment each landed in.
    fn write(&mut self, group: &[&[u8]]) -> Vec<io::Result<u64>> {
        let fail = |e: io::Error| {
            group
                .iter()
                .map(|_| Err(io::Error::new(e.kind(), e.to_string())))
                .collect()
        };
        if (self.broken || self.len >= SEGMENT_BYTES)
            && let Err(e) = self.rotate()
        {
            return fail(e);
        }
        // Nothing in the segment is outstanding: start it over rather than
        // leave written entries for a restart to write again.
        // (Only when it is the one segment left: an older one's entries
        // may have their release marks in it.)
        if self.all_written() && self.len > RESTART_BYTES && self.restart().is_err() {
            return fail(io::Error::other("could not start the journal segment over"));
        }
        let bytes: usize = group.iter().map(|f| f.len()).sum();
        {
            let s = lock(&self.segments);
            if s.closed {
                return fail(io::Error::other("the journal is closed"));
            }
            if s.bytes + bytes as u64 > MAX_JOURNAL_BYTES {
                return fail(io::Error::other(format!(
                    "the journal holds {} bytes of snapshots not yet written (at most {MAX_JOURNAL_BYTES})",
                    s.bytes
                )));
            }
        }
        let mut buf = Vec::with_capacity(bytes);
        for f in group {
            buf.extend_from_slice(f);
        }
        if let Err(e) = self
            .file
            .write_all(&buf)
            .and_then(|()| self.file.sync_data())
        {
            self.cut_back_failed_write();
            // If what was written of this group cannot be cut off, go on
            // in a new segment.
            if self.broken {
                let _ = self.rotate();
            }
            return fail(e);
        }
        self.len += bytes as u64;
        let mut s = lock(&self.segments);
        s.bytes += bytes as u64;
        let seg = s.live.entry(self.number).or_default();
        seg.bytes += bytes as u64;
        seg.outstanding += group.len();
        group.iter().map(|_| Ok(self.number)).collect()
    }

    /// Every entry is written and the segment appended to is the only one
    /// (an older one's entries may have their release marks in it).
    fn all_written(&self) -> bool {
        let s = lock(&self.segments);
        s.live.len() == 1
            && s.live
                .get(&self.number)
                .is_some_and(|seg| seg.outstanding == 0)
    }

    /// Cut the segment appended to back to its header (every entry in it
    /// is released).
    fn restart(&mut self) -> io::Result<()> {
        self.file.set_len(MAGIC.len() as u64)?;
        let cut = self.len - MAGIC.len() as u64;
        self.len = MAGIC.len() as u64;
        let mut s = lock(&self.segments);
        s.bytes = s.bytes.saturating_sub(cut);
        if let Some(seg) = s.live.get_mut(&self.number) {
            seg.bytes = MAGIC.len() as u64;
        }
        Ok(())
    }

    /// Seal the segment appended to and start the next.
    fn rotate(&mut self) -> io::Result<()> {
        let next = self.number + 1;
        let file = create_segment(&self.dir, next)?;
        let old = std::mem::replace(&mut self.number, next);
        self.file = file;
        self.len = MAGIC.len() as u64;
        self.broken = false;
        let mut s = lock(&self.segments);
        s.bytes += MAGIC.len() as u64;
        s.live.insert(
            next,
            Segment {
                bytes: MAGIC.len() as u64,
                ..Default::default()
            },
        );
        if let Some(seg) = s.live.get_mut(&old) {
            seg.sealed = true;
        }
        collect(&self.dir, &mut s);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
