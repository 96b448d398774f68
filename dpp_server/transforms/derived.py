"""Derived values: ``expr``, a dense value computed from the feature's value and other columns.

Owns the ``expr`` op and its small arithmetic language. Text is parsed by sqlglot into a
syntax tree and compiled node by node into one polars expression; nothing is ever evaluated as
Python, and any node outside the allow-list is refused with the op's path. Must never import
grpc, storage or do I/O.

Language::

    x                    the feature's current value (a dense value)
    name, "quoted name"  another table column, read as a dense value (numeric, as float32)
    1, 2.5, 1e-3         numbers
    + - * /  -a  ( )     arithmetic (``/`` is IEEE division: x / 0 is ±inf, 0 / 0 is NaN)
    abs ln log log1p exp sqrt      one-argument functions (``log`` is the natural log)
    power(a, b)  coalesce(a, b, ...)

Everything is computed in float64 and rounded to float32 once, at the end. A null operand makes
the result null (``coalesce`` picks its first non-null argument).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NoReturn

import polars as pl
import sqlglot
from sqlglot import exp

from dpp_server.errors import SpecError
from dpp_server.transforms.registry import ExprFn, OpDef, Param, Params, VType, input_name, register

_DENSE: frozenset[VType] = frozenset({"dense"})
#: The identifier that stands for the feature's current value.
CURRENT = "x"
SUPPORTED = (
    "supported: x (the feature's value), column names, numbers, + - * /, parentheses, "
    "abs() ln() log() log1p() exp() sqrt(), power(a, b), coalesce(a, ...)"
)

_BINARY: dict[type[exp.Expr], Callable[[pl.Expr, pl.Expr], pl.Expr]] = {
    exp.Add: lambda a, b: a + b,
    exp.Sub: lambda a, b: a - b,
    exp.Mul: lambda a, b: a * b,
    exp.Div: lambda a, b: a / b,
    exp.Pow: lambda a, b: a.pow(b),
}
_UNARY: dict[type[exp.Expr], Callable[[pl.Expr], pl.Expr]] = {
    exp.Abs: lambda a: a.abs(),
    exp.Ln: lambda a: a.log(),
    exp.Log: lambda a: a.log(),
    exp.Exp: lambda a: a.exp(),
    exp.Sqrt: lambda a: a.sqrt(),
}
_ANONYMOUS: dict[str, Callable[[pl.Expr], pl.Expr]] = {"log1p": lambda a: a.log1p()}


class _Compiler:
    """Compiles one parsed expression; collects the columns it reads into ``columns``."""

    def __init__(self, path: str, text: str) -> None:
        self.path = path
        self.text = text
        self.columns: list[str] = []

    def compile(self, node: exp.Expr, current: pl.Expr) -> pl.Expr:
        if isinstance(node, exp.Paren):
            return self.compile(node.this, current)
        binary = _BINARY.get(type(node))
        if binary is not None:
            return binary(self.compile(node.this, current), self.compile(node.expression, current))
        unary = _UNARY.get(type(node))
        if unary is not None:
            if isinstance(node, exp.Log) and node.expression is not None:
                self._reject(node, "log takes one argument (the natural log)")
            return unary(self.compile(node.this, current))
        if isinstance(node, exp.Anonymous):
            fn = _ANONYMOUS.get(str(node.this).lower())
            if fn is None or len(node.expressions) != 1:
                self._reject(node, "unknown function or wrong number of arguments")
            return fn(self.compile(node.expressions[0], current))
        if isinstance(node, exp.Coalesce):
            args = [node.this, *node.expressions]
            return pl.coalesce([self.compile(a, current) for a in args])
        if isinstance(node, exp.Neg):
            return -self.compile(node.this, current)
        if isinstance(node, exp.Literal) and not node.is_string:
            try:
                return pl.lit(float(str(node.this)), dtype=pl.Float64)
            except ValueError:
                self._reject(node, "numbers are decimal integers or floats")
        if isinstance(node, exp.Column):
            if node.table or not isinstance(node.this, exp.Identifier):
                self._reject(node, "columns are plain names without a table prefix")
            name = node.this.name
            if name == CURRENT and not node.this.quoted:
                return current
            if name not in self.columns:
                self.columns.append(name)
            return pl.col(input_name(name, "dense")).cast(pl.Float64)
        self._reject(node, "")

    def _reject(self, node: exp.Expr, hint: str) -> NoReturn:
        hint = f"{hint}; " if hint else ""
        raise SpecError(
            f"{self.path}.expr",
            f"unsupported construct {node.sql()!r} ({type(node).__name__}) in {self.text!r}",
            f"{hint}{SUPPORTED}",
        )


def parse_expr(text: str, path: str) -> tuple[exp.Expr, list[str]]:
    """Parses and checks an ``expr`` text; returns its tree and the columns it reads.

    Raises:
        SpecError: at ``<path>.expr`` when the text does not parse or uses an unsupported
            construct.
    """
    try:
        statements = [s for s in sqlglot.parse(text) if s is not None]
    except sqlglot.errors.SqlglotError as exc:
        first = str(exc).strip().splitlines()[0]
        raise SpecError(f"{path}.expr", f"cannot parse {text!r}: {first}", SUPPORTED) from exc
    if len(statements) != 1:
        raise SpecError(
            f"{path}.expr", f"{text!r} holds {len(statements)} expressions", "write exactly one"
        )
    compiler = _Compiler(path, text)
    compiler.compile(statements[0], pl.lit(0.0, dtype=pl.Float64))
    return statements[0], compiler.columns


def _compile_expr(params: Params, vtype: VType) -> ExprFn:
    """``expr(expr)``: a dense value computed by an arithmetic expression.

    Semantics: ``y = float32(expr)`` evaluated in float64, where ``x`` is the feature's
    current value and other names are table columns read as dense values (see the module
    docstring for the language). A null operand gives null (``coalesce`` excepted); NaN and
    infinities follow IEEE arithmetic. Params: ``expr`` (text, required).
    """
    del vtype
    tree, _ = parse_expr(params["expr"], "expr")
    compiler = _Compiler("expr", params["expr"])
    return lambda expr: compiler.compile(tree, expr.cast(pl.Float64)).cast(pl.Float32)


def _check_expr(params: Params, path: str) -> None:
    parse_expr(params["expr"], path)


def _expr_columns(params: Params) -> tuple[tuple[str, str, VType], ...]:
    _, columns = parse_expr(params["expr"], "expr")
    return tuple(("expr", c, "dense") for c in columns)


register(
    OpDef(
        name="expr",
        kinds=_DENSE,
        params=(
            Param(
                "expr",
                "str",
                required=True,
                doc="arithmetic over x (the value) and columns, e.g. 'x / (clicks + 1)'",
            ),
        ),
        compile=_compile_expr,
        check=_check_expr,
        columns=_expr_columns,
        summary="an arithmetic expression of the value and other columns",
    )
)
