"""Unit tests of dpp_server.spec: structural validation, schema checks, proto round trip."""

from __future__ import annotations

import dataclasses
from typing import Any

import pyarrow as pa
import pytest

from dpp_proto import spec_pb2
from dpp_proto.defaults import SPEC_ZERO_MEANS
from dpp_server.errors import SpecError
from dpp_server.spec import (
    DEFAULT_TARGET_SPLIT_ROWS,
    Feature,
    OpCall,
    Spec,
    check_against_schema,
    spec_from_proto,
    spec_to_proto,
)
from dpp_server.transforms import registered_ops

DENSE = spec_pb2.FEATURE_KIND_DENSE
SPARSE = spec_pb2.FEATURE_KIND_SPARSE


def valid_proto(**overrides: Any) -> spec_pb2.SessionSpec:
    """A spec using every field and op, with every op param written out."""
    fields: dict[str, Any] = {
        "table_uri": "s3://bucket/table",
        "storage_options": {"endpoint_url": "http://127.0.0.1:9000"},
        "partition_filter": "ds >= '2026-01-02'",
        "row_filter": "dense_0 > 0",
        "features": [
            {
                "name": "d0",
                "source": "dense_0",
                "kind": DENSE,
                "ops": [
                    {"op": "fill_null", "params": {"value": 1.5}},
                    {"op": "clamp", "params": {"min": 0.0, "max": 100.0}},
                    {"op": "log1p"},
                ],
            },
            {"name": "d1", "source": "dense_1", "kind": DENSE},
            {
                "name": "s0",
                "source": "sparse_0",
                "kind": SPARSE,
                "ops": [
                    {"op": "first_x", "params": {"x": 20}},
                    {"op": "sigrid_hash", "params": {"salt": 7, "max_value": 1000}},
                ],
                "dedup_group": "user",
            },
        ],
        "label": "label",
        "weight": "w",
        "passthrough": ["row_id"],
        "batch_size": 4096,
        "epochs": 3,
        "seed": 42,
        "world_size": 2,
        "target_split_rows": 100_000,
        "shuffle": True,
        "negative_downsample_rate": 0.5,
        "sample_rate": 0.75,
        "sample_key": "row_id",
        "dedup_min_share": 0.25,
    }
    fields.update(overrides)
    return spec_pb2.SessionSpec(**fields)


def schema(**overrides: pa.DataType) -> pa.Schema:
    types: dict[str, pa.DataType] = {
        "dense_0": pa.float32(),
        "dense_1": pa.int64(),
        "sparse_0": pa.list_(pa.int64()),
        "label": pa.float64(),
        "w": pa.float32(),
        "row_id": pa.string(),
        "ds": pa.string(),
    }
    types.update(overrides)
    return pa.schema(list(types.items()))


def feature(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"name": "f", "kind": DENSE}
    base.update(fields)
    return base


def rejects(msg: spec_pb2.SessionSpec) -> SpecError:
    with pytest.raises(SpecError) as info:
        spec_from_proto(msg)
    return info.value


# --- happy path ---------------------------------------------------------------------------


def test_valid_spec_round_trips_proto_spec_proto() -> None:
    msg = valid_proto()
    msg.max_splits_in_flight = 8  # the default, written out by spec_to_proto
    spec = spec_from_proto(msg)
    assert spec_to_proto(spec) == msg
    assert spec_from_proto(spec_to_proto(spec)) == spec


def test_spec_fields_and_properties() -> None:
    spec = spec_from_proto(valid_proto())
    assert [f.name for f in spec.dense_features] == ["d0", "d1"]
    assert [f.name for f in spec.sparse_features] == ["s0"]
    assert spec.input_columns == ("dense_0", "dense_1", "sparse_0", "label", "w", "row_id")
    assert spec.features[0].ops[1].params == {"min": 0.0, "max": 100.0}
    assert spec.features[2].ops[1].params == {"salt": 7, "max_value": 1000}
    assert isinstance(spec.features[2].ops[1].params["max_value"], int)
    assert dict(spec.storage_options) == {"endpoint_url": "http://127.0.0.1:9000"}


def test_spec_is_frozen() -> None:
    spec = spec_from_proto(valid_proto())
    with pytest.raises(AttributeError):
        spec.batch_size = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        spec.features[0].ops[0].params["value"] = 2.0  # type: ignore[index]


