"""The session spec: a validated, frozen Python view of ``dpp.v1.SessionSpec``.

Owns: the :class:`Spec` dataclasses, their structural validation (:func:`spec_from_proto`),
their validation against a table's Arrow schema (:func:`check_against_schema`) and the way
back to the proto (:func:`spec_to_proto`). Must never import grpc services, storage or torch:
the master validates a spec before it opens any table, and workers rebuild it from the proto.

Validation runs in two steps because the second needs the table:

1. :func:`spec_from_proto` checks everything the spec alone decides (required fields, ranges,
   names, ops and their params, op/kind fit) and fills defaults, so that a :class:`Spec` is
   always complete. Op params are validated and normalised by the op itself (see
   :mod:`dpp_server.transforms.registry`).
2. :func:`check_against_schema` checks that every column exists and that its type fits the
   feature kind and the label, weight and passthrough roles.

Every failure is a :class:`~dpp_server.errors.SpecError` whose ``field`` is the exact path of
the offending value, e.g. ``features[3].ops[1].max_value``.

Column types accepted (decided here, documented in ``docs/ops.md``):

* dense source: any integer, floating point or boolean column; it becomes float32 (integers
  beyond 2**24 round, booleans are 1.0/0.0).
* sparse source: a ``list`` or ``large_list`` of any integer type, or a plain integer column
  taken as a one-id list (null gives an empty list). uint64 ids keep their bit pattern as
  int64. Null ids inside a list are dropped before the first op.
* label and weight: integer, floating point or boolean; they become float32.
* passthrough: any type, nulls included; each type family travels as one wire type
  (:func:`dpp_proto.wire.passthrough_type`: integers int64, floats float64, string kinds
  large_string, lists of those large_list) and reaches the trainer as a tensor plus a validity
  mask (numbers, booleans, times) or an Arrow array (everything else). See ``docs/tables.md``.

Files of one table may disagree on a column's type (schema drift). :func:`check_drift` runs at
session creation over the types planning found in every file: a passthrough column must keep
one wire type, every other column the spec reads must fit its role in every file, and no file
may lack a column the spec or the row filter reads. Each refusal names the column and both
files.

Value types through ops: a feature's value starts with its source column's value type
(:func:`source_vtypes`: numeric -> ``dense``, list of integers -> ``sparse``, list of floats ->
``scores``, string -> ``string``, list of strings -> ``strings``; an integer column is ``dense``
or a one-id ``sparse`` list, whichever the first op or the kind takes) and every op maps it to
its output type (:func:`~dpp_server.transforms.registry.op_output`). The last value type must
be the feature's kind. So ``kind: sparse`` may read a float column when the ops start with
``bucketize``, and ``kind: dense`` may read an id list when they end with ``list_length``.
Columns named in op params (``other: sparse_1``, ``expr`` identifiers) and ``sample_key`` are
read too (:attr:`Spec.input_columns`) and checked against the schema with their exact path.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

import pyarrow as pa
from google.protobuf import struct_pb2

from dpp_proto import limits, spec_pb2, wire
from dpp_proto.defaults import (
    MAX_BATCH_SIZE,
    MAX_SPLITS_IN_FLIGHT,
    RATE,
    SPEC_ZERO_MEANS,
    TARGET_SPLIT_ROWS,
    fields_from_message,
)
from dpp_server.errors import SpecError
from dpp_server.transforms.registry import (
    VTYPES,
    VType,
    describe_vtypes,
    get_op,
    ids_range,
    op_columns,
    op_output,
    registered_ops,
    validate_params,
)

__all__ = [
    "DEFAULT_TARGET_SPLIT_ROWS",
    "MAX_BATCH_SIZE",
    "Feature",
    "Kind",
    "OpCall",
    "Spec",
    "StatsOptions",
    "check_against_schema",
    "feature_vtypes",
    "int32_features",
    "source_vtypes",
    "spec_from_proto",
    "spec_to_proto",
]

Kind = Literal["dense", "sparse"]

#: Rows per split when the spec says 0 (:data:`dpp_proto.defaults.TARGET_SPLIT_ROWS`).
DEFAULT_TARGET_SPLIT_ROWS = TARGET_SPLIT_ROWS

_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_KIND_OF_PROTO: dict[int, Kind] = {
    spec_pb2.FEATURE_KIND_DENSE: "dense",
    spec_pb2.FEATURE_KIND_SPARSE: "sparse",
}
_PROTO_OF_KIND: dict[Kind, spec_pb2.FeatureKind] = {
    "dense": spec_pb2.FEATURE_KIND_DENSE,
    "sparse": spec_pb2.FEATURE_KIND_SPARSE,
}


@dataclass(frozen=True)
class OpCall:
    """One op applied to a feature.

    Attributes:
        op: a registered op name.
        params: every param of the op, validated and with defaults filled (read-only).
    """

    op: str
    params: Mapping[str, Any]


@dataclass(frozen=True)
class Feature:
    """One output feature.

    Attributes:
        name: name in the delivered batch; ``[A-Za-z_][A-Za-z0-9_]*``, unique in the spec.
        source: input column of the table (defaults to ``name``).
        kind: ``dense`` (one float32 per row) or ``sparse`` (a list of int64 ids per row).
        ops: ops applied in order.
        dedup_group: the RecD deduplication group of a sparse feature, or empty. Features of
            one group are deduplicated together per batch (see ``docs/dedup.md``).
    """

    name: str
    source: str
    kind: Kind
    ops: tuple[OpCall, ...]
    dedup_group: str = ""


@dataclass(frozen=True)
class StatsOptions:
    """What a stats session (``dpp stats``, ``docs/stats.md``) measures beyond the features.

    Attributes:
        sample_rate: share of each split's rows sketched, in (0, 1]. Lower cuts transform and
            sketch time (not reading); counts then describe the sample.
        collisions: also sketch the raw ids of ``sigrid_hash`` features for collision figures
            (runs their ops before the last hash a second time).
    """

    sample_rate: float = RATE
    collisions: bool = False


@dataclass(frozen=True)
class Spec:
    """A validated session spec with every default filled. See ``spec.proto`` for fields.

    Immutable so that one instance can be shared by every thread of a worker without locks.
    """

    table_uri: str
    storage_options: Mapping[str, str] = dataclasses.field(repr=False)  # secrets: never logged
    partition_filter: str
    row_filter: str
    features: tuple[Feature, ...]
    label: str
    weight: str
    passthrough: tuple[str, ...]
    batch_size: int
    epochs: int
    seed: int
    world_size: int
    target_split_rows: int
    shuffle: bool
    deterministic: bool = False
    max_splits_in_flight: int = MAX_SPLITS_IN_FLIGHT
    negative_downsample_rate: float = RATE
    sample_rate: float = RATE
    sample_key: str = ""
    dedup_min_share: float = 0.0
    share: bool = False
    #: Set for a stats session only: workers sketch the features instead of streaming them.
    stats: StatsOptions | None = None

    @property
    def dense_features(self) -> tuple[Feature, ...]:
        """Dense features in spec order (the column order of the wire's ``dense`` block)."""
        return tuple(f for f in self.features if f.kind == "dense")

    @property
    def sparse_features(self) -> tuple[Feature, ...]:
        """Sparse features in spec order."""
        return tuple(f for f in self.features if f.kind == "sparse")

    @property
    def dedup_groups(self) -> dict[str, tuple[Feature, ...]]:
        """Deduplication groups in first-seen spec order, each with its features in spec
        order; empty when no feature names a group."""
        groups: dict[str, list[Feature]] = {}
        for f in self.features:
            if f.dedup_group:
                groups.setdefault(f.dedup_group, []).append(f)
        return {g: tuple(fs) for g, fs in groups.items()}

    @property
    def sampled(self) -> bool:
        """Whether rows are sampled (either rate below 1)."""
        return self.negative_downsample_rate < 1.0 or self.sample_rate < 1.0

    @property
    def has_weight(self) -> bool:
        """Whether wire batches carry ``weight``: a weight column, or negative downsampling."""
        return bool(self.weight) or self.negative_downsample_rate < 1.0

    @property
    def input_columns(self) -> tuple[str, ...]:
        """Table columns a worker must read: sources, columns named by op params, label,
        weight, sample key, passthrough.

        Deduplicated in first-seen order, so the projection is stable across workers.
        """
        names: Iterable[str] = (
            *(f.source for f in self.features),
            *(column for f in self.features for _, _, column, _ in feature_refs(f)),
            *((self.label,) if self.label else ()),
            *((self.weight,) if self.weight else ()),
            *((self.sample_key,) if self.sample_key else ()),
            *self.passthrough,
        )
        return tuple(dict.fromkeys(names))


def feature_refs(feature: Feature) -> tuple[tuple[int, str, str, VType], ...]:
    """Other columns a feature's ops read: ``(op index, param, column, vtype)``."""
    refs: list[tuple[int, str, str, VType]] = []
    for j, call in enumerate(feature.ops):
        op = get_op(call.op)
        if op is not None:
            refs.extend(
                (j, param, column, vtype) for param, column, vtype in op_columns(op, call.params)
            )
    return tuple(refs)


def _check_limits(msg: spec_pb2.SessionSpec) -> None:
    """The sizes :mod:`dpp_proto.limits` bounds, checked before anything else is looked at."""
    size = msg.ByteSize()
    if size > limits.MAX_SPEC_BYTES:
        raise SpecError(
            "spec",
            limits.over_limit("", size, limits.MAX_SPEC_BYTES, "bytes"),
            "a spec names columns and ops; move large data (vocabularies) into the table",
        )
    if len(msg.features) > limits.MAX_FEATURES:
        raise SpecError(
            "features",
            limits.over_limit("", len(msg.features), limits.MAX_FEATURES, "features"),
        )
    for i, feature in enumerate(msg.features):
        if len(feature.name) > limits.MAX_NAME_CHARS:
            raise SpecError(
                f"features[{i}].name",
                limits.over_limit("", len(feature.name), limits.MAX_NAME_CHARS, "characters"),
            )
    if msg.world_size > limits.MAX_WORLD_SIZE:
        raise SpecError(
            "world_size",
            limits.over_limit("", msg.world_size, limits.MAX_WORLD_SIZE, "ranks"),
            "one session serves at most that many trainer processes",
        )


def spec_from_proto(msg: spec_pb2.SessionSpec) -> Spec:
    """Validates a SessionSpec on its own (no table needed) and fills its defaults.

    Args:
        msg: the spec as received from a client.

    Returns:
        The frozen :class:`Spec`.

    Raises:
        SpecError: the first problem found, with the exact field path.
    """
    _check_limits(msg)
    if not msg.table_uri:
        raise SpecError(
            "table_uri",
            "is required",
            "set it to the path or s3:// URI of a Parquet or ORC table, or to "
            "iceberg://<catalog>/<namespace>.<table>",
        )
    if msg.batch_size == 0:
        raise SpecError(
            "batch_size",
            "is 0 (not set); a batch must hold at least one row",
            f"set batch_size between 1 and {MAX_BATCH_SIZE}",
        )
    if msg.batch_size > MAX_BATCH_SIZE:
        raise SpecError(
            "batch_size",
            f"{msg.batch_size} is above the limit of {MAX_BATCH_SIZE}",
            f"set batch_size between 1 and {MAX_BATCH_SIZE}",
        )
    if not msg.features:
        raise SpecError("features", "at least one feature is required", "add a dense or sparse one")

    features: list[Feature] = []
    seen: dict[str, int] = {}
    for i, fmsg in enumerate(msg.features):
        feature = _feature_from_proto(fmsg, f"features[{i}]")
        if feature.name in seen:
            raise SpecError(
                f"features[{i}].name",
                f"duplicate feature name {feature.name!r} (also features[{seen[feature.name]}])",
                "give every feature a unique name",
            )
        seen[feature.name] = i
        features.append(feature)

    for field_name in ("label", "weight"):
        value = getattr(msg, field_name)
        if value and not value.strip():
            raise SpecError(field_name, "is blank", "name a column or leave it empty")
    passthrough = tuple(msg.passthrough)
    first_at: dict[str, int] = {}
    for i, name in enumerate(passthrough):
        if not name:
            raise SpecError(f"passthrough[{i}]", "is empty", "name a column or remove the entry")
        if name in first_at:
            raise SpecError(
                f"passthrough[{i}]",
                f"duplicate column {name!r} (also passthrough[{first_at[name]}])",
                "list each column once",
            )
        first_at[name] = i

    negative_rate = _rate(msg.negative_downsample_rate, "negative_downsample_rate")
    sample_rate = _rate(msg.sample_rate, "sample_rate")
    if negative_rate < 1.0 and not msg.label:
        raise SpecError(
            "negative_downsample_rate",
            f"is {negative_rate!r} but no label is named; negatives are rows whose label is 0",
            "name the label column, or leave negative_downsample_rate unset",
        )
    if (negative_rate < 1.0 or sample_rate < 1.0) and not msg.sample_key:
        raise SpecError(
            "sample_key",
            "is required when negative_downsample_rate or sample_rate is below 1",
            "name an integer or string column that identifies rows (e.g. row_id), so the "
            "same rows are kept whenever a split is produced",
        )

    if not (math.isfinite(msg.dedup_min_share) and 0.0 <= msg.dedup_min_share < 1.0):
        raise SpecError(
            "dedup_min_share",
            f"must be in [0, 1), got {msg.dedup_min_share!r}",
            "give the duplicate share a batch needs to be sent deduplicated, e.g. 0.3; "
            "0 deduplicates every batch",
        )

    # Every other field is the proto's, with the zeros that mean a default filled.
    values = _proto_fields(msg)
    values.update(
        storage_options=MappingProxyType(values["storage_options"]),
        features=tuple(features),
        passthrough=passthrough,
        negative_downsample_rate=negative_rate,
        sample_rate=sample_rate,
        stats=_stats_from_proto(msg),
    )
    return Spec(**values)


def _stats_from_proto(msg: spec_pb2.SessionSpec) -> StatsOptions | None:
    if not msg.HasField("stats"):
        return None
    rate = msg.stats.sample_rate
    if rate != 0.0 and not (math.isfinite(rate) and 0.0 < rate <= 1.0):
        raise SpecError(
            "stats.sample_rate",
            f"must be in (0, 1], got {rate!r}",
            "give the share of rows to sketch, e.g. 0.1; leave it unset (0) to sketch all",
        )
    return StatsOptions(sample_rate=rate or RATE, collisions=msg.stats.collisions)


def _proto_fields(msg: spec_pb2.SessionSpec) -> dict[str, Any]:
    """Every field of :class:`Spec` from the proto of the same name (repeated fields as tuples,
    maps as dicts), a 0 replaced by what it means (:data:`dpp_proto.defaults.SPEC_ZERO_MEANS`)."""
    return fields_from_message(msg, [f.name for f in dataclasses.fields(Spec)])


def _rate(value: float, field_name: str) -> float:
    """A sampling rate: 0 (unset) means keep all; otherwise it must lie in (0, 1]."""
    if value == 0.0:
        return float(SPEC_ZERO_MEANS[field_name])
    if not (math.isfinite(value) and 0.0 < value <= 1.0):
        raise SpecError(
            field_name,
            f"must be in (0, 1], got {value!r}",
            "give the share of rows to keep, e.g. 0.1; leave it unset (0) to keep all",
        )
    return value


def _feature_from_proto(msg: spec_pb2.FeatureSpec, path: str) -> Feature:
    """Validates one FeatureSpec; ``path`` is its position, e.g. ``features[3]``."""
    if not msg.name:
        raise SpecError(f"{path}.name", "is required", "name the feature, e.g. 'dense_0'")
    if not _NAME_RE.fullmatch(msg.name):
        raise SpecError(
            f"{path}.name",
            f"{msg.name!r} is not a valid feature name",
            "use letters, digits and '_', not starting with a digit",
        )
    if msg.kind == spec_pb2.FEATURE_KIND_UNSPECIFIED:
        raise SpecError(f"{path}.kind", "is not set", "set kind to dense or sparse")
    kind = _KIND_OF_PROTO.get(msg.kind)
    if kind is None:
        raise SpecError(f"{path}.kind", f"unknown kind {msg.kind}", "set kind to dense or sparse")
    if msg.dedup_group:
        if not _NAME_RE.fullmatch(msg.dedup_group):
            raise SpecError(
                f"{path}.dedup_group",
                f"{msg.dedup_group!r} is not a valid group name",
                "use letters, digits and '_', not starting with a digit (e.g. 'user')",
            )
        if kind != "sparse":
            raise SpecError(
                f"{path}.dedup_group",
                f"feature {msg.name!r} is {kind}; only sparse features are deduplicated",
                "leave dedup_group empty on dense features (they travel in the [B, D] block)",
            )
    ops = tuple(_op_from_proto(o, f"{path}.ops[{j}]") for j, o in enumerate(msg.ops))
    feature = Feature(
        name=msg.name,
        source=msg.source or msg.name,
        kind=kind,
        ops=ops,
        dedup_group=msg.dedup_group,
    )
    _check_chain(feature, path, frozenset(VTYPES))
    return feature


def _op_from_proto(msg: spec_pb2.OpSpec, path: str) -> OpCall:
    """Validates one op call on its own: the op exists and its params are valid."""
    op = get_op(msg.op)
    if op is None:
        raise SpecError(
            f"{path}.op",
            f"unknown op {msg.op!r}",
            f"known ops: {', '.join(registered_ops())}",
        )
    raw = {key: _from_value(value) for key, value in msg.params.fields.items()}
    return OpCall(op=op.name, params=validate_params(op, raw, path))


def _check_chain(feature: Feature, path: str, start: frozenset[VType]) -> list[VType]:
    """Follows the value types through a feature's ops and checks they fit.

    Args:
        feature: the feature.
        path: its path, e.g. ``features[3]``.
        start: the value types the source may give (every type when the table is unknown;
            exactly one once the schema fixed it).

    Returns:
        The input value type of each op, when ``start`` holds one type (else empty).

    Raises:
        SpecError: an op applied to a value type it does not take, or a chain that does not
            end in the feature's kind.
    """
    possible = set(start)
    inputs: list[VType] = []
    for j, call in enumerate(feature.ops):
        op = get_op(call.op)
        if op is None:
            raise SpecError(
                f"{path}.ops[{j}].op",
                f"unknown op {call.op!r}",
                f"known ops: {', '.join(registered_ops())}",
            )
        fitting = possible & op.kinds
        if not fitting:
            raise SpecError(
                f"{path}.ops[{j}].op",
                f"{op.name!r} applies to {describe_vtypes(op.kinds)} features, "
                f"not {describe_vtypes(possible)}",
                "remove the op or apply it to a feature of the right kind",
            )
        if len(fitting) == 1:
            inputs.append(next(iter(fitting)))
        possible = {op_output(op, call.params, t) for t in fitting}
    if feature.kind not in possible:
        if feature.ops:
            last = feature.ops[-1].op
            raise SpecError(
                f"{path}.ops[{len(feature.ops) - 1}].op",
                f"{last!r} gives {describe_vtypes(possible)} values, but feature "
                f"{feature.name!r} is {feature.kind}",
                f"set kind: {describe_vtypes(possible)} or end with an op giving "
                f"{feature.kind} values",
            )
        raise SpecError(
            f"{path}.kind",
            f"feature {feature.name!r} has no ops and its source gives "
            f"{describe_vtypes(possible)} values, not {feature.kind}",
            f"set kind: {describe_vtypes(possible)}",
        )
    return inputs if len(inputs) == len(feature.ops) else []


def _from_value(value: struct_pb2.Value) -> Any:
    """Converts a protobuf Value to plain Python (numbers are floats, as in JSON).

    Not ``json_format.MessageToDict``: it refuses NaN and infinities, and a param holding one
    must reach its op's validator, which names the param (``expected a finite number``)."""
    which = value.WhichOneof("kind")
    if which == "number_value":
        return value.number_value
    if which == "string_value":
        return value.string_value
    if which == "bool_value":
        return value.bool_value
    if which == "list_value":
        return [_from_value(v) for v in value.list_value.values]
    if which == "struct_value":
        return {k: _from_value(v) for k, v in value.struct_value.fields.items()}
    return None


def spec_to_proto(spec: Spec) -> spec_pb2.SessionSpec:
    """Encodes a Spec; ``spec_from_proto(spec_to_proto(s)) == s`` for every valid ``s``.

    Defaults are written out (``epochs`` 1, not 0) and op params are written in full, so the
    proto a worker receives needs no knowledge of defaults to mean the same thing.
    """
    scalars = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)}
    del scalars["features"], scalars["stats"]
    scalars["storage_options"] = dict(spec.storage_options)
    msg = spec_pb2.SessionSpec(**scalars)
    if spec.stats is not None:
        msg.stats.CopyFrom(spec_pb2.StatsOptions(**dataclasses.asdict(spec.stats)))
    for feature in spec.features:
        plain = {f.name: getattr(feature, f.name) for f in dataclasses.fields(feature)}
        del plain["ops"]
        plain["kind"] = _PROTO_OF_KIND[feature.kind]
        fmsg = msg.features.add(**plain)
        for call in feature.ops:
            omsg = fmsg.ops.add(op=call.op)
            omsg.params.update(
                {k: list(v) if isinstance(v, tuple) else v for k, v in call.params.items()}
            )
    return msg


