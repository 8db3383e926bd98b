//! What a user uploads as a spider's new files, spooled to unnamed files on disk: an archive, or single files.

/// A new version of a spider's files: a `.tar.gz` or `.zip` archive, or single files. Contents are spooled to
/// unnamed files on disk as they arrive, never held whole in memory.
#[derive(Debug)]
pub enum Upload {
    Archive(Spool),
    Files(Vec<UploadedFile>),
}

impl Upload {
    /// An archive upload from bytes already in memory (a packed folder).
    pub fn archive(bytes: &[u8]) -> std::io::Result<Self> {
        Spool::from_bytes(bytes, None).map(Upload::Archive)
    }
}

/// One file of a multipart upload.
#[derive(Debug)]
pub struct UploadedFile {
    /// Relative to the spider's folder, with `/` separators.
    pub path: String,
    pub data: Spool,
    /// Unix permission bits; 0644 when not given.
    pub mode: Option<u32>,
}

/// Content received into an unnamed file (gone from the disk when dropped), read from its start.
#[derive(Debug)]
pub struct Spool {
    pub file: std::fs::File,
    pub len: u64,
}

impl Spool {
    /// An empty spool in `dir` (the system's temporary folder when `None`).
    pub fn create(dir: Option<&std::path::Path>) -> std::io::Result<Self> {
        let file = match dir {
            Some(dir) => tempfile::tempfile_in(dir)?,
            None => tempfile::tempfile()?,
        };
        Ok(Self { file, len: 0 })
    }

    /// A spool holding `bytes`.
    pub fn from_bytes(bytes: &[u8], dir: Option<&std::path::Path>) -> std::io::Result<Self> {
        use std::io::{Seek, Write};
        let mut spool = Self::create(dir)?;
        spool.file.write_all(bytes)?;
        spool.file.rewind()?;
        spool.len = bytes.len() as u64;
        Ok(spool)
    }
}
