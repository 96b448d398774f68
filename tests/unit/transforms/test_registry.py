"""The op registry: lookups, registration rules, and that every op is documented."""

from __future__ import annotations

import pathlib

import polars as pl
import pytest

from dpp_server.errors import SpecError
from dpp_server.transforms import OpDef, Param, get_op, registered_ops
from dpp_server.transforms.registry import register, validate_params

DOCS = pathlib.Path(__file__).resolve().parents[3] / "docs" / "ops.md"
ALL_OPS = (
    "box_cox",
    "bucketize",
    "cast",
    "clamp",
    "clamp_list",
    "compute_score",
    "cosine",
    "cross",
    "dedup",
    "drop_ids",
    "expr",
    "fill_null",
    "first_x",
    "has_id_overlap",
    "hash_string",
    "id_overlap_count",
    "jaccard",
    "keep_ids",
    "list_length",
    "log1p",
    "logit",
    "map_id",
    "ngram",
    "normalize",
    "onehot",
    "scale_to_0_1",
    "score_max",
    "score_min",
    "score_sum",
    "sigrid_hash",
)


def test_registered_ops() -> None:
    assert registered_ops() == ALL_OPS
    assert get_op("nope") is None


@pytest.mark.parametrize("name", registered_ops())
def test_every_op_is_documented(name: str) -> None:
    op = get_op(name)
    assert op is not None and op.summary
    assert op.compile.__doc__ and "null" in op.compile.__doc__.lower()
    assert f"### `{name}`" in DOCS.read_text()


def test_registering_a_name_twice_fails() -> None:
    clone = OpDef(name="log1p", kinds=frozenset({"dense"}), params=(), compile=lambda p, t: abs)
    with pytest.raises(ValueError, match="registered twice"):
        register(clone)


def test_validate_params_fills_defaults_and_normalises_ints() -> None:
    op = OpDef(
        name="test_only",
        kinds=frozenset({"sparse"}),
        params=(Param("n", "int", default=3), Param("f", "float", default=0.5)),
        compile=lambda p, t: lambda e: e + pl.lit(p["n"]),
    )
    assert validate_params(op, {}, "p") == {"n": 3, "f": 0.5}
    got = validate_params(op, {"n": 4.0, "f": 2}, "p")
    assert got == {"n": 4, "f": 2.0}
    assert type(got["n"]) is int and type(got["f"]) is float
    with pytest.raises(SpecError) as info:
        validate_params(op, {"n": None, "g": 1}, "features[0].ops[2]")
    assert info.value.field == "features[0].ops[2].g"
