//! The warehouse: one Delta Lake table per ingest table (`gateway_events`, `flows`,
//! `quarantine`) at `<warehouse>/<table>/`, on a local directory or an S3 bucket, partitioned by
//! `date` and `hour` (both strings, as the Hive directories they are written in).
//!
//! **Offsets live in the tables' logs.** Every commit of a range of one Kafka partition carries,
//! in the same Delta transaction as its files, an application transaction (`txn`) whose app id is
//! `flowaudit:<table>:<topic>:<partition>` and whose version is the last offset the range covers.
//! A topic feeds one *primary* table (`gateway_events` or `flows`) and `quarantine`. A range is
//! committed to `quarantine` first (only if it quarantined something) and to the primary table
//! last (always, with no files if everything was quarantined). The primary table's `txn` is the
//! partition's position: on assignment the consumer seeks to it plus one. After a crash between
//! the two commits, the range is read again; rows of a table whose `txn` already covers their
//! offset are dropped before writing (see [`Warehouse::recorded`]), so every offset lands exactly
//! once in each table. Two writers of one range (a zombie after a rebalance) cannot both commit:
//! the second sees the first's `txn` (or, if they race, Delta's conflict checker refuses the
//! second commit of the same app id) and gets [`TableCommit::Stale`].
//!
//! **Files** are written in a local staging directory, hashed while written, then published to
//! their final, unique path in the table (a rename on a local warehouse, an upload on S3) and
//! only then committed: a file that is in a table's directory but in no commit is invisible to
//! every reader (a crashed writer's leftover, removed by `vacuum`). Each `add` action carries the
//! file's SHA-256, rows, offsets and event times in its `tags`; the commit info carries the
//! writer, the GeoIP database's SHA-256, the schema version and the covered range.
//!
//! **Evidence**: the log's JSON commits are never rewritten (they are created with
//! `If-None-Match: *`), so readers chain them: the hash of version `v` is
//! `SHA-256(hash(v-1) ‖ SHA-256(bytes of v.json))`, from [`GENESIS_HASH`]; see [`read_log`].
use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Once};

use deltalake::kernel::engine::arrow_conversion::TryIntoKernel as _;
use deltalake::kernel::transaction::{
    CommitBuilder, CommitProperties, TableReference, TransactionError,
};
use deltalake::kernel::{Action, Add, DataType as DeltaType, StructField, StructType, Transaction};
use deltalake::logstore::{logstore_factories, LogStore, LogStoreFactory, StorageConfig};
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError, ObjectStore, TableProperty};
use object_store::path::Path as ObjectPath;
use object_store::ObjectStoreExt as _;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use url::Url;

use crate::error::{io_err, Error, Result};
use crate::schema::Table;
use crate::writer::{sync_dir, StagedFile};

/// The hash before a table's first commit.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// Directory of the local writers' staging areas under a local warehouse.
pub const STAGING_DIR: &str = "_staging";
/// The Delta log directory of a table.
pub const LOG_DIR: &str = "_delta_log";
/// Where ingest records, per partition, the last time it had recorded everything Kafka held
/// ([`CaughtUp`]): `_ingest/progress/<table>/<topic>-<partition>.json`.
pub const PROGRESS_DIR: &str = "_ingest/progress";

/// A partition's "caught up" mark: at `at`, every message Kafka held for the partition (its end
/// was `high_watermark`) was recorded, which the log shows once it records every offset below
/// `recorded_to`. The rules' watermarks read it as the wall-clock time up to which the partition
/// is complete, so that a source that sends nothing is judged silent only once ingest has caught
/// up (docs/rules.md, "Watermarks"). Ingest overwrites it as it goes; a mark the log does not
/// back (an offset below `recorded_to` not recorded) counts for nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaughtUp {
    /// The table the partition feeds (its quarantined messages aside).
    pub table: String,
    pub topic: String,
    pub partition: i32,
    pub recorded_to: i64,
    pub high_watermark: i64,
    /// RFC 3339, UTC.
    pub at: String,
    pub writer: String,
    /// The source will never hold more (an import recorded whole): complete for all time.
    #[serde(default)]
    pub closed: bool,
}

fn progress_path(prefix: &ObjectPath, table: &str, topic: &str, partition: i32) -> ObjectPath {
    let mut p = prefix.clone();
    for part in PROGRESS_DIR.split('/') {
        p = p.join(part);
    }
    p.join(table).join(format!("{topic}-{partition}.json"))
}

/// Mark `topic`/`partition`, which feeds `table`, as closed: it will never hold more than the
/// warehouse recorded of it (a retired or renamed topic, a partition no ingest owns any more),
/// so its table is complete for all time as far as it is concerned. The mark is backed by what
/// the log records (every offset below the recorded position), as ingest's marks are; records
/// of it committed later are late data, found and evaluated like any other. Refused for a
/// partition the table has never recorded or marked.
pub async fn close_partition(
    location: &Location,
    table: &str,
    topic: &str,
    partition: i32,
    writer: &str,
) -> Result<CaughtUp> {
    let log = read_log(location).await?;
    let recorded_to = log
        .commits
        .iter()
        .filter_map(|c| c.meta.as_ref())
        .filter(|m| m.topic == topic && m.partition == partition)
        .map(|m| m.covers_last_offset.saturating_add(1))
        .max();
    let feeds = log.commits.iter().any(|c| {
        c.table == table
            && c.meta
                .as_ref()
                .is_some_and(|m| m.topic == topic && m.partition == partition)
    });
    let marked = read_caught_up(location)
        .await?
        .iter()
        .any(|m| m.table == table && m.topic == topic && m.partition == partition);
    if !feeds && !marked {
        return Err(Error::Config(format!(
            "{table} has never recorded or marked {topic}/{partition}: nothing to close (is the table, topic or partition right?)"
        )));
    }
    let recorded_to = recorded_to.unwrap_or(0);
    let mark = CaughtUp {
        table: table.to_string(),
        topic: topic.to_string(),
        partition,
        recorded_to,
        high_watermark: recorded_to,
        at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        writer: writer.to_string(),
        closed: true,
    };
    let (store, prefix) = location.store()?;
    let path = progress_path(&prefix, table, topic, partition);
    store
        .put(&path, serde_json::to_vec(&mark).expect("json").into())
        .await
        .map_err(|e| Error::Warehouse(format!("writing {path}: {e}")))?;
    Ok(mark)
}

/// Every partition's caught-up mark kept in the warehouse (unreadable marks are skipped with a
/// warning: they only ever delay a judgement).
pub async fn read_caught_up(location: &Location) -> Result<Vec<CaughtUp>> {
    use futures::TryStreamExt as _;
    let (store, prefix) = location.store()?;
    let mut dir = prefix.clone();
    for part in PROGRESS_DIR.split('/') {
        dir = dir.join(part);
    }
    let listed: Vec<_> = match store.list(Some(&dir)).try_collect().await {
        Ok(l) => l,
        Err(object_store::Error::NotFound { .. }) => return Ok(Vec::new()),
        Err(e) => return Err(Error::Warehouse(format!("listing {dir}: {e}"))),
    };
    let mut out = Vec::new();
    for m in listed {
        let bytes = match get_bytes(store.as_ref(), &m.location).await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(path = %m.location, error = %e, "cannot read a caught-up mark");
                continue;
            }
        };
        match serde_json::from_slice::<CaughtUp>(&bytes) {
            Ok(c) => out.push(c),
            Err(e) => tracing::warn!(path = %m.location, error = %e, "not a caught-up mark"),
        }
    }
    out.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    Ok(out)
}
/// Key of flowaudit's object in a commit's `commitInfo`.
pub const COMMIT_INFO_KEY: &str = "flowaudit";
/// The key of a compaction's record in its commit info ([`CompactionMeta`]).
pub const COMPACTION_INFO_KEY: &str = "flowaudit_compaction";

/// A data file as a compaction records it: path relative to the warehouse, SHA-256, rows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRef {
    pub path: String,
    pub sha256: String,
    pub rows: u64,
}

/// One file a compaction wrote and the files of one (date, hour, topic, partition) it replaced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompactionGroup {
    pub topic: String,
    pub partition: i32,
    pub added: FileRef,
    pub replaced: Vec<FileRef>,
}

/// What a compaction commit did (its commit info under [`COMPACTION_INFO_KEY`]): no offsets
/// move, no row is added or lost; `verify` holds it to that.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompactionMeta {
    pub writer: String,
    pub commit_id: String,
    pub groups: Vec<CompactionGroup>,
}

/// The application-transaction id of `table`'s position in `topic`/`partition`.
pub fn app_id(table: Table, topic: &str, partition: i32) -> String {
    format!("flowaudit:{}:{topic}:{partition}", table.name())
}

