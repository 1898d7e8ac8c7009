//! One behaviour suite for every index backend: flat, hnsw, ivf_flat, ivf_pq and (with
//! the `faiss` feature) FAISS. Each test runs against every backend and names the one
//! that failed.
//!
//! Small-data tests use parameters that make the approximate indexes search every cell
//! or a wide beam, so they must agree with exact search; recall floors on siftsmall check
//! the realistic parameters.

use std::{path::PathBuf, sync::Arc, thread};

use quiver_index::{
    build_index,
    dataset::{self, read_fvecs, read_ivecs, recall_at_k, Vectors},
    filtered, load_index, validate_spec, AllowList, Error, IndexSpec, Metric, Neighbor,
    RoaringTreemap, SearchParams, VectorIndex,
};

const DEFAULT_PARAMS: SearchParams = SearchParams {
    ef_search: 0,
    nprobe: 0,
};

/// Backends configured to be exact (or nearly) on a few thousand points: every IVF cell
/// probed, a beam wider than the data's neighbourhoods.
fn exhaustive_backends() -> Vec<IndexSpec> {
    let mut specs = vec![
        "flat",
        "hnsw m=16 ef_construction=200 ef_search=400",
        "ivf_flat nlist=8 nprobe=8",
        "ivf_pq nlist=8 m=2 nbits=4 nprobe=8 rerank=200",
    ];
    if quiver_index::FAISS_AVAILABLE {
        specs.extend([
            "faiss factory=Flat",
            "faiss factory=HNSW16 params=efSearch=400",
            "faiss factory=IVF8,Flat params=nprobe=8",
        ]);
    }
    specs.into_iter().map(parse).collect()
}

fn is_graph(spec: &IndexSpec) -> bool {
    match spec {
        IndexSpec::Hnsw(_) => true,
        IndexSpec::Faiss(faiss) => faiss.factory.contains("HNSW"),
        _ => false,
    }
}

fn parse(text: &str) -> IndexSpec {
    text.parse()
        .unwrap_or_else(|error| panic!("{text:?}: {error}"))
}

fn build(spec: &IndexSpec, dim: usize, metric: Metric) -> Box<dyn VectorIndex> {
    build_index(spec, dim, metric).unwrap_or_else(|error| panic!("{spec}: {error}"))
}

fn filled(spec: &IndexSpec, data: &Vectors, metric: Metric) -> Box<dyn VectorIndex> {
    let mut index = build(spec, data.dim, metric);
    let ids: Vec<u64> = (0..data.len() as u64).collect();
    // Two batches, so trainable indexes see both the training upsert and a later one.
    let half = ids.len() / 2;
    index
        .upsert(&ids[..half], &data.data[..half * data.dim])
        .unwrap_or_else(|error| panic!("{spec}: {error}"));
    index
        .upsert(&ids[half..], &data.data[half * data.dim..])
        .unwrap_or_else(|error| panic!("{spec}: {error}"));
    index
}

fn ids_of(neighbors: &[Neighbor]) -> Vec<u64> {
    neighbors.iter().map(|neighbor| neighbor.id).collect()
}

fn search_all(index: &dyn VectorIndex, queries: &Vectors, k: usize) -> Vec<Vec<Neighbor>> {
    queries
        .rows()
        .map(|query| index.search(query, k, &DEFAULT_PARAMS).unwrap())
        .collect()
}

fn siftsmall() -> Option<(Vectors, Vectors, Vec<Vec<u32>>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/siftsmall");
    if !dir.exists() {
        eprintln!("skipping: {} is absent", dir.display());
        return None;
    }
    Some((
        read_fvecs(&dir.join("siftsmall_base.fvecs")).unwrap(),
        read_fvecs(&dir.join("siftsmall_query.fvecs")).unwrap(),
        read_ivecs(&dir.join("siftsmall_groundtruth.ivecs")).unwrap(),
    ))
}

