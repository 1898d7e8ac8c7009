//! `quiverctl collections create|list|describe|drop`.

use clap::Subcommand;
use quiver_proto::v1::{
    CollectionConfig, CollectionDescription, CreateCollectionRequest, DescribeCollectionRequest,
    DropCollectionRequest, ListCollectionsRequest, Metric, PayloadIndex,
};
use serde_json::json;

use crate::{
    client,
    commands::payload_index::{indexes_cell, indexes_json, indexes_text, parse_index_spec},
    errors::{status_for, CliError},
    output::{metric_name, role_name, state_name, Printer, Table},
    GlobalOptions,
};

#[derive(Debug, Subcommand)]
pub enum CollectionsCommand {
    /// Create a collection.
    Create(CreateArgs),
    /// List the collections.
    #[command(visible_alias = "ls")]
    List,
    /// Show a collection's configuration, payload indexes, shards and replicas.
    Describe { name: String },
    /// Drop a collection and all its data.
    Drop { name: String },
}

#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    pub name: String,
    #[arg(long, visible_alias = "dim")]
    pub dimension: u32,
    /// l2, ip or cosine.
    #[arg(long, default_value = "l2")]
    pub metric: String,
    #[arg(long, default_value_t = 1)]
    pub shards: u32,
    #[arg(long, default_value_t = 1)]
    pub replication_factor: u32,
    /// The index every replica builds: "flat" (exact), "hnsw m=16 ef_construction=200", ...
    /// (see docs/indexes.md).
    #[arg(long, default_value = "flat")]
    pub index: String,
    /// A payload index to declare, as KEY:TYPE (TYPE: keyword, integer, float or bool);
    /// repeat it for more: --payload-index category:keyword --payload-index price:float.
    /// Later ones: `quiverctl payload-index create`.
    #[arg(long = "payload-index", value_name = "KEY:TYPE", value_parser = parse_index_spec)]
    pub payload_indexes: Vec<PayloadIndex>,
}

pub async fn run(
    global: &GlobalOptions,
    printer: Printer,
    command: CollectionsCommand,
) -> anyhow::Result<()> {
    let mut merger = client::merger(global).await?;
    match command {
        CollectionsCommand::Create(create) => {
            let metric = match create.metric.parse::<quiver_index::Metric>() {
                Ok(quiver_index::Metric::L2) => Metric::L2,
                Ok(quiver_index::Metric::InnerProduct) => Metric::InnerProduct,
                Ok(quiver_index::Metric::Cosine) => Metric::Cosine,
                Err(_) => {
                    return Err(
                        CliError::usage(format!("unknown metric '{}'", create.metric))
                            .hint("use --metric l2, ip or cosine")
                            .into(),
                    )
                }
            };
            let response = merger
                .create_collection(CreateCollectionRequest {
                    config: Some(CollectionConfig {
                        name: create.name.clone(),
                        dimension: create.dimension,
                        metric: metric as i32,
                        num_shards: create.shards,
                        replication_factor: create.replication_factor,
                        index_spec: create.index,
                        payload_indexes: create.payload_indexes,
                    }),
                })
                .await
                .map_err(status_for(&create.name))?
                .into_inner();
            let collection = response.collection.unwrap_or_default();
            printer.emit(
                &format!(
                    "created collection {}\n{}",
                    create.name,
                    render_description(&collection)
                ),
                || description_json(&collection),
            );
        }
        CollectionsCommand::List => {
            let response = merger
                .list_collections(ListCollectionsRequest {})
                .await
                .map_err(|status| CliError::from_status(&status, None))?
                .into_inner();
            let mut table = Table::new(&[
                ("name", false),
                ("dimension", true),
                ("metric", false),
                ("shards", true),
                ("rf", true),
                ("index", false),
                ("payload indexes", false),
            ]);
            for config in &response.collections {
                table.row(vec![
                    config.name.clone(),
                    config.dimension.to_string(),
                    metric_name(config.metric).to_string(),
                    config.num_shards.to_string(),
                    config.replication_factor.to_string(),
                    config.index_spec.clone(),
                    indexes_cell(&config.payload_indexes),
                ]);
            }
            let text = if response.collections.is_empty() {
                "no collections; create one with `quiverctl collections create`\n".to_string()
            } else {
                table.render()
            };
            printer.emit(&text, || {
                json!({
                    "collections": response.collections.iter().map(config_json).collect::<Vec<_>>()
                })
            });
        }
        CollectionsCommand::Describe { name } => {
            let response = merger
                .describe_collection(DescribeCollectionRequest { name: name.clone() })
                .await
                .map_err(status_for(&name))?
                .into_inner();
            let collection = response.collection.unwrap_or_default();
            printer.emit(&render_description(&collection), || {
                description_json(&collection)
            });
        }
        CollectionsCommand::Drop { name } => {
            merger
                .drop_collection(DropCollectionRequest { name: name.clone() })
                .await
                .map_err(status_for(&name))?;
            printer.emit(
                &format!("dropped collection {name}\n"),
                || json!({ "dropped": name }),
            );
        }
    }
    Ok(())
}

fn config_json(config: &CollectionConfig) -> serde_json::Value {
    json!({
        "name": config.name,
        "dimension": config.dimension,
        "metric": metric_name(config.metric),
        "shards": config.num_shards,
        "replication_factor": config.replication_factor,
        "index": config.index_spec,
        "payload_indexes": indexes_json(&config.payload_indexes),
    })
}

/// `collections describe` (and `create`) in JSON: the configuration's fields, plus
/// `shard_replicas`.
fn description_json(collection: &CollectionDescription) -> serde_json::Value {
    let mut document = config_json(&collection.config.clone().unwrap_or_default());
    document["shard_replicas"] = collection
        .shards
        .iter()
        .map(|shard| {
            json!({
                "shard": shard.shard,
                "primary": shard.primary,
                "epoch": shard.epoch,
                "replicas": shard.replicas.iter().map(|replica| json!({
                    "searcher": replica.searcher_id,
                    "address": replica.address,
                    "role": role_name(replica.role),
                    "state": state_name(replica.state),
                    "points": replica.point_count,
                    "applied_seq": replica.applied_seq,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    document
}

fn render_description(collection: &CollectionDescription) -> String {
    let mut text = String::new();
    if let Some(config) = &collection.config {
        text.push_str(&format!(
            "collection {}: dimension {}, metric {}, {} shards, replication factor {}, index {}\n",
            config.name,
            config.dimension,
            metric_name(config.metric),
            config.num_shards,
            config.replication_factor,
            config.index_spec
        ));
        text.push_str(&format!(
            "payload indexes: {}\n",
            indexes_text(&config.payload_indexes)
        ));
    }
    let mut table = Table::new(&[
        ("shard", true),
        ("searcher", false),
        ("role", false),
        ("state", false),
        ("points", true),
        ("seq", true),
        ("address", false),
    ]);
    for shard in &collection.shards {
        for replica in &shard.replicas {
            table.row(vec![
                shard.shard.to_string(),
                replica.searcher_id.clone(),
                role_name(replica.role).to_string(),
                state_name(replica.state).to_string(),
                replica.point_count.to_string(),
                replica.applied_seq.to_string(),
                replica.address.clone(),
            ]);
        }
    }
    text.push_str(&table.render());
    text
}