def test_defaults_are_filled() -> None:
    msg = spec_pb2.SessionSpec(
        table_uri="/data/t",
        batch_size=1,
        features=[
            {
                "name": "d0",
                "kind": DENSE,
                "ops": [{"op": "fill_null"}, {"op": "clamp", "params": {"max": 5.0}}],
            },
            {
                "name": "s0",
                "kind": SPARSE,
                "ops": [{"op": "sigrid_hash", "params": {"max_value": 10}}],
            },
        ],
    )
    spec = spec_from_proto(msg)
    assert (spec.epochs, spec.world_size, spec.target_split_rows) == (
        1,
        1,
        DEFAULT_TARGET_SPLIT_ROWS,
    )
    assert spec.features[0].source == "d0"
    assert spec.features[0].ops[0].params == {"value": 0.0}
    assert spec.features[0].ops[1].params == {"min": None, "max": 5.0}
    assert spec.features[1].ops[0].params == {"salt": 0, "max_value": 10}
    assert spec.input_columns == ("d0", "s0")
    # Defaults are written out, so the round trip from the Spec side is exact.
    assert spec_from_proto(spec_to_proto(spec)) == spec


def test_input_columns_dedupes_in_first_seen_order() -> None:
    msg = valid_proto(
        features=[
            {"name": "a", "source": "x", "kind": DENSE},
            {"name": "b", "source": "x", "kind": DENSE},
            {"name": "c", "source": "label", "kind": DENSE},
        ],
        passthrough=["x", "row_id"],
    )
    assert spec_from_proto(msg).input_columns == ("x", "label", "w", "row_id")


def test_schema_check_accepts_matching_table() -> None:
    spec = spec_from_proto(valid_proto())
    check_against_schema(spec, schema())
    check_against_schema(spec, schema(dense_0=pa.bool_(), sparse_0=pa.large_list(pa.uint8())))
    # A plain integer column feeds a sparse feature as a one-id list.
    check_against_schema(spec, schema(sparse_0=pa.uint64()))


# --- structural rejections ----------------------------------------------------------------


def test_missing_table_uri() -> None:
    err = rejects(valid_proto(table_uri=""))
    assert err.field == "table_uri"
    assert str(err) == (
        "table_uri: is required; set it to the path or s3:// URI of a Parquet or ORC table, "
        "or to iceberg://<catalog>/<namespace>.<table>"
    )


def test_batch_size_zero() -> None:
    err = rejects(valid_proto(batch_size=0))
    assert err.field == "batch_size"
    assert str(err) == (
        "batch_size: is 0 (not set); a batch must hold at least one row; "
        "set batch_size between 1 and 1048576"
    )


def test_batch_size_too_large() -> None:
    err = rejects(valid_proto(batch_size=1_048_577))
    assert err.field == "batch_size"
    assert err.problem == "1048577 is above the limit of 1048576"


def test_no_features() -> None:
    err = rejects(valid_proto(features=[]))
    assert err.field == "features"
    assert err.problem == "at least one feature is required"


def test_duplicate_feature_name() -> None:
    err = rejects(valid_proto(features=[feature(name="a"), feature(name="b"), feature(name="a")]))
    assert err.field == "features[2].name"
    assert err.problem == "duplicate feature name 'a' (also features[0])"


@pytest.mark.parametrize("name", ["", "1abc", "a-b", "a.b", "é"])
def test_bad_feature_name(name: str) -> None:
    err = rejects(valid_proto(features=[feature(name="ok"), feature(name=name)]))
    assert err.field == "features[1].name"
    expected = "is required" if not name else f"{name!r} is not a valid feature name"
    assert err.problem == expected


def test_kind_not_set() -> None:
    err = rejects(valid_proto(features=[feature(kind=spec_pb2.FEATURE_KIND_UNSPECIFIED)]))
    assert str(err) == "features[0].kind: is not set; set kind to dense or sparse"


def test_dedup_groups_are_kept_in_spec_order() -> None:
    feats = [
        feature(name="a", kind=SPARSE, dedup_group="user"),
        feature(name="b", kind=SPARSE),
        feature(name="c", kind=SPARSE, dedup_group="item"),
        feature(name="d", kind=SPARSE, dedup_group="user"),
    ]
    spec = spec_from_proto(valid_proto(features=feats))
    assert {g: [f.name for f in fs] for g, fs in spec.dedup_groups.items()} == {
        "user": ["a", "d"],
        "item": ["c"],
    }
    assert list(spec.dedup_groups) == ["user", "item"]


