//! `--filter`: a payload filter in its JSON form, given inline or read from a file
//! (`--filter @file.json`), parsed and checked here before any call so that a mistake is a
//! usage error naming its place (`filter.must[0].range: ...`), not a round trip.

use std::path::Path;

use quiver_payload::{Filter, PayloadSchema};
use quiver_proto::v1 as pb;

use crate::errors::CliError;

/// The JSON form, for hints and `--help`.
pub const FILTER_FORM: &str = r#"{"must": [{"key": "category", "match": {"keyword": "shoes"}}, {"key": "price", "range": {"lt": 100}}], "should": [{"key": "lang", "any": {"keywords": ["en", "de"]}}], "must_not": [{"has_id": ["p-1"]}, {"is_empty": {"key": "title"}}]}"#;

/// The `--filter` option, flattened into the commands that take one.
#[derive(Debug, Clone, clap::Args)]
pub struct FilterArg {
    /// Only points whose payload matches this filter: JSON, or @FILE (--help shows the form).
    ///
    /// For example: '{"must": [{"key": "category", "match": {"keyword": "shoes"}},
    ///                         {"key": "price", "range": {"lt": 100}}]}'
    /// A point matches when it passes every condition of "must", at least one of "should"
    /// (when there are any) and none of "must_not". Conditions:
    ///   {"key": K, "match": {"keyword": "s"}}  (or {"integer": 3}, {"boolean": true})
    ///   {"key": K, "any": {"keywords": ["a", "b"]}}  (or {"integers": [1, 2]})
    ///   {"key": K, "range": {"gte": 1, "lt": 9.5}}  (gt, gte, lt, lte: at least one)
    ///   {"has_id": ["p-1", "p-2"]}    {"is_empty": {"key": K}}    {"filter": {...}} (nested)
    /// K is a dotted path into the payload ("meta.lang"); arrays match when any element does.
    #[arg(verbatim_doc_comment)]
    #[arg(long, value_name = "JSON|@FILE", allow_hyphen_values = true)]
    pub filter: Option<String>,
}

/// A filter as given, parsed and checked against the limits.
#[derive(Debug, Clone)]
pub struct ParsedFilter {
    pub filter: Filter,
}

impl ParsedFilter {
    pub fn to_proto(&self) -> pb::Filter {
        quiver_payload::proto::to_proto(&self.filter)
    }

    /// The JSON form, normalised (as `--output json` reports it back).
    pub fn to_json(&self) -> serde_json::Value {
        quiver_payload::json::to_json(&self.filter)
    }

    /// An empty filter (`{}`) matches every point.
    pub fn is_empty(&self) -> bool {
        self.filter.is_empty()
    }
}

impl FilterArg {
    /// The filter, if one was given; a bad one is a usage error (exit code 2) naming the
    /// path of the mistake. Checked against the limits only: whether a test fits a key's
    /// payload index is the Merger's to say (it knows the indexes).
    pub fn parse(&self) -> Result<Option<ParsedFilter>, CliError> {
        let Some(given) = &self.filter else {
            return Ok(None);
        };
        let (text, from) = match given.strip_prefix('@') {
            Some(path) => {
                let text = std::fs::read_to_string(Path::new(path)).map_err(|error| {
                    CliError::input(format!("cannot read the filter from {path}: {error}"))
                        .hint("give --filter @FILE with a file holding the filter's JSON, or the JSON itself")
                })?;
                (text, format!(" (from {path})"))
            }
            None => (given.clone(), String::new()),
        };
        parse_text(&text).map(Some).map_err(|problem| {
            CliError::usage(format!("invalid --filter{from}: {problem}"))
                .hint(format!("a filter is JSON like {FILTER_FORM}"))
        })
    }
}

/// Parses and checks the JSON form.
pub fn parse_text(text: &str) -> Result<ParsedFilter, quiver_payload::FilterError> {
    let filter = quiver_payload::json::parse(text)?;
    filter.validate(&PayloadSchema::default())?;
    Ok(ParsedFilter { filter })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arg(text: &str) -> FilterArg {
        FilterArg {
            filter: Some(text.to_string()),
        }
    }

    #[test]
    fn the_documented_form_parses() {
        let parsed = arg(FILTER_FORM).parse().unwrap().unwrap();
        assert_eq!(parsed.filter.must.len(), 2);
        assert_eq!(parsed.to_proto().must_not.len(), 2);
        assert!(FilterArg { filter: None }.parse().unwrap().is_none());
        assert!(arg("{}").parse().unwrap().unwrap().is_empty());
    }

    #[test]
    fn mistakes_are_usage_errors_naming_the_path() {
        let error = arg(r#"{"must": [{"key": "price", "range": {}}]}"#)
            .parse()
            .unwrap_err();
        assert_eq!(error.code, "USAGE");
        assert_eq!(error.exit_code, 2);
        assert_eq!(
            error.message,
            "invalid --filter: filter.must[0].range: give at least one of gt, gte, lt, lte"
        );
        assert!(error
            .hint
            .unwrap()
            .contains(r#""match": {"keyword": "shoes"}"#));
        let error = arg("{\"must\": [").parse().unwrap_err();
        assert!(
            error
                .message
                .starts_with("invalid --filter: filter: not valid JSON"),
            "{}",
            error.message
        );
    }

    #[test]
    fn a_filter_file_is_read_and_named() {
        let folder = tempfile::tempdir().unwrap();
        let path = folder.path().join("f.json");
        std::fs::write(
            &path,
            r#"{"must": [{"key": "a", "match": {"integer": 1.5}}]}"#,
        )
        .unwrap();
        let error = arg(&format!("@{}", path.display())).parse().unwrap_err();
        assert_eq!(
            error.message,
            format!(
                "invalid --filter (from {}): filter.must[0].match.integer: expected an integer, got 1.5",
                path.display()
            )
        );
        std::fs::write(&path, r#"{"must_not": [{"has_id": ["x"]}]}"#).unwrap();
        let parsed = arg(&format!("@{}", path.display()))
            .parse()
            .unwrap()
            .unwrap();
        assert_eq!(
            parsed.to_json(),
            serde_json::json!({"must_not": [{"has_id": ["x"]}]})
        );
        let error = arg("@/no/such/file.json").parse().unwrap_err();
        assert_eq!(error.code, "INPUT");
    }
}
