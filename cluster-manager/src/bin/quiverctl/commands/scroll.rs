//! `quiverctl scroll <collection>`: every point (or every point a `--filter` matches), a
//! page at a time, in the Merger's order (shard by shard, each shard's points by id).
//!
//! `--output jsonl` streams one `{"id", "vector"?, "payload"?}` object per line to `--out
//! FILE` (with a progress bar on stderr) or to stdout, and ends with a summary line on
//! stderr; nothing is held in memory but one page. `--output table` and `--output json`
//! gather every point first, for small results.

use std::{
    fs::File,
    io::{BufWriter, Write},
    path::PathBuf,
    time::Instant,
};

use quiver_proto::v1::{Point, ScrollRequest};
use serde::Serialize;
use serde_json::json;

use crate::{
    client::{self, Merger},
    commands::count::{self, points},
    errors::{status_for, CliError},
    filter::{FilterArg, ParsedFilter},
    output::{payload_value, truncate, OutputFormat, Printer, Table},
    GlobalOptions,
};

#[derive(Debug, clap::Args)]
pub struct ScrollArgs {
    collection: String,
    #[command(flatten)]
    filter: FilterArg,
    /// Points per page, that is per call to the Merger (1 to 10000).
    #[arg(long, visible_alias = "page-size", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    limit: u32,
    /// Include each point's vector.
    #[arg(long)]
    with_vectors: bool,
    /// Include each point's payload (table output always shows it).
    #[arg(long)]
    with_payloads: bool,
    /// With --output jsonl: write the lines to this file instead of stdout, with a progress
    /// bar on stderr. With --with-vectors (and --with-payloads) the file can be loaded again
    /// with `quiverctl load`.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

/// One line of `--output jsonl` (and one element of `--output json`'s `points`).
#[derive(Serialize)]
struct PointLine<'a> {
    id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    vector: Option<&'a [f32]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<serde_json::Value>,
}

impl<'a> PointLine<'a> {
    fn new(point: &'a Point, args: &ScrollArgs) -> PointLine<'a> {
        PointLine {
            id: &point.id,
            vector: args.with_vectors.then_some(point.vector.as_slice()),
            payload: args
                .with_payloads
                .then(|| payload_value(&point.payload_json)),
        }
    }
}

/// The pages of one scroll: one Scroll call each, until the token comes back empty.
struct Pages<'a> {
    merger: &'a mut Merger,
    collection: String,
    request: ScrollRequest,
    done: bool,
}

impl Pages<'_> {
    async fn next(&mut self) -> Result<Option<Vec<Point>>, CliError> {
        if self.done {
            return Ok(None);
        }
        let response = self
            .merger
            .scroll(self.request.clone())
            .await
            .map_err(status_for(&self.collection))?
            .into_inner();
        self.done = response.next_page_token.is_empty();
        self.request.page_token = response.next_page_token;
        Ok(Some(response.points))
    }
}

pub async fn run(global: &GlobalOptions, printer: Printer, args: ScrollArgs) -> anyhow::Result<()> {
    let filter = args.filter.parse()?;
    if args.out.is_some() && printer.format != OutputFormat::Jsonl {
        return Err(
            CliError::usage("--out writes JSON Lines: it needs --output jsonl")
                .hint(format!(
                    "quiverctl scroll {} --output jsonl --out FILE",
                    args.collection
                ))
                .into(),
        );
    }
    let mut merger = client::merger(global).await?;
    match printer.format {
        OutputFormat::Jsonl => stream(&mut merger, printer, &args, filter.as_ref()).await,
        OutputFormat::Table | OutputFormat::Json => {
            gather(&mut merger, printer, &args, filter.as_ref()).await
        }
    }
}

fn pages<'a>(
    merger: &'a mut Merger,
    args: &ScrollArgs,
    filter: Option<&ParsedFilter>,
    with_payloads: bool,
) -> Pages<'a> {
    Pages {
        merger,
        collection: args.collection.clone(),
        request: ScrollRequest {
            collection: args.collection.clone(),
            filter: filter.map(ParsedFilter::to_proto),
            limit: args.limit,
            page_token: String::new(),
            with_vectors: args.with_vectors,
            with_payloads,
            timeout_ms: 0,
        },
        done: false,
    }
}

/// Where the lines go.
enum Sink {
    File(BufWriter<File>),
    Stdout(BufWriter<std::io::Stdout>),
}

impl Sink {
    fn writer(&mut self) -> &mut dyn Write {
        match self {
            Sink::File(file) => file,
            Sink::Stdout(stdout) => stdout,
        }
    }
}

