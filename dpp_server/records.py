"""The records that cross a boundary, and the one rule that gives each its proto and journal form.

Owns:

* the stats records: :class:`StageSeconds` and :class:`WorkerCounters` (a worker's cumulative
  figures, sent in every ``HeartbeatRequest`` and shown by ``ListWorkers``) and
  :class:`ClientFigures` (a trainer's cumulative figures, the ``ClientStats`` message inside every
  ``AckBatchesRequest``);
* :func:`to_proto` / :func:`from_proto`: a frozen dataclass as the proto message whose fields
  have the same names, and back (nested records, repeated and map fields included). The
  dataclass is the declaration; the proto mirrors it, and ``tests/unit/test_records.py`` checks
  that every proto field has a dataclass field and back;
* :func:`to_json` / :func:`from_json`: the same records as JSON-able values (the form the
  master's journal writes, :mod:`dpp_server.journal`), rebuilt from the dataclass's type hints.

A field added to a record is thus one edit here (and one in the .proto), never a converter to
keep in step. Must never import grpc, torch or the transport modules (the worker, the master and
the metrics all import this module).
"""

from __future__ import annotations

import base64
import dataclasses
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from google.protobuf.message import Message

from dpp_proto import master_pb2
from storage import SplitInfo

__all__ = [
    "ClientFigures",
    "StageSeconds",
    "WorkerCounters",
    "counters_to_proto",
    "figures_from_proto",
    "from_json",
    "from_proto",
    "split_from_proto",
    "split_to_proto",
    "stage_seconds_to_proto",
    "to_json",
    "to_proto",
]


@dataclasses.dataclass(frozen=True)
class StageSeconds:
    """Cumulative seconds a worker's pipeline threads spent per stage (``StageSeconds``).

    Field names end in ``_s``; the stage is the name without it (``read_s`` -> ``read``).
    """

    read_s: float = 0.0
    filter_s: float = 0.0
    transform_s: float = 0.0
    batch_s: float = 0.0
    serialize_s: float = 0.0
    wait_consumer_s: float = 0.0
    idle_s: float = 0.0


@dataclasses.dataclass(frozen=True)
class WorkerCounters:
    """Cumulative counters of a worker (``WorkerCounters``)."""

    rows_read: int = 0
    rows_out: int = 0
    batches_out: int = 0
    bytes_out: int = 0
    splits_done: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    share_hits: int = 0
    share_misses: int = 0


@dataclasses.dataclass(frozen=True)
class ClientFigures:
    """A rank's cumulative figures, as its loader measured them (the ``ClientStats`` message;
    see ``master.proto`` for what each means)."""

    batches: int = 0
    rows: int = 0
    bytes_received: int = 0
    stall_s: float = 0.0
    decode_s: float = 0.0
    wall_s: float = 0.0


# -- dataclass <-> proto ----------------------------------------------------------------------

_Message = TypeVar("_Message", bound=Message)
_Record = TypeVar("_Record")


_HINTS: dict[type[Any], dict[str, Any]] = {}


def _hints(cls: type[Any]) -> dict[str, Any]:
    """The resolved type of each field of a dataclass (annotations are strings here); cached
    because resolving them costs more than a conversion (a benign race: both writers agree)."""
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    return hints


def _is_record(value: Any) -> bool:
    return dataclasses.is_dataclass(value) and not isinstance(value, type)


def to_proto(message_type: type[_Message], record: Any) -> _Message:
    """A dataclass as the proto message whose fields have the same names.

    Raises:
        KeyError: a dataclass field the message does not have (a bug: the declarations
            diverged; ``test_records.py`` catches it).
    """
    message = message_type()
    by_name = message.DESCRIPTOR.fields_by_name
    for field in dataclasses.fields(record):
        value = getattr(record, field.name)
        descriptor = by_name[field.name]
        kind = descriptor.message_type
        if kind is not None and kind.GetOptions().map_entry:
            getattr(message, field.name).update(value)
        elif kind is not None and descriptor.is_repeated:
            target = getattr(message, field.name)
            for item in value:
                element = target.add()
                element.CopyFrom(to_proto(type(element), item))
        elif kind is not None:
            target = getattr(message, field.name)
            target.CopyFrom(to_proto(type(target), value))
        elif descriptor.is_repeated:
            getattr(message, field.name).extend(value)
        else:
            setattr(message, field.name, value)
    return message


def from_proto(record_type: type[_Record], message: Message) -> _Record:
    """The inverse of :func:`to_proto`: repeated fields become tuples, maps dicts."""
    return record_type(
        **{name: read(getattr(message, name)) for name, read in _readers(record_type)}
    )


_READERS: dict[type[Any], list[tuple[str, Callable[[Any], Any]]]] = {}


def _readers(record_type: type[Any]) -> list[tuple[str, Callable[[Any], Any]]]:
    """How to read each field of a record from its proto, worked out once per type (a worker
    reads a split per lease; resolving type hints each time would cost more than the copy)."""
    readers = _READERS.get(record_type)
    if readers is None:
        hints = _hints(record_type)
        readers = _READERS[record_type] = [
            (f.name, _reader(hints[f.name])) for f in dataclasses.fields(record_type)
        ]
    return readers


