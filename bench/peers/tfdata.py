"""tf.data service on the DLRM job: runs in ``.venv-tf`` (``bench/peers/setup_tf.sh``), never in
dpp's venv (TensorFlow pins a protobuf dpp's stack refuses). Imports TensorFlow, numpy, pyarrow
and :mod:`bench.measure` (standard library only), nothing of dpp.

    .venv-tf/bin/python -m bench.peers.tfdata convert --table URI --out DIR   # once, untimed
    .venv-tf/bin/python -m bench.peers.tfdata golden --records DIR --out X.npz
    unshare -n ... .venv-tf/bin/python -m bench.peers.tfdata run --records DIR --workers 2

:mod:`bench.peers.tfdata_launch` runs these from the suite (the last one inside a private
network namespace, because the dispatcher and workers listen on every interface).

**What is read.** TensorFlow has no Parquet reader of its own, and tensorflow-io's
``IODataset.from_parquet`` (0.37.1, its last release, for TF 2.17) hands a ``list<int64>``
column over as a scalar ``sparse_k.list.element`` per row: the id lists are lost, so it cannot
read this table (and a ``from_generator`` over pyarrow is a Python generator, which the service
cannot ship to its workers anyway). So ``convert`` writes the same rows once (untimed) as
TFRecord files of ``tf.train.Example``, one file per Parquet row group in the table's order, a
null dense value or list left out of its Example: TensorFlow's native, vectorized path
(``TFRecordDataset`` + batched ``tf.io.parse_example``, C++ throughout).

**The job, as TF ops on the service's workers** (:func:`transform`): a batch of 4096 serialized
Examples is parsed at once; the row filter ``dense_12 IS NOT NULL OR label = 1`` is a boolean
mask (so a batch holds the ~88% of 4096 rows that pass, not exactly 4096: rebatching ragged
tensors would go row by row); dense ``fill_null 0, clamp min 0, log1p`` in float64 rounded to
float32, exactly dpp's; id lists ``first_x 20`` then dpp's ``sigrid_hash`` written as uint64 TF
ops (fmix64: xor, shifts, wrapping multiplies, then ``floormod``): bit-exact, not
``tf.strings.to_hash_bucket_fast`` (``golden`` writes the first row group's output for the
launcher to compare with dpp's). Output per batch, dpp's layout: dense float32 ``[B, 13]``,
every id list packed (int32 values, int32 ``[26 * B + 1]`` offsets), float32 labels.

**The service**: one dispatcher and ``--workers`` worker processes on 127.0.0.1 ports,
``processing_mode="distributed_epoch"`` (files dealt dynamically, each row once: dpp's
exactly-once split leasing), the client iterating in this process. CPU of the timed section
(from the client's first request to its last element): the client's ``getrusage`` and each
server process's ``/proc`` counters, taken before and after.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf

from bench.measure import cpu_s, peak_rss_mb

DENSE = [f"dense_{i}" for i in range(13)]
SPARSE = [f"sparse_{i}" for i in range(26)]
FILTER_COLUMN = "dense_12"
FIRST_X = 20
MAX_VALUE = 100_000
BATCH_SIZE = 4096
_MASK64 = (1 << 64) - 1
_F32_MAX = float(np.finfo(np.float32).max)


def parquet_units(table_uri: str) -> list[tuple[str, int]]:
    """(file, row group) of the table, in the order the torch-vec peer and ``convert`` use."""
    import pyarrow.parquet as pq

    files = sorted(glob.glob(os.path.join(table_uri, "**", "*.parquet"), recursive=True))
    return [(f, rg) for f in files for rg in range(pq.ParquetFile(f).num_row_groups)]


def convert(table_uri: str, out: Path) -> None:
    """One TFRecord file of ``tf.train.Example`` per row group; a null value is left out."""
    import pyarrow.parquet as pq

    out.mkdir(parents=True, exist_ok=True)
    columns = [*DENSE, *SPARSE, "label"]
    for i, (path, rg) in enumerate(parquet_units(table_uri)):
        data = pq.ParquetFile(path).read_row_group(rg, columns=columns).to_pydict()
        target = out / f"{i:04d}.tfrecord"
        with tf.io.TFRecordWriter(str(target) + ".tmp") as writer:
            for r in range(len(data["label"])):
                feature: dict[str, tf.train.Feature] = {}
                for name in DENSE:
                    v = data[name][r]
                    if v is not None:
                        feature[name] = tf.train.Feature(float_list=tf.train.FloatList(value=[v]))
                for name in SPARSE:
                    ids = data[name][r]
                    if ids is not None:
                        feature[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=ids))
                feature["label"] = tf.train.Feature(
                    int64_list=tf.train.Int64List(value=[data["label"][r]])
                )
                example = tf.train.Example(features=tf.train.Features(feature=feature))
                writer.write(example.SerializeToString())
        os.replace(str(target) + ".tmp", target)
    (out / "_SUCCESS").write_text(table_uri)


def _fmix64_scalar(k: int) -> int:
    """dpp's ``fmix64`` on a Python int (salts only): MurmurHash3's 64-bit finaliser."""
    k &= _MASK64
    k ^= k >> 33
    k = (k * 0xFF51AFD7ED558CCD) & _MASK64
    k ^= k >> 33
    k = (k * 0xC4CEB9FE1A85EC53) & _MASK64
    return k ^ (k >> 33)


# Per feature k (salt k, as the job's spec): fmix64(salt), the key xored into each of its ids.
_SALT_KEYS = tf.constant([_fmix64_scalar(k) for k in range(len(SPARSE))], dtype=tf.uint64)


def _sigrid_hash(ids: tf.Tensor, keys: tf.Tensor) -> tf.Tensor:
    """``fmix64(uint64(id) XOR key) mod MAX_VALUE``: dpp's sigrid_hash, bit for bit."""
    k = tf.bitwise.bitwise_xor(tf.bitcast(ids, tf.uint64), keys)
    s33 = tf.constant(33, tf.uint64)
    k = tf.bitwise.bitwise_xor(k, tf.bitwise.right_shift(k, s33))
    k = k * tf.constant(0xFF51AFD7ED558CCD, tf.uint64)
    k = tf.bitwise.bitwise_xor(k, tf.bitwise.right_shift(k, s33))
    k = k * tf.constant(0xC4CEB9FE1A85EC53, tf.uint64)
    k = tf.bitwise.bitwise_xor(k, tf.bitwise.right_shift(k, s33))
    return tf.cast(tf.math.floormod(k, tf.constant(MAX_VALUE, tf.uint64)), tf.int32)


