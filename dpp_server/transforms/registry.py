"""The op registry: how a feature op declares itself, validates its params and compiles.

Owns: :class:`OpDef` (one registered op), :class:`Param` (one declared parameter),
:func:`register`, :func:`get_op`, :func:`registered_ops` and :func:`validate_params`.
Must never import grpc, storage or anything doing I/O: ops are pure functions from a polars
expression to a polars expression, compiled once per session.

Adding an op is additive: write it in the module of its family (``dense.py``, ``sparse.py``,
or a new ``<family>.py`` imported by ``dpp_server/transforms/__init__.py``) and call
:func:`register` at import time. Nothing else changes: the spec validator, the pipeline and
the docs table all read the registry.

An op never sees rows. Its ``compile`` function receives the validated params and returns an
:data:`ExprFn`, which maps the feature's input expression to its output expression. Ops of a
kind agree on the canonical column type between ops, which is what lets them chain:

* dense: ``Float32`` (nullable; NaN and infinities are values, not nulls);
* sparse: ``List(Int64)`` with non-null ids (a whole list may be null).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

import polars as pl

from dpp_server.errors import SpecError

if TYPE_CHECKING:
    from dpp_server.spec import Kind

#: Maps a feature's input expression to its output expression; built once per session.
ExprFn = Callable[[pl.Expr], pl.Expr]

#: Validated, normalised params of one op call (every declared param present).
Params = Mapping[str, Any]

#: Largest integer a ``google.protobuf.Struct`` number (a double) carries exactly. Integer
#: params beyond it would change value on the way through the proto, so they are refused.
MAX_EXACT_INT = 2**53

#: Largest finite float32; float params must fit, else they would become infinity on the wire.
FLOAT32_MAX = 3.4028234663852886e38

ParamType = Literal["float", "optional_float", "int"]


@dataclass(frozen=True)
class Param:
    """One declared parameter of an op.

    Attributes:
        name: key of the param in the op call (``{op: clamp, min: 0.0}`` has ``min``).
        type: ``float`` (finite, fits float32), ``optional_float`` (the same or null) or
            ``int`` (integral, ``|v| <= 2**53`` so it survives the proto's doubles).
        default: value used when the param is absent; ``required`` must then be False.
        required: whether the param must be given.
        minimum: smallest accepted value (inclusive), or None for no bound.
        doc: one line for error messages and ``docs/ops.md``.
    """

    name: str
    type: ParamType
    default: Any = None
    required: bool = False
    minimum: float | None = None
    doc: str = ""


@dataclass(frozen=True)
class OpDef:
    """One registered op.

    Attributes:
        name: the op's name in a spec (``{op: <name>, ...}``).
        kinds: the feature kinds the op applies to.
        params: declared params, in documentation order.
        compile: maps validated params to the op's :data:`ExprFn`.
        check: optional cross-param check run after each param was validated on its own
            (e.g. ``min <= max``); raises :class:`SpecError` naming the param path given
            as its second argument's prefix.
        summary: one line for error messages and docs.
    """

    name: str
    kinds: frozenset[Kind]
    params: tuple[Param, ...]
    compile: Callable[[Params], ExprFn]
    check: Callable[[Params, str], None] | None = None
    summary: str = ""
    param_names: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "param_names", tuple(p.name for p in self.params))


_REGISTRY: dict[str, OpDef] = {}


def register(op: OpDef) -> OpDef:
    """Adds an op to the registry; called once per op at import of its family module.

    Raises:
        ValueError: the name is taken. This is a programming error, caught by the unit tests.
    """
    if op.name in _REGISTRY:
        raise ValueError(f"op {op.name!r} is registered twice")
    _REGISTRY[op.name] = op
    return op


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
        if param.name not in raw or (raw[param.name] is None and param.type != "optional_float"):
            if param.required:
                raise SpecError(ppath, f"op {op.name!r} needs param {param.name!r}", param.doc)
            out[param.name] = param.default
            continue
        out[param.name] = _coerce(param, raw[param.name], ppath)
    params = MappingProxyType(out)
    if op.check is not None:
        op.check(params, path)
    return params


def _coerce(param: Param, value: Any, path: str) -> Any:
    """Checks one param value against its declaration and returns it normalised."""
    if param.type == "optional_float" and value is None:
        return None
    # bool is an int subclass in Python and a distinct kind in a Struct: never a number here.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SpecError(path, f"expected a number, got {value!r}", param.doc)
    result: float | int
    if param.type == "int":
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
    if param.minimum is not None and result < param.minimum:
        minimum = int(param.minimum) if param.type == "int" else param.minimum
        raise SpecError(path, f"must be >= {minimum}, got {result!r}", param.doc)
    return result


def iter_ops() -> Iterable[OpDef]:
    """Yields every registered op in name order (for docs and tests)."""
    return (_REGISTRY[name] for name in registered_ops())
