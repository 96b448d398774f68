"""The client side of RecD deduplication: InverseKeyedJaggedTensor, Batch.expand, re-batching of
deduplicated frames in the assembler, the example DLRM pooling unique rows, and TorchRec's
KeyedJaggedTensor with inverse indices (skipped when torchrec is not installed)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pyarrow as pa
import pytest
import torch

from dpp_client.assembler import EpochAssembler
from dpp_client.batch import Batch, InverseKeyedJaggedTensor, JaggedTensor, batch_from_arrow
from dpp_client.errors import FrameError
from dpp_client.examples.dlrm import DLRM
from dpp_client.frames import decode_frame
from dpp_client.spec import Feature, Op, SessionSpec
from dpp_proto import worker_pb2
from dpp_proto.wire import FrameEncoder
from dpp_server.spec import spec_from_proto
from dpp_server.transforms import FeaturePipeline
from dpp_server.transforms.dedup import DedupPipeline

BUCKETS = 64


def session_table(rows: int, per_session: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    sessions = np.arange(rows) // per_session
    user = [[int(s) % 7, int(s) * 3 % 11] if s % 5 else [] for s in sessions]
    return pa.table(
        {
            "row_id": pa.array(np.arange(rows, dtype=np.int64)),
            "dense_0": pa.array(rng.random(rows, dtype=np.float32)),
            "user_a": pa.array(user, pa.list_(pa.int64())),
            "user_b": pa.array(sessions % 13, pa.int64()),
            "item": pa.array([[int(i), int(i) + 1] for i in rng.integers(0, 99, rows)]),
            "label": pa.array(rng.integers(0, 2, rows).astype(np.int8)),
        }
    )


def spec_of(group: str, batch_size: int) -> SessionSpec:
    hashed = (Op("sigrid_hash", {"max_value": BUCKETS}),)
    return SessionSpec(
        table_uri="mem://t",
        features=(
            Feature("d0", "dense", source="dense_0"),
            Feature("ua", "sparse", source="user_a", ops=hashed, dedup_group=group),
            Feature("item", "sparse", ops=hashed),
            Feature("ub", "sparse", source="user_b", ops=hashed, dedup_group=group),
        ),
        label="label",
        passthrough=("row_id",),
        batch_size=batch_size,
    )


def frames(table: pa.Table, batch_size: int, split: str, group: str = "user") -> list[bytes]:
    """A split's frames as a worker sends them (short last batch, then the end frame)."""
    pipeline = DedupPipeline(spec_from_proto(spec_of(group, batch_size).to_proto()), table.schema)
    wire = pipeline.apply(table)
    encoder = FrameEncoder()
    out = []
    seq = 0
    for seq, start in enumerate(range(0, wire.num_rows, batch_size)):
        rows, sections = pipeline.finish(wire.slice(start, batch_size))
        header = worker_pb2.FrameHeader(split_id=split, batch_seq=seq, num_rows=rows.num_rows)
        out.append(encoder.encode(header, rows, sections))
    end = worker_pb2.FrameHeader(split_id=split, batch_seq=seq + 1, last_in_split=True)
    out.append(FrameEncoder.encode_empty(end))
    return out


def plain(table: pa.Table) -> Batch:
    spec = spec_from_proto(spec_of("", 1).to_proto())
    return batch_from_arrow(FeaturePipeline(spec, table.schema).apply(table))


def decoded(frame: bytes) -> Batch:
    _, rb = decode_frame(frame)
    assert rb is not None
    return batch_from_arrow(rb)


