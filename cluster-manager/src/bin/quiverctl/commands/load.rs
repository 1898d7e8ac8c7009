//! `quiverctl load <collection> <file>`: bulk upsert from .fvecs, .npy or .jsonl.
//!
//! A blocking reader thread turns the file into batches (checking every vector against the
//! collection before anything is sent, so a bad row is named before it is written); up to
//! `--concurrency` batches are in flight at once. Upserts are idempotent, so a load that
//! failed half-way can simply be run again.

use std::{path::PathBuf, time::Instant};

use quiver_proto::v1::{Point, UpsertRequest, UpsertResponse};
use serde_json::json;
use tokio::{sync::mpsc, task::JoinSet};

use crate::{
    client::{self, metric_of, Merger},
    errors::{status_for, CliError},
    input::{self, Format, Source},
    output::Printer,
    GlobalOptions,
};

#[derive(Debug, clap::Args)]
pub struct LoadArgs {
    /// The collection to upsert into (it must exist).
    collection: String,
    /// .fvecs, .npy (2-D float32 or float64) or .jsonl ({"id", "vector", "payload"} per line).
    file: PathBuf,
    /// The file's format, when its extension does not say.
    #[arg(long, value_enum)]
    format: Option<Format>,
    /// Points per upsert request (at most 10000).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    batch: u32,
    /// Upsert requests in flight at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    concurrency: u32,
    /// Added to row numbers to make the ids of .fvecs and .npy points.
    #[arg(long, default_value_t = 0)]
    id_offset: u64,
    /// Replicas per shard that must make each batch durable (default: the Merger's).
    #[arg(long)]
    write_quorum: Option<u32>,
}

/// One upsert request's worth of points, with where each came from.
struct Batch {
    points: Vec<Point>,
    positions: Vec<u64>,
}

pub async fn run(global: &GlobalOptions, printer: Printer, args: LoadArgs) -> anyhow::Result<()> {
    let format = match args.format {
        Some(format) => format,
        None => Format::from_path(&args.file)?,
    };
    let source = Source::open(&args.file, format, args.id_offset)?;
    let shown_path = args.file.display().to_string();
    let mut merger = client::merger(global).await?;
    let config = client::collection_config(&mut merger, &args.collection).await?;
    let dimension = config.dimension as usize;
    let metric: quiver_index::Metric = metric_of(&config)
        .as_config_str()
        .parse()
        .unwrap_or(quiver_index::Metric::L2);

    let started = Instant::now();
    let bar = printer.progress(
        source.total,
        &format!(
            "loading {} into {}",
            args.file.file_name().map_or(shown_path.clone(), |name| name
                .to_string_lossy()
                .into_owned()),
            args.collection
        ),
    );
    let concurrency = args.concurrency as usize;
    let (sender, mut receiver) = mpsc::channel::<Result<Batch, CliError>>(concurrency);
    let batch_size = args.batch as usize;
    let collection = args.collection.clone();
    let reader = tokio::task::spawn_blocking(move || {
        read_batches(source, batch_size, dimension, metric, &collection, sender)
    });

    let mut in_flight: JoinSet<(Batch, Result<UpsertResponse, tonic::Status>)> = JoinSet::new();
    let mut read_all = false;
    let mut points = 0u64;
    let mut batches = 0u64;
    let mut replica_write_failures = 0u64;
    loop {
        while !read_all && in_flight.len() < concurrency {
            match receiver.recv().await {
                Some(Ok(batch)) => {
                    in_flight.spawn(upsert(
                        merger.clone(),
                        args.collection.clone(),
                        args.write_quorum,
                        batch,
                    ));
                }
                Some(Err(error)) => {
                    bar.abandon();
                    return Err(with_partial_hint(error, points).into());
                }
                None => read_all = true,
            }
        }
        let Some(joined) = in_flight.join_next().await else {
            break;
        };
        let (batch, result) = joined?;
        let response = match result {
            Ok(response) => response,
            Err(status) => {
                bar.abandon();
                let error = batch_error(&status, &args.collection, &batch, &shown_path, format);
                return Err(with_partial_hint(error, points).into());
            }
        };
        points += u64::from(response.upserted);
        batches += 1;
        bar.inc(u64::from(response.upserted));
        for failure in &response.failed_replicas {
            replica_write_failures += 1;
            bar.suspend(|| {
                printer.warn(&format!(
                    "the replica of shard {} on {} missed a write: {}: {}",
                    failure.shard, failure.searcher_id, failure.code, failure.message
                ))
            });
        }
    }
    reader.await?;
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    let rate = points as f64 / seconds.max(1e-9);
    let failures = if replica_write_failures == 0 {
        String::new()
    } else {
        format!("; {replica_write_failures} replica write failures (those replicas catch up from their primary)")
    };
    printer.emit(
        &format!(
            "loaded {points} points into {} from {shown_path} in {seconds:.2} s ({rate:.0} points/s){failures}\n",
            args.collection
        ),
        || {
            json!({
                "collection": args.collection,
                "file": shown_path,
                "format": format.name(),
                "points": points,
                "batches": batches,
                "seconds": seconds,
                "points_per_second": rate,
                "replica_write_failures": replica_write_failures,
            })
        },
    );
    Ok(())
}