def test_dedup_group_on_dense_is_rejected() -> None:
    err = rejects(valid_proto(features=[feature(kind=DENSE, dedup_group="g")]))
    assert err.field == "features[0].dedup_group"
    assert err.problem == "feature 'f' is dense; only sparse features are deduplicated"


def test_dedup_group_name_is_checked() -> None:
    err = rejects(valid_proto(features=[feature(kind=SPARSE, dedup_group="9 x")]))
    assert err.field == "features[0].dedup_group"
    assert err.problem == "'9 x' is not a valid group name"


@pytest.mark.parametrize("share", [-0.1, 1.0, float("nan")])
def test_dedup_min_share_range(share: float) -> None:
    err = rejects(valid_proto(dedup_min_share=share))
    assert err.field == "dedup_min_share"
    assert err.problem.startswith("must be in [0, 1), got ")


def test_unknown_op() -> None:
    feats = [feature(name=f"f{i}") for i in range(3)]
    feats.append(feature(name="f3", ops=[{"op": "log1p"}, {"op": "foo"}]))
    err = rejects(valid_proto(features=feats))
    assert err.field == "features[3].ops[1].op"
    assert str(err) == (
        f"features[3].ops[1].op: unknown op 'foo'; known ops: {', '.join(registered_ops())}"
    )
    assert "bucketize, cast, clamp" in str(err)


def test_unknown_param() -> None:
    ops = [{"op": "clamp", "params": {"min": 0.0, "maximum": 1.0}}]
    err = rejects(valid_proto(features=[feature(ops=ops)]))
    assert err.field == "features[0].ops[0].maximum"
    assert str(err) == (
        "features[0].ops[0].maximum: unknown param 'maximum' for op 'clamp'; "
        "allowed params: min, max"
    )


def test_param_on_op_without_params() -> None:
    err = rejects(valid_proto(features=[feature(ops=[{"op": "log1p", "params": {"base": 2}}])]))
    assert err.field == "features[0].ops[0].base"
    assert err.fix == "allowed params: none (it takes no params)"


def test_first_x_zero() -> None:
    ops = [{"op": "first_x", "params": {"x": 0}}]
    err = rejects(valid_proto(features=[feature(kind=SPARSE, ops=ops)]))
    assert err.field == "features[0].ops[0].x"
    assert str(err) == "features[0].ops[0].x: must be >= 1, got 0; ids to keep, an integer >= 1"


def test_first_x_not_integral() -> None:
    ops = [{"op": "first_x", "params": {"x": 2.5}}]
    err = rejects(valid_proto(features=[feature(kind=SPARSE, ops=ops)]))
    assert err.field == "features[0].ops[0].x"
    assert err.problem == "expected an integer, got 2.5"


def test_first_x_missing() -> None:
    err = rejects(valid_proto(features=[feature(kind=SPARSE, ops=[{"op": "first_x"}])]))
    assert err.field == "features[0].ops[0].x"
    assert err.problem == "op 'first_x' needs param 'x'"


def test_clamp_min_greater_than_max() -> None:
    ops = [{"op": "clamp", "params": {"min": 2.0, "max": 1.0}}]
    err = rejects(valid_proto(features=[feature(ops=ops)]))
    assert err.field == "features[0].ops[0].min"
    assert str(err) == "features[0].ops[0].min: min 2.0 is greater than max 1.0; set min <= max"


def test_clamp_without_bounds() -> None:
    err = rejects(valid_proto(features=[feature(ops=[{"op": "clamp"}])]))
    assert err.field == "features[0].ops[0].min"
    assert err.problem == "clamp needs min, max or both"


@pytest.mark.parametrize("max_value", [0, -3])
def test_sigrid_hash_max_value_not_positive(max_value: int) -> None:
    ops = [{"op": "sigrid_hash", "params": {"max_value": max_value}}]
    err = rejects(valid_proto(features=[feature(kind=SPARSE, ops=ops)]))
    assert err.field == "features[0].ops[0].max_value"
    assert err.problem == f"must be >= 1, got {max_value}"


