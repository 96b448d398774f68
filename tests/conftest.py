"""Shared fixtures: small generated tables (real Parquet files on disk)."""

from __future__ import annotations

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
