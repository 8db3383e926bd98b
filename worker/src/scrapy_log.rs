//! Reads a Scrapy crawl's own log for its numbers, so a plain Scrapy project (no crawlab-sdk, no STATUS
//! messages) still shows progress and stats: the periodic LogStats line ("Crawled N pages (at P pages/min),
//! scraped M items (at I items/min)") and the stats dump Scrapy writes when the spider closes ("Dumping Scrapy
//! stats:" followed by a `pprint`ed dict, one key a line).

use arachne_shared::ipc::{Object, StatusPayload};
use serde_json::Value;

/// What a run's Scrapy log has said so far.
#[derive(Debug, Default)]
pub(crate) struct ScrapyLog {
    stats: Object,
    /// Inside the stats dump: its lines are read as `'key': value` until the closing brace.
    in_dump: bool,
    /// A stats dump was read to its end: the crawl is over.
    closed: bool,
}

impl ScrapyLog {
    /// Reads one log line; the progress it implies when it carried numbers.
    pub(crate) fn observe(&mut self, line: &str) -> Option<StatusPayload> {
        if self.in_dump {
            return self.dump_line(line);
        }
        if let Some(rest) = after(line, "[scrapy.extensions.logstats] INFO: ") {
            return self.log_stats(rest);
        }
        if after(line, "[scrapy.statscollectors] INFO: Dumping Scrapy stats:").is_some() {
            self.in_dump = true;
        }
        None
    }

    /// `Crawled 12 pages (at 12 pages/min), scraped 7 items (at 7 items/min)`.
    fn log_stats(&mut self, message: &str) -> Option<StatusPayload> {
        let numbers: Vec<u64> = message
            .split(|c: char| !c.is_ascii_digit())
            .filter(|part| !part.is_empty())
            .filter_map(|part| part.parse().ok())
            .collect();
        if !message.starts_with("Crawled ") || numbers.len() != 4 {
            return None;
        }
        for (key, value) in ["pages", "pages_per_min", "items", "items_per_min"]
            .into_iter()
            .zip(numbers)
        {
            self.stats.insert(key.into(), value.into());
        }
        Some(self.status(message.to_owned()))
    }

    fn dump_line(&mut self, line: &str) -> Option<StatusPayload> {
        let line = line.trim();
        let end = line.ends_with('}');
        let entry = line.trim_start_matches('{').trim_end_matches([',', '}']);
        if let Some((key, value)) = entry.split_once("': ")
            && let Some(key) = key.strip_prefix('\'')
            && let Some(value) = python_value(value)
        {
            self.stats.insert(key.to_owned(), value);
        }
        if !end {
            return None;
        }
        self.in_dump = false;
        self.closed = true;
        let count = |key: &str| self.stats.get(key).and_then(Value::as_u64).unwrap_or(0);
        // The final numbers: what the dump says, under the names the periodic line uses too.
        let (pages, items) = (
            count("response_received_count"),
            count("item_scraped_count"),
        );
        self.stats.insert("pages".into(), pages.into());
        self.stats.insert("items".into(), items.into());
        let reason = self
            .stats
            .get("finish_reason")
            .and_then(Value::as_str)
            .unwrap_or("closed")
            .to_owned();
        Some(self.status(format!(
            "Crawled {pages} pages, scraped {items} items ({reason})"
        )))
    }

    fn status(&self, message: String) -> StatusPayload {
        StatusPayload {
            progress: self.closed.then_some(1.0),
            message: Some(message),
            stats: Some(self.stats.clone()),
        }
    }
}

/// The text after `marker` in a line of Scrapy's default log format (`DATE TIME [logger] LEVEL: message`).
fn after<'a>(line: &'a str, marker: &str) -> Option<&'a str> {
    line.find(marker).map(|at| &line[at + marker.len()..])
}

/// A number or a quoted string as `pprint` writes it; anything else (a `datetime(...)`) is left out.
fn python_value(text: &str) -> Option<Value> {
    if let Ok(n) = text.parse::<u64>() {
        return Some(n.into());
    }
    if let Ok(x) = text.parse::<f64>() {
        return Some(x.into());
    }
    text.strip_prefix('\'')
        .and_then(|s| s.strip_suffix('\''))
        .map(|s| s.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Scrapy 2.x output of a small crawl, as it reaches stderr.
    const CRAWL: &str = "\
2026-12-07 08:30:00 [scrapy.utils.log] INFO: Scrapy 2.13.3 started (bot: quotes)
2026-12-07 08:30:00 [scrapy.extensions.logstats] INFO: Crawled 0 pages (at 0 pages/min), scraped 0 items (at 0 items/min)
2026-12-07 08:31:00 [scrapy.extensions.logstats] INFO: Crawled 12 pages (at 12 pages/min), scraped 110 items (at 110 items/min)
2026-12-07 08:31:05 [scrapy.core.engine] INFO: Closing spider (finished)
2026-12-07 08:31:05 [scrapy.statscollectors] INFO: Dumping Scrapy stats:
{'downloader/request_bytes': 3310,
 'downloader/request_count': 13,
 'downloader/response_status_count/200': 12,
 'downloader/response_status_count/404': 1,
 'elapsed_time_seconds': 65.25,
 'finish_reason': 'finished',
 'finish_time': datetime.datetime(2026, 12, 7, 8, 31, 5, 123456, tzinfo=datetime.timezone.utc),
 'item_scraped_count': 120,
 'log_count/ERROR': 2,
 'log_count/INFO': 10,
 'response_received_count': 13,
 'start_time': datetime.datetime(2026, 12, 7, 8, 30, 0, 1, tzinfo=datetime.timezone.utc)}
2026-12-07 08:31:05 [scrapy.core.engine] INFO: Spider closed (finished)
";

    fn statuses(text: &str) -> Vec<StatusPayload> {
        let mut log = ScrapyLog::default();
        text.lines().filter_map(|line| log.observe(line)).collect()
    }

    #[test]
    fn the_periodic_line_becomes_progress_and_the_dump_the_final_stats() {
        let seen = statuses(CRAWL);
        assert_eq!(seen.len(), 3, "{seen:#?}");
        let running = seen[1].stats.as_ref().unwrap();
        assert_eq!(running["pages"], 12);
        assert_eq!(running["items"], 110);
        assert_eq!(running["items_per_min"], 110);
        assert_eq!(seen[1].progress, None);
        let last = &seen[2];
        assert_eq!(last.progress, Some(1.0));
        assert_eq!(
            last.message.as_deref(),
            Some("Crawled 13 pages, scraped 120 items (finished)")
        );
        let stats = last.stats.as_ref().unwrap();
        assert_eq!(stats["item_scraped_count"], 120);
        assert_eq!(stats["items"], 120);
        assert_eq!(stats["downloader/response_status_count/404"], 1);
        assert_eq!(stats["log_count/ERROR"], 2);
        assert_eq!(stats["elapsed_time_seconds"], 65.25);
        assert_eq!(stats["finish_reason"], "finished");
        assert!(!stats.contains_key("finish_time"));
    }

    #[test]
    fn other_output_is_not_read_as_stats() {
        assert!(statuses("Crawled 3 pages\nscraped 4 items\n{'a': 1}\n").is_empty());
        let message = "2026-12-07 08:30:00 [scrapy.extensions.logstats] INFO: Crawled a page";
        assert!(statuses(message).is_empty());
    }
}
