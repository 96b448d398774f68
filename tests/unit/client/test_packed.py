"""The packed (KeyedJaggedTensor) layout on the client: 2 tensor views for every plain sparse
feature, ``sparse[name]`` slices equal to the per-feature layout's views, int32 ids unless
``int64_ids``, and a zero-copy ``to_kjt()`` equal to TorchRec's KJT built from the per-feature
tensors (skipped when torchrec is not installed)."""

from __future__ import annotations

import importlib.util

import pyarrow as pa
import pytest
import torch
from client_frames import header, make_rows

from dpp_client.batch import Batch, batch_from_arrow, concat_batches
from dpp_client.frames import decode_frame
from dpp_proto.wire import FrameEncoder, WireOptions

pytestmark = pytest.mark.filterwarnings("ignore:The given buffer is not writable:UserWarning")

NAMES = ("s0", "s1", "s2")
NARROW = WireOptions(int32_features=frozenset(NAMES))
has_torchrec = importlib.util.find_spec("torchrec") is not None


def decoded(options: WireOptions, rows: int = 16, seq: int = 0) -> tuple[bytes, pa.RecordBatch]:
    rb = make_rows(rows, sparse_names=NAMES, seed=seq)
    h = header("a", seq, num_rows=rows)
    frame = FrameEncoder(options).encode(h, rb)
    _, got = decode_frame(frame)
    assert got is not None
    return frame, got


def batches() -> tuple[Batch, Batch]:
    """The same rows sent packed with int32 ids, and in the per-feature layout."""
    _, packed = decoded(NARROW)
    _, plain = decoded(WireOptions(packed=False))
    return batch_from_arrow(packed), batch_from_arrow(plain)


def test_packed_batch_views_the_frame_once_and_slices_equal_the_per_feature_views() -> None:
    packed, plain = batches()
    assert packed.packed is not None and plain.packed is None
    assert packed.packed.keys == list(NAMES)
    assert packed.packed.values.dtype == torch.int32
    assert packed.packed.offsets.dtype == torch.int32
    assert packed.packed.offsets.shape == (len(NAMES) * 16 + 1,)
    assert list(packed.sparse) == list(plain.sparse) == list(NAMES)
    for name in NAMES:
        got, want = packed.sparse[name], plain.sparse[name]
        assert got.values.dtype == torch.int32 and want.values.dtype == torch.int64
        assert torch.equal(got.values.long(), want.values)
        assert torch.equal(got.offsets.long(), want.offsets)
        assert torch.equal(got.lengths().long(), want.lengths())
    values_ptr = packed.packed.values.untyped_storage().data_ptr()
    assert packed.sparse["s1"].values.untyped_storage().data_ptr() == values_ptr  # a view


def test_int64_ids_converts_on_request() -> None:
    _, rb = decoded(NARROW)
    batch = batch_from_arrow(rb, int64_ids=True)
    assert batch.packed is not None
    assert batch.packed.values.dtype == torch.int64 and batch.packed.offsets.dtype == torch.int64
    assert all(jt.values.dtype == torch.int64 for jt in batch.sparse.values())
    assert torch.equal(batch.sparse["s2"].values, batches()[1].sparse["s2"].values)


def test_unbounded_features_keep_int64_ids() -> None:
    _, rb = decoded(WireOptions(int32_features=frozenset({"s0"})))  # s1, s2 unbounded
    batch = batch_from_arrow(rb)
    assert batch.packed is not None and batch.packed.values.dtype == torch.int64
    assert batch.packed.offsets.dtype == torch.int32


def test_rebatched_remainders_fall_back_to_per_feature_views() -> None:
    _, first = decoded(NARROW, rows=5, seq=1)
    _, second = decoded(NARROW, rows=3, seq=2)
    joined = batch_from_arrow(concat_batches([first, second]))
    assert joined.packed is None  # the concatenation copied each column on its own
    _, plain_first = decoded(WireOptions(packed=False), rows=5, seq=1)
    _, plain_second = decoded(WireOptions(packed=False), rows=3, seq=2)
    reference = batch_from_arrow(concat_batches([plain_first, plain_second]))
    for name in NAMES:
        assert torch.equal(joined.sparse[name].values.long(), reference.sparse[name].values)
        assert torch.equal(joined.sparse[name].offsets.long(), reference.sparse[name].offsets)


def test_to_moves_two_tensors_and_keeps_the_slices() -> None:
    packed, plain = batches()
    moved = packed.to("cpu")
    assert moved.packed is not None and moved.packed.keys == list(NAMES)
    for name in NAMES:
        assert torch.equal(moved.sparse[name].values.long(), plain.sparse[name].values)


@pytest.mark.skipif(not has_torchrec, reason="torchrec is not installed")
def test_to_kjt_is_zero_copy_and_equals_torchrec_built_from_the_features() -> None:
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    packed, plain = batches()
    kjt = packed.to_kjt()
    assert packed.packed is not None
    assert kjt.values().data_ptr() == packed.packed.values.data_ptr()  # no copy
    reference = KeyedJaggedTensor.from_lengths_sync(
        keys=list(NAMES),
        values=torch.cat([plain.sparse[n].values for n in NAMES]),
        lengths=torch.cat([plain.sparse[n].lengths() for n in NAMES]),
    )
    assert kjt.keys() == reference.keys()
    assert torch.equal(kjt.values().long(), reference.values())
    assert torch.equal(kjt.lengths().long(), reference.lengths())
    assert torch.equal(kjt.offsets().long(), reference.offsets())
    for name in NAMES:
        assert torch.equal(kjt[name].values().long(), reference[name].values())
    # and TorchRec's embedding modules take the int32 KJT as it is
    from torchrec.modules.embedding_configs import EmbeddingBagConfig
    from torchrec.modules.embedding_modules import EmbeddingBagCollection

    tables = [
        EmbeddingBagConfig(name=f"t_{n}", embedding_dim=4, num_embeddings=4000, feature_names=[n])
        for n in NAMES
    ]
    ebc = EmbeddingBagCollection(tables=tables)
    pooled = ebc(kjt).values()
    assert torch.allclose(pooled, ebc(reference).values())


def test_batches_whose_schemas_differ_only_in_metadata_read_their_own_names() -> None:
    """batch_from_arrow reads a schema once and remembers it; a batch whose metadata names
    other features (same columns, same types) must not get the first one's names."""
    _, first = decoded(NARROW)
    renamed = first.replace_schema_metadata(
        {
            **first.schema.metadata,
            b"dpp.dense": b'["a", "b", "c"]',
            b"dpp.sparse": b'["s2", "s1", "s0"]',
        }
    )
    for _ in range(2):  # the second round reads from what the first remembered
        a, b = batch_from_arrow(first), batch_from_arrow(renamed)
        assert a.dense_names == ["dense_0", "dense_1", "dense_2"] and b.dense_names == [
            "a",
            "b",
            "c",
        ]
        assert a.sparse_names == list(NAMES) and b.sparse_names == ["s2", "s1", "s0"]
        for name in NAMES:
            assert torch.equal(a.sparse[name].values, b.sparse[name].values)