def test_batch_exposes_the_group_as_an_ikjt() -> None:
    table = session_table(40, 10)
    batch = decoded(frames(table, 40, "a")[0])
    assert list(batch.sparse) == ["item"]
    assert batch.sparse_names == ["ua", "item", "ub"]
    ikjt = batch.dedup["user"]
    assert ikjt.keys() == ["ua", "ub"]
    assert ikjt.num_rows == 40 and ikjt.num_unique == 4
    assert ikjt.inverse_indices.dtype == torch.int32
    assert ikjt.inverse_indices.tolist() == [i // 10 for i in range(40)]
    expanded = batch.expand()
    assert list(expanded.sparse) == ["ua", "item", "ub"]
    want = plain(table)
    for name in want.sparse:
        assert torch.equal(expanded.sparse[name].values, want.sparse[name].values)
        assert torch.equal(expanded.sparse[name].offsets, want.sparse[name].offsets)


def test_jagged_take_handles_empty_rows() -> None:
    jt = JaggedTensor(torch.tensor([1, 2, 3]), torch.tensor([0, 2, 2, 3]))
    out = jt.take(torch.tensor([2, 1, 0, 1, 2], dtype=torch.int32))
    assert out.values.tolist() == [3, 1, 2, 3]
    assert out.offsets.tolist() == [0, 1, 1, 3, 3, 4]
    empty = jt.take(torch.tensor([1, 1], dtype=torch.int32))
    assert empty.values.tolist() == [] and empty.offsets.tolist() == [0, 0, 0]


def test_assembler_rebatches_deduplicated_short_batches() -> None:
    table_a = session_table(25, 4, seed=1)
    table_b = session_table(18, 3, seed=2)
    table_b = table_b.set_column(0, "row_id", pa.array(np.arange(100, 118, dtype=np.int64)))
    assembler: EpochAssembler[Batch] = EpochAssembler(batch_size=10)
    assembler.begin_epoch(0, ["A", "B"])
    ready = []
    for frame in frames(table_a, 10, "A") + frames(table_b, 10, "B"):
        header, rb = decode_frame(frame)
        header.epoch = 0
        ready.extend(assembler.push(header, rb))
    assert assembler.done
    got = [batch_from_arrow(r.rb).expand() for r in ready]
    assert [b.num_rows for b in got] == [10, 10, 10, 10, 3]
    want_all = plain(pa.concat_tables([table_a, table_b]))
    index = {int(r): i for i, r in enumerate(want_all.extras["row_id"])}
    for batch in got:
        rows = torch.tensor([index[int(r)] for r in batch.extras["row_id"]])
        want = JaggedTensor(want_all.sparse["ua"].values, want_all.sparse["ua"].offsets).take(rows)
        assert torch.equal(batch.sparse["ua"].values, want.values)
        assert torch.equal(batch.sparse["ua"].offsets, want.offsets)
    merged = batch_from_arrow(ready[2].rb)  # A's 5-row remainder + B's first rows
    assert merged.dedup["user"].num_unique <= 10
    assert int(merged.dedup["user"].inverse_indices.max()) < merged.dedup["user"].num_unique


def test_example_dlrm_on_unique_rows_equals_the_expanded_batch() -> None:
    table = session_table(64, 8)
    batch = decoded(frames(table, 64, "a")[0])
    torch.manual_seed(0)
    model = DLRM(num_dense=1, sparse_names=batch.sparse_names, num_embeddings=BUCKETS)
    with torch.no_grad():
        deduplicated = model(batch)
        expanded = model(batch.expand())
    assert torch.equal(deduplicated, expanded)


def test_out_of_range_inverse_is_a_frame_error() -> None:
    table = session_table(20, 10)
    pipeline = DedupPipeline(spec_from_proto(spec_of("user", 20).to_proto()), table.schema)
    rows, sections = pipeline.finish(pipeline.apply(table))
    column = rows.schema.get_field_index("dedup.user.inverse")
    bad = rows.set_column(column, "dedup.user.inverse", pa.array([5] * 20, pa.int32()))
    frame = FrameEncoder().encode(worker_pb2.FrameHeader(split_id="x", num_rows=20), bad, sections)
    with pytest.raises(FrameError, match="bad inverse of dedup group 'user'"):
        decode_frame(frame)


def test_ikjt_to_copies() -> None:
    ikjt = InverseKeyedJaggedTensor(
        unique={"a": JaggedTensor(torch.tensor([4, 5]), torch.tensor([0, 1, 2]))},
        inverse_indices=torch.tensor([1, 0, 1], dtype=torch.int32),
    )
    moved = ikjt.to("cpu")
    assert moved.to_jagged()["a"].values.tolist() == [5, 4, 5]
    assert moved["a"].offsets.tolist() == [0, 1, 2]


@pytest.mark.skipif(
    importlib.util.find_spec("torchrec") is None, reason="torchrec (optional extra) not installed"
)
def test_torchrec_kjt_carries_inverse_indices() -> None:
    from torchrec.modules.embedding_configs import EmbeddingBagConfig
    from torchrec.modules.embedding_modules import EmbeddingBagCollection

    table = session_table(48, 6)
    batch = decoded(frames(table, 48, "a")[0])
    kjt = batch.to_kjt()
    assert kjt.keys() == ["ua", "item", "ub"]
    keys, inverse = kjt.inverse_indices()
    assert keys == ["ua", "item", "ub"] and list(inverse.shape) == [3, 48]
    assert kjt.stride_per_key() == [8, 48, 8]
    torch.manual_seed(0)
    ebc = EmbeddingBagCollection(
        tables=[
            EmbeddingBagConfig(
                name=f"t_{n}", embedding_dim=4, num_embeddings=BUCKETS, feature_names=[n]
            )
            for n in batch.sparse_names
        ]
    )
    with torch.no_grad():
        pooled_unique = ebc(kjt).values()
        pooled_plain = ebc(batch.to_kjt(expand=True)).values()
    assert list(pooled_unique.shape) == [48, 12]
    assert torch.equal(pooled_unique, pooled_plain)
