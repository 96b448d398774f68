"""The worker with dedup groups: per-batch deduplicated frames, and session-granular shuffling."""

from __future__ import annotations

import collections
import itertools

import pyarrow.compute as pc
import pyarrow.dataset as ds
import torch

from dpp_client.batch import batch_from_arrow
from dpp_client.frames import decode_frame
from dpp_proto import spec_pb2
from dpp_server.master import Master
from dpp_server.worker import Worker, WorkerConfig
from tests.helpers.server import InProcessLink, make_spec


def dedup_spec(table: str, shuffle: bool) -> spec_pb2.SessionSpec:
    spec = make_spec(table, batch_size=700, shuffle=shuffle, seed=3)
    for i in (0, 1):
        spec.features.add(
            name=f"u{i}",
            source=f"sparse_{i}",
            kind=spec_pb2.FEATURE_KIND_SPARSE,
            dedup_group="user",
        )
    spec.features.add(name="s3", source="sparse_3", kind=spec_pb2.FEATURE_KIND_SPARSE)
    return spec


def run_epoch(table: str, shuffle: bool) -> list[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    master = Master()
    view, _ = master.create_session(dedup_spec(table, shuffle))
    split_ids, _ = master.begin_epoch(view.session_id, 0, 0)
    worker = Worker(InProcessLink(master), "inproc:0", WorkerConfig(read_batch_rows=1500))
    worker.start()
    out = []
    try:
        buffer = worker.buffer(view.session_id, 0)
        ended = 0
        while ended < len(split_ids):
            frame = buffer.get(10.0)
            assert frame is not None, "the worker stalled"
            header, rows = decode_frame(frame)
            assert not header.error
            if rows is None:
                ended += 1
                continue
            batch = batch_from_arrow(rows)
            assert batch.dedup["user"].num_unique < batch.num_rows
            expanded = batch.expand()
            out.append(
                (batch.extras["row_id"], {n: expanded.sparse[n].values for n in ("u0", "u1")})
            )
    finally:
        worker.stop()
    return out


def test_worker_frames_expand_to_the_table_rows(small_table: str) -> None:
    rows = ds.dataset(small_table, partitioning="hive").to_table(
        columns=["row_id", "sparse_0", "sparse_1"]
    )
    by_id = {int(r): i for i, r in enumerate(rows.column("row_id").to_pylist())}
    for shuffle in (False, True):
        seen: list[int] = []
        for row_ids, values in run_epoch(small_table, shuffle):
            index = [by_id[int(r)] for r in row_ids]
            for name, column in (("u0", "sparse_0"), ("u1", "sparse_1")):
                want = pc.list_flatten(rows.column(column).take(index)).to_numpy()
                assert values[name].tolist() == want.tolist()
            seen.extend(int(r) for r in row_ids)
        assert sorted(seen) == list(range(24_000))
        if shuffle:
            # Sessions stay whole: each session's rows are consecutive row ids in the table.
            runs = collections.Counter(b - a for a, b in itertools.pairwise(seen))
            assert runs[1] > len(seen) / 2