/// Where the warehouse is: a local directory or `s3://bucket/prefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Local(PathBuf),
    S3(Url),
}

impl Location {
    /// Parse `--warehouse`: a path, `file://` URL or `s3://bucket[/prefix]`. Any other scheme is
    /// refused (it would otherwise become a local directory named after it).
    pub fn parse(s: &str) -> Result<Self> {
        if let Some((scheme, _)) = s.split_once("://") {
            let url = Url::parse(s)
                .map_err(|e| Error::Config(format!("warehouse \"{s}\" is not a valid URL: {e}")))?;
            return match scheme {
                "s3" | "s3a" => {
                    if url.host_str().is_none_or(str::is_empty) {
                        return Err(Error::Config(format!(
                            "warehouse \"{s}\": an S3 URL needs a bucket (s3://BUCKET/PREFIX)"
                        )));
                    }
                    let mut url = url;
                    if !url.path().ends_with('/') {
                        let p = format!("{}/", url.path());
                        url.set_path(&p);
                    }
                    Ok(Location::S3(url))
                }
                "file" => url
                    .to_file_path()
                    .map(Location::Local)
                    .map_err(|_| Error::Config(format!("warehouse \"{s}\" is not a local path"))),
                other => Err(Error::Config(format!(
                    "warehouse \"{s}\": the scheme \"{other}\" is not supported (a local path or s3://BUCKET/PREFIX)"
                ))),
            };
        }
        Ok(Location::Local(PathBuf::from(s)))
    }

    /// The local directory, if this is one.
    pub fn local(&self) -> Option<&Path> {
        match self {
            Location::Local(p) => Some(p),
            Location::S3(_) => None,
        }
    }

    /// The warehouse root as a URL ending in `/` (a local path is made absolute).
    pub fn root_url(&self) -> Result<Url> {
        match self {
            Location::S3(u) => Ok(u.clone()),
            Location::Local(p) => {
                let abs = p
                    .canonicalize()
                    .or_else(|_| std::path::absolute(p))
                    .map_err(io_err("resolve", p))?;
                Url::from_directory_path(&abs).map_err(|_| {
                    Error::Config(format!(
                        "warehouse {} is not an absolute path",
                        abs.display()
                    ))
                })
            }
        }
    }

    /// The URL of `table`'s directory.
    pub fn table_url(&self, table: &str) -> Result<Url> {
        let root = self.root_url()?;
        root.join(&format!("{table}/"))
            .map_err(|e| Error::Config(format!("table URL under {root}: {e}")))
    }

    /// The object store that holds the warehouse, rooted at the scheme's root (a bucket, or `/`),
    /// and the warehouse's path in it. S3 is configured from the standard `AWS_*` variables
    /// (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
    /// `AWS_ALLOW_HTTP` for a local endpoint).
    pub fn store(&self) -> Result<(Arc<dyn ObjectStore>, ObjectPath)> {
        let root = self.root_url()?;
        let prefix = ObjectPath::from_url_path(root.path())
            .map_err(|e| Error::Config(format!("warehouse path {root}: {e}")))?;
        match self {
            // Commits are fsynced before they count as stored (crate::durable).
            Location::Local(_) => Ok((Arc::new(crate::durable::DurableLocal::new()), prefix)),
            Location::S3(url) => {
                let s3 = object_store::aws::AmazonS3Builder::from_env()
                    .with_url(url.as_str())
                    .build()
                    .map_err(|e| Error::Config(format!("S3 warehouse {url}: {e}")))?;
                Ok((Arc::new(s3), prefix))
            }
        }
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Local(p) => write!(f, "{}", p.display()),
            Location::S3(u) => write!(f, "{u}"),
        }
    }
}

/// delta-rs knows `file://` and `memory://`; S3 goes through object_store's own client (no AWS
/// SDK), whose `PutMode::Create` is a conditional `If-None-Match: *` PUT: the default log store
/// commits with it, so no lock service is needed.
struct S3LogStores;

impl LogStoreFactory for S3LogStores {
    fn with_options(
        &self,
        prefixed_store: deltalake::logstore::ObjectStoreRef,
        root_store: deltalake::logstore::ObjectStoreRef,
        location: &Url,
        options: &StorageConfig,
    ) -> deltalake::DeltaResult<Arc<dyn LogStore>> {
        Ok(deltalake::logstore::default_logstore(
            prefixed_store,
            root_store,
            location,
            options,
        ))
    }
}

/// Register the S3 log store with delta-rs (once per process): every opener of an `s3://` table
/// calls it.
pub fn register_s3() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for scheme in ["s3://", "s3a://"] {
            logstore_factories().insert(
                Url::parse(scheme).expect("scheme URL"),
                Arc::new(S3LogStores),
            );
        }
    });
}

fn derr(what: impl std::fmt::Display, e: impl std::fmt::Display) -> Error {
    Error::Warehouse(format!("{what}: {e}"))
}

/// A tokio runtime for the synchronous callers (the consumer and committer threads).
fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| derr("starting the storage runtime", e))
}

/// The partition columns of the ingest tables.
pub const PARTITIONS: &[&str] = &["date", "hour"];

/// The Delta schema of `table`: its columns, then the `date` and `hour` partition columns.
pub fn delta_schema(table: Table) -> Result<StructType> {
    delta_columns(table.name(), &table.schema(), PARTITIONS)
}

/// The Delta schema of the table `name`: the columns of `schema`, then `partitions` (strings).
pub fn delta_columns(
    name: &str,
    schema: &arrow::datatypes::Schema,
    partitions: &[&str],
) -> Result<StructType> {
    let st: StructType = schema
        .try_into_kernel()
        .map_err(|e| derr(format!("schema of {name}"), e))?;
    let mut fields: Vec<StructField> = st.fields().cloned().collect();
    for p in partitions {
        fields.push(StructField::new(*p, DeltaType::STRING, false));
    }
    StructType::try_new(fields).map_err(|e| derr(format!("schema of {name}"), e))
}

/// What became of one table's commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableCommit {
    /// Recorded at this table version.
    Committed { version: i64 },
    /// Another writer recorded this partition's offsets up to `recorded_last` first: nothing was
    /// recorded (the published files stay unreferenced). Resume from `recorded_last + 1`.
    Stale { recorded_last: i64 },
}

/// What a commit covers and who made it (stored in the commit info).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitMeta {
    pub writer: String,
    pub topic: String,
    pub partition: i32,
    /// The Kafka offsets this range consumed (each in exactly one table's rows, or none when a
    /// row of this table was already recorded by an earlier commit of an overlapping range).
    pub covers_first_offset: i64,
    pub covers_last_offset: i64,
    /// Messages consumed in the range (each yields one row, in this table or `quarantine`;
    /// Kafka offsets can have holes, so this is not `last - first + 1`).
    pub messages: u64,
    pub schema_version: u32,
    pub geoip_sha256: Option<String>,
    /// Set on a commit that records a gap instead of data: why the range was not read (the
    /// offsets were no longer in Kafka when the partition was read: retention, or an offset
    /// reset). Such a commit has no files, and `messages` 0, or the number of rows an
    /// interrupted earlier commit put in `quarantine` inside the range (read before the offsets
    /// left Kafka, its primary commit never made).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gap: Option<String>,
    /// Random, one per attempt: lets a writer whose commit was stored but whose answer was lost
    /// (a retried conditional PUT refused with 412 after the first one succeeded) recognise its
    /// own commit instead of taking it for another writer's.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub commit_id: String,
    /// On a gap commit: when ingest found the range missing (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detected_at: Option<String>,
    /// On a commit of messages read from Kafka: what the message at `covers_last_offset` was,
    /// so that a later reader can tell that offset still holds the same message (a topic
    /// recreated and refilled past the recorded position holds another one there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_message: Option<MessageWitness>,
}

/// One Kafka message, as recorded by the commit that ends at it ([`CommitMeta::last_message`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageWitness {
    pub offset: i64,
    /// Kafka's timestamp of the message (milliseconds since the epoch), if it had one.
    pub timestamp_ms: Option<i64>,
    /// The payload's length and SHA-256 (hex).
    pub bytes: u64,
    pub sha256: String,
}

impl MessageWitness {
    pub fn of(offset: i64, timestamp_ms: Option<i64>, payload: &[u8]) -> Self {
        use sha2::{Digest, Sha256};
        Self {
            offset,
            timestamp_ms,
            bytes: payload.len() as u64,
            sha256: hex::encode(Sha256::digest(payload)),
        }
    }
}

/// A writer's handle on the warehouse.
pub struct Warehouse {
    location: Location,
    rt: tokio::runtime::Runtime,
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    tables: HashMap<Table, DeltaTable>,
    staging: PathBuf,
    writer_id: String,
    _staging_lock: FileLock,
}

