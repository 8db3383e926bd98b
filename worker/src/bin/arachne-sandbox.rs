//! `arachne-sandbox`: the sandbox helper every spider starts through (see `arachne_worker::sandbox`), as a
//! binary of its own: small, with the system allocator, so the extra `exec` per run costs little.

fn main() {
    arachne_worker::sandbox::run_if_invoked();
    eprintln!(
        "arachne-sandbox is started by arachne-worker (and arachne-master) for each spider; it is not run by hand"
    );
    std::process::exit(2);
}
