//! `quiverctl search <collection>`: one query (`--vector`, or `--query-file` and `--row`)
//! printed as a results table, or every query of a file (`--queries`) with recall against
//! ground truth and queries per second; either among the points a `--filter` matches, with
//! how each shard searched under it (its plan).

use std::{collections::BTreeMap, path::PathBuf, time::Instant};

use clap::ArgGroup;
use quiver_index::dataset;
use quiver_proto::v1::{
    CollectionConfig, QueryResult, SearchParams, SearchRequest, SearchResponse, ShardOutcome,
    ShardReport, Vector,
};
use serde_json::json;

use crate::{
    client::{self, metric_of, Merger},
    commands::load::check_vector,
    errors::{status_for, CliError},
    filter::{FilterArg, ParsedFilter},
    input::{Format, Source},
    output::{metric_name, payload_value, score_name, truncate, Printer, Table},
    GlobalOptions,
};

#[derive(Debug, clap::Args)]
#[command(group(
    ArgGroup::new("query")
        .required(true)
        .args(["vector", "query_file", "queries"])
))]
pub struct SearchArgs {
    collection: String,
    /// One query, as comma-separated numbers: --vector 0.1,0.2,0.3
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
    vector: Option<Vec<f32>>,
    /// One query taken from a file (.fvecs, .npy or .jsonl) ...
    #[arg(long)]
    query_file: Option<PathBuf>,
    /// ... at this row (from 0; for .jsonl, the row-th record).
    #[arg(long, default_value_t = 0, requires = "query_file")]
    row: u64,
    /// Every query of this file (.fvecs, .npy or .jsonl): the batch mode, reporting queries
    /// per second and, with --groundtruth, recall.
    #[arg(long)]
    queries: Option<PathBuf>,
    /// .ivecs ground truth for --queries (row numbers of the loaded base file).
    #[arg(long, requires = "queries")]
    groundtruth: Option<PathBuf>,
    /// The format of --query-file or --queries, when the extension does not say.
    #[arg(long, value_enum)]
    format: Option<Format>,
    /// Neighbours per query.
    #[arg(short = 'k', long = "k", default_value_t = 10)]
    k: u32,
    /// HNSW: size of the candidate list for this search.
    #[arg(long)]
    ef_search: Option<u32>,
    /// IVF: inverted lists to probe for this search.
    #[arg(long)]
    nprobe: Option<u32>,
    /// Accept answers from at least this fraction of the shards (0 to 1; the server's
    /// default is 1: every shard, or an error).
    #[arg(long)]
    min_coverage: Option<f32>,
    /// Search only these shards (comma-separated numbers).
    #[arg(long, value_delimiter = ',')]
    shards: Vec<u32>,
    /// Show each neighbour's vector too.
    #[arg(long)]
    with_vectors: bool,
    /// Batch mode: queries per request.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1024))]
    batch: u32,
    /// Batch mode: how many queries' neighbours to print (table output only).
    #[arg(long, default_value_t = 1)]
    show: usize,
    #[command(flatten)]
    filter: FilterArg,
}

impl SearchArgs {
    fn request(&self, queries: Vec<Vector>, filter: Option<&ParsedFilter>) -> SearchRequest {
        let params = (self.ef_search.is_some() || self.nprobe.is_some()).then(|| SearchParams {
            ef_search: self.ef_search.unwrap_or(0),
            nprobe: self.nprobe.unwrap_or(0),
        });
        SearchRequest {
            collection: self.collection.clone(),
            queries,
            k: self.k,
            shards: self.shards.clone(),
            with_payloads: true,
            with_vectors: self.with_vectors,
            params,
            min_coverage: self.min_coverage,
            filter: filter.map(ParsedFilter::to_proto),
            ..SearchRequest::default()
        }
    }

    fn format_of(&self, path: &std::path::Path) -> Result<Format, CliError> {
        match self.format {
            Some(format) => Ok(format),
            None => Format::from_path(path),
        }
    }
}