impl Warehouse {
    /// Open the warehouse as a new writer, creating the tables that do not exist yet, and this
    /// writer's local staging directory (removing those of writers that are no longer running).
    pub fn open(location: &Location) -> Result<Self> {
        register_s3();
        if let Location::Local(dir) = location {
            std::fs::create_dir_all(dir).map_err(io_err("create", dir))?;
        }
        let rt = runtime()?;
        let (store, prefix) = location.store()?;
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
        let staging_root = match location {
            Location::Local(p) => p.join(STAGING_DIR),
            Location::S3(_) => std::env::temp_dir().join("flowaudit-staging"),
        };
        let (staging, staging_lock) = open_staging(&staging_root, &writer_id)?;
        if let Location::S3(url) = location {
            rt.block_on(check_create_only(store.as_ref(), &prefix, &writer_id))
                .map_err(|e| Error::Config(format!("S3 warehouse {url}: {e}")))?;
        }
        let mut tables = HashMap::new();
        for t in Table::ALL {
            let columns = delta_schema(t)?;
            let dt = rt.block_on(open_or_create(
                location,
                &store,
                t.name(),
                columns,
                PARTITIONS,
            ))?;
            tables.insert(t, dt);
        }
        Ok(Self {
            location: location.clone(),
            rt,
            store,
            prefix,
            tables,
            staging,
            writer_id,
            _staging_lock: staging_lock,
        })
    }

    /// Where the warehouse is.
    pub fn location(&self) -> &Location {
        &self.location
    }

    /// This writer's staging directory (files written here are invisible to readers).
    pub fn staging_dir(&self) -> &Path {
        &self.staging
    }

    /// This writer's identity, recorded in every commit it makes.
    pub fn writer_id(&self) -> &str {
        &self.writer_id
    }

