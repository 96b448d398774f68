"""``python -m dpp_server`` is the ``dpp`` command."""

import sys

from dpp_server.budget import prepare_environment

# Before anything loads pyarrow or polars: their allocators read these settings once.
prepare_environment(sys.argv[1:])

from dpp_server.cli import main  # noqa: E402

sys.exit(main())
