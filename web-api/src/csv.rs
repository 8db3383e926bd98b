//! Items as CSV (RFC 4180): one column per top-level field, in the order the fields first appear across the
//! exported items, so a spreadsheet shows them as the spider wrote them.

use std::collections::HashSet;
use std::fmt;

use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

/// The column of an item that is not a JSON object.
const VALUE_COLUMN: &str = "value";

/// An item's top-level fields in their written order, each value still as JSON text.
struct Fields(Vec<(String, Box<RawValue>)>);

impl<'de> Deserialize<'de> for Fields {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Ordered;
        impl<'de> Visitor<'de> for Ordered {
            type Value = Fields;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields, A::Error> {
                let mut fields = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    fields.push(entry);
                }
                Ok(Fields(fields))
            }
        }
        deserializer.deserialize_map(Ordered)
    }
}

/// An item's fields; anything but an object is one field named `value`.
fn fields(item: &RawValue) -> Vec<(String, Box<RawValue>)> {
    match serde_json::from_str::<Fields>(item.get()) {
        Ok(Fields(fields)) => fields,
        Err(_) => vec![(VALUE_COLUMN.to_owned(), item.to_owned())],
    }
}

/// The columns of an export, learned from its items.
#[derive(Debug, Default)]
pub(crate) struct Columns {
    names: Vec<String>,
    known: HashSet<String>,
}

impl Columns {
    pub(crate) fn learn(&mut self, item: &RawValue) {
        for (name, _) in fields(item) {
            if self.known.insert(name.clone()) {
                self.names.push(name);
            }
        }
    }

    pub(crate) fn header(&self) -> String {
        let cells: Vec<String> = self.names.iter().map(|n| escape(&neutralise(n))).collect();
        cells.join(",") + "\r\n"
    }

    /// One record; fields the item lacks are empty cells, and fields no column names are left out.
    pub(crate) fn row(&self, item: &RawValue) -> String {
        let fields = fields(item);
        let cells: Vec<String> = self
            .names
            .iter()
            .map(|name| {
                fields
                    .iter()
                    .find(|(field, _)| field == name)
                    .map(|(_, value)| escape(&cell(value)))
                    .unwrap_or_default()
            })
            .collect();
        cells.join(",") + "\r\n"
    }
}

/// A value as a cell: strings unquoted (and neutralised), `null` empty, anything else as compact JSON
/// (however the spider spaced it).
fn cell(value: &RawValue) -> String {
    match serde_json::from_str::<serde_json::Value>(value.get()) {
        Ok(serde_json::Value::String(text)) => neutralise(&text),
        Ok(serde_json::Value::Null) => String::new(),
        Ok(other) => other.to_string(),
        Err(_) => value.get().to_owned(),
    }
}

/// Scraped text is the attacker's: a cell starting with `=`, `+`, `-`, `@`, a tab or a carriage return is a
/// formula to a spreadsheet (`=HYPERLINK(…)`, `+1+cmd|…`), so it gets a leading `'`, which spreadsheets show
/// as text (OWASP's advice). Numbers are JSON numbers, never strings, so `-1.5` stays a number.
fn neutralise(text: &str) -> String {
    if text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{text}")
    } else {
        text.to_owned()
    }
}

fn escape(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(json: &str) -> Box<RawValue> {
        RawValue::from_string(json.to_owned()).unwrap()
    }

    #[test]
    fn columns_follow_first_appearance_and_cells_are_escaped() {
        let items = [
            raw(r#"{"url":"https://a","title":"Say \"hi\", world","price":1.5}"#),
            raw(r#"{"url":"https://b","tags":["x", "y"],"title":null,"extra":{"k": 1}}"#),
            raw(r#""a bare string""#),
        ];
        let mut columns = Columns::default();
        for item in &items {
            columns.learn(item);
        }
        let csv: String = std::iter::once(columns.header())
            .chain(items.iter().map(|i| columns.row(i)))
            .collect();
        assert_eq!(
            csv,
            "url,title,price,tags,extra,value\r\n\
             https://a,\"Say \"\"hi\"\", world\",1.5,,,\r\n\
             https://b,,,\"[\"\"x\"\",\"\"y\"\"]\",\"{\"\"k\"\":1}\",\r\n\
             ,,,,,a bare string\r\n"
        );
    }

    #[test]
    fn line_breaks_inside_a_value_stay_inside_its_quoted_cell() {
        let item = raw(r#"{"text":"two\nlines"}"#);
        let mut columns = Columns::default();
        columns.learn(&item);
        assert_eq!(columns.row(&item), "\"two\nlines\"\r\n");
    }

    #[test]
    fn text_a_spreadsheet_would_run_as_a_formula_is_neutralised() {
        let item = raw(
            r#"{"a":"=HYPERLINK(\"http://x\",\"y\")","b":"+1+cmd|' /C calc'!A0","c":"@SUM(1)","d":"-2+3","e":-1.5,"=f":"ok"}"#,
        );
        let mut columns = Columns::default();
        columns.learn(&item);
        assert_eq!(columns.header(), "a,b,c,d,e,'=f\r\n");
        assert_eq!(
            columns.row(&item),
            "\"'=HYPERLINK(\"\"http://x\"\",\"\"y\"\")\",'+1+cmd|' /C calc'!A0,'@SUM(1),'-2+3,-1.5,ok\r\n"
        );
    }
}