    /// Every table's current version (`-1` before its first commit), as of the last refresh.
    pub fn versions(&self) -> BTreeMap<&'static str, i64> {
        self.tables
            .iter()
            .map(|(t, d)| (t.name(), d.version().map(|v| v as i64).unwrap_or(-1)))
            .collect()
    }

    /// The last offset of `topic`/`partition` that `table` has recorded, reading the table's
    /// latest version first; `None` if it has recorded nothing of that partition.
    pub fn recorded(&mut self, table: Table, topic: &str, partition: i32) -> Result<Option<i64>> {
        let dt = self.tables.get_mut(&table).expect("every table is open");
        self.rt
            .block_on(async {
                dt.update_incremental(None).await?;
                dt.snapshot()?
                    .transaction_version(dt.log_store().as_ref(), app_id(table, topic, partition))
                    .await
            })
            .map_err(|e| derr(format!("reading {}'s log", table.name()), e))
    }

    /// The Kafka offsets in `lo..=hi` of `topic`/`partition` that the live files of `table`
    /// hold, read from the files themselves (the log says which files; their `kafka_offset`
    /// column says which offsets). For the rare range an interrupted writer left committed to
    /// one table and not the other.
    pub fn offsets_held(
        &mut self,
        table: Table,
        topic: &str,
        partition: i32,
        lo: i64,
        hi: i64,
    ) -> Result<std::collections::BTreeSet<i64>> {
        use arrow::array::AsArray;
        use arrow::datatypes::Int64Type;
        use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
        let (store, prefix) = (self.store.clone(), self.prefix.clone());
        self.rt.block_on(async {
            let log = read_log_from(store.as_ref(), &prefix).await?;
            let mut out = std::collections::BTreeSet::new();
            for f in log.files.iter().filter(|f| {
                f.table == table.name()
                    && f.topic == topic
                    && f.partition == partition
                    && f.first_offset <= hi
                    && f.last_offset >= lo
            }) {
                let path = f
                    .path
                    .split('/')
                    .filter(|s| !s.is_empty())
                    .fold(prefix.clone(), |p, s| p.join(s));
                let bytes = get_bytes(store.as_ref(), &path).await?;
                for b in ParquetRecordBatchReaderBuilder::try_new(bytes)?.build()? {
                    let b = b?;
                    if let Some(o) = b.column_by_name("kafka_offset") {
                        out.extend(
                            o.as_primitive::<Int64Type>()
                                .iter()
                                .flatten()
                                .filter(|o| (lo..=hi).contains(o)),
                        );
                    }
                }
            }
            Ok(out)
        })
    }

    /// The first offset of `topic`/`partition` not yet recorded in its primary table; `None` if
    /// nothing of that partition was ever recorded.
    pub fn next_offset(
        &mut self,
        primary: Table,
        topic: &str,
        partition: i32,
    ) -> Result<Option<i64>> {
        match self.recorded(primary, topic, partition)? {
            None => Ok(None),
            Some(o) => o.checked_add(1).map(Some).ok_or_else(|| {
                Error::Warehouse(format!(
                    "{topic}/{partition} is recorded up to offset {o}: no offset can follow"
                ))
            }),
        }
    }

    /// Move a staged file to its final place in its table (`rel_path` is relative to the
    /// warehouse). The file is not part of the table until a commit adds it.
    pub fn publish(&self, f: &StagedFile) -> Result<()> {
        match &self.location {
            Location::Local(root) => {
                let dest = root.join(&f.rel_path);
                let dir = dest.parent().expect("file in a partition");
                if !dir.exists() {
                    std::fs::create_dir_all(dir).map_err(io_err("create", dir))?;
                    if let Some(p) = dir.parent() {
                        sync_dir(p)?;
                    }
                }
                std::fs::rename(&f.staging_path, &dest)
                    .map_err(io_err("rename into place", &dest))?;
                sync_dir(dir)
            }
            Location::S3(_) => {
                let path = self.object_path(&f.rel_path);
                self.rt
                    .block_on(upload(self.store.as_ref(), &f.staging_path, &path))?;
                std::fs::remove_file(&f.staging_path).map_err(io_err("remove", &f.staging_path))
            }
        }
    }

    /// Remove a published file that no commit references (a lost race).
    pub fn unpublish(&self, f: &StagedFile) {
        let path = self.object_path(&f.rel_path);
        let _ = self.rt.block_on(self.store.delete(&path));
        let _ = std::fs::remove_file(&f.staging_path);
    }

    fn object_path(&self, rel: &str) -> ObjectPath {
        rel.split('/')
            .filter(|s| !s.is_empty())
            .fold(self.prefix.clone(), |p, s| p.clone().join(s))
    }

    /// Record Parquet files of `table` written outside ingest (a rule's test case) as one commit
    /// of the source `source`: each `(file, date, hour)` is moved into the warehouse. Their rows
    /// did not come from Kafka: the commit's range is the files' `kafka_offset` values, under the
    /// position `source`/0, and `verify` checks them as it checks ingest's. Returns the version.
    pub fn import_files(
        &mut self,
        table: Table,
        source: &str,
        files: &[(PathBuf, String, String)],
    ) -> Result<i64> {
        let mut staged = Vec::with_capacity(files.len());
        let (mut lo, mut hi, mut rows) = (i64::MAX, i64::MIN, 0u64);
        for (path, date, hour) in files {
            let ext = parquet_extent(path)?;
            let name = format!(
                "{}-{source}-{:016x}.parquet",
                table.name(),
                rand::random::<u64>()
            );
            let staging_path = self.staging.join(&name);
            std::fs::copy(path, &staging_path).map_err(io_err("copy", path))?;
            std::fs::remove_file(path).map_err(io_err("remove", path))?;
            lo = lo.min(ext.first_offset);
            hi = hi.max(ext.last_offset);
            rows += ext.rows;
            let rel_path = format!("{}/date={date}/hour={hour}/{name}", table.name());
            staged.push(ext.staged(staging_path, rel_path, table));
        }
        if staged.is_empty() {
            return Ok(self.versions().get(table.name()).copied().unwrap_or(-1));
        }
        let meta = CommitMeta {
            writer: self.writer_id.clone(),
            topic: source.to_string(),
            partition: 0,
            covers_first_offset: lo,
            covers_last_offset: hi,
            messages: rows,
            schema_version: crate::schema::SCHEMA_VERSION,
            geoip_sha256: None,
            gap: None,
            commit_id: format!("{:016x}", rand::random::<u64>()),
            detected_at: None,
            last_message: None,
        };
        for f in &staged {
            self.publish(f)?;
        }
        match self.commit_table(table, &staged, &meta, lo)? {
            TableCommit::Committed { version } => {
                // An import is whole when recorded: its source will never hold more. (Without
                // the mark the import is still recorded; its table is then not known complete.)
                if let Err(e) = self.record_caught_up(&[CaughtUp {
                    table: table.name().to_string(),
                    topic: source.to_string(),
                    partition: 0,
                    recorded_to: hi.saturating_add(1),
                    high_watermark: hi.saturating_add(1),
                    at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                    writer: self.writer_id.clone(),
                    closed: true,
                }]) {
                    tracing::warn!(error = %e, "the import is recorded, but its caught-up mark could not be written");
                }
                Ok(version)
            }
            TableCommit::Stale { recorded_last } => Err(Error::Warehouse(format!(
                "{}: {source} already recorded offsets up to {recorded_last}; import {lo}..={hi} refused",
                table.name()
            ))),
        }
    }

    /// Record that `topic`/`partition` offsets `first..=last` could not be read (`reason`), found
    /// at `detected_at` (RFC 3339; now if `None`), as a commit of `table` with no files that
    /// moves the partition's position past the range. Ingest records its gaps through the
    /// committer; this is for imports and rule test cases.
    #[allow(clippy::too_many_arguments)]
    pub fn record_gap(
        &mut self,
        table: Table,
        topic: &str,
        partition: i32,
        first: i64,
        last: i64,
        reason: &str,
        detected_at: Option<String>,
    ) -> Result<i64> {
        let meta = CommitMeta {
            writer: self.writer_id.clone(),
            topic: topic.to_string(),
            partition,
            covers_first_offset: first,
            covers_last_offset: last,
            messages: 0,
            schema_version: crate::schema::SCHEMA_VERSION,
            geoip_sha256: None,
            gap: Some(reason.to_string()),
            commit_id: format!("{:016x}", rand::random::<u64>()),
            detected_at: Some(detected_at.unwrap_or_else(now_rfc3339)),
            last_message: None,
        };
        match self.commit_table(table, &[], &meta, first)? {
            TableCommit::Committed { version } => Ok(version),
            TableCommit::Stale { recorded_last } => Err(Error::Warehouse(format!(
                "{}: {topic}/{partition} is recorded up to {recorded_last}; a gap from {first} cannot follow",
                table.name()
            ))),
        }
    }

    /// What the message at `offset` of `topic`/`partition` was, if `table`'s newest commit of
    /// that partition ends at it and recorded it ([`CommitMeta::last_message`]; a gap commit, or
    /// one written before witnesses were, recorded none). The log is read from its end back to
    /// that commit; compaction commits are passed over.
    pub fn last_message(
        &self,
        table: Table,
        topic: &str,
        partition: i32,
        offset: i64,
    ) -> Result<Option<MessageWitness>> {
        let store = self.store.clone();
        let prefix = self.prefix.clone();
        self.rt.block_on(async move {
            let listing = list_commits(store.as_ref(), &prefix, table.name()).await?;
            for path in listing.commits.values().rev() {
                let Some(meta) = commit_info(store.as_ref(), path)
                    .await?
                    .and_then(|mut ci| ci.get_mut(COMMIT_INFO_KEY).map(Value::take))
                    .and_then(|m| serde_json::from_value::<CommitMeta>(m).ok())
                else {
                    continue;
                };
                if meta.topic == topic && meta.partition == partition {
                    return Ok(meta
                        .last_message
                        .filter(|w| w.offset == offset && meta.covers_last_offset == offset));
                }
            }
            Ok(None)
        })
    }

    /// The version after `after` whose commit info carries `commit_id`, if any.
    fn find_commit(&self, table: Table, after: i64, commit_id: &str) -> Result<Option<i64>> {
        if commit_id.is_empty() {
            return Ok(None);
        }
        let store = self.store.clone();
        let prefix = self.prefix.clone();
        self.rt.block_on(async move {
            let listing = list_commits(store.as_ref(), &prefix, table.name()).await?;
            for (v, path) in listing.commits.range(after.saturating_add(1)..) {
                let ci = commit_info(store.as_ref(), path).await?;
                let id = [COMMIT_INFO_KEY, COMPACTION_INFO_KEY].iter().find_map(|k| {
                    ci.as_ref()
                        .and_then(|c| c.get(*k))
                        .and_then(|m| m.get("commit_id"))
                        .and_then(Value::as_str)
                });
                if id == Some(commit_id) {
                    return Ok(Some(*v));
                }
            }
            Ok(None)
        })
    }

    /// The bytes of a data file (`rel` relative to the warehouse).
    /// Overwrite each partition's caught-up mark ([`CaughtUp`]).
    pub fn record_caught_up(&self, marks: &[CaughtUp]) -> Result<()> {
        let store = self.store.clone();
        let prefix = self.prefix.clone();
        self.rt.block_on(async move {
            for m in marks {
                let path = progress_path(&prefix, &m.table, &m.topic, m.partition);
                let body = serde_json::to_vec(m).expect("json");
                store
                    .put(&path, body.into())
                    .await
                    .map_err(|e| Error::Warehouse(format!("writing {path}: {e}")))?;
            }
            Ok(())
        })
    }

    pub fn read_file(&self, rel: &str) -> Result<bytes::Bytes> {
        let path = self.object_path(rel);
        let store = self.store.clone();
        self.rt
            .block_on(async move { get_bytes(store.as_ref(), &path).await })
    }

    /// Replace each group's live files (of one date, hour, topic and partition) by its staged
    /// file, holding the same rows, in one commit of `table` that changes no data (`add` and
    /// `remove` with `dataChange: false`, no `txn`), recorded in the commit info under
    /// [`COMPACTION_INFO_KEY`]. Returns the version, or `None` when a concurrent commit removed
    /// some of those files first (nothing was recorded; the staged files are removed).
    pub fn commit_compaction(
        &mut self,
        table: Table,
        groups: &[(Vec<FileEntry>, StagedFile)],
    ) -> Result<Option<i64>> {
        let table_prefix = format!("{}/", table.name());
        let strip = |p: &str| p.strip_prefix(&table_prefix).unwrap_or(p).to_string();
        let mut actions = Vec::new();
        let mut meta = CompactionMeta {
            writer: self.writer_id.clone(),
            commit_id: format!("{:016x}", rand::random::<u64>()),
            groups: Vec::new(),
        };
        let now = chrono::Utc::now().timestamp_millis();
        for (old, new) in groups {
            let first = old.first().ok_or_else(|| {
                Error::Warehouse(format!("compacting into {}: no files", new.rel_path))
            })?;
            actions.push(Action::Add(add_action(&strip(&new.rel_path), new, false)?));
            for e in old {
                let parts: HashMap<String, Option<String>> = [
                    ("date".to_string(), Some(e.date.clone())),
                    ("hour".to_string(), Some(e.hour.clone())),
                ]
                .into();
                actions.push(Action::Remove(deltalake::kernel::Remove {
                    path: strip(&e.path),
                    data_change: false,
                    deletion_timestamp: Some(now),
                    extended_file_metadata: Some(true),
                    partition_values: Some(parts),
                    size: Some(e.bytes as i64),
                    ..Default::default()
                }));
            }
            meta.groups.push(CompactionGroup {
                topic: first.topic.clone(),
                partition: first.partition,
                added: FileRef {
                    path: new.rel_path.clone(),
                    sha256: new.sha256.clone(),
                    rows: new.rows,
                },
                replaced: old
                    .iter()
                    .map(|e| FileRef {
                        path: e.path.clone(),
                        sha256: e.sha256.clone(),
                        rows: e.rows,
                    })
                    .collect(),
            });
        }
        for (_, f) in groups {
            self.publish(f)?;
        }
        let info = serde_json::to_value(&meta).map_err(|e| derr("commit info", e))?;
        let dt = self.tables.get_mut(&table).expect("every table is open");
        let mut base_version = -1i64;
        let res: std::result::Result<i64, DeltaTableError> = self.rt.block_on(async {
            dt.update_incremental(None).await?;
            let snapshot = dt.snapshot()?;
            base_version = snapshot.version() as i64;
            let props = CommitProperties::default()
                .with_metadata([(COMPACTION_INFO_KEY.to_string(), info)])
                .with_cleanup_expired_logs(Some(false))
                .with_create_checkpoint(false);
            let op = DeltaOperation::Optimize {
                predicate: None,
                target_size: 0,
            };
            let done = CommitBuilder::from(props)
                .with_actions(actions)
                .build(Some(snapshot as &dyn TableReference), dt.log_store(), op)
                .await?;
            Ok(done.version() as i64)
        });
        match res {
            Ok(v) => Ok(Some(v)),
            Err(DeltaTableError::Transaction {
                source: TransactionError::CommitConflict(_),
            }) => match self.find_commit(table, base_version, &meta.commit_id)? {
                Some(v) => Ok(Some(v)),
                None => {
                    for (_, f) in groups {
                        self.unpublish(f);
                    }
                    Ok(None)
                }
            },
            // Whether it was stored is unknown: the files stay (unreferenced if it was not).
            Err(e) => Err(derr(
                format!("committing a compaction of {}", table.name()),
                e,
            )),
        }
    }

    /// Commit `files` (published, all of `table`) with the `txn` of `meta`'s partition set to
    /// `meta.covers_last_offset`, if the table has recorded nothing of this partition at or
    /// beyond `expect_below` (compare-and-set against the version read by [`Self::recorded`]).
    pub fn commit_table(
        &mut self,
        table: Table,
        files: &[StagedFile],
        meta: &CommitMeta,
        expect_below: i64,
    ) -> Result<TableCommit> {
        let app = app_id(table, &meta.topic, meta.partition);
        let dt = self.tables.get_mut(&table).expect("every table is open");
        let mut adds = Vec::with_capacity(files.len());
        let table_prefix = format!("{}/", table.name());
        for f in files {
            let rel = f
                .rel_path
                .strip_prefix(&table_prefix)
                .unwrap_or(&f.rel_path);
            adds.push(Action::Add(add_action(rel, f, true)?));
        }
        let info = serde_json::to_value(meta).map_err(|e| derr("commit info", e))?;
        let rt = &self.rt;
        let mut base_version = -1i64;
        let res: std::result::Result<TableCommit, DeltaTableError> = rt.block_on(async {
            let snapshot = dt.snapshot()?;
            base_version = snapshot.version() as i64;
            let recorded = snapshot
                .transaction_version(dt.log_store().as_ref(), &app)
                .await?;
            if let Some(r) = recorded.filter(|r| *r >= expect_below) {
                return Ok(TableCommit::Stale { recorded_last: r });
            }
            let props = CommitProperties::default()
                .with_application_transaction(Transaction::new_with_last_update(
                    &app,
                    meta.covers_last_offset,
                    Some(chrono::Utc::now().timestamp_millis()),
                ))
                .with_metadata([(COMMIT_INFO_KEY.to_string(), info)])
                .with_cleanup_expired_logs(Some(false))
                // The evidence reader replays the JSON commits only; a checkpoint would be a
                // second, unverified copy of the table state that delta-rs readers prefer.
                .with_create_checkpoint(false);
            let op = DeltaOperation::Write {
                mode: SaveMode::Append,
                partition_by: Some(vec!["date".into(), "hour".into()]),
                predicate: None,
            };
            let done = CommitBuilder::from(props)
                .with_actions(adds)
                .build(Some(snapshot as &dyn TableReference), dt.log_store(), op)
                .await?;
            Ok(TableCommit::Committed {
                version: done.version() as i64,
            })
        });
        match res {
            Ok(c @ TableCommit::Committed { .. }) => {
                self.rt
                    .block_on(dt.update_incremental(None))
                    .map_err(|e| derr(format!("reading {}'s log", table.name()), e))?;
                Ok(c)
            }
            Ok(stale) => {
                count_conflict(table);
                Ok(stale)
            }
            Err(DeltaTableError::Transaction {
                source: TransactionError::CommitConflict(_),
            }) => {
                // Another writer committed this partition's offsets between our read and our
                // commit, or our own commit was stored and its answer lost: look for ours first.
                if let Some(v) = self.find_commit(table, base_version, &meta.commit_id)? {
                    tracing::warn!(
                        table = table.name(),
                        version = v,
                        "a commit reported as conflicting was our own (its answer was lost): kept"
                    );
                    let dt = self.tables.get_mut(&table).expect("every table is open");
                    self.rt
                        .block_on(dt.update_incremental(None))
                        .map_err(|e| derr(format!("reading {}'s log", table.name()), e))?;
                    return Ok(TableCommit::Committed { version: v });
                }
                let recorded = self.recorded(table, &meta.topic, meta.partition)?;
                count_conflict(table);
                Ok(TableCommit::Stale {
                    recorded_last: recorded.unwrap_or(expect_below),
                })
            }
            Err(e) => Err(derr(format!("committing to {}", table.name()), e)),
        }
    }
}

