"""What a ``SessionSpec`` field left at 0 (proto3's "unset") means: one place for each default.

Hand-written, not generated. Read by both sides: the client's :class:`dpp_client.spec.SessionSpec`
takes its defaults from here and fills them when it reads a proto, and the master's
:func:`dpp_server.spec.spec_from_proto` fills them before it validates. Standard library only
(the client and the server both import it; it must never import either of them).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

#: Passes over the table, and ranks sharing a session, when the spec says 0.
EPOCHS = 1
WORLD_SIZE = 1

#: Rows per split when the spec says 0: large enough that master round trips are rare,
#: small enough (a few row groups) to balance work across workers.
TARGET_SPLIT_ROWS = 262_144

#: Splits of a rank leased ahead of its consumption in deterministic mode, when the spec says 0.
MAX_SPLITS_IN_FLIGHT = 8

#: A sampling rate (``negative_downsample_rate``, ``sample_rate``) left at 0: keep every row.
RATE = 1.0

#: Largest ``batch_size`` a session may ask for: 1 Mi rows keeps one wire batch well under
#: gRPC's message limits for typical widths while still amortising per-batch overhead. Both
#: sides check it: the client before any RPC, the master authoritatively.
MAX_BATCH_SIZE = 1_048_576

#: SessionSpec field -> the value its 0 stands for (see ``spec.proto``).
SPEC_ZERO_MEANS: Mapping[str, int | float] = MappingProxyType(
    {
        "epochs": EPOCHS,
        "world_size": WORLD_SIZE,
        "target_split_rows": TARGET_SPLIT_ROWS,
        "max_splits_in_flight": MAX_SPLITS_IN_FLIGHT,
        "negative_downsample_rate": RATE,
        "sample_rate": RATE,
    }
)


def fields_from_message(
    msg: Any, names: Iterable[str], zero_means: Mapping[str, Any] = SPEC_ZERO_MEANS
) -> dict[str, Any]:
    """The named fields of a ``SessionSpec`` message as plain values: repeated fields as
    tuples, maps as dicts, and a field left at 0 that ``zero_means`` names replaced by what it
    means. Both sides' spec objects read the proto through this one function (the client
    passes its own dataclass defaults as ``zero_means``; the master the values above).

    ``msg`` is duck-typed (it needs ``DESCRIPTOR`` and the attributes), so this module stays
    free of the protobuf runtime.
    """
    by_name = msg.DESCRIPTOR.fields_by_name
    values: dict[str, Any] = {}
    for name in names:
        value = getattr(msg, name)
        kind = by_name[name].message_type
        if kind is not None and kind.GetOptions().map_entry:
            value = dict(value)
        elif by_name[name].is_repeated:
            value = tuple(value)
        elif not value and name in zero_means:
            value = zero_means[name]
        values[name] = value
    return values
