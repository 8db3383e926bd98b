//! Spider files in MongoDB, so a master keeps no state of its own and any master on the same database serves
//! every spider: contents in the GridFS bucket `spider_files`, each named by its sha256, and versions in
//! `spider_versions`, one document per version (`_id` is `{spider}:{hash}`), indexed by spider and time.
//!
//! A version is written only after every content it names, and GridFS writes a file's entry only after its
//! last chunk, so no reader ever finds a version whose contents are missing or half written. Two masters
//! keeping the same content at once leave two identical GridFS files, which costs space but never a wrong byte.

use std::collections::HashSet;
use std::path::Path;

use arachne_shared::cluster::BlobChunk;
use arachne_shared::files::{FileEntry, Manifest};
use arachne_shared::{SpiderId, from_millis, to_millis};
use bson::{Document, doc};
use futures_util::TryStreamExt;
use mongodb::gridfs::GridFsBucket;
use mongodb::options::{FindOptions, GridFsBucketOptions};
use mongodb::{Collection, Database, IndexModel};
use tokio::sync::mpsc;

use super::upload::Staged;
use super::{CHUNK_BYTES, Error, StoredVersion, io};
use crate::mongo_docs::{bson_to_json, is_duplicate, record};

const BUCKET: &str = "spider_files";
const VERSIONS: &str = "spider_versions";
/// How old a content must be before a clean-up may remove it (see [`GridFs::remove_unnamed_blobs`]).
const GC_GRACE: chrono::TimeDelta = chrono::TimeDelta::hours(1);
/// Contents asked about in one query when checking which of an upload's contents are kept already.
const LOOKUP_BATCH: usize = 1000;

fn backend(err: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::MongoDb(Box::new(err))
}

/// The bucket of contents and the collection of versions.
#[derive(Debug, Clone)]
pub(super) struct GridFs {
    bucket: GridFsBucket,
    versions: Collection<Document>,
}

impl GridFs {
    /// Opens the bucket and makes sure the versions' index exists (GridFS makes its own on first write).
    pub(super) async fn open(db: &Database) -> Result<Self, Error> {
        let bucket = db.gridfs_bucket(
            GridFsBucketOptions::builder()
                .bucket_name(BUCKET.to_owned())
                .build(),
        );
        let versions = db.collection(VERSIONS);
        versions
            .create_index(
                IndexModel::builder()
                    .keys(doc! {"spider_id": 1, "created_at": -1})
                    .build(),
            )
            .await
            .map_err(backend)?;
        Ok(Self { bucket, versions })
    }

    /// Which of `shas` the bucket holds.
    async fn kept(&self, shas: &[&str]) -> Result<HashSet<String>, Error> {
        let mut kept = HashSet::new();
        for batch in shas.chunks(LOOKUP_BATCH) {
            let mut files = self
                .bucket
                .find(doc! {"filename": {"$in": batch}})
                .await
                .map_err(backend)?;
            while let Some(file) = files.try_next().await.map_err(backend)? {
                kept.extend(file.filename);
            }
        }
        Ok(kept)
    }

    /// Keeps the staged contents the bucket lacks.
    pub(super) async fn keep_blobs(&self, staged: Vec<Staged>) -> Result<Vec<FileEntry>, Error> {
        let shas: Vec<&str> = staged.iter().map(|f| f.entry.sha256.as_str()).collect();
        let mut kept = self.kept(&shas).await?;
        let mut entries = Vec::with_capacity(staged.len());
        for file in staged {
            // An upload may hold one content under several paths: it is written once.
            if kept.insert(file.entry.sha256.clone()) {
                self.upload(&file.entry.sha256, &file.temp).await?;
            }
            entries.push(file.entry);
        }
        Ok(entries)
    }

    async fn upload(&self, sha256: &str, path: &Path) -> Result<(), Error> {
        use futures_util::io::AsyncWriteExt;
        use tokio::io::AsyncReadExt;

        let mut file = tokio::fs::File::open(path).await.map_err(io(path))?;
        // Dropped unfinished (an error below), the stream deletes the chunks it wrote.
        let mut stream = self
            .bucket
            .open_upload_stream(sha256)
            .await
            .map_err(backend)?;
        let mut buffer = vec![0u8; CHUNK_BYTES];
        loop {
            let n = file.read(&mut buffer).await.map_err(io(path))?;
            if n == 0 {
                break;
            }
            stream.write_all(&buffer[..n]).await.map_err(backend)?;
        }
        stream.close().await.map_err(backend)
    }

    pub(super) async fn version(
        &self,
        spider: SpiderId,
        hash: &str,
    ) -> Result<Option<StoredVersion>, Error> {
        let found = self
            .versions
            .find_one(doc! {"_id": format!("{spider}:{hash}")})
            .await
            .map_err(backend)?;
        found.map(|doc| stored(hash, doc)).transpose()
    }