#[test]
fn every_backend_finds_the_exact_neighbours_on_small_data_for_every_metric() {
    let data = dataset::synthetic(2_000, 16, 11);
    let queries = dataset::synthetic(20, 16, 12);
    for metric in Metric::ALL {
        let truth = dataset::ground_truth(&data, &queries, 10, metric);
        for spec in exhaustive_backends() {
            let index = filled(&spec, &data, metric);
            assert_eq!(index.len(), data.len(), "{spec}");
            let found: Vec<Vec<u64>> = search_all(index.as_ref(), &queries, 10)
                .iter()
                .map(|result| ids_of(result))
                .collect();
            let truth_u32: Vec<Vec<u32>> = truth
                .iter()
                .map(|row| row.iter().map(|&id| id as u32).collect())
                .collect();
            let recall = recall_at_k(&found, &truth_u32, 10);
            // Inner product is not a metric: a graph built on it leaves small-norm points
            // with few in-links, so even a beam of a fifth of the data misses some. FAISS
            // HNSW16 reaches 0.945 here at efSearch 400 and 0.955 at 1000.
            let floor = if metric == Metric::InnerProduct && is_graph(&spec) {
                0.9
            } else {
                0.99
            };
            assert!(recall >= floor, "{spec} {metric}: recall@10 {recall}");
        }
    }
}

#[test]
fn scores_are_exact_metric_scores_in_best_first_order() {
    let data = dataset::synthetic(1_500, 8, 21);
    let queries = dataset::synthetic(5, 8, 22);
    for metric in Metric::ALL {
        for spec in exhaustive_backends() {
            let index = filled(&spec, &data, metric);
            for query in queries.rows() {
                let result = index.search(query, 10, &DEFAULT_PARAMS).unwrap();
                assert_eq!(result.len(), 10, "{spec}");
                let mut normalised = query.to_vec();
                if metric == Metric::Cosine {
                    quiver_index::normalize_in_place(&mut normalised);
                }
                for pair in result.windows(2) {
                    assert_ne!(
                        metric.compare_neighbors(&pair[0], &pair[1]),
                        std::cmp::Ordering::Greater,
                        "{spec} {metric}: results out of order"
                    );
                }
                for neighbor in &result {
                    let stored = index.vector(neighbor.id).unwrap();
                    let exact = metric.score(&normalised, &stored);
                    assert!(
                        (exact - neighbor.score).abs() <= 1e-4 * exact.abs().max(1.0),
                        "{spec} {metric}: id {} scored {} but is {exact}",
                        neighbor.id,
                        neighbor.score
                    );
                }
            }
        }
    }
}

#[test]
fn get_returns_what_was_stored_and_upsert_replaces() {
    let data = dataset::synthetic(1_000, 8, 31);
    for spec in exhaustive_backends() {
        let mut index = filled(&spec, &data, Metric::L2);
        assert_eq!(index.vector(7).unwrap(), data.row(7), "{spec}");
        assert_eq!(index.vector(10_000), None, "{spec}");

        let replacement = vec![1_000.0f32; 8];
        index.upsert(&[7], &replacement).unwrap();
        assert_eq!(index.len(), data.len(), "{spec}: replace must not grow");
        assert_eq!(index.vector(7).unwrap(), replacement, "{spec}");
        let found = index.search(&replacement, 1, &DEFAULT_PARAMS).unwrap();
        assert_eq!(ids_of(&found), vec![7], "{spec}");
        assert_eq!(found[0].score, 0.0, "{spec}");
        // The old position no longer answers for id 7.
        let near_old = index.search(data.row(7), 5, &DEFAULT_PARAMS).unwrap();
        assert!(!ids_of(&near_old).contains(&7), "{spec}");

        // A repeated id in one batch keeps its last vector.
        index
            .upsert(&[3, 3], &[vec![-5.0f32; 8], vec![-9.0f32; 8]].concat())
            .unwrap();
        assert_eq!(index.vector(3).unwrap(), vec![-9.0f32; 8], "{spec}");
        assert_eq!(index.len(), data.len(), "{spec}");
    }
}

