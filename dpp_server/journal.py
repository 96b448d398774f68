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

Compaction (tf.data service's snapshot + journal): :meth:`FileJournal.compact` writes the
ledger's snapshot (:meth:`dpp_server.state.Ledger.snapshot`, the same update lines) to
``snapshot-<id>.jsonl``, then starts ``journal.jsonl`` afresh with one header line
``{"type":"Header","snapshot":"<id>"}`` naming it. Each file is written beside its final name,
fsynced and renamed over it. The journal's rename is the commit point: a journal names the
snapshot it continues (one without a header continues none), so a crash at any moment leaves
either the old journal (and its snapshot) or the new pair; a snapshot no journal names is an
orphan of an interrupted compaction and is deleted at the next start. Replay reads the named
snapshot, then the journal's updates: a master that served 10,000 sessions replays only the
live ones (see ``docs/operations.md``). A journal never compacted has no header, as before.

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
import uuid
from collections.abc import Iterator, Sequence
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


HEADER = "Header"


def _header_of(path: Path) -> dict[str, Any] | None:
    """The header of a journal or snapshot file, or None (no file, or no header line)."""
    if not path.exists():
        return None
    with open(path, encoding="utf-8") as f:
        first = f.readline()
    try:
        data = json.loads(first)
    except ValueError:
        return None
    if isinstance(data, dict) and data.get("type") == HEADER:
        return data
    return None


def _write_atomically(path: Path, lines: Iterator[str]) -> int:
    """Writes ``lines`` beside ``path``, fsyncs and renames the file over it, then fsyncs the
    folder: afterwards ``path`` holds the old content or all the new, never a part. Returns
    the bytes written.

    Raises:
        OSError: before the rename (``path`` unchanged; the ``.tmp`` file may remain)."""
    tmp = path.with_name(path.name + ".tmp")
    written = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for line in lines:
            written += f.write(line)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    try:  # once renamed, the new content is in force: a failed folder fsync only warns
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    except OSError as exc:
        logger.warning("could not fsync folder %s after writing %s: %s", path.parent, path, exc)
    return written


class FileJournal:
    """An append-only, fsynced journal file (``journal.jsonl`` in a directory), and the
    snapshot it continues (``snapshot-<id>.jsonl``) once compacted."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.path = Path(directory) / "journal.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._drop_torn_tail()
        header = _header_of(self.path)
        self._snapshot_id = str(header.get("snapshot", "")) if header is not None else ""
        self._snapshot_updates = 0
        if self._snapshot_id:
            snapshot = _header_of(self.snapshot_path)
            if snapshot is None:
                raise ValueError(
                    f"journal {self.path} continues snapshot {self.snapshot_path}, which is "
                    "missing or has no header; the master cannot recover from it: restore it "
                    "from a backup, or move the folder away to start empty"
                )
            self._snapshot_updates = int(snapshot.get("updates", 0))
        self._drop_orphans()
        self._tail_updates = self._count_tail()
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open
        self.appended = 0
        self._line = 0  # the line :meth:`replay` read last
        self._reading = self.path

    @property
    def snapshot_path(self) -> Path:
        """The snapshot the journal continues (meaningful once compacted)."""
        return self.path.with_name(f"snapshot-{self._snapshot_id}.jsonl")

    def _drop_orphans(self) -> None:
        """Deletes snapshots no journal names and half-written files: what a compaction
        interrupted by a crash or an I/O error left."""
        for path in [*self.path.parent.glob("snapshot-*.jsonl*"), *self.path.parent.glob("*.tmp")]:
            if path != self.snapshot_path or not self._snapshot_id:
                logger.warning("removing %s, left by an interrupted journal compaction", path)
                with contextlib.suppress(OSError):
                    path.unlink()

    def _count_tail(self) -> int:
        if not self.path.exists():
            return 0
        with open(self.path, "rb") as f:
            lines = sum(1 for line in f if line.strip())
        return lines - (1 if self._snapshot_id else 0)

    @property
    def tail_updates(self) -> int:
        return self._tail_updates

    @property
    def snapshot_updates(self) -> int:
        return self._snapshot_updates

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
            self._tail_updates += 1

    def compact(self, snapshot: Sequence[state.Update]) -> None:
        """Writes ``snapshot`` (the whole state after the last append) as a new snapshot file
        and starts an empty ``journal.jsonl`` naming it; see the module docstring for why every
        crash point leaves a valid pair.

        Raises:
            OSError: a file could not be written; the old journal and snapshot stay in force
                (and appends go on into them), the new snapshot file is an orphan.
        """
        previous = self.snapshot_path if self._snapshot_id else None
        snapshot_id = uuid.uuid4().hex[:12]
        new_snapshot = self.path.with_name(f"snapshot-{snapshot_id}.jsonl")
        header = {"type": HEADER, "snapshot": snapshot_id, "updates": len(snapshot)}
        with self._lock:
            self._file.flush()
            lines = (encode(update) + "\n" for update in snapshot)
            _write_atomically(new_snapshot, iter([json.dumps(header) + "\n", *lines]))
            journal_header = json.dumps({"type": HEADER, "snapshot": snapshot_id}) + "\n"
            _write_atomically(self.path, iter([journal_header]))  # the commit point
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open
            self._snapshot_id = snapshot_id
            self._snapshot_updates = len(snapshot)
            self._tail_updates = 0
            if previous is not None:
                with contextlib.suppress(OSError):
                    previous.unlink()

    def _reopen(self, size: int) -> None:
        """Drops what a failed write left in the buffer and the file past ``size``."""
        # The buffered tail may fail to flush again: it is dropped with the handle.
        with contextlib.suppress(OSError):
            self._file.close()
        with open(self.path, "r+b") as f:
            f.truncate(size)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open

    def position(self) -> str:
        return f"journal {self._reading} line {self._line}"

    def replay(self) -> Iterator[state.Update]:
        """The snapshot's updates, then the journal's (each file's header line skipped)."""
        with self._lock:
            self._file.flush()
        if self._snapshot_id:
            yield from self._read(self.snapshot_path)
        yield from self._read(self.path)

    def _read(self, path: Path) -> Iterator[state.Update]:
        self._reading = path
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                self._line = number
                if not line.strip() or (number == 1 and self._snapshot_id):
                    continue  # the header
                try:
                    yield decode(line)
                except (ValueError, KeyError, TypeError) as exc:
                    raise ValueError(
                        f"journal {path} line {number} is corrupt ({exc}); the master "
                        "cannot recover from it: restore the file from a backup or move it "
                        "away to start empty"
                    ) from exc

    def close(self) -> None:
        with self._lock:
            self._file.close()
