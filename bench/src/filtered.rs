//! `quiver-bench --filtered`: filtered search on every backend, against exact filtered
//! ground truth.
//!
//! Every point gets a payload `{"bucket": row % 1000}` (uncorrelated with its vector), and
//! on Fashion-MNIST also `{"class": <its label>}` (correlated: a class clusters). Filters
//! keep 50%, 10%, 1% and 0.1% of the buckets, and one class. Each filter is resolved once
//! through a payload index (the way a Searcher resolves it, timed as "resolve"), the exact
//! filtered top k is computed by brute force, and each backend answers every query through
//! the planner the Searcher uses ([`filtered::search`]), on one thread. Beside them: the
//! exact scan of exactly the matching points (what the planner falls back to), and a naive
//! post-filter (an unfiltered HNSW search for `k / selectivity` neighbours, then dropping
//! what the filter excludes), which is what a user without filter support would do.

use std::time::{Duration, Instant};

use anyhow::Result;
use quiver_index::{
    build_index,
    dataset::Vectors,
    filtered::{self, default_exact_threshold, Plan},
    AllowList, IndexSpec, Metric, Neighbor, SearchParams,
};
use quiver_payload::{
    json, resolve, PayloadIndex, PayloadIndexType, PayloadSchema, PointSource, RoaringTreemap,
};

/// The points' payloads, as a Searcher's replica would hold them.
struct Points {
    all: RoaringTreemap,
    payloads: Vec<String>,
}

impl PointSource for Points {
    fn all(&self) -> &RoaringTreemap {
        &self.all
    }
    fn internal_id(&self, id: &str) -> Option<u64> {
        id.parse()
            .ok()
            .filter(|row: &u64| (*row as usize) < self.payloads.len())
    }
    fn point(&self, internal: u64) -> Option<(&str, Option<&str>)> {
        self.payloads
            .get(internal as usize)
            .map(|payload| ("", Some(payload.as_str())))
    }
}

struct FilterCase {
    name: String,
    allowed: RoaringTreemap,
    resolve: Duration,
    /// Exact filtered top-k ids per query.
    truth: Vec<Vec<u64>>,
}

struct Row {
    filter: String,
    matches: u64,
    backend: String,
    plans: String,
    recall: f64,
    qps: f64,
    short: f64,
}

