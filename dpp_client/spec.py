"""Python form of the session spec (``spec.proto``), and its YAML/dict/proto conversions.

Owns: :class:`Op`, :class:`Feature`, :class:`SessionSpec`. These mirror ``spec.proto`` field by
field so a trainer can write a spec in Python or YAML. Only light local checks run here (field
names and types) so typos fail before any RPC; the master validates authoritatively (op names,
op parameters, columns) and answers INVALID_ARGUMENT naming the field. Must never import
``dpp_server`` or ``storage``.

YAML form (ops list their parameters flat beside ``op``)::

    table_uri: /data/ctr
    batch_size: 4096
    label: label
    features:
      - name: dense_0
        kind: dense
        ops:
          - {op: fill_null, value: 0.0}
          - {op: log1p}
      - name: sparse_0
        kind: sparse
        ops:
          - {op: sigrid_hash, max_value: 100000}
"""

from __future__ import annotations

import functools
import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, cast

import yaml
from google.protobuf import json_format

from dpp_client.errors import SpecRejectedError
from dpp_proto import defaults, spec_pb2

__all__ = ["Feature", "FeatureKind", "Op", "SessionSpec"]

FeatureKind = Literal["dense", "sparse"]

_KIND_TO_PROTO: dict[str, int] = {
    "dense": spec_pb2.FEATURE_KIND_DENSE,
    "sparse": spec_pb2.FEATURE_KIND_SPARSE,
}
_PROTO_TO_KIND: dict[int, FeatureKind] = {
    spec_pb2.FEATURE_KIND_DENSE: "dense",
    spec_pb2.FEATURE_KIND_SPARSE: "sparse",
}


def _reject(field_path: str, problem: str) -> SpecRejectedError:
    return SpecRejectedError(
        f"{field_path}: {problem} (checked locally, before contacting the master)",
        field=field_path,
    )


def _check_type(field_path: str, value: object, types: type | tuple[type, ...]) -> None:
    # bool is an int subclass; a YAML `true` where a number belongs is a typo, not a 1.
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise _reject(field_path, f"expected {types}, got bool {value!r}")
    if not isinstance(value, types):
        raise _reject(field_path, f"expected {types}, got {type(value).__name__} {value!r}")


@dataclass(frozen=True)
class Op:
    """One transform applied to a feature; ops run in spec order.

    Attributes:
        op: registered op name, e.g. ``"fill_null"``; the master checks it exists.
        params: JSON-like parameters, e.g. ``{"value": 0.0}``. On the wire they travel as a
            ``google.protobuf.Struct``, where every number is a double.
    """

    op: str
    params: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "op") -> Op:
        """Builds an op from its YAML form ``{op: name, param: value, ...}``.

        A nested ``params:`` mapping is accepted too, for specs written from ``to_dict``-like
        JSON.
        """
        _check_type(where, data, Mapping)
        if "op" not in data:
            raise _reject(f"{where}.op", "missing op name")
        name = data["op"]
        _check_type(f"{where}.op", name, str)
        rest = {k: v for k, v in data.items() if k != "op"}
        if set(rest) == {"params"} and isinstance(rest["params"], Mapping):
            rest = dict(rest["params"])
        for key in rest:
            _check_type(f"{where}.{key}", key, str)
        return cls(op=name, params=rest)

    def to_dict(self) -> dict[str, Any]:
        """Returns the YAML form: params flat beside ``op``."""
        return {"op": self.op, **self.params}

    def to_proto(self) -> spec_pb2.OpSpec:
        """Returns the ``OpSpec`` message."""
        msg = spec_pb2.OpSpec(op=self.op)
        msg.params.update(self.params)
        return msg

    @classmethod
    def from_proto(cls, msg: spec_pb2.OpSpec) -> Op:
        """Inverse of :meth:`to_proto`; numbers come back as floats (Struct holds doubles)."""
        return cls(op=msg.op, params=json_format.MessageToDict(msg.params))


