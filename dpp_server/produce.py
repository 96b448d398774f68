"""One split in, its frames out: the worker's pipeline as a plain generator.

Owns :func:`produce_split` (read -> filter -> transform -> cut -> dedup -> encode) and what it
needs once per session (:class:`SessionPipeline`), plus the one builder of a frame's header
(:func:`frame_header`). No threads, no grpc, no leases kept, no buffers: the worker
(:mod:`dpp_server.worker`) runs it on its pipeline threads and puts the frames into its
buffers; the benchmarks (``bench/``) call the very same function, so they measure production
code. Must never import grpc or torch.

Batches of a split are deterministic: the split's rows in file order, transformed (or read
back from the worker's cache, :mod:`dpp_server.cache`), with ``shuffle`` put in a seeded order
window by window (``read_batch_rows`` transformed rows each, :func:`chunk_permutation`), cut
into ``batch_size`` rows from the first row on, numbered from 0. The last batch of a split
may be partial; after it a row-less end-of-split frame (numbered one past the last batch)
tells the client the split is complete.

Worked example (``batch_size`` 4, read chunks of 6 and 3 rows, ``start_batch`` 1):

1. Chunk 0 (6 rows) is filtered and transformed (with ``shuffle``: put in its window's
   seeded order): batch 0 is rows 0-3 of the chunk, a zero-copy slice; rows 4-5 wait.
2. Chunk 1 (3 rows): batch 1 is chunk 0's rows 4-5 joined with chunk 1's rows 0-1
   (:func:`dpp_proto.wire.concat_rows`); chunk 1's row 2 waits.
3. The split ends: batch 2 is that one row. Batch 0 was already delivered (``start_batch`` 1),
   so it is cut but not encoded; batches 1 and 2 are deduplicated per batch
   (:meth:`DedupPipeline.finish`) and encoded, then the end frame numbered 3.

No Python loop per row: every step is a vectorized Arrow or polars call.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import time
from collections.abc import Iterator
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from dpp_proto import worker_pb2
from dpp_proto.wire import FrameEncoder, Section, WireOptions, concat_rows, reheaded
from dpp_server.cache import SplitCache, output_digest
from dpp_server.master import LeaseGrant
from dpp_server.share import ShareClaim, ShareWindow
from dpp_server.spec import Spec, int32_features
from dpp_server.transforms.dedup import DedupPipeline
from storage import Filter, parse_filter, resolve
from storage.filesystem import fsspec_filesystem_of
from storage.readahead import ReadAhead
from storage.reader import file_columns, filter_rows, row_mask, scan_split
from storage.remote import ReadOptions

__all__ = [
    "SINGLE_FLIGHT_WAIT_S",
    "SessionPipeline",
    "StageRecorder",
    "StageTotals",
    "chunk_permutation",
    "frame_header",
    "produce_batches",
    "produce_split",
    "take_rows",
]


#: How long a pipeline thread waits for another thread that is writing the same split to the
#: cache (another job or rank on the same spec) before producing the split itself. Longer
#: saves more work when jobs run in step; it also bounds how long a job whose split's writer
#: is held up by its own slow consumer (a full frame buffer) waits: after it, each produces.
SINGLE_FLIGHT_WAIT_S = 5.0


class StageRecorder(Protocol):
    """Where :func:`produce_split` reports its work: seconds per stage (the
    :class:`~dpp_server.records.StageSeconds` names: ``read_s``, ``filter_s``, ``transform_s``,
    ``batch_s``, ``serialize_s``) and counts (``rows_read``, ``bytes_read``, ``rows_out``,
    ``batches_out``, ``bytes_out``). The worker's statistics implement it thread-safely."""

    def add_seconds(self, stage: str, seconds: float) -> None: ...

    def add_count(self, name: str, n: int) -> None: ...


