//! Checking an upload: its files are read one at a time from a `.tar.gz`, a `.zip` or a list of single files,
//! checked against the rules (paths, links, duplicates, limits) and written to a staging folder with their
//! sha256, before any of them is kept.

use std::collections::HashSet;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use arachne_shared::archive::IgnoreRules;
use arachne_shared::files::{FileEntry, hex};
use arachne_shared::spider::validate_relative_path;
use arachne_shared::upload::{Spool, Upload};
use sha2::{Digest, Sha256};

use super::{Error, UploadLimits, io};

/// Unpacks and checks `upload` into `staging`.
pub(super) fn unpack(
    upload: Upload,
    staging: &Path,
    limits: &UploadLimits,
    cmd: &str,
) -> Result<Unpacked, Error> {
    let mut sink = Sink::new(staging, limits);
    match upload {
        Upload::Archive(spool) => {
            let Spool { mut file, len } = spool;
            let unreadable =
                |e: std::io::Error| Error::BadArchive(format!("the upload cannot be read ({e})"));
            let mut magic = [0u8; 2];
            let read = file.read(&mut magic).map_err(unreadable)?;
            file.rewind().map_err(unreadable)?;
            match &magic[..read] {
                [0x1f, 0x8b] => read_tar(file, &mut sink)?,
                b"PK" => read_zip(file, len, &mut sink)?,
                [] => return Err(Error::BadArchive("the upload is empty".into())),
                _ => {
                    return Err(Error::BadArchive(
                        "not a .tar.gz or .zip archive (send a spider folder as one of those, or as files)"
                            .into(),
                    ));
                }
            }
        }
        Upload::Files(files) => {
            for file in files {
                let mode = file.mode.unwrap_or(0o644);
                let mut content = file.data.file;
                sink.add(&file.path, mode, &mut content)?;
            }
        }
    }
    sink.finish(cmd)
}

/// One checked file of an upload, written to a temporary file.
pub(super) struct Staged {
    pub(super) entry: FileEntry,
    /// Where the content waits until it is kept.
    pub(super) temp: PathBuf,
}

/// Takes an upload's files one by one and enforces the rules on them.
struct Sink<'a> {
    staging: &'a Path,
    limits: &'a UploadLimits,
    files: Vec<Staged>,
    paths: HashSet<String>,
    total: u64,
}

impl<'a> Sink<'a> {
    fn new(staging: &'a Path, limits: &'a UploadLimits) -> Self {
        Self {
            staging,
            limits,
            files: Vec::new(),
            paths: HashSet::new(),
            total: 0,
        }
    }

    /// Checks and stages one file, unless the built-in rules leave it out.
    fn add(&mut self, raw_path: &str, mode: u32, content: &mut dyn Read) -> Result<(), Error> {
        let path = raw_path.trim_start_matches("./").to_owned();
        validate_relative_path(&path).map_err(|e| Error::BadArchive(e.0))?;
        if IgnoreRules::builtin().is_ignored(&path) {
            return Ok(());
        }
        if !self.paths.insert(path.clone()) {
            return Err(Error::BadArchive(format!(
                "{path} appears twice in the upload"
            )));
        }
        if self.files.len() >= self.limits.max_files {
            return Err(Error::TooLarge(format!(
                "more than {} files",
                self.limits.max_files
            )));
        }
        let temp = self.staging.join(self.files.len().to_string());
        let mut file = std::fs::File::create(&temp).map_err(io(&temp))?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut buffer = vec![0u8; 64 * 1024];
        // Counted while reading, never taken from a header, so a lying archive cannot smuggle a bomb in.
        loop {
            let n = content.read(&mut buffer).map_err(|e| {
                Error::BadArchive(format!("{path} cannot be read from the upload ({e})"))
            })?;
            if n == 0 {
                break;
            }
            size += n as u64;
            self.total += n as u64;
            if self.total > self.limits.max_unpacked_bytes {
                return Err(Error::TooLarge(format!(
                    "more than {} bytes once unpacked",
                    self.limits.max_unpacked_bytes
                )));
            }
            hasher.update(&buffer[..n]);
            file.write_all(&buffer[..n]).map_err(io(&temp))?;
        }
        self.files.push(Staged {
            entry: FileEntry {
                path,
                size,
                mode: (mode & 0o777) | 0o400,
                sha256: hex(&hasher.finalize()),
            },
            temp,
        });
        Ok(())
    }