def _reader(hint: Any) -> Callable[[Any], Any]:
    origin = typing.get_origin(hint)
    if origin is tuple:
        item = _reader(typing.get_args(hint)[0])
        return lambda value: tuple(item(v) for v in value)
    if origin in (dict, Mapping) or hint in (dict, Mapping):
        return dict
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return lambda value: from_proto(hint, value)
    return _same


def _same(value: Any) -> Any:
    return value


def stage_seconds_to_proto(s: StageSeconds) -> master_pb2.StageSeconds:
    return to_proto(master_pb2.StageSeconds, s)


def counters_to_proto(c: WorkerCounters) -> master_pb2.WorkerCounters:
    return to_proto(master_pb2.WorkerCounters, c)


def figures_from_proto(p: master_pb2.ClientStats) -> ClientFigures:
    return from_proto(ClientFigures, p)


def split_to_proto(split: SplitInfo) -> master_pb2.Split:
    return to_proto(master_pb2.Split, split)


def split_from_proto(p: master_pb2.Split) -> SplitInfo:
    return from_proto(SplitInfo, p)


# -- dataclass <-> JSON -----------------------------------------------------------------------


def to_json(value: Any) -> Any:
    """A record as JSON-able values: dataclasses as objects, tuples as lists, bytes as base64."""
    if _is_record(value):
        # A field at its plain default is left out (from_json fills it in): a record gains
        # fields without changing the lines of records that do not use them.
        return {
            f.name: to_json(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if f.default is dataclasses.MISSING or getattr(value, f.name) != f.default
        }
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, (tuple, list)):
        return [to_json(v) for v in value]
    if isinstance(value, Mapping):
        return {k: to_json(v) for k, v in value.items()}
    return value


def from_json(hint: Any, data: Any, where: str = "") -> Any:
    """The inverse of :func:`to_json`, guided by the type ``hint`` (a dataclass to start with).

    Raises:
        TypeError: ``data`` does not have the shape the type asks for; the message names the
            field (``where``), e.g. ``splits[2].num_rows``.
        KeyError: a field of the dataclass is missing from ``data``.
    """
    return _json_reader(hint)(data, where or getattr(hint, "__name__", str(hint)))


_JSON_READERS: dict[Any, Callable[[Any, str], Any]] = {}


def _json_reader(hint: Any) -> Callable[[Any, str], Any]:
    """How to read a value of type ``hint`` from JSON, worked out once per type: a master
    replays its journal at start, and resolving the types of every field of every line cost
    ~0.6 ms a line (a benign race: both writers agree)."""
    reader = _JSON_READERS.get(hint)
    if reader is None:
        reader = _JSON_READERS[hint] = _make_json_reader(hint)
    return reader


def _make_json_reader(hint: Any) -> Callable[[Any, str], Any]:
    origin = typing.get_origin(hint)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        hints = _hints(hint)
        fields = [
            (
                f.name,
                f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING,
            )
            for f in dataclasses.fields(hint)
        ]
        names = {name for name, _ in fields}
        readers: dict[str, Callable[[Any, str], Any]] = {}
        record_type = hint

        def read_record(data: Any, where: str) -> Any:
            _expect(dict, data, where)
            if not readers:  # filled on first use: a record may refer to itself
                readers.update({name: _json_reader(hints[name]) for name, _ in fields})
            unknown = set(data) - names
            if unknown:
                raise TypeError(f"{where}: unknown field(s) {sorted(unknown)}")
            # A field with a default may be absent: lines written before it existed still read.
            missing = [name for name, required in fields if required and name not in data]
            if missing:
                raise KeyError(f"{where}: missing field(s) {missing}")
            return record_type(
                **{
                    name: readers[name](data[name], f"{where}.{name}")
                    for name, _ in fields
                    if name in data
                }
            )

        return read_record
    if origin is tuple:
        item = typing.get_args(hint)[0]

        def read_tuple(data: Any, where: str) -> Any:
            _expect(list, data, where)
            read = _json_reader(item)
            return tuple(read(v, f"{where}[{i}]") for i, v in enumerate(data))

        return read_tuple
    if origin in (dict, Mapping):
        _, value_hint = typing.get_args(hint)

        def read_mapping(data: Any, where: str) -> Any:
            _expect(dict, data, where)
            read = _json_reader(value_hint)
            return {k: read(v, f"{where}[{k!r}]") for k, v in data.items()}

        return read_mapping
    if hint is bytes:

        def read_bytes(data: Any, where: str) -> Any:
            _expect(str, data, where)
            return base64.b64decode(data, validate=True)

        return read_bytes
    if hint is float:

        def read_float(data: Any, where: str) -> Any:
            _expect((int, float), data, where)
            return float(data)

        return read_float
    if hint in (int, str, bool):

        def read_plain(data: Any, where: str) -> Any:
            _expect(hint, data, where)
            return data

        return read_plain

    def refuse(data: Any, where: str) -> Any:
        if isinstance(hint, types.UnionType):
            raise TypeError(f"{where}: a union field cannot be rebuilt from JSON ({hint})")
        raise TypeError(f"{where}: unsupported field type {hint!r}")

    return refuse


def _expect(kind: type | tuple[type, ...], data: Any, where: str) -> None:
    # bool is an int subclass; a `true` where a number belongs is corruption, not a 1.
    if not isinstance(data, kind) or (isinstance(data, bool) and kind is not bool):
        raise TypeError(f"{where}: expected {_names(kind)}, got {type(data).__name__} {data!r}")


def _names(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)