class StageTotals:
    """A :class:`StageRecorder` that sums into two dicts; for one thread (benchmarks, tests)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = collections.defaultdict(float)
        self.counts: dict[str, int] = collections.defaultdict(int)

    def add_seconds(self, stage: str, seconds: float) -> None:
        self.seconds[stage] += seconds

    def add_count(self, name: str, n: int) -> None:
        self.counts[name] += n


@dataclasses.dataclass(frozen=True)
class SessionPipeline:
    """What a worker compiles once per session. Immutable, and safe to share between threads
    (the feature pipelines and the encoder guard their own caches).

    Attributes:
        spec: the session's spec.
        pipeline: its features, dedup groups included.
        encoder: the session's frame encoder (it caches the wire schemas).
        row_filter: the parsed ``row_filter``, or None.
        filesystem: the table's file system.
        read_batch_rows: rows per read chunk (``WorkerConfig.read_batch_rows``). With
            ``shuffle`` it is also the window of transformed rows each seeded order covers,
            so every worker producing a session's splits must use the same value.
        max_batch_bytes: decode fewer rows at a time where a read chunk would exceed this
            many bytes (0: never); from the worker's memory budget.
        max_row_group_bytes: refuse a row group whose compressed column chunks exceed this
            (0: never); from the worker's memory budget.
        cache: the worker's cache of transformed splits (None: none; see
            :mod:`dpp_server.cache`).
        cache_digest: :func:`~dpp_server.cache.output_digest` of ``spec``.
        share: the worker's share window when the spec sets ``share`` (None otherwise; see
            :mod:`dpp_server.share`): produced splits are kept there, in memory, for the
            other sessions of the share group, and looked up there first.
        frames_digest: with ``share``, a digest of everything that shapes this session's
            frames of a split beyond the shared rows (batch size, shuffle and seed, dedup,
            wire options): sessions of a group with equal ones also share the encoded frames
            of a split in an epoch (only their headers are rewritten).
        read_options: how files are fetched from a remote file system (coalesced ranges,
            read-ahead; :class:`storage.remote.ReadOptions`).
        read_ahead: where splits opened ahead of their lease's start are found, with the
            footer cache of remote files (None: each split's file is opened when it starts;
            :mod:`storage.readahead`). One per worker, shared by its sessions.
    """

    spec: Spec
    pipeline: DedupPipeline
    encoder: FrameEncoder
    row_filter: Filter | None
    filesystem: pafs.FileSystem
    read_batch_rows: int
    max_batch_bytes: int = 0
    max_row_group_bytes: int = 0
    cache: SplitCache | None = None
    cache_digest: str = ""
    read_options: ReadOptions = dataclasses.field(default_factory=ReadOptions)
    share: ShareWindow | None = None
    frames_digest: str = ""
    read_ahead: ReadAhead | None = None

    @classmethod
    def compile(
        cls,
        spec: Spec,
        read_batch_rows: int,
        wire: WireOptions | None = None,
        *,
        max_batch_bytes: int = 0,
        max_row_group_bytes: int = 0,
        cache: SplitCache | None = None,
        read_options: ReadOptions | None = None,
        share: ShareWindow | None = None,
        read_ahead: ReadAhead | None = None,
    ) -> SessionPipeline:
        """Builds the pipeline, parses the filter and resolves the file system of ``spec``.

        Args:
            spec: the session's spec.
            read_batch_rows: see the attribute.
            wire: how frames are encoded; by default the packed layout, with int32 ids for
                every feature :func:`~dpp_server.spec.int32_features` allows, narrow list
                lengths where a batch allows, and the compression of ``wire`` (none by
                default).
            max_batch_bytes, max_row_group_bytes: the worker's read budget
                (:mod:`dpp_server.budget`; 0: none).
            cache: where transformed splits are kept and found again (None: no cache).
            read_options: see the attribute; the defaults when None.
            share: the worker's share window; used only when ``spec.share`` is set.
            read_ahead: see the attribute.
        """
        filesystem, _ = resolve(spec.table_uri, spec.storage_options)
        options = WireOptions(
            packed=wire.packed if wire is not None else True,
            int32_features=int32_features(spec),
            narrow_lengths=wire.narrow_lengths if wire is not None else True,
            compression=wire.compression if wire is not None else None,
        )
        return cls(
            spec=spec,
            pipeline=DedupPipeline(spec),
            encoder=FrameEncoder(options),
            row_filter=parse_filter(spec.row_filter, "row_filter") if spec.row_filter else None,
            filesystem=filesystem,
            read_batch_rows=read_batch_rows,
            max_batch_bytes=max_batch_bytes,
            max_row_group_bytes=max_row_group_bytes,
            cache=cache,
            cache_digest=output_digest(spec) if cache is not None or share is not None else "",
            read_options=read_options or ReadOptions(),
            share=share if spec.share else None,
            frames_digest=_frames_digest(spec, options) if spec.share else "",
            read_ahead=read_ahead,
        )

    @property
    def reads_ahead(self) -> bool:
        """Whether the splits of this session can be read ahead (remote ``prefetch`` reads
        with a :class:`~storage.readahead.ReadAhead`)."""
        return (
            self.read_ahead is not None
            and self.read_options.mode == "prefetch"
            and fsspec_filesystem_of(self.filesystem) is not None
        )

    def read_ahead_split(self, lease: LeaseGrant) -> bool:
        """Starts fetching a leased split's footer and column chunks before its production
        starts (remote ``prefetch`` reads only); returns whether it did. Whoever holds the
        lease then produces it (the read is claimed) or discards the read
        (:meth:`storage.readahead.ReadAhead.discard`)."""
        if self.read_ahead is None:
            return False
        columns = file_columns(lease.split, self.pipeline.input_columns, self.row_filter)
        return self.read_ahead.warm(lease.split, self.filesystem, columns, self.read_options)


#: Spec fields that never change a split's frames (they choose splits, ranks or delivery).
_NOT_IN_FRAMES = (
    "epochs",
    "world_size",
    "target_split_rows",
    "deterministic",
    "max_splits_in_flight",
    "partition_filter",
    "share",
)


def _frames_digest(spec: Spec, options: WireOptions) -> str:
    """16 hex chars over what shapes a split's frames in an epoch: the spec less
    :data:`_NOT_IN_FRAMES`, and the wire options."""
    neutral = dataclasses.replace(
        spec,
        **{name: type(getattr(spec, name))() for name in _NOT_IN_FRAMES},
    )
    return hashlib.sha1(f"{neutral!r}/{options!r}".encode()).hexdigest()[:16]


def frame_header(
    lease: LeaseGrant, seq: int, num_rows: int = 0, *, last: bool = False, error: str = ""
) -> worker_pb2.FrameHeader:
    """The header of frame ``seq`` of a leased split (a data, end-of-split or error frame)."""
    return worker_pb2.FrameHeader(
        session_id=lease.session_id,
        epoch=lease.epoch,
        rank=lease.rank,
        split_id=lease.split.split_id,
        batch_seq=seq,
        num_rows=num_rows,
        last_in_split=last,
        error=error,
    )


def produce_split(
    session: SessionPipeline, lease: LeaseGrant, recorder: StageRecorder
) -> Iterator[bytes]:
    """Yields the frames of a split from ``lease.start_batch`` on, then the end frame.

    Time spent by the caller between frames (e.g. waiting for buffer room) is not counted in
    any stage.

    A session of a share group first looks for the split's frames of another member with
    the same batch size, order and wire options (:func:`_shared_frames`), and keeps its own
    for them when it produced every frame.

    Raises:
        Whatever reading or transforming raises (``storage`` and ``SpecError`` exceptions):
        the worker turns it into an error frame.
    """
    share = session.share
    key = ""
    if share is not None:
        key = _frames_key(session, lease)
        frames = share.frames(key, lease.share_readers)
        if frames is not None:
            rows_key = ShareWindow.key(lease.split.split_id, session.cache_digest)
            share.touch(rows_key, lease.share_readers)
            yield from _shared_frames(session, frames, lease, recorder)
            return
    keep: list[bytes] | None = None
    if share is not None and lease.start_batch == 0 and lease.share_readers > 0:
        keep = []
    kept = 0
    seq = 0
    for batch in _batches(session, lease, recorder):
        if seq >= lease.start_batch:
            rows, sections = _finish(session, batch, recorder)
            started = time.perf_counter()
            header = frame_header(lease, seq, rows.num_rows)
            frame = session.encoder.encode(header, rows, sections)
            recorder.add_seconds("serialize_s", time.perf_counter() - started)
            recorder.add_count("rows_out", rows.num_rows)
            recorder.add_count("batches_out", 1)
            recorder.add_count("bytes_out", len(frame))
            if keep is not None and share is not None:
                keep.append(frame)
                kept += len(frame)
                if kept > share.max_bytes // 2:
                    keep = None  # would not be kept: do not hold the frames meanwhile
            yield frame
        seq += 1
    end = FrameEncoder.encode_empty(frame_header(lease, seq, last=True))
    if share is not None and keep is not None:
        share.put_frames(key, (*keep, end), lease.share_readers)
    yield end


def _frames_key(session: SessionPipeline, lease: LeaseGrant) -> str:
    """The share window's key of a split's frames in an epoch (the epoch matters only to a
    shuffled order)."""
    epoch = lease.epoch if session.spec.shuffle else 0
    return f"{lease.split.split_id}-{session.cache_digest}-{session.frames_digest}-{epoch}"


def _shared_frames(
    session: SessionPipeline,
    frames: tuple[bytes, ...],
    lease: LeaseGrant,
    recorder: StageRecorder,
) -> Iterator[bytes]:
    """Another member's frames of the split, from ``lease.start_batch`` on, readdressed to
    this lease's stream (:func:`~dpp_proto.wire.reheaded`: one copy, timed as
    ``serialize_s``). A frame whose header does not fit its old slot ends the sharing: the
    rest is batched and encoded from the split's rows as usual."""
    for seq in range(lease.start_batch, len(frames)):
        started = time.perf_counter()
        done = reheaded(frames[seq], lease.session_id, lease.epoch, lease.rank)
        recorder.add_seconds("serialize_s", time.perf_counter() - started)
        if done is None:
            rest = dataclasses.replace(lease, start_batch=seq, share_readers=0)
            yield from produce_split(dataclasses.replace(session, share=None), rest, recorder)
            return
        frame, header = done
        if not header.last_in_split:
            recorder.add_count("rows_out", header.num_rows)
            recorder.add_count("batches_out", 1)
            recorder.add_count("bytes_out", len(frame))
        yield frame


