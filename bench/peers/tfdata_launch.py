"""Runs the tf.data service peer (:mod:`bench.peers.tfdata`) from dpp's venv: in ``.venv-tf``,
inside a private network namespace, and checks its output against dpp's.

    python -m bench.pipelines tfdata --table URI --quick     # one timed run (the suite's)
    python -m bench.peers.tfdata_launch --quick              # golden check only

Skips (:class:`TfSkip`, the suite prints it) when ``.venv-tf`` is absent (create it with
``bench/peers/setup_tf.sh``) or when a network namespace cannot be made (``unshare -n`` needs
root or user namespaces). The one-time TFRecord copy of the table is written beside it
(``<table>.tfrecord/``), outside any timed section.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent.parent
VENV_TF = Path(os.environ.get("VENV_TF", REPO / ".venv-tf"))


class TfSkip(Exception):
    """The tf.data peer cannot run here; the message says what to do."""


def _python() -> str:
    python = VENV_TF / "bin" / "python"
    if not python.exists():
        raise TfSkip(f"no TensorFlow venv at {VENV_TF}: run bench/peers/setup_tf.sh")
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        raise TfSkip("needs unshare and ip (util-linux, iproute2) for a private network")
    return str(python)


def _tf(args: list[str], *, isolated: bool = False, timeout_s: float = 900) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    command = [_python(), "-m", "bench.peers.tfdata", *args]
    if isolated:
        # A network namespace with only loopback: the dispatcher and workers bind every
        # interface, and here every interface is lo.
        up = 'ip link set lo up && exec "$@"'
        command = ["unshare", "-n", "--", "sh", "-c", up, "sh", *command]
    done = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s
    )
    if done.returncode != 0:
        tail = "\n".join(done.stderr.splitlines()[-6:])
        if isolated and "unshare" in tail:
            raise TfSkip(f"cannot make a network namespace: {tail}")
        raise RuntimeError(f"tf.data peer {args[0]} failed (exit {done.returncode}): {tail}")
    return done.stdout


def ensure_records(table_uri: str) -> str:
    """The table's one-time TFRecord copy (see :mod:`bench.peers.tfdata`), made if missing."""
    records = table_uri.rstrip("/") + ".tfrecord"
    if not (Path(records) / "_SUCCESS").exists():
        print(f"tf.data peer: converting {table_uri} to TFRecord (once) ...", flush=True)
        shutil.rmtree(records, ignore_errors=True)
        _tf(["convert", "--table", table_uri, "--out", records], timeout_s=1800)
    return records


def check_golden(table_uri: str, spec: Any) -> dict[str, int]:
    """TF's output for the first row group against the torch-vec peer's (which
    :func:`bench.peers.torch_vectorized.check_golden` proves equal to dpp's).

    Raises:
        AssertionError: naming the tensor that differs.
    """
    from bench.peers.torch_vectorized import RowGroupDataset

    records = ensure_records(table_uri)
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "tf.npz")
        _tf(["golden", "--records", records, "--out", out])
        with np.load(out) as z:
            tf_out = {k: z[k] for k in z.files}
    ds = RowGroupDataset(spec)
    ds.batch_size = 1 << 30
    path, row_group = ds.units[0]
    (ours,) = list(ds.batches(ds.read(path, row_group)))
    for name in ("dense", "values", "offsets", "labels"):
        mine = getattr(ours, name).numpy()
        assert np.array_equal(mine, tf_out[name]), f"tf.data {name} differ from dpp's"
    return {"rows": ours.num_rows, "ids": int(ours.values.numel())}


def run_tfdata(args: argparse.Namespace) -> tuple[int, int, dict[str, Any]]:
    """One timed epoch through the service (``args``: bench.pipelines' arguments)."""
    records = ensure_records(args.table)
    command = ["run", "--records", records, "--workers", str(args.workers)]
    if args.max_rows:
        command += ["--max-rows", str(args.max_rows)]
    lines = [x for x in _tf(command, isolated=True).splitlines() if x.startswith("{")]
    result: dict[str, Any] = json.loads(lines[-1])
    return int(result["rows"]), int(result["bytes"]), result


def main() -> None:
    from bench.workloads import workloads

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--table-dir", default=os.environ.get("DPP_BENCH_DIR", "/tmp/dpp-bench"))
    args = parser.parse_args()
    workload = workloads(args.quick)["dlrm"]
    table = workload.ensure_table(Path(args.table_dir))
    print(json.dumps({"golden_equal": check_golden(table, workload.spec(table))}))


if __name__ == "__main__":
    main()
