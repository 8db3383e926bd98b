//! `arachne spider ...`: create spiders, upload their files, and list, pick and read their versions.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use arachne_api_types::CreateSpider;
use arachne_api_types::Spider;
use arachne_client::Client;
use arachne_shared::spider::{Dedup, DedupMode};
use clap::Subcommand;

use crate::Error;
use crate::output::{Output, print_table, short};
use crate::run::SettingsArgs;

#[derive(Debug, Subcommand)]
pub enum SpiderCommand {
    /// Create a spider (or update it) and upload its folder.
    Create {
        name: String,
        /// Shell command run in the spider's folder. Optional for a Scrapy project folder (one with a
        /// scrapy.cfg), whose command is then `scrapy`: runs name their spider (`arachne run NAME --spider S`).
        #[arg(long)]
        cmd: Option<String>,
        /// The spider's files: a folder, or a .zip or .tar.gz archive.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Given any of these, they replace the spider's settings; given none, an existing spider keeps its own.
        #[command(flatten)]
        settings: SettingsArgs,
        /// At most this many of its tasks run at once across the cluster (0 removes the limit).
        #[arg(long)]
        max_instances: Option<u32>,
        /// The collection its items go to in a MongoDB store (default results_<name>; "" restores it).
        #[arg(long)]
        results_collection: Option<String>,
        #[command(flatten)]
        dedup: DedupArgs,
    },
    List,
    Show {
        name: String,
    },
    /// Upload a new version from a folder, or a .zip or .tar.gz archive, and make it current.
    Upload {
        name: String,
        path: PathBuf,
    },
    /// List the stored versions, newest first.
    Versions {
        name: String,
    },
    /// Make a stored version (a hash, or a unique prefix of one) the one runs use.
    Use {
        name: String,
        version: String,
    },
    /// Delete a stored version (a hash or a unique prefix) that is not current and that no unended task runs.
    DeleteVersion {
        name: String,
        version: String,
    },
    /// Delete a spider with its versions and schedules. Its tasks stay unless --tasks is given. Refused while
    /// any of its tasks has not ended.
    Delete {
        name: String,
        /// Also delete its tasks with their logs and items.
        #[arg(long)]
        tasks: bool,
    },
    /// List the files of a version, or print one of them.
    Files {
        name: String,
        /// A file to print.
        path: Option<String>,
        /// A stored version (a hash or a unique prefix); the current one by default.
        #[arg(long)]
        version: Option<String>,
    },
}

/// Item de-duplication flags of `spider create`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct DedupArgs {
    /// Store items with equal values in these fields once (repeat for a compound key).
    #[arg(long = "dedup-key", value_name = "FIELD")]
    keys: Vec<String>,
    /// What a duplicate does: overwrite (replace the stored item) or ignore (keep the stored item).
    #[arg(long, value_name = "MODE", requires = "keys")]
    dedup_mode: Option<DedupMode>,
    /// Turn de-duplication off.
    #[arg(long, conflicts_with_all = ["keys", "dedup_mode"])]
    no_dedup: bool,
}

impl DedupArgs {
    fn into_dedup(self) -> Option<Dedup> {
        if self.no_dedup {
            return Some(Dedup {
                keys: Vec::new(),
                mode: DedupMode::default(),
            });
        }
        (!self.keys.is_empty()).then(|| Dedup {
            keys: self.keys,
            mode: self.dedup_mode.unwrap_or_default(),
        })
    }
}