#[test]
fn removed_ids_are_never_returned_and_counts_follow() {
    let data = dataset::synthetic(2_000, 8, 41);
    let queries = dataset::synthetic(10, 8, 42);
    for spec in exhaustive_backends() {
        let mut index = filled(&spec, &data, Metric::L2);
        let removed: Vec<u64> = (0..2_000).filter(|id| id % 3 == 0).collect();
        assert_eq!(index.remove(&removed).unwrap(), removed.len(), "{spec}");
        assert_eq!(index.remove(&removed).unwrap(), 0, "{spec}: removed twice");
        assert_eq!(index.len(), 2_000 - removed.len(), "{spec}");
        assert_eq!(index.vector(0), None, "{spec}");
        for query in queries.rows() {
            let result = index.search(query, 50, &DEFAULT_PARAMS).unwrap();
            assert_eq!(result.len(), 50, "{spec}");
            assert!(
                result.iter().all(|neighbor| neighbor.id % 3 != 0),
                "{spec}: a removed id came back"
            );
        }
        // Exactness holds on what is left.
        let live: Vec<u64> = (0..2_000).filter(|id| id % 3 != 0).collect();
        let live_data = Vectors {
            dim: 8,
            data: live
                .iter()
                .flat_map(|&id| data.row(id as usize).to_vec())
                .collect(),
        };
        let truth = dataset::ground_truth(&live_data, &queries, 10, Metric::L2);
        for (query, truth) in queries.rows().zip(truth) {
            let expected: Vec<u64> = truth.iter().map(|&row| live[row as usize]).collect();
            let found = ids_of(&index.search(query, 10, &DEFAULT_PARAMS).unwrap());
            let overlap = found.iter().filter(|id| expected.contains(id)).count();
            assert!(overlap >= 9, "{spec}: {overlap}/10 after removals");
        }
    }
}

#[test]
fn empty_index_and_k_beyond_the_count() {
    for spec in exhaustive_backends() {
        let mut index = build(&spec, 4, Metric::InnerProduct);
        assert!(index.is_empty(), "{spec}");
        assert!(index
            .search(&[1.0, 0.0, 0.0, 0.0], 10, &DEFAULT_PARAMS)
            .unwrap()
            .is_empty());
        index
            .upsert(
                &[1, 2, 3],
                &[1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.5, 0.5, 0.0, 0.0],
            )
            .unwrap();
        let result = index
            .search(&[1.0, 0.0, 0.0, 0.0], 100, &DEFAULT_PARAMS)
            .unwrap();
        assert_eq!(ids_of(&result), vec![1, 3, 2], "{spec}");
        assert!(index
            .search(&[1.0, 0.0, 0.0, 0.0], 0, &DEFAULT_PARAMS)
            .unwrap()
            .is_empty());
        index.remove(&[1, 2, 3]).unwrap();
        assert!(index
            .search(&[1.0, 0.0, 0.0, 0.0], 10, &DEFAULT_PARAMS)
            .unwrap()
            .is_empty());
    }
}

#[test]
fn bad_input_is_an_error_and_changes_nothing() {
    let data = dataset::synthetic(300, 4, 51);
    for spec in exhaustive_backends() {
        let mut index = filled(&spec, &data, Metric::Cosine);
        let before = index.search(data.row(0), 5, &DEFAULT_PARAMS).unwrap();
        assert!(matches!(
            index.upsert(&[1_000], &[1.0, 2.0]),
            Err(Error::DimensionMismatch { .. })
        ));
        assert!(matches!(
            index.upsert(
                &[1_000, 1_001],
                &[1.0, 2.0, 3.0, 4.0, f32::NAN, 0.0, 0.0, 1.0]
            ),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            index.upsert(&[1_002, 1_003], &[1.0, 2.0, 3.0, 4.0, 0.0, 0.0, 0.0, 0.0]),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            index.search(&[1.0, 2.0, 3.0], 5, &DEFAULT_PARAMS),
            Err(Error::DimensionMismatch { .. })
        ));
        assert!(matches!(
            index.search(&[1.0, f32::INFINITY, 3.0, 4.0], 5, &DEFAULT_PARAMS),
            Err(Error::InvalidArgument(_))
        ));
        assert_eq!(index.len(), 300, "{spec}");
        assert_eq!(index.vector(1_000), None, "{spec}");
        assert_eq!(index.vector(1_001), None, "{spec}");
        assert_eq!(
            index.search(data.row(0), 5, &DEFAULT_PARAMS).unwrap(),
            before,
            "{spec}"
        );
    }
}

