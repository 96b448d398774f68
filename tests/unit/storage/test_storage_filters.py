"""Filter language: every supported construct against a small table, and rejections."""

from __future__ import annotations

import pyarrow as pa
import pytest

from storage.errors import FilterError
from storage.filters import check_columns, parse_filter, validate_types

TABLE = pa.table(
    {
        "idx": list(range(6)),
        "a": pa.array([1, 2, 3, None, 5, 6], pa.int64()),
        "b": pa.array([0.5, 1.5, 2.5, 3.5, None, -1.0], pa.float64()),
        "s": pa.array(["x", "y", None, "x", "z", "y"], pa.string()),
        "my col": pa.array([True, False, True, None, False, True], pa.bool_()),
    }
)


def rows(text: str) -> list[int]:
    f = parse_filter(text, "row_filter")
    result: list[int] = TABLE.filter(f.expression).column("idx").to_pylist()
    return result


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a = 2", [1]),
        ("a == 2", [1]),
        ("a != 2", [0, 2, 4, 5]),
        ("a <> 2", [0, 2, 4, 5]),
        ("a < 3", [0, 1]),
        ("a <= 3", [0, 1, 2]),
        ("a > 3", [4, 5]),
        ("a >= 5", [4, 5]),
        ("a > 1 AND b < 3", [1, 2, 5]),
        ("a = 1 OR s = 'z'", [0, 4]),
        ("NOT a = 1", [1, 2, 4, 5]),
        ("(a = 1 OR a = 2) AND s = 'y'", [1]),
        ("a = 1 OR (a = 2 AND s = 'y')", [0, 1]),
        ("a IN (1, 3, 7)", [0, 2]),
        ("s IN ('x', 'z')", [0, 3, 4]),
        # SQL three-valued logic: a null s is neither IN nor NOT IN.
        ("s NOT IN ('x', 'y')", [4]),
        ("NOT (s IN ('x', 'y'))", [4]),
        ("a IS NULL", [3]),
        ("a IS NOT NULL", [0, 1, 2, 4, 5]),
        ("s IS NULL OR b IS NULL", [2, 4]),
        ("a BETWEEN 2 AND 5", [1, 2, 4]),
        ("a NOT BETWEEN 2 AND 5", [0, 5]),
        ("b BETWEEN -1.5 AND 0.5", [0, 5]),
        ("a + 1 = 3", [1]),
        ("a - 1 = 4", [4]),
        ("a * 2 = 12", [5]),
        ("a / 2 = 1.5", [2]),  # true division, not integer division
        ("-a < -4", [4, 5]),
        ("a * 2 + 1 > b * 4", [0, 5]),
        ("a > -1e1", [0, 1, 2, 4, 5]),
        ('"my col" = TRUE', [0, 2, 5]),
        ('"my col" = FALSE', [1, 4]),
        ('"my col"', [0, 2, 5]),
        ("a = NULL", []),  # SQL: comparing with NULL is never true
        ("1 = 1", [0, 1, 2, 3, 4, 5]),
    ],
)
def test_supported_construct_selects_expected_rows(text: str, expected: list[int]) -> None:
    assert rows(text) == expected


def test_filter_records_text_and_columns() -> None:
    f = parse_filter("a > 1 AND \"my col\" AND s IN ('x')", "row_filter")
    assert f.text == "a > 1 AND \"my col\" AND s IN ('x')"
    assert f.columns == frozenset({"a", "my col", "s"})


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("foo(a) > 1", "unsupported construct 'FOO(a)'"),
        ("a IN (SELECT 1)", "not a subquery"),
        ("a > 1; DROP TABLE t", "holds 2 statements"),
        ("SELECT a FROM t", "unsupported construct 'SELECT a FROM t'"),
        ("s LIKE 'x%'", "unsupported construct"),
        ("t.a > 1", "without a table prefix"),
        ("CAST(a AS INT) = 1", "unsupported construct"),
        ("a IS TRUE", "IS NULL / IS NOT NULL"),
        ("a IN (b, 1)", "literals only"),
        ("a IN (1, NULL)", "use IS NULL"),
        ("a IN (1, 'x')", "mixes literal types"),
        ("a = ?", "unsupported construct"),
        ("a % 2 = 0", "unsupported construct"),
        ("a = 1 OR", "cannot parse"),
        ("   ", "empty"),
        ("a = 99999999999999999999", "64 bits"),
    ],
)
def test_rejected_construct_names_field_and_problem(text: str, needle: str) -> None:
    with pytest.raises(FilterError) as info:
        parse_filter(text, "partition_filter")
    message = str(info.value)
    assert info.value.field == "partition_filter"
    assert message.startswith("partition_filter: ")
    assert needle in message


def test_unsupported_message_lists_what_is_supported() -> None:
    with pytest.raises(FilterError, match=r"supported: comparisons .* IN \(\.\.\.\)"):
        parse_filter("foo(a) > 1", "row_filter")


def test_check_columns_names_unknown_column_and_lists_available() -> None:
    f = parse_filter("a > 1 AND nope = 2", "row_filter")
    with pytest.raises(FilterError) as info:
        check_columns(f, ["a", "b", "s"])
    assert str(info.value) == (
        "row_filter: 'a > 1 AND nope = 2' refers to unknown column 'nope'; "
        "available columns: a, b, s"
    )


def test_check_columns_shortens_long_column_lists() -> None:
    f = parse_filter("nope = 1", "row_filter")
    with pytest.raises(FilterError, match=r"col_19, \.\.\. \(80 more\)$"):
        check_columns(f, [f"col_{i:02d}" for i in range(100)])


def test_check_columns_accepts_known_columns() -> None:
    check_columns(parse_filter("a > 1", "row_filter"), ["a"])


def test_validate_types_rejects_mismatched_literal() -> None:
    with pytest.raises(
        FilterError,
        match=r"a = 'x'\" does not fit the table's column types: Function 'equal' has no kernel",
    ):
        validate_types(parse_filter("a = 'x'", "row_filter"), TABLE.schema)
    with pytest.raises(FilterError, match="must evaluate to bool"):
        validate_types(parse_filter("a + 1", "row_filter"), TABLE.schema)
