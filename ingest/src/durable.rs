//! A local filesystem object store whose writes survive a power loss once they return.
//!
//! object_store's `LocalFileSystem` writes an object to a temporary file and links or renames it
//! into place without `fsync`: after a power loss a Delta commit that was reported as stored can
//! be missing or empty, and a later writer could then take its version. [`DurableLocal`]
//! delegates everything to it and, after each write, fsyncs the new file and the directory that
//! now names it, so a commit, once acknowledged, is on disk (the Delta log's versions are its
//! evidence; data files are fsynced before they are published, see [`crate::writer`]).
//!
//! Ranged reads of up to [`INLINE_READ_MAX`] bytes (a Parquet footer, a column chunk, a page) are
//! served on the calling thread with positioned reads. `LocalFileSystem` sends each to tokio's
//! blocking pool, twice for a single range (open, then read): on a warm page cache the hand-offs
//! and wake-ups cost more than the read, and a query makes dozens of them (docs/sql.md, "Speed").
//! Anything else, and any read that fails, goes to `LocalFileSystem`, so errors are its own.
use std::fmt;
use std::ops::Range;
use std::os::unix::fs::{FileExt as _, MetadataExt as _};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    Attributes, CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload,
    ObjectMeta, ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
    Result,
};

/// The largest ranged read (all ranges of one call together) served on the calling thread: a
/// read from the page cache of this size takes well under a millisecond.
pub const INLINE_READ_MAX: u64 = 8 << 20;

/// `LocalFileSystem` rooted at `/`, with every completed write fsynced (file and directory) and
/// small ranged reads served inline.
#[derive(Debug, Default)]
pub struct DurableLocal {
    inner: LocalFileSystem,
    syncs: Arc<AtomicU64>,
    inline_reads: Arc<AtomicU64>,
}

impl DurableLocal {
    pub fn new() -> Self {
        Self::default()
    }

    /// How many writes were fsynced (for tests).
    pub fn synced(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    /// How many ranged reads were served on the calling thread (for tests).
    pub fn inline_reads(&self) -> u64 {
        self.inline_reads.load(Ordering::Relaxed)
    }

    /// The ranges of `location` that `ranges` asks for, given the file's metadata, read on this
    /// thread. `None` if `ranges` declines, they are too large together, or anything fails: the
    /// caller then asks `LocalFileSystem`, for its errors.
    fn read_inline(
        &self,
        location: &Path,
        ranges: impl FnOnce(&std::fs::Metadata) -> Option<Vec<Range<u64>>>,
    ) -> Option<Vec<Bytes>> {
        let path = self.inner.path_to_filesystem(location).ok()?;
        let file = std::fs::File::open(path).ok()?;
        let meta = file.metadata().ok().filter(std::fs::Metadata::is_file)?;
        let ranges = ranges(&meta)?;
        let total: u64 = ranges.iter().map(|r| r.end.saturating_sub(r.start)).sum();
        if total > INLINE_READ_MAX || ranges.iter().any(|r| r.start > r.end || r.end > meta.len()) {
            return None;
        }
        let mut out = Vec::with_capacity(ranges.len());
        for r in ranges {
            let mut buf = vec![0; (r.end - r.start) as usize];
            file.read_exact_at(&mut buf, r.start).ok()?;
            out.push(Bytes::from(buf));
        }
        self.inline_reads.fetch_add(1, Ordering::Relaxed);
        Some(out)
    }

    /// A ranged `get` served on this thread; `None` where `LocalFileSystem` is to answer.
    fn get_inline(&self, location: &Path, options: &GetOptions) -> Option<GetResult> {
        let range = options.range.as_ref().filter(|_| !options.head)?;
        // The file's metadata and the range, worked out once, from the opened file.
        let mut found = None;
        let mut bytes = self.read_inline(location, |meta| {
            let object = object_meta(location, meta)?;
            options.check_preconditions(&object).ok()?;
            let range = range.as_range(meta.len()).ok()?;
            found = Some((object, range.clone()));
            Some(vec![range])
        })?;
        let (meta, range) = found?;
        Some(GetResult {
            payload: GetResultPayload::Stream(Box::pin(futures::stream::once(std::future::ready(
                Ok(bytes.pop()?),
            )))),
            attributes: Attributes::default(),
            range,
            meta,
        })
    }

    async fn sync(&self, location: &Path) -> Result<()> {
        let file = PathBuf::from("/").join(location.as_ref());
        let syncs = self.syncs.clone();
        tokio::task::spawn_blocking(move || {
            let err = |source: std::io::Error| object_store::Error::Generic {
                store: "DurableLocal",
                source: format!("fsync {}: {source}", file.display()).into(),
            };
            std::fs::File::open(&file)
                .and_then(|f| f.sync_all())
                .map_err(err)?;
            // The directory that names the file, and its parent (the write may have made it).
            for dir in file.ancestors().skip(1).take(2) {
                std::fs::File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(err)?;
            }
            syncs.fetch_add(1, Ordering::Relaxed);
            Ok(())
        })
        .await
        .map_err(|e| object_store::Error::Generic {
            store: "DurableLocal",
            source: Box::new(e),
        })?
    }
}

impl fmt::Display for DurableLocal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DurableLocal({})", self.inner)
    }
}

