//! `quiverctl status` and `quiverctl rebalance --dry-run`: the cluster as etcd holds it.

use quiver_cluster::{collection_loads, plan_moves, ClusterState, CollectionRecord, ReplicaRole};
use serde_json::json;

use crate::{
    client::{self, Snapshot},
    errors::CliError,
    output::{Printer, Table},
    GlobalOptions,
};

pub async fn status(global: &GlobalOptions, printer: Printer) -> anyhow::Result<()> {
    let snapshot = client::read_snapshot(global).await?;
    printer.emit(&render_status(&snapshot), || status_json(&snapshot));
    Ok(())
}

pub async fn rebalance(
    global: &GlobalOptions,
    printer: Printer,
    dry_run: bool,
) -> anyhow::Result<()> {
    if !dry_run {
        return Err(CliError::usage(
            "quiverctl does not apply rebalances: the placement controller inside the Mergers \
             applies them by itself when Searchers join or leave",
        )
        .hint(
            "`quiverctl rebalance --dry-run` shows what is still to move; `quiverctl status` \
             shows the last rebalance",
        )
        .into());
    }
    let snapshot = client::read_snapshot(global).await?;
    let live = snapshot.state.live_searcher_ids();
    printer.emit(&render_dry_run(&snapshot.state, &live), || {
        dry_run_json(&snapshot.state, &live)
    });
    Ok(())
}

/// One replica line of `status`.
struct ReplicaRow {
    shard: u32,
    searcher: String,
    role: String,
    state: String,
    points: Option<u64>,
    applied_seq: Option<u64>,
    epoch: Option<u64>,
}

/// Every replica of `name`, shard by shard: the assigned ones in the assignment's order
/// (primary first), then those still reported but no longer assigned (being closed).
fn replica_rows(
    state: &ClusterState,
    name: &str,
    collection: &CollectionRecord,
) -> Vec<ReplicaRow> {
    let mut rows = Vec::new();
    for shard in 0..collection.num_shards {
        let assignment = state.assignment(name, shard);
        let mut hosts: Vec<(String, String)> = assignment
            .map(|assignment| {
                assignment
                    .members()
                    .map(|id| {
                        let role = match assignment.role_of(id) {
                            Some(ReplicaRole::Primary) => "primary",
                            Some(ReplicaRole::Follower) => "follower",
                            Some(ReplicaRole::Learner) => "learner",
                            None => "-",
                        };
                        (id.clone(), role.to_string())
                    })
                    .collect()
            })
            .unwrap_or_default();
        for (collection, replica_shard, id) in state.replicas.keys() {
            if collection == name
                && *replica_shard == shard
                && !hosts.iter().any(|(host, _)| host == id)
            {
                hosts.push((id.clone(), "unassigned".to_string()));
            }
        }
        for (id, role) in hosts {
            let record = state.replica(name, shard, &id);
            let phase = if !state.searchers.contains_key(&id) {
                "OFFLINE".to_string()
            } else {
                match record {
                    Some(record) => phase_name(record.state).to_string(),
                    None => "UNKNOWN".to_string(),
                }
            };
            rows.push(ReplicaRow {
                shard,
                searcher: id,
                role,
                state: phase,
                points: record.map(|record| record.point_count),
                applied_seq: record.map(|record| record.applied_seq),
                epoch: assignment.map(|assignment| assignment.epoch),
            });
        }
    }
    rows
}