    /// Unwraps a lone top-level folder (unless `cmd`, the command the version runs, names a path in it: then
    /// it is the spider's own layout), applies the upload's own `.arachneignore` and checks that the files form
    /// a folder.
    fn finish(mut self, cmd: &str) -> Result<Unpacked, Error> {
        let unwrapped =
            lone_folder(&self.files).filter(|folder| !cmd.contains(&format!("{folder}/")));
        if let Some(folder) = &unwrapped {
            for file in &mut self.files {
                file.entry.path = file.entry.path[folder.len() + 1..].to_owned();
            }
        }
        let rules = match self
            .files
            .iter()
            .find(|f| f.entry.path == IgnoreRules::FILE)
        {
            Some(file) => {
                let text = std::fs::read_to_string(&file.temp).map_err(io(&file.temp))?;
                IgnoreRules::parse(&text).map_err(|e| Error::BadArchive(e.0))?
            }
            None => IgnoreRules::builtin(),
        };
        let kept: Vec<Staged> = self
            .files
            .into_iter()
            .filter(|f| !rules.is_ignored(&f.entry.path))
            .collect();
        if kept.is_empty() {
            return Err(Error::BadArchive("the upload holds no files".into()));
        }
        let paths: HashSet<&str> = kept.iter().map(|f| f.entry.path.as_str()).collect();
        for file in &kept {
            let mut parent = file.entry.path.as_str();
            while let Some((dir, _)) = parent.rsplit_once('/') {
                if paths.contains(dir) {
                    return Err(Error::BadArchive(format!(
                        "{dir} is both a file and a folder"
                    )));
                }
                parent = dir;
            }
        }
        Ok(Unpacked {
            files: kept,
            unwrapped,
        })
    }
}

/// The one folder every file of an upload is in, when there is one: an archive made of a spider's folder
/// rather than of its contents (`zip -r s1.zip s1`), whose command would otherwise not find its files.
fn lone_folder(files: &[Staged]) -> Option<String> {
    let first = files.first()?.entry.path.split_once('/')?.0;
    files
        .iter()
        .all(|f| {
            f.entry
                .path
                .split_once('/')
                .is_some_and(|(top, _)| top == first)
        })
        .then(|| first.to_owned())
}

/// An upload's checked files, and the lone top-level folder they were taken out of, if any.
pub(super) struct Unpacked {
    pub(super) files: Vec<Staged>,
    pub(super) unwrapped: Option<String>,
}

fn read_tar(file: std::fs::File, sink: &mut Sink<'_>) -> Result<(), Error> {
    let bad = |e: std::io::Error| Error::BadArchive(format!("not a valid .tar.gz archive ({e})"));
    let reader = std::io::BufReader::new(file);
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(reader));
    for entry in tar.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let raw_path = entry.path().map_err(bad)?.to_string_lossy().into_owned();
        let path = raw_path
            .trim_start_matches("./")
            .trim_end_matches('/')
            .to_owned();
        let kind = entry.header().entry_type();
        if kind.is_dir() || path.is_empty() {
            continue;
        }
        validate_relative_path(&path).map_err(|e| Error::BadArchive(e.0))?;
        if kind.is_symlink() || kind.is_hard_link() {
            return Err(Error::BadArchive(format!(
                "{path} is a link; links are not allowed in spiders"
            )));
        }
        if !kind.is_file() {
            return Err(Error::BadArchive(format!("{path} is not a regular file")));
        }
        let mode = entry.header().mode().unwrap_or(0o644);
        sink.add(&path, mode, &mut entry)?;
    }
    Ok(())
}

