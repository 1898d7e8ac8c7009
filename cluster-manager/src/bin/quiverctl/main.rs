//! quiverctl: administer a Quiver cluster and work with its data through a Merger, and show
//! the cluster's placement straight from etcd.
//!
//! Layout: `main.rs` (options and dispatch), `commands/` (one file per command group),
//! `input.rs` (file readers), `output.rs` (tables, JSON, progress), `errors.rs` (what a
//! failure tells the user), `client.rs` (connecting to the Merger and etcd).

mod client;
mod commands;
mod errors;
mod filter;
mod input;
mod output;

use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::{
    commands::{collections, count, generate, load, payload_index, points, scroll, search, status},
    errors::CliError,
    output::{OutputFormat, Printer},
};

#[derive(Debug, Parser)]
#[command(
    name = "quiverctl",
    version,
    // A later --merger (say) replaces an earlier one, so wrappers can set defaults.
    args_override_self = true,
    about = "Administer a Quiver cluster and work with its data",
    long_about = "Administer a Quiver cluster and work with its data. Collections, points and \
                  searches go through a Merger (--merger); `status` and `rebalance` read etcd \
                  (--etcd-endpoints). With --output json every command prints exactly one JSON \
                  document on stdout; errors then are {\"error\": {\"code\", \"message\", \
                  \"hint\"}} on stdout, with exit code 1 (2 for usage errors). `search`, \
                  `count`, `scroll` and `delete` take --filter: a payload filter in JSON \
                  ({\"must\": [...], \"should\": [...], \"must_not\": [...]}), or @FILE."
)]
struct Args {
    #[command(flatten)]
    global: GlobalOptions,
    #[command(subcommand)]
    command: Command,
}

/// Options every command takes, anywhere on the command line.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Global options")]
pub struct GlobalOptions {
    /// The Merger's gRPC address.
    #[arg(
        long,
        env = "QUIVER_MERGER",
        default_value = "http://127.0.0.1:7000",
        global = true
    )]
    pub merger: String,
    /// etcd endpoints, comma-separated (`status` and `rebalance` read etcd directly).
    #[arg(
        long,
        env = "QUIVER_ETCD_ENDPOINTS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379",
        global = true
    )]
    pub etcd_endpoints: Vec<String>,
    /// Prefix of every key Quiver keeps in etcd.
    #[arg(
        long,
        env = "QUIVER_ETCD_PREFIX",
        default_value = "/quiver/",
        global = true
    )]
    pub etcd_prefix: String,
    /// Deadline of each call: seconds ("30") or a duration ("1m", "500ms").
    #[arg(long, env = "QUIVER_TIMEOUT", default_value = "60s", value_parser = parse_timeout, global = true)]
    pub timeout: Duration,
    /// table for people, json for scripts (one document on stdout); jsonl (one object per
    /// line) for `scroll` only.
    #[arg(
        long,
        short = 'o',
        env = "QUIVER_OUTPUT",
        value_enum,
        default_value = "table",
        global = true
    )]
    pub output: OutputFormat,
}

