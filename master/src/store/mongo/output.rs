//! The MongoDB store's runs' log lines and items.

use arachne_shared::results::{FieldCondition, FieldTest, FoundItem, ItemSearch};

use super::*;
use crate::store::OutputStore;

#[async_trait::async_trait]
impl OutputStore for MongoStore {
    async fn append_logs(&self, task: TaskId, lines: &[LogLine]) -> Result<()> {
        let Some(last) = lines.iter().map(|l| l.seq).max() else {
            return Ok(());
        };
        // A resent batch has the same documents (named by task and first line), so the insert skips them.
        let docs: Vec<Document> = lines
            .chunks(LINES_PER_DOC)
            .map(|chunk| {
                let first = chunk[0].seq;
                let lines: Vec<Document> = chunk
                    .iter()
                    .map(|l| doc! {"seq": l.seq as i64, "stream": l.stream.as_str(), "at": to_millis(l.at), "text": &l.text})
                    .collect();
                doc! {
                    "_id": format!("{task}:{first}"),
                    "task_id": task.to_string(),
                    "first": first as i64,
                    "last": chunk.iter().map(|l| l.seq).max().unwrap_or(first) as i64,
                    "lines": lines,
                }
            })
            .collect();
        // The counter is a `$max`, so it may move first: a batch whose insert fails is sent again and raises
        // it to the same value. Both at once halve the round trips a batch waits for.
        let inserted = async {
            match self.logs_coll().insert_many(docs).ordered(false).await {
                Ok(_) => Ok(()),
                Err(err) if duplicates_only(&err).is_some() => Ok(()),
                Err(err) => Err(db(err)),
            }
        };
        let counted = async {
            self.tasks()
                .find_one_and_update(
                    doc! {"_id": task.to_string()},
                    doc! {"$max": {"log_lines": last as i64}},
                )
                .projection(doc! {"ended_at": 1})
                .await
                .map_err(db)
        };
        let ((), task_doc) = tokio::try_join!(inserted, counted)?;
        // Lines that arrive after their task ended expire with it too.
        if let Some(ended) = task_doc.and_then(|t| t.get_datetime("ended_at").ok().copied()) {
            self.logs_coll()
                .update_many(
                    doc! {"task_id": task.to_string(), "ended_at": {"$exists": false}},
                    doc! {"$set": {"ended_at": ended}},
                )
                .await
                .map_err(db)?;
        }
        Ok(())
    }

    async fn logs(&self, task: TaskId, after: u64, limit: u32) -> Result<Vec<LogLine>> {
        let mut cursor = self
            .logs_coll()
            .find(doc! {"task_id": task.to_string(), "last": {"$gt": after as i64}})
            .sort(doc! {"first": 1})
            .await
            .map_err(db)?;
        let mut lines = Vec::new();
        let mut seen = HashSet::new();
        while lines.len() < limit as usize && cursor.advance().await.map_err(db)? {
            let doc = cursor.deserialize_current().map_err(db)?;
            let batch = doc
                .get_array("lines")
                .map_err(|e| Error::Corrupt(e.to_string()))?;
            for line in batch {
                let Some(line) = line.as_document() else {
                    return Err(Error::Corrupt("a log line is not a document".into()));
                };
                let corrupt = |e: bson::error::Error| Error::Corrupt(e.to_string());
                let seq = line.get_i64("seq").map_err(corrupt)? as u64;
                if seq <= after || lines.len() >= limit as usize || !seen.insert(seq) {
                    continue;
                }
                let stream = line.get_str("stream").map_err(corrupt)?;
                lines.push(LogLine {
                    seq,
                    stream: LogStream::from_name(stream),
                    at: from_millis(line.get_i64("at").map_err(corrupt)?),
                    text: line.get_str("text").map_err(corrupt)?.to_owned(),
                });
            }
        }
        lines.sort_by_key(|l| l.seq);
        Ok(lines)
    }