def check_against_schema(spec: Spec, schema: pa.Schema) -> None:
    """Checks that the table has every column the spec reads, with fitting types.

    Args:
        spec: a spec from :func:`spec_from_proto`.
        schema: the table's Arrow schema (partition columns included).

    Raises:
        SpecError: the first problem found, with the exact field path.
    """
    available = schema.names

    def column_type(field_path: str, name: str) -> pa.DataType:
        index = schema.get_field_index(name)
        if index < 0:
            shown = ", ".join(available[:50]) + (", ..." if len(available) > 50 else "")
            raise SpecError(
                field_path,
                f"column {name!r} not in table; available: {shown}",
                "fix the column name or the table_uri",
            )
        return schema.field(index).type

    for i, feature in enumerate(spec.features):
        path = f"features[{i}]"
        dtype = column_type(f"{path}.source", feature.source)
        start = _start_vtype(feature, dtype, path)
        _check_chain(feature, path, frozenset({start}))
        for j, param, column, vtype in feature_refs(feature):
            ppath = f"{path}.ops[{j}].{param}"
            ref_type = column_type(ppath, column)
            if vtype not in source_vtypes(ref_type):
                raise SpecError(
                    ppath,
                    f"column {column!r} has type {ref_type}, which is not {_WHAT[vtype]}",
                    f"name a column of {_WHAT[vtype]} ({_HINT[vtype]})",
                )
        for j, call in enumerate(feature.ops):
            op = get_op(call.op)
            if op is not None and op.prepare is not None:
                op.prepare(call.params, f"{path}.ops[{j}]")
    for field_name in ("label", "weight"):
        name = getattr(spec, field_name)
        if not name:
            continue
        dtype = column_type(field_name, name)
        if not is_numeric(dtype):
            raise SpecError(
                field_name,
                f"column {name!r} has type {dtype}, which is not numeric",
                "use an integer, float or boolean column",
            )
    if spec.sample_key:
        dtype = column_type("sample_key", spec.sample_key)
        if not (pa.types.is_integer(dtype) or _is_string(dtype)):
            raise SpecError(
                "sample_key",
                f"column {spec.sample_key!r} has type {dtype}, which is not an integer or string",
                "name an integer or string column that identifies rows (e.g. row_id)",
            )
    for i, name in enumerate(spec.passthrough):
        column_type(f"passthrough[{i}]", name)