def produce_batches(
    session: SessionPipeline, lease: LeaseGrant, recorder: StageRecorder
) -> Iterator[tuple[int, pa.RecordBatch, list[Section]]]:
    """:func:`produce_split` without encoding: ``(batch number, rows, dedup sections)`` of each
    batch from ``lease.start_batch`` on, for callers that use Arrow batches in process."""
    for seq, batch in enumerate(_batches(session, lease, recorder)):
        if seq >= lease.start_batch:
            rows, sections = _finish(session, batch, recorder)
            yield seq, rows, sections


def _finish(
    session: SessionPipeline, batch: pa.RecordBatch, recorder: StageRecorder
) -> tuple[pa.RecordBatch, list[Section]]:
    """Dedup groups: the cut batch's own unique rows (counted as transform time)."""
    started = time.perf_counter()
    rows, sections = session.pipeline.finish(batch)
    recorder.add_seconds("transform_s", time.perf_counter() - started)
    return rows, sections


def _batches(
    session: SessionPipeline, lease: LeaseGrant, recorder: StageRecorder
) -> Iterator[pa.RecordBatch]:
    """Cuts the transformed rows of a split into ``batch_size`` batches.

    A batch that lies inside one transformed chunk is a zero-copy slice; only a batch that
    straddles two chunks is concatenated.
    """
    batch_size = session.spec.batch_size
    pieces: collections.deque[pa.RecordBatch] = collections.deque()
    held = 0
    chunks = _transformed(session, lease, recorder)
    if session.spec.shuffle:
        chunks = _shuffled(session, lease, recorder, chunks)
    for chunk in chunks:
        started = time.perf_counter()
        pieces.append(chunk)
        held += chunk.num_rows
        out = []
        while held >= batch_size:
            out.append(take_rows(pieces, batch_size))
            held -= batch_size
        recorder.add_seconds("batch_s", time.perf_counter() - started)
        yield from out
    if held:
        yield take_rows(pieces, held)


