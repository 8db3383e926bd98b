//! Spider routes: create and read spiders, upload their files (spooled to disk as they arrive), and list,
//! pick and read versions.

use std::sync::Arc;

use axum::Json;
use axum::extract::multipart::MultipartError;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, Multipart, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;

use crate::{Error, Result};
use arachne_api_types::{
    CreateSpider, DeleteSpiderQuery, ScrapySpiders, Spool, Upload, UploadedFile, VersionQuery,
};

use super::*;

pub(super) async fn list_spiders(State(api): State<Api>) -> Result<impl IntoResponse> {
    Ok(Json(api.list_spiders().await?))
}

pub(super) async fn spider_folders(State(api): State<Api>) -> Result<impl IntoResponse> {
    Ok(Json(api.spider_folders().await?))
}

pub(super) async fn put_spider(
    State(api): State<Api>,
    body: Result<Json<CreateSpider>, JsonRejection>,
) -> Result<impl IntoResponse> {
    Ok((
        StatusCode::CREATED,
        Json(api.put_spider(json(body)?).await?),
    ))
}

pub(super) async fn get_spider(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> Result<impl IntoResponse> {
    Ok(Json(api.get_spider(&name).await?))
}

/// Where an upload is spooled, and how large it may be.
pub(super) struct SpoolPlace {
    pub(super) dir: Option<std::path::PathBuf>,
    pub(super) max_bytes: u64,
}

impl SpoolPlace {
    fn create(&self) -> Result<tokio::fs::File> {
        Spool::create(self.dir.as_deref())
            .map(|spool| tokio::fs::File::from_std(spool.file))
            .map_err(|e| Error::Internal(format!("cannot spool the upload: {e}")))
    }

    /// Writes `chunk` to `file`, refusing what would take the upload (`*total` so far) over the limit.
    async fn write(&self, file: &mut tokio::fs::File, total: &mut u64, chunk: &[u8]) -> Result<()> {
        use tokio::io::AsyncWriteExt;
        *total += chunk.len() as u64;
        if *total > self.max_bytes {
            return Err(Error::PayloadTooLarge(
                "the upload is over the upload size limit".into(),
            ));
        }
        file.write_all(chunk)
            .await
            .map_err(|e| Error::Internal(format!("cannot spool the upload: {e}")))
    }

    /// The spooled content, ready to be read from its start.
    async fn finish(file: tokio::fs::File, len: u64) -> Result<Spool> {
        use tokio::io::AsyncSeekExt;
        let mut file = file;
        file.rewind()
            .await
            .map_err(|e| Error::Internal(format!("cannot spool the upload: {e}")))?;
        Ok(Spool {
            file: file.into_std().await,
            len,
        })
    }
}

pub(super) async fn upload_files(
    State(api): State<Api>,
    Path(name): Path<String>,
    request: axum::extract::Request,
    place: Arc<SpoolPlace>,
) -> Result<impl IntoResponse> {
    use futures_util::StreamExt;
    let multipart = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    let too_large = || Error::PayloadTooLarge("the upload is over the upload size limit".into());
    // Spooled to disk as it arrives: six uploads of 255 MiB once held 2 GB of memory.
    let mut total = 0u64;
    let upload = if multipart {
        let bad = |e: MultipartError| match e.status() {
            StatusCode::PAYLOAD_TOO_LARGE => too_large(),
            _ => Error::BadRequest(format!("invalid multipart upload: {}", e.body_text())),
        };
        let mut form = Multipart::from_request(request, &()).await.map_err(|e| {
            Error::BadRequest(format!("invalid multipart upload: {}", e.body_text()))
        })?;
        let mut files = Vec::new();
        while let Some(mut field) = form.next_field().await.map_err(bad)? {
            let field_name = field.name().unwrap_or_default().to_owned();
            let Some(path) = field.file_name().map(str::to_owned) else {
                return Err(Error::BadRequest(format!(
                    "form field {field_name:?} is not a file: every part needs a file name (its path)"
                )));
            };
            // A part named `executable` keeps the executable bit; multipart has no other way to say so.
            let mode = (field_name == "executable").then_some(0o755);
            let mut file = place.create()?;
            let start = total;
            while let Some(chunk) = field.chunk().await.map_err(bad)? {
                place.write(&mut file, &mut total, &chunk).await?;
            }
            let data = SpoolPlace::finish(file, total - start).await?;
            files.push(UploadedFile { path, data, mode });
        }
        if files.is_empty() {
            return Err(Error::BadRequest(
                "empty upload: the form holds no files".into(),
            ));
        }
        Upload::Files(files)
    } else {
        let mut file = place.create()?;
        let mut body = request.into_body().into_data_stream();
        while let Some(chunk) = body.next().await {
            let chunk =
                chunk.map_err(|e| Error::BadRequest(format!("reading the upload failed: {e}")))?;
            place.write(&mut file, &mut total, &chunk).await?;
        }
        if total == 0 {
            return Err(Error::BadRequest(
                "empty upload: send the spider's files as a .tar.gz or .zip archive, or as multipart files".into(),
            ));
        }
        Upload::Archive(SpoolPlace::finish(file, total).await?)
    };
    Ok(Json(api.upload_files(&name, upload).await?))
}

pub(super) async fn list_versions(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> Result<impl IntoResponse> {
    Ok(Json(api.list_versions(&name).await?))
}

pub(super) async fn scrapy_spiders(
    State(api): State<Api>,
    Path(name): Path<String>,
    q: Result<Query<VersionQuery>, QueryRejection>,
) -> Result<impl IntoResponse> {
    let version = query(q)?.version;
    let spiders = api.scrapy_spiders(&name, version.as_deref()).await?;
    Ok(Json(ScrapySpiders { spiders }))
}

pub(super) async fn set_current_version(
    State(api): State<Api>,
    Path((name, version)): Path<(String, String)>,
) -> Result<impl IntoResponse> {
    Ok(Json(api.set_current_version(&name, &version).await?))
}

pub(super) async fn delete_version(
    State(api): State<Api>,
    Path((name, version)): Path<(String, String)>,
) -> Result<impl IntoResponse> {
    api.delete_version(&name, &version).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn delete_spider(
    State(api): State<Api>,
    Path(name): Path<String>,
    q: Result<Query<DeleteSpiderQuery>, QueryRejection>,
) -> Result<impl IntoResponse> {
    Ok(Json(api.delete_spider(&name, query(q)?.tasks).await?))
}

pub(super) async fn list_files(
    State(api): State<Api>,
    Path(name): Path<String>,
    q: Result<Query<VersionQuery>, QueryRejection>,
) -> Result<impl IntoResponse> {
    Ok(Json(api.list_files(&name, query(q)?.version).await?))
}

pub(super) async fn read_file(
    State(api): State<Api>,
    Path((name, path)): Path<(String, String)>,
    q: Result<Query<VersionQuery>, QueryRejection>,
) -> Result<impl IntoResponse> {
    let content = api.read_file(&name, &path, query(q)?.version).await?;
    Ok((
        [(header::CONTENT_TYPE, "application/octet-stream")],
        content,
    ))
}
