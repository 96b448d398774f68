"""The op registry: how a feature op declares itself, validates its params and compiles.

Owns: :class:`OpDef` (one registered op), :class:`Param` (one declared parameter),
:func:`register`, :func:`get_op`, :func:`registered_ops`, :func:`validate_params`,
:func:`op_output` and :func:`op_columns`. Must never import grpc, storage or anything doing
I/O: ops are pure functions from a polars expression to a polars expression, compiled once per
session (``map_id`` alone reads its vocabulary file, once, when it is compiled).

Adding an op is additive: write it in the module of its family (``dense.py``, ``sparse.py``,
``lists.py``, ``overlap.py``, ``scores.py``, ``strings.py``, ``derived.py``, or a new module
imported by ``dpp_server/transforms/__init__.py``) and call :func:`register` at import time.
Nothing else changes: the spec validator, the pipeline and the docs table read the registry.

An op never sees rows. Its ``compile`` function receives the validated params and the value
type it is applied to, and returns an :data:`ExprFn`, which maps the op's input expression to
its output expression. Values between ops have one of five canonical types (:data:`VType`):

* ``dense``: ``Float32`` (nullable; NaN and infinities are values, not nulls);
* ``sparse``: ``List(Int64)`` with non-null ids (a whole list may be null);
* ``scores``: ``List(Float32)`` without null or NaN scores (a whole list may be null);
* ``string``: ``String`` (nullable);
* ``strings``: ``List(String)`` without null strings (a whole list may be null).

A feature's value type starts as its source column's type (decided by ``spec.py``) and each op
maps it to its :func:`op_output`; the last one must be the feature's kind (dense or sparse).

Ops reading other columns (``jaccard``'s ``other``, ``cross``'s ``other``, ``expr``'s
identifiers) name them in params of type ``column``; the pipeline adapts every such column to
its canonical type once per batch under :func:`input_name`, so an op refers to it as
``pl.col(input_name(column, vtype))`` without knowing the table's Arrow type.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

import polars as pl

from dpp_server.errors import SpecError

#: Canonical value types between ops (see the module docstring).
VType = Literal["dense", "sparse", "scores", "string", "strings"]
VTYPES: tuple[VType, ...] = ("dense", "sparse", "scores", "string", "strings")

#: Maps an op's input expression to its output expression; built once per session.
ExprFn = Callable[[pl.Expr], pl.Expr]

#: Validated, normalised params of one op call (every declared param present).
Params = Mapping[str, Any]

#: An inclusive range ``(lo, hi)`` of ids (see :attr:`OpDef.ids_range`).
IdRange = tuple[int, int]

#: Largest integer a ``google.protobuf.Struct`` number (a double) carries exactly. Integer
#: params beyond it would change value on the way through the proto, so they are refused.
MAX_EXACT_INT = 2**53

#: Largest finite float32; float params must fit, else they would become infinity on the wire.
FLOAT32_MAX = 3.4028234663852886e38

#: Longest list param (boundaries, ids): params travel in every session's proto and journal.
MAX_LIST_PARAM = 100_000

ParamType = Literal[
    "float",
    "optional_float",
    "int",
    "optional_int",
    "str",
    "choice",
    "float_list",
    "int_list",
    "column",
]


@dataclass(frozen=True)
class Param:
    """One declared parameter of an op.

    Attributes:
        name: key of the param in the op call (``{op: clamp, min: 0.0}`` has ``min``).
        type: ``float`` (finite, fits float32), ``optional_float`` (the same or null),
            ``int`` (integral, ``|v| <= 2**53`` so it survives the proto's doubles),
            ``optional_int`` (the same or null), ``str`` (non-empty text), ``choice`` (one of
            ``choices``), ``float_list`` / ``int_list`` (lists of those, at most
            :data:`MAX_LIST_PARAM` long) or ``column`` (a table column's name, read as
            ``vtype`` values and checked against the table's schema).
        default: value used when the param is absent; ``required`` must then be False.
        required: whether the param must be given.
        minimum: smallest accepted number (inclusive), or None for no bound.
        maximum: largest accepted number (inclusive), or None for no bound.
        choices: the accepted values of a ``choice`` param.
        vtype: the value type a ``column`` param's column is read as.
        doc: one line for error messages and ``docs/ops.md``.
    """

    name: str
    type: ParamType
    default: Any = None
    required: bool = False
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    vtype: VType = "dense"
    doc: str = ""


@dataclass(frozen=True)
class OpDef:
    """One registered op.

    Attributes:
        name: the op's name in a spec (``{op: <name>, ...}``).
        kinds: the value types the op accepts as input.
        params: declared params, in documentation order.
        compile: maps validated params and the input value type to the op's :data:`ExprFn`.
        output: the value type produced: a fixed type, None for "the input's type", or a
            function of the params (``cast``).
        check: optional cross-param check run after each param was validated on its own
            (e.g. ``min <= max``); raises :class:`SpecError` naming the param path given
            as its second argument's prefix.
        columns: optional extra columns read, as ``(param, column, vtype)``, for ops whose
            column references are not ``column`` params (``expr`` parses them from text).
        prepare: optional check of the op's external resource (``map_id``'s vocabulary
            file), run at session creation with the op call's path; raises SpecError.
        summary: one line for error messages and docs.
        ids_range: for ops producing ``sparse`` values, the inclusive range ``(lo, hi)`` every
            output id lies in, given the params and the input's range (None: unbounded).
            None (the default) means "unbounded": the feature's ids then travel as int64.
            A range within int32 lets them travel as int32, halving their wire bytes
            (:func:`ids_range`); declare one only when the op guarantees it for every input.
    """

    name: str
    kinds: frozenset[VType]
    params: tuple[Param, ...]
    compile: Callable[[Params, VType], ExprFn]
    output: VType | Callable[[Params], VType] | None = None
    check: Callable[[Params, str], None] | None = None
    columns: Callable[[Params], tuple[tuple[str, str, VType], ...]] | None = None
    prepare: Callable[[Params, str], None] | None = None
    summary: str = ""
    ids_range: Callable[[Params, IdRange | None], IdRange | None] | None = None
    param_names: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "param_names", tuple(p.name for p in self.params))


def input_name(column: str, vtype: VType) -> str:
    """The frame column holding table column ``column`` adapted to ``vtype`` (pipeline)."""
    return f"__in.{vtype}.{column}"


def op_output(op: OpDef, params: Params, vtype: VType) -> VType:
    """The value type ``op`` produces from ``vtype`` input with ``params``."""
    if op.output is None:
        return vtype
    if callable(op.output):
        return op.output(params)
    return op.output


def op_columns(op: OpDef, params: Params) -> tuple[tuple[str, str, VType], ...]:
    """Every other table column an op call reads, as ``(param, column, vtype)``.

    ``param`` names the param that refers to the column (for error paths), in param order.
    """
    refs = [(p.name, params[p.name], p.vtype) for p in op.params if p.type == "column"]
    if op.columns is not None:
        refs.extend(op.columns(params))
    return tuple(refs)


def ids_range(op: OpDef, params: Params, given: IdRange | None) -> IdRange | None:
    """The range of the ids ``op`` produces from ids in ``given`` (None: unbounded)."""
    return None if op.ids_range is None else op.ids_range(params, given)


def keeps_range(params: Params, given: IdRange | None) -> IdRange | None:
    """``ids_range`` of ops that only drop, reorder or repeat their input's ids."""
    del params
    return given


def below_max_value(params: Params, given: IdRange | None) -> IdRange | None:
    """``ids_range`` of the hashing ops: ``[0, max_value)`` whatever the input."""
    del given
    return (0, int(params["max_value"]) - 1)


def describe_vtypes(vtypes: Iterable[VType]) -> str:
    """``dense or sparse``-style text for messages, in :data:`VTYPES` order."""
    wanted = set(vtypes)
    return " or ".join(t for t in VTYPES if t in wanted)


_REGISTRY: dict[str, OpDef] = {}


def register(op: OpDef) -> None:
    """Adds an op to the registry; called once per op at import of its family module.

    Raises:
        ValueError: the name is taken. This is a programming error, caught by the unit tests.
    """
    if op.name in _REGISTRY:
        raise ValueError(f"op {op.name!r} is registered twice")
    _REGISTRY[op.name] = op


def get_op(name: str) -> OpDef | None:
    """Returns the op registered under ``name``, or None when there is none."""
    return _REGISTRY.get(name)


def registered_ops() -> tuple[str, ...]:
    """Returns the names of every registered op, sorted (stable error messages and docs)."""
    return tuple(sorted(_REGISTRY))


def validate_params(op: OpDef, raw: Mapping[str, Any], path: str) -> Params:
    """Validates one op call's params and fills in defaults.

    Values come from a ``google.protobuf.Struct``, so every number arrives as a float; ``int``
    params accept integral floats and normalise them to ``int``.

    Args:
        op: the op being called.
        raw: the params as written (op name excluded).
        path: the op call's path, e.g. ``features[3].ops[1]``; errors name
            ``<path>.<param>``.

    Returns:
        A read-only mapping holding every declared param, in declaration order.

    Raises:
        SpecError: an unknown param, a missing required one, or a bad value.
    """
    for key in raw:
        if key not in op.param_names:
            allowed = ", ".join(op.param_names) if op.param_names else "none (it takes no params)"
            raise SpecError(
                f"{path}.{key}",
                f"unknown param {key!r} for op {op.name!r}",
                f"allowed params: {allowed}",
            )
    out: dict[str, Any] = {}
    for param in op.params:
        ppath = f"{path}.{param.name}"
        value = raw.get(param.name)
        if value is None and param.type not in _NULLABLE:
            if param.required:
                raise SpecError(ppath, f"op {op.name!r} needs param {param.name!r}", param.doc)
            out[param.name] = param.default
            continue
        out[param.name] = _coerce(param, value, ppath)
    params = MappingProxyType(out)
    if op.check is not None:
        op.check(params, path)
    return params


_NULLABLE = frozenset({"optional_float", "optional_int"})


def _coerce(param: Param, value: Any, path: str) -> Any:
    """Checks one param value against its declaration and returns it normalised."""
    if param.type in _NULLABLE and value is None:
        return None
    if param.type in ("str", "column"):
        if not isinstance(value, str) or not value.strip():
            raise SpecError(path, f"expected a non-empty string, got {value!r}", param.doc)
        return value
    if param.type == "choice":
        if value not in param.choices:
            raise SpecError(
                path, f"expected one of {', '.join(param.choices)}, got {value!r}", param.doc
            )
        return value
    if param.type in ("float_list", "int_list"):
        if not isinstance(value, list | tuple):
            raise SpecError(path, f"expected a list, got {value!r}", param.doc)
        if len(value) > MAX_LIST_PARAM:
            raise SpecError(
                path, f"holds {len(value)} values, more than {MAX_LIST_PARAM}", param.doc
            )
        item_type: ParamType = "float" if param.type == "float_list" else "int"
        item = Param(
            param.name, item_type, minimum=param.minimum, maximum=param.maximum, doc=param.doc
        )
        return tuple(_coerce(item, v, f"{path}[{i}]") for i, v in enumerate(value))
    return _coerce_number(param, value, path)


def _coerce_number(param: Param, value: Any, path: str) -> float | int:
    # bool is an int subclass in Python and a distinct kind in a Struct: never a number here.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SpecError(path, f"expected a number, got {value!r}", param.doc)
    result: float | int
    if param.type in ("int", "optional_int"):
        if isinstance(value, float) and not value.is_integer():
            raise SpecError(path, f"expected an integer, got {value!r}", param.doc)
        if not math.isfinite(value) or abs(value) > MAX_EXACT_INT:
            raise SpecError(
                path,
                f"{value!r} is beyond ±2**53, the largest integer a spec carries exactly",
                param.doc,
            )
        result = int(value)
    else:
        if not math.isfinite(value):
            raise SpecError(path, f"expected a finite number, got {value!r}", param.doc)
        if abs(value) > FLOAT32_MAX:
            raise SpecError(
                path,
                f"{value!r} does not fit float32 (largest {FLOAT32_MAX!r})",
                param.doc,
            )
        result = float(value)
    integral = param.type in ("int", "optional_int")
    if param.minimum is not None and result < param.minimum:
        minimum = int(param.minimum) if integral else param.minimum
        raise SpecError(path, f"must be >= {minimum}, got {result!r}", param.doc)
    if param.maximum is not None and result > param.maximum:
        maximum = int(param.maximum) if integral else param.maximum
        raise SpecError(path, f"must be <= {maximum}, got {result!r}", param.doc)
    return result
