//! What both example programs (`bench` and `chaos`) need of a running master: a spider made from files, and a
//! process's memory.

use anyhow::Context;
use arachne_api_types::CreateSpider;
use arachne_client::Client;

/// Creates (or updates) the spider `name` running `cmd`, with `files` (path, content) as its folder.
pub(crate) async fn spider(
    client: &Client,
    name: &str,
    cmd: &str,
    files: &[(&str, impl AsRef<[u8]>)],
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    for (path, content) in files {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().context("a file has a folder")?)?;
        std::fs::write(path, content)?;
    }
    client
        .put_spider(&CreateSpider {
            name: name.into(),
            cmd: cmd.into(),
            ..Default::default()
        })
        .await?;
    client
        .upload_files(name, arachne_shared::archive::pack_dir(dir.path())?)
        .await?;
    Ok(())
}

/// Peak and current resident memory of process `pid`, in MiB.
pub(crate) fn rss_mib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .unwrap_or(0)
            / 1024
    };
    (field("VmHWM:"), field("VmRSS:"))
}