#[test]
fn save_then_load_gives_identical_results() {
    let data = dataset::synthetic(3_000, 16, 61);
    let queries = dataset::synthetic(20, 16, 62);
    for metric in Metric::ALL {
        for spec in exhaustive_backends() {
            let mut index = filled(&spec, &data, metric);
            index.remove(&[5, 6, 7]).unwrap();
            let dir = tempfile::tempdir().unwrap();
            index.save(dir.path()).unwrap();
            // A second save replaces the first and still loads.
            index.save(dir.path()).unwrap();
            let loaded =
                load_index(&spec, dir.path()).unwrap_or_else(|error| panic!("{spec}: {error}"));
            assert_eq!(loaded.len(), index.len(), "{spec}");
            assert_eq!(loaded.spec(), spec);
            assert_eq!(loaded.dim(), 16);
            assert_eq!(loaded.metric(), metric);
            assert_eq!(
                search_all(loaded.as_ref(), &queries, 10),
                search_all(index.as_ref(), &queries, 10),
                "{spec} {metric}"
            );
            assert_eq!(loaded.vector(8), index.vector(8), "{spec}");
            assert_eq!(loaded.vector(5), None, "{spec}");
        }
    }
}

#[test]
fn a_damaged_save_is_reported_as_corrupt() {
    let data = dataset::synthetic(500, 8, 71);
    for spec in exhaustive_backends() {
        let index = filled(&spec, &data, Metric::L2);
        let dir = tempfile::tempdir().unwrap();
        index.save(dir.path()).unwrap();
        // Flip one byte in the middle of every file the save wrote.
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let path = entry.unwrap().path();
            let mut bytes = std::fs::read(&path).unwrap();
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0x40;
            std::fs::write(&path, bytes).unwrap();
        }
        match load_index(&spec, dir.path()) {
            Err(Error::Corrupt(_)) => {}
            Err(other) => panic!("{spec}: expected Corrupt, got {other}"),
            Ok(_) => panic!("{spec}: a damaged save loaded"),
        }
    }
}

#[test]
fn bad_parameters_are_refused_before_anything_is_built() {
    let mut refused = vec![
        ("hnsw m=1", 16),
        ("hnsw ef_construction=0", 16),
        ("ivf_flat nlist=0", 16),
        ("ivf_flat nlist=8 nprobe=9", 16),
        ("ivf_pq m=5", 16),
        ("ivf_pq m=4 nbits=9", 16),
        ("flat", 0),
    ];
    if quiver_index::FAISS_AVAILABLE {
        refused.extend([("faiss factory=NoSuchIndex", 16), ("faiss factory=PQ5", 16)]);
    }
    refused.push(("faiss", 16));
    for (text, dim) in refused {
        let spec = parse(text);
        match validate_spec(&spec, dim, Metric::L2) {
            Err(Error::InvalidSpec(_)) => {}
            other => panic!("{text} dim {dim}: expected InvalidSpec, got {other:?}"),
        }
    }
    if !quiver_index::FAISS_AVAILABLE {
        assert!(matches!(
            validate_spec(&parse("faiss factory=HNSW32"), 16, Metric::L2),
            Err(Error::Unsupported(_))
        ));
    }
}

#[test]
fn concurrent_searches_equal_sequential_ones() {
    let data = dataset::synthetic(3_000, 16, 81);
    let queries = Arc::new(dataset::synthetic(40, 16, 82));
    for spec in exhaustive_backends() {
        let index: Arc<dyn VectorIndex> = Arc::from(filled(&spec, &data, Metric::L2));
        let expected = search_all(index.as_ref(), &queries, 10);
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let index = Arc::clone(&index);
                let queries = Arc::clone(&queries);
                thread::spawn(move || search_all(index.as_ref(), &queries, 10))
            })
            .collect();
        for handle in handles {
            assert_eq!(handle.join().unwrap(), expected, "{spec}");
        }
    }
}

