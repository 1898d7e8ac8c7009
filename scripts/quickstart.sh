#!/usr/bin/env bash
# Quiver in one command: installs what is missing, builds release binaries, starts etcd,
# 3 Searchers and 1 Merger on 127.0.0.1, loads siftsmall (4 shards, replication factor 2)
# with quiverctl, searches with its first query, fetches two points, runs its 100 queries
# for recall@10 against the ground truth, prints the cluster state in etcd, then stops
# everything it started (also on Ctrl-C).
#
# Environment: QUIVER_DATA (a folder with siftsmall's .fvecs/.ivecs files; default
# ../shared/data/siftsmall, generated data when absent), QUIVER_KEEP=1 keeps the work
# folder with data and logs, QUIVER_STAY=1 leaves the cluster running (its status page
# open in a browser) until Ctrl-C or SIGTERM, QUIVER_BIN_DIR=DIR uses the quiver-searcher,
# quiver-merger and quiverctl already built in DIR instead of building release ones.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
source scripts/prerequisites.sh
source scripts/local-cluster.sh
quiver_ensure_prerequisites

if [ -n "${QUIVER_BIN_DIR:-}" ]; then
    bin=$QUIVER_BIN_DIR
    quiver_log "using the binaries in $bin"
else
    quiver_log "building release binaries (the first build takes a few minutes)"
    cargo build --release --bins --quiet
    bin="$repo/target/release"
fi

quiver_start_work quiver-quickstart

start_etcd quickstart 23790

next_port=$(free_port 7100)
for number in 1 2 3; do
    port=$(free_port "$next_port")
    next_port=$((port + 1))
    quiver_log "starting quiver-searcher searcher-$number on 127.0.0.1:$port"
    "$bin/quiver-searcher" --id "searcher-$number" --listen "127.0.0.1:$port" \
        --etcd-endpoints "$etcd_endpoint" --data-dir "$work/searcher-$number" \
        --ready-file "$work/searcher-$number.ready" >"$work/logs/searcher-$number.log" 2>&1 &
    service_pids+=($!)
done
for number in 1 2 3; do
    wait_for_file "$work/searcher-$number.ready" "searcher-$number" "$work/logs/searcher-$number.log"
done

merger_port=$(free_port 7000)
merger="http://127.0.0.1:$merger_port"
quiver_log "starting quiver-merger on $merger"
"$bin/quiver-merger" --listen "127.0.0.1:$merger_port" --etcd-endpoints "$etcd_endpoint" \
    --ready-file "$work/merger.ready" >"$work/logs/merger.log" 2>&1 &
service_pids+=($!)
wait_for_file "$work/merger.ready" "the merger" "$work/logs/merger.log"
quiver_log "status page: $merger/status (JSON: $merger/api/status)"
ctl() { "$bin/quiverctl" --merger "$merger" "$@"; }

data=${QUIVER_DATA:-$repo/../shared/data/siftsmall}
if [ -f "$data/siftsmall_base.fvecs" ]; then
    base="$data/siftsmall_base.fvecs"
    queries="$data/siftsmall_query.fvecs"
    truth="$data/siftsmall_groundtruth.ivecs"
    quiver_log "using siftsmall from $data"
else
    quiver_log "no siftsmall at $data: generating a data set of the same shape"
    ctl generate-data --out "$work/data" --base 10000 --queries 100 --dimension 128
    base="$work/data/base.fvecs"
    queries="$work/data/query.fvecs"
    truth="$work/data/groundtruth.ivecs"
fi

quiver_log "creating collection siftsmall: 128 dimensions, L2, 4 shards, replication factor 2"
ctl collections create siftsmall --dimension 128 --metric l2 --shards 4 --replication-factor 2
quiver_log "loading $(basename "$base") through the merger"
ctl load siftsmall "$base" --batch 1000
quiver_log "searching with the first query (quiverctl search siftsmall --query-file ... --row 0)"
ctl search siftsmall --query-file "$queries" --row 0 -k 5
quiver_log "fetching two points back by id"
ctl get siftsmall 0 1
quiver_log "running all the queries against the ground truth"
ctl search siftsmall --queries "$queries" --groundtruth "$truth" -k 10 --show 0
quiver_log "cluster status"
# Searchers publish their replicas' point counts to etcd a moment after a write (batched,
# ~100 ms); wait for them so the table below shows what was loaded.
for _ in $(seq 1 50); do
    etcdctl --endpoints "$etcd_endpoint" get --prefix /quiver/replicas/siftsmall/ --print-value-only \
        | grep -q '"point_count":0' || break
    sleep 0.1
done
ctl --etcd-endpoints "$etcd_endpoint" status
ctl --etcd-endpoints "$etcd_endpoint" rebalance --dry-run
ctl collections describe siftsmall
quiver_log "the cluster state in etcd (etcdctl --endpoints $etcd_endpoint get --prefix /quiver/)"
etcdctl --endpoints "$etcd_endpoint" get --prefix /quiver/ | paste -d ' ' - - | sed 's/^/  /'
if [ "${QUIVER_STAY:-0}" = 1 ]; then
    quiver_log "the cluster keeps running: status page $merger/status, quiverctl --merger $merger; Ctrl-C or SIGTERM stops it"
    # Waiting on a background sleep, not a foreground one, lets the signal's trap run at once.
    sleep infinity &
    service_pids+=($!)
    wait "$!"
fi
quiver_log "done; stopping everything this script started (QUIVER_STAY=1 keeps it running)"
