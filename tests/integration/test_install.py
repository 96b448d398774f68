"""Each role installs what it needs and nothing of the other role's heavy libraries.

A fresh venv per role (``python -m venv``, no system site-packages), the project copied out of
the checkout and installed with pip as a user would (``pip install 'dpp[client]'``), then, in
that venv and outside the checkout: the role's modules import, and the other role's libraries
are absent. About a minute per role (torch comes from the local wheel store; the rest from the
pip cache). tests/unit/test_import_graph.py checks the same boundary in the source, cheaply.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
PIP_TIMEOUT_S = 540

# What a role's venv must import, and what must not be there.
ROLES: dict[str, tuple[list[str], list[str]]] = {
    "client": (
        ["dpp_client", "dpp_client.loader", "dpp_client.metrics", "dpp_client.spec", "torch"],
        ["polars", "sqlglot", "s3fs"],
    ),
    "server": (
        [
            "dpp_server.master",
            "dpp_server.worker",
            "dpp_server.master_service",
            "dpp_server.worker_service",
            "dpp_server.monitor_service",
            "dpp_server.cli",
            "storage",
            "storage.iceberg",  # pyiceberg, with the sqlite catalog the tests use
            "pyiceberg.catalog.sql",
        ],
        ["torch"],
    ),
}

CHECK = """
import importlib, importlib.util, json, sys
wanted, unwanted = json.loads(sys.argv[1]), json.loads(sys.argv[2])
for name in wanted:
    importlib.import_module(name)
print(json.dumps({
    "present": [n for n in unwanted if importlib.util.find_spec(n) is not None],
    "first_party": sorted({m.split(".")[0] for m in sys.modules
                           if m.split(".")[0] in ("dpp_client", "dpp_server", "storage")}),
    "file": importlib.import_module(wanted[0].split(".")[0]).__file__,
}))
"""


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=PIP_TIMEOUT_S
    )
    assert done.returncode == 0, (
        f"{' '.join(cmd)} exited with {done.returncode}:\n{done.stdout[-3000:]}\n"
        f"{done.stderr[-3000:]}"
    )
    return done.stdout


@pytest.mark.timeout(PIP_TIMEOUT_S + 60)
@pytest.mark.parametrize("role", sorted(ROLES))
def test_role_installs_alone(role: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for package in ("dpp_client", "dpp_server", "storage", "dpp_proto"):
        shutil.copytree(ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    # No PYTHONPATH: the venv must import what pip installed, not this checkout.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], tmp_path, env)
    python = str(venv / "bin" / "python")
    if role == "client":
        # As README says: torch first, pinned (the CPU build in the local wheel store).
        _run([python, "-m", "pip", "install", "-q", "torch==2.13.0"], tmp_path, env)
    _run([python, "-m", "pip", "install", "-q", f"{src}[{role}]"], tmp_path, env)

    wanted, unwanted = ROLES[role]
    out = _run([python, "-c", CHECK, json.dumps(wanted), json.dumps(unwanted)], tmp_path, env)
    report = json.loads(out.strip().splitlines()[-1])
    assert str(venv) in report["file"], f"imported {report['file']}, not the venv's install"
    assert report["present"] == [], f"dpp[{role}] brought {report['present']} along"
    if role == "client":
        assert report["first_party"] == ["dpp_client"], report["first_party"]
