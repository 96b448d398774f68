"""One benchmark pipeline, run alone in this process, reporting one JSON line.

    python -m bench.pipelines PIPELINE --workload dlrm --table URI [--workers N] [--max-rows N]

Each pipeline does the same job (:mod:`bench.workloads`): read the projected columns with the
row filter, transform (dense: fill_null, clamp, log1p; id lists: first_x, sigrid_hash), cut
batches of 4096 and hand the trainer torch tensors. Only where and how the work runs differs:

* ``ceiling``: a raw pyarrow dataset scan of the projected columns, filter pushed down; no
  transform, no tensors. What reading alone costs.
* ``inprocess``: dpp's reader and transforms (pyarrow + polars) in the trainer's process.
* ``dpp``: a local dpp cluster (1 master, ``--workers`` workers of 2 pipeline threads each,
  all processes on 127.0.0.1) streaming frames to a ``DppLoader``.
* ``torch``: a ``torch.utils.data.DataLoader`` with ``num_workers=2`` over an IterableDataset
  that reads row groups with pyarrow and transforms each sample in Python, as most users write
  it; collate builds the same jagged tensors.
* ``torch-vec``: the careful user's DataLoader (:mod:`bench.peers.torch_vectorized`):
  ``num_workers=2`` processes each read whole row groups (sharded by worker id), transform
  whole columns with pyarrow/numpy (golden-equal to dpp's) and yield ready batches
  (``batch_size=None``). Its workers' CPU is read with ``getrusage(RUSAGE_CHILDREN)`` once they
  are joined.
* ``tfdata``: tf.data service in its own venv and network namespace
  (:mod:`bench.peers.tfdata`; skipped when ``.venv-tf`` is absent).
* ``ray``: Ray Data ``read_parquet -> map_batches -> iter_torch_batches``, ``num_cpus=2``, the
  transform being dpp's vectorized one (so Ray is measured as an engine, not on its ops).

Measured in the timed section only (setup such as starting a cluster is outside, session
creation and planning inside): rows, wall seconds, trainer-process CPU seconds (every thread),
tensor bytes delivered, and each process's peak RSS and CPU (see :mod:`bench.measure`).
Each run is its own process so that peak RSS and CPU are the pipeline's alone.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import torch

from bench.measure import ProcessSampler, Timer, peak_rss_mb
from bench.workloads import workloads
from dpp_client import Batch, DppLoader, SessionSpec, batch_from_arrow
from dpp_proto.wire import pack_sparse, unpack_sparse
from dpp_server.master import LeaseGrant
from dpp_server.produce import SessionPipeline, StageTotals, produce_batches
from dpp_server.spec import Spec, spec_from_proto
from dpp_server.transforms import FeaturePipeline
from dpp_server.transforms.hashing import sigrid_hash_values
from storage import Table, parse_filter, read_split

PIPELINES = ("ceiling", "inprocess", "dpp", "torch", "torch-vec", "tfdata", "ray")


class Skip(Exception):
    """The pipeline cannot run here (an optional peer is not installed)."""


def batch_nbytes(batch: Batch) -> int:
    """Bytes of the tensors handed to the trainer."""
    total = batch.dense.nbytes
    for jagged in batch.sparse.values():
        total += jagged.values.nbytes + jagged.offsets.nbytes
    if batch.labels is not None:
        total += batch.labels.nbytes
    return int(total)


def _server_spec(spec: SessionSpec) -> Spec:
    return spec_from_proto(spec.to_proto())


# -- ceiling --------------------------------------------------------------------------------


def run_ceiling(spec: SessionSpec, max_rows: int) -> tuple[int, int]:
    server_spec = _server_spec(spec)
    pipeline = FeaturePipeline(server_spec)
    row_filter = parse_filter(server_spec.row_filter, "row_filter")
    dataset = pads.dataset(server_spec.table_uri, format="parquet", partitioning="hive")
    rows = nbytes = 0
    for rb in dataset.to_batches(
        columns=pipeline.input_columns,
        filter=row_filter.expression,
        batch_size=65_536,
        # pyarrow's default readahead (16 batches, 4 files) oversubscribes 2 cores: measured
        # here it takes 2.2x the wall time and 2.3x the CPU of this setting.
        batch_readahead=4,
        fragment_readahead=2,
    ):
        rows += rb.num_rows
        nbytes += rb.nbytes
        if rows >= max_rows:
            break
    return rows, nbytes


# -- in-process -----------------------------------------------------------------------------


def run_inprocess(spec: SessionSpec, max_rows: int, packed: bool = False) -> tuple[int, int]:
    """The worker's own read/filter/transform/cut steps (:func:`~dpp_server.produce.
    produce_batches`, no encoding) and the client's tensor conversion, in the trainer's own
    thread (what a user writes without a service). Each split's short last batch is handed
    on as it is.

    With ``packed``, each batch's id lists are first packed into the layout a TorchRec model
    takes and dpp's frames deliver (one values and one offsets buffer per batch, int32 ids
    where the ops bound them: :func:`dpp_proto.wire.pack_sparse`, then the client's
    :func:`~dpp_proto.wire.unpack_sparse` view), so the trainer gets the very tensors a dpp
    trainer gets; without it, per-feature int64 views (which a KJT would then concatenate)."""
    server_spec = _server_spec(spec)
    table = Table.open(server_spec.table_uri)
    row_filter = parse_filter(server_spec.row_filter, "row_filter")
    plan = table.plan_splits(server_spec.target_split_rows, row_filter=row_filter)
    session = SessionPipeline.compile(server_spec, read_batch_rows=65_536)
    narrow = session.encoder.options.int32_features
    rows = nbytes = 0
    for split in plan.splits:
        lease = LeaseGrant(session_id="", epoch=0, rank=0, split=split, start_batch=0)
        for _, wire, sections in produce_batches(session, lease, StageTotals()):
            if sections:
                raise SystemExit("the in-process pipeline has no dedup join; use dpp")
            if packed:
                rest, ids = pack_sparse(wire, narrow, keep_one_column=True)
                if ids is not None:
                    wire = unpack_sparse(rest, ids, rest.num_rows, "in-process")
            batch = batch_from_arrow(wire)
            rows += batch.num_rows
            nbytes += batch_nbytes(batch)
        if rows >= max_rows:
            return rows, nbytes
    return rows, nbytes


# -- dpp ------------------------------------------------------------------------------------


def run_dpp(
    master: str, spec: SessionSpec, max_rows: int, connection: Any = None
) -> tuple[int, int, dict[str, float]]:
    rows = nbytes = 0
    with DppLoader(master, spec, connection=connection) as loader:
        for batch in loader:
            rows += batch.num_rows
            nbytes += batch_nbytes(batch)
            if rows >= max_rows:
                break
        stats = loader.stats
    return rows, nbytes, {"stall_share": stats.stall_share, "decode_s": stats.decode_s}


# -- torch DataLoader, per-sample transform -------------------------------------------------


class PerSampleDataset(torch.utils.data.IterableDataset[dict[str, Any]]):
    """Reads row groups with pyarrow and transforms each row in Python (per sample).

    Splits are dealt round-robin to the DataLoader's workers. The transform is the job's:
    dense ``log1p(max(x or 0, 0))``, id lists ``sigrid_hash(ids[:20])`` (numpy on the row's
    few ids: what a user calls per sample).
    """

    def __init__(self, spec: SessionSpec) -> None:
        self.server_spec = _server_spec(spec)
        self.dense = [(f.name, f.source) for f in self.server_spec.dense_features]
        self.sparse = [
            (f.name, f.source, int(f.ops[1].params["salt"]), int(f.ops[1].params["max_value"]))
            for f in self.server_spec.sparse_features
        ]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        spec = self.server_spec
        table = Table.open(spec.table_uri)
        row_filter = parse_filter(spec.row_filter, "row_filter")
        plan = table.plan_splits(spec.target_split_rows, row_filter=row_filter)
        columns = [s for _, s in self.dense] + [s for _, s, _, _ in self.sparse] + ["label"]
        for split in plan.splits[worker::workers]:
            for rb in read_split(
                split,
                filesystem=table.filesystem,
                columns=columns,
                row_filter=row_filter,
                batch_rows=8192,
            ):
                for row in rb.to_pylist():
                    yield self.transform(row)

    def transform(self, row: dict[str, Any]) -> dict[str, Any]:
        dense = [math.log1p(max(row[source] or 0.0, 0.0)) for _, source in self.dense]
        sparse = {}
        for name, source, salt, max_value in self.sparse:
            ids = np.asarray((row[source] or [])[:20], dtype=np.int64)
            sparse[name] = sigrid_hash_values(ids, salt, max_value)
        return {"dense": dense, "sparse": sparse, "label": float(row["label"])}


def collate_samples(samples: list[dict[str, Any]]) -> Batch:
    """Stacks per-sample dicts into the same tensors a dpp Batch holds."""
    from dpp_client.batch import JaggedTensor

    dense = torch.tensor([s["dense"] for s in samples], dtype=torch.float32)
    sparse = {}
    for name in samples[0]["sparse"]:
        lists = [s["sparse"][name] for s in samples]
        lengths = torch.tensor([len(ids) for ids in lists], dtype=torch.int64)
        offsets = torch.zeros(len(lists) + 1, dtype=torch.int64)
        torch.cumsum(lengths, 0, out=offsets[1:])
        values = torch.from_numpy(np.concatenate(lists)) if lists else torch.empty(0)
        sparse[name] = JaggedTensor(values=values, offsets=offsets)
    labels = torch.tensor([s["label"] for s in samples], dtype=torch.float32)
    return Batch(dense=dense, sparse=sparse, labels=labels, weights=None)


def run_torch(spec: SessionSpec, max_rows: int) -> tuple[int, int]:
    loader = torch.utils.data.DataLoader(
        PerSampleDataset(spec),
        batch_size=spec.batch_size,
        num_workers=2,
        collate_fn=collate_samples,
        prefetch_factor=2,
    )
    rows = nbytes = 0
    iterator = iter(loader)
    for batch in iterator:
        rows += batch.num_rows
        nbytes += batch_nbytes(batch)
        if rows >= max_rows:
            break
    del iterator  # shuts the worker processes down
    return rows, nbytes


# -- Ray Data -------------------------------------------------------------------------------

_RAY_PIPELINES: dict[bytes, FeaturePipeline] = {}


def _ray_transform(table: pa.Table, spec_bytes: bytes) -> pa.Table:
    """The row filter, then dpp's vectorized transform, inside a Ray task (one compiled
    pipeline per Ray worker process). Ray 2.60's ``read_parquet`` takes no pyarrow filter, so
    the filter runs here: after the read, as a Ray user writes it."""
    from dpp_proto import spec_pb2

    pipeline = _RAY_PIPELINES.get(spec_bytes)
    if pipeline is None:
        proto = spec_pb2.SessionSpec()
        proto.ParseFromString(spec_bytes)
        pipeline = _RAY_PIPELINES[spec_bytes] = FeaturePipeline(spec_from_proto(proto))
    row_filter = parse_filter(pipeline._spec.row_filter, "row_filter")
    return pa.Table.from_batches([pipeline.apply(table.filter(row_filter.expression))])


def ray_init() -> None:
    """Starts Ray on loopback with 2 CPUs (outside the timed section, like dpp's cluster)."""
    try:
        import ray
    except ImportError as exc:
        raise Skip(f"Ray Data is not installed ({exc}); pip install -e '.[bench-peers]'") from exc
    if ray.is_initialized():
        return
    repo = str(Path(__file__).resolve().parent.parent)
    os.environ["PYTHONPATH"] = repo + os.pathsep + os.environ.get("PYTHONPATH", "")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
        configure_logging=False,
    )


def run_ray(spec: SessionSpec, max_rows: int) -> tuple[int, int]:
    try:
        import ray
        import ray.data
        from ray.data.collate_fn import ArrowBatchCollateFn
    except ImportError as exc:
        raise Skip(f"Ray Data is not installed ({exc}); pip install -e '.[bench-peers]'") from exc

    class ToBatch(ArrowBatchCollateFn):  # type: ignore[misc]
        def __call__(self, batch: pa.Table) -> Batch:
            return batch_from_arrow(batch.combine_chunks().to_batches()[0])

    server_spec = _server_spec(spec)
    pipeline = FeaturePipeline(server_spec)
    row_filter = parse_filter(server_spec.row_filter, "row_filter")
    ray_init()
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        columns = list(dict.fromkeys([*pipeline.input_columns, *row_filter.columns]))
        dataset = ray.data.read_parquet(server_spec.table_uri, partitioning=None)
        dataset = dataset.select_columns(columns)
        dataset = dataset.map_batches(
            _ray_transform,
            batch_format="pyarrow",
            batch_size=65_536,
            fn_args=(spec.to_proto().SerializeToString(),),
        )
        rows = nbytes = 0
        for batch in dataset.iter_torch_batches(batch_size=spec.batch_size, collate_fn=ToBatch()):
            rows += batch.num_rows
            nbytes += batch_nbytes(batch)
            if rows >= max_rows:
                break
        return rows, nbytes
    finally:
        ray.shutdown()


# -- entry point ----------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    workload = workloads(args.quick)[args.workload]
    spec = workload.spec(args.table)
    result: dict[str, Any] = {"pipeline": args.pipeline, "workload": args.workload}
    sampler = ProcessSampler().start()
    cluster = None
    try:
        if args.pipeline == "dpp":
            from dpp_server.local_cluster import LocalCluster

            # Secure (mTLS + tokens) as shipped, unless --insecure: the peers use no TLS.
            cluster = LocalCluster(
                workers=args.workers, pipeline_threads=args.threads, secure=not args.insecure
            ).start()
            result["pipeline"] = f"dpp-{args.workers}w" + ("-insecure" if args.insecure else "")
        if args.pipeline == "ray":
            ray_init()
        time.sleep(0.2)
        sampler.mark()
        with Timer() as timer:
            if args.pipeline == "ceiling":
                rows, nbytes = run_ceiling(spec, args.max_rows)
            elif args.pipeline == "inprocess":
                rows, nbytes = run_inprocess(spec, args.max_rows, args.packed)
                result["pipeline"] = "inprocess-packed" if args.packed else "inprocess"
            elif args.pipeline == "dpp":
                assert cluster is not None
                rows, nbytes, extra = run_dpp(
                    cluster.master_address, spec, args.max_rows, cluster.connection
                )
                result.update(extra)
            elif args.pipeline == "torch":
                rows, nbytes = run_torch(spec, args.max_rows)
            elif args.pipeline == "torch-vec":
                from bench.peers.torch_vectorized import children_cpu_s, run_torch_vec

                children0 = children_cpu_s()
                rows, nbytes = run_torch_vec(spec, args.max_rows, workers=args.workers)
                result["children_cpu_s"] = children_cpu_s() - children0
            elif args.pipeline == "tfdata":
                from bench.peers.tfdata_launch import TfSkip, run_tfdata

                if args.workload != "dlrm":
                    raise Skip("the tf.data peer implements the DLRM job only")
                try:
                    rows, nbytes, extra = run_tfdata(args)
                except TfSkip as exc:
                    raise Skip(str(exc)) from exc
                result.update(extra)
            elif args.pipeline == "ray":
                rows, nbytes = run_ray(spec, args.max_rows)
            else:
                raise SystemExit(f"unknown pipeline {args.pipeline!r}; one of {PIPELINES}")
        processes = sampler.stop()
    except Skip as exc:
        sampler.stop()
        return {**result, "skipped": str(exc)}
    finally:
        if cluster is not None:
            cluster.stop()
    result.update(
        rows=rows,
        seconds=timer.wall_s,
        rows_per_s=rows / timer.wall_s,
        mb_per_s=nbytes / timer.wall_s / 1e6,
        bytes=nbytes,
        trainer_cpu_s=timer.cpu_s,
        trainer_cpu_s_per_m_rows=timer.cpu_s / rows * 1e6 if rows else float("nan"),
        trainer_peak_rss_mb=round(peak_rss_mb(), 1),
        processes=processes,
        other_cpu_s=sum(float(p["cpu_s"]) for p in processes),  # type: ignore[arg-type,misc]
    )
    if "children_cpu_s" in result:
        # Exact for joined children; /proc sampling misses a worker's last interval.
        result["other_cpu_s"] = max(result["other_cpu_s"], result["children_cpu_s"])
    if "tf_other_cpu_s" in result:
        # tf.data's processes report their own CPU of the timed section (their start and
        # TensorFlow's import, outside it, are not counted).
        result["other_cpu_s"] = result["tf_other_cpu_s"]
        result["seconds"] = wall = result["tf_seconds"]
        result["rows_per_s"] = rows / wall
        result["mb_per_s"] = nbytes / wall / 1e6
        result["trainer_cpu_s"] = result["tf_client_cpu_s"]
        result["trainer_cpu_s_per_m_rows"] = result["tf_client_cpu_s"] / rows * 1e6
        result["processes"] = result.pop("tf_processes")
    result["preprocess_cpu_s"] = preprocess_cpu_s(args.pipeline, result)
    return result


def preprocess_cpu_s(pipeline: str, result: dict[str, Any]) -> float:
    """CPU seconds of the processes doing the preprocessing (read, transform, batch): dpp's
    workers, the DataLoader's workers, tf.data's workers, Ray's processes; the trainer itself
    where the pipeline runs in it (ceiling, in-process). The master, tf.data's dispatcher and
    the trainer's receiving side are left out: this is the figure operators pay per worker."""
    if pipeline in ("ceiling", "inprocess"):
        return float(result["trainer_cpu_s"])
    processes: list[dict[str, Any]] = result["processes"]
    if pipeline.startswith("dpp"):
        return sum(float(p["cpu_s"]) for p in processes if "worker" in str(p["role"]))
    if pipeline == "tfdata":
        return sum(float(p["cpu_s"]) for p in processes if p["role"] == "tf.data worker")
    return float(result["other_cpu_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("pipeline", choices=PIPELINES)
    parser.add_argument("--workload", default="dlrm")
    parser.add_argument("--table", required=True)
    parser.add_argument("--quick", action="store_true", help="the quick tables' workload")
    parser.add_argument(
        "--workers", type=int, default=2, help="dpp, torch-vec or tf.data service workers"
    )
    parser.add_argument("--threads", type=int, default=2, help="pipeline threads per worker")
    parser.add_argument("--max-rows", type=int, default=sys.maxsize)
    parser.add_argument(
        "--insecure", action="store_true", help="dpp: a cluster without TLS and tokens"
    )
    parser.add_argument(
        "--packed", action="store_true", help="inprocess: ids packed as dpp delivers them"
    )
    args = parser.parse_args()
    print(json.dumps(run(args)), flush=True)


if __name__ == "__main__":
    main()