fn render_status(snapshot: &Snapshot) -> String {
    let state = &snapshot.state;
    let mut text = format!("etcd revision {}\n\n", state.revision);

    let mut searchers = Table::new(&[
        ("searcher", false),
        ("address", false),
        ("version", false),
        ("started", false),
        ("replicas", true),
    ]);
    for (id, searcher) in &state.searchers {
        searchers.row(vec![
            id.clone(),
            searcher.address.clone(),
            searcher.version.clone(),
            searcher.started_at.clone(),
            state.assigned_to(id).len().to_string(),
        ]);
    }
    text.push_str(&searchers.render());

    for (name, collection) in &state.collections {
        text.push_str(&format!(
            "\ncollection {name}: {} shards, replication factor {}, index {}\n",
            collection.num_shards, collection.replication_factor, collection.index_spec
        ));
        let mut replicas = Table::new(&[
            ("collection", false),
            ("shard", true),
            ("searcher", false),
            ("role", false),
            ("state", false),
            ("points", true),
            ("applied seq", true),
            ("epoch", true),
        ]);
        let number = |value: Option<u64>| value.map_or("-".to_string(), |v| v.to_string());
        for row in replica_rows(state, name, collection) {
            replicas.row(vec![
                name.clone(),
                row.shard.to_string(),
                row.searcher,
                row.role,
                row.state,
                number(row.points),
                number(row.applied_seq),
                number(row.epoch),
            ]);
        }
        text.push_str(&replicas.render());
    }

    text.push('\n');
    match &snapshot.leader {
        Some(leader) => text.push_str(&format!(
            "controller leader: {} (since {})\n",
            leader.id, leader.since
        )),
        None => text.push_str("controller leader: none\n"),
    }
    match &snapshot.rebalance {
        Some(record) => {
            let progress = match &record.finished_at {
                Some(finished_at) => format!("finished {finished_at}"),
                None => format!("in progress, {} shards pending", record.pending_shards),
            };
            text.push_str(&format!(
                "last rebalance: {} (started {}): moved {} of {} replicas ({:.1}%), {progress}\n",
                record.trigger,
                record.started_at,
                record.moved_replicas,
                record.total_replicas,
                record.moved_fraction * 100.0
            ));
        }
        None => text.push_str("last rebalance: none\n"),
    }
    text
}

fn status_json(snapshot: &Snapshot) -> serde_json::Value {
    let state = &snapshot.state;
    let searchers: Vec<_> = state
        .searchers
        .iter()
        .map(|(id, searcher)| {
            json!({
                "id": id,
                "address": searcher.address,
                "version": searcher.version,
                "started_at": searcher.started_at,
                "replicas": state.assigned_to(id).len(),
            })
        })
        .collect();
    let collections: Vec<_> = state
        .collections
        .iter()
        .map(|(name, collection)| {
            let replicas: Vec<_> = replica_rows(state, name, collection)
                .into_iter()
                .map(|row| {
                    json!({
                        "shard": row.shard,
                        "searcher": row.searcher,
                        "role": row.role,
                        "state": row.state,
                        "points": row.points,
                        "applied_seq": row.applied_seq,
                        "epoch": row.epoch,
                    })
                })
                .collect();
            json!({
                "name": name,
                "shards": collection.num_shards,
                "replication_factor": collection.replication_factor,
                "index": collection.index_spec,
                "replicas": replicas,
            })
        })
        .collect();
    json!({
        "revision": state.revision,
        "searchers": searchers,
        "collections": collections,
        "controller_leader": snapshot.leader,
        "last_rebalance": snapshot.rebalance,
    })
}

fn phase_name(phase: quiver_cluster::ReplicaPhase) -> &'static str {
    match phase {
        quiver_cluster::ReplicaPhase::Booting => "BOOTING",
        quiver_cluster::ReplicaPhase::Active => "ACTIVE",
        quiver_cluster::ReplicaPhase::Draining => "DRAINING",
        quiver_cluster::ReplicaPhase::Failed => "FAILED",
    }
}

fn render_dry_run(state: &ClusterState, eligible: &[String]) -> String {
    let plan = plan_moves(state, eligible);
    let mut text = format!(
        "target placement over {} live searchers: {}\n",
        eligible.len(),
        eligible.join(", ")
    );
    if !plan.moves.is_empty() {
        let mut moves = Table::new(&[
            ("collection", false),
            ("shard", true),
            ("from", false),
            ("to", false),
        ]);
        for planned in &plan.moves {
            moves.row(vec![
                planned.collection.clone(),
                planned.shard.to_string(),
                planned.from.clone().unwrap_or_else(|| "-".to_string()),
                planned.to.clone(),
            ]);
        }
        text.push_str(&moves.render());
    }
    let loads = collection_loads(state, eligible);
    if !loads.is_empty() {
        let mut table = Table::new(&[
            ("collection", false),
            ("replicas", true),
            ("max now", true),
            ("max after", true),
            ("mean", true),
        ]);
        for load in &loads {
            table.row(vec![
                load.collection.clone(),
                load.replicas.to_string(),
                load.max_now.to_string(),
                load.max_target.to_string(),
                format!("{:.1}", load.mean),
            ]);
        }
        text.push_str("replicas per searcher:\n");
        text.push_str(&table.render());
    }
    text.push_str(&format!(
        "moved {} of {} replicas ({:.1}%)\n",
        plan.moved_replicas,
        plan.total_replicas,
        plan.moved_fraction * 100.0
    ));
    text
}

