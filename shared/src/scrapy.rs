//! Scrapy command lines, as the platform reads and writes them: whether a command is Scrapy's own (`scrapy`,
//! a path to it, or `python -m scrapy`), and the arguments of a crawl of one spider with its arguments and
//! settings, quoted for the shell that runs it.

/// The arguments of the run that lists a project version's spiders (`scrapy list`); such a run is no job.
pub const LIST_ARGS: &str = "list";

/// How many of `words` name Scrapy's command-line tool: 1 for `scrapy` (or a path ending in it), 3 for
/// `python -m scrapy` (any `python*`, or a path to one); `None` when they start otherwise.
pub fn invocation(words: &[&str]) -> Option<usize> {
    let name = |word: &str| word.rsplit('/').next().unwrap_or(word).to_owned();
    match words {
        [scrapy, ..] if name(scrapy) == "scrapy" => Some(1),
        [python, "-m", "scrapy", ..] if name(python).starts_with("python") => Some(3),
        _ => None,
    }
}

/// Whether `cmd` is Scrapy's tool alone, so a run's arguments can name the command (`crawl NAME`, `list`).
pub fn is_project_command(cmd: &str) -> bool {
    let words: Vec<&str> = cmd.split_whitespace().collect();
    invocation(&words) == Some(words.len())
}

/// The arguments of a crawl: `crawl SPIDER -a K=V ... -s K=V ...`, each word quoted when the shell needs it.
pub fn crawl_args(
    spider: &str,
    args: &[(String, String)],
    settings: &[(String, String)],
) -> String {
    let mut words = vec!["crawl".to_owned(), shell_word(spider)];
    for (key, value) in args {
        words.extend(["-a".to_owned(), shell_word(&format!("{key}={value}"))]);
    }
    for (key, value) in settings {
        words.extend(["-s".to_owned(), shell_word(&format!("{key}={value}"))]);
    }
    words.join(" ")
}

/// One word for `sh -c`: as it is when plain, else in single quotes.
pub fn shell_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_=./:,@%+".contains(c));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrapy_s_tool_is_told_from_other_commands() {
        assert_eq!(invocation(&["scrapy", "crawl", "q"]), Some(1));
        assert_eq!(invocation(&["/venv/bin/scrapy"]), Some(1));
        assert_eq!(
            invocation(&["/venv/bin/python3", "-m", "scrapy", "list"]),
            Some(3)
        );
        assert_eq!(invocation(&["python3", "main.py"]), None);
        assert!(is_project_command("python -m scrapy"));
        assert!(!is_project_command("scrapy crawl quotes"));
        assert!(!is_project_command("sh run.sh"));
    }

    #[test]
    fn a_crawl_s_words_are_quoted_when_they_need_it() {
        let args = vec![("q".to_owned(), "it's here".to_owned())];
        let settings = vec![("DOWNLOAD_DELAY".to_owned(), "0.5".to_owned())];
        assert_eq!(
            crawl_args("quotes", &args, &settings),
            r"crawl quotes -a 'q=it'\''s here' -s DOWNLOAD_DELAY=0.5"
        );
        assert_eq!(shell_word("a;rm -rf /"), "'a;rm -rf /'");
        assert_eq!(shell_word(""), "''");
    }
}
