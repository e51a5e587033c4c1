//! The manifest: an append-only, hash-chained JSON-lines log of every committed Parquet file, and
//! the source of truth for Kafka offsets.
//!
//! One commit is the files produced from one contiguous range of one Kafka partition. Under an
//! exclusive lock on `_manifest/lock`, a commit (1) reads what other writers appended, (2) checks
//! that no one has recorded these offsets yet (compare-and-set on the partition's last recorded
//! offset), (3) appends one line per file in a single write and fsyncs, and (4) renames the files
//! from the writer's staging directory into their Hive partitions and fsyncs the directories.
//! A crash before (3) leaves only staging files, which are removed; a crash after (3) is rolled
//! forward by the next writer that takes the lock. A torn or partial last commit is truncated.
//! Readers therefore never see a file twice, and a restart resumes from the manifest.
use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::decode::fmt_us;
use crate::error::{io_err, Error, Result};
use crate::writer::{sha256_file, sync_dir, StagedFile};

/// The hash before the first entry.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// Directory of the manifest under the warehouse.
pub const MANIFEST_DIR: &str = "_manifest";
/// Directory of the writers' staging areas under the warehouse.
pub const STAGING_DIR: &str = "_staging";

/// One committed file. Field order is the serialised order, which the hash covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestEntry {
    /// Position in the manifest, from 1.
    pub seq: u64,
    pub commit_id: String,
    /// Number of files (lines) in this commit, and this file's index among them.
    pub commit_files: u32,
    pub commit_index: u32,
    /// Path relative to the warehouse, `/`-separated.
    pub path: String,
    pub table: String,
    pub sha256: String,
    pub bytes: u64,
    pub rows: u64,
    pub topic: String,
    pub partition: i32,
    /// Lowest and highest Kafka offset of the rows in this file.
    pub first_offset: i64,
    pub last_offset: i64,
    /// The Kafka offsets the whole commit consumed (every offset in it is in exactly one file).
    pub covers_first_offset: i64,
    pub covers_last_offset: i64,
    pub min_event_time: String,
    pub max_event_time: String,
    pub schema_version: u32,
    pub geoip_sha256: Option<String>,
    pub writer: String,
    pub committed_at: String,
    pub prev_hash: String,
    /// SHA-256 of `prev_hash` and this entry serialised with an empty `hash`.
    #[serde(default)]
    pub hash: String,
}

impl ManifestEntry {
    /// The hash this entry must carry.
    pub fn compute_hash(&self) -> String {
        let mut e = self.clone();
        e.hash = String::new();
        let body = serde_json::to_string(&e).expect("manifest entry serialises");
        let mut h = Sha256::new();
        h.update(self.prev_hash.as_bytes());
        h.update(body.as_bytes());
        hex::encode(h.finalize())
    }
}

/// Where a commit's offsets come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Covers {
    pub topic: String,
    pub partition: i32,
    pub first_offset: i64,
    pub last_offset: i64,
}

/// What happened to a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitOutcome {
    /// Recorded and visible; the new manifest head.
    Committed { last_seq: u64, head: String },
    /// Another writer had already recorded offsets up to `recorded_last`: nothing was recorded
    /// and the staged files were deleted. Resume from `recorded_last + 1`.
    Stale { recorded_last: i64 },
}

/// A problem found while reading the manifest that did not stop ingest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Repair {
    /// A torn or incomplete last commit (a writer crashed mid-append) was cut off.
    TruncatedTail { bytes: u64 },
    /// A recorded file was moved from a dead writer's staging area into place.
    RolledForward { path: String },
    /// A recorded file is neither in place nor in staging.
    Missing { path: String },
}

impl std::fmt::Display for Repair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Repair::TruncatedTail { bytes } => write!(
                f,
                "cut off an incomplete last commit ({bytes} bytes) left by a crashed writer"
            ),
            Repair::RolledForward { path } => write!(
                f,
                "moved recorded file {path} into place from a crashed writer's staging area"
            ),
            Repair::Missing { path } => {
                write!(f, "recorded file {path} is missing from the warehouse")
            }
        }
    }
}

