"""Server-side builders for unit tests: a session spec proto, and a worker's link to a Master
object in the same process (no grpc), as ``dpp_server.worker.MasterLink`` expects."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from google.protobuf import struct_pb2

from dpp_proto import spec_pb2
from dpp_server.master import LeaseGrant, Master
from dpp_server.records import StageSeconds, WorkerCounters
from dpp_server.spec import Spec
from dpp_server.worker import Registration


def make_spec(table: str, **fields: object) -> spec_pb2.SessionSpec:
    """One dense feature (``d0`` from ``dense_0``), ``row_id`` passed through, 1000-row batches,
    4000-row splits; ``fields`` override or extend (lists) the proto's fields."""
    spec = spec_pb2.SessionSpec(
        table_uri=table,
        batch_size=1000,
        target_split_rows=4000,
        passthrough=["row_id"],
        label="label",
    )
    feature = spec.features.add(name="d0", source="dense_0", kind=spec_pb2.FEATURE_KIND_DENSE)
    params = struct_pb2.Struct()
    params.update({"value": 0.0})
    feature.ops.add(op="fill_null", params=params)
    for key, value in fields.items():
        if isinstance(value, list):
            getattr(spec, key).extend(value)
        else:
            setattr(spec, key, value)
    return spec


class InProcessLink:
    """A MasterLink calling a Master object directly."""

    def __init__(self, master: Master) -> None:
        self.master = master

    def register(self, address: str, pipeline_threads: int) -> Registration:
        worker_id = self.master.register_worker(address, pipeline_threads)
        return Registration(worker_id, 0.05, self.master.config.lease_timeout_s)

    def heartbeat(
        self,
        worker_id: str,
        s: StageSeconds,
        c: WorkerCounters,
        cached: Mapping[str, Sequence[str]] | None = None,
    ) -> bool:
        return self.master.heartbeat(worker_id, s, c, cached)

    def acquire_split(self, worker_id: str, skip: list[tuple[str, int]]) -> LeaseGrant | None:
        return self.master.acquire_split(worker_id, skip)

    def report_split_progress(
        self, worker_id: str, lease: LeaseGrant, done: bool, error: str
    ) -> bool:
        return self.master.report_split_progress(
            worker_id,
            lease.session_id,
            lease.epoch,
            lease.rank,
            lease.split.split_id,
            done,
            error,
        )

    def report_split_stats(self, worker_id: str, lease: LeaseGrant, payload: bytes) -> bool:
        return self.master.report_split_stats(
            worker_id, lease.session_id, lease.epoch, lease.rank, lease.split.split_id, payload
        )

    def unregister(self, worker_id: str) -> None:
        self.master.unregister_worker(worker_id)

    def get_spec(self, session_id: str) -> Spec:
        view, _ = self.master.get_session(session_id)
        return view.spec
