"""The trainer's figures, for the master and for Prometheus.

Owns two small things:

* :func:`client_stats_to_proto`: a :class:`~dpp_client.loader.LoaderStats` snapshot as the
  ``ClientStats`` message the loader sends inside every ``AckBatchesRequest``, so that one scrape
  of the master shows every rank of a session (``dpp_rank_*`` metrics);
* :class:`LoaderCollector`: the same figures as ``dpp_client_*`` metrics, for a trainer that
  serves its own ``/metrics`` (``prometheus_client.start_http_server(port, registry=...)``).

Knows the proto and prometheus_client; must never import ``dpp_server`` or ``storage``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from dpp_proto import master_pb2

if TYPE_CHECKING:  # the loader imports this module to fill AckBatchesRequest.client_stats
    from dpp_client.loader import LoaderStats

__all__ = ["LoaderCollector", "client_stats_to_proto"]


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
