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

/// A crawl's arguments read back: what [`crawl_args`] wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Crawl {
    pub spider: String,
    pub args: Vec<(String, String)>,
    pub settings: Vec<(String, String)>,
}

/// Reads a run's arguments as a crawl (`crawl SPIDER [-a K=V | -s K=V]...`, quoted as the shell reads them);
/// `None` when they are something else.
pub fn parse_crawl(param: &str) -> Option<Crawl> {
    let words = shell_words(param)?;
    let mut words = words.into_iter();
    if words.next().as_deref() != Some("crawl") {
        return None;
    }
    let mut crawl = Crawl {
        spider: words.next()?,
        ..Crawl::default()
    };
    while let Some(flag) = words.next() {
        let pair = words.next()?;
        let (key, value) = pair.split_once('=').unwrap_or((&pair, ""));
        let pair = (key.to_owned(), value.to_owned());
        match flag.as_str() {
            "-a" => crawl.args.push(pair),
            "-s" => crawl.settings.push(pair),
            _ => return None,
        }
    }
    Some(crawl)
}

/// Splits a command line into words as `sh` does, when it is plain words and single-quoted strings only (with
/// `'\''` for a quote inside one, as [`shell_word`] writes it); `None` when it holds anything else the shell
/// reads specially outside single quotes: an operator, an expansion, a comment, double quotes, another
/// backslash, a newline, or an unclosed quote. Inside single quotes anything goes.
pub fn shell_words(line: &str) -> Option<Vec<String>> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => words.extend(word.take()),
            '\'' => {
                let quoted = word.get_or_insert_with(String::new);
                loop {
                    match chars.next()? {
                        '\'' => break,
                        c => quoted.push(c),
                    }
                }
            }
            '\\' => match chars.next()? {
                '\'' => word.get_or_insert_with(String::new).push('\''),
                _ => return None,
            },
            ';' | '&' | '|' | '<' | '>' | '$' | '`' | '(' | ')' | '\n' | '"' | '#' => return None,
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    Some(words)
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

    #[test]
    fn a_crawl_is_read_back_as_it_was_written() {
        let args = vec![
            ("q".to_owned(), "it's here".to_owned()),
            ("empty".to_owned(), String::new()),
        ];
        let settings = vec![("FEEDS".to_owned(), r#"{"a": 1}"#.to_owned())];
        let crawl = parse_crawl(&crawl_args("quo tes", &args, &settings)).unwrap();
        assert_eq!(
            crawl,
            Crawl {
                spider: "quo tes".into(),
                args,
                settings
            }
        );
        assert_eq!(parse_crawl("list"), None);
        assert_eq!(parse_crawl("crawl q -a"), None);
        assert_eq!(parse_crawl("crawl q -x k=v"), None);
        assert_eq!(parse_crawl("crawl 'q"), None);
        assert_eq!(
            shell_words(r"scrapy crawl q -a 'u=x&y' -a 'it'\''s'"),
            Some(vec![
                "scrapy".to_owned(),
                "crawl".into(),
                "q".into(),
                "-a".into(),
                "u=x&y".into(),
                "-a".into(),
                "it's".into()
            ])
        );
        for special in [
            "a; b", "a && b", "a | b", "a > f", "$X", "`x`", "\"q\"", "a # c", "a\\b", "a\nb",
        ] {
            assert_eq!(shell_words(special), None, "{special}");
        }
    }
}