pub async fn run(global: &GlobalOptions, printer: Printer, args: SearchArgs) -> anyhow::Result<()> {
    // A bad filter is a usage error, told before anything is asked.
    let filter = args.filter.parse()?;
    let mut merger = client::merger(global).await?;
    let config = client::collection_config(&mut merger, &args.collection).await?;
    if let Some(path) = args.queries.clone() {
        return batch(&mut merger, printer, &args, &config, path, filter.as_ref()).await;
    }
    let (query, from) = match (&args.vector, &args.query_file) {
        (Some(vector), _) => (vector.clone(), "--vector".to_string()),
        (None, Some(path)) => {
            let source = Source::open(path, args.format_of(path)?, 0)?;
            let location = source.location(args.row);
            (query_at(source, args.row)?, location)
        }
        (None, None) => unreachable!("clap requires a query"),
    };
    let metric: quiver_index::Metric = metric_of(&config)
        .as_config_str()
        .parse()
        .unwrap_or(quiver_index::Metric::L2);
    check_vector(&query, config.dimension as usize, metric, &args.collection).map_err(
        |problem| {
            CliError::input(format!("the query ({from}): {problem}")).hint(format!(
                "see `quiverctl collections describe {}`",
                args.collection
            ))
        },
    )?;
    let response = merger
        .search(args.request(vec![Vector { values: query }], filter.as_ref()))
        .await
        .map_err(status_for(&args.collection))?
        .into_inner();
    let result = response.results.first().cloned().unwrap_or_default();
    printer.emit(
        &render_results(&config, &args, &response, &result, filter.as_ref()),
        || results_json(&config, &args, &response, &result, filter.as_ref()),
    );
    Ok(())
}

/// The `row`-th record of `source`.
fn query_at(source: Source, row: u64) -> Result<Vec<f32>, CliError> {
    let path = source.path.display().to_string();
    let mut count = 0u64;
    for record in source {
        let record = record?;
        if count == row {
            return Ok(record.vector);
        }
        count += 1;
    }
    Err(
        CliError::input(format!("{path} has {count} rows, so there is no row {row}"))
            .hint("rows are numbered from 0"),
    )
}

fn format_score(score: f32) -> String {
    if score.abs() >= 100.0 {
        format!("{score:.1}")
    } else {
        format!("{score:.4}")
    }
}

fn coverage_line(response: &SearchResponse) -> String {
    let mut text = format!(
        "coverage {:.2}: {} of {} shards answered",
        response.coverage, response.shards_answered, response.shards_total
    );
    if response.partial {
        text.push_str(" (PARTIAL results)");
    }
    text.push('\n');
    for failure in &response.failed_shards {
        text.push_str(&format!(
            "  missing shard {} ({}): {} {}\n",
            failure.shard,
            if failure.searcher_id.is_empty() {
                "no searcher"
            } else {
                &failure.searcher_id
            },
            failure.code,
            failure.message
        ));
    }
    text
}

/// How many shards answered with each plan ("exact_scan", "index"); shards report a plan
/// only under a filter.
fn plan_counts<'a>(
    reports: impl IntoIterator<Item = &'a ShardReport>,
    counts: &mut BTreeMap<String, u64>,
) {
    for report in reports {
        if report.outcome == ShardOutcome::Ok as i32 && !report.plan.is_empty() {
            *counts.entry(report.plan.clone()).or_default() += 1;
        }
    }
}

/// `plans: exact_scan 3, index 1` (shards per plan), or nothing when no shard reported one.
fn plans_text(counts: &BTreeMap<String, u64>) -> Option<String> {
    (!counts.is_empty()).then(|| {
        let parts: Vec<String> = counts
            .iter()
            .map(|(plan, count)| format!("{plan} {count}"))
            .collect();
        format!("plans: {}", parts.join(", "))
    })
}