    async fn insert_items(&self, target: &ItemTarget, items: &[ItemRecord]) -> Result<()> {
        let Some(last) = items.iter().map(|i| i.seq).max() else {
            return Ok(());
        };
        let collection = self.item_collection(&target.collection).await?;
        let (tid, sid) = (target.task.to_string(), target.spider_id.to_string());
        let at = bson::DateTime::now();
        let mut docs = Vec::with_capacity(items.len());
        for item in items {
            // Straight from the text into an ordered document: the item's fields keep the spider's order. An
            // item nested deeper than a MongoDB document may be is kept as its text instead, so it is not lost
            // (and a batch holding it is not refused for ever).
            let mut doc = match serde_json::from_str::<Document>(item.data.get()) {
                Ok(doc) if depth(&doc) <= MAX_ITEM_DEPTH => doc,
                _ => {
                    tracing::warn!(task_id = %target.task, seq = item.seq, "an item nested deeper than MongoDB takes is kept as its JSON text");
                    doc! {RAW_ITEM: item.data.get()}
                }
            };
            doc.insert("_tid", tid.clone());
            doc.insert("_sid", sid.clone());
            doc.insert("_seq", item.seq as i64);
            doc.insert("_at", at);
            let key = target.dedup.as_ref().map(|d| d.key_of(&item.data));
            match key {
                Some(Ok(Some(key))) => {
                    doc.insert(DEDUP_KEY, key);
                }
                Some(Err(err)) => tracing::warn!(task_id = %target.task, seq = item.seq, "{err}"),
                None | Some(Ok(None)) => {}
            }
            docs.push(doc);
        }
        // Unordered, so a duplicate (a retried item, or a key already stored) does not stop the rest.
        let inserted = async {
            match collection.insert_many(&docs).ordered(false).await {
                Ok(_) => Ok(Vec::new()),
                Err(err) => duplicates_only(&err).ok_or_else(|| db(err)),
            }
        };
        // A `$max`, as for log lines: raised beside the insert, and to the same value by a resent batch.
        let (duplicates, ()) =
            tokio::try_join!(inserted, self.raise_counter(target.task, "items", last))?;
        if target.dedup.as_ref().map(|d| d.mode) == Some(DedupMode::Overwrite) {
            for index in duplicates {
                let doc = &docs[index];
                let Ok(key) = doc.get_str(DEDUP_KEY) else {
                    continue;
                };
                // Only an item from an earlier task (ids order by creation), or from earlier in this one, is
                // replaced: the latest crawl wins in any arrival order, and a retried batch changes nothing.
                let seq = doc.get("_seq");
                let filter = doc! {DEDUP_KEY: key, "$or": [
                    {"_tid": {"$lt": &tid}},
                    {"_tid": &tid, "_seq": {"$lt": seq}},
                ]};
                collection.replace_one(filter, doc).await.map_err(db)?;
            }
        }
        Ok(())
    }

    async fn items(&self, task: TaskId, after: u64, limit: u32) -> Result<Vec<ItemRecord>> {
        let Some(collection) = self.results_of(task).await? else {
            return Ok(Vec::new());
        };
        let mut cursor = collection
            .find(doc! {"_tid": task.to_string(), "_seq": {"$gt": after as i64}})
            .sort(doc! {"_seq": 1})
            .limit(i64::from(limit))
            .await
            .map_err(db)?;
        let mut items = Vec::new();
        while cursor.advance().await.map_err(db)? {
            let found = found_item(cursor.deserialize_current().map_err(db)?)?;
            items.push(ItemRecord {
                seq: found.seq,
                data: found.data,
            });
        }
        Ok(items)
    }

    async fn find_items(&self, search: &ItemSearch) -> Result<Vec<FoundItem>> {
        let collection = self.item_collection(&search.collection).await?;
        let mut cursor = collection
            .find(item_filter(search, true))
            .sort(doc! {"_tid": -1, "_seq": -1})
            .limit(i64::from(search.limit))
            .await
            .map_err(db)?;
        let mut items = Vec::new();
        while cursor.advance().await.map_err(db)? {
            items.push(found_item(cursor.deserialize_current().map_err(db)?)?);
        }
        Ok(items)
    }