def _transformed(
    session: SessionPipeline, lease: LeaseGrant, recorder: StageRecorder
) -> Iterator[pa.RecordBatch]:
    """The split's transformed chunks: from the share window when the session shares and the
    window holds them, else from the worker's cache when it holds them (read back
    memory-mapped, timed as ``read_s``), else produced and written to the cache on the way."""
    if session.share is not None:
        yield from _shared(session, session.share, lease, recorder)
        return
    yield from _cached(session, lease, recorder)


def _shared(
    session: SessionPipeline, share: ShareWindow, lease: LeaseGrant, recorder: StageRecorder
) -> Iterator[pa.RecordBatch]:
    """A share group's split: read from the window (a hit), or produced whole first, then
    published for the group's other members (``lease.share_readers`` of them), then yielded.

    Producing the whole split before yielding any of it keeps the producer independent of its
    own trainer: a member waiting for this split (single flight) waits for production only,
    never for a slow trainer's full buffer. A split larger than the window is not kept: it
    is streamed once its size passes the window's.
    """
    started = time.perf_counter()
    key = ShareWindow.key(lease.split.split_id, session.cache_digest)
    claimed = share.claim(key, lease.share_readers, SINGLE_FLIGHT_WAIT_S)
    recorder.add_seconds("read_s", time.perf_counter() - started)
    if not isinstance(claimed, ShareClaim):
        yield from claimed
        return
    chunks: list[pa.RecordBatch] = []
    nbytes = 0
    source = _cached(session, lease, recorder)
    try:
        for chunk in source:
            chunks.append(chunk)
            nbytes += chunk.nbytes
            if nbytes > share.max_bytes:
                claimed.abort()
                break
        else:
            claimed.publish(tuple(chunks), nbytes, lease.share_readers)
    finally:
        claimed.abort()  # a no-op once published or aborted
    yield from chunks
    yield from source