#[allow(clippy::too_many_arguments)]
pub fn run(
    name: &str,
    base: &Vectors,
    queries: &Vectors,
    labels: Option<&[u8]>,
    k: usize,
    rounds: usize,
    hnsw_m: usize,
    ef_construction: usize,
    only: &[String],
) -> Result<()> {
    let n = base.len();
    let ids: Vec<u64> = (0..n as u64).collect();
    let payloads: Vec<String> = (0..n)
        .map(|row| match labels {
            Some(labels) => format!(r#"{{"bucket":{},"class":{}}}"#, row % 1000, labels[row]),
            None => format!(r#"{{"bucket":{}}}"#, row % 1000),
        })
        .collect();
    let points = Points {
        all: ids.iter().copied().collect(),
        payloads,
    };
    let schema = PayloadSchema::new([
        ("bucket".to_string(), PayloadIndexType::Integer),
        ("class".to_string(), PayloadIndexType::Integer),
    ]);
    let started = Instant::now();
    let payload_index = PayloadIndex::build(
        &schema,
        (0..n as u64).map(|row| (row, Some(points.payloads[row as usize].as_str()))),
    );
    let index_build = started.elapsed();

    let mut filters: Vec<(String, String)> = [(500, "50%"), (100, "10%"), (10, "1%"), (1, "0.1%")]
        .into_iter()
        .map(|(buckets, share)| {
            (
                format!("bucket < {buckets} ({share})"),
                format!(r#"{{"must":[{{"key":"bucket","range":{{"lt":{buckets}}}}}]}}"#),
            )
        })
        .collect();
    if labels.is_some() {
        filters.push((
            "class = 3 (10%, correlated)".into(),
            r#"{"must":[{"key":"class","match":{"integer":3}}]}"#.into(),
        ));
    }

    let mut flat = build_index(&IndexSpec::Flat, base.dim, Metric::L2)?;
    flat.upsert(&ids, &base.data)?;
    let cases: Vec<FilterCase> = filters
        .into_iter()
        .map(|(name, text)| {
            let filter = json::parse(&text).expect("benchmark filters parse");
            let started = Instant::now();
            let allowed = resolve(&filter, &payload_index, &points);
            let resolve = started.elapsed();
            let allow = AllowList::new(&allowed);
            let truth = queries
                .rows()
                .map(|query| ids_of(&flat.search_among(query, k, &allow).expect("exact")))
                .collect();
            FilterCase {
                name,
                allowed,
                resolve,
                truth,
            }
        })
        .collect();

    let rebuild = rebuild_at_a_million();
    let threshold = default_exact_threshold(base.dim);
    println!(
        "## {name}, filtered: {n} points, {} queries, k = {k}, one thread, median of {rounds} rounds; \
         payload index over `bucket` and `class` built in {:.0?}; planner exact threshold {threshold}\n",
        queries.len(),
        index_build,
    );
    println!(
        "Rebuilding payload indexes on open, as a replica does: {} stored payloads of \
         `{{\"tenant\": int, \"lang\": keyword, \"price\": float, \"tags\": [keyword, keyword]}}` \
         into integer, keyword, float and keyword indexes took {:.2} s.\n",
        rebuild.0,
        rebuild.1.as_secs_f64()
    );
    println!("| filter | matches | resolve |");
    println!("|---|---:|---:|");
    for case in &cases {
        println!(
            "| {} | {} | {:.0} µs |",
            case.name,
            case.allowed.len(),
            case.resolve.as_secs_f64() * 1e6
        );
    }
    println!();

    let mut rows: Vec<Row> = Vec::new();
    let spec = |text: String| -> IndexSpec { text.parse().expect("benchmark specs are valid") };
    let nlist = ((n as f64).sqrt() as usize)
        .next_power_of_two()
        .clamp(16, 4096);
    let dim = base.dim;
    let pq_m = (1..=dim)
        .filter(|m| dim % m == 0)
        .min_by_key(|m| (dim / m).abs_diff(8))
        .unwrap_or(1);
    let mut backends = vec![
        ("flat".to_string(), IndexSpec::Flat),
        (
            format!("hnsw m={hnsw_m} ef_search=64"),
            spec(format!(
                "hnsw m={hnsw_m} ef_construction={ef_construction} ef_search=64"
            )),
        ),
        (
            format!("ivf_flat nlist={nlist} nprobe=16"),
            spec(format!("ivf_flat nlist={nlist} nprobe=16")),
        ),
        (
            format!("ivf_pq nlist={nlist} m={pq_m} nprobe=16"),
            spec(format!(
                "ivf_pq nlist={nlist} m={pq_m} nbits=8 nprobe=16 rerank=10"
            )),
        ),
    ];
    if quiver_index::FAISS_AVAILABLE {
        backends.push((
            format!("faiss HNSW{hnsw_m} (crate build) + IDSelector"),
            spec(format!(
                "faiss factory=HNSW{hnsw_m} params=efConstruction={ef_construction},efSearch=64"
            )),
        ));
    }
    // `--only` keeps the backends whose label contains one of its words.
    backends.retain(|(label, _)| {
        only.is_empty() || only.iter().any(|word| label.contains(word.as_str()))
    });
    for (label, spec) in backends {
        eprintln!("building {label}");
        let mut index = build_index(&spec, dim, Metric::L2)?;
        index.upsert(&ids, &base.data)?;
        for case in &cases {
            rows.push(measure(
                &label,
                case,
                queries,
                k,
                rounds,
                |query, allow| {
                    filtered::search(
                        index.as_ref(),
                        query,
                        k,
                        &SearchParams::default(),
                        allow,
                        threshold,
                    )
                },
            )?);
        }
        if label.starts_with("hnsw") {
            for case in &cases {
                let share = case.allowed.len().max(1) as f64 / n as f64;
                let wanted = ((k as f64 / share).ceil() as usize).clamp(k, n);
                let mut row = measure(
                    "hnsw post-filter (k / selectivity)",
                    case,
                    queries,
                    k,
                    rounds,
                    |query, allow| {
                        let mut found = index.search(
                            query,
                            wanted,
                            &SearchParams {
                                ef_search: wanted.max(64) as u32,
                                nprobe: 0,
                            },
                        )?;
                        found.retain(|neighbor| allow.contains(neighbor.id));
                        found.truncate(k);
                        Ok((found, Plan::Index))
                    },
                )?;
                row.plans = format!("k' = {wanted}");
                rows.push(row);
            }
        }
        if label == "flat" {
            for case in &cases {
                let mut row = measure(
                    "exact scan of the matches",
                    case,
                    queries,
                    k,
                    rounds,
                    |query, allow| Ok((index.search_among(query, k, allow)?, Plan::ExactScan)),
                )?;
                row.plans = "-".into();
                rows.push(row);
            }
        }
    }
    println!("| filter | matches | backend | plan (queries) | recall@{k} | QPS | fewer than min(k, matches) |");
    println!("|---|---:|---|---|---:|---:|---:|");
    for case in &cases {
        for row in rows.iter().filter(|row| row.filter == case.name) {
            println!(
                "| {} | {} | {} | {} | {:.3} | {:.0} | {:.1}% |",
                row.filter,
                row.matches,
                row.backend,
                row.plans,
                row.recall,
                row.qps,
                row.short * 100.0
            );
        }
    }
    println!();
    Ok(())
}

/// How long building four payload indexes from a million stored payloads takes.
fn rebuild_at_a_million() -> (usize, Duration) {
    let count = 1_000_000;
    let payloads: Vec<String> = (0..count)
        .map(|row| {
            format!(
                r#"{{"tenant":{},"lang":"{}","price":{},"tags":["t{}","t{}"]}}"#,
                row % 1000,
                ["en", "de", "fr", "es"][row % 4],
                (row % 10_000) as f64 / 100.0,
                row % 50,
                row % 7
            )
        })
        .collect();
    let schema = PayloadSchema::new([
        ("tenant".to_string(), PayloadIndexType::Integer),
        ("lang".to_string(), PayloadIndexType::Keyword),
        ("price".to_string(), PayloadIndexType::Float),
        ("tags".to_string(), PayloadIndexType::Keyword),
    ]);
    let started = Instant::now();
    let index = PayloadIndex::build(
        &schema,
        payloads
            .iter()
            .enumerate()
            .map(|(row, payload)| (row as u64, Some(payload.as_str()))),
    );
    let elapsed = started.elapsed();
    std::hint::black_box(index);
    (count, elapsed)
}

fn ids_of(neighbors: &[Neighbor]) -> Vec<u64> {
    neighbors.iter().map(|neighbor| neighbor.id).collect()
}

fn measure(
    backend: &str,
    case: &FilterCase,
    queries: &Vectors,
    k: usize,
    rounds: usize,
    search: impl Fn(&[f32], &AllowList) -> quiver_index::Result<(Vec<Neighbor>, Plan)>,
) -> Result<Row> {
    let allow = AllowList::new(&case.allowed);
    let mut found = Vec::with_capacity(queries.len());
    let mut plans = [0usize; 2];
    for query in queries.rows() {
        let (neighbors, plan) = search(query, &allow)?;
        plans[usize::from(plan == Plan::Index)] += 1;
        found.push(ids_of(&neighbors));
    }
    let mut timings = Vec::with_capacity(rounds.max(1));
    for _ in 0..rounds.max(1) {
        let started = Instant::now();
        for query in queries.rows() {
            std::hint::black_box(search(query, &allow)?);
        }
        timings.push(started.elapsed());
    }
    timings.sort();
    let median = timings[timings.len() / 2];
    let wanted = (k as u64).min(case.allowed.len()) as usize;
    let short = found.iter().filter(|ids| ids.len() < wanted).count();
    let (hits, total) =
        found
            .iter()
            .zip(&case.truth)
            .fold((0usize, 0usize), |(hits, total), (ids, truth)| {
                (
                    hits + ids.iter().filter(|id| truth.contains(id)).count(),
                    total + truth.len(),
                )
            });
    Ok(Row {
        filter: case.name.clone(),
        matches: case.allowed.len(),
        backend: backend.to_string(),
        plans: match plans {
            [exact, 0] => format!("exact_scan {exact}"),
            [0, index] => format!("index {index}"),
            [exact, index] => format!("index {index}, exact_scan {exact}"),
        },
        recall: if total == 0 {
            1.0
        } else {
            hits as f64 / total as f64
        },
        qps: queries.len() as f64 / median.as_secs_f64(),
        short: short as f64 / queries.len().max(1) as f64,
    })
}
