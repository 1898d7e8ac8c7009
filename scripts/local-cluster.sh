#!/usr/bin/env bash
# Helpers for scripts that run Quiver processes on 127.0.0.1 (quickstart.sh,
# bench-query.sh, bench-write.sh). Sourced, not run. Expects `quiver_log` from
# prerequisites.sh; `quiver_start_work` sets up `$work` (a work folder with a logs/
# subfolder) and the clean-up of what the script starts.

# Stops processes: SIGTERM, up to 10 s to exit, then SIGKILL.
stop_processes() {
    [ "$#" -gt 0 ] || return 0
    kill -TERM "$@" 2>/dev/null || true
    for _ in $(seq 100); do
        kill -0 "$@" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$@" 2>/dev/null || true
    wait "$@" 2>/dev/null || true
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# The first free port at or above $1.
free_port() {
    local port=$1
    while port_in_use "$port"; do port=$((port + 1)); done
    echo "$port"
}

# Waits up to 30 s for a process's ready file; prints its log and fails otherwise.
wait_for_file() {
    local file=$1 what=$2 log=$3
    for _ in $(seq 300); do
        [ -s "$file" ] && return 0
        sleep 0.1
    done
    echo "$what did not become ready; its log:" >&2
    tail -n 30 "$log" >&2
    return 1
}

# Starts a single-member etcd named $1 on the first free client port at or above $2, with
# room for a collection's shards in one transaction; sets etcd_pid and etcd_endpoint and
# returns once etcd answers.
start_etcd() {
    local name=$1 first_port=$2
    local port peer_port
    port=$(free_port "$first_port")
    peer_port=$(free_port $((port + 1)))
    etcd_endpoint="http://127.0.0.1:$port"
    quiver_log "starting etcd on $etcd_endpoint"
    etcd --name "$name" --data-dir "$work/etcd" \
        --listen-client-urls "$etcd_endpoint" --advertise-client-urls "$etcd_endpoint" \
        --listen-peer-urls "http://127.0.0.1:$peer_port" \
        --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
        --initial-cluster "$name=http://127.0.0.1:$peer_port" --max-txn-ops 2048 \
        >"$work/logs/etcd.log" 2>&1 &
    etcd_pid=$!
    for _ in $(seq 100); do
        ETCDCTL_API=3 etcdctl --endpoints "$etcd_endpoint" endpoint health >/dev/null 2>&1 && break
        sleep 0.1
    done
    ETCDCTL_API=3 etcdctl --endpoints "$etcd_endpoint" endpoint health >/dev/null
}

# Makes the work folder `$work` (named after $1, with a logs/ subfolder) and arranges that
# on exit, also on Ctrl-C, the processes in `service_pids` and then etcd (`etcd_pid`) are
# stopped, services first: a Searcher revokes its lease and snapshots its replicas on
# SIGTERM, which needs etcd still up. The folder is removed unless QUIVER_KEEP=1.
quiver_start_work() {
    work=$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")
    mkdir -p "$work/logs"
    service_pids=()
    etcd_pid=""
    trap quiver_clean_up EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

quiver_clean_up() {
    local status=$?
    trap - EXIT INT TERM
    if [ "${#service_pids[@]}" -gt 0 ] || [ -n "$etcd_pid" ]; then
        quiver_log "stopping what was started"
        stop_processes "${service_pids[@]}"
        [ -z "$etcd_pid" ] || stop_processes "$etcd_pid"
    fi
    if [ "${QUIVER_KEEP:-0}" = 1 ]; then
        quiver_log "kept data and logs in $work"
    else
        rm -rf "$work"
    fi
    exit "$status"
}
