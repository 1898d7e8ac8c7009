//! `quiverctl count <collection> [--filter ...]`: how many points match (every point
//! without a filter), exact, summed over the shards.

use quiver_proto::v1::CountRequest;
use serde_json::json;

use crate::{
    client::{self, Merger},
    errors::{status_for, CliError},
    filter::{FilterArg, ParsedFilter},
    output::Printer,
    GlobalOptions,
};

#[derive(Debug, clap::Args)]
pub struct CountArgs {
    collection: String,
    #[command(flatten)]
    filter: FilterArg,
}

pub async fn run(global: &GlobalOptions, printer: Printer, args: CountArgs) -> anyhow::Result<()> {
    let filter = args.filter.parse()?;
    let mut merger = client::merger(global).await?;
    let count = count(&mut merger, &args.collection, filter.as_ref()).await?;
    let text = match &filter {
        Some(_) => format!(
            "{} of {} match the filter\n",
            points(count),
            args.collection
        ),
        None => format!("{} in {}\n", points(count), args.collection),
    };
    printer.emit(&text, || {
        json!({
            "collection": args.collection,
            "count": count,
            "filter": filter.as_ref().map(ParsedFilter::to_json),
        })
    });
    Ok(())
}

/// The Merger's exact count of the points `filter` matches.
pub async fn count(
    merger: &mut Merger,
    collection: &str,
    filter: Option<&ParsedFilter>,
) -> Result<u64, CliError> {
    Ok(merger
        .count(CountRequest {
            collection: collection.to_string(),
            filter: filter.map(ParsedFilter::to_proto),
            timeout_ms: 0,
        })
        .await
        .map_err(status_for(collection))?
        .into_inner()
        .count)
}

/// "1 point", "3 points".
pub fn points(count: u64) -> String {
    if count == 1 {
        "1 point".to_string()
    } else {
        format!("{count} points")
    }
}