@dataclass(frozen=True)
class Feature:
    """One output feature.

    Attributes:
        name: feature name in the delivered batch.
        kind: ``"dense"`` (one float32 per row) or ``"sparse"`` (a list of int64 ids per row).
        source: input column of the table; empty means ``name``.
        ops: transforms, in order.
        dedup_group: deduplicate this sparse feature with the others of the same group per
            batch (RecD); the batch then carries them in ``Batch.dedup[group]``.
    """

    name: str
    kind: FeatureKind
    source: str = ""
    ops: tuple[Op, ...] = ()
    dedup_group: str = ""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "feature") -> Feature:
        """Builds a feature from its YAML form."""
        _check_type(where, data, Mapping)
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise _reject(f"{where}.{sorted(unknown, key=str)[0]!s}", "unknown feature field")
        for key in ("name", "kind"):
            if key not in data:
                raise _reject(f"{where}.{key}", "missing")
        name = data["name"]
        kind = data["kind"]
        _check_type(f"{where}.name", name, str)
        if kind not in _KIND_TO_PROTO:
            raise _reject(f"{where}.kind", f"expected 'dense' or 'sparse', got {kind!r}")
        source = data.get("source", "")
        dedup_group = data.get("dedup_group", "")
        _check_type(f"{where}.source", source, str)
        _check_type(f"{where}.dedup_group", dedup_group, str)
        raw_ops = data.get("ops") or []
        _check_type(f"{where}.ops", raw_ops, (list, tuple))
        ops = tuple(Op.from_dict(o, f"{where}.ops[{i}]") for i, o in enumerate(raw_ops))
        return cls(
            name=name,
            kind=cast(FeatureKind, kind),
            source=source,
            ops=ops,
            dedup_group=dedup_group,
        )

    def to_dict(self) -> dict[str, Any]:
        """Returns the YAML form, omitting empty optional fields."""
        out: dict[str, Any] = {"name": self.name, "kind": self.kind}
        if self.source:
            out["source"] = self.source
        if self.ops:
            out["ops"] = [o.to_dict() for o in self.ops]
        if self.dedup_group:
            out["dedup_group"] = self.dedup_group
        return out

    def to_proto(self) -> spec_pb2.FeatureSpec:
        """Returns the ``FeatureSpec`` message."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(
            kind=cast(spec_pb2.FeatureKind, _KIND_TO_PROTO[self.kind]),
            ops=[o.to_proto() for o in self.ops],
        )
        return spec_pb2.FeatureSpec(**values)

    @classmethod
    def from_proto(cls, msg: spec_pb2.FeatureSpec) -> Feature:
        """Inverse of :meth:`to_proto`."""
        if msg.kind not in _PROTO_TO_KIND:
            raise _reject(f"features[{msg.name}].kind", f"unknown kind {msg.kind}")
        values = {f.name: getattr(msg, f.name) for f in fields(cls)}
        values.update(kind=_PROTO_TO_KIND[msg.kind], ops=tuple(Op.from_proto(o) for o in msg.ops))
        return cls(**values)


def absolute_table_uri(uri: str) -> str:
    """``uri`` with a relative local path made absolute against the working folder; any
    other URI (``s3://``, ``memory://``, an absolute path) unchanged."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        scheme, rest = "", uri
    if scheme.lower() not in ("", "file", "local") or not rest:
        return uri
    path = os.path.abspath(os.path.expanduser(rest))
    return path if not sep else f"{scheme}://{path}"


@dataclass(frozen=True)
class SessionSpec:
    """What a trainer asks dpp to read and how to preprocess it (mirrors ``spec.proto``).

    Attributes:
        table_uri: path, file://, memory:// or s3:// URI of a Hive-partitioned Parquet (or
            ORC) table, or ``iceberg://catalog/namespace.table[@snapshot_id]`` for an Apache
            Iceberg table (docs/tables.md, "Iceberg"). A relative local path (``data/ctr``,
            ``file://data/ctr``, ``~/ctr``) is made absolute here, against this process's
            working folder, because the master runs elsewhere and would resolve it against its
            own.
        features: output features; dense ones are stacked in this order.
        batch_size: rows per batch. Larger amortises per-batch overhead; smaller lowers
            latency and memory.
        label: label column (float32), or empty for none.
        weight: weight column (float32), or empty for none.
        passthrough: columns delivered unchanged as ``Batch.extras`` (e.g. ``row_id``).
        partition_filter: SQL-like predicate over partition columns; prunes files unopened.
        row_filter: SQL-like predicate over any columns; pushed down to row-group statistics.
        epochs: passes over the table.
        seed: seed of the split order and the row order within read chunks (with
            ``shuffle``), and of sampling (with ``sample_key``): the same seed gives the
            same order and the same sampled rows.
        world_size: ranks sharing the session; each receives disjoint splits.
        target_split_rows: rows per split; larger means fewer master round trips, smaller
            balances load better. 0: the master's default.
        shuffle: shuffle split order (and rows within read chunks) each epoch, seeded.
        deterministic: each rank gets a byte-identical batch sequence for a seed, whatever the
            number of workers and across failures and restarts; slower than arrival order.
        max_splits_in_flight: splits leased ahead of consumption in deterministic mode; more
            hides slow splits, each may sit in the client's memory. 0: the master's default
            (``dpp_proto.defaults.MAX_SPLITS_IN_FLIGHT``).
        storage_options: fsspec options (endpoint_url, key, secret for s3://).
        negative_downsample_rate: share of label-0 rows kept, in (0, 1]; kept negatives get
            weight 1/rate (multiplied into ``weight``). Lower cuts cost on imbalanced data,
            adds variance. 1: keep all.
        sample_rate: share of all rows kept, in (0, 1], without weights. 1: keep all.
        sample_key: integer or string column deciding sampling per row (with ``seed``), so a
            re-produced split keeps the same rows; required when a rate is below 1.
        dedup_min_share: auto deduplication, in [0, 1): a dedup group travels deduplicated
            in a batch only when at least this share of its rows repeat there; 0: always.
            Higher skips batches where inverse indices save little (``docs/dedup.md``).
        share: shared production across jobs: sessions with ``share`` whose specs shape the
            same rows (they may differ in batch size, epochs, seed, shuffle, ranks) are
            steered through the same splits, so each split is read and transformed once and
            served from the worker's memory to every job. Each job keeps its own epochs,
            ranks, acks, resume and exactly-once delivery; a job that falls more than the
            workers' share window behind produces its own (``docs/worker-efficiency.md``).
    """

    table_uri: str
    features: tuple[Feature, ...]
    batch_size: int = 4096
    label: str = ""
    weight: str = ""
    passthrough: tuple[str, ...] = ()
    partition_filter: str = ""
    row_filter: str = ""
    epochs: int = defaults.EPOCHS
    seed: int = 0
    world_size: int = defaults.WORLD_SIZE
    target_split_rows: int = 0
    shuffle: bool = False
    storage_options: dict[str, str] = field(default_factory=dict)
    deterministic: bool = False
    max_splits_in_flight: int = 0
    negative_downsample_rate: float = defaults.RATE
    sample_rate: float = defaults.RATE
    sample_key: str = ""
    dedup_min_share: float = 0.0
    share: bool = False

    def __post_init__(self) -> None:
        # Accept lists for convenience but store tuples, so specs stay immutable.
        object.__setattr__(self, "features", tuple(self.features))
        object.__setattr__(self, "passthrough", tuple(self.passthrough))
        self.check()
        object.__setattr__(self, "table_uri", absolute_table_uri(self.table_uri))

    def check(self) -> None:
        """Runs the light local type checks; the master does the real validation.

        Raises:
            SpecRejectedError: naming the first offending field.
        """
        for name, kind in _scalar_fields().items():
            value = getattr(self, name)
            # A float field takes an int too (YAML writes 1 for 1.0).
            _check_type(name, value, (int, float) if kind is float else kind)
            if kind is int:
                low, high = _int_range(name)
                if not low <= value <= high:
                    zero = defaults.SPEC_ZERO_MEANS.get(name)
                    means = f" (0 means {zero})" if zero is not None else ""
                    raise _reject(name, f"must be between {low} and {high}{means}, got {value}")
        for i, f in enumerate(self.features):
            _check_type(f"features[{i}]", f, Feature)
        for i, p in enumerate(self.passthrough):
            _check_type(f"passthrough[{i}]", p, str)
        _check_type("storage_options", self.storage_options, dict)
        for k, v in self.storage_options.items():
            _check_type(f"storage_options.{k}", v, str)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SessionSpec:
        """Builds a spec from its dict/YAML form (field names as in ``spec.proto``).

        Raises:
            SpecRejectedError: an unknown field, a missing ``table_uri``, or a wrong type.
        """
        _check_type("spec", data, Mapping)
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise _reject(
                str(sorted(unknown, key=str)[0]),
                f"unknown spec field; known fields: {sorted(known)}",
            )
        if "table_uri" not in data:
            raise _reject("table_uri", "missing")
        raw_features = data.get("features") or []
        _check_type("features", raw_features, (list, tuple))
        features = tuple(
            f if isinstance(f, Feature) else Feature.from_dict(f, f"features[{i}]")
            for i, f in enumerate(raw_features)
        )
        kwargs: dict[str, Any] = {k: v for k, v in data.items() if k != "features"}
        if "passthrough" in kwargs:
            _check_type("passthrough", kwargs["passthrough"], (list, tuple))
            kwargs["passthrough"] = tuple(kwargs["passthrough"])
        if "storage_options" in kwargs:
            _check_type("storage_options", kwargs["storage_options"], Mapping)
            kwargs["storage_options"] = dict(kwargs["storage_options"])
        return cls(features=features, **kwargs)

    @classmethod
    def from_yaml(cls, path_or_text: str | os.PathLike[str]) -> SessionSpec:
        """Builds a spec from a YAML file path or YAML text.

        A ``PathLike``, or a one-line string naming an existing file, is read as a file;
        anything else is parsed as YAML text.
        """
        if isinstance(path_or_text, os.PathLike) or (
            "\n" not in path_or_text and Path(path_or_text).is_file()
        ):
            text = Path(path_or_text).read_text(encoding="utf-8")
        else:
            text = str(path_or_text)
        data = yaml.safe_load(text)
        if not isinstance(data, Mapping):
            raise _reject("spec", f"YAML must hold a mapping, got {type(data).__name__}")
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        """Returns the dict/YAML form; ``from_dict(to_dict())`` gives an equal spec."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out.update(
            features=[f.to_dict() for f in self.features],
            passthrough=list(self.passthrough),
            storage_options=dict(self.storage_options),
        )
        return out

    def to_proto(self) -> spec_pb2.SessionSpec:
        """Returns the ``SessionSpec`` message sent in ``CreateSessionRequest``."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["features"] = [f.to_proto() for f in self.features]
        return spec_pb2.SessionSpec(**values)

    @classmethod
    def from_proto(cls, msg: spec_pb2.SessionSpec) -> SessionSpec:
        """Inverse of :meth:`to_proto`. A field the proto says "0 means a default" and that
        is 0 takes this class's default (``epochs`` 0 becomes 1, ``max_splits_in_flight`` 0
        stays 0: the master's default)."""
        own = fields(cls)
        zero_means = {f.name: f.default for f in own if f.name in defaults.SPEC_ZERO_MEANS}
        values = defaults.fields_from_message(msg, [f.name for f in own], zero_means)
        values["features"] = tuple(Feature.from_proto(f) for f in msg.features)
        return cls(**values)

    @property
    def dense_names(self) -> list[str]:
        """Dense feature names in spec order (the columns of ``Batch.dense``)."""
        return [f.name for f in self.features if f.kind == "dense"]

    @property
    def sparse_names(self) -> list[str]:
        """Sparse feature names in spec order (the keys of ``Batch.sparse``)."""
        return [f.name for f in self.features if f.kind == "sparse"]


@functools.cache
def _scalar_fields() -> dict[str, type]:
    """Each scalar field of :class:`SessionSpec` (str, int, float, bool) and its type, in
    declaration order: what :meth:`SessionSpec.check` type-checks."""
    hints = typing.get_type_hints(SessionSpec)
    return {f.name: hints[f.name] for f in fields(SessionSpec) if hints[f.name] in _SCALARS}


_SCALARS = (str, int, float, bool)


@functools.cache
def _int_range(name: str) -> tuple[int, int]:
    """The values an integer field may take: what its proto type holds (one rule for every
    field, so ``batch_size: -5`` and ``batch_size: 0`` get the same message), narrowed where
    the spec says more (``batch_size``: 1..:data:`~dpp_proto.defaults.MAX_BATCH_SIZE`)."""
    if name == "batch_size":
        return 1, defaults.MAX_BATCH_SIZE
    descriptor = spec_pb2.SessionSpec.DESCRIPTOR.fields_by_name[name]
    bits = 32 if descriptor.type == descriptor.TYPE_UINT32 else 64
    return 0, 2**bits - 1


def coerce_spec(spec: SessionSpec | str | os.PathLike[str] | Mapping[str, Any]) -> SessionSpec:
    """Accepts a spec, a YAML path/text, or a mapping, and returns a :class:`SessionSpec`."""
    if isinstance(spec, SessionSpec):
        return spec
    if isinstance(spec, Mapping):
        return SessionSpec.from_dict(spec)
    if isinstance(spec, (str, os.PathLike)):
        return SessionSpec.from_yaml(spec)
    raise _reject("spec", f"expected SessionSpec, YAML path or mapping, got {type(spec).__name__}")