/// Count a commit refused because another writer recorded the offsets first.
fn count_conflict(table: Table) {
    crate::metrics::metrics()
        .commit_conflicts
        .get_or_create(&crate::metrics::table(table.name()))
        .inc();
}

/// The `add` action of a published file: its partition, size, row count, and the evidence in its
/// tags (SHA-256, offsets, event times).
fn add_action(rel: &str, f: &StagedFile, data_change: bool) -> Result<Add> {
    let mut parts = HashMap::new();
    for seg in rel.split('/') {
        if let Some((k, v)) = seg.split_once('=') {
            if k == "date" || k == "hour" {
                parts.insert(k.to_string(), Some(v.to_string()));
            }
        }
    }
    if parts.len() != 2 {
        return Err(Error::Warehouse(format!(
            "{rel}: a data file's path names its date and hour"
        )));
    }
    let tags: HashMap<String, Option<String>> = [
        ("sha256", f.sha256.clone()),
        ("rows", f.rows.to_string()),
        ("first_offset", f.first_offset.to_string()),
        ("last_offset", f.last_offset.to_string()),
        ("min_event_time", crate::decode::fmt_us(f.min_ts_us)),
        ("max_event_time", crate::decode::fmt_us(f.max_ts_us)),
    ]
    .into_iter()
    .map(|(k, v)| (format!("flowaudit.{k}"), Some(v)))
    .collect();
    Ok(Add {
        path: rel.to_string(),
        partition_values: parts,
        size: f.bytes as i64,
        modification_time: chrono::Utc::now().timestamp_millis(),
        data_change,
        stats: Some(json!({ "numRecords": f.rows }).to_string()),
        tags: Some(tags),
        deletion_vector: None,
        base_row_id: None,
        default_row_commit_version: None,
        clustering_provider: None,
    })
}

/// Whether the Delta table `name` of the warehouse has a log (one LIST of its `_delta_log/`):
/// asking delta-rs to load a table that has none makes the Delta kernel log an ERROR although
/// nothing is wrong (a fresh warehouse), so openers ask this first.
pub async fn has_log(location: &Location, name: &str) -> Result<bool> {
    if let Some(root) = location.local() {
        return Ok(root.join(name).join(LOG_DIR).is_dir());
    }
    let (store, prefix) = location.store()?;
    let log = prefix.join(name).join(LOG_DIR);
    let mut list = store.list(Some(&log));
    match futures::StreamExt::next(&mut list).await {
        None => Ok(false),
        Some(Ok(_)) => Ok(true),
        Some(Err(e)) => Err(derr(format!("listing {log}"), e)),
    }
}

/// Open the table `name` of the warehouse, creating it (empty, append-only, with `columns`
/// partitioned by `partitions`, keeping its JSON commits) if it has no log yet. Two writers
/// creating it at once: one wins, the other loads.
pub async fn open_or_create(
    location: &Location,
    store: &Arc<dyn ObjectStore>,
    name: &str,
    columns: StructType,
    partitions: &[&str],
) -> Result<DeltaTable> {
    let url = location.table_url(name)?;
    if let Location::Local(root) = location {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
    }
    let what = || format!("opening the Delta table {url}");
    let build = || {
        DeltaTableBuilder::from_url(url.clone())
            .map(|b| b.with_storage_backend(store.clone(), url.clone()))
            .and_then(|b| b.build())
            .map_err(|e| derr(what(), e))
    };
    let mut dt = build()?;
    if has_log(location, name).await? {
        match dt.load().await {
            Ok(()) => return Ok(dt),
            Err(DeltaTableError::NotATable(_)) => {}
            Err(e) => return Err(derr(what(), e)),
        }
    }
    let created = dt
        .create()
        .with_table_name(name)
        .with_columns(columns.fields().cloned())
        .with_partition_columns(partitions.iter().copied())
        .with_configuration_property(TableProperty::EnableExpiredLogCleanup, Some("false"))
        .with_configuration_property(TableProperty::AppendOnly, Some("true"))
        // No retry: a lost race to create version 0 must not append a second `metaData` (a new
        // table id) on top of the winner's; the loser loads the winner's table instead.
        .with_commit_properties(
            CommitProperties::default()
                .with_cleanup_expired_logs(Some(false))
                .with_create_checkpoint(false)
                .with_max_retries(0),
        )
        .await;
    match created {
        Ok(t) => Ok(t),
        Err(_) => {
            // Another writer created it first (or creation failed): load what is there.
            let mut dt = build()?;
            dt.load().await.map_err(|e| derr(what(), e))?;
            Ok(dt)
        }
    }
}