def check_drift(
    spec: Spec,
    schema: pa.Schema,
    drift: Mapping[str, Sequence[tuple[str, pa.DataType | None]]],
    filter_columns: Iterable[str] = (),
) -> None:
    """Checks a spec against every file's column types, not only the reference file's.

    Args:
        spec: a spec already checked against ``schema`` (:func:`check_against_schema`).
        schema: the table's schema (its reference file's types).
        drift: for each column whose type differs between the planned files, ``(path, type)``
            per distinct type, the reference file first; a type of None means that file
            lacks the column (``storage.Plan.drift``).
        filter_columns: columns the row filter reads; they must exist in every file.

    Raises:
        SpecError: naming the spec field, the column, both files and both types.
    """
    passthrough_at = {name: i for i, name in enumerate(spec.passthrough)}
    read = set(spec.input_columns)
    filtered = set(filter_columns)
    for column, types in drift.items():
        if column not in read and column not in filtered:
            continue
        ref_path, ref_type = types[0]
        where = (
            f"passthrough[{passthrough_at[column]}]"
            if column in passthrough_at
            else _role_of(spec, column)
        )
        for path, dtype in types[1:]:
            if dtype is None:
                raise SpecError(
                    where,
                    f"column {column!r} is missing from {path!r} but is {ref_type} in {ref_path!r}",
                    "rewrite that file with the column, prune its partition with "
                    "partition_filter, or stop reading the column",
                )
            if ref_type is None:
                continue
            if column in passthrough_at and wire.passthrough_type(dtype) != wire.passthrough_type(
                ref_type
            ):
                raise SpecError(
                    where,
                    f"passthrough column {column!r} is {ref_type} in {ref_path!r} but {dtype} "
                    f"in {path!r}; files may differ only within a type family (integers, "
                    "floats, strings, binaries, lists of those), which travel as one type",
                    "rewrite the files with one type for the column, or drop it from passthrough",
                )
            if column in read:
                index = schema.get_field_index(column)
                variant = schema.set(index, pa.field(column, dtype))
                try:
                    check_against_schema(spec, variant)
                except SpecError as exc:
                    raise SpecError(
                        exc.field,
                        f"{exc.problem} (in {path!r}; column {column!r} is {ref_type} in "
                        f"{ref_path!r})",
                        exc.fix,
                    ) from exc


