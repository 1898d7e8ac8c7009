//! `quiverctl get` and `quiverctl delete`: points by id, or (delete) every point a filter
//! matches.

use std::collections::HashMap;

use clap::ArgGroup;
use quiver_proto::v1::{DeleteRequest, DeleteResponse, GetRequest};
use serde_json::json;

use crate::{
    client,
    commands::count::points,
    errors::{status_for, CliError},
    filter::{FilterArg, ParsedFilter},
    output::{payload_value, truncate, Printer, Table},
    GlobalOptions,
};

#[derive(Debug, clap::Args)]
pub struct GetArgs {
    collection: String,
    /// The ids to fetch.
    #[arg(required = true)]
    ids: Vec<String>,
    /// Show the vectors too.
    #[arg(long)]
    with_vectors: bool,
}

#[derive(Debug, clap::Args)]
#[command(
    override_usage = "quiverctl delete <COLLECTION> <IDS>... [--write-quorum <N>]\n       \
                      quiverctl delete <COLLECTION> --filter <JSON|@FILE> [--write-quorum <N>]",
    group(
    ArgGroup::new("which")
        .required(true)
        .multiple(false)
        .args(["ids", "filter"])
    )
)]
pub struct DeleteArgs {
    collection: String,
    /// The ids to delete (or give --filter instead).
    ids: Vec<String>,
    #[command(flatten)]
    filter: FilterArg,
    /// Replicas per shard that must make the delete durable (default: the Merger's).
    #[arg(long)]
    write_quorum: Option<u32>,
}

/// The ids once each, in their first order (the Merger refuses repeated ids).
fn distinct(ids: &[String]) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    ids.iter()
        .filter(|id| seen.insert(id.as_str()))
        .cloned()
        .collect()
}

pub async fn get(global: &GlobalOptions, printer: Printer, args: GetArgs) -> anyhow::Result<()> {
    let ids = distinct(&args.ids);
    let mut merger = client::merger(global).await?;
    let response = merger
        .get(GetRequest {
            collection: args.collection.clone(),
            ids: ids.clone(),
            // Always fetched: the table shows each point's dimension.
            with_vectors: true,
            with_payloads: true,
        })
        .await
        .map_err(status_for(&args.collection))?
        .into_inner();
    for failure in &response.failed_shards {
        printer.warn(&format!(
            "shard {} could not be read ({}: {}); its points show as not found",
            failure.shard, failure.code, failure.message
        ));
    }
    let found: HashMap<&str, _> = response
        .points
        .iter()
        .map(|point| (point.id.as_str(), point))
        .collect();

    let mut columns = vec![
        ("id", false),
        ("found", false),
        ("dims", true),
        ("payload", false),
    ];
    if args.with_vectors {
        columns.push(("vector", false));
    }
    let mut table = Table::new(&columns);
    let mut documents = Vec::with_capacity(ids.len());
    for id in &ids {
        let point = found.get(id.as_str());
        let mut cells = vec![
            id.clone(),
            if point.is_some() { "yes" } else { "no" }.to_string(),
            point.map_or("-".to_string(), |point| point.vector.len().to_string()),
            point.map_or(String::new(), |point| truncate(&point.payload_json, 60)),
        ];
        if args.with_vectors {
            cells.push(point.map_or(String::new(), |point| {
                truncate(&format!("{:?}", point.vector), 60)
            }));
        }
        table.row(cells);
        let mut document = json!({
            "id": id,
            "found": point.is_some(),
            "dimension": point.map(|point| point.vector.len()),
            "payload": point.map_or(serde_json::Value::Null, |point| payload_value(&point.payload_json)),
        });
        if args.with_vectors {
            document["vector"] = json!(point.map(|point| &point.vector));
        }
        documents.push(document);
    }
    let found_count = ids
        .iter()
        .filter(|id| found.contains_key(id.as_str()))
        .count();
    printer.emit(
        &format!("{}{found_count} of {} found\n", table.render(), ids.len()),
        || {
            json!({
                "collection": args.collection,
                "points": documents,
                "found": found_count,
                "missing": ids.len() - found_count,
                "failed_shards": response.failed_shards.iter().map(|failure| json!({
                    "shard": failure.shard,
                    "searcher": failure.searcher_id,
                    "code": failure.code,
                    "message": failure.message,
                })).collect::<Vec<_>>(),
            })
        },
    );
    Ok(())
}

