//! What a spider upload leaves out ([`IgnoreRules`]: built-in folders and `.arachneignore`, gitignore syntax),
//! and packing a spider folder into the `.tar.gz` archive the upload route takes. The master applies the same
//! rules to every upload and checks everything else on its side.

use std::io::Write;
use std::path::{Path, PathBuf};

use ignore::gitignore::{Gitignore, GitignoreBuilder};

/// Folders never uploaded, wherever they are: version control, dependency folders and caches.
const IGNORED_DIRS: [&str; 4] = [".git", "node_modules", "__pycache__", ".venv"];
/// Files never uploaded.
const IGNORED_SUFFIXES: [&str; 1] = [".pyc"];

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
    #[error(transparent)]
    BadIgnore(#[from] crate::Invalid),
}

/// The paths an upload leaves out: the built-in ones, and those a `.arachneignore` at the spider's root lists.
#[derive(Debug, Clone)]
pub struct IgnoreRules {
    user: Option<Gitignore>,
}

impl Default for IgnoreRules {
    fn default() -> Self {
        Self::builtin()
    }
}

impl IgnoreRules {
    /// The file at a spider's root whose patterns (gitignore syntax) are left out of uploads.
    pub const FILE: &'static str = ".arachneignore";

    /// Only the built-in rules.
    pub fn builtin() -> Self {
        Self { user: None }
    }

    /// The built-in rules plus the patterns of a `.arachneignore`. A bad pattern is an error naming its line.
    pub fn parse(text: &str) -> Result<Self, crate::Invalid> {
        let mut builder = GitignoreBuilder::new("");
        for (number, line) in text.lines().enumerate() {
            builder
                .add_line(None, line)
                .map_err(|e| format!("{} line {}: {e}", Self::FILE, number + 1))?;
        }
        let user = builder
            .build()
            .map_err(|e| format!("{}: {e}", Self::FILE))?;
        Ok(Self { user: Some(user) })
    }

    /// Whether the file at `path` (relative, `/`-separated) is left out, by its own name or a folder's.
    pub fn is_ignored(&self, path: &str) -> bool {
        let (dirs, name) = path.rsplit_once('/').unwrap_or(("", path));
        let folder_ignored = !dirs.is_empty()
            && dirs
                .match_indices('/')
                .map(|(at, _)| &dirs[..at])
                .chain([dirs])
                .any(|folder| self.is_ignored_dir(folder));
        folder_ignored
            || IGNORED_SUFFIXES.iter().any(|s| name.ends_with(s))
            || self
                .user
                .as_ref()
                .is_some_and(|u| u.matched(path, false).is_ignore())
    }

    /// Whether the folder at `path` is left out as a whole (so a walk need not enter it).
    fn is_ignored_dir(&self, path: &str) -> bool {
        let name = path.rsplit('/').next().unwrap_or(path);
        IGNORED_DIRS.contains(&name)
            || self
                .user
                .as_ref()
                .is_some_and(|u| u.matched(path, true).is_ignore())
    }
}

/// Packs the files under `dir` (relative paths, permission bits kept) into a gzip-compressed tar archive,
/// leaving out what [`IgnoreRules`] (with the folder's `.arachneignore`) leaves out.
pub fn pack_dir(dir: &Path) -> Result<Vec<u8>, Error> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| Error::Io { path, source }
    };
    let root = dir.canonicalize().map_err(io(dir))?;
    if !root.is_dir() {
        return Err(Error::NotADir(dir.to_owned()));
    }
    let rules = match std::fs::read_to_string(root.join(IgnoreRules::FILE)) {
        Ok(text) => IgnoreRules::parse(&text)?,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => IgnoreRules::builtin(),
        Err(err) => return Err(io(&root.join(IgnoreRules::FILE))(err)),
    };
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
            let relative = path.strip_prefix(&root).expect("walked below root");
            let relative_text = relative.to_string_lossy().replace('\\', "/");
            let meta = std::fs::metadata(&path).map_err(io(&path))?;
            if entry.file_type().map_err(io(&path))?.is_symlink() {
                let target = path.canonicalize().map_err(io(&path))?;
                if !target.starts_with(&root) {
                    return Err(Error::EscapingLink(path));
                }
            }
            if meta.is_dir() {
                if !rules.is_ignored_dir(&relative_text) {
                    stack.push(path);
                }
                continue;
            }
            if !meta.is_file() || rules.is_ignored(&relative_text) {
                continue;
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_and_user_rules() {
        let rules =
            IgnoreRules::parse("# comment\n*.log\nbuild/\n/secret.txt\n!keep.log\n").unwrap();
        for ignored in [
            ".git/config",
            "a/node_modules/x.js",
            "pkg/__pycache__/m.cpython.pyc",
            "m.pyc",
            "out.log",
            "deep/er/out.log",
            "build/x",
            "src/build/y",
            "secret.txt",
        ] {
            assert!(rules.is_ignored(ignored), "{ignored} should be ignored");
        }
        for kept in [
            "main.py",
            "keep.log",
            "a/secret.txt",
            "builder.py",
            ".gitignore",
        ] {
            assert!(!rules.is_ignored(kept), "{kept} should be kept");
        }
        assert!(!IgnoreRules::builtin().is_ignored("out.log"));
    }

    #[test]
    fn pack_dir_leaves_out_ignored_files() {
        let dir = tempfile::tempdir().unwrap();
        for (path, text) in [
            ("main.py", "print(1)"),
            (".arachneignore", "data/\n"),
            ("data/big.csv", "x"),
            (".git/HEAD", "ref"),
            ("lib/util.py", "pass"),
        ] {
            let full = dir.path().join(path);
            std::fs::create_dir_all(full.parent().unwrap()).unwrap();
            std::fs::write(full, text).unwrap();
        }
        let archive = pack_dir(dir.path()).unwrap();
        let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(&archive[..]));
        let mut names: Vec<String> = tar
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, [".arachneignore", "lib/util.py", "main.py"]);
    }
}