def _cached(
    session: SessionPipeline, lease: LeaseGrant, recorder: StageRecorder
) -> Iterator[pa.RecordBatch]:
    """The split's transformed chunks, from the worker's cache or produced (see
    :func:`_transformed`)."""
    cache = session.cache
    if cache is None:
        yield from _produce_chunks(session, lease, recorder)
        return
    started = time.perf_counter()
    cached = cache.get(
        lease.split, session.cache_digest, session.filesystem, wait_s=SINGLE_FLIGHT_WAIT_S
    )
    recorder.add_seconds("read_s", time.perf_counter() - started)
    if cached is not None:
        while True:
            started = time.perf_counter()
            chunk = next(cached, None)
            recorder.add_seconds("read_s", time.perf_counter() - started)
            if chunk is None:
                return
            yield chunk
    writer = cache.writer(lease.split, session.cache_digest, session.filesystem)
    committed = False
    try:
        for chunk in _produce_chunks(session, lease, recorder):
            started = time.perf_counter()
            writer.write(chunk)
            recorder.add_seconds("transform_s", time.perf_counter() - started)
            yield chunk
        writer.commit()
        committed = True
    finally:
        if not committed:
            writer.abort()


def _shuffled(
    session: SessionPipeline,
    lease: LeaseGrant,
    recorder: StageRecorder,
    chunks: Iterator[pa.RecordBatch],
) -> Iterator[pa.RecordBatch]:
    """The split's transformed rows in the seeded order of ``shuffle``: window ``k`` (rows
    ``[k * W, (k + 1) * W)`` of the transformed rows, ``W = read_batch_rows``; the last may
    be shorter) permuted by :func:`chunk_permutation` (``chunk = k``).

    After the cache, and over windows of transformed rows rather than read chunks, so the
    order is the same whether the rows were just produced, read back from the cache, or
    decoded in smaller steps under a memory budget. Timed as ``transform_s``.
    """
    window = session.read_batch_rows
    pieces: collections.deque[pa.RecordBatch] = collections.deque()
    held = 0
    k = 0
    ended = False
    while not ended:
        chunk = next(chunks, None)
        if chunk is None:
            ended = True
        elif chunk.num_rows:
            pieces.append(chunk)
            held += chunk.num_rows
        while held >= window or (ended and held):
            rows = min(window, held)
            started = time.perf_counter()
            batch = take_rows(pieces, rows)
            held -= rows
            starts = session.pipeline.row_session_starts(batch)
            batch = batch.take(chunk_permutation(session.spec.seed, lease, k, rows, starts))
            recorder.add_seconds("transform_s", time.perf_counter() - started)
            k += 1
            yield batch