#[test]
fn per_query_overrides_change_the_beam_and_the_probes() {
    let data = dataset::synthetic(4_000, 16, 91);
    let queries = dataset::synthetic(30, 16, 92);
    let truth: Vec<Vec<u32>> = dataset::ground_truth(&data, &queries, 10, Metric::L2)
        .iter()
        .map(|row| row.iter().map(|&id| id as u32).collect())
        .collect();
    let mut specs = vec![
        (
            "hnsw m=8 ef_construction=40 ef_search=10",
            SearchParams {
                ef_search: 500,
                nprobe: 0,
            },
        ),
        (
            "ivf_flat nlist=32 nprobe=1",
            SearchParams {
                ef_search: 0,
                nprobe: 32,
            },
        ),
    ];
    if quiver_index::FAISS_AVAILABLE {
        specs.push((
            "faiss factory=IVF32,Flat params=nprobe=1",
            SearchParams {
                ef_search: 0,
                nprobe: 32,
            },
        ));
        specs.push((
            "faiss factory=HNSW8 params=efSearch=10",
            SearchParams {
                ef_search: 500,
                nprobe: 0,
            },
        ));
    }
    for (text, wide) in specs {
        let spec = parse(text);
        let index = filled(&spec, &data, Metric::L2);
        let recall = |params: &SearchParams| {
            let found: Vec<Vec<u64>> = queries
                .rows()
                .map(|query| ids_of(&index.search(query, 10, params).unwrap()))
                .collect();
            recall_at_k(&found, &truth, 10)
        };
        let narrow_recall = recall(&DEFAULT_PARAMS);
        let wide_recall = recall(&wide);
        assert!(wide_recall >= 0.99, "{text}: widened recall {wide_recall}");
        assert!(
            wide_recall > narrow_recall,
            "{text}: override had no effect ({narrow_recall} → {wide_recall})"
        );
        // The override is per query: the default is back afterwards.
        assert_eq!(recall(&DEFAULT_PARAMS), narrow_recall, "{text}");
    }
}

#[test]
fn untrained_indexes_answer_exactly_and_train_once_they_can() {
    let data = dataset::synthetic(60, 8, 101);
    let queries = dataset::synthetic(10, 8, 102);
    let mut specs = vec![
        "ivf_flat nlist=256 nprobe=1",
        "ivf_pq nlist=256 m=4 nprobe=1 rerank=0",
    ];
    if quiver_index::FAISS_AVAILABLE {
        specs.push("faiss factory=IVF256,PQ4");
    }
    let flat = filled(&IndexSpec::Flat, &data, Metric::L2);
    for text in specs {
        let spec = parse(text);
        let index = filled(&spec, &data, Metric::L2);
        assert_eq!(
            search_all(index.as_ref(), &queries, 10),
            search_all(flat.as_ref(), &queries, 10),
            "{text}: 60 points cannot train 256 cells, so search must be exact"
        );
    }
}

#[test]
fn recall_floors_on_siftsmall() {
    let Some((base, queries, truth)) = siftsmall() else {
        return;
    };
    let mut floors = vec![
        ("flat", 1.0),
        ("hnsw m=16 ef_construction=200 ef_search=64", 0.95),
        ("ivf_flat nlist=64 nprobe=16", 0.95),
        ("ivf_pq nlist=64 m=16 nbits=8 nprobe=16 rerank=10", 0.90),
    ];
    if quiver_index::FAISS_AVAILABLE {
        floors.extend([
            ("faiss factory=HNSW16 params=efSearch=64", 0.95),
            ("faiss factory=IVF64,Flat params=nprobe=16", 0.95),
        ]);
    }
    for (text, floor) in floors {
        let spec = parse(text);
        let index = filled(&spec, &base, Metric::L2);
        let found: Vec<Vec<u64>> = search_all(index.as_ref(), &queries, 10)
            .iter()
            .map(|result| ids_of(result))
            .collect();
        let recall = recall_at_k(&found, &truth, 10);
        eprintln!("{text}: recall@10 {recall:.4}");
        assert!(recall >= floor, "{text}: recall@10 {recall:.4} < {floor}");
    }
}

