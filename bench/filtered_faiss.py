#!/usr/bin/env python3
"""The peer side of `quiver-bench --filtered`: FAISS from PyPI (`faiss-cpu`, whose wheel
dispatches AVX2/AVX-512 at run time), on the same data, the same filters and the same
parameters, on one thread, so its table sits beside Quiver's.

HNSW with an IDSelectorBitmap in its search parameters is what a FAISS user filters with;
a flat index with the same selector is FAISS's exact filtered search. Recall is against
exact filtered ground truth computed here with numpy. Run by scripts/bench-filtered.sh.
"""

import argparse
import gzip
import os
import struct
import sys
import time

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")
import faiss  # noqa: E402  (after OMP_NUM_THREADS)


def read_fvecs(path):
    raw = np.fromfile(path, dtype=np.int32)
    dim = raw[0]
    return raw.reshape(-1, dim + 1)[:, 1:].view(np.float32).copy()


def read_idx_images(path):
    with gzip.open(path, "rb") as handle:
        magic, count, rows, cols = struct.unpack(">IIII", handle.read(16))
        assert magic == 2051, path
        return np.frombuffer(handle.read(), dtype=np.uint8).reshape(count, rows * cols).astype(np.float32)


def read_idx_labels(path):
    with gzip.open(path, "rb") as handle:
        magic, count = struct.unpack(">II", handle.read(8))
        assert magic == 2049, path
        return np.frombuffer(handle.read(), dtype=np.uint8)


def exact(base, queries, allowed_rows, k):
    subset = base[allowed_rows]
    norms = (subset * subset).sum(axis=1)
    truth = []
    for query in queries:
        distances = norms - 2.0 * subset @ query
        order = np.argsort(distances, kind="stable")[:k]
        truth.append(set(allowed_rows[order].tolist()))
    return truth


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="siftsmall", choices=["siftsmall", "fashion-mnist"])
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--fashion-dir", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--hnsw-m", type=int, default=16)
    parser.add_argument("--ef-construction", type=int, default=200)
    parser.add_argument("--ef-search", type=int, default=64)
    args = parser.parse_args()
    faiss.omp_set_num_threads(1)

    labels = None
    if args.dataset == "siftsmall":
        base = read_fvecs(os.path.join(args.data_dir, "siftsmall/siftsmall_base.fvecs"))
        queries = read_fvecs(os.path.join(args.data_dir, "siftsmall/siftsmall_query.fvecs"))
        name = "siftsmall"
    else:
        base = read_idx_images(os.path.join(args.fashion_dir, "train-images-idx3-ubyte.gz"))
        queries = read_idx_images(os.path.join(args.fashion_dir, "t10k-images-idx3-ubyte.gz"))
        labels = read_idx_labels(os.path.join(args.fashion_dir, "train-labels-idx1-ubyte.gz"))
        name = "fashion-mnist-784"
    queries = queries[: args.queries]
    n, dim = base.shape
    rows = np.arange(n)
    buckets = rows % 1000
    filters = [
        (f"bucket < {b} ({share})", rows[buckets < b])
        for b, share in [(500, "50%"), (100, "10%"), (10, "1%"), (1, "0.1%")]
    ]
    if labels is not None:
        filters.append(("class = 3 (10%, correlated)", rows[labels == 3]))

    started = time.perf_counter()
    hnsw = faiss.IndexHNSWFlat(dim, args.hnsw_m)
    hnsw.hnsw.efConstruction = args.ef_construction
    hnsw.add(base)
    build = time.perf_counter() - started
    flat = faiss.IndexFlatL2(dim)
    flat.add(base)

    print(
        f"## {name}, filtered, faiss-cpu {faiss.__version__} from PyPI ({faiss.get_compile_options().strip()}): "
        f"{n} points, {len(queries)} queries, k = {args.k}, one thread, median of {args.rounds} rounds; "
        f"HNSW{args.hnsw_m} efConstruction {args.ef_construction} built in {build:.1f} s\n"
    )
    print(f"| filter | matches | backend | recall@{args.k} | QPS | fewer than min(k, matches) |")
    print("|---|---:|---|---:|---:|---:|")
    for filter_name, allowed_rows in filters:
        truth = exact(base, queries, allowed_rows, args.k)
        bitmap = np.zeros(n, dtype=bool)
        bitmap[allowed_rows] = True
        packed = np.packbits(bitmap, bitorder="little")
        selector = faiss.IDSelectorBitmap(n, faiss.swig_ptr(packed))
        wanted = min(args.k, len(allowed_rows))
        cases = [
            (f"faiss HNSW{args.hnsw_m} efSearch {args.ef_search} + IDSelectorBitmap", hnsw,
             faiss.SearchParametersHNSW(sel=selector, efSearch=args.ef_search)),
            ("faiss Flat + IDSelectorBitmap (exact)", flat, faiss.SearchParameters(sel=selector)),
        ]
        for label, index, params in cases:
            _, found = index.search(queries, args.k, params=params)
            timings = []
            for _ in range(max(args.rounds, 1)):
                started = time.perf_counter()
                index.search(queries, args.k, params=params)
                timings.append(time.perf_counter() - started)
            median = sorted(timings)[len(timings) // 2]
            hits = sum(len(set(row[row >= 0].tolist()) & expected) for row, expected in zip(found, truth))
            total = sum(len(expected) for expected in truth)
            short = sum(1 for row in found if (row >= 0).sum() < wanted)
            print(
                f"| {filter_name} | {len(allowed_rows)} | {label} | {hits / max(total, 1):.3f} | "
                f"{len(queries) / median:.0f} | {100.0 * short / len(queries):.1f}% |"
            )
    print()


if __name__ == "__main__":
    sys.exit(main())
