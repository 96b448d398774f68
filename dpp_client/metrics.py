"""The trainer's figures: counted by the loader, sent to the master, exported to Prometheus.

Owns:

* :class:`LoaderCounters`, which the loader's threads add to, and :class:`LoaderStats`, its
  snapshot (``loader.stats``);
* :func:`client_stats_to_proto`: a :class:`LoaderStats` snapshot as the
  ``ClientStats`` message the loader sends inside every ``AckBatchesRequest``, so that one scrape
  of the master shows every rank of a session (``dpp_rank_*`` metrics);
* :class:`LoaderCollector`: the same figures as ``dpp_client_*`` metrics, for a trainer that
  serves its own ``/metrics`` (``prometheus_client.start_http_server(port, registry=...)``).

Knows the proto and prometheus_client; must never import ``dpp_server``, ``storage`` or the
rest of ``dpp_client`` (the loader's parts import it, not the other way round).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from dpp_proto import master_pb2

__all__ = ["LoaderCollector", "LoaderCounters", "LoaderStats", "client_stats_to_proto"]


@dataclass(frozen=True)
class LoaderStats:
    """A snapshot of a loader's counters.

    Attributes:
        batches: batches yielded to the trainer.
        rows: rows in those batches.
        bytes_received: frame bytes received from all workers.
        stall_s: seconds the trainer spent inside ``__next__`` (blocked waiting for data, or
            assembling it): the input pipeline's cost to training.
        decode_s: seconds spent decoding frames and converting them to tensors, summed over
            all threads.
        wall_s: seconds since the loader's first ``__next__``.
    """

    batches: int
    rows: int
    bytes_received: int
    stall_s: float
    decode_s: float
    wall_s: float

    @property
    def stall_share(self) -> float:
        """Fraction of wall time the trainer was stalled on input (0 when nothing ran yet)."""
        return self.stall_s / self.wall_s if self.wall_s > 0 else 0.0


class LoaderCounters:
    """The loader's running counters. Shared by the trainer's and the stream threads:
    ``_lock`` guards every field."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.batches = 0
        self.rows = 0
        self.bytes_received = 0
        self.stall_s = 0.0
        self.decode_s = 0.0
        self._first_next: float | None = None

    def add(self, **deltas: float) -> None:
        """Adds to the named counters (``batches``, ``rows``, ``bytes_received``, ...)."""
        with self._lock:
            for name, delta in deltas.items():
                setattr(self, name, getattr(self, name) + delta)

    def start_clock(self, now: float) -> None:
        """Marks the first ``__next__``: wall time counts from the first call on."""
        with self._lock:
            if self._first_next is None:
                self._first_next = now

    def snapshot(self) -> LoaderStats:
        """A consistent snapshot of every counter."""
        with self._lock:
            first = self._first_next
            return LoaderStats(
                batches=self.batches,
                rows=self.rows,
                bytes_received=self.bytes_received,
                stall_s=self.stall_s,
                decode_s=self.decode_s,
                wall_s=0.0 if first is None else time.monotonic() - first,
            )


def client_stats_to_proto(stats: LoaderStats) -> master_pb2.ClientStats:
    """The loader's cumulative figures as sent to the master: every field of the message,
    taken from the snapshot's attribute of the same name (the proto is the declaration)."""
    fields = master_pb2.ClientStats.DESCRIPTOR.fields
    return master_pb2.ClientStats(**{f.name: getattr(stats, f.name) for f in fields})


class LoaderCollector(Collector):
    """Exports a loader's figures at scrape time (no cost between scrapes).

    Args:
        stats: returns the current snapshot, e.g. ``lambda: loader.stats``.
        registry: where to register (a fresh ``CollectorRegistry`` in tests).
        rank: the rank label; one process usually holds one rank.
    """

    def __init__(
        self,
        stats: Callable[[], LoaderStats],
        registry: CollectorRegistry,
        rank: int = 0,
    ) -> None:
        self._stats = stats
        self._rank = str(rank)
        registry.register(self)

    def collect(self) -> Iterator[Metric]:
        s = self._stats()
        for name, help_text, value in (
            ("dpp_client_stall_seconds_total", "Seconds the trainer waited in next().", s.stall_s),
            ("dpp_client_wall_seconds_total", "Seconds since the first next().", s.wall_s),
            ("dpp_client_batches_total", "Batches handed to the trainer.", s.batches),
            ("dpp_client_rows_total", "Rows handed to the trainer.", s.rows),
            ("dpp_client_bytes_received_total", "Frame bytes received.", s.bytes_received),
            ("dpp_client_decode_seconds_total", "Seconds decoding frames.", s.decode_s),
        ):
            family = CounterMetricFamily(name, help_text, labels=["rank"])
            family.add_metric([self._rank], value)
            yield family
