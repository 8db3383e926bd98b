//! Reads a child's output line by line with a hard cap on line length. A line longer than the cap is cut, and
//! the rest of it is counted and skipped, so no line length can stall the reader or grow its memory: the
//! fault that hangs Crawlab's runner on a 64 KiB line.

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// One line read, without its newline.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct RawLine {
    pub(crate) bytes: Vec<u8>,
    /// How many bytes past the cap were skipped.
    pub(crate) truncated: usize,
}

/// Reads capped lines from `reader`.
pub(crate) struct LineReader<R> {
    reader: R,
    max_bytes: usize,
}

impl<R: AsyncBufRead + Unpin> LineReader<R> {
    pub(crate) fn new(reader: R, max_bytes: usize) -> Self {
        Self { reader, max_bytes }
    }

    /// The next line, or `None` at end of input. A last line without a newline is still returned.
    pub(crate) async fn next_line(&mut self) -> std::io::Result<Option<RawLine>> {
        let mut bytes = Vec::new();
        let mut truncated = 0usize;
        loop {
            let available = self.reader.fill_buf().await?;
            if available.is_empty() {
                return Ok((!bytes.is_empty() || truncated > 0).then(|| finish(bytes, truncated)));
            }
            let (chunk, found) = match available.iter().position(|&b| b == b'\n') {
                Some(end) => (&available[..end], true),
                None => (available, false),
            };
            let room = self.max_bytes.saturating_sub(bytes.len());
            let kept = chunk.len().min(room);
            bytes.extend_from_slice(&chunk[..kept]);
            truncated += chunk.len() - kept;
            let consumed = chunk.len() + usize::from(found);
            self.reader.consume(consumed);
            if found {
                return Ok(Some(finish(bytes, truncated)));
            }
        }
    }
}

fn finish(mut bytes: Vec<u8>, truncated: usize) -> RawLine {
    if truncated == 0 && bytes.last() == Some(&b'\r') {
        bytes.pop();
    }
    RawLine { bytes, truncated }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read_all(input: &[u8], max: usize) -> Vec<RawLine> {
        // A tiny buffer makes lines span many fill_buf calls, as a slow pipe would.
        let mut reader = LineReader::new(tokio::io::BufReader::with_capacity(3, input), max);
        let mut lines = Vec::new();
        while let Some(line) = reader.next_line().await.unwrap() {
            lines.push(line);
        }
        lines
    }

    fn line(text: &str, truncated: usize) -> RawLine {
        RawLine {
            bytes: text.as_bytes().to_vec(),
            truncated,
        }
    }

    #[tokio::test]
    async fn splits_lines_and_keeps_a_last_line_without_newline() {
        assert_eq!(
            read_all(b"a\r\nbc\n\nlast", 100).await,
            [line("a", 0), line("bc", 0), line("", 0), line("last", 0)]
        );
        assert!(read_all(b"", 100).await.is_empty());
    }

    #[tokio::test]
    async fn long_lines_are_cut_and_the_reader_goes_on() {
        let mut input = vec![b'x'; 10_000];
        input.extend_from_slice(b"\nnext\n");
        assert_eq!(
            read_all(&input, 8).await,
            [line("xxxxxxxx", 9_992), line("next", 0)]
        );
    }
}
