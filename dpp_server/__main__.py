"""``python -m dpp_server`` is the ``dpp`` command (the ``dpp`` script calls :func:`main`)."""

import sys

from dpp_server.budget import prepare_environment


def main() -> int:
    """Sets a worker's allocator settings before anything loads pyarrow or polars (their
    allocators read them once, when they start), then runs the command."""
    prepare_environment(sys.argv[1:])
    from dpp_server.cli import main as run

    return run()


if __name__ == "__main__":
    sys.exit(main())
