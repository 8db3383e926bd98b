//! The HTML pages of Scrapyd that tools read rather than people: the home page (ScrapydWeb checks a server
//! by fetching it) and the jobs table (ScrapydWeb's job list is parsed from it), in Scrapyd 1.6's markup:
//! one `<tr>` of `<td>` cells per job, times as `YYYY-MM-DD HH:MM:SS` (UTC here).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use chrono::{DateTime, Utc};

use super::{Ctx, Task, job_id, scrapy_spider, urls};

/// The columns of the jobs table, as Scrapyd names them (without its cancel buttons: a form that a browser
/// holding the basic-auth password would post from any site).
const COLUMNS: [&str; 9] = [
    "Project", "Spider", "Job", "PID", "Start", "Runtime", "Finish", "Log", "Items",
];

pub(super) async fn home(State(ctx): State<Ctx>) -> Response {
    let projects = match ctx.backend.list_spiders().await {
        Ok(spiders) => spiders
            .into_iter()
            .map(|s| escape(&s.name))
            .collect::<Vec<_>>(),
        Err(err) => return failed(&err.to_string()),
    };
    Html(format!(
        "<html><head><title>Scrapyd</title></head><body>\n<h1>Scrapyd</h1>\n\
         <p>Available projects: <b>{}</b></p>\n<ul>\n<li><a href=\"/jobs\">Jobs</a></li>\n</ul>\n\
         <p>This is Arachne's Scrapyd-compatible API; its own web UI and API are on its HTTP listener.</p>\n\
         </body></html>\n",
        projects.join(", ")
    ))
    .into_response()
}

pub(super) async fn jobs_table(State(ctx): State<Ctx>) -> Response {
    let jobs = match super::jobs(&ctx, None).await {
        Ok(jobs) => jobs,
        Err(err) => return failed(&err.to_string()),
    };
    let now = Utc::now();
    let mut page = String::from(
        "<html><head><title>Scrapyd</title></head><body>\n<h1>Jobs</h1>\n<p><a href=\"./\">Go up</a></p>\n\
         <table border=\"1\">\n<thead><tr>",
    );
    for column in COLUMNS {
        page.push_str(&format!("<th>{column}</th>"));
    }
    page.push_str("</tr></thead>\n<tbody>\n");
    let sections = [
        ("Pending", &jobs.pending),
        ("Running", &jobs.running),
        ("Finished", &jobs.finished),
    ];
    for (title, tasks) in sections {
        page.push_str(&format!(
            "<tr><th colspan=\"{}\" style=\"background-color: #ddd\">{title}</th></tr>\n",
            COLUMNS.len()
        ));
        for task in tasks.iter() {
            page.push_str(&row(task, now));
        }
    }
    page.push_str("</tbody>\n</table>\n</body></html>\n");
    Html(page).into_response()
}

/// One job's row: its start, run time and end as far as it has them, and its log and items once it started.
fn row(task: &Task, now: DateTime<Utc>) -> String {
    let spider = scrapy_spider(task);
    let (log, items) = urls(task, &spider);
    let started = task.started_at;
    let ended = task.ended_at.filter(|_| task.status.is_terminal());
    let cells = [
        escape(&task.spider_name),
        escape(&spider),
        escape(&job_id(task)),
        task.pid
            .filter(|_| ended.is_none())
            .map(|p| p.to_string())
            .unwrap_or_default(),
        started.map(time).unwrap_or_default(),
        started
            .map(|start| runtime(ended.unwrap_or(now) - start))
            .unwrap_or_default(),
        ended.map(time).unwrap_or_default(),
        started
            .map(|_| format!("<a href=\"{}\">Log</a>", escape(&log)))
            .unwrap_or_default(),
        started
            .map(|_| format!("<a href=\"{}\">Items</a>", escape(&items)))
            .unwrap_or_default(),
    ];
    let cells: String = cells.iter().map(|c| format!("<td>{c}</td>")).collect();
    format!("<tr>{cells}</tr>\n")
}

fn time(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S").to_string()
}

/// A duration as Python prints a `timedelta` without its microseconds: `0:01:05`, `2 days, 3:04:05`.
fn runtime(elapsed: chrono::TimeDelta) -> String {
    let total = elapsed.num_seconds().max(0);
    let (days, rest) = (total / 86_400, total % 86_400);
    let clock = format!("{}:{:02}:{:02}", rest / 3600, rest % 3600 / 60, rest % 60);
    match days {
        0 => clock,
        1 => format!("1 day, {clock}"),
        n => format!("{n} days, {clock}"),
    }
}

fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}

fn failed(message: &str) -> Response {
    (StatusCode::INTERNAL_SERVER_ERROR, escape(message)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_times_read_as_python_prints_them() {
        assert_eq!(runtime(chrono::TimeDelta::seconds(65)), "0:01:05");
        assert_eq!(
            runtime(chrono::TimeDelta::seconds(86_400 + 3_845)),
            "1 day, 1:04:05"
        );
        assert_eq!(
            runtime(chrono::TimeDelta::seconds(3 * 86_400)),
            "3 days, 0:00:00"
        );
        assert_eq!(runtime(chrono::TimeDelta::seconds(-2)), "0:00:00");
    }

    #[test]
    fn names_are_escaped() {
        assert_eq!(escape("<a href='x'>&"), "&lt;a href=&#39;x&#39;&gt;&amp;");
    }
}
