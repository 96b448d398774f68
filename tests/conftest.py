"""Shared fixtures: small generated tables (real Parquet files on disk), and the run's
credentials (every cluster is secured, as by default)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from storage import GenConfig, generate_table

SMALL = GenConfig(
    rows=24_000,
    days=2,
    dense=4,
    sparse=4,
    rows_per_session=3.0,
    row_group_rows=2_000,
    rows_per_file=6_000,
    max_list_len=12,
    seed=11,
)


@pytest.fixture(scope="session")
def small_table(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 24k-row DLRM-shaped table: 2 days, 4 dense + 4 sparse features, 2k-row row groups."""
    uri = str(tmp_path_factory.mktemp("tables") / "small")
    generate_table(uri, SMALL)
    return uri


@pytest.fixture(scope="session")
def small_config() -> GenConfig:
    return SMALL


def table_files(uri: str) -> list[Path]:
    return sorted(Path(uri).rglob("*.parquet"))


#: Identities beside the user's (trainer+admin of tenant "local") and the workers', for the
#: security tests: (name, roles, tenant). Each gets ``<name>.json``, a connection file.
EXTRA_IDENTITIES = (
    ("mallory", "trainer", "evil"),
    ("ops", "admin", ""),
    ("trainee", "trainer", "local"),
    ("rogue", "worker", ""),
)


@pytest.fixture(scope="session", autouse=True)
def cluster_credentials(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Security is on in every test, as it is by default: one throwaway CA, certificates and
    tokens for the whole run. Every LocalCluster reuses them ($DPP_LOCAL_CREDENTIALS) and every
    client, in this process or a child, connects with the user's connection file
    ($DPP_CONNECTION; its address is left empty: clients pass the cluster's)."""
    from dpp_proto.auth import CONNECTION_ENV
    from dpp_server.local_cluster import CREDENTIALS_ENV
    from dpp_server.pki import make_credentials

    folder = tmp_path_factory.mktemp("credentials")
    credentials = make_credentials(folder, extra=EXTRA_IDENTITIES)
    saved = {k: os.environ.get(k) for k in (CREDENTIALS_ENV, CONNECTION_ENV)}
    os.environ[CREDENTIALS_ENV] = str(folder)
    os.environ[CONNECTION_ENV] = str(credentials.connection)
    yield folder
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
