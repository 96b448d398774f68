"""Arrow -> torch conversion: zero copy, shapes, sliced input, re-batching helpers."""

from __future__ import annotations

import sys

import numpy as np
import pyarrow as pa
import pytest
import torch
from client_frames import encode_frame, header, make_rows

from dpp_client.batch import Batch, JaggedTensor, batch_from_arrow, concat_batches
from dpp_client.errors import FrameError
from dpp_client.frames import decode_frame

# Read-only views are by design; dpp_client.batch silences this outside pytest, whose own
# warning capture overrides module filters.
pytestmark = pytest.mark.filterwarnings("ignore:The given buffer is not writable:UserWarning")


def _inside(t: torch.Tensor, frame: bytes) -> bool:
    start = pa.py_buffer(frame).address
    ptr = t.untyped_storage().data_ptr()
    return start <= ptr and ptr + t.numel() * t.element_size() <= start + len(frame)


def test_every_tensor_is_a_view_of_the_frame() -> None:
    frame = encode_frame(header("a", 0), make_rows(64, dense_dim=13, weight=True))
    _, rb = decode_frame(frame)
    assert rb is not None
    batch = batch_from_arrow(rb)
    assert batch.labels is not None and batch.weights is not None
    assert _inside(batch.dense, frame)
    assert batch.packed is not None  # the packed layout: 2 views for every sparse feature
    assert _inside(batch.packed.values, frame)
    # The lengths layout's one copy: offsets rebuilt once from the narrow lengths.
    assert not _inside(batch.packed.offsets, frame)
    assert batch.packed.offsets.dtype == torch.int32
    for jt in batch.sparse.values():
        assert _inside(jt.values, frame)  # offsets: a rebased B + 1 slice (a small copy)
    assert _inside(batch.labels, frame)
    assert _inside(batch.weights, frame)
    assert _inside(batch.extras["row_id"], frame)


def test_views_keep_the_frame_alive() -> None:
    frame = encode_frame(header("a", 0), make_rows(8, dense_dim=2))
    _, rb = decode_frame(frame)
    assert rb is not None
    batch = batch_from_arrow(rb)
    expected = batch.dense.clone()
    del frame, rb
    assert torch.equal(batch.dense, expected)


def test_what_docs_client_md_says_about_writes_is_true() -> None:
    """docs/client.md: an in-place write is not refused and changes the frame's bytes;
    clone() and pin-free copies are independent; to("cpu") is not a copy (issue 18)."""
    frame = encode_frame(header("a", 0), make_rows(8, dense_dim=2))
    _, rb = decode_frame(frame)
    assert rb is not None
    batch = batch_from_arrow(rb)
    original = bytes(bytearray(frame))  # bytes(frame) would be frame itself
    copy = batch.dense.clone()
    assert batch.to("cpu").dense.data_ptr() == batch.dense.data_ptr()  # no copy
    batch.dense.add_(1.0)  # nothing stops it...
    assert frame != original  # ...and it wrote into the received message
    assert torch.equal(batch.dense, copy + 1.0)
    assert not _inside(copy, frame)  # the clone is its own memory, safe to write
    copy.mul_(0.0)
    assert not torch.equal(batch.dense, copy)


def test_dense_shape_dtype_and_values() -> None:
    rb = make_rows(5, dense_dim=4)
    batch = batch_from_arrow(rb)
    assert batch.dense.dtype == torch.float32
    assert batch.dense.shape == (5, 4)
    assert torch.equal(batch.dense, torch.arange(20, dtype=torch.float32).view(5, 4))
    assert batch.dense_names == ["dense_0", "dense_1", "dense_2", "dense_3"]
    assert batch.num_rows == 5


def test_sparse_matches_arrow_lists() -> None:
    rb = make_rows(20, mean_len=4, seed=9)
    batch = batch_from_arrow(rb)
    assert list(batch.sparse) == ["s0", "s1"]
    for name, jt in batch.sparse.items():
        lists = rb.column(f"sparse.{name}").to_pylist()
        assert jt.values.dtype == torch.int64 and jt.offsets.dtype == torch.int64
        assert jt.offsets.shape == (21,)
        assert jt.lengths().tolist() == [len(x) for x in lists]
        assert jt.values.tolist() == [v for x in lists for v in x]


def test_sliced_input_rebases_offsets() -> None:
    rb = make_rows(30, dense_dim=3, seed=5)
    sliced = rb.slice(7, 11)
    batch = batch_from_arrow(sliced)
    assert batch.num_rows == 11
    assert torch.equal(batch.dense, torch.arange(7 * 3, 18 * 3, dtype=torch.float32).view(11, 3))
    assert batch.labels is not None
    assert batch.labels.tolist() == sliced.column("label").to_pylist()
    assert batch.extras["row_id"].tolist() == list(range(7, 18))
    for name, jt in batch.sparse.items():
        lists = sliced.column(f"sparse.{name}").to_pylist()
        assert int(jt.offsets[0]) == 0
        assert jt.lengths().tolist() == [len(x) for x in lists]
        assert jt.values.tolist() == [v for x in lists for v in x]


