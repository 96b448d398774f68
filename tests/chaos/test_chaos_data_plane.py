"""Chaos on the data plane (dpp_proto/data_plane.py): workers SIGKILLed while their frames
stream over TCP/TLS; every row arrives exactly once and, in deterministic mode, the batch
sequence equals the undisturbed run's. The other chaos tests run on the data plane too (the
loader's default transport); this one checks that the streams really used it."""

from __future__ import annotations

import logging
import random

import pytest
from chaos_helpers import ClusterFactory, assert_exactly_once, chaos_spec, signature

from dpp_client import DppLoader
from dpp_proto import master_pb2, master_pb2_grpc
from dpp_proto.auth import load_connection, open_channel

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

Reference = list[list[tuple[tuple[int, ...], str]]]


def test_workers_killed_mid_stream_on_the_data_plane(
    make_cluster: ClusterFactory,
    small_table: str,
    reference: Reference,
    caplog: pytest.LogCaptureFixture,
) -> None:
    rng = random.Random(15)
    cluster = make_cluster(workers=2)
    with open_channel(cluster.master_address, load_connection()) as link:
        stub = master_pb2_grpc.MasterServiceStub(link)
        listed = stub.ListWorkers(master_pb2.ListWorkersRequest(), timeout=10).workers
    assert len(listed) == 2 and all(w.data_address for w in listed), listed
    kill_at = set(rng.sample(range(2, 28), 2))
    got = []
    with (
        caplog.at_level(logging.INFO, logger="dpp_client.fan_in"),
        DppLoader(
            cluster.master_address, chaos_spec(small_table, epochs=1), prefetch_batches=4
        ) as loader,
    ):
        assert loader.transport == "auto"
        for i, batch in enumerate(loader):
            got.append(signature(batch))
            if i in kill_at:
                cluster.kill_worker(rng.choice(cluster.live_workers))
                cluster.add_worker()
    assert_exactly_once(got)
    assert got == reference[0]
    planes = [r.getMessage() for r in caplog.records if "streaming from worker" in r.getMessage()]
    assert planes and all(m.endswith("(data plane)") for m in planes), planes


def test_transport_grpc_gives_the_same_sequence(
    make_cluster: ClusterFactory,
    small_table: str,
    reference: Reference,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cluster = make_cluster(workers=2)
    with (
        caplog.at_level(logging.INFO, logger="dpp_client.fan_in"),
        DppLoader(
            cluster.master_address, chaos_spec(small_table, epochs=1), transport="grpc"
        ) as loader,
    ):
        got = [signature(b) for b in loader]
    assert got == reference[0]
    planes = [r.getMessage() for r in caplog.records if "streaming from worker" in r.getMessage()]
    assert planes and all(m.endswith("(gRPC)") for m in planes), planes
