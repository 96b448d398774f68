"""Row sampling through the pipeline: deterministic per key, the right share, weights 1/rate."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from dpp_proto import spec_pb2
from dpp_server.spec import spec_from_proto
from dpp_server.transforms import FeaturePipeline
from tests.helpers.oracle import hash_ids, string_hash, unit

N = 20_000


def table(key: pa.Array | None = None) -> pa.Table:
    rng = np.random.default_rng(4)
    label = (rng.random(N) < 0.1).astype(np.float32)
    label_arr = pa.array(label, mask=rng.random(N) < 0.01)  # a null label counts as negative
    return pa.table(
        {
            "row_id": key if key is not None else pa.array(np.arange(N, dtype=np.int64)),
            "x": pa.array(rng.random(N).astype(np.float32)),
            "label": label_arr,
            "w": pa.array(np.full(N, 2.0, dtype=np.float32)),
        }
    )


def pipeline(**fields: object) -> FeaturePipeline:
    msg = spec_pb2.SessionSpec(
        table_uri="/t",
        batch_size=1,
        features=[{"name": "x", "kind": spec_pb2.FEATURE_KIND_DENSE}],
        label="label",
        passthrough=["row_id"],
        sample_key="row_id",
        **fields,  # type: ignore[arg-type]
    )
    return FeaturePipeline(spec_from_proto(msg))


def test_negative_downsampling_keeps_positives_and_weights_negatives() -> None:
    rows = table()
    out = pipeline(negative_downsample_rate=0.25, seed=9, weight="w").apply(rows)
    label = np.nan_to_num(rows.column("label").to_numpy(zero_copy_only=False), nan=0.0)
    ids = out.column("extra.row_id").to_numpy()
    want = [
        i for i in range(N) if label[i] != 0 or unit(hash_ids([i], 10)) < 0.25
    ]  # salt seed + 1 for negatives
    assert ids.tolist() == want
    weight = out.column("weight").to_numpy()
    kept_label = out.column("label").to_numpy()
    assert weight.dtype == np.float32
    assert np.all(weight[kept_label != 0] == 2.0)
    assert np.all(weight[kept_label == 0] == np.float32(2.0) * np.float32(4.0))
    negatives = int((label == 0).sum())
    assert abs((kept_label == 0).sum() / negatives - 0.25) < 0.02


def test_uniform_sampling_is_deterministic_and_unweighted() -> None:
    rows = table()
    spec_pipeline = pipeline(sample_rate=0.3, seed=1)
    first = spec_pipeline.apply(rows).column("extra.row_id").to_pylist()
    assert first == [i for i in range(N) if unit(hash_ids([i], 1)) < 0.3]
    # Another worker, another chunking: the same rows.
    again = pipeline(sample_rate=0.3, seed=1)
    halves = [again.apply(rows.slice(0, 7_000)), again.apply(rows.slice(7_000))]
    assert [
        *halves[0].column("extra.row_id").to_pylist(),
        *halves[1].column("extra.row_id").to_pylist(),
    ] == first
    assert "weight" not in spec_pipeline.wire_schema.names
    assert abs(len(first) / N - 0.3) < 0.02


def test_string_keys_and_null_keys() -> None:
    keys = [None if i % 10 == 0 else f"user-{i % 500}" for i in range(N)]
    rows = table(pa.array(keys))
    out = pipeline(sample_rate=0.5).apply(rows)

    def kept(k: str | None) -> bool:
        return unit(hash_ids([0 if k is None else string_hash(k, 0)], 0)) < 0.5

    assert out.column("extra.row_id").to_pylist() == [k for k in keys if kept(k)]


def test_both_rates_and_empty_result() -> None:
    rows = table()
    out = pipeline(sample_rate=0.5, negative_downsample_rate=0.5).apply(rows)
    label = np.nan_to_num(rows.column("label").to_numpy(zero_copy_only=False), nan=0.0)
    want = [
        i
        for i in range(N)
        if unit(hash_ids([i], 0)) < 0.5 and (label[i] != 0 or unit(hash_ids([i], 1)) < 0.5)
    ]
    assert out.column("extra.row_id").to_pylist() == want
    tiny = pipeline(sample_rate=1e-9).apply(rows.slice(1, 10))  # key 0 draws u = 0.0
    assert tiny.num_rows == 0 and tiny.schema.names == ["dense", "label", "extra.row_id"]


def test_rate_one_keeps_everything() -> None:
    out = pipeline(sample_rate=1.0, negative_downsample_rate=1.0).apply(table().slice(0, 50))
    assert out.num_rows == 50 and "weight" not in out.schema.names