/// `--output jsonl`: page by page to the file or stdout.
async fn stream(
    merger: &mut Merger,
    printer: Printer,
    args: &ScrollArgs,
    filter: Option<&ParsedFilter>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let destination = args
        .out
        .as_ref()
        .map_or("stdout".to_string(), |path| path.display().to_string());
    // The bar is drawn only for a file (stdout carries the lines), on a terminal; a count
    // first gives it a length.
    let total = match &args.out {
        Some(_) if printer.progress_visible() => {
            count::count(merger, &args.collection, filter).await.ok()
        }
        _ => None,
    };
    let bar = match &args.out {
        Some(_) => printer.progress(
            total,
            &format!("scrolling {} into {destination}", args.collection),
        ),
        None => indicatif::ProgressBar::hidden(),
    };
    let mut pages = pages(merger, args, filter, args.with_payloads);
    let mut sink: Option<Sink> = None;
    let mut written = 0u64;
    let mut page_count = 0u64;
    let failed = |error: CliError, written: u64| -> anyhow::Error {
        bar.abandon();
        let error = if written > 0 {
            let note = format!(
                "{} were written to {destination} before this",
                points(written)
            );
            let hint = match &error.hint {
                Some(hint) => format!("{hint}; {note}"),
                None => note,
            };
            error.hint(hint)
        } else {
            error
        };
        error.into()
    };
    loop {
        let page = match pages.next().await {
            Ok(Some(page)) => page,
            Ok(None) => break,
            Err(error) => return Err(failed(error, written)),
        };
        page_count += 1;
        // Opened once the first page came back, so a failed first call (no such collection)
        // leaves no empty file behind.
        if sink.is_none() {
            sink = Some(match &args.out {
                Some(path) => Sink::File(BufWriter::new(File::create(path).map_err(|error| {
                    failed(
                        CliError::input(format!("cannot create {}: {error}", path.display())),
                        0,
                    )
                })?)),
                None => Sink::Stdout(BufWriter::new(std::io::stdout())),
            });
        }
        let writer = sink.as_mut().expect("opened above").writer();
        for point in &page {
            let result = serde_json::to_writer(&mut *writer, &PointLine::new(point, args))
                .map_err(std::io::Error::from)
                .and_then(|()| writer.write_all(b"\n"));
            if let Err(error) = result {
                return Err(write_failed(error, &destination, written, &bar));
            }
            written += 1;
        }
        bar.inc(page.len() as u64);
        if bar.length().is_some_and(|length| bar.position() > length) {
            bar.set_length(bar.position());
        }
    }
    if let Some(mut sink) = sink {
        if let Err(error) = sink.writer().flush() {
            return Err(write_failed(error, &destination, written, &bar));
        }
    }
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "wrote {} of {} to {destination} in {seconds:.2} s ({page_count} pages)",
        points(written),
        args.collection,
    );
    Ok(())
}

/// A failed write: a reader of stdout that went away (`| head`) ends the program quietly.
fn write_failed(
    error: std::io::Error,
    destination: &str,
    written: u64,
    bar: &indicatif::ProgressBar,
) -> anyhow::Error {
    bar.abandon();
    if error.kind() == std::io::ErrorKind::BrokenPipe && destination == "stdout" {
        std::process::exit(0);
    }
    CliError::input(format!(
        "cannot write to {destination}: {error} (after {})",
        points(written)
    ))
    .into()
}

/// `--output table` or `json`: every page gathered, then one table or document.
async fn gather(
    merger: &mut Merger,
    printer: Printer,
    args: &ScrollArgs,
    filter: Option<&ParsedFilter>,
) -> anyhow::Result<()> {
    // The table always shows payloads.
    let with_payloads = args.with_payloads || !printer.json();
    let mut pages = pages(merger, args, filter, with_payloads);
    let mut all: Vec<Point> = Vec::new();
    while let Some(page) = pages.next().await? {
        all.extend(page);
    }
    let mut columns = vec![("id", false), ("payload", false)];
    if args.with_vectors {
        columns.push(("vector", false));
    }
    let mut table = Table::new(&columns);
    for point in &all {
        let mut cells = vec![point.id.clone(), truncate(&point.payload_json, 60)];
        if args.with_vectors {
            cells.push(truncate(&format!("{:?}", point.vector), 60));
        }
        table.row(cells);
    }
    let mut text = if all.is_empty() {
        String::new()
    } else {
        table.render()
    };
    text.push_str(&match filter {
        Some(_) => format!(
            "{} of {} match the filter\n",
            points(all.len() as u64),
            args.collection
        ),
        None => format!("{} in {}\n", points(all.len() as u64), args.collection),
    });
    printer.emit(&text, || {
        json!({
            "collection": args.collection,
            "filter": filter.map(ParsedFilter::to_json),
            "count": all.len(),
            "points": all
                .iter()
                .map(|point| serde_json::to_value(PointLine::new(point, args)).unwrap_or_default())
                .collect::<Vec<_>>(),
        })
    });
    Ok(())
}