fn dry_run_json(state: &ClusterState, eligible: &[String]) -> serde_json::Value {
    let plan = plan_moves(state, eligible);
    json!({
        "live_searchers": eligible,
        "moves": plan.moves,
        "moved_replicas": plan.moved_replicas,
        "total_replicas": plan.total_replicas,
        "moved_fraction": plan.moved_fraction,
        "load": collection_loads(state, eligible),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use quiver_cluster::{
        rebalance::Move, AssignmentRecord, Capacity, LeaderRecord, RebalanceRecord, ReplicaPhase,
        ReplicaRecord, SearcherRecord,
    };

    fn searcher(id: &str, port: u16) -> SearcherRecord {
        SearcherRecord {
            id: id.to_string(),
            address: format!("http://127.0.0.1:{port}"),
            version: "0.1.0".to_string(),
            started_at: "2024-05-01T10:00:00.000Z".to_string(),
            capacity: Capacity {
                cpus: 2,
                memory_bytes: 1 << 30,
            },
        }
    }

    fn replica(state: ReplicaPhase, points: u64, seq: u64) -> ReplicaRecord {
        ReplicaRecord {
            state,
            point_count: points,
            applied_seq: seq,
            epoch: 2,
            ..Default::default()
        }
    }

    fn cluster() -> ClusterState {
        let mut state = ClusterState {
            revision: 42,
            ..ClusterState::default()
        };
        for (id, port) in [
            ("searcher-1", 7101),
            ("searcher-2", 7102),
            ("searcher-10", 7110),
        ] {
            state.searchers.insert(id.to_string(), searcher(id, port));
        }
        state.collections.insert(
            "docs".to_string(),
            CollectionRecord {
                name: "docs".to_string(),
                dimension: 4,
                metric: quiver_index::Metric::L2,
                num_shards: 2,
                replication_factor: 2,
                index_spec: "flat".to_string(),
                created_at: "2024-05-01T10:00:00.000Z".to_string(),
                payload_indexes: Vec::new(),
            },
        );
        state.assignments.insert(
            ("docs".to_string(), 0),
            AssignmentRecord {
                epoch: 2,
                learners: vec!["searcher-10".to_string()],
                ..AssignmentRecord::new(vec!["searcher-2".to_string(), "searcher-1".to_string()])
            },
        );
        state.assignments.insert(
            ("docs".to_string(), 1),
            AssignmentRecord::new(vec!["searcher-1".to_string(), "searcher-3".to_string()]),
        );
        let records = [
            (0, "searcher-2", replica(ReplicaPhase::Active, 1500, 1502)),
            (0, "searcher-1", replica(ReplicaPhase::Active, 1500, 1502)),
            (0, "searcher-10", replica(ReplicaPhase::Booting, 12, 12)),
            (1, "searcher-1", replica(ReplicaPhase::Active, 7, 9)),
            (1, "searcher-2", replica(ReplicaPhase::Draining, 7, 9)),
        ];
        for (shard, id, record) in records {
            state
                .replicas
                .insert(("docs".to_string(), shard, id.to_string()), record);
        }
        state
    }

    #[test]
    fn status_prints_aligned_tables() {
        let snapshot = Snapshot {
            state: cluster(),
            leader: Some(LeaderRecord {
                id: "merger-1".to_string(),
                since: "2024-05-01T10:05:00.000Z".to_string(),
            }),
            rebalance: Some(RebalanceRecord {
                started_at: "2024-05-01T10:06:00.000Z".to_string(),
                updated_at: "2024-05-01T10:06:01.000Z".to_string(),
                trigger: "searcher searcher-10 joined".to_string(),
                searchers: vec![],
                moves: vec![Move {
                    collection: "docs".to_string(),
                    shard: 0,
                    from: Some("searcher-1".to_string()),
                    to: "searcher-10".to_string(),
                }],
                moves_omitted: 0,
                moved_replicas: 1,
                total_replicas: 4,
                moved_fraction: 0.25,
                pending_shards: 1,
                finished_at: None,
            }),
        };
        let expected = "\
etcd revision 42

searcher     address                version  started                   replicas
searcher-1   http://127.0.0.1:7101  0.1.0    2024-05-01T10:00:00.000Z         2
searcher-10  http://127.0.0.1:7110  0.1.0    2024-05-01T10:00:00.000Z         1
searcher-2   http://127.0.0.1:7102  0.1.0    2024-05-01T10:00:00.000Z         1

collection docs: 2 shards, replication factor 2, index flat
collection  shard  searcher     role        state     points  applied seq  epoch
docs            0  searcher-2   primary     ACTIVE      1500         1502      2
docs            0  searcher-1   follower    ACTIVE      1500         1502      2
docs            0  searcher-10  learner     BOOTING       12           12      2
docs            1  searcher-1   primary     ACTIVE         7            9      1
docs            1  searcher-3   follower    OFFLINE        -            -      1
docs            1  searcher-2   unassigned  DRAINING       7            9      1

controller leader: merger-1 (since 2024-05-01T10:05:00.000Z)
last rebalance: searcher searcher-10 joined (started 2024-05-01T10:06:00.000Z): moved 1 of 4 replicas (25.0%), in progress, 1 shards pending
";
        assert_eq!(render_status(&snapshot), expected);

        let document = status_json(&snapshot);
        assert_eq!(document["revision"], 42);
        assert_eq!(document["searchers"][1]["id"], "searcher-10");
        assert_eq!(document["searchers"][0]["replicas"], 2);
        let replicas = document["collections"][0]["replicas"].as_array().unwrap();
        assert_eq!(replicas.len(), 6);
        assert_eq!(replicas[0]["role"], "primary");
        assert_eq!(replicas[0]["points"], 1500);
        assert_eq!(replicas[4]["state"], "OFFLINE");
        assert_eq!(replicas[4]["points"], serde_json::Value::Null);
        assert_eq!(document["controller_leader"]["id"], "merger-1");
        assert_eq!(document["last_rebalance"]["moved_replicas"], 1);

        let bare = Snapshot {
            state: ClusterState::default(),
            leader: None,
            rebalance: None,
        };
        assert_eq!(
            render_status(&bare),
            "etcd revision 0\n\nsearcher  address  version  started  replicas\n\n\
             controller leader: none\nlast rebalance: none\n"
        );
    }

    #[test]
    fn dry_run_lists_every_move() {
        let mut state = cluster();
        // Settle the placement on the three live Searchers, then add a fourth.
        let three: Vec<String> = state.live_searcher_ids();
        let placed = quiver_cluster::place_collection(&three, "docs", 2, 2).unwrap();
        for (shard, target) in (0..2).zip(placed) {
            state
                .assignments
                .insert(("docs".to_string(), shard), AssignmentRecord::new(target));
        }
        let settled = render_dry_run(&state, &three);
        assert_eq!(
            settled,
            "target placement over 3 live searchers: searcher-1, searcher-10, searcher-2\n\
             replicas per searcher:\n\
             collection  replicas  max now  max after  mean\n\
             docs               4        2          2   1.3\n\
             moved 0 of 4 replicas (0.0%)\n"
        );

        let mut four = three.clone();
        four.push("searcher-4".to_string());
        let plan = plan_moves(&state, &four);
        let text = render_dry_run(&state, &four);
        let document = dry_run_json(&state, &four);
        assert_eq!(
            document["moves"].as_array().unwrap().len(),
            plan.moves.len()
        );
        assert_eq!(document["moved_replicas"], plan.moved_replicas);
        assert_eq!(document["live_searchers"][3], "searcher-4");
        assert_eq!(document["load"][0]["collection"], "docs");
        assert_eq!(document["load"][0]["max_target"], 1);
        assert_eq!(document["load"][0]["mean"], 1.0);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines.len(),
            1 + usize::from(!plan.moves.is_empty()) + plan.moves.len() + 3 + 1
        );
        assert!(
            text.contains("docs               4        2          1   1.0\n"),
            "{text}"
        );
        assert_eq!(
            *lines.last().unwrap(),
            format!(
                "moved {} of 4 replicas ({:.1}%)",
                plan.moved_replicas,
                plan.moved_fraction * 100.0
            )
        );
        for (line, planned) in lines[2..2 + plan.moves.len()].iter().zip(&plan.moves) {
            let cells: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(
                cells,
                [
                    "docs",
                    &planned.shard.to_string(),
                    planned.from.as_deref().unwrap_or("-"),
                    &planned.to
                ]
            );
        }
    }
}