    async fn count_items(&self, search: &ItemSearch) -> Result<u64> {
        let collection = self.item_collection(&search.collection).await?;
        collection
            .count_documents(item_filter(search, false))
            .await
            .map_err(db)
    }
}

/// An item document read back: its task, number and time taken out, its own fields in their order.
fn found_item(mut doc: Document) -> Result<FoundItem> {
    let corrupt = |what: &str| Error::Corrupt(format!("an item has no {what}"));
    let seq = doc
        .remove("_seq")
        .and_then(|s| s.as_i64())
        .ok_or_else(|| corrupt("_seq"))? as u64;
    let task_id = match doc.remove("_tid") {
        Some(Bson::String(id)) => crate::store::parse_stored_id(&id)?,
        _ => return Err(corrupt("_tid")),
    };
    let at = match doc.remove("_at") {
        Some(Bson::DateTime(at)) => from_millis(at.timestamp_millis()),
        _ => return Err(corrupt("_at")),
    };
    for field in ["_id", "_sid", DEDUP_KEY] {
        doc.remove(field);
    }
    let text = match doc.remove(RAW_ITEM) {
        Some(Bson::String(text)) => text,
        _ => serde_json::to_string(&doc).map_err(|e| Error::Corrupt(e.to_string()))?,
    };
    let data = serde_json::value::RawValue::from_string(text)
        .map_err(|e| Error::Corrupt(e.to_string()))?;
    Ok(FoundItem {
        task_id,
        seq,
        at,
        data,
    })
}

/// The filter of a search of a spider's items, with its cursor or without. Equality and containment hold
/// only for a field that is not an array, as in the embedded store (MongoDB would match an element).
fn item_filter(search: &ItemSearch, with_cursor: bool) -> Document {
    let mut all = vec![doc! {"_sid": search.spider.to_string()}];
    if let Some(task) = search.task {
        all.push(doc! {"_tid": task.to_string()});
    }
    if let Some(since) = search.since {
        all.push(doc! {"_at": {"$gte": bson::DateTime::from_millis(to_millis(since))}});
    }
    if let Some(until) = search.until {
        all.push(doc! {"_at": {"$lt": bson::DateTime::from_millis(to_millis(until))}});
    }
    if let Some(cursor) = search.after.filter(|_| with_cursor) {
        let task = cursor.task.to_string();
        all.push(doc! {"$or": [
            {"_tid": {"$lt": &task}},
            {"_tid": &task, "_seq": {"$lt": cursor.seq as i64}},
        ]});
    }
    for condition in &search.conditions {
        let path = condition.path.join(".");
        let not_array = doc! {&path: {"$not": {"$type": "array"}}};
        match &condition.test {
            FieldTest::Exists => all.push(doc! {&path: {"$exists": true}}),
            FieldTest::Contains(text) => {
                all.push(doc! {&path: {"$type": "string", "$regex": regex_escape(text)}});
                all.push(not_array);
            }
            FieldTest::Equals(value) => {
                let mut alike = vec![doc! {&path: {"$type": "string", "$eq": value}}];
                if let Some(number) = FieldCondition::number(value) {
                    let number = match number.as_i64() {
                        Some(n) => Bson::Int64(n),
                        None => Bson::Double(number.as_f64().unwrap_or(f64::NAN)),
                    };
                    alike.push(doc! {&path: {"$type": "number", "$eq": number}});
                }
                match value.as_str() {
                    "true" => alike.push(doc! {&path: {"$type": "bool", "$eq": true}}),
                    "false" => alike.push(doc! {&path: {"$type": "bool", "$eq": false}}),
                    "null" => alike.push(doc! {&path: {"$type": "null"}}),
                    _ => {}
                }
                all.push(doc! {"$or": alike});
                all.push(not_array);
            }
        }
    }
    doc! {"$and": all}
}

/// `text` as a regular expression that matches it literally.
fn regex_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if "\\^$.|?*+()[]{}".contains(c) {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}