fn outcome_name(outcome: i32) -> &'static str {
    match ShardOutcome::try_from(outcome) {
        Ok(ShardOutcome::Ok) => "OK",
        Ok(ShardOutcome::TimedOut) => "TIMED_OUT",
        Ok(ShardOutcome::Failed) => "FAILED",
        Ok(ShardOutcome::NoLiveReplica) => "NO_LIVE_REPLICA",
        _ => "UNKNOWN",
    }
}

/// Every shard's report, its plan included (`null` without a filter).
fn shard_reports_json(response: &SearchResponse) -> Vec<serde_json::Value> {
    response
        .shards
        .iter()
        .map(|report| {
            json!({
                "shard": report.shard,
                "outcome": outcome_name(report.outcome),
                "searcher": report.searcher_id,
                "code": report.code,
                "message": report.message,
                "latency_us": report.latency_us,
                "attempts": report.attempts,
                "plan": (!report.plan.is_empty()).then_some(&report.plan),
            })
        })
        .collect()
}

fn filter_json(filter: Option<&ParsedFilter>) -> serde_json::Value {
    filter.map_or(serde_json::Value::Null, ParsedFilter::to_json)
}

fn results_table(config: &CollectionConfig, result: &QueryResult, with_vectors: bool) -> String {
    let score_column = score_name(config.metric);
    let mut columns = vec![
        ("rank", true),
        ("id", false),
        (score_column, true),
        ("payload", false),
    ];
    if with_vectors {
        columns.push(("vector", false));
    }
    let mut table = Table::new(&columns);
    for (rank, neighbor) in result.neighbors.iter().enumerate() {
        let mut cells = vec![
            (rank + 1).to_string(),
            neighbor.id.clone(),
            format_score(neighbor.score),
            truncate(&neighbor.payload_json, 60),
        ];
        if with_vectors {
            cells.push(truncate(&format!("{:?}", neighbor.vector), 60));
        }
        table.row(cells);
    }
    table.render()
}

fn render_results(
    config: &CollectionConfig,
    args: &SearchArgs,
    response: &SearchResponse,
    result: &QueryResult,
    filter: Option<&ParsedFilter>,
) -> String {
    let mut text = format!(
        "top {} of collection {} (metric {}: {})\n",
        args.k,
        args.collection,
        metric_name(config.metric),
        if score_name(config.metric) == "distance" {
            "squared distance, smaller is closer"
        } else {
            "similarity, larger is closer"
        }
    );
    if result.neighbors.is_empty() {
        text.push_str(match filter {
            Some(_) => "no results (does any point match the filter?)\n",
            None => "no results (is the collection empty?)\n",
        });
    } else {
        text.push_str(&results_table(config, result, args.with_vectors));
    }
    text.push_str(&coverage_line(response));
    let mut plans = BTreeMap::new();
    plan_counts(&response.shards, &mut plans);
    if let Some(line) = plans_text(&plans) {
        text.push_str(&line);
        text.push('\n');
    }
    text
}

fn results_json(
    config: &CollectionConfig,
    args: &SearchArgs,
    response: &SearchResponse,
    result: &QueryResult,
    filter: Option<&ParsedFilter>,
) -> serde_json::Value {
    let results: Vec<_> = result
        .neighbors
        .iter()
        .enumerate()
        .map(|(rank, neighbor)| {
            let mut item = json!({
                "rank": rank + 1,
                "id": neighbor.id,
                "score": neighbor.score,
                "payload": payload_value(&neighbor.payload_json),
            });
            if args.with_vectors {
                item["vector"] = json!(neighbor.vector);
            }
            item
        })
        .collect();
    json!({
        "collection": args.collection,
        "metric": metric_name(config.metric),
        "score": score_name(config.metric),
        "k": args.k,
        "filter": filter_json(filter),
        "results": results,
        "shards_total": response.shards_total,
        "shards_answered": response.shards_answered,
        "coverage": response.coverage,
        "partial": response.partial,
        "failed_shards": failed_shards_json(response),
        "shards": shard_reports_json(response),
    })
}

