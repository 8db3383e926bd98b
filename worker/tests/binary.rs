//! The `arachne-worker` binary refuses bad configuration with a clear message instead of starting.

#[test]
fn zero_runners_is_refused_with_a_clear_error() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_arachne-worker"))
        .args(["--max-runners", "0", "--name", "w", "--work-dir"])
        .arg(std::env::temp_dir().join("arachne-worker-test-unused"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("max runners must be at least 1"),
        "{stderr}"
    );
}

#[test]
fn a_node_name_that_could_escape_a_path_is_refused() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_arachne-worker"))
        .args(["--name", "../x", "--work-dir"])
        .arg(std::env::temp_dir().join("arachne-worker-test-unused"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("invalid node name"), "{stderr}");
}
