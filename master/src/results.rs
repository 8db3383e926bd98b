//! A spider's results across its runs (or a results collection's, across the spiders that share it): items
//! searched by task, time and field conditions, newest first, in pages that continue where the last ended.

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
    #[error("no spider stores its items in results collection {0:?}")]
    NoCollection(String),
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

    /// A page of the items of every spider whose results collection is `collection`, merged newest first
    /// (task ids order by creation across spiders, so one cursor serves them all).
    pub async fn collection_page(
        &self,
        collection: &str,
        request: ResultsRequest,
        count: bool,
    ) -> Result<ResultsPage> {
        let spiders: Vec<String> = self
            .spiders
            .list()
            .await?
            .into_iter()
            .filter(|s| s.results_collection() == collection)
            .map(|s| s.name)
            .collect();
        if spiders.is_empty() {
            return Err(Error::NoCollection(collection.to_owned()));
        }
        let limit = request.limit as usize;
        let (mut items, mut total) = (Vec::new(), None::<u64>);
        for spider in &spiders {
            let page = self.page(spider, request.clone(), count).await?;
            items.extend(page.items);
            if let Some(n) = page.total {
                total = Some(total.unwrap_or(0) + n);
            }
        }
        items.sort_by_key(|item| std::cmp::Reverse((item.task_id, item.seq)));
        let full = items.len() >= limit;
        items.truncate(limit);
        let next = items.last().filter(|_| full).map(FoundItem::cursor);
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
