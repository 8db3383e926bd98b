//! `arachne`: the command-line client. Parses arguments and runs the CLI library.

use std::process::ExitCode;

use arachne_cli::{Cli, run};
use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    run(Cli::parse()).await
}
