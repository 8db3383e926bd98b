//! What follows a task's end or its node's departure: a retry when it failed with retries left, its parent's
//! derived status, putting back what was handed out but never started, writing off what a lost node ran, and
//! taking over what a previous master left.

use std::collections::HashSet;

use arachne_shared::{Task, TaskId, TaskOutcome, TaskStatus};
use chrono::Utc;
use tracing::{error, info, warn};

use super::Scheduler;
use crate::store::{Store, TaskFilter};

impl Scheduler {
    /// Puts a task that was handed to a node but never started back in the queue.
    pub(crate) async fn requeue(&self, id: TaskId) -> crate::store::Result<()> {
        let requeued = self
            .store
            .update_task(
                id,
                &[TaskStatus::Pending],
                Box::new(|t| {
                    t.requeue(Utc::now());
                    true
                }),
            )
            .await?;
        if requeued.is_some() {
            self.changes.changed(id);
            self.kick();
        }
        Ok(())
    }

    /// Settles the tasks in flight on `node`, except those in `keep` (which the node still runs): a task
    /// handed out but never started goes back to the queue; a running one becomes Abnormal with `reason`,
    /// and is retried if it has retries left.
    pub(crate) async fn settle_node(
        &self,
        node: &str,
        reason: &str,
        keep: &HashSet<TaskId>,
    ) -> crate::store::Result<()> {
        let mut requeued = false;
        for status in [TaskStatus::Pending, TaskStatus::Running] {
            // Settled rows leave the filter; kept rows stay, and paging skips them.
            let mut in_place = 0;
            loop {
                let filter = TaskFilter {
                    node: Some(node.to_owned()),
                    status: Some(status),
                    limit: 500,
                    offset: in_place,
                    ..Default::default()
                };
                let (tasks, _) = self.store.list_tasks(&filter).await?;
                if tasks.is_empty() {
                    break;
                }
                for task in tasks {
                    if keep.contains(&task.id) {
                        in_place += 1;
                        continue;
                    }
                    let now = Utc::now();
                    let change: crate::store::TaskChange = if status == TaskStatus::Running {
                        let reason = reason.to_owned();
                        Box::new(move |t| {
                            let reason = reason.clone();
                            t.finish(&TaskOutcome::Abnormal { reason }, now);
                            // Written off: what the old run still sends is refused.
                            t.lease += 1;
                            true
                        })
                    } else {
                        Box::new(move |t| {
                            t.requeue(now);
                            true
                        })
                    };
                    // `None`: the task changed meanwhile, so it has left the filter anyway.
                    match self.store.update_task(task.id, &[status], change).await? {
                        Some(task) if status == TaskStatus::Running => {
                            warn!(task_id = %task.id, node, "task marked abnormal: {reason}");
                            self.registry.unreserve(node, task.id);
                            self.ended(&task).await;
                        }
                        Some(task) => {
                            self.registry.unreserve(node, task.id);
                            self.changes.changed(task.id);
                            requeued = true;
                        }
                        None => {}
                    }
                }
            }
        }
        if requeued {
            self.kick();
        }
        Ok(())
    }

    /// Everything that follows a task reaching its end: a retry when it failed and has retries left, its
    /// parent's status, and the followers' wake-up. Failures are logged: the end itself is already stored.
    pub(crate) async fn ended(&self, task: &Task) {
        self.changes.changed(task.id);
        if let Err(err) = self.retry(task).await {
            error!(task_id = %task.id, error = %err, "cannot create the retry of a failed task");
        }
        if let Some(parent) = task.parent_id
            && let Err(err) = self.refresh_parent(parent).await
        {
            error!(task_id = %parent, error = %err, "cannot update a parent task's status");
        }
    }

    async fn retry(&self, task: &Task) -> crate::store::Result<()> {
        if !task.will_retry() {
            return Ok(());
        }
        let now = Utc::now();
        let delay = task.settings.retry_delay(task.attempt + 1);
        let not_before =
            (!delay.is_zero()).then(|| now + chrono::Duration::from_std(delay).unwrap_or_default());
        let next = task.next_attempt(now, not_before);
        self.store.insert_task(&next).await?;
        // The failed attempt points at its retry, so whoever waits for the run follows it.
        let next_id = next.id;
        self.store
            .update_task(
                task.id,
                &TaskStatus::ALL,
                Box::new(move |t| {
                    t.retried_by = Some(next_id);
                    true
                }),
            )
            .await?;
        self.changes.changed(task.id);
        info!(task_id = %next.id, first_attempt = %next.first_attempt.unwrap_or(task.id), attempt = next.attempt,
            delay_secs = delay.as_secs(), spider = %next.spider_name, "retrying a failed task");
        self.changes.changed(next.id);
        self.kick();
        Ok(())
    }

    /// Derives a parent's status from its children and stores it if it changed.
    pub(crate) async fn refresh_parent(&self, parent: TaskId) -> crate::store::Result<()> {
        let _serial = self.parents.lock().await;
        let filter = TaskFilter {
            parent_id: Some(parent),
            ..Default::default()
        };
        let children = self.store.all_tasks(&filter).await?;
        if children.is_empty() {
            return Ok(());
        }
        let derived = arachne_shared::task::parent_status(&children);
        let failed = children
            .iter()
            .filter(|c| matches!(c.status, TaskStatus::Error | TaskStatus::Abnormal))
            .count();
        let total = children.len();
        let updated = self
            .store
            .update_task(
                parent,
                &TaskStatus::ALL,
                Box::new(move |t| {
                    if t.status == derived {
                        return false;
                    }
                    let now = Utc::now();
                    t.error = (derived == TaskStatus::Error)
                        .then(|| format!("{failed} of {total} child tasks failed"));
                    t.set_status(derived, now);
                    true
                }),
            )
            .await?;
        if updated.is_some() {
            self.changes.changed(parent);
        }
        Ok(())
    }
}

/// Makes tasks left Created by a crash Pending, and lists the nodes that had tasks in flight when the previous
/// master stopped: they get the usual time to reconnect and claim them.
pub(crate) async fn recover(store: &dyn Store) -> crate::store::Result<HashSet<String>> {
    let mut nodes = HashSet::new();
    for status in [
        TaskStatus::Created,
        TaskStatus::Pending,
        TaskStatus::Running,
    ] {
        let mut offset = 0;
        loop {
            let filter = TaskFilter {
                status: Some(status),
                limit: 500,
                offset,
                ..Default::default()
            };
            let (tasks, _) = store.list_tasks(&filter).await?;
            if tasks.is_empty() {
                break;
            }
            for task in tasks {
                if status == TaskStatus::Created {
                    let change: crate::store::TaskChange = Box::new(|t| {
                        t.set_status(TaskStatus::Pending, Utc::now());
                        true
                    });
                    store.update_task(task.id, &[status], change).await?;
                    continue;
                }
                offset += 1;
                if let Some(node) = task.node {
                    nodes.insert(node);
                }
            }
        }
    }
    Ok(nodes)
}