fn failed_shards_json(response: &SearchResponse) -> Vec<serde_json::Value> {
    response
        .failed_shards
        .iter()
        .map(|failure| {
            json!({
                "shard": failure.shard,
                "searcher": failure.searcher_id,
                "code": failure.code,
                "message": failure.message,
            })
        })
        .collect()
}

/// The batch mode: every query of a file, in requests of `--batch`, and recall@k against
/// ground truth when given.
async fn batch(
    merger: &mut Merger,
    printer: Printer,
    args: &SearchArgs,
    config: &CollectionConfig,
    path: PathBuf,
    filter: Option<&ParsedFilter>,
) -> anyhow::Result<()> {
    let source = Source::open(&path, args.format_of(&path)?, 0)?;
    let queries: Vec<Vec<f32>> = source
        .map(|record| record.map(|record| record.vector))
        .collect::<Result<_, _>>()?;
    let truth = match &args.groundtruth {
        Some(path) => Some(dataset::read_ivecs(path).map_err(|error| {
            CliError::input(format!("cannot read {}: {error}", path.display()))
        })?),
        None => None,
    };
    if let Some(truth) = &truth {
        if truth.len() < queries.len() {
            return Err(CliError::input(format!(
                "{} has ground truth for {} queries, but {} has {}",
                args.groundtruth.as_ref().expect("given").display(),
                truth.len(),
                path.display(),
                queries.len()
            ))
            .into());
        }
    }
    let started = Instant::now();
    let mut found: Vec<Vec<u64>> = Vec::with_capacity(queries.len());
    let mut partial_responses = 0usize;
    let mut plans = BTreeMap::new();
    let mut requests = 0usize;
    let mut shown = String::new();
    for (chunk_number, chunk) in queries.chunks(args.batch as usize).enumerate() {
        let response = merger
            .search(
                args.request(
                    chunk
                        .iter()
                        .map(|values| Vector {
                            values: values.clone(),
                        })
                        .collect(),
                    filter,
                ),
            )
            .await
            .map_err(|status| {
                let mut error = status_for(&args.collection)(status);
                let first = chunk_number * args.batch as usize;
                if error.code == "INVALID_ARGUMENT" {
                    error.message = format!(
                        "{} rows {first} to {}: {}",
                        path.display(),
                        first + chunk.len() - 1,
                        error.message
                    );
                }
                error
            })?
            .into_inner();
        requests += 1;
        plan_counts(&response.shards, &mut plans);
        if response.partial {
            partial_responses += 1;
            printer.warn(&coverage_line(&response));
        }
        for result in &response.results {
            let query_number = found.len();
            if query_number < args.show {
                shown.push_str(&format!("query {query_number}:\n"));
                shown.push_str(&results_table(config, result, args.with_vectors));
            }
            found.push(
                result
                    .neighbors
                    .iter()
                    .map(|neighbor| neighbor.id.parse::<u64>().unwrap_or(u64::MAX))
                    .collect(),
            );
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let rate = queries.len() as f64 / seconds.max(1e-9);
    let k = args.k;
    let recall = truth
        .as_ref()
        .map(|truth| dataset::recall_at_k(&found, &truth[..found.len()], k as usize));
    let mut text = shown;
    text.push_str(&format!(
        "searched {} queries (k = {k}) in {seconds:.2} s ({rate:.0} queries/s); partial responses: {partial_responses}\n",
        queries.len(),
    ));
    if let Some(line) = plans_text(&plans) {
        text.push_str(&format!(
            "{line} (shard answers over {requests} requests)\n"
        ));
    }
    if let Some(recall) = recall {
        text.push_str(&format!(
            "recall@{k} against the ground truth: {recall:.3}\n"
        ));
    }
    printer.emit(&text, || {
        json!({
            "collection": args.collection,
            "k": k,
            "filter": filter_json(filter),
            "queries": queries.len(),
            "requests": requests,
            "plans": plans,
            "seconds": seconds,
            "queries_per_second": rate,
            "partial_responses": partial_responses,
            "recall": recall,
        })
    });
    Ok(())
}
