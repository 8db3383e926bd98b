//! How the CLI writes its answers: as JSON with `--json`, else as tables and lines for people. Write
//! failures are returned, never panics: `arachne ... | head` closes the pipe early.

use std::io::Write;
use std::process::ExitCode;

use crate::Error;

/// `print!` that returns a write failure instead of panicking; [`crate::run`] takes a closed pipe as the
/// reader's choice.
macro_rules! out {
    ($($arg:tt)*) => {
        {
            use std::io::Write as _;
            write!(std::io::stdout().lock(), $($arg)*)?
        }
    };
}

/// `println!` that returns a write failure instead of panicking; see [`out`].
macro_rules! outln {
    ($($arg:tt)*) => {
        {
            use std::io::Write as _;
            writeln!(std::io::stdout().lock(), $($arg)*)?
        }
    };
}

/// Which form a command answers in.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Output {
    pub(crate) json: bool,
}

impl Output {
    /// Prints `value` as JSON with `--json`, else the way `human` writes it.
    pub(crate) fn show<T: serde::Serialize>(
        self,
        value: &T,
        human: impl FnOnce(&T) -> Result<(), Error>,
    ) -> Result<ExitCode, Error> {
        if self.json {
            print_json(value)?;
        } else {
            human(value)?;
        }
        Ok(ExitCode::SUCCESS)
    }
}

pub(crate) fn print_json<T: serde::Serialize>(value: &T) -> Result<(), Error> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value).map_err(std::io::Error::from)?;
    writeln!(out)?;
    Ok(())
}

/// Columns padded to their widest cell, two spaces apart.
pub(crate) fn print_table(header: &[&str], rows: Vec<Vec<String>>) -> Result<(), Error> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| -> Result<(), Error> {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        outln!("{}", padded.join("  ").trim_end());
        Ok(())
    };
    line(header.iter().map(|h| h.to_string()).collect())?;
    for row in rows {
        line(row)?;
    }
    Ok(())
}

pub(crate) fn or_dash<T: ToString>(value: Option<T>) -> String {
    value.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

/// The first 12 characters of a version hash, or `-` for none.
pub(crate) fn short(version: &str) -> &str {
    if version.is_empty() {
        "-"
    } else {
        &version[..version.len().min(12)]
    }
}
