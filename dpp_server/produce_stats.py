"""One split in, its sketches out: the stats mode of producing a split (``dpp stats``).

Owns :func:`sketch_split` (read -> filter -> sample -> the spec's ops -> sketches) and what it
needs once per session (:class:`StatsPipeline`). The worker runs it instead of
:func:`dpp_server.produce.produce_split` for a session whose spec carries ``stats`` options,
and hands the payload to the master (``ReportSplitStats``); the benchmark (``bench/stats.py``)
calls the very same function. No threads, no grpc, no frames. Must never import grpc or torch.

Why not the frames of :func:`~dpp_server.produce.produce_split`: the wire fills dense nulls with
0.0 and null lists with ``[]``, which would hide null shares, and cutting and encoding batches
is work no one reads. :meth:`FeaturePipeline.feature_columns` gives each feature's values as
its ops leave them (same sampling, adapters and op chains as the wire path).

Stage timings go to the worker's usual stages: ``read_s``, ``filter_s`` (row filter and the
stats sample), ``transform_s`` (the ops, and for collision figures the raw-id ops), and
``serialize_s`` for sketching and serialising (the stats pass's output stage).

Worked example (a split of 2 read chunks, ``sample_rate`` 0.5):

1. Chunk 0 (65,536 rows) is read and filtered; a seeded draw (split id, chunk 0) keeps about
   half of its rows; the spec's ops run on them; :meth:`SplitStats.update` sketches them.
2. Chunk 1 likewise, with its own draw (split id, chunk 1).
3. The split's :meth:`SplitStats.serialize` bytes are returned. Produced again on another
   worker, the split draws the same rows and gives the same exact counts and theta sketches.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import time

import numpy as np
import pyarrow as pa

from dpp_server.master import LeaseGrant
from dpp_server.produce import SessionPipeline, StageRecorder
from dpp_server.spec import Spec
from dpp_server.stats.features import measured_features, raw_id_spec
from dpp_server.stats.sketches import SketchConfig, SparseFeature, SplitStats, partition_key
from dpp_server.transforms import FeaturePipeline
from storage.reader import filter_rows, scan_split
from storage.remote import ReadOptions

__all__ = ["StatsPipeline", "sample_mask", "sketch_split"]


@dataclasses.dataclass(frozen=True)
class StatsPipeline:
    """What a worker compiles once per stats session. Immutable and safe to share between
    threads (the feature pipelines guard their own caches).

    Attributes:
        session: the session's reading side (file system, row filter, read chunk size).
        features: the spec's features without dedup groups (statistics need no dedup).
        raw: the pipeline giving hashed features' raw ids, when collisions are measured.
        sparse: the sparse features measured, with their hash range.
        dense: the dense features measured.
        sample_rate: share of rows sketched.
        config: sketch sizes (one for every split of the session).
    """

    session: SessionPipeline
    features: FeaturePipeline
    raw: FeaturePipeline | None
    sparse: tuple[SparseFeature, ...]
    dense: tuple[str, ...]
    sample_rate: float
    config: SketchConfig

    @classmethod
    def compile(
        cls, spec: Spec, read_batch_rows: int, read_options: ReadOptions | None = None
    ) -> StatsPipeline:
        """Builds the pipelines of a stats session's spec (``spec.stats`` set); files are
        read with ``read_options`` (the defaults when None)."""
        options = spec.stats
        if options is None:
            raise ValueError("StatsPipeline needs a stats session's spec (spec.stats is unset)")
        plain = dataclasses.replace(
            spec,
            features=tuple(dataclasses.replace(f, dedup_group="") for f in spec.features),
        )
        raw_spec = raw_id_spec(plain) if options.collisions else None
        sparse, dense = measured_features(plain)
        return cls(
            session=SessionPipeline.compile(plain, read_batch_rows, read_options=read_options),
            features=FeaturePipeline(plain),
            raw=None if raw_spec is None else FeaturePipeline(raw_spec),
            sparse=sparse,
            dense=dense,
            sample_rate=options.sample_rate,
            config=SketchConfig(),
        )

    @property
    def input_columns(self) -> list[str]:
        """Table columns read: the features' (and the raw pipeline's, a subset)."""
        return self.features.input_columns


def sample_mask(split_id: str, chunk: int, rows: int, rate: float) -> np.ndarray:
    """The rows of read chunk ``chunk`` of a split that a stats session sketches: a draw seeded
    by the split id and chunk, so every worker producing the split sketches the same rows."""
    digest = hashlib.blake2b(f"stats/{split_id}/{chunk}".encode(), digest_size=8).digest()
    rng = np.random.default_rng(int.from_bytes(digest, "little"))
    mask: np.ndarray = rng.random(rows) < rate
    return mask


def sketch_split(pipeline: StatsPipeline, lease: LeaseGrant, recorder: StageRecorder) -> bytes:
    """The sketches of one split's rows after the spec's ops, as a payload for the master.

    Raises:
        Whatever reading or transforming raises (``storage`` and ``SpecError`` exceptions), and
        :class:`~dpp_server.errors.StatsError` for a column the sketches cannot take: the
        worker reports it as the split's error.
    """
    session = pipeline.session
    stats = SplitStats(
        lease.split.split_id,
        partition_key(lease.split.partition),
        pipeline.sparse,
        pipeline.dense,
        pipeline.config,
    )
    columns = pipeline.input_columns
    reader = scan_split(
        lease.split,
        filesystem=session.filesystem,
        columns=columns,
        row_filter=session.row_filter,
        batch_rows=session.read_batch_rows,
        read_options=session.read_options,
    )
    for chunk in itertools.count():
        started = time.perf_counter()
        scanned = next(reader, None)
        recorder.add_seconds("read_s", time.perf_counter() - started)
        if scanned is None:
            break
        started = time.perf_counter()
        rows = filter_rows(scanned, session.row_filter, columns)
        recorder.add_count("rows_read", rows.num_rows)
        recorder.add_count("bytes_read", rows.nbytes)
        if pipeline.sample_rate < 1.0 and rows.num_rows:
            mask = sample_mask(lease.split.split_id, chunk, rows.num_rows, pipeline.sample_rate)
            rows = rows.filter(pa.array(mask))
        recorder.add_seconds("filter_s", time.perf_counter() - started)
        if rows.num_rows == 0:
            continue
        started = time.perf_counter()
        values = pipeline.features.feature_columns(rows)
        raw = None if pipeline.raw is None else pipeline.raw.feature_columns(rows)
        recorder.add_seconds("transform_s", time.perf_counter() - started)
        started = time.perf_counter()
        stats.update(values, raw)
        recorder.add_seconds("serialize_s", time.perf_counter() - started)
        recorder.add_count("rows_out", values.num_rows)
    started = time.perf_counter()
    payload = stats.serialize()
    recorder.add_seconds("serialize_s", time.perf_counter() - started)
    recorder.add_count("bytes_out", len(payload))
    return payload
