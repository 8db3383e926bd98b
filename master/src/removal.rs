//! Deleting a spider: the rule (nothing of it may be running or waiting to run) and the order in which its
//! parts go: schedules first, so none starts a run of it meanwhile; its tasks with their logs and items when
//! asked; then its record, its versions and the contents no other version names.

use std::sync::Arc;

use arachne_shared::{TaskId, TaskStatus};

use crate::runs::{self, Runs};
use crate::schedules::{self, Schedules};
use crate::spiders::{self, Spiders};

/// Why a spider could not be deleted.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "spider {spider:?} has task {task}, which is {status}: cancel its runs (or wait for them) first"
    )]
    Busy {
        spider: String,
        task: TaskId,
        status: TaskStatus,
    },
    #[error(transparent)]
    Spider(#[from] spiders::Error),
    #[error(transparent)]
    Schedule(#[from] schedules::Error),
    #[error(transparent)]
    Run(#[from] runs::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What deleting a spider removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Removed {
    pub versions: u64,
    pub schedules: u64,
    /// Runs removed with their logs and items (a parent and its children count once).
    pub runs: u64,
}

/// Deletes spiders with what belongs to them.
pub struct Removal {
    spiders: Arc<Spiders>,
    schedules: Arc<Schedules>,
    runs: Arc<Runs>,
}

impl Removal {
    pub(crate) fn new(spiders: Arc<Spiders>, schedules: Arc<Schedules>, runs: Arc<Runs>) -> Self {
        Self {
            spiders,
            schedules,
            runs,
        }
    }

    /// Deletes the spider, its versions and schedules, and with `with_runs` its ended tasks with their logs
    /// and items (otherwise they stay, under the spider's name). Refused while any task of it has not ended.
    pub async fn delete_spider(&self, name: &str, with_runs: bool) -> Result<Removed> {
        let spider = self.spiders.get(name).await?;
        self.refuse_if_busy(name).await?;
        let schedules = self.schedules.delete_of_spider(name).await?;
        // A schedule that fired between the check and its removal made a task: refuse now, before anything
        // the user cannot get back is gone (the schedules can be made again).
        self.refuse_if_busy(name).await?;
        let mut runs = 0;
        if with_runs {
            for task in self.runs.tasks_of(name).await? {
                // Children go with their parent.
                if task.parent_id.is_none() {
                    self.runs.delete(task.id).await?;
                    runs += 1;
                }
            }
        }
        let versions = self.spiders.remove(&spider).await?;
        Ok(Removed {
            versions,
            schedules,
            runs,
        })
    }

    async fn refuse_if_busy(&self, name: &str) -> Result<()> {
        match self.spiders.unended_tasks(name).await?.into_iter().next() {
            Some(task) => Err(Error::Busy {
                spider: name.to_owned(),
                task: task.id,
                status: task.status,
            }),
            None => Ok(()),
        }
    }
}