def _produce_chunks(
    session: SessionPipeline, lease: LeaseGrant, recorder: StageRecorder
) -> Iterator[pa.RecordBatch]:
    """Reads, filters and transforms the split chunk by chunk."""
    columns = session.pipeline.input_columns
    reader = scan_split(
        lease.split,
        filesystem=session.filesystem,
        columns=columns,
        row_filter=session.row_filter,
        batch_rows=session.read_batch_rows,
        max_batch_bytes=session.max_batch_bytes,
        max_row_group_bytes=session.max_row_group_bytes,
        read_options=session.read_options,
        read_ahead=session.read_ahead,
    )
    while True:
        started = time.perf_counter()
        scanned = next(reader, None)
        recorder.add_seconds("read_s", time.perf_counter() - started)
        if scanned is None:
            return
        started = time.perf_counter()
        keep = None if session.row_filter is None else row_mask(scanned, session.row_filter)
        if keep is None and session.row_filter is not None:
            scanned = filter_rows(scanned, session.row_filter, columns)  # raises Arrow's error
        rows = scanned.num_rows if keep is None else keep.true_count
        if keep is not None and rows == scanned.num_rows:
            keep = None  # every row passes: nothing to drop
        recorder.add_seconds("filter_s", time.perf_counter() - started)
        recorder.add_count("rows_read", rows)
        recorder.add_count("bytes_read", scanned.nbytes)
        if rows == 0:
            continue
        # The rows the filter drops are dropped inside the transform (a mask, no copy here);
        # the filter's own columns at the end of ``scanned`` are not read by it.
        started = time.perf_counter()
        wire = session.pipeline.apply(scanned, keep)
        recorder.add_seconds("transform_s", time.perf_counter() - started)
        yield wire


def chunk_permutation(
    seed: int,
    lease: LeaseGrant,
    chunk: int,
    rows: int,
    session_starts: np.ndarray | None = None,
) -> pa.Array:
    """The seeded row order of one window of a split's transformed rows (``chunk``: the
    window's number; see :func:`_shuffled`): the same for a given seed, epoch, split and
    window on every worker, so a re-produced split yields the same batches.

    With ``session_starts`` (ascending first rows of the window's sessions, from 0), sessions
    are shuffled as blocks and each keeps its rows adjacent and in order, so a session's
    duplicate rows meet in one batch (RecD); a session is cut only at a batch boundary.
    """
    digest = hashlib.blake2b(
        f"{seed}/{lease.epoch}/{lease.split.split_id}/{chunk}".encode(), digest_size=8
    ).digest()
    rng = np.random.default_rng(int.from_bytes(digest, "little"))
    if session_starts is None:
        return pa.array(rng.permutation(rows))
    lengths = np.diff(np.append(session_starts, rows))
    order = rng.permutation(len(session_starts))
    moved = lengths[order]
    # Row r of the output belongs to block order[k]: its source is start + (r - output start).
    shift = np.repeat(session_starts[order] - (np.cumsum(moved) - moved), moved)
    return pa.array(np.arange(rows, dtype=np.int64) + shift)


def take_rows(pieces: collections.deque[pa.RecordBatch], rows: int) -> pa.RecordBatch:
    """Removes the first ``rows`` rows from ``pieces`` and returns them as one batch."""
    first = pieces[0]
    if first.num_rows >= rows:
        pieces.popleft()
        if first.num_rows > rows:
            pieces.appendleft(first.slice(rows))
        return first.slice(0, rows)
    taken = []
    needed = rows
    while needed:
        piece = pieces.popleft()
        if piece.num_rows > needed:
            pieces.appendleft(piece.slice(needed))
            piece = piece.slice(0, needed)
        taken.append(piece)
        needed -= piece.num_rows
    return concat_rows(taken)  # dedup groups: dictionary columns of several chunks
