//! The real `quiverctl` binary against a real cluster: collections, loads from .fvecs, .npy
//! and .jsonl, searches checked against brute force, get and delete, in table and JSON
//! output, and the errors people meet (with their exit codes, messages and hints); filtered
//! search, count, scroll (JSON Lines to a file) and delete by filter, and payload indexes.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Output,
};

use quiver_index::{dataset, Metric};
use quiver_integration_tests::{shared_data, upsert_points, Cluster};
use quiver_proto::v1::Point;
use serde_json::{json as value, Value};

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Runs quiverctl, asserts it succeeded, and returns its stdout.
fn ok(cluster: &Cluster, args: &[&str]) -> String {
    let output = cluster.quiverctl(args);
    assert!(
        output.status.success(),
        "quiverctl {args:?} failed ({}):\nstdout: {}\nstderr: {}",
        output.status,
        stdout(&output),
        stderr(&output)
    );
    stdout(&output)
}

/// Runs quiverctl with `--output json`, asserts it succeeded and that stdout is exactly one
/// JSON document, and returns it.
fn json(cluster: &Cluster, args: &[&str]) -> Value {
    let mut all = vec!["--output", "json"];
    all.extend_from_slice(args);
    let text = ok(cluster, &all);
    serde_json::from_str(&text).unwrap_or_else(|error| {
        panic!("quiverctl {args:?}: stdout is not one JSON document ({error}): {text}")
    })
}

/// Runs quiverctl, asserts it failed with `exit_code`, and returns stdout and stderr.
fn fails(cluster: &Cluster, args: &[&str], exit_code: i32) -> (String, String) {
    let output = cluster.quiverctl(args);
    assert_eq!(
        output.status.code(),
        Some(exit_code),
        "quiverctl {args:?} should exit with {exit_code}:\nstdout: {}\nstderr: {}",
        stdout(&output),
        stderr(&output)
    );
    (stdout(&output), stderr(&output))
}

/// A JSON error document on stdout (exit code 1), as `--output json` prints failures.
fn json_error(cluster: &Cluster, args: &[&str]) -> Value {
    let mut all = vec!["--output", "json"];
    all.extend_from_slice(args);
    let (out, err) = fails(cluster, &all, 1);
    let document: Value = serde_json::from_str(&out).unwrap_or_else(|error| {
        panic!("error is not one JSON document ({error}): {out}\nstderr: {err}")
    });
    document["error"].clone()
}

