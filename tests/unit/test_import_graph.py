"""The roles' import boundaries, read from the source (ast): no process, no install.

* ``dpp_client`` (the trainer's library) never imports the server's libraries or packages;
* ``dpp_server`` and ``storage`` never import torch or the client (``dpp_server/demo.py``, the
  application that runs both roles, is the one exception), and ``storage`` never grpc;
* every third-party module a role imports is declared by that role in pyproject.toml
  (``dependencies`` plus its extra), so ``pip install 'dpp[client]'`` or ``'dpp[server]'`` is
  enough to import it.

Function-level imports count: a lazy import still needs its package installed.
tests/integration/test_install.py checks the same by installing each role into a fresh venv.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from collections.abc import Iterable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIRST_PARTY = {"dpp_client", "dpp_server", "storage", "dpp_proto"}
# The one module of dpp_server that uses both roles (it starts a cluster and trains a model).
BOTH_ROLES = {Path("dpp_server/demo.py")}

# Optional libraries a role imports only where used, each declared by its own extra:
# torchrec (Batch.to_kjt, shard-plan constraints; installed --no-deps), matplotlib
# (dpp stats --png).
OPTIONAL_EXTRAS = {"torchrec": "torchrec", "matplotlib": "png"}

SERVER_LIBRARIES = {"polars", "sqlglot", "s3fs", "fsspec", "grpc_health", "rich"}
CLIENT_LIBRARIES = {"torch", "torchrec"}

# package directories of each role, and the extra that installs it
ROLES = {
    "client": ("dpp_client", "dpp_proto"),
    "server": ("dpp_server", "storage", "dpp_proto"),
}


def modules(packages: Iterable[str]) -> list[Path]:
    return sorted(
        p.relative_to(ROOT)
        for package in packages
        for p in (ROOT / package).rglob("*.py")
        if "__pycache__" not in p.parts
    )


def imports(path: Path) -> set[str]:
    """Top-level names of the absolute imports in one file, at any depth (lazy ones too)."""
    tree = ast.parse((ROOT / path).read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def declared(role: str) -> set[str]:
    """Normalized distribution names that ``pip install 'dpp[role]'`` installs directly."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [*project["dependencies"], *project["optional-dependencies"][role]]
    return {normalize(re.match(r"[A-Za-z0-9._-]+", r).group(0)) for r in requirements}  # type: ignore[union-attr]


def normalize(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


def test_client_imports_no_server_code_or_libraries() -> None:
    bad = {
        str(path): sorted(found)
        for path in modules(["dpp_client"])
        if (found := imports(path) & (SERVER_LIBRARIES | {"dpp_server", "storage"}))
    }
    assert bad == {}, f"the trainer's library imports the server's: {bad}"


def test_server_and_storage_import_no_torch_or_client() -> None:
    bad = {
        str(path): sorted(found)
        for path in modules(["dpp_server", "storage"])
        if path not in BOTH_ROLES and (found := imports(path) & (CLIENT_LIBRARIES | {"dpp_client"}))
    }
    assert bad == {}, f"the server imports the trainer's libraries: {bad}"


def test_storage_imports_no_grpc_or_service() -> None:
    bad = {
        str(path): sorted(found)
        for path in modules(["storage"])
        if (found := imports(path) & {"grpc", "grpc_health", "dpp_server", "dpp_client", "torch"})
    }
    assert bad == {}, bad


@pytest.mark.parametrize("role", sorted(ROLES))
def test_every_third_party_import_is_declared_by_its_role(role: str) -> None:
    provided = importlib.metadata.packages_distributions()
    wanted = declared(role)
    missing: dict[str, list[str]] = {}
    for path in modules(ROLES[role]):
        if path in BOTH_ROLES:
            continue
        for name in imports(path) - FIRST_PARTY - set(sys.stdlib_module_names):
            if name in OPTIONAL_EXTRAS:  # imported lazily, where used; declared in its own extra
                extra = OPTIONAL_EXTRAS[name]
                assert normalize(name) in declared(extra) or extra == "torchrec", (name, extra)
                continue
            distributions = {normalize(d) for d in provided.get(name, [])}
            if not distributions & wanted:
                missing.setdefault(name, []).append(str(path))
    assert missing == {}, (
        f"dpp[{role}] does not declare what these imports need (pyproject.toml): {missing}"
    )
