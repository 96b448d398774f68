"""The trainer's side on a GPU machine: pinned-memory, non-blocking host-to-device copies
with the example DLRM, and aggregate ingest from several local workers.

    python -m bench.device_check [--rows 1000000] [--workers 4,8] [--out device_check.json]

Run by ``bench/device_check.sh`` (under 5 minutes on a 16-core machine with one GPU):

* ``h2d``: real frames of the DLRM job (the worker's ``produce_split``) decoded into batches,
  pinned, and copied with ``batch.to("cuda", non_blocking=True)``; GB/s of those copies,
  timed with CUDA events, beside pageable (unpinned) copies of the same batches.
* ``train``: a local cluster of N workers streams the job to a ``DppLoader(pin_memory=True)``
  whose trainer moves every batch to the GPU and trains the example DLRM on it: rows/s, the
  loader's stall share, and the trainer process's CPU core-s per 1M rows.
* ``ingest``: the same without a model (tensors handed over, nothing else): aggregate rows/s
  and trainer core-s per 1M rows with N = 1, 2, 4 (and the ``--workers`` counts) streams.

Without CUDA, ``h2d`` and ``train`` are reported as skipped; ``ingest`` still runs.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from bench.client_cpu import make_frames
from bench.e2e import dlrm_spec, ensure_table
from bench.measure import self_cpu_s
from dpp_client import DppLoader
from dpp_client.batch import Batch, batch_from_arrow
from dpp_client.examples.dlrm import DLRM, train_step
from dpp_client.frames import decode_frame
from dpp_server.local_cluster import LocalCluster


def _nbytes(batch: Batch) -> int:
    total = batch.dense.numel() * 4
    total += sum(
        t.numel() * t.element_size() for t in (batch.labels, batch.weights) if t is not None
    )
    if batch.packed is not None:
        total += batch.packed.values.numel() * batch.packed.values.element_size()
        total += batch.packed.offsets.numel() * batch.packed.offsets.element_size()
    return total


def measure_h2d(table: str, frames: int) -> dict[str, Any]:
    if not torch.cuda.is_available():
        return {"skipped": "CUDA is not available"}
    batches = [batch_from_arrow(decode_frame(f)[1]) for f in make_frames(table, False, frames)]  # type: ignore[arg-type]
    out: dict[str, Any] = {}
    for name, prepared in (
        ("pinned", [b.pin_memory() for b in batches]),
        ("pageable", batches),
    ):
        for b in prepared[:2]:
            b.to("cuda", non_blocking=True)
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for b in prepared:
            b.to("cuda", non_blocking=True)
        end.record()
        torch.cuda.synchronize()
        seconds = start.elapsed_time(end) / 1e3
        size = sum(_nbytes(b) for b in prepared)
        out[name] = {"gb_per_s": size / seconds / 1e9, "mb_per_batch": size / len(prepared) / 1e6}
    return out


def run_loader(cluster: LocalCluster, table: str, model: bool) -> dict[str, float]:
    spec = dlrm_spec(table)
    cuda = torch.cuda.is_available()
    net = opt = None
    if model and cuda:
        net = DLRM(13, [f"s{i}" for i in range(26)], 100_000).cuda()
        opt = torch.optim.SGD(net.parameters(), lr=0.01)
    rows = 0
    cpu0, wall0 = self_cpu_s(), time.perf_counter()
    with DppLoader(cluster.master_address, spec, pin_memory=cuda, prefetch_batches=32) as loader:
        for batch in loader:
            rows += batch.num_rows
            if net is not None and opt is not None:
                train_step(net, opt, batch.to("cuda", non_blocking=True))
        stats = loader.stats
    if cuda:
        torch.cuda.synchronize()
    cpu, wall = self_cpu_s() - cpu0, time.perf_counter() - wall0
    return {
        "rows": rows,
        "rows_per_s": rows / wall,
        "trainer_cpu_s_per_m_rows": cpu / rows * 1e6,
        "stall_share": stats.stall_share,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--workers", default="1,2,4,8")
    parser.add_argument("--threads", type=int, default=2, help="pipeline threads per worker")
    parser.add_argument("--table-dir", default=os.environ.get("DPP_BENCH_DIR", "/tmp/dpp-bench"))
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    table = ensure_table(Path(args.table_dir), args.rows)
    result: dict[str, Any] = {
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cores": os.cpu_count(),
        "h2d": measure_h2d(table, 40),
        "ingest": {},
    }
    print(json.dumps({"h2d": result["h2d"]}), flush=True)
    for n in [int(w) for w in args.workers.split(",")]:
        with LocalCluster(workers=n, pipeline_threads=args.threads) as cluster:
            result["ingest"][n] = run_loader(cluster, table, model=False)
            print(json.dumps({"ingest": {n: result["ingest"][n]}}), flush=True)
            if n == max(int(w) for w in args.workers.split(",")):
                if torch.cuda.is_available():
                    result["train"] = run_loader(cluster, table, model=True)
                else:
                    result["train"] = {"skipped": "CUDA is not available"}
                print(json.dumps({"train": result["train"]}), flush=True)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
