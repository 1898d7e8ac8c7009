//! `quiver-bench`: builds every index backend on a real dataset, sweeps its search
//! parameter, and prints one table per dataset with recall@k, QPS on one thread and on all
//! cores, build time and memory. Native and FAISS indexes run in the same process, one
//! after the other, on the same queries, so their numbers are comparable side by side.
//!
//! A second table measures exact flat search against the machine's memory bandwidth: a
//! plain streaming read of a buffer larger than the last-level cache gives the limit, and
//! a single-query flat scan reports the GB/s it reached and its fraction of that limit.
//!
//! ```text
//! OMP_NUM_THREADS=1 cargo run --release -p quiver-bench -- --dataset siftsmall
//! OMP_NUM_THREADS=1 cargo run --release -p quiver-bench -- --dataset fashion-mnist --queries 1000
//! cargo run --release -p quiver-bench -- --base b.fvecs --query q.fvecs --groundtruth gt.ivecs
//! ```
//!
//! `OMP_NUM_THREADS=1` keeps FAISS from starting OpenMP threads inside one query, so "one
//! thread" means one thread for both sides.
//!
//! `--filtered` measures filtered search instead ([`filtered`]): selectivities from 50% to
//! 0.1% (and one Fashion-MNIST class), every backend through the Searcher's planner,
//! against exact filtered ground truth.

mod filtered;

