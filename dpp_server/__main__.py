"""``python -m dpp_server`` is the ``dpp`` command."""

import os
import sys

if sys.argv[1:2] == ["worker"]:
    # Before pyarrow loads: mimalloc reads its options once. A worker keeps freed pages for
    # reuse (dpp_server.budget.keep_freed_memory says why); under --memory-mb Arrow
    # allocates from jemalloc instead, so this does not weaken the budget.
    os.environ.setdefault("MIMALLOC_PURGE_DELAY", "-1")

from dpp_server.cli import main

sys.exit(main())
