//! A local filesystem object store whose writes survive a power loss once they return.
//!
//! object_store's `LocalFileSystem` writes an object to a temporary file and links or renames it
//! into place without `fsync`: after a power loss a Delta commit that was reported as stored can
//! be missing or empty, and a later writer could then take its version. [`DurableLocal`]
//! delegates everything to it and, after each write, fsyncs the new file and the directory that
//! now names it, so a commit, once acknowledged, is on disk (the Delta log's versions are its
//! evidence; data files are fsynced before they are published, see [`crate::writer`]).
use std::fmt;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
};

/// `LocalFileSystem` rooted at `/`, with every completed write fsynced (file and directory).
#[derive(Debug, Default)]
pub struct DurableLocal {
    inner: LocalFileSystem,
    syncs: Arc<AtomicU64>,
}

impl DurableLocal {
    pub fn new() -> Self {
        Self::default()
    }

    /// How many writes were fsynced (for tests).
    pub fn synced(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
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
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.inner.get_ranges(location, ranges).await
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
}