def test_sliced_values_stay_views() -> None:
    frame = encode_frame(header("a", 0), make_rows(50, seed=2))
    _, rb = decode_frame(frame)
    assert rb is not None
    batch = batch_from_arrow(rb.slice(10, 20))
    assert _inside(batch.dense, frame)
    for jt in batch.sparse.values():
        assert jt.values.numel() == 0 or _inside(jt.values, frame)


def test_no_dense_column_gives_zero_width() -> None:
    batch = batch_from_arrow(make_rows(6, dense_dim=0))
    assert batch.dense.shape == (6, 0)
    assert batch.num_rows == 6
    assert batch.dense_names == []


def test_empty_batch() -> None:
    batch = batch_from_arrow(make_rows(0))
    assert batch.num_rows == 0
    assert batch.sparse["s0"].offsets.tolist() == [0]
    assert batch.sparse["s0"].values.numel() == 0


def test_all_empty_lists() -> None:
    rb = make_rows(4, mean_len=0)
    batch = batch_from_arrow(rb)
    assert batch.sparse["s0"].offsets.tolist() == [0, 0, 0, 0, 0]
    assert batch.sparse["s0"].values.numel() == 0


def test_float_label_nulls_become_nan() -> None:
    rb = make_rows(3)
    idx = rb.schema.get_field_index("label")
    rb = rb.set_column(idx, "label", pa.array([1.0, None, 0.0], type=pa.float32()))
    batch = batch_from_arrow(rb)
    assert batch.labels is not None
    assert batch.labels[0] == 1.0 and torch.isnan(batch.labels[1])


def test_integer_extra_with_nulls_reads_zero_and_is_marked_invalid() -> None:
    rb = make_rows(3)
    idx = rb.schema.get_field_index("extra.row_id")
    rb = rb.set_column(idx, "extra.row_id", pa.array([1, None, 3], type=pa.int64()))
    batch = batch_from_arrow(rb)
    assert batch.extras["row_id"].tolist() == [1, 0, 3]
    assert batch.extras_valid["row_id"].tolist() == [True, False, True]


def test_wrong_sparse_type_is_rejected() -> None:
    rb = make_rows(2)
    idx = rb.schema.get_field_index("sparse.s0")
    rb = rb.set_column(idx, "sparse.s0", pa.array([[1.0], [2.0]], type=pa.list_(pa.float64())))
    with pytest.raises(FrameError, match="expected a list of int32 or int64 ids"):
        batch_from_arrow(rb)


def test_string_extra_stays_arrow() -> None:
    rb = make_rows(2).append_column("extra.user", pa.array(["a", None], pa.large_string()))
    batch = batch_from_arrow(rb)
    assert "user" not in batch.extras and "row_id" in batch.extras
    assert batch.extras_arrow["user"].to_pylist() == ["a", None]
    assert batch.extras_valid["row_id"].tolist() == [True, True]


def test_concat_of_partials() -> None:
    parts = [make_rows(n, row_id_start=s, seed=s) for n, s in ((3, 0), (5, 3), (2, 8))]
    combined = concat_batches(parts)
    assert combined.num_rows == 10
    assert combined.schema.metadata == parts[0].schema.metadata
    assert combined.column("extra.row_id").to_pylist() == list(range(10))
    batch = batch_from_arrow(combined)
    assert batch.sparse["s1"].values.tolist() == [
        v for p in parts for x in p.column("sparse.s1").to_pylist() for v in x
    ]
    assert torch.equal(batch.dense, torch.arange(30, dtype=torch.float32).view(10, 3))


def test_concat_needs_input() -> None:
    with pytest.raises(ValueError, match="at least one"):
        concat_batches([])


def test_jagged_to_and_lengths() -> None:
    jt = JaggedTensor(torch.tensor([1, 2, 3]), torch.tensor([0, 2, 2, 3]))
    moved = jt.to("cpu")
    assert moved.lengths().tolist() == [2, 0, 1]


def test_batch_to_copies_into_writable_memory() -> None:
    batch = batch_from_arrow(make_rows(4))
    moved = batch.to("cpu")
    assert isinstance(moved, Batch)
    assert torch.equal(moved.dense, batch.dense)
    assert moved.sparse.keys() == batch.sparse.keys()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinning needs CUDA")
def test_pin_memory() -> None:
    pinned = batch_from_arrow(make_rows(4)).pin_memory()
    assert pinned.dense.is_pinned()
    assert pinned.sparse["s0"].values.is_pinned()


def test_to_kjt_without_torchrec_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torchrec", None)
    monkeypatch.setitem(sys.modules, "torchrec.sparse", None)
    monkeypatch.setitem(sys.modules, "torchrec.sparse.jagged_tensor", None)
    with pytest.raises(ImportError, match=r"pip install fbgemm-gpu-cpu==1.8.0"):
        batch_from_arrow(make_rows(2)).to_kjt()


def test_large_batch_matches_numpy() -> None:
    rb = make_rows(4096, dense_dim=13, sparse_names=tuple(f"f{i}" for i in range(4)), seed=1)
    batch = batch_from_arrow(rb)
    np.testing.assert_array_equal(
        batch.dense.numpy(), rb.column("dense").flatten().to_numpy().reshape(4096, 13)
    )
