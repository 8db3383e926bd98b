//! The `arachne` CLI fails clearly, with a non-zero exit, when the server cannot be reached or input is bad.

use std::process::Command;

fn arachne(args: &[&str]) -> std::process::Output {
    // Port 9 on loopback (discard) has no HTTP server, so connecting fails at once.
    Command::new(env!("CARGO_BIN_EXE_arachne"))
        .args(["--server", "http://127.0.0.1:9"])
        .args(args)
        .env_remove("ARACHNE_SERVER")
        .output()
        .unwrap()
}

#[test]
fn an_unreachable_server_is_named_in_the_error() {
    let output = arachne(&["task", "list"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot reach the server at http://127.0.0.1:9"),
        "{stderr}"
    );
}

#[test]
fn a_malformed_task_id_is_refused_before_any_request() {
    let output = arachne(&["logs", "12345"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("invalid task id \"12345\""), "{stderr}");
}
