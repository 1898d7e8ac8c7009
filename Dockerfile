# syntax=docker/dockerfile:1
#
# One image with Quiver's three binaries: quiver-searcher, quiver-merger and quiverctl.
#
#   docker build -t quiver:0.1.0 .
#   docker run --rm quiver:0.1.0 quiver-merger --help
#
# The helm chart in helm/quiver runs this image for both the Searchers and the Mergers and
# picks the binary with the container's command.
#
# Both stages use the same Debian release, so the shared libraries the binaries were linked
# against in the builder (OpenBLAS, LAPACK, libgomp, libstdc++) are the same sonames at run time.

ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS builder

# protoc compiles quiver.v1 and etcd's API, which import protobuf's well-known types
# (/usr/include/google/protobuf, from libprotobuf-dev: protobuf-compiler only recommends
# it). FAISS is built from its bundled sources by the `faiss` crate (feature `static`) with
# cmake and g++, and links against BLAS and LAPACK.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        protobuf-compiler libprotobuf-dev cmake g++ libopenblas-dev liblapack-dev \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . .

# The cache mounts keep the crates registry and the build folder between image builds, so a
# rebuild does not compile FAISS again. The build folder is a cache mount and is not part of
# the image, so the binaries are copied out in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bins \
        -p quiver-searcher -p quiver-merger -p quiver-cluster \
    && mkdir -p /out \
    && cp target/release/quiver-searcher target/release/quiver-merger target/release/quiverctl /out/

FROM ${RUNTIME_IMAGE}

# libopenblas0-pthread provides libblas.so.3 and liblapack.so.3 (as Debian alternatives) and
# pulls in libgfortran5; FAISS uses OpenMP through libgomp1. libstdc++6 and libgcc-s1 are
# already in the slim image.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        libopenblas0-pthread libgomp1 \
    && rm -rf /var/lib/apt/lists/*

# A fixed, unprivileged user; the helm chart runs the pods as this uid and gid, and gives the
# Searchers' volumes to this group (fsGroup).
RUN groupadd --system --gid 10001 quiver \
    && useradd --system --uid 10001 --gid quiver --home-dir /var/lib/quiver --shell /usr/sbin/nologin quiver \
    && mkdir -p /var/lib/quiver \
    && chown quiver:quiver /var/lib/quiver

COPY --from=builder /out/quiver-searcher /out/quiver-merger /out/quiverctl /usr/local/bin/

USER 10001:10001
WORKDIR /var/lib/quiver

# The Searchers' data (write-ahead logs, snapshots, the searcher id and lease) goes here:
# mount a persistent volume at /var/lib/quiver and pass --data-dir /var/lib/quiver.

# gRPC, the gRPC health service and Prometheus /metrics share one port per service:
# 7000 for the Merger, 7100 for the Searcher (their defaults).
EXPOSE 7000 7100

# The binaries listen on 127.0.0.1 by default; a container must listen on all interfaces,
# e.g. `quiver-merger --listen 0.0.0.0:7000`, and a Searcher needs --advertise-address too.
CMD ["quiver-merger", "--listen", "0.0.0.0:7000"]
