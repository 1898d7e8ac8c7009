#!/usr/bin/env bash
# Installs the prerequisites if missing, then runs Quiver's whole test suite: unit tests,
# and integration tests that start a real etcd and real Searcher and Merger processes on
# 127.0.0.1 with the real data sets in ../shared/data, and drive them over gRPC from Rust
# and from Python; then the Helm chart's checks (scripts/check-helm.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/prerequisites.sh
quiver_ensure_prerequisites
quiver_ensure_test_prerequisites
quiver_ensure_helm_check_prerequisites

quiver_log "building the binaries the integration tests start"
cargo build --workspace --bins
quiver_log "running the test suite"
# Arguments are test-name filters, e.g. `./scripts/test.sh sigkill`; the chart checks run
# only in the full suite (no filter), and on their own with ./scripts/check-helm.sh.
status=0
cargo test --workspace --no-fail-fast -- "$@" || status=$?
if [ "$#" -eq 0 ]; then
    quiver_log "checking the Helm chart"
    ./scripts/check-helm.sh || status=1
fi
exit "$status"
