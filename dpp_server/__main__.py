"""``python -m dpp_server`` is the ``dpp`` command (the ``dpp`` script calls :func:`main`)."""

import faulthandler
import signal
import sys

from dpp_server.budget import prepare_environment


def main() -> int:
    """Sets a worker's allocator settings before anything loads pyarrow or polars (their
    allocators read them once, when they start), then runs the command.

    ``kill -USR1 <pid>`` makes any dpp process write every thread's stack to its stderr (its
    log), without stopping it: how to see where a process that does not stop, or does not
    answer, is waiting (``LocalCluster`` does it before it kills such a process).
    """
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    prepare_environment(sys.argv[1:])
    from dpp_server.cli import main as run

    return run()


if __name__ == "__main__":
    sys.exit(main())