fn parse_timeout(text: &str) -> Result<Duration, String> {
    let duration = match text.trim().parse::<f64>() {
        Ok(seconds) if seconds.is_finite() && seconds > 0.0 => Duration::from_secs_f64(seconds),
        Ok(_) => return Err("the timeout must be positive".to_string()),
        Err(_) => humantime::parse_duration(text.trim()).map_err(|error| error.to_string())?,
    };
    if duration.is_zero() {
        return Err("the timeout must be positive".to_string());
    }
    Ok(duration)
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create, list, describe and drop collections.
    #[command(subcommand, visible_alias = "collection")]
    Collections(collections::CollectionsCommand),
    /// Upsert every point of an .fvecs, .npy or .jsonl file, in concurrent batches.
    Load(load::LoadArgs),
    /// Search with one vector (a results table), or with every vector of a file against
    /// ground truth (recall and queries per second).
    Search(search::SearchArgs),
    /// Fetch points by id.
    Get(points::GetArgs),
    /// Delete points by id, or every point a --filter matches (one or the other).
    Delete(points::DeleteArgs),
    /// Count the points (those a --filter matches, or all), exactly.
    Count(count::CountArgs),
    /// Page through every point (or those a --filter matches): with --output jsonl, one
    /// JSON object per line to --out FILE or stdout; table or json for small results.
    Scroll(scroll::ScrollArgs),
    /// Create, drop and list a collection's payload indexes, which make filters on their
    /// keys fast (answers are the same without them).
    #[command(subcommand, name = "payload-index", visible_alias = "payload-indexes")]
    PayloadIndex(payload_index::PayloadIndexCommand),
    /// Show the live Searchers, every replica's role and progress, the placement
    /// controller's leader and the last rebalance, read from etcd.
    Status,
    /// Show how far the placement is from its target over the live Searchers. Rebalances
    /// are applied by the placement controller inside the Mergers; only `--dry-run` is
    /// offered here.
    Rebalance {
        /// List the replicas that would move, and change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Write a synthetic data set (base, queries, exact L2 ground truth) in the .fvecs/.ivecs
    /// layout, for trying Quiver where no real data set is at hand.
    GenerateData(generate::GenerateArgs),
    // The commands of earlier versions, kept working for existing scripts.
    #[command(hide = true)]
    Create(collections::CreateArgs),
    #[command(hide = true)]
    List,
    #[command(hide = true)]
    Describe { name: String },
    #[command(hide = true)]
    Drop { name: String },
}

async fn run(args: Args, printer: Printer) -> anyhow::Result<()> {
    let global = &args.global;
    if global.output == OutputFormat::Jsonl && !matches!(args.command, Command::Scroll(_)) {
        return Err(
            CliError::usage("--output jsonl is for `quiverctl scroll` only")
                .hint("use --output json for one JSON document, or --output table")
                .into(),
        );
    }
    match args.command {
        Command::Collections(command) => collections::run(global, printer, command).await,
        Command::Create(create) => {
            collections::run(
                global,
                printer,
                collections::CollectionsCommand::Create(create),
            )
            .await
        }
        Command::List => {
            collections::run(global, printer, collections::CollectionsCommand::List).await
        }
        Command::Describe { name } => {
            collections::run(
                global,
                printer,
                collections::CollectionsCommand::Describe { name },
            )
            .await
        }
        Command::Drop { name } => {
            collections::run(
                global,
                printer,
                collections::CollectionsCommand::Drop { name },
            )
            .await
        }
        Command::Load(load) => load::run(global, printer, load).await,
        Command::Search(search) => search::run(global, printer, search).await,
        Command::Get(get) => points::get(global, printer, get).await,
        Command::Delete(delete) => points::delete(global, printer, delete).await,
        Command::Count(count) => count::run(global, printer, count).await,
        Command::Scroll(scroll) => scroll::run(global, printer, scroll).await,
        Command::PayloadIndex(command) => payload_index::run(global, printer, command).await,
        Command::Status => status::status(global, printer).await,
        Command::Rebalance { dry_run } => status::rebalance(global, printer, dry_run).await,
        Command::GenerateData(generate) => generate::run(printer, generate),
    }
}

#[tokio::main]
async fn main() {
    // Usage errors are clap's: its message on stderr, exit code 2.
    let args = Args::parse();
    let printer = Printer {
        format: args.global.output,
    };
    let Err(error) = run(args, printer).await else {
        return;
    };
    let error = CliError::from_anyhow(&error);
    if printer.json() {
        output::print_json(&error.to_json());
    } else {
        eprint!("{}", error.render_text());
    }
    std::process::exit(error.exit_code);
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    #[test]
    fn the_command_line_holds_together() {
        Args::command().debug_assert();
    }

    #[test]
    fn delete_takes_ids_or_a_filter_not_both() {
        let parse = |args: &[&str]| Args::try_parse_from(args);
        assert!(parse(&["quiverctl", "delete", "docs", "a", "b"]).is_ok());
        assert!(parse(&["quiverctl", "delete", "docs", "--filter", "{}"]).is_ok());
        let both = parse(&["quiverctl", "delete", "docs", "a", "--filter", "{}"]).unwrap_err();
        assert_eq!(both.kind(), clap::error::ErrorKind::ArgumentConflict);
        let neither = parse(&["quiverctl", "delete", "docs"]).unwrap_err();
        assert_eq!(
            neither.kind(),
            clap::error::ErrorKind::MissingRequiredArgument
        );
        assert_eq!(neither.exit_code(), 2);
    }

    #[test]
    fn payload_indexes_parse_as_key_and_type() {
        let args = Args::try_parse_from([
            "quiverctl",
            "collections",
            "create",
            "docs",
            "--dimension",
            "4",
            "--payload-index",
            "category:keyword",
            "--payload-index",
            "price:Float",
        ])
        .unwrap();
        let Command::Collections(collections::CollectionsCommand::Create(create)) = args.command
        else {
            panic!("not a create");
        };
        let keys: Vec<&str> = create
            .payload_indexes
            .iter()
            .map(|index| index.key.as_str())
            .collect();
        assert_eq!(keys, ["category", "price"]);
        assert!(Args::try_parse_from([
            "quiverctl",
            "payload-index",
            "create",
            "docs",
            "price",
            "number"
        ])
        .is_err());
    }
}