/// An exclusive lock on a file, released on drop.
struct FileLock(#[allow(dead_code)] File);

impl FileLock {
    fn acquire(path: &Path, block: bool) -> Result<Option<Self>> {
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(io_err("open lock", path))?;
        let flags = if block {
            libc::LOCK_EX
        } else {
            libc::LOCK_EX | libc::LOCK_NB
        };
        // SAFETY: flock on a file descriptor we own; released when the File is closed.
        if unsafe { libc::flock(f.as_raw_fd(), flags) } == 0 {
            return Ok(Some(Self(f)));
        }
        let err = std::io::Error::last_os_error();
        if !block && err.kind() == std::io::ErrorKind::WouldBlock {
            return Ok(None);
        }
        Err(Error::Io {
            op: "lock",
            path: path.to_path_buf(),
            source: err,
        })
    }
}

/// A writer's handle on the warehouse manifest.
pub struct Manifest {
    warehouse: PathBuf,
    path: PathBuf,
    lock_path: PathBuf,
    staging: PathBuf,
    writer_id: String,
    _staging_lock: FileLock,
    read_pos: u64,
    next_seq: u64,
    head: String,
    offsets: HashMap<(String, i32), i64>,
    commits: u64,
    repairs: Vec<Repair>,
}

fn merr(path: &Path, msg: impl Into<String>) -> Error {
    Error::Manifest {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

impl Manifest {
    /// Open (creating if needed) the manifest of `warehouse` as a new writer: replays the whole
    /// manifest, repairs what a crashed writer left, and creates this writer's staging directory.
    pub fn open(warehouse: &Path) -> Result<Self> {
        let dir = warehouse.join(MANIFEST_DIR);
        std::fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        let staging_root = warehouse.join(STAGING_DIR);
        std::fs::create_dir_all(&staging_root).map_err(io_err("create", &staging_root))?;
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let writer_id = format!(
            "{}-{}-{:08x}",
            host.trim(),
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0)
        );
        // Create and lock the staging directory under the manifest lock: another writer removes
        // unlocked staging directories under that lock, and must not see this one before it is
        // locked.
        let lock_path = dir.join("lock");
        let manifest_lock = FileLock::acquire(&lock_path, true)?.expect("blocking lock");
        let staging = staging_root.join(&writer_id);
        std::fs::create_dir_all(&staging).map_err(io_err("create", &staging))?;
        let staging_lock = FileLock::acquire(&staging.join(".lock"), true)?.expect("blocking lock");
        let mut m = Self {
            warehouse: warehouse.to_path_buf(),
            path: dir.join("manifest.jsonl"),
            lock_path,
            staging,
            writer_id,
            _staging_lock: staging_lock,
            read_pos: 0,
            next_seq: 1,
            head: GENESIS_HASH.to_string(),
            offsets: HashMap::new(),
            commits: 0,
            repairs: Vec::new(),
        };
        m.refresh()?;
        m.remove_dead_staging()?;
        drop(manifest_lock);
        Ok(m)
    }

    fn lock(&self) -> Result<FileLock> {
        Ok(FileLock::acquire(&self.lock_path, true)?.expect("blocking lock"))
    }

    /// This writer's staging directory (files written here are invisible to readers).
    pub fn staging_dir(&self) -> &Path {
        &self.staging
    }

    /// This writer's identity, recorded in every entry it writes.
    pub fn writer_id(&self) -> &str {
        &self.writer_id
    }

    /// The last entry's sequence number and hash.
    pub fn head(&self) -> (u64, &str) {
        (self.next_seq - 1, &self.head)
    }

    /// Repairs made so far (drained).
    pub fn take_repairs(&mut self) -> Vec<Repair> {
        std::mem::take(&mut self.repairs)
    }

    /// The first offset of `topic`/`partition` not yet recorded, re-reading what other writers
    /// appended; `None` if nothing of that partition was ever recorded.
    pub fn next_offset(&mut self, topic: &str, partition: i32) -> Result<Option<i64>> {
        let _lock = self.lock()?;
        self.refresh()?;
        match self.offsets.get(&(topic.to_string(), partition)) {
            None => Ok(None),
            Some(o) => o.checked_add(1).map(Some).ok_or_else(|| {
                merr(
                    &self.path,
                    format!(
                        "{topic}/{partition} is recorded up to offset {o}: no offset can follow"
                    ),
                )
            }),
        }
    }

    /// Read entries appended since the last read (the caller holds the lock).
    fn refresh(&mut self) -> Result<()> {
        let mut f = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                return Err(Error::Io {
                    op: "open",
                    path: self.path.clone(),
                    source: e,
                })
            }
        };
        f.seek(SeekFrom::Start(self.read_pos))
            .map_err(io_err("seek", &self.path))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)
            .map_err(io_err("read", &self.path))?;
        let mut pos = 0usize;
        let mut pending: Vec<ManifestEntry> = Vec::new();
        let mut pending_start = 0usize;
        while let Some(nl) = buf[pos..].iter().position(|b| *b == b'\n') {
            let line = &buf[pos..pos + nl];
            let at = self.read_pos + pos as u64;
            let entry: ManifestEntry = match serde_json::from_slice(line) {
                Ok(e) => e,
                // A complete but unparseable line can only be tampering or corruption.
                Err(e) => {
                    return Err(merr(
                        &self.path,
                        format!("line at byte {at} is not a manifest entry: {e}"),
                    ))
                }
            };
            if pending.is_empty() {
                pending_start = pos;
            }
            pos += nl + 1;
            pending.push(entry);
            let last = pending.last().expect("just pushed");
            if pending.len() as u32 == last.commit_files {
                let commit = std::mem::take(&mut pending);
                self.apply(commit, self.read_pos + pending_start as u64)?;
            } else if last.commit_index as usize != pending.len() - 1
                || last.commit_id != pending[0].commit_id
            {
                return Err(merr(
                    &self.path,
                    format!(
                        "entry seq {} at byte {at} interleaves another commit",
                        last.seq
                    ),
                ));
            }
        }
        let keep = if pending.is_empty() {
            pos
        } else {
            pending_start
        };
        if keep < buf.len() {
            // A writer died mid-append (we hold the lock, so no one is appending now): cut it off.
            let new_len = self.read_pos + keep as u64;
            let cut = buf.len() - keep;
            OpenOptions::new()
                .write(true)
                .open(&self.path)
                .and_then(|f| {
                    f.set_len(new_len)?;
                    f.sync_all()
                })
                .map_err(io_err("truncate", &self.path))?;
            tracing::warn!(path = %self.path.display(), bytes = cut, "manifest: cut off an incomplete last commit left by a crashed writer");
            self.repairs
                .push(Repair::TruncatedTail { bytes: cut as u64 });
        }
        self.read_pos += keep as u64;
        Ok(())
    }

    /// Check and apply one complete commit read from the file.
    fn apply(&mut self, commit: Vec<ManifestEntry>, at: u64) -> Result<()> {
        for e in commit {
            if e.seq != self.next_seq {
                return Err(merr(
                    &self.path,
                    format!(
                        "entry at byte {at}: seq {} where {} was expected",
                        e.seq, self.next_seq
                    ),
                ));
            }
            if e.prev_hash != self.head {
                return Err(merr(
                    &self.path,
                    format!(
                        "hash chain broken at seq {}: prev_hash does not match the previous entry",
                        e.seq
                    ),
                ));
            }
            if e.compute_hash() != e.hash {
                return Err(merr(
                    &self.path,
                    format!(
                        "hash chain broken at seq {}: the entry does not match its hash",
                        e.seq
                    ),
                ));
            }
            self.roll_forward(&e)?;
            let key = (e.topic.clone(), e.partition);
            let last = self.offsets.entry(key).or_insert(i64::MIN);
            *last = (*last).max(e.covers_last_offset);
            self.next_seq += 1;
            self.head = e.hash;
        }
        Ok(())
    }

    /// If a recorded file is not in place, move it from a (dead) writer's staging directory.
    fn roll_forward(&mut self, e: &ManifestEntry) -> Result<()> {
        let dest = self.warehouse.join(&e.path);
        if dest.exists() {
            return Ok(());
        }
        let name = Path::new(&e.path).file_name().unwrap_or_default();
        let root = self.warehouse.join(STAGING_DIR);
        let dirs = std::fs::read_dir(&root).map_err(io_err("list", &root))?;
        for d in dirs.flatten() {
            let candidate = d.path().join(name);
            if candidate.is_file() && sha256_file(&candidate)? == e.sha256 {
                publish(&candidate, &dest)?;
                tracing::warn!(path = %e.path, "manifest: moved a recorded file into place after a writer crashed");
                self.repairs.push(Repair::RolledForward {
                    path: e.path.clone(),
                });
                return Ok(());
            }
        }
        tracing::error!(path = %e.path, seq = e.seq, "manifest: a recorded file is missing from the warehouse");
        self.repairs.push(Repair::Missing {
            path: e.path.clone(),
        });
        Ok(())
    }

    /// Delete the staging directories of writers that are no longer running (caller holds the lock,
    /// and has rolled forward everything recorded).
    fn remove_dead_staging(&mut self) -> Result<()> {
        let root = self.warehouse.join(STAGING_DIR);
        for d in std::fs::read_dir(&root)
            .map_err(io_err("list", &root))?
            .flatten()
        {
            let p = d.path();
            if p == self.staging || !p.is_dir() {
                continue;
            }
            if let Some(_l) = FileLock::acquire(&p.join(".lock"), false)? {
                let n = std::fs::read_dir(&p).map(|r| r.count()).unwrap_or(0);
                std::fs::remove_dir_all(&p).map_err(io_err("remove", &p))?;
                tracing::info!(dir = %p.display(), files = n.saturating_sub(1), "removed a dead writer's staging directory");
            }
        }
        Ok(())
    }

    /// Record `files` (written in this writer's staging directory) as one commit covering
    /// `covers`, then move them into place. See the module docs for the protocol.
    pub fn commit(
        &mut self,
        files: &[StagedFile],
        covers: &Covers,
        geoip_sha256: Option<&str>,
        schema_version: u32,
    ) -> Result<CommitOutcome> {
        assert!(!files.is_empty(), "a commit has at least one file");
        let _lock = self.lock()?;
        self.refresh()?;
        let key = (covers.topic.clone(), covers.partition);
        if let Some(&recorded) = self.offsets.get(&key) {
            if recorded >= covers.first_offset {
                for f in files {
                    let _ = std::fs::remove_file(&f.staging_path);
                }
                return Ok(CommitOutcome::Stale {
                    recorded_last: recorded,
                });
            }
        }
        self.commits += 1;
        let commit_id = format!("{}-{}", self.writer_id, self.commits);
        let committed_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let mut out = String::new();
        let mut entries = Vec::with_capacity(files.len());
        let mut prev = self.head.clone();
        for (i, f) in files.iter().enumerate() {
            let mut e = ManifestEntry {
                seq: self.next_seq + i as u64,
                commit_id: commit_id.clone(),
                commit_files: files.len() as u32,
                commit_index: i as u32,
                path: f.rel_path.clone(),
                table: f.table.to_string(),
                sha256: f.sha256.clone(),
                bytes: f.bytes,
                rows: f.rows,
                topic: covers.topic.clone(),
                partition: covers.partition,
                first_offset: f.first_offset,
                last_offset: f.last_offset,
                covers_first_offset: covers.first_offset,
                covers_last_offset: covers.last_offset,
                min_event_time: fmt_us(f.min_ts_us),
                max_event_time: fmt_us(f.max_ts_us),
                schema_version,
                geoip_sha256: geoip_sha256.map(str::to_string),
                writer: self.writer_id.clone(),
                committed_at: committed_at.clone(),
                prev_hash: prev,
                hash: String::new(),
            };
            e.hash = e.compute_hash();
            prev = e.hash.clone();
            out.push_str(&serde_json::to_string(&e).expect("manifest entry serialises"));
            out.push('\n');
            entries.push(e);
        }
        let mut mf = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(io_err("open", &self.path))?;
        mf.write_all(out.as_bytes())
            .map_err(io_err("append", &self.path))?;
        mf.sync_all().map_err(io_err("fsync", &self.path))?;
        if self.read_pos == 0 {
            sync_dir(self.path.parent().expect("manifest has a parent"))?;
        }
        let mut dirs = BTreeMap::new();
        for f in files {
            let dest = self.warehouse.join(&f.rel_path);
            publish(&f.staging_path, &dest)?;
            dirs.insert(
                dest.parent().expect("file in a partition").to_path_buf(),
                (),
            );
        }
        for d in dirs.keys() {
            sync_dir(d)?;
        }
        self.read_pos += out.len() as u64;
        self.next_seq += entries.len() as u64;
        self.head = prev;
        self.offsets.insert(key, covers.last_offset);
        Ok(CommitOutcome::Committed {
            last_seq: self.next_seq - 1,
            head: self.head.clone(),
        })
    }
}