    /// Keeps `stored` unless the version exists already (another master may have just written it).
    pub(super) async fn put_version(
        &self,
        spider: SpiderId,
        hash: &str,
        version: &StoredVersion,
    ) -> Result<(), Error> {
        let doc = doc! {
            "_id": format!("{spider}:{hash}"),
            "spider_id": spider.to_string(),
            "hash": hash,
            "created_at": bson::DateTime::from_millis(to_millis(version.created_at)),
            "manifest": record(&version.manifest),
        };
        match self.versions.insert_one(doc).await {
            Ok(_) => Ok(()),
            Err(err) if is_duplicate(&err) => Ok(()),
            Err(err) => Err(backend(err)),
        }
    }

    /// Every version of `spider`.
    pub(super) async fn versions(
        &self,
        spider: SpiderId,
    ) -> Result<Vec<(String, StoredVersion)>, Error> {
        let mut cursor = self
            .versions
            .find(doc! {"spider_id": spider.to_string()})
            .with_options(FindOptions::builder().sort(doc! {"created_at": -1}).build())
            .await
            .map_err(backend)?;
        let mut versions = Vec::new();
        while let Some(doc) = cursor.try_next().await.map_err(backend)? {
            let hash = doc.get_str("hash").map_err(backend)?.to_owned();
            let version = stored(&hash, doc)?;
            versions.push((hash, version));
        }
        Ok(versions)
    }

    /// Removes one version; false if there was none.
    pub(super) async fn delete_version(&self, spider: SpiderId, hash: &str) -> Result<bool, Error> {
        let deleted = self
            .versions
            .delete_one(doc! {"_id": format!("{spider}:{hash}")})
            .await
            .map_err(backend)?;
        Ok(deleted.deleted_count > 0)
    }

    /// Removes the contents no version names. A content kept less than [`GC_GRACE`] ago stays: another
    /// master on this database may be uploading the version that will name it.
    pub(super) async fn remove_unnamed_blobs(&self) -> Result<u64, Error> {
        let named: HashSet<String> = self
            .versions
            .distinct("manifest.files.sha256", doc! {})
            .await
            .map_err(backend)?
            .into_iter()
            .filter_map(|sha| sha.as_str().map(str::to_owned))
            .collect();
        let cutoff = bson::DateTime::from_millis(to_millis(chrono::Utc::now() - GC_GRACE));
        let mut files = self
            .bucket
            .find(doc! {"uploadDate": {"$lt": cutoff}})
            .await
            .map_err(backend)?;
        let mut unnamed = Vec::new();
        while let Some(file) = files.try_next().await.map_err(backend)? {
            if !file
                .filename
                .as_ref()
                .is_some_and(|name| named.contains(name))
            {
                unnamed.push(file.id);
            }
        }
        for id in &unnamed {
            self.bucket.delete(id.clone()).await.map_err(backend)?;
        }
        Ok(unnamed.len() as u64)
    }

    pub(super) async fn read_blob(&self, sha256: &str) -> Result<Vec<u8>, Error> {
        use futures_util::io::AsyncReadExt;

        let mut stream = self
            .bucket
            .open_download_stream_by_name(sha256)
            .await
            .map_err(backend)?;
        let mut data = Vec::new();
        stream.read_to_end(&mut data).await.map_err(backend)?;
        Ok(data)
    }

    pub(super) fn send_blobs(
        &self,
        wanted: Vec<String>,
        tx: mpsc::Sender<Result<BlobChunk, Error>>,
    ) {
        let bucket = self.bucket.clone();
        tokio::spawn(async move {
            for sha in wanted {
                if let Err(err) = send_blob(&bucket, &sha, &tx).await {
                    let _ = tx.send(Err(err)).await;
                    return;
                }
            }
        });
    }
}

/// Sends one content in chunks of [`CHUNK_BYTES`]; stops quietly when the receiver is gone.
async fn send_blob(
    bucket: &GridFsBucket,
    sha256: &str,
    tx: &mpsc::Sender<Result<BlobChunk, Error>>,
) -> Result<(), Error> {
    use futures_util::io::AsyncReadExt;

    let mut stream = bucket
        .open_download_stream_by_name(sha256)
        .await
        .map_err(backend)?;
    loop {
        let mut data = vec![0u8; CHUNK_BYTES];
        let mut filled = 0;
        // GridFS hands out its own chunk size per read: fill a whole chunk, so `last` means the end.
        while filled < CHUNK_BYTES {
            let n = stream.read(&mut data[filled..]).await.map_err(backend)?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        data.truncate(filled);
        let last = filled < CHUNK_BYTES;
        let chunk = BlobChunk {
            sha256: sha256.to_owned(),
            data: data.into(),
            last,
        };
        if tx.send(Ok(chunk)).await.is_err() || last {
            return Ok(());
        }
    }
}

fn stored(hash: &str, mut doc: Document) -> Result<StoredVersion, Error> {
    let corrupt = |problem: String| Error::Corrupt(hash.to_owned(), problem);
    let created_at = doc
        .get_datetime("created_at")
        .map_err(|e| corrupt(e.to_string()))?
        .timestamp_millis();
    let manifest = doc
        .remove("manifest")
        .ok_or_else(|| corrupt("no manifest".into()))?;
    let manifest: Manifest =
        serde_json::from_value(bson_to_json(manifest)).map_err(|e| corrupt(e.to_string()))?;
    Ok(StoredVersion {
        created_at: from_millis(created_at),
        manifest,
    })
}
