"""Turns one rank's stream of frames into the epoch's batches: dedup, completion, re-batching.

Owns: :class:`EpochAssembler`, the pure (no threads, no gRPC, no torch) heart of the loader's
consumer side, so the exactly-once and re-batching rules are unit-testable frame by frame.
Must never import ``dpp_server`` or ``storage``.

Protocol, worked example (batch_size 4, rank 0, epoch 0 holds splits A and B):

1. ``begin_epoch(0, ["A", "B"])``: both splits pending; frames of epoch 1 that arrived early
   stay aside until ``begin_epoch(1, ...)``; frames of an older epoch are dropped.
2. Worker W1 streams A seq 0 (4 rows): a full batch, returned at once.
3. W1 streams A seq 1 (3 rows, ``last_in_split``): A's last seq is 1 and seqs {0, 1} arrived,
   so A is complete. The 3 rows are a partial batch: held.
4. W1 dies mid-way through B after sending B seq 0 (4 rows, returned). The master re-leases B
   to W2, which may re-send B seq 0: a duplicate (same split and seq), dropped.
5. W2 sends B seq 1 (2 rows, ``last_in_split``): held partials now hold 5 rows, so one full
   batch of 4 is cut from their concatenation and returned; 1 row is held.
6. B is complete, so every split is: the 1-row remainder is returned (unless ``drop_last``)
   and :attr:`done` becomes true.

A split whose rows were all filtered out sends one frame with ``num_rows == 0`` and
``last_in_split``; it completes the split and contributes no rows. An error frame of the
current epoch raises :class:`WorkerDataError`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import pyarrow as pa

from dpp_client.batch import concat_batches
from dpp_client.errors import WorkerDataError
from dpp_proto import worker_pb2

__all__ = ["EpochAssembler", "ReadyBatch"]

_log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class ReadyBatch(Generic[T]):
    """A batch ready for the trainer.

    Attributes:
        rb: the Arrow rows (exactly ``batch_size`` of them, except an epoch's remainder).
        prepared: what the caller attached to the frame when the batch is that frame
            unchanged (e.g. tensors converted in a background thread); None for batches cut
            from concatenated partials, which the caller must convert itself.
    """

    rb: pa.RecordBatch
    prepared: T | None = None


@dataclass
class _SplitProgress:
    seqs: set[int] = field(default_factory=set)
    last_seq: int | None = None

    def complete(self) -> bool:
        last = self.last_seq
        if last is None or len(self.seqs) < last + 1:
            return False
        return all(s in self.seqs for s in range(last + 1))


_Held = tuple[worker_pb2.FrameHeader, pa.RecordBatch | None, T | None]


class EpochAssembler(Generic[T]):
    """Assembles the frames of one rank into the batches of the current epoch.

    Not thread-safe: owned by the consumer (trainer) thread alone; background threads hand it
    frames through the loader's queue.

    Args:
        batch_size: rows per delivered batch (the spec's).
        drop_last: drop the epoch's final short batch instead of delivering it.
        session_id: when set, frames of another session are dropped (with a warning).
        rank: frames addressed to another rank are dropped (with a warning).
    """

    def __init__(
        self, batch_size: int, drop_last: bool = False, session_id: str = "", rank: int = 0
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {batch_size}")
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.session_id = session_id
        self.rank = rank
        self.epoch: int | None = None
        self.duplicates_dropped = 0
        self.stale_dropped = 0
        self._splits: dict[str, _SplitProgress] = {}
        self._incomplete: set[str] = set()
        self._partials: list[pa.RecordBatch] = []
        self._partial_rows = 0
        self._done = False
        self._aside: dict[int, list[_Held[T]]] = {}

    @property
    def done(self) -> bool:
        """True once every split of the current epoch is complete and the rest delivered."""
        return self._done

    @property
    def missing_splits(self) -> int:
        """Splits of the current epoch not yet complete."""
        return len(self._incomplete)

    @property
    def held_rows(self) -> int:
        """Rows held in partial batches, waiting for more rows or the epoch's end."""
        return self._partial_rows

    @property
    def frames_aside(self) -> int:
        """Frames of later epochs kept for when those epochs begin."""
        return sum(len(v) for v in self._aside.values())

    def begin_epoch(self, epoch: int, split_ids: Iterable[str]) -> list[ReadyBatch[T]]:
        """Starts ``epoch`` for the given splits and replays frames kept aside for it.

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
                self._partial_rows,
                epoch,
            )
        self.epoch = epoch
        self._splits = {s: _SplitProgress() for s in split_ids}
        self._incomplete = set(self._splits)
        self._partials = []
        self._partial_rows = 0
        self._done = False
        for old in [e for e in self._aside if e < epoch]:
            self.stale_dropped += len(self._aside.pop(old))
        out: list[ReadyBatch[T]] = []
        for header, rb, prepared in self._aside.pop(epoch, []):
            out.extend(self._accept(header, rb, prepared))
        out.extend(self._maybe_finish())
        return out

    def push(
        self,
        header: worker_pb2.FrameHeader,
        rb: pa.RecordBatch | None,
        prepared: T | None = None,
    ) -> list[ReadyBatch[T]]:
        """Feeds one decoded frame.

        Args:
            header: the frame's header.
            rb: its rows, or None for an end marker / error frame.
            prepared: anything the caller derived from ``rb`` (returned with it when ``rb`` is
                delivered unchanged).

        Returns:
            Batches now deliverable, in order (possibly none).

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
            self._aside.setdefault(header.epoch, []).append((header, rb, prepared))
            return []
        if header.epoch < self.epoch:
            self.stale_dropped += 1
            return []
        out = self._accept(header, rb, prepared)
        out.extend(self._maybe_finish())
        return out

    def _accept(
        self, header: worker_pb2.FrameHeader, rb: pa.RecordBatch | None, prepared: T | None
    ) -> list[ReadyBatch[T]]:
        if self._done:
            # Every split is complete, so this can only be a re-produced frame.
            self.duplicates_dropped += 1
            return []
        if header.error:
            raise WorkerDataError(
                f"a worker failed to produce split {header.split_id} (epoch {header.epoch}, "
                f"rank {header.rank}, session {header.session_id}): {header.error}",
                split_id=header.split_id,
                epoch=header.epoch,
            )
        progress = self._splits.get(header.split_id)
        if progress is None:
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
        seq = header.batch_seq
        if header.last_in_split:
            if progress.last_seq is None:
                progress.last_seq = seq
            elif progress.last_seq != seq:
                _log.warning(
                    "split %s: last_in_split at seq %d after seq %d; keeping %d",
                    header.split_id,
                    seq,
                    progress.last_seq,
                    progress.last_seq,
                )
        out: list[ReadyBatch[T]] = []
        if seq in progress.seqs:
            self.duplicates_dropped += 1
        else:
            progress.seqs.add(seq)
            if rb is not None and rb.num_rows > 0:
                if rb.num_rows == self.batch_size:
                    out.append(ReadyBatch(rb, prepared))
                else:
                    out.extend(self._add_partial(rb))
        if header.split_id in self._incomplete and progress.complete():
            self._incomplete.discard(header.split_id)
        return out

    def _add_partial(self, rb: pa.RecordBatch) -> list[ReadyBatch[T]]:
        self._partials.append(rb)
        self._partial_rows += rb.num_rows
        if self._partial_rows < self.batch_size:
            return []
        combined = concat_batches(self._partials)
        full = combined.num_rows // self.batch_size
        out: list[ReadyBatch[T]] = [
            ReadyBatch(combined.slice(i * self.batch_size, self.batch_size)) for i in range(full)
        ]
        rest = combined.num_rows - full * self.batch_size
        self._partials = [combined.slice(full * self.batch_size, rest)] if rest else []
        self._partial_rows = rest
        return out

    def _maybe_finish(self) -> list[ReadyBatch[T]]:
        if self._done or self._incomplete:
            return []
        self._done = True
        out: list[ReadyBatch[T]] = []
        if self._partial_rows and not self.drop_last:
            out.append(ReadyBatch(concat_batches(self._partials)))
        self._partials = []
        self._partial_rows = 0
        return out
