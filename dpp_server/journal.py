"""The master's durable journal: one JSON line per ledger update, fsynced before it counts.

Owns the on-disk format of :mod:`dpp_server.state` updates. Must never import grpc.

Why JSON lines: the journal is small (a line per session, lease, ack batch and epoch), human
readable when an operator needs to know what happened, and needs no schema tooling. Each append
writes one line, flushes and fsyncs it before returning, so an update the master acknowledged
survives a crash of the process or the machine. A crash in the middle of a write leaves at most
one torn last line, which :meth:`FileJournal.replay` drops with a warning.

Thread-safety: :meth:`FileJournal.append` takes ``_lock`` (the master already serialises its
calls; the lock keeps the file consistent for any other caller).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dpp_server import state
from storage import SplitInfo

logger = logging.getLogger(__name__)

_TYPES: dict[str, type[Any]] = {
    cls.__name__: cls
    for cls in (
        state.SessionCreated,
        state.WorkerRegistered,
        state.WorkerRemoved,
        state.EpochBegun,
        state.SplitLeased,
        state.SplitProduced,
        state.BatchesAcked,
        state.StreamRestored,
        state.LeaseReleased,
    )
}


def encode(update: state.Update) -> str:
    """One journal line (without the newline) for an update."""
    fields: dict[str, Any] = {}
    for field in dataclasses.fields(update):
        value = getattr(update, field.name)
        if isinstance(value, bytes):
            value = base64.b64encode(value).decode("ascii")
        elif field.name == "splits":
            value = [
                {
                    "split_id": s.split_id,
                    "path": s.path,
                    "file_size": s.file_size,
                    "row_groups": list(s.row_groups),
                    "num_rows": s.num_rows,
                    "partition": dict(s.partition),
                }
                for s in value
            ]
        elif dataclasses.is_dataclass(value):
            value = dataclasses.asdict(value)  # type: ignore[arg-type]
        elif field.name == "acks":
            value = [dataclasses.asdict(a) for a in value]
        elif isinstance(value, tuple):
            value = list(value)
        fields[field.name] = value
    return json.dumps({"type": type(update).__name__, **fields}, separators=(",", ":"))


def decode(line: str) -> state.Update:
    """The update a journal line records."""
    data = json.loads(line)
    cls = _TYPES[data.pop("type")]
    if "spec_bytes" in data:
        data["spec_bytes"] = base64.b64decode(data["spec_bytes"])
    if "splits" in data:
        data["splits"] = tuple(
            SplitInfo(
                split_id=s["split_id"],
                path=s["path"],
                file_size=s["file_size"],
                row_groups=tuple(s["row_groups"]),
                num_rows=s["num_rows"],
                partition=dict(s["partition"]),
            )
            for s in data["splits"]
        )
    if "plan" in data:
        data["plan"] = state.PlanSummary(**data["plan"])
    if "acks" in data:
        data["acks"] = tuple(state.SplitAck(**a) for a in data["acks"])
    if "split_indices" in data:
        data["split_indices"] = tuple(data["split_indices"])
    update: state.Update = cls(**data)
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
        line = encode(update) + "\n"
        with self._lock:
            self._file.write(line)
            self._file.flush()
            os.fsync(self._file.fileno())
            self.appended += 1

    def replay(self) -> Iterator[state.Update]:
        with self._lock:
            self._file.flush()
        with open(self.path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
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
