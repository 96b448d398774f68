"""docs/settings.md lists every flag and DPP_* variable the dpp parser has (issue 18)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from dpp_server import cli
from dpp_server.master import MasterConfig
from dpp_server.settings_reference import render
from dpp_server.worker import WorkerConfig

ROOT = Path(__file__).resolve().parents[2]


def test_the_page_is_what_the_parser_generates() -> None:
    assert (ROOT / "docs" / "settings.md").read_text(encoding="utf-8") == render(), (
        "docs/settings.md is stale: run "
        "`python -m dpp_server.settings_reference > docs/settings.md`"
    )


def test_the_page_does_not_depend_on_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DPP_LEASE_TIMEOUT_S", "99")
    assert "`99`" not in render()
    assert "| `--lease-timeout-s` | `DPP_LEASE_TIMEOUT_S` | `10.0` |" in render()


@pytest.mark.parametrize("cls", [MasterConfig, WorkerConfig, cli.MasterProcess])
def test_every_settings_field_is_on_the_page(cls: type) -> None:
    page = render()
    for field in dataclasses.fields(cls):
        flag = cli.FLAGS.get(cls.__name__, {}).get(field.name, cli.Flag())
        name = flag.names[0] if flag.names else "--" + field.name.replace("_", "-")
        assert f"`{name}`" in page, name


def test_the_readme_points_at_real_variables() -> None:
    """Every DPP_* name the README mentions exists (the page lists it)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    named = set(re.findall(r"DPP_[A-Z_0-9]+[A-Z0-9]", readme))
    assert named, "the README names no DPP_* variable"
    page = render()
    assert {n for n in named if f"`{n}`" not in page} == set()