use std::{
    fs::File,
    io::BufReader,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use clap::Parser;
use quiver_index::{
    build_index,
    dataset::{read_bvecs, read_fvecs, read_idx_images, read_ivecs, recall_at_k, Vectors},
    simd_level, IndexSpec, Metric, SearchParams, VectorIndex,
};

#[derive(Debug, Parser)]
#[command(version, about = "Benchmark every Quiver index backend side by side")]
struct Args {
    /// A named dataset: `siftsmall` or `fashion-mnist`. Ignored when --base is given.
    #[arg(long, default_value = "siftsmall")]
    dataset: String,
    /// Where the shared datasets live (siftsmall/, fashion-mnist/ ground truth).
    #[arg(long, default_value = "../shared/data")]
    data_dir: PathBuf,
    /// Where Debian's dataset-fashion-mnist package puts the images.
    #[arg(long, default_value = "/usr/share/datasets/fashion-mnist")]
    fashion_dir: PathBuf,
    /// Base vectors (.fvecs or .bvecs) for a custom dataset.
    #[arg(long)]
    base: Option<PathBuf>,
    /// Query vectors (.fvecs or .bvecs) for a custom dataset.
    #[arg(long)]
    query: Option<PathBuf>,
    /// Ground truth (.ivecs, L2) for a custom dataset.
    #[arg(long)]
    groundtruth: Option<PathBuf>,
    /// Use at most this many queries.
    #[arg(long, default_value_t = 1000)]
    queries: usize,
    /// Neighbours per query; recall is recall@k.
    #[arg(long, default_value_t = 10)]
    k: usize,
    /// Minimum measuring time per row and thread setting, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    min_time_ms: u64,
    /// Measurements per row and thread setting; the table shows their median, which a
    /// burst of load from another process moves less than a single reading.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Threads for the "all cores" column (default: every core).
    #[arg(long)]
    threads: Option<usize>,
    /// HNSW M for both the native and the FAISS graph.
    #[arg(long, default_value_t = 16)]
    hnsw_m: usize,
    /// HNSW efConstruction for both graphs.
    #[arg(long, default_value_t = 200)]
    ef_construction: usize,
    /// Only run backends whose label contains one of these (comma separated).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Benchmark filtered search instead (see the module notes).
    #[arg(long)]
    filtered: bool,
}

struct Dataset {
    name: String,
    base: Vectors,
    queries: Vectors,
    truth: Vec<Vec<u32>>,
}

/// One index to build, and the values of its search parameter to sweep.
struct Backend {
    label: String,
    spec: IndexSpec,
    sweep: Sweep,
}

enum Sweep {
    None,
    /// Native ef_search, passed per query.
    NativeEf(Vec<u32>),
    /// Native nprobe, passed per query.
    NativeNprobe(Vec<u32>),
    /// A FAISS parameter set on the index before each row (e.g. `efSearch`).
    #[cfg_attr(not(feature = "faiss"), allow(dead_code))]
    Faiss(&'static str, Vec<u32>),
}

struct Row {
    backend: String,
    params: String,
    recall: f64,
    qps_one: f64,
    qps_all: f64,
    build: Duration,
    memory_mib: f64,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let threads = args.threads.unwrap_or_else(|| {
        thread::available_parallelism()
            .map(|cores| cores.get())
            .unwrap_or(1)
    });
    let dataset = load_dataset(&args)?;
    if args.filtered {
        let labels = match args.dataset.as_str() {
            "fashion-mnist" if args.base.is_none() => Some(read_gzip_labels(
                &args.fashion_dir.join("train-labels-idx1-ubyte.gz"),
            )?),
            _ => None,
        };
        return filtered::run(
            &dataset.name,
            &dataset.base,
            &dataset.queries,
            labels.as_deref(),
            args.k,
            args.rounds,
            args.hnsw_m,
            args.ef_construction,
            &args.only,
        );
    }
    println!(
        "# {}: {} base vectors, {} queries, dim {}, k = {}, kernels {}, {} threads for \"all cores\", median of {} rounds\n",
        dataset.name,
        dataset.base.len(),
        dataset.queries.len(),
        dataset.base.dim,
        args.k,
        simd_level().as_str(),
        threads,
        args.rounds
    );

    let mut rows = Vec::new();
    for backend in backends(&args, &dataset) {
        if !args.only.is_empty()
            && !args
                .only
                .iter()
                .any(|only| backend.label.contains(only.as_str()))
        {
            continue;
        }
        eprintln!("building {} ({})", backend.label, backend.spec);
        rows.extend(run_backend(&args, &dataset, &backend, threads)?);
    }
    print_table(&dataset.name, args.k, &rows);
    println!();
    bandwidth_table(&args, &dataset, threads)?;
    Ok(())
}

fn load_dataset(args: &Args) -> Result<Dataset> {
    let (name, base, queries, truth) = if let Some(base) = &args.base {
        let query = args
            .query
            .as_ref()
            .context("--query is required with --base")?;
        let truth = args
            .groundtruth
            .as_ref()
            .context("--groundtruth is required with --base")?;
        (
            base.display().to_string(),
            read_vectors(base)?,
            read_vectors(query)?,
            read_ivecs(truth)?,
        )
    } else {
        match args.dataset.as_str() {
            "siftsmall" => {
                let dir = args.data_dir.join("siftsmall");
                (
                    "siftsmall".to_string(),
                    read_fvecs(&dir.join("siftsmall_base.fvecs"))
                        .with_context(|| format!("reading {}", dir.display()))?,
                    read_fvecs(&dir.join("siftsmall_query.fvecs"))?,
                    read_ivecs(&dir.join("siftsmall_groundtruth.ivecs"))?,
                )
            }
            "fashion-mnist" => (
                "fashion-mnist-784".to_string(),
                read_gzip_idx(&args.fashion_dir.join("train-images-idx3-ubyte.gz"))?,
                read_gzip_idx(&args.fashion_dir.join("t10k-images-idx3-ubyte.gz"))?,
                read_ivecs(
                    &args
                        .data_dir
                        .join("fashion-mnist/fashion-mnist-784-euclidean_groundtruth.ivecs"),
                )?,
            ),
            other => bail!("unknown dataset {other:?}; use siftsmall, fashion-mnist or --base"),
        }
    };
    if base.dim != queries.dim {
        bail!(
            "base vectors have dimension {} but queries {}",
            base.dim,
            queries.dim
        );
    }
    let count = args.queries.min(queries.len()).min(truth.len());
    let queries = Vectors {
        dim: queries.dim,
        data: queries.data[..count * queries.dim].to_vec(),
    };
    let truth = truth[..count].to_vec();
    if truth.iter().any(|row| row.len() < args.k) {
        bail!(
            "the ground truth has fewer than k = {} neighbours per query",
            args.k
        );
    }
    Ok(Dataset {
        name,
        base,
        queries,
        truth,
    })
}

fn read_vectors(path: &Path) -> Result<Vectors> {
    let vectors = match path.extension().and_then(|extension| extension.to_str()) {
        Some("fvecs") => read_fvecs(path)?,
        Some("bvecs") => read_bvecs(path)?,
        _ => bail!("{}: expected a .fvecs or .bvecs file", path.display()),
    };
    Ok(vectors)
}

fn read_gzip_idx(path: &Path) -> Result<Vectors> {
    let file = File::open(path).with_context(|| {
        format!(
            "opening {} (install Debian's dataset-fashion-mnist)",
            path.display()
        )
    })?;
    Ok(read_idx_images(flate2::read::GzDecoder::new(
        BufReader::new(file),
    ))?)
}

/// An idx1 label file (magic 2049, a count, one byte per label), gzipped.
fn read_gzip_labels(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let file = File::open(path).with_context(|| {
        format!(
            "opening {} (install Debian's dataset-fashion-mnist)",
            path.display()
        )
    })?;
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(BufReader::new(file)).read_to_end(&mut bytes)?;
    if bytes.len() < 8 || bytes[..4] != 2049u32.to_be_bytes() {
        bail!("{}: not an idx1 label file", path.display());
    }
    let count = u32::from_be_bytes(bytes[4..8].try_into().expect("4 bytes")) as usize;
    if bytes.len() != 8 + count {
        bail!(
            "{}: {} labels announced, {} present",
            path.display(),
            count,
            bytes.len() - 8
        );
    }
    Ok(bytes[8..].to_vec())
}

fn backends(args: &Args, dataset: &Dataset) -> Vec<Backend> {
    let dim = dataset.base.dim;
    let n = dataset.base.len();
    // ~sqrt(n) cells, a power of two, as FAISS's guidelines suggest.
    let nlist = ((n as f64).sqrt() as usize)
        .next_power_of_two()
        .clamp(16, 4096);
    // Sub-quantisers of about 8 dimensions, the usual PQ trade-off, dividing dim.
    let pq_m = (1..=dim)
        .filter(|m| dim % m == 0)
        .min_by_key(|m| (dim / m).abs_diff(8))
        .unwrap_or(1);
    let (m, ef_construction) = (args.hnsw_m, args.ef_construction);
    let efs = vec![16, 32, 64, 128, 256];
    let probes: Vec<u32> = [1, 2, 4, 8, 16, 32, 64]
        .into_iter()
        .filter(|&probe| probe as usize <= nlist)
        .collect();
    let spec = |text: String| -> IndexSpec { text.parse().expect("benchmark specs are valid") };
    let mut list = vec![
        Backend {
            label: "flat".into(),
            spec: IndexSpec::Flat,
            sweep: Sweep::None,
        },
        Backend {
            label: "hnsw".into(),
            spec: spec(format!(
                "hnsw m={m} ef_construction={ef_construction} ef_search=64"
            )),
            sweep: Sweep::NativeEf(efs.clone()),
        },
        Backend {
            label: "ivf_flat".into(),
            spec: spec(format!("ivf_flat nlist={nlist} nprobe=1")),
            sweep: Sweep::NativeNprobe(probes.clone()),
        },
        Backend {
            label: "ivf_pq".into(),
            spec: spec(format!(
                "ivf_pq nlist={nlist} m={pq_m} nbits=8 nprobe=1 rerank=10"
            )),
            sweep: Sweep::NativeNprobe(probes.clone()),
        },
        Backend {
            label: "ivf_pq (no rerank)".into(),
            spec: spec(format!(
                "ivf_pq nlist={nlist} m={pq_m} nbits=8 nprobe=1 rerank=0"
            )),
            sweep: Sweep::NativeNprobe(probes.clone()),
        },
    ];
    if quiver_index::FAISS_AVAILABLE {
        list.extend([
            Backend {
                label: "faiss Flat".into(),
                spec: spec("faiss factory=Flat".into()),
                sweep: Sweep::None,
            },
            Backend {
                label: format!("faiss HNSW{m}"),
                spec: spec(format!(
                    "faiss factory=HNSW{m} params=efConstruction={ef_construction}"
                )),
                sweep: Sweep::Faiss("efSearch", efs),
            },
            Backend {
                label: format!("faiss IVF{nlist},Flat"),
                spec: spec(format!("faiss factory=IVF{nlist},Flat")),
                sweep: Sweep::Faiss("nprobe", probes.clone()),
            },
            // `np` skips FAISS's polysemous training (a simulated-annealing pass the factory
            // otherwise runs for minutes), which native IVF-PQ has no equivalent of.
            Backend {
                label: format!("faiss IVF{nlist},PQ{pq_m}np"),
                spec: spec(format!("faiss factory=IVF{nlist},PQ{pq_m}np")),
                sweep: Sweep::Faiss("nprobe", probes),
            },
        ]);
    }
    list
}

fn run_backend(
    args: &Args,
    dataset: &Dataset,
    backend: &Backend,
    threads: usize,
) -> Result<Vec<Row>> {
    let ids: Vec<u64> = (0..dataset.base.len() as u64).collect();
    let rss_before = resident_bytes();
    let started = Instant::now();
    let mut index = make_index(&backend.spec, dataset.base.dim)?;
    index.upsert(&ids, &dataset.base.data)?;
    let build = started.elapsed();
    let rss_growth = resident_bytes().saturating_sub(rss_before);
    // The larger of the index's own estimate and what the process grew by: FAISS cannot
    // report its own footprint, and the allocator may reuse memory freed by earlier rows.
    let memory_mib = index.memory_bytes().max(rss_growth) as f64 / (1 << 20) as f64;

    let settings: Vec<(String, SearchParams)> = match &backend.sweep {
        Sweep::None => vec![("-".into(), SearchParams::default())],
        Sweep::NativeEf(values) => values
            .iter()
            .map(|&ef| {
                (
                    format!("ef_search={ef}"),
                    SearchParams {
                        ef_search: ef,
                        nprobe: 0,
                    },
                )
            })
            .collect(),
        Sweep::NativeNprobe(values) => values
            .iter()
            .map(|&nprobe| {
                (
                    format!("nprobe={nprobe}"),
                    SearchParams {
                        ef_search: 0,
                        nprobe,
                    },
                )
            })
            .collect(),
        Sweep::Faiss(name, values) => values
            .iter()
            .map(|value| (format!("{name}={value}"), SearchParams::default()))
            .collect(),
    };
    let mut rows = Vec::new();
    for (label, params) in settings {
        if let Sweep::Faiss(..) = backend.sweep {
            index.set_faiss_param(&label)?;
        }
        let found: Vec<Vec<u64>> = dataset
            .queries
            .rows()
            .map(|query| {
                index
                    .search(query, args.k, &params)
                    .map(|result| result.into_iter().map(|neighbor| neighbor.id).collect())
            })
            .collect::<Result<_, _>>()?;
        let recall = recall_at_k(&found, &dataset.truth, args.k);
        let min_time = Duration::from_millis(args.min_time_ms);
        let qps_one = measure_qps(
            index.as_dyn(),
            &dataset.queries,
            args.k,
            &params,
            1,
            min_time,
        );
        let qps_all = measure_qps(
            index.as_dyn(),
            &dataset.queries,
            args.k,
            &params,
            threads,
            min_time,
        );
        eprintln!("  {label}: recall {recall:.4}, {qps_one:.0} qps");
        rows.push(Row {
            backend: backend.label.clone(),
            params: label,
            recall,
            qps_one,
            qps_all,
            build,
            memory_mib,
        });
    }
    Ok(rows)
}

/// A built index, keeping FAISS's concrete type so its parameters can be set in place.
enum Built {
    Native(Box<dyn VectorIndex>),
    #[cfg(feature = "faiss")]
    Faiss(Box<quiver_index::faiss::FaissIndex>),
}

fn make_index(spec: &IndexSpec, dim: usize) -> Result<Built> {
    #[cfg(feature = "faiss")]
    if let IndexSpec::Faiss(faiss_spec) = spec {
        return Ok(Built::Faiss(Box::new(
            quiver_index::faiss::FaissIndex::new(dim, Metric::L2, faiss_spec.clone())?,
        )));
    }
    Ok(Built::Native(build_index(spec, dim, Metric::L2)?))
}

impl Built {
    fn as_dyn(&self) -> &dyn VectorIndex {
        match self {
            Built::Native(index) => index.as_ref(),
            #[cfg(feature = "faiss")]
            Built::Faiss(index) => index.as_ref(),
        }
    }

    fn upsert(&mut self, ids: &[u64], vectors: &[f32]) -> quiver_index::Result<()> {
        match self {
            Built::Native(index) => index.upsert(ids, vectors),
            #[cfg(feature = "faiss")]
            Built::Faiss(index) => index.upsert(ids, vectors),
        }
    }

    fn search(
        &self,
        query: &[f32],
        k: usize,
        params: &SearchParams,
    ) -> quiver_index::Result<Vec<quiver_index::Neighbor>> {
        self.as_dyn().search(query, k, params)
    }

    fn memory_bytes(&self) -> usize {
        self.as_dyn().memory_bytes()
    }

    #[cfg_attr(not(feature = "faiss"), allow(unused_variables))]
    fn set_faiss_param(&mut self, setting: &str) -> Result<()> {
        match self {
            #[cfg(feature = "faiss")]
            Built::Faiss(index) => Ok(index.set_search_params(setting)?),
            _ => bail!("{setting} applies to FAISS indexes only"),
        }
    }
}

/// The median of `rounds` readings of `measure`.
fn median_of(rounds: usize, mut measure: impl FnMut() -> f64) -> f64 {
    let mut readings: Vec<f64> = (0..rounds.max(1)).map(|_| measure()).collect();
    readings.sort_by(f64::total_cmp);
    readings[readings.len() / 2]
}

/// Queries per second over at least `min_time`, with `threads` threads each walking the
/// query set from a different offset.
fn measure_qps(
    index: &dyn VectorIndex,
    queries: &Vectors,
    k: usize,
    params: &SearchParams,
    threads: usize,
    min_time: Duration,
) -> f64 {
    let started = Instant::now();
    let total: usize = thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|worker| {
                scope.spawn(move || {
                    let mut done = 0usize;
                    let mut position = worker * queries.len() / threads.max(1);
                    while started.elapsed() < min_time || done == 0 {
                        for _ in 0..16 {
                            let query = queries.row(position % queries.len());
                            let result = index.search(query, k, params).expect("search failed");
                            std::hint::black_box(result);
                            position += 1;
                            done += 1;
                        }
                    }
                    done
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|worker| worker.join().expect("benchmark thread panicked"))
            .sum()
    });
    total as f64 / started.elapsed().as_secs_f64()
}

fn print_table(dataset: &str, k: usize, rows: &[Row]) {
    println!("## {dataset}: recall@{k} and throughput\n");
    println!(
        "| backend | parameters | recall@{k} | QPS, 1 thread | QPS, all cores | build (s) | memory (MiB) |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|");
    for row in rows {
        println!(
            "| {} | {} | {:.4} | {:.0} | {:.0} | {:.2} | {:.1} |",
            row.backend,
            row.params,
            row.recall,
            row.qps_one,
            row.qps_all,
            row.build.as_secs_f64(),
            row.memory_mib
        );
    }
}

/// Exact flat search against the memory-bandwidth limit.
fn bandwidth_table(args: &Args, dataset: &Dataset, threads: usize) -> Result<()> {
    let data_bytes = dataset.base.data.len() * size_of::<f32>();
    // Large enough that the read streams from memory, not from cache.
    let buffer_floats = (data_bytes / 4).max(256 << 20 >> 2);
    let buffer: Vec<f32> = (0..buffer_floats).map(|value| (value % 7) as f32).collect();
    let min_time = Duration::from_millis(args.min_time_ms);
    let stream_one = median_of(args.rounds, || stream_read_gbps(&buffer, 1, min_time));
    let stream_all = median_of(args.rounds, || stream_read_gbps(&buffer, threads, min_time));
    drop(buffer);

    let mut index = build_index(&IndexSpec::Flat, dataset.base.dim, Metric::L2)?;
    let ids: Vec<u64> = (0..dataset.base.len() as u64).collect();
    index.upsert(&ids, &dataset.base.data)?;
    let params = SearchParams::default();
    let qps_one = measure_qps(
        index.as_ref(),
        &dataset.queries,
        args.k,
        &params,
        1,
        min_time,
    );
    let qps_all = measure_qps(
        index.as_ref(),
        &dataset.queries,
        args.k,
        &params,
        threads,
        min_time,
    );
    let scan_one = qps_one * data_bytes as f64 / 1e9;
    let scan_all = qps_all * data_bytes as f64 / 1e9;

    println!(
        "## {}: flat scan against memory bandwidth ({:.0} MiB of vectors)\n",
        dataset.name,
        data_bytes as f64 / (1 << 20) as f64
    );
    println!("| threads | streaming read limit (GB/s) | flat search (GB/s) | fraction of limit |");
    println!("|---:|---:|---:|---:|");
    println!(
        "| 1 | {stream_one:.1} | {scan_one:.1} | {:.0}% |",
        100.0 * scan_one / stream_one
    );
    println!(
        "| {threads} | {stream_all:.1} | {scan_all:.1} | {:.0}% |",
        100.0 * scan_all / stream_all
    );
    if data_bytes < 64 << 20 {
        println!(
            "\nThe vectors fit in cache at this size, so the scan can exceed the streaming \
             limit, which is measured on a {} MiB buffer.",
            (buffer_floats * 4) >> 20
        );
    }
    Ok(())
}

/// GB/s of a plain read of `buffer`, split across `threads`, summed with the same SIMD
/// kernel the flat scan uses (a dot product of each chunk with itself reads it once).
fn stream_read_gbps(buffer: &[f32], threads: usize, min_time: Duration) -> f64 {
    let started = Instant::now();
    let bytes: usize = thread::scope(|scope| {
        let part = buffer.len().div_ceil(threads.max(1));
        let workers: Vec<_> = buffer
            .chunks(part)
            .map(|slice| {
                scope.spawn(move || {
                    let mut read = 0usize;
                    while started.elapsed() < min_time || read == 0 {
                        let mut total = 0.0f32;
                        for chunk in slice.chunks(1024) {
                            total += quiver_index::dot(chunk, chunk);
                        }
                        std::hint::black_box(total);
                        read += std::mem::size_of_val(slice);
                    }
                    read
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|worker| worker.join().unwrap())
            .sum()
    });
    bytes as f64 / started.elapsed().as_secs_f64() / 1e9
}

/// The process's resident memory in bytes, from /proc (0 where unavailable).
fn resident_bytes() -> usize {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|text| text.split_whitespace().nth(1)?.parse::<usize>().ok())
        .map_or(0, |pages| pages * 4096)
}
