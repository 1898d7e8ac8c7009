#!/usr/bin/env bash
# The filtered-search benchmark: `quiver-bench --filtered` (every native backend and the
# FAISS crate build through the Searcher's planner, exact scans, a naive post-filter) and
# bench/filtered_faiss.py (faiss-cpu from PyPI: HNSW and Flat with an IDSelectorBitmap),
# one after the other on the same data, filters and parameters, on one thread, for
# siftsmall and Fashion-MNIST-784. Prints markdown tables (docs/benchmarks.md records them).
#
# Environment: QUIVER_BENCH_DATASETS (default "siftsmall fashion-mnist"), QUIVER_BENCH_QUERIES
# (default 1000), QUIVER_BENCH_ROUNDS (default 3). faiss-cpu and numpy go into a virtual
# environment under target/tools/; Debian's dataset-fashion-mnist is installed when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/prerequisites.sh
quiver_ensure_prerequisites

readonly FAISS_CPU_VERSION=1.15.1
datasets=${QUIVER_BENCH_DATASETS:-siftsmall fashion-mnist}
queries=${QUIVER_BENCH_QUERIES:-1000}
rounds=${QUIVER_BENCH_ROUNDS:-3}

venv="target/tools/bench-faiss-cpu-$FAISS_CPU_VERSION"
if ! "$venv/bin/python" -c "import faiss, numpy" >/dev/null 2>&1; then
    quiver_ensure_helm_check_prerequisites  # python3 -m venv with pip
    quiver_log "installing faiss-cpu $FAISS_CPU_VERSION and numpy into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "faiss-cpu==$FAISS_CPU_VERSION" numpy
fi
case " $datasets " in
    *" fashion-mnist "*)
        [ -f /usr/share/datasets/fashion-mnist/train-labels-idx1-ubyte.gz ] || {
            quiver_log "installing Debian's dataset-fashion-mnist"
            quiver_as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
        } ;;
esac

quiver_log "building quiver-bench (release)"
cargo build --release -p quiver-bench --quiet
export OMP_NUM_THREADS=1
for dataset in $datasets; do
    quiver_log "$dataset: Quiver"
    target/release/quiver-bench --filtered --dataset "$dataset" --queries "$queries" --rounds "$rounds"
    quiver_log "$dataset: faiss-cpu $FAISS_CPU_VERSION"
    "$venv/bin/python" bench/filtered_faiss.py --dataset "$dataset" --queries "$queries" --rounds "$rounds"
done