/// Move a file into its partition directory, creating (and syncing) new directories.
fn publish(from: &Path, to: &Path) -> Result<()> {
    let dir = to.parent().expect("file in a partition");
    if !dir.exists() {
        std::fs::create_dir_all(dir).map_err(io_err("create", dir))?;
        let mut d = dir;
        for _ in 0..3 {
            match d.parent() {
                Some(p) => {
                    sync_dir(p)?;
                    d = p;
                }
                None => break,
            }
        }
    }
    std::fs::rename(from, to).map_err(io_err("rename into place", to))
}

/// Read every entry of a warehouse's manifest (complete commits only), checking the hash chain.
/// For reporting and verification; does not take the lock or repair anything.
pub fn read_entries(warehouse: &Path) -> Result<Vec<ManifestEntry>> {
    let path = warehouse.join(MANIFEST_DIR).join("manifest.jsonl");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(Error::Io {
                op: "read",
                path,
                source: e,
            })
        }
    };
    let mut out: Vec<ManifestEntry> = Vec::new();
    let mut head = GENESIS_HASH.to_string();
    // Where the commit being read starts in `out`.
    let mut pending_from = 0usize;
    for (n, line) in text.split_inclusive('\n').enumerate() {
        if !line.ends_with('\n') {
            break; // an append in progress
        }
        let e: ManifestEntry = serde_json::from_str(line)
            .map_err(|err| merr(&path, format!("line {}: {err}", n + 1)))?;
        if e.prev_hash != head || e.compute_hash() != e.hash {
            return Err(merr(
                &path,
                format!("line {}: hash chain broken at seq {}", n + 1, e.seq),
            ));
        }
        head = e.hash.clone();
        // A commit's lines are contiguous and numbered 0..commit_files, as the writer appends
        // them (it cuts off a crashed writer's incomplete commit before appending another): a
        // line that starts or continues anything else is not what any writer wrote.
        let in_commit = out.len() - pending_from;
        let continues = in_commit > 0
            && out[pending_from].commit_id == e.commit_id
            && out[pending_from].commit_files == e.commit_files;
        if e.commit_index as usize != in_commit || (in_commit > 0 && !continues) {
            return Err(merr(
                &path,
                format!(
                    "line {}: entry seq {} interleaves another commit",
                    n + 1,
                    e.seq
                ),
            ));
        }
        let complete = e.commit_index.checked_add(1) == Some(e.commit_files);
        if e.commit_index >= e.commit_files {
            return Err(merr(
                &path,
                format!(
                    "line {}: entry seq {} is file {} of a commit of {} files",
                    n + 1,
                    e.seq,
                    e.commit_index,
                    e.commit_files
                ),
            ));
        }
        out.push(e);
        if complete {
            pending_from = out.len();
        }
    }
    // Drop an incomplete last commit (an append in progress).
    out.truncate(pending_from);
    Ok(out)
}