pub async fn delete(
    global: &GlobalOptions,
    printer: Printer,
    args: DeleteArgs,
) -> anyhow::Result<()> {
    if let Some(filter) = args.filter.parse()? {
        return delete_matching(global, printer, &args, filter).await;
    }
    let ids = distinct(&args.ids);
    if ids.len() > 10_000 {
        return Err(
            CliError::usage(format!("{} ids at once; the limit is 10000", ids.len())).into(),
        );
    }
    let mut merger = client::merger(global).await?;
    let response = merger
        .delete(DeleteRequest {
            collection: args.collection.clone(),
            ids: ids.clone(),
            write_quorum: args.write_quorum,
            filter: None,
        })
        .await
        .map_err(status_for(&args.collection))?
        .into_inner();
    warn_failed_replicas(printer, &response);
    let absent = ids.len().saturating_sub(response.deleted as usize);
    let mut text = format!(
        "deleted {} of {} ids from {}{}\n",
        response.deleted,
        ids.len(),
        args.collection,
        if absent > 0 {
            format!(" ({absent} did not exist)")
        } else {
            String::new()
        }
    );
    text.push_str(&shards_table(&response));
    printer.emit(&text, || {
        let mut document = delete_json(&args.collection, &response);
        document["requested"] = json!(ids.len());
        document
    });
    Ok(())
}

/// `delete --filter`: the primary of every shard deletes what matches there, as one logged
/// delete of the ids it matched.
async fn delete_matching(
    global: &GlobalOptions,
    printer: Printer,
    args: &DeleteArgs,
    filter: ParsedFilter,
) -> anyhow::Result<()> {
    if filter.is_empty() {
        return Err(CliError::usage("the filter is empty, so it matches every point")
            .hint(format!(
                "give the conditions of the points to delete; to delete every point, `quiverctl collections drop {}` and create it again",
                args.collection
            ))
            .into());
    }
    let mut merger = client::merger(global).await?;
    let response = merger
        .delete(DeleteRequest {
            collection: args.collection.clone(),
            ids: Vec::new(),
            write_quorum: args.write_quorum,
            filter: Some(filter.to_proto()),
        })
        .await
        .map_err(status_for(&args.collection))?
        .into_inner();
    warn_failed_replicas(printer, &response);
    let mut text = format!(
        "deleted {} matching the filter from {}\n",
        points(u64::from(response.deleted)),
        args.collection
    );
    text.push_str(&shards_table(&response));
    printer.emit(&text, || {
        let mut document = delete_json(&args.collection, &response);
        document["filter"] = filter.to_json();
        document
    });
    Ok(())
}

fn warn_failed_replicas(printer: Printer, response: &DeleteResponse) {
    for failure in &response.failed_replicas {
        printer.warn(&format!(
            "the replica of shard {} on {} missed the delete: {}: {}",
            failure.shard, failure.searcher_id, failure.code, failure.message
        ));
    }
}

fn shards_table(response: &DeleteResponse) -> String {
    let mut table = Table::new(&[
        ("shard", true),
        ("primary", false),
        ("seq", true),
        ("quorum", true),
        ("acknowledged by", false),
    ]);
    for shard in &response.shards {
        table.row(vec![
            shard.shard.to_string(),
            shard.primary.clone(),
            shard.seq.to_string(),
            shard.write_quorum.to_string(),
            shard.acknowledged_by.join(", "),
        ]);
    }
    table.render()
}

fn delete_json(collection: &str, response: &DeleteResponse) -> serde_json::Value {
    json!({
            "collection": collection,
            "deleted": response.deleted,
            "shards": response.shards.iter().map(|shard| json!({
                "shard": shard.shard,
                "primary": shard.primary,
                "seq": shard.seq,
                "write_quorum": shard.write_quorum,
                "acknowledged_by": shard.acknowledged_by,
            })).collect::<Vec<_>>(),
            "failed_replicas": response.failed_replicas.iter().map(|failure| json!({
                "shard": failure.shard,
                "searcher": failure.searcher_id,
                "code": failure.code,
                "message": failure.message,
            })).collect::<Vec<_>>(),
    })
}
