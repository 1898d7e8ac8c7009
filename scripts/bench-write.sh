#!/usr/bin/env bash
# The write-path benchmark: what durability costs. Starts one etcd and three Quiver clusters
# on 127.0.0.1 (separate etcd prefixes), each of three Searchers and one Merger, that differ
# only in the Searchers' --wal-sync policy (always, interval:10, never). Each cluster gets
# two collections of siftsmall's shape (128 dimensions, L2, 4 shards, flat): one at
# replication factor 1, one at 3. Then, in interleaved rounds, `quiverctl load` upserts
# siftsmall's 10,000 base vectors in batches of 1,000 and its first 1,000 in batches of 10
# (4 requests in flight) into each collection, and into the replication-factor-3 one also
# with write quorum `all` (3) besides the default majority (2). Prints one table of medians
# over the rounds (also written to $QUIVER_BENCH_OUT, default target/bench-write.md) and
# stops everything it started, also on Ctrl-C.
#
# Environment (defaults in brackets): QUIVER_BENCH_ROUNDS [3], QUIVER_DATA
# [../shared/data], QUIVER_KEEP=1 keeps the work folder with the logs.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
source scripts/prerequisites.sh
source scripts/local-cluster.sh
quiver_ensure_prerequisites

rounds=${QUIVER_BENCH_ROUNDS:-3}
data=${QUIVER_DATA:-$repo/../shared/data}
target_dir=${CARGO_TARGET_DIR:-$repo/target}
out=${QUIVER_BENCH_OUT:-$target_dir/bench-write.md}
base=$(find "$data" -name 'siftsmall_base.fvecs' | head -n 1)
if [ -z "$base" ]; then
    echo "siftsmall_base.fvecs not found under $data (set QUIVER_DATA)" >&2
    exit 1
fi

quiver_log "building release binaries (the first build takes a few minutes)"
cargo build --release --bins --quiet
bin="$target_dir/release"

quiver_start_work quiver-bench-write

# The first 1,000 vectors: an .fvecs record is a 4-byte dimension and 128 floats.
small="$work/siftsmall_first1000.fvecs"
head -c $((1000 * (4 + 128 * 4))) "$base" >"$small"

start_etcd bench-write 24890

policies=(always interval:10 never)
declare -A merger_of
for policy in "${policies[@]}"; do
    tag=${policy%%:*}
    prefix="/bench-write-$tag/"
    for number in 1 2 3; do
        name="$tag-s$number"
        "$bin/quiver-searcher" --id "$name" --listen 127.0.0.1:0 \
            --etcd-endpoints "$etcd_endpoint" --etcd-prefix "$prefix" \
            --data-dir "$work/$name" --ready-file "$work/$name.ready" --wal-sync "$policy" \
            >"$work/logs/$name.log" 2>&1 &
        service_pids+=($!)
    done
    for number in 1 2 3; do
        wait_for_file "$work/$tag-s$number.ready" "$tag-s$number" "$work/logs/$tag-s$number.log"
    done
    "$bin/quiver-merger" --listen 127.0.0.1:0 --etcd-endpoints "$etcd_endpoint" \
        --etcd-prefix "$prefix" --ready-file "$work/$tag-merger.ready" \
        >"$work/logs/$tag-merger.log" 2>&1 &
    service_pids+=($!)
    wait_for_file "$work/$tag-merger.ready" "$tag-merger" "$work/logs/$tag-merger.log"
    merger_of[$policy]=$(cat "$work/$tag-merger.ready")
    for rf in 1 3; do
        "$bin/quiverctl" --merger "${merger_of[$policy]}" collections create "rf$rf" \
            --dimension 128 --metric l2 --shards 4 --replication-factor "$rf" >/dev/null
    done
    quiver_log "cluster with --wal-sync $policy: merger at ${merger_of[$policy]}"
done

# One measurement: prints points per second.
measure() {
    local policy=$1 collection=$2 quorum=$3 file=$4 batch=$5
    "$bin/quiverctl" --merger "${merger_of[$policy]}" --output json load "$collection" "$file" \
        --batch "$batch" --concurrency 4 --write-quorum "$quorum" |
        python3 -c 'import json, sys; print(round(json.load(sys.stdin)["points_per_second"]))'
}

# Rows: policy, collection, replication factor, quorum, file, batch.
rows=()
for policy in "${policies[@]}"; do
    rows+=("$policy rf1 1 1 $base 1000" "$policy rf3 3 2 $base 1000" "$policy rf3 3 3 $base 1000")
    rows+=("$policy rf1 1 1 $small 10" "$policy rf3 3 2 $small 10" "$policy rf3 3 3 $small 10")
done

# Every collection starts full, so each round overwrites the same ids.
for policy in "${policies[@]}"; do
    measure "$policy" rf1 1 "$base" 1000 >/dev/null
    measure "$policy" rf3 2 "$base" 1000 >/dev/null
done

declare -A results
for round in $(seq "$rounds"); do
    quiver_log "round $round of $rounds"
    for index in "${!rows[@]}"; do
        read -r policy collection _ quorum file batch <<<"${rows[$index]}"
        results[$index]+="$(measure "$policy" "$collection" "$quorum" "$file" "$batch") "
    done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

{
    echo "| --wal-sync | replication factor | write quorum | points per request | requests | points/s (median of $rounds) | requests/s | each round |"
    echo "|---|---|---|---|---|---|---|---|"
    for index in "${!rows[@]}"; do
        read -r policy _ rf quorum file batch <<<"${rows[$index]}"
        points=$([ "$file" = "$small" ] && echo 1000 || echo 10000)
        rate=$(echo "${results[$index]}" | median)
        echo "| $policy | $rf | $quorum | $batch | $((points / batch)) | $rate | $((rate / batch)) | ${results[$index]% } |"
    done
} | tee "$out"
quiver_log "table written to $out"