/// The metadata `LocalFileSystem` reports for a file, its e-tag included.
fn object_meta(location: &Path, meta: &std::fs::Metadata) -> Option<ObjectMeta> {
    let mtime = meta.modified().ok()?;
    let micros = mtime
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros();
    Some(ObjectMeta {
        location: location.clone(),
        last_modified: mtime.into(),
        size: meta.len(),
        e_tag: Some(format!("{:x}-{micros:x}-{:x}", meta.ino(), meta.len())),
        version: None,
    })
}

#[async_trait]
impl ObjectStore for DurableLocal {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        let r = self.inner.put_opts(location, payload, opts).await?;
        self.sync(location).await?;
        Ok(r)
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        // Only ingest's own uploads to S3 are multipart; locally, files are renamed into place
        // after their own fsync.
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        match self.get_inline(location, &options) {
            Some(got) => Ok(got),
            None => self.inner.get_opts(location, options).await,
        }
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        match self.read_inline(location, |_| Some(ranges.to_vec())) {
            Some(bytes) => Ok(bytes),
            None => self.inner.get_ranges(location, ranges).await,
        }
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await?;
        self.sync(to).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.inner.rename_opts(from, to, options).await?;
        self.sync(to).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::PutMode;

    #[tokio::test]
    async fn a_create_only_write_is_synced_and_a_second_create_is_still_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = DurableLocal::new();
        let file = dir.path().join("_delta_log/00000000000000000000.json");
        let key = Path::parse(file.to_str().unwrap().trim_start_matches('/')).unwrap();
        let create = || PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        store
            .put_opts(&key, b"first".to_vec().into(), create())
            .await
            .unwrap();
        assert_eq!(store.synced(), 1);
        let second = store
            .put_opts(&key, b"second".to_vec().into(), create())
            .await;
        assert!(
            matches!(second, Err(object_store::Error::AlreadyExists { .. })),
            "{second:?}"
        );
        assert_eq!(store.synced(), 1, "a refused write is not synced");
        assert_eq!(std::fs::read(&file).unwrap(), b"first");
    }

    #[tokio::test]
    async fn small_ranged_reads_are_inline_and_answer_as_local_file_system_does() {
        use object_store::{GetRange, ObjectStoreExt as _};
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("part-0.parquet");
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&file, &data).unwrap();
        let key = Path::parse(file.to_str().unwrap().trim_start_matches('/')).unwrap();
        let store = DurableLocal::new();
        let plain = LocalFileSystem::new();

        // Ranged gets, each kind of range: same bytes, range and metadata (e-tag included).
        for range in [
            GetRange::Bounded(10..5_000),
            GetRange::Bounded(99_000..100_001),
            GetRange::Offset(99_000),
            GetRange::Suffix(8),
        ] {
            let before = store.inline_reads();
            let opts = || GetOptions {
                range: Some(range.clone()),
                ..Default::default()
            };
            let got = store.get_opts(&key, opts()).await.unwrap();
            let want = plain.get_opts(&key, opts()).await.unwrap();
            assert_eq!(
                store.inline_reads(),
                before + 1,
                "{range:?} was read inline"
            );
            assert_eq!(
                (&got.range, &got.meta),
                (&want.range, &want.meta),
                "{range:?}"
            );
            assert_eq!(got.bytes().await.unwrap(), want.bytes().await.unwrap());
        }
        let ranges = [0..16, 50_000..50_100, 99_990..100_000];
        assert_eq!(
            store.get_ranges(&key, &ranges).await.unwrap(),
            plain.get_ranges(&key, &ranges).await.unwrap()
        );
        assert_eq!(store.inline_reads(), 5);

        // What is not served inline gets `LocalFileSystem`'s answer and errors.
        let past_end = store.get_ranges(&key, &[0..1, 100_000..100_010]).await;
        let want = plain.get_ranges(&key, &[0..1, 100_000..100_010]).await;
        assert!(past_end.is_err(), "{past_end:?}");
        assert_eq!(
            past_end.unwrap_err().to_string(),
            want.unwrap_err().to_string()
        );
        let past_end = store.get_range(&key, 100_000..100_010).await;
        let want = plain.get_range(&key, 100_000..100_010).await;
        assert!(past_end.is_err(), "{past_end:?}");
        assert_eq!(
            past_end.unwrap_err().to_string(),
            want.unwrap_err().to_string()
        );
        let stale = GetOptions {
            range: Some(GetRange::Bounded(0..10)),
            if_match: Some("not-this-version".into()),
            ..Default::default()
        };
        let stale = store.get_opts(&key, stale).await;
        assert!(
            matches!(stale, Err(object_store::Error::Precondition { .. })),
            "{stale:?}"
        );
        let missing = Path::parse(key.as_ref().replace("part-0", "part-9")).unwrap();
        let missing = store.get_range(&missing, 0..10).await;
        assert!(
            matches!(missing, Err(object_store::Error::NotFound { .. })),
            "{missing:?}"
        );
        assert_eq!(
            store.inline_reads(),
            5,
            "failed reads are LocalFileSystem's"
        );

        // A whole-object get and a read larger than the inline bound go to LocalFileSystem.
        assert_eq!(store.get(&key).await.unwrap().bytes().await.unwrap(), data);
        let big = dir.path().join("big.parquet");
        std::fs::write(&big, vec![7u8; INLINE_READ_MAX as usize + 1]).unwrap();
        let big = Path::parse(big.to_str().unwrap().trim_start_matches('/')).unwrap();
        let all = store.get_range(&big, 0..INLINE_READ_MAX + 1).await.unwrap();
        assert_eq!(all.len() as u64, INLINE_READ_MAX + 1);
        assert_eq!(store.inline_reads(), 5);
    }
}
