"""The client's door to the frame contract: :func:`dpp_proto.wire.decode_frame`, its errors as
:class:`~dpp_client.errors.FrameError`.

Owns nothing of the format itself (that is :mod:`dpp_proto.wire`, shared with the worker, and
``docs/architecture.md``, "The wire"); it only maps the contract's
:class:`~dpp_proto.wire.WireFormatError` to the client's error type, in one place, so callers
catch the one exception family the client documents. Must never import ``dpp_server`` or
``storage``.
"""

from __future__ import annotations

import pyarrow as pa

from dpp_client.errors import FrameError
from dpp_proto import wire, worker_pb2

__all__ = ["decode_frame"]


def decode_frame(buf: bytes) -> tuple[worker_pb2.FrameHeader, pa.RecordBatch | None]:
    """:func:`dpp_proto.wire.decode_frame`, raising :class:`FrameError` on a malformed frame.

    Args:
        buf: one StreamBatches response message, exactly as received.

    Returns:
        ``(header, batch)``; ``batch`` is None for end-of-split and error frames. Zero copy:
        the batch keeps ``buf`` alive.

    Raises:
        FrameError: the frame breaks the contract; the message says how.
    """
    try:
        return wire.decode_frame(buf)
    except wire.WireFormatError as exc:
        raise FrameError(str(exc)) from exc