async fn upsert(
    mut merger: Merger,
    collection: String,
    write_quorum: Option<u32>,
    mut batch: Batch,
) -> (Batch, Result<UpsertResponse, tonic::Status>) {
    let points = std::mem::take(&mut batch.points);
    let ids: Vec<Point> = points
        .iter()
        .map(|point| Point {
            id: point.id.clone(),
            ..Point::default()
        })
        .collect();
    let result = merger
        .upsert(UpsertRequest {
            collection,
            points,
            write_quorum,
        })
        .await
        .map(|response| response.into_inner());
    // Keep the ids for naming the row of a rejected point.
    batch.points = ids;
    (batch, result)
}

/// Reads `source` into batches on the calling (blocking) thread, checking every vector
/// against the collection's dimension and metric; stops at the first bad record.
fn read_batches(
    source: Source,
    batch_size: usize,
    dimension: usize,
    metric: quiver_index::Metric,
    collection: &str,
    sender: mpsc::Sender<Result<Batch, CliError>>,
) {
    let path = source.path.display().to_string();
    let format = source.format;
    let mut batch = Batch {
        points: Vec::with_capacity(batch_size),
        positions: Vec::with_capacity(batch_size),
    };
    for record in source {
        let record = match record.and_then(|record| {
            check_vector(&record.vector, dimension, metric, collection)
                .map_err(|problem| {
                    CliError::input(format!(
                        "{}: {problem}",
                        input::location(&path, format, record.position)
                    ))
                    .hint(format!(
                        "every vector must match the collection (see `quiverctl collections describe {collection}`)"
                    ))
                })
                .map(|()| record)
        }) {
            Ok(record) => record,
            Err(error) => {
                let _ = sender.blocking_send(Err(error));
                return;
            }
        };
        batch.positions.push(record.position);
        batch.points.push(Point {
            id: record.id,
            vector: record.vector,
            payload_json: record.payload_json,
        });
        if batch.points.len() == batch_size {
            let full = std::mem::replace(
                &mut batch,
                Batch {
                    points: Vec::with_capacity(batch_size),
                    positions: Vec::with_capacity(batch_size),
                },
            );
            if sender.blocking_send(Ok(full)).is_err() {
                return;
            }
        }
    }
    if !batch.points.is_empty() {
        let _ = sender.blocking_send(Ok(batch));
    }
}

/// What is wrong with `vector` for this collection, if anything.
pub fn check_vector(
    vector: &[f32],
    dimension: usize,
    metric: quiver_index::Metric,
    collection: &str,
) -> Result<(), String> {
    if vector.len() != dimension {
        return Err(format!(
            "the vector has {} dimensions, but collection '{collection}' has {dimension}",
            vector.len()
        ));
    }
    quiver_index::validate_vector(vector, dimension, metric).map_err(|error| error.to_string())
}

/// A rejected batch, naming the row or line of the point the Merger complained about when
/// its message names one (`point "17": ...`), else the batch's range.
fn batch_error(
    status: &tonic::Status,
    collection: &str,
    batch: &Batch,
    path: &str,
    format: Format,
) -> CliError {
    let mut error = status_for(collection)(status.clone());
    if status.code() != tonic::Code::InvalidArgument {
        return error;
    }
    let named = batch
        .points
        .iter()
        .zip(&batch.positions)
        .find(|(point, _)| status.message().contains(&format!("{:?}", point.id)));
    let place = match named {
        Some((_, position)) => input::location(path, format, *position),
        None => match (batch.positions.first(), batch.positions.last()) {
            (Some(first), Some(last)) => format!(
                "{} to {}",
                input::location(path, format, *first),
                match format {
                    Format::Jsonl => format!("line {last}"),
                    _ => format!("row {last}"),
                }
            ),
            _ => path.to_string(),
        },
    };
    error.message = format!("{place}: {}", error.message);
    error
}

/// Says what a failed load left behind.
fn with_partial_hint(error: CliError, points_written: u64) -> CliError {
    if points_written == 0 {
        return error;
    }
    let written = format!(
        "{points_written} points were written before this; upserts are idempotent, so running the load again is safe"
    );
    let hint = match &error.hint {
        Some(hint) => format!("{hint}; {written}"),
        None => written,
    };
    error.hint(hint)
}