_FEATURES: dict[str, Any] = {
    **{name: tf.io.FixedLenFeature([], tf.float32, default_value=0.0) for name in DENSE[:-1]},
    FILTER_COLUMN: tf.io.RaggedFeature(tf.float32, row_splits_dtype=tf.int32),
    **{name: tf.io.RaggedFeature(tf.int64, row_splits_dtype=tf.int32) for name in SPARSE},
    "label": tf.io.FixedLenFeature([], tf.int64),
}


def transform(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
    """A batch of serialized Examples to dpp's tensors (see the module docstring)."""
    parsed = tf.io.parse_example(serialized, _FEATURES)
    last = parsed[FILTER_COLUMN]
    keep = tf.logical_or(last.row_lengths() > 0, tf.equal(parsed["label"], 1))
    last_value = last.to_tensor(default_value=0.0, shape=[None, 1])[:, 0]
    columns = [parsed[name] for name in DENSE[:-1]] + [last_value]
    wide = tf.cast(tf.boolean_mask(tf.stack(columns, axis=1), keep), tf.float64)
    wide = tf.clip_by_value(wide, 0.0, _F32_MAX)
    wide = tf.where(tf.math.is_nan(wide), tf.zeros_like(wide), wide)
    dense = tf.cast(tf.math.log1p(wide), tf.float32)
    values, lengths = [], []
    for name in SPARSE:
        lists = tf.ragged.boolean_mask(parsed[name], keep)[:, :FIRST_X]
        values.append(lists.flat_values)
        lengths.append(lists.row_lengths())
    per_feature = tf.stack([tf.shape(v, out_type=tf.int32)[0] for v in values])
    keys = tf.repeat(_SALT_KEYS, per_feature)
    all_lengths = tf.concat(lengths, axis=0)
    offsets = tf.concat([tf.zeros([1], tf.int32), tf.cumsum(all_lengths)], axis=0)
    return {
        "dense": dense,
        "values": _sigrid_hash(tf.concat(values, axis=0), keys),
        "offsets": offsets,
        "labels": tf.cast(tf.boolean_mask(parsed["label"], keep), tf.float32),
    }


def dataset(records: str) -> tf.data.Dataset:
    """The pipeline the service's workers run (files dealt to them dynamically)."""
    files = sorted(glob.glob(os.path.join(records, "*.tfrecord")))
    ds = tf.data.Dataset.from_tensor_slices(files)
    ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=2, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(BATCH_SIZE).map(transform, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def golden(records: str, out: str) -> None:
    """The first row group's output in one batch (the launcher compares it with dpp's)."""
    first = sorted(glob.glob(os.path.join(records, "*.tfrecord")))[0]
    serialized = tf.concat(list(tf.data.TFRecordDataset(first).batch(1 << 20)), axis=0)
    result = {k: v.numpy() for k, v in transform(serialized).items()}
    np.savez(out, **result)


def _serve(role: str, port: int, dispatcher: str) -> None:
    """A dispatcher or worker process: serves until SIGTERM."""
    if role == "dispatcher":
        config = tf.data.experimental.service.DispatcherConfig(port=port)
        server: Any = tf.data.experimental.service.DispatchServer(config)
    else:
        worker = tf.data.experimental.service.WorkerConfig(
            dispatcher_address=dispatcher,
            worker_address=f"127.0.0.1:{port}",
            port=port,
        )
        server = tf.data.experimental.service.WorkerServer(worker)
    print("ready", flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    del server


def _start(role: str, port: int, dispatcher: str = "") -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.peers.tfdata", "serve", role, str(port), dispatcher],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    if process.stdout.readline().strip() != "ready":
        raise SystemExit(f"tf.data service {role} did not start (exit {process.wait()})")
    return process


def run(records: str, workers: int, max_rows: int) -> dict[str, Any]:
    """Starts the service, times one epoch through it, stops it; returns the figures."""
    base = 17_000 + os.getpid() % 20_000
    servers = [_start("dispatcher", base)]
    dispatcher = f"grpc://127.0.0.1:{base}"
    servers += [_start("worker", base + 1 + i, f"127.0.0.1:{base}") for i in range(workers)]
    try:
        ds = dataset(records).apply(
            tf.data.experimental.service.distribute(
                processing_mode="distributed_epoch",
                service=dispatcher,
                job_name=f"dlrm-{os.getpid()}",
            )
        )
        time.sleep(0.2)
        usage0 = resource.getrusage(resource.RUSAGE_SELF)
        servers0 = [cpu_s(p.pid) for p in servers]
        wall0 = time.perf_counter()
        rows = nbytes = 0
        for element in ds:
            rows += int(element["dense"].shape[0])
            nbytes += sum(int(tf.size(v)) * v.dtype.size for v in element.values())
            if rows >= max_rows:
                break
        wall = time.perf_counter() - wall0
        usage1 = resource.getrusage(resource.RUSAGE_SELF)
        servers1 = [cpu_s(p.pid) for p in servers]
        rss = [peak_rss_mb(p.pid) for p in servers]
    finally:
        for p in servers:
            p.send_signal(signal.SIGTERM)
        for p in servers:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
    client = (usage1.ru_utime + usage1.ru_stime) - (usage0.ru_utime + usage0.ru_stime)
    roles = ["tf.data dispatcher"] + ["tf.data worker"] * workers
    processes: list[dict[str, Any]] = [
        {"pid": p.pid, "role": role, "peak_rss_mb": round(r, 1), "cpu_s": round(b - a, 3)}
        for p, role, r, a, b in zip(servers, roles, rss, servers0, servers1, strict=True)
    ]
    return {
        "rows": rows,
        "bytes": nbytes,
        "tf_seconds": wall,
        "tf_client_cpu_s": client,
        "tf_other_cpu_s": sum(float(p["cpu_s"]) for p in processes),
        "tf_processes": processes,
        "tf_client_peak_rss_mb": round(peak_rss_mb(), 1),
        "tf_version": tf.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("convert")
    c.add_argument("--table", required=True)
    c.add_argument("--out", required=True)
    g = sub.add_parser("golden")
    g.add_argument("--records", required=True)
    g.add_argument("--out", required=True)
    r = sub.add_parser("run")
    r.add_argument("--records", required=True)
    r.add_argument("--workers", type=int, default=2)
    r.add_argument("--max-rows", type=int, default=sys.maxsize)
    s = sub.add_parser("serve")
    s.add_argument("role", choices=("dispatcher", "worker"))
    s.add_argument("port", type=int)
    s.add_argument("dispatcher", nargs="?", default="")
    args = parser.parse_args()
    if args.command == "convert":
        convert(args.table, Path(args.out))
    elif args.command == "golden":
        golden(args.records, args.out)
    elif args.command == "serve":
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
        _serve(args.role, args.port, args.dispatcher)
    else:
        print(json.dumps(run(args.records, args.workers, args.max_rows)), flush=True)


if __name__ == "__main__":
    main()
