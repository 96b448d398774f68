"""Runs one fuzz target under atheris (coverage-guided, libFuzzer's engine).

    python -m tests.fuzz.run TARGET [libFuzzer flags, e.g. -atheris_runs=5000 or
                                     -max_total_time=300] [CORPUS_DIR]

Seeds come from :func:`tests.fuzz.targets.seeds` (written into a fresh corpus folder when none
is given). A finding exits non-zero with the input saved as ``crash-*``: turn it into a
regression test in tests/fuzz/test_fuzz.py (``REGRESSIONS``).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path


def main() -> None:
    import atheris

    target = sys.argv[1]
    flags = [a for a in sys.argv[2:] if a.startswith("-")]
    corpus = [a for a in sys.argv[2:] if not a.startswith("-")]
    # Instrument dpp's own code only (instrumenting pyarrow, polars or sqlglot costs minutes).
    with atheris.instrument_imports(include=["dpp_proto", "dpp_client", "dpp_server", "storage"]):
        import dpp_client.frames  # noqa: F401
        import dpp_proto.wire  # noqa: F401
        import dpp_server.auth
        import dpp_server.journal
        import dpp_server.spec  # noqa: F401
        import storage.filters  # noqa: F401
        from tests.fuzz import targets
    if not corpus:
        folder = Path(tempfile.mkdtemp(prefix=f"dpp-fuzz-{target}-"))
        for i, seed in enumerate(targets.seeds(target)):
            (folder / f"seed-{i}").write_bytes(seed)
        corpus = [str(folder)]
    atheris.Setup([sys.argv[0], *flags, *corpus], targets.TARGETS[target])
    atheris.Fuzz()


if __name__ == "__main__":
    main()
