//! A spider's results across its runs: its items searched by task, time and field conditions, newest first,
//! in pages that continue where the last one ended.

use std::sync::Arc;

use arachne_shared::results::{FieldCondition, FoundItem, ItemCursor, ItemSearch};
use arachne_shared::{Invalid, TaskId};
use chrono::{DateTime, Utc};

use crate::spiders::{self, Spiders};
use crate::store::{self, Store};

/// The most conditions one search takes: each is a clause the store evaluates per item.
pub const MAX_CONDITIONS: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Spider(#[from] spiders::Error),
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error("at most {MAX_CONDITIONS} conditions per search, not {0}")]
    TooManyConditions(usize),
    #[error("the time range is empty: since {since} is not before until {until}")]
    EmptyRange {
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    },
    #[error(transparent)]
    Store(#[from] store::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a caller asks of a spider's items, still as written.
#[derive(Debug, Clone, Default)]
pub struct ResultsRequest {
    pub task: Option<TaskId>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// `FIELD=VALUE`, `FIELD~TEXT` or `FIELD`.
    pub conditions: Vec<String>,
    /// Where the previous page ended, as [`ItemCursor`] writes it.
    pub after: Option<String>,
    pub limit: u32,
}

/// One page of a search, newest first.
#[derive(Debug)]
pub struct ResultsPage {
    pub items: Vec<FoundItem>,
    /// How many items match in all, when asked.
    pub total: Option<u64>,
    /// Where the next page starts, while there may be one.
    pub next: Option<ItemCursor>,
}

pub struct Results {
    store: Arc<dyn Store>,
    spiders: Arc<Spiders>,
}

impl Results {
    pub(crate) fn new(store: Arc<dyn Store>, spiders: Arc<Spiders>) -> Self {
        Self { store, spiders }
    }

    /// A page of the spider's items that match; with `count`, the total as well.
    pub async fn page(
        &self,
        spider: &str,
        request: ResultsRequest,
        count: bool,
    ) -> Result<ResultsPage> {
        let search = self.search(spider, request).await?;
        let items = self.store.find_items(&search).await?;
        let total = match count {
            true => Some(self.store.count_items(&search).await?),
            false => None,
        };
        let next = items
            .last()
            .filter(|_| items.len() == search.limit as usize)
            .map(FoundItem::cursor);
        Ok(ResultsPage { items, total, next })
    }

    async fn search(&self, spider: &str, request: ResultsRequest) -> Result<ItemSearch> {
        if request.conditions.len() > MAX_CONDITIONS {
            return Err(Error::TooManyConditions(request.conditions.len()));
        }
        if let (Some(since), Some(until)) = (request.since, request.until)
            && since >= until
        {
            return Err(Error::EmptyRange { since, until });
        }
        let conditions = request
            .conditions
            .iter()
            .map(|c| c.parse::<FieldCondition>())
            .collect::<Result<_, _>>()?;
        let after = request.after.map(|a| a.parse()).transpose()?;
        let spider = self.spiders.get(spider).await?;
        Ok(ItemSearch {
            spider: spider.id,
            spider_name: spider.name.clone(),
            collection: spider.results_collection(),
            task: request.task,
            since: request.since,
            until: request.until,
            conditions,
            after,
            limit: request.limit,
        })
    }
}
