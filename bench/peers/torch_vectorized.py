"""The strongest torch DataLoader a careful user writes for the DLRM job: vectorized, per batch.

    python -m bench.pipelines torch-vec --table URI [--quick]     # one timed run (the suite's)
    python -m bench.peers.torch_vectorized --table URI [--quick]  # golden check against dpp

A ``torch.utils.data.DataLoader`` with ``num_workers`` processes and ``batch_size=None`` (no
per-sample collate) over :class:`RowGroupDataset`, an IterableDataset whose workers each take
every ``num_workers``-th row group of the table (sharded by worker id), read it whole with
``pyarrow.parquet.ParquetFile.read_row_group``, apply the row filter, run the job's transforms
on whole columns with pyarrow.compute and numpy, and yield ready batches of ``batch_size`` rows
in the layout dpp delivers (dense float32 ``[B, D]``; every id list packed in TorchRec's
KeyedJaggedTensor layout, int32 values and int32 ``[K * B + 1]`` offsets; float32 labels). The
batches cross to the trainer the DataLoader's own way (tensors in shared memory).

The transforms are written the way a user would, not by calling dpp's ``FeaturePipeline``:
dense ``log1p(max(fill_null(x, 0), 0))`` with pyarrow.compute; id lists ``list_slice(0, 20)``
then ``sigrid_hash`` on the flattened values with dpp's numpy kernel
(:func:`dpp_server.transforms.hashing.sigrid_hash_values`, the published hash: a user who
needs dpp's ids calls it). :func:`check_golden` proves the outputs equal dpp's in-process
pipeline on the first split; the suite runs it before timing.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from dpp_client import SessionSpec, batch_from_arrow
from dpp_server.master import LeaseGrant
from dpp_server.produce import SessionPipeline, StageTotals, produce_batches
from dpp_server.spec import Spec, spec_from_proto
from dpp_server.transforms.hashing import sigrid_hash_values
from storage import Table, parse_filter

_F32_MAX = float(np.finfo(np.float32).max)

__all__ = ["RowGroupDataset", "VecBatch", "check_golden", "children_cpu_s", "run_torch_vec"]


@dataclass(frozen=True)
class _Sparse:
    name: str
    source: str
    first_x: int
    salt: int
    max_value: int


@dataclass
class VecBatch:
    """One ready batch as the DataLoader hands it to the trainer (see the module docstring)."""

    dense: torch.Tensor
    values: torch.Tensor
    offsets: torch.Tensor
    labels: torch.Tensor

    @property
    def num_rows(self) -> int:
        return int(self.dense.shape[0])

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in (self.dense, self.values, self.offsets, self.labels))


def _job(spec: Spec) -> tuple[list[str], list[_Sparse], str]:
    """The DLRM job's parameters, read from the spec (and checked to be that job)."""
    dense = []
    for f in spec.dense_features:
        names = [op.op for op in f.ops]
        if names != ["fill_null", "clamp", "log1p"]:
            raise SystemExit(f"torch-vec implements fill_null/clamp/log1p only, not {names}")
        dense.append(f.source)
    sparse = []
    for f in spec.sparse_features:
        names = [op.op for op in f.ops]
        if names != ["first_x", "sigrid_hash"]:
            raise SystemExit(f"torch-vec implements first_x/sigrid_hash only, not {names}")
        sparse.append(
            _Sparse(
                f.name,
                f.source,
                int(f.ops[0].params["x"]),
                int(f.ops[1].params["salt"]),
                int(f.ops[1].params["max_value"]),
            )
        )
    if spec.label is None:
        raise SystemExit("torch-vec needs a label column")
    return dense, sparse, spec.label


