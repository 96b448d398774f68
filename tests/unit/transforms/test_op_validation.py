"""Every rejected op call and feature chain, with the exact message the user sees.

Structural cases (no table needed) go through ``spec_from_proto``; cases that need the table
(columns named by params, source types, vocabulary files) through ``check_against_schema``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from dpp_proto import spec_pb2
from dpp_server.errors import SpecError
from dpp_server.spec import check_against_schema, spec_from_proto

DENSE = spec_pb2.FEATURE_KIND_DENSE
SPARSE = spec_pb2.FEATURE_KIND_SPARSE

SCHEMA = pa.schema(
    [
        ("x", pa.float32()),
        ("n", pa.int64()),
        ("ids", pa.list_(pa.int64())),
        ("b", pa.large_list(pa.int32())),
        ("s", pa.list_(pa.float32())),
        ("c", pa.string()),
        ("tags", pa.list_(pa.string())),
        ("label", pa.float32()),
        ("row_id", pa.int64()),
        ("when", pa.timestamp("s")),
    ]
)


def spec_msg(
    kind: int, source: str, ops: list[dict[str, Any]], **fields: Any
) -> spec_pb2.SessionSpec:
    feature = spec_pb2.FeatureSpec(name="f", source=source, kind=kind)  # type: ignore[arg-type]
    for op in ops:
        o = feature.ops.add(op=op["op"])
        o.params.update({k: v for k, v in op.items() if k != "op"})
    return spec_pb2.SessionSpec(table_uri="/t", batch_size=1, features=[feature], **fields)


STRUCTURAL = [
    (
        DENSE,
        "x",
        [{"op": "logit", "eps": 0.0}],
        "features[0].ops[0].eps",
        "features[0].ops[0].eps: must be in (0, 0.5), got 0.0; e.g. eps: 1.0e-6",
    ),
    (
        DENSE,
        "x",
        [{"op": "logit", "eps": 0.5}],
        "features[0].ops[0].eps",
        "features[0].ops[0].eps: must be in (0, 0.5), got 0.5; e.g. eps: 1.0e-6",
    ),
    (
        DENSE,
        "x",
        [{"op": "box_cox"}],
        "features[0].ops[0].lambda",
        (
            "features[0].ops[0].lambda: op 'box_cox' needs param 'lambda'; the power, a float "
            "in [-10, 10] (0 means ln)"
        ),
    ),
    (
        DENSE,
        "x",
        [{"op": "box_cox", "lambda": 11.0}],
        "features[0].ops[0].lambda",
        (
            "features[0].ops[0].lambda: must be <= 10.0, got 11.0; the power, a float in [-10, "
            "10] (0 means ln)"
        ),
    ),
    (
        DENSE,
        "x",
        [{"op": "normalize", "std": 0.0}],
        "features[0].ops[0].std",
        "features[0].ops[0].std: must be > 0, got 0.0; give the column's std",
    ),
    (
        DENSE,
        "x",
        [{"op": "normalize", "mode": "robust"}],
        "features[0].ops[0].mode",
        "features[0].ops[0].mode: expected one of zscore, minmax, got 'robust'; zscore or minmax",
    ),
    (
        DENSE,
        "x",
        [{"op": "normalize", "mode": "minmax", "min": 1.0}],
        "features[0].ops[0].max",
        "features[0].ops[0].max: mode minmax needs max; give the range",
    ),
    (
        DENSE,
        "x",
        [{"op": "normalize", "mode": "minmax", "min": 1.0, "max": 1.0}],
        "features[0].ops[0].min",
        "features[0].ops[0].min: min 1.0 must be less than max 1.0; set min < max",
    ),
    (
        DENSE,
        "x",
        [{"op": "normalize", "min": 1.0}],
        "features[0].ops[0].min",
        "features[0].ops[0].min: min is for mode minmax, not zscore; remove it or set mode: minmax",
    ),
    (
        SPARSE,
        "x",
        [{"op": "bucketize", "boundaries": [0.0, 2.0, 1.0]}],
        "features[0].ops[0].boundaries",
        (
            "features[0].ops[0].boundaries: must be sorted ascending without repeats; [1] = 2.0 "
            "is not below [2] = 1.0; sort the boundaries and drop repeats"
        ),
    ),
    (
        SPARSE,
        "x",
        [{"op": "bucketize", "boundaries": [1.0, 1.0]}],
        "features[0].ops[0].boundaries",
        (
            "features[0].ops[0].boundaries: must be sorted ascending without repeats; [0] = 1.0 "
            "is not below [1] = 1.0; sort the boundaries and drop repeats"
        ),
    ),
    (
        SPARSE,
        "x",
        [{"op": "bucketize", "boundaries": []}],
        "features[0].ops[0].boundaries",
        "features[0].ops[0].boundaries: is empty; give at least one boundary",
    ),
    (
        SPARSE,
        "x",
        [{"op": "bucketize", "boundaries": 3.0}],
        "features[0].ops[0].boundaries",
        (
            "features[0].ops[0].boundaries: expected a list, got 3.0; bucket boundaries, finite "
            "floats in strictly ascending order"
        ),
    ),
    (
        SPARSE,
        "x",
        [{"op": "bucketize", "boundaries": [0.0, "a"]}],
        "features[0].ops[0].boundaries[1]",
        (
            "features[0].ops[0].boundaries[1]: expected a number, got 'a'; bucket boundaries, "
            "finite floats in strictly ascending order"
        ),
    ),
    (
        SPARSE,
        "x",
        [{"op": "bucketize"}],
        "features[0].ops[0].boundaries",
        (
            "features[0].ops[0].boundaries: op 'bucketize' needs param 'boundaries'; bucket "
            "boundaries, finite floats in strictly ascending order"
        ),
    ),
    (
        SPARSE,
        "x",
        [{"op": "onehot", "num_classes": 0}],
        "features[0].ops[0].num_classes",
        "features[0].ops[0].num_classes: must be >= 1, got 0; classes, an integer >= 1",
    ),
    (
        DENSE,
        "x",
        [{"op": "cast", "to": "str"}],
        "features[0].ops[0].to",
        "features[0].ops[0].to: expected one of int, bool, id, got 'str'; int, bool or id",
    ),
    (
        DENSE,
        "x",
        [{"op": "cast", "to": "id"}],
        "features[0].ops[0].op",
        (
            "features[0].ops[0].op: 'cast' gives sparse values, but feature 'f' is dense; set "
            "kind: sparse or end with an op giving dense values"
        ),
    ),
    (
        SPARSE,
        "x",
        [{"op": "cast", "to": "int"}],
        "features[0].ops[0].op",
        (
            "features[0].ops[0].op: 'cast' gives dense values, but feature 'f' is sparse; set "
            "kind: dense or end with an op giving sparse values"
        ),
    ),
    (
        DENSE,
        "x",
        [{"op": "scale_to_0_1", "min": 1.0, "max": 0.0}],
        "features[0].ops[0].min",
        "features[0].ops[0].min: min 1.0 must be less than max 0.0; set min < max",
    ),
    (
        SPARSE,
        "ids",
        [{"op": "map_id"}],
        "features[0].ops[0].path",
        (
            "features[0].ops[0].path: op 'map_id' needs param 'path'; vocabulary file (local "
            "path or URI): one int64 id per line"
        ),
    ),
    (
        SPARSE,
        "ids",
        [{"op": "map_id", "path": ""}],
        "features[0].ops[0].path",
        (
            "features[0].ops[0].path: expected a non-empty string, got ''; vocabulary file "
            "(local path or URI): one int64 id per line"
        ),
    ),
    (
        SPARSE,
        "ids",
        [{"op": "clamp_list"}],
        "features[0].ops[0].min",
        "features[0].ops[0].min: needs min, max or both; set at least one bound",
    ),
    (
        SPARSE,
        "ids",
        [{"op": "clamp_list", "min": 5, "max": 1}],
        "features[0].ops[0].min",
        "features[0].ops[0].min: min 5 is greater than max 1; set min <= max",
    ),
    (
        SPARSE,
        "ids",
        [{"op": "keep_ids"}],
        "features[0].ops[0].ids",
        (
            "features[0].ops[0].ids: op 'keep_ids' needs param 'ids'; the id set, a list of "
            "integers within ±2**53"
        ),
    ),
    (
        SPARSE,
        "ids",
        [{"op": "keep_ids", "ids": [1, 2.5]}],
        "features[0].ops[0].ids[1]",
        (
            "features[0].ops[0].ids[1]: expected an integer, got 2.5; the id set, a list of "
            "integers within ±2**53"
        ),
    ),
    (
        SPARSE,
        "ids",
        [{"op": "ngram", "n": 1, "max_value": 10}],
        "features[0].ops[0].n",
        "features[0].ops[0].n: must be >= 2, got 1; window length, 2..=8",
    ),
    (
        SPARSE,
        "ids",
        [{"op": "ngram", "n": 9, "max_value": 10}],
        "features[0].ops[0].n",
        "features[0].ops[0].n: must be <= 8, got 9; window length, 2..=8",
    ),
    (
        SPARSE,
        "ids",
        [{"op": "cross", "max_value": 10}],
        "features[0].ops[0].other",
        (
            "features[0].ops[0].other: op 'cross' needs param 'other'; the other id-list column "
            "(list of integers, or one integer)"
        ),
    ),
    (
        SPARSE,
        "ids",
        [{"op": "cross", "other": "b", "max_value": 10, "max_pairs": 0}],
        "features[0].ops[0].max_pairs",
        (
            "features[0].ops[0].max_pairs: must be >= 1, got 0; pairs kept per row, an integer "
            ">= 1 (default 1024)"
        ),
    ),
    (
        DENSE,
        "ids",
        [{"op": "jaccard"}],
        "features[0].ops[0].other",
        (
            "features[0].ops[0].other: op 'jaccard' needs param 'other'; the other id-list "
            "column (list of integers, or one integer)"
        ),
    ),
    (
        SPARSE,
        "ids",
        [{"op": "jaccard", "other": "b"}],
        "features[0].ops[0].op",
        (
            "features[0].ops[0].op: 'jaccard' gives dense values, but feature 'f' is sparse; "
            "set kind: dense or end with an op giving sparse values"
        ),
    ),
    (
        DENSE,
        "s",
        [{"op": "compute_score", "mode": "median"}],
        "features[0].ops[0].mode",
        (
            "features[0].ops[0].mode: expected one of mean, sum, min, max, l2, got 'median'; "
            "mean, sum, min, max, l2"
        ),
    ),
    (
        SPARSE,
        "c",
        [{"op": "hash_string", "max_value": 0}],
        "features[0].ops[0].max_value",
        (
            "features[0].ops[0].max_value: must be >= 1, got 0; number of hash buckets, an "
            "integer >= 1"
        ),
    ),
    (
        DENSE,
        "x",
        [{"op": "expr", "expr": "x +"}],
        "features[0].ops[0].expr",
        (
            "features[0].ops[0].expr: cannot parse 'x +': Required keyword: 'expression' "
            "missing for <class 'sqlglot.expressions.core.Add'>. Line 1, Col: 3.; supported: x "
            "(the feature's value), column names, numbers, + - * /, parentheses, abs() ln() "
            "log() log1p() exp() sqrt(), power(a, b), coalesce(a, ...)"
        ),
    ),
    (
        DENSE,
        "x",
        [{"op": "expr", "expr": "x > 1"}],
        "features[0].ops[0].expr",
        (
            "features[0].ops[0].expr: unsupported construct 'x > 1' (GT) in 'x > 1'; supported: "
            "x (the feature's value), column names, numbers, + - * /, parentheses, abs() ln() "
            "log() log1p() exp() sqrt(), power(a, b), coalesce(a, ...)"
        ),
    ),
    (
        DENSE,
        "x",
        [{"op": "expr", "expr": "foo(x)"}],
        "features[0].ops[0].expr",
        (
            "features[0].ops[0].expr: unsupported construct 'FOO(x)' (Anonymous) in 'foo(x)'; "
            "unknown function or wrong number of arguments; supported: x (the feature's value), "
            "column names, numbers, + - * /, parentheses, abs() ln() log() log1p() exp() "
            "sqrt(), power(a, b), coalesce(a, ...)"
        ),
    ),
    (
        DENSE,
        "x",
        [{"op": "expr", "expr": "log(2, x)"}],
        "features[0].ops[0].expr",
        (
            "features[0].ops[0].expr: unsupported construct 'LOG(2, x)' (Log) in 'log(2, x)'; "
            "log takes one argument (the natural log); supported: x (the feature's value), "
            "column names, numbers, + - * /, parentheses, abs() ln() log() log1p() exp() "
            "sqrt(), power(a, b), coalesce(a, ...)"
        ),
    ),
    (
        DENSE,
        "x",
        [{"op": "expr", "expr": "x; y"}],
        "features[0].ops[0].expr",
        "features[0].ops[0].expr: 'x; y' holds 2 expressions; write exactly one",
    ),
    (
        DENSE,
        "x",
        [{"op": "expr", "expr": "'a' + x"}],
        "features[0].ops[0].expr",
        (
            "features[0].ops[0].expr: unsupported construct \"'a'\" (Literal) in \"'a' + x\"; "
            "supported: x (the feature's value), column names, numbers, + - * /, parentheses, "
            "abs() ln() log() log1p() exp() sqrt(), power(a, b), coalesce(a, ...)"
        ),
    ),
    (
        DENSE,
        "x",
        [{"op": "expr", "expr": "t.y + x"}],
        "features[0].ops[0].expr",
        (
            "features[0].ops[0].expr: unsupported construct 't.y' (Column) in 't.y + x'; "
            "columns are plain names without a table prefix; supported: x (the feature's "
            "value), column names, numbers, + - * /, parentheses, abs() ln() log() log1p() "
            "exp() sqrt(), power(a, b), coalesce(a, ...)"
        ),
    ),
    (
        DENSE,
        "x",
        [{"op": "list_length"}, {"op": "first_x", "x": 2}],
        "features[0].ops[1].op",
        (
            "features[0].ops[1].op: 'first_x' applies to sparse features, not dense; remove the "
            "op or apply it to a feature of the right kind"
        ),
    ),
]


@pytest.mark.parametrize(("kind", "source", "ops", "field", "message"), STRUCTURAL)
def test_structural_rejection(
    kind: int, source: str, ops: list[dict[str, Any]], field: str, message: str
) -> None:
    with pytest.raises(SpecError) as info:
        spec_from_proto(spec_msg(kind, source, ops))
    assert info.value.field == field
    assert str(info.value) == message


SCHEMA_CASES = [
    (
        DENSE,
        "ids",
        [{"op": "score_sum"}],
        "features[0].source",
        "features[0].source: dense feature 'f' reads column 'ids' of type list<item: int64>, "
        "which is not a list of floats; use a list<float> column",
    ),
    (
        SPARSE,
        "n",
        [{"op": "hash_string", "max_value": 10}],
        "features[0].source",
        "features[0].source: sparse feature 'f' reads column 'n' of type int64, which is not "
        "a string or a list of strings; use a string column; or use a list<string> column",
    ),
    (
        SPARSE,
        "c",
        [{"op": "bucketize", "boundaries": [1.0]}],
        "features[0].source",
        "features[0].source: sparse feature 'f' reads column 'c' of type string, which is not "
        "numeric; use an integer, float or boolean column, or make the feature sparse",
    ),
    (
        DENSE,
        "ids",
        [{"op": "jaccard", "other": "nope"}],
        "features[0].ops[0].other",
        "features[0].ops[0].other: column 'nope' not in table; available: x, n, ids, b, s, c, "
        "tags, label, row_id, when; fix the column name or the table_uri",
    ),
    (
        DENSE,
        "ids",
        [{"op": "cosine", "other": "s"}],
        "features[0].ops[0].other",
        "features[0].ops[0].other: column 's' has type list<item: float>, which is not a list "
        "of integers; name a column of a list of integers (use a list<int> or large_list<int> "
        "column (or a plain integer column))",
    ),
    (
        DENSE,
        "x",
        [{"op": "expr", "expr": "x / (missing + 1)"}],
        "features[0].ops[0].expr",
        "features[0].ops[0].expr: column 'missing' not in table; available: x, n, ids, b, s, "
        "c, tags, label, row_id, when; fix the column name or the table_uri",
    ),
    (
        DENSE,
        "x",
        [{"op": "expr", "expr": "x + c"}],
        "features[0].ops[0].expr",
        "features[0].ops[0].expr: column 'c' has type string, which is not numeric; name a "
        "column of numeric (use an integer, float or boolean column, or make the feature sparse)",
    ),
    (
        SPARSE,
        "x",
        [],
        "features[0].source",
        "features[0].source: sparse feature 'f' reads column 'x' of type float, which is not a "
        "list of integers; use a list<int> or large_list<int> column (or a plain integer column)",
    ),
]


@pytest.mark.parametrize(("kind", "source", "ops", "field", "message"), SCHEMA_CASES)
def test_schema_rejection(
    kind: int, source: str, ops: list[dict[str, Any]], field: str, message: str
) -> None:
    spec = spec_from_proto(spec_msg(kind, source, ops))
    with pytest.raises(SpecError) as info:
        check_against_schema(spec, SCHEMA)
    assert info.value.field == field
    assert str(info.value) == message


def test_map_id_vocabulary_problems(tmp_path: Path) -> None:
    def rejects(path: Path) -> SpecError:
        spec = spec_from_proto(spec_msg(SPARSE, "ids", [{"op": "map_id", "path": str(path)}]))
        with pytest.raises(SpecError) as info:
            check_against_schema(spec, SCHEMA)
        assert info.value.field == "features[0].ops[0].path"
        return info.value

    fix = "give a readable text file with one int64 id per line and no repeats"
    missing = tmp_path / "missing.txt"
    assert str(rejects(missing)) == (
        f"features[0].ops[0].path: vocabulary file {str(missing)!r} does not exist; {fix}"
    )
    repeated = tmp_path / "rep.txt"
    repeated.write_text("1\n2\n1\n")
    assert str(rejects(repeated)) == (
        f"features[0].ops[0].path: vocabulary {str(repeated)!r} repeats an id (lines 1 and 3); "
        f"{fix}"
    )
    text = tmp_path / "text.txt"
    # A planted secret on a line: the error must not quote it (issue 13's /etc/shadow attack).
    text.write_text("1\nAPI_KEY=sk-live-0123456789\n")
    problem = rejects(text).problem
    assert problem == f"cannot read vocabulary {str(text)!r}: it is not one int64 id per line"
    assert "API_KEY" not in str(rejects(text)) and "sk-live" not in str(rejects(text))
    ok = tmp_path / "ok.txt"
    ok.write_text("5\n7\n")
    spec = spec_from_proto(spec_msg(SPARSE, "ids", [{"op": "map_id", "path": str(ok)}]))
    check_against_schema(spec, SCHEMA)


def test_accepted_type_changes() -> None:
    """Chains that change the value type are accepted where they end in the kind."""
    for kind, source, ops in [
        (
            SPARSE,
            "x",
            [{"op": "bucketize", "boundaries": [0.0, 1.0]}, {"op": "sigrid_hash", "max_value": 7}],
        ),
        (SPARSE, "n", [{"op": "onehot", "num_classes": 3}]),
        (SPARSE, "n", [{"op": "first_x", "x": 1}]),
        (DENSE, "n", [{"op": "log1p"}]),
        (DENSE, "ids", [{"op": "dedup"}, {"op": "list_length"}, {"op": "log1p"}]),
        (DENSE, "s", [{"op": "scale_to_0_1", "min": 0.0, "max": 2.0}, {"op": "score_max"}]),
        (SPARSE, "tags", [{"op": "hash_string", "max_value": 10}, {"op": "dedup"}]),
        (DENSE, "tags", [{"op": "list_length"}]),
        (SPARSE, "c", [{"op": "hash_string", "max_value": 10}]),
        (DENSE, "ids", [{"op": "jaccard", "other": "b"}]),
        (DENSE, "ids", [{"op": "jaccard", "other": "n"}]),
        (DENSE, "x", [{"op": "expr", "expr": "x * n + coalesce(label, 0)"}]),
        (SPARSE, "x", [{"op": "cast", "to": "id"}, {"op": "sigrid_hash", "max_value": 5}]),
    ]:
        check_against_schema(spec_from_proto(spec_msg(kind, source, ops)), SCHEMA)
