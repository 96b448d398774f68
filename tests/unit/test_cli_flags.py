"""The flags of `dpp master`, `dpp worker` and `dpp up` are derived from the settings
dataclasses: one default, one flag, one DPP_* override and one help text per field."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import pytest

from dpp_server import cli
from dpp_server.master import MasterConfig
from dpp_server.scaling import ScalerConfig
from dpp_server.worker import WorkerConfig

COMMANDS: dict[str, tuple[type[Any], ...]] = {
    "master": (cli.MasterProcess, MasterConfig, ScalerConfig),
    "worker": (cli.WorkerProcess, WorkerConfig),
    "up": (cli.UpProcess,),
}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("DPP_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("COLUMNS", "2000")  # no wrapping in --help


def parse(*argv: str) -> Any:
    return cli.build_parser().parse_args(list(argv))


def help_of(command: str) -> str:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return " ".join(sub.choices[command].format_help().split())  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "cls", sorted({c for cs in COMMANDS.values() for c in cs}, key=lambda c: c.__name__)
)
def test_every_settings_field_has_a_help_text(cls: type[Any]) -> None:
    docs = cli.field_docs(cls)
    assert [f.name for f in dataclasses.fields(cls) if not docs.get(f.name)] == []


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_lists_each_flag_with_its_variable_and_default(command: str) -> None:
    text = help_of(command)
    for cls in COMMANDS[command]:
        for field in dataclasses.fields(cls):
            flag = cli.FLAGS.get(cls.__name__, {}).get(field.name, cli.Flag())
            name = flag.names[0] if flag.names else "--" + field.name.replace("_", "-")
            env = field.name if flag.env == "" else flag.env
            default = field.default // flag.scale if flag.scale != 1 else field.default
            where = f"$DPP_{env.upper()}, " if env else ""
            assert f"{name} " in text
            assert f"[{where}default: {default}]" in text, (name, text)


def test_master_help_shows_the_docstring_of_a_field() -> None:
    assert "a worker silent this long is dropped and its leases released" in help_of("master")


def test_defaults_are_the_dataclasses() -> None:
    master = parse("master")
    assert cli.config_from_args(MasterConfig, master) == MasterConfig()
    assert cli.config_from_args(ScalerConfig, master) == ScalerConfig()
    assert cli.config_from_args(cli.MasterProcess, master) == cli.MasterProcess()
    worker = parse("worker")
    assert cli.config_from_args(WorkerConfig, worker) == WorkerConfig()
    assert worker.master == f"127.0.0.1:{cli.MasterProcess.port}"
    up = parse("up")
    assert (up.min_workers, up.max_workers) == (master.min_workers, master.max_workers)
    assert up.pipeline_threads == WorkerConfig.pipeline_threads
    # dpp top/scale: the connection file's address, else the default master.
    assert parse("top").master is None and parse("scale", "2").master is None
    assert parse("top").default_master == parse("scale", "2").default_master == worker.master


def test_environment_overrides_the_default_and_a_flag_overrides_both(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DPP_LEASE_TIMEOUT_S", "3.5")
    monkeypatch.setenv("DPP_MASTER_PORT", "6000")
    monkeypatch.setenv("DPP_BUFFER_MB", "64")
    monkeypatch.setenv("DPP_PIPELINE_THREADS", "4")
    monkeypatch.setenv("DPP_AUTOSCALE", "true")
    master = parse("master")
    assert cli.config_from_args(MasterConfig, master).lease_timeout_s == 3.5
    assert master.port == 6000
    assert parse("master", "--lease-timeout-s", "7").lease_timeout_s == 7.0
    config = cli.config_from_args(WorkerConfig, parse("worker"))
    assert (config.max_buffer_bytes, config.pipeline_threads) == (64 << 20, 4)
    worker = parse("worker", "--buffer-mb", "8", "--threads", "1")
    assert cli.config_from_args(WorkerConfig, worker).max_buffer_bytes == 8 << 20
    assert parse("worker", "--pipeline-threads", "3").pipeline_threads == 3
    assert parse("up").autoscale is True


@pytest.mark.parametrize(
    ("name", "value", "text"),
    [
        ("DPP_LEASE_TIMEOUT_S", "soon", "DPP_LEASE_TIMEOUT_S='soon': expected float"),
        ("DPP_AUTOSCALE", "maybe", "DPP_AUTOSCALE='maybe': expected one of 1/0, true/false"),
    ],
)
def test_a_bad_variable_names_itself(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, text: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit, match=text):
        cli.build_parser()