def test_sigrid_hash_max_value_beyond_exact_doubles() -> None:
    ops = [{"op": "sigrid_hash", "params": {"max_value": 2.0**60}}]
    err = rejects(valid_proto(features=[feature(kind=SPARSE, ops=ops)]))
    assert err.field == "features[0].ops[0].max_value"
    assert "largest integer a spec carries exactly" in err.problem


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("zero", "expected a number, got 'zero'"),
        (True, "expected a number, got True"),
        (float("nan"), "expected a finite number, got nan"),
        (1e39, "1e+39 does not fit float32 (largest 3.4028234663852886e+38)"),
    ],
)
def test_fill_null_bad_value(value: Any, problem: str) -> None:
    ops = [{"op": "fill_null", "params": {"value": value}}]
    err = rejects(valid_proto(features=[feature(ops=ops)]))
    assert err.field == "features[0].ops[0].value"
    assert err.problem == problem


def test_dense_op_on_sparse_feature() -> None:
    ops = [{"op": "first_x", "params": {"x": 1}}, {"op": "log1p"}]
    err = rejects(valid_proto(features=[feature(), feature(name="s", kind=SPARSE, ops=ops)]))
    assert err.field == "features[1].ops[1].op"
    assert err.problem == "'log1p' applies to dense features, not sparse"


def test_sparse_op_on_dense_feature() -> None:
    err = rejects(valid_proto(features=[feature(ops=[{"op": "first_x", "params": {"x": 1}}])]))
    assert err.field == "features[0].ops[0].op"
    assert str(err) == (
        "features[0].ops[0].op: 'first_x' gives sparse values, but feature 'f' is dense; "
        "set kind: sparse or end with an op giving dense values"
    )


# --- sampling -------------------------------------------------------------------------------


def test_sampling_fields() -> None:
    spec = spec_from_proto(valid_proto())
    assert (spec.negative_downsample_rate, spec.sample_rate, spec.sample_key) == (
        0.5,
        0.75,
        "row_id",
    )
    assert spec.has_weight and spec.sampled
    unset = spec_from_proto(valid_proto(negative_downsample_rate=0, sample_rate=0, weight=""))
    assert (unset.negative_downsample_rate, unset.sample_rate) == (1.0, 1.0)
    assert not unset.has_weight and not unset.sampled
    # Downsampling alone delivers a weight column.
    assert spec_from_proto(valid_proto(weight="")).has_weight


@pytest.mark.parametrize("field", ["negative_downsample_rate", "sample_rate"])
@pytest.mark.parametrize("value", [-0.1, 1.5, float("nan"), float("inf")])
def test_sampling_rate_out_of_range(field: str, value: float) -> None:
    err = rejects(valid_proto(**{field: value}))
    assert str(err) == (
        f"{field}: must be in (0, 1], got {value!r}; give the share of rows to keep, e.g. 0.1; "
        "leave it unset (0) to keep all"
    )


def test_negative_downsampling_needs_label() -> None:
    err = rejects(valid_proto(label=""))
    assert str(err) == (
        "negative_downsample_rate: is 0.5 but no label is named; negatives are rows whose label "
        "is 0; name the label column, or leave negative_downsample_rate unset"
    )


def test_sampling_needs_key() -> None:
    err = rejects(valid_proto(sample_key="", negative_downsample_rate=0))
    assert str(err) == (
        "sample_key: is required when negative_downsample_rate or sample_rate is below 1; "
        "name an integer or string column that identifies rows (e.g. row_id), so the same rows "
        "are kept whenever a split is produced"
    )


def test_sample_key_column_checked() -> None:
    spec = spec_from_proto(valid_proto(sample_key="dense_0"))
    err = schema_rejects(spec, schema())
    assert str(err) == (
        "sample_key: column 'dense_0' has type float, which is not an integer or string; "
        "name an integer or string column that identifies rows (e.g. row_id)"
    )
    err = schema_rejects(spec_from_proto(valid_proto(sample_key="nope")), schema())
    assert err.field == "sample_key"
    assert err.problem.startswith("column 'nope' not in table")
    check_against_schema(spec_from_proto(valid_proto(sample_key="ds")), schema())


def test_param_columns_are_read() -> None:
    feats = [
        feature(name="j", source="sparse_0", ops=[{"op": "jaccard", "params": {"other": "s1"}}]),
        feature(name="e", source="dense_0", ops=[{"op": "expr", "params": {"expr": "x * z + y"}}]),
    ]
    spec = spec_from_proto(valid_proto(features=feats))
    assert spec.input_columns == ("sparse_0", "dense_0", "s1", "z", "y", "label", "w", "row_id")


def test_duplicate_passthrough() -> None:
    err = rejects(valid_proto(passthrough=["row_id", "ds", "row_id"]))
    assert err.field == "passthrough[2]"
    assert err.problem == "duplicate column 'row_id' (also passthrough[0])"