/// Check that the store refuses a second create of one key (`If-None-Match: *`): two writers
/// of one table version are told apart by nothing else. A store that ignores the header would
/// let one commit overwrite another, so such a store is refused before anything is written.
async fn check_create_only(
    store: &dyn ObjectStore,
    prefix: &ObjectPath,
    writer_id: &str,
) -> std::result::Result<(), String> {
    use object_store::{PutMode, PutOptions};
    let key = prefix.clone().join(STAGING_DIR).join(format!(
        "create-only-probe-{writer_id}-{:016x}",
        rand::random::<u64>()
    ));
    let create = || PutOptions {
        mode: PutMode::Create,
        ..Default::default()
    };
    store
        .put_opts(&key, b"1".to_vec().into(), create())
        .await
        .map_err(|e| format!("cannot write {key}: {e}"))?;
    let second = store.put_opts(&key, b"2".to_vec().into(), create()).await;
    let _ = store.delete(&key).await;
    match second {
        Err(object_store::Error::AlreadyExists { .. }) => Ok(()),
        Err(e) => Err(format!(
            "the check that a second create of {key} is refused failed: {e}"
        )),
        Ok(_) => Err(format!(
            "the server accepted a second create of {key} (it ignores If-None-Match): Delta \
             commits on it would overwrite each other"
        )),
    }
}

/// Upload a local file to `path`: in one PUT when small, else in 8 MiB parts.
async fn upload(store: &dyn ObjectStore, local: &Path, path: &ObjectPath) -> Result<()> {
    use std::io::Read;
    const PART: usize = 8 << 20;
    let mut f = File::open(local).map_err(io_err("open", local))?;
    let len = f.metadata().map_err(io_err("stat", local))?.len() as usize;
    let up = |e: object_store::Error| derr(format!("uploading {path}"), e);
    if len <= PART {
        let mut buf = Vec::with_capacity(len);
        f.read_to_end(&mut buf).map_err(io_err("read", local))?;
        store.put(path, buf.into()).await.map_err(up)?;
        return Ok(());
    }
    let upload = store.put_multipart(path).await.map_err(up)?;
    let mut w = object_store::WriteMultipart::new_with_chunk_size(upload, PART);
    let mut buf = vec![0u8; PART];
    loop {
        let n = f.read(&mut buf).map_err(io_err("read", local))?;
        if n == 0 {
            break;
        }
        w.wait_for_capacity(2).await.map_err(up)?;
        w.write(&buf[..n]);
    }
    w.finish().await.map_err(up)?;
    Ok(())
}

/// Create this writer's staging directory under `root` and lock it; remove the staging
/// directories of writers that no longer hold their lock (they are not running). `root/.lock`
/// orders the two, so a new directory is never removed before its writer has locked it.
fn open_staging(root: &Path, writer_id: &str) -> Result<(PathBuf, FileLock)> {
    std::fs::create_dir_all(root).map_err(io_err("create", root))?;
    let _root_lock = FileLock::acquire(&root.join(".lock"), true)?.expect("blocking lock");
    let staging = root.join(writer_id);
    std::fs::create_dir_all(&staging).map_err(io_err("create", &staging))?;
    let lock = FileLock::acquire(&staging.join(".lock"), true)?.expect("blocking lock");
    for d in std::fs::read_dir(root)
        .map_err(io_err("list", root))?
        .flatten()
    {
        let p = d.path();
        if p == staging || !p.is_dir() {
            continue;
        }
        if let Some(_l) = FileLock::acquire(&p.join(".lock"), false)? {
            let n = std::fs::read_dir(&p).map(|r| r.count()).unwrap_or(0);
            std::fs::remove_dir_all(&p).map_err(io_err("remove", &p))?;
            tracing::info!(dir = %p.display(), files = n.saturating_sub(1), "removed a stopped writer's staging directory");
        }
    }
    Ok((staging, lock))
}

/// An exclusive lock on a local file, released on drop.
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

/// One data file of a table, as its `add` action recorded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileEntry {
    pub table: String,
    /// The table version whose commit added it.
    pub version: i64,
    /// Path relative to the warehouse, `/`-separated (`flows/date=…/hour=…/name.parquet`).
    pub path: String,
    pub date: String,
    pub hour: String,
    pub sha256: String,
    pub bytes: u64,
    pub rows: u64,
    pub topic: String,
    pub partition: i32,
    pub first_offset: i64,
    pub last_offset: i64,
    pub covers_first_offset: i64,
    pub covers_last_offset: i64,
    pub min_event_time: String,
    pub max_event_time: String,
    pub schema_version: u32,
    pub geoip_sha256: Option<String>,
    pub writer: String,
    /// When the commit was made (RFC 3339, from the commit info's timestamp).
    pub committed_at: String,
}

/// One commit of a table's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CommitEntry {
    pub table: String,
    pub version: i64,
    /// SHA-256 of the commit file's bytes, and the chain hash through this version.
    pub file_sha256: String,
    pub hash: String,
    /// flowaudit's commit info (absent for the table's creation).
    pub meta: Option<CommitMeta>,
    /// When the commit was made (RFC 3339, from its commit info's timestamp).
    pub committed_at: String,
    /// `(app id, version)` of each `txn` action.
    pub txns: Vec<(String, i64)>,
    pub adds: usize,
    pub removes: usize,
    /// What a compaction commit records it replaced (its commit info).
    pub compaction: Option<CompactionMeta>,
}

/// A table's head: its last version and the chain hash through it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableHead {
    pub table: String,
    pub version: i64,
    pub hash: String,
}

/// The warehouse as its logs record it.
#[derive(Debug, Clone, Default)]
pub struct WarehouseLog {
    /// The live data files of every ingest table, in (table, version, action) order.
    pub files: Vec<FileEntry>,
    /// Paths (relative to the warehouse) of files a commit added and a later one removed.
    pub removed: Vec<String>,
    pub commits: Vec<CommitEntry>,
    /// One head per table that has a log.
    pub heads: Vec<TableHead>,
    /// What the log holds that flowaudit never writes (a checkpoint, a second `add` of a live
    /// path, a path outside its table or partition, a schema or protocol change after version 0):
    /// each names the file and what is wrong. `verify` reports each as a problem.
    pub anomalies: Vec<String>,
}

/// A range of a partition that ingest could not read, as a commit recorded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Gap {
    pub table: String,
    pub version: i64,
    pub topic: String,
    pub partition: i32,
    pub first_offset: i64,
    pub last_offset: i64,
    pub reason: String,
    pub writer: String,
    /// When ingest recorded it (RFC 3339).
    pub recorded_at: String,
}

impl WarehouseLog {
    /// Every recorded gap, in (table, version) order.
    pub fn gaps(&self) -> Vec<Gap> {
        self.commits
            .iter()
            .filter_map(|c| {
                let m = c.meta.as_ref()?;
                Some(Gap {
                    table: c.table.clone(),
                    version: c.version,
                    topic: m.topic.clone(),
                    partition: m.partition,
                    first_offset: m.covers_first_offset,
                    last_offset: m.covers_last_offset,
                    reason: m.gap.clone()?,
                    writer: m.writer.clone(),
                    recorded_at: m
                        .detected_at
                        .clone()
                        .unwrap_or_else(|| c.committed_at.clone()),
                })
            })
            .collect()
    }