/// An .npy file (format 1.0), as numpy writes it.
fn write_npy(path: &Path, descr: &str, rows: usize, columns: usize, data: Vec<u8>) {
    let mut header =
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': ({rows}, {columns}), }}");
    while (10 + header.len() + 1).checked_rem(64) != Some(0) {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(&data);
    std::fs::write(path, bytes).expect("write npy");
}

fn f32_bytes(rows: &[Vec<f32>]) -> Vec<u8> {
    rows.iter()
        .flatten()
        .flat_map(|value| value.to_le_bytes())
        .collect()
}

fn f64_bytes(rows: &[Vec<f64>]) -> Vec<u8> {
    rows.iter()
        .flatten()
        .flat_map(|value| value.to_le_bytes())
        .collect()
}

fn floats(value: &Value) -> Vec<f32> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {value}"))
        .iter()
        .map(|number| number.as_f64().expect("number") as f32)
        .collect()
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collections_files_search_get_and_delete() {
    let cluster = Cluster::start(2, 10).await;
    let folder = tempfile::tempdir().expect("temp dir");

    // Collections, in both outputs.
    let created = ok(
        &cluster,
        &[
            "collections",
            "create",
            "docs",
            "--dimension",
            "4",
            "--metric",
            "l2",
            "--shards",
            "2",
            "--replication-factor",
            "1",
            "--index",
            "flat",
        ],
    );
    assert!(
        created.starts_with("created collection docs\ncollection docs: dimension 4, metric l2, 2 shards, replication factor 1, index flat\n"),
        "{created}"
    );
    let listed = json(&cluster, &["collections", "list"]);
    let collections = listed["collections"].as_array().expect("collections");
    assert_eq!(collections.len(), 1, "{listed}");
    assert_eq!(collections[0]["name"], "docs");
    assert_eq!(collections[0]["dimension"], 4);
    assert_eq!(collections[0]["metric"], "l2");
    assert_eq!(collections[0]["shards"], 2);
    assert_eq!(collections[0]["replication_factor"], 1);
    assert_eq!(collections[0]["index"], "flat");
    let table = ok(&cluster, &["collections", "list"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 2, "{table}");
    assert_eq!(
        lines[1].split_whitespace().collect::<Vec<_>>(),
        ["docs", "4", "l2", "2", "1", "flat"]
    );
    let described = json(&cluster, &["collections", "describe", "docs"]);
    assert_eq!(described["name"], "docs");
    let shards = described["shard_replicas"].as_array().expect("shards");
    assert_eq!(shards.len(), 2, "{described}");
    for shard in shards {
        assert_eq!(shard["replicas"].as_array().expect("replicas").len(), 1);
        assert!(shard["primary"].as_str().unwrap().starts_with("searcher-"));
    }

    // Three files, three formats; every point remembered to check what comes back.
    let mut loaded: Vec<(String, Vec<f32>, Value)> = Vec::new();
    let npy32_rows = vec![
        vec![1.0f32, 0.0, 0.0, 0.0],
        vec![0.0, 2.0, 0.0, 0.0],
        vec![0.0, 0.0, 3.5, 0.0],
    ];
    let npy32 = folder.path().join("f4.npy");
    write_npy(&npy32, "<f4", 3, 4, f32_bytes(&npy32_rows));
    let summary = json(
        &cluster,
        &["load", "docs", path_str(&npy32), "--id-offset", "100"],
    );
    assert_eq!(summary["points"], 3, "{summary}");
    assert_eq!(summary["format"], "npy");
    assert_eq!(summary["collection"], "docs");
    assert!(summary["points_per_second"].as_f64().unwrap() > 0.0);
    for (row, vector) in npy32_rows.iter().enumerate() {
        loaded.push((
            (100 + row).to_string(),
            vector.clone(),
            serde_json::json!({ "row": row }),
        ));
    }

    let npy64_rows = vec![vec![0.5f64, 0.25, -1.0, 4.0], vec![-2.0, 1.5, 0.125, 0.0]];
    let npy64 = folder.path().join("f8.npy");
    write_npy(&npy64, "<f8", 2, 4, f64_bytes(&npy64_rows));
    let summary = json(
        &cluster,
        &["load", "docs", path_str(&npy64), "--id-offset", "200"],
    );
    assert_eq!(summary["points"], 2, "{summary}");
    for (row, vector) in npy64_rows.iter().enumerate() {
        loaded.push((
            (200 + row).to_string(),
            vector.iter().map(|value| *value as f32).collect(),
            serde_json::json!({ "row": row }),
        ));
    }

    let jsonl = folder.path().join("points.jsonl");
    std::fs::write(
        &jsonl,
        "{\"id\": \"a\", \"vector\": [3, 3, 3, 3], \"payload\": {\"title\": \"alpha\", \"tags\": [1, 2]}}\n\
         \n\
         {\"id\": 7, \"vector\": [-1, -1, 0.5, 2]}\n\
         {\"id\": \"b\", \"vector\": [0.75, 0.5, 0.25, 9], \"payload\": {\"year\": 2024}}\n",
    )
    .expect("write jsonl");
    // Table output: one final line with the count, the time and the rate; no progress bar
    // on stderr when it is not a terminal.
    let output = cluster.quiverctl(&["load", "docs", path_str(&jsonl), "--batch", "2"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let line = stdout(&output);
    assert!(
        line.starts_with(&format!(
            "loaded 3 points into docs from {} in ",
            jsonl.display()
        )) && line.trim_end().ends_with("points/s)")
            && line.lines().count() == 1,
        "{line}"
    );
    assert_eq!(
        stderr(&output),
        "",
        "nothing on stderr when it is not a terminal"
    );
    loaded.push((
        "a".into(),
        vec![3.0; 4],
        serde_json::json!({"title": "alpha", "tags": [1, 2]}),
    ));
    loaded.push(("7".into(), vec![-1.0, -1.0, 0.5, 2.0], Value::Null));
    loaded.push((
        "b".into(),
        vec![0.75, 0.5, 0.25, 9.0],
        serde_json::json!({"year": 2024}),
    ));

    // get returns exactly what was loaded, in the asked order, and says what is missing.
    let mut ids: Vec<&str> = loaded.iter().map(|(id, _, _)| id.as_str()).collect();
    ids.push("missing");
    let mut args = vec!["get", "docs"];
    args.extend(&ids);
    args.push("--with-vectors");
    let got = json(&cluster, &args);
    assert_eq!(got["found"], loaded.len());
    assert_eq!(got["missing"], 1);
    let points = got["points"].as_array().expect("points");
    assert_eq!(points.len(), loaded.len() + 1);
    for ((id, vector, payload), point) in loaded.iter().zip(points) {
        assert_eq!(point["id"], id.as_str(), "{point}");
        assert_eq!(point["found"], true, "{point}");
        assert_eq!(point["dimension"], 4);
        assert_eq!(&floats(&point["vector"]), vector, "{id}");
        assert_eq!(&point["payload"], payload, "{id}");
    }
    let missing = &points[loaded.len()];
    assert_eq!(missing["id"], "missing");
    assert_eq!(missing["found"], false);
    assert_eq!(missing["payload"], Value::Null);
    let table = ok(&cluster, &["get", "docs", "a", "missing"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["id", "found", "dims", "payload"]
    );
    assert!(
        lines[1].starts_with("a ")
            && lines[1].contains("yes")
            && lines[1].contains(r#"{"tags":[1,2],"title":"alpha"}"#),
        "{table}"
    );
    assert_eq!(
        lines[2].split_whitespace().collect::<Vec<_>>(),
        ["missing", "no", "-"]
    );
    assert_eq!(lines[3], "1 of 2 found");

    // search --vector: the JSON top k is brute force over what was loaded.
    let query = [0.5f32, 0.5, 0.5, 1.0];
    let mut expected: Vec<(String, f32)> = loaded
        .iter()
        .map(|(id, vector, _)| (id.clone(), Metric::L2.score(&query, vector)))
        .collect();
    expected.sort_by(|left, right| {
        left.1
            .total_cmp(&right.1)
            .then_with(|| left.0.cmp(&right.0))
    });
    expected.truncate(5);
    let found = json(
        &cluster,
        &["search", "docs", "--vector", "0.5,0.5,0.5,1", "-k", "5"],
    );
    assert_eq!(found["metric"], "l2");
    assert_eq!(found["score"], "distance");
    assert_eq!(found["partial"], false);
    assert_eq!(found["coverage"], 1.0);
    assert_eq!(found["shards_answered"], 2);
    let results = found["results"].as_array().expect("results");
    let ids: Vec<&str> = results
        .iter()
        .map(|result| result["id"].as_str().unwrap())
        .collect();
    let expected_ids: Vec<&str> = expected.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, expected_ids, "{found}");
    for (rank, (result, (id, score))) in results.iter().zip(&expected).enumerate() {
        assert_eq!(result["rank"], rank + 1);
        let found_score = result["score"].as_f64().unwrap() as f32;
        assert!(
            (found_score - score).abs() <= 1e-4,
            "{id}: {found_score} vs {score}"
        );
        let payload = &loaded
            .iter()
            .find(|(loaded_id, _, _)| loaded_id == id)
            .unwrap()
            .2;
        assert_eq!(&result["payload"], payload);
    }
    let table = ok(
        &cluster,
        &["search", "docs", "--vector", "0.5,0.5,0.5,1", "-k", "3"],
    );
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 6, "{table}");
    assert_eq!(
        lines[0],
        "top 3 of collection docs (metric l2: squared distance, smaller is closer)"
    );
    assert_eq!(
        lines[1].split_whitespace().collect::<Vec<_>>(),
        ["rank", "id", "distance", "payload"]
    );
    for (line, (id, _)) in lines[2..5].iter().zip(&expected) {
        assert_eq!(line.split_whitespace().nth(1), Some(id.as_str()), "{table}");
    }
    assert_eq!(lines[5], "coverage 1.00: 2 of 2 shards answered");

    // A query taken from a file: row 1 of the f4 file finds itself, at distance 0.
    let found = json(
        &cluster,
        &[
            "search",
            "docs",
            "--query-file",
            path_str(&npy32),
            "--row",
            "1",
            "-k",
            "1",
        ],
    );
    assert_eq!(found["results"][0]["id"], "101", "{found}");
    assert_eq!(found["results"][0]["score"], 0.0);

    // delete reports what it removed and who acknowledged it; get then finds nothing.
    let deleted = json(&cluster, &["delete", "docs", "a", "100", "nosuch"]);
    assert_eq!(deleted["requested"], 3, "{deleted}");
    assert_eq!(deleted["deleted"], 2, "{deleted}");
    let shards = deleted["shards"].as_array().expect("shards");
    assert!(!shards.is_empty());
    for shard in shards {
        assert_eq!(shard["acknowledged_by"][0], shard["primary"], "{deleted}");
    }
    // A shard that held none of the ids logs nothing (sequence number 0).
    assert!(
        shards
            .iter()
            .any(|shard| shard["seq"].as_u64().unwrap() > 0),
        "{deleted}"
    );
    let text = ok(&cluster, &["delete", "docs", "b"]);
    assert!(text.starts_with("deleted 1 of 1 ids from docs\n"), "{text}");
    let got = json(&cluster, &["get", "docs", "a", "100", "b", "101"]);
    let found: Vec<bool> = got["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|point| point["found"].as_bool().unwrap())
        .collect();
    assert_eq!(found, [false, false, false, true], "{got}");

    // Drop, and the list is empty again.
    assert_eq!(
        ok(&cluster, &["collections", "drop", "docs"]),
        "dropped collection docs\n"
    );
    let listed = json(&cluster, &["collections", "list"]);
    assert_eq!(
        listed["collections"].as_array().unwrap().len(),
        0,
        "{listed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_say_what_went_wrong_and_what_to_do() {
    let cluster = Cluster::start(1, 10).await;
    let folder = tempfile::tempdir().expect("temp dir");

    // An unknown collection.
    let (out, err) = fails(&cluster, &["search", "nosuch", "--vector", "1,2"], 1);
    assert_eq!(out, "");
    assert_eq!(
        err,
        "error: collection 'nosuch' does not exist\nhint: see `quiverctl collections list`\n"
    );
    let error = json_error(&cluster, &["get", "nosuch", "x"]);
    assert_eq!(error["code"], "NOT_FOUND");
    assert_eq!(error["message"], "collection 'nosuch' does not exist");
    assert_eq!(error["hint"], "see `quiverctl collections list`");

    ok(
        &cluster,
        &["collections", "create", "c", "--dimension", "4"],
    );
    let (_, err) = fails(
        &cluster,
        &["collections", "create", "c", "--dimension", "4"],
        1,
    );
    assert!(
        err.starts_with("error: collection 'c' already exists\nhint: "),
        "{err}"
    );

    // A file of the wrong dimension names the row (npy) or line (jsonl), before writing.
    let npy = folder.path().join("three.npy");
    write_npy(
        &npy,
        "<f4",
        2,
        3,
        f32_bytes(&[vec![1.0, 2.0, 3.0], vec![4.0, 5.0, 6.0]]),
    );
    let (_, err) = fails(&cluster, &["load", "c", path_str(&npy)], 1);
    assert!(
        err.starts_with(&format!(
            "error: {} row 0: the vector has 3 dimensions, but collection 'c' has 4\nhint: ",
            npy.display()
        )),
        "{err}"
    );
    let jsonl = folder.path().join("short.jsonl");
    std::fs::write(
        &jsonl,
        "{\"id\": \"x\", \"vector\": [1, 2, 3, 4]}\n{\"id\": \"y\", \"vector\": [1, 2, 3]}\n",
    )
    .unwrap();
    let error = json_error(&cluster, &["load", "c", path_str(&jsonl)]);
    assert_eq!(error["code"], "INPUT");
    assert_eq!(
        error["message"],
        format!(
            "{} line 2: the vector has 3 dimensions, but collection 'c' has 4",
            jsonl.display()
        )
    );
    assert!(error["hint"]
        .as_str()
        .unwrap()
        .contains("quiverctl collections describe c"));
    let got = json(&cluster, &["get", "c", "x"]);
    assert_eq!(
        got["found"], 0,
        "nothing is written before the bad line: {got}"
    );

    // A malformed jsonl line.
    let broken = folder.path().join("broken.jsonl");
    std::fs::write(
        &broken,
        "{\"id\": \"x\", \"vector\": [1, 2, 3, 4]}\n{\"id\": \"y\", \"vector\": [1, 2,\n",
    )
    .unwrap();
    let (_, err) = fails(&cluster, &["load", "c", path_str(&broken)], 1);
    assert!(
        err.starts_with(&format!(
            "error: {} line 2: not valid JSON: ",
            broken.display()
        )),
        "{err}"
    );
    assert!(err.contains("\nhint: each line must be {\"id\""), "{err}");

    // A query of the wrong dimension, and a file format quiverctl cannot tell.
    let (_, err) = fails(&cluster, &["search", "c", "--vector", "1,2,3"], 1);
    assert!(
        err.starts_with(
            "error: the query (--vector): the vector has 3 dimensions, but collection 'c' has 4\n"
        ),
        "{err}"
    );
    let csv = folder.path().join("points.csv");
    std::fs::write(&csv, "1,2,3,4\n").unwrap();
    let (_, err) = fails(&cluster, &["load", "c", path_str(&csv)], 1);
    assert!(
        err.contains("hint: name it .fvecs, .npy or .jsonl, or say which with --format"),
        "{err}"
    );

    // An unreachable Merger: a port nothing listens on.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = format!("http://127.0.0.1:{}", free.local_addr().unwrap().port());
    drop(free);
    let (out, err) = fails(&cluster, &["--merger", &address, "collections", "list"], 1);
    assert_eq!(out, "");
    assert!(
        err.starts_with(&format!("error: cannot reach the Merger at {address} (")),
        "{err}"
    );
    assert!(
        err.ends_with("\nhint: is it running? set --merger or QUIVER_MERGER to its address\n"),
        "{err}"
    );
    assert!(
        !err.contains("Error {") && !err.contains("backtrace"),
        "no debug dumps: {err}"
    );
    let error = json_error(
        &cluster,
        &["--merger", &address, "load", "c", path_str(&jsonl)],
    );
    assert_eq!(error["code"], "MERGER_UNREACHABLE");

    // An unreachable etcd.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let etcd = format!("http://127.0.0.1:{}", free.local_addr().unwrap().port());
    drop(free);
    let error = json_error(
        &cluster,
        &["--etcd-endpoints", &etcd, "--timeout", "2", "status"],
    );
    assert_eq!(error["code"], "ETCD_UNREACHABLE", "{error}");
    assert!(error["message"].as_str().unwrap().contains(&etcd));
    assert!(error["hint"]
        .as_str()
        .unwrap()
        .contains("QUIVER_ETCD_ENDPOINTS"));

    // Usage errors exit with 2.
    let (_, err) = fails(&cluster, &["rebalance"], 2);
    assert!(
        err.contains("hint: `quiverctl rebalance --dry-run`"),
        "{err}"
    );
    fails(&cluster, &["search", "c"], 2);

    // status and the dry run, in JSON, from the real etcd.
    let status = json(&cluster, &["status"]);
    assert_eq!(status["searchers"].as_array().unwrap().len(), 1, "{status}");
    assert_eq!(status["searchers"][0]["id"], "searcher-1");
    assert_eq!(status["collections"][0]["name"], "c");
    assert_eq!(status["collections"][0]["replicas"][0]["role"], "primary");
    assert!(status["revision"].as_i64().unwrap() > 0);
    let plan = json(&cluster, &["rebalance", "--dry-run"]);
    assert_eq!(plan["moved_replicas"], 0, "{plan}");
    assert_eq!(plan["live_searchers"][0], "searcher-1");
}

/// siftsmall's base from .fvecs (generated data of the same shape when the shared folder is
/// absent), then its queries against the ground truth: the flat index is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loads_siftsmall_from_fvecs_and_reports_recall() {
    let cluster = Cluster::start(2, 10).await;
    let generated = tempfile::tempdir().expect("temp dir");
    let (base, queries, truth): (PathBuf, PathBuf, PathBuf) = match shared_data("siftsmall") {
        Some(folder) => (
            folder.join("siftsmall_base.fvecs"),
            folder.join("siftsmall_query.fvecs"),
            folder.join("siftsmall_groundtruth.ivecs"),
        ),
        None => {
            let out = generated.path();
            json(
                &cluster,
                &[
                    "generate-data",
                    "--out",
                    path_str(out),
                    "--base",
                    "10000",
                    "--queries",
                    "100",
                    "--dimension",
                    "128",
                ],
            );
            (
                out.join("base.fvecs"),
                out.join("query.fvecs"),
                out.join("groundtruth.ivecs"),
            )
        }
    };
    let rows = dataset::read_fvecs(&base).expect("base").len();
    ok(
        &cluster,
        &[
            "collections",
            "create",
            "sift",
            "--dimension",
            "128",
            "--shards",
            "3",
        ],
    );
    let summary = json(
        &cluster,
        &[
            "load",
            "sift",
            path_str(&base),
            "--batch",
            "700",
            "--concurrency",
            "3",
        ],
    );
    assert_eq!(summary["points"], rows, "{summary}");
    assert_eq!(summary["format"], "fvecs");
    assert_eq!(summary["batches"], rows.div_ceil(700));
    assert_eq!(summary["replica_write_failures"], 0);
    let last = (rows - 1).to_string();
    let got = json(&cluster, &["get", "sift", "0", &last]);
    assert_eq!(got["found"], 2, "{got}");
    assert_eq!(got["points"][1]["payload"]["row"], rows - 1);

    let report = json(
        &cluster,
        &[
            "search",
            "sift",
            "--queries",
            path_str(&queries),
            "--groundtruth",
            path_str(&truth),
            "-k",
            "10",
        ],
    );
    assert_eq!(report["queries"], 100, "{report}");
    assert_eq!(report["recall"], 1.0, "{report}");
    assert_eq!(report["partial_responses"], 0);
    let text = ok(
        &cluster,
        &[
            "search",
            "sift",
            "--queries",
            path_str(&queries),
            "--groundtruth",
            path_str(&truth),
            "-k",
            "10",
            "--show",
            "0",
        ],
    );
    assert!(
        text.ends_with("recall@10 against the ground truth: 1.000\n"),
        "{text}"
    );
}

/// The payload of row `row` of the "shop" collection: a category (rows divisible by 10 have
/// none), a price and a stock flag.
fn shop_payload(row: usize) -> Value {
    let category = ["shoes", "hats", "bags"][row % 3];
    let mut payload = value!({
        "category": category,
        "price": row as f64 * 2.5,
        "in_stock": row % 2 == 0,
    });
    if row % 10 == 0 {
        payload.as_object_mut().unwrap().remove("category");
    }
    payload
}

fn shop_vector(row: usize) -> Vec<f32> {
    vec![row as f32, (row % 7) as f32, 1.0, -(row as f32) / 4.0]
}

fn ids_of(values: &[Value]) -> Vec<String> {
    values
        .iter()
        .map(|item| {
            item["id"]
                .as_str()
                .unwrap_or_else(|| panic!("no id: {item}"))
                .to_string()
        })
        .collect()
}

fn declared_indexes(cluster: &Cluster, collection: &str) -> Value {
    json(cluster, &["collections", "describe", collection])["payload_indexes"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_count_scroll_delete_and_payload_indexes() {
    let cluster = Cluster::start(2, 10).await;
    let folder = tempfile::tempdir().expect("temp dir");

    // A collection created with a payload index lists it, in both outputs.
    let created = ok(
        &cluster,
        &[
            "collections",
            "create",
            "shop",
            "--dimension",
            "4",
            "--shards",
            "3",
            "--payload-index",
            "category:keyword",
        ],
    );
    assert!(
        created.contains("\npayload indexes: category (keyword)\n"),
        "{created}"
    );
    assert_eq!(
        declared_indexes(&cluster, "shop"),
        value!([{"key": "category", "type": "keyword"}])
    );
    let listed = json(&cluster, &["collections", "list"]);
    assert_eq!(
        listed["collections"][0]["payload_indexes"],
        value!([{"key": "category", "type": "keyword"}]),
        "{listed}"
    );
    let table = ok(&cluster, &["collections", "list"]);
    assert!(
        table
            .lines()
            .nth(1)
            .unwrap()
            .ends_with("  category:keyword"),
        "{table}"
    );

    const ROWS: usize = 90;
    let mut client = cluster.client().await;
    let points = (0..ROWS)
        .map(|row| Point {
            id: format!("p{row}"),
            vector: shop_vector(row),
            payload_json: shop_payload(row).to_string(),
        })
        .collect();
    upsert_points(&mut client, "shop", points).await;

    // Cheap shoes: the filter and the exact set of ids it matches.
    let filter = r#"{"must": [{"key": "category", "match": {"keyword": "shoes"}}, {"key": "price", "range": {"lt": 150}}]}"#;
    let matching: BTreeSet<String> = (0..ROWS)
        .filter(|row| {
            let payload = shop_payload(*row);
            payload["category"] == "shoes" && payload["price"].as_f64().unwrap() < 150.0
        })
        .map(|row| format!("p{row}"))
        .collect();
    assert!(
        matching.len() > 10 && matching.len() < ROWS / 3,
        "{matching:?}"
    );

    // search --filter: only matching ids; with k above the matches, exactly them (flat is
    // exact). JSON reports each shard's plan.
    let found = json(
        &cluster,
        &[
            "search", "shop", "--vector", "1,2,3,4", "-k", "100", "--filter", filter,
        ],
    );
    let results = ids_of(found["results"].as_array().expect("results"));
    assert_eq!(results.len(), matching.len(), "{found}");
    assert_eq!(
        results.iter().cloned().collect::<BTreeSet<_>>(),
        matching,
        "{found}"
    );
    assert_eq!(
        found["filter"]["must"][0]["match"]["keyword"], "shoes",
        "{found}"
    );
    let reports = found["shards"].as_array().expect("shard reports");
    assert_eq!(reports.len(), 3, "{found}");
    for report in reports {
        assert_eq!(report["outcome"], "OK", "{found}");
        assert!(
            ["exact_scan", "index"].contains(&report["plan"].as_str().unwrap_or("")),
            "{found}"
        );
    }
    let found = json(
        &cluster,
        &["search", "shop", "--vector", "1,2,3,4", "-k", "3"],
    );
    assert!(
        found["shards"]
            .as_array()
            .unwrap()
            .iter()
            .all(|report| report["plan"].is_null()),
        "no plan without a filter: {found}"
    );
    // The table: matching ids only, and one line of plans summing to the shards.
    let text = ok(
        &cluster,
        &[
            "search", "shop", "--vector", "1,2,3,4", "-k", "5", "--filter", filter,
        ],
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 9, "{text}");
    for line in &lines[2..7] {
        let id = line.split_whitespace().nth(1).unwrap();
        assert!(matching.contains(id), "{id} does not match: {text}");
    }
    assert_eq!(lines[7], "coverage 1.00: 3 of 3 shards answered", "{text}");
    let plans = lines[8]
        .strip_prefix("plans: ")
        .unwrap_or_else(|| panic!("{text}"));
    let shards: u32 = plans
        .split(", ")
        .map(|part| {
            let (plan, count) = part.split_once(' ').expect("plan count");
            assert!(["exact_scan", "index"].contains(&plan), "{text}");
            count.parse::<u32>().expect("count")
        })
        .sum();
    assert_eq!(shards, 3, "{text}");
    // The batch mode takes the filter too.
    let queries = folder.path().join("queries.jsonl");
    std::fs::write(
        &queries,
        "{\"id\": 0, \"vector\": [1, 2, 3, 4]}\n{\"id\": 1, \"vector\": [40, 0, 1, -9]}\n",
    )
    .unwrap();
    let report = json(
        &cluster,
        &[
            "search",
            "shop",
            "--queries",
            path_str(&queries),
            "-k",
            "4",
            "--filter",
            filter,
        ],
    );
    assert_eq!(report["queries"], 2, "{report}");
    let plans = report["plans"].as_object().expect("plans");
    assert_eq!(
        plans
            .values()
            .map(|count| count.as_u64().unwrap())
            .sum::<u64>(),
        3,
        "one request of three shards: {report}"
    );

    // count: exact, with the filter inline or from a file, and without one.
    let counted = json(&cluster, &["count", "shop", "--filter", filter]);
    assert_eq!(counted["collection"], "shop");
    assert_eq!(counted["count"], matching.len(), "{counted}");
    let filter_file = folder.path().join("filter.json");
    std::fs::write(&filter_file, filter).unwrap();
    let from_file = format!("@{}", filter_file.display());
    assert_eq!(
        ok(&cluster, &["count", "shop", "--filter", &from_file]),
        format!("{} points of shop match the filter\n", matching.len())
    );
    assert_eq!(
        ok(&cluster, &["count", "shop"]),
        format!("{ROWS} points in shop\n")
    );

    // scroll --output jsonl --out FILE, in pages of 4: every matching point exactly once,
    // with its vector and payload; stdout stays empty, the summary is on stderr.
    let out = folder.path().join("cheap-shoes.jsonl");
    let output = cluster.quiverctl(&[
        "--output",
        "jsonl",
        "scroll",
        "shop",
        "--filter",
        filter,
        "--limit",
        "4",
        "--with-vectors",
        "--with-payloads",
        "--out",
        path_str(&out),
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output), "");
    assert!(
        stderr(&output).starts_with(&format!(
            "wrote {} points of shop to {} in ",
            matching.len(),
            out.display()
        )),
        "{}",
        stderr(&output)
    );
    let text = std::fs::read_to_string(&out).expect("the scroll's file");
    let lines: Vec<Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|error| panic!("{error}: {line}")))
        .collect();
    let ids = ids_of(&lines);
    assert_eq!(ids.len(), matching.len(), "{text}");
    assert_eq!(
        ids.iter().cloned().collect::<BTreeSet<_>>(),
        matching,
        "{text}"
    );
    for line in &lines {
        let row: usize = line["id"].as_str().unwrap()[1..].parse().unwrap();
        assert_eq!(line["payload"], shop_payload(row), "{line}");
        assert_eq!(floats(&line["vector"]), shop_vector(row), "{line}");
    }
    // To stdout, ids only (neither flag), one object per line.
    let output = cluster.quiverctl(&["-o", "jsonl", "scroll", "shop", "--filter", filter]);
    assert!(output.status.success(), "{}", stderr(&output));
    let lines: Vec<Value> = stdout(&output)
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), matching.len());
    assert!(
        lines
            .iter()
            .all(|line| line.as_object().unwrap().len() == 1),
        "{lines:?}"
    );
    assert!(
        stderr(&output).starts_with(&format!(
            "wrote {} points of shop to stdout",
            matching.len()
        )),
        "{}",
        stderr(&output)
    );
    // Small results as one JSON document, or a table of ids and payloads.
    let scrolled = json(
        &cluster,
        &["scroll", "shop", "--filter", filter, "--with-payloads"],
    );
    assert_eq!(scrolled["count"], matching.len(), "{scrolled}");
    let points = scrolled["points"].as_array().expect("points");
    assert_eq!(ids_of(points), ids, "the same order as the file");
    assert!(points
        .iter()
        .all(|point| point["payload"]["category"] == "shoes"));
    let table = ok(
        &cluster,
        &["scroll", "shop", "--filter", filter, "--limit", "7"],
    );
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), matching.len() + 2, "{table}");
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["id", "payload"]
    );
    assert!(lines[1].contains(r#""category":"shoes""#), "{table}");
    assert_eq!(
        *lines.last().unwrap(),
        format!("{} points of shop match the filter", matching.len())
    );
    let (_, err) = fails(&cluster, &["scroll", "shop", "--out", path_str(&out)], 2);
    assert!(err.contains("--output jsonl"), "{err}");
    let (_, err) = fails(&cluster, &["-o", "jsonl", "count", "shop"], 2);
    assert!(
        err.starts_with("error: --output jsonl is for `quiverctl scroll` only\n"),
        "{err}"
    );

    // A bad filter is a usage error naming the path, told before any call (here to a
    // Merger that is not there), with the JSON form as the hint.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nowhere = format!("http://127.0.0.1:{}", free.local_addr().unwrap().port());
    drop(free);
    let bad = r#"{"must": [{"key": "price", "range": {}}]}"#;
    for command in [
        vec!["count", "shop", "--filter", bad],
        vec!["search", "shop", "--vector", "1,2,3,4", "--filter", bad],
        vec!["scroll", "shop", "--filter", bad],
        vec!["delete", "shop", "--filter", bad],
    ] {
        let mut args = vec!["--merger", nowhere.as_str()];
        args.extend(command);
        let (out, err) = fails(&cluster, &args, 2);
        assert_eq!(out, "");
        assert!(
            err.starts_with(
                "error: invalid --filter: filter.must[0].range: give at least one of gt, gte, lt, lte\n\
                 hint: a filter is JSON like {\"must\": [{\"key\": \"category\", \"match\": {\"keyword\": \"shoes\"}}"
            ),
            "{args:?}: {err}"
        );
    }
    let (out, _) = fails(
        &cluster,
        &[
            "--output",
            "json",
            "count",
            "shop",
            "--filter",
            "{\"must\": [{\"key\": \"a\"}]}",
        ],
        2,
    );
    let error: Value = serde_json::from_str(&out).expect("one JSON error document");
    assert_eq!(error["error"]["code"], "USAGE");
    assert_eq!(
        error["error"]["message"],
        "invalid --filter: filter.must[0]: a field condition needs one of match, any, range"
    );
    // A test that contradicts a declared index is the Merger's to refuse, naming the path.
    let error = json_error(
        &cluster,
        &[
            "count",
            "shop",
            "--filter",
            r#"{"must": [{"key": "category", "range": {"gt": 1}}]}"#,
        ],
    );
    assert_eq!(error["code"], "INVALID_ARGUMENT", "{error}");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .starts_with("filter.must[0].range: "),
        "{error}"
    );

    // delete takes ids or a filter: both, or neither, is a usage error.
    let (_, err) = fails(&cluster, &["delete", "shop", "p1", "--filter", filter], 2);
    assert!(err.contains("cannot be used with"), "{err}");
    let (_, err) = fails(&cluster, &["delete", "shop"], 2);
    assert!(err.contains("<IDS|--filter <JSON|@FILE>>"), "{err}");
    let (_, err) = fails(&cluster, &["delete", "shop", "--filter", "{}"], 2);
    assert!(
        err.starts_with("error: the filter is empty, so it matches every point\n"),
        "{err}"
    );
    // delete --filter removes exactly the matching points.
    let deleted = json(&cluster, &["delete", "shop", "--filter", filter]);
    assert_eq!(deleted["deleted"], matching.len(), "{deleted}");
    assert_eq!(
        deleted["filter"]["must"][1]["range"]["lt"], 150.0,
        "{deleted}"
    );
    assert_eq!(
        json(&cluster, &["count", "shop", "--filter", filter])["count"],
        0
    );
    assert_eq!(
        json(&cluster, &["count", "shop"])["count"],
        ROWS - matching.len()
    );
    let text = ok(&cluster, &["delete", "shop", "--filter", &from_file]);
    assert!(
        text.starts_with("deleted 0 points matching the filter from shop\n"),
        "{text}"
    );

    // payload-index create and drop change what describe lists.
    let text = ok(
        &cluster,
        &["payload-index", "create", "shop", "price", "float"],
    );
    assert!(
        text.starts_with("created payload index on price (float) in shop\n"),
        "{text}"
    );
    assert_eq!(
        declared_indexes(&cluster, "shop"),
        value!([{"key": "category", "type": "keyword"}, {"key": "price", "type": "float"}])
    );
    let described = ok(&cluster, &["collections", "describe", "shop"]);
    assert!(
        described.contains("\npayload indexes: category (keyword), price (float)\n"),
        "{described}"
    );
    let dropped = json(&cluster, &["payload-index", "drop", "shop", "category"]);
    assert_eq!(
        dropped,
        value!({"collection": "shop", "payload_indexes": [{"key": "price", "type": "float"}]})
    );
    assert_eq!(
        declared_indexes(&cluster, "shop"),
        value!([{"key": "price", "type": "float"}])
    );
    assert_eq!(
        json(&cluster, &["payload-index", "list", "shop"])["payload_indexes"],
        value!([{"key": "price", "type": "float"}])
    );
    let error = json_error(&cluster, &["payload-index", "drop", "shop", "category"]);
    assert_eq!(error["code"], "NOT_FOUND", "{error}");
    assert_eq!(
        error["hint"], "see `quiverctl payload-index list shop`",
        "{error}"
    );
    fails(
        &cluster,
        &["payload-index", "create", "shop", "price", "decimal"],
        2,
    );
    // Answers do not depend on indexes: the same count with price indexed.
    let cheap = r#"{"must": [{"key": "price", "range": {"gte": 50, "lt": 100}}]}"#;
    let expected = (0..ROWS)
        .filter(|row| {
            let payload = shop_payload(*row);
            let price = payload["price"].as_f64().unwrap();
            (50.0..100.0).contains(&price) && !matching.contains(&format!("p{row}"))
        })
        .count();
    assert_eq!(
        json(&cluster, &["count", "shop", "--filter", cheap])["count"],
        expected
    );
}
