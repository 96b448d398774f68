"""End-to-end demo: generate a table, start a local dpp cluster, train a DLRM model from it.

Run with ``dpp demo`` or ``python -m dpp_server.demo`` (what ``make demo`` runs). An
application of both roles, so it lives beside the ``dpp`` command rather than in the trainer's
library: it starts the server side as a trainer's job would (subprocesses ``python -m dpp_server
gen`` / ``up``) and trains through the public client API, so it needs both extras
(``pip install 'dpp[client,server]'``). Owns only this CLI. Must never import other
``dpp_server`` or ``storage`` modules (it sees the cluster only through processes and the
client). Imports torch and ``dpp_client`` only inside :func:`run`, so ``dpp`` can build its
parser from :func:`add_arguments` in a server-only install.

Lifecycle: the cluster runs in its own process group and is stopped in a ``finally`` (SIGINT
to the group: every process stops at once, without the drain a SIGTERM asks of a worker;
SIGKILL after 10 s), so no process outlives the demo, even on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dpp_client.spec import SessionSpec

_log = logging.getLogger("dpp_server.demo")

NUM_DENSE = 13
NUM_SPARSE = 26
NUM_EMBEDDINGS = 100_000
BATCH_SIZE = 4096
READY_TIMEOUT_S = 60.0
STOP_GRACE_S = 10.0
STAGES = ("read", "filter", "transform", "batch", "serialize", "wait_consumer", "idle")


def demo_spec(table_uri: str, epochs: int) -> SessionSpec:
    """The demo's session: Criteo-like dense/sparse features and a label."""
    from dpp_client.spec import Feature, Op, SessionSpec

    dense = [
        Feature(
            f"dense_{i}",
            "dense",
            ops=(Op("fill_null", {"value": 0.0}), Op("clamp", {"min": 0.0}), Op("log1p")),
        )
        for i in range(NUM_DENSE)
    ]
    sparse = [
        Feature(
            f"sparse_{i}",
            "sparse",
            ops=(Op("first_x", {"x": 20}), Op("sigrid_hash", {"max_value": NUM_EMBEDDINGS})),
        )
        for i in range(NUM_SPARSE)
    ]
    return SessionSpec(
        table_uri=table_uri,
        features=(*dense, *sparse),
        label="label",
        batch_size=BATCH_SIZE,
        epochs=epochs,
    )


def _wait_ready(
    cluster: subprocess.Popen[bytes], ready_file: Path, stderr_path: Path
) -> tuple[str, str]:
    """Waits for the cluster's ready file; returns the master address and the connection
    file (TLS, token) the cluster wrote."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if cluster.poll() is not None:
            raise RuntimeError(
                f"dpp cluster exited with code {cluster.returncode} before it was ready; its "
                f"stderr:\n{stderr_path.read_text(errors='replace')[-4000:]}"
            )
        if ready_file.exists():
            try:
                ready = json.loads(ready_file.read_text())
                return str(ready["master"]), str(ready.get("connection", ""))
            except (json.JSONDecodeError, KeyError):
                pass  # written but not complete yet
        time.sleep(0.1)
    raise RuntimeError(
        f"dpp cluster not ready after {READY_TIMEOUT_S:.0f} s (no {ready_file}); its stderr:\n"
        f"{stderr_path.read_text(errors='replace')[-4000:]}"
    )


def _stop(cluster: subprocess.Popen[bytes]) -> None:
    """SIGINT the cluster's process group, then SIGKILL it after a grace period."""
    if cluster.poll() is not None:
        return
    try:
        os.killpg(cluster.pid, signal.SIGINT)
        cluster.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        _log.warning("cluster did not stop in %.0f s; killing it", STOP_GRACE_S)
        os.killpg(cluster.pid, signal.SIGKILL)
        cluster.wait()
    except ProcessLookupError:
        pass


