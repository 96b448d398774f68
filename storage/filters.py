"""Parses SQL-like filter text into pyarrow compute expressions, safely.

Owns: the filter language of dpp specs (``row_filter`` and ``partition_filter``). Text is
parsed by sqlglot into a syntax tree and compiled node by node into ``pyarrow.compute``
expressions; nothing is ever evaluated as Python, and any node outside a small allow-list is
rejected with a :class:`~storage.errors.FilterError` that names it.

Supported::

    comparisons   =  ==  !=  <>  <  <=  >  >=
    logic         AND  OR  NOT  ( ... )
    sets, ranges  x IN (1, 2)   x NOT IN ('a', 'b')   x BETWEEN 1 AND 5   x NOT BETWEEN ...
                  (IN lists hold literals, never NULL: a NULL there matches nothing in SQL)
    nulls         x IS NULL   x IS NOT NULL
    arithmetic    +  -  *  /  (unary minus too; ``/`` is always true division, as floats)
    literals      42  1.5  'text'  TRUE  FALSE  NULL
    columns       name  "quoted name"

Semantics are Arrow's, which match SQL's three-valued logic: a comparison with a null is null
and a null filter result drops the row. Integer ``+ - *`` wrap on overflow (no check per row).

Must never import: grpc, torch, ``dpp_server``, ``dpp_client``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, NoReturn

import pyarrow as pa
import pyarrow.compute as pc
import sqlglot
from sqlglot import exp

from storage.errors import FilterError

logger = logging.getLogger(__name__)

__all__ = ["Filter", "check_columns", "parse_filter", "validate_types"]

SUPPORTED = (
    "supported: comparisons (= == != <> < <= > >=), AND, OR, NOT, parentheses, IN (...), "
    "NOT IN (...), IS [NOT] NULL, BETWEEN a AND b, arithmetic (+ - * /), literals "
    "(numbers, 'strings', TRUE, FALSE, NULL) and column names (plain or \"quoted\")"
)

_MAX_LISTED_COLUMNS = 20
_NULL_BOOL = pc.scalar(pa.scalar(None, pa.bool_()))

_COMPARISONS: dict[type[exp.Expr], Callable[[Any, Any], Any]] = {
    exp.EQ: lambda a, b: a == b,
    exp.NEQ: lambda a, b: a != b,
    exp.LT: lambda a, b: a < b,
    exp.LTE: lambda a, b: a <= b,
    exp.GT: lambda a, b: a > b,
    exp.GTE: lambda a, b: a >= b,
}
_ARITHMETIC: dict[type[exp.Expr], Callable[[Any, Any], Any]] = {
    exp.Add: pc.add,
    exp.Sub: pc.subtract,
    exp.Mul: pc.multiply,
    # True division: SQL engines disagree on int/int, and truncating 7 / 2 to 3 in a filter
    # surprises more users than it helps.
    exp.Div: lambda a, b: pc.divide(a.cast(pa.float64()), b.cast(pa.float64())),
}


@dataclass(frozen=True)
class Filter:
    """A parsed filter: its text, the compiled expression, and the columns it reads.

    Attributes:
        text: the filter exactly as the user wrote it (kept for messages and logs).
        expression: the compiled pyarrow expression; pass it to scanners as ``filter=``.
        columns: every column name the filter refers to, so callers can check them against
            a table and project them for filtering.
        field: the spec field that held it (``row_filter`` or ``partition_filter``). Kept
            with the filter so that every later check blames the right field: the checks
            take it from here, never from a default.
    """

    text: str
    expression: pc.Expression
    columns: frozenset[str]
    field: str = "filter"


def parse_filter(text: str, field: str) -> Filter:
    """Parses ``text`` into a :class:`Filter` without ever evaluating it as code.

    Args:
        text: a SQL-like boolean expression, e.g. ``ds >= '2026-01-02' AND label = 1``.
        field: the spec field that held it (``row_filter`` or ``partition_filter``); it
            prefixes every error message so the user knows which filter to fix.

    Raises:
        FilterError: the text does not parse, holds more than one statement, or uses a
            construct outside the supported list.
    """
    if not text.strip():
        raise FilterError(field, "the filter is empty; give a boolean expression or omit it")
    try:
        parsed = sqlglot.parse(text)
    except sqlglot.errors.SqlglotError as exc:
        raise FilterError(
            field, f"cannot parse {text!r}: {_first_line(str(exc))}; {SUPPORTED}"
        ) from exc
    statements = [s for s in parsed if s is not None]
    if len(statements) != 1:
        raise FilterError(
            field,
            f"{text!r} holds {len(statements)} statements; a filter is one boolean "
            "expression (no ';')",
        )
    columns: set[str] = set()
    expression = _as_expr(_Compiler(field, text, columns).compile(statements[0]))
    return Filter(text=text, expression=expression, columns=frozenset(columns), field=field)


def check_columns(f: Filter, available: Collection[str], field: str | None = None) -> None:
    """Raises if ``f`` refers to a column that ``available`` lacks.

    Args:
        f: the parsed filter.
        available: the column names the filter may use (a table's schema names, or its
            partition columns for a partition filter).
        field: the spec field that held the filter, for the message; default ``f.field``.

    Raises:
        FilterError: naming the first unknown column (sorted) and listing the available
            ones, shortened when there are many.
    """
    known = set(available)
    unknown = sorted(f.columns - known)
    if not unknown:
        return
    field = field or f.field
    names = sorted(known)
    listed = ", ".join(names[:_MAX_LISTED_COLUMNS])
    if len(names) > _MAX_LISTED_COLUMNS:
        listed += f", ... ({len(names) - _MAX_LISTED_COLUMNS} more)"
    if not names:
        listed = "(none)"
    raise FilterError(
        field,
        f"{f.text!r} refers to unknown column {unknown[0]!r}; available columns: {listed}",
    )


def validate_types(f: Filter, schema: pa.Schema, field: str | None = None) -> None:
    """Raises if ``f`` does not type-check against ``schema`` or is not boolean.

    Binding happens on an empty table, so a filter comparing an int column to a string
    fails at planning time with a clear message instead of deep inside a worker.

    Raises:
        FilterError: naming the filter and Arrow's complaint.
    """
    field = field or f.field
    check_columns(f, schema.names, field)
    try:
        schema.empty_table().filter(f.expression)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        raise FilterError(
            field,
            f"{f.text!r} does not fit the table's column types: {_first_line(str(exc))}; "
            "compare columns with literals of their type (partition columns are strings, "
            "e.g. ds = '2026-01-01')",
        ) from exc


def _first_line(message: str) -> str:
    return message.strip().splitlines()[0] if message.strip() else message


class _Compiler:
    """Compiles one sqlglot tree; collects the columns it meets into ``columns``."""

    def __init__(self, field: str, text: str, columns: set[str]) -> None:
        self._field = field
        self._text = text
        self._columns = columns

    def compile(self, node: exp.Expr) -> Any:
        """Returns a ``pc.Expression`` or, for literal-only subtrees, a Python value."""
        if isinstance(node, exp.Paren):
            return self.compile(node.this)
        if isinstance(node, exp.And):
            return self._expr(node.this) & self._expr(node.expression)
        if isinstance(node, exp.Or):
            return self._expr(node.this) | self._expr(node.expression)
        if isinstance(node, exp.Not):
            return ~self._expr(node.this)
        comparison = _COMPARISONS.get(type(node))
        if comparison is not None:
            left, right = self.compile(node.this), self.compile(node.expression)
            return comparison(_as_expr(left), _as_expr(right))
        arithmetic = _ARITHMETIC.get(type(node))
        if arithmetic is not None:
            left, right = self.compile(node.this), self.compile(node.expression)
            return arithmetic(_as_expr(left), _as_expr(right))
        if isinstance(node, exp.Neg):
            operand = self.compile(node.this)
            if isinstance(operand, int | float) and not isinstance(operand, bool):
                # Fold now: a literal -5 must stay a literal so statistics pruning sees it.
                return -operand
            return pc.negate(_as_expr(operand))
        if isinstance(node, exp.In):
            return self._in(node)
        if isinstance(node, exp.Between):
            value = self._expr(node.this)
            low, high = self.compile(node.args["low"]), self.compile(node.args["high"])
            return (value >= _as_expr(low)) & (value <= _as_expr(high))
        if isinstance(node, exp.Is):
            if not isinstance(node.expression, exp.Null):
                self._reject(node, "IS is supported only as IS NULL / IS NOT NULL")
            return self._expr(node.this).is_null()
        if isinstance(node, exp.Column):
            return self._column(node)
        if isinstance(node, exp.Literal | exp.Boolean | exp.Null):
            return self._literal(node)
        self._reject(node, "")

    def _expr(self, node: exp.Expr) -> pc.Expression:
        return _as_expr(self.compile(node))

    def _in(self, node: exp.In) -> pc.Expression:
        extra = [k for k in ("query", "unnest", "field") if node.args.get(k) is not None]
        if extra or not node.expressions:
            self._reject(node, "IN takes a parenthesised list of literals, not a subquery")
        values = [self.compile(v) for v in node.expressions]
        if any(isinstance(v, pc.Expression) for v in values):
            self._reject(node, "IN lists hold literals only, not columns or expressions")
        if any(v is None for v in values):
            self._reject(node, "NULL never matches inside IN (...); use IS NULL instead")
        value = self._expr(node.this)
        try:
            found = value.isin(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise FilterError(
                self._field,
                f"the IN list {node.sql()!r} in {self._text!r} mixes literal types "
                f"({_first_line(str(exc))}); use literals of one type",
            ) from exc
        # Arrow's is_in says false for a null input; SQL says null, which matters under NOT:
        # ``x NOT IN (1, 2)`` must drop rows where x is null. Statistics pruning still sees
        # through if_else.
        return pc.if_else(value.is_valid(), found, _NULL_BOOL)

    def _column(self, node: exp.Column) -> pc.Expression:
        if node.table or not isinstance(node.this, exp.Identifier):
            self._reject(node, "columns are plain names without a table prefix")
        name = node.this.name
        self._columns.add(name)
        return pc.field(name)

    def _literal(self, node: exp.Expr) -> Any:
        if isinstance(node, exp.Null):
            return None
        if isinstance(node, exp.Boolean):
            return bool(node.this)
        literal: exp.Literal = node  # type: ignore[assignment]
        if literal.is_string:
            return str(literal.this)
        digits = str(literal.this)
        try:
            value = int(digits)
        except ValueError:
            try:
                return float(digits)
            except ValueError:
                self._reject(node, "numbers are decimal integers or floats")
        if not -(2**63) <= value < 2**63:
            self._reject(node, "integer literals must fit in 64 bits")
        return value

    def _reject(self, node: exp.Expr, hint: str) -> NoReturn:
        construct = node.sql()
        kind = type(node).__name__
        hint = f"{hint}; " if hint else ""
        raise FilterError(
            self._field,
            f"unsupported construct {construct!r} ({kind}) in {self._text!r}; {hint}{SUPPORTED}",
        )


def _as_expr(value: Any) -> pc.Expression:
    """Wraps Python literals as scalar expressions so operators build Arrow expressions."""
    if isinstance(value, pc.Expression):
        return value
    return pc.scalar(value)