#[test]
fn filtered_search_with_everything_allowed_or_nothing() {
    let data = dataset::synthetic(2_000, 16, 31);
    let queries = dataset::synthetic(20, 16, 32);
    let everything: RoaringTreemap = (0..data.len() as u64).collect();
    let nothing = RoaringTreemap::new();
    let flat = filled(&IndexSpec::Flat, &data, Metric::L2);
    for spec in exhaustive_backends() {
        let index = filled(&spec, &data, Metric::L2);
        for query in queries.rows() {
            let all = AllowList::new(&everything);
            assert_eq!(
                index
                    .search_filtered(query, 10, &DEFAULT_PARAMS, &all)
                    .unwrap(),
                index.search(query, 10, &DEFAULT_PARAMS).unwrap(),
                "{spec}: allowing every id is no filter"
            );
            assert_eq!(
                index.search_among(query, 10, &all).unwrap(),
                flat.search(query, 10, &DEFAULT_PARAMS).unwrap(),
                "{spec}: scanning every allowed id is exact search"
            );
            let none = AllowList::new(&nothing);
            assert!(index
                .search_filtered(query, 10, &DEFAULT_PARAMS, &none)
                .unwrap()
                .is_empty());
            assert!(index.search_among(query, 10, &none).unwrap().is_empty());
            let (found, _) =
                filtered::search(index.as_ref(), query, 10, &DEFAULT_PARAMS, &none, 0).unwrap();
            assert!(found.is_empty(), "{spec}");
        }
    }
}

/// On siftsmall with realistic parameters: allow-sets of 50%, 10% and 1% of the points,
/// drawn at random. Each backend's own filtered search (the planner forced past its exact
/// threshold) returns only allowed ids, never fewer than `min(k, matches)`, and finds
/// the true filtered neighbours at a floor per share.
#[test]
fn random_allow_sets_return_only_allowed_ids_and_meet_recall_floors() {
    let Some((base, queries, _)) = siftsmall() else {
        return;
    };
    let mut backends = vec![
        (
            "hnsw m=16 ef_construction=200 ef_search=64",
            [0.95, 0.95, 0.95],
        ),
        ("ivf_flat nlist=64 nprobe=16", [0.95, 0.95, 0.95]),
        (
            "ivf_pq nlist=64 m=16 nbits=8 nprobe=16 rerank=10",
            [0.90, 0.90, 0.90],
        ),
    ];
    if quiver_index::FAISS_AVAILABLE {
        // FAISS's own filtered searches (an IDSelectorBitmap in the search parameters)
        // measured 0.99 / 0.93 / 0.99 for HNSW16 (at 1% nearly every query came back short
        // and the exact scan answered) and 1.00 / 0.99 / 0.91 for IVF64 at nprobe 16 (FAISS
        // probes no further lists under a filter).
        backends.extend([
            (
                "faiss factory=HNSW16 params=efSearch=64",
                [0.95, 0.90, 0.95],
            ),
            (
                "faiss factory=IVF64,Flat params=nprobe=16",
                [0.95, 0.95, 0.85],
            ),
        ]);
    }
    let flat = filled(&IndexSpec::Flat, &base, Metric::L2);
    let mut rng_state = 0x5eed_u64;
    let mut next = move || {
        rng_state = rng_state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        rng_state >> 33
    };
    let shares = [0.5, 0.1, 0.01];
    let allow_sets: Vec<RoaringTreemap> = shares
        .iter()
        .map(|share| {
            (0..base.len() as u64)
                .filter(|_| (next() % 10_000) as f64 / 10_000.0 < *share)
                .collect()
        })
        .collect();
    for (text, floors) in backends {
        let index = filled(&parse(text), &base, Metric::L2);
        for ((share, allowed), floor) in shares.iter().zip(&allow_sets).zip(floors) {
            let allow = AllowList::new(allowed);
            let (mut hits, mut total, mut by_index) = (0usize, 0usize, 0usize);
            for query in queries.rows() {
                let truth = flat.search_among(query, 10, &allow).unwrap();
                let (found, plan) =
                    filtered::search(index.as_ref(), query, 10, &DEFAULT_PARAMS, &allow, 0)
                        .unwrap();
                assert!(
                    found.iter().all(|neighbor| allowed.contains(neighbor.id)),
                    "{text} at {share}: a result the filter excludes"
                );
                assert_eq!(
                    found.len(),
                    10.min(allowed.len() as usize),
                    "{text} at {share}"
                );
                by_index += usize::from(plan == filtered::Plan::Index);
                total += truth.len();
                hits += found
                    .iter()
                    .filter(|neighbor| truth.iter().any(|exact| exact.id == neighbor.id))
                    .count();
            }
            let recall = hits as f64 / total as f64;
            eprintln!(
                "{text} at {:.0}% allowed: recall@10 {recall:.4}, index plan for {by_index} of {} queries",
                share * 100.0,
                queries.len()
            );
            assert!(
                recall >= floor,
                "{text} at {share}: recall@10 {recall:.4} < {floor}"
            );
        }
    }
}