def _progress(enabled: bool) -> Any:
    """A rich progress bar (steps, rate, loss), or one that shows nothing."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TimeRemainingColumn(),
        disable=not enabled,
    )


def run(
    rows: int,
    steps: int,
    workers: int,
    keep: bool,
    progress: bool = True,
    epoch_overlap: bool = True,
    warm_start: bool = True,
) -> int:
    """Runs the demo; returns the process exit code.

    With ``warm_start`` the loader is built and started (``DppLoader.start()``) before the
    model and optimizer, so the workers read while the trainer builds its model; without it
    the session is created at ``len(loader)`` and the first epoch begun at ``iter()``.
    """
    # Imported here, not at the top: `dpp` builds its parser from this module (add_arguments)
    # in a server-only install too, where these are absent (see run_args).
    import torch
    from rich.console import Console
    from rich.table import Table

    from dpp_client.examples.dlrm import DLRM, train_step
    from dpp_client.loader import DppLoader

    tmp = Path(tempfile.mkdtemp(prefix="dpp-demo-"))
    cluster: subprocess.Popen[bytes] | None = None
    try:
        table = tmp / "table"
        _log.info("generating %d rows into %s", rows, table)
        subprocess.run(
            [sys.executable, "-m", "dpp_server", "gen", str(table), "--rows", str(rows),
             "--days", "3", "--seed", "7"],
            check=True,
        )  # fmt: skip
        ready_file = tmp / "ready.json"
        stderr_path = tmp / "cluster.log"
        with stderr_path.open("wb") as stderr:
            cluster = subprocess.Popen(
                [sys.executable, "-m", "dpp_server", "up", "--workers", str(workers),
                 "--ready-file", str(ready_file)],
                stdout=stderr,
                stderr=stderr,
                start_new_session=True,  # its own process group, stopped as one
            )  # fmt: skip
        master, connection = _wait_ready(cluster, ready_file, stderr_path)
        _log.info("cluster ready, master at %s (secured: %s)", master, connection or "no")

        full_batches_per_epoch = max(1, rows // BATCH_SIZE)
        epochs = max(1, math.ceil(steps / full_batches_per_epoch))
        spec = demo_spec(str(table), epochs)

        losses: list[float] = []
        # The trainer's wait for each epoch's first batch (iter() included): the boundary.
        first_waits_s: list[float] = []
        with (
            DppLoader(
                master,
                spec,
                session_name="demo",
                drop_last=True,
                connection=connection or None,
                epoch_overlap=epoch_overlap,
            ) as loader,
            _progress(progress) as bar,
        ):
            if warm_start:
                # Reading begins now: the workers fill the prefetch while the model is built.
                loader.start()
            torch.manual_seed(0)
            model = DLRM(NUM_DENSE, spec.sparse_names, NUM_EMBEDDINGS)
            # Plain SGD with sparse embedding gradients: ~65 ms a step on 2 cores, where
            # Adagrad and dense gradients cost 2-5x more on 26 tables of 100k rows.
            opt = torch.optim.SGD(model.parameters(), lr=0.05)
            # len(loader): batches per epoch, exact here (no row filter, no sampling).
            task = bar.add_task("training", total=min(steps, len(loader) * epochs), loss=0.0)
            start = time.monotonic()
            for _ in range(epochs):
                asked = time.monotonic()
                for i, batch in enumerate(loader):
                    if i == 0:
                        first_waits_s.append(time.monotonic() - asked)
                    losses.append(train_step(model, opt, batch))
                    bar.update(task, advance=1, loss=losses[-1])
                    if not progress and len(losses) % 50 == 0:
                        _log.info("step %d loss %.4f", len(losses), losses[-1])
                    if len(losses) >= steps:
                        break
                if len(losses) >= steps:
                    break
            elapsed = time.monotonic() - start
            stats = loader.stats
            workers_info = loader.list_workers()

        stage_totals = dict.fromkeys(STAGES, 0.0)
        for w in workers_info:
            for stage in STAGES:
                stage_totals[stage] += getattr(w.stage_seconds, f"{stage}_s")
        stage_sum = sum(stage_totals.values()) or 1.0

        summary = Table(title="dpp demo")
        summary.add_column("metric")
        summary.add_column("value", justify="right")
        summary.add_row("rows/s (trainer)", f"{stats.rows / elapsed:,.0f}" if elapsed else "-")
        summary.add_row("batches", str(stats.batches))
        summary.add_row("steps", str(len(losses)))
        summary.add_row("epochs planned", str(epochs))
        if losses:
            head = losses[: min(10, len(losses))]
            tail = losses[-min(10, len(losses)) :]
            summary.add_row("loss start (mean of first 10)", f"{sum(head) / len(head):.4f}")
            summary.add_row("loss end (mean of last 10)", f"{sum(tail) / len(tail):.4f}")
        summary.add_row("trainer stall share", f"{stats.stall_share:.1%}")
        summary.add_row(
            "first-batch wait, epoch 1 (ms)",
            f"{1000 * first_waits_s[0]:.1f}" if first_waits_s else "-",
        )
        later = first_waits_s[1:]
        summary.add_row(
            "first-batch wait, epochs 2.. (ms, mean)",
            f"{1000 * sum(later) / len(later):.1f}" if later else "-",
        )
        summary.add_row("epoch overlap", "on" if epoch_overlap else "off")
        summary.add_row("warm start", "on" if warm_start else "off")
        summary.add_row("MB received", f"{stats.bytes_received / 1e6:,.1f}")
        for stage in STAGES:
            summary.add_row(f"workers: {stage}", f"{stage_totals[stage] / stage_sum:.1%}")
        Console().print(summary)
        return 0
    finally:
        if cluster is not None:
            _stop(cluster)
        if keep:
            _log.info("kept %s", tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The demo's flags, for ``python -m dpp_server.demo`` and ``dpp demo`` alike."""
    parser.add_argument("--rows", type=int, default=300_000, help="rows to generate")
    parser.add_argument("--steps", type=int, default=300, help="training steps")
    parser.add_argument("--workers", type=int, default=2, help="dpp worker processes")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder")
    parser.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        help="log every 50 steps instead of showing a progress bar",
    )
    parser.add_argument(
        "--no-epoch-overlap",
        dest="epoch_overlap",
        action="store_false",
        help="begin each epoch only when the trainer asks (to see the boundary stall)",
    )
    parser.add_argument(
        "--no-warm-start",
        dest="warm_start",
        action="store_false",
        help="build the model before the loader begins reading (to see the first-batch wait)",
    )


def run_args(args: argparse.Namespace) -> int:
    """Runs the demo with parsed flags (logging already configured); returns the exit code."""
    try:
        import rich  # noqa: F401  (the server extra)

        import dpp_client  # noqa: F401  (and with it torch, pyyaml: the client extra)
    except ModuleNotFoundError as exc:
        raise SystemExit(
            f"dpp demo runs both roles and needs both extras: pip install 'dpp[client,server]' "
            f"({exc})"
        ) from exc
    try:
        return run(
            args.rows,
            args.steps,
            args.workers,
            args.keep,
            args.progress,
            args.epoch_overlap,
            args.warm_start,
        )
    except KeyboardInterrupt:
        _log.warning("interrupted; cluster stopped")
        return 130


def main(argv: list[str] | None = None) -> int:
    """``python -m dpp_server.demo``: the entry point when run without the ``dpp`` command."""
    parser = argparse.ArgumentParser(prog="python -m dpp_server.demo", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    return run_args(args)


if __name__ == "__main__":
    sys.exit(main())