def _role_of(spec: Spec, column: str) -> str:
    """The first spec field that reads ``column``, for messages."""
    for i, feature in enumerate(spec.features):
        if feature.source == column:
            return f"features[{i}].source"
    for name in ("label", "weight", "sample_key"):
        if getattr(spec, name) == column:
            return name
    return "row_filter" if column not in spec.input_columns else "features"


_WHAT: dict[VType, str] = {
    "dense": "numeric",
    "sparse": "a list of integers",
    "scores": "a list of floats",
    "string": "a string",
    "strings": "a list of strings",
}
_HINT: dict[VType, str] = {
    "dense": "use an integer, float or boolean column, or make the feature sparse",
    "sparse": "use a list<int> or large_list<int> column (or a plain integer column)",
    "scores": "use a list<float> column",
    "string": "use a string column",
    "strings": "use a list<string> column",
}


def _is_string(dtype: pa.DataType) -> bool:
    return bool(pa.types.is_string(dtype) or pa.types.is_large_string(dtype))


def source_vtypes(dtype: pa.DataType) -> tuple[VType, ...]:
    """The value types a column of Arrow type ``dtype`` can give, preferred first."""
    if pa.types.is_list(dtype) or pa.types.is_large_list(dtype):
        item = dtype.value_type
        if pa.types.is_integer(item):
            return ("sparse",)
        if pa.types.is_floating(item):
            return ("scores",)
        if _is_string(item):
            return ("strings",)
        return ()
    if pa.types.is_integer(dtype):
        return ("dense", "sparse")
    if pa.types.is_floating(dtype) or pa.types.is_boolean(dtype):
        return ("dense",)
    if _is_string(dtype):
        return ("string",)
    return ()


