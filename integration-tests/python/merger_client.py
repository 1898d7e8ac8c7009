"""A Python gRPC client of the Quiver Merger, as a user in another language writes one.

Stubs are generated from the repository's .proto files (protoc + grpc_python_plugin); the
script creates a cosine collection, upserts, searches, reads back, and checks error codes.
Exits non-zero with a message on the first mismatch.

Usage: merger_client.py MERGER_ADDRESS PROTO_ROOT WORK_DIR
"""

import json
import subprocess
import sys


def generate_stubs(proto_root, out_dir):
    protos = [f"quiver/v1/{name}.proto" for name in ("common", "merger", "searcher")]
    subprocess.run(
        [
            "protoc",
            f"-I{proto_root}",
            f"--python_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            "--plugin=protoc-gen-grpc_python=/usr/bin/grpc_python_plugin",
            *protos,
        ],
        check=True,
    )
    # protoc writes quiver/v1/*.py; make them importable as packages.
    for package in ("quiver", "quiver/v1"):
        open(f"{out_dir}/{package}/__init__.py", "a").close()
    sys.path.insert(0, out_dir)


def expect(condition, message):
    if not condition:
        print(f"FAIL: {message}", file=sys.stderr)
        sys.exit(1)


def main():
    address, proto_root, work_dir = sys.argv[1:4]
    generate_stubs(proto_root, work_dir)
    import grpc
    from quiver.v1 import common_pb2, merger_pb2, merger_pb2_grpc

    channel = grpc.insecure_channel(address.removeprefix("http://"))
    merger = merger_pb2_grpc.MergerStub(channel)

    created = merger.CreateCollection(
        merger_pb2.CreateCollectionRequest(
            config=merger_pb2.CollectionConfig(
                name="pydocs",
                dimension=3,
                metric=common_pb2.METRIC_COSINE,
                num_shards=2,
                replication_factor=1,
            )
        ),
        timeout=30,
    )
    expect(len(created.collection.shards) == 2, f"two shards, got {created.collection}")

    points = [
        common_pb2.Point(id="east", vector=[1, 0, 0], payload_json=json.dumps({"dir": "east"})),
        common_pb2.Point(id="north", vector=[0, 1, 0], payload_json=json.dumps({"dir": "north"})),
        common_pb2.Point(id="north-east", vector=[1, 1, 0], payload_json="{}"),
        common_pb2.Point(id="up", vector=[0, 0, 5], payload_json=""),
    ]
    upserted = merger.Upsert(merger_pb2.UpsertRequest(collection="pydocs", points=points), timeout=30)
    expect(upserted.upserted == 4 and not upserted.failed_replicas, f"upsert: {upserted}")

    response = merger.Search(
        merger_pb2.SearchRequest(
            collection="pydocs",
            queries=[common_pb2.Vector(values=[2, 0.1, 0])],
            k=3,
            with_payloads=True,
        ),
        timeout=30,
    )
    expect(response.shards_answered == response.shards_total == 2, f"all shards: {response}")
    expect(response.coverage == 1.0 and not response.partial, f"full coverage: {response}")
    expect([report.shard for report in response.shards] == [0, 1], f"a report per shard: {response}")
    expect(all(report.outcome == common_pb2.SHARD_OUTCOME_OK and report.attempts >= 1
               for report in response.shards), f"every shard answered: {response.shards}")
    # min_coverage is a proto3 optional field: absent differs from any value.
    expect(not merger_pb2.SearchRequest().HasField("min_coverage"), "min_coverage absent by default")
    half = merger.Search(
        merger_pb2.SearchRequest(
            collection="pydocs", queries=[common_pb2.Vector(values=[2, 0.1, 0])], k=3, min_coverage=0.5
        ),
        timeout=30,
    )
    expect([n.id for n in half.results[0].neighbors] == ["east", "north-east", "north"],
           f"min_coverage 0.5 with every shard up: {half}")
    ids = [neighbor.id for neighbor in response.results[0].neighbors]
    expect(ids == ["east", "north-east", "north"], f"cosine order, got {ids}")
    scores = [neighbor.score for neighbor in response.results[0].neighbors]
    expect(scores == sorted(scores, reverse=True), f"similarities descend: {scores}")
    expect(json.loads(response.results[0].neighbors[0].payload_json) == {"dir": "east"},
           "payload round trip")

    got = merger.Get(merger_pb2.GetRequest(collection="pydocs", ids=["up", "nope"], with_vectors=True),
                     timeout=30)
    expect([point.id for point in got.points] == ["up"], f"get: {got}")
    expect([round(value, 6) for value in got.points[0].vector] == [0, 0, 1.0],
           "cosine stores the normalised vector")

    for name, call in [
        ("NaN vector", lambda: merger.Upsert(merger_pb2.UpsertRequest(
            collection="pydocs", points=[common_pb2.Point(id="x", vector=[float("nan"), 0, 0])]),
            timeout=30)),
        ("k = 0", lambda: merger.Search(merger_pb2.SearchRequest(
            collection="pydocs", queries=[common_pb2.Vector(values=[1, 0, 0])], k=0), timeout=30)),
        ("payload not an object", lambda: merger.Upsert(merger_pb2.UpsertRequest(
            collection="pydocs", points=[common_pb2.Point(id="x", vector=[1, 0, 0], payload_json="[1]")]),
            timeout=30)),
        ("min_coverage above 1", lambda: merger.Search(merger_pb2.SearchRequest(
            collection="pydocs", queries=[common_pb2.Vector(values=[1, 0, 0])], k=1, min_coverage=1.5),
            timeout=30)),
    ]:
        try:
            call()
            expect(False, f"{name} was accepted")
        except grpc.RpcError as error:
            expect(error.code() == grpc.StatusCode.INVALID_ARGUMENT, f"{name}: {error.code()}")

    try:
        merger.DescribeCollection(merger_pb2.DescribeCollectionRequest(name="missing"), timeout=30)
        expect(False, "unknown collection was described")
    except grpc.RpcError as error:
        expect(error.code() == grpc.StatusCode.NOT_FOUND, f"unknown collection: {error.code()}")

    print("python client: all checks passed")


if __name__ == "__main__":
    main()
