//! Filtered search, count, scroll and delete through a real cluster (4 shards, RF 2, three
//! Searchers, real etcd): every answer equals what a brute-force scan with the same filter
//! (the payload crate's reference evaluator over the same payloads) gives, with payload
//! indexes declared at creation, created after loading, or absent; bad filters are refused
//! with INVALID_ARGUMENT and change nothing; and it all still holds after a Searcher is
//! SIGKILLed and restarted and after a rebalance copies replicas to a new Searcher.

use std::collections::{BTreeMap, BTreeSet};

use quiver_index::{dataset, dataset::Vectors, Metric};
use quiver_integration_tests::{
    assert_same_results, brute_force, collection_config, id_scores, search_request, upsert_points,
    wait_for, Cluster,
};
use quiver_payload::{eval, json, Filter};
use quiver_proto::v1::{
    self, merger_client::MergerClient, CountRequest, CreatePayloadIndexRequest, DeleteRequest,
    PayloadIndex, PayloadIndexType, Point, ScrollRequest, SearchRequest,
};
use serde_json::{json as payload, Value};
use tonic::{transport::Channel, Code};

const DIMENSION: usize = 16;
const ROWS: usize = 2400;
const SHARDS: u32 = 4;
const K: usize = 10;

/// A payload per row with keywords, integers, floats, booleans, arrays, a nested object and
/// keys some points lack.
fn payload_of(row: usize) -> Value {
    let lang = ["en", "de", "fr"][row % 3];
    let region = ["eu", "us", "apac"][row % 3];
    let mut object = payload!({
        "tenant": row % 7,
        "lang": lang,
        "year": 2000 + (row % 25),
        "price": (row as f64 * 0.37) % 100.0,
        "tags": [format!("t{}", row % 5), format!("t{}", row % 11)],
        "meta": {"region": region, "score": (row % 13) as f64 / 2.0},
        "sale": row % 4 == 0,
    });
    if row % 9 == 0 {
        object.as_object_mut().unwrap().remove("lang");
    }
    if row % 10 == 0 {
        object["tags"] = payload!([]);
    }
    object
}

/// The filters every check runs, in their JSON form: broad and narrow, nested, arrays,
/// missing keys, numeric ranges over integers and floats.
fn filters() -> Vec<(&'static str, Filter)> {
    [
        ("one tenant", r#"{"must": [{"key": "tenant", "match": {"integer": 3}}]}"#),
        (
            "tenant, recent, en or de",
            r#"{"must": [{"key": "tenant", "match": {"integer": 2}}, {"key": "year", "range": {"gte": 2010}}],
                "should": [{"key": "lang", "any": {"keywords": ["en", "de"]}}]}"#,
        ),
        ("cheap floats", r#"{"must": [{"key": "price", "range": {"gt": 10.5, "lt": 20.25}}]}"#),
        ("a tag in an array", r#"{"must": [{"key": "tags", "match": {"keyword": "t3"}}]}"#),
        (
            "nested region, not on sale",
            r#"{"must": [{"key": "meta.region", "match": {"keyword": "apac"}}],
                "must_not": [{"key": "sale", "match": {"boolean": true}}]}"#,
        ),
        ("no lang", r#"{"must": [{"is_empty": {"key": "lang"}}]}"#),
        ("empty tags or a high score", r#"{"should": [{"is_empty": {"key": "tags"}}, {"key": "meta.score", "range": {"gte": 5.5}}]}"#),
        ("ids", r#"{"must": [{"has_id": ["7", "70", "700", "no-such-id"]}]}"#),
        (
            "nested filter",
            r#"{"must_not": [{"filter": {"should": [{"key": "tenant", "any": {"integers": [0, 1, 2, 3, 4]}},
                                                     {"key": "year", "range": {"lt": 2003}}]}}]}"#,
        ),
        ("nothing", r#"{"must": [{"key": "tenant", "match": {"integer": 99}}]}"#),
    ]
    .into_iter()
    .map(|(name, text)| (name, json::parse(text).unwrap_or_else(|error| panic!("{name}: {error}"))))
    .collect()
}

