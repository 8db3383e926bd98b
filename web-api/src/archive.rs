//! Packs a spider folder into the `.tar.gz` archive the upload route takes. The master unpacks and checks it
//! on its side; this side only decides what to leave out.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Folders and files never uploaded: version control, dependency folders and caches.
const IGNORED_DIRS: [&str; 5] = [
    ".git",
    "node_modules",
    "__pycache__",
    ".venv",
    ".mypy_cache",
];
const IGNORED_SUFFIXES: [&str; 3] = [".pyc", ".swp", ".tmp"];

/// Errors of packing a folder.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} is a symlink pointing outside the spider folder")]
    EscapingLink(PathBuf),
    #[error("{0} is not a folder")]
    NotADir(PathBuf),
}

/// Packs the files under `dir` (relative paths, permission bits kept) into a gzip-compressed tar archive.
pub fn pack_dir(dir: &Path) -> Result<Vec<u8>, Error> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| Error::Io { path, source }
    };
    let root = dir.canonicalize().map_err(io(dir))?;
    if !root.is_dir() {
        return Err(Error::NotADir(dir.to_owned()));
    }
    let encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut builder = tar::Builder::new(encoder);
    builder.follow_symlinks(true);
    let mut stack = vec![root.clone()];
    while let Some(current) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&current)
            .map_err(io(&current))?
            .collect::<Result<_, _>>()
            .map_err(io(&current))?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let meta = std::fs::metadata(&path).map_err(io(&path))?;
            if entry.file_type().map_err(io(&path))?.is_symlink() {
                let target = path.canonicalize().map_err(io(&path))?;
                if !target.starts_with(&root) {
                    return Err(Error::EscapingLink(path));
                }
            }
            if meta.is_dir() {
                if !IGNORED_DIRS.contains(&name.as_str()) {
                    stack.push(path);
                }
                continue;
            }
            if !meta.is_file() || IGNORED_SUFFIXES.iter().any(|s| name.ends_with(s)) {
                continue;
            }
            let relative = path.strip_prefix(&root).expect("walked below root");
            builder
                .append_path_with_name(&path, relative)
                .map_err(io(&path))?;
        }
    }
    let encoder = builder.into_inner().map_err(io(dir))?;
    let mut bytes = encoder.finish().map_err(io(dir))?;
    bytes.flush().map_err(io(dir))?;
    Ok(bytes)
}