fn read_zip(mut file: std::fs::File, len: u64, sink: &mut Sink<'_>) -> Result<(), Error> {
    let bad =
        |e: zip::result::ZipError| Error::BadArchive(format!("not a valid .zip archive ({e})"));
    let unreadable =
        |e: std::io::Error| Error::BadArchive(format!("the upload cannot be read ({e})"));
    // Counted before the archive is indexed: an index of a million empty entries alone took 880 MB.
    if let Some(entries) = declared_entries(&mut file, len).map_err(unreadable)?
        && entries > sink.limits.max_files
    {
        // 0xFFFF defers to a zip64 record: at least that many.
        let or_more = if entries == 0xFFFF { " or more" } else { "" };
        return Err(Error::TooLarge(format!(
            "{entries}{or_more} entries, more than {} files",
            sink.limits.max_files
        )));
    }
    // Read at positions, so this handle and the archive's share no file offset.
    let directory = file.try_clone().map_err(unreadable)?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file)).map_err(bad)?;
    // The zip crate keeps one entry per name, so a second `main.py` would vanish without a word: the names
    // are read from the central directory itself.
    let names = central_directory_names(
        &directory,
        zip.central_directory_start(),
        sink.limits.max_files,
    );
    let mut seen = HashSet::new();
    for name in names {
        let name = String::from_utf8_lossy(&name);
        let name = name.trim_start_matches("./");
        if !name.ends_with('/') && !seen.insert(name.to_owned()) {
            return Err(Error::BadArchive(format!(
                "{name} appears twice in the upload"
            )));
        }
    }
    for index in 0..zip.len() {
        let mut entry = zip.by_index(index).map_err(bad)?;
        // The raw name, not `enclosed_name`, so a hostile path is reported rather than quietly rewritten.
        let raw_path = String::from_utf8_lossy(entry.name_raw()).into_owned();
        let path = raw_path
            .trim_start_matches("./")
            .trim_end_matches('/')
            .to_owned();
        if entry.is_dir() || path.is_empty() {
            continue;
        }
        validate_relative_path(&path).map_err(|e| Error::BadArchive(e.0))?;
        if entry.is_symlink() {
            return Err(Error::BadArchive(format!(
                "{path} is a link; links are not allowed in spiders"
            )));
        }
        let mode = entry.unix_mode().unwrap_or(0o644);
        if mode & 0o170000 != 0 && mode & 0o170000 != 0o100000 {
            return Err(Error::BadArchive(format!("{path} is not a regular file")));
        }
        sink.add(&path, mode, &mut entry)?;
    }
    Ok(())
}

/// The entry count a zip's end-of-central-directory record declares (0xFFFF when it defers to zip64).
fn declared_entries(file: &mut std::fs::File, len: u64) -> std::io::Result<Option<usize>> {
    const EOCD: &[u8] = b"PK\x05\x06";
    // The record is 22 bytes plus a comment of at most 64 KiB, at the very end.
    let from = len.saturating_sub(22 + 0xFFFF);
    let mut tail = Vec::new();
    file.seek(SeekFrom::Start(from))?;
    Read::by_ref(file).take(len - from).read_to_end(&mut tail)?;
    file.rewind()?;
    let Some(at) = tail.windows(4).rposition(|w| w == EOCD) else {
        return Ok(None);
    };
    Ok(tail
        .get(at..at + 22)
        .map(|record| u16::from_le_bytes([record[10], record[11]]) as usize))
}

/// The file names of the zip's central directory, in order, duplicates included; at most `max` + 1 of them
/// (one more than allowed is enough to refuse the upload).
fn central_directory_names(file: &std::fs::File, start: u64, max: usize) -> Vec<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    const HEADER: &[u8] = b"PK\x01\x02";
    let mut names = Vec::new();
    let mut at = start;
    let mut fixed = [0u8; 46];
    while names.len() <= max && file.read_exact_at(&mut fixed, at).is_ok() && &fixed[..4] == HEADER
    {
        let field = |i: usize| u16::from_le_bytes([fixed[i], fixed[i + 1]]) as u64;
        let (name, extra, comment) = (field(28), field(30), field(32));
        let mut raw = vec![0u8; name as usize];
        if file.read_exact_at(&mut raw, at + 46).is_err() {
            break;
        }
        names.push(raw);
        at += 46 + name + extra + comment;
    }
    names
}