# --- schema rejections --------------------------------------------------------------------


def schema_rejects(spec: Spec, table_schema: pa.Schema) -> SpecError:
    with pytest.raises(SpecError) as info:
        check_against_schema(spec, table_schema)
    return info.value


def test_missing_column() -> None:
    spec = spec_from_proto(valid_proto())
    err = schema_rejects(spec, schema().remove(schema().get_field_index("sparse_0")))
    assert err.field == "features[2].source"
    assert err.problem == (
        "column 'sparse_0' not in table; available: dense_0, dense_1, label, w, row_id, ds"
    )


@pytest.mark.parametrize(("field", "column"), [("label", "label"), ("weight", "w")])
def test_missing_label_or_weight(field: str, column: str) -> None:
    spec = spec_from_proto(valid_proto())
    table_schema = schema()
    err = schema_rejects(spec, table_schema.remove(table_schema.get_field_index(column)))
    assert err.field == field
    assert err.problem.startswith(f"column {column!r} not in table; available: ")


def test_missing_passthrough() -> None:
    spec = spec_from_proto(valid_proto(passthrough=["ds", "nope"]))
    err = schema_rejects(spec, schema())
    assert err.field == "passthrough[1]"


def test_dense_source_not_numeric() -> None:
    spec = spec_from_proto(valid_proto())
    err = schema_rejects(spec, schema(dense_1=pa.string()))
    assert err.field == "features[1].source"
    assert err.problem == (
        "dense feature 'd1' reads column 'dense_1' of type string, which is not numeric"
    )


@pytest.mark.parametrize(
    "dtype",
    [pa.list_(pa.float32()), pa.string(), pa.float64(), pa.list_(pa.string())],
)
def test_sparse_source_not_list_of_ints(dtype: pa.DataType) -> None:
    spec = spec_from_proto(valid_proto())
    err = schema_rejects(spec, schema(sparse_0=dtype))
    assert err.field == "features[2].source"
    assert err.problem == (
        f"sparse feature 's0' reads column 'sparse_0' of type {dtype}, "
        "which is not a list of integers"
    )


def test_label_not_numeric() -> None:
    spec = spec_from_proto(valid_proto())
    err = schema_rejects(spec, schema(label=pa.string()))
    assert err.field == "label"
    assert err.problem == "column 'label' has type string, which is not numeric"


def test_spec_imports_without_the_feature_pipeline() -> None:
    """No import cycle spec -> transforms -> pipeline -> spec: importing the spec (and with it
    the op registry) in a fresh import state loads neither the pipeline nor a half-made spec."""
    import importlib
    import sys

    saved = {k: v for k, v in sys.modules.items() if k.startswith("dpp_server")}
    for name in saved:
        del sys.modules[name]
    try:
        spec_module = importlib.import_module("dpp_server.spec")
        assert "dpp_server.transforms.pipeline" not in sys.modules
        assert spec_module.get_op("log1p") is not None  # every op family registered
        pipeline = importlib.import_module("dpp_server.transforms").FeaturePipeline
        assert pipeline.__module__ == "dpp_server.transforms.pipeline"
    finally:
        for name in [k for k in sys.modules if k.startswith("dpp_server")]:
            del sys.modules[name]
        sys.modules.update(saved)


@pytest.mark.parametrize(
    ("record", "message"),
    [(Spec, spec_pb2.SessionSpec), (Feature, spec_pb2.FeatureSpec), (OpCall, spec_pb2.OpSpec)],
    ids=lambda t: t.__name__,
)
def test_every_proto_field_has_a_spec_field_and_back(record: type, message: type) -> None:
    """The proto mapping is derived from the dataclass fields: they must be the same names."""
    proto_fields = {f.name for f in message.DESCRIPTOR.fields}
    assert proto_fields == {f.name for f in dataclasses.fields(record)}


def test_zero_fields_take_the_shared_defaults() -> None:
    msg = valid_proto()
    for name in SPEC_ZERO_MEANS:
        msg.ClearField(name)  # type: ignore[arg-type]
    msg.ClearField("sample_key")
    spec = spec_from_proto(msg)
    assert {name: getattr(spec, name) for name in SPEC_ZERO_MEANS} == dict(SPEC_ZERO_MEANS)
    assert spec.target_split_rows == DEFAULT_TARGET_SPLIT_ROWS