class RowGroupDataset(torch.utils.data.IterableDataset[VecBatch]):
    """Whole row groups per DataLoader worker, vectorized transforms, ready batches.

    Thread-safety: each DataLoader worker process holds its own copy (pickled at fork).
    """

    def __init__(self, spec: SessionSpec) -> None:
        self.spec = spec_from_proto(spec.to_proto())
        self.dense, self.sparse, self.label = _job(self.spec)
        self.batch_size = spec.batch_size
        self.row_filter = parse_filter(self.spec.row_filter, "row_filter")
        table = Table.open(self.spec.table_uri)
        files = sorted({s.path for s in table.plan_splits(1 << 40).splits})
        self.units = [
            (path, rg) for path in files for rg in range(pq.ParquetFile(path).num_row_groups)
        ]
        wanted = [*self.dense, *(s.source for s in self.sparse), self.label]
        self.columns = list(dict.fromkeys([*wanted, *sorted(self.row_filter.columns)]))

    def __iter__(self) -> Iterator[VecBatch]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        for path, row_group in self.units[worker::workers]:
            yield from self.batches(self.read(path, row_group))

    def read(self, path: str, row_group: int) -> pa.Table:
        """One row group, the job's columns, rows passing the filter."""
        table = pq.ParquetFile(path).read_row_group(row_group, columns=self.columns)
        if self.row_filter.expression is not None:
            table = table.filter(self.row_filter.expression)
        return table

    def batches(self, table: pa.Table) -> Iterator[VecBatch]:
        """The transforms on whole columns, then batches cut from them (the last one short)."""
        rows = table.num_rows
        if rows == 0:
            return
        # dpp's log1p: ln(1 + clamp(x, 0, FLOAT32_MAX)) in float64, NaN as 0, rounded once.
        wide = np.empty((rows, len(self.dense)), dtype=np.float64)
        for j, source in enumerate(self.dense):
            wide[:, j] = pc.fill_null(table.column(source), 0.0).combine_chunks().to_numpy()
        np.clip(wide, 0.0, _F32_MAX, out=wide)
        wide[np.isnan(wide)] = 0.0
        dense = np.log1p(wide, out=wide).astype(np.float32)
        ids: list[np.ndarray] = []
        starts: list[np.ndarray] = []
        for s in self.sparse:
            column = table.column(s.source).combine_chunks()
            sliced = pc.list_slice(column, 0, s.first_x)
            offsets = np.asarray(sliced.offsets, dtype=np.int64)
            flat = sliced.values.to_numpy(zero_copy_only=False)
            flat = flat[offsets[0] : offsets[-1]]
            ids.append(sigrid_hash_values(flat, s.salt, s.max_value).astype(np.int32))
            starts.append(offsets - offsets[0])
        labels = table.column(self.label).to_numpy().astype(np.float32)
        for lo in range(0, rows, self.batch_size):
            hi = min(lo + self.batch_size, rows)
            b = hi - lo
            values = np.concatenate([v[o[lo] : o[hi]] for v, o in zip(ids, starts, strict=True)])
            offsets = np.empty(len(ids) * b + 1, dtype=np.int32)
            offsets[0] = 0
            base = 0
            for k, o in enumerate(starts):
                offsets[k * b + 1 : (k + 1) * b + 1] = o[lo + 1 : hi + 1] - o[lo] + base
                base += int(o[hi] - o[lo])
            yield VecBatch(
                dense=torch.from_numpy(dense[lo:hi].copy()),
                values=torch.from_numpy(values),
                offsets=torch.from_numpy(offsets),
                labels=torch.from_numpy(labels[lo:hi].copy()),
            )


def children_cpu_s() -> float:
    """CPU seconds of this process's terminated, waited-for children (the DataLoader's workers
    once the iterator is shut down): exact, unlike sampling /proc while they run."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_torch_vec(spec: SessionSpec, max_rows: int, workers: int) -> tuple[int, int]:
    """Iterates the DataLoader to the end (or ``max_rows``); rows and tensor bytes received.
    The workers are joined before returning, so :func:`children_cpu_s` then holds them."""
    loader = torch.utils.data.DataLoader(
        RowGroupDataset(spec), batch_size=None, num_workers=workers, prefetch_factor=2
    )
    rows = nbytes = 0
    iterator = iter(loader)
    for batch in iterator:
        rows += batch.num_rows
        nbytes += batch.nbytes
        if rows >= max_rows:
            break
    iterator._shutdown_workers()  # type: ignore[attr-defined]  # joins them now, not at GC
    del iterator
    return rows, nbytes


def check_golden(spec: SessionSpec) -> dict[str, int]:
    """The first split through dpp's in-process pipeline and through :class:`RowGroupDataset`
    (its row groups, in order): every dense value, id, row length and label must be equal.

    Raises:
        AssertionError: naming the first tensor that differs.
    """
    ds = RowGroupDataset(spec)
    server_spec = ds.spec
    table = Table.open(server_spec.table_uri)
    split = table.plan_splits(server_spec.target_split_rows, row_filter=ds.row_filter).splits[0]
    session = SessionPipeline.compile(server_spec, read_batch_rows=65_536)
    lease = LeaseGrant(session_id="", epoch=0, rank=0, split=split, start_batch=0)
    theirs = [batch_from_arrow(w) for _, w, _ in produce_batches(session, lease, StageTotals())]
    groups = list(split.row_groups)
    ours = [b for rg in groups for b in ds.batches(ds.read(split.path, rg))]
    dense_a = torch.cat([b.dense for b in theirs])
    dense_b = torch.cat([b.dense for b in ours])
    assert torch.equal(dense_a, dense_b), "dense values differ from dpp's"
    labels_a = torch.cat([b.labels for b in theirs if b.labels is not None])
    assert torch.equal(labels_a, torch.cat([b.labels for b in ours])), "labels differ"
    checked = 0
    for k, s in enumerate(ds.sparse):
        a_vals = torch.cat([b.sparse[s.name].values.to(torch.int64) for b in theirs])
        a_lens = torch.cat([b.sparse[s.name].offsets.diff() for b in theirs])
        b_vals, b_lens = [], []
        for b in ours:
            rows = b.num_rows
            o = b.offsets[k * rows : (k + 1) * rows + 1].to(torch.int64)
            b_vals.append(b.values[o[0] : o[-1]].to(torch.int64))
            b_lens.append(o.diff())
        assert torch.equal(a_vals, torch.cat(b_vals)), f"{s.name}: ids differ from dpp's"
        assert torch.equal(a_lens.to(torch.int64), torch.cat(b_lens)), f"{s.name}: lengths"
        checked += int(a_vals.numel())
    return {"rows": int(dense_a.shape[0]), "ids": checked, "row_groups": len(groups)}


def main() -> None:
    from bench.workloads import workloads

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--table", default="")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--table-dir", default=os.environ.get("DPP_BENCH_DIR", "/tmp/dpp-bench"))
    args = parser.parse_args()
    workload = workloads(args.quick)["dlrm"]
    table = args.table or workload.ensure_table(Path(args.table_dir))
    print(json.dumps({"golden_equal": check_golden(workload.spec(table))}))


if __name__ == "__main__":
    main()