    /// A short form of the heads: `table@version:hash12 …`.
    pub fn heads_summary(&self) -> String {
        if self.heads.is_empty() {
            return "empty".into();
        }
        self.heads
            .iter()
            .map(|h| {
                format!(
                    "{}@{}:{}",
                    h.table,
                    h.version,
                    &h.hash[..12.min(h.hash.len())]
                )
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// The chain hash after `prev` and a commit file with SHA-256 `file_sha256`.
pub fn chain(prev: &str, file_sha256: &str) -> String {
    let mut h = Sha256::new();
    h.update(prev.as_bytes());
    h.update(file_sha256.as_bytes());
    hex::encode(h.finalize())
}

/// Read every ingest table's Delta log directly (the JSON commits, never a checkpoint: this is
/// the evidence path and shares no code with delta-rs), chaining the commit files and
/// replaying `add`/`remove` into the live files. A gap in a table's versions is an error.
pub async fn read_log(location: &Location) -> Result<WarehouseLog> {
    let (store, prefix) = location.store()?;
    read_log_from(store.as_ref(), &prefix).await
}

/// [`read_log`] for synchronous callers (not from inside a tokio runtime).
pub fn read_log_blocking(location: &Location) -> Result<WarehouseLog> {
    runtime()?.block_on(read_log(location))
}

/// What a table's `_delta_log/` holds.
#[derive(Debug, Default)]
pub struct LogListing {
    /// Every commit file: version → object path.
    pub commits: BTreeMap<i64, ObjectPath>,
    /// Anything else directly in `_delta_log/` (checkpoints, `_last_checkpoint`, stray names):
    /// flowaudit writes none, and delta-rs readers would trust a checkpoint over the commits.
    pub other: Vec<String>,
}

/// The `commitInfo` action of the commit file at `path`, if it has one.
async fn commit_info(store: &dyn ObjectStore, path: &ObjectPath) -> Result<Option<Value>> {
    let bytes = get_bytes(store, path).await?;
    Ok(bytes
        .split(|b| *b == b'\n')
        .filter_map(|line| serde_json::from_slice::<Value>(line).ok())
        .find_map(|mut action| action.get_mut("commitInfo").map(Value::take)))
}

/// List `table`'s `_delta_log/`.
pub async fn list_commits(
    store: &dyn ObjectStore,
    prefix: &ObjectPath,
    table: &str,
) -> Result<LogListing> {
    use futures::TryStreamExt;
    let log = prefix.clone().join(table).join(LOG_DIR);
    let metas: Vec<_> = store
        .list(Some(&log))
        .try_collect()
        .await
        .map_err(|e| derr(format!("listing {log}"), e))?;
    let mut out = LogListing::default();
    for m in metas {
        let Some(name) = m.location.filename() else {
            continue;
        };
        // Only direct children: `<20 digits>.json`.
        if m.location.prefix_match(&log).map(|p| p.count()) != Some(1) {
            out.other.push(m.location.to_string());
            continue;
        }
        let version = name
            .strip_suffix(".json")
            .filter(|v| v.len() == 20 && v.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|v| v.parse::<i64>().ok());
        match version {
            Some(v) => {
                out.commits.insert(v, m.location.clone());
            }
            None => out.other.push(m.location.to_string()),
        }
    }
    Ok(out)
}

#[derive(Deserialize)]
struct RawAdd {
    path: String,
    #[serde(rename = "partitionValues", default)]
    partition_values: HashMap<String, Option<String>>,
    size: i64,
    #[serde(default)]
    tags: Option<HashMap<String, Option<String>>>,
}

#[derive(Deserialize)]
struct RawRemove {
    path: String,
}

#[derive(Deserialize)]
struct RawTxn {
    #[serde(rename = "appId")]
    app_id: String,
    version: i64,
}

/// The whole object at `path`.
pub async fn get_bytes(store: &dyn ObjectStore, path: &ObjectPath) -> Result<bytes::Bytes> {
    let read = |e: object_store::Error| derr(format!("reading {path}"), e);
    store
        .get(path)
        .await
        .map_err(read)?
        .bytes()
        .await
        .map_err(read)
}

/// Read the warehouse's logs from `store` under `prefix`.
pub async fn read_log_from(store: &dyn ObjectStore, prefix: &ObjectPath) -> Result<WarehouseLog> {
    let mut out = WarehouseLog::default();
    for t in Table::ALL {
        let name = t.name();
        let listing = list_commits(store, prefix, name).await?;
        for o in &listing.other {
            out.anomalies.push(format!(
                "{o}: not a commit file (flowaudit writes no checkpoints; a reader that trusts one \
                 would see a table state no commit records)"
            ));
        }
        let commits = listing.commits;
        if commits.is_empty() {
            continue;
        }
        let mut head = GENESIS_HASH.to_string();
        let mut live: BTreeMap<String, FileEntry> = BTreeMap::new();
        let mut order: Vec<String> = Vec::new();
        let mut last = -1i64;
        for (v, path) in &commits {
            if *v != last + 1 {
                return Err(Error::Warehouse(format!(
                    "{name}: the log jumps from version {last} to {v} (a commit file is missing)"
                )));
            }
            last = *v;
            let bytes = get_bytes(store, path).await?;
            let file_sha = hex::encode(Sha256::digest(&bytes));
            head = chain(&head, &file_sha);
            let mut meta: Option<CommitMeta> = None;
            let mut compaction: Option<CompactionMeta> = None;
            let mut committed_at = String::new();
            let mut adds = Vec::new();
            let mut removes = 0usize;
            // What this commit removed, as it was live before.
            let mut removed: HashMap<String, FileEntry> = HashMap::new();
            let mut txns = Vec::new();
            for (i, line) in bytes.split(|b| *b == b'\n').enumerate() {
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let bad = |e: &dyn std::fmt::Display| {
                    Error::Warehouse(format!("{path} line {}: {e}", i + 1))
                };
                let action: Value = serde_json::from_slice(line).map_err(|e| bad(&e))?;
                if let Some(ci) = action.get("commitInfo") {
                    if let Some(ts) = ci.get("timestamp").and_then(Value::as_i64) {
                        committed_at = chrono::DateTime::from_timestamp_millis(ts)
                            .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
                            .unwrap_or_default();
                    }
                    if let Some(m) = ci.get(COMMIT_INFO_KEY) {
                        meta = Some(serde_json::from_value(m.clone()).map_err(|e| bad(&e))?);
                    }
                    if let Some(m) = ci.get(COMPACTION_INFO_KEY) {
                        compaction = Some(serde_json::from_value(m.clone()).map_err(|e| bad(&e))?);
                    }
                } else if let Some(a) = action.get("add") {
                    let a: RawAdd = serde_json::from_value(a.clone()).map_err(|e| bad(&e))?;
                    adds.push(a);
                } else if let Some(r) = action.get("remove") {
                    let r: RawRemove = serde_json::from_value(r.clone()).map_err(|e| bad(&e))?;
                    removes += 1;
                    let p = decode_path(&r.path);
                    match live.remove(&p) {
                        Some(e) => {
                            out.removed.push(e.path.clone());
                            removed.insert(format!("{name}/{p}"), e);
                        }
                        None => out.anomalies.push(format!(
                            "{path} line {}: removes {name}/{p}, which is not a live file",
                            i + 1
                        )),
                    }
                } else if (action.get("metaData").is_some() || action.get("protocol").is_some())
                    && *v > 0
                {
                    out.anomalies.push(format!(
                        "{path} line {}: changes the table's schema or protocol (flowaudit sets \
                         them once, at version 0)",
                        i + 1
                    ));
                } else if let Some(x) = action.get("txn") {
                    let x: RawTxn = serde_json::from_value(x.clone()).map_err(|e| bad(&e))?;
                    txns.push((x.app_id, x.version));
                }
            }
            let n_adds = adds.len();
            for a in adds {
                let rel = decode_path(&a.path);
                let tag = |k: &str| {
                    a.tags
                        .as_ref()
                        .and_then(|t| t.get(&format!("flowaudit.{k}")).cloned().flatten())
                        .unwrap_or_default()
                };
                let num = |k: &str| -> Result<i64> {
                    tag(k).parse::<i64>().map_err(|_| {
                        Error::Warehouse(format!(
                            "{path}: the add of {rel} has no valid flowaudit.{k} tag"
                        ))
                    })
                };
                let full = format!("{name}/{rel}");
                let m = match (&meta, &compaction) {
                    (Some(m), _) => m.clone(),
                    (None, Some(c)) => compacted_meta(c, &full, &removed).map_err(|why| {
                        Error::Warehouse(format!("{path}: adds {full} in a compaction: {why}"))
                    })?,
                    (None, None) => {
                        return Err(Error::Warehouse(format!(
                            "{path}: adds {rel} but has no flowaudit commit info (not written by flowaudit)"
                        )))
                    }
                };
                let pv = |k: &str| {
                    a.partition_values
                        .get(k)
                        .cloned()
                        .flatten()
                        .unwrap_or_default()
                };
                let e = FileEntry {
                    table: name.to_string(),
                    version: *v,
                    path: format!("{name}/{rel}"),
                    date: pv("date"),
                    hour: pv("hour"),
                    sha256: tag("sha256"),
                    bytes: a.size.max(0) as u64,
                    rows: num("rows")?.max(0) as u64,
                    topic: m.topic.clone(),
                    partition: m.partition,
                    first_offset: num("first_offset")?,
                    last_offset: num("last_offset")?,
                    covers_first_offset: m.covers_first_offset,
                    covers_last_offset: m.covers_last_offset,
                    min_event_time: tag("min_event_time"),
                    max_event_time: tag("max_event_time"),
                    schema_version: m.schema_version,
                    geoip_sha256: m.geoip_sha256.clone(),
                    writer: m.writer.clone(),
                    committed_at: committed_at.clone(),
                };
                if let Some(why) = bad_data_path(&rel, &e.date, &e.hour) {
                    out.anomalies.push(format!("{path}: adds {rel}: {why}"));
                }
                if live.contains_key(&rel) {
                    out.anomalies.push(format!(
                        "{path}: adds {rel} again while it is live (its content and evidence \
                         would be replaced without a remove)"
                    ));
                }
                if live.insert(rel.clone(), e).is_none() {
                    order.push(rel);
                }
            }
            if let Some(c) = &compaction {
                for why in check_compaction(c, *v, &removed, &live) {
                    out.anomalies.push(format!("{path}: {why}"));
                }
            }
            out.commits.push(CommitEntry {
                table: name.to_string(),
                version: *v,
                file_sha256: file_sha,
                hash: head.clone(),
                meta,
                committed_at,
                txns,
                adds: n_adds,
                removes,
                compaction,
            });
        }
        for rel in order {
            if let Some(e) = live.remove(&rel) {
                out.files.push(e);
            }
        }
        out.heads.push(TableHead {
            table: name.to_string(),
            version: last,
            hash: head,
        });
    }
    Ok(out)
}

/// The commit facts of a file a compaction added (`full`: its path relative to the warehouse):
/// those of the files its group replaced (`removed` by the same commit), which must agree on the
/// topic, partition, schema and GeoIP; the covered range spans theirs.
fn compacted_meta(
    c: &CompactionMeta,
    full: &str,
    removed: &HashMap<String, FileEntry>,
) -> std::result::Result<CommitMeta, String> {
    let g = c
        .groups
        .iter()
        .find(|g| g.added.path == full)
        .ok_or("the commit info names no group that adds it")?;
    let olds: Vec<&FileEntry> = g
        .replaced
        .iter()
        .map(|r| {
            removed
                .get(&r.path)
                .ok_or_else(|| format!("it replaces {}, which the commit does not remove", r.path))
        })
        .collect::<std::result::Result<_, _>>()?;
    let first = olds.first().ok_or("it replaces no file")?;
    for o in &olds {
        if (o.topic.as_str(), o.partition) != (g.topic.as_str(), g.partition)
            || o.schema_version != first.schema_version
            || o.geoip_sha256 != first.geoip_sha256
        {
            return Err(format!(
                "{} is of {}/{} (schema {}, GeoIP {:?}), not of the group's {}/{}",
                o.path,
                o.topic,
                o.partition,
                o.schema_version,
                o.geoip_sha256,
                g.topic,
                g.partition
            ));
        }
    }
    Ok(CommitMeta {
        writer: c.writer.clone(),
        topic: g.topic.clone(),
        partition: g.partition,
        covers_first_offset: olds
            .iter()
            .map(|o| o.covers_first_offset)
            .min()
            .unwrap_or(0),
        covers_last_offset: olds.iter().map(|o| o.covers_last_offset).max().unwrap_or(0),
        messages: 0,
        schema_version: first.schema_version,
        geoip_sha256: first.geoip_sha256.clone(),
        gap: None,
        commit_id: c.commit_id.clone(),
        detected_at: None,
        last_message: None,
    })
}

/// What a compaction commit's record says against what it did: each group replaces files this
/// commit removed (with the SHA-256 and rows they were added with) of the added file's date and
/// hour, by one file it added with as many rows; nothing else is removed.
fn check_compaction(
    c: &CompactionMeta,
    version: i64,
    removed: &HashMap<String, FileEntry>,
    live: &BTreeMap<String, FileEntry>,
) -> Vec<String> {
    let mut out = Vec::new();
    let mut named = std::collections::HashSet::new();
    for g in &c.groups {
        let rel = g.added.path.split_once('/').map_or("", |x| x.1);
        let Some(added) = live.get(rel).filter(|a| a.version == version) else {
            out.push(format!(
                "the compaction names {} but does not add it",
                g.added.path
            ));
            continue;
        };
        if added.sha256 != g.added.sha256 || added.rows != g.added.rows {
            out.push(format!(
                "the compaction records {} with SHA-256 {} and {} rows, its add says {} and {}",
                g.added.path, g.added.sha256, g.added.rows, added.sha256, added.rows
            ));
        }
        let mut rows = 0u64;
        for r in &g.replaced {
            named.insert(r.path.clone());
            rows += r.rows;
            if let Some(o) = removed.get(&r.path) {
                if o.sha256 != r.sha256 || o.rows != r.rows {
                    out.push(format!(
                        "the compaction records {} with SHA-256 {} and {} rows, it was added with {} and {}",
                        r.path, r.sha256, r.rows, o.sha256, o.rows
                    ));
                }
                if (o.date.as_str(), o.hour.as_str()) != (added.date.as_str(), added.hour.as_str())
                {
                    out.push(format!(
                        "the compaction moves {} from date {} hour {} to {}",
                        r.path, o.date, o.hour, g.added.path
                    ));
                }
            }
        }
        if rows != g.added.rows {
            out.push(format!(
                "{} has {} rows, the {} files it replaces {rows} (a compaction keeps every row)",
                g.added.path,
                g.added.rows,
                g.replaced.len()
            ));
        }
    }
    for p in removed.keys() {
        if !named.contains(p) {
            out.push(format!(
                "the compaction removes {p}, which none of its groups replaces"
            ));
        }
    }
    out
}

/// What a Parquet file of a warehouse table holds: its SHA-256, size, rows, and the range of its
/// `kafka_offset` and `ts` columns.
pub(crate) struct Extent {
    pub(crate) sha256: String,
    pub(crate) bytes: u64,
    pub(crate) rows: u64,
    pub(crate) first_offset: i64,
    pub(crate) last_offset: i64,
    pub(crate) min_ts_us: i64,
    pub(crate) max_ts_us: i64,
}

impl Extent {
    /// The staged file at `staging_path` that this extent describes, bound for `rel_path`.
    pub(crate) fn staged(
        self,
        staging_path: PathBuf,
        rel_path: String,
        table: Table,
    ) -> StagedFile {
        StagedFile {
            staging_path,
            rel_path,
            table: table.name(),
            sha256: self.sha256,
            bytes: self.bytes,
            rows: self.rows,
            first_offset: self.first_offset,
            last_offset: self.last_offset,
            min_ts_us: self.min_ts_us,
            max_ts_us: self.max_ts_us,
        }
    }
}

pub(crate) fn parquet_extent(path: &Path) -> Result<Extent> {
    use arrow::array::AsArray;
    use arrow::datatypes::{Int64Type, TimestampMicrosecondType};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use parquet::arrow::ProjectionMask;
    let sha256 = crate::writer::sha256_file(path)?;
    let f = File::open(path).map_err(io_err("open", path))?;
    let bytes = f.metadata().map_err(io_err("stat", path))?.len();
    let b = ParquetRecordBatchReaderBuilder::try_new(f)?;
    let descr = b.metadata().file_metadata().schema_descr();
    let cols: Vec<usize> = (0..descr.num_columns())
        .filter(|i| matches!(descr.column(*i).name(), "kafka_offset" | "ts"))
        .collect();
    let mask = ProjectionMask::leaves(descr, cols);
    let mut e = Extent {
        sha256,
        bytes,
        rows: 0,
        first_offset: i64::MAX,
        last_offset: i64::MIN,
        min_ts_us: i64::MAX,
        max_ts_us: i64::MIN,
    };
    for batch in b.with_projection(mask).build()? {
        let batch = batch?;
        e.rows += batch.num_rows() as u64;
        if let Some(o) = batch.column_by_name("kafka_offset") {
            for v in o.as_primitive::<Int64Type>().iter().flatten() {
                e.first_offset = e.first_offset.min(v);
                e.last_offset = e.last_offset.max(v);
            }
        }
        if let Some(t) = batch.column_by_name("ts") {
            for v in t
                .as_primitive::<TimestampMicrosecondType>()
                .iter()
                .flatten()
            {
                e.min_ts_us = e.min_ts_us.min(v);
                e.max_ts_us = e.max_ts_us.max(v);
            }
        }
    }
    if e.rows == 0 || e.first_offset > e.last_offset {
        return Err(Error::Warehouse(format!(
            "{}: no rows with a kafka_offset to record",
            path.display()
        )));
    }
    Ok(e)
}

/// The current time as RFC 3339 (milliseconds, UTC).
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Why a data file's path (relative to its table) is not one flowaudit writes: it must stay inside
/// the table, under `date=<date>/hour=<hour>/` as its partition values say.
fn bad_data_path(rel: &str, date: &str, hour: &str) -> Option<String> {
    if rel.contains("://") || rel.starts_with('/') || rel.split('/').any(|s| s == ".." || s == ".")
    {
        return Some("the path leaves the table".into());
    }
    let want = format!("date={date}/hour={hour}/");
    match rel.strip_prefix(&want) {
        Some(name) if !name.is_empty() && !name.contains('/') => None,
        _ => Some(format!(
            "the path is not under {want} as its partition values say"
        )),
    }
}

/// An `add`/`remove` path is a relative URI: percent-decode it.
pub fn decode_path(p: &str) -> String {
    let bytes = p.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = |b: u8| (b as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