fn proto(filter: &Filter) -> v1::Filter {
    quiver_payload::proto::to_proto(filter)
}

/// The rows (ids) that pass `filter` among `live`, by the reference evaluator.
fn matching(filter: &Filter, live: &BTreeSet<usize>) -> BTreeSet<usize> {
    live.iter()
        .copied()
        .filter(|row| eval::matches(filter, &row.to_string(), Some(&payload_of(*row))))
        .collect()
}

async fn load(client: &mut MergerClient<Channel>, name: &str, base: &Vectors) {
    for chunk in (0..base.len()).collect::<Vec<_>>().chunks(600) {
        let points = chunk
            .iter()
            .map(|row| Point {
                id: row.to_string(),
                vector: base.row(*row).to_vec(),
                payload_json: payload_of(*row).to_string(),
            })
            .collect();
        upsert_points(client, name, points).await;
    }
}

async fn count(client: &mut MergerClient<Channel>, name: &str, filter: &Filter) -> u64 {
    client
        .count(CountRequest {
            collection: name.into(),
            filter: Some(proto(filter)),
            ..Default::default()
        })
        .await
        .expect("count")
        .into_inner()
        .count
}

async fn scroll_all(
    client: &mut MergerClient<Channel>,
    name: &str,
    filter: &Filter,
) -> Vec<String> {
    let mut ids = Vec::new();
    let mut token = String::new();
    for _ in 0..1000 {
        let page = client
            .scroll(ScrollRequest {
                collection: name.into(),
                filter: Some(proto(filter)),
                limit: 100,
                page_token: token.clone(),
                with_payloads: true,
                ..Default::default()
            })
            .await
            .expect("scroll")
            .into_inner();
        assert!(page.points.len() <= 100);
        for point in &page.points {
            assert_eq!(
                serde_json::from_str::<Value>(&point.payload_json).unwrap(),
                payload_of(point.id.parse().unwrap()),
                "scroll returns the stored payload"
            );
        }
        ids.extend(page.points.into_iter().map(|point| point.id));
        if page.next_page_token.is_empty() {
            return ids;
        }
        token = page.next_page_token;
    }
    panic!("scroll did not end");
}

/// Search, count and scroll of every filter against brute force over `live`.
async fn check_everything(
    client: &mut MergerClient<Channel>,
    name: &str,
    base: &Vectors,
    queries: &Vectors,
    live: &BTreeSet<usize>,
    what: &str,
) {
    for (filter_name, filter) in filters() {
        let expected = matching(&filter, live);
        for (number, query) in queries.rows().enumerate() {
            let request = SearchRequest {
                filter: Some(proto(&filter)),
                ..search_request(name, query, K as u32)
            };
            let response = client.search(request).await.expect("search").into_inner();
            let truth = brute_force(Metric::L2, base, query, K, |row| expected.contains(&row));
            assert_same_results(
                &id_scores(&response.results[0]),
                &truth,
                &format!("{what}: {filter_name}, query {number}"),
            );
            assert_eq!(response.shards.len(), SHARDS as usize);
            for report in &response.shards {
                assert_eq!(
                    report.plan, "exact_scan",
                    "{what}: {filter_name}: {report:?}"
                );
            }
        }
        assert_eq!(
            count(client, name, &filter).await,
            expected.len() as u64,
            "{what}: count of {filter_name}"
        );
        let scrolled = scroll_all(client, name, &filter).await;
        let distinct: BTreeSet<usize> = scrolled.iter().map(|id| id.parse().unwrap()).collect();
        assert_eq!(
            distinct.len(),
            scrolled.len(),
            "{what}: {filter_name}: a point came twice"
        );
        assert_eq!(distinct, expected, "{what}: scroll of {filter_name}");
    }
}

fn index(key: &str, kind: PayloadIndexType) -> PayloadIndex {
    PayloadIndex {
        key: key.into(),
        r#type: kind as i32,
    }
}

