//! Spider versions as content: a version is a manifest (path, size, mode and sha256 of every file), and it is
//! named by the sha256 of that manifest. Files themselves are stored once per content, on master and worker.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One file of a version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct FileEntry {
    /// Relative to the spider's folder, with `/` separators.
    pub path: String,
    pub size: u64,
    /// Unix permission bits.
    pub mode: u32,
    /// Hex sha256 of the content; also the content's name in a blob store.
    pub sha256: String,
}

/// The files of one version, sorted by path.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Manifest {
    pub files: Vec<FileEntry>,
}

impl Manifest {
    /// Builds a manifest from entries in any order.
    pub fn new(mut files: Vec<FileEntry>) -> Self {
        files.sort_by(|a, b| a.path.cmp(&b.path));
        Self { files }
    }

    /// The version name: the sha256 of one `path\tsize\tmode(octal)\tsha256\n` line per file, in path order.
    pub fn hash(&self) -> String {
        let mut hasher = Sha256::new();
        for f in &self.files {
            hasher.update(format!(
                "{}\t{}\t{:o}\t{}\n",
                f.path, f.size, f.mode, f.sha256
            ));
        }
        hex(&hasher.finalize())
    }

    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    pub fn get(&self, path: &str) -> Option<&FileEntry> {
        self.files
            .binary_search_by(|f| f.path.as_str().cmp(path))
            .ok()
            .map(|i| &self.files[i])
    }
}

/// One stored version of a spider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct VersionInfo {
    pub hash: String,
    pub file_count: u64,
    pub total_bytes: u64,
    pub created_at: DateTime<Utc>,
    /// Whether runs use this version unless they name another.
    #[serde(default)]
    pub current: bool,
    /// In the answer to the upload that made it: the one folder every file of the upload was in, whose
    /// contents became the version's files (an archive of a spider's folder rather than of its contents).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unwrapped: Option<String>,
}

/// Whether `name` is a well-formed content name: 64 lowercase hex digits.
pub fn is_sha256(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 0xf) as usize] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, sha: char) -> FileEntry {
        FileEntry {
            path: path.into(),
            size: 1,
            mode: 0o644,
            sha256: sha.to_string().repeat(64),
        }
    }

    #[test]
    fn the_hash_ignores_input_order_and_sees_every_field() {
        let a = Manifest::new(vec![entry("b", 'b'), entry("a", 'a')]);
        let b = Manifest::new(vec![entry("a", 'a'), entry("b", 'b')]);
        assert_eq!(a.hash(), b.hash());
        assert!(is_sha256(&a.hash()));
        let mut c = b;
        c.files[0].mode = 0o755;
        assert_ne!(a.hash(), c.hash());
        assert_eq!(a.get("b").unwrap().sha256, "b".repeat(64));
        assert!(a.get("c").is_none());
        assert_eq!(a.total_bytes(), 2);
    }

    #[test]
    fn content_names_are_checked() {
        assert!(is_sha256(&"0a".repeat(32)));
        assert!(!is_sha256("../etc/passwd"));
        assert!(!is_sha256(&"A".repeat(64)));
        assert_eq!(hex(&[0x0f, 0xa0]), "0fa0");
    }
}