impl SpiderCommand {
    pub(crate) async fn apply(self, client: &Client, output: Output) -> Result<ExitCode, Error> {
        match self {
            Self::Create {
                name,
                cmd,
                dir,
                settings,
                max_instances,
                results_collection,
                dedup,
            } => {
                let scrapy_folder = dir
                    .as_ref()
                    .is_some_and(|dir| dir.join("scrapy.cfg").is_file());
                let cmd = match cmd {
                    Some(cmd) => cmd,
                    None if scrapy_folder => "scrapy".to_owned(),
                    None => {
                        return Err(Error::Input(
                            "--cmd is required (only a Scrapy project folder, with a scrapy.cfg, has a default: `scrapy`)"
                                .into(),
                        ));
                    }
                };
                let scrapy = arachne_shared::scrapy::is_project_command(&cmd);
                let mut spider = client
                    .put_spider(&CreateSpider {
                        name: name.clone(),
                        cmd,
                        settings: settings.into_settings(),
                        max_instances,
                        results_collection,
                        dedup: dedup.into_dedup(),
                    })
                    .await?;
                if let Some(dir) = dir {
                    spider = upload(client, &name, &dir).await?;
                }
                // A Scrapy project says which spiders it holds: `scrapy list`, run once on a worker.
                // Created either way: a listing that fails is said, not an error of the command.
                if scrapy && !spider.version.is_empty() && !output.json {
                    match client.scrapy_spiders(&name, None).await {
                        Ok(names) => outln!("scrapy spiders: {}", names.join(", ")),
                        Err(err) => eprintln!("warning: could not list its Scrapy spiders: {err}"),
                    }
                }
                output.show(&spider, |spider| {
                    outln!(
                        "spider {} version {} ({} files)",
                        spider.name,
                        short(&spider.version),
                        spider.file_count
                    );
                    Ok(())
                })
            }
            Self::List => output.show(&client.list_spiders().await?, |spiders| {
                let rows = spiders
                    .iter()
                    .map(|s| {
                        vec![
                            s.name.clone(),
                            s.cmd.clone(),
                            short(&s.version).into(),
                            s.file_count.to_string(),
                        ]
                    })
                    .collect();
                print_table(&["NAME", "COMMAND", "VERSION", "FILES"], rows)
            }),
            Self::Show { name } => output.show(&client.get_spider(&name).await?, |spider| {
                out!("{}", crate::describe::spider(spider));
                Ok(())
            }),
            Self::Upload { name, path } => {
                output.show(&upload(client, &name, &path).await?, |spider| {
                    outln!(
                        "spider {} version {} ({} files, {} bytes)",
                        spider.name,
                        short(&spider.version),
                        spider.file_count,
                        spider.total_bytes
                    );
                    Ok(())
                })
            }
            Self::Versions { name } => {
                output.show(&client.list_versions(&name).await?, |versions| {
                    let rows = versions
                        .iter()
                        .map(|v| {
                            vec![
                                if v.current { "*".into() } else { String::new() },
                                short(&v.hash).into(),
                                v.file_count.to_string(),
                                v.total_bytes.to_string(),
                                v.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                            ]
                        })
                        .collect();
                    print_table(&["", "VERSION", "FILES", "BYTES", "UPLOADED"], rows)
                })
            }
            Self::Use { name, version } => {
                let version = resolve_version(client, &name, &version).await?;
                let spider = client.set_current_version(&name, &version).await?;
                output.show(&spider, |spider| {
                    outln!(
                        "spider {} now runs version {}",
                        spider.name,
                        short(&spider.version)
                    );
                    Ok(())
                })
            }
            Self::DeleteVersion { name, version } => {
                let version = resolve_version(client, &name, &version).await?;
                client.delete_version(&name, &version).await?;
                output.show(&serde_json::json!({"deleted": version}), |_| {
                    outln!("deleted version {} of spider {name}", short(&version));
                    Ok(())
                })
            }
            Self::Delete { name, tasks } => {
                let deleted = client.delete_spider(&name, tasks).await?;
                output.show(&deleted, |d| {
                    outln!(
                        "deleted spider {name}: {} versions, {} schedules, {} tasks",
                        d.versions,
                        d.schedules,
                        d.tasks
                    );
                    Ok(())
                })
            }
            Self::Files {
                name,
                path,
                version,
            } => {
                let version = match version {
                    Some(v) => Some(resolve_version(client, &name, &v).await?),
                    None => None,
                };
                if let Some(path) = path {
                    let content = client.read_file(&name, &path, version.as_deref()).await?;
                    std::io::stdout().write_all(&content)?;
                    return Ok(ExitCode::SUCCESS);
                }
                let files = client.list_files(&name, version.as_deref()).await?;
                output.show(&files, |files| {
                    let rows = files
                        .files
                        .iter()
                        .map(|f| vec![format!("{:o}", f.mode), f.size.to_string(), f.path.clone()])
                        .collect();
                    print_table(&["MODE", "BYTES", "PATH"], rows)
                })
            }
        }
    }
}

/// Uploads a folder (packed here, leaving out what the ignore rules leave out) or an archive file, with a
/// progress bar on a terminal.
async fn upload(client: &Client, name: &str, path: &Path) -> Result<Spider, Error> {
    let archive = if path.is_dir() {
        arachne_shared::archive::pack_dir(path)?
    } else {
        std::fs::read(path).map_err(|e| Error::Input(format!("{}: {e}", path.display())))?
    };
    let show = std::io::stderr().is_terminal() && archive.len() > 1 << 20;
    let spider = client
        .upload_files_with_progress(name, archive, move |sent, total| {
            if show {
                eprint!("\r{}", progress_bar(sent, total));
            }
        })
        .await;
    if show {
        eprintln!();
    }
    let uploaded = spider?;
    if let Some(folder) = &uploaded.unwrapped {
        eprintln!(
            "note: every file was in the folder {folder}/, so its contents are the spider's files \
             (pack a folder's contents, not the folder)"
        );
    }
    Ok(uploaded.spider)
}

fn progress_bar(done: u64, total: u64) -> String {
    const WIDTH: u64 = 30;
    let filled = (done * WIDTH).checked_div(total).unwrap_or(WIDTH);
    let mib = |b: u64| b as f64 / f64::from(1 << 20);
    format!(
        "uploading [{}{}] {:.1}/{:.1} MiB",
        "#".repeat(filled as usize),
        " ".repeat((WIDTH - filled) as usize),
        mib(done),
        mib(total)
    )
}

/// The full hash of a stored version named by a unique prefix.
pub(crate) async fn resolve_version(
    client: &Client,
    spider: &str,
    prefix: &str,
) -> Result<String, Error> {
    let versions = client.list_versions(spider).await?;
    let matching: Vec<_> = versions
        .iter()
        .filter(|v| v.hash.starts_with(prefix))
        .collect();
    match matching.as_slice() {
        [one] => Ok(one.hash.clone()),
        [] => Err(Error::Input(format!(
            "spider {spider} has no version {prefix}"
        ))),
        _ => Err(Error::Input(format!(
            "version prefix {prefix} is ambiguous: {} versions match",
            matching.len()
        ))),
    }
}
