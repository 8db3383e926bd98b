//! Checks over the source tree for the boundaries ARCHITECTURE.md states, so they hold without a reviewer:
//! the master's core speaks its own types (HTTP and gRPC only at its edges), no prost type leaves `proto`,
//! `shared` pulls in no runtime or database, errors are typed, and every file says what it owns.

use std::path::{Path, PathBuf};

/// Every crate of the workspace, by folder.
const CRATES: [&str; 9] = [
    "shared",
    "proto",
    "worker",
    "web-api",
    "web-api/types",
    "web-api/client",
    "web-api/cli",
    "master",
    "master/test-support",
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// Every `.rs` file under `dir`, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// The file's text before its unit tests, which may use whatever they check.
fn source(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    match text.find("#[cfg(test)]") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

/// `(file, line number, line)` of each line of the files that contains one of `needles`.
fn offending(files: &[PathBuf], needles: &[&str]) -> Vec<String> {
    lines_where(files, false, |line| {
        needles.iter().any(|n| line.contains(n))
    })
}

/// The lines of `files` (before their `#[cfg(test)]` module, with `outside_tests`) that `matches` picks, as
/// `path:line: text`.
fn lines_where(
    files: &[PathBuf],
    outside_tests: bool,
    matches: impl Fn(&str) -> bool,
) -> Vec<String> {
    let mut found = Vec::new();
    for file in files {
        let text = source(file);
        let code = match outside_tests {
            true => text.split("#[cfg(test)]").next().unwrap_or_default(),
            false => text.as_str(),
        };
        for (number, line) in code.lines().enumerate() {
            if matches(line) {
                found.push(format!(
                    "{}:{}: {}",
                    file.display(),
                    number + 1,
                    line.trim()
                ));
            }
        }
    }
    found
}

/// The files of the master that are its edges: the HTTP and gRPC adapters, the listeners, the wiring, and the
/// notification channels (an outgoing webhook is an HTTP request).
const MASTER_EDGES: [&str; 6] = [
    "lib.rs",
    "main.rs",
    "http.rs",
    "sessions.rs",
    "listen.rs",
    "notify/send.rs",
];

#[test]
fn the_master_s_core_uses_no_http_or_grpc_type() {
    let src = workspace().join("master/src");
    let core: Vec<PathBuf> = rust_files(&src)
        .into_iter()
        .filter(|f| {
            let relative = f.strip_prefix(&src).unwrap().to_str().unwrap();
            !MASTER_EDGES.contains(&relative)
        })
        .collect();
    assert!(core.len() > 10, "the core was not found: {core:?}");
    let found = offending(
        &core,
        &[
            "arachne_web_api",
            "axum",
            "hyper",
            "reqwest",
            "tonic",
            "prost",
            "Rejection",
            "StatusCode",
        ],
    );
    assert!(
        found.is_empty(),
        "HTTP or gRPC types in the master's core (convert them in http.rs or sessions.rs):\n{}",
        found.join("\n")
    );
}

#[test]
fn no_generated_protobuf_type_leaves_proto() {
    let mut files = Vec::new();
    for krate in CRATES.iter().filter(|c| **c != "proto") {
        files.extend(rust_files(&workspace().join(krate).join("src")));
    }
    let found = offending(&files, &["prost", "pb::", "arachne_proto::pb"]);
    assert!(
        found.is_empty(),
        "protobuf types outside proto:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_api_shows_records_as_its_own_types_not_the_stored_ones() {
    // The master's records, and the file of each.
    const RECORDS: [(&str, &str); 4] = [
        ("Task", "shared/src/task.rs"),
        ("Spider", "shared/src/spider.rs"),
        ("Node", "shared/src/node.rs"),
        ("Schedule", "shared/src/schedule.rs"),
    ];
    let mut files = Vec::new();
    for side in ["web-api/src", "web-api/client/src", "web-api/cli/src"] {
        files.extend(rust_files(&workspace().join(side)));
    }
    // Unit tests may build a record to convert it.
    let found = lines_where(&files, true, |line| {
        RECORDS.iter().any(|(record, _)| names_shared(line, record))
    });
    assert!(
        found.is_empty(),
        "the HTTP side names a master's record (use arachne_api_types' own type):\n{}",
        found.join("\n")
    );
    for (record, path) in RECORDS {
        let text = source(&workspace().join(path));
        let at = text.find(&format!("pub struct {record} {{")).unwrap();
        let derive = text[..at].rsplit("#[derive(").next().unwrap();
        assert!(
            !derive.contains("JsonSchema"),
            "the {record} record is an OpenAPI schema again: {derive}"
        );
    }
}

/// Whether `line` names `arachne_shared`'s `item`: by a path ending in it, or in a `use` list.
fn names_shared(line: &str, item: &str) -> bool {
    line.match_indices("arachne_shared::").any(|(at, prefix)| {
        let rest = &line[at + prefix.len()..];
        if let Some(list) = rest.strip_prefix('{') {
            let list = list.split('}').next().unwrap_or_default();
            return list
                .split(|c: char| !c.is_alphanumeric() && c != '_')
                .any(|word| word == item);
        }
        let path: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        path.rsplit("::").next() == Some(item)
    })
}

#[test]
fn shared_depends_on_no_runtime_transport_or_database() {
    let manifest = std::fs::read_to_string(workspace().join("shared/Cargo.toml")).unwrap();
    for crate_name in [
        "tokio", "tonic", "prost", "mongodb", "bson", "rusqlite", "axum",
    ] {
        assert!(
            !manifest
                .lines()
                .any(|l| l.trim_start().starts_with(crate_name)),
            "shared/Cargo.toml names {crate_name}"
        );
    }
}

#[test]
fn no_function_returns_a_bare_string_error() {
    let mut files = Vec::new();
    for krate in CRATES {
        files.extend(rust_files(&workspace().join(krate).join("src")));
    }
    let found = lines_where(&files, false, |line| {
        line.find("Result<")
            .is_some_and(|at| line[at..].contains(", String>"))
    });
    assert!(
        found.is_empty(),
        "Result<_, String> (give the failure a typed error):\n{}",
        found.join("\n")
    );
}

#[test]
fn every_source_file_says_what_it_owns() {
    let mut files = Vec::new();
    for krate in CRATES {
        for dir in ["src", "tests", "examples"] {
            let dir = workspace().join(krate).join(dir);
            if dir.is_dir() {
                files.extend(rust_files(&dir));
            }
        }
    }
    let missing: Vec<String> = files
        .iter()
        .filter(|f| {
            !std::fs::read_to_string(f)
                .unwrap()
                .trim_start()
                .starts_with("//!")
        })
        .map(|f| f.display().to_string())
        .collect();
    assert!(
        missing.is_empty(),
        "files without a //! header:\n{}",
        missing.join("\n")
    );
}
