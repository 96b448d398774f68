"""The master's durable journal: one JSON line per ledger update, fsynced before it counts.

Owns the on-disk format of :mod:`dpp_server.state` updates: ``{"type": <update class>, <its
fields>}``, derived from the update dataclasses by :func:`dpp_server.records.to_json` and read
back by their type hints (:func:`dpp_server.records.from_json`), so a new update type or field
needs no edit here. Must never import grpc.

Why JSON lines: the journal is small (a line per session, lease, ack batch and epoch), human
readable when an operator needs to know what happened, and needs no schema tooling. Each append
writes one line, flushes and fsyncs it before returning, so an update the master acknowledged
survives a crash of the process or the machine. A crash in the middle of a write leaves at most
one torn last line, which :meth:`FileJournal.replay` drops with a warning.

Thread-safety: :meth:`FileJournal.append` takes ``_lock`` (the master already serialises its
calls; the lock keeps the file consistent for any other caller).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dpp_server import records, state

logger = logging.getLogger(__name__)

#: Every update type, by name: the members of :data:`state.Update`, so a new update type needs
#: no edit here.
_TYPES: dict[str, type[Any]] = {cls.__name__: cls for cls in typing.get_args(state.Update)}


def encode(update: state.Update) -> str:
    """One journal line (without the newline) for an update: its type's name and its fields,
    derived from the update's dataclass (:func:`dpp_server.records.to_json`)."""
    fields = records.to_json(update)
    return json.dumps({"type": type(update).__name__, **fields}, separators=(",", ":"))


def decode(line: str) -> state.Update:
    """The update a journal line records.

    Raises:
        ValueError: not JSON, or an unknown update type.
        TypeError, KeyError: a field missing, unknown or of the wrong type (the message names
            it, e.g. ``SessionCreated.splits[2].num_rows``).
    """
    data = json.loads(line)
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    name = data.pop("type", None)
    cls = _TYPES.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(f"unknown update type {name!r}; known: {sorted(_TYPES)}")
    update: state.Update = records.from_json(cls, data)
    return update


class FileJournal:
    """An append-only, fsynced journal file (``journal.jsonl`` in a directory)."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.path = Path(directory) / "journal.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._drop_torn_tail()
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open
        self.appended = 0
        self._line = 0  # the line :meth:`replay` read last

    def _drop_torn_tail(self) -> None:
        """Cuts a last line that a crash left without its newline, so appends stay valid."""
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
            logger.warning(
                "journal %s ends in a torn line (%d bytes, from a crash mid-write); dropping it",
                self.path,
                len(data) - keep,
            )
            with open(self.path, "r+b") as f:
                f.truncate(keep)

    def append(self, update: state.Update) -> None:
        """Writes and fsyncs one line.

        Raises:
            OSError: the line could not be written; the file is cut back to its last whole
                line, so a later append (once the disk has room) is valid again.
        """
        line = encode(update) + "\n"
        with self._lock:
            size = self._file.tell()
            try:
                self._file.write(line)
                self._file.flush()
                os.fsync(self._file.fileno())
            except OSError:
                self._reopen(size)
                raise
            self.appended += 1

    def _reopen(self, size: int) -> None:
        """Drops what a failed write left in the buffer and the file past ``size``."""
        # The buffered tail may fail to flush again: it is dropped with the handle.
        with contextlib.suppress(OSError):
            self._file.close()
        with open(self.path, "r+b") as f:
            f.truncate(size)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open

    def position(self) -> str:
        return f"journal {self.path} line {self._line}"

    def replay(self) -> Iterator[state.Update]:
        with self._lock:
            self._file.flush()
        with open(self.path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                self._line = number
                if not line.strip():
                    continue
                try:
                    yield decode(line)
                except (ValueError, KeyError, TypeError) as exc:
                    raise ValueError(
                        f"journal {self.path} line {number} is corrupt ({exc}); the master "
                        "cannot recover from it: restore the file from a backup or move it "
                        "away to start empty"
                    ) from exc

    def close(self) -> None:
        with self._lock:
            self._file.close()
