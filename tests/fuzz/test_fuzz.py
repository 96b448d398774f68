"""Fuzzing in CI: every target for a bounded number of atheris runs, and every input a fuzzer
once broke a target with, replayed (``make fuzz`` runs each target for minutes).

Findings so far (inputs in tests/fuzz/regressions/), all in the client's frame decoder:
an Arrow batch whose buffers were smaller than its length said (zero-copy views would have
read past the frame), an Arrow error type the decoder did not catch, and non-UTF-8 column
names. The decoder now validates every section fully and raises ``FrameError`` for each.
And in the client's spec reader: a YAML mapping with a non-string key (``null: 1``) made the
unknown-field message itself fail (``sorted`` of mixed key types); it is now a
``SpecRejectedError`` naming the key.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fuzz import targets

REGRESSIONS = Path(__file__).parent / "regressions"
RUNS = 2000


@pytest.mark.parametrize("path", sorted(REGRESSIONS.iterdir()), ids=lambda p: p.name)
def test_regression_inputs_get_a_clear_error(path: Path) -> None:
    target = targets.TARGETS[path.name.split("-", 1)[0]]
    target(path.read_bytes())  # raises only on a finding


@pytest.mark.parametrize("name", sorted(targets.TARGETS))
def test_seeds_pass(name: str) -> None:
    for seed in targets.seeds(name):
        targets.TARGETS[name](seed)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(targets.TARGETS))
def test_fuzz_bounded(name: str, tmp_path: Path) -> None:
    pytest.importorskip("atheris")
    result = subprocess.run(
        [sys.executable, "-m", "tests.fuzz.run", name, f"-atheris_runs={RUNS}"],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,  # crash-* files land here, not in the checkout
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert f"Done {RUNS}" in result.stderr