def _start_vtype(feature: Feature, dtype: pa.DataType, path: str) -> VType:
    """The value type a feature's source gives: one the first op (or the kind) takes."""
    first = get_op(feature.ops[0].op) if feature.ops else None
    takes: frozenset[VType] = first.kinds if first is not None else frozenset({feature.kind})
    fitting = [t for t in source_vtypes(dtype) if t in takes]
    if not fitting:
        ordered = [t for t in VTYPES if t in takes]
        raise SpecError(
            f"{path}.source",
            f"{feature.kind} feature {feature.name!r} reads column {feature.source!r} of type "
            f"{dtype}, which is not {' or '.join(_WHAT[t] for t in ordered)}",
            "; or ".join(_HINT[t] for t in ordered),
        )
    return feature.kind if feature.kind in fitting else fitting[0]


def feature_vtypes(feature: Feature, dtype: pa.DataType, path: str) -> tuple[VType, list[VType]]:
    """The value type a feature's source gives and the one entering each of its ops.

    Args:
        feature: a feature of a spec already checked against the schema.
        dtype: the Arrow type of its source column.
        path: its path, for errors.
    """
    start = _start_vtype(feature, dtype, path)
    return start, _check_chain(feature, path, frozenset({start}))


_INT32_RANGE = (-(2**31), 2**31 - 1)


def int32_features(spec: Spec) -> frozenset[str]:
    """The sparse features whose op chain bounds every id within int32 (e.g. a
    ``sigrid_hash`` with ``max_value <= 2**31``, then only ops that keep the range).

    Their ids travel as int32 (``dpp_proto.wire.WireOptions``). Decided from the spec alone,
    so every worker of a session decides alike; a raw source (no bounding op) stays int64,
    whatever its column type.
    """
    fits: set[str] = set()
    for feature in spec.sparse_features:
        bound: tuple[int, int] | None = None
        for call in feature.ops:
            op = get_op(call.op)
            bound = None if op is None else ids_range(op, call.params, bound)
        if bound is not None and _INT32_RANGE[0] <= bound[0] and bound[1] <= _INT32_RANGE[1]:
            fits.add(feature.name)
    return frozenset(fits)


def is_numeric(dtype: pa.DataType) -> bool:
    """Whether a column can feed a dense feature, a label or a weight (becomes float32)."""
    return bool(
        pa.types.is_integer(dtype) or pa.types.is_floating(dtype) or pa.types.is_boolean(dtype)
    )
