"""SessionSpec: YAML/dict/proto conversions with exact field values, and local checks."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from dpp_client.errors import SpecRejectedError
from dpp_client.spec import Feature, Op, SessionSpec, coerce_spec
from dpp_proto import defaults, spec_pb2

YAML = """
table_uri: s3://bucket/ctr
storage_options: {endpoint_url: "http://127.0.0.1:9000", key: k}
partition_filter: "ds >= '2026-01-02'"
row_filter: "label IS NOT NULL"
batch_size: 2048
label: label
weight: w
passthrough: [row_id]
epochs: 3
seed: 42
world_size: 2
target_split_rows: 100000
shuffle: true
features:
  - name: dense_0
    kind: dense
    ops:
      - {op: fill_null, value: 0.0}
      - {op: clamp, min: 0}
      - {op: log1p}
  - name: ids
    source: sparse_0
    kind: sparse
    ops:
      - {op: first_x, x: 20}
      - {op: sigrid_hash, max_value: 100000, salt: 7}
"""


def test_yaml_to_proto_exact_fields() -> None:
    msg = SessionSpec.from_yaml(YAML).to_proto()
    assert msg.table_uri == "s3://bucket/ctr"
    assert dict(msg.storage_options) == {"endpoint_url": "http://127.0.0.1:9000", "key": "k"}
    assert msg.partition_filter == "ds >= '2026-01-02'"
    assert msg.row_filter == "label IS NOT NULL"
    assert msg.batch_size == 2048
    assert (msg.label, msg.weight) == ("label", "w")
    assert list(msg.passthrough) == ["row_id"]
    assert (msg.epochs, msg.seed, msg.world_size) == (3, 42, 2)
    assert msg.target_split_rows == 100000
    assert msg.shuffle is True
    assert len(msg.features) == 2
    dense, sparse = msg.features
    assert (dense.name, dense.source, dense.kind) == ("dense_0", "", spec_pb2.FEATURE_KIND_DENSE)
    assert [o.op for o in dense.ops] == ["fill_null", "clamp", "log1p"]
    assert dict(dense.ops[0].params) == {"value": 0.0}
    assert dict(dense.ops[1].params) == {"min": 0.0}
    assert len(dense.ops[2].params) == 0
    assert (sparse.name, sparse.source, sparse.kind) == (
        "ids",
        "sparse_0",
        spec_pb2.FEATURE_KIND_SPARSE,
    )
    assert dict(sparse.ops[0].params) == {"x": 20.0}
    assert dict(sparse.ops[1].params) == {"max_value": 100000.0, "salt": 7.0}


def test_proto_round_trip() -> None:
    spec = SessionSpec.from_yaml(YAML)
    again = SessionSpec.from_proto(
        spec_pb2.SessionSpec.FromString(spec.to_proto().SerializeToString())
    )
    assert again.to_proto() == spec.to_proto()
    assert again.features[1].ops[1] == Op("sigrid_hash", {"max_value": 100000.0, "salt": 7.0})


def test_dict_round_trip() -> None:
    spec = SessionSpec.from_yaml(YAML)
    assert SessionSpec.from_dict(spec.to_dict()) == spec
    assert spec.to_dict()["features"][0]["ops"][0] == {"op": "fill_null", "value": 0.0}


def test_from_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(YAML)
    assert SessionSpec.from_yaml(path) == SessionSpec.from_yaml(str(path))
    assert coerce_spec(str(path)).batch_size == 2048


def test_defaults_and_names() -> None:
    spec = SessionSpec(
        table_uri="/t",
        features=[Feature("d", "dense"), Feature("s", "sparse"), Feature("e", "dense")],
    )
    assert spec.batch_size == 4096 and spec.epochs == 1 and spec.world_size == 1
    assert spec.dense_names == ["d", "e"]
    assert spec.sparse_names == ["s"]
    assert isinstance(spec.features, tuple)


def test_nested_params_form_is_accepted() -> None:
    op = Op.from_dict({"op": "clamp", "params": {"min": 0.0, "max": 1.0}})
    assert op == Op("clamp", {"min": 0.0, "max": 1.0})


@pytest.mark.parametrize(
    ("data", "field", "text"),
    [
        ({"features": []}, "table_uri", "missing"),
        ({"table_uri": "/t", "batchsize": 3}, "batchsize", "unknown spec field"),
        ({"table_uri": "/t", "batch_size": "big"}, "batch_size", "expected"),
        # One rule, one message for every out-of-range integer (issue 18).
        (
            {"table_uri": "/t", "batch_size": 0},
            "batch_size",
            "must be between 1 and 1048576, got 0",
        ),
        (
            {"table_uri": "/t", "batch_size": -5},
            "batch_size",
            "must be between 1 and 1048576, got -5",
        ),
        (
            {"table_uri": "/t", "batch_size": 1 << 21},
            "batch_size",
            "between 1 and 1048576, got 2097152",
        ),
        (
            {"table_uri": "/t", "epochs": -1},
            "epochs",
            "between 0 and 4294967295 (0 means 1), got -1",
        ),
        ({"table_uri": "/t", "world_size": 1 << 32}, "world_size", "between 0 and 4294967295"),
        ({"table_uri": "/t", "seed": -1}, "seed", "must be between 0 and 18446744073709551615"),
        ({"table_uri": "/t", "shuffle": 1}, "shuffle", "expected"),
        ({"table_uri": "/t", "seed": True}, "seed", "got bool"),
        (
            {"table_uri": "/t", "features": [{"name": "a", "kind": "wide"}]},
            "features[0].kind",
            "expected 'dense' or 'sparse'",
        ),
        (
            {"table_uri": "/t", "features": [{"name": "a", "kind": "dense", "ops": [{"x": 1}]}]},
            "features[0].ops[0].op",
            "missing op name",
        ),
        (
            {"table_uri": "/t", "features": [{"name": "a", "kind": "dense", "opz": []}]},
            "features[0].opz",
            "unknown feature field",
        ),
    ],
)
def test_local_checks_name_the_field(data: dict[str, object], field: str, text: str) -> None:
    with pytest.raises(SpecRejectedError, match=re.escape(text)) as info:
        SessionSpec.from_dict(data)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")


def test_yaml_must_be_a_mapping() -> None:
    with pytest.raises(SpecRejectedError, match="YAML must hold a mapping"):
        SessionSpec.from_yaml("- a\n- b\n")


@pytest.mark.parametrize(
    ("record", "message"),
    [(SessionSpec, spec_pb2.SessionSpec), (Feature, spec_pb2.FeatureSpec), (Op, spec_pb2.OpSpec)],
    ids=lambda t: t.__name__,
)
def test_every_proto_field_has_a_spec_field_and_back(record: type, message: type) -> None:
    """The proto mapping is derived from the dataclass fields: they must be the same names
    (but for ``SessionSpec.stats``, which only ``dpp stats`` sets: a trainer never measures)."""
    proto_fields = {f.name for f in message.DESCRIPTOR.fields} - {"stats"}
    assert proto_fields == {f.name for f in dataclasses.fields(record)}


def test_zero_fields_read_as_the_shared_defaults() -> None:
    """A proto left at 0 reads as the class defaults, which come from dpp_proto.defaults."""
    msg = spec_pb2.SessionSpec(table_uri="/t", batch_size=8)
    spec = SessionSpec.from_proto(msg)
    assert spec == SessionSpec(table_uri="/t", features=(), batch_size=8)
    assert (spec.epochs, spec.world_size) == (defaults.EPOCHS, defaults.WORLD_SIZE)
    assert spec.sample_rate == spec.negative_downsample_rate == defaults.RATE
    assert spec.max_splits_in_flight == 0 and spec.target_split_rows == 0  # the master's
    assert (
        SessionSpec.from_proto(spec_pb2.SessionSpec(table_uri="/t", batch_size=8, epochs=3)).epochs
        == 3
    )


@pytest.mark.parametrize(
    ("given", "want"),
    [
        ("data/ctr", "{cwd}/data/ctr"),
        ("./ctr/", "{cwd}/ctr"),
        ("file://data/ctr", "file://{cwd}/data/ctr"),
        ("~/ctr", "{home}/ctr"),
        ("/abs/ctr", "/abs/ctr"),
        ("s3://bucket/ctr", "s3://bucket/ctr"),
        ("memory://t", "memory://t"),
    ],
)
def test_relative_local_table_uri_is_made_absolute_in_the_trainer(
    given: str, want: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    spec = SessionSpec(table_uri=given, features=())
    expected = want.format(cwd=tmp_path, home=tmp_path / "home")
    assert spec.table_uri == expected
    assert spec.to_proto().table_uri == expected
    assert SessionSpec.from_dict({"table_uri": given}).table_uri == expected
