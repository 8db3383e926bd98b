//! `arachne node ...`: list worker nodes, change their runner slots or whether they take new tasks, and remove
//! offline ones.

use std::process::ExitCode;

use arachne_api_types::Node;
use arachne_api_types::UpdateNode;
use arachne_client::Client;
use clap::Subcommand;

use crate::Error;
use crate::output::{Output, print_table};

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    List,
    /// Change a node at run time; the settings survive its reconnects.
    #[command(group(clap::ArgGroup::new("setting").required(true).multiple(true)))]
    Set {
        name: String,
        /// How many tasks the node runs at once. Running tasks are never stopped by a lower limit.
        #[arg(long, group = "setting")]
        max_runners: Option<u32>,
        /// Over this CPU use (percent) the node takes no new task until it is back under it; wins over the
        /// master's --max-node-cpu. 0 removes it.
        #[arg(long = "max-cpu", value_name = "PERCENT", group = "setting")]
        max_cpu_percent: Option<f32>,
        /// The same for memory in use (percent); wins over --max-node-memory. 0 removes it.
        #[arg(long = "max-memory", value_name = "PERCENT", group = "setting")]
        max_memory_percent: Option<f32>,
    },
    /// Let the node take new tasks again.
    Enable {
        name: String,
    },
    /// Give the node no new tasks; the ones it runs carry on.
    Disable {
        name: String,
    },
    /// Forget an offline node (refused while it is online, holds or awaits a task, or a schedule names it).
    Remove {
        name: String,
    },
}

impl NodeCommand {
    pub(crate) async fn apply(self, client: &Client, output: Output) -> Result<ExitCode, Error> {
        let (name, update) = match self {
            Self::List => return output.show(&client.list_nodes().await?, |n| print_nodes(n)),
            Self::Remove { name } => {
                client.remove_node(&name).await?;
                return output.show(&serde_json::json!({"removed": name}), |_| {
                    outln!("node {name} removed");
                    Ok(())
                });
            }
            Self::Set {
                name,
                max_runners,
                max_cpu_percent,
                max_memory_percent,
            } => (
                name,
                UpdateNode {
                    max_runners,
                    max_cpu_percent,
                    max_memory_percent,
                    ..UpdateNode::default()
                },
            ),
            Self::Enable { name } => (
                name,
                UpdateNode {
                    enabled: Some(true),
                    ..UpdateNode::default()
                },
            ),
            Self::Disable { name } => (
                name,
                UpdateNode {
                    enabled: Some(false),
                    ..UpdateNode::default()
                },
            ),
        };
        output.show(&client.update_node(&name, &update).await?, |node| {
            outln!(
                "node {} max runners {} ({}, {})",
                node.name,
                node.max_runners,
                node.status.as_str(),
                if node.enabled { "enabled" } else { "disabled" }
            );
            Ok(())
        })
    }
}

fn print_nodes(nodes: &[Node]) -> Result<(), Error> {
    let gib = |bytes: u64| format!("{:.1}", bytes as f64 / f64::from(1u32 << 30));
    let rows = nodes
        .iter()
        .map(|n| {
            let (cpu, memory, disk) = match &n.metrics {
                Some(m) => (
                    format!("{:.0}%", m.cpu_percent),
                    format!(
                        "{}/{} GiB",
                        gib(m.memory_used_bytes),
                        gib(m.memory_total_bytes)
                    ),
                    format!("{}/{} GiB", gib(m.disk_used_bytes), gib(m.disk_total_bytes)),
                ),
                None => ("-".into(), "-".into(), "-".into()),
            };
            let labels: Vec<String> = n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            vec![
                n.name.clone(),
                n.status.as_str().into(),
                if n.enabled { "yes" } else { "no" }.into(),
                format!("{}/{}", n.running, n.max_runners),
                cpu,
                memory,
                disk,
                n.version.clone(),
                n.last_seen.format("%Y-%m-%d %H:%M:%S").to_string(),
                labels.join(","),
            ]
        })
        .collect();
    print_table(
        &[
            "NAME",
            "STATUS",
            "ENABLED",
            "RUNNING",
            "CPU",
            "MEMORY",
            "DISK",
            "VERSION",
            "LAST SEEN",
            "LABELS",
        ],
        rows,
    )
}