/// A filter correlated with the vectors, as a category is: for each siftsmall query, the
/// 1,000 points (10%) nearest an anchor point that ranks 3,000th by distance to the query.
/// The lists and the graph region nearest the query hold none of them, and the nearest of
/// them lie on the near side of a ball. Each backend's filtered search (planner forced
/// past its exact threshold) still finds them.
#[test]
fn a_filter_correlated_with_the_vectors_keeps_recall() {
    let Some((base, queries, _)) = siftsmall() else {
        return;
    };
    let mut backends = vec![
        ("hnsw m=16 ef_construction=200 ef_search=64", 0.95),
        ("ivf_flat nlist=64 nprobe=16", 0.95),
        // Measured 0.95; stopping once the probed lists gave k allowed vectors, without
        // counting how many allowed vectors were scanned, gave 0.93.
        ("ivf_flat nlist=64 nprobe=4", 0.94),
        ("ivf_pq nlist=64 m=16 nbits=8 nprobe=16 rerank=10", 0.95),
        ("ivf_pq nlist=64 m=32 nbits=8 nprobe=4 rerank=10", 0.93),
    ];
    if quiver_index::FAISS_AVAILABLE {
        // FAISS routes through excluded points and nothing more: measured 0.91.
        backends.push(("faiss factory=HNSW16 params=efSearch=64", 0.85));
    }
    let flat = filled(&IndexSpec::Flat, &base, Metric::L2);
    let allow_sets: Vec<RoaringTreemap> = queries
        .rows()
        .map(|query| {
            let ranked = flat.search(query, 3_000, &DEFAULT_PARAMS).unwrap();
            let anchor = base.row(ranked[2_999].id as usize);
            flat.search(anchor, 1_000, &DEFAULT_PARAMS)
                .unwrap()
                .iter()
                .map(|neighbor| neighbor.id)
                .collect()
        })
        .collect();
    for (text, floor) in backends {
        let index = filled(&parse(text), &base, Metric::L2);
        let (mut hits, mut total, mut by_index) = (0usize, 0usize, 0usize);
        for (query, allowed) in queries.rows().zip(&allow_sets) {
            let allow = AllowList::new(allowed);
            let truth = flat.search_among(query, 10, &allow).unwrap();
            let (found, plan) =
                filtered::search(index.as_ref(), query, 10, &DEFAULT_PARAMS, &allow, 0).unwrap();
            assert_eq!(found.len(), 10, "{text}");
            by_index += usize::from(plan == filtered::Plan::Index);
            assert!(
                found.iter().all(|neighbor| allowed.contains(neighbor.id)),
                "{text}"
            );
            total += truth.len();
            hits += found
                .iter()
                .filter(|neighbor| truth.iter().any(|exact| exact.id == neighbor.id))
                .count();
        }
        let recall = hits as f64 / total as f64;
        eprintln!(
            "{text}: recall@10 {recall:.4} under a correlated 10% filter, index plan for {by_index} of {} queries",
            queries.len()
        );
        assert!(recall >= floor, "{text}: recall@10 {recall:.4} < {floor}");
    }
}
