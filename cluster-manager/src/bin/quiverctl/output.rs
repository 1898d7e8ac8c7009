//! How results reach stdout: aligned text tables for people, one JSON document for scripts.
//! With `--output json` a command prints exactly one JSON document on stdout and nothing
//! else; progress and warnings always go to stderr.

use std::io::{IsTerminal, Write};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use quiver_proto::v1::{Metric, ReplicaRole, ReplicaState};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Aligned tables and sentences.
    Table,
    /// One JSON document on stdout (see the README for each command's shape).
    Json,
    /// JSON Lines: one JSON object per line, streamed (`scroll` only).
    Jsonl,
}

/// What every command gets to print with.
#[derive(Debug, Clone, Copy)]
pub struct Printer {
    pub format: OutputFormat,
}

impl Printer {
    pub fn json(&self) -> bool {
        self.format == OutputFormat::Json
    }

    /// Prints `text` in table mode, or `document` in JSON mode (never both).
    pub fn emit(&self, text: &str, document: impl FnOnce() -> serde_json::Value) {
        match self.format {
            // `main` lets only `scroll` run with jsonl, and it prints its own lines.
            OutputFormat::Table | OutputFormat::Jsonl => write_stdout(text),
            OutputFormat::Json => print_json(&document()),
        }
    }

    /// A warning for people: on stderr, so stdout stays one document in JSON mode.
    pub fn warn(&self, text: &str) {
        eprintln!("warning: {text}");
    }

    /// Whether [`Printer::progress`] draws anything (so a command can skip the work of
    /// sizing a bar nobody sees).
    pub fn progress_visible(&self) -> bool {
        !self.json() && std::io::stderr().is_terminal()
    }

    /// A progress bar on stderr, hidden in JSON mode and when stderr is not a terminal.
    /// `total` is the number of points when known (else a spinner that counts). The bar
    /// takes the width the terminal leaves, so the line never wraps.
    pub fn progress(&self, total: Option<u64>, what: &str) -> ProgressBar {
        let visible = self.progress_visible();
        let bar = match total {
            Some(total) => ProgressBar::new(total),
            None => ProgressBar::new_spinner(),
        };
        if !visible {
            bar.set_draw_target(ProgressDrawTarget::hidden());
            return bar;
        }
        bar.set_draw_target(ProgressDrawTarget::stderr());
        let template = match total {
            Some(_) => "{msg} [{wide_bar:.cyan/blue}] {human_pos}/{human_len} points ({eta} left)",
            None => "{spinner} {msg}: {human_pos} points ({elapsed})",
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(what.to_string());
        bar
    }
}

pub fn print_json(document: &serde_json::Value) {
    // `to_string_pretty` cannot fail on a `Value`.
    let mut text = serde_json::to_string_pretty(document).unwrap_or_default();
    text.push('\n');
    write_stdout(&text);
}

/// Writes to stdout; a reader that went away (`quiverctl status | head`) ends the program
/// quietly instead of with a panic.
fn write_stdout(text: &str) {
    let mut stdout = std::io::stdout().lock();
    if let Err(error) = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        if error.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write to stdout: {error}");
        std::process::exit(1);
    }
}

/// A text table: columns padded to their widest cell, two spaces apart, numbers right-aligned.
pub struct Table {
    headers: Vec<String>,
    right_aligned: Vec<bool>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// `columns`: header and whether the column is right-aligned.
    pub fn new(columns: &[(&str, bool)]) -> Table {
        Table {
            headers: columns
                .iter()
                .map(|(header, _)| header.to_string())
                .collect(),
            right_aligned: columns.iter().map(|(_, right)| *right).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.headers.len());
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|header| header.len()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let mut text = String::new();
        for row in std::iter::once(&self.headers).chain(&self.rows) {
            let cells: Vec<String> = row
                .iter()
                .zip(&widths)
                .zip(&self.right_aligned)
                .map(|((cell, width), right)| {
                    if *right {
                        format!("{cell:>width$}")
                    } else {
                        format!("{cell:<width$}")
                    }
                })
                .collect();
            text.push_str(cells.join("  ").trim_end());
            text.push('\n');
        }
        text
    }
}

/// `text` cut to `limit` characters, with an ellipsis when cut.
pub fn truncate(text: &str, limit: usize) -> String {
    if text.chars().count() <= limit {
        return text.to_string();
    }
    let kept: String = text.chars().take(limit.saturating_sub(1)).collect();
    format!("{kept}…")
}

/// A payload as JSON: the object it holds, `null` for none, or the raw text if it is not
/// JSON (the Merger only stores objects, so that does not happen in practice).
pub fn payload_value(payload_json: &str) -> serde_json::Value {
    if payload_json.is_empty() {
        return serde_json::Value::Null;
    }
    serde_json::from_str(payload_json)
        .unwrap_or_else(|_| serde_json::Value::String(payload_json.to_string()))
}

pub fn metric_name(metric: i32) -> &'static str {
    match Metric::try_from(metric) {
        Ok(metric) => metric.as_config_str(),
        Err(_) => "unknown",
    }
}

/// What a score means under `metric`: "distance" (L2, smaller is closer) or "similarity".
pub fn score_name(metric: i32) -> &'static str {
    match Metric::try_from(metric) {
        Ok(Metric::L2) => "distance",
        _ => "similarity",
    }
}

pub fn state_name(state: i32) -> &'static str {
    match ReplicaState::try_from(state) {
        Ok(ReplicaState::Offline) => "OFFLINE",
        Ok(ReplicaState::Booting) => "BOOTING",
        Ok(ReplicaState::Active) => "ACTIVE",
        Ok(ReplicaState::Draining) => "DRAINING",
        Ok(ReplicaState::Failed) => "FAILED",
        _ => "UNKNOWN",
    }
}

pub fn role_name(role: i32) -> &'static str {
    match ReplicaRole::try_from(role) {
        Ok(ReplicaRole::Primary) => "primary",
        Ok(ReplicaRole::Follower) => "follower",
        Ok(ReplicaRole::Learner) => "learner",
        _ => "-",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_trim() {
        let mut table = Table::new(&[("id", false), ("score", true)]);
        table.row(vec!["a".into(), "1.5".into()]);
        table.row(vec!["long-id".into(), "10.25".into()]);
        assert_eq!(
            table.render(),
            "id       score\na          1.5\nlong-id  10.25\n"
        );
    }

    #[test]
    fn truncation_marks_the_cut() {
        assert_eq!(truncate("abcdef", 10), "abcdef");
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(payload_value(""), serde_json::Value::Null);
        assert_eq!(payload_value(r#"{"a":1}"#)["a"], 1);
    }
}
