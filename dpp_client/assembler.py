"""Turns one rank's stream of frames into the epoch's batches, and tracks what was consumed.

Owns: :class:`EpochAssembler`, the pure (no threads, no gRPC, no torch) heart of the loader's
consumer side, so that the exactly-once, ordering, re-batching and resume rules are
unit-testable frame by frame. Must never import ``dpp_server`` or ``storage``.

Rules:

* Batches of a split are numbered 0..n-1; a row-less end frame numbered n closes the split.
  Frames are released per split in number order (a frame that arrives early waits for the
  ones before it), and a frame whose number was already released is a duplicate (a split
  re-produced after its worker died) and is dropped.
* Deterministic mode releases splits in the epoch's order: the frames of later splits wait
  until every earlier split is complete, so the batch sequence does not depend on which worker
  sent what when. The default mode releases every split as its frames arrive.
* Full batches (``batch_size`` rows) are handed out unchanged. Only a split's last batch may be
  short; short batches are held and concatenated, in release order, into full batches. When
  every split is complete the remainder is handed out (unless ``drop_last``).
* Every :class:`ReadyBatch` lists the parts of frames it holds. When the trainer takes it, the
  loader calls :meth:`EpochAssembler.consume`, which advances each split's consumption: how many
  of its batches were consumed and how many rows of the next one. That consumption is what the
  loader acknowledges to the master and saves in ``state_dict``; ``begin_epoch(..., consumed)``
  resumes from it, dropping the consumed batches and rows when they arrive again.

Worked example (batch_size 4, epoch 0 holds splits A and B, default mode):

1. ``begin_epoch(0, ["A", "B"])``: both splits open.
2. A#0 (4 rows) arrives: a full batch, returned at once. A#1 (3 rows) is short: held.
3. A#2, the end frame, arrives: A is complete.
4. B#1 (2 rows) arrives before B#0: it waits. B#0 (4 rows) arrives: returned, then B#1 is
   released into the held rows: 5 rows, so one batch of 4 is cut (A#1's 3 rows and B#1's first
   row) and 1 row of B#1 stays held.
5. A worker re-sends B#0 after a failure: a duplicate, dropped. B#2 (end) completes B: every
   split is complete, so the 1-row remainder is returned and :attr:`done` becomes true.
6. Had the trainer checkpointed after step 4, the consumption would read A: 1 batch and 3 rows
   into the next (A#1 was partly consumed... here wholly: A: 2 batches) and B: 1 batch and 1
   row of B#1; a restored assembler drops B#0 and B#1's first row when they arrive again.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import pyarrow as pa

from dpp_client.batch import concat_batches
from dpp_client.errors import WorkerDataError
from dpp_proto import worker_pb2

__all__ = ["Consumption", "EpochAssembler", "Part", "ReadyBatch"]

_log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Consumption:
    """How much of one split the trainer consumed.

    Attributes:
        batches: batches consumed, counted from batch 0.
        rows_into_next: rows of batch ``batches`` already consumed (only a short last batch
            is ever split across trainer batches).
        done: every batch of the split was consumed.
    """

    batches: int = 0
    rows_into_next: int = 0
    done: bool = False


@dataclass(frozen=True)
class Part:
    """Rows ``[start, end)`` of batch ``seq`` of a split, of ``frame_rows`` rows in all."""

    split_id: str
    seq: int
    start: int
    end: int
    frame_rows: int


@dataclass
class ReadyBatch(Generic[T]):
    """A batch ready for the trainer.

    Attributes:
        rb: the Arrow rows (exactly ``batch_size`` of them, except an epoch's remainder).
        parts: the frame rows it holds, for consumption tracking.
        prepared: what the caller attached to the frame when the batch is that frame
            unchanged (e.g. tensors converted in a background thread); None for batches cut
            from concatenated short batches, which the caller must convert itself.
        dropped: the epoch's short remainder under ``drop_last``: not for the trainer, but
            consumed (acknowledged) when the trainer reaches it, like any other batch.
    """

    rb: pa.RecordBatch
    parts: tuple[Part, ...] = ()
    prepared: T | None = None
    dropped: bool = False


_Held = tuple[worker_pb2.FrameHeader, pa.RecordBatch | None, T | None]


@dataclass
class _Split(Generic[T]):
    position: int
    next_seq: int = 0
    skip_rows: int = 0
    end_seq: int | None = None
    waiting: dict[int, _Held[T]] = field(default_factory=dict)
    consumed: Consumption = field(default_factory=Consumption)

    @property
    def complete(self) -> bool:
        """Every batch was released and the end is known (``end_seq``: the number of
        batches, learnt from the end frame or from a batch marked last)."""
        return self.end_seq is not None and self.next_seq >= self.end_seq


class EpochAssembler(Generic[T]):
    """Assembles the frames of one rank into the batches of the current epoch.

    Not thread-safe: owned by the consumer (trainer) thread alone; background threads hand it
    frames through the loader's queue.

    Args:
        batch_size: rows per delivered batch (the spec's).
        drop_last: drop the epoch's final short batch instead of delivering it (its rows count
            as consumed).
        session_id: when set, frames of another session are dropped (with a warning).
        rank: frames addressed to another rank are dropped (with a warning).
        deterministic: release splits in the epoch's order (see the module docstring).
        max_aside_frames: frames of later epochs kept aside at most (None: no bound). A frame
            past the bound is dropped and its split listed by :meth:`take_aside_dropped`, to
            be produced again when its epoch begins.
    """

    def __init__(
        self,
        batch_size: int,
        drop_last: bool = False,
        session_id: str = "",
        rank: int = 0,
        deterministic: bool = False,
        max_aside_frames: int | None = None,
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {batch_size}")
        if max_aside_frames is not None and max_aside_frames < 0:
            raise ValueError(f"max_aside_frames must be >= 0, got {max_aside_frames}")
        self.max_aside_frames = max_aside_frames
        self.aside_dropped = 0
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.session_id = session_id
        self.rank = rank
        self.deterministic = deterministic
        self.epoch: int | None = None
        self.duplicates_dropped = 0
        self.stale_dropped = 0
        self.batches_assembled = 0
        self._order: list[str] = []
        self._splits: dict[str, _Split[T]] = {}
        self._cursor = 0
        self._incomplete: set[str] = set()
        self._short: list[tuple[pa.RecordBatch, Part]] = []
        self._short_rows = 0
        self._done = False
        self._aside: dict[int, list[_Held[T]]] = {}
        self._aside_count = 0
        self._aside_dropped_splits: dict[int, set[str]] = {}
        self._dirty: set[str] = set()

    @property
    def done(self) -> bool:
        """True once every split of the current epoch is complete and the rest handed out."""
        return self._done

    @property
    def missing_splits(self) -> int:
        """Splits of the current epoch not yet complete."""
        return len(self._incomplete)

    def incomplete_splits(self) -> list[str]:
        """Ids of the splits not yet complete, in the epoch's order."""
        return [s for s in self._order if s in self._incomplete]

    @property
    def held_rows(self) -> int:
        """Rows held in short batches, waiting for more rows or the epoch's end."""
        return self._short_rows

    @property
    def frames_aside(self) -> int:
        """Frames of later epochs kept for when those epochs begin."""
        return self._aside_count

    def take_aside_dropped(self, epoch: int) -> list[str]:
        """Splits of ``epoch`` with frames dropped past ``max_aside_frames``, once (the
        caller asks the master to produce them again)."""
        return sorted(self._aside_dropped_splits.pop(epoch, set()))

    def begin_epoch(
        self,
        epoch: int,
        split_ids: Iterable[str],
        consumed: Mapping[str, Consumption] | None = None,
    ) -> list[ReadyBatch[T]]:
        """Starts ``epoch`` for the given splits (in the epoch's order) and replays frames kept
        aside for it.

        Args:
            consumed: the consumption to resume from (a restored checkpoint): those batches and
                rows are dropped when they arrive again; splits marked done are complete.

        Returns:
            Batches already deliverable from frames that arrived early.
        """
        if self.epoch is not None and not self._done:
            _log.warning(
                "epoch %d abandoned with %d of %d splits incomplete and %d rows held; "
                "starting epoch %d",
                self.epoch,
                len(self._incomplete),
                len(self._splits),
                self._short_rows,
                epoch,
            )
        self.epoch = epoch
        self._order = list(split_ids)
        self._splits = {s: _Split(position=i) for i, s in enumerate(self._order)}
        self._incomplete = set(self._splits)
        self._cursor = 0
        self._short = []
        self._short_rows = 0
        self._done = False
        self._dirty = set()
        self.batches_assembled = 0
        for split_id, c in (consumed or {}).items():
            split = self._splits.get(split_id)
            if split is None:
                continue
            split.consumed = c
            split.next_seq = c.batches
            split.skip_rows = c.rows_into_next
            if c.done:
                split.end_seq = c.batches
                split.next_seq = c.batches + 1
                self._incomplete.discard(split_id)
        for old in [e for e in self._aside if e < epoch]:
            stale = self._aside.pop(old)
            self.stale_dropped += len(stale)
            self._aside_count -= len(stale)
        for old in [e for e in self._aside_dropped_splits if e < epoch]:
            del self._aside_dropped_splits[old]
        out: list[ReadyBatch[T]] = []
        replayed = self._aside.pop(epoch, [])
        self._aside_count -= len(replayed)
        for header, rb, prepared in replayed:
            out.extend(self._accept(header, rb, prepared))
        out.extend(self._advance())
        return out

    def push(
        self,
        header: worker_pb2.FrameHeader,
        rb: pa.RecordBatch | None,
        prepared: T | None = None,
    ) -> list[ReadyBatch[T]]:
        """Feeds one decoded frame; returns the batches now deliverable, in order.

        Raises:
            WorkerDataError: the frame reports a failed split of the current epoch.
        """
        if self.session_id and header.session_id and header.session_id != self.session_id:
            _log.warning(
                "dropping frame of session %s (expected %s)", header.session_id, self.session_id
            )
            return []
        if header.rank != self.rank:
            _log.warning("dropping frame for rank %d (this is rank %d)", header.rank, self.rank)
            return []
        if self.epoch is None or header.epoch > self.epoch:
            if self.max_aside_frames is not None and self._aside_count >= self.max_aside_frames:
                # Only after a failure do frames of a later epoch pile up here (see
                # dpp_client.epoch_overlap); bound the memory, have the split sent again.
                self.aside_dropped += 1
                self._aside_dropped_splits.setdefault(header.epoch, set()).add(header.split_id)
                return []
            self._aside.setdefault(header.epoch, []).append((header, rb, prepared))
            self._aside_count += 1
            return []
        if header.epoch < self.epoch:
            self.stale_dropped += 1
            return []
        out = self._accept(header, rb, prepared)
        out.extend(self._advance())
        return out

    def consume(self, ready: ReadyBatch[T]) -> None:
        """Records that the trainer took ``ready``: its parts are consumed."""
        for part in ready.parts:
            split = self._splits.get(part.split_id)
            if split is None:
                continue
            if part.end >= part.frame_rows:
                batches, rows = part.seq + 1, 0
            else:
                batches, rows = part.seq, part.end
            if (batches, rows) <= (split.consumed.batches, split.consumed.rows_into_next):
                continue
            done = split.end_seq is not None and batches >= split.end_seq
            split.consumed = Consumption(batches, rows, done)
            self._dirty.add(part.split_id)

    def consumption(self) -> dict[str, Consumption]:
        """The consumption of every split of the epoch that has any (for ``state_dict``)."""
        return {s: p.consumed for s, p in self._splits.items() if p.consumed != Consumption()}

    def take_dirty(self) -> dict[str, Consumption]:
        """The consumption of splits that changed since the last call (for acks)."""
        dirty = {s: self._splits[s].consumed for s in self._dirty if s in self._splits}
        self._dirty = set()
        return dirty

    # ----------------------------------------------------------------- internals

    def _accept(
        self, header: worker_pb2.FrameHeader, rb: pa.RecordBatch | None, prepared: T | None
    ) -> list[ReadyBatch[T]]:
        split = self._splits.get(header.split_id)
        if split is None:
            _log.warning(
                "dropping frame of split %s seq %d: not one of the %d splits of epoch %d for "
                "rank %d",
                header.split_id,
                header.batch_seq,
                len(self._splits),
                header.epoch,
                self.rank,
            )
            return []
        if split.complete or header.batch_seq < split.next_seq:
            self.duplicates_dropped += 1
            return []
        if header.error:
            raise WorkerDataError(
                f"a worker failed to produce split {header.split_id} (epoch {header.epoch}, "
                f"rank {header.rank}, session {header.session_id}): {header.error}",
                split_id=header.split_id,
                epoch=header.epoch,
            )
        if header.batch_seq in split.waiting:
            self.duplicates_dropped += 1
            return []
        split.waiting[header.batch_seq] = (header, rb, prepared)
        if self.deterministic:
            return []  # _advance releases in the epoch's order
        return self._release(header.split_id, split)

    def _advance(self) -> list[ReadyBatch[T]]:
        out: list[ReadyBatch[T]] = []
        if self.deterministic:
            while self._cursor < len(self._order):
                split_id = self._order[self._cursor]
                split = self._splits[split_id]
                out.extend(self._release(split_id, split))
                if not split.complete:
                    break
                self._cursor += 1
        out.extend(self._maybe_finish())
        return out

    def _release(self, split_id: str, split: _Split[T]) -> list[ReadyBatch[T]]:
        """Releases the split's frames that are next in number order."""
        out: list[ReadyBatch[T]] = []
        while not split.complete and split.next_seq in split.waiting:
            header, rb, prepared = split.waiting.pop(split.next_seq)
            seq = split.next_seq
            split.next_seq += 1
            if rb is not None and rb.num_rows > 0:
                out.extend(self._take(split_id, split, seq, rb, prepared))
            if header.last_in_split:
                # A row-less end frame is numbered after the last batch; a batch may also
                # carry the mark itself.
                split.end_seq = seq if rb is None or rb.num_rows == 0 else seq + 1
                split.next_seq = max(split.next_seq, split.end_seq)
                self._incomplete.discard(split_id)
                split.waiting.clear()
                if split.consumed.batches >= split.end_seq and not split.consumed.done:
                    # Everything before the end was consumed already (e.g. restored).
                    split.consumed = dataclasses.replace(split.consumed, done=True)
                    self._dirty.add(split_id)
        return out

    def _take(
        self, split_id: str, split: _Split[T], seq: int, rb: pa.RecordBatch, prepared: T | None
    ) -> list[ReadyBatch[T]]:
        rows = rb.num_rows
        start = split.skip_rows
        split.skip_rows = 0
        if start == 0 and rows == self.batch_size:
            self.batches_assembled += 1
            return [ReadyBatch(rb, (Part(split_id, seq, 0, rows, rows),), prepared)]
        if start >= rows:
            return []
        piece = rb.slice(start) if start else rb
        self._short.append((piece, Part(split_id, seq, start, rows, rows)))
        self._short_rows += piece.num_rows
        return self._cut_full()

    def _cut_full(self) -> list[ReadyBatch[T]]:
        out: list[ReadyBatch[T]] = []
        while self._short_rows >= self.batch_size:
            out.append(self._cut(self.batch_size))
        return out

    def _cut(self, rows: int) -> ReadyBatch[T]:
        """Cuts ``rows`` rows off the front of the held short batches."""
        pieces: list[pa.RecordBatch] = []
        parts: list[Part] = []
        needed = rows
        while needed:
            piece, part = self._short[0]
            if piece.num_rows <= needed:
                self._short.pop(0)
                pieces.append(piece)
                parts.append(part)
                needed -= piece.num_rows
            else:
                pieces.append(piece.slice(0, needed))
                parts.append(dataclasses.replace(part, end=part.start + needed))
                rest = Part(part.split_id, part.seq, part.start + needed, part.end, part.frame_rows)
                self._short[0] = (piece.slice(needed), rest)
                needed = 0
        self._short_rows -= rows
        self.batches_assembled += 1
        rb = pieces[0] if len(pieces) == 1 else concat_batches(pieces)
        return ReadyBatch(rb, tuple(parts))

    def _maybe_finish(self) -> list[ReadyBatch[T]]:
        if self._done or self._incomplete:
            return []
        self._done = True
        out: list[ReadyBatch[T]] = []
        if self._short_rows:
            remainder = self._cut(self._short_rows)
            if self.drop_last:
                self.batches_assembled -= 1
                remainder.dropped = True
            out.append(remainder)
        return out
