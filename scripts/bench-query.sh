#!/usr/bin/env bash
# The query-path benchmark: starts one etcd and three Quiver clusters on 127.0.0.1 (separate
# etcd prefixes) with 1, 2 and 3 Searchers and one Merger each, loads the same generated data
# set into each (6 shards, replication factor 1), then runs `quiver-load` against the lone
# Searcher called directly, against the three Mergers, and with bare gRPC health checks (the
# floor of what any extra hop costs on this machine), in interleaved rounds, and prints one
# table (also written to $QUIVER_BENCH_OUT, default target/bench-query.md). Stops
# everything it started, also on Ctrl-C.
#
# Environment (defaults in brackets): QUIVER_BENCH_POINTS [10000], QUIVER_BENCH_DIMENSION [64],
# QUIVER_BENCH_SHARDS [6], QUIVER_BENCH_CONCURRENCY [1,8], QUIVER_BENCH_DURATION_SECS [5],
# QUIVER_BENCH_ROUNDS [3], QUIVER_KEEP=1 keeps the work folder with the logs.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
source scripts/prerequisites.sh
source scripts/local-cluster.sh
quiver_ensure_prerequisites

points=${QUIVER_BENCH_POINTS:-10000}
dimension=${QUIVER_BENCH_DIMENSION:-64}
shards=${QUIVER_BENCH_SHARDS:-6}
concurrency=${QUIVER_BENCH_CONCURRENCY:-1,8}
duration=${QUIVER_BENCH_DURATION_SECS:-5}
rounds=${QUIVER_BENCH_ROUNDS:-3}
target_dir=${CARGO_TARGET_DIR:-$repo/target}
out=${QUIVER_BENCH_OUT:-$target_dir/bench-query.md}

quiver_log "building release binaries (the first build takes a few minutes)"
cargo build --release --bins --quiet
bin="$target_dir/release"

quiver_start_work quiver-bench

start_etcd bench 24790

quiver_log "generating $points points of dimension $dimension"
"$bin/quiverctl" generate-data --out "$work/data" --base "$points" --queries 10 \
    --dimension "$dimension" --k 10 >/dev/null
base=$(ls "$work/data"/*base.fvecs)

targets=()
mergers=()
direct_address=""
for size in 1 2 3; do
    prefix="/bench$size/"
    for number in $(seq "$size"); do
        name="c$size-s$number"
        "$bin/quiver-searcher" --id "$name" --listen 127.0.0.1:0 \
            --etcd-endpoints "$etcd_endpoint" --etcd-prefix "$prefix" \
            --data-dir "$work/$name" --ready-file "$work/$name.ready" \
            >"$work/logs/$name.log" 2>&1 &
        service_pids+=($!)
    done
    for number in $(seq "$size"); do
        name="c$size-s$number"
        wait_for_file "$work/$name.ready" "$name" "$work/logs/$name.log"
    done
    [ "$size" = 1 ] && direct_address=$(cat "$work/c1-s1.ready")
    "$bin/quiver-merger" --listen 127.0.0.1:0 --etcd-endpoints "$etcd_endpoint" \
        --etcd-prefix "$prefix" --ready-file "$work/merger$size.ready" \
        >"$work/logs/merger$size.log" 2>&1 &
    service_pids+=($!)
    wait_for_file "$work/merger$size.ready" "merger$size" "$work/logs/merger$size.log"
    merger=$(cat "$work/merger$size.ready")
    quiver_log "cluster $size: $size searcher(s), merger at $merger; loading"
    "$bin/quiverctl" --merger "$merger" collections create bench --dimension "$dimension" \
        --shards "$shards" --replication-factor 1 >/dev/null
    "$bin/quiverctl" --merger "$merger" load bench "$base" >/dev/null
    mergers+=("$merger")
    targets+=(--target "kind=merger,name=merger-$size,searchers=$size,collection=bench,address=$merger")
    if [ "$size" = 1 ]; then
        # The same cluster through a Merger with one async worker thread.
        "$bin/quiver-merger" --listen 127.0.0.1:0 --etcd-endpoints "$etcd_endpoint" \
            --etcd-prefix "$prefix" --worker-threads 1 --ready-file "$work/merger1w.ready" \
            >"$work/logs/merger1w.log" 2>&1 &
        service_pids+=($!)
        wait_for_file "$work/merger1w.ready" "merger1w" "$work/logs/merger1w.log"
        targets+=(--target "kind=merger,name=merger-1-one-worker,searchers=1,collection=bench,address=$(cat "$work/merger1w.ready")")
    fi
done

# Where consistent hashing put the shards (point counts are republished a moment after writes).
sleep 1
for merger in "${mergers[@]}"; do
    "$bin/quiverctl" --merger "$merger" collections describe bench | sed 's/^/    /' >&2
done

quiver_log "measuring: concurrency $concurrency, ${duration}s per target, $rounds rounds"
"$bin/quiver-load" --dimension "$dimension" --concurrency "$concurrency" \
    --duration-secs "$duration" --rounds "$rounds" \
    --target "kind=searcher,name=searcher,searchers=1,collection=bench,address=$direct_address" \
    "${targets[@]}" \
    --target "kind=ping,name=ping,searchers=0,address=$direct_address" | tee "$out"
quiver_log "table written to $out"
