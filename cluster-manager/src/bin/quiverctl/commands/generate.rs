//! `quiverctl generate-data`: a synthetic data set in the .fvecs/.ivecs layout.

use std::{collections::HashSet, io::Write, path::PathBuf};

use anyhow::Context;
use quiver_index::dataset;
use serde_json::json;

use crate::{errors::CliError, output::Printer};

#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    /// The folder to write base.fvecs, query.fvecs and groundtruth.ivecs into.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 10_000)]
    base: usize,
    #[arg(long, default_value_t = 100)]
    queries: usize,
    #[arg(long, default_value_t = 128)]
    dimension: usize,
    /// Neighbours per query in the ground truth.
    #[arg(long, default_value_t = 100)]
    k: usize,
}

pub fn run(printer: Printer, args: GenerateArgs) -> anyhow::Result<()> {
    let GenerateArgs {
        out,
        base: base_count,
        queries: query_count,
        dimension,
        k,
    } = args;
    if base_count == 0 || query_count == 0 || dimension == 0 || k == 0 || k > base_count {
        return Err(CliError::usage(
            "need --base, --queries, --dimension of at least 1 and 1 <= --k <= --base",
        )
        .into());
    }
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let base = dataset::synthetic(base_count, dimension, 1);
    let queries = dataset::synthetic(query_count, dimension, 2);
    let truth = dataset::ground_truth(&base, &queries, k, quiver_index::Metric::L2);
    dataset::write_fvecs(&out.join("base.fvecs"), &base)?;
    dataset::write_fvecs(&out.join("query.fvecs"), &queries)?;
    let mut file = std::io::BufWriter::new(
        std::fs::File::create(out.join("groundtruth.ivecs"))
            .with_context(|| format!("writing into {}", out.display()))?,
    );
    for row in &truth {
        file.write_all(&(row.len() as i32).to_le_bytes())?;
        for id in row {
            file.write_all(&(*id as i32).to_le_bytes())?;
        }
    }
    file.flush()?;
    let distinct: HashSet<u64> = truth.iter().flatten().copied().collect();
    printer.emit(
        &format!(
            "wrote {base_count} base vectors, {query_count} queries and top-{k} ground truth ({} distinct ids) of dimension {dimension} to {}\n",
            distinct.len(),
            out.display()
        ),
        || {
            json!({
                "out": out.display().to_string(),
                "base": base_count,
                "queries": query_count,
                "dimension": dimension,
                "k": k,
                "distinct_ids": distinct.len(),
            })
        },
    );
    Ok(())
}