fn declared_indexes() -> Vec<PayloadIndex> {
    vec![
        index("tenant", PayloadIndexType::Integer),
        index("lang", PayloadIndexType::Keyword),
        index("year", PayloadIndexType::Integer),
        index("price", PayloadIndexType::Float),
        index("tags", PayloadIndexType::Keyword),
        index("meta.region", PayloadIndexType::Keyword),
        index("meta.score", PayloadIndexType::Float),
        index("sale", PayloadIndexType::Bool),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_answer_exactly_with_indexes_declared_at_creation_later_or_never() {
    let mut cluster = Cluster::start(3, 4).await;
    let mut client = cluster.client().await;
    let base = dataset::synthetic(ROWS, DIMENSION, 41);
    let queries = dataset::synthetic(6, DIMENSION, 42);
    let live: BTreeSet<usize> = (0..ROWS).collect();

    // Indexed at creation, and unindexed.
    let mut declared = collection_config("declared", DIMENSION as u32, v1::Metric::L2, SHARDS, 2);
    declared.config.as_mut().unwrap().payload_indexes = declared_indexes();
    client
        .create_collection(declared)
        .await
        .expect("create declared");
    client
        .create_collection(collection_config(
            "plain",
            DIMENSION as u32,
            v1::Metric::L2,
            SHARDS,
            2,
        ))
        .await
        .expect("create plain");
    for name in ["declared", "plain"] {
        load(&mut client, name, &base).await;
    }
    let described = client
        .describe_collection(v1::DescribeCollectionRequest {
            name: "declared".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        described
            .collection
            .unwrap()
            .config
            .unwrap()
            .payload_indexes,
        declared_indexes()
    );
    let record = cluster.etcd_json("/quiver/collections/declared").unwrap();
    assert_eq!(
        record["payload_indexes"][0],
        serde_json::json!({"key": "tenant", "type": "integer"})
    );
    cluster
        .wait_caught_up("declared", 2, std::time::Duration::from_secs(30))
        .await;
    cluster
        .wait_caught_up("plain", 2, std::time::Duration::from_secs(30))
        .await;
    check_everything(
        &mut client,
        "declared",
        &base,
        &queries,
        &live,
        "declared at creation",
    )
    .await;
    check_everything(
        &mut client,
        "plain",
        &base,
        &queries,
        &live,
        "no payload index",
    )
    .await;

    // Indexes created after loading answer the same.
    for declared_index in declared_indexes() {
        let response = client
            .create_payload_index(CreatePayloadIndexRequest {
                collection: "plain".into(),
                key: declared_index.key.clone(),
                r#type: declared_index.r#type,
            })
            .await
            .expect("create payload index")
            .into_inner();
        assert!(response.payload_indexes.contains(&declared_index));
    }
    check_everything(
        &mut client,
        "plain",
        &base,
        &queries,
        &live,
        "indexed after loading",
    )
    .await;

    // Delete by filter: exactly the matching points go, on every replica.
    let doomed = json::parse(r#"{"must": [{"key": "tenant", "match": {"integer": 5}}, {"key": "sale", "match": {"boolean": false}}]}"#).unwrap();
    let gone = matching(&doomed, &live);
    assert!(!gone.is_empty());
    for name in ["declared", "plain"] {
        let response = client
            .delete(DeleteRequest {
                collection: name.into(),
                filter: Some(proto(&doomed)),
                ..Default::default()
            })
            .await
            .expect("delete by filter")
            .into_inner();
        assert_eq!(response.deleted as usize, gone.len(), "{name}");
        assert_eq!(count(&mut client, name, &doomed).await, 0);
    }
    let live: BTreeSet<usize> = live.difference(&gone).copied().collect();
    for name in ["declared", "plain"] {
        let replicas = cluster
            .wait_caught_up(name, 2, std::time::Duration::from_secs(30))
            .await;
        let mut held: BTreeMap<u32, u64> = BTreeMap::new();
        for (shard, copies) in &replicas {
            for (searcher, replica) in copies {
                let expected = live
                    .iter()
                    .filter(|row| {
                        quiver_cluster::placement::shard_of(&row.to_string(), SHARDS) == *shard
                    })
                    .count() as u64;
                assert_eq!(
                    replica.point_count, expected,
                    "{name} shard {shard} on {searcher}"
                );
                held.insert(*shard, replica.point_count);
            }
        }
        assert_eq!(held.values().sum::<u64>(), live.len() as u64);
    }
    check_everything(
        &mut client,
        "plain",
        &base,
        &queries,
        &live,
        "after a delete by filter",
    )
    .await;

    // A SIGKILLed and restarted Searcher rebuilds its indexes from what it replays.
    cluster.searchers[1].kill();
    cluster.restart_searcher(1);
    cluster
        .wait_caught_up("plain", 2, std::time::Duration::from_secs(30))
        .await;
    check_everything(
        &mut client,
        "plain",
        &base,
        &queries,
        &live,
        "after a restart",
    )
    .await;

    // A new Searcher: replicas copied by the rebalance answer the same.
    cluster.add_searcher(&[]);
    wait_for(
        std::time::Duration::from_secs(60),
        "the new searcher to hold replicas of plain",
        async || {
            let held = cluster.searchers[3].replica_status("plain").await?;
            if held
                .iter()
                .any(|replica| replica.state == v1::ReplicaState::Active as i32)
            {
                Ok(())
            } else {
                Err(format!("{held:?}"))
            }
        },
    )
    .await;
    cluster
        .wait_caught_up("plain", 2, std::time::Duration::from_secs(30))
        .await;
    check_everything(
        &mut client,
        "plain",
        &base,
        &queries,
        &live,
        "after a rebalance",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_filters_and_index_requests_are_invalid_arguments_and_change_nothing() {
    let cluster = Cluster::start(2, 4).await;
    let mut client = cluster.client().await;
    let mut config = collection_config("strict", DIMENSION as u32, v1::Metric::L2, 2, 1);
    config.config.as_mut().unwrap().payload_indexes =
        vec![index("tenant", PayloadIndexType::Integer)];
    client.create_collection(config).await.expect("create");
    let base = dataset::synthetic(200, DIMENSION, 43);
    load(&mut client, "strict", &base).await;
    let query = base.row(0).to_vec();

    let mut deep = String::from(r#"{"must": [{"key": "tenant", "match": {"integer": 1}}]}"#);
    for _ in 0..16 {
        deep = format!(r#"{{"must": [{{"filter": {deep}}}]}}"#);
    }
    let many: Vec<String> = (0..1025)
        .map(|id| format!(r#"{{"has_id": ["{id}"]}}"#))
        .collect();
    let many = format!(r#"{{"should": [{}]}}"#, many.join(","));
    let cases: Vec<(String, v1::Filter, &str)> = vec![
        ("empty condition".into(), v1::Filter { must: vec![v1::Condition::default()], ..Default::default() }, "filter.must[0]: empty condition"),
        ("range without bounds".into(), proto(&json::parse(r#"{"must": [{"key": "price", "range": {}}]}"#).unwrap()), "filter.must[0].range: give at least one of gt, gte, lt, lte"),
        ("NaN bound".into(), v1::Filter {
            must: vec![v1::Condition { condition: Some(v1::condition::Condition::Field(v1::FieldCondition {
                key: "price".into(),
                test: Some(v1::field_condition::Test::Range(v1::Range { lt: Some(f64::NAN), ..Default::default() })),
            })) }],
            ..Default::default()
        }, "filter.must[0].range: a bound is NaN"),
        ("a keyword on an integer index".into(), proto(&json::parse(r#"{"should": [{"key": "tenant", "match": {"keyword": "3"}}]}"#).unwrap()), "filter.should[0].match: a keyword test on key \"tenant\", which has a integer payload index"),
        ("nesting deeper than 16".into(), proto(&json::parse(&deep).unwrap()), "filters nest at most 16 deep"),
        ("more than 1,024 conditions".into(), proto(&json::parse(&many).unwrap()), "a filter holds at most 1024 conditions"),
    ];
    for (what, filter, message) in &cases {
        let search = client
            .search(SearchRequest {
                filter: Some(filter.clone()),
                ..search_request("strict", &query, 5)
            })
            .await
            .expect_err(what);
        assert_eq!(search.code(), Code::InvalidArgument, "{what}: {search:?}");
        assert!(
            search.message().contains(message),
            "{what}: {}",
            search.message()
        );
        let counted = client
            .count(CountRequest {
                collection: "strict".into(),
                filter: Some(filter.clone()),
                ..Default::default()
            })
            .await
            .expect_err(what);
        assert_eq!(counted.code(), Code::InvalidArgument, "{what}");
        let deleted = client
            .delete(DeleteRequest {
                collection: "strict".into(),
                filter: Some(filter.clone()),
                ..Default::default()
            })
            .await
            .expect_err(what);
        assert_eq!(deleted.code(), Code::InvalidArgument, "{what}");
        let scrolled = client
            .scroll(ScrollRequest {
                collection: "strict".into(),
                filter: Some(filter.clone()),
                ..Default::default()
            })
            .await
            .expect_err(what);
        assert_eq!(scrolled.code(), Code::InvalidArgument, "{what}");
    }
    // Nothing was deleted.
    let everything = Filter::default();
    assert_eq!(count(&mut client, "strict", &everything).await, 200);
    // Ids and a filter together.
    let both = client
        .delete(DeleteRequest {
            collection: "strict".into(),
            ids: vec!["1".into()],
            filter: Some(proto(
                &json::parse(r#"{"must": [{"has_id": ["2"]}]}"#).unwrap(),
            )),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(both.code(), Code::InvalidArgument);
    assert_eq!(count(&mut client, "strict", &everything).await, 200);
    // A foreign page token.
    let token = client
        .scroll(ScrollRequest {
            collection: "strict".into(),
            page_token: "nonsense".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(token.code(), Code::InvalidArgument);
    // Payload indexes: another type on an indexed key, no type, a bad key, an unknown one to drop.
    let retyped = client
        .create_payload_index(CreatePayloadIndexRequest {
            collection: "strict".into(),
            key: "tenant".into(),
            r#type: PayloadIndexType::Keyword as i32,
        })
        .await
        .unwrap_err();
    assert_eq!(retyped.code(), Code::InvalidArgument, "{retyped:?}");
    assert!(
        retyped
            .message()
            .contains("already has a integer payload index"),
        "{}",
        retyped.message()
    );
    let untyped = client
        .create_payload_index(CreatePayloadIndexRequest {
            collection: "strict".into(),
            key: "lang".into(),
            r#type: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(untyped.code(), Code::InvalidArgument);
    let bad_key = client
        .create_payload_index(CreatePayloadIndexRequest {
            collection: "strict".into(),
            key: "a..b".into(),
            r#type: PayloadIndexType::Bool as i32,
        })
        .await
        .unwrap_err();
    assert_eq!(bad_key.code(), Code::InvalidArgument);
    let missing = client
        .drop_payload_index(v1::DropPayloadIndexRequest {
            collection: "strict".into(),
            key: "lang".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let record = cluster.etcd_json("/quiver/collections/strict").unwrap();
    assert_eq!(
        record["payload_indexes"],
        serde_json::json!([{"key": "tenant", "type": "integer"}])
    );
    // Declaring the same index again is fine; dropping it works.
    client
        .create_payload_index(CreatePayloadIndexRequest {
            collection: "strict".into(),
            key: "tenant".into(),
            r#type: PayloadIndexType::Integer as i32,
        })
        .await
        .expect("idempotent");
    let dropped = client
        .drop_payload_index(v1::DropPayloadIndexRequest {
            collection: "strict".into(),
            key: "tenant".into(),
        })
        .await
        .expect("drop")
        .into_inner();
    assert!(dropped.payload_indexes.is_empty());
    assert!(cluster
        .etcd_json("/quiver/collections/strict")
        .unwrap()
        .get("payload_indexes")
        .is_none());
}

/// With the exact threshold set to 1 the Searchers search their HNSW graphs under the
/// filter: every shard reports the index plan, results are only matching points, never
/// fewer than min(k, matches), and close to brute force; a handful of ids is still scanned
/// exactly; the Searchers count the plans they ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_index_plan_searches_the_graph_under_the_filter() {
    let flags = ["--filter-exact-threshold", "1"];
    let options = quiver_integration_tests::ClusterOptions::new(2, 4)
        .searcher_args(0, &flags)
        .searcher_args(1, &flags);
    let cluster = Cluster::start_with(options).await;
    let mut client = cluster.client().await;
    let mut config = collection_config("graph", DIMENSION as u32, v1::Metric::L2, 2, 1);
    config.config.as_mut().unwrap().index_spec =
        "hnsw m=16 ef_construction=100 ef_search=64".into();
    config.config.as_mut().unwrap().payload_indexes = declared_indexes();
    client.create_collection(config).await.expect("create");
    let base = dataset::synthetic(ROWS, DIMENSION, 44);
    let queries = dataset::synthetic(20, DIMENSION, 45);
    load(&mut client, "graph", &base).await;
    let live: BTreeSet<usize> = (0..ROWS).collect();
    let wide = [
        (
            "two of three langs",
            r#"{"must": [{"key": "lang", "any": {"keywords": ["en", "de"]}}]}"#,
        ),
        (
            "one tenant",
            r#"{"must": [{"key": "tenant", "match": {"integer": 3}}]}"#,
        ),
        (
            "recent and cheap",
            r#"{"must": [{"key": "year", "range": {"gte": 2005}}, {"key": "price", "range": {"lt": 60}}]}"#,
        ),
    ];
    for (name, text) in wide {
        let filter = json::parse(text).unwrap();
        let expected = matching(&filter, &live);
        let (mut hits, mut total) = (0, 0);
        for query in queries.rows() {
            let response = client
                .search(SearchRequest {
                    filter: Some(proto(&filter)),
                    ..search_request("graph", query, K as u32)
                })
                .await
                .expect("search")
                .into_inner();
            for report in &response.shards {
                assert_eq!(report.plan, "index", "{name}: {report:?}");
            }
            let found = id_scores(&response.results[0]);
            assert_eq!(found.len(), K.min(expected.len()), "{name}");
            assert!(
                found
                    .iter()
                    .all(|(id, _)| expected.contains(&id.parse().unwrap())),
                "{name}: a result the filter excludes"
            );
            let truth = brute_force(Metric::L2, &base, query, K, |row| expected.contains(&row));
            total += truth.len();
            hits += found
                .iter()
                .filter(|(id, _)| truth.iter().any(|(truth_id, _)| truth_id == id))
                .count();
        }
        let recall = hits as f64 / total as f64;
        println!(
            "{name}: {} matches, recall@10 {recall:.3} through the graph",
            expected.len()
        );
        assert!(recall >= 0.9, "{name}: recall@10 {recall}");
    }
    let few = json::parse(r#"{"must": [{"has_id": ["1", "2", "3"]}]}"#).unwrap();
    let response = client
        .search(SearchRequest {
            filter: Some(proto(&few)),
            ..search_request("graph", base.row(1), K as u32)
        })
        .await
        .expect("search")
        .into_inner();
    assert_eq!(response.results[0].neighbors.len(), 3);
    assert!(response
        .shards
        .iter()
        .all(|report| report.plan == "exact_scan"));
    let by_index: f64 = cluster
        .searchers
        .iter()
        .map(|searcher| {
            quiver_integration_tests::metric_value(
                &searcher.address,
                "quiver_searcher_filtered_searches_total{plan=\"index\"}",
            )
        })
        .sum();
    // Three filters x 20 queries, on both shards.
    assert_eq!(by_index, 120.0);
}
