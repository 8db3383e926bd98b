//! Items of a plain Scrapy project, stored with no change to its code: a run whose command is a plain
//! `scrapy crawl` gets a feed (`-s FEEDS=...`, as Scrapyd adds one to its items_dir) into a JSON-lines file
//! of its own, and the worker reads that file as it grows, each line an item. A spider that sends its items
//! itself (crawlab-sdk's pipeline, INSERT_DATA) keeps doing so, and then the feed's copies are not stored.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// The feed file, in the run's home folder (the same path inside and outside the spider's view).
pub(crate) fn feed_path(home: &Path) -> PathBuf {
    home.join("arachne-items.jl")
}

/// `command_line` with a JSON-lines feed into `feed` added, when it is a plain Scrapy crawl: `scrapy crawl`
/// (or `python -m scrapy crawl`) with no shell operators and no feed of its own (`-o`, `-O`, `--output`,
/// `FEEDS=`), whose own would take the place of this one.
pub(crate) fn with_feed(command_line: &str, feed: &Path) -> Option<String> {
    // Only words and single-quoted strings: words appended to it are then the command's last arguments.
    arachne_shared::scrapy::shell_words(command_line)?;
    let words: Vec<&str> = command_line.split_whitespace().collect();
    let tool = arachne_shared::scrapy::invocation(&words)?;
    let rest = match &words[tool..] {
        ["crawl", rest @ ..] => rest,
        _ => return None,
    };
    let own_feed = rest.iter().any(|w| {
        ["-o", "-O", "--output", "--overwrite-output"].contains(w)
            || w.starts_with("--output=")
            || w.starts_with("-o")
            || w.starts_with("-O")
            || w.contains("FEEDS=")
    });
    let path = feed.to_str()?;
    if own_feed || path.contains(['\'', '"', '\\']) {
        return None;
    }
    let feeds = serde_json::json!({ format!("file://{path}"): {"format": "jsonlines"} });
    Some(format!("{command_line} -s 'FEEDS={feeds}'"))
}

/// How often a feed file that has not grown is looked at again.
const POLL: Duration = Duration::from_millis(100);

/// Copies what is appended to `path` into `out` until `done` (the spider has exited), then what is left;
/// `out` is closed at the end, so its reader sees the end of the feed. A feed that never appears is empty.
pub(crate) async fn follow(
    path: PathBuf,
    mut out: impl tokio::io::AsyncWrite + Unpin,
    done: CancellationToken,
) -> std::io::Result<()> {
    let mut file = loop {
        let finished = done.is_cancelled();
        match tokio::fs::File::open(&path).await {
            Ok(file) => break file,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound && !finished => {
                tokio::select! {
                    () = tokio::time::sleep(POLL) => {}
                    () = done.cancelled() => {}
                }
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(err) => return Err(err),
        }
    };
    let mut buf = vec![0; 64 * 1024];
    loop {
        // Read after looking at `done`: what the spider wrote before it exited is read before the end.
        let finished = done.is_cancelled();
        let n = file.read(&mut buf).await?;
        if n > 0 {
            out.write_all(&buf[..n]).await?;
            continue;
        }
        if finished {
            return out.shutdown().await;
        }
        tokio::select! {
            () = tokio::time::sleep(POLL) => {}
            () = done.cancelled() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_crawl_gets_a_feed_and_anything_else_is_left_alone() {
        let feed = Path::new("/w/t.home/arachne-items.jl");
        let with = |line: &str| with_feed(line, feed);
        assert_eq!(
            with("scrapy crawl quotes -a tag=life").as_deref(),
            Some(
                r#"scrapy crawl quotes -a tag=life -s 'FEEDS={"file:///w/t.home/arachne-items.jl":{"format":"jsonlines"}}'"#
            )
        );
        assert!(with("python3 -m scrapy crawl quotes").is_some());
        assert!(with("/venv/bin/python -m scrapy crawl quotes").is_some());
        // Quoted arguments may hold anything: a URL with `&` keeps its feed.
        assert!(with("scrapy crawl quotes -a 'start=https://x.test/?a=1&b=$2'").is_some());
        assert!(with(r"scrapy crawl quotes -a 'q=it'\''s'").is_some());
        assert!(with("/venv/bin/scrapy crawl quotes").is_some());
        for other in [
            "python3 main.py",
            "scrapy list",
            "scrapy crawl quotes -o out.json",
            "scrapy crawl quotes -O out.json",
            "scrapy crawl quotes -s FEEDS={}",
            "scrapy crawl quotes && echo done",
            "scrapy crawl quotes > log.txt",
            "scrapy crawl quotes -a \"q=a b\"",
            "scrapy crawl quotes -a 'open",
        ] {
            assert_eq!(with(other), None, "{other}");
        }
        assert_eq!(with_feed("scrapy crawl q", Path::new("/it's/f.jl")), None);
    }

    #[tokio::test]
    async fn a_growing_feed_is_followed_to_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("items.jl");
        let done = CancellationToken::new();
        let (write, mut read) = tokio::io::duplex(1024);
        let follower = tokio::spawn(follow(path.clone(), write, done.clone()));
        std::fs::write(&path, "{\"n\":1}\n").unwrap();
        let mut got = vec![0; 8];
        read.read_exact(&mut got).await.unwrap();
        assert_eq!(got, b"{\"n\":1}\n");
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        std::io::Write::write_all(&mut file, b"{\"n\":2}\n").unwrap();
        done.cancel();
        let mut rest = String::new();
        read.read_to_string(&mut rest).await.unwrap();
        assert_eq!(rest, "{\"n\":2}\n");
        follower.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_feed_that_never_appears_ends_empty() {
        let dir = tempfile::tempdir().unwrap();
        let done = CancellationToken::new();
        let (write, mut read) = tokio::io::duplex(1024);
        done.cancel();
        follow(dir.path().join("none.jl"), write, done)
            .await
            .unwrap();
        let mut rest = Vec::new();
        read.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }
}
